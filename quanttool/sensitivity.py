"""Sensitivity: which layers break the output. For each quantizable op, the model's output SQNR when only that op
is int8, and when every op but that one is int8.

All those configurations are fake-quantized copies that share their common prefix in one float graph
(quanttool/variants.py); a few graphs of CHUNK configurations each bound the session size, and each image runs
through every graph once. The outputs are compared with evaluate's own output accumulator, so a mixed-range
output (pixels next to scores) is rated by its worst part, as everywhere else. A configuration's score is the
lowest such SQNR over the model's outputs.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from tqdm import tqdm

from .errors import QuantError
from .evaluate.report import OutputReport, finite
from .evaluate.report_text import fmt_db
from .evaluate.run import _Output, _float_session, _run
from .fileio import atomic_open
from .runtime import with_outputs
from .variants import Layer, Simulator

CHUNK = 24  # configurations per graph: bounds session size and the exposed outputs held per image


def score(outputs: dict[str, OutputReport]) -> float:
    """The number a configuration is judged by: the lowest output SQNR (worst part of a mixed-range output)."""
    return min((out.worst_sqnr_db for out in outputs.values()), default=math.inf)


def measure(sim: Simulator, configs: Sequence[Iterable[int]], samples: Iterable[tuple[str, dict]], total: int,
            *, threads: int = 0, desc: str = "sensitivity", per_image: list | None = None) \
        -> tuple[list[dict[str, OutputReport]], int]:
    """Per configuration, per graph output: the comparison with fp32 over all samples; and the image count.
    `per_image`, when given, receives per image {output: (sum ref^2, sum err^2)} of the first configuration."""
    configs = [frozenset(c) for c in configs]
    chunks = [configs[k:k + CHUNK] for k in range(0, len(configs), CHUNK)] or [[]]
    runs = []
    for chunk in chunks:
        variants = sim.build(chunk)
        names = list(dict.fromkeys(name for out in variants.outputs for name in out.values()))
        runs.append((_float_session(with_outputs(variants.model, names), threads, "fake-quantized configurations"),
                     names, variants.outputs))
    out_names = [o.name for o in sim.model.graph.output]
    folds = [{name: _Output(name) for name in out_names} for _ in configs]
    images = 0
    for key, feeds in tqdm(samples, total=total, unit="img", desc=desc, dynamic_ncols=True):
        k = 0
        reference = None
        for sess, names, outputs in runs:
            values = _run(sess, list(dict.fromkeys(out_names + names)), feeds, key, "fake-quantized model")
            reference = reference or {name: values[name] for name in out_names}
            for config_outputs in outputs:
                for name in out_names:
                    if reference[name].dtype.kind == "f":
                        folds[k][name].fold(reference[name], values[config_outputs[name]])
                if k == 0 and per_image is not None:
                    per_image.append({name: (folds[0][name].image_signal[-1], folds[0][name].image_noise[-1])
                                      for name in out_names if reference[name].dtype.kind == "f"})
                k += 1
        images += 1
    if images == 0:
        raise QuantError("no image could be run; check the --images folder")
    return [{name: out.report() for name, out in fold.items()} for fold in folds], images


@dataclass
class LayerSensitivity:
    layer: Layer
    only: dict[str, OutputReport]     # only this op int8
    all_but: dict[str, OutputReport]  # every op but this one int8

    @property
    def only_db(self) -> float:
        return score(self.only)

    @property
    def all_but_db(self) -> float:
        return score(self.all_but)


@dataclass
class SensitivityReport:
    layers: list[LayerSensitivity]    # most harmful first
    all_int8: dict[str, OutputReport]
    images: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def rank_key(item: LayerSensitivity) -> tuple[float, float, int]:
    """Most harmful first: lowest output SQNR with only this op int8; then the largest gain when only this op
    stays float; then graph order, so equal numbers still give one order."""
    return (item.only_db, -item.all_but_db, item.layer.index)


def sensitivity(sim: Simulator, samples, total: int, *, threads: int = 0) -> SensitivityReport:
    start = time.perf_counter()
    everything = frozenset(layer.index for layer in sim.layers)
    configs = [everything] + [{layer.index} for layer in sim.layers] + \
              [everything - {layer.index} for layer in sim.layers]
    results, images = measure(sim, configs, samples, total, threads=threads)
    n = len(sim.layers)
    layers = [LayerSensitivity(layer, results[1 + k], results[1 + n + k]) for k, layer in enumerate(sim.layers)]
    return SensitivityReport(sorted(layers, key=rank_key), results[0], images, time.perf_counter() - start)


def render_text(report: SensitivityReport, top: int = 15) -> str:
    shown = report.layers[:top]
    width = min(40, max([len("layer")] + [len(item.layer.name) for item in shown]))
    lines = [f"sensitivity of {len(report.layers)} quantizable layers over {report.images} images "
             f"({report.seconds:.1f} s); output SQNR in dB (lowest over the outputs; a mixed-range output counts "
             f"its worst part); all int8: {fmt_db(score(report.all_int8))} dB; most harmful first:"]
    head = f"{'#':>3}  {'layer':<{width}}  {'op':<16}  {'only this int8':>14}  {'all but this int8':>17}"
    lines += [head, "-" * len(head)]
    for rank, item in enumerate(shown, start=1):
        name = item.layer.name if len(item.layer.name) <= width else "..." + item.layer.name[-(width - 3):]
        lines.append(f"{rank:>3}  {name:<{width}}  {item.layer.op_type[:16]:<16}  {fmt_db(item.only_db):>14}  "
                     f"{fmt_db(item.all_but_db):>17}")
    if len(report.layers) > len(shown):
        lines.append(f"... {len(report.layers) - len(shown)} more layers (use --top, --json or --report)")
    lines.append("keep the first layers float with convert --exclude NAME, or let convert --target-sqnr DB choose")
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def _outputs_json(outputs: dict[str, OutputReport]) -> dict:
    return {name: {"sqnr_db": finite(out.sqnr_db), "worst_sqnr_db": finite(out.worst_sqnr_db),
                   "cosine": out.cosine} for name, out in outputs.items()}


def to_json(report: SensitivityReport) -> dict:
    return {
        "images": report.images, "seconds": report.seconds, "all_int8": _outputs_json(report.all_int8),
        "all_int8_db": finite(score(report.all_int8)),
        "layers": [{"rank": rank, "name": item.layer.name, "op_type": item.layer.op_type,
                    "only_int8_db": finite(item.only_db), "all_but_int8_db": finite(item.all_but_db),
                    "only_int8": _outputs_json(item.only), "all_but_int8": _outputs_json(item.all_but)}
                   for rank, item in enumerate(report.layers, start=1)],
        "notes": list(report.notes),
    }


def write_html(report: SensitivityReport, path) -> None:
    rows = "".join(
        f'<tr><td>{rank}</td><td class="l">{html.escape(item.layer.name)}</td><td>{html.escape(item.layer.op_type)}'
        f"</td><td>{fmt_db(item.only_db)}</td><td>{fmt_db(item.all_but_db)}</td></tr>"
        for rank, item in enumerate(report.layers, start=1))
    text = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>quanttool sensitivity</title><style>'
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}td.l{text-align:left;font-family:monospace}"
        "</style></head><body><h1>quanttool: which layers break the output</h1>"
        f"<p>{report.images} images, {len(report.layers)} quantizable layers. Output SQNR in dB (lowest over the "
        f"model's outputs; an output that concatenates ranges 32x apart counts its worst part) when only this "
        f"layer is int8, and when every layer but this one is int8. All layers int8: "
        f"{fmt_db(score(report.all_int8))} dB. Most harmful first.</p>"
        "<table><tr><th>#</th><th>layer</th><th>op</th><th>only this int8</th><th>all but this int8</th></tr>"
        f"{rows}</table></body></html>")
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
