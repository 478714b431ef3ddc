"""What a strided subsample for the HISTOGRAM only would change: KL thresholds and int8 agreement, one model.

    python scripts/bench_hist_subsample.py [--stride 4] [--images 50] [--heldout 50]
    python scripts/bench_hist_subsample.py --trained /work/trained/effnet_lite0 --stride 4
    python scripts/bench_hist_subsample.py --demo --stride 4

An experiment, not a quanttool option (issue 12 lever): the histogram scatter is about 40% of the statistics
kernel's time, so binning every s-th value would cut about that fraction times (1 - 1/s). Here every observed
tensor of every calibration image is folded twice in one observation pass: exactly (quanttool.stats), and
with its histogram built from values 0, s, 2s, ... of the image's tensor (a choice that depends only on the
image, so sharding would stay exact); min, max, count, zeros and moments stay exact. The subsampled histogram
is re-expressed at the exact range R (exact bin merging, stats._bins_at) and replaces the exact one. Then:
- the KL range of every tensor from both (relative change: median, max, how many differ at all);
- both tables converted to int8 QDQ and run on the held-out images in quanttool's session (S8S8): output SQNR
  against fp32 and top-1 agreement with fp32, for each.
Models: the MobileNetV2 benchmark model (random weights, generated images) by default, the demo (trained on
real digits: calibration_data/, demo/heldout/), or a trained model folder of scripts/trained_models.py
(`model.onnx`, `calib/`, `heldout/`, options from its README).
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import argparse
import re
import statistics
import tempfile
from pathlib import Path

import numpy as np
from bench_common import MEAN, NORM, ROOT, cpu_int8_features, mobilenet

from quanttool import commands, observe
from quanttool.calibrate import Settings, choose_params, observed_tensors
from quanttool.inputs import discover, iter_samples
from quanttool.runtime import session
from quanttool.stats import TensorStats, _bins_at
from quanttool.table import Table, as_float32, write_table


def trained_options(folder: Path) -> dict:
    """The quanttool options the trained-models README gives for this model."""
    text = (folder.parent / "README.md").read_text()
    section = text.split(f"## {folder.name}\n", 1)[1].split("\n## ", 1)[0]
    line = re.search(r"quanttool options: `([^`]*)`", section).group(1).split()
    opts = dict(zip(line[::2], line[1::2]))
    return dict(mean=opts["--mean"], norm=opts["--norm"], color=opts["--color"], resize=opts["--resize"],
                shape=(opts["-g"],))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--images", type=int, default=50, help="calibration images")
    parser.add_argument("--heldout", type=int, default=50, help="held-out images scored")
    parser.add_argument("--trained", help="a trained model folder (model.onnx, calib/, heldout/)")
    parser.add_argument("--demo", action="store_true", help="the demo model and its images")
    args = parser.parse_args()
    if args.demo:
        model_path, calib, heldout = ROOT / "demo" / "digits_mobilenet.onnx", ROOT / "calibration_data", \
            ROOT / "demo" / "heldout"
        pre = dict(mean="0", norm="0.00392156862745098", color="gray", resize="stretch", shape=())
    elif args.trained:
        folder = Path(args.trained)
        model_path, calib, heldout = folder / "model.onnx", folder / "calib", folder / "heldout"
        pre = trained_options(folder)
    else:
        model_path, calib = mobilenet(args.images + args.heldout)
        heldout = calib  # generated images: score on those after the calibration ones
        pre = dict(mean=MEAN, norm=NORM, color="rgb", resize="center-crop", shape=())
    options = dict(pre, pad_value=None, focus=False, threads=0)
    inputs = commands.Inputs(model_path, images=(str(calib),), max_images=args.images, **options)
    prepared = inputs.static()
    names = observed_tensors(prepared)
    side: dict[int, TensorStats] = {}  # id(exact statistics) -> the subsampled twin

    class Twin(TensorStats):
        def update(self, x, batch=1):
            flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
            super().update(flat, batch)
            side.setdefault(id(self), TensorStats()).update(flat[::args.stride], batch)

    observe.TensorStats = Twin  # observe() makes one per tensor
    samples = discover(inputs.roots, args.images)
    exact = observe.observe(prepared, iter_samples(samples, inputs.specs, inputs.pp), len(samples), names=names,
                            desc=None)
    hybrid = {}
    for name, st in exact.items():
        sub = side[id(st)]
        mixed = TensorStats()
        mixed.__dict__.update({k: v for k, v in st.__dict__.items() if k not in ("pos", "neg")})
        mixed.pos = _bins_at(sub.pos, sub.range, st.range, sub.edge_pos) if sub.range else np.zeros_like(st.pos)
        mixed.neg = _bins_at(sub.neg, sub.range, st.range, sub.edge_neg) if sub.range else np.zeros_like(st.neg)
        hybrid[name] = mixed
    settings = Settings(algorithm="kl")
    tables = {"exact": choose_params(prepared, exact, settings), f"stride {args.stride}": choose_params(prepared, hybrid, settings)}
    a, b = tables.values()
    changes = [abs(b[n].scale / a[n].scale - 1) for n in a if n in b]
    print(f"CPU int8 features: {cpu_int8_features()}")
    print(f"model: {model_path}, {len(samples)} calibration images, {len(exact)} observed tensors, "
          f"histogram of every {args.stride}th value")
    print(f"KL scale change: {sum(c > 0 for c in changes)} of {len(changes)} tensors differ; "
          f"median {statistics.median(changes) * 100:.3f}%, max {max(changes) * 100:.3f}%")

    tmp = Path(tempfile.mkdtemp(prefix="bench_hist_subsample_"))
    fp32 = session(prepared)
    later = discover({inputs.specs[0].name: heldout}, None)
    later = later[args.images:args.images + args.heldout] if heldout == calib else later[:args.heldout]
    feeds = [f for _, f in iter_samples(later, inputs.specs, inputs.pp)]
    refs = [fp32.run(None, f)[0] for f in feeds]
    for label, params in tables.items():
        path = tmp / f"{label.replace(' ', '')}.scale"
        write_table(path, Table(as_float32(params), {"model": model_path.name, "algorithm": "kl"}))
        int8_path = tmp / f"{label.replace(' ', '')}_int8.onnx"
        commands.convert_model(model_path, int8_path, path, Settings(), fmt="qdq", exclude=(), params_path=None,
                               images=(str(calib),), max_images=args.images, **options)
        sess = session(commands.prep.load_model(int8_path))
        outs = [sess.run(None, f)[0] for f in feeds]
        signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in refs)
        noise = sum(float(np.sum((r.astype(np.float64) - q) ** 2)) for r, q in zip(refs, outs))
        agree = np.mean([int(np.argmax(r) == np.argmax(q)) for r, q in zip(refs, outs)])
        print(f"{label:>9}: output SQNR {10 * np.log10(signal / noise):6.2f} dB, top-1 agreement with fp32 "
              f"{agree * 100:5.1f}% ({len(feeds)} held-out images)")


if __name__ == "__main__":
    main()
