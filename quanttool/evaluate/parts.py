"""Outputs that concatenate values of very different ranges, measured per part.

A detector's output often holds box coordinates in pixels (0..640) next to scores in [0, 1]. One SQNR over the
whole tensor is then the boxes' SQNR: a model whose scores are all 0 (no detection left) rates higher than a
working one whose boxes are a little noisier. So per output, sums of ref^2, err^2 and max|ref| are kept per
index along every axis but the first (axes longer than MAX_CHANNELS are skipped: they are anchors or pixels,
not channels). When, along some axis, the channels' max|ref| sorted fall apart at one gap of MIXED_RATIO or
more, the small-range side holds at least MIN_SMALL_SHARE of the channels (so one dead class of a softmax is
not a "part"), the large side at least 2, and each side is one contiguous run of indices (a head concatenates
blocks: boxes 0-3, scores 4-83; a softmax's few confident classes are scattered), the output is mixed: each side gets its own SQNR and the worst of them is the number that
decisions use (the check after convert, --target-sqnr, sensitivity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import sqnr_db

MAX_CHANNELS = 4096
MIXED_RATIO = 32.0  # as quanttool.rewrite.plan.MIXED_RANGE_RATIO: the ratio one int8 scale cannot bridge
MIN_SMALL_SHARE = 0.05


@dataclass
class OutputPart:
    axis: int
    channels: str        # e.g. "0-3" or "4-83" (indices along `axis`)
    max_abs: float       # max |fp32 value| in this part
    sqnr_db: float


def index_ranges(indices) -> str:
    """[0, 1, 2, 3, 7] -> '0-3,7'."""
    runs, start, prev = [], None, None
    for i in list(indices) + [None]:
        if start is not None and (i is None or i != prev + 1):
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ",".join(runs)


def _contiguous(indices: np.ndarray) -> bool:
    return int(indices.max()) - int(indices.min()) + 1 == indices.size


class ChannelSums:
    """Per-index sums of ref^2, err^2 and max|ref| along each candidate axis, image after image."""

    def __init__(self) -> None:
        self.sums: dict[int, list[np.ndarray]] | None = None

    def update(self, ref: np.ndarray, q: np.ndarray) -> None:
        if ref.ndim < 2:
            return
        if self.sums is None:
            self.sums = {axis: [np.zeros(ref.shape[axis]), np.zeros(ref.shape[axis]), np.zeros(ref.shape[axis])]
                         for axis in range(1, ref.ndim) if 2 <= ref.shape[axis] <= MAX_CHANNELS}
        r = ref.astype(np.float64)
        e = r - q.astype(np.float64)
        r2, e2, a = r * r, e * e, np.abs(r)
        for axis, (ref2, err2, absmax) in self.sums.items():
            if ref.shape[axis] != ref2.size:
                continue  # a data-dependent shape: not comparable across images
            other = tuple(k for k in range(ref.ndim) if k != axis)
            ref2 += r2.sum(axis=other)
            err2 += e2.sum(axis=other)
            np.maximum(absmax, a.max(axis=other), out=absmax)

    def parts(self) -> list[OutputPart]:
        """The two parts along the axis with the widest range gap, or [] when no axis has a mixed range."""
        best = None
        for axis, (ref2, err2, absmax) in (self.sums or {}).items():
            live = np.flatnonzero(absmax > 0)
            if live.size < 2:
                continue
            order = live[np.argsort(absmax[live], kind="stable")]
            values = absmax[order]
            gaps = values[1:] / values[:-1]
            k = int(np.argmax(gaps))
            small, large = order[: k + 1], order[k + 1:]
            if gaps[k] >= MIXED_RATIO and small.size >= MIN_SMALL_SHARE * absmax.size and large.size >= 2 \
                    and _contiguous(small) and _contiguous(large):
                if best is None or gaps[k] > best[0]:
                    best = (gaps[k], axis, np.sort(small), np.sort(large))
        if best is None:
            return []
        _, axis, small, large = best
        ref2, err2, absmax = self.sums[axis]
        return [OutputPart(axis, index_ranges(idx.tolist()), float(absmax[idx].max()),
                           sqnr_db(float(ref2[idx].sum()), float(err2[idx].sum())))
                for idx in sorted((small, large), key=lambda idx: int(idx[0]))]
