"""Where evaluate's time goes, per image, against the floor its runs cannot go below.

    python scripts/bench_evaluate_parts.py [--images 20]

MobileNetV2 224x224 (scripts/make_mobilenet.py), minmax table, int8 QDQ model, then the whole `evaluate -q`
with onnxruntime at ONE thread, so every run executes in the calling thread and `time.thread_time` around it
is that run's CPU time. Each onnxruntime run of evaluate (run.py: A = fp32 graph + isolated clones, B = the
int8 model with its int8 tensors exposed, and the plain int8 model on the first CHECK_IMAGES images) and the
per-layer fold (a worker thread) are timed by wrapping them; then the plain fp32 and plain int8 models run in
sessions as quanttool makes them (int8 QDQ kept as int8: the S8S8 kernels evaluate measures with). Per image,
CPU milliseconds; the ratio of evaluate's CPU to the plain fp32 inference's.
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import argparse
import collections
import os
import tempfile
import time
from pathlib import Path

from bench_common import MEAN, NORM, PREPROCESS, cpu_int8_features, mobilenet

from quanttool import commands
from quanttool import prepare as prep
from quanttool.calibrate import Settings
from quanttool.evaluate import run as evaluate_run
from quanttool.inputs import Preprocess, discover, iter_samples
from quanttool.runtime import session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    n = parser.parse_args().images
    model_path, image_dir = mobilenet(n)
    options = dict(images=(str(image_dir),), shape=(), mean=MEAN, norm=NORM, color="rgb", resize="center-crop",
                   pad_value=None, focus=False, max_images=n, threads=1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_evaluate_parts_"))
    table, int8_path = tmp / "m.scale", tmp / "m_int8.onnx"
    commands.calibrate_table(model_path, table, Settings(algorithm="minmax"), **options)
    commands.convert_model(model_path, int8_path, table, Settings(), fmt="qdq", exclude=(), params_path=None,
                           **options)

    cpu: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()
    run, fold = evaluate_run._run, evaluate_run._Layer.fold

    def timed_run(sess, names, feeds, key, what):
        start = time.thread_time()
        out = run(sess, names, feeds, key, what)
        label = f"run: {what}, {len(names)} outputs"
        cpu[label] += time.thread_time() - start
        calls[label] += 1
        return out

    def timed_fold(self, ref, iso, q):
        start = time.thread_time()
        fold(self, ref, iso, q)
        cpu["fold of every layer (worker thread)"] += time.thread_time() - start

    evaluate_run._run, evaluate_run._Layer.fold = timed_run, timed_fold
    start = time.process_time()
    commands.evaluate_model(model_path, int8_path, None, fmt="qdq", labels=None, json_path=None, report_path=None,
                            top=5, **options)
    total = time.process_time() - start
    evaluate_run._run, evaluate_run._Layer.fold = run, fold

    model = prep.load_model(model_path)
    specs = prep.input_specs(model, None)
    feeds = [f for _, f in iter_samples(discover({specs[0].name: image_dir}, n), specs, Preprocess(**PREPROCESS))]
    plain = {}
    for label, m in (("plain fp32 model", model), ("plain int8 model (S8S8)", prep.load_model(int8_path))):
        sess = session(m, 1)
        sess.run(None, feeds[0])
        start = time.thread_time()
        for f in feeds:
            sess.run(None, f)
        plain[label] = (time.thread_time() - start) / n * 1e3

    print(f"CPU int8 features: {cpu_int8_features()}; load average {os.getloadavg()[0]:.1f} (shared machine)")
    print(f"model: {model_path.name} (52 Conv, 224x224), {n} images, onnxruntime 1 thread; CPU ms per image")
    fp32 = plain["plain fp32 model"]
    for label, ms in plain.items():
        print(f"  {label:<48}: {ms:7.2f}  ({ms / fp32:.2f}x fp32)")
    for label, seconds in cpu.items():
        per = seconds / n * 1e3
        note = f", {calls[label]} calls spread over the {n} images" if calls[label] and calls[label] != n else ""
        print(f"  {label:<48}: {per:7.2f}  ({per / fp32:.2f}x fp32{note})")
    print(f"  {'evaluate -q, whole command (all threads)':<48}: {total / n * 1e3:7.2f}  "
          f"({total / n * 1e3 / fp32:.2f}x fp32; includes preparation, isolated build, decode)")


if __name__ == "__main__":
    main()
