"""Clip-range algorithms: streaming statistics of one tensor -> the real range (lo, hi) to quantize.

Every method is `compute_range(stats, kind, bits) -> (lo, hi)`, one module each, with its conventions in the
module docstring. `kind` is "symmetric" (returns (-T, T)), "unsigned" (the tensor is never negative; returns
(0, T) for 2**bits levels over [0, T]) or "asymmetric" (lo <= 0 <= hi). A tensor with no non-zero value
gives (0, 0); quanttool.qparams turns that into its placeholder scale.
"""

from __future__ import annotations

from ..errors import UsageError
from ..stats import TensorStats
from . import aciq, kl, minmax, mse, percentile, tengine

ALGORITHMS = {
    "minmax": minmax.compute_range,
    "kl": kl.compute_range,
    "aciq": aciq.compute_range,
    "percentile": percentile.compute_range,
    "mse": mse.compute_range,
}
# Tengine's -a numbers.
ALIASES = {"0": "minmax", "1": "kl", "2": "aciq"}
KINDS = ("symmetric", "unsigned", "asymmetric")


def resolve(name: str) -> str:
    """The canonical algorithm name for a name or Tengine number; UsageError for anything else."""
    canonical = ALIASES.get(str(name).strip(), str(name).strip().lower())
    if canonical not in ALGORITHMS:
        choices = ", ".join(list(ALGORITHMS) + [f"{k} ({v})" for k, v in ALIASES.items()])
        raise UsageError(f"unknown algorithm {name!r}; choose one of: {choices}")
    return canonical


def compute_range(name: str, stats: TensorStats, kind: str, bits: int = 8, *, percentile: float = 99.99,
                  compat: str | None = None) -> tuple[float, float]:
    """The clip range of one tensor by algorithm `name` (or Tengine's number), optionally Tengine's formulas."""
    method = resolve(name)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if bits < 2:
        raise UsageError(f"bits={bits}: at least 2 bits are needed")
    if compat == "tengine":
        return tengine.compute_range(method, stats, kind, bits)
    if compat is not None:
        raise UsageError(f"unknown compatibility mode {compat!r}; the only one is 'tengine'")
    if method == "percentile":
        return ALGORITHMS[method](stats, kind, bits, percentile=percentile)
    return ALGORITHMS[method](stats, kind, bits)
