"""Streaming error metrics: running float64 sums per tensor (and per channel), never the tensors themselves.

For a reference r (fp32 model) and an approximation q (int8 model, dequantized) over all images:
- SQNR dB = 10 * log10(sum r^2 / sum (r - q)^2); +inf when the error is exactly zero.
- cosine = sum r*q / sqrt(sum r^2 * sum q^2), with sum r*q = (sum r^2 + sum q^2 - sum (r - q)^2) / 2.
  The identity saves one reduction per tensor; all three sums are float64 so the cancellation is harmless
  (an fp32 dot product would get 1 - cosine wrong by tens of percent on a 1M-element tensor).
These are global over the images (one long vector), not an average of per-image values as Tengine prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def sumsq(x: np.ndarray) -> float:
    """sum x^2 in float64 without a float64 copy of x."""
    flat = x.reshape(-1)
    return float(np.einsum("i,i->", flat, flat, dtype=np.float64))


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine(ref2: float, q2: float, err2: float) -> float:
    """Cosine from the three squared sums; two all-zero vectors count as identical (1.0)."""
    if ref2 == 0 and q2 == 0:
        return 1.0
    if ref2 == 0 or q2 == 0:
        return 0.0
    value = (ref2 + q2 - err2) / (2.0 * math.sqrt(ref2 * q2))
    return max(-1.0, min(1.0, value))


@dataclass
class Similarity:
    """Running sums comparing a reference tensor with its approximation, image after image."""

    ref2: float = 0.0
    q2: float = 0.0
    err2: float = 0.0
    count: int = 0
    max_abs: float = 0.0

    def update(self, ref: np.ndarray, q: np.ndarray, track_max: bool = False) -> None:
        ref = np.asarray(ref, dtype=np.float32)
        q = np.asarray(q, dtype=np.float32)
        if ref.shape != q.shape:
            raise ValueError(f"shape {q.shape} differs from the reference's {ref.shape}")
        diff = ref - q
        self.add(sumsq(ref), sumsq(q), sumsq(diff), ref.size)
        if track_max and diff.size:
            self.max_abs = max(self.max_abs, float(np.abs(diff).max()))

    def add(self, ref2: float, q2: float, err2: float, count: int) -> None:
        self.ref2 += ref2
        self.q2 += q2
        self.err2 += err2
        self.count += count

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.ref2, self.err2)

    @property
    def cosine(self) -> float:
        return cosine(self.ref2, self.q2, self.err2)

    @property
    def mse(self) -> float:
        return self.err2 / self.count if self.count else 0.0


class ChannelSimilarity:
    """Per-channel running sums along axis 1 (NCHW Conv outputs); the totals are the channels' sums."""

    def __init__(self) -> None:
        self.ref2: np.ndarray | None = None
        self.q2: np.ndarray | None = None
        self.err2: np.ndarray | None = None

    def update(self, ref: np.ndarray, q: np.ndarray) -> tuple[float, float, float]:
        """Fold one image in and return its (sum r^2, sum q^2, sum err^2) totals over all channels."""
        ref = np.asarray(ref, dtype=np.float32)
        q = np.asarray(q, dtype=np.float32)
        if ref.shape != q.shape:
            raise ValueError(f"shape {q.shape} differs from the reference's {ref.shape}")
        n, c = ref.shape[0], ref.shape[1]
        r = ref.reshape(n, c, -1)
        a = q.reshape(n, c, -1)
        sums = [np.einsum("ncx,ncx->c", x, x, dtype=np.float64) for x in (r, a, r - a)]
        if self.ref2 is None:
            self.ref2, self.q2, self.err2 = (np.zeros(c) for _ in range(3))
        elif self.ref2.shape[0] != c:
            raise ValueError(f"channel count changed from {self.ref2.shape[0]} to {c}")
        self.ref2 += sums[0]
        self.q2 += sums[1]
        self.err2 += sums[2]
        return float(sums[0].sum()), float(sums[1].sum()), float(sums[2].sum())

    def cosines(self) -> list[float]:
        if self.ref2 is None:
            return []
        return [cosine(float(r), float(q), float(e)) for r, q, e in zip(self.ref2, self.q2, self.err2)]


def clipped_count(ref: np.ndarray, lo: float, hi: float) -> int:
    """How many reference values fall outside [lo, hi], the range the int8 grid can represent."""
    return int(np.count_nonzero(ref < lo) + np.count_nonzero(ref > hi))
