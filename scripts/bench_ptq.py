"""Weight-side PTQ benchmark: `quanttool convert` with each method of quanttool/adjust alone and combined,
side by side in one run, scored on held-out images against the fp32 model.

    python scripts/bench_ptq.py -m MODEL.onnx --calib DIR --heldout DIR [preprocessing options] \
        [--recipes "|--bias-correct|--adaround"] [--max-images N]

Per recipe: the wall time of the whole `quanttool convert` process (calibration included; the weight
methods add one more pass over the calibration images), output SQNR over all held-out outputs
(10*log10(sum ref^2 / sum (ref - q)^2), first output, or its logits when it is a Softmax) and top-1
agreement with fp32 (argmax over axis 1, meaningful for classifiers). Int8 models run with `session.qdqisint8allowed=1` (exact int8 arithmetic).
Preprocessing options are passed to quanttool unchanged (e.g. --color gray --norm 0.0039 -g 3,224,224).
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import ROOT

from quanttool.commands import Inputs
from quanttool.inputs import discover, iter_samples
from quanttool.runtime import session

DEFAULT_RECIPES = ["", "--bias-correct", "--weight-clip", "--adaround --one-pass", "--adaround", "--equalize",
                   "--weight-clip --adaround", "--weight-clip --adaround --bias-correct"]


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8", "avx2") if f" {f}" in flags]
    return ", ".join(found) or "none of avx2/vnni/amx"


def scored_tensor(model) -> str:
    """The first output, or the logits when that output is a Softmax: SQNR of probabilities is decided by the
    few images near a decision boundary, the logits show the whole error."""
    def source(name: str) -> str:  # through Identity nodes, which quanttool's preparation removes
        producer = next((n for n in model.graph.node if name in n.output), None)
        return source(producer.input[0]) if producer is not None and producer.op_type == "Identity" else name

    out = source(model.graph.output[0].name)
    producer = next((n for n in model.graph.node if out in n.output), None)
    return source(producer.input[0]) if producer is not None and producer.op_type == "Softmax" else out


def outputs(model, feeds_list, name: str) -> np.ndarray:
    from quanttool.runtime import with_outputs

    produced = {o for node in model.graph.node for o in node.output}
    name = f"{name}_dequantized" if f"{name}_dequantized" in produced else name  # the int8 model's float view
    sess = session(with_outputs(model, [name]), 0, "bench model")
    return np.concatenate([sess.run([name], feeds)[0] for feeds in feeds_list])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("--calib", required=True)
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--recipes", default="|".join(DEFAULT_RECIPES), help="'|'-separated convert options")
    parser.add_argument("--common", default="--target onnxruntime",
                        help="convert options added to every recipe (the README figures: --target onnxruntime, "
                             "i.e. the auto scheme)")
    parser.add_argument("--max-images", type=int, default=None, help="calibration images")
    parser.add_argument("--eval-images", type=int, default=None)
    args, pre = parser.parse_known_args()
    print(f"CPU int8 features: {cpu_flags()}; model {args.model}")

    inputs = Inputs(args.model, [args.heldout], *_pre_args(pre), max_images=args.eval_images, threads=0)
    samples = discover(inputs.roots, args.eval_images)
    feeds = [dict(f) for _, f in iter_samples(samples, inputs.specs, inputs.pp)]
    import onnx

    fp32 = onnx.load(str(args.model))
    name = scored_tensor(fp32)
    ref = outputs(fp32, feeds, name)
    print(f"{len(feeds)} held-out images; scored tensor {name!r}, shape {ref.shape}")
    print(f"{'recipe':<50} {'convert s':>9} {'SQNR dB':>8} {'top-1 agr':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split("|"):
            out = Path(tmp) / "q.onnx"
            cmd = [sys.executable, "-m", "quanttool", "convert", "-m", str(args.model), "-i", args.calib,
                   "-o", str(out), *pre, *args.common.split(), *recipe.split()]
            if args.max_images:
                cmd += ["--max-images", str(args.max_images)]
            start = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode:
                print(f"{recipe or '(plain)':<50} failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            got = outputs(onnx.load(str(out)), feeds, name)
            sqnr = 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())
            agree = (ref.argmax(1) == got.argmax(1)).mean() if ref.ndim >= 2 and ref.shape[1] > 1 else float("nan")
            print(f"{recipe or '(round-to-nearest)':<50} {seconds:9.1f} {sqnr:8.2f} {agree:9.3f}", flush=True)


def _pre_args(pre: list[str]):
    """The preprocessing options as Inputs takes them: shape, mean, norm, color, resize, pad_value, focus."""
    keys = {"-g": "shape", "--shape": "shape", "-w": "mean", "--mean": "mean", "-s": "norm", "--norm": "norm",
            "--color": "color", "--resize": "resize", "--pad-value": "pad_value"}
    values = {k: [] for k in ("shape", "mean", "norm", "color", "resize", "pad_value")}
    items = iter(pre)
    focus = False
    for item in items:
        if item == "--focus":
            focus = True
        elif item in keys:
            values[keys[item]].append(next(items))
        else:
            raise SystemExit(f"unknown option {item}")
    return (values["shape"], values["mean"], values["norm"], values["color"], values["resize"], values["pad_value"],
            focus)


if __name__ == "__main__":
    main()
