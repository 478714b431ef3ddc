"""Sensitivity on a two-layer toy, checked against the same int8 arithmetic written out in numpy."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from quanttool.qparams import symmetric, unsigned
from quanttool.rewrite.weights import quantize_weight
from quanttool.sensitivity import sensitivity
from quanttool.variants import Simulator
from tests.helpers import init, make_model, tensor_info


def _fq(v, qp):
    """QuantizeLinear then DequantizeLinear (round half to even, saturate to int8), in float32 as onnxruntime."""
    q = np.clip(np.round(v.astype(np.float32) / np.float32(qp.scale)) + qp.zero_point, -128, 127)
    return ((q - qp.zero_point) * np.float32(qp.scale)).astype(np.float32)


def _conv1x1(x, w, b):
    return np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]


def _int8_conv(x, w, b, s_in):
    """A 1x1 conv as the int8 model computes it: int8 per-channel weights, int32 bias at s_in * s_w."""
    q, s_w = quantize_weight(w, 0)
    wq = (q.astype(np.float32) * s_w[:, None, None, None]).astype(np.float32)
    s_b = np.float32(s_in) * s_w
    bq = (np.round(b / s_b) * s_b).astype(np.float32)
    return _conv1x1(x, wq, bq)


def _db(ref, got):
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())


# a coarse table, so every rounding shows in the output: x and h symmetric over a deliberately clipped range
TABLE = {"x": symmetric(1.5), "h": symmetric(2.0), "y": unsigned(3.0)}


def _toy(w1, b1, w2, b2):
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1"),
             helper.make_node("Conv", ["h", "w2", "b2"], ["y"], name="conv2")]
    return make_model(nodes, [tensor_info("x", [1, 3, 5, 5])], [tensor_info("y", [1, 2, 5, 5])],
                      [init("w1", w1), init("b1", b1), init("w2", w2), init("b2", b2)])


def _hand(xs, fp32, int8, table=TABLE):
    """The fp32 output, and the outputs with only conv1, only conv2, both int8; `fp32`/`int8`: (w1, b1, w2, b2)
    of the float layers and of the int8 ones."""
    w1, b1, w2, b2 = fp32
    q1, c1, q2, c2 = int8
    refs, only1, only2, both = [], [], [], []
    for x in xs:
        h = _conv1x1(x, w1, b1)
        refs.append(_conv1x1(h, w2, b2))
        # only conv1 int8: its input x and its output h are quantized; conv2 float on the rounded h
        h1 = _fq(_int8_conv(_fq(x, table["x"]), q1, c1, table["x"].scale), table["h"])
        only1.append(_conv1x1(h1, w2, b2))
        # only conv2 int8: its input h is quantized; y is a graph output, computed in float (convert's default)
        only2.append(_int8_conv(_fq(h, table["h"]), q2, c2, table["h"].scale))
        both.append(_int8_conv(h1, q2, c2, table["h"].scale))
    return [np.concatenate(v) for v in (refs, only1, only2, both)]


def _weights(rng):
    return (rng.normal(size=(4, 3, 1, 1)).astype(np.float32), rng.normal(size=4).astype(np.float32),
            rng.normal(size=(2, 4, 1, 1)).astype(np.float32), rng.normal(size=2).astype(np.float32))


def test_two_layer_toy_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    weights = _weights(rng)
    model = _toy(*weights)
    xs = [rng.normal(size=(1, 3, 5, 5)).astype(np.float32) for _ in range(3)]
    table = TABLE
    sim = Simulator(model, table)
    report = sensitivity(sim, [(str(k), {"x": x}) for k, x in enumerate(xs)], len(xs))
    by_name = {item.layer.name: item for item in report.layers}

    ref, only1, only2, both = _hand(xs, weights, weights)
    expected_only = {"conv1": _db(ref, only1), "conv2": _db(ref, only2)}
    expected_all_but = {"conv1": expected_only["conv2"], "conv2": expected_only["conv1"]}
    for name in ("conv1", "conv2"):
        assert by_name[name].only_db == pytest.approx(expected_only[name], abs=0.01)
        assert by_name[name].all_but_db == pytest.approx(expected_all_but[name], abs=0.01)
    assert report.all_int8["y"].sqnr_db == pytest.approx(_db(ref, both), abs=0.01)
    # ranked most harmful first: the lower "only this int8" SQNR
    assert [item.layer.name for item in report.layers] == sorted(expected_only, key=expected_only.get)


def test_int8_weights_replace_the_quantized_layers_weights_but_not_the_reference():
    """The fallback simulates the weights --adaround/--bias-correct chose: with `int8_weights` every int8 layer
    quantizes those (here w1 moved by up to a grid step and both biases shifted, as the weight methods do), while
    the float layers and the fp32 reference keep the original weights."""
    rng = np.random.default_rng(0)
    weights = _weights(rng)
    w1, b1, w2, b2 = weights
    step = np.abs(w1).max(axis=(1, 2, 3), keepdims=True) / 127
    moved = w1 + step * rng.uniform(-1, 1, size=w1.shape).astype(np.float32)
    moved.reshape(4, -1)[np.arange(4), np.abs(w1).reshape(4, -1).argmax(1)] = \
        w1.reshape(4, -1)[np.arange(4), np.abs(w1).reshape(4, -1).argmax(1)]  # same per-channel scale
    adjusted = (moved.astype(np.float32), (b1 + 0.3).astype(np.float32), w2, (b2 - 0.2).astype(np.float32))
    xs = [rng.normal(size=(1, 3, 5, 5)).astype(np.float32) for _ in range(3)]
    sim = Simulator(_toy(*weights), TABLE, int8_weights=_toy(*adjusted))
    report = sensitivity(sim, [(str(k), {"x": x}) for k, x in enumerate(xs)], len(xs))
    by_name = {item.layer.name: item for item in report.layers}

    ref, only1, only2, both = _hand(xs, weights, adjusted)
    assert by_name["conv1"].only_db == pytest.approx(_db(ref, only1), abs=0.01)
    assert by_name["conv2"].only_db == pytest.approx(_db(ref, only2), abs=0.01)
    assert report.all_int8["y"].sqnr_db == pytest.approx(_db(ref, both), abs=0.01)
    # the same numbers with the original weights quantized are measurably different
    assert abs(_db(*_hand(xs, weights, weights)[::3]) - _db(ref, both)) > 1.0


def test_sensitivity_command_writes_terminal_json_and_html(tmp_path):
    """The command end to end on the planted-culprit model of test_fallback: c2 ranks first everywhere, and the
    JSON numbers are the ones the terminal shows."""
    import json
    import subprocess
    import sys

    from tests.test_fallback import _setup

    _, path, folder, _ = _setup(tmp_path, count=12)
    result = subprocess.run([sys.executable, "-m", "quanttool", "sensitivity", "-m", path, "-i", folder,
                             "--max-images", "6", "--measure-images", "6", "--json", tmp_path / "s.json",
                             "--report", tmp_path / "s.html"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "s.json").read_text())
    assert [layer["name"] for layer in data["layers"]][0] == "c2" and len(data["layers"]) == 4
    first = result.stdout.splitlines()[3].split()
    assert first[1] == "c2" and float(first[3]) == pytest.approx(data["layers"][0]["only_int8_db"], abs=0.05)
    assert "measured on 6 held-out images" in result.stdout
    assert "<td class=\"l\">c2</td>" in (tmp_path / "s.html").read_text()


def test_target_sqnr_needs_calibration_images(tmp_path):
    import subprocess
    import sys

    (tmp_path / "t.scale").write_text("x 0.1 0\n")
    result = subprocess.run([sys.executable, "-m", "quanttool", "convert", "-m", tmp_path / "m.onnx", "-f",
                             tmp_path / "t.scale", "-o", tmp_path / "q.onnx", "--target-sqnr", "30"],
                            capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--target-sqnr" in lines[0] and "-i DIR" in lines[0]
