"""convert checks its own result: the written int8 model against fp32 on images the scales were not fitted on.

It is evaluate (quanttool/evaluate) on a held-out slice: per output SQNR (the worst part of a mixed-range output),
cosine and top-1 agreement where the output is a class vector. Below the floor it warns on stderr, names the
layers with the worst isolated SQNR and points at the fixes, because a broken int8 model otherwise looks exactly
like a good one (convert exits 0 either way).
"""

from __future__ import annotations

from typing import Sequence

import onnx

from .errors import warn
from .evaluate.report import EvalReport
from .evaluate.report_text import fmt_cos, fmt_db
from .inputs import LoadReport, discover, iter_samples

DEFAULT_IMAGES = 32
DEFAULT_FLOOR_DB = 20.0
WORST_LAYERS = 5
# Above this share of the error in one image the SQNR describes that image: on the PP-OCR direction classifier
# (two-class softmax) 1-3 images held 40-85% of it and disjoint slices of 16 images read 13-37 dB for one model
LONE_IMAGE_SHARE = 0.5


def _key(sample) -> str:
    return getattr(sample, "key", None) or "|".join(sorted(map(str, sample.values())))


def held_out(samples: Sequence, fitted: Sequence, n: int) -> tuple[list, bool]:
    """n samples evenly spread over those the scales were not fitted on, and True; or, when fewer than n are
    left over, n of all the samples and False (a check on a handful of images says little)."""
    fitted_keys = {_key(s) for s in fitted}
    rest = [s for s in samples if _key(s) not in fitted_keys]
    pool, independent = (rest, True) if len(rest) >= n else (list(samples), False)
    if n >= len(pool):
        return list(pool), independent
    return [pool[i * len(pool) // n] for i in range(n)], independent


def check_samples(inputs, n: int) -> tuple[list, bool]:
    """The check's slice of `inputs`' images: held out from the calibration set (--max-images) when possible."""
    return held_out(discover(inputs.roots, None), discover(inputs.roots, inputs.max_images), n)


def describe_slice(count: int, independent: bool) -> str:
    return (f"{count} held-out images (not used for calibration)" if independent else
            f"{count} images, the calibration images among them (too few others; add images or lower "
            f"--max-images for an independent check)")


def run_check(static: onnx.ModelProto, int8: onnx.ModelProto, params: dict, quantized, inputs, n: int) \
        -> tuple[EvalReport, bool]:
    from .evaluate import evaluate

    samples, independent = check_samples(inputs, n)
    loaded = LoadReport()
    report = evaluate(static, int8, params, quantized,
                      iter_samples(samples, inputs.specs, inputs.pp, threads=max(1, inputs.threads), report=loaded),
                      total=len(samples), threads=inputs.threads)
    return report, independent


def summarize(report: EvalReport, independent: bool, floor: float, more_fixes: str = "") -> str:
    """The check's lines for stdout; warns on stderr for every output below the floor (`more_fixes`: further
    fixes that apply to this model, named in the warning)."""
    lines = [f"check on {describe_slice(report.images, independent)}:"]
    for out in report.outputs:
        agree = "" if out.top1_agreement is None else f"  top-1 agreement {out.top1_agreement * 100:.2f}%"
        parts = "" if not out.parts else "  (per part: " + ", ".join(
            f"[{p.channels}] {fmt_db(p.sqnr_db)} dB" for p in out.parts) + ")"
        share = out.largest_image_share
        lone = ("" if share is None or share <= LONE_IMAGE_SHARE or report.images < 2 else
                f"  (one image holds {share * 100:.0f}% of the error: other images can read many dB apart)")
        lines.append(f"  {out.name}: SQNR {fmt_db(out.worst_sqnr_db)} dB  cosine {fmt_cos(out.cosine)}{agree}{parts}"
                     f"{lone}")
    low = [out for out in report.outputs if out.worst_sqnr_db < floor]
    if low:
        worst = ", ".join(f"{lay.name} ({fmt_db(lay.isolated_sqnr_db)} dB)" for lay in report.layers[:WORST_LAYERS])
        for out in low:
            warn(f"output {out.name!r} is at {fmt_db(out.worst_sqnr_db)} dB, below the {floor:g} dB floor: this "
                 f"int8 model may be broken")
        warn(f"worst layers by isolated SQNR: {worst}. Fixes: convert --target-sqnr {floor:g} keeps the most "
             f"harmful layers float; `quanttool sensitivity` ranks them; --exclude NODE keeps one float"
             + (f"; {more_fixes}" if more_fixes else ""))
    return "\n".join(lines)
