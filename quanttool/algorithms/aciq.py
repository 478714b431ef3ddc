"""ACIQ (Banner et al., "Post-training 4-bit quantization of convolutional networks for rapid deployment").

The clip alpha minimises the expected MSE of an M-bit uniform quantizer on [-alpha, alpha] (2**M levels,
rounding noise alpha^2 / (3 * 4**M)) for an assumed prior; nothing but streaming moments is needed.
- Laplace(0, b): MSE = 2 b^2 exp(-alpha/b) + alpha^2 / (3 * 4**M); setting the derivative to 0 gives
  alpha = 3 * 4**M * b * exp(-alpha/b), solved by Newton's method for b = 1 (2.83, 3.89, 5.03 for M = 2, 3, 4).
- Gaussian(0, sigma): MSE = 2 [(alpha^2 + sigma^2)(1 - Phi(alpha/sigma)) - alpha sigma phi(alpha/sigma)]
  + alpha^2 / (3 * 4**M). Its derivative (sigma = 1) is 4 [alpha (1 - Phi) - phi] + 2 alpha / (3 * 4**M),
  strictly increasing from a negative value at 0, so bisection finds the unique root (1.71, 2.15, 2.56,
  2.94, 3.29, 3.62, 3.92 for M = 2..8, Tengine's alpha_gaussian table).

Estimates from the streaming moments: mu = sum / count, var = sumsq / count - mu^2, Laplace b = sqrt(var / 2),
Gaussian sigma = sqrt(var) (the moment estimates; E|x - mu| is not available from sum|x| unless mu = 0).
The prior is the one whose fitted bin probabilities give the higher log-likelihood of the streaming histogram
(exact zeros left out: neither continuous prior explains a point mass at 0).

Ranges (never wider than the observed values):
- symmetric: M = bits, T = min(|mu| + alpha * scale, absmax);
- asymmetric: M = bits, (mu - alpha * scale, mu + alpha * scale) clamped to [min, max], widened to contain 0;
- unsigned (never negative, e.g. ReLU outputs): the positive values are modelled as a zero-mean prior folded
  at 0. For a folded Laplace E[x^2 | x > 0] = 2 b^2, for a half-normal E[x^2 | x > 0] = sigma^2, estimated from
  sumsq / (count - zeros). The 2**bits levels lie on [0, T], so the noise is T^2 / (12 * 4**bits) =
  T^2 / (3 * 4**(bits + 1)) while the clip term is the symmetric one: the optimal alpha is the symmetric one for
  M = bits + 1. T = min(alpha * scale, max).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..stats import BINS, TensorStats
from . import minmax


@lru_cache(maxsize=None)
def laplace_alpha(m: int) -> float:
    """Optimal clip for Laplace(0, 1) and an m-bit quantizer: the root of a - 3 * 4**m * exp(-a)."""
    k = 3.0 * 4.0**m
    a = math.log(k)  # a > log(k) makes the exponential term smaller than 1; the root is just below
    for _ in range(100):
        f = a - k * math.exp(-a)
        step = f / (1.0 + k * math.exp(-a))
        a -= step
        if abs(step) < 1e-14:
            break
    return a


@lru_cache(maxsize=None)
def gaussian_alpha(m: int) -> float:
    """Optimal clip for N(0, 1) and an m-bit quantizer: root of 4 (a Q(a) - phi(a)) + 2a / (3 * 4**m)."""
    def slope(a: float) -> float:
        tail = 0.5 * math.erfc(a / math.sqrt(2.0))
        density = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
        return 4.0 * (a * tail - density) + 2.0 * a / (3.0 * 4.0**m)

    lo, hi = 0.0, 64.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if slope(mid) < 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


_erfc = np.vectorize(math.erfc, otypes=[float])


def _interval_probs(lo: np.ndarray, hi: np.ndarray, mu: float, scale: float, prior: str) -> np.ndarray:
    """P(lo <= X < hi) for Laplace(mu, scale) or N(mu, scale), accurate in both tails."""
    def lower(x):  # P(X < x), for x <= mu
        z = (x - mu) / scale
        return 0.5 * np.exp(np.minimum(z, 0.0)) if prior == "laplace" else 0.5 * _erfc(-z / math.sqrt(2.0))

    def upper(x):  # P(X >= x), for x >= mu
        z = (x - mu) / scale
        return 0.5 * np.exp(-np.maximum(z, 0.0)) if prior == "laplace" else 0.5 * _erfc(z / math.sqrt(2.0))

    right = lo >= mu
    left = hi <= mu
    mid = ~right & ~left
    out = np.empty_like(lo)
    out[right] = upper(lo[right]) - upper(hi[right])
    out[left] = lower(hi[left]) - lower(lo[left])
    out[mid] = 1.0 - lower(lo[mid]) - upper(hi[mid])
    return out


def _folded_probs(lo: np.ndarray, hi: np.ndarray, scale: float, prior: str) -> np.ndarray:
    """P(lo <= X < hi) for a folded (half) Laplace or half-normal with the given scale."""
    def survival(x: np.ndarray) -> np.ndarray:
        return np.exp(-x / scale) if prior == "laplace" else _erfc(x / (scale * math.sqrt(2.0)))

    return survival(lo) - survival(hi)


def _log_likelihood(counts: np.ndarray, probs: np.ndarray) -> float:
    used = counts > 0
    return float(np.sum(counts[used] * np.log(np.maximum(probs[used], 1e-300))))


def _scales(stats: TensorStats, kind: str) -> tuple[float, float, float]:
    """(mu, laplace b, gaussian sigma) for the symmetric/asymmetric model or the folded unsigned one."""
    if kind == "unsigned":
        positives = stats.count - stats.zeros
        second = stats.sumsq / positives if positives else 0.0
        return 0.0, math.sqrt(second / 2.0), math.sqrt(second)
    mu = stats.sum / stats.count
    var = max(stats.sumsq / stats.count - mu * mu, 0.0)
    return mu, math.sqrt(var / 2.0), math.sqrt(var)


def choose_prior(stats: TensorStats, kind: str) -> str:
    """"laplace" or "gaussian": the moment-fitted prior with the higher binned log-likelihood."""
    mu, b, sigma = _scales(stats, kind)
    edges = np.linspace(0.0, stats.range, BINS + 1)
    lo, hi = edges[:-1], edges[1:]
    if kind == "unsigned":
        ll = {p: _log_likelihood(stats.pos, _folded_probs(lo, hi, s, p))
              for p, s in (("laplace", b), ("gaussian", sigma))}
    else:
        counts = np.concatenate([stats.pos, stats.neg])
        ll = {p: _log_likelihood(counts, _interval_probs(np.concatenate([lo, -hi]), np.concatenate([hi, -lo]),
                                                         mu, s, p))
              for p, s in (("laplace", b), ("gaussian", sigma))}
    return "laplace" if ll["laplace"] > ll["gaussian"] else "gaussian"


def compute_range(stats: TensorStats, kind: str, bits: int = 8) -> tuple[float, float]:
    if stats.count == 0 or stats.absmax == 0.0:
        return 0.0, 0.0
    mu, b, sigma = _scales(stats, kind)
    if sigma == 0.0:  # constant tensor: nothing to fit, keep the observed range
        return minmax.compute_range(stats, kind, bits)
    prior = choose_prior(stats, kind)
    m = bits + 1 if kind == "unsigned" else bits
    clip = laplace_alpha(m) * b if prior == "laplace" else gaussian_alpha(m) * sigma
    if kind == "unsigned":
        return 0.0, min(clip, max(stats.max, 0.0))
    if kind == "symmetric":
        t = min(abs(mu) + clip, stats.absmax)
        return -t, t
    return min(max(mu - clip, stats.min), 0.0), max(min(mu + clip, stats.max), 0.0)
