"""Input pipeline shared by every quanttool command: find the files given with --images and turn each
one into a model feed (decode, resize, normalise, optional YOLOv5 focus), in a bounded background pool.

Preprocessing follows Tengine's quant_tool (REFERENCE.md section 1): `tensor = (pixel - mean[c]) * norm[c]`,
HWC -> CHW, with these deliberate differences:
- Resizing uses Pillow's BILINEAR filter. When shrinking, Pillow widens the filter (antialiasing), so large
  downscales differ slightly from OpenCV's INTER_LINEAR used by Tengine.
- Letterbox padding normalises to 0 by default (pad pixel = mean), or to `--pad-value`; Tengine pads with a
  value that normalises to 0.5.
- EXIF orientation is not applied: pixels are used as stored in the file.
- 16-bit grayscale files are scaled to 8 bits (v / 257) before use, instead of Pillow's clipping to 255.
- Files are sorted by relative POSIX path, so results never depend on the file system's listing order.
"""

from __future__ import annotations

import math
import os
import stat
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image, UnidentifiedImageError

from .errors import QuantError, UsageError, first_line, warn
from .fileio import open_regular

# The raster formats each extension promises (Pillow format names): nothing else is ever decoded.
IMAGE_FORMATS = {".jpg": ["JPEG"], ".jpeg": ["JPEG"], ".png": ["PNG"], ".bmp": ["BMP"], ".webp": ["WEBP"]}
IMAGE_EXTENSIONS = tuple(IMAGE_FORMATS)
EXTENSIONS = IMAGE_EXTENSIONS + (".npy",)
COLORS = ("rgb", "bgr", "gray")
RESIZE_MODES = ("stretch", "center-crop", "letterbox")
CROP_RATIO = 0.875  # centre crop: 224 out of 256, the classic ImageNet evaluation crop


class UnreadableInput(QuantError):
    """A file that cannot be decoded (corrupt, truncated, not really an image). iter_samples skips these;
    every other QuantError means the user's settings are wrong and stops the run."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a tensor. Validated on construction (UsageError naming the option)."""

    shape: tuple[int, ...] | None = None  # C,H,W (any dims for .npy inputs) from --shape; the InputSpec decides
    mean: tuple[float, ...] = (0.0,)  # 1 value, or one per image channel (after --color)
    norm: tuple[float, ...] = (1.0,)  # Tengine's "scale": tensor = (pixel - mean) * norm
    color: str = "rgb"  # rgb | bgr | gray
    resize: str = "stretch"  # stretch | center-crop | letterbox
    pad_value: float | None = None  # letterbox pad pixel; None -> mean, so the padding normalises to 0
    focus: bool = False  # YOLOv5 Focus: space-to-depth, model input has 4x channels at half H, W

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise UsageError(f"--color must be one of {', '.join(COLORS)}; got '{self.color}'")
        if self.resize not in RESIZE_MODES:
            raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}; got '{self.resize}'")
        channels = image_channels(self.color)
        for option, values in (("--mean", self.mean), ("--norm", self.norm)):
            if len(values) not in (1, channels):
                raise UsageError(
                    f"{option} has {len(values)} values but --color {self.color} images have {channels} "
                    f"channel(s); give 1 value or {channels}"
                )
        if any(v == 0 for v in self.norm):
            raise UsageError("--norm must not contain 0: it would turn every input into zeros")
        if self.pad_value is not None and not math.isfinite(self.pad_value):
            raise UsageError(f"--pad-value must be a finite pixel value (0..255); got {self.pad_value}")
        # every pixel (0..255, or the pad) must map to a finite float32, or the model sees Inf/NaN
        pixels = (0.0, 255.0) + (() if self.pad_value is None else (self.pad_value,))
        limit = float(np.finfo(np.float32).max)
        for mean in self.mean:
            for norm in self.norm:
                worst = max(abs((p - mean) * norm) for p in pixels)
                if not worst <= limit:
                    raise UsageError(f"--mean {mean:g} and --norm {norm:g} map pixel values to {worst:.3g}, beyond "
                                     f"float32's range ({limit:.3g}); use a smaller --norm or --mean")

    def describe(self) -> str:
        """Stable one-line text, written into .scale headers and compared to find matching cached stats."""
        shape = "x".join(str(int(v)) for v in self.shape) if self.shape else "model"
        pad = "mean" if self.pad_value is None else _num(self.pad_value)
        return (
            f"shape={shape} mean={','.join(_num(v) for v in self.mean)} "
            f"norm={','.join(_num(v) for v in self.norm)} color={self.color} resize={self.resize} "
            f"pad={pad} focus={'on' if self.focus else 'off'}"
        )


@dataclass(frozen=True)
class InputSpec:
    """One model input: static NCHW shape (batch 1) after --shape is applied."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype = np.dtype(np.float32)


@dataclass
class LoadReport:
    """Filled in by iter_samples: samples yielded, samples skipped as unreadable, and the files to blame."""

    loaded: int = 0
    skipped: int = 0
    skipped_files: list = field(default_factory=list)  # Path of each unreadable file, in sample order


class Sample(dict):
    """Input name -> file for one sample (a plain dict to callers), plus `key`: its relative POSIX path
    (with extension for a single-input model; without it, the pairing key, for a multi-input model)."""

    def __init__(self, key: str, paths: dict) -> None:
        super().__init__(paths)
        self.key = key


def image_channels(color: str) -> int:
    return 1 if color == "gray" else 3


def _num(v: float) -> str:
    """Shortest exact text of a float, without a trailing '.0' (repr is stable across platforms)."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def _round(x: float) -> int:
    """Round half up: the textbook rounding, independent of Python's banker's rounding."""
    return int(math.floor(x + 0.5))


# ---------------------------------------------------------------------------------------------- options


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """'v' or 'v,v,v' -> floats; UsageError naming `option` on empty, non-numeric, NaN or infinite items."""
    items = [item.strip() for item in str(text).split(",")]
    try:
        values = tuple(float(item) for item in items)
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise UsageError(f"{option} expects one number or comma-separated numbers such as 104,117,123; got '{text}'")
    return values


def parse_shape(text: str) -> tuple[int, ...]:
    """'C,H,W' (or any number of dims, for inputs fed from .npy files) -> positive ints; UsageError naming
    --shape otherwise. Whether the count fits the input's rank is checked against the model."""
    items = [item.strip() for item in str(text).split(",")]
    try:
        dims = tuple(int(item) for item in items)
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise UsageError(f"--shape expects positive integers separated by commas, such as 3,224,224 (C,H,W) or "
                         f"512 for a [N,512] input; got '{text}'")
    return dims


def parse_image_dirs(values: Sequence[str], input_names: Sequence[str]) -> dict[str, Path]:
    """Repeated --images values -> {input name: folder}, in model input order.

    One plain DIR for a single-input model, or NAME=DIR once per input. A value whose text before the first
    '=' is not an input name is taken as a plain folder if it exists (folder names may contain '=')."""
    names = list(input_names)
    if not names:
        raise QuantError("the model has no graph inputs to feed; check that the model file is complete")
    listed = ", ".join(f"'{n}'" for n in names)
    if not values:
        raise UsageError(f"--images is required: give a folder of calibration images (model inputs: {listed})")
    named: dict[str, Path] = {}
    plain: list[str] = []
    for value in values:
        name, sep, rest = value.partition("=")
        if sep and name in names:
            if name in named:
                raise UsageError(f"--images names input '{name}' twice; give NAME=DIR once per input")
            named[name] = Path(rest)
        elif sep and not Path(value).is_dir():
            raise UsageError(f"--images {value}: the model has no input '{name}'; its inputs are {listed}")
        else:
            plain.append(value)
    if plain and (named or len(plain) > 1 or len(names) > 1):
        if len(names) > 1:
            raise UsageError(f"--images: the model has {len(names)} inputs ({listed}); "
                             f"pass --images NAME=DIR once per input")
        raise UsageError("--images: give a single folder (or NAME=DIR) for this single-input model")
    if plain:
        named[names[0]] = Path(plain[0])
    missing = [n for n in names if n not in named]
    if missing:
        raise UsageError(
            f"--images: no folder for input(s) {', '.join(repr(n) for n in missing)}; "
            f"pass --images NAME=DIR once per input"
        )
    for name in names:
        folder = named[name]
        if not folder.exists():
            raise UsageError(f"--images: folder '{folder}' (input '{name}') does not exist")
        if not folder.is_dir():
            raise UsageError(f"--images: '{folder}' (input '{name}') is not a folder; give a folder of images")
    return {n: named[n] for n in names}


# ---------------------------------------------------------------------------------------------- discovery


def _scan(folder: Path) -> dict[str, Path]:
    """Relative POSIX path -> file for every accepted file under `folder`, hidden files and folders skipped.
    Symlinked folders are not followed (they can loop); symlinked files are used. Only regular files are
    read: a dangling or looping symlink, a FIFO or device, and a name that is not valid UTF-8 (it could not
    be written into tables, labels or reports) are skipped and counted in one warning."""
    folder = Path(folder)
    found: dict[str, Path] = {}
    ignored: list[str] = []
    skipped: list[tuple[str, str]] = []
    walk_errors: list[OSError] = []
    for root, dirs, files in os.walk(folder, onerror=walk_errors.append):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for fname in files:
            if fname.startswith("."):
                continue
            path = Path(root) / fname
            rel = path.relative_to(folder).as_posix()
            if path.suffix.lower() not in EXTENSIONS:
                ignored.append(rel)
                continue
            problem = _unusable(path, rel)
            if problem:
                skipped.append((rel, problem))
            else:
                found[rel] = path
    skipped += [(str(error.filename), f"cannot list the folder: {error.strerror}") for error in walk_errors]
    if ignored:
        warn(f"ignored {len(ignored)} file(s) in {folder} with other extensions (e.g. {min(ignored)}); "
             f"accepted: {' '.join(EXTENSIONS)}")
    if skipped:
        rel, problem = min(skipped)
        warn(f"skipped {len(skipped)} file(s) in {folder} that cannot be used, e.g. {rel} ({problem}); "
             f"only regular files with UTF-8 names are read")
    if not found:
        raise QuantError(f"no usable files in {folder}; accepted extensions: {' '.join(EXTENSIONS)} "
                         f"(searched recursively)")
    return found


def _unusable(path: Path, rel: str) -> str | None:
    """Why a found file cannot be a sample, or None when it can."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    try:
        mode = os.stat(path).st_mode  # follows a symlink to its target
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return f"broken symlink: {reason}" if path.is_symlink() else reason
    return None if stat.S_ISREG(mode) else "not a regular file"


def discover(dirs: dict[str, Path], max_images: int | None = None) -> list[dict[str, Path]]:
    """Find the samples under each input's folder (recursive), sorted by relative POSIX path.

    Returns Sample objects (dicts input name -> file, with a `.key`). Multi-input models pair files by
    relative path without extension; a sample missing for some input is skipped with one warning. With
    max_images, an even spread of the sorted samples is kept (folders sorted by class would otherwise
    calibrate on the first classes only)."""
    if max_images is not None and max_images <= 0:
        raise UsageError(f"--max-images must be a positive integer; got {max_images}")
    if not dirs:
        raise UsageError("--images: no folder given")
    if len(dirs) == 1:
        (name, folder), = dirs.items()
        found = _scan(folder)
        samples = [Sample(rel, {name: found[rel]}) for rel in sorted(found)]
        return _spread(samples, max_images)

    by_input: dict[str, dict[str, Path]] = {}
    for name, folder in dirs.items():
        keyed: dict[str, Path] = {}
        for rel, path in _scan(folder).items():
            key = rel[: -len(path.suffix)]
            if key in keyed:
                raise QuantError(
                    f"{folder}: '{keyed[key].name}' and '{path.name}' both give sample '{key}' for input '{name}'; "
                    "inputs are paired by path without extension, so keep only one"
                )
            keyed[key] = path
        by_input[name] = keyed
    all_keys = sorted(set().union(*(set(k) for k in by_input.values())))
    paired = [k for k in all_keys if all(k in keyed for keyed in by_input.values())]
    unpaired = [k for k in all_keys if k not in set(paired)]
    if not paired:
        folders = ", ".join(f"{n}={d}" for n, d in dirs.items())
        raise QuantError(
            f"no sample is present for every input ({folders}); files are paired by relative path without "
            "extension, e.g. a/0001.png with b/0001.npy"
        )
    if unpaired:
        first = unpaired[0]
        lacking = [n for n, keyed in by_input.items() if first not in keyed]
        warn(f"skipping {len(unpaired)} sample(s) not present for every input, e.g. '{first}' "
             f"(missing for input {', '.join(repr(n) for n in lacking)})")
    samples = [Sample(k, {n: by_input[n][k] for n in dirs}) for k in paired]
    return _spread(samples, max_images)


def _spread(samples: list, limit: int | None) -> list:
    """`limit` samples evenly spaced over the sorted list, still in sorted order."""
    if limit is None or limit >= len(samples):
        return samples
    return [samples[i * len(samples) // limit] for i in range(limit)]


# ---------------------------------------------------------------------------------------------- decoding


def _open_regular(path: Path):
    """open_regular, with a failure making the sample unreadable (skipped and counted)."""
    try:
        return open_regular(path)
    except OSError as exc:
        raise UnreadableInput(path, f"cannot open it ({exc.strerror or type(exc).__name__})") from None


def _decode(path: Path, color: str) -> Image.Image:
    """Open an image as 8-bit 'RGB' or 'L' (palette, alpha, CMYK, 1-bit, gray/colour all converted). Only the
    raster format its extension promises is tried: content sniffing would hand a '.png' holding PostScript
    to Ghostscript."""
    mode = "L" if color == "gray" else "RGB"
    formats = IMAGE_FORMATS[path.suffix.lower()]
    try:
        with _open_regular(path) as handle, Image.open(handle, formats=formats) as im:
            im.load()
            if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
                # Pillow would clip 16-bit values at 255; scale the full 0..65535 range to 0..255 instead.
                wide = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
            # convert() drops alpha (no compositing) and maps palettes to their colours.
            return im.convert(mode)
    except UnidentifiedImageError:
        raise UnreadableInput(path, f"cannot read image (not a {formats[0]} file, as its extension says)") from None
    except UnreadableInput:
        raise
    except Exception as exc:  # noqa: BLE001 -- any decoder failure on a file's bytes means the file is unreadable
        raise UnreadableInput(path, f"cannot read image ({type(exc).__name__}: {first_line(exc)})") from None


def _geometry(im: Image.Image, height: int, width: int, resize: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize/crop per the mode. Returns HWC float32 pixels and the (top, left) offset inside the
    height x width canvas; only letterbox leaves a border (offset and size smaller than the canvas)."""
    w, h = im.size
    if resize == "stretch":
        out = im.resize((width, height), Image.BILINEAR)
        offset = (0, 0)
    elif resize == "center-crop":
        # Short side to target / 0.875 (256 for 224), each of H and W considered for non-square targets.
        scale = max(height / CROP_RATIO / h, width / CROP_RATIO / w)
        new_w, new_h = max(_round(w * scale), width), max(_round(h * scale), height)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        out = im.resize((new_w, new_h), Image.BILINEAR).crop((left, top, left + width, top + height))
        offset = (0, 0)
    else:  # letterbox
        r = min(height / h, width / w)
        rw = min(max(_round(w * r), 1), width)
        rh = min(max(_round(h * r), 1), height)
        out = im.resize((rw, rh), Image.BILINEAR)
        offset = ((height - rh) // 2, (width - rw) // 2)  # the odd pixel goes to the bottom / right
    pixels = np.asarray(out, dtype=np.float32)
    return (pixels[:, :, None] if pixels.ndim == 2 else pixels), offset


def load_image(path: Path, pp: Preprocess) -> np.ndarray:
    """Decode and preprocess one image to float32 CHW. pp.shape is the MODEL input's C,H,W; with focus
    the image is prepared at 2H x 2W with C/4 channels, then folded to (C, H, W)."""
    if pp.shape is None:
        raise UsageError(f"{path}: no input shape known; pass --shape C,H,W")
    c, height, width = (int(v) for v in pp.shape)
    channels = image_channels(pp.color)
    expected = channels * 4 if pp.focus else channels
    if c != expected:
        hint = " with --focus" if pp.focus else ""
        raise QuantError(
            f"{path}: the model input has {c} channels but --color {pp.color}{hint} gives {expected}; "
            "fix --color (rgb, bgr, gray; NAME=gray for one input of several), --focus or --shape"
        )
    if pp.focus:
        height, width = 2 * height, 2 * width
    pixels, (top, left) = _geometry(_decode(path, pp.color), height, width, pp.resize)
    if pp.color == "bgr":
        pixels = pixels[:, :, ::-1]
    mean = np.broadcast_to(np.asarray(pp.mean, dtype=np.float32), (channels,))
    norm = np.broadcast_to(np.asarray(pp.norm, dtype=np.float32), (channels,))
    if pixels.shape[:2] != (height, width):
        # Letterbox: pad (per channel, in final channel order) so the border normalises to 0 or --pad-value.
        canvas = np.empty((height, width, channels), dtype=np.float32)
        canvas[:] = mean if pp.pad_value is None else np.float32(pp.pad_value)
        canvas[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
        pixels = canvas
    tensor = np.ascontiguousarray(((pixels - mean) * norm).transpose(2, 0, 1), dtype=np.float32)
    if pp.focus:
        # YOLOv5 Focus block order. Tengine's quant_tool (quant_utils.cpp, get_input_data_cv with focus=1)
        # writes block (i, g) from in_index = i + g*cols + ..., i.e. column offset i (outer loop) and row
        # offset g: blocks (row, col) = (0,0), (1,0), (0,1), (1,1) -- the same order as YOLOv5's
        # cat(x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]).
        tensor = np.concatenate(
            [tensor[:, ::2, ::2], tensor[:, 1::2, ::2], tensor[:, ::2, 1::2], tensor[:, 1::2, 1::2]], axis=0
        )
    return tensor


def _load_npy(path: Path, spec: InputSpec) -> np.ndarray:
    """A ready tensor: CHW or NCHW (any rank: spec.shape or spec.shape[1:]), used as is.

    The header is read and checked against the input before any data is read, so a small file claiming a
    huge shape costs nothing; object (pickled) arrays are refused without being loaded."""
    expected = tuple(int(d) for d in spec.shape)
    with _open_regular(path) as handle:
        shape, fortran, stored = _npy_header(path, handle)
        if shape not in (expected, expected[1:]):
            raise QuantError(
                f"{path}: .npy shape {shape} does not fit input '{spec.name}', expected {expected} or "
                f"{expected[1:]}; re-save the tensor or fix --shape"
            )
        dtype = np.dtype(spec.dtype)
        if not np.can_cast(stored, dtype, casting="same_kind"):
            raise QuantError(f"{path}: .npy dtype {stored} cannot feed input '{spec.name}' of dtype {dtype}")
        size = math.prod(shape) * stored.itemsize
        data = handle.read(size)
    if len(data) < size:
        raise UnreadableInput(path, f"truncated .npy: {len(data)} of {size} data bytes")
    array = np.frombuffer(data, dtype=stored).reshape(shape, order="F" if fortran else "C")
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise QuantError(f"{path}: .npy contains NaN or Inf; calibration data must be finite")
    return np.ascontiguousarray(_cast(array, dtype, path, spec.name).reshape(expected))


_QUIET = threading.Lock()


def _npy_header(path: Path, handle) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran order, dtype) from a .npy header; a malformed header makes the file unreadable."""
    try:
        # numpy warns (a raw line on stderr) while it parses odd header text; the file is refused or read
        # either way. The lock keeps decoder threads from restoring each other's warning filters.
        with _QUIET, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            version = npy_format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # noqa: BLE001 -- numpy parses the header text with ast: many error types
        raise UnreadableInput(path, f"cannot read .npy ({type(exc).__name__}: {first_line(exc)})") from None
    return tuple(shape), bool(fortran), np.dtype(dtype)


def _cast(array: np.ndarray, dtype: np.dtype, path: Path, name: str) -> np.ndarray:
    """The array as the input's dtype, refusing casts that change values beyond float rounding: integers
    that wrap around (int64 300 -> int8 44) and finite values that overflow to infinity (1e300 -> float32)."""
    if array.dtype == dtype:
        return array
    if dtype.kind in "iu" and array.size:
        lo, hi = int(array.min()), int(array.max())
        limits = np.iinfo(dtype)
        if lo < limits.min or hi > limits.max:
            raise QuantError(f"{path}: .npy values {lo}..{hi} ({array.dtype}) do not fit input '{name}' of dtype "
                             f"{dtype} ({limits.min}..{limits.max}); re-save the tensor with values in range")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, as one error line
        result = array.astype(dtype)
    if dtype.kind in "fc" and not np.isfinite(result).all():
        peak = float(np.abs(array).max())
        raise QuantError(f"{path}: .npy values up to {peak:g} ({array.dtype}) overflow input '{name}' of dtype "
                         f"{dtype} (they would become infinite); re-save the tensor with values in range")
    return result


def describe(pp: Preprocess | Mapping[str, Preprocess]) -> str:
    """Preprocess.describe for one setting, or for each input when they differ (the stats cache key)."""
    if isinstance(pp, Preprocess):
        return pp.describe()
    return "; ".join(f"{name}: {each.describe()}" for name, each in pp.items())


def load_sample(paths: dict[str, Path], specs: Sequence[InputSpec],
                preprocess: Preprocess | Mapping[str, Preprocess]) -> dict[str, np.ndarray]:
    """Feeds ready for onnxruntime (batch 1) for one sample; `preprocess` is one setting for every input or
    one per input name. Raises UnreadableInput for a corrupt file and QuantError for a shape, dtype or
    channel mismatch."""
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        pp = preprocess if isinstance(preprocess, Preprocess) else preprocess[spec.name]
        path = Path(paths[spec.name])
        if not all(isinstance(d, (int, np.integer)) and d > 0 for d in spec.shape):
            raise QuantError(f"input '{spec.name}' has no static shape {tuple(spec.shape)}; pass --shape C,H,W")
        if path.suffix.lower() == ".npy":
            feeds[spec.name] = _load_npy(path, spec)
            continue
        if len(spec.shape) != 4 or spec.shape[0] != 1:
            raise QuantError(
                f"{path}: input '{spec.name}' has shape {tuple(spec.shape)}, not NCHW with batch 1; "
                "feed it .npy tensors instead"
            )
        dtype = np.dtype(spec.dtype)
        if dtype.kind != "f":
            raise QuantError(f"{path}: input '{spec.name}' has dtype {dtype}, images only feed float inputs; use .npy")
        chw = tuple(int(d) for d in spec.shape[1:])
        tensor = load_image(path, replace(pp, shape=chw))
        feeds[spec.name] = tensor[None].astype(dtype, copy=False)
    return feeds


def iter_samples(
    samples: Sequence[dict[str, Path]],
    specs: Sequence[InputSpec],
    pp: Preprocess | Mapping[str, Preprocess],
    threads: int = 1,
    prefetch: int = 8,
    report: LoadReport | None = None,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Yield (sample key, feeds) in order while a pool of `threads` workers decodes ahead.

    At most max(prefetch, threads) samples are in flight, so memory stays bounded. Unreadable files are
    skipped with a warning and counted in `report.skipped` (pass a LoadReport to read the counts); any
    other QuantError stops the run. If every sample is unreadable, QuantError."""
    if threads < 1:
        raise UsageError(f"--threads must be at least 1; got {threads}")
    report = report if report is not None else LoadReport()
    depth = max(prefetch, threads, 1)
    pending: deque = deque()
    todo = iter(samples)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="quanttool-load")
    try:
        for sample in todo:
            pending.append((sample, pool.submit(load_sample, sample, specs, pp)))
            if len(pending) >= depth:
                break
        while pending:
            sample, future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load_sample, nxt, specs, pp)))
            try:
                feeds = future.result()
            except UnreadableInput as exc:
                report.skipped += 1
                report.skipped_files.append(exc.path)
                warn(f"skipped: {exc}")
                continue
            report.loaded += 1
            yield getattr(sample, "key", None) or Path(next(iter(sample.values()))).as_posix(), feeds
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if report.skipped and not report.loaded:
        raise QuantError(f"all {report.skipped} samples were unreadable (first: {report.skipped_files[0]}); "
                         f"check --images")

