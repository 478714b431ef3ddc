"""Adaptive rounding: per weight, round up or down so the layer's output error is smallest (AdaRound's
objective, Nagel et al. 2020), solved without gradient descent.

AdaRound minimises ||W X - W~ X||^2 over the choice floor/ceil of every weight, with W~ on the fixed int8
grid. Here the loss is the int8 layer's, ||W X - W~ Xq||^2 with Xq the input as the int8 model quantizes
it (so the rounding also compensates the layer's input quantization), a quadratic form in W~:
tr(W~ G W~^T) - 2 tr(W~ C^T W^T) + const, G the Gram matrix of the quantized calibration patches and C the
cross matrix with the fp32 ones (layers.py), so each layer's problem is small (K x K) whatever the number
of images. Instead of AdaRound's relaxed sigmoid and annealed regulariser (thousands of SGD
steps), greedy coordinate descent on the binary choices: start from round-to-nearest, and for each weight
column k flip every row whose flip lowers the loss, exactly, with the running product H = D G updated by
a rank-1 step (H = W~ G - W C, half the gradient). Each accepted flip lowers the loss, so the result is never worse than round-to-nearest on the
calibration data, every weight stays within one grid step of W / s (floor or ceil), and a sweep costs one
matrix product. Sweeps stop when nothing flips or the time is up. A weight rounded to +-qmax is kept
(the channel's scale depends on it).
"""

from __future__ import annotations

import time

import numpy as np


def adaround(w: np.ndarray, scale: np.ndarray, gram: np.ndarray, cross: np.ndarray, qmax: int, *,
             max_sweeps: int = 8, deadline: float | None = None, block: int = 64) -> tuple[np.ndarray, int]:
    """Integer levels [g, r, K] (floor or ceil of w / scale, clamped to +-qmax) and the sweeps run.

    w [g, r, K] float64, scale [g, r], gram and cross [g, K, K] (cross = gram: fp32 inputs)."""
    s = scale[..., None]
    x = w / s
    lo = np.clip(np.floor(x), -qmax, qmax)
    hi = np.clip(lo + 1, -qmax, qmax)
    q = np.clip(np.round(x), -qmax, qmax)
    # a weight at +-qmax stays there: the rewrite derives each channel's scale from max|W_c| / qmax, so moving
    # the channel's extreme weight inward would change the grid and re-round the whole channel
    pinned = np.abs(q) == qmax
    lo, hi = np.where(pinned, q, lo), np.where(pinned, q, hi)
    h = np.matmul(q * s, gram) - np.matmul(w, cross)  # [g, r, K]
    diag = np.einsum("gkk->gk", gram)  # [g, K]
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        flips = 0
        # columns in blocks: inside a block only the block's columns of H are kept current (rank-1 steps on
        # [g, r, block]); the block's flips then reach all of H in one matrix product. Same flips as
        # updating all of H after every column, at BLAS speed instead of K passes over H.
        for b0 in range(0, x.shape[-1], block):
            cols = slice(b0, min(b0 + block, x.shape[-1]))
            hb = h[..., cols].copy()
            gb = gram[:, cols, cols]
            steps = np.zeros_like(hb)
            for j, k in enumerate(range(cols.start, cols.stop)):
                cur = q[..., k]
                alt = np.where(cur == lo[..., k], hi[..., k], lo[..., k])
                delta = (alt - cur) * scale
                # loss change of w~_k += delta: 2 delta H_k + delta^2 G_kk
                flip = delta * (2 * hb[..., j] + delta * diag[:, None, k]) < 0
                if flip.any():
                    q[..., k] = np.where(flip, alt, cur)
                    steps[..., j] = step = np.where(flip, delta, 0.0)
                    hb += step[..., None] * gb[:, None, j, :]
                    flips += int(flip.sum())
            if steps.any():
                h += np.matmul(steps, gram[:, cols, :])
        if flips == 0 or (deadline is not None and time.monotonic() > deadline):
            break
    return q, sweeps
