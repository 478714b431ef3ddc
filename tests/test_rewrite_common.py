"""rewrite: weights, bias, naming, exclusion, table checks, opset upgrade. Also the helpers the other
test_rewrite_* files share (calibration by min/max over fp32 onnxruntime runs, error bounds)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quanttool.errors import QuantError
from quanttool.qparams import QParam, symmetric, unsigned
from quanttool.rewrite import check_table, convert
from tests.helpers import init, int8_session, make_model, run, run_int8, tensor_info


# ---- helpers shared by the test_rewrite_* files ------------------------------------------------------------
def with_outputs(model: onnx.ModelProto, names, dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    """Copy of `model` that also returns the given intermediate tensors."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:  # untyped (dtype None) lets onnxruntime infer it, e.g. int64 shape tensors
            vi = onnx.ValueInfoProto(name=name) if dtype is None else helper.make_tensor_value_info(name, dtype, None)
            out.graph.output.append(vi)
    return out


run_q = run_int8  # the int8 models run as quanttool runs them (tests/helpers.py)


def run_all(model, feeds, names, dtype=TensorProto.FLOAT) -> dict[str, np.ndarray]:
    m = with_outputs(model, names, dtype)
    sess = int8_session(m)
    outs = [o.name for o in sess.get_outputs()]
    return dict(zip(outs, sess.run(None, feeds)))


def calibrate(model, feeds_list) -> dict[str, QParam]:
    """Min/max table over fp32 runs: unsigned(max) for never-negative tensors, else symmetric(absmax)."""
    names = [o for n in model.graph.node for o in n.output]
    lo, hi = {}, {}
    for feeds in feeds_list:
        values = run_all(model, feeds, names, dtype=None)
        values.update(feeds)
        for k, v in values.items():
            if v.dtype != np.float32:
                continue
            lo[k] = min(lo.get(k, np.inf), float(v.min()))
            hi[k] = max(hi.get(k, -np.inf), float(v.max()))
    return {k: unsigned(hi[k]) if lo[k] >= 0 else symmetric(max(-lo[k], hi[k])) for k in lo}


def initializer(model, name) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def linear_bound(w_l1: np.ndarray, k: int, xmax: float, s_in: float, s_w: np.ndarray, s_out: float,
                 e_in: float | None = None) -> float:
    """Worst case |int8 - fp32| of y_c = sum_k w_ck x_k + b_c, inputs within the calibrated range (no clipping):
    input error e_in (s_in/2 when the input is the quantized graph input) times ||W_c||_1, weight rounding
    s_w[c]/2 times K * max|x|, bias rounding s_in*s_w[c]/2, output rounding s_out/2, and one more LSB of
    s_out for the int8 kernel's requantization (fixed point or float multiply, then round)."""
    e_in = s_in / 2 if e_in is None else e_in
    per_channel = e_in * w_l1 + s_w / 2 * k * xmax + s_in * s_w / 2
    return float(per_channel.max()) + 1.5 * s_out


def conv_model(w, b=None, group=1, pads=(1, 1, 1, 1), strides=(1, 1), relu=None, opset=13, shape=(2, None, 9, 11)):
    cin = w.shape[1] * group
    inputs = ["x", "W"] + (["B"] if b is not None else [])
    inits = [init("W", w)] + ([init("B", b)] if b is not None else [])
    nodes = [helper.make_node("Conv", inputs, ["c" if relu else "y"], name="conv", group=group, pads=list(pads),
                              strides=list(strides))]
    if relu == "Relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"], name="act"))
    elif relu == "Clip":
        inits += [init("lo", np.array(0.0, np.float32)), init("hi", np.array(6.0, np.float32))]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="act"))
    x_shape = [shape[0], cin, shape[2], shape[3]]
    return make_model(nodes, [tensor_info("x", x_shape)], [tensor_info("y", ["n", "c", "h", "w"])], inits, opset=opset)


def feeds_for(model, rng, n=3, shape=None):
    inp = model.graph.input[0]
    dims = shape or [d.dim_value or 2 for d in inp.type.tensor_type.shape.dim]
    return [{inp.name: rng.normal(size=dims).astype(np.float32)} for _ in range(n)]


# ---- tests ------------------------------------------------------------------------------------------------
def test_weights_are_int8_per_channel_and_reconstruct_within_half_a_step():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
    w[2] = 0.0  # an all-zero (pruned) channel must still get a finite, usable scale
    w[4] *= 100.0  # channels with very different ranges: per-channel scales differ
    b = rng.normal(size=6).astype(np.float32)
    model = conv_model(w, b)
    feeds = feeds_for(model, rng)
    table = calibrate(model, feeds)
    result = convert(model, table)
    q = initializer(result.model, "W_quantized")
    s = initializer(result.model, "W_scale")
    assert q.dtype == np.int8 and s.shape == (6,) and np.all(np.isfinite(s)) and np.all(s > 0)
    assert np.abs(q).max() <= 127
    expected = np.abs(w).reshape(6, -1).max(axis=1) / 127
    nz = expected > 0
    np.testing.assert_allclose(s[nz], expected[nz], rtol=1e-6)
    assert np.all(q[2] == 0)
    recon = q.astype(np.float64) * s.reshape(-1, 1, 1, 1)
    assert np.all(np.abs(recon - w) <= s.reshape(-1, 1, 1, 1) / 2 * (1 + 1e-6))
    # DQ of the weight carries axis 0 so onnxruntime applies the scale vector per output channel
    dq = [n for n in result.model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "W_quantized"]
    assert len(dq) == 1 and helper.get_attribute_value(dq[0].attribute[0]) == 0
    assert result.quantized[0].weight_scales == pytest.approx(list(s))


def test_bias_is_int32_round_b_over_sin_sw():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32) * 3
    model = conv_model(w, b)
    table = calibrate(model, feeds_for(model, rng))
    result = convert(model, table)
    bq = initializer(result.model, "B_quantized")
    s_w = initializer(result.model, "W_scale")
    assert bq.dtype == np.int32
    s_in = np.float32(table["x"].scale)
    np.testing.assert_array_equal(bq, np.round(b.astype(np.float64) / (s_in * s_w).astype(np.float64)))
    np.testing.assert_allclose(initializer(result.model, "B_scale"), s_in * s_w, rtol=1e-7)
    assert result.quantized[0].bias == list(bq)


def test_naming_convention_and_graph_io_unchanged():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    model = conv_model(w, relu="Relu")
    feeds = feeds_for(model, rng)
    table = calibrate(model, feeds)
    result = convert(model, table)
    g = result.model.graph
    assert [(i.name, i.type) for i in g.input] == [(i.name, i.type) for i in model.graph.input]
    assert [(o.name, o.type) for o in g.output] == [(o.name, o.type) for o in model.graph.output]
    assert result.model.ir_version == model.ir_version
    # fused: no Q/DQ on the conv output 'c'; the Relu output y carries the qparams
    names = {o for n in g.node for o in n.output}
    assert "c_quantized" not in names and result.quantized[0].output == "y" and result.quantized[0].fused == "Relu"
    for x in ("x", "y"):
        assert initializer(result.model, f"{x}_scale") == np.float32(table[x].scale)
        assert initializer(result.model, f"{x}_zero_point") == table[x].zero_point
    assert "x_dequantized" in names and "y_prequant" in names
    # graph output y is the DequantizeLinear of y_quantized; int8 tensors are int8
    out = run_all(result.model, feeds[0], ["x_quantized", "y_quantized"], TensorProto.INT8)
    assert out["y_quantized"].dtype == np.int8 and out["x_quantized"].dtype == np.int8
    qp = table["y"]
    np.testing.assert_allclose(out["y"], (out["y_quantized"].astype(np.float32) - qp.zero_point) * np.float32(qp.scale),
                               rtol=1e-6)
    expected_xq = np.clip(np.round(feeds[0]["x"] / np.float32(table["x"].scale)), -128, 127)
    np.testing.assert_array_equal(out["x_quantized"], expected_xq)


def test_clip_wider_than_table_range_is_not_absorbed():
    # Clip(0, 6) whose table range is [0, 255*s] > 6: clamping to int8 would not apply the upper bound,
    # so the Clip stays a node and the conv output gets its own Q/DQ.
    rng = np.random.default_rng(4)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32) * 3
    model = conv_model(w, relu="Clip")
    feeds = feeds_for(model, rng)
    table = calibrate(model, feeds)
    table["y"] = unsigned(8.0)  # a table made with a range beyond 6
    result = convert(model, table)
    names = {o for n in result.model.graph.node for o in n.output}
    assert "c_quantized" in names and any(n.op_type == "Clip" for n in result.model.graph.node)
    got, ref = run_q(result.model, feeds[0])[0], run(model, feeds[0])[0]
    assert got.max() <= 6.0 + 1e-6  # the kept Clip still caps at 6
    # conv error bound on c (Clip is 1-Lipschitz), then y's own rounding s_y/2
    bound = linear_bound(np.abs(w).reshape(4, -1).sum(1), 27, float(np.abs(feeds[0]["x"]).max()),
                         table["x"].scale, initializer(result.model, "W_scale"), table["c"].scale)
    assert np.abs(got - ref).max() <= bound + table["y"].scale / 2


def test_exclude_by_name_and_op_type_keeps_float_node():
    rng = np.random.default_rng(5)
    w1 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(4, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], name="first", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "W2"], ["b"], name="second"),
             helper.make_node("Sigmoid", ["b"], ["y"], name="sig")]
    model = make_model(nodes, [tensor_info("x", [1, 3, 6, 6])], [tensor_info("y", ["n", "c", "h", "w"])], [init("W1", w1), init("W2", w2)])
    feeds = feeds_for(model, rng)
    table = calibrate(model, feeds)
    for exclude in (["second"], ["Sigmoid", "second"]):
        result = convert(model, table, exclude=exclude)
        by_name = {n.name: n for n in result.model.graph.node}
        # float weight, no DQ feeding it; the input through a per-channel DQ (onnxruntime would quantize W2 per
        # tensor behind a per-tensor one: tests/test_fallback.py)
        assert list(by_name["second"].input) == ["a_dequantized_per_channel", "W2"]
        assert ("second", "Conv", "excluded") in result.kept_fp32
        assert initializer(result.model, "W2").dtype == np.float32
        assert by_name["first"].input[1] == "W1_dequantized"
        assert ("sig" in [q.node for q in result.quantized]) == ("Sigmoid" not in exclude)


def test_check_table_names_missing_and_foreign_tensors():
    rng = np.random.default_rng(6)
    model = conv_model(rng.normal(size=(2, 3, 3, 3)).astype(np.float32), relu="Relu")
    table = calibrate(model, feeds_for(model, rng))
    check_table(model, table)
    missing = {k: v for k, v in table.items() if k != "y"}
    with pytest.raises(QuantError, match="tensor 'y' has no entry in the table; re-run calibrate"):
        check_table(model, missing)
    with pytest.raises(QuantError, match="'foo' is not a tensor of this model"):
        convert(model, {**table, "foo": QParam(0.1, 0)})


def test_opset10_model_is_upgraded_and_runs():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(3, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c"], ["y"], min=0.0, max=6.0)]  # opset-6 style attributes
    model = make_model(nodes, [tensor_info("x", [1, 3, 5, 5])], [tensor_info("y", ["n", "c", "h", "w"])], [init("W", w)], opset=10)
    feeds = feeds_for(model, rng)
    table = calibrate(model, feeds)
    result = convert(model, table)
    assert [o.version for o in result.model.opset_import if o.domain == ""] == [13]
    got, ref = run_q(result.model, feeds[0])[0], run(model, feeds[0])[0]
    s_w = initializer(result.model, "W_scale")
    bound = linear_bound(np.abs(w).reshape(3, -1).sum(1), 27, float(np.abs(feeds[0]["x"]).max()),
                         table["x"].scale, s_w, table["y"].scale)
    assert np.abs(got - ref).max() <= bound


def test_export_quirks_unnamed_nodes_shape_subgraph_constant_clip_bounds_initializer_inputs():
    # An old-style export: the weight initializer is also a graph input, Clip bounds come from Constant nodes,
    # a Shape -> Gather -> Concat -> Reshape subgraph computes the flatten shape in int64, nodes have no names.
    rng = np.random.default_rng(8)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    i64 = lambda v: helper.make_tensor("v", TensorProto.INT64, [len(v)], v)  # noqa: E731
    f32 = lambda v: helper.make_tensor("v", TensorProto.FLOAT, [], [v])  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["lo"], value=f32(0.0)),
        helper.make_node("Constant", [], ["hi"], value=f32(6.0)),
        helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
        helper.make_node("Shape", ["r"], ["shp"]),
        helper.make_node("Constant", [], ["zero"], value=i64([0])),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Constant", [], ["minus1"], value=i64([-1])),
        helper.make_node("Concat", ["n", "minus1"], ["newshape"], axis=0),
        helper.make_node("Reshape", ["r", "newshape"], ["y"]),
    ]
    model = make_model(nodes, [tensor_info("x", ["N", 3, 4, 4]), tensor_info("W", [4, 3, 3, 3])],
                       [tensor_info("y", ["N", 64])], [init("W", w)])
    feeds = [{"x": rng.normal(size=(2, 3, 4, 4)).astype(np.float32)} for _ in range(3)]
    table = calibrate(model, feeds)
    for fmt in ("qdq", "qoperator"):
        result = convert(model, table, fmt=fmt)
        assert [i.name for i in result.model.graph.input] == ["x"]  # W is now int8; its fp32 input entry is gone
        ops = {q.op_type: q for q in result.quantized}
        assert ops["Conv"].fused == "Clip" and ops["Conv"].node == "Conv_0"
        assert "Reshape" in ops and "Concat" not in ops and "Gather" not in ops  # int64 shape math untouched
        got = run_q(result.model, {"x": feeds[0]["x"]})[0]
        ref = run(model, {"x": feeds[0]["x"], "W": w})[0]
        bound = linear_bound(np.abs(w).reshape(4, -1).sum(1), 27, float(np.abs(feeds[0]["x"]).max()),
                             table["x"].scale, initializer(result.model, "W_scale"), table["r"].scale)
        assert np.abs(got - ref).max() <= bound + table["y"].scale  # Reshape requantizes to y's entry


def test_float_tensor_computed_from_a_dynamic_shape_is_not_an_activation():
    """y = x * (1 / W) where W = Cast(Shape(x)[3]) and W stays dynamic: calibration (with --shape) folded
    that factor away, so the table has no entry for it; convert keeps the Mul in float instead of failing."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "three"], ["w"], axis=0),
        helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Reciprocal", ["wf"], ["inv"]),
        helper.make_node("Conv", ["x", "k"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "inv"], ["y"], name="mul"),
    ]
    model = make_model(nodes, [tensor_info("x", [1, 2, "H", "W"])], [tensor_info("y", [1, 3, "H", "W"])],
                       [init("three", np.array(3, np.int64)),
                        init("k", np.random.default_rng(0).normal(size=(3, 2, 1, 1)).astype(np.float32))])
    x = np.random.default_rng(1).normal(size=(1, 2, 4, 5)).astype(np.float32)
    c = run_all(model, {"x": x}, ["c"])["c"]
    table = {"x": symmetric(float(np.abs(x).max())), "c": symmetric(float(np.abs(c).max())),
             "y": symmetric(float(np.abs(c).max()) / 5)}
    result = convert(model, table)
    assert [op.node for op in result.quantized] == ["conv"]
    assert ("mul", "Mul") in [(name, op) for name, op, _ in result.kept_fp32]
    y = run_q(result.model, {"x": x})[0]
    ref = run(model, {"x": x})[0]
    # conv output error: input and weight rounding plus output rounding, bounded by a few output steps
    assert np.abs(y - ref).max() <= 3 * table["c"].scale / 5


def test_add_and_mul_between_float_ops_stay_float():
    """A LayerNorm spelled out in basic ops (exports below opset 17) between two convs: d*d and var+eps sit
    between float ops (Sub, ReduceMean, Sqrt) and stay float; the affine Mul/Add next to a conv are int8."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
        helper.make_node("ReduceMean", ["c"], ["mu"], axes=[1], name="mean1"),
        helper.make_node("Sub", ["c", "mu"], ["d"], name="sub"),
        helper.make_node("Mul", ["d", "d"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1], name="mean2"),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        helper.make_node("Div", ["d", "sd"], ["n"], name="div"),
        helper.make_node("Mul", ["n", "gamma"], ["g"], name="scale"),
        helper.make_node("Add", ["g", "beta"], ["a"], name="shift"),
        helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2"),
    ]
    model = make_model(nodes, [tensor_info("x", [1, 4, 5, 5])], [tensor_info("y", [1, 3, 5, 5])],
                       [init("w1", rng.normal(size=(8, 4, 1, 1)).astype(np.float32)),
                        init("w2", rng.normal(size=(3, 8, 1, 1)).astype(np.float32)),
                        init("eps", np.array(1e-5, np.float32)),
                        init("gamma", rng.uniform(0.5, 1.5, size=(1, 8, 1, 1)).astype(np.float32)),
                        init("beta", rng.normal(size=(1, 8, 1, 1)).astype(np.float32) * 0.1)])
    feeds = [{"x": rng.normal(size=(1, 4, 5, 5)).astype(np.float32)} for _ in range(4)]
    result = convert(model, calibrate(model, feeds))
    kept = {name: reason for name, _, reason in result.kept_fp32}
    assert "float ops only" in kept["square"] and "float ops only" in kept["add_eps"]
    assert {"conv1", "scale", "shift", "conv2"} <= {op.node for op in result.quantized}
    ref = np.concatenate([run(model, f)[0] for f in feeds])
    got = np.concatenate([run_q(result.model, f)[0] for f in feeds])
    assert 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()) > 25  # 8-bit, 4 quantized ops


def test_exclude_typo_warns_with_the_right_spelling(capsys):
    nodes = [helper.make_node("Add", ["x", "x"], ["y"], name="add1"),
             helper.make_node("MatMul", ["y", "w"], ["z"], name="mm")]
    model = make_model(nodes, [tensor_info("x", [2, 2])], [tensor_info("z", [2, 2])],
                       [init("w", np.eye(2, dtype=np.float32))])
    table = {"x": QParam(0.1, 0), "y": QParam(0.1, 0), "z": QParam(0.1, 0)}
    result = convert(model, table, exclude=["add"])
    assert "did you mean 'Add'" in capsys.readouterr().err
    assert {op.node for op in result.quantized} == {"add1", "mm"}  # nothing was excluded
