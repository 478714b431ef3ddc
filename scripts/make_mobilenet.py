"""Build a MobileNetV2 benchmark model (random weights) and, optionally, random benchmark images.

Used for speed and memory measurements only: the weights are random, so its predictions mean nothing.
Needs onnx, numpy, onnxruntime and Pillow (no torch):

    python scripts/make_mobilenet.py [--width 1.0] [--out out/mobilenet_v2.onnx] [--images N --images-dir DIR]

Benchmarks can import it: `sys.path.insert(0, scripts_dir); from make_mobilenet import build`.

Layout follows MobileNetV2 (Sandler et al. 2018): stem 3x3/2 conv, 17 inverted residual blocks
(expansion 6, depthwise 3x3, linear bottleneck, residual Add when stride 1 and widths match),
1x1 conv to 1280, GlobalAveragePool, Flatten, Gemm -> 1000, Softmax. Every Conv is followed by its own
BatchNormalization (not folded), ReLU6 is Clip(x, min, max) with min/max as inputs (opset 13).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
INVERTED_RESIDUAL_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channel rounding used by the reference MobileNetV2: nearest multiple of 8, never 10% below v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class _Builder:
    """Accumulates nodes and initializers; one place owns the RNG so builds are reproducible."""

    def __init__(self, seed: int):
        self.rng = np.random.RandomState(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0
        # One shared pair of ReLU6 bounds, as optimised exports (e.g. onnx-simplifier output) have.
        self.inits += [numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"),
                       numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max")]

    def _name(self, op: str) -> str:
        self.count += 1
        return f"{op.lower()}_{self.count}"

    def _init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                relu6: bool = True) -> str:
        name = self._name("Conv")
        fan_in = cin // groups * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k))
        self.nodes.append(helper.make_node(
            "Conv", [x, self._init(f"{name}.weight", w)], [f"{name}_out"], name=name,
            kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=groups))
        bn = f"{name}_bn"
        # Sane random BN statistics: a trained net's BN is close to identity-scale, never degenerate.
        params = [
            self._init(f"{bn}.gamma", self.rng.uniform(0.8, 1.2, cout)),
            self._init(f"{bn}.beta", self.rng.normal(0.0, 0.05, cout)),
            self._init(f"{bn}.mean", self.rng.normal(0.0, 0.1, cout)),
            self._init(f"{bn}.var", self.rng.uniform(0.5, 2.0, cout)),
        ]
        self.nodes.append(helper.make_node(
            "BatchNormalization", [f"{name}_out", *params], [f"{bn}_out"], name=bn, epsilon=1e-5))
        out = f"{bn}_out"
        if relu6:
            clip = f"{name}_relu6"
            self.nodes.append(helper.make_node(
                "Clip", [out, "relu6_min", "relu6_max"], [f"{clip}_out"], name=clip))
            out = f"{clip}_out"
        return out

    def inverted_residual(self, x: str, cin: int, cout: int, stride: int, t: int) -> str:
        hidden = cin * t
        y = x
        if t != 1:
            y = self.conv_bn(y, cin, hidden, 1)
        y = self.conv_bn(y, hidden, hidden, 3, stride, groups=hidden)
        y = self.conv_bn(y, hidden, cout, 1, relu6=False)  # linear bottleneck
        if stride == 1 and cin == cout:
            add = self._name("Add")
            self.nodes.append(helper.make_node("Add", [x, y], [f"{add}_out"], name=add))
            y = f"{add}_out"
        return y


def build(width: float = 1.0, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 with width multiplier `width`, random He-initialised weights; IR 8, opset 13."""
    b = _Builder(seed)
    cin = make_divisible(32 * width)
    last = make_divisible(1280 * max(1.0, width))
    x = b.conv_bn("input", 3, cin, 3, stride=2)
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        cout = make_divisible(c * width)
        for i in range(n):
            x = b.inverted_residual(x, cin, cout, s if i == 0 else 1, t)
            cin = cout
    x = b.conv_bn(x, cin, last, 1)
    b.nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], ["flatten_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flatten_out", b._init("fc.weight", b.rng.normal(0.0, np.sqrt(1.0 / last),
                                                                                  (1000, last))),
                                  b._init("fc.bias", np.zeros(1000))],
                         ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        b.nodes, f"mobilenet_v2_w{width:g}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 1000])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="quanttool/scripts/make_mobilenet.py")
    model.ir_version = 8  # onnxruntime 1.32 may refuse the newer IR onnx writes by default
    onnx.checker.check_model(model, full_check=True)
    return model


def write_images(n: int, out_dir: Path, seed: int = 0, size: int = 256) -> list[Path]:
    """Write n smooth, natural-ish 256x256 RGB JPEGs (colour blobs + gradient + grain), reproducibly."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.RandomState(seed * 100003 + i)
        # Coarse noise upsampled bicubically gives soft blobs at a couple of scales.
        img = np.zeros((size, size, 3), np.float32)
        for cells, weight in ((4, 0.6), (16, 0.3)):
            coarse = (rng.rand(cells, cells, 3) * 255).astype(np.uint8)
            img += weight * np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
        ramp = np.linspace(0, 1, size, dtype=np.float32)
        img += 0.1 * 255 * ramp[:, None, None] * rng.rand(3).astype(np.float32)
        img += rng.normal(0, 6, img.shape).astype(np.float32)
        path = out_dir / f"img_{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def ort_latency_ms(model: onnx.ModelProto, runs: int = 30) -> tuple[float, np.ndarray]:
    """Median batch-1 latency on CPU, and the output for one random input (to check it is finite)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.RandomState(0).rand(1, 3, 224, 224).astype(np.float32)
    out = sess.run(None, {"input": x})[0]
    for _ in range(3):
        sess.run(None, {"input": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000), out


def max_activation(model: onnx.ModelProto) -> float:
    """Largest |value| over every node output for one random input: proves nothing explodes inside."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o not in known:
                m.graph.output.append(onnx.ValueInfoProto(name=o))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.RandomState(1).rand(1, 3, 224, 224).astype(np.float32)
    outs = sess.run(None, {"input": x})
    return max(float(np.abs(o).max()) for o in outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1.0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "mobilenet_v2.onnx")
    ap.add_argument("--images", type=int, default=0, help="also write N random 256x256 JPEGs")
    ap.add_argument("--images-dir", type=Path, default=ROOT / "out" / "bench_images")
    args = ap.parse_args()

    model = build(args.width, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))

    if args.images > 0:
        write_images(args.images, args.images_dir, args.seed)
        print(f"wrote {args.images} images to {args.images_dir}")

    ops = [n.op_type for n in model.graph.node]
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    latency, out = ort_latency_ms(model)
    peak = max_activation(model)
    assert np.isfinite(out).all() and np.isfinite(peak), "non-finite output: BN statistics are broken"
    assert abs(float(out.sum()) - 1.0) < 1e-3
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MB, width {args.width:g}")
    print(f"Conv {ops.count('Conv')}, BatchNormalization {ops.count('BatchNormalization')}, "
          f"Clip {ops.count('Clip')}, Add {ops.count('Add')}, nodes {len(ops)}, parameters {n_params}")
    print(f"largest |activation| on a random input: {peak:.2f}; top-1 prob {float(out.max()):.4f}")
    print(f"onnxruntime CPU latency, batch 1: {latency:.2f} ms/image (median of 30)")


if __name__ == "__main__":
    main()
