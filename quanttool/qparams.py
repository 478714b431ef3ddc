"""Quantization parameters: scale and zero point from a clip range, and the fixed-point multiplier.

Conventions (REFERENCE.md section 2):
- symmetric: zero point 0, levels [-(2^(b-1) - 1), 2^(b-1) - 1], i.e. +-127 for int8, scale = T / 127;
- unsigned (tensors that are never negative, scheme `auto`): all 2^b levels of int8, zero point -128,
  scale = T / 255;
- asymmetric: S = (rmax - rmin) / (qmax - qmin), Z = round(qmin - rmin / S) clipped, over a range that
  contains 0 so zero is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Scales never go below this; a tensor that is exactly zero everywhere is quantized as if its range were
# [-1, 1] (any scale represents 0 exactly, and a tiny one would overflow the int32 bias of the next layer,
# whose scale is input scale x weight scale).
MIN_SCALE = 1e-8
ZERO_RANGE = 1.0


@dataclass(frozen=True)
class QParam:
    scale: float
    zero_point: int = 0


def qrange(bits: int = 8) -> tuple[int, int]:
    """Signed storage range, e.g. (-128, 127) for 8 bits."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def symmetric(threshold: float, bits: int = 8) -> QParam:
    qmax = 2 ** (bits - 1) - 1
    threshold = float(threshold) if threshold > 0 else ZERO_RANGE
    return QParam(max(threshold / qmax, MIN_SCALE), 0)


def unsigned(threshold: float, bits: int = 8) -> QParam:
    """[0, T] onto all 2^b levels of signed storage: zero point at qmin."""
    qmin, qmax = qrange(bits)
    threshold = float(threshold) if threshold > 0 else ZERO_RANGE
    return QParam(max(threshold / (qmax - qmin), MIN_SCALE), qmin)


def asymmetric(rmin: float, rmax: float, bits: int = 8) -> QParam:
    qmin, qmax = qrange(bits)
    rmin, rmax = min(float(rmin), 0.0), max(float(rmax), 0.0)
    if rmax - rmin <= 0:
        return symmetric(0.0, bits)
    scale = max((rmax - rmin) / (qmax - qmin), MIN_SCALE)
    zero_point = int(round(qmin - rmin / scale))
    return QParam(scale, max(qmin, min(qmax, zero_point)))


def decompose_multiplier(m: float) -> tuple[int, int]:
    """M = 2^-n * M0 with M0 in [0.5, 1); returns (round(2^31 * M0) as int32, n).

    n may be negative when M >= 1 (a left shift). round(2^31 * M0) can reach 2^31 when M0 is just
    below 1; then M0 is halved and n reduced so the integer stays in int32.
    """
    if not (m > 0 and math.isfinite(m)):
        raise ValueError(f"multiplier must be positive and finite, got {m}")
    mantissa, exponent = math.frexp(m)  # m = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = int(round(mantissa * (1 << 31)))
    shift = -exponent
    if m0 == 1 << 31:
        m0 //= 2
        shift -= 1
    return m0, shift
