"""Relu/Clip fusion: decide whether an activation after Conv/Gemm/MatMul/Add can be absorbed into the
quantization of its output.

Absorbing is exact when clamping to the int8 range does the activation's job: the output zero point is the
type minimum (so q >= qmin means x >= 0, which is ReLU) and, for Clip(0, hi), the largest representable value
scale * (qmax - zp) is not above hi (so the upper clamp never needs the Clip). Otherwise the activation is kept
as its own node and the producer's output is quantized with its own table entry.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from ..ops import ops_where
from ..qparams import QParam, qrange

FUSABLE_PRODUCERS = ops_where(fuses_activation=True)
ACTIVATIONS = ops_where(activation=True)  # Relu, Clip


def clip_bounds(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> tuple[float, float] | None:
    """(min, max) of a Clip from attributes (opset < 11) or constant inputs; None when an input is not constant."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    lo, hi = float(attrs.get("min", -math.inf)), float(attrs.get("max", math.inf))
    for index, default in ((1, -math.inf), (2, math.inf)):
        if len(node.input) > index and node.input[index]:
            value = constants.get(node.input[index])
            if value is None or value.size != 1:
                return None
            if index == 1:
                lo = float(value.reshape(-1)[0])
            else:
                hi = float(value.reshape(-1)[0])
        elif index == 1 and "min" not in attrs:
            lo = default
    return lo, hi


def activation_bounds(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> tuple[float, float] | None:
    """The real-valued clamp a Relu (0, inf) or Clip (lo, hi) applies; None for other ops or non-constant bounds."""
    if node.op_type == "Relu":
        return 0.0, math.inf
    return clip_bounds(node, constants) if node.op_type == "Clip" else None


def absorbable(node: onnx.NodeProto, qp: QParam | None, constants: dict[str, np.ndarray]) -> bool:
    """True when quantizing with `qp` (the Relu/Clip output's table entry) reproduces the activation exactly."""
    if qp is None:
        return False
    qmin, qmax = qrange(8)  # QuantizeLinear clamps to the int8 storage range whatever the bit width
    if int(qp.zero_point) != qmin:
        return False
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip":
        return False
    bounds = clip_bounds(node, constants)
    if bounds is None or bounds[0] != 0.0:
        return False
    return qp.scale * (qmax - qp.zero_point) <= bounds[1] * (1 + 1e-6)
