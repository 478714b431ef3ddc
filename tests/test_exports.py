"""Real exports end to end: the PyTorch and Paddle-style files in tests/data (made by
scripts/make_test_exports.py) go through `quanttool calibrate`, `convert` (QDQ and QOperator) and
`evaluate -q`, run as a user runs them, and the int8 model is checked against the fp32 one in onnxruntime.

The inputs are random N(0, 1) tensors written as .npy files: 24 for calibration, 6 held out for the checks.

SQNR floor, 25 dB (error energy 0.3% of the signal). One tensor quantized per-tensor to int8 with a
minmax scale on near-Gaussian data (absmax about 3.5 sigma over a few thousand values) has a step
D = 3.5 sigma / 127 and noise D^2 / 12, so SQNR = 10 log10(12 * 127^2 / 3.5^2) = 42 dB. Through the
5..15 quantized tensors of these models the noise powers add up (about -10 dB) and held-out inputs can
exceed the calibrated range a little; 25 dB leaves room for that and still fails on any real bug (a wrong
scale, zero point, layout or fold costs far more: one bit lost is -6 dB, a transposed weight ~0 dB).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quanttool.runtime import session

DATA = Path(__file__).parent / "data"
SQNR_FLOOR_DB = 25.0
N_CALIB, N_HELD_OUT = 24, 6


@dataclass(frozen=True)
class Case:
    inputs: dict  # input name -> C,H,W used for calibration and the held-out checks
    dynamic_hw: bool  # H/W are dynamic in the file: calibrate and convert need --shape
    batch: int  # batch of the run after conversion (every model has a dynamic batch)
    hw: tuple | None = None  # H,W of that run, for dynamic H/W


CASES = {
    "resnet_bn": Case({"input": (3, 24, 32)}, False, 3),
    "mobilenet_se": Case({"input": (3, 32, 32)}, True, 2, (24, 40)),
    "unet": Case({"input": (3, 16, 16)}, True, 2, (24, 32)),
    "two_in_out": Case({"image": (3, 16, 16), "aux": (1, 16, 16)}, False, 3),
    "transformer": Case({"input": (3, 16, 16)}, False, 3),
    "paddle_style": Case({"x": (3, 16, 16)}, False, 3),
    "efficientnet_lite": Case({"input": (3, 32, 32)}, False, 2),
}
FORMATS = ("qdq", "qoperator")


def quanttool(*args) -> str:
    """Run the CLI as a user does; on failure show the exit code and stderr (with --debug: the traceback)."""
    result = subprocess.run([sys.executable, "-m", "quanttool", "--debug", *map(str, args)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"quanttool {args[0]} exit {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout


def sqnr_db(refs: list[np.ndarray], outs: list[np.ndarray]) -> float:
    """10 log10(sum ref^2 / sum (ref - q)^2) over all samples, in float64."""
    signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in refs)
    noise = sum(float(np.sum((r.astype(np.float64) - q.astype(np.float64)) ** 2)) for r, q in zip(refs, outs))
    return math.inf if noise == 0 else 10.0 * math.log10(signal / noise)


def fp32_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # paddle_style lists its initializers as inputs: one warning per tensor
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Workspace:
    """Per model: the .npy folders, the table and the int8 files, each made once for every test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict = {}

    def samples(self, model: str) -> tuple[Path, Path]:
        key = ("samples", model)
        if key not in self.done:
            rng = np.random.default_rng(sum(map(ord, model)))
            calib, held = self.root / model / "calib", self.root / model / "held_out"
            for folder, count in ((calib, N_CALIB), (held, N_HELD_OUT)):
                for name, chw in CASES[model].inputs.items():
                    (folder / name).mkdir(parents=True)
                    for i in range(count):
                        np.save(folder / name / f"{i:03d}.npy", rng.standard_normal(chw).astype(np.float32))
            self.done[key] = calib, held
        return self.done[key]

    def image_args(self, model: str, folder: Path) -> list[str]:
        case = CASES[model]
        if len(case.inputs) == 1:
            return ["-i", folder / next(iter(case.inputs)), *self.shape_args(model)]
        return [a for name in case.inputs for a in ("-i", f"{name}={folder / name}")] + self.shape_args(model)

    def shape_args(self, model: str) -> list[str]:
        """--shape for dynamic H/W; convert asks for it too, even from a table."""
        inputs = CASES[model].inputs if CASES[model].dynamic_hw else {}
        return [a for name, chw in inputs.items() for a in ("--shape", f"{name}={','.join(map(str, chw))}")]

    def table(self, model: str) -> Path:
        key = ("table", model)
        if key not in self.done:
            calib, _ = self.samples(model)
            path = self.root / model / f"{model}.scale"
            quanttool("calibrate", "-m", DATA / f"{model}.onnx", *self.image_args(model, calib), "-o", path)
            self.done[key] = path
        return self.done[key]

    def int8(self, model: str, fmt: str) -> Path:
        key = ("int8", model, fmt)
        if key not in self.done:
            path = self.root / model / f"{model}_{fmt}.onnx"
            quanttool("convert", "-m", DATA / f"{model}.onnx", "-f", self.table(model), "--format", fmt, "-o", path,
                      *self.shape_args(model))
            self.done[key] = path
        return self.done[key]

    def held_out_feeds(self, model: str) -> list[dict[str, np.ndarray]]:
        _, held = self.samples(model)
        return [{name: np.load(held / name / f"{i:03d}.npy")[None] for name in CASES[model].inputs}
                for i in range(N_HELD_OUT)]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("exports"))


# Old Paddle exports (and models built with onnx.helper from shape [-1, ...]) mark a dynamic batch as dim_value
# -1; paddle_style checks it is treated as dynamic.
CASES_AND_FORMATS = [(m, f) for m in CASES for f in FORMATS]


def compare(fp32: ort.InferenceSession, int8: ort.InferenceSession, feeds: list[dict]) -> list[float]:
    """Same output names, shapes and dtypes; returns each output's SQNR over all the feeds."""
    names = [o.name for o in fp32.get_outputs()]
    assert [o.name for o in int8.get_outputs()] == names
    refs = [fp32.run(None, f) for f in feeds]
    outs = [int8.run(None, f) for f in feeds]
    for ref, out in zip(refs, outs):
        assert [(r.shape, r.dtype) for r in ref] == [(q.shape, q.dtype) for q in out]
    return [sqnr_db([r[k] for r in refs], [q[k] for q in outs]) for k in range(len(names))]


@pytest.mark.parametrize("model, fmt", CASES_AND_FORMATS)
def test_int8_model_matches_fp32(work, model, fmt):
    path = work.int8(model, fmt)
    int8_model = onnx.load(str(path))
    # Really quantized, in the asked format: int8 weights stored (an fp32 copy would pass any SQNR floor),
    # QDQ pairs around float ops, or QLinear*/QGemm ops.
    assert any(t.data_type == onnx.TensorProto.INT8 for t in int8_model.graph.initializer)
    ops = {node.op_type for node in int8_model.graph.node}
    qlinear = {op for op in ops if op.startswith("QLinear") or op == "QGemm"}
    if fmt == "qdq":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not qlinear
    else:
        assert qlinear
    fp32, int8 = fp32_session(DATA / f"{model}.onnx"), session(int8_model)

    for sqnr in compare(fp32, int8, work.held_out_feeds(model)):
        assert sqnr >= SQNR_FLOOR_DB

    # Dynamic dims stay dynamic: a batch of held-out samples, or new samples at another H/W. (New samples at
    # the calibrated size would test the calibration set's coverage instead: minmax over 24 random samples
    # clips an outlier's logits: one fresh batch of 3 put the transformer at 18.7 dB, 3.3% of its logits clipped.)
    case = CASES[model]
    if case.hw is None:
        other = {name: np.concatenate([f[name] for f in work.held_out_feeds(model)[:case.batch]])
                 for name in case.inputs}
    else:
        rng = np.random.default_rng(1)
        other = {name: rng.standard_normal((case.batch, chw[0], *case.hw)).astype(np.float32)
                 for name, chw in case.inputs.items()}
    for sqnr in compare(fp32, int8, [other]):
        assert sqnr >= SQNR_FLOOR_DB


@pytest.mark.parametrize("model, fmt", CASES_AND_FORMATS)
def test_evaluate_reports_output_sqnr(work, model, fmt):
    path = work.int8(model, fmt)
    _, held = work.samples(model)
    report = work.root / model / f"eval_{fmt}.json"
    quanttool("evaluate", "-m", DATA / f"{model}.onnx", "-q", path, *work.image_args(model, held), "--json", report)
    reported = {out["name"]: out["sqnr_db"] for out in json.loads(report.read_text())["outputs"]}

    fp32, int8 = fp32_session(DATA / f"{model}.onnx"), session(onnx.load(str(path)))
    expected = dict(zip([o.name for o in fp32.get_outputs()], compare(fp32, int8, work.held_out_feeds(model))))
    assert reported.keys() == expected.keys()
    for name, sqnr in expected.items():
        assert reported[name] == pytest.approx(sqnr, abs=0.01), name


def test_convert_from_table_needs_no_shape(work):
    path = work.root / "unet" / "unet_no_shape.onnx"
    quanttool("convert", "-m", DATA / "unet.onnx", "-f", work.table("unet"), "-o", path)
    # Same table, same graph: the same int8 model as the one converted with --shape.
    assert onnx.load(str(path)).graph == onnx.load(str(work.int8("unet", "qdq"))).graph
