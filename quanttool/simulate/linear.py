"""Conv, Gemm and MatMul on int8: int32 accumulators of (q_in - zp_in) * q_w plus the int32 bias, then the
per-channel requantization. The weights are symmetric (zero point 0), as convert writes them."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .integer import requantize, saturate, wrap_int32


class Unsupported(Exception):
    """A case the integer kernels do not cover; the caller runs the int8 model's own float path instead."""


def conv_pads(attrs: dict, spatial: tuple, kernel: tuple, strides: tuple, dilations: tuple) -> list[int]:
    """Explicit [begin..., end...] pads, also for auto_pad SAME_UPPER / SAME_LOWER / VALID."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * 2 * len(spatial)))
    if auto == "VALID":
        return [0] * 2 * len(spatial)
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def windows(x: np.ndarray, kernel, strides, dilations, pads, pad_value) -> np.ndarray:
    """[N, C, *out, *kernel] views of the padded input (2-D spatial)."""
    if x.ndim != 4:
        raise Unsupported(f"{x.ndim - 2}-D spatial input (the integer kernels cover 2-D)")
    (ph0, pw0, ph1, pw1) = pads
    xp = np.pad(x, ((0, 0), (0, 0), (ph0, ph1), (pw0, pw1)), constant_values=pad_value)
    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
    view = sliding_window_view(xp, extent, axis=(2, 3))
    return view[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]


def conv(x: np.ndarray, zp_in: int, w: np.ndarray, bias, attrs: dict) -> np.ndarray:
    """int32 accumulators [N, M, OH, OW] of a grouped, strided, dilated, padded convolution."""
    kernel = tuple(w.shape[2:])
    strides = tuple(attrs.get("strides", [1] * len(kernel)))
    dilations = tuple(attrs.get("dilations", [1] * len(kernel)))
    pads = conv_pads(attrs, x.shape[2:], kernel, strides, dilations)
    group = int(attrs.get("group", 1))
    # padding is the real value 0, i.e. q = zp_in: pad the centred values with 0
    cols = windows(x.astype(np.int64) - zp_in, kernel, strides, dilations, pads, 0)
    n, c, oh, ow = cols.shape[:4]
    m = w.shape[0]
    cols = cols.reshape(n, group, c // group, oh, ow, *kernel)
    wg = w.astype(np.int64).reshape(group, m // group, c // group, *kernel)
    acc = np.einsum("ngcyxij,gmcij->ngmyx", cols, wg, optimize=True).reshape(n, m, oh, ow)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64).reshape(1, -1, 1, 1)
    return wrap_int32(acc)


def gemm(a: np.ndarray, zp_a: int, w: np.ndarray, bias, attrs: dict) -> np.ndarray:
    if attrs.get("transA", 0):
        raise Unsupported("Gemm with transA=1")
    wt = w.T if attrs.get("transB", 0) else w
    acc = (a.astype(np.int64) - zp_a) @ wt.astype(np.int64)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64)
    return wrap_int32(acc)


def matmul(a: np.ndarray, zp_a: int, b: np.ndarray, zp_b: int) -> np.ndarray:
    return wrap_int32(np.matmul(a.astype(np.int64) - zp_a, b.astype(np.int64) - zp_b))


def linear_layer(layer: dict, inputs: list[np.ndarray], weight: np.ndarray | None, float32: bool) -> np.ndarray:
    """One Conv / Gemm / MatMul layer from its --params entry: accumulate, requantize, clamp."""
    op, attrs = layer["op_type"], layer["attributes"]
    zp = [i["zero_point"] for i in layer["inputs"]]
    if op == "Conv":
        acc, axis = conv(inputs[0], zp[0], weight, layer.get("bias"), attrs), 1
    elif op == "Gemm":
        acc, axis = gemm(inputs[0], zp[0], weight, layer.get("bias"), attrs), -1
    elif op == "MatMul" and weight is not None:
        acc, axis = matmul(inputs[0], zp[0], weight, 0), -1
    elif op == "MatMul":
        acc, axis = matmul(inputs[0], zp[0], inputs[1], zp[1]), -1
    else:
        raise Unsupported(f"no integer kernel for {op}")
    out = layer["output"]["zero_point"] + requantize(acc, layer["requant"], axis, float32=float32)
    return saturate(out, layer["clamp"])
