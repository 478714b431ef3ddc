"""Calibration: observe the prepared model over the images once, then turn the statistics into a table.

`collect` is separate from `choose_params` (as in pytorch-quantization's calibrators), so a second
algorithm reuses cached statistics (`--stats`) without running inference again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import onnx

from . import algorithms, rules
from .errors import QuantError, UsageError, info, warn
from .inputs import InputSpec, Preprocess, describe, discover
from .observe import observe_parallel
from .prepare.activations import float_activations
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
    bounded: str = "range"        # range: bounded activations keep their known range (rules.known_ranges)


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
    known = rules.known_ranges(model) if settings.bounded == "range" else {}
    for name, st in stats.items():
        kind = kind_of(st, scheme)
        if st.absmax == 0 or st.min == st.max:
            warn(f"tensor {name!r} is constant ({st.min:g}) over all images; it gets a placeholder scale")
        if name in known:  # a bounded activation: its own range, not a statistical clip (rules.BOUNDED)
            lo, hi = rules.within(known[name], st.min, st.max)
        else:
            lo, hi = algorithms.compute_range(settings.algorithm, st, kind, settings.bits,
                                              percentile=settings.percentile, compat=settings.compat)
        params[name] = to_qparam(kind, lo, hi, settings.bits)
    params = rules.apply(model, params, settings.bits, fixed_softmax=settings.bounded != "range")
    return {name: params[name] for name in float_activations(model, params) if name in params}  # graph order


def observed_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors calibration observes: those the converter quantizes (its plan: fusions, float islands, ops
    without int8 kernels), less the inputs of pass-through ops, which take their output's parameters
    (rules.shared_inputs). Every tensor exposed as an extra output costs onnxruntime a fusion or a layout
    change, so nothing else is."""
    from .rewrite.plan import make_plan

    candidates = float_activations(model)  # untyped tensors too: observe drops those that are not float
    # any entry will do: the plan only needs to know that every candidate has one. The onnxruntime target's
    # plan quantizes a superset of what the other --target profiles quantize (they run fewer ops in int8 or
    # quantize inputs only), so the statistics (and a --stats cache) serve every target.
    plan = make_plan(model, {name: QParam(1.0, -128) for name in candidates})
    shared = {src for src, _ in rules.shared_inputs(model)}
    return [name for name in plan.qtensors if name not in shared]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """--shard K/N -> (K, N) with 1 <= K <= N."""
    if text is None:
        return None
    k, sep, n = str(text).partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or not 1 <= shard[0] <= shard[1]:
        raise UsageError(f"--shard {text}: expected K/N with 1 <= K <= N, e.g. --shard 2/4")
    return shard


def shard_of(samples: list, shard: tuple[int, int] | None) -> list:
    """Shard K of N: the K-th of N contiguous, nearly equal blocks of the sorted sample list."""
    if shard is None:
        return samples
    k, n = shard
    return samples[(k - 1) * len(samples) // n:k * len(samples) // n]


# Starting a worker process costs about a second of CPU (imports, session): below this many images per extra
# worker the start-up eats the gain (scripts/bench_calibrate.py, README "Speed").
IMAGES_PER_EXTRA_WORKER = 100


def auto_jobs(images: int) -> int:
    """--jobs 0: one process per core, as far as the images pay for starting them."""
    return max(1, min(cpu_count(), 1 + images // IMAGES_PER_EXTRA_WORKER))


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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


CACHE_KEYS = ("model_sha256", "preprocess", "input_shapes", "image_set")


def collect(model: onnx.ModelProto, specs: list[InputSpec], roots: dict[str, Path],
            pp: Preprocess | dict[str, Preprocess], *, max_images: int | None, threads: int, model_sha: str,
            stats_path: str | Path | None = None, jobs: int = 1,
            shard: tuple[int, int] | None = None) -> tuple[dict[str, TensorStats], dict[str, str]]:
    """Statistics of the observed tensors, from the cache when it matches, else from one pass with `jobs`
    processes (0: one per core), over shard K/N of the images when `shard` is given."""
    samples = discover(roots, max_images)
    meta = {"model_sha256": model_sha, "preprocess": describe(pp),
            "input_shapes": " ".join(f"{spec.name}={'x'.join(map(str, spec.shape))}" for spec in specs),
            "images": str(len(samples)), "image_set": samples_digest(samples, roots)}
    if shard is not None:  # image_set stays the digest of the whole list: merge-stats checks the parts agree
        samples = shard_of(samples, shard)
        meta.update(images=str(len(samples)), shard=f"{shard[0]}/{shard[1]}")
    if stats_path is not None and Path(stats_path).exists():
        stats, cached = load_stats(stats_path)
        for key in CACHE_KEYS + (("shard",) if shard is not None or "shard" in cached else ()):
            if cached.get(key) != meta.get(key):
                raise QuantError(f"{stats_path}: cached statistics were made with a different "
                                 f"{key.replace('_', ' ')} ({cached.get(key)!r}, now {meta.get(key)!r}); "
                                 f"delete the file or pass another --stats path")
        info(f"reusing the statistics in {stats_path} (same model, images and preprocessing): no inference")
        return stats, cached
    names = observed_tensors(model)
    if not float_activations(model):
        raise QuantError("the model has no float32 activation to quantize (float16 or integer models are not "
                         "supported)")
    if not names:  # nothing would be quantized: the table still shows every activation's range
        shared = {src for src, _ in rules.shared_inputs(model)}
        names = [name for name in float_activations(model) if name not in shared]
        empty_plan = True
    else:
        empty_plan = False
    jobs = jobs or auto_jobs(len(samples))
    if not samples:  # an empty shard: valid (it merges as nothing), but nothing to run
        stats, skipped = {}, 0
    else:
        # several processes share the cores: one onnxruntime thread each unless --threads says otherwise
        stats, skipped = observe_parallel(model, samples, specs, pp, names, jobs=jobs,
                                          threads=threads if jobs == 1 or threads else 1)
    if skipped:
        warn(f"{skipped} of {len(samples)} images could not be read and were skipped")
    if empty_plan:
        warn("no op of this model would run in int8 (convert lists why each stays fp32); the table lists every "
             "activation's range all the same")
    meta["images"] = str(len(samples) - skipped)
    if stats_path is not None:
        save_stats(stats_path, stats, meta)
    return stats, meta


def check_settings(settings: Settings) -> None:
    if settings.compat == "tengine" and algorithms.resolve(settings.algorithm) not in ("minmax", "kl", "aciq"):
        raise UsageError(f"--compat tengine supports -a minmax, kl or aciq, not {settings.algorithm}")
    if settings.compat == "tengine" and settings.scheme not in ("auto", "symmetric"):
        raise UsageError("--compat tengine is symmetric only; drop --scheme or use --scheme symmetric")
