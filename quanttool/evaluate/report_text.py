"""The terminal report: the worst layers first (by isolated SQNR), then the model outputs and accuracy."""

from __future__ import annotations

import math

from .report import EvalReport


def fmt_db(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.1f}"


def fmt_cos(value: float | None) -> str:
    return "-" if value is None else f"{value:.5f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def render_text(report: EvalReport, top: int = 15) -> str:
    shown = report.layers[:top]
    width = min(40, max([len("layer")] + [len(lay.name) for lay in shown]))
    lines = [f"{len(report.layers)} quantized layers over {report.images} images; worst {len(shown)} by isolated "
             f"SQNR (only that layer quantized; 'accumulated' = the whole int8 model):"]
    head = (f"{'#':>3}  {'layer':<{width}}  {'op':<18}  {'iso dB':>7}  {'acc dB':>7}  {'acc cos':>8}  "
            f"{'clipped':>8}  worst channels (cosine)")
    lines += [head, "-" * len(head)]
    for rank, lay in enumerate(shown, start=1):
        channels = " ".join(f"{c}:{v:.3f}" for c, v in lay.worst_channels)
        lines.append(f"{rank:>3}  {_cut(lay.name, width):<{width}}  {_cut(lay.op_type, 18):<18}  "
                     f"{fmt_db(lay.isolated_sqnr_db):>7}  {fmt_db(lay.sqnr_db):>7}  {fmt_cos(lay.cosine):>8}  "
                     f"{lay.clipped_fraction * 100:>7.3f}%  {channels}")
    if len(report.layers) > len(shown):
        lines.append(f"... {len(report.layers) - len(shown)} more layers (use --top, --json or --report)")
    lines.append("")
    lines.append("outputs:")
    for out in report.outputs:
        agree = "" if out.top1_agreement is None else f"  top-1 agreement {out.top1_agreement * 100:.2f}%"
        lines.append(f"  {out.name}: cosine {fmt_cos(out.cosine)}  SQNR {fmt_db(out.sqnr_db)} dB  "
                     f"max |error| {out.max_abs_error:.4g}{agree}")
        if out.parts:
            lines.append(f"    mixed ranges along axis {out.parts[0].axis}, measured per part (the whole-tensor SQNR "
                         f"is the large part's): " + "; ".join(
                             f"[{p.channels}] max {p.max_abs:.3g}: SQNR {fmt_db(p.sqnr_db)} dB" for p in out.parts))
    if report.accuracy is not None:
        acc = report.accuracy
        lines.append(f"accuracy ({acc.output}, {acc.labeled} labeled images): fp32 {acc.fp32 * 100:.2f}%  "
                     f"int8 {acc.int8 * 100:.2f}%  ({(acc.int8 - acc.fp32) * 100:+.2f} points)")
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)
