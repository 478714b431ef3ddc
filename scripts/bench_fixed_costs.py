"""Fixed costs of one command: whole-process wall time of `quanttool convert -i` (and `convert -f`) with this
tree's quanttool against an older commit's, run alternately, medians and their ratio.

    python scripts/bench_fixed_costs.py --before main --repeats 7 [--images 8]

The older tree is `git archive REF quanttool` in a temporary folder, with this tree's compiled statistics kernel
copied in when REF's kernel source is the same (it is only the kernel, not what is measured). Models: the demo
(demo/digits_mobilenet.onnx, its 10 calibration images) and MobileNetV2 224x224 (scripts/make_mobilenet.py,
random weights, N generated images): few images, so the per-command fixed costs (read, prepare, verify) show.
"""
from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from bench_common import BENCH, MEAN, NORM, ROOT, cpu_int8_features, mobilenet


def old_tree(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "quanttool"], check=True,
                             capture_output=True).stdout
    path = into / "tree.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(into, filter="data")
    old, new = into / "quanttool" / "_statskernel.c", ROOT / "quanttool" / "_statskernel.c"
    if old.read_bytes() == new.read_bytes():
        for built in (ROOT / "quanttool").glob("_statskernel*.so"):
            shutil.copy(built, into / "quanttool")
    return into


def timed(tree: Path, args: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system of the process and its threads) of one run."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quanttool", *map(str, args)], check=True, env=env, cwd=tree,  # cwd first on sys.path
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="git ref of the older quanttool")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--images", type=int, default=8, help="MobileNetV2 calibration images")
    opts = parser.parse_args()
    print(f"CPU int8 features: {cpu_int8_features()}; {os.cpu_count()} cores")
    model, images = mobilenet(opts.images)
    out = BENCH / "fixed_costs"
    out.mkdir(parents=True, exist_ok=True)
    demo_pre = ["--color", "gray", "--norm", "0.00392156862745098"]
    table = out / "demo.scale"
    subprocess.run([sys.executable, "-m", "quanttool", "calibrate", "-m", ROOT / "demo" / "digits_mobilenet.onnx",
                    "-i", ROOT / "calibration_data", *demo_pre, "-o", table], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cases = {
        "demo convert -i": ["convert", "-m", ROOT / "demo" / "digits_mobilenet.onnx", "-i", ROOT / "calibration_data",
                            *demo_pre, "-o", out / "demo_i.onnx"],
        "demo convert -f": ["convert", "-m", ROOT / "demo" / "digits_mobilenet.onnx", "-f", table,
                            "-o", out / "demo_f.onnx"],
        f"mobilenet_v2 convert -i ({opts.images} images)": [
            "convert", "-m", model, "-i", images, "--max-images", opts.images, "--mean", MEAN, "--norm", NORM,
            "--resize", "center-crop", "-o", out / "mb_i.onnx"],
    }
    with tempfile.TemporaryDirectory() as folder:
        trees = {"before": old_tree(opts.before, Path(folder)), "after": ROOT}
        for name, args in cases.items():
            times: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
            for k in range(opts.repeats):  # alternate (and swap the order each round) so load drifts hit both
                for side in (("before", "after") if k % 2 == 0 else ("after", "before")):
                    times[side].append(timed(trees[side], args))
            for j, kind in enumerate(("wall", "CPU")):
                before, after = (statistics.median(t[j] for t in times[s]) for s in ("before", "after"))
                print(f"{name}, {kind}: before ({opts.before}) {before:.2f} s, after {after:.2f} s, "
                      f"saved {before - after:.2f} s, ratio {before / after:.2f} (medians of {opts.repeats})")


if __name__ == "__main__":
    main()
