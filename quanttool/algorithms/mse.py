"""MSE: the threshold that minimises the expected quantization error over the observed histogram.

Conventions:
- Histogram: 2048 bins over [0, extent] re-binned from the streaming histogram (see _histogram.py); exact
  zeros are left out because every scale represents 0 exactly (they add no error).
- Candidates: the right edges T = t * extent / 2048 for t = 128 .. 2048 (T never below 1/16 of the extent).
- Error of a candidate: sum over bins of count * (c - T)^2 for bin centres c beyond T (clipping), plus
  count * step^2 / 12 for the bins inside (uniform rounding noise), with step the scale the range gives:
  symmetric T / (2**(bits-1) - 1), unsigned T / (2**bits - 1).
- asymmetric: each side separately, with step = 2T / (2**bits - 1), i.e. each half of the range holds half
  of the levels (the same split kl.py uses; a joint search would be quadratic in the candidates).
- The smallest error wins; exact ties go to the smallest T.
All candidates are evaluated at once from suffix sums of count, count*c and count*c^2.
"""

from __future__ import annotations

import numpy as np

from ..stats import TensorStats
from ._histogram import histogram_over_extent

FIRST_CANDIDATE = 128


def _suffix(values: np.ndarray) -> np.ndarray:
    """out[t] = sum(values[t:]), with a trailing 0."""
    return np.concatenate([np.cumsum(values[::-1])[::-1], [0.0]])


def errors(hist: np.ndarray, extent: float, steps_per_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(candidate thresholds, expected squared error * count for each); step = T / steps_per_threshold."""
    n = hist.size
    width = extent / n
    centres = (np.arange(n) + 0.5) * width
    s0, s1, s2 = _suffix(hist), _suffix(hist * centres), _suffix(hist * centres**2)
    ts = np.arange(min(FIRST_CANDIDATE, n), n + 1)
    thresholds = ts * width
    clip = s2[ts] - 2.0 * thresholds * s1[ts] + thresholds**2 * s0[ts]
    inside = s0[0] - s0[ts]
    noise = inside * (thresholds / steps_per_threshold) ** 2 / 12.0
    return thresholds, np.maximum(clip, 0.0) + noise


def threshold(stats: TensorStats, which: str, steps_per_threshold: float) -> float:
    hist, extent = histogram_over_extent(stats, which)
    if extent == 0.0:
        return 0.0
    thresholds, errs = errors(hist, extent, steps_per_threshold)
    return float(thresholds[int(np.argmin(errs))])


def compute_range(stats: TensorStats, kind: str, bits: int = 8) -> tuple[float, float]:
    if kind == "symmetric":
        t = threshold(stats, "abs", 2 ** (bits - 1) - 1)
        return -t, t
    if kind == "unsigned":
        return 0.0, threshold(stats, "pos", 2**bits - 1)
    half = (2**bits - 1) / 2.0
    return -threshold(stats, "neg", half), threshold(stats, "pos", half)
