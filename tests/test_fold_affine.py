"""Folding Mul/Add/Sub/Div by constants into the neighbouring Conv/Gemm (prepare/fold_affine.py): each rewrite is
checked against onnxruntime running the original model, plus the structure it promises; and on a toy "learnable
affine block" the folded int8 model is measured against fp32 in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import quanttool.prepare
from quanttool.prepare import prepare
from quanttool.rewrite import convert
from tests.helpers import init, make_model, run, run_int8, tensor_info
from tests.test_prepare import assert_same, ops, rand, weights
from tests.test_rewrite_common import calibrate

RNG = np.random.default_rng(7)


def _affine(op, x, y, const, name, const_first=False):
    inputs = [const, x] if const_first else [x, const]
    return helper.make_node(op, inputs, [y], name=name)


def test_affine_chain_after_conv_folds_into_its_weights_and_bias():
    """Conv -> Mul (per channel) -> Add (scalar) -> Sub -> Div: w' = w * f, b' = (b * f + s) per channel."""
    w, b = rand(4, 3, 3, 3), rand(4)
    f, s, t, d = RNG.uniform(0.5, 2, (4, 1, 1)).astype(np.float32), np.float32([0.3]), np.float32(0.2), 1.5
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             _affine("Mul", "c", "m", "f", "mul", const_first=True), _affine("Add", "m", "a", "s", "add"),
             _affine("Sub", "a", "u", "t", "sub"), _affine("Div", "u", "y", "d", "div")]
    inits = [init("w", w), init("b", b), init("f", f), init("s", s), init("t", t), init("d", np.float32([d]))]
    model = make_model(nodes, [tensor_info("x", [1, 3, 6, 6])], [tensor_info("y", [1, 4, 6, 6])], inits)
    prepared = prepare(model)
    assert ops(prepared) == ["Conv"] and list(prepared.graph.node[0].output) == ["y"]
    conv = prepared.graph.node[0]
    scale = f.reshape(-1) / d  # the chain written out: ((conv * f + s) - t) / d
    np.testing.assert_allclose(weights(prepared)[conv.input[1]], w * scale[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(weights(prepared)[conv.input[2]], (b * f.reshape(-1) + s - t) / d, rtol=1e-5)
    assert_same(model, prepared, {"x": rand(1, 3, 6, 6)})


@pytest.mark.parametrize("group", [1, 4])
def test_affine_before_unpadded_conv_folds_scale_and_offset(group):
    """Mul -> Add -> 1x1 Conv (no padding): y = W (f x + s) + b = (W f) x + (b + W s); grouped too."""
    w, b = rand(8, 4 // group, 1, 1), rand(8)
    f, s = RNG.uniform(0.5, 2, (1, 4, 1, 1)).astype(np.float32), rand(4, 1, 1)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), _affine("Mul", "r", "m", "f", "mul"),
             _affine("Add", "m", "a", "s", "add"),
             helper.make_node("Conv", ["a", "w", "b"], ["y"], name="conv", group=group)]
    inits = [init("w", w), init("b", b), init("f", f), init("s", s)]
    model = make_model(nodes, [tensor_info("x", [1, 4, 5, 5])], [tensor_info("y", [1, 8, 5, 5])], inits)
    prepared = prepare(model)
    assert ops(prepared) == ["Relu", "Conv"]
    assert_same(model, prepared, {"x": rand(1, 4, 5, 5)})


def test_offset_before_padded_conv_stays_but_the_scale_folds():
    """Mul f -> Add s -> padded depthwise Conv: the padded zeros would have to become s, so an Add (s / f) stays
    in front; the scale goes into the weights (a padded zero times f is still zero)."""
    w = rand(4, 1, 3, 3)
    f, s = RNG.uniform(0.5, 2, (4, 1, 1)).astype(np.float32), rand(4, 1, 1)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), _affine("Mul", "r", "m", "f", "mul"),
             _affine("Add", "m", "a", "s", "add"),
             helper.make_node("Conv", ["a", "w"], ["y"], name="conv", group=4, pads=[1, 1, 1, 1])]
    model = make_model(nodes, [tensor_info("x", [1, 4, 5, 5])], [tensor_info("y", [1, 4, 5, 5])],
                       [init("w", w), init("f", f), init("s", s)])
    prepared = prepare(model)
    assert ops(prepared) == ["Relu", "Add", "Conv"]
    add = prepared.graph.node[1]
    np.testing.assert_allclose(weights(prepared)[add.input[1]].reshape(-1), (s / f).reshape(-1), rtol=1e-6)
    assert_same(model, prepared, {"x": rand(1, 4, 5, 5)})


def test_what_is_not_an_affine_fold_stays():
    """A constant varying along a spatial axis, c / x, and a Conv output with a second reader are left alone."""
    w = rand(4, 3, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             _affine("Mul", "c", "m", "spatial", "mul"),  # varies along W: not one value per channel
             _affine("Div", "m", "d", "k", "div", const_first=True),  # k / x is not affine in x
             helper.make_node("Conv", ["d", "w2"], ["c2"], name="conv2"),
             _affine("Add", "c2", "a", "k", "add"),
             helper.make_node("Mul", ["a", "c2"], ["y"], name="square")]  # c2 has two readers
    inits = [init("w", w), init("spatial", rand(1, 1, 5)), init("k", np.float32([2.0])), init("w2", rand(4, 4, 1, 1))]
    model = make_model(nodes, [tensor_info("x", [1, 3, 5, 5])], [tensor_info("y", [1, 4, 5, 5])], inits)
    prepared = prepare(model)
    assert ops(prepared) == ["Conv", "Mul", "Div", "Conv", "Add", "Mul"]
    assert_same(model, prepared, {"x": rand(1, 3, 5, 5)})


def test_gemm_output_affine_folds():
    w, b = rand(6, 5), rand(5)
    f = RNG.uniform(0.5, 2, 5).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="gemm"), _affine("Mul", "g", "y", "f", "mul")]
    model = make_model(nodes, [tensor_info("x", [2, 6])], [tensor_info("y", [2, 5])],
                       [init("w", w), init("b", b), init("f", f)])
    prepared = prepare(model)
    assert ops(prepared) == ["Gemm"]
    assert_same(model, prepared, {"x": rand(2, 6)})


def _lab_model():
    """PP-LCNet's 'learnable affine block' in miniature: Conv -> Mul 0.003 -> Add 5 -> 1x1 Conv whose bias takes
    the offset back out (as a trained net's next BN would). Unfolded, the Add output lies in 5 +- 0.07, so one
    int8 scale for [0, 5.07] (0.02) rounds its variation (0.017 rms) to about one step."""
    w1, b1, w2 = rand(8, 4, 3, 3), rand(8), rand(4, 8, 1, 1)
    b2 = -5.0 * w2.sum(axis=(1, 2, 3))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             _affine("Mul", "c1", "m", "a", "lab_scale"), _affine("Add", "m", "l", "b", "lab_bias"),
             helper.make_node("Conv", ["l", "w2", "b2"], ["y"], name="c2")]
    inits = [init("w1", w1), init("b1", b1), init("w2", w2), init("b2", b2), init("a", np.float32([0.003])),
             init("b", np.float32([5.0]))]
    return make_model(nodes, [tensor_info("x", [1, 4, 8, 8])], [tensor_info("y", [1, 4, 8, 8])], inits)


def _int8_db(model, prepared, feeds):
    table = calibrate(prepared, feeds[:8])
    int8 = convert(prepared, table).model
    ref = np.concatenate([run(model, f)[0] for f in feeds[8:]]).astype(np.float64)
    got = np.concatenate([run_int8(int8, f)[0] for f in feeds[8:]]).astype(np.float64)
    return 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())


def test_folding_the_affine_block_keeps_int8_accuracy(monkeypatch):
    """Measured in onnxruntime against the fp32 original: folded, the int8 model has two int8 convs and no
    requantized affine tensor; unfolded, the Add output's int8 scale erases the signal."""
    model = _lab_model()
    feeds = [{"x": rand(1, 4, 8, 8)} for _ in range(16)]
    folded = prepare(model)
    assert ops(folded) == ["Conv", "Conv"]
    monkeypatch.setattr(quanttool.prepare, "fold_affine_maps", lambda graph: 0)
    unfolded = prepare(model)
    assert ops(unfolded) == ["Conv", "Mul", "Add", "Conv"]
    folded_db, unfolded_db = _int8_db(model, folded, feeds), _int8_db(model, unfolded, feeds)
    assert folded_db > 30 and unfolded_db < 15
