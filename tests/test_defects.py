"""Issue 11 defects on the statistics, cache, table, model and determinism side: each test reproduces one defect
(it failed before the fix) and checks the fixed behaviour against an independent computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnx import helper

from quanttool.cli import main
from tests.helpers import init, make_model, run, tensor_info

RNG = np.random.default_rng(11)


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def error_line(err: str) -> str:
    """The one `quanttool: error:` line (progress bars may precede it)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("quanttool: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def sqnr(ref: np.ndarray, q: np.ndarray) -> float:
    ref, q = ref.astype(np.float64).ravel(), q.astype(np.float64).ravel()
    noise = np.sum((ref - q) ** 2)
    return math.inf if noise == 0 else 10 * math.log10(np.sum(ref ** 2) / noise)


def fake_quant(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    q = np.clip(np.round(x / np.float32(scale)) + zp, -128, 127)
    return ((q - zp) * np.float32(scale)).astype(np.float32)


def conv1x1_model():
    w = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32) * 0.1
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv")],
                       [tensor_info("x", [1, 3, 5, 5])], [tensor_info("c", [1, 4, 5, 5])], [init("w", w), init("b", b)])
    return model, w, b


def read_table_file(path):
    entries = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, scale, zp = line.rsplit(" ", 2)
            entries[name] = (float(scale), int(zp))
    return entries


# ---- item 5: evaluate -q reads the weights the converter stored (here 7-bit, --reduce-range) --------------
@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_evaluate_after_reduce_range_uses_the_stored_7_bit_weights(tmp_path, capsys, fmt):
    model, w, b = conv1x1_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    images = tmp_path / "npy"
    images.mkdir()
    xs = [RNG.standard_normal((1, 3, 5, 5)).astype(np.float32) for _ in range(4)]
    for k, x in enumerate(xs):
        np.save(images / f"{k}.npy", x)
    assert run_cli(capsys, "calibrate", "-m", path, "-i", images, "-o", tmp_path / "t.scale")[0] == 0
    assert run_cli(capsys, "convert", "-m", path, "-f", tmp_path / "t.scale", "-o", tmp_path / "q.onnx",
                   "--reduce-range", "--format", fmt)[0] == 0
    code, _, err = run_cli(capsys, "evaluate", "-m", path, "-q", tmp_path / "q.onnx", "-i", images,
                           "--json", tmp_path / "e.json")
    assert code == 0, err
    (layer,) = json.loads((tmp_path / "e.json").read_text())["layers"]

    table = read_table_file(tmp_path / "t.scale")
    s_w = np.abs(w).reshape(4, -1).max(axis=1) / 63  # 7-bit weights: levels +-63
    w_deq = np.clip(np.round(w.reshape(4, 3) / s_w[:, None]), -63, 63) * s_w[:, None]
    s_b = np.float32(table["x"][0]) * s_w.astype(np.float32)
    b_deq = np.round(b / s_b) * s_b
    refs, isos = [], []
    for x in xs:
        conv = np.einsum("nchw,oc->nohw", fake_quant(x, *table["x"]), w_deq) + b_deq[None, :, None, None]
        isos.append(conv.astype(np.float32))  # c is a graph output: computed in float from int8 inputs
        refs.append(run(model, {"x": x})[0])
    expected = sqnr(np.concatenate(refs), np.concatenate(isos))
    assert expected > 25  # the stored 7-bit weights, not 8-bit recomputed ones against a 7-bit bias
    assert layer["isolated_sqnr_db"] == pytest.approx(expected, rel=1e-4)
