"""Weight, bias and constant-operand quantization (numpy only, no graph editing).

- Weights: per output channel, symmetric, levels [-(2^(b-1)-1), 2^(b-1)-1] (+-127 for int8),
  s_c = max|W_c| / 127, q = clamp(round(W / s_c)). A channel that is all zero gets the largest scale of the
  other channels (1/127 if the whole tensor is zero): its weights are exactly 0 under any scale, and a
  scale like the others keeps its bias scale s_in * s_c ordinary, so a non-zero bias on a pruned channel
  still fits int32 instead of overflowing against a 1e-8 scale.
- Bias: int32, scale s_in * s_w[c] computed in float32 exactly as onnxruntime multiplies the two scales when
  it fuses the QDQ group, zero point 0, q = round(b / scale). A channel whose bias would not fit int32 at that
  scale (tiny weights after BatchNorm folding, large bias) gets a larger weight scale instead, as onnxruntime's
  and TFLite's quantizers do: s_w[c] >= 1.0001 * 2 |b_c| / (2^32 - 2) / s_in. A saturated bias would shift
  the whole channel (and onnxruntime's int32 accumulator wraps), while a coarser weight of a channel whose
  weights are tiny next to its bias costs little. Saturation stays as a last guard, with a warning.
- Constant operands of Add/Mul/Concat: per-tensor symmetric (they have no table entry).
"""

from __future__ import annotations

import numpy as np

from ..errors import warn
from ..qparams import QParam, symmetric

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def weight_qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def quantize_weight(w: np.ndarray, axis: int | None, bits: int = 8,
                    min_scale: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel along `axis` (per-tensor when axis is None). Returns (int8 q, float32 scales of shape [C] or []).
    `min_scale` (per channel or scalar) is a floor on the scales, from `bias_fit_scale`."""
    w = np.asarray(w, dtype=np.float64)
    qmax = weight_qmax(bits)
    if axis is None:
        absmax = np.array(np.abs(w).max() if w.size else 0.0)
    else:
        absmax = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1, initial=0.0)
    scale = absmax / qmax
    nonzero = scale > 0
    fill = scale[nonzero].max() if nonzero.any() else 1.0 / qmax
    scale = np.maximum(np.where(nonzero, scale, fill), min_scale).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.clip(np.round(w / scale.astype(np.float64).reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def bias_fit_scale(b: np.ndarray, s_in: float, per_channel: bool) -> np.ndarray | float:
    """Smallest weight scale (per channel, or one for all) at which round(b / (s_in * s_w)) fits int32, with
    onnxruntime's margin: bias scale >= 1.0001 * 2 |b| / (2^32 - 2)."""
    absb = np.abs(np.asarray(b, dtype=np.float64)).reshape(-1)
    if not per_channel:
        absb = absb.max(initial=0.0)
    return 1.0001 * 2.0 * absb / (2.0**32 - 2) / float(s_in)


def bias_scale(s_in: float, s_w: np.ndarray) -> np.ndarray:
    """float32(s_in) * float32(s_w): the product onnxruntime forms for the int32 bias of a fused QLinear op."""
    return (np.float32(s_in) * np.asarray(s_w, dtype=np.float32)).astype(np.float32)


def quantize_bias(b: np.ndarray, scale: np.ndarray, node: str) -> np.ndarray:
    """round(b / scale) as int32; values beyond int32 are saturated with a warning naming the node."""
    raw = np.round(np.asarray(b, dtype=np.float64) / np.asarray(scale, dtype=np.float64))
    over = (raw < INT32_MIN) | (raw > INT32_MAX)
    if over.any():
        warn(
            f"node '{node}': {int(over.sum())} bias value(s) overflow int32 at scale s_in*s_w and were saturated; "
            f"the input or weight scale is too small for this bias"
        )
    return np.clip(raw, INT32_MIN, INT32_MAX).astype(np.int32)


def constant_qparam(c: np.ndarray, bits: int = 8) -> QParam:
    """Per-tensor symmetric qparams for a constant operand (bias of an Add, factor of a Mul, ...)."""
    c = np.asarray(c, dtype=np.float64)
    absmax = float(np.abs(c).max()) if c.size else 0.0
    return symmetric(absmax if absmax > 0 else 1.0, bits)
