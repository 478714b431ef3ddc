"""Percentile: clip at a high percentile of the observed values instead of at the extreme.

Conventions:
- symmetric: T = the `percentile` of |x| over all values, exact zeros included in the population;
- unsigned: T = the `percentile` of x (the tensor is never negative), zeros included;
- asymmetric: the two tails share the clipped mass equally: lo = the (100 - p) / 2 percentile of x and
  hi = the (100 + p) / 2 percentile, then widened to contain 0.
The value comes from the streaming histogram by linear interpolation of the cumulative count inside the bin
(values assumed uniform within a bin), so it is within one bin width R / 2048 of the exact sample percentile.
It never exceeds the observed extreme. When the percentile falls on the exact zeros (a tensor that is almost
all zeros) the range would be empty; the observed extreme is used instead so the non-zero values survive.
"""

from __future__ import annotations

import numpy as np

from ..stats import BINS, TensorStats


def _inverse(cumulative: np.ndarray, xs: np.ndarray, rank: float) -> float:
    """The smallest x where the piecewise-linear cumulative count reaches `rank` (skips empty bins)."""
    i = int(np.searchsorted(cumulative, rank, side="left"))  # first i with cumulative[i] >= rank
    if i == 0:
        return float(xs[0])
    if i == cumulative.size:
        return float(xs[-1])
    below, above = cumulative[i - 1], cumulative[i]
    return float(xs[i - 1] + (rank - below) / (above - below) * (xs[i] - xs[i - 1]))


def _upper(stats: TensorStats, counts: np.ndarray, fraction: float, extent: float) -> float:
    """The `fraction` quantile of a non-negative population: zeros at 0, `counts` over (0, R]."""
    edges = np.linspace(0.0, stats.range, BINS + 1)
    cumulative = stats.zeros + np.concatenate([[0], np.cumsum(counts)])
    rank = fraction * (stats.zeros + counts.sum())
    value = min(_inverse(cumulative, edges, rank), extent)
    return value if value > 0.0 else extent


def compute_range(stats: TensorStats, kind: str, bits: int = 8, percentile: float = 99.99) -> tuple[float, float]:
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if stats.count == 0 or stats.absmax == 0.0:
        return 0.0, 0.0
    if kind == "symmetric":
        t = _upper(stats, stats.pos + stats.neg, percentile / 100.0, stats.absmax)
        return -t, t
    if kind == "unsigned":
        return 0.0, _upper(stats, stats.pos, percentile / 100.0, max(stats.max, 0.0))
    # Signed cumulative from -R to R: negative bins reversed, the zeros as a step at 0, then positive bins.
    edges = np.linspace(0.0, stats.range, BINS + 1)
    xs = np.concatenate([-edges[::-1], edges])
    below = np.concatenate([[0], np.cumsum(stats.neg[::-1])])  # count of x <= -edge, from -R up to 0
    cumulative = np.concatenate([below, below[-1] + stats.zeros + np.concatenate([[0], np.cumsum(stats.pos)])])
    tail = (100.0 - percentile) / 200.0
    lo = _inverse(cumulative, xs, tail * stats.count)
    hi = _inverse(cumulative, xs, (1.0 - tail) * stats.count)
    return min(max(lo, stats.min), 0.0), max(min(hi, stats.max), 0.0)
