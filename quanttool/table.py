"""The `.scale` table: one line per activation tensor, `name scale zero_point`, plus `#` header lines.

Scales are written with 9 significant digits, which round-trips float32 exactly (Tengine's `%f` rounds
scales below 5e-7 to 0). Names may contain spaces: a line is split on its LAST two fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .errors import QuantError
from .fileio import atomic_open, read_text
from .qparams import QParam, qrange


FLOAT32_TINY, FLOAT32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


@dataclass
class Table:
    params: dict[str, QParam]
    meta: dict[str, str] = field(default_factory=dict)


def format_scale(scale: float) -> str:
    return format(float(np.float32(scale)), ".9g")


def write_table(path: str | Path, params: Mapping[str, QParam], meta: Mapping[str, object] = ()) -> None:
    lines = ["# quanttool scale table: name scale zero_point"]
    lines += [f"# {key}: {value}" for key, value in dict(meta).items()]
    for name, qp in params.items():
        if any(ch in name for ch in "\r\n") or name.startswith("#"):
            raise QuantError(f"tensor name {name!r} cannot be written to a table (newline or leading '#')")
        lines.append(f"{name} {format_scale(qp.scale)} {int(qp.zero_point)}")
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def read_table(path: str | Path, known: Iterable[str] | None = None, bits: int = 8) -> Table:
    """Parse and validate a table; every problem names the file and line and says how to fix it."""
    path = Path(path)
    try:
        text = read_text(path)  # a regular file only (a FIFO would hang), BOM dropped
    except FileNotFoundError:
        raise QuantError(f"{path}: table file not found; create one with `quanttool calibrate`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantError(f"{path}: cannot read the table ({exc}); pass a text .scale file") from None
    known = set(known) if known is not None else None
    qmin, qmax = qrange(bits)
    table = Table({})
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{path}:{number}"
        if not line:
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep:
                table.meta[key.strip()] = value.strip()
            continue
        fields = line.rsplit(None, 2)
        if len(fields) != 3:
            raise QuantError(f"{where}: expected `name scale zero_point`, got {line!r}")
        name, scale_text, zp_text = fields
        try:
            scale = float(scale_text)
            zero_point = int(zp_text)
        except ValueError:
            raise QuantError(f"{where}: scale {scale_text!r} or zero point {zp_text!r} is not a number; "
                             f"expected `name scale zero_point`") from None
        if not math.isfinite(scale) or scale <= 0:
            raise QuantError(f"{where}: tensor {name!r} has scale {scale_text}; scales must be positive and finite")
        if not FLOAT32_TINY <= scale <= FLOAT32_MAX:  # the model stores scales as float32
            raise QuantError(f"{where}: tensor {name!r} has scale {scale_text}, outside float32's normal range "
                             f"[{FLOAT32_TINY:.3g}, {FLOAT32_MAX:.3g}]; re-run calibrate")
        if not qmin <= zero_point <= qmax:
            raise QuantError(f"{where}: tensor {name!r} has zero point {zero_point}, outside [{qmin}, {qmax}]")
        if name in table.params:
            raise QuantError(f"{where}: tensor {name!r} appears twice; keep one line per tensor")
        if known is not None and name not in known:
            raise QuantError(f"{where}: {name!r} is not a tensor of this model; "
                             f"the table was probably made for another model, re-run calibrate")
        table.params[name] = QParam(scale, zero_point)
    if not table.params:
        raise QuantError(f"{path}: the table has no entries; create one with `quanttool calibrate`")
    return table
