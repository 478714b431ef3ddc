"""Calibration tables in other tools' formats, from the same activation parameters (one small writer each).

`write(fmt, path, table, model)`: `scale` is quanttool's own table (table.py); `tengine`, `ncnn` and
`tensorrt-cache` are the files those runtimes read (README "Other table formats"). All three are symmetric
int8: an entry with a zero point is widened to T = max|range| by `threshold` and a warning says how many.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import onnx

from ..errors import warn
from ..qparams import QParam, qrange
from ..table import Table, write_table

TABLE_FORMATS = ("scale", "tengine", "ncnn", "tensorrt-cache")
# default file name suffix per format (after the model stem)
SUFFIX = {"scale": ".scale", "tengine": "_tengine.scale", "ncnn": ".table", "tensorrt-cache": ".cache"}


def threshold(qp: QParam) -> float:
    """The symmetric clip T the entry stands for: 127·scale for zero point 0, else the larger end of its range."""
    if int(qp.zero_point) == 0:
        return 127.0 * qp.scale
    qmin, qmax = qrange(8)
    return max(abs(qmin - qp.zero_point), abs(qmax - qp.zero_point)) * qp.scale


def symmetric_thresholds(params: Mapping[str, QParam], fmt: str) -> dict[str, float]:
    widened = [name for name, qp in params.items() if int(qp.zero_point) != 0]
    if widened:
        warn(f"--table-format {fmt}: {len(widened)} tensor(s) have a zero point (e.g. {widened[0]!r}); this format "
             f"is symmetric, so they get T = max|range| (half the resolution for never-negative tensors); "
             f"calibrate with --scheme symmetric for a table fitted for it")
    return {name: threshold(qp) for name, qp in params.items()}


def write(fmt: str, path: str | Path, table: Table, model: onnx.ModelProto) -> None:
    params = table.params
    if fmt == "scale":
        write_table(path, table)
    elif fmt == "tengine":
        from .tengine import write_tengine
        write_tengine(path, symmetric_thresholds(params, fmt))
    elif fmt == "ncnn":
        from .ncnn import write_ncnn
        write_ncnn(path, symmetric_thresholds(params, fmt), model)
    elif fmt == "tensorrt-cache":
        from .tensorrt import write_tensorrt_cache
        write_tensorrt_cache(path, symmetric_thresholds(params, fmt))
    else:
        raise ValueError(f"unknown table format {fmt!r}")
