"""KL (TensorRT-style entropy calibration): the threshold whose int8 histogram loses least information.

Conventions (ours; `compat="tengine"` in tengine.py reproduces Tengine's instead):
- Histogram: 2048 bins of |x| over [0, absmax], re-binned from the streaming histogram over (0, R] by linear
  interpolation of the cumulative counts (see _histogram.py). Exact zeros are left out: every scale
  represents 0 exactly, so they carry no information about the threshold.
- Candidates t = levels .. 2048 (bins kept). P = hist[:t] with the clipped tail mass sum(hist[t:]) added to
  P[t-1]. Q = hist[:t] (without the tail) merged into `levels` target bins, target bin j covering source bins
  [floor(j*t/levels), floor((j+1)*t/levels)), each merged mass spread uniformly over the non-zero source bins
  of its group (zero source bins stay zero). P and Q are each normalised to sum 1.
- KL = sum over P > 0 of p * log(p / q). Q can be 0 where P > 0 only in bin t-1, when that bin is empty but
  receives the clipped tail; there q is taken as EPSILON = 1e-10 (a heavy, finite penalty for clipping a tail
  into an empty bin), without renormalising Q.
- Only candidates that clip at most MAX_CLIPPED (0.1%) of the non-zero values compete. KL compares the
  shapes of P and Q, not where the values sit: a tensor that stays away from 0 (a Sigmoid output in
  [0.27, 0.62], an input with no black pixel) has a candidate whose kept bins hold one non-empty bin; the
  clipped tail piles into it, P and Q become the same spike, KL is 0, and that threshold would clip nearly
  every value (seen on real exports: 6.7 dB output SQNR instead of 42).
- Threshold = t * bin_width, the right edge of the last kept bin (everything kept is inside the range).
- Ties: KL values within 1e-9 (relative) of the minimum count as equal; the smallest t wins.
- Levels: symmetric 2**(bits-1) per side; unsigned 2**bits over [0, max] from the positive histogram;
  asymmetric: each side separately with 2**(bits-1) levels, hi from the positive values over [0, max] and
  lo from the negative ones over [0, -min] (the two halves of an asymmetric int8 range hold about half the
  levels each; a joint search would be quadratic in the candidates).

Speed: every candidate t is evaluated at once from prefix sums of h, of (h > 0) and of h*log(h). With p and q
normalised, sum_i p_i log q_i = sum_j S_j * log(M_j / (N_t * n_j)), where S_j is the P mass of target bin j,
M_j its Q mass, n_j its number of non-zero source bins and N_t = sum(hist[:t]).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..stats import TensorStats
from ._histogram import histogram_over_extent, xlogx

TIE_TOLERANCE = 1e-9
MAX_CLIPPED = 1e-3
EPSILON = 1e-10
TINY = 1e-300


@lru_cache(maxsize=8)
def _target_edges(levels: int, n: int) -> np.ndarray:
    """Row t - levels: the source-bin edges floor(j * t / levels), j = 0..levels, of the target bins."""
    ts = np.arange(levels, n + 1)
    return (np.arange(levels + 1)[None, :] * ts[:, None]) // levels


def kl_divergences(hist: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidates t = levels..len(hist), KL(P_t || Q_t) for each) for a histogram with a non-zero total."""
    hist = np.asarray(hist, dtype=np.float64)
    n = hist.size
    total = hist.sum()
    ts = np.arange(levels, n + 1)
    cum = np.concatenate([[0.0], np.cumsum(hist)])
    nonzero = np.concatenate([[0.0], np.cumsum(hist > 0, dtype=np.float64)])
    cum_xlogx = np.concatenate([[0.0], np.cumsum(xlogx(hist))])

    last = total - cum[ts - 1]                   # P[t-1]: its own count plus the clipped tail
    p_log_p = (cum_xlogx[ts - 1] + xlogx(last)) / total - np.log(total)

    edges = _target_edges(levels, n)
    at = cum[edges]
    q_mass = at[:, 1:] - at[:, :-1]              # Q mass of each target bin (no tail)
    at = nonzero[edges]
    # log(mass / non-zero source bins) per target bin, in place. TINY keeps empty target bins (mass 0 over
    # 0 bins) finite; their terms are multiplied by mass 0.
    log_q = at[:, 1:] - at[:, :-1]
    log_q += TINY
    np.divide(q_mass, log_q, out=log_q)
    log_q += TINY
    np.log(log_q, out=log_q)
    # P equals Q's source counts except P[t-1], which also holds the tail. Q covers it only if bin t-1 is
    # non-empty; otherwise that P mass meets q = EPSILON.
    last_present = hist[ts - 1] > 0
    tail = total - cum[ts]
    covered = np.where(last_present, total, cum[ts])  # P mass where Q > 0
    cross = (np.einsum("ij,ij->i", q_mass, log_q)
             + np.where(last_present, tail * log_q[:, -1], last * np.log(EPSILON))
             - np.log(cum[ts] + TINY) * covered) / total
    return ts, p_log_p - cross


def best_bin(kls: np.ndarray) -> int:
    """Index of the smallest KL; near-ties (TIE_TOLERANCE) resolve to the first, i.e. the smallest t."""
    best = kls.min()
    return int(np.flatnonzero(kls <= best + TIE_TOLERANCE * max(abs(best), 1e-300))[0])


def threshold(stats: TensorStats, which: str, levels: int) -> float:
    """The KL threshold of one side ("abs", "pos", "neg") of the distribution; 0 if that side is empty."""
    hist, extent = histogram_over_extent(stats, which)
    if extent == 0.0:
        return 0.0
    if levels >= hist.size:  # as many levels as bins: nothing to merge, keep the whole range
        return extent
    ts, kls = kl_divergences(hist, levels)
    kept = np.cumsum(hist)[ts - 1]
    allowed = kept >= (1.0 - MAX_CLIPPED) * kept[-1]  # the last candidate keeps everything: never empty
    return float(ts[allowed][best_bin(kls[allowed])]) * extent / hist.size


def compute_range(stats: TensorStats, kind: str, bits: int = 8) -> tuple[float, float]:
    if kind == "symmetric":
        t = threshold(stats, "abs", 2 ** (bits - 1))
        return 0.0 - t, t
    if kind == "unsigned":
        return 0.0, threshold(stats, "pos", 2**bits)
    return 0.0 - threshold(stats, "neg", 2 ** (bits - 1)), threshold(stats, "pos", 2 ** (bits - 1))
