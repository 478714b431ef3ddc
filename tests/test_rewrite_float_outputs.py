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
