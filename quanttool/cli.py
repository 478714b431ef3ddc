"""The `quanttool` command line: calibrate, convert, evaluate.

Every error is one line on stderr that names the file, tensor or option and the fix. Exit code 1 is for
data and model errors, 2 for usage errors. `--debug` shows the Python traceback.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from . import __version__
from .errors import QuantError, UsageError, interrupted, one_line
from .targets import TARGETS

# percentile (with AdaRound): the defaults that measured best over the trained models (README "Defaults")
DEFAULT_ALGORITHM = "percentile"
# quanttool.algorithms' names, then Tengine's numbers 0/1/2: spelled out here because importing the algorithms
# pulls in numpy, and `quanttool --help` should not wait for it (tests/test_cli.py checks the two agree)
ALGORITHM_CHOICES = ["minmax", "kl", "aciq", "percentile", "mse", "0", "1", "2"]
# one process (onnxruntime's threads share the cores): worker processes measured no faster on the shared
# 2-core benchmark machine (README, "Calibration speed"); -j 0 or N for machines with idle cores
JOBS_DEFAULT = 1


def input_options(func):
    """Options shared by every command that reads images (Tengine's short flags as aliases)."""
    options = [
        click.option("-i", "--images", "images", multiple=True, metavar="DIR | NAME=DIR",
                     help="Image folder, searched recursively (.jpg .jpeg .png .bmp .webp .npy), sorted by "
                          "relative path. A model with several inputs takes NAME=DIR once per input; files are "
                          "paired by relative path. .npy files are ready CHW/NCHW float32 tensors."),
        click.option("-g", "--shape", "shape", multiple=True, metavar="C,H,W | DIMS | NAME=DIMS",
                     help="Input shape after the batch: C,H,W for images, any dims for inputs fed from .npy files "
                          "(e.g. 512 for an [N,512] input). Required when the input has dynamic dims (dynamic batch "
                          "becomes 1). NAME=DIMS sets one input of a multi-input model (repeatable)."),
        click.option("-w", "--mean", multiple=True, metavar="V[,V,V] | NAME=V[,V,V]",
                     help="Per-channel mean subtracted from the pixel values (0..255). [default: 0]"),
        click.option("-s", "--norm", multiple=True, metavar="V[,V,V] | NAME=V[,V,V]",
                     help="Per-channel multiplier (Tengine's 'scale'): tensor = (pixel - mean) * norm. [default: 1]"),
        click.option("--color", multiple=True, metavar="rgb|bgr|gray | NAME=...",
                     help="Channel order the model expects. [default: rgb]"),
        click.option("--resize", multiple=True, metavar="stretch|center-crop|letterbox | NAME=...",
                     help="stretch: bilinear to HxW ignoring aspect (Tengine). center-crop: short side to H/0.875, "
                          "then the centre HxW. letterbox: keep aspect and pad. [default: stretch]"),
        click.option("--pad-value", multiple=True, metavar="V | NAME=V",
                     help="Letterbox padding pixel value [default: the mean, so padding normalises to 0]. "
                          "Each preprocessing option takes NAME=VALUE (repeatable) to set one input of a "
                          "multi-input model; a plain VALUE sets every other input."),
        click.option("--focus", is_flag=True, help="YOLOv5 Focus: space-to-depth to 4x channels at half H and W."),
        click.option("--max-images", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Use at most N images, evenly spread over the sorted list."),
        click.option("-t", "--threads", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
                     help="onnxruntime threads (0: onnxruntime's default); decoding uses the same count."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def model_option(func):
    return click.option("-m", "--model", required=True, type=click.Path(dir_okay=False, path_type=Path),
                        help="The fp32 ONNX model.")(func)


def _finite(ctx, param, value):
    """click's FloatRange lets NaN through (every comparison with NaN is false)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number in the allowed range", ctx=ctx, param=param)
    return value


def calibration_options(func):
    options = [
        click.option("-a", "--algorithm", type=click.Choice([*ALGORITHM_CHOICES, "auto"]), default=None,
                     help="Clip-range algorithm; Tengine's numbers 0/1/2 mean minmax/kl/aciq. auto: per tensor, "
                          "the one whose error hurts the consuming layers' outputs least (one more pass). "
                          "[default: percentile (--percentile of |x|: one outlier no longer sets a tensor's range; "
                          "README 'Defaults'); minmax with --compat tengine]"),
        click.option("--target", type=click.Choice(list(TARGETS)), default=None,
                     help="Runtime the int8 model is for (README 'Deploying'). generic: symmetric activations, int32 "
                          "biases, QDQ; runs in onnxruntime and OpenVINO with default settings. onnxruntime: any "
                          "--scheme (auto folds Relu into its producer: fastest there), QDQ or QOperator. tensorrt: "
                          "zero point 0, float biases, Q/DQ only on the inputs of Conv/Gemm/MatMul/pooling/residual "
                          "Add, QDQ only. openvino: the same layout (NNCF's). [default: generic; "
                          "onnxruntime when --format qoperator or --scheme auto|asymmetric is given, or when the -f "
                          "table was calibrated for it]"),
        click.option("--scheme", type=click.Choice(["auto", "symmetric", "asymmetric"]), default=None,
                     help="symmetric: zero point 0, +-127. asymmetric: affine over [min, max]. auto: symmetric, "
                          "but tensors that are never negative use all 256 levels with zero point -128. "
                          "[default: auto with --target onnxruntime, else symmetric]"),
        click.option("--percentile", type=click.FloatRange(50, 100, min_open=True), default=99.99,
                     show_default=True, callback=_finite, help="Percentile of |x| kept by -a percentile."),
        click.option("--compat", type=click.Choice(["tengine"]), default=None,
                     help="Reproduce Tengine's formulas exactly (symmetric; minmax, kl or aciq)."),
        click.option("--bounded", type=click.Choice(["range", "algorithm"]), default="range", show_default=True,
                     help="Outputs of Sigmoid, HardSigmoid, Softmax, Tanh and Clip (and pass-through ops after them): "
                          "range = their known range clipped to what was observed; algorithm = like any tensor."),
        click.option("--stats", "stats_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Cache file for the statistics: written after the pass, reused (no inference) when the "
                          "model, images and preprocessing match."),
        click.option("-j", "--jobs", type=click.IntRange(min=0), default=JOBS_DEFAULT, show_default=True,
                     metavar="N",
                     help="Worker processes for the calibration pass, each with its own onnxruntime session "
                          "(0: one per CPU core, as far as there are 100 images for each extra process). With N > 1 "
                          "each runs 1 onnxruntime thread unless --threads says otherwise. The table is the same "
                          "for any N."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _version(ctx, _param, value):
    """--version, and which statistics path calibration runs: a kernel that failed to load must be visible."""
    if not value or ctx.resilient_parsing:
        return
    from .stats import KERNEL_STATUS

    click.echo(f"quanttool, version {__version__}\nstatistics: {KERNEL_STATUS}")
    ctx.exit()


def trust_options(func):
    """convert's self-check and automatic float fallback (README, "Checking and fixing the int8 model")."""
    options = [
        click.option("--check-images", type=click.IntRange(min=0), default=32, show_default=True, metavar="N",
                     help="After writing, compare int8 with fp32 on N images not used for calibration (when there "
                          "are enough) and warn below --check-floor. 0: off. Needs -i."),
        click.option("--check-floor", type=float, default=20.0, show_default=True, metavar="DB",
                     help="Output SQNR below which the check warns (the worst part of a mixed-range output)."),
        click.option("--target-sqnr", type=float, default=None, metavar="DB",
                     help="Keep the most harmful layers float, greedily, until every output (the worst part of "
                          "a mixed-range one, e.g. scores next to pixel boxes) reaches DB dB on the check's images. "
                          "Needs -i."),
        click.option("--max-fp32-ops", type=click.IntRange(min=0), default=None, metavar="N",
                     help="At most N layers kept float by the fallback; alone: the best SQNR with at most N."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version and whether the C statistics kernel is in use, then exit.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
@click.pass_context
def cli(ctx, debug):
    """Post-training int8 quantization for ONNX models.

    \b
    calibrate    images -> statistics -> .scale table
    merge-stats  join the statistics of `calibrate --shard K/N` runs
    convert      fp32 model + table (or images) -> int8 ONNX model
    evaluate     where the accuracy goes, layer by layer and at the outputs
    simulate     the int8 model integer-only from --params, compared with onnxruntime
    sensitivity  which layers break the output (only this layer int8 / all but this layer)
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


EQUALIZE_HELP = ("Cross-layer equalisation of Conv -> Relu/ReLU6 -> Conv pairs before calibration (exact in fp32; "
                 "a ReLU6 becomes Relu + Min with per-channel bounds).")


def weight_options(func):
    """convert's weight-side methods (quanttool/adjust/); all but --equalize need -i DIR."""
    options = [
        click.option("--equalize", is_flag=True, help=EQUALIZE_HELP + " With -f, the table must come from "
                     "`calibrate --equalize`."),
        click.option("--rescale", is_flag=True,
                     help="Rescale per channel (on the calibration images) each activation that feeds depthwise "
                          "convs through an elementwise activation such as HardSwish: the producing conv's and the "
                          "depthwise conv's weights absorb the scales "
                          "(exact in fp32), the activation and two Muls run in float. Needs -i DIR."),
        click.option("--bias-correct", is_flag=True,
                     help="Add each quantized layer's mean output error on the calibration images to its bias."),
        click.option("--weight-clip", is_flag=True,
                     help="Per output channel, the weight clip (50-100%% of max|W|) with the smallest output error "
                          "of the layer on the calibration images."),
        click.option("--adaround/--no-adaround", default=None,
                     help="Round each weight up or down to minimise the layer's output error on the calibration "
                          "images (AdaRound's objective, solved by coordinate descent); --no-adaround: round to "
                          "nearest. [default: on when there are calibration images (-i), README 'Defaults']"),
        click.option("--one-pass", is_flag=True,
                     help="With --adaround/--weight-clip: measure every layer's error on fp32 inputs in one pass "
                          "over the images (faster) instead of layer by layer on the inputs of the int8 model with "
                          "the earlier layers already adjusted (the default: lower error on every model measured)."),
        click.option("--adjust-time", type=click.FloatRange(min=0), default=600, show_default=True, metavar="SEC",
                     help="Time limit of the --adaround search; layers reached later keep round-to-nearest."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings(algorithm, scheme, bits, percentile, compat, target=None, bounded="range"):
    from .algorithms import resolve
    from .calibrate import Settings, check_settings

    algorithm = algorithm or ("minmax" if compat else DEFAULT_ALGORITHM)
    if algorithm == "auto" and compat:
        raise UsageError("-a auto chooses among quanttool's own formulas; drop --compat tengine or pick -a 0/1/2")
    settings = Settings("auto" if algorithm == "auto" else resolve(algorithm), scheme, bits, percentile, compat,
                        target, bounded)
    check_settings(settings)
    return settings


@cli.command()
@model_option
@input_options
@calibration_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Table file to write [default: MODEL_STEM.scale (.table for ncnn, .cache for tensorrt-cache, "
                   "_tengine.scale for tengine) in the current folder].")
@click.option("--bits", type=click.IntRange(2, 8), default=8, show_default=True,
              help="Activation bit width the clip range is fitted for (2..8).")
@click.option("--table-format", "table_format", type=click.Choice(["scale", "tengine", "ncnn", "tensorrt-cache"]),
              default="scale", show_default=True,
              help="scale: quanttool's table (convert -f reads it). tengine: Tengine's `name scale 0` lines. ncnn: "
                   "ncnn2table's weight `LAYER_param_0 s...` and activation `LAYER s` lines (s = 127/T). "
                   "tensorrt-cache: TensorRT's EntropyCalibration2 cache (hex float32 scales). The last three "
                   "are symmetric: use --scheme symmetric.")
@click.option("--shard", default=None, metavar="K/N",
              help="Observe only the K-th of N parts of the sorted image list and write its statistics to --stats "
                   "(no table); `quanttool merge-stats` joins the N parts, then `calibrate --stats ALL.npz` "
                   "writes the table one machine would.")
@click.option("--equalize", is_flag=True, help=EQUALIZE_HELP + " The table is for `convert --equalize`.")
def calibrate(model, output, bits, algorithm, target, scheme, percentile, compat, bounded, stats_path, jobs, table_format,
              shard, equalize, **inputs):
    """Run the images through the model once and write a table (.scale: name scale zero_point)."""
    from .commands import calibrate_table
    from .export import SUFFIX
    from .targets import resolve as resolve_target

    profile, scheme, _ = resolve_target(target, scheme, None)
    settings = _settings(algorithm, scheme, bits, percentile, compat, profile.name, bounded)
    output = output or Path(model.stem + SUFFIX[table_format])
    summary = calibrate_table(model, output, settings, stats_path=stats_path, table_format=table_format, jobs=jobs,
                              shard=shard, equalize=equalize, **inputs)
    click.echo(summary)


# What only calibration reads: with a ready table (convert -f) these would be silently ignored, so they are
# refused. --shape is only warned about: scripts pass it to every command, and it cannot change the result.
PREPROCESSING = ("mean", "norm", "color", "resize", "pad_value", "focus", "max_images")
CALIBRATION_ONLY = ("algorithm", "scheme", "percentile", "compat", "stats_path", "jobs", "bounded") + PREPROCESSING


def _refuse_calibration_options(ctx, images_used: bool) -> None:
    """`images_used`: -i is given for the weight methods (AdaRound...), which read the preprocessing options."""
    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT

    if given("shape"):
        from .errors import warn

        warn("--shape is not used with -f TABLE.scale: the int8 model keeps the model's own input dims")
    refused = [name for name in CALIBRATION_ONLY if not (images_used and name in PREPROCESSING)]
    passed = [param for param in ctx.command.params if param.name in refused and given(param.name)]
    if passed:
        names = ", ".join(param.opts[-1] for param in passed)
        raise UsageError(f"{names}: only used to calibrate from images (-i); with -f TABLE.scale the table already "
                         f"holds the scales, so drop {'it' if len(passed) == 1 else 'them'} or use -i DIR instead")


@cli.command("merge-stats")
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The merged statistics file, for `calibrate --stats`.")
def merge_stats(parts, output):
    """Join the --stats files of `calibrate --shard K/N` (all N parts of one model, image set and preprocessing)."""
    from .commands import merge_stats_files

    click.echo(merge_stats_files(parts, output))


@cli.command()
@model_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The int8 ONNX model to write (must differ from --model).")
@click.option("-f", "--table", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Existing .scale table; calibration is skipped (its options, e.g. -a, --color, --stats, are "
                   "then refused rather than ignored).")
@input_options
@calibration_options
@click.option("--format", "fmt", type=click.Choice(["qdq", "qoperator"]), default=None,
              help="qdq: QuantizeLinear/DequantizeLinear pairs (portable). qoperator: QLinearConv and friends "
                   "(onnxruntime only). [default: qdq]")
@click.option("--exclude", multiple=True, metavar="NODE_OR_OPTYPE",
              help="Keep this node (by name) or every node of this op type in fp32. Repeatable.")
@click.option("--reduce-range", is_flag=True,
              help="7-bit weights ([-63, 63]) so onnxruntime's default x86 kernels cannot saturate on CPUs without "
                   "VNNI (see README, 'Running the int8 model').")
@click.option("--int8-outputs", is_flag=True,
              help="Quantize the model outputs too. By default the ops that write graph outputs compute them in "
                   "float from their int8 inputs (a float consumer gains nothing from a last requantization).")
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the integer parameters as JSON: per op the int8 weight and tensor names, shapes, attributes, "
                   "scales, zero points, int32 bias, m0 and shift, rounding, clamp, pad values, divisors, lookup "
                   "tables (README, '--params JSON'); `quanttool simulate` runs from it.")
@weight_options
@trust_options
def convert(model, output, table, fmt, exclude, reduce_range, int8_outputs, params_path, algorithm, target, scheme,
            percentile, compat, bounded, stats_path, jobs, equalize, rescale, bias_correct, weight_clip, adaround,
            one_pass, adjust_time, check_images, check_floor, target_sqnr, max_fp32_ops, **inputs):
    """Write an int8 ONNX model from a table (-f) or from images (-i) calibrated on the spot."""
    from .adjust import Adjust

    note = ""
    if adaround is None:  # the default: AdaRound when there are images to run it on
        adaround = bool(inputs["images"])
        if not adaround:
            note = "\nweights rounded to nearest: AdaRound (the default) needs the calibration images, -i DIR"
    adjust = Adjust(equalize, bias_correct, weight_clip, adaround, adjust_time, one_pass, rescale)
    if one_pass and not (adaround or weight_clip):
        raise UsageError("--one-pass changes how --adaround and --weight-clip measure a layer's error: "
                         "give one of them too")
    if table is None and not inputs["images"]:
        raise UsageError("convert needs a table (-f TABLE.scale) or calibration images (-i DIR)")
    if table is not None and inputs["images"] and not adjust.needs_data:
        raise UsageError("give either -f TABLE.scale or -i DIR, not both (-i with -f only for --bias-correct, "
                         "--weight-clip or --adaround)")
    if table is not None:
        _refuse_calibration_options(click.get_current_context(), bool(inputs["images"]))
    if table is not None and (target_sqnr is not None or max_fp32_ops is not None):
        raise UsageError("--target-sqnr and --max-fp32-ops measure on images: calibrate with -i DIR instead of -f")
    from .commands import convert_model, table_target
    from .targets import resolve as resolve_target

    if target is None and table is not None and fmt is None and scheme is None:
        target = table_target(table)
    profile, scheme, fmt = resolve_target(target, scheme, fmt)
    if int8_outputs and profile.inputs_only:  # it quantizes op inputs only: the outputs would stay float silently
        raise UsageError(f"--int8-outputs does not fit --target {profile.name}: it puts Q/DQ only on the inputs of "
                         f"the ops the runtime runs in int8, so graph outputs stay float; drop --int8-outputs or "
                         f"choose --target onnxruntime or generic")
    settings = _settings(algorithm, scheme, 8, percentile, compat, profile.name, bounded)
    click.echo(convert_model(model, output, table, settings, fmt=fmt, exclude=exclude, params_path=params_path,
                             weight_bits=7 if reduce_range else 8, int8_outputs=int8_outputs, stats_path=stats_path,
                             jobs=jobs, adjust=adjust, check_images=check_images, check_floor=check_floor,
                             target_sqnr=target_sqnr, max_fp32_ops=max_fp32_ops, **inputs) + note)


@cli.command()
@model_option
@click.option("-f", "--table", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Existing .scale table; calibration is skipped.")
@input_options
@calibration_options
@click.option("--exclude", multiple=True, metavar="NODE_OR_OPTYPE",
              help="Keep this node (by name) or every node of this op type in fp32 while measuring. Repeatable.")
@click.option("--measure-images", type=click.IntRange(min=1), default=16, show_default=True, metavar="N",
              help="Images the measurement runs on (held out from calibration when there are enough).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the ranking as JSON.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the ranking as a self-contained HTML file.")
@click.option("--top", type=click.IntRange(min=1), default=15, show_default=True,
              help="How many layers the terminal table shows.")
def sensitivity(model, table, exclude, measure_images, json_path, report_path, top, algorithm, target, scheme,
                percentile, compat, bounded, stats_path, jobs, **inputs):
    """Which layers break the output: output SQNR with only this layer int8, and with all but this layer."""
    if not inputs["images"]:
        raise UsageError("sensitivity needs images: -i DIR")
    from .commands import sensitivity_model

    from .targets import resolve as resolve_target

    profile, scheme, _ = resolve_target(target, scheme, None)  # as convert with the same --target
    settings = _settings(algorithm, scheme, 8, percentile, compat, profile.name, bounded)
    click.echo(sensitivity_model(model, table, settings, exclude=exclude, json_path=json_path,
                                 report_path=report_path, top=top, measure_images=measure_images,
                                 stats_path=stats_path, jobs=jobs, **inputs))


@cli.command()
@model_option
@click.option("-q", "--quantized", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The int8 ONNX model made by convert.")
@click.option("-f", "--table", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Evaluate a .scale table without writing a model (converted in memory).")
@input_options
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Lines `relative/path.png label`: report fp32 and int8 accuracy side by side.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full report as JSON.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a self-contained HTML report (plots need the 'plot' extra: matplotlib).")
@click.option("--format", "fmt", type=click.Choice(["qdq", "qoperator"]), default="qdq", show_default=True,
              help="With -f: the format of the in-memory int8 model.")
@click.option("--top", type=click.IntRange(min=1), default=15, show_default=True,
              help="How many of the worst layers the terminal table shows.")
def evaluate(model, quantized, table, labels, json_path, report_path, fmt, top, **inputs):
    """Compare the fp32 model with its int8 version, per layer (ranked) and at the outputs."""
    if (quantized is None) == (table is None):
        raise UsageError("evaluate needs exactly one of -q MODEL_int8.onnx or -f TABLE.scale")
    if not inputs["images"]:
        raise UsageError("evaluate needs images: -i DIR")
    from .commands import evaluate_model

    if inputs["max_images"] is None:
        inputs["max_images"] = 50
    click.echo(evaluate_model(model, quantized, table, fmt=fmt, labels=labels, json_path=json_path,
                              report_path=report_path, top=top, **inputs))


@cli.command()
@click.option("-m", "--model", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The int8 ONNX model made by convert (not the fp32 one).")
@click.option("--params", "params_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The --params JSON written with that model.")
@input_options
@click.option("--rounding", type=click.Choice(["onnxruntime", "fixed-point"]), default="onnxruntime",
              show_default=True,
              help="onnxruntime: where onnxruntime requantizes in float32, round acc and acc*m0 to 24 significant "
                   "bits first (integer ops), matching it bit for bit. fixed-point: one rounding of the exact "
                   "acc*m0 (Jacob et al.), within 1 LSB per layer.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the per-layer comparison as JSON.")
def simulate(model, params_path, rounding, json_path, **inputs):
    """Run the int8 model integer-only from --params and compare each layer with onnxruntime."""
    if not inputs["images"]:
        raise UsageError("simulate needs images: -i DIR")
    from .commands import simulate_model

    if inputs["max_images"] is None:
        inputs["max_images"] = 20
    click.echo(simulate_model(model, params_path, rounding=rounding, json_path=json_path, **inputs))


OUT_OF_MEMORY = ("out of memory; if the model's input size is dynamic, a smaller --shape helps, -t 1 lowers the "
                 "peak a little, otherwise run it on a machine with more memory")


def _is_runtime_oom(exc: Exception) -> bool:
    """onnxruntime reports a failed allocation as its own RuntimeException, not MemoryError."""
    text = str(exc)
    return type(exc).__module__.startswith("onnxruntime") and any(
        needle in text for needle in ("bad_alloc", "Failed to allocate memory", "out of memory"))


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (numpy, onnx, ...) as one `quanttool: warning:` line, not two lines of source."""
    from .errors import warn

    warn(f"{one_line(message)} ({category.__name__})")


def main(argv=None) -> None:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    if not debug:
        import warnings

        warnings.showwarning = _warning_line
    try:
        cli.main(args=argv, prog_name="quanttool", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns a Ctrl-C inside a command into Abort
        interrupted()
    except click.ClickException as exc:  # usage errors from click itself: unknown option, bad choice, ...
        if debug:
            raise
        hint = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
        click.echo(f"quanttool: error: {one_line(exc.format_message())}{hint}", err=True)
        sys.exit(2 if isinstance(exc, click.UsageError) else 1)
    except QuantError as exc:
        if debug:
            raise
        click.echo(f"quanttool: error: {one_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except MemoryError:
        click.echo(f"quanttool: error: {OUT_OF_MEMORY}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug in quanttool: still one line, with the way to the traceback
        if debug:
            raise
        if _is_runtime_oom(exc):
            click.echo(f"quanttool: error: {OUT_OF_MEMORY} (onnxruntime: {one_line(exc)[:200]})", err=True)
            sys.exit(1)
        click.echo(f"quanttool: internal error: {type(exc).__name__}: {one_line(exc)} "
                   f"(re-run with --debug for the traceback and please report it)", err=True)
        sys.exit(1)
    sys.exit(0)
