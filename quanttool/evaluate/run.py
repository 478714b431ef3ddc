"""Run the fp32 and int8 models side by side over the images and fold every comparison into running sums.

Two onnxruntime runs per image:
- (A) the isolated model (isolated.py): fp32 graph + one fake-quant clone per quantized op, exposing each
  op's fp32 output and its clone's output. It runs with onnxruntime's QDQ handling off (_float_session), so
  the clones are float ops on exactly dequantized int8 weights between QuantizeLinear -> DequantizeLinear
  pairs, not int8 kernels: run A took 2-3x less time that way on MobileNetV2 224x224 (AVX2, where the exact
  S8S8 kernels are slow), and the isolated SQNRs moved by at most 0.0004 dB (66 layers, 50 images): the
  two differ only where rounding of a near-tie value goes the other way.
- (B) the int8 model with every `X_quantized` exposed; dequantized in numpy as (X_quantized - zp) * scale
  with the model's own `X_scale` / `X_zero_point`. The accumulated numbers come from this real int8 run, not
  from a float fake-quant copy of the chain: such a copy (tried, in the same session as run A) gave outputs
  different from the int8 model on 50 of 50 MobileNetV2 images (up to 5 LSB of the softmax output), because
  the int8 kernels round sums of integer products where the float copy rounds float sums.
With the session settings of quanttool.runtime (int8 QDQ kept as int8, S8S8 kernels) run B's outputs were
bit-identical to the plain int8 model's on the demo model at 32x32 and 224x224, QDQ and qoperator, and on
MobileNetV2 224x224, 50 images each. With onnxruntime's default u8s8 kernels they were not (int16
saturation without VNNI: demo logits 33 dB exposed vs 8 dB plain), and an image that matches does not prove
the next one will. So the plain int8 model also runs on the first CHECK_IMAGES images: if its outputs ever
differ from run B's, it keeps running on every image and supplies the output metrics and accuracy (and a
note says so); otherwise run B alone continues.
While onnxruntime runs image k, a worker thread folds image k-1 into the sums (numpy releases the GIL).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from ..errors import QuantError, first_line
from ..fileio import read_text
from ..observe import nonfinite
from ..ops import ops_where
from ..prepare.graph import readers
from ..qparams import QParam, qrange
from ..rewrite.fuse import activation_bounds
from ..rewrite.plan import QuantizedOp, constant_values, table_qparam
from ..runtime import session, with_outputs
from . import isolated
from .metrics import ChannelSimilarity, Similarity, clipped_count
from .parts import ChannelSums
from .report import Accuracy, EvalReport, LayerReport, OutputReport

PER_CHANNEL_OPS = ops_where(channels_out=True)
WORST_CHANNELS = 5
CHECK_IMAGES = 4  # images on which the plain int8 model runs to confirm run B gives the same outputs


def _label_key(path: str) -> str:
    """Relative paths compare as POSIX paths without a leading './' (labels written on Windows work too)."""
    return PurePosixPath(path.strip().replace("\\", "/")).as_posix().removeprefix("./")


def read_labels(path: str | Path) -> dict[str, int]:
    """Lines `relative/path.png label` (blank lines and `#` comments skipped); the path may contain spaces."""
    path = Path(path)
    try:
        text = read_text(path)  # a regular file only (a FIFO would hang), BOM dropped
    except FileNotFoundError:
        raise QuantError(f"--labels {path}: file not found; give a text file of `relative/path.png label` lines") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantError(f"--labels {path}: cannot read it ({type(exc).__name__}); give a UTF-8 text file of "
                         f"`relative/path.png label` lines") from None
    labels: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(None, 1)
        where = f"{path}:{number}"
        if len(fields) != 2:
            raise QuantError(f"{where}: expected `relative/path.png label`, got {line!r}")
        try:
            label = int(fields[1])
        except ValueError:
            raise QuantError(f"{where}: label {fields[1]!r} is not an integer class index; "
                             f"expected `relative/path.png label`") from None
        if label < 0:
            raise QuantError(f"{where}: label {label} is negative; class indices start at 0")
        key = _label_key(fields[0])
        if key in labels:
            raise QuantError(f"{where}: {key!r} is listed twice; keep one line per image")
        labels[key] = label
    if not labels:
        raise QuantError(f"--labels {path}: no `relative/path.png label` lines found")
    return labels


def _produced(model: onnx.ModelProto) -> set[str]:
    return {o for node in model.graph.node for o in node.output} | {i.name for i in model.graph.input}


def _int8_qparam(inits: dict[str, onnx.TensorProto], table: dict, x: str) -> QParam:
    """The parameters the int8 model really holds for X; the table's when the initializers are missing."""
    scale, zp = inits.get(f"{x}_scale"), inits.get(f"{x}_zero_point")
    if scale is not None and zp is not None:
        return QParam(float(numpy_helper.to_array(scale)), int(numpy_helper.to_array(zp)))
    qp = table[x]
    return qp if isinstance(qp, QParam) else QParam(*qp)


class _Layer:
    """Running sums for one quantized op."""

    def __init__(self, op: QuantizedOp, index: int, qp: QParam, int8_name: str | None, iso_name: str | None,
                 bits: int, clamp: tuple[float, float] | None = None) -> None:
        self.op, self.index, self.qp = op, index, qp
        self.clamp = clamp
        self.int8_name, self.iso_name = int8_name, iso_name
        qmin, qmax = qrange(bits)
        self.lo, self.hi = (qmin - qp.zero_point) * qp.scale, (qmax - qp.zero_point) * qp.scale
        self.scale, self.zp = np.float32(qp.scale), np.float32(qp.zero_point)
        self.acc = Similarity()
        self.iso = Similarity()
        self.channels = ChannelSimilarity() if op.op_type in PER_CHANNEL_OPS else None
        self.clipped = 0
        self.seen = 0

    def fold(self, ref: np.ndarray, iso: np.ndarray | None, q: np.ndarray | None) -> None:
        if self.clamp is not None:
            ref = np.clip(ref, *self.clamp)
            iso = None if iso is None else np.clip(iso, *self.clamp)
        self.clipped += clipped_count(ref, self.lo, self.hi)
        self.seen += ref.size
        ref2 = None  # sum ref^2, computed once for both comparisons
        if q is not None:
            if self.op.float_output:  # the int8 model computes this graph output in float
                deq = q
            else:
                deq = q.astype(np.float32)  # DequantizeLinear, in float32 as onnxruntime: (q - zp) * scale
                deq -= self.zp
                deq *= self.scale
            if self.clamp is not None:
                deq = np.clip(deq, *self.clamp)
            if self.channels is not None and ref.ndim >= 3:
                sums = self.channels.update(ref, deq)
                self.acc.add(*sums, ref.size)
                ref2 = sums[0]
            else:
                ref2 = self.acc.update(ref, deq)
        if iso is not None:
            self.iso.update(ref, iso, ref2=ref2)

    def report(self) -> LayerReport:
        measured_acc = self.int8_name is not None and self.acc.count > 0
        measured_iso = self.iso_name is not None and self.iso.count > 0
        channel_cosines = self.channels.cosines() if self.channels is not None else []
        worst = sorted(enumerate(channel_cosines), key=lambda item: item[1])[:WORST_CHANNELS]
        return LayerReport(
            name=self.op.node, op_type=self.op.op_type, output=self.op.output, index=self.index,
            scale=float(self.qp.scale), zero_point=int(self.qp.zero_point),
            isolated_sqnr_db=self.iso.sqnr_db if measured_iso else None,
            isolated_cosine=self.iso.cosine if measured_iso else None,
            sqnr_db=self.acc.sqnr_db if measured_acc else None,
            cosine=self.acc.cosine if measured_acc else None,
            mse=self.acc.mse if measured_acc else None,
            clipped_fraction=self.clipped / self.seen if self.seen else 0.0,
            channel_cosines=channel_cosines, worst_channels=worst)


def _clamps(model: onnx.ModelProto, table: dict, quantized: list[QuantizedOp]) -> dict[str, tuple[float, float]]:
    """Op output -> the clamp of the Relu/Clip that alone reads it with the same parameters (pass-through
    sharing): what that clamp removes is not error. Measured raw, the Add(x, 3) before hardswish's Clip(0, 6)
    read 8.7 dB with 16% of its values 'clipped' (all below 0), and convert's check named it the worst layer."""
    reading = readers(model.graph)
    constants = constant_values(model.graph)
    graph_outputs = {o.name for o in model.graph.output}
    result = {}
    for op in quantized:
        users = [model.graph.node[k] for k in reading.get(op.output, [])]
        if len(users) != 1 or op.output in graph_outputs or not users[0].output:
            continue
        bounds = activation_bounds(users[0], constants)
        shared = table_qparam(table, users[0].output[0])
        if bounds is not None and shared is not None and shared == table_qparam(table, op.output):
            result[op.output] = bounds
    return result


class _Output:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sim = Similarity()
        self.rows = 0
        self.agree = 0
        self.is_class = True
        self.mismatched = 0  # images where the shapes differ (data-dependent outputs, e.g. after NMS)
        self.channels = ChannelSums()
        self.image_signal: list[float] = []  # per image: sum ref^2
        self.image_noise: list[float] = []  # per image: sum of squared errors

    def fold(self, ref: np.ndarray, q: np.ndarray) -> None:
        if ref.shape != q.shape:
            self.mismatched += 1
            return
        before = self.sim.err2  # the image's error: what the running sums just added, not computed again
        self.image_signal.append(self.sim.update(ref, q, track_max=True))
        self.image_noise.append(self.sim.err2 - before)
        self.channels.update(ref, q)
        self.is_class = self.is_class and is_class_vector(ref)
        if self.is_class:
            self.rows += ref.shape[0]
            self.agree += int(np.count_nonzero(ref.argmax(axis=1) == q.argmax(axis=1)))

    def report(self) -> OutputReport:
        total = sum(self.image_noise)
        return OutputReport(self.name, self.sim.cosine, self.sim.sqnr_db, self.sim.max_abs,
                            self.agree / self.rows if self.is_class and self.rows else None, self.channels.parts(),
                            max(self.image_noise) / total if total > 0 else None)


def is_class_vector(value: np.ndarray) -> bool:
    return value.ndim == 2 and value.shape[1] > 1


def _rank_key(layer: LayerReport) -> tuple[float, int]:
    sqnr = layer.isolated_sqnr_db
    return (np.inf if sqnr is None else sqnr, layer.index)


def _float_session(model: onnx.ModelProto, threads: int, what: str):
    """A session with onnxruntime's QDQ handling off: Q/DQ run as plain ops and DequantizeLinear of constant
    weights folds into float initializers, so the isolated clones run as float convs (fake-quant arithmetic)
    beside the fp32 graph instead of with the int8 kernels (2-3x slower on AVX2)."""
    return session(model, threads, what, config={"session.disable_quant_qdq": "1"})


def _feeds_for(sess, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}


def _run(sess, names: list[str], feeds: dict[str, np.ndarray], key: str, what: str) -> dict[str, np.ndarray]:
    try:
        values = sess.run(names, _feeds_for(sess, feeds))
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        raise QuantError(f"image {key}: the {what} failed to run: {first_line(exc)}") from None
    return dict(zip(names, values))


def evaluate(fp32: onnx.ModelProto, int8: onnx.ModelProto, table: dict[str, QParam], quantized: list[QuantizedOp],
             samples: Iterable[tuple[str, dict[str, np.ndarray]]], total: int, *, labels: dict[str, int] | None = None,
             threads: int = 0, bits: int = 8) -> EvalReport:
    """Per-layer (isolated and accumulated) and per-output comparison of `int8` against `fp32`."""
    iso = isolated.build(fp32, table, quantized, int8, bits)
    notes = list(iso.notes)
    int8_tensors = _produced(int8)
    inits = {t.name: t for t in int8.graph.initializer}
    layers: list[_Layer] = []
    clamps = _clamps(fp32, table, quantized)
    for index, op in enumerate(quantized):
        if op.output not in table and f"{op.output}_scale" not in inits:
            continue  # the isolated builder already noted it
        q_name = op.output if op.float_output else f"{op.output}_quantized"
        if q_name not in int8_tensors:
            notes.append(f"{op.node}: the int8 model has no {q_name!r}; no accumulated measurement")
            q_name = None
        layers.append(_Layer(op, index, _int8_qparam(inits, table, op.output), q_name, iso.outputs.get(op.output),
                             bits, clamps.get(op.output)))

    fp32_outputs = [o.name for o in fp32.graph.output]
    int8_outputs = {o.name for o in int8.graph.output}
    out_names = [name for name in fp32_outputs if name in int8_outputs]
    for name in fp32_outputs:
        if name not in int8_outputs:
            notes.append(f"output {name!r} is missing from the int8 model; not compared")
    ref_names = list(dict.fromkeys(lay.op.output for lay in layers))
    iso_names = [lay.iso_name for lay in layers if lay.iso_name]
    a_names = list(dict.fromkeys(out_names + ref_names + iso_names))
    b_names = list(dict.fromkeys(out_names + [lay.int8_name for lay in layers if lay.int8_name]))
    sess_a = _float_session(with_outputs(iso.model, a_names), threads, "fp32 model with isolated layers")
    sess_b = session(with_outputs(int8, b_names), threads, "int8 model")
    plain = session(int8, threads, "int8 model")
    differs = False

    outputs = {name: _Output(name) for name in out_names}
    acc = {"labeled": 0, "unlabeled": 0, "rows": 0, "fp32": 0, "int8": 0, "output": None}

    def fold(key: str, a: dict[str, np.ndarray], b: dict[str, np.ndarray], b_out: dict[str, np.ndarray]) -> None:
        for lay in layers:
            ref = a[lay.op.output]
            if ref.dtype.kind != "f":
                continue
            lay.fold(ref, a.get(lay.iso_name) if lay.iso_name else None,
                     b.get(lay.int8_name) if lay.int8_name else None)
        for name, out in outputs.items():
            if a[name].dtype.kind == "f":
                out.fold(a[name], b_out[name])
        if labels is not None:
            fold_labels(key, a, b_out)

    def fold_labels(key: str, a: dict[str, np.ndarray], b_out: dict[str, np.ndarray]) -> None:
        if acc["output"] is None:
            acc["output"] = next((n for n in out_names if a[n].dtype.kind == "f" and is_class_vector(a[n])), "")
            if not acc["output"]:
                raise QuantError("--labels: no model output is a class vector [N, C]; accuracy needs one")
        label = labels.get(_label_key(key))
        if label is None:
            acc["unlabeled"] += 1
            return
        name = acc["output"]
        classes = a[name].shape[1]
        if label >= classes:
            raise QuantError(f"--labels: label {label} of {key} is outside output {name!r}'s {classes} classes "
                             f"(0..{classes - 1}); check the labels file")
        acc["labeled"] += 1
        acc["rows"] += a[name].shape[0]
        acc["fp32"] += int(np.count_nonzero(a[name].argmax(axis=1) == label))
        acc["int8"] += int(np.count_nonzero(b_out[name].argmax(axis=1) == label))

    images = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for key, feeds in tqdm(samples, total=total, unit="img", desc="evaluate", dynamic_ncols=True):
            for name, value in feeds.items():  # as calibrate: NaN/Inf would make every metric NaN
                if value.dtype.kind == "f" and not np.isfinite(value).all():
                    raise nonfinite(name, key, True)
            a = _run(sess_a, a_names, feeds, key, "fp32 model")
            b = _run(sess_b, b_names, feeds, key, "int8 model")
            b_out = b
            if plain is not None:
                b_out = _run(plain, out_names, feeds, key, "int8 model")
                if not differs and not all(np.array_equal(b_out[n], b[n]) for n in out_names):
                    differs = True
                    notes.append(f"the int8 model's outputs change when its int8 tensors are exposed (image "
                                 f"{key}): onnxruntime runs other kernels then; output metrics use a plain run")
                if not differs and images + 1 >= CHECK_IMAGES:
                    plain = None  # confirmed identical: run B alone from now on
            if pending is not None:
                pending.result()
            pending = pool.submit(fold, key, a, b, b_out)
            images += 1
        if pending is not None:
            pending.result()
    if images == 0:
        raise QuantError("no image could be evaluated; check the --images folder")

    accuracy = None
    if labels is not None:
        if not acc["labeled"]:
            raise QuantError(f"--labels: none of the {images} images is listed in the labels file; its paths must "
                             f"be relative to the --images folder (e.g. {key!r})")
        if acc["unlabeled"]:
            notes.append(f"{acc['unlabeled']} of {images} images have no label; accuracy counts the other "
                         f"{acc['labeled']}")
        accuracy = Accuracy(acc["output"], acc["labeled"], acc["unlabeled"], acc["fp32"] / acc["rows"],
                            acc["int8"] / acc["rows"])
    ranked = sorted((lay.report() for lay in layers), key=_rank_key)
    for out in outputs.values():
        if out.mismatched:
            notes.append(f"output {out.name!r}: fp32 and int8 shapes differ on {out.mismatched} of {images} images "
                         f"(a data-dependent output, e.g. after NonMaxSuppression); compared on the others only")
    return EvalReport(ranked, [out.report() for out in outputs.values()], images, accuracy, notes)
