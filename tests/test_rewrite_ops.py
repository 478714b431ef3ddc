"""rewrite: each op family converted (both formats), run in onnxruntime and compared with fp32 within a bound
derived from the scales. Calibration uses the same inputs as the comparison, so nothing is clipped and the
bounds only count rounding: s/2 per quantized tensor, propagated through the op."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from quanttool.rewrite import convert
from tests.helpers import init, make_model, run, tensor_info
from tests.test_rewrite_common import calibrate, conv_model, initializer, linear_bound, run_q

FORMATS = ["qdq", "qoperator"]


def check(model, feeds, bound_fn, fmt, **kw):
    """Convert with a table calibrated on `feeds`; every output within bound_fn(table, result, feeds)."""
    table = calibrate(model, feeds)
    result = convert(model, table, fmt=fmt, **kw)
    bound = bound_fn(table, result, feeds)
    worst = 0.0
    for f in feeds:
        for got, ref in zip(run_q(result.model, f), run(model, f)):
            assert got.shape == ref.shape and got.dtype == ref.dtype
            worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= bound, (worst, bound)
    return result, table


def xmax(feeds, name="x"):
    return max(float(np.abs(f[name]).max()) for f in feeds)


CONV_CASES = {
    "regular": dict(cout=6, cin=4, group=1, k=3, bias=True, pads=(1, 1, 1, 1), strides=(1, 1)),
    "grouped": dict(cout=6, cin=4, group=2, k=3, bias=True, pads=(1, 1, 1, 1), strides=(1, 1)),
    "depthwise": dict(cout=4, cin=4, group=4, k=3, bias=True, pads=(1, 1, 1, 1), strides=(1, 1)),
    "single_out": dict(cout=1, cin=3, group=1, k=3, bias=True, pads=(0, 0, 0, 0), strides=(1, 1)),
    "stride_pads_nobias": dict(cout=5, cin=3, group=1, k=3, bias=False, pads=(0, 1, 2, 1), strides=(2, 2)),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case,act", [(c, None) for c in CONV_CASES] + [
    ("regular", "Relu"), ("regular", "Clip"), ("depthwise", "Relu"), ("depthwise", "Clip")])
def test_conv(case, act, fmt):
    c = CONV_CASES[case]
    rng = np.random.default_rng(len(case))
    w = rng.normal(size=(c["cout"], c["cin"] // c["group"], c["k"], c["k"])).astype(np.float32)
    b = rng.normal(size=c["cout"]).astype(np.float32) if c["bias"] else None
    model = conv_model(w, b, c["group"], c["pads"], c["strides"], relu=act, shape=(2, None, 7, 9))
    feeds = [{"x": rng.normal(size=(2, c["cin"], 7, 9)).astype(np.float32)} for _ in range(3)]

    def bound(table, result, feeds):
        # Relu / Clip are 1-Lipschitz, so the linear bound on the conv output holds for y
        k = c["cin"] // c["group"] * c["k"] ** 2
        return linear_bound(np.abs(w).reshape(c["cout"], -1).sum(1), k, xmax(feeds), table["x"].scale,
                            initializer(result.model, "W_scale"), table["y"].scale)

    result, table = check(model, feeds, bound, fmt)
    op = result.quantized[0]
    assert op.op_type == "Conv" and op.output == "y" and op.fused == act
    assert op.form == ("QLinearConv" if fmt == "qoperator" else "qdq")
    if act:  # absorbed: the conv's own output has no Q/DQ
        assert "c_quantized" not in {o for n in result.model.graph.node for o in n.output}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose(group, fmt):
    rng = np.random.default_rng(11)
    cin, cout_g = 4, 3
    w = rng.normal(size=(cin, cout_g, 3, 3)).astype(np.float32)
    b = rng.normal(size=cout_g * group).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], group=group, strides=[2, 2], pads=[1, 1, 1, 1])
    model = make_model([node], [tensor_info("x", [1, cin, 5, 6])], [tensor_info("y", ["n", "c", "h", "w"])],
                       [init("W", w), init("B", b)])
    feeds = [{"x": rng.normal(size=(1, cin, 5, 6)).astype(np.float32)} for _ in range(3)]

    def bound(table, result, feeds):
        s_w = initializer(result.model, "W_scale")
        # grouped: one scale for the whole tensor (axis 1 cannot express per-group output channels)
        assert s_w.shape == ((cout_g,) if group == 1 else ())
        # an output element sums at most all of W[:, o] times inputs: ||W[:, o]||_1 over every cin and tap
        l1 = np.abs(w).transpose(1, 0, 2, 3).reshape(cout_g, -1).sum(1)
        return linear_bound(l1, cin * 9, xmax(feeds), table["x"].scale, s_w, table["y"].scale)

    check(model, feeds, bound, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_folds_alpha_beta(trans_b, fmt):
    rng = np.random.default_rng(12 + trans_b)
    k, n = 10, 6
    w = rng.normal(size=(n, k) if trans_b else (k, n)).astype(np.float32)
    c = rng.normal(size=n).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "W", "C"], ["y"], transB=trans_b, alpha=0.5, beta=2.0)
    model = make_model([node], [tensor_info("x", ["N", k])], [tensor_info("y", ["N", n])], [init("W", w), init("C", c)])
    feeds = [{"x": rng.normal(size=(4, k)).astype(np.float32)} for _ in range(3)]

    def bound(table, result, feeds):
        s_w = initializer(result.model, "W_scale")
        w_eff = 0.5 * (w if trans_b else w.T)  # [n, k], alpha folded
        np.testing.assert_allclose(s_w, np.abs(w_eff).max(1) / 127, rtol=1e-6)  # per output column
        return linear_bound(np.abs(w_eff).sum(1), k, xmax(feeds), table["x"].scale, s_w, table["y"].scale)

    result, _ = check(model, feeds, bound, fmt)
    assert result.quantized[0].weight_axis == (0 if trans_b else 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_constant_weight_and_two_activations(fmt):
    rng = np.random.default_rng(13)
    w = rng.normal(size=(8, 5)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("MatMul", ["x", "z"], ["v"])]
    model = make_model(nodes, [tensor_info("x", ["N", 3, 8]), tensor_info("z", [8, 2])],
                       [tensor_info("y", ["N", 3, 5]), tensor_info("v", ["N", 3, 2])], [init("W", w)])
    feeds = [{"x": rng.normal(size=(2, 3, 8)).astype(np.float32), "z": rng.normal(size=(8, 2)).astype(np.float32)}
             for _ in range(3)]

    def bound(table, result, feeds):
        s_w = initializer(result.model, "W_scale")
        assert s_w.shape == (5,)  # per output column, axis 1 of [K, N]
        by = linear_bound(np.abs(w).sum(0), 8, xmax(feeds), table["x"].scale, s_w, table["y"].scale)
        # two activations: |x^ z^ - x z| <= K (|x| e_z + |z| e_x + e_x e_z), then output rounding and one LSB
        sx, sz = table["x"].scale, table["z"].scale
        bv = 8 * (xmax(feeds) * sz / 2 + xmax(feeds, "z") * sx / 2 + sx * sz / 4) + 1.5 * table["v"].scale
        return max(by, bv)

    check(model, feeds, bound, fmt)


def unary_model(op, shape=(2, 4, 6, 6), out_shape=None, **attrs):
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    return make_model([node], [tensor_info("x", list(shape))], [tensor_info("y", out_shape or list(shape))])


# (op, attrs, output shape, Lipschitz constant of the op in the max norm)
UNARY = [
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2]), [2, 4, 3, 3], 1.0),
    ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), [2, 4, 6, 6], 1.0),
    ("GlobalAveragePool", {}, [2, 4, 1, 1], 1.0),
    ("Sigmoid", {}, None, 0.25),
    ("HardSigmoid", dict(alpha=0.2, beta=0.5), None, 0.2),
    ("LeakyRelu", dict(alpha=0.1), None, 1.0),
    ("Softmax", dict(axis=-1), None, 0.5),  # row sum of |Jacobian| = 2 p_i (1 - p_i) <= 1/2
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("op,attrs,out_shape,lip", UNARY, ids=[u[0] for u in UNARY])
def test_unary_ops(op, attrs, out_shape, lip, fmt):
    rng = np.random.default_rng(14)
    model = unary_model(op, out_shape=out_shape, **attrs)
    feeds = [{"x": (rng.normal(size=(2, 4, 6, 6)) * 2).astype(np.float32)} for _ in range(3)]
    # input rounding s_in/2 through the op, output rounding s_out/2, plus one LSB for the kernel's requantization
    # (lookup table or fixed point)
    result, _ = check(model, feeds, lambda t, r, f: lip * t["x"].scale / 2 + 1.5 * t["y"].scale, fmt)
    assert [q.op_type for q in result.quantized] == [op]


@pytest.mark.parametrize("fmt", FORMATS)
def test_resize_nearest(fmt):
    rng = np.random.default_rng(15)
    scales = np.array([1, 1, 2, 2], np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    model = make_model([node], [tensor_info("x", [1, 3, 4, 5])], [tensor_info("y", [1, 3, 8, 10])],
                       [init("scales", scales)])
    feeds = [{"x": rng.normal(size=(1, 3, 4, 5)).astype(np.float32)} for _ in range(3)]
    result, _ = check(model, feeds, lambda t, r, f: t["x"].scale / 2 + 1.5 * t["y"].scale, fmt)
    assert initializer(result.model, "scales").dtype == np.float32  # the scales input is not quantized


@pytest.mark.parametrize("fmt", FORMATS)
def test_add_mul_concat_of_activations_and_constants(fmt):
    rng = np.random.default_rng(16)
    k = rng.normal(size=(1, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["a", "b"], ["p"]),
             helper.make_node("Add", ["a", "k"], ["ak"]), helper.make_node("Concat", ["s", "p", "ak"], ["y"], axis=1)]
    model = make_model(nodes, [tensor_info("a", [1, 3, 4, 4]), tensor_info("b", [1, 3, 4, 4])],
                       [tensor_info("y", [1, 9, 4, 4])], [init("k", k)])
    feeds = [{"a": rng.normal(size=(1, 3, 4, 4)).astype(np.float32),
              "b": (2 * rng.normal(size=(1, 3, 4, 4))).astype(np.float32)} for _ in range(3)]

    def bound(t, result, feeds):
        sa, sb, sy = t["a"].scale, t["b"].scale, t["y"].scale
        s_k = initializer(result.model, "k_scale")  # constant operand: per-tensor symmetric
        am, bm = xmax(feeds, "a"), xmax(feeds, "b")
        e_s = sa / 2 + sb / 2 + 1.5 * t["s"].scale
        e_p = am * sb / 2 + bm * sa / 2 + sa * sb / 4 + 1.5 * t["p"].scale
        e_ak = sa / 2 + s_k / 2 + 1.5 * t["ak"].scale
        return max(e_s, e_p, e_ak) + 1.5 * sy  # concat requantizes each input to y's scale

    result, _ = check(model, feeds, bound, fmt)
    assert sorted(q.op_type for q in result.quantized) == ["Add", "Add", "Concat", "Mul"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_ops_stay_float_between_dq_and_q(fmt):
    rng = np.random.default_rng(17)
    w1 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(2, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Celu", ["a"], ["b"], name="celu"),
             helper.make_node("Erf", ["b"], ["e"], name="erf"),
             helper.make_node("Conv", ["e", "W2"], ["y"], name="c2")]
    model = make_model(nodes, [tensor_info("x", [1, 3, 5, 5])], [tensor_info("y", [1, 2, 5, 5])],
                       [init("W1", w1), init("W2", w2)])
    feeds = [{"x": rng.normal(size=(1, 3, 5, 5)).astype(np.float32)} for _ in range(3)]

    def bound(t, result, feeds):
        e_a = linear_bound(np.abs(w1).reshape(4, -1).sum(1), 27, xmax(feeds), t["x"].scale,
                           initializer(result.model, "W1_scale"), t["a"].scale)
        # Celu is 1-Lipschitz and runs in float on a's dequantized value; Erf's slope is at most 2/sqrt(pi)
        e_e = 2 / np.sqrt(np.pi) * e_a + t["e"].scale / 2
        # |erf| <= 1, so max|e| = 1 bounds the second conv's weight-rounding term
        return linear_bound(np.abs(w2).reshape(2, -1).sum(1), 4, 1.0, t["e"].scale,
                            initializer(result.model, "W2_scale"), t["y"].scale, e_in=e_e)

    result, _ = check(model, feeds, bound, fmt)
    ops = {n.name: n for n in result.model.graph.node}
    assert ops["celu"].op_type == "Celu" and list(ops["celu"].input) == ["a_dequantized"]
    assert ops["erf"].op_type == "Erf"
    assert ("celu", "Celu", "no int8 kernel for Celu") in result.kept_fp32


def test_dynamic_batch_and_spatial_dims_run_at_other_sizes():
    rng = np.random.default_rng(18)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(4, 2)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "W2"], ["y"])]
    model = make_model(nodes, [tensor_info("x", ["N", 3, "H", "W"])], [tensor_info("y", ["N", 2])],
                       [init("W", w), init("W2", w2)])
    sizes = [(1, 8, 8), (3, 5, 11), (2, 16, 6)]
    feeds = [{"x": rng.normal(size=(n, 3, h, wd)).astype(np.float32)} for n, h, wd in sizes]
    table = calibrate(model, feeds)  # the table covers every size, so none of them clips
    for fmt in FORMATS:
        result = convert(model, table, fmt=fmt)
        assert result.model.graph.input[0].type == model.graph.input[0].type  # dims stay symbolic
        e_r = linear_bound(np.abs(w).reshape(4, -1).sum(1), 27, xmax(feeds), table["x"].scale,
                           initializer(result.model, "W_scale"), table["r"].scale)
        e_g = e_r + 1.5 * table["g"].scale  # average keeps the max error, then its own rounding
        e_f = e_g + table["f"].scale  # Flatten is requantized to its own table entry
        fmax = table["f"].scale * 255  # f >= 0 (after Relu), so its unsigned table range bounds |f|
        bound = linear_bound(np.abs(w2).sum(0), 4, fmax, table["f"].scale, initializer(result.model, "W2_scale"),
                             table["y"].scale, e_in=e_f)
        for f in feeds[1:]:
            got, ref = run_q(result.model, f)[0], run(model, f)[0]
            assert got.shape == ref.shape == (f["x"].shape[0], 2)
            assert np.abs(got - ref).max() <= bound
