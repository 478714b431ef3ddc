"""convert(int8_outputs=False), the CLI default: an op that writes a graph output computes it in float from
its int8 inputs. Checked against the int8-output model: requantizing the float output with the table's
parameters must give the int8-output model's values (within one step, the kernels' rounding)."""

import numpy as np
import pytest
from onnx import helper

from quanttool.rewrite import convert, hardware_params
from tests.helpers import init, make_model, run, tensor_info
from tests.test_rewrite_common import calibrate, run_q


def _model():
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="head"),
    ]
    return make_model(nodes, [tensor_info("x", [1, 3, 8, 8])], [tensor_info("y", [1, 5, 8, 8])],
                      [init("w1", rng.normal(size=(6, 3, 3, 3)).astype(np.float32)),
                       init("b1", rng.normal(size=6).astype(np.float32)),
                       init("w2", rng.normal(size=(5, 6, 1, 1)).astype(np.float32)),
                       init("b2", rng.normal(size=5).astype(np.float32))])


def test_float_output_is_the_int8_output_before_its_last_rounding():
    model = _model()
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    table = calibrate(model, feeds)
    as_float = convert(model, table, int8_outputs=False)
    as_int8 = convert(model, table, int8_outputs=True)

    producers = {o: n.op_type for n in as_float.model.graph.node for o in n.output}
    assert producers["y"] == "Conv"  # no QuantizeLinear/DequantizeLinear after the head
    assert "y_quantized" not in producers
    head = next(op for op in as_float.quantized if op.node == "head")
    assert head.float_output and not next(op for op in as_int8.quantized if op.node == "head").float_output

    s, z = table["y"].scale, table["y"].zero_point
    for f in feeds:
        y_float = run_q(as_float.model, f)[0]
        y_int8 = run_q(as_int8.model, f)[0]
        requantized = (np.clip(np.round(y_float / s) + z, -128, 127) - z) * s  # QuantizeLinear, DequantizeLinear
        assert np.abs(requantized - y_int8).max() <= s * 1.0001  # one step: float vs int8-kernel requantization

    params = hardware_params(as_float, table)
    head_params = next(layer for layer in params["layers"] if layer["node"] == "head")
    assert head_params["output"]["float_in_model"] is True
    assert head_params["output"]["scale"] == pytest.approx(s, rel=1e-7)


def test_output_read_by_another_node_stays_quantized():
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w"], ["f"], name="conv"),
             helper.make_node("GlobalAveragePool", ["f"], ["p"], name="gap")]
    model = make_model(nodes, [tensor_info("x", [1, 2, 4, 4])], [tensor_info("f", [1, 3, 4, 4]),
                                                                  tensor_info("p", [1, 3, 1, 1])],
                       [init("w", rng.normal(size=(3, 2, 1, 1)).astype(np.float32))])
    calib = [{"x": rng.normal(size=(1, 2, 4, 4)).astype(np.float32)} for _ in range(3)]
    table = calibrate(model, calib)
    s, z = table["f"].scale, table["f"].zero_point
    for fmt in ("qdq", "qoperator"):
        result = convert(model, table, fmt=fmt, int8_outputs=False)
        produced = {o for n in result.model.graph.node for o in n.output}
        assert "f_quantized" in produced and "p_quantized" not in produced, fmt
        for feeds in calib:
            f, p = run_q(result.model, feeds)
            ref = run(model, feeds)[0]
            levels = f.astype(np.float64) / np.float32(s) + z
            # f is the int8 tensor dequantized: on f's grid, within a step of fp32 (x is quantized too) ...
            assert np.abs(levels - np.round(levels)).max() < 1e-3 and levels.min() >= -128.001, fmt
            assert np.abs(f - ref).max() <= 2 * s, fmt
            # ... and p, left in float, is the average of exactly those dequantized values
            np.testing.assert_allclose(p, f.mean(axis=(2, 3), keepdims=True), atol=1e-6)


def test_no_node_output_is_left_unread():
    """The qoperator form reads X_quantized directly; the DequantizeLinear that the QDQ form would need for
    X must not be left behind, unread (an integer-only model for hardware should hold only what runs)."""
    model = _model()
    rng = np.random.default_rng(6)
    table = calibrate(model, [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)}])
    for fmt in ("qdq", "qoperator"):
        graph = convert(model, table, fmt=fmt).model.graph
        read = {o.name for o in graph.output} | {name for node in graph.node for name in node.input}
        unread = [node.name or node.op_type for node in graph.node if not any(o in read for o in node.output)]
        assert unread == [], (fmt, unread)


def _sqnr(ref, got):
    return 10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((ref - got).astype(np.float64) ** 2).sum())


def test_output_behind_a_trailing_reshape_stays_float():
    """Gemm -> Reshape -> output (an opset upgrade or a flatten adds such a Reshape). The Gemm shares the
    output's parameters; when those clip (an ACIQ range, here a third of the logits' range) the logits were
    requantized and clipped before the Reshape. Outputs stay float: the Gemm computes in float from int8 inputs,
    the Reshape runs in float, and no logit is clipped."""
    rng = np.random.default_rng(8)
    w = rng.normal(size=(6, 10)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["g"], name="fc"),
             helper.make_node("Reshape", ["g", "shape"], ["y"], name="reshape")]
    model = make_model(nodes, [tensor_info("x", [4, 6])], [tensor_info("y", [4, 10, 1])],
                       [init("w", w), init("shape", np.array([4, 10, 1], np.int64))])
    feeds = {"x": rng.normal(size=(4, 6)).astype(np.float32)}
    table = calibrate(model, [feeds])
    clipped = table["y"].__class__(table["y"].scale / 3, table["y"].zero_point)  # an ACIQ-like clip
    table = {**table, "g": clipped, "y": clipped}
    result = convert(model, table, int8_outputs=False)
    producers = {o: n.op_type for n in result.model.graph.node for o in n.output}
    assert producers["y"] == "Reshape" and "g_quantized" not in producers and "y_quantized" not in producers
    assert ("reshape", "Reshape", "carries a model output, which stays float") in result.kept_fp32
    assert next(op for op in result.quantized if op.node == "fc").float_output
    ref = (feeds["x"] @ w).reshape(4, 10, 1)
    got = run_q(result.model, feeds)[0]
    assert np.abs(got).max() > clipped.scale * 127 * 1.5  # beyond the clip: not requantized
    # the only error left is the int8 input and weights: x and w each rounded to half a step
    s_x = table["x"].scale
    s_w = np.abs(w).max(axis=0) / 127
    bound = (s_x / 2 * np.abs(w).sum(axis=0) + s_w / 2 * 6 * np.abs(feeds["x"]).max()).max()
    assert np.abs(got - ref).max() <= bound * 1.01


def _yolo_head():
    """A YOLO-style head at two levels: Conv -> 4 box channels (Sigmoid x 640: pixels) and 3 class channels
    (Sigmoid: scores in [0, 1]) -> Concat per level -> Reshape -> Concat of the levels -> output [1, 7, N]."""
    rng = np.random.default_rng(9)
    nodes, inits, level_outputs = [], [], []
    for k, size in enumerate((8, 4)):
        src = "x" if k == 0 else "pool"
        if k == 1:
            nodes.append(helper.make_node("MaxPool", ["feat0"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]))
        nodes += [
            helper.make_node("Conv", [src, f"w{k}", f"b{k}"], [f"feat{k}"], name=f"stem{k}",
                             pads=[1, 1, 1, 1] if k == 0 else [0, 0, 0, 0]),
            helper.make_node("Conv", [f"feat{k}", f"hb{k}"], [f"box_raw{k}"], name=f"box{k}"),
            helper.make_node("Sigmoid", [f"box_raw{k}"], [f"box_sig{k}"], name=f"box_sigmoid{k}"),
            helper.make_node("Mul", [f"box_sig{k}", "pixels"], [f"box{k}_px"], name=f"box_scale{k}"),
            helper.make_node("Conv", [f"feat{k}", f"hc{k}"], [f"cls_raw{k}"], name=f"cls{k}"),
            helper.make_node("Sigmoid", [f"cls_raw{k}"], [f"cls{k}"], name=f"cls_sigmoid{k}"),
            helper.make_node("Concat", [f"box{k}_px", f"cls{k}"], [f"level{k}"], axis=1, name=f"level_cat{k}"),
            helper.make_node("Reshape", [f"level{k}", f"shape{k}"], [f"flat{k}"], name=f"flatten{k}"),
        ]
        cin = 3 if k == 0 else 8
        inits += [init(f"w{k}", rng.normal(0, 0.5, size=(8, cin, 3 if k == 0 else 1, 3 if k == 0 else 1))
                       .astype(np.float32)),
                  init(f"b{k}", rng.normal(size=8).astype(np.float32)),
                  init(f"hb{k}", rng.normal(0, 0.3, size=(4, 8, 1, 1)).astype(np.float32)),
                  init(f"hc{k}", rng.normal(0, 0.3, size=(3, 8, 1, 1)).astype(np.float32)),
                  init(f"shape{k}", np.array([1, 7, size * size], np.int64))]
        level_outputs.append(f"flat{k}")
    nodes.append(helper.make_node("Concat", level_outputs, ["y"], axis=2, name="levels"))
    inits.append(init("pixels", np.array(640.0, np.float32)))
    return make_model(nodes, [tensor_info("x", [1, 3, 8, 8])], [tensor_info("y", [1, 7, 80])], inits)


def test_yolo_head_concat_of_pixels_and_scores_keeps_the_scores():
    """Box coordinates in pixels (0..640) and scores in [0, 1] concatenated into one tensor cannot share one
    int8 scale (640/255 = 2.5 per step: every score would be 0 or 2.5). The concatenations stay float and
    each input keeps its own int8 scale, so scores and boxes both keep the SQNR of the int8 convs before them."""
    model = _yolo_head()
    rng = np.random.default_rng(10)
    feeds = [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(6)]
    table = calibrate(model, feeds)
    for fmt in ("qdq", "qoperator"):
        result = convert(model, table, fmt=fmt)
        kept = {name: reason for name, _, reason in result.kept_fp32}
        assert "flatten0" in kept and "ranges" in kept["flatten0"], kept
        cats = [n for n in result.model.graph.node if n.op_type == "Concat"]
        produced = {o: n.op_type for n in result.model.graph.node for o in n.output}
        for cat in cats[:2]:  # the level concatenations read int8 inputs, each dequantized with its own scale
            assert all(produced[x] == "DequantizeLinear" for x in cat.input), (fmt, list(cat.input))
        for f in feeds:
            ref = run(model, f)[0]
            got = run_q(result.model, f)[0]
            scores, boxes = ref[:, 4:], ref[:, :4]
            # a shared scale of 640/255 would make every score 0 or 2.5; here the error is the upstream convs'
            assert np.abs(got[:, 4:] - scores).max() < 0.05, fmt
            assert _sqnr(scores, got[:, 4:]) > 25 and _sqnr(boxes, got[:, :4]) > 25, fmt
