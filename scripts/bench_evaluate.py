"""Benchmark `evaluate -q` against the plain fp32 inference it needs, over the same images, in one run.

    python scripts/bench_evaluate.py [--images 50] [--repeats 3] [--threads 0]

Set-up (not timed): MobileNetV2 (224x224, 52 Conv, BN kept), a minmax table from `calibrate` on the images,
the int8 QDQ model from `convert`. Then, alternating, median of the repeats:
- plain fp32 inference: decode + preprocess + onnxruntime run of every image (the session made beforehand);
- the whole `quanttool evaluate -m MODEL -q MODEL_int8 -i DIR` (commands.evaluate_model: load, prepare,
  convert recipe, build, sessions, run, report text);
and prints their ratio, plus the per-image time of the plain int8 model for reference.
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import os
import shutil
import tempfile
import time
from pathlib import Path

from bench_common import MEAN, NORM, PREPROCESS, ROOT, arguments, cpu_int8_features, median_time, mobilenet

from quanttool import commands
from quanttool import prepare as prep
from quanttool.calibrate import Settings
from quanttool.inputs import Preprocess, discover, iter_samples
from quanttool.runtime import session



def main() -> None:
    args = arguments(__doc__, images=50)

    model_path, image_dir = mobilenet(args.images)
    options = dict(images=(str(image_dir),), shape=(), mean=MEAN, norm=NORM, color="rgb", resize="center-crop",
                   pad_value=None, focus=False, max_images=args.images, threads=args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    table, int8_path = tmp / "mobilenet_v2.scale", tmp / "mobilenet_v2_int8.onnx"
    commands.calibrate_table(model_path, table, Settings(algorithm="minmax"), **options)
    commands.convert_model(model_path, int8_path, table, Settings(), fmt="qdq", exclude=(), params_path=None,
                           **options)

    model = prep.load_model(model_path)
    specs = prep.input_specs(model, None)
    pp = Preprocess(**PREPROCESS)
    samples = discover({specs[0].name: image_dir}, args.images)
    plain = session(model, args.threads)
    plain_int8 = session(prep.load_model(int8_path), args.threads)

    def infer(sess=plain):
        for _, feeds in iter_samples(samples, specs, pp, threads=max(1, args.threads)):
            sess.run(None, feeds)

    text = {}

    def evaluate():
        text["report"] = commands.evaluate_model(model_path, int8_path, None, fmt="qdq", labels=None, json_path=None,
                                                 report_path=None, top=5, **options)

    infer()  # warm-up: file cache and onnxruntime's first-run allocations
    infer(plain_int8)
    t_infer, t_eval, c_infer, c_eval = [], [], [], []

    def cpu(func) -> float:  # CPU seconds of this process (all threads): robust to other jobs on the machine
        start = time.process_time()
        func()
        return time.process_time() - start

    for _ in range(args.repeats):  # alternate, so machine noise hits both alike
        t_infer.append(median_time(infer, 1)[0])
        t_eval.append(median_time(evaluate, 1)[0])
        c_infer.append(cpu(infer))
        c_eval.append(cpu(evaluate))
    t_int8, _ = median_time(lambda: infer(plain_int8), 1)
    shutil.rmtree(tmp)

    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"CPU int8 features: {cpu_int8_features()}; load average {os.getloadavg()[0]:.1f} (shared machine)")
    print(f"model: {model_path.relative_to(ROOT)} (52 Conv, 224x224), {len(samples)} images, "
          f"threads {args.threads or 'default'}")
    print(f"plain fp32 inference      : {med(t_infer):7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in t_infer)})")
    print(f"evaluate -q (all steps)   : {med(t_eval):7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in t_eval)})")
    print(f"ratio evaluate / inference: {med(t_eval) / med(t_infer):7.2f}x")
    print(f"CPU time: inference {med(c_infer):.2f} s, evaluate {med(c_eval):.2f} s, ratio "
          f"{med(c_eval) / med(c_infer):.2f}x")
    print(f"plain int8 inference      : {t_int8:7.2f} s   (reference, one run)")
    print("evaluate output (top 5):")
    print("\n".join("  " + line for line in text["report"].splitlines()))


if __name__ == "__main__":
    main()
