"""A zero Pad feeding a Conv becomes the Conv's own padding (exact), so the int8 model has no Q/DQ around it."""

from __future__ import annotations

import numpy as np
from onnx import helper

from quanttool.prepare import prepare
from tests.helpers import init, make_model, run, tensor_info


def pad_conv(pads, value=0.0, mode="constant"):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Pad", ["x", "pads", "v"], ["p"], name="pad", mode=mode),
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv", pads=[1, 0, 0, 1], strides=[2, 2])]
    return make_model(nodes, [tensor_info("x", [1, 2, 9, 8])], [tensor_info("y", [1, 3, 5, 5])],
                      [init("pads", np.array(pads, np.int64)), init("v", np.array(value, np.float32)), init("w", w)])


def test_zero_spatial_pad_is_folded_into_conv_pads():
    model = pad_conv([0, 0, 0, 1, 0, 0, 1, 2])  # top 0, left 1, bottom 1, right 2
    prepared = prepare(model, None)
    ops = [n.op_type for n in prepared.graph.node]
    assert ops == ["Conv"]
    conv = prepared.graph.node[0]
    assert list(next(a.ints for a in conv.attribute if a.name == "pads")) == [1 + 0, 0 + 1, 0 + 1, 1 + 2]
    x = np.random.default_rng(1).normal(size=(1, 2, 9, 8)).astype(np.float32)
    np.testing.assert_allclose(run(prepared, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_pads_that_are_not_conv_padding_stay():
    for model in (pad_conv([0, 0, 0, 1, 0, 0, 1, 2], value=1.0),  # pads with ones, not zeros
                  pad_conv([0, 0, 0, 1, 0, 0, 1, 2], mode="reflect"),
                  pad_conv([0, 1, 0, 0, 0, 0, 0, 0])):  # pads a channel
        assert [n.op_type for n in prepare(model, None).graph.node] == ["Pad", "Conv"]
