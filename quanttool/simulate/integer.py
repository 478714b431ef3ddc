"""Integer arithmetic shared by the kernels: rounding divisions and the requantization step.

Everything is int64 numpy on int8 / int32 values; no float. Accumulators are wrapped to int32 like the
hardware (and onnxruntime's int32 accumulators) would wrap them.
"""

from __future__ import annotations

import numpy as np

QMIN, QMAX = -128, 127


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap to int32, as a 32-bit accumulator does on overflow."""
    return np.asarray(x, dtype=np.int64).astype(np.int32)


def round_div_half_even(num: np.ndarray, den) -> np.ndarray:
    """num / den rounded to the nearest integer, ties to the even one (den > 0)."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    q = np.floor_divide(num, den)
    twice_r = 2 * (num - q * den)
    up = (twice_r > den) | ((twice_r == den) & (q % 2 == 1))
    return q + up


def shift_half_away(acc: np.ndarray, shift: int) -> np.ndarray:
    """acc / 2^shift rounded to the nearest integer, ties away from zero (onnxruntime's QLinearAdd)."""
    acc = np.asarray(acc, dtype=np.int64)
    if shift <= 0:
        return acc << -shift
    q = acc >> shift  # floor
    rem = acc - (q << shift)
    half = np.int64(1) << (shift - 1)
    return q + ((rem > half) | ((rem == half) & (acc >= 0)))


def requantize(acc: np.ndarray, requant: list[dict], axis: int | None, divisor=1, float32: bool = False) -> np.ndarray:
    """round_half_even(acc * m0 / (divisor * 2^(31 + shift))), per channel along `axis` when several
    multipliers are given. The product acc * m0 stays below 2^62 (|acc| < 2^31, m0 < 2^31)."""
    m0 = np.array([r["m0"] for r in requant], dtype=np.int64)
    exponent = np.array([31 + r["shift"] for r in requant], dtype=np.int64)
    if len(requant) > 1:
        shape = [1] * np.ndim(acc)
        shape[axis] = -1
        m0, exponent = m0.reshape(shape), exponent.reshape(shape)
    else:
        m0, exponent = m0[0], exponent[0]
    wide = int(np.max(exponent)) + int(np.max(divisor)).bit_length() > 62 or int(np.min(exponent)) < 0
    # a tiny M (or M >= 1) leaves int64: exact Python integers then (slow, and rare)
    kind = object if wide else np.int64
    if float32 and not wide:  # onnxruntime: float32(acc) * M in float32 (M has 24 significant bits, so m0 too)
        acc = round_to_float32(acc)
        num = round_to_float32(acc * m0)
        return round_div_half_even(num, (np.int64(1) << exponent) * np.asarray(divisor, dtype=np.int64))
    num = np.asarray(acc, dtype=np.int64).astype(kind) * np.asarray(m0).astype(kind)
    if wide:
        num = num * (np.int64(2) ** np.maximum(-exponent, 0)).astype(object)
        den = (2 ** np.maximum(exponent, 0).astype(object)) * np.asarray(divisor).astype(object)
        return round_div_half_even_object(num, den)
    return round_div_half_even(num, (np.int64(1) << exponent) * np.asarray(divisor, dtype=np.int64))


def round_div_half_even_object(num, den) -> np.ndarray:
    num, den = np.asarray(num, dtype=object), np.asarray(den, dtype=object)
    q = num // den
    twice_r = 2 * (num - q * den)
    up = (twice_r > den) | ((twice_r == den) & (q % 2 == 1))
    return (q + up.astype(object)).astype(np.int64)


def saturate(x: np.ndarray, clamp=(QMIN, QMAX)) -> np.ndarray:
    return np.clip(x, clamp[0], clamp[1]).astype(np.int8)


def lookup(q: np.ndarray, lut: list[int]) -> np.ndarray:
    return np.asarray(lut, dtype=np.int8)[q.astype(np.int16) - QMIN]


_POWERS = np.int64(1) << np.arange(63, dtype=np.int64)


def round_to_float32(x: np.ndarray) -> np.ndarray:
    """The integer value float32(x) has: x rounded to 24 significant bits, ties to even (exact int64 ops)."""
    x = np.asarray(x, dtype=np.int64)
    bits = np.searchsorted(_POWERS, np.abs(x), side="right")  # bit length of |x|
    drop = np.maximum(bits - 24, 0)
    unit = np.int64(1) << drop
    return round_div_half_even(x, unit) * unit
