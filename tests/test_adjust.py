"""Weight-side PTQ (quanttool/adjust): each method against an independent computation (onnxruntime, or the
layer's output error computed directly on its calibration inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from quanttool import prepare as prep
from quanttool.adjust import Adjust, adjust_weights, apply_changes, equalize
from quanttool.adjust.adaround import adaround
from quanttool.adjust.clip_search import FRACTIONS, absmax_scale, search_clip
from quanttool.adjust.layers import find_layers, patches
from quanttool.calibrate import Settings, choose_params
from quanttool.observe import observe
from quanttool.rewrite import convert

from .helpers import init, make_model, run, run_int8, tensor_info


def _conv(name, x, w, b, y, **attrs):
    inputs = [x, w] + ([b] if b else [])
    return helper.make_node("Conv", inputs, [y], name=name, **attrs)


def _uneven_weights(rng, shape, spread=30.0):
    """Weights whose output channels differ in range by up to `spread` (what equalisation is for)."""
    w = rng.normal(size=shape).astype(np.float32)
    return (w * np.exp(rng.uniform(0, np.log(spread), size=(shape[0],) + (1,) * (len(shape) - 1)))).astype(np.float32)


def separable_model(rng, relu6_bound=6.0, spreads=(30.0, 30.0, 30.0)):
    """Conv 3->8 + Clip(0, hi), depthwise 3x3 + Relu, pointwise 8->4 (+ bias): two equalisable pairs."""
    nodes = [
        _conv("c1", "x", "w1", "b1", "y1", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["y1", "lo", "hi"], ["a1"], name="relu6"),
        _conv("dw", "a1", "w2", "b2", "y2", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["y2"], ["a2"], name="relu"),
        _conv("pw", "a2", "w3", "b3", "out", kernel_shape=[1, 1]),
    ]
    inits = [init("w1", _uneven_weights(rng, (8, 3, 3, 3), spreads[0])), init("b1", rng.normal(size=8).astype(np.float32)),
             init("lo", np.float32(0)), init("hi", np.float32(relu6_bound)),
             init("w2", _uneven_weights(rng, (8, 1, 3, 3), spreads[1])), init("b2", rng.normal(size=8).astype(np.float32)),
             init("w3", _uneven_weights(rng, (4, 8, 1, 1), spreads[2])), init("b3", rng.normal(size=4).astype(np.float32))]
    return make_model(nodes, [tensor_info("x", [1, 3, 12, 12])], [tensor_info("out", [1, 4, 6, 6])], inits)


def test_equalize_keeps_the_fp32_function_relu6_included():
    rng = np.random.default_rng(0)
    model = separable_model(rng)
    eq, pairs = equalize(model)
    assert pairs == 2
    x = rng.normal(size=(1, 3, 12, 12)).astype(np.float32) * 2
    # the ReLU6 bound is reached on this input, so a wrong per-channel bound would show
    probe = make_model(list(model.graph.node)[:2], [tensor_info("x", [1, 3, 12, 12])],
                       [tensor_info("a1", [1, 8, 6, 6])], list(model.graph.initializer))
    assert (run(probe, {"x": x})[0] >= 6.0).mean() > 0.05
    ref, got = run(model, {"x": x})[0], run(eq, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # and the ranges of each pair are equal per channel: max|W1_i| == max|W2[:, i]|
    w = {t.name: numpy_helper.to_array(t) for t in eq.graph.initializer}
    r1 = np.abs(w["w2"]).reshape(8, -1).max(1)
    r2 = np.abs(w["w3"]).max(axis=(0, 2, 3))
    np.testing.assert_allclose(r1, r2, rtol=1e-3)
    assert [n.op_type for n in eq.graph.node] == ["Conv", "Relu", "Min", "Conv", "Relu", "Conv"]


def test_equalize_lowers_the_int8_error_on_uneven_channels():
    rng = np.random.default_rng(1)
    # a balanced net, then each channel between two convs rescaled by e_i in one and 1/e_i in the next (as BN
    # folding leaves them): the same fp32 function, but per-tensor activation scales starve the small channels
    model = separable_model(rng, relu6_bound=1e6, spreads=(1.0, 1.0, 1.0))
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    e1, e2 = np.exp(rng.uniform(-3, 3, size=8)), np.exp(rng.uniform(-3, 3, size=8))
    w["w1"], w["b1"] = w["w1"] * e1[:, None, None, None], w["b1"] * e1
    w["w2"], w["b2"] = w["w2"] / e1[:, None, None, None] * e2[:, None, None, None], w["b2"] * e2
    w["w3"] = w["w3"] / e2[None, :, None, None]
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(w[t.name].astype(np.float32), t.name))
    feeds = [{"x": rng.normal(size=(1, 3, 12, 12)).astype(np.float32)} for _ in range(8)]
    ref = np.stack([run(model, f)[0] for f in feeds])

    def sqnr(m):
        table = choose_params(m, observe(m, ((str(k), f) for k, f in enumerate(feeds)), len(feeds)), Settings())
        got = np.stack([run_int8(convert(m, table, int8_outputs=False).model, f)[0] for f in feeds])
        return 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())

    assert sqnr(equalize(model)[0]) > sqnr(model) + 6


def single_conv(rng, groups=1, cin=4, cout=6, bias=True, **attrs):
    w = _uneven_weights(rng, (cout, cin // groups, 3, 3), spread=4)
    nodes = [_conv("conv", "x", "w", "b" if bias else None, "y", kernel_shape=[3, 3], group=groups, **attrs)]
    inits = [init("w", w)] + ([init("b", rng.normal(size=cout).astype(np.float32))] if bias else [])
    return make_model(nodes, [tensor_info("x", [1, cin, 9, 9])], [tensor_info("y", [1, cout, None, None])], inits)


@pytest.mark.parametrize("attrs", [dict(pads=[1, 0, 2, 1], strides=[2, 1]), dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
                                   dict(groups=2), dict(groups=4, cout=4, strides=[2, 2], pads=[1, 1, 1, 1])])
def test_patches_times_weight_matrix_is_the_conv(attrs):
    rng = np.random.default_rng(2)
    groups = attrs.pop("groups", 1)
    cout = attrs.pop("cout", 6)
    model = single_conv(rng, groups=groups, cout=cout, bias=False, **attrs)
    x = rng.normal(size=(1, 4, 9, 9)).astype(np.float32)
    ref = run(model, {"x": x})[0]
    layer, = find_layers(model)
    w = layer.matrix(numpy_helper.to_array(model.graph.initializer[0]))
    got = np.matmul(w, patches(x, layer))  # [g, out/g, positions]
    np.testing.assert_allclose(got.reshape(ref.shape), ref, rtol=1e-4, atol=1e-4)


def _feeds(rng, n, shift=0.3):
    """Spatially smooth inputs (neighbouring pixels correlate, as in images) around a channel mean."""
    coarse = rng.normal(size=(n, 1, 4, 5, 5))
    fine = np.stack([[[np.kron(c, np.ones((2, 2)))[:9, :9] for c in img] for img in s] for s in coarse])
    return [{"x": (f + 0.2 * rng.normal(size=f.shape) + shift).astype(np.float32)} for f in fine]


def _pipeline(model, feeds, options, table=None):
    table = table or choose_params(model, observe(model, ((str(k), f) for k, f in enumerate(feeds)), len(feeds)),
                                   Settings())
    changes = adjust_weights(model, table, ((str(k), f) for k, f in enumerate(feeds)), len(feeds), options)
    return convert(apply_changes(model, changes), table, int8_outputs=False).model, table


def _dequantized_layer(model, int8):
    """`model` with the int8 model's weight and int32 bias, dequantized: the int8 layer's arithmetic on
    fp32 inputs (the input's own rounding, which bias correction does not target, left out)."""
    inits = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}
    bias = next(k for k, v in inits.items() if v.dtype == np.int32)
    b_scale = inits[bias.replace("_quantized", "_scale")]
    w = inits["w_quantized"] * inits["w_scale"][:, None, None, None]
    node = model.graph.node[0]
    return make_model([_conv("conv", "x", "w", "b", "y", **{a.name: helper.get_attribute_value(a)
                                                            for a in node.attribute})],
                      [tensor_info("x", [1, 4, 9, 9])], [tensor_info("y", [1, 6, None, None])],
                      [init("w", w.astype(np.float32)), init("b", (inits[bias] * b_scale).astype(np.float32))])


@pytest.mark.parametrize("bias", [True, False])
def test_bias_correction_zeroes_the_mean_output_error_of_the_int8_weights(bias):
    rng = np.random.default_rng(3)
    model = single_conv(rng, bias=bias, pads=[1, 1, 1, 1])
    feeds = _feeds(rng, 16, shift=1.0)  # a non-zero input mean turns weight rounding into an output mean error
    table = {"x": prep_qparam(0.05), "y": prep_qparam(0.1)}
    ref = np.stack([run(model, f)[0] for f in feeds])

    def mean_error(options):
        int8, _ = _pipeline(model, feeds, options, table)
        layer = _dequantized_layer(model, int8)
        got = np.stack([run(layer, f)[0] for f in feeds])
        return np.abs((ref - got).mean(axis=(0, 1, 3, 4))), _int8_weight(int8)[1]  # per output channel

    after, s_w = mean_error(Adjust(bias_correct=True))
    # what remains is the int32 rounding of the corrected bias: at most half its step s_in * s_w
    bound = 0.5 * 0.05 * s_w + 1e-5
    assert np.all(after <= bound), (after, bound)
    if bias:  # (without a bias, the uncorrected int8 model has none to dequantize)
        before, _ = mean_error(Adjust())
        assert np.mean(before > 3 * bound) > 0.5, (before, bound)


def prep_qparam(scale):
    from quanttool.qparams import QParam

    return QParam(scale, 0)


def _int8_weight(int8):
    inits = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}
    return inits["w_quantized"].astype(np.int64), inits["w_scale"].astype(np.float64)


def _int8_error(model, int8, feeds):
    """Squared output error of the int8 layer (onnxruntime, exact int8 session) against fp32 on `feeds`."""
    return sum(((run(model, f)[0] - run_int8(int8, f)[0]) ** 2).sum() for f in feeds)


def test_adaround_is_on_the_grid_within_one_step_and_lowers_the_layer_error():
    rng = np.random.default_rng(5)
    model = single_conv(rng, pads=[1, 1, 1, 1])
    feeds = _feeds(rng, 8)
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    rtn, _ = _pipeline(model, feeds, Adjust())
    ada, _ = _pipeline(model, feeds, Adjust(adaround=True))
    q0, s0 = _int8_weight(rtn)
    q1, s1 = _int8_weight(ada)
    np.testing.assert_allclose(s1, s0, rtol=1e-6)  # same grid
    exact = w / s0[:, None, None, None]
    assert np.all((q1 == np.floor(exact)) | (q1 == np.ceil(exact)))  # floor or ceil of W / s
    assert np.abs(q1 - q0).max() == 1 and (q1 != q0).mean() > 0.02
    # the input quantization error stays (rounding cannot undo it), so the gain is smaller than on the weights
    assert _int8_error(model, ada, feeds) < 0.95 * _int8_error(model, rtn, feeds)


def test_adaround_never_worse_than_round_to_nearest_on_its_objective():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(1, 5, 12))
    x = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))  # correlated inputs
    for xq in (x, np.round(x / 0.5) * 0.5):  # fp32 inputs, and inputs quantized on a coarse grid
        scale = absmax_scale(w, 127)
        q, sweeps = adaround(w, scale, (xq.T @ xq)[None], (x.T @ xq)[None], 127)
        err = lambda q: ((q * scale[..., None] @ xq.T - w @ x.T) ** 2).sum()  # noqa: E731
        assert err(q) < err(np.round(w / scale[..., None]))
        assert sweeps >= 1


def test_adaround_column_blocks_make_the_flips_of_a_plain_greedy_descent():
    """The blocked update (H kept current only inside a block of columns, then one matrix product) flips the
    same weights as the greedy descent written out here: column by column, each row's loss evaluated
    directly with and without the other rounding."""
    rng = np.random.default_rng(16)
    g, r, k = 2, 3, 10
    w = rng.normal(size=(g, r, k))
    x = rng.normal(size=(g, 80, k)) @ rng.normal(size=(g, k, k))
    xq = np.round(x / 0.7) * 0.7
    gram, cross = xq.transpose(0, 2, 1) @ xq, x.transpose(0, 2, 1) @ xq
    scale = absmax_scale(w, 127)
    q, _ = adaround(w, scale, gram, cross, 127, block=4)  # blocks of 4, 4, 2 columns
    ref = np.round(w / scale[..., None])
    lo = np.floor(w / scale[..., None])
    loss = lambda a, b, v: ((v * scale[a, b] @ xq[a].T - w[a, b] @ x[a].T) ** 2).sum()  # noqa: E731
    for _sweep in range(8):
        flips = 0
        for col in range(k):
            for a, b in np.ndindex(g, r):
                if abs(ref[a, b, col]) == 127:
                    continue
                alt = ref[a, b].copy()
                alt[col] = lo[a, b, col] + 1 if ref[a, b, col] == lo[a, b, col] else lo[a, b, col]
                if loss(a, b, alt) < loss(a, b, ref[a, b]):
                    ref[a, b], flips = alt, flips + 1
        if not flips:
            break
    np.testing.assert_array_equal(q, ref)
    assert (q != np.round(w / scale[..., None])).any()


def test_clip_search_matches_a_brute_force_over_the_layer_output():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(1, 6, 20))
    w[0, :, 0] *= 8  # an outlier weight per channel makes clipping worth it
    x = rng.normal(size=(300, 20))
    xq = np.round(x / 0.1) * 0.1  # the layer's input as int8 would carry it
    scale = search_clip(w, (xq.T @ xq)[None], (x.T @ xq)[None], 15)  # 5-bit grid, so clipping matters more
    for c in range(6):
        base = np.abs(w[0, c]).max() / 15
        errors = [(np.clip(np.round(w[0, c] / (f * base)), -15, 15) * f * base @ xq.T - w[0, c] @ x.T) ** 2
                  for f in FRACTIONS]
        best = FRACTIONS[int(np.argmin([e.sum() for e in errors]))]
        assert scale[0, c] == pytest.approx(best * base, rel=1e-9)
    assert (scale[0] < np.abs(w[0]).max(1) / 15 * 0.999).any()


def test_weight_clip_and_adaround_weights_are_what_the_rewrite_stores():
    """The adjusted float weights lie on the grid: the rewrite's own max|W|/127 rule gives back the same ints."""
    rng = np.random.default_rng(8)
    model = single_conv(rng, pads=[1, 1, 1, 1])
    feeds = _feeds(rng, 6)
    int8, table = _pipeline(model, feeds, Adjust(weight_clip=True, adaround=True))
    q, s = _int8_weight(int8)
    changes = adjust_weights(model, table, ((str(k), f) for k, f in enumerate(feeds)), len(feeds),
                             Adjust(weight_clip=True, adaround=True))
    np.testing.assert_allclose(q * s[:, None, None, None], changes[0].weight, rtol=1e-6, atol=1e-9)


def test_cli_equalize_table_mismatch_and_missing_images(tmp_path):
    from click.testing import CliRunner

    from quanttool.cli import cli

    rng = np.random.default_rng(9)
    model_path = tmp_path / "m.onnx"
    model = separable_model(rng)
    model_path.write_bytes(model.SerializeToString())
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        np.save(images / f"{k}.npy", rng.normal(size=(3, 12, 12)).astype(np.float32))
    runner = CliRunner()
    table = tmp_path / "m.scale"
    result = runner.invoke(cli, ["calibrate", "-m", str(model_path), "-i", str(images), "-o", str(table)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["convert", "-m", str(model_path), "-f", str(table), "-o", str(tmp_path / "q.onnx"),
                                 "--equalize"])
    assert result.exit_code != 0 and "--equalize" in str(result.exception)
    result = runner.invoke(cli, ["convert", "-m", str(model_path), "-f", str(table), "-o", str(tmp_path / "q.onnx"),
                                 "--bias-correct"])
    assert result.exit_code != 0 and "-i DIR" in str(result.exception)
    eq_table = tmp_path / "eq.scale"
    result = runner.invoke(cli, ["calibrate", "-m", str(model_path), "-i", str(images), "-o", str(eq_table),
                                 "--equalize"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "q.onnx"
    result = runner.invoke(cli, ["convert", "-m", str(model_path), "-f", str(eq_table), "-o", str(out), "--equalize",
                                 "-i", str(images), "--bias-correct", "--adaround"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["convert", "-m", str(model_path), "-f", str(table), "-o", str(out),
                                 "-i", str(images), "--one-pass", "--no-adaround"])
    assert result.exit_code != 0 and "--one-pass" in str(result.exception)
    result = runner.invoke(cli, ["convert", "-m", str(model_path), "-f", str(table), "-o", str(out),
                                 "-i", str(images), "--adaround", "--one-pass"])
    assert result.exit_code == 0, result.output
    x = rng.normal(size=(1, 3, 12, 12)).astype(np.float32)
    ref, got = run(model, {"x": x})[0], run_int8(prep.load_model(out), {"x": x})[0]
    assert 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()) > 25
    result = runner.invoke(cli, ["evaluate", "-m", str(model_path), "-q", str(out), "-i", str(images)])
    assert result.exit_code == 0, result.output


def test_auto_clip_picks_what_a_brute_force_over_the_consuming_layer_picks():
    from quanttool.adjust.auto_clip import CANDIDATES, choose_auto
    from quanttool.adjust.layers import fake_quant

    rng = np.random.default_rng(10)
    # channel 0: rare large outliers, read through tiny weights; channel 1: small values, read through large
    # weights. The tensor's own error favours keeping the outliers, the conv's output favours clipping them.
    w = np.zeros((3, 2, 3, 3), dtype=np.float32)
    w[:, 0] = rng.normal(size=(3, 3, 3)) * 0.01
    w[:, 1] = rng.normal(size=(3, 3, 3)) * 5
    model = make_model([_conv("conv", "x", "w", None, "y", kernel_shape=[3, 3])], [tensor_info("x", [1, 2, 8, 8])],
                       [tensor_info("y", [1, 3, 6, 6])], [init("w", w)])
    feeds = []
    for _ in range(20):
        x = rng.normal(size=(1, 2, 8, 8)).astype(np.float32) * np.array([1.0, 0.2], np.float32)[None, :, None, None]
        x[0, 0].flat[rng.integers(0, 64, size=2)] *= 40
        feeds.append({"x": x})
    stats = observe(model, ((str(k), f) for k, f in enumerate(feeds)), len(feeds))
    params, won = choose_auto(model, stats, Settings(), choose_params,
                              ((str(k), f) for k, f in enumerate(feeds)), len(feeds))
    # brute force: the conv itself (onnxruntime) on x and on x quantized by each candidate's table entry
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    conv_error, own_error = {}, {}
    for a in CANDIDATES:
        qp = choose_params(model, stats, Settings(algorithm=a))["x"]
        conv_error[a] = sum(((sess.run(None, f)[0] - sess.run(None, {"x": fake_quant(f["x"], qp)})[0]) ** 2).sum()
                            for f in feeds)
        own_error[a] = sum(((f["x"] - fake_quant(f["x"], qp)) ** 2).sum() for f in feeds)
    best = min(CANDIDATES, key=lambda a: (conv_error[a], CANDIDATES.index(a)))
    assert params["x"] == choose_params(model, stats, Settings(algorithm=best))["x"]
    assert won["x"] == best or choose_params(model, stats, Settings(algorithm=won["x"]))["x"] == params["x"]
    # the planted case: the tensor's own error would have chosen another range
    own_best = min(CANDIDATES, key=lambda a: own_error[a])
    assert choose_params(model, stats, Settings(algorithm=own_best))["x"] != params["x"]


def test_adaround_time_limit_zero_keeps_round_to_nearest():
    rng = np.random.default_rng(11)
    model = single_conv(rng, pads=[1, 1, 1, 1])
    feeds = _feeds(rng, 4)
    rtn, _ = _pipeline(model, feeds, Adjust())
    late, _ = _pipeline(model, feeds, Adjust(adaround=True, time_limit=0))
    ada, _ = _pipeline(model, feeds, Adjust(adaround=True))
    assert np.array_equal(_int8_weight(late)[0], _int8_weight(rtn)[0])
    assert not np.array_equal(_int8_weight(ada)[0], _int8_weight(rtn)[0])


def test_adaround_keeps_round_to_nearest_where_there_are_fewer_samples_than_inputs():
    """A Gemm with 16 inputs: with 8 calibration samples AdaRound could fit any 8 rows of inputs exactly and
    says nothing about others (a classifier head after pooling sees one sample per image), so the weights stay
    round-to-nearest; with 64 samples it rounds some weights the other way."""
    rng = np.random.default_rng(4)
    w = rng.normal(size=(6, 16)).astype(np.float32)
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="g", transB=1)],
                       [tensor_info("x", [1, 16])], [tensor_info("y", [1, 6])],
                       [init("w", w), init("b", rng.normal(size=6).astype(np.float32))])

    def levels(n):
        feeds = [{"x": rng.normal(size=(1, 16)).astype(np.float32)} for _ in range(n)]
        rtn, table = _pipeline(model, feeds, Adjust())
        ada, _ = _pipeline(model, feeds, Adjust(adaround=True), table)
        inits = [{t.name: numpy_helper.to_array(t) for t in m.graph.initializer} for m in (rtn, ada)]
        return [i["w_quantized"] for i in inits]

    few_rtn, few_ada = levels(8)
    assert np.array_equal(few_rtn, few_ada)
    many_rtn, many_ada = levels(64)
    assert not np.array_equal(many_rtn, many_ada)
    assert np.abs(many_rtn.astype(int) - many_ada.astype(int)).max() == 1  # still within one step


def _two_gemms(rng):
    """x [16, 8] -> Gemm (8 -> 8) -> h -> Gemm (8 -> 4) -> y; each first-layer row has one outlier weight, so
    round-to-nearest on its coarse grid leaves layer 1 a large output error for layer 2 to compensate."""
    w1 = rng.normal(size=(8, 8)).astype(np.float32)
    w1[np.arange(8), rng.integers(0, 8, size=8)] = 60.0
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="g1", transB=1),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="g2", transB=1)]
    inits = [init("w1", w1), init("b1", rng.normal(size=8).astype(np.float32)),
             init("w2", rng.normal(size=(4, 8)).astype(np.float32)), init("b2", rng.normal(size=4).astype(np.float32))]
    return make_model(nodes, [tensor_info("x", [16, 8])], [tensor_info("y", [16, 4])], inits)


def _gemm_weights(int8):
    """Per layer (w1, w2) the int8 levels and per-row scales the int8 model stores."""
    inits = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}
    return {w: (inits[f"{w}_quantized"].astype(np.float64), inits[f"{w}_scale"].astype(np.float64))
            for w in ("w1", "w2")}


def test_sequential_adaround_fits_layer_2_to_layer_1s_int8_output():
    rng = np.random.default_rng(11)
    model = _two_gemms(rng)
    feeds = [{"x": rng.normal(size=(16, 8)).astype(np.float32)} for _ in range(12)]
    one, table = _pipeline(model, feeds, Adjust(adaround=True, one_pass=True))
    seq, _ = _pipeline(model, feeds, Adjust(adaround=True), table)
    q_one, q_seq = _gemm_weights(one), _gemm_weights(seq)
    # layer 1 reads the graph input: the same statistics, the same choice, in both modes
    np.testing.assert_array_equal(q_seq["w1"][0], q_one["w1"][0])
    # layer 2, by hand: its fp32 input h and its input in the int8 model, layer 1's int8 weight on the
    # fake-quantized x, fake-quantized with h's parameters (the float bias, as the fake-quant model keeps it)
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}

    def fq(v, name):
        qp = table[name]
        return (np.clip(np.round(v / qp.scale) + qp.zero_point, -128, 127) - qp.zero_point) * qp.scale

    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    h = x @ inits["w1"].T + inits["b1"]
    hq = fq(fq(x, "x") @ (q_seq["w1"][0] * q_seq["w1"][1][:, None]).T + inits["b1"], "h")
    w2, s2 = inits["w2"], q_seq["w2"][1]
    np.testing.assert_allclose(s2, np.abs(w2).max(1) / 127, rtol=1e-6)  # the round-to-nearest grid

    def gain(q, inputs):
        """The largest drop of ||W2 h - W2~ inputs||^2 one weight's other rounding (floor/ceil of W2 / s,
        a weight at +-127 kept) gives; <= 0: q is a local optimum of that objective."""
        loss = lambda q: ((h @ w2.T - inputs @ (q * s2[:, None]).T) ** 2).sum()  # noqa: E731
        lo = np.floor(w2 / s2[:, None])
        best = 0.0
        for r, k in np.ndindex(q.shape):
            if abs(q[r, k]) < 127:
                alt = q.copy()
                alt[r, k] = lo[r, k] + 1 if q[r, k] == lo[r, k] else lo[r, k]
                best = max(best, loss(q) - loss(alt))
        return best

    # sequential: a local optimum of the error on layer 1's int8 output; one-pass: of the error on fp32 h,
    # fake-quantized, and one flip away from better on the real inputs
    tie = 1e-9 * (h ** 2).sum()  # float32 statistics in onnxruntime vs float64 here: only near-ties may differ
    assert gain(q_seq["w2"][0], hq) <= tie and gain(q_one["w2"][0], fq(h, "h")) <= tie
    assert gain(q_one["w2"][0], hq) > 1000 * tie
    assert (q_seq["w2"][0] != q_one["w2"][0]).any()
    # and the sequential choice gives the lower final-output error of the int8 model in onnxruntime
    assert _int8_error(model, seq, feeds) < _int8_error(model, one, feeds)


def test_sequential_passes_group_layers_by_depth():
    """Two branches on x, added, then a third layer: the branches share the first pass, g3 needs both."""
    from quanttool.adjust.sequential import depth_levels

    rng = np.random.default_rng(12)
    w = lambda name, n, k: init(name, rng.normal(size=(n, k)).astype(np.float32))  # noqa: E731
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h1"], name="g1", transB=1),
             helper.make_node("Gemm", ["x", "w2"], ["h2"], name="g2", transB=1),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu"),
             helper.make_node("Add", ["h1", "r2"], ["s"], name="add"),
             helper.make_node("Gemm", ["s", "w3"], ["y"], name="g3", transB=1)]
    model = make_model(nodes, [tensor_info("x", [4, 6])], [tensor_info("y", [4, 3])],
                       [w("w1", 5, 6), w("w2", 5, 6), w("w3", 3, 5)])
    assert [[layer.node for layer in level] for level in depth_levels(model, find_layers(model))] == \
        [["g1", "g2"], ["g3"]]


def test_sequential_statistics_propagate_once_and_match_a_hand_computation():
    """A chain with a skip (Gemm g1 -> Relu -> h1 -> Gemm g2 -> h2; s = h1 + h2 -> Gemm g3): the cached,
    segment-by-segment propagation gives g2 and g3 the Gram and cross matrices computed here by hand from
    the fp32 inputs and the fake-quant inputs with the earlier layers' chosen weights and biases, and runs
    every node of each model exactly once (h1 is kept in the cache for the Add)."""
    from quanttool.adjust.layers import Change
    from quanttool.adjust.sequential import Propagation, adjust_sequential, depth_levels, fake_quant_model
    from quanttool.qparams import QParam

    rng = np.random.default_rng(21)
    gemm = lambda name, a, w, b, y: helper.make_node("Gemm", [a, w, b], [y], name=name, transB=1)  # noqa: E731
    nodes = [gemm("g1", "x", "w1", "b1", "p1"), helper.make_node("Relu", ["p1"], ["h1"], name="relu"),
             gemm("g2", "h1", "w2", "b2", "h2"), helper.make_node("Add", ["h1", "h2"], ["s"], name="add"),
             gemm("g3", "s", "w3", "b3", "y")]
    arrays = {"w1": rng.normal(size=(6, 5)), "b1": rng.normal(size=6), "w2": rng.normal(size=(6, 6)) * 0.5,
              "b2": rng.normal(size=6), "w3": rng.normal(size=(3, 6)), "b3": rng.normal(size=3)}
    model = make_model(nodes, [tensor_info("x", [4, 5])], [tensor_info("y", [4, 3])],
                       [init(k, v.astype(np.float32)) for k, v in arrays.items()])
    table = {"x": QParam(0.05), "h1": QParam(0.04, -20), "h2": QParam(0.06), "s": QParam(0.07, 3)}
    layers = find_layers(model)
    feeds = [{"x": rng.normal(size=(4, 5)).astype(np.float32)} for _ in range(5)]
    seen, chosen = {}, {}

    def choose(layer, st):  # record the statistics; change weight and bias so the next layers must see it
        seen[layer.weight] = st
        w, b = arrays[layer.weight], arrays[layer.bias]
        chosen[layer.weight] = (w * 0.9 + 0.01, b + 0.1)
        return Change(layer, chosen[layer.weight][0].astype(np.float32), chosen[layer.weight][1])

    samples = [(str(k), f) for k, f in enumerate(feeds)]
    adjust_sequential(model, set(table), layers, table, samples, len(feeds), 1, 127, float("inf"), choose)

    def fq(v, name):
        qp = table[name]
        return (np.clip(np.round(v / qp.scale) + qp.zero_point, -128, 127) - qp.zero_point) * qp.scale

    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731 - the weights as the model stores them
    h1 = np.maximum(x @ arrays["w1"].T + arrays["b1"], 0)
    s = h1 + h1 @ arrays["w2"].T + arrays["b2"]
    (w1, b1), (w2, b2) = chosen["w1"], chosen["w2"]
    h1q = np.maximum(fq(x, "x") @ f32(w1).T + f32(b1), 0)
    sq = fq(h1q, "h1") + fq(fq(h1q, "h1") @ f32(w2).T + f32(b2), "h2")
    for weight, ref, got in (("w2", h1, fq(h1q, "h1")), ("w3", s, fq(sq, "s"))):
        st = seen[weight]
        np.testing.assert_allclose(st.gram[0], got.T @ got, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(st.cross[0], ref.T @ got, rtol=1e-4, atol=1e-4)
    # each node of the fake-quant model (the Q/DQ pairs included) falls in exactly one segment
    fq_model, fq_names = fake_quant_model(model, table, set(table))
    targets = [[fq_names.get(layer.input, layer.input) for layer in level] for level in depth_levels(model, layers)]
    prop = Propagation(fq_model, targets, 1, "fq")
    ran = sorted(k for seg in prop.segments for k in seg)
    assert ran == sorted(set(ran)) and len(ran) == len(fq_model.graph.node) - 1  # all but g3 itself
    assert fq_names["h1"] in prop.reads[2]  # the skip: g3's segment reads h1 (fake-quantized) from the cache


def test_sequential_statistics_thin_the_images_to_stay_within_the_memory_bound(monkeypatch):
    """AdaRound is on by default, so its image cache is bounded: the cut's bytes per image come from the shapes
    (the widest: g2's step reads x, 4 x 5 float32, to compute its target r, 4 x 6), and with room for 2 of 5
    images in both models the statistics are those of images 0 and 4 alone (evenly spread)."""
    from quanttool.adjust import sequential
    from quanttool.adjust.sequential import Propagation, adjust_sequential, depth_levels
    from quanttool.qparams import QParam

    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="g1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="g2", transB=1)]
    inits = [init("w1", rng.normal(size=(6, 5)).astype(np.float32)), init("b1", np.zeros(6, np.float32)),
             init("w2", rng.normal(size=(3, 6)).astype(np.float32)), init("b2", np.zeros(3, np.float32))]
    model = onnx.shape_inference.infer_shapes(make_model(nodes, [tensor_info("x", [4, 5])],
                                                         [tensor_info("y", [4, 3])], inits))
    layers = find_layers(model)
    prop = Propagation(model, [sorted({l.input for l in level}) for level in depth_levels(model, layers)], 1, "m")
    assert prop.cut_bytes() == 4 * 5 * 4 + 4 * 6 * 4
    feeds = [{"x": rng.normal(size=(4, 5)).astype(np.float32)} for _ in range(5)]
    table = {"x": QParam(0.05), "h": QParam(0.04), "r": QParam(0.04, -128)}
    monkeypatch.setattr(sequential, "MAX_CACHE_BYTES", 2 * 2 * 176 + 10)
    seen = {}

    def choose(layer, st):
        seen[layer.weight] = st
        return None

    samples = [(str(k), f) for k, f in enumerate(feeds)]
    adjust_sequential(model, set(table), layers, table, samples, 5, 1, 127, float("inf"), choose)
    x = np.concatenate([feeds[0]["x"], feeds[4]["x"]]).astype(np.float64)
    xq = np.clip(np.round(x / 0.05), -128, 127) * 0.05
    assert seen["w1"].count == 2 * 4
    np.testing.assert_allclose(seen["w1"].gram[0], xq.T @ xq, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(seen["w1"].cross[0], x.T @ xq, rtol=1e-4, atol=1e-4)
