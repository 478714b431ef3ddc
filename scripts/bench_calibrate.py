"""Benchmark the whole `quanttool calibrate -a kl` process against a plain decode + inference pass, in one run.

    python scripts/bench_calibrate.py [--images 200] [--repeats 3] [--jobs 1,0] [--threads 0] [--rss 100,400]

Prints the CPU's int8 features, then, side by side (alternating runs, medians, so machine noise hits all alike):
- plain: scripts/bench_plain.py, a whole process that decodes and preprocesses every image with quanttool's
  input pipeline and runs the fp32 model once per image in a default onnxruntime session;
- `python -m quanttool calibrate -a kl` (prepare, observe, KL thresholds, table), a whole process, once per
  --jobs value (0: quanttool's default) and --threads value (onnxruntime threads, 0: its default), with its
  ratio to the plain pass;
- start-up: `quanttool --help` vs `python -c pass`, median of 11 runs each;
- memory: peak RSS of the calibrate process at the --rss image counts, and the ratio of the last to the first;
- threshold search: choosing KL thresholds for every tensor from the collected statistics (in process);
- with --split N: CPU time of both processes at 1 and at N images (alternating, medians), split into a fixed
  part and a part per image (the difference over N - 1 images): the per-image ratio is what the ratio tends
  to with many images.
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import MEAN, NORM, ROOT, SCRIPTS, cpu_int8_features, median_time, mobilenet


def peak_rss_mb(args: list[str], env: dict | None = None) -> float:
    """Peak RSS of a child process, measured by a fresh wrapper so earlier children don't count."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe, *args], check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    return int(out.stdout.strip()) / 1024


CPU: dict[str, list[float]] = {}  # CPU seconds (user + system) of each timed child process, by label


def wall(args: list[str], label: str | None = None, env: dict | None = None) -> float:
    """Wall time of one child process; its CPU time goes to CPU[label] (robust to other jobs on the machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True, env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if label:
        CPU.setdefault(label, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", default="1,0", help="comma-separated --jobs values to time")
    parser.add_argument("--threads", default="0", help="comma-separated calibrate --threads values to time")
    parser.add_argument("--env", action="append", default=[], metavar="VAR=VALUE",
                        help="also time each variant with this environment variable set (e.g. QUANTTOOL_NO_BLOCKED=1)")
    parser.add_argument("--split", type=int, default=0, metavar="N",
                        help="also split CPU time into fixed and per-image parts from runs at 1 and N images")
    parser.add_argument("--rss", default="100,400", help="comma-separated image counts for peak RSS ('' skips)")
    args = parser.parse_args()
    rss_counts = [int(n) for n in args.rss.split(",") if n]
    model_path, image_dir = mobilenet(max([args.images, args.split, *rss_counts]))
    envs = [""] + args.env
    variants = [(int(j), int(t), e) for j in args.jobs.split(",") for t in args.threads.split(",") for e in envs]

    tmp = Path(tempfile.mkdtemp(prefix="bench_calibrate_"))
    plain = [sys.executable, str(SCRIPTS / "bench_plain.py"), str(model_path), str(image_dir), str(args.images)]

    def calibrate(j: int, n: int = args.images, t: int = 0) -> list[str]:
        return [sys.executable, "-m", "quanttool", "calibrate", "-m", str(model_path), "-i", str(image_dir),
                "--mean", MEAN, "--norm", NORM, "--resize", "center-crop", "-a", "kl", "--max-images", str(n),
                "-j", str(j), "--threads", str(t), "-o", str(tmp / "t.scale")]

    wall(plain)  # warm-up: file cache
    labels = {v: f"calibrate -a kl -j {v[0]} --threads {v[1]}" + (f" {v[2]}" if v[2] else "") for v in variants}
    times: dict[str, list[float]] = {"plain": [], **{labels[v]: [] for v in variants}}
    for _ in range(args.repeats):  # alternate, so machine noise hits every variant alike
        times["plain"].append(wall(plain, "plain"))
        for j, t, e in variants:
            env = dict([e.split("=", 1)]) if e else None
            times[labels[j, t, e]].append(wall(calibrate(j, t=t), labels[j, t, e], env))

    helps = {"python -c pass": [sys.executable, "-c", "pass"],
             "quanttool --help": [sys.executable, "-m", "quanttool", "--help"]}
    startup = {k: [] for k in helps}
    for _ in range(11):
        for key, cmd in helps.items():
            startup[key].append(wall(cmd, key))

    for _ in range(args.repeats if args.split else 0):
        for n in (1, args.split):
            wall(plain[:-1] + [str(n)], f"plain {n}")
            wall(calibrate(1, n), f"calibrate {n}")

    rss = {n: peak_rss_mb(calibrate(1, n)) for n in rss_counts}  # one process: its peak is the whole footprint

    sys.path.insert(0, str(ROOT))
    from quanttool import prepare as prep
    from quanttool.calibrate import Settings, choose_params
    from quanttool.stats import load_stats

    stats_file = tmp / "s.npz"
    subprocess.run(calibrate(0, min(args.images, 50)) + ["--stats", str(stats_file)], check=True,
                   capture_output=True)
    stats, _ = load_stats(stats_file)
    model = prep.load_model(model_path)
    prepared = prep.prepare(model, prep.input_specs(model, None))
    t_kl, _ = median_time(lambda: choose_params(prepared, stats, Settings(algorithm="kl")), 5)

    med = statistics.median
    print(f"CPU int8 features: {cpu_int8_features()}; {os.cpu_count()} logical CPUs; "
          f"load average {os.getloadavg()[0]:.1f} at the end (other jobs share this machine)")
    print(f"model: {model_path.relative_to(ROOT)} (52 Conv, 224x224), {args.images} images, "
          f"{len(stats)} observed tensors")
    base, base_cpu = med(times["plain"]), med(CPU["plain"])
    print("wall time (medians of alternating runs) and CPU time (user + system, all threads and processes):")
    print(f"plain decode + inference (process) : {base:7.2f} s   (runs: {', '.join(f'{t:.2f}' for t in times['plain'])})"
          f"  CPU {base_cpu:.2f} s")
    width = max(35, *(len(label) for label in labels.values()))
    for label in labels.values():
        t, c = times[label], med(CPU[label])
        print(f"{label:<{width}}: {med(t):7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in t)})  "
              f"ratio {med(t) / base:.2f}x;  CPU {c:.2f} s, ratio {c / base_cpu:.2f}x")
    for key, values in startup.items():
        print(f"{key:<35}: {med(values):7.3f} s   (median of 11)  CPU {med(CPU[key]):.3f} s")
    for n in rss_counts:
        print(f"peak RSS, {n:>5} images              : {rss[n]:7.1f} MB")
    if len(rss_counts) > 1:
        print(f"ratio RSS {rss_counts[-1]} / {rss_counts[0]}               : {rss[rss_counts[-1]] / rss[rss_counts[0]]:7.3f}")
    print(f"KL thresholds, all tensors         : {t_kl * 1000:7.1f} ms  (median of 5)")
    if args.split:
        per = {}
        for what in ("plain", "calibrate"):
            one, many = med(CPU[f"{what} 1"]), med(CPU[f"{what} {args.split}"])
            per[what] = (many - one) / (args.split - 1)
            print(f"{what + ' CPU, fixed / per image':<35}: {one - per[what]:7.2f} s  / {per[what] * 1000:6.1f} ms  "
                  f"(1 and {args.split} images, medians of {args.repeats})")
        print(f"{'per-image CPU ratio':<35}: {per['calibrate'] / per['plain']:7.2f}x")


if __name__ == "__main__":
    main()
