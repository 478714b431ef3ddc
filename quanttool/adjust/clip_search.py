"""Per-channel weight clipping search: the clip of each output channel that minimises the layer's output error.

Round-to-nearest at s = max|W_c| / 127 spends the grid on one outlier weight; a smaller clip rounds the
other weights finer and saturates the outlier. Which wins depends on what the layer's output loses, not on
the weights' own MSE: with the statistics of layers.py the int8 layer's output error of channel c over the
whole calibration set is wq G wq^T - 2 wq (W C)_c^T + const, wq = s_c q_c (G: Gram matrix of the quantized
input patches, C: cross matrix with the fp32 ones). Tengine's MM_EQ searches a clip by the weights' error;
this searches the same candidates by the output error.
"""

from __future__ import annotations

import numpy as np

# clip = fraction of max|W_c|; 1.0 (round-to-nearest) is always a candidate, so the error never rises
FRACTIONS = np.linspace(0.5, 1.0, 51)


def grid_round(w: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """Round-to-nearest on the grid scale[..., None] * [-qmax, qmax]."""
    return np.clip(np.round(w / scale[..., None]), -qmax, qmax)


def output_error(wq: np.ndarray, w: np.ndarray, gram: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """Per output channel, sum over calibration patches of (wq . pq)^2 - 2 (wq . pq)(w . p): the output error
    ||wq pq - w p||^2 up to a constant that does not depend on wq. wq, w [g, r, K]; gram, cross [g, K, K]."""
    return np.einsum("grk,grk->gr", np.matmul(wq, gram) - 2 * np.matmul(w, cross), wq)


def absmax_scale(w: np.ndarray, qmax: int) -> np.ndarray:
    """The rewrite's scale, max|W_c| / qmax; an all-zero channel gets 1 (its weights are 0 under any scale)."""
    absmax = np.abs(w).max(axis=-1)
    return np.where(absmax > 0, absmax, qmax) / qmax


def search_clip(w: np.ndarray, gram: np.ndarray, cross: np.ndarray, qmax: int) -> np.ndarray:
    """Per-channel scale [g, r] minimising the output error of round-to-nearest; w [g, r, K] float64."""
    base = absmax_scale(w, qmax)
    best_scale, best_err = base, None
    for fraction in FRACTIONS[::-1]:  # from 1.0 down: ties keep the larger clip
        scale = base * fraction
        err = output_error(grid_round(w, scale, qmax) * scale[..., None], w, gram, cross)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err - 1e-9 * np.abs(best_err)
        best_scale = np.where(better, scale, best_scale)
        best_err = np.where(better, err, best_err)
    return best_scale
