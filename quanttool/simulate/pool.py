"""Pooling on int8: global and windowed average (int32 sums, divisor folded into the requantization) and max."""

from __future__ import annotations

import numpy as np

from ..rewrite.params import global_average_requant
from .integer import QMIN, requantize, saturate
from .linear import Unsupported, conv_pads, windows


def _geometry(layer: dict, x: np.ndarray):
    attrs = layer["attributes"]
    if attrs.get("ceil_mode", 0):
        raise Unsupported("pooling with ceil_mode=1")
    kernel = tuple(attrs["kernel_shape"])
    strides = tuple(attrs.get("strides", [1] * len(kernel)))
    dilations = tuple(attrs.get("dilations", [1] * len(kernel)))
    return kernel, strides, dilations, conv_pads(attrs, x.shape[2:], kernel, strides, dilations)


def global_average(layer: dict, x: np.ndarray, float32: bool) -> np.ndarray:
    """The divisor H*W is folded into the multiplier; a model with dynamic H/W gets it for the size at hand."""
    spec = layer["inputs"][0]
    acc = (x.astype(np.int64) - spec["zero_point"]).sum(axis=tuple(range(2, x.ndim)), keepdims=True)
    n = int(np.prod(x.shape[2:]))
    requant = layer["requant"] if layer.get("divisor") == n else global_average_requant(
        spec["scale"], layer["output"]["scale"], n)
    out = layer["output"]["zero_point"] + requantize(acc, requant, None, float32=float32)
    return saturate(out, layer["clamp"])


def average(layer: dict, x: np.ndarray) -> np.ndarray:
    """Window sums of (q - zp); the divisor is the kernel area (count_include_pad=1) or the count of real
    (non-pad) elements of each window."""
    kernel, strides, dilations, pads = _geometry(layer, x)
    zp = layer["inputs"][0]["zero_point"]
    acc = windows(x.astype(np.int64) - zp, kernel, strides, dilations, pads, 0).sum(axis=(-2, -1))
    if layer["divisor"] == "kernel_area":
        divisor = np.int64(np.prod(kernel))
    else:
        ones = np.ones((1, 1) + x.shape[2:], dtype=np.int64)
        divisor = windows(ones, kernel, strides, dilations, pads, 0).sum(axis=(-2, -1))
    out = layer["output"]["zero_point"] + requantize(acc, layer["requant"], None, divisor)
    return saturate(out, layer["clamp"])


def maximum(layer: dict, x: np.ndarray) -> np.ndarray:
    kernel, strides, dilations, pads = _geometry(layer, x)
    return windows(x, kernel, strides, dilations, pads, QMIN).max(axis=(-2, -1)).astype(np.int8)


def global_maximum(layer: dict, x: np.ndarray) -> np.ndarray:
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)
