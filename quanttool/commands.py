"""What each command does, start to finish: load -> prepare -> observe -> table -> rewrite -> evaluate.

The CLI only parses options; these functions hold the flow so it reads top to bottom.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from . import __version__
from . import prepare as prep
from .calibrate import CACHE_KEYS, Settings, choose_params, collect, parse_shard
from .errors import QuantError, UsageError, first_line, info, one_line, warn
from .fileio import atomic_open, check_outputs, read_text, write_bytes
from .inputs import Preprocess, describe, parse_floats, parse_image_dirs, parse_shape
from .qparams import QParam
from .table import Table, as_float32, read_table
from .targets import TARGETS


def _check_outputs(inputs: "Inputs", other_inputs: Sequence[Path | None], **outputs: Path | None) -> None:
    """Every output path is checked before any work, so a bad one never leaves the others half done, and
    against every input (model and its data files, table, labels, image folders): none is ever replaced."""
    check_outputs({f"--{option}": path for option, path in outputs.items()}, [*inputs.files, *other_inputs],
                  folders=(inputs.roots or {}).values())


def parse_shapes(values: Sequence[str]) -> dict[str | None, tuple[int, int, int]]:
    shapes: dict[str | None, tuple[int, int, int]] = {}
    for value in values:
        name, sep, dims = value.rpartition("=")
        key = name if sep else None
        if key in shapes:
            raise UsageError(f"--shape given twice for {'input ' + repr(key) if key else 'the model input'}")
        shapes[key] = parse_shape(dims)
    return shapes


def per_input(values: Sequence[str] | str | None, option: str, names: Sequence[str], default: str | None):
    """`VALUE` for every input and `NAME=VALUE` for one: {input name: value text}."""
    values = (values,) if isinstance(values, str) else tuple(values or ())
    chosen: dict[str | None, str] = {}
    for value in values:
        name, sep, text = value.partition("=")
        key = name if sep and name in names else None  # "=" inside a plain value is not a name
        text = text if key is not None else value
        if key in chosen:
            raise UsageError(f"{option} given twice for {'input ' + repr(key) if key else 'all inputs'}")
        chosen[key] = text
    return {name: chosen.get(name, chosen.get(None, default)) for name in names}


def _preprocessing(names: Sequence[str], shapes: dict, mean, norm, color, resize, pad_value, focus):
    """One Preprocess per model input (the options may set inputs apart with NAME=VALUE)."""
    columns = {
        "mean": per_input(mean, "--mean", names, "0"), "norm": per_input(norm, "--norm", names, "1"),
        "color": per_input(color, "--color", names, "rgb"), "resize": per_input(resize, "--resize", names, "stretch"),
        "pad_value": per_input(pad_value, "--pad-value", names, None),
    }
    result = {}
    for name in names:
        pad = columns["pad_value"][name]
        try:
            pad = None if pad is None else float(pad)
        except ValueError:
            raise UsageError(f"--pad-value {pad!r} is not a number") from None
        result[name] = Preprocess(shape=shapes.get(name, shapes.get(None)),
                                  mean=parse_floats(columns["mean"][name], "--mean"),
                                  norm=parse_floats(columns["norm"][name], "--norm"),
                                  color=columns["color"][name], resize=columns["resize"][name], pad_value=pad,
                                  focus=focus)
    return result


class Inputs:
    """The model and images as the options describe them, loaded and checked once: the model file is read once
    (parsed and hashed from the same bytes) and each preparation is made and verified once per command."""

    def __init__(self, model: Path | prep.Loaded, images: Sequence[str], shape: Sequence[str], mean, norm, color,
                 resize, pad_value, focus: bool, max_images: int | None, threads: int):
        loaded = model if isinstance(model, prep.Loaded) else prep.read(model)
        self.path, self.model, self.sha = loaded.path, loaded.model, loaded.sha
        self.files = loaded.files  # what the model was read from (no output may replace them)
        self.shapes = parse_shapes(shape)
        names = [info.name for info in prep.shapes.model_inputs(self.model.graph)]
        by_input = _preprocessing(names, self.shapes, mean, norm, color, resize, pad_value, focus)
        # one input (or all alike): a plain Preprocess, as the single-input pipeline and its cache key expect
        alike = len({replace(pp, shape=None) for pp in by_input.values()}) <= 1
        self.pp = next(iter(by_input.values())) if alike and by_input else by_input
        self.roots = parse_image_dirs(images, [spec.name for spec in self.specs]) if images else None
        self.max_images = max_images
        self.threads = threads
        self._prepared: dict[str, object] = {}
        self._verified: list = []  # preparations whose outputs were compared with the original's

    @functools.cached_property
    def specs(self):
        """Static input shapes; only what runs images needs them (convert -f keeps the model's dims)."""
        return prep.input_specs(self.model, self.shapes)

    def first_feeds(self):
        """The first image as model inputs, so preparation is verified on realistic values (random ones can
        drive a model where its outputs are tiny next to float rounding); None without images."""
        if self.roots is None:
            return None
        from .inputs import discover, iter_samples

        for _, feeds in iter_samples(discover(self.roots, self.max_images)[:1], self.specs, self.pp):
            return feeds
        return None

    def static(self):
        """Prepared with the input dims fixed (what calibration and evaluation run)."""
        if "static" not in self._prepared:
            self._prepared["static"] = self._prepare(self.specs, self.first_feeds())
        return self._prepared["static"]

    def dynamic(self):
        """Prepared with the model's own dims kept (what convert rewrites, so int8 keeps dynamic dims)."""
        if "dynamic" not in self._prepared:
            self._prepared["dynamic"] = self._prepare(None, None)
        return self._prepared["dynamic"]

    def _prepare(self, specs, feeds):
        name = str(self.path)
        work = prep.prepare(self.model, specs, verify=False, name=name)
        # A preparation with the nodes and weights of one already verified computes the same function, so
        # one onnxruntime session pair verifies both (the static and dynamic copies of a model whose dims
        # fold no shape chain); call static() first, so the pair runs on the first image.
        if not any(prep.same_computation(work, done) for done in self._verified):
            if prep.verify_prepared(self.model, work, specs, name, feeds):
                self._verified.append(work)
        return work


EQUALIZED = "+equalize"  # suffix of the model hash recorded for an equalised model (tables, statistics)


def _equalized(prepared, on: bool):
    """The prepared model after cross-layer equalisation when `on` (adjust/equalize.py)."""
    if not on:
        return prepared
    from .adjust import equalize

    return equalize(prepared)[0]


def _rescale_scales(inputs: Inputs, static) -> dict:
    """Per-channel scales of adjust/rescale.py, from one fp32 pass over the calibration images."""
    from .adjust.rescale import channel_ranges, choose_scales, find_sites
    from .inputs import discover, iter_samples

    sites = find_sites(static)
    if not sites:
        return {}
    samples = discover(inputs.roots, inputs.max_images)
    ranges = channel_ranges(static, sites, iter_samples(samples, inputs.specs, inputs.pp,
                                                        threads=max(1, inputs.threads)), len(samples), inputs.threads)
    return choose_scales(ranges)


def _rescale_hint(static, adjust) -> str:
    """The check's pointer at --rescale when the model has sites for it and it was not given."""
    if adjust.rescale:
        return ""
    from .adjust.rescale import find_sites

    sites = find_sites(static)
    return (f"--rescale gives the activations that feed its {len(sites)} depthwise-conv site(s) per-channel ranges"
            if sites else "")


def _rescaled(prepared, scales: dict):
    """(the prepared model with the sites in `scales` rescaled, the nodes that must stay float)."""
    if not scales:
        return prepared, []
    from .adjust.rescale import rescale

    return rescale(prepared, scales)


def _calibrated(inputs: Inputs, prepared, settings: Settings, stats_path, jobs: int = 1,
                equalized: bool = False, rescaled: bool = False) -> Table:
    # an equalised or rescaled model is another model: its statistics and tables must not pass for the original's
    sha = inputs.sha + (EQUALIZED if equalized else "") + ("+rescale" if rescaled else "")
    stats, meta = collect(prepared, inputs.specs, inputs.roots, inputs.pp, max_images=inputs.max_images,
                          threads=inputs.threads, model_sha=sha, stats_path=stats_path, jobs=jobs)
    if settings.algorithm == "auto":  # per tensor, the candidate the consuming layers' outputs prefer
        from .adjust.auto_clip import choose_auto
        from .inputs import discover, iter_samples

        samples = discover(inputs.roots, inputs.max_images)
        params, _ = choose_auto(prepared, stats, settings, choose_params,
                                iter_samples(samples, inputs.specs, inputs.pp, threads=max(1, inputs.threads)),
                                len(samples), inputs.threads)
    else:
        params = choose_params(prepared, stats, settings)
    if equalized:
        from .adjust.equalize import share_bounds

        params = share_bounds(prepared, params)
    # the model name becomes a header line: one line of printable text
    meta = {"model": one_line(inputs.path.name), **meta, "target": settings.target,
            "algorithm": settings.algorithm, "scheme": settings.scheme,
            "bits": settings.bits, **({"compat": settings.compat} if settings.compat else {}),
            "bounded": settings.bounded}
    return Table(as_float32(params), {key: str(value) for key, value in meta.items()})


def calibrate_table(model: Path, output: Path, settings: Settings, *, stats_path=None, table_format: str = "scale",
                    jobs: int = 1, shard: str | None = None, equalize: bool = False, **options) -> str:
    from .export import write as write_any_table

    start = time.perf_counter()
    part = parse_shard(shard)
    if part is not None:
        return calibrate_shard(model, part, stats_path, jobs=jobs, **options)
    inputs = Inputs(model, **options)
    if inputs.roots is None:
        raise UsageError("calibrate needs images: -i DIR")
    _check_outputs(inputs, [], output=output, stats=stats_path)
    prepared = _equalized(inputs.static(), equalize)
    table = _calibrated(inputs, prepared, settings, stats_path, jobs, equalize)
    write_any_table(table_format, output, table, prepared)
    kind = "" if table_format == "scale" else f" ({table_format} format)"
    return (f"wrote {output}{kind}: {len(table.params)} tensors, algorithm {settings.algorithm}, "
            f"{table.meta['images']} images, {time.perf_counter() - start:.1f} s")


def calibrate_shard(model: Path, shard: tuple[int, int], stats_path: Path | None, *, jobs: int = 1,
                    **options) -> str:
    """Statistics of shard K/N of the images into --stats (no table): `merge-stats` joins the parts."""
    start = time.perf_counter()
    if stats_path is None:
        raise UsageError("--shard needs --stats PART.npz: the shard's statistics are its result")
    inputs = Inputs(model, **options)
    if inputs.roots is None:
        raise UsageError("calibrate needs images: -i DIR")
    _check_outputs(inputs, [], stats=stats_path)
    stats, meta = collect(inputs.static(), inputs.specs, inputs.roots, inputs.pp, max_images=inputs.max_images,
                          threads=inputs.threads, model_sha=inputs.sha, stats_path=stats_path, jobs=jobs,
                          shard=shard)
    return (f"wrote {stats_path}: shard {meta['shard']}, {meta['images']} images, {len(stats)} tensors, "
            f"{time.perf_counter() - start:.1f} s (join the parts with `quanttool merge-stats`)")


def merge_stats_files(parts: Sequence[Path], output: Path) -> str:
    """Join the statistics of shards 1/N..N/N of one image set (same model, preprocessing and input shapes)
    into one file that `calibrate --stats` uses as if one machine had seen every image."""
    from .observe import merge
    from .stats import load_stats, save_stats

    if not parts:
        raise UsageError("merge-stats needs the part files: quanttool merge-stats part*.npz -o all.npz")
    check_outputs({"--output": output}, parts)
    loaded = [(Path(path), *load_stats(path)) for path in parts]
    first_path, _, first = loaded[0]
    shards: dict[int, Path] = {}
    total = None
    for path, _, meta in loaded:
        k, _, n = meta.get("shard", "").partition("/")
        if not k.isdigit() or not n.isdigit():
            raise QuantError(f"{path}: not the statistics of a shard (made without --shard); "
                             f"merge the files written by `calibrate --shard K/N --stats PART.npz`")
        for key in CACHE_KEYS:
            if meta.get(key) != first.get(key):
                raise QuantError(f"{path}: made with a different {key.replace('_', ' ')} than {first_path} "
                                 f"({meta.get(key)!r}, not {first.get(key)!r}); merge parts of one calibration")
        if total is not None and int(n) != total:
            raise QuantError(f"{path}: shard {k}/{n} does not belong to the {total}-shard layout of "
                             f"{first_path}; merge the parts of one --shard K/N split")
        total = int(n)
        if int(k) in shards:
            raise QuantError(f"{path}: shard {k}/{n} is also in {shards[int(k)]}; give each part once")
        shards[int(k)] = path
    missing = sorted(set(range(1, total + 1)) - set(shards))
    if missing:
        raise QuantError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(f'{k}/{total}' for k in missing)} "
                         f"missing: merge all {total} parts")
    stats = merge([part for _, part, _ in sorted(loaded, key=lambda item: int(item[2]["shard"].partition("/")[0]))])
    meta = {key: value for key, value in first.items() if key != "shard"}
    meta["images"] = str(sum(int(m["images"]) for _, _, m in loaded))
    save_stats(output, stats, meta)
    return f"wrote {output}: {total} shards, {meta['images']} images, {len(stats)} tensors"


def _load_table(path: Path, model_sha: str, equalized: bool = False, read: Table | None = None) -> Table:
    """The table file (`read`: already read from `path`), its values checked; its names are checked against the
    model by the converter."""
    table = read if read is not None else read_table(path)
    if table.meta.get("bits", "8") != "8":
        warn(f"{path} was fitted for {table.meta['bits']}-bit activations; the int8 model stores them in 8 bits "
             f"with these scales, so it does not clip to {table.meta['bits']} bits")
    made_for = table.meta.get("model_sha256")
    if made_for and made_for.endswith(EQUALIZED) != equalized:
        raise UsageError(f"{path} was calibrated {'with' if not equalized else 'without'} --equalize; convert "
                         f"{'with' if not equalized else 'without'} --equalize too, or calibrate again")
    made_for = made_for[:-len(EQUALIZED)] if made_for and made_for.endswith(EQUALIZED) else made_for
    if made_for and made_for != model_sha:
        warn(f"{path} was calibrated on a different model file (sha256 {made_for[:12]}..., this one "
             f"{model_sha[:12]}...); it is used if its tensor names all match")
    return table


def table_target(path: Path) -> str:
    """The target a table was calibrated for; older tables: onnxruntime if any zero point is not 0 (only it takes
    them), else generic."""
    try:
        table = read_table(path)
    except QuantError:
        return "generic"  # convert reports the table's problem after checking its other options, in order
    recorded = table.meta.get("target")
    if recorded in TARGETS:
        return recorded
    return "onnxruntime" if any(qp.zero_point != 0 for qp in table.params.values()) else "generic"


RECIPE_KEY = "quanttool.recipe"


def record_recipe(model, params: dict, fmt: str, exclude: Sequence[str], weight_bits: int,
                  int8_outputs: bool, model_sha: str, quantized=(), made: dict | None = None,
                  adjust: str = "none", scales: dict | None = None) -> None:
    """Store how the int8 model was made, so `evaluate -q` can rebuild the list of quantized ops and find
    where each op's weight, bias and constant operands are stored (it reads them, never recomputes them), and
    (`made`) the preprocessing, algorithm, scheme, target and tool version, so the model says how it was made."""
    recipe = {"model_sha256": model_sha, "format": fmt, "exclude": list(exclude), "weight_bits": weight_bits,
              "int8_outputs": int8_outputs, "adjust": adjust, **(made or {}),
              "table": {name: [qp.scale, qp.zero_point] for name, qp in params.items()},
              "stored": {op.node: op.stored for op in quantized if op.stored},
              **({"rescale": {x: [float(v) for v in s] for x, s in scales.items()}} if scales else {})}
    # replace, never add: a model that already carries a recipe (converted before, or its metadata copied)
    # would otherwise get the key twice, which the ONNX checker rejects
    kept = [entry for entry in model.metadata_props if entry.key != RECIPE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = RECIPE_KEY, json.dumps(recipe)


def _without_shape(text: str) -> str:
    """A preprocessing description without its shape= fields (--shape is not preprocessing)."""
    return " ".join(word for word in text.split() if not word.startswith("shape="))


def recipe_preprocessing(text: str, names: Sequence[str]) -> dict:
    """Preprocessing options (as the CLI passes them) from a recorded description, `inputs.describe` text:
    one `shape=.. mean=.. norm=.. color=.. resize=.. pad=.. focus=..` line, or `NAME: ...; NAME: ...` per input."""
    parts = [part.split(":", 1) if ":" in part.split("=", 1)[0] else [None, part] for part in text.split("; ")]
    options: dict = {"mean": [], "norm": [], "color": [], "resize": [], "pad_value": [], "focus": False}
    keys = {"mean": "mean", "norm": "norm", "color": "color", "resize": "resize", "pad": "pad_value"}
    for name, fields in parts:
        name = name.strip() if name else None
        if name is not None and name not in names:
            continue
        for word in fields.split():
            key, _, value = word.partition("=")
            if key == "focus":
                options["focus"] = value == "on"
            elif key in keys and not (key == "pad" and value == "mean"):
                options[keys[key]].append(f"{name}={value}" if name else value)
    return {key: tuple(value) if isinstance(value, list) else value for key, value in options.items()}


def _recipe_json(model) -> dict | None:
    """The recipe entry of the model's metadata as JSON, unchecked; None when absent or not a JSON object."""
    for entry in model.metadata_props:
        if entry.key == RECIPE_KEY:
            try:
                recipe = json.loads(entry.value)
            except ValueError:
                return None
            return recipe if isinstance(recipe, dict) else None
    return None


def read_recipe(model, path: Path) -> dict:
    """The recipe convert recorded, every field checked: a damaged one is named as such, never reported as an
    option the user did not give."""
    from .rewrite import FORMATS

    recipe = _recipe_json(model)
    try:  # no recipe (None) fails here as well
        recipe["table"] = {name: QParam(float(s), int(z)) for name, (s, z) in recipe["table"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise QuantError(f"{path}: not made by `quanttool convert` (no readable {RECIPE_KEY} metadata); "
                         f"evaluate its table instead with -f TABLE.scale") from None
    problems = [f"format {recipe.get('format')!r}" if recipe.get("format") not in FORMATS else "",
                "exclude" if not (isinstance(recipe.get("exclude"), list)
                                  and all(isinstance(e, str) for e in recipe["exclude"])) else "",
                f"weight_bits {recipe.get('weight_bits')!r}"
                if type(recipe.get("weight_bits")) is not int or not 2 <= recipe["weight_bits"] <= 8 else "",
                "int8_outputs" if not isinstance(recipe.get("int8_outputs", True), bool) else "",
                f"target {recipe.get('target')!r}" if not isinstance(recipe.get("target", "onnxruntime"), str)
                or recipe.get("target", "onnxruntime") not in TARGETS else "",
                "table" if not all(math.isfinite(qp.scale) and qp.scale > 0 and -128 <= qp.zero_point <= 127
                                   for qp in recipe["table"].values()) else ""]
    problems = [p for p in problems if p]
    if problems:
        raise QuantError(f"{path}: its {RECIPE_KEY} metadata is damaged ({', '.join(problems)}); convert "
                         f"the model again, or evaluate its table with -f TABLE.scale")
    return recipe


def convert_model(model: Path, output: Path, table: Path | None, settings: Settings, *, fmt: str,
                  exclude: Sequence[str], params_path: Path | None, weight_bits: int = 8,
                  int8_outputs: bool = False, stats_path=None, jobs: int = 1, adjust=None, check_images: int = 0,
                  check_floor: float = 20.0, target_sqnr: float | None = None, max_fp32_ops: int | None = None,
                  **options) -> str:
    from .adjust import Adjust, apply_changes
    from .rewrite import convert, hardware_params

    adjust = adjust or Adjust()
    # images for the weight methods with a table: read as the table saw them (its recorded preprocessing)
    read = read_table(table) if table is not None and options.get("images") else None
    if read is not None:
        inputs = _inputs_recorded(model, read.meta.get("preprocess"), str(table), options)
    else:
        inputs = Inputs(model, **options)
    _check_outputs(inputs, [table], output=output, params=params_path, stats=stats_path)
    static = None
    scales: dict = {}
    if table is not None:
        if adjust.rescale:
            raise UsageError("--rescale measures channel ranges on the calibration images: use -i DIR, not -f")
        dynamic = _equalized(inputs.dynamic(), adjust.equalize)
        loaded = _load_table(table, inputs.sha, adjust.equalize, read)
    else:  # static first: its verification on the first image then covers the dynamic copy when they agree
        static = _equalized(inputs.static(), adjust.equalize)
        if adjust.rescale:
            scales = _rescale_scales(inputs, static)
            static, kept_float = _rescaled(static, scales)
            exclude = tuple(exclude) + tuple(kept_float)
        loaded = _calibrated(inputs, static, settings, stats_path, jobs, adjust.equalize, adjust.rescale)
        dynamic = _rescaled(_equalized(inputs.dynamic(), adjust.equalize), scales)[0]
    params = loaded.params
    changes = _adjusted(inputs, static, params, adjust, exclude, weight_bits) if adjust.needs_data else []
    fallback = None
    if target_sqnr is not None or max_fp32_ops is not None:
        if static is None:
            raise UsageError("--target-sqnr and --max-fp32-ops measure on images: calibrate with -i DIR instead of -f")
        from .fallback import choose

        # the fake-quant copies take the weights convert writes; the float configuration keeps the fp32 ones
        fallback = choose(static, params, inputs, exclude=exclude, weight_bits=weight_bits,
                          int8_outputs=int8_outputs, target=TARGETS[settings.target], target_db=target_sqnr,
                          max_float=max_fp32_ops, images=check_images,
                          int8_weights=apply_changes(static, changes) if changes else None)
        exclude = tuple(exclude) + tuple(layer.name for layer in fallback.kept)
    if changes:  # a layer the fallback keeps float keeps its fp32 weights, as the search simulated it
        dynamic = apply_changes(dynamic, [c for c in changes if c.layer.node not in exclude])
    result = convert(dynamic, loaded, fmt=fmt, exclude=exclude, weight_bits=weight_bits, int8_outputs=int8_outputs,
                     target=TARGETS[settings.target])
    made = {"target": settings.target, "quanttool_version": __version__,
            **{key: loaded.meta[key] for key in ("preprocess", "algorithm", "scheme", "images") if key in loaded.meta}}
    record_recipe(result.model, params, fmt, exclude, weight_bits, int8_outputs, inputs.sha, result.quantized,
                  made, adjust.describe(), scales)
    data = result.model.SerializeToString()
    write_bytes(output, data)
    if params_path is not None:
        with atomic_open(params_path, "w", encoding="utf-8") as handle:
            json.dump(hardware_params(result, params), handle, indent=1)
    if not result.quantized:
        warn(f"no op of {model} was quantized: {_why_nothing(dynamic, result)}; the written model still "
             f"computes in fp32")
    ops = Counter(op.op_type for op in result.quantized)
    kept = Counter(f"{op_type} ({reason})" for _, op_type, reason in result.kept_fp32)
    before = model.stat().st_size
    text = (f"wrote {output}: {len(result.quantized)} ops quantized ("
            + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())) + "); "
            + (f"{len(result.kept_fp32)} kept fp32 (" + ", ".join(f"{k} x{v}" for k, v in sorted(kept.items())) + ")"
               if kept else "none kept fp32")
            + f"; size {before / 1e6:.2f} MB -> {len(data) / 1e6:.2f} MB; target {settings.target}")
    if result.bias_raised:
        text += (f"; weight scale raised on {sum(result.bias_raised.values())} channels of "
                 f"{len(result.bias_raised)} ops so their int32 bias fits")
    if adjust.rescale:
        text += (f"\nrescale: {len(scales)} activations feeding depthwise convs rescaled per channel (their "
                 f"elementwise ops and the inserted Muls run in float)")
    if fallback is not None:
        text += "\n" + fallback.summary()
    if static is not None:
        text += _sizes_note(inputs)
    if check_images and static is not None:
        from .check import run_check, summarize

        report, independent = run_check(static, result.model, params, result.quantized, inputs, check_images)
        text += "\n" + summarize(report, independent, check_floor, _rescale_hint(static, adjust))
    return text


def _sizes_note(inputs: Inputs) -> str:
    """A line per input whose dynamic dims were fixed by --shape: int8 keeps them dynamic, but the scales were fit
    at one size. (A PP-OCR recogniser calibrated on 48x320 lines scored 2.4 dB lower on the up to 48x800 lines its
    detector cuts than one calibrated on as many of those.)"""
    return "".join(f"\nnote: input {name!r} keeps its dynamic dims in the int8 model, but its scales were fit on "
                   f"{','.join(map(str, dims))} inputs only: if it will see other sizes, calibrate on inputs of those "
                   f"sizes (e.g. .npy tensors padded as the application pads them)"
                   for name, dims in prep.shapes.calibrated_at(inputs.model, inputs.specs).items())


def _why_nothing(prepared, result) -> str:
    """Why convert quantized no op, in the words of the summary."""
    from .prepare.graph import subgraphs

    inner = sum(1 for node in prepared.graph.node for sub in subgraphs(node) for _ in _all_nodes(sub))
    if inner:
        return (f"{inner} of its nodes are inside If/Loop/Scan bodies, and quanttool quantizes ops of the main "
                f"graph only")
    if result.kept_fp32:
        reasons = Counter(reason for _, _, reason in result.kept_fp32)
        return "every op stays fp32 (" + "; ".join(f"{r} x{n}" for r, n in reasons.most_common(3)) + ")"
    return "it has no op with an int8 kernel"


def _all_nodes(graph):
    from .prepare.graph import subgraphs

    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from _all_nodes(sub)


def _adjusted(inputs: Inputs, static, params: dict, adjust, exclude, weight_bits: int) -> list:
    """The weights and biases the weight-side methods chose on the calibration images (adjust.Change list)."""
    from .adjust import adjust_weights
    from .inputs import LoadReport, discover, iter_samples

    if inputs.roots is None:
        raise UsageError("--bias-correct, --weight-clip and --adaround need the calibration images: -i DIR")
    static = static if static is not None else _equalized(inputs.static(), adjust.equalize)
    samples = discover(inputs.roots, inputs.max_images)
    report = LoadReport()  # one report over all passes (sequential statistics read the images once per depth)
    changes = adjust_weights(static, params, lambda: iter_samples(samples, inputs.specs, inputs.pp,
                                                                  threads=max(1, inputs.threads), report=report),
                             len(samples), adjust, exclude=exclude, bits=weight_bits, threads=inputs.threads)
    return changes


def sensitivity_model(model: Path, table: Path | None, settings: Settings, *, exclude: Sequence[str],
                      json_path: Path | None, report_path: Path | None, top: int, measure_images: int,
                      weight_bits: int = 8, int8_outputs: bool = False, stats_path=None, jobs: int = 1,
                      **options) -> str:
    from . import sensitivity as sens
    from .check import check_samples, describe_slice
    from .inputs import discover, iter_samples
    from .variants import Simulator

    inputs = Inputs(model, **options)
    _check_outputs(inputs, [table], json=json_path, report=report_path, stats=stats_path)
    static = inputs.static()
    if table is not None:
        params = _load_table(table, inputs.sha).params
        samples, independent = discover(inputs.roots, measure_images), None
    else:
        params = _calibrated(inputs, static, settings, stats_path, jobs).params
        samples, independent = check_samples(inputs, measure_images)
    sim = Simulator(static, params, exclude=exclude, weight_bits=weight_bits, int8_outputs=int8_outputs,
                    target=TARGETS[settings.target])
    report = sens.sensitivity(sim, iter_samples(samples, inputs.specs, inputs.pp, threads=max(1, inputs.threads)),
                              len(samples), threads=inputs.threads)
    if independent is not None:
        report.notes.append(f"measured on {describe_slice(report.images, independent)}")
    if json_path is not None:
        with atomic_open(json_path, "w", encoding="utf-8") as handle:
            json.dump(sens.to_json(report), handle, indent=1)
    if report_path is not None:
        sens.write_html(report, report_path)
    return sens.render_text(report, top=top)


def _inputs_with_recipe(model: Path, int8, quantized: Path | None, options: dict) -> Inputs:
    """Inputs for MODEL; with no preprocessing option given, the preprocessing convert recorded in the int8
    model's recipe (images must reach both models as they reached calibration); a different one given is
    used, with a warning."""
    recipe = _recipe_json(int8) if int8 is not None else None  # damaged or absent: read_recipe names it later
    recorded = recipe.get("preprocess") if recipe is not None else None
    return _inputs_recorded(model, recorded if isinstance(recorded, str) else None, f"{quantized}'s recipe",
                            options)


def _inputs_recorded(model: Path, recorded: str | None, where: str, options: dict) -> Inputs:
    """Inputs for MODEL with the `recorded` preprocessing (a table's or recipe's) unless options give one."""
    given = any(options[key] for key in ("mean", "norm", "color", "resize", "pad_value", "focus"))
    source = model
    if recorded and not given:
        source = prep.read(model)  # read once: the recipe's per-input options need its input names
        names = [spec.name for spec in prep.shapes.model_inputs(source.model.graph)]
        options = {**options, **recipe_preprocessing(recorded, names)}
        info(f"preprocessing from {where}: {_without_shape(recorded)}")
    inputs = Inputs(source, **options)
    if recorded and given and _without_shape(describe(inputs.pp)) != _without_shape(recorded):
        warn(f"the preprocessing given ({_without_shape(describe(inputs.pp))}) differs from the one recorded in "
             f"{where} at calibration ({_without_shape(recorded)}); drop the preprocessing options to use it")
    return inputs


def evaluate_model(model: Path, quantized: Path | None, table: Path | None, *, fmt: str, labels: Path | None,
                   json_path: Path | None, report_path: Path | None, top: int, **options) -> str:
    from . import evaluate as ev
    from .inputs import LoadReport, discover, iter_samples
    from .rewrite import convert

    int8 = prep.load_model(quantized) if quantized is not None else None
    inputs = _inputs_with_recipe(model, int8, quantized, options)
    _check_outputs(inputs, [quantized, table, labels], json=json_path, report=report_path)
    label_map = ev.read_labels(labels) if labels is not None else None
    # One preparation serves both sides: the static graph has the same node and tensor names as the dynamic
    # one convert rewrote, so converting it again lists the same quantized ops.
    static = inputs.static()
    if quantized is not None:
        recipe = read_recipe(int8, quantized)
        if recipe.get("model_sha256", inputs.sha) != inputs.sha:
            warn(f"{quantized} was converted from a different file than {model}; if the models do not "
                 f"match, the comparison below is meaningless")
        params = recipe["table"]
        static = _equalized(static, "equalize" in recipe.get("adjust", "none").split(","))
        static = _rescaled(static, recipe.get("rescale", {}))[0]
        result = convert(static, params, fmt=recipe["format"], exclude=recipe["exclude"],
                         weight_bits=recipe["weight_bits"], int8_outputs=recipe.get("int8_outputs", True),
                         target=TARGETS[recipe.get("target", "onnxruntime")])
        stored = recipe.get("stored")
        if isinstance(stored, dict):  # where the int8 file holds each op's weights (names may differ here)
            for op in result.quantized:
                op.stored = stored.get(op.node, {})
    else:
        read = read_table(table)
        equalized = read.meta.get("model_sha256", "").endswith(EQUALIZED)  # calibrate --equalize
        static = _equalized(static, equalized)
        loaded = _load_table(table, inputs.sha, equalized, read)
        params = loaded.params
        target = TARGETS[table_target(table) if fmt == "qdq" else "onnxruntime"]
        result = convert(static, loaded, fmt=fmt, int8_outputs=False, target=target)  # as convert's default
        int8 = result.model
    samples = discover(inputs.roots, inputs.max_images)
    loaded = LoadReport()
    report = ev.evaluate(static, int8, params, result.quantized,
                         iter_samples(samples, inputs.specs, inputs.pp, threads=max(1, inputs.threads),
                                      report=loaded),
                         total=len(samples), labels=label_map, threads=inputs.threads)
    if json_path is not None:
        with atomic_open(json_path, "w", encoding="utf-8") as handle:
            json.dump(ev.to_json(report), handle, indent=1, allow_nan=False)
    if report_path is not None:
        worst = [layer.output for layer in report.layers[:6]]
        from .observe import observe

        stats = observe(static, iter_samples(samples[:20], inputs.specs, inputs.pp), total=min(20, len(samples)),
                        threads=inputs.threads, names=worst, desc="histograms")
        ev.write_html(report, report_path, stats)
    text = ev.render_text(report, top=top)
    if loaded.skipped:
        text += f"\n{loaded.skipped} unreadable images skipped"
    return text


def simulate_model(model: Path, params_path: Path, *, rounding: str, json_path: Path | None, **options) -> str:
    """The integer-only simulation of an int8 model from its --params file, against onnxruntime."""
    from dataclasses import asdict

    from .inputs import LoadReport, discover, iter_samples
    from .simulate import compare, render

    inputs = _inputs_with_recipe(model, prep.load_model(model), model, options)  # MODEL is the int8 model
    _check_outputs(inputs, [params_path], json=json_path)
    try:
        params = json.loads(read_text(params_path))  # a regular file only (a FIFO would hang)
        if not isinstance(params.get("layers"), list):
            raise ValueError("no 'layers' list")
    except FileNotFoundError:
        raise QuantError(f"--params {params_path}: file not found; write it with `quanttool convert --params`") from None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise QuantError(f"--params {params_path}: not a quanttool params file ({first_line(exc)}); write it with "
                         f"`quanttool convert --params`") from None
    samples = discover(inputs.roots, inputs.max_images)
    loaded = LoadReport()
    feeds = (f for _, f in iter_samples(samples, inputs.specs, inputs.pp, threads=max(1, inputs.threads),
                                        report=loaded))
    try:
        report = compare(inputs.model, params, feeds, inputs.threads, where=f"--params {params_path}",
                         rounding=rounding)
    except (KeyError, TypeError, IndexError) as exc:  # an older or edited params file
        problem = f"an entry lacks {first_line(exc)}" if isinstance(exc, KeyError) else \
            f"an entry is damaged ({first_line(exc)})"
        raise QuantError(f"--params {params_path}: {problem}; write the file again with "
                         f"`quanttool convert --params` (it must come with this int8 model)") from None
    if json_path is not None:
        with atomic_open(json_path, "w", encoding="utf-8") as handle:
            json.dump({"images": report.images, "rounding": rounding,
                       "layers": [asdict(d) for d in report.layers]}, handle, indent=1)
    text = render(report)
    if loaded.skipped:
        text += f"\n{loaded.skipped} unreadable images skipped"
    return text
