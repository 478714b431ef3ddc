"""Accuracy benchmark: quanttool convert (every algorithm) vs onnxruntime's quantize_static, one run.

    python scripts/bench_accuracy.py

Model: the demo (demo/digits_mobilenet.onnx: MobileNet-style, depthwise convs, ReLU6, BN, trained on real
data). Both tools calibrate on the same calibration_data/ images and are scored on demo/heldout/:
output SQNR (10*log10(sum ref^2 / sum (ref - q)^2) over all held-out logits) and top-1 accuracy.
onnxruntime's baseline is its recommended recipe: quant_pre_process, then quantize_static with per-channel
int8 weights, QDQ, MinMax. Every int8 model is scored twice: in a session with
`session.qdqisint8allowed=1` (exact int8 arithmetic) and in a default session (on x86 CPUs without VNNI
onnxruntime then runs saturating U8S8 kernels).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from bench_common import ROOT
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from quanttool.calibrate import Settings
from quanttool.commands import convert_model
from quanttool.inputs import InputSpec, Preprocess, discover, load_sample

MODEL = ROOT / "demo" / "digits_mobilenet.onnx"
PRE = dict(color="gray", norm="0.00392156862745098", mean="0", shape=(), resize="stretch", pad_value=None,
           focus=False, threads=0)
SPEC = [InputSpec("input", (1, 1, 32, 32))]
PP = Preprocess(norm=(1 / 255,), color="gray")


def tensors(folder: Path) -> tuple[list[str], np.ndarray]:
    samples = discover({"input": folder})
    return [s.key for s in samples], np.concatenate([load_sample(s, SPEC, PP)["input"] for s in samples])


def logits(path: Path, x: np.ndarray, exact: bool) -> np.ndarray:
    options = ort.SessionOptions()
    if exact:
        options.add_session_config_entry("session.qdqisint8allowed", "1")
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


class Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray):
        self.items = iter([{"input": x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.items, None)


def main() -> None:
    keys, x = tensors(ROOT / "demo" / "heldout")
    labels = dict(line.split() for line in (ROOT / "demo" / "heldout_labels.txt").read_text().splitlines())
    y = np.array([int(labels[k]) for k in keys])
    _, calib = tensors(ROOT / "calibration_data")
    ref = logits(MODEL, x, True)
    rows = [("fp32", 100 * (ref.argmax(1) == y).mean(), float("inf"), None, None)]

    def score(name, path):
        exact, default = logits(path, x, True), logits(path, x, False)
        sqnr = lambda q: 10 * np.log10((ref ** 2).sum() / ((ref - q) ** 2).sum())  # noqa: E731
        acc = lambda q: 100 * (q.argmax(1) == y).mean()  # noqa: E731
        rows.append((name, acc(exact), sqnr(exact), acc(default), sqnr(default)))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pre = tmp / "pre.onnx"
        quant_pre_process(str(MODEL), str(pre))
        ort_int8 = tmp / "ort.onnx"
        quantize_static(str(pre), str(ort_int8), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        score("onnxruntime quantize_static (MinMax, per-channel, QDQ)", ort_int8)
        recipes = [(a, "auto", bits, False) for a in ("minmax", "kl", "aciq", "percentile", "mse") for bits in (8, 7)]
        recipes += [(a, "asymmetric", 8, False) for a in ("minmax", "percentile")]
        recipes += [("minmax", scheme, 8, True) for scheme in ("auto", "asymmetric")]
        for algorithm, scheme, weight_bits, int8_outputs in recipes:
            out = tmp / f"{algorithm}{scheme}{weight_bits}{int8_outputs}.onnx"
            convert_model(MODEL, out, None, Settings(algorithm=algorithm, scheme=scheme), fmt="qdq", exclude=(),
                          params_path=None, weight_bits=weight_bits, int8_outputs=int8_outputs,
                          images=[str(ROOT / "calibration_data")], max_images=None, stats_path=tmp / "stats.npz",
                          **PRE)
            score(f"quanttool -a {algorithm}" + (f" --scheme {scheme}" if scheme != "auto" else "")
                  + (" --reduce-range" if weight_bits == 7 else "") + (" --int8-outputs" if int8_outputs else ""),
                  out)

    print(f"{'model':58s} | {'top-1 %':>7s} {'SQNR dB':>7s} | {'top-1 %':>7s} {'SQNR dB':>7s}")
    print(f"{'':58s} | {'exact int8 session':>15s} | {'default session':>15s}")
    for name, acc, sqnr, acc_d, sqnr_d in rows:
        tail = f"{acc_d:7.2f} {sqnr_d:7.3f}" if acc_d is not None else f"{'':7s} {'':7s}"
        print(f"{name:58s} | {acc:7.2f} {sqnr:7.3f} | {tail}")


if __name__ == "__main__":
    main()
