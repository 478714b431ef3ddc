"""Add, Mul, lookup-table ops and lone Relu/Clip on int8, with numpy broadcasting."""

from __future__ import annotations

import numpy as np

from .integer import lookup, requantize, saturate, shift_half_away


def add(layer: dict, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """onnxruntime's QLinearAdd fixed point: 22-bit multipliers, one shift, ties away from zero."""
    (za, zb), (ma, mb) = [i["zero_point"] for i in layer["inputs"]], layer["add"]["multipliers"]
    acc = ma * (a.astype(np.int64) - za) + mb * (b.astype(np.int64) - zb)
    return saturate(layer["output"]["zero_point"] + shift_half_away(acc, layer["add"]["shift"]), layer["clamp"])


def mul(layer: dict, a: np.ndarray, b: np.ndarray, float32: bool) -> np.ndarray:
    za, zb = [i["zero_point"] for i in layer["inputs"]]
    acc = (a.astype(np.int64) - za) * (b.astype(np.int64) - zb)
    return saturate(layer["output"]["zero_point"] + requantize(acc, layer["requant"], None, float32=float32), layer["clamp"])


def table(layer: dict, x: np.ndarray) -> np.ndarray:
    """Sigmoid, HardSigmoid, LeakyRelu: one lookup per value."""
    return lookup(x, layer["lut"])


def clip(layer: dict, x: np.ndarray) -> np.ndarray:
    """A lone Relu / Clip: an integer clamp when input and output share parameters, else its lookup table."""
    return lookup(x, layer["lut"]) if "lut" in layer else saturate(x.astype(np.int64), layer["clamp"])


def softmax(layer: dict, x: np.ndarray) -> np.ndarray:
    """onnxruntime's QLinearSoftmax (int8): a uint32 exp table indexed from the row maximum, a uint32 sum and a
    rounded integer division; the result's low byte is the int8 output (as its cast does)."""
    from ..rewrite.params import softmax_table

    axis = int(layer["attributes"].get("axis", -1)) % x.ndim
    rows = np.moveaxis(x.astype(np.int64), axis, -1)
    table = layer["exp_table"]
    if layer.get("reduce_len") != rows.shape[-1]:
        table = softmax_table(layer["inputs"][0]["scale"], rows.shape[-1])
    idx = (127 - rows.max(axis=-1, keepdims=True) + rows) % 256
    t = np.asarray(table, dtype=np.int64)[idx]
    total = t.sum(axis=-1, keepdims=True) % 2**32
    q = (t * layer["y_scale_int"] + total // 2) // np.maximum(total, 1) + layer["output"]["zero_point"]
    q = ((q % 256) + 128) % 256 - 128  # the low byte, as int8
    return np.moveaxis(q.astype(np.int8), -1, axis)
