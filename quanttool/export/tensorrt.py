"""TensorRT's INT8 calibration cache (what an IInt8EntropyCalibrator2 writes and reads back): the first line
`TRT-<version>-EntropyCalibration2`, then `tensor_name: <8 hex digits>` per tensor, the big-endian bytes of
the float32 scale T / 127 (TensorRT's activations are symmetric int8).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Mapping

from ..fileio import atomic_open

# TensorRT writes its own version into the header (8601 = 8.6.1); it is written here as a recent 8.x one
TRT_VERSION = "8601"


def scale_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def write_tensorrt_cache(path: str | Path, thresholds: Mapping[str, float], version: str = TRT_VERSION) -> None:
    lines = [f"TRT-{version}-EntropyCalibration2"]
    lines += [f"{name}: {scale_hex(t / 127.0)}" for name, t in thresholds.items()]
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
