"""A single self-contained HTML report: summary, plots (PNG, base64-embedded) and the full ranked layer table.

matplotlib is optional (the `plot` extra). Without it the report has the same tables and a note saying how to
get the plots. Figures are drawn through matplotlib's object API (no pyplot), so no GUI backend and no global
state are involved.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np

from ..fileio import atomic_open
from ..qparams import qrange
from .report import EvalReport, LayerReport
from .report_text import fmt_cos, fmt_db

PLOT_HINT = "pip install 'quanttool[plot]' for plots"
HISTOGRAMS = 6  # worst layers whose activation histograms are drawn (when stats are given)
CHANNEL_PLOTS = 3  # worst Conv layers whose per-channel cosines are drawn

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#eee} td.l{text-align:left;font-family:monospace}
tr.bad td{background:#fde8e8} img{max-width:100%;margin:1em 0}
.note{color:#555}
"""


def _matplotlib_figure():
    """matplotlib's Figure class, or None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot_value(value: float | None) -> float:
    return math.nan if value is None or not math.isfinite(value) else value


def _sqnr_plot(Figure, report: EvalReport) -> str:
    layers = sorted(report.layers, key=lambda lay: lay.index)
    fig = Figure(figsize=(max(6.0, 0.18 * len(layers) + 2), 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(layers))
    ax.plot(x, [_plot_value(lay.isolated_sqnr_db) for lay in layers], "o-", label="isolated (only this layer)")
    ax.plot(x, [_plot_value(lay.sqnr_db) for lay in layers], "s-", label="accumulated (int8 model)")
    ax.set_xticks(x)
    ax.set_xticklabels([lay.name for lay in layers], rotation=90, fontsize=7)
    ax.set_ylabel("SQNR dB")
    ax.set_title("SQNR per layer in graph order (lossless layers, infinite SQNR, are not drawn)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _channel_plot(Figure, layer: LayerReport) -> str:
    fig = Figure(figsize=(6.5, 2.6))
    ax = fig.add_subplot()
    ax.bar(np.arange(len(layer.channel_cosines)), layer.channel_cosines, width=1.0)
    low = min(layer.channel_cosines)
    ax.set_ylim(max(-1.0, low - 0.05 * (1 - low) - 1e-4), 1.0)
    ax.set_xlabel("output channel")
    ax.set_ylabel("cosine")
    ax.set_title(f"{layer.name}: accumulated cosine per output channel")
    return _png(fig)


def _histogram_plot(Figure, layer: LayerReport, st) -> str | None:
    if not st.count or not st.range:
        return None
    bins = st.pos.size
    merge = max(1, bins // 256)
    pos = st.pos.reshape(-1, merge).sum(axis=1)
    neg = st.neg.reshape(-1, merge).sum(axis=1)
    width = st.range / pos.size
    centers = (np.arange(pos.size) + 0.5) * width
    fig = Figure(figsize=(6.5, 2.6))
    ax = fig.add_subplot()
    if neg.any():
        ax.bar(-centers, neg, width=width, color="tab:blue")
    ax.bar(centers, pos, width=width, color="tab:blue")
    qmin, qmax = qrange(8)
    for edge in ((qmin - layer.zero_point) * layer.scale, (qmax - layer.zero_point) * layer.scale):
        ax.axvline(edge, color="tab:red", linestyle="--")
    ax.set_yscale("log")
    ax.set_xlabel("fp32 value (red: int8 range)")
    ax.set_title(f"{layer.output}: {layer.clipped_fraction * 100:.3f}% clipped")
    return _png(fig)


def _parts(out) -> str:
    return html.escape("; ".join(f"axis {p.axis} [{p.channels}] max {p.max_abs:.3g}: {fmt_db(p.sqnr_db)} dB"
                                 for p in out.parts))


def _layer_rows(report: EvalReport) -> list[str]:
    rows = []
    for rank, lay in enumerate(report.layers, start=1):
        bad = lay.isolated_sqnr_db is not None and lay.isolated_sqnr_db < 20
        channels = " ".join(f"{c}:{v:.3f}" for c, v in lay.worst_channels)
        cells = [str(rank), f'<td class="l">{html.escape(lay.name)}', html.escape(lay.op_type),
                 f'<td class="l">{html.escape(lay.output)}', fmt_db(lay.isolated_sqnr_db),
                 fmt_cos(lay.isolated_cosine), fmt_db(lay.sqnr_db), fmt_cos(lay.cosine),
                 f"{lay.clipped_fraction * 100:.3f}%", f"{lay.scale:.6g}", str(lay.zero_point),
                 f'<td class="l">{channels}']
        tds = "".join(c + "</td>" if c.startswith("<td") else f"<td>{c}</td>" for c in cells)
        rows.append(f'<tr class="{"bad" if bad else ""}">{tds}</tr>')
    return rows


def render_html(report: EvalReport, stats: dict | None = None) -> str:
    Figure = _matplotlib_figure()
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>quanttool evaluation</title>',
             f"<style>{STYLE}</style></head><body>", "<h1>quanttool: int8 vs fp32</h1>",
             f"<p>{report.images} images, {len(report.layers)} quantized layers. SQNR = 10 log10(&Sigma;ref&sup2; / "
             f"&Sigma;(ref &minus; int8)&sup2;) over all images. <b>Isolated</b>: only this layer quantized, fp32 "
             f"inputs. <b>Accumulated</b>: the whole int8 model.</p>"]
    parts.append("<h2>Outputs</h2><table><tr><th>output</th><th>cosine</th><th>SQNR dB</th><th>max |error|</th>"
                 "<th>top-1 agreement</th><th>SQNR per part (mixed ranges)</th></tr>")
    for out in report.outputs:
        agree = "-" if out.top1_agreement is None else f"{out.top1_agreement * 100:.2f}%"
        parts.append(f'<tr><td class="l">{html.escape(out.name)}</td><td>{fmt_cos(out.cosine)}</td>'
                     f"<td>{fmt_db(out.sqnr_db)}</td><td>{out.max_abs_error:.4g}</td><td>{agree}</td>"
                     f'<td class="l">{_parts(out)}</td></tr>')
    parts.append("</table>")
    if report.accuracy is not None:
        acc = report.accuracy
        parts.append(f"<p>Accuracy on {acc.labeled} labeled images ({html.escape(acc.output)}): fp32 "
                     f"{acc.fp32 * 100:.2f}%, int8 {acc.int8 * 100:.2f}% ({(acc.int8 - acc.fp32) * 100:+.2f} "
                     f"points).</p>")

    parts.append("<h2>Plots</h2>")
    if Figure is None:
        parts.append(f'<p class="note">matplotlib is not installed: {PLOT_HINT}.</p>')
    elif report.layers:
        parts.append(f'<img alt="SQNR per layer" src="{_sqnr_plot(Figure, report)}">')
        convs = [lay for lay in report.layers if lay.channel_cosines][:CHANNEL_PLOTS]
        parts += [f'<img alt="channels of {html.escape(lay.name)}" src="{_channel_plot(Figure, lay)}">'
                  for lay in convs]
        for lay in report.layers[:HISTOGRAMS] if stats else []:
            st = stats.get(lay.output)
            src = _histogram_plot(Figure, lay, st) if st is not None else None
            if src:
                parts.append(f'<img alt="histogram of {html.escape(lay.output)}" src="{src}">')

    parts.append("<h2>Layers, worst isolated SQNR first</h2><table><tr><th>#</th><th>layer</th><th>op</th>"
                 "<th>tensor</th><th>isolated dB</th><th>isolated cos</th><th>accumulated dB</th>"
                 "<th>accumulated cos</th><th>clipped</th><th>scale</th><th>zp</th><th>worst channels</th></tr>")
    parts += _layer_rows(report)
    parts.append("</table>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: EvalReport, path: str | Path, stats: dict | None = None) -> None:
    """Write the report; `stats` (tensor name -> quanttool.stats.TensorStats) adds activation histograms."""
    text = render_html(report, stats)
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
