"""Fixed rules: Softmax scales and backward sharing through pass-through ops, on hand-built graphs."""

import numpy as np
from onnx import helper

from quanttool import rules
from quanttool.qparams import QParam
from tests.helpers import init, make_model, tensor_info


def _chain():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Softmax", ["f"], ["y"], name="softmax"),
    ]
    return make_model(nodes, [tensor_info("x", [1, 1, 4, 4])], [tensor_info("y", [1, 1])],
                      [init("w", np.ones((1, 1, 1, 1), np.float32))])


def test_softmax_fixed_scales():
    model = _chain()
    signed = rules.apply(model, {"y": QParam(0.3, 0)})
    assert signed["y"] == QParam(1 / 127, 0)
    unsigned = rules.apply(model, {"y": QParam(0.3, -128)})
    assert unsigned["y"] == QParam(1 / 256, -128)


def test_pass_through_chain_takes_the_last_output_params():
    model = _chain()
    params = {"c": QParam(0.5, 0), "r": QParam(0.25, -128), "p": QParam(0.2, -128), "f": QParam(0.1, -128),
              "y": QParam(0.3, -128)}
    out = rules.apply(model, params)
    # Flatten's input p, then MaxPool's input r, then Relu's input c all share f's parameters.
    assert out["p"] == out["r"] == out["c"] == QParam(0.1, -128)
    assert params["c"] == QParam(0.5, 0)  # the input mapping is not modified


def test_no_sharing_when_input_has_two_consumers():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Reshape", ["a", "shape"], ["b"]),
        helper.make_node("Add", ["a", "a"], ["c"]),
    ]
    model = make_model(nodes, [tensor_info("x", [2, 2])], [tensor_info("b", [4]), tensor_info("c", [2, 2])],
                       [init("shape", np.array([4], np.int64))])
    out = rules.apply(model, {"a": QParam(1.0, 0), "b": QParam(2.0, 0), "c": QParam(3.0, 0)})
    assert out["a"] == QParam(1.0, 0)
