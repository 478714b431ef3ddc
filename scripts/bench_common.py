"""Shared set-up for the benchmark scripts: the MobileNetV2 model, its images, and a median timer."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import onnx

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(ROOT))

from make_mobilenet import build, write_images  # noqa: E402

BENCH = ROOT / "out" / "bench"


def mobilenet(n_images: int) -> tuple[Path, Path]:
    """out/bench/mobilenet_v2.onnx (224x224, 52 convs, BN kept) and n_images 256x256 JPEGs."""
    BENCH.mkdir(parents=True, exist_ok=True)
    model = BENCH / "mobilenet_v2.onnx"
    if not model.exists():
        onnx.save(build(), str(model))
    images = BENCH / "images"
    if len(list(images.glob("*.jpg"))) < n_images:
        write_images(n_images, images)
    return model, images


def median_time(func, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times
