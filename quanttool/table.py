"""The `.scale` table: one line per activation tensor, `name scale zero_point`, plus `#` header lines.

Scales are written with 9 significant digits, which round-trips float32 exactly (Tengine's `%f` rounds
scales below 5e-7 to 0). Names may contain spaces: a line is split on its LAST two fields. A name that this
plain form cannot carry (leading or trailing whitespace, a line break or other control or separator character
such as \\x0c, \\x85 or \\u2028, a leading `#` or `"`, or an empty name) is written as a JSON string
literal, `"..."` with ASCII escapes, so every name round-trips; plain names stay exactly Tengine's format.
Lines are separated by \\n only (\\r\\n is accepted): names never contain a raw line break.

The table's values (numbers, ranges, duplicates) are checked here, on reading; whether its names belong to a
model is checked once, by the converter (`rewrite.plan.validate_table`), which cites `Table.where`.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
import numpy as np

from .errors import QuantError
from .fileio import atomic_open, read_text
from .qparams import QParam, qrange


FLOAT32_TINY, FLOAT32_MAX = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)


@dataclass
class Table:
    """Activation parameters by tensor name, the header, and where each entry came from (for messages)."""

    params: dict[str, QParam]
    meta: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # the file it was read from
    lines: dict[str, int] = field(default_factory=dict)  # line number of each name in `source`

    def where(self, name: str) -> str:
        """`FILE:LINE: ` for a name read from a file, else an empty prefix."""
        if self.source is None:
            return ""
        return f"{self.source}:{self.lines[name]}: " if name in self.lines else f"{self.source}: "


def format_scale(scale: float) -> str:
    return format(float(np.float32(scale)), ".9g")


def as_float32(params: Mapping[str, QParam]) -> dict[str, QParam]:
    """The parameters with every scale rounded to float32, as the model and the table file store it: a table
    fresh from calibration and the same table read back from its file then hold identical numbers, so
    `convert -i` and `calibrate` + `convert -f` write the same bytes."""
    return {name: QParam(float(np.float32(qp.scale)), int(qp.zero_point)) for name, qp in params.items()}


def _plain(text: str) -> bool:
    """Whether `text` survives the plain `name scale zero_point` form unchanged: no control, format or separator
    character (Unicode categories C and Z) but the space, no space at either end, no leading `#` or `"`."""
    return (bool(text) and text == text.strip(" ") and text[0] not in '#"'
            and all(ch == " " or unicodedata.category(ch)[0] not in "CZ" for ch in text))


def encode_name(name: str) -> str:
    return name if _plain(name) else json.dumps(name, ensure_ascii=True)


def _decode(text: str) -> str:
    """A header value as written by `write_table`: plain, or a JSON string."""
    if text.startswith('"'):
        try:
            value = json.loads(text)
            return value if isinstance(value, str) else text
        except ValueError:
            pass
    return text


def write_table(path: str | Path, table: Table) -> None:
    lines = ["# quanttool scale table, one line per tensor = name scale zero_point (a quoted name is a JSON string)"]
    for key, value in table.meta.items():
        if not _plain(str(key)) or ":" in str(key):
            raise QuantError(f"table header key {key!r} cannot be written; use letters, digits and '_'")
        text = str(value)
        lines.append(f"# {key}: {text if not text or _plain(text) else json.dumps(text, ensure_ascii=True)}")
    for name, qp in table.params.items():
        lines.append(f"{encode_name(name)} {format_scale(qp.scale)} {int(qp.zero_point)}")
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\n".join(lines) + "\n")


def _split_entry(line: str, where: str) -> tuple[str, str, str]:
    """(name, scale text, zero point text) of one entry line (stripped of spaces and tabs at both ends)."""
    if line.startswith('"'):
        try:
            name, end = json.JSONDecoder().raw_decode(line)
        except ValueError:
            name, end = None, 0
        fields = line[end:].split()
        if not isinstance(name, str) or len(fields) != 2 or not line[end:end + 1].isspace():
            raise QuantError(f"{where}: expected `\"quoted name\" scale zero_point` (a JSON string), got {line!r}")
        return name, fields[0], fields[1]
    fields = line.rsplit(None, 2)
    if len(fields) != 3:
        raise QuantError(f"{where}: expected `name scale zero_point`, got {line!r}")
    return fields[0], fields[1], fields[2]


def _foreign_format(line: str) -> str:
    """Which of the other formats calibrate writes (--table-format) this first entry line belongs to, if any."""
    if line.startswith("TRT-") and line.endswith("Calibration2"):
        return "a TensorRT calibration cache (--table-format tensorrt-cache)"
    fields = line.split()  # ncnn: `<layer>_param_0 s1 s2 ...` (a scale per channel) first, then `<layer> s`
    if not line.startswith('"') and (len(fields) > 3 or fields[0].endswith("_param_0")):
        return "an ncnn int8 table (--table-format ncnn)"
    return ""


def read_table(path: str | Path, bits: int = 8) -> Table:
    """Parse and validate a table; every problem names the file and line and says how to fix it."""
    path = Path(path)
    try:
        text = read_text(path)  # a regular file only (a FIFO would hang), BOM dropped
    except FileNotFoundError:
        raise QuantError(f"{path}: table file not found; create one with `quanttool calibrate`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantError(f"{path}: cannot read the table ({exc}); pass a text .scale file") from None
    qmin, qmax = qrange(bits)
    table = Table({}, source=str(path))
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").strip(" \t")
        where = f"{path}:{number}"
        if not line:
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep:
                table.meta[key.strip()] = _decode(value.strip(" \t"))
            continue
        if not table.params and not table.meta and (foreign := _foreign_format(line)):
            raise QuantError(f"{path} is {foreign}, for that runtime only; convert -f reads quanttool's own table: "
                             f"write one with `quanttool calibrate --table-format scale` (the default)")
        name, scale_text, zp_text = _split_entry(line, where)
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
        table.params[name] = QParam(float(np.float32(scale)), zero_point)  # the float32 it stands for
        table.lines[name] = number
    if not table.params:
        raise QuantError(f"{path}: the table has no entries; create one with `quanttool calibrate`")
    return table
