"""Observing in onnxruntime's blocked layout (quanttool.blocked) gives the statistics of the plain tensors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from quanttool import blocked
from quanttool.observe import observe
from quanttool.runtime import with_outputs
from quanttool.stats import TensorStats

from .helpers import init, make_model, tensor_info


def conv_chain():
    """Conv 3->32 + Relu, Conv 32->24 + Relu, Conv 24->32: channel counts with and without NCHWc padding."""
    rng = np.random.default_rng(5)
    sizes = [(32, 3, 3), (24, 32, 1), (32, 24, 3)]
    nodes, inits, prev = [], [], "x"
    for k, (cout, cin, ks) in enumerate(sizes):
        inits += [init(f"w{k}", rng.normal(0, 0.3, (cout, cin, ks, ks)).astype(np.float32)),
                  init(f"b{k}", rng.normal(0, 0.1, cout).astype(np.float32))]
        nodes.append(helper.make_node("Conv", [prev, f"w{k}", f"b{k}"], [f"c{k}"], pads=[ks // 2] * 4))
        if k < 2:
            nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
        prev = f"r{k}" if k < 2 else f"c{k}"
    model = make_model(nodes, [tensor_info("x", [1, 3, 20, 20])], [tensor_info("c2", [1, 32, 20, 20])], inits)
    return model, ["r0", "r1", "c2"]


def reference(model, names, xs):
    """Statistics of the plain tensors, run by a default onnxruntime session and folded one by one."""
    sess = ort.InferenceSession(with_outputs(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    stats = {name: TensorStats() for name in names}
    for x in xs:
        for name, value in zip(names, sess.run(names, {"x": x})):
            stats[name].update(value)
    return stats


@pytest.mark.parametrize("padding_free", [16, 1])  # 1: also the 24-channel tensor, padded on AVX-512
def test_blocked_statistics_equal_plain(monkeypatch, padding_free):
    monkeypatch.setattr(blocked, "PADDING_FREE", padding_free)
    model, names = conv_chain()
    xs = [np.random.default_rng(i).normal(0, 1, (1, 3, 20, 20)).astype(np.float32) for i in range(4)]
    got = observe(model, [(str(i), {"x": x}) for i, x in enumerate(xs)], len(xs), names=names, desc=None)
    want = reference(model, names, xs)
    for name in names:
        a, b = got[name], want[name]
        assert (a.count, a.samples, a.numel, a.zeros, a.min, a.max, a.range, a.edge_pos, a.edge_neg) == \
            (b.count, b.samples, b.numel, b.zeros, b.min, b.max, b.range, b.edge_pos, b.edge_neg), name
        assert np.array_equal(a.pos, b.pos) and np.array_equal(a.neg, b.neg), name
        for key in ("sum", "sumsq", "sumabs"):  # another summation order: equal to rounding
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-12, abs=1e-9), (name, key)


def test_blocked_outputs_are_fetched_where_the_layout_is_blocked():
    """On a CPU where onnxruntime uses NCHWc the 32-channel activation comes blocked, the 24-channel one (maybe
    padded) and the model output plain, and a blocked output holds the plain tensor's values in another order."""
    model, names = conv_chain()
    observing = blocked.observing_session(model, names, 1, "test")
    if observing.outputs == names:
        pytest.skip("onnxruntime uses no blocked layout on this CPU")
    swapped = dict(zip(names, observing.outputs))
    assert swapped["r1"] == "r1" and swapped["r0"] != "r0" and swapped["c2"] == "c2"
    x = np.random.default_rng(9).normal(0, 1, (1, 3, 20, 20)).astype(np.float32)
    got = dict(zip(names, observing.sess.run(observing.outputs, {"x": x})))
    sess = ort.InferenceSession(with_outputs(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    for name, value in zip(names, sess.run(names, {"x": x})):
        assert got[name].size == value.size
        assert np.array_equal(np.sort(got[name], axis=None), np.sort(value, axis=None)), name
        if swapped[name] != name:
            assert not np.array_equal(got[name].reshape(-1), value.reshape(-1))  # really another layout


def test_no_blocked_environment_variable(monkeypatch):
    monkeypatch.setenv("QUANTTOOL_NO_BLOCKED", "1")
    model, names = conv_chain()
    assert blocked.observing_session(model, names, 1, "test").outputs == names


def test_an_optimized_graph_that_cannot_be_rewritten_runs_plain(monkeypatch):
    def broken(*args):
        raise ValueError("unreadable optimized graph")

    monkeypatch.setattr(blocked, "_swapped", broken)
    model, names = conv_chain()
    observing = blocked.observing_session(model, names, 1, "test")
    x = np.random.default_rng(3).normal(0, 1, (1, 3, 20, 20)).astype(np.float32)
    got = observing.sess.run(observing.outputs, {"x": x})
    want = ort.InferenceSession(with_outputs(model, names).SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(names, {"x": x})
    assert observing.outputs == names
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
