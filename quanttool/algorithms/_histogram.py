"""Histogram helpers shared by the histogram-based methods (kl, mse, tengine).

The streaming histogram (quanttool.stats) covers (0, R] with R a power of two in [absmax, 2*absmax). The
methods want bins over [0, extent] (extent = absmax, max or -min). `rebin` re-expresses the counts on new edges
by linear interpolation of the cumulative histogram, i.e. it assumes values are spread uniformly inside each
source bin. Because R < 2*extent, the source has at least BINS/2 bins over the data, so 2048 target bins split
each source bin in at most about two; counts stay non-negative and the total is preserved.
"""

from __future__ import annotations

import numpy as np

from ..stats import BINS, TensorStats

NUM_BINS = BINS  # the re-binned histogram keeps the streaming histogram's resolution


def rebin(counts: np.ndarray, rng: float, edges: np.ndarray) -> np.ndarray:
    """Counts over (0, rng] in len(counts) equal bins, re-expressed over the bins between `edges`."""
    old_edges = np.linspace(0.0, rng, counts.size + 1)
    cumulative = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
    # np.maximum.accumulate keeps the interpolated cumulative monotone despite float rounding.
    at = np.maximum.accumulate(np.interp(edges, old_edges, cumulative))
    return np.diff(at)


def side(stats: TensorStats, which: str) -> tuple[np.ndarray, float, float]:
    """(counts over (0, R], R, extent) for |x| ("abs"), the positive values ("pos") or -x of the negative ones."""
    if which == "abs":
        return stats.pos + stats.neg, stats.range, stats.absmax
    if which == "pos":
        return stats.pos, stats.range, max(stats.max, 0.0)
    return stats.neg, stats.range, max(-stats.min, 0.0)


def histogram_over_extent(stats: TensorStats, which: str, bins: int = NUM_BINS) -> tuple[np.ndarray, float]:
    """`bins` counts over [0, extent] (exact zeros excluded) and the extent; extent 0 when the side is empty."""
    counts, rng, extent = side(stats, which)
    if extent <= 0.0 or rng <= 0.0 or counts.sum() == 0:
        return np.zeros(bins), 0.0
    return rebin(counts, rng, np.linspace(0.0, extent, bins + 1)), extent


def xlogx(values: np.ndarray) -> np.ndarray:
    """x * log(x) with 0 * log(0) = 0."""
    out = np.zeros_like(values, dtype=np.float64)
    positive = values > 0
    out[positive] = values[positive] * np.log(values[positive])
    return out

