"""Tengine compatibility (`compat="tengine"`): Tengine quant_tool's own formulas, symmetric int8 only.

Source read: OAID/Tengine tools/quantize/quant_tool_int8.cpp (commit 28d5cb33) and quant_utils.cpp
(threshold_distribution, compute_kl_divergence, normalize_histogram, histCount_int).
- MinMax: T = max(|min|, |max|) in float32; Tengine's scale is T / 127.
- ACIQ: std = 2 * absmax * gaussian_const / sqrt(2 ln N) in double with gaussian_const =
  0.5 * 0.35 * (1 + sqrt(pi * ln 4)) and N the tensor's element count (one image: stats.numel);
  T = (float)(alpha_gaussian[bits-1] * std). No clipping at absmax: for N below about 8000, T > absmax.
  (For N < 2 Tengine divides by zero; we return absmax there.)
- KL: Tengine histograms |x| of the non-zero values into 2048 bins of width absmax / 2047 (float), index
  floor(|x| / width). normalize_histogram then drops bin 0 (its loop starts at 1, so bin 0 becomes 0) and
  divides by the remaining total. threshold_distribution(hist, 128) tries t = 128 .. 2047:
  P = first t bins with the tail sum added to P[t-1]; the 128 target bins span t/128 source bins each,
  *fractionally* (a source bin cut by a boundary gives each side its share); Q spreads each target bin's mass
  (taken from the distribution without the tail) over the non-zero source bins, again fractionally; neither P
  nor Q is renormalised; KL adds p*log(p/q), or 1 when q == 0 < p; the first strict minimum wins, so ties go
  to the smallest t. The threshold is hist_edge[t] = (absmax / 2048f) * (t + 0.5f), in float32.
  Our histogram is streamed over (0, R]; it is re-binned onto Tengine's bins by linear interpolation of the
  cumulative counts (values assumed uniform within a bin), the one approximation in this mode.
  threshold_bin below evaluates all t at once from prefix sums in float64; Tengine accumulates in float32, so a
  near-tie (KL equal to ~1e-7) may resolve to a different t.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError
from ..stats import TensorStats
from ._histogram import rebin, xlogx

ALPHA_GAUSSIAN = np.array([0, 1.71063519, 2.15159277, 2.55913646, 2.93620062, 3.28691474, 3.6151146, 3.92403714],
                          dtype=np.float32)
GAUSSIAN_CONST = (0.5 * 0.35) * (1 + math.sqrt(math.pi * math.log(4)))
TARGET_BIN = 128


def minmax_threshold(stats: TensorStats) -> float:
    return float(np.float32(max(abs(stats.min), abs(stats.max))))


def aciq_threshold(stats: TensorStats, bits: int) -> float:
    if not 2 <= bits <= 8:
        raise UsageError(f"bits={bits}: Tengine's ACIQ table covers 2..8 bits; choose bits in that range or "
                         f"drop the Tengine compatibility mode")
    absmax = float(np.float32(stats.absmax))
    if stats.numel < 2:
        return absmax
    std = (absmax * 2 * GAUSSIAN_CONST) / math.sqrt(2 * math.log(stats.numel))
    return float(np.float32(float(ALPHA_GAUSSIAN[bits - 1]) * std))


def _piecewise_cumulative(cum: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sum of values over [0, x) with the bin floor(x) taken fractionally (Tengine's partial bins)."""
    whole = np.floor(x).astype(np.int64)
    return cum[whole] + (x - whole) * values[np.minimum(whole, values.size - 1)]


def threshold_bin(histogram: np.ndarray, target: int = TARGET_BIN) -> int:
    """Tengine's threshold_distribution(histogram, target) for any histogram length > target."""
    d = np.asarray(histogram, dtype=np.float64).copy()
    d[0] = 0.0
    if d.sum() == 0:
        return target
    d /= d.sum()
    n = d.size
    ts = np.arange(target, n)
    present = (d != 0).astype(np.float64)
    cum_d = np.concatenate([[0.0], np.cumsum(d)])
    cum_present = np.concatenate([[0.0], np.cumsum(present)])
    cum_dlogd = np.concatenate([[0.0], np.cumsum(xlogx(d))])

    width = ts[:, None] / target
    start = np.arange(target)[None, :] * width       # target bin g covers [start, start + width)
    end = start + width
    mass = _piecewise_cumulative(cum_d, d, end) - _piecewise_cumulative(cum_d, d, start)
    count = _piecewise_cumulative(cum_present, present, end) - _piecewise_cumulative(cum_present, present, start)
    with np.errstate(divide="ignore", invalid="ignore"):
        expand = np.where(count > 0, mass / count, 0.0)
        log_expand = np.where(expand > 0, np.log(expand), 0.0)

    # Source bins wholly inside target bin g: q = expand[g] wherever d != 0.
    first = np.ceil(start).astype(np.int64)
    stop = np.floor(end).astype(np.int64)
    kl = ((cum_dlogd[stop] - cum_dlogd[first]) - log_expand * (cum_d[stop] - cum_d[first])).sum(axis=1)

    # Bin t-1 (always whole, in the last target bin) holds the tail too: replace its term.
    d_last = d[ts - 1]
    p_last = d_last + (cum_d[n] - cum_d[ts])
    kl -= xlogx(d_last) - log_expand[:, -1] * d_last
    with np.errstate(divide="ignore", invalid="ignore"):
        last_term = np.where(d_last != 0, p_last * (np.log(p_last) - log_expand[:, -1]), 1.0)
    kl += np.where(p_last != 0, last_term, 0.0)

    # Source bins cut by the boundary between target bins g-1 and g share both expanded values.
    boundary = start[:, 1:]
    cut = np.floor(boundary).astype(np.int64)
    share = boundary - cut
    split = share > 0
    d_cut = d[cut]
    q_cut = expand[:, :-1] * share + expand[:, 1:] * (1.0 - share)
    with np.errstate(divide="ignore", invalid="ignore"):
        cut_terms = np.where(split & (d_cut != 0), d_cut * (np.log(d_cut) - np.log(q_cut)), 0.0)
    kl += cut_terms.sum(axis=1)
    return int(ts[int(np.argmin(kl))])


def kl_threshold(stats: TensorStats) -> float:
    absmax = np.float32(stats.absmax)
    if absmax == 0 or stats.range == 0:
        return 0.0
    width = np.float32(absmax / np.float32(2047.0))
    hist = rebin(stats.pos + stats.neg, stats.range, np.arange(2049, dtype=np.float64) * float(width))
    t = threshold_bin(hist)
    step = np.float32(absmax / np.float32(2048.0))
    return float(np.float32(step * np.float32(t + 0.5)))


def compute_range(name: str, stats: TensorStats, kind: str, bits: int = 8) -> tuple[float, float]:
    if kind != "symmetric":
        raise UsageError(f"Tengine compatibility is symmetric only, not {kind}; use the symmetric scheme "
                         f"or drop the Tengine compatibility mode")
    if name != "aciq" and bits != 8:
        raise UsageError(f"bits={bits}: Tengine's {name} is int8 only; use 8 bits or drop the Tengine "
                         f"compatibility mode")
    if name == "minmax":
        t = minmax_threshold(stats)
    elif name == "kl":
        t = kl_threshold(stats)
    elif name == "aciq":
        t = aciq_threshold(stats, bits)
    else:
        raise UsageError(f"algorithm {name}: Tengine compatibility covers minmax, kl and aciq; choose one of "
                         f"those or drop the Tengine compatibility mode")
    return -t, t
