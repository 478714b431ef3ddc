"""Benchmark `calibrate -a kl` against plain onnxruntime inference over the same images, in one run.

    python scripts/bench_calibrate.py [--images 200] [--repeats 3]

Prints, side by side:
- time: plain inference (decode + preprocess + onnxruntime run, the same input pipeline and thread count)
  vs the whole `calibrate -a kl` (prepare, observe every activation, KL thresholds, table), median of
  alternating repeats, and their ratio;
- threshold search: choosing KL thresholds for every tensor from the collected statistics;
- memory: peak RSS of `quanttool calibrate` processes at 100 and 400 images, and their ratio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import MEAN, NORM, PREPROCESS, ROOT, arguments, median_time, mobilenet

from quanttool import prepare as prep
from quanttool.calibrate import Settings, choose_params, collect
from quanttool.inputs import Preprocess, discover, iter_samples
from quanttool.runtime import session



def peak_rss_mb(args: list[str], env: dict | None = None) -> float:
    """Peak RSS of a child process, measured by a fresh wrapper so earlier children don't count."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *args], check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    return int(out.stdout.strip()) / 1024


def main() -> None:
    args = arguments(__doc__, images=200)

    model_path, image_dir = mobilenet(max(args.images, 400))
    model = prep.load_model(model_path)
    specs = prep.input_specs(model, None)
    pp = Preprocess(**PREPROCESS)
    roots = {specs[0].name: image_dir}
    samples = discover(roots, args.images)
    plain = session(model, args.threads)

    def infer():
        for _, feeds in iter_samples(samples, specs, pp, threads=max(1, args.threads)):
            plain.run(None, feeds)

    settings = Settings(algorithm="kl")
    stats_box = {}

    def calibrate():
        prepared = prep.prepare(model, specs)
        stats, _ = collect(prepared, specs, roots, pp, max_images=args.images, threads=args.threads,
                           model_sha="bench")
        choose_params(prepared, stats, settings)
        stats_box["stats"], stats_box["model"] = stats, prepared

    infer()  # warm-up: file cache and onnxruntime's first-run allocations
    t_infer, t_cal = [], []
    for _ in range(args.repeats):  # alternate, so machine noise hits both alike
        t_infer.append(median_time(infer, 1)[0])
        t_cal.append(median_time(calibrate, 1)[0])
    t_kl, _ = median_time(lambda: choose_params(stats_box["model"], stats_box["stats"], settings), 5)

    with tempfile.TemporaryDirectory() as tmp:
        cli = [sys.executable, "-m", "quanttool", "calibrate", "-m", str(model_path), "-i", str(image_dir),
               "--mean", MEAN, "--norm", NORM, "--resize", "center-crop", "-a", "kl",
               "-o", str(Path(tmp) / "t.scale")]
        rss = {n: peak_rss_mb(cli + ["--max-images", str(n)]) for n in (100, 400)}
        # glibc gives each allocating thread its own arena, so peak RSS also depends on thread timing
        # (seen: +-10% between identical runs); with one arena only what the data needs remains
        one_arena = {n: peak_rss_mb(cli + ["--max-images", str(n)], {"MALLOC_ARENA_MAX": "1"}) for n in (100, 400)}

    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    n_tensors = len(stats_box["stats"])
    print(f"model: {model_path.relative_to(ROOT)} (52 Conv, 224x224), {len(samples)} images, {n_tensors} tensors")
    print(f"plain onnxruntime inference : {med(t_infer):7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in t_infer)})")
    print(f"calibrate -a kl (all steps) : {med(t_cal):7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in t_cal)})")
    print(f"ratio calibrate / inference : {med(t_cal) / med(t_infer):7.2f}x")
    print(f"KL thresholds, all tensors  : {t_kl * 1000:7.1f} ms  (median of 5)")
    print(f"peak RSS 100 images         : {rss[100]:7.1f} MB")
    print(f"peak RSS 400 images         : {rss[400]:7.1f} MB")
    print(f"ratio RSS 400 / 100         : {rss[400] / rss[100]:7.3f}")
    print(f"same, MALLOC_ARENA_MAX=1    : {one_arena[100]:7.1f} MB / {one_arena[400]:7.1f} MB = "
          f"{one_arena[400] / one_arena[100]:.3f}")


if __name__ == "__main__":
    main()
