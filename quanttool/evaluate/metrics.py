"""Streaming error metrics: running float64 sums per tensor (and per channel), never the tensors themselves.

For a reference r (fp32 model) and an approximation q (int8 model, dequantized) over all images:
- SQNR dB = 10 * log10(sum r^2 / sum (r - q)^2); +inf when the error is exactly zero.
- cosine = sum r*q / sqrt(sum r^2 * sum q^2), with sum r*q = (sum r^2 + sum q^2 - sum (r - q)^2) / 2.
  The identity saves one reduction per tensor; all three sums are float64 so the cancellation is harmless
  (an fp32 dot product would get 1 - cosine wrong by tens of percent on a 1M-element tensor).
These are global over the images (one long vector), not an average of per-image values as Tengine prints.
Sums of squares are float32 over rows of at most a few thousand values, then float64 (see row_sumsq).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


ROW = 16384  # longest row summed in float32
BLOCK = 4096  # row length a whole tensor is cut into


def row_sumsq(rows: np.ndarray) -> np.ndarray:
    """sum x^2 of each row of a float32 [m, k] array, as float64.

    Rows up to ROW values are summed in float32 by BLAS dot products (SIMD lanes of a few hundred terms each:
    relative error ~1e-6 typical, < 3e-5 bound), and the row sums added in float64: about 10x faster than a
    float64 reduction, and far below the 0.1 dB / 5 decimals the report shows. Longer rows: float64."""
    if rows.shape[1] > ROW:
        return np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
    return np.matmul(rows[:, None, :], rows[:, :, None]).reshape(rows.shape[0]).astype(np.float64)


def sumsq(x: np.ndarray) -> float:
    """sum x^2 in float64 from float32 partial sums over BLOCK-value rows (see row_sumsq)."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    head = flat.size - flat.size % BLOCK
    total = float(row_sumsq(flat[:head].reshape(-1, BLOCK)).sum()) if head else 0.0
    tail = flat[head:].astype(np.float64)
    return total + float(np.dot(tail, tail))


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

    def update(self, ref: np.ndarray, q: np.ndarray, track_max: bool = False, ref2: float | None = None) -> float:
        """Fold one image in; `ref2`, when given, is sum ref^2 already computed. Returns sum ref^2."""
        ref = np.asarray(ref, dtype=np.float32)
        q = np.asarray(q, dtype=np.float32)
        if ref.shape != q.shape:
            raise ValueError(f"shape {q.shape} differs from the reference's {ref.shape}")
        diff = ref - q
        ref2 = sumsq(ref) if ref2 is None else ref2
        self.add(ref2, sumsq(q), sumsq(diff), ref.size)
        if track_max and diff.size:
            self.max_abs = max(self.max_abs, float(np.abs(diff).max()))
        return ref2

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
        rows = n * c
        length = ref.size // rows if rows else 0
        r = np.ascontiguousarray(ref).reshape(rows, length)
        a = np.ascontiguousarray(q).reshape(rows, length)
        sums = [row_sumsq(x).reshape(n, c).sum(axis=0) for x in (r, a, r - a)]
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
