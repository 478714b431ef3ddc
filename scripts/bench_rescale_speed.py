"""Latency of int8 models side by side, e.g. the cost of convert --rescale's float regions on a trained detector.

    python scripts/bench_rescale_speed.py MODEL.onnx [MODEL2.onnx ...] [--repeats 7] [--runs 5] [--threads 2]

Every model gets the same N(0, 1) input at its declared input shape (latency does not depend on the values).
onnxruntime CPU sessions as quanttool runs int8 models (session.qdqisint8allowed=1), batch 1. Timing: --repeats
rounds; in each round every model, in turn, gets a fresh session, 2 warm-up runs and --runs timed inferences,
then its session is closed (alternating spreads the load of other processes over all models). The figure is
the median over rounds of the per-inference mean, and its ratio to the first model's.
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
from bench_common import cpu_int8_features

from quanttool.runtime import session


def feeds_for(model: onnx.ModelProto) -> dict:
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    return {i.name: rng.normal(size=[d.dim_value or 1 for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input if i.name not in inits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"CPU int8 features: {cpu_int8_features()}; threads {args.threads}")
    models = {path: onnx.load(str(path)) for path in args.models}
    feeds = feeds_for(models[args.models[0]])
    times: dict[Path, list[float]] = {path: [] for path in args.models}
    for _ in range(args.repeats):
        for path, model in models.items():
            sess = session(model, args.threads)
            for _ in range(2):
                sess.run(None, feeds)
            start = time.perf_counter()
            for _ in range(args.runs):
                sess.run(None, feeds)
            times[path].append((time.perf_counter() - start) / args.runs)
            del sess
    first = statistics.median(times[args.models[0]])
    for path in args.models:
        median = statistics.median(times[path])
        print(f"{path}: {median * 1e3:.1f} ms per inference (median of {args.repeats} rounds), "
              f"{median / first:.2f}x the first")


if __name__ == "__main__":
    main()
