"""Shared set-up for the benchmark scripts: the MobileNetV2 model, its images, and a median timer."""

from __future__ import annotations

import os

# before anything loads onnxruntime: its Linux wheels queue telemetry otherwise (quanttool/__init__.py)
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

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
# ImageNet-style preprocessing for the MobileNetV2 benchmarks: as CLI option text and as Preprocess fields.
MEAN, NORM = "123.675,116.28,103.53", "0.017125"
PREPROCESS = dict(mean=(123.675, 116.28, 103.53), norm=(0.017125,), color="rgb", resize="center-crop")


def arguments(doc: str, images: int):
    """The benchmark scripts' shared command line: --images, --repeats, --threads."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--images", type=int, default=images)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    return parser.parse_args()


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


def cpu_int8_features() -> str:
    """The int8 dot-product features of this CPU from /proc/cpuinfo (what onnxruntime's int8 kernels use)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile")
    found = [f for f in wanted if f in flags]
    return ", ".join(found) if found else "none of " + ", ".join(wanted)


def median_time(func, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times

