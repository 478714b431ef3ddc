"""The evaluation report: per-layer and per-output results, and their JSON form.

JSON numbers: an SQNR is +inf when the error is exactly zero (lossless) and -inf when the reference is all
zeros but the int8 tensor is not; JSON has no infinities, so both are written as null. `mse` (layers) and
`max_abs_error` (outputs) tell the two apart: 0 means lossless. Any other non-finite number (a NaN the model
itself computes) is null too: the file is always strict JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .parts import OutputPart


@dataclass
class LayerReport:
    name: str                          # node name (as the converter and --exclude use it)
    op_type: str
    output: str                        # the tensor compared: the op's output, or the absorbed Relu/Clip's
    index: int                         # position in the converter's list (graph order)
    scale: float
    zero_point: int
    isolated_sqnr_db: float | None     # only this op quantized, fp32 inputs; None: not measured
    isolated_cosine: float | None
    sqnr_db: float | None              # accumulated: the whole int8 model; None: not measured
    cosine: float | None
    mse: float | None                  # accumulated mean squared error
    clipped_fraction: float            # fp32 values outside [(qmin - zp) * s, (qmax - zp) * s]
    channel_cosines: list[float] = field(default_factory=list)  # Conv: accumulated cosine per output channel
    worst_channels: list[tuple[int, float]] = field(default_factory=list)  # the 5 lowest (channel, cosine)


@dataclass
class OutputReport:
    name: str
    cosine: float
    sqnr_db: float
    max_abs_error: float
    top1_agreement: float | None       # class vectors [N, C], C > 1: fraction of rows with the same argmax
    parts: list[OutputPart] = field(default_factory=list)  # mixed ranges (parts.py): SQNR of each part
    # the largest share of the summed squared error one image holds: near 1, the SQNR is that image's (a
    # two-class softmax's least confident image), and another slice of images can read many dB apart
    largest_image_share: float | None = None

    @property
    def worst_sqnr_db(self) -> float:
        """The SQNR decisions use: the worst part's when the output mixes ranges, else the whole output's."""
        return min([self.sqnr_db] + [part.sqnr_db for part in self.parts]) if self.parts else self.sqnr_db


@dataclass
class Accuracy:
    output: str                        # the class-vector output the labels are checked against
    labeled: int                       # images that had a label
    unlabeled: int                     # images the labels file does not list
    fp32: float
    int8: float


@dataclass
class EvalReport:
    layers: list[LayerReport]          # ranked: worst isolated SQNR first
    outputs: list[OutputReport]
    images: int
    accuracy: Accuracy | None = None
    notes: list[str] = field(default_factory=list)


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def to_json(report: EvalReport) -> dict:
    layers = [{
        "rank": rank, "name": lay.name, "op_type": lay.op_type, "output": lay.output,
        "scale": lay.scale, "zero_point": lay.zero_point,
        "cosine": lay.cosine, "sqnr_db": finite(lay.sqnr_db), "mse": lay.mse,
        "isolated_cosine": lay.isolated_cosine, "isolated_sqnr_db": finite(lay.isolated_sqnr_db),
        "clipped_fraction": lay.clipped_fraction,
        "worst_channels": [{"channel": c, "cosine": v} for c, v in lay.worst_channels],
        "channel_cosines": lay.channel_cosines,
    } for rank, lay in enumerate(report.layers, start=1)]
    outputs = [{
        "name": out.name, "cosine": out.cosine, "sqnr_db": finite(out.sqnr_db),
        "max_abs_error": out.max_abs_error, "top1_agreement": out.top1_agreement,
        "worst_sqnr_db": finite(out.worst_sqnr_db), "largest_image_share": out.largest_image_share,
        "parts": [{"axis": p.axis, "channels": p.channels, "max_abs": p.max_abs, "sqnr_db": finite(p.sqnr_db)}
                  for p in out.parts],
    } for out in report.outputs]
    data = {"images": report.images, "layers": layers, "outputs": outputs, "notes": list(report.notes)}
    if report.accuracy is not None:
        acc = report.accuracy
        data["accuracy"] = {"output": acc.output, "labeled": acc.labeled, "unlabeled": acc.unlabeled,
                            "fp32": acc.fp32, "int8": acc.int8}
    return _strict(data)


def _strict(value):
    """The same structure with every non-finite float replaced by null (JSON has no NaN or Infinity)."""
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    if isinstance(value, float):
        return finite(value)
    return value
