"""Calibration: observe the prepared model over the images once, then turn the statistics into a table.

`collect` is separate from `choose_params` (as in pytorch-quantization's calibrators), so a second
algorithm reuses cached statistics (`--stats`) without running inference again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import onnx

from . import algorithms, rules
from .errors import QuantError, UsageError, info, warn
from .inputs import InputSpec, LoadReport, Preprocess, describe, discover, iter_samples
from .observe import activation_names, observe
from .qparams import QParam, asymmetric, symmetric, unsigned
from .stats import TensorStats, load_stats, save_stats


@dataclass(frozen=True)
class Settings:
    algorithm: str = "minmax"
    scheme: str = "auto"          # symmetric | asymmetric | auto
    bits: int = 8
    percentile: float = 99.99
    compat: str | None = None     # "tengine": Tengine's formulas, symmetric only
    target: str = "onnxruntime"   # the runtime profile (targets.py) the table and the int8 model are for


def kind_of(stats: TensorStats, scheme: str) -> str:
    """Which range the algorithm fits: auto uses all levels for tensors that are never negative."""
    if scheme == "auto":
        return "unsigned" if stats.min >= 0 else "symmetric"
    return scheme


def to_qparam(kind: str, lo: float, hi: float, bits: int) -> QParam:
    if kind == "unsigned":
        return unsigned(hi, bits)
    if kind == "asymmetric":
        return asymmetric(lo, hi, bits)
    return symmetric(max(abs(lo), abs(hi)), bits)


def choose_params(model: onnx.ModelProto, stats: dict[str, TensorStats], settings: Settings) -> dict[str, QParam]:
    scheme = "symmetric" if settings.compat == "tengine" else settings.scheme
    params = {}
    for name, st in stats.items():
        kind = kind_of(st, scheme)
        if st.absmax == 0 or st.min == st.max:
            warn(f"tensor {name!r} is constant ({st.min:g}) over all images; it gets a placeholder scale")
        lo, hi = algorithms.compute_range(settings.algorithm, st, kind, settings.bits,
                                          percentile=settings.percentile, compat=settings.compat)
        params[name] = to_qparam(kind, lo, hi, settings.bits)
    params = rules.apply(model, params, settings.bits)
    return {name: params[name] for name in activation_names(model) if name in params}  # graph order


def samples_digest(samples: Sequence[dict[str, Path]], roots: dict[str, Path]) -> str:
    """Identify the image set by the relative path and the contents of every file, so cached statistics are
    reused only for the same images, and the table header (and so the table's bytes) depends on nothing else:
    copying the images elsewhere, or touching them, changes nothing."""
    digest = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            rel = sample[name].relative_to(roots[name]).as_posix()
            content = hashlib.sha256()
            with open(sample[name], "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    content.update(chunk)
            digest.update(f"{name}={rel} {content.hexdigest()}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def collect(model: onnx.ModelProto, specs: list[InputSpec], roots: dict[str, Path],
            pp: Preprocess | dict[str, Preprocess], *, max_images: int | None, threads: int, model_sha: str,
            stats_path: str | Path | None = None) -> tuple[dict[str, TensorStats], dict[str, str]]:
    """Statistics for every float activation, from the cache when it matches, else from one pass."""
    samples = discover(roots, max_images)
    meta = {"model_sha256": model_sha, "preprocess": describe(pp),
            "input_shapes": " ".join(f"{spec.name}={'x'.join(map(str, spec.shape))}" for spec in specs),
            "images": str(len(samples)), "image_set": samples_digest(samples, roots)}
    if stats_path is not None and Path(stats_path).exists():
        stats, cached = load_stats(stats_path)
        for key in ("model_sha256", "preprocess", "input_shapes", "image_set"):
            if cached.get(key) != meta[key]:
                raise QuantError(f"{stats_path}: cached statistics were made with a different "
                                 f"{key.replace('_', ' ')} ({cached.get(key)!r}, now {meta[key]!r}); "
                                 f"delete the file or pass another --stats path")
        info(f"reusing the statistics in {stats_path} (same model, images and preprocessing): no inference")
        return stats, cached
    report = LoadReport()
    shared = {src for src, _ in rules.shared_inputs(model)}
    names = [name for name in activation_names(model) if name not in shared]
    stats = observe(model, iter_samples(samples, specs, pp, threads=max(1, threads), report=report),
                    total=len(samples), threads=threads, names=names)
    if report.skipped:
        warn(f"{report.skipped} of {len(samples)} images could not be read and were skipped")
    meta["images"] = str(len(samples) - report.skipped)
    if stats_path is not None:
        save_stats(stats_path, stats, meta)
    return stats, meta


def check_settings(settings: Settings) -> None:
    if settings.compat == "tengine" and algorithms.resolve(settings.algorithm) not in ("minmax", "kl", "aciq"):
        raise UsageError(f"--compat tengine supports -a minmax, kl or aciq, not {settings.algorithm}")
    if settings.compat == "tengine" and settings.scheme not in ("auto", "symmetric"):
        raise UsageError("--compat tengine is symmetric only; drop --scheme or use --scheme symmetric")
