"""The per-image floor of calibration: plain inference, the observing run in several session settings, the fold.

    python scripts/bench_observe_run.py [--images 30] [--repeats 5] [--model PATH --images-dir DIR]

MobileNetV2 224x224 (scripts/make_mobilenet.py) by default, prepared as calibrate prepares it, with the tensors
calibrate observes (calibrate.observed_tensors). Every variant runs the same decoded images with onnxruntime at
ONE thread (it then runs in the calling thread, so `time.thread_time` is its CPU time), alternating variants,
median of the repeats, CPU milliseconds per image:
- plain: the prepared model, graph outputs only;
- exposed: the observed tensors as extra graph outputs, written into buffers bound once (observe._Runner), with
  onnxruntime's optimization level ALL (quanttool's default), EXTENDED, and ALL without the NchwcTransformer;
- blocked: quanttool.blocked's observing session (the blocked tensors fetched without their reorder);
- fold: those tensors folded into the exact statistics (stats.TensorStats.update, the C kernel when built).
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import argparse
import os
import statistics
import time

import onnxruntime as ort
from bench_common import PREPROCESS, cpu_int8_features, mobilenet

from quanttool import prepare as prep
from quanttool.blocked import observing_session
from quanttool.calibrate import observed_tensors
from quanttool.inputs import Preprocess, discover, iter_samples
from quanttool.observe import _Runner
from quanttool.runtime import session, with_outputs
from quanttool.stats import KERNEL_STATUS, TensorStats


def variant_session(model, level, nchwc: bool):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = level
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not nchwc:
        options.add_session_config_entry("optimization.disable_specified_optimizers", "NchwcTransformer")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model_path, image_dir = mobilenet(args.images)
    model = prep.load_model(model_path)
    specs = prep.input_specs(model, None)
    prepared = prep.prepare(model, specs)
    inputs = {i.name for i in prepared.graph.input}
    names = [n for n in observed_tensors(prepared) if n not in inputs]
    feeds = [f for _, f in iter_samples(discover({specs[0].name: image_dir}, args.images), specs,
                                        Preprocess(**PREPROCESS))]
    exposed = with_outputs(prepared, names)
    every = ort.GraphOptimizationLevel
    runners = {"plain (graph outputs only)": lambda f, s=session(prepared, 1): s.run(None, f)}
    for label, level, nchwc in (("exposed, level ALL (default)", every.ORT_ENABLE_ALL, True),
                                ("exposed, level EXTENDED", every.ORT_ENABLE_EXTENDED, True),
                                ("exposed, ALL without NchwcTransformer", every.ORT_ENABLE_ALL, False)):
        runners[label] = _Runner(variant_session(exposed, level, nchwc), names)
    observing = observing_session(prepared, names, 1, "benchmark")
    blocked = sum(a != b for a, b in zip(observing.outputs, names))
    runners[f"blocked ({blocked} of {len(names)} fetched blocked)"] = _Runner(observing.sess, observing.outputs)
    for run in runners.values():  # first runs: allocations, IOBinding set-up
        run(feeds[0])
        run(feeds[0])
    values = [dict(zip(names, [v.copy() for v in runners["exposed, level ALL (default)"](f)])) for f in feeds]

    def fold() -> None:
        stats = {name: TensorStats() for name in names}
        for image in values:
            for name, value in image.items():
                stats[name].update(value)

    tasks = {label: (lambda run=run: [run(f) for f in feeds]) for label, run in runners.items()}
    tasks["fold into exact statistics"] = fold
    cpu: dict[str, list[float]] = {label: [] for label in tasks}
    for _ in range(args.repeats):  # alternate, so machine noise hits every variant alike
        for label, task in tasks.items():
            start = time.thread_time()
            task()
            cpu[label].append((time.thread_time() - start) / len(feeds) * 1e3)

    print(f"CPU int8 features: {cpu_int8_features()}; load average {os.getloadavg()[0]:.1f} (shared machine)")
    print(f"model: {model_path.name}, {len(feeds)} images, {len(names)} observed tensors "
          f"({sum(v.size for v in values[0].values()) / 1e6:.1f} M values per image); statistics: {KERNEL_STATUS}")
    base = statistics.median(cpu["plain (graph outputs only)"])
    for label, runs in cpu.items():
        med = statistics.median(runs)
        print(f"  {label:<42}: {med:6.2f} ms/image CPU  ({med / base:.2f}x plain; runs "
              f"{', '.join(f'{r:.1f}' for r in runs)})")


if __name__ == "__main__":
    main()
