"""Build the demo: a small MobileNet-style digit classifier, its calibration images and a held-out set.

Run from the repo root with a venv that has torch (CPU), onnx, onnxruntime, scikit-learn and Pillow:

    python scripts/make_demo.py

Writes (all regenerated from scratch, deterministically):
- calibration_data/digit_<label>/<index>.png   200 images, a split of their own (not trained on)
- demo/heldout/<index>.png + heldout_labels.txt       the remaining ~500 images, for accuracy checks
- demo/digits_mobilenet.onnx                   opset 13, IR 8, input "input" [batch,1,32,32], output "logits"
- demo/README.md

The images are sklearn's 8x8 digits scaled 0..16 -> 0..255 and resized to 32x32 with Pillow BILINEAR.
The model is trained on exactly what quanttool feeds with `--color gray --mean 0 --norm 1/255`:
decoded 8-bit PNG pixels divided by 255.
quanttool never imports this script; torch is needed only here.
"""
from __future__ import annotations

import argparse
import io
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parent.parent
CALIB_DIR = ROOT / "calibration_data"
DEMO_DIR = ROOT / "demo"
HELDOUT_DIR = DEMO_DIR / "heldout"
LABELS_FILE = DEMO_DIR / "heldout_labels.txt"  # beside the folder, so --images sees only images
MODEL_PATH = DEMO_DIR / "digits_mobilenet.onnx"

SIZE = 32
N_CALIB = 200
N_TRAIN = 1100  # the rest (1797 - 1100 - 200 = 497) is the held-out test set


def digit_png(pixels8x8: np.ndarray) -> bytes:
    """8x8 array of 0..16 values -> 32x32 8-bit grayscale PNG bytes."""
    img8 = np.round(pixels8x8.astype(np.float64) * 255.0 / 16.0).astype(np.uint8)
    img = Image.fromarray(img8, mode="L").resize((SIZE, SIZE), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def to_input(png: bytes | Path) -> np.ndarray:
    """Decode a PNG the way quanttool does for gray input with mean 0, norm 1/255 -> [1, 32, 32] float32."""
    src = io.BytesIO(png) if isinstance(png, bytes) else png
    with Image.open(src) as im:
        arr = np.asarray(im.convert("L"), dtype=np.float32)
    return ((arr - 0.0) * np.float32(1.0 / 255.0))[None]


def split_indices(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = np.random.RandomState(0).permutation(n)
    return perm[:N_TRAIN], perm[N_TRAIN:N_TRAIN + N_CALIB], perm[N_TRAIN + N_CALIB:]


def write_images(images: np.ndarray, labels: np.ndarray, calib: np.ndarray, test: np.ndarray) -> None:
    # Start clean so a re-run never leaves stale files from an older split.
    for d in (CALIB_DIR, HELDOUT_DIR):
        if d.exists():
            shutil.rmtree(d)
    for i in calib:
        path = CALIB_DIR / f"digit_{labels[i]}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(digit_png(images[i]))
    HELDOUT_DIR.mkdir(parents=True)
    lines = []
    for i in sorted(test):
        (HELDOUT_DIR / f"{i:04d}.png").write_bytes(digit_png(images[i]))
        lines.append(f"{i:04d}.png {labels[i]}\n")
    LABELS_FILE.write_text("".join(lines))


def load_heldout() -> tuple[np.ndarray, np.ndarray]:
    """Read demo/heldout back from disk via heldout_labels.txt, as any user of the demo would."""
    xs, ys = [], []
    for line in LABELS_FILE.read_text().splitlines():
        rel, label = line.split()
        xs.append(to_input(HELDOUT_DIR / rel))
        ys.append(int(label))
    return np.stack(xs), np.array(ys)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class DSBlock(nn.Module):
    """Depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN (+ ReLU6); residual Add when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.dw = conv_bn(cin, cin, 3, stride, groups=cin)
        # Linear bottleneck on residual blocks (as in MobileNetV2), so the Add sees signed values.
        self.pw = conv_bn(cin, cout, 1, act=not self.residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(x))
        return x + y if self.residual else y


class DigitsMobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 16, 3),          # 32x32
            DSBlock(16, 32),
            DSBlock(32, 64, stride=2),  # 16x16
            DSBlock(64, 64),
            DSBlock(64, 128, stride=2),  # 8x8
            DSBlock(128, 128),
            DSBlock(128, 128),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each image by up to +-max_shift px, filling with 0 (the background)."""
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    return torch.stack([padded[i, :, dy:dy + SIZE, dx:dx + SIZE] for i, (dy, dx) in enumerate(offs.tolist())])


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(x) + 63) // 64))
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for s in range(0, len(x), 64):
            idx = perm[s:s + 64]
            loss = F.cross_entropy(model(random_shift(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1:2d}/{epochs}  loss {total / len(x):.4f}")


def export(model: nn.Module, path: Path) -> onnx.ModelProto:
    model.eval()
    # PRESERVE + eval mode keeps BatchNormalization as its own (inference-mode) node; EVAL would fold it
    # into the Conv, and the demo exists to exercise quanttool's BN fusion.
    buf = io.BytesIO()
    torch.onnx.export(
        model, (torch.zeros(1, 1, SIZE, SIZE),), buf,
        dynamo=False, opset_version=13, do_constant_folding=False,
        training=torch.onnx.TrainingMode.PRESERVE,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    m = onnx.load_from_string(buf.getvalue())
    m.ir_version = 8  # onnxruntime 1.32 may refuse the newer IR onnx writes by default
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("BatchNormalization") == ops.count("Conv"), "BN must stay separate from every Conv"
    for n in m.graph.node:
        if n.op_type == "BatchNormalization":
            # Inference-mode BN has a single output; training mode would add running stats outputs.
            assert len(n.output) == 1, f"BatchNormalization {n.name} exported in training mode"
    assert ops.count("Conv") >= 8 and "Add" in ops and "Clip" in ops
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(path))
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()

    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    digits = load_digits()
    images, labels = digits.images, digits.target
    tr, calib, test = split_indices(len(labels))
    write_images(images, labels, calib, test)
    print(f"split: {len(tr)} train, {len(calib)} calibration -> {CALIB_DIR.relative_to(ROOT)}/, "
          f"{len(test)} held-out -> {HELDOUT_DIR.relative_to(ROOT)}/")

    # Training images are not stored, but go through the same PNG encode/decode as the stored ones.
    x_tr = torch.from_numpy(np.stack([to_input(digit_png(images[i])) for i in tr]))
    y_tr = torch.from_numpy(labels[tr]).long()
    x_te, y_te = load_heldout()

    model = DigitsMobileNet()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters")
    t0 = time.perf_counter()
    train(model, x_tr, y_tr, args.epochs)
    print(f"training took {time.perf_counter() - t0:.1f} s")

    model.eval()
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_te)).numpy()
    torch_acc = float((torch_logits.argmax(1) == y_te).mean())

    m = export(model, MODEL_PATH)
    sess = ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": x_te})[0]
    ort_acc = float((ort_logits.argmax(1) == y_te).mean())
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    print(f"held-out accuracy ({len(y_te)} images): torch {torch_acc:.4f}, onnxruntime fp32 {ort_acc:.4f}, "
          f"max |logit diff| {max_diff:.2e}")
    assert ort_acc == torch_acc, "onnxruntime and torch disagree on the held-out set"
    assert ort_acc >= 0.97, f"held-out accuracy {ort_acc:.4f} below 0.97; train longer"

    counts: dict[str, int] = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    size_kb = MODEL_PATH.stat().st_size / 1024
    print(f"{MODEL_PATH.relative_to(ROOT)}: {size_kb:.1f} KB, ops {dict(sorted(counts.items()))}")
    write_readme(n_params, size_kb, ort_acc, len(y_te), counts)


def write_readme(n_params: int, size_kb: float, acc: float, n_test: int, counts: dict[str, int]) -> None:
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
    (DEMO_DIR / "README.md").write_text(f"""# Demo model

`digits_mobilenet.onnx` is a small MobileNet-style CNN ({n_params} parameters, {size_kb:.0f} KB) that
classifies scikit-learn's 8x8 handwritten digits, upscaled to 32x32 grayscale.

- Input `input`: float32 `[batch, 1, 32, 32]`, pixel / 255
  (quanttool: `--color gray --mean 0 --norm 0.00392156862745098`). Output `logits`: `[batch, 10]`.
- Opset 13, IR version 8. BatchNormalization is kept as separate nodes (not folded into Conv),
  ReLU6 is `Clip(0, 6)`, one stride-2 depthwise block per downsampling, residual Adds.
- Ops: {ops}.
- fp32 accuracy on `heldout/` ({n_test} images, onnxruntime): **{acc:.2%}**.

Data: `heldout_labels.txt` lists `file label`; `../calibration_data/` holds 200 more images
(a split of their own, used neither for training nor for the accuracy above).

Made by `python scripts/make_demo.py` (needs torch, scikit-learn; deterministic, seed 0).
""")


if __name__ == "__main__":
    main()
