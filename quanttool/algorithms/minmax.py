"""MinMax: the clip range is the observed range, nothing is clipped.

symmetric (-absmax, absmax); unsigned (0, max); asymmetric (min, max) widened to contain 0.
"""

from __future__ import annotations

from ..stats import TensorStats


def compute_range(stats: TensorStats, kind: str, bits: int = 8) -> tuple[float, float]:
    if stats.count == 0:
        return 0.0, 0.0
    if kind == "symmetric":
        return -stats.absmax, stats.absmax
    if kind == "unsigned":
        return 0.0, max(stats.max, 0.0)
    return min(stats.min, 0.0), max(stats.max, 0.0)
