"""Tengine's calibration table (quant_tool's `table_minmax.scale` / `table_kl.scale`, read back with `-f`):
one line `name scale zero_point` per tensor, no header, read with `%s %f %d`. Tengine's int8 tool is symmetric:
scale = T / 127, zero point 0. Scales get 9 significant digits instead of Tengine's `%f` (which wrote scales
below 5e-7 as 0); `%f` parsing reads them the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..errors import QuantError
from ..fileio import atomic_open
from ..table import format_scale


def write_tengine(path: str | Path, thresholds: Mapping[str, float]) -> None:
    lines = []
    for name, t in thresholds.items():
        if not name or any(ch.isspace() for ch in name):
            raise QuantError(f"tensor name {name!r} contains white space, which Tengine's `%s` reader cannot "
                             f"read; use --table-format scale")
        lines.append(f"{name} {format_scale(t / 127.0)} 0")
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
