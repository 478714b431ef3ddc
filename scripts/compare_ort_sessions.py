"""Is onnxruntime's default session bit-identical to the `session.qdqisint8allowed=1` session quanttool uses?

    python scripts/compare_ort_sessions.py [--models demo,tests,mobilenet] [--images 20]

Per int8 model (the demo, tests/data/*.onnx and MobileNetV2 224x224 from scripts/make_mobilenet.py, each
converted with `--target generic` and `--target onnxruntime`, QDQ), both sessions run the same inputs twice:
- the plain model: inputs whose outputs are bit-identical, and the ops the default session left in float
  (DequantizeLinear -> float op -> QuantizeLinear instead of an integer kernel), read from its optimized graph;
- the model with every activation QuantizeLinear output exposed, as `evaluate` runs it: per producing op,
  the share of int8 values that differ and the largest difference in LSB.
Last, one QDQ Conv whose U8S8 pair sums overflow int16 (AVX2's vpmaddubsw saturates there, VNNI does not).
Demo inputs are its held-out images; the others get N(0, 1) inputs (random weights: outputs mean nothing).
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench_common import MEAN, NORM, ROOT, cpu_int8_features, mobilenet

# tests/data models: input name -> C,H,W, and whether H/W are dynamic (calibrate and convert need --shape)
TEST_MODELS = {
    "resnet_bn": ({"input": (3, 24, 32)}, False), "mobilenet_se": ({"input": (3, 32, 32)}, True),
    "unet": ({"input": (3, 16, 16)}, True), "two_in_out": ({"image": (3, 16, 16), "aux": (1, 16, 16)}, False),
    "transformer": ({"input": (3, 16, 16)}, False), "paddle_style": ({"x": (3, 16, 16)}, False),
    "efficientnet_lite": ({"input": (3, 32, 32)}, False),
}
TARGETS = ("generic", "onnxruntime")
INTEGER_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul")  # float in an optimized graph = fallback


def quanttool(*args) -> None:
    result = subprocess.run([sys.executable, "-m", "quanttool", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"quanttool {args[0]} failed: {result.stderr.strip()}")


def session(model: onnx.ModelProto, int8_allowed: bool, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.qdqisint8allowed", "1" if int8_allowed else "0")
    if optimized:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: list[dict]) -> list[dict]:
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(None, f))) for f in feeds]


def activation_q_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Output of every QuantizeLinear of an activation -> the op type that produced its input."""
    constants = {i.name for i in model.graph.initializer}
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    outputs = {o.name for o in model.graph.output}
    return {n.output[0]: producer.get(n.input[0], "graph input") for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in constants and n.output[0] not in outputs}


def float_ops(model: onnx.ModelProto, feeds: list[dict], work: Path) -> tuple[list[dict], list[dict], Counter]:
    """Both sessions' results, and the ops the default session runs in float but the exact one does not."""
    counts = []
    results = []
    for allowed in (False, True):
        optimized = work / f"optimized_{int(allowed)}.onnx"
        results.append(run(session(model, allowed, optimized), feeds))
        counts.append(Counter(n.op_type for n in onnx.load(str(optimized)).graph.node if n.op_type in INTEGER_OPS))
    return results[0], results[1], counts[0] - counts[1]


def compare(tag: str, path: Path, feeds: list[dict], work: Path) -> None:
    model = onnx.load(str(path))
    default, exact, floats = float_ops(model, feeds, work)
    same = sum(all(np.array_equal(a[k], b[k]) for k in a) for a, b in zip(default, exact))
    first = model.graph.output[0].name  # for classifiers: does the top-1 class change?
    top1 = sum(int(np.argmax(a[first])) == int(np.argmax(b[first])) for a, b in zip(default, exact))
    print(f"{tag}: plain outputs bit-identical on {same}/{len(feeds)} inputs (argmax of {first} agrees on {top1}); "
          f"ops in float only in the default session: {dict(floats) or 'none'}")

    exposed_names = activation_q_outputs(model)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in exposed_names)
    default, exact, floats = float_ops(exposed, feeds, work)
    differ, total, worst = Counter(), Counter(), Counter()
    first = ""  # the first differing tensor in graph order: the error the float op itself made
    for name, op in exposed_names.items():
        diff = np.abs(np.stack([d[name] for d in default]).astype(np.int32)
                      - np.stack([e[name] for e in exact]).astype(np.int32))
        differ[op] += int(np.count_nonzero(diff))
        total[op] += diff.size
        worst[op] = max(worst[op], int(diff.max()))
        if diff.any() and not first:
            first = f"; first differing: {name} ({op}), max {diff.max()} LSB"
    per_op = ", ".join(f"{op} {100 * differ[op] / total[op]:.2f}% (max {worst[op]})" for op in total if differ[op])
    print(f"    exposed ({len(exposed_names)} int8 tensors; in float only in the default session: "
          f"{dict(floats) or 'none'}): int8 values differing: {per_op or 'none'}{first}")


def saturating_conv() -> None:
    """x = 127 (uint8 255 after onnxruntime's shift) times w = 127 over 64 channels: pairs sum to 64770 > 32767."""
    c = 64
    arrays = {"sx": np.array(1.0, np.float32), "z": np.array(0, np.int8), "wq": np.full((c, c, 1, 1), 127, np.int8),
              "sw": np.ones(c, np.float32), "zw": np.zeros(c, np.int8), "sy": np.array(10000.0, np.float32)}
    inits = [numpy_helper.from_array(value, name) for name, value in arrays.items()]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "sy", "z"], ["yq"])]
    graph = helper.make_graph(nodes, "saturating_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 2, 2])],
                              [helper.make_tensor_value_info("yq", TensorProto.INT8, [1, c, 2, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = np.full((1, c, 2, 2), 127.0, np.float32)
    expected = round(127 * 127 * c / 10000)
    got = [int(session(model, allowed).run(None, {"x": x})[0].ravel()[0]) for allowed in (False, True)]
    print(f"saturating QDQ Conv (one QLinearConv in both sessions): exact {expected}, default session {got[0]}, "
          f"qdqisint8allowed=1 {got[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,tests,mobilenet")
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    which = args.models.split(",")
    print(f"CPU int8 features: {cpu_int8_features()}; onnxruntime {ort.__version__}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="compare_ort_") as tmp:
        work = Path(tmp)
        cases = []  # (tag, fp32 model, calibrate/convert options, feeds)
        if "demo" in which:
            from PIL import Image
            demo = ROOT / "demo" / "digits_mobilenet.onnx"
            name = onnx.load(str(demo)).graph.input[0].name
            feeds = [{name: (np.asarray(Image.open(p).convert("L"), np.float32) / 255)[None, None]}
                     for p in sorted((ROOT / "demo" / "heldout").glob("*.png"))[:args.images]]
            cases.append(("demo", demo, ["-i", ROOT / "calibration_data", "--color", "gray",
                                         "--norm", "0.00392156862745098"], [], feeds))
        if "tests" in which:
            for model, (inputs, dynamic) in TEST_MODELS.items():
                calib = work / model
                for name, chw in inputs.items():
                    (calib / name).mkdir(parents=True)
                    for i in range(24):
                        np.save(calib / name / f"{i:03d}.npy", rng.standard_normal(chw).astype(np.float32))
                images = (["-i", calib / next(iter(inputs))] if len(inputs) == 1
                          else [a for name in inputs for a in ("-i", f"{name}={calib / name}")])
                shape = [a for n, chw in inputs.items() for a in ("--shape", f"{n}={','.join(map(str, chw))}")] \
                    if dynamic else []
                feeds = [{n: rng.standard_normal((1, *chw)).astype(np.float32) for n, chw in inputs.items()}
                         for _ in range(args.images)]
                cases.append((model, ROOT / "tests" / "data" / f"{model}.onnx", images + shape, shape, feeds))
        if "mobilenet" in which:
            path, images = mobilenet(16)
            feeds = [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
                     for _ in range(min(args.images, 5))]  # 224x224: a few inputs, the tensors are large
            cases.append(("mobilenet_v2", path, ["-i", images, "--mean", MEAN, "--norm", NORM, "--resize",
                                                 "center-crop"], [], feeds))
        for tag, path, calibrate_options, convert_options, feeds in cases:
            for target in TARGETS:
                table, int8 = work / f"{tag}_{target}.scale", work / f"{tag}_{target}.onnx"
                quanttool("calibrate", "-m", path, *calibrate_options, "-a", "minmax", "--target", target, "-o", table)
                quanttool("convert", "-m", path, "-f", table, *convert_options, "-o", int8)
                compare(f"{tag} --target {target}", int8, feeds, work)
    saturating_conv()


if __name__ == "__main__":
    main()
