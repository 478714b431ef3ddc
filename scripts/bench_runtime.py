"""Speed of the int8 models quanttool writes, per target runtime: latency vs fp32 and vs onnxruntime's own
quantize_static output, all in one run.

    python scripts/bench_runtime.py [--images 32] [--repeats 7] [--threads 2] [--runs 30]

Models: the demo (1x32x32) and MobileNetV2 224x224 (scripts/make_mobilenet.py, random weights, BN kept).
Per model: fp32; quanttool --target generic (the default), --target onnxruntime, --target openvino and
--target tensorrt; onnxruntime quantize_static (QDQ, per-channel int8 weights, int8 activations, MinMax) with
the same calibration images. onnxruntime CPU sessions, batch 1: once with default session options and once with
`session.qdqisint8allowed=1` (quanttool's exact setting, see README "Running the int8 model"); OpenVINO CPU
plugin with its default configuration (INFERENCE_NUM_THREADS set to --threads) when `openvino` is installed.
Timing: --repeats rounds; in each round every variant, in turn, gets a fresh session, 3 warm-up runs and --runs
timed inferences, then its session is closed (alternating spreads the load of other processes over all variants;
one live session at a time keeps idle thread pools of the others from competing for the cores). The figure is
the median over rounds of the per-inference mean.
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import logging
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnx

from bench_common import PREPROCESS, ROOT, cpu_int8_features, mobilenet

from quanttool.calibrate import Settings
from quanttool.commands import convert_model
from quanttool.inputs import InputSpec, Preprocess, discover, load_sample

TARGETS = ("generic", "onnxruntime", "openvino", "tensorrt")


def calibration_tensors(images: Path, shape, pp: Preprocess, n: int) -> np.ndarray:
    spec = InputSpec("input", shape)
    return np.concatenate([load_sample(sample, [spec], pp)["input"] for sample in discover({"input": images}, n)])


def quantize_static_model(model: Path, out: Path, calib: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def ort_runner(path: Path, threads: int, config: dict):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def openvino_runner(path: Path, threads: int):
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def bench(variants: dict, x: np.ndarray, repeats: int, runs: int) -> dict[str, float]:
    """`variants`: name -> factory of a runner; see the module docstring for the protocol."""
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, make in variants.items():
            run = make()
            for _ in range(3):  # first-run allocations and kernel selection
                run(x)
            start = time.perf_counter()
            for _ in range(runs):
                run(x)
            rounds[name].append((time.perf_counter() - start) / runs)
            del run
    return {name: statistics.median(times) for name, times in rounds.items()}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--effnet", type=Path, default=None,
                        help="folder with a trained EfficientNet-Lite0: model.onnx and calib/ (ImageNet preprocessing)")
    parser.add_argument("--skip-mobilenet", action="store_true")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice lines
    try:
        import openvino  # noqa: F401
        have_ov = True
    except ImportError:
        have_ov = False
        print("openvino not installed: onnxruntime only (pip install openvino)")
    print(f"CPU int8 features: {cpu_int8_features()}; {args.threads} threads, batch 1; the machine may be shared, "
          f"so compare ratios from this one run")

    models = {
        "demo 1x32x32": (ROOT / "demo" / "digits_mobilenet.onnx", ROOT / "calibration_data", (1, 1, 32, 32),
                         dict(color="gray", norm=(1 / 255,))),
    }
    if not args.skip_mobilenet:
        mnv2, mnv2_images = mobilenet(args.images)
        models["MobileNetV2 224"] = (mnv2, mnv2_images, (1, 3, 224, 224), PREPROCESS)
    if args.effnet is not None:
        models["EfficientNet-Lite0 224 (trained)"] = (
            args.effnet / "model.onnx", args.effnet / "calib", (1, 3, 224, 224),
            dict(mean=(123.675, 116.28, 103.53), norm=(0.0171247538, 0.0175070028, 0.0174291939)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, (model, images, shape, pp_fields) in models.items():
            pp = Preprocess(**pp_fields)
            calib = calibration_tensors(images, shape, pp, args.images)
            x = calib[:1]
            paths = {"fp32": model}
            quantize_static_model(model, tmp / "ort_qs.onnx", calib)
            paths["quantize_static"] = tmp / "ort_qs.onnx"
            pre = {"mean": (",".join(map(str, pp.mean)),), "norm": (",".join(map(str, pp.norm)),),
                   "color": (pp.color,), "resize": (pp.resize,), "shape": (",".join(map(str, shape[1:])),)}
            for target in TARGETS:
                out = tmp / f"{target}.onnx"
                scheme = "auto" if target == "onnxruntime" else "symmetric"
                convert_model(model, out, None, Settings(scheme=scheme, target=target), fmt="qdq", exclude=(),
                              params_path=None, images=[str(images)], pad_value=(), focus=False,
                              max_images=args.images, threads=args.threads, **pre)
                paths[f"quanttool {target}"] = out
            variants = {}
            for name, path in paths.items():
                variants[f"ort default | {name}"] = partial(ort_runner, path, args.threads, {})
                if name != "fp32":
                    variants[f"ort qdqisint8allowed=1 | {name}"] = partial(
                        ort_runner, path, args.threads, {"session.qdqisint8allowed": "1"})
            if have_ov:
                for name in ("fp32", "quantize_static", "quanttool generic", "quanttool openvino",
                             "quanttool tensorrt"):
                    variants[f"openvino | {name}"] = partial(openvino_runner, paths[name], args.threads)
            times = bench(variants, x, args.repeats, args.runs)
            print(f"\n{label}: median ms per inference over {args.repeats} alternating rounds of {args.runs}")
            print(f"{'runtime | model':58s} {'ms':>8s} {'/fp32':>7s} {'/quantize_static':>17s}")
            for name, t in times.items():
                runtime = name.split(" | ")[0]
                fp32 = times.get(f"{'ort default' if runtime.startswith('ort') else runtime} | fp32")
                qs = times.get(f"{runtime} | quantize_static")
                print(f"{name:58s} {t * 1e3:8.3f} {t / fp32:7.2f} {t / qs if qs else float('nan'):17.2f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
