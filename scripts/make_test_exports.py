"""Build the real-export test models in tests/data/: small PyTorch and Paddle-style ONNX files whose graphs
contain what exporters really write (BatchNormalization, Shape/Gather/Concat/Reshape chains, Resize, Constant
nodes, unnamed nodes, initializers listed as graph inputs, dynamic dims, opsets 11..21).

Run from the repo root with a venv that has torch (CPU), onnx and onnxruntime:

    python scripts/make_test_exports.py

Deterministic (seeded); every file is < 150 KB. tests/test_exports.py uses the files and needs no torch.
The weights are random (BN statistics too, so BN folding is really exercised); outputs mean nothing.
Each export is checked here: onnxruntime must load it and match torch on a random input.

PyTorch's classic (TorchScript) exporter tops out at opset 20; asked for 21 it warns and stamps opset 21
on the same graph, which is what users who pass opset_version=21 get, so that is what we keep.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
MAX_BYTES = 150_000


def randomize_bn(module: nn.Module, gen: torch.Generator) -> None:
    """Trained-looking BN statistics: default ones (mean 0, var 1, gamma 1, beta 0) would make folding a no-op."""
    for bn in module.modules():
        if isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm1d)):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            bn.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=gen) * 0.6 + 0.7)
            bn.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class ResNetish(nn.Module):
    """Stem, one basic residual block (BN, ReLU, Add), MaxPool, AdaptiveAvgPool, flatten, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.pool = nn.MaxPool2d(2)
        self.conv1 = conv_bn(8, 8)
        self.conv2 = conv_bn(8, 8)
        self.down = conv_bn(8, 12, stride=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.stem(x)))
        x = F.relu(x + self.conv2(F.relu(self.conv1(x))))
        x = F.relu(self.down(x))
        return self.fc(torch.flatten(self.gap(x), 1))


class MobileNetish(nn.Module):
    """Depthwise separable blocks with ReLU6, Hardswish and a squeeze-excite (Hardsigmoid gate)."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, stride=2)
        self.dw = conv_bn(8, 8, groups=8)
        self.pw = conv_bn(8, 16, k=1)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.dw2 = conv_bn(16, 16, stride=2, groups=16)
        self.pw2 = conv_bn(16, 16, k=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu6(self.stem(x))
        x = F.relu6(self.dw(x))
        x = F.hardswish(self.pw(x))
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.se_expand(F.relu(self.se_reduce(s))))
        x = x * s
        x = F.hardswish(self.pw2(F.relu6(self.dw2(x))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class UNetish(nn.Module):
    """Two-level U-Net: ConvTranspose up, nearest and bilinear interpolate up, Concat skips, Sigmoid mask.
    The bilinear resize takes its size from the input's shape, as U-Nets do for odd sizes: with dynamic H/W
    the export computes it at run time (Shape/Slice/Concat/Resize)."""

    def __init__(self):
        super().__init__()
        self.enc1 = conv_bn(3, 8)
        self.enc2 = conv_bn(8, 12)
        self.mid = conv_bn(12, 16)
        self.up_t = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.dec2 = conv_bn(24, 8)
        self.dec1 = conv_bn(16, 8)
        self.fine = conv_bn(8, 4)
        self.out = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        e1 = F.relu(self.enc1(x))                     # H
        e2 = F.relu(self.enc2(F.max_pool2d(e1, 2)))   # H/2
        m = F.relu(self.mid(F.max_pool2d(e2, 2)))     # H/4
        d2 = F.relu(self.dec2(torch.cat([self.up_t(m), e2], 1)))                              # H/2
        d1 = F.relu(self.dec1(torch.cat([F.interpolate(d2, scale_factor=2, mode="nearest"), e1], 1)))  # H
        f = F.relu(self.fine(F.avg_pool2d(d1, 2)))     # H/2
        f = F.interpolate(f, size=x.shape[2:], mode="bilinear", align_corners=False)           # H
        return torch.sigmoid(self.out(f))


class TwoInOut(nn.Module):
    """Image + auxiliary map in; class probabilities (Softmax) and a feature map out. Grouped conv, view
    flatten (Shape/Gather/Unsqueeze/Concat/Reshape with a dynamic batch), MatMul with a parameter."""

    def __init__(self):
        super().__init__()
        self.img = conv_bn(3, 8, stride=2)
        self.aux = conv_bn(1, 8, stride=2)
        self.grouped = conv_bn(16, 16, groups=2)
        self.reduce = nn.Conv2d(16, 4, 1)
        self.proj = nn.Parameter(torch.randn(4 * 4 * 4, 10) * 0.2)
        self.bias = nn.Parameter(torch.randn(10) * 0.1)

    def forward(self, image, aux):
        x = torch.cat([F.relu(self.img(image)), F.relu(self.aux(aux))], 1)   # 16 x H/2 x W/2
        feat = F.relu(self.grouped(x))
        y = F.max_pool2d(self.reduce(feat), 2)                                # 4 x H/4 x W/4
        y = y.view(y.size(0), -1)
        return torch.softmax(torch.matmul(y, self.proj) + self.bias, dim=1), feat


class Transformerish(nn.Module):
    """Conv stem to tokens (flatten + transpose), one pre-norm attention block and GELU MLP, mean-pool head."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.stem = conv_bn(3, dim, k=4, stride=4)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 10)
        self.dim = dim

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)           # B, N, C
        q, k, v = self.qkv(self.norm1(t)).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(1, 2) / self.dim ** 0.5, dim=-1)
        t = t + self.proj(attn @ v)
        t = t + self.fc2(F.gelu(self.fc1(self.norm2(t))))
        return self.head(t.mean(dim=1))


# name, module, {input: C,H,W}, output names, dynamic axes, opset, constant folding
class EfficientLiteish(nn.Module):
    """EfficientNet-Lite style: TF 'same' padding as an explicit Pad before each stride-2 conv (what TF-ported
    weights export), MBConv blocks (1x1 expand, depthwise, 1x1 linear project, ReLU6, residual Add), and a few
    BatchNorm channels with gamma ~ 0 and a large beta, as trained EfficientNet-Lite0 has: folded, those channels
    get tiny weights and a large bias, whose int32 form overflows at the scale s_in * max|W| / 127."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, stride=2)
        self.stem[0].padding = (0, 0)
        self.expand1, self.dw1, self.project1 = conv_bn(16, 48, 1), conv_bn(48, 48, 3, 2, groups=48), conv_bn(48, 24, 1)
        self.dw1[0].padding = (0, 0)
        self.expand2, self.dw2, self.project2 = conv_bn(24, 72, 1), conv_bn(72, 72, 3, groups=72), conv_bn(72, 24, 1)
        self.head = conv_bn(24, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu6(self.stem(F.pad(x, (0, 1, 0, 1))))
        x = F.relu6(self.expand1(x))
        x = self.project1(F.relu6(self.dw1(F.pad(x, (0, 1, 0, 1)))))
        x = x + self.project2(F.relu6(self.dw2(F.relu6(self.expand2(x)))))
        x = F.relu6(self.head(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def dead_channels(self) -> None:
        """Gamma ~ 0 and beta 3 on two channels of every BatchNorm after randomize_bn (trained-looking)."""
        for bn in self.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.weight.data[:2] = 1e-7
                bn.bias.data[:2] = 3.0


TORCH_MODELS = [
    ("resnet_bn", ResNetish, {"input": (3, 24, 32)}, ["logits"],
     {"input": {0: "batch"}, "logits": {0: "batch"}}, 11, False),
    ("mobilenet_se", MobileNetish, {"input": (3, 32, 32)}, ["logits"],
     {"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}}, 13, True),
    ("unet", UNetish, {"input": (3, 16, 16)}, ["mask"],
     {"input": {0: "batch", 2: "height", 3: "width"}, "mask": {0: "batch", 2: "height", 3: "width"}}, 17, True),
    ("two_in_out", TwoInOut, {"image": (3, 16, 16), "aux": (1, 16, 16)}, ["probs", "features"],
     {"image": {0: "batch"}, "aux": {0: "batch"}, "probs": {0: "batch"}, "features": {0: "batch"}}, 21, False),
    ("transformer", Transformerish, {"input": (3, 16, 16)}, ["logits"],
     {"input": {0: "batch"}, "logits": {0: "batch"}}, 17, True),
    ("efficientnet_lite", EfficientLiteish, {"input": (3, 32, 32)}, ["logits"],
     {"input": {0: "batch"}, "logits": {0: "batch"}}, 13, True),
]


def export_torch(name, cls, inputs, outputs, dynamic, opset, fold, seed) -> Path:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = cls()
    randomize_bn(model, gen)
    if hasattr(model, "dead_channels"):
        model.dead_channels()
    model.eval()
    args = tuple(torch.randn(1, *shape, generator=gen) for shape in inputs.values())
    path = DATA / f"{name}.onnx"
    torch.onnx.export(model, args, str(path), input_names=list(inputs), output_names=outputs,
                      dynamic_axes=dynamic, opset_version=opset, do_constant_folding=fold,
                      training=torch.onnx.TrainingMode.PRESERVE, dynamo=False)
    proto = onnx.load(str(path))
    # onnxruntime needs IR >= 10 for opset 21; IR 8 elsewhere matches what most deployed files carry.
    proto.ir_version = 10 if opset >= 21 else 8
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    with torch.no_grad():
        expected = model(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    check(path, dict(zip(inputs, (a.numpy() for a in args))), [e.numpy() for e in expected])
    return path


def paddle_style(seed: int) -> Path:
    """What paddle2onnx (and old exporters) write: Constant nodes feeding Clip, Identity chains, nodes
    without names, BatchNormalization after a Concat (not foldable into a Conv), every initializer also
    listed in graph.input, a `-1`-style dynamic batch and a MatMul + Add fully connected head."""
    rng = np.random.RandomState(seed)
    inits, nodes = [], []

    def param(pname, shape, std):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32), pname))
        return pname

    nodes += [
        helper.make_node("Conv", ["x", param("conv1_w", (8, 3, 3, 3), 0.3), param("conv1_b", (8,), 0.1)], ["c1"],
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["clip_min"], value=numpy_helper.from_array(np.array(0.0, np.float32))),
        helper.make_node("Constant", [], ["clip_max"], value=numpy_helper.from_array(np.array(6.0, np.float32))),
        helper.make_node("Clip", ["c1", "clip_min", "clip_max"], ["r1"]),
        helper.make_node("Identity", ["r1"], ["r1_id"]),
        helper.make_node("Identity", ["r1_id"], ["r1_id2"]),
        helper.make_node("Conv", ["r1_id2", param("conv2_w", (8, 8, 3, 3), 0.15)], ["c2"],
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["r1_id2", param("conv3_w", (4, 8, 1, 1), 0.4)], ["c3"], strides=[2, 2]),
        helper.make_node("Concat", ["c2", "c3"], ["cat"], axis=1),
        helper.make_node("BatchNormalization", ["cat", param("bn_scale", (12,), 0.1), param("bn_bias", (12,), 0.1),
                                                param("bn_mean", (12,), 0.2), "bn_var"], ["bn"], epsilon=1e-5),
        helper.make_node("Relu", ["bn"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Constant", [], ["flat_shape"],
                         value=numpy_helper.from_array(np.array([-1, 12], np.int64))),
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", param("fc_w", (12, 10), 0.3)], ["fc_mm"]),
        helper.make_node("Add", ["fc_mm", param("fc_b", (10,), 0.1)], ["fc"]),
        helper.make_node("Softmax", ["fc"], ["prob"], axis=1),
    ]
    # gamma near 1 and positive variance, as trained BN layers have
    inits[[t.name for t in inits].index("bn_scale")] = numpy_helper.from_array(
        (1.0 + rng.standard_normal(12) * 0.1).astype(np.float32), "bn_scale")
    inits.append(numpy_helper.from_array(rng.uniform(0.5, 2.0, 12).astype(np.float32), "bn_var"))
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 16, 16])]
    graph_inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "paddle_style", graph_inputs,
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [-1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=8,
                              producer_name="PaddlePaddle")
    onnx.checker.check_model(model)
    path = DATA / "paddle_style.onnx"
    onnx.save(model, str(path))
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    check(path, {"x": x}, [reference_paddle(x, {t.name: numpy_helper.to_array(t) for t in inits})])
    return path


def reference_paddle(x: np.ndarray, p: dict) -> np.ndarray:
    """The paddle_style graph written out with torch ops, to check the hand-built ONNX file."""
    t = torch.from_numpy
    c1 = F.conv2d(t(x), t(p["conv1_w"]), t(p["conv1_b"]), padding=1).clamp(0, 6)
    cat = torch.cat([F.conv2d(c1, t(p["conv2_w"]), stride=2, padding=1), F.conv2d(c1, t(p["conv3_w"]), stride=2)], 1)
    bn = F.batch_norm(cat, t(p["bn_mean"]), t(p["bn_var"]), t(p["bn_scale"]), t(p["bn_bias"]), eps=1e-5)
    flat = F.relu(bn).mean(dim=(2, 3))
    return torch.softmax(flat @ t(p["fc_w"]) + t(p["fc_b"]), dim=1).numpy()


def check(path: Path, feeds: dict, expected: list) -> None:
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name}: {size} bytes, keep test models under {MAX_BYTES}"
    options = ort.SessionOptions()
    options.log_severity_level = 3  # paddle_style lists initializers as inputs on purpose: no warning per tensor
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=path.name)
    ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
    print(f"{path.name}: {size / 1e3:.1f} KB, ops {' '.join(ops)}")


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    for seed, spec in enumerate(TORCH_MODELS):
        export_torch(*spec, seed=seed)
    paddle_style(seed=100)


if __name__ == "__main__":
    main()
