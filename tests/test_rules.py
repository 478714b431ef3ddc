"""Fixed rules: Softmax scales and backward sharing through pass-through ops, on hand-built graphs."""

import numpy as np
import pytest
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


# ---- issue 8, section 0: bounded activations and the Softmax -> Reshape chain --------------------------------
def _softmax_reshape():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Softmax", ["c"], ["s"], axis=1, name="softmax"),
             helper.make_node("Reshape", ["s", "shape"], ["y"], name="reshape")]
    return make_model(nodes, [tensor_info("x", [1, 2, 2, 2])], [tensor_info("y", [1, 8])],
                      [init("w", np.ones((2, 2, 1, 1), np.float32)), init("shape", np.array([1, 8], np.int64))])


def test_fixed_softmax_scale_survives_a_following_reshape():
    """The opset upgrade puts a Reshape after Softmax; the Softmax output is not observed (it shares the
    Reshape's parameters), and the Reshape's range came from the algorithm (KL clipped it at 0.15). The fixed
    [0, 1] scale must reach both tensors instead of the Reshape's clipped one reaching the Softmax."""
    model = _softmax_reshape()
    clipped = QParam(0.15 / 255, -128)
    out = rules.apply(model, {"c": QParam(0.1, 0), "y": clipped})
    assert out["s"] == out["y"] == QParam(1 / 256, -128)
    out = rules.apply(model, {"c": QParam(0.1, 0), "y": QParam(0.15 / 127, 0)})
    assert out["s"] == out["y"] == QParam(1 / 127, 0)


def _stats(values):
    from quanttool.stats import TensorStats

    st = TensorStats()
    st.update(np.asarray(values, dtype=np.float32)[None], batch=1)
    return st


def _bounded_model():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Sigmoid", ["c"], ["sig"], name="sigmoid"),
             helper.make_node("Reshape", ["sig", "shape"], ["sig_flat"], name="reshape"),
             helper.make_node("Tanh", ["c"], ["th"], name="tanh"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["cl"], name="clip"),
             helper.make_node("Concat", ["sig_flat", "th", "cl"], ["y"], axis=0, name="cat")]
    return make_model(nodes, [tensor_info("x", [1, 1, 1, 4])], [tensor_info("y", [3, 4])],
                      [init("w", np.ones((1, 1, 1, 1), np.float32)), init("shape", np.array([1, 4], np.int64)),
                       init("lo", np.array(-0.5, np.float32)), init("hi", np.array(0.25, np.float32))])


def test_bounded_activations_keep_their_observed_range_under_kl():
    """A Sigmoid whose values pile up near 0 (YOLO class scores): KL clips it to a few hundredths, which loses
    every confident score. With --bounded range (default) the range is [0, 1] clipped to the observed [min, max]
    (here the observed max 0.93, on 256 levels); Tanh and Clip the same with their own bounds."""
    from quanttool.calibrate import Settings, choose_params

    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0.0, 0.01, 20000), [0.2, 0.5, 0.93]])  # sigmoid outputs
    tanh = np.concatenate([rng.normal(0, 0.01, 20000), [-0.8, 0.6]])
    clip = np.concatenate([rng.normal(0, 0.01, 20000), [-0.5, 0.25]])  # Clip(-0.5, 0.25) output
    model = _bounded_model()
    stats = {"x": _stats(rng.normal(size=100)), "c": _stats(rng.normal(size=100)),
             "sig_flat": _stats(scores), "th": _stats(tanh), "cl": _stats(clip), "y": _stats(tanh)}
    params = choose_params(model, stats, Settings("kl"))
    assert params["sig_flat"] == params["sig"]  # shared backwards through the Reshape
    assert params["sig_flat"].scale == pytest.approx(0.93 / 255, rel=1e-6)
    assert params["sig_flat"].zero_point == -128
    assert params["th"].scale == pytest.approx(0.8 / 127, rel=1e-6)  # symmetric over max(|-0.8|, 0.6)
    assert params["cl"].scale == pytest.approx(0.5 / 127, rel=1e-6)
    # the defect this replaces: KL's own choice clips the scores far below their observed maximum
    old = choose_params(model, stats, Settings("kl", bounded="algorithm"))
    assert old["sig_flat"].scale * 255 < 0.5  # the 0.5 and 0.93 scores are clipped


def test_known_ranges_follow_pass_through_ops():
    ranges = rules.known_ranges(_bounded_model())
    assert ranges == {"sig": (0.0, 1.0), "sig_flat": (0.0, 1.0), "th": (-1.0, 1.0), "cl": (-0.5, 0.25)}
    assert rules.within((0.0, 1.0), -3.0, 0.4) == (0.0, 0.4)
    assert rules.within((-1.0, 1.0), -0.2, 7.0) == (-0.2, 1.0)
