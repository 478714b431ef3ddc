"""Opset upgrade: int8 needs opset 13 (per-channel DequantizeLinear). Done first in preparation, so the
graph that calibration observes and the graph that convert rewrites carry the same tensor names (the version
converter names the tensors it creates)."""

from __future__ import annotations

import onnx

from ..errors import QuantError, first_line

MIN_OPSET = 13


def default_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return 0


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of `model` at opset >= 13; ir_version kept (at least 7, which opset 13 needs)."""
    opset = default_opset(model)
    if opset >= MIN_OPSET:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    try:
        out = onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise QuantError(f"model is at opset {opset} and converting it to opset {MIN_OPSET} (needed for per-channel "
                         f"int8) failed: {first_line(exc)}; re-export the model at opset >= {MIN_OPSET}") from None
    out.ir_version = max(model.ir_version, 7)
    return out
