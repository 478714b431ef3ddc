"""Compare the integer simulation with onnxruntime running the same int8 model, layer by layer.

Two columns per quantized op, in units of its output's LSB (one int8 step):
- `isolated`: the layer fed onnxruntime's own int8 inputs, so only this layer's arithmetic is compared;
- `chained`: the whole simulation from the graph inputs, so differences carry over as in hardware.
Outputs the model leaves in float are compared in units of the scale an int8 output would have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx

from ..errors import QuantError
from ..runtime import session, with_outputs
from .graph import Simulation


@dataclass
class LayerDiff:
    node: str
    op_type: str
    tensor: str
    scale: float
    kernel: str  # "integer" or "float (...)"
    isolated: float = 0.0  # largest |difference| in LSB
    chained: float = 0.0
    differing: int = 0  # values that differ in the chained run
    isolated_differing: int = 0  # values that differ in the isolated run
    values: int = 0


@dataclass
class SimReport:
    layers: list[LayerDiff] = field(default_factory=list)
    images: int = 0

    def worst(self, integer: bool) -> LayerDiff | None:
        """The layer with the largest difference among integer (or float) ones."""
        chosen = [d for d in self.layers if (d.kernel == "integer") == integer]
        return max(chosen, key=lambda d: max(d.isolated, d.chained), default=None)


def compare(model: onnx.ModelProto, params: dict, samples: Iterable[dict[str, np.ndarray]], threads: int = 0,
            where: str = "the params file", rounding: str = "onnxruntime") -> SimReport:
    sim = Simulation(model, params, where, rounding)
    report = SimReport()
    diffs: dict[str, LayerDiff] = {}
    float_nodes = {layer["node"]: layer["why_float"] for layer in sim.float_layers}
    for layer in params["layers"]:
        out = layer["output"]
        tensor = out["name"] if out.get("float_in_model") else out["int8_tensor"]
        kernel = "float: output left float" if out.get("float_in_model") else (
            f"float: {float_nodes[layer['node']]}" if layer["node"] in float_nodes else "integer")
        diffs[tensor] = LayerDiff(layer["node"], layer["op_type"], tensor, out["scale"], kernel)
    report.layers = list(diffs.values())
    exposed = sorted({t for t in diffs} | {i["int8_tensor"] for layer in params["layers"] for i in layer["inputs"]
                                             if not (i.get("constant") or i.get("float_in_model"))})
    present = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    missing = next((t for t in exposed if t not in present), None)
    if missing is not None:
        raise QuantError(f"{where}: int8 tensor {missing!r} is not in the model; pass the --params file written "
                         f"together with this int8 model (same --target and --format)")
    ort = session(with_outputs(model, exposed), threads, what="the int8 model")
    names = [o.name for o in ort.get_outputs()]
    for feeds in samples:
        got = dict(zip(names, ort.run(None, feeds)))
        chained = sim.run(feeds)
        isolated = sim.run(feeds, sources=got)
        for tensor, d in diffs.items():
            ref = got[tensor]
            if np.issubdtype(ref.dtype, np.integer):
                a, b = chained[tensor].astype(np.int64), ref.astype(np.int64)
                alone = np.abs(isolated[tensor].astype(np.int64) - b)
                d.isolated = max(d.isolated, float(alone.max(initial=0)))
                d.isolated_differing += int((alone > 0).sum())
            else:  # a float output: in units of the scale an int8 output would have
                a, b = chained[tensor].astype(np.float64) / d.scale, ref.astype(np.float64) / d.scale
                d.isolated = max(d.isolated, float(np.abs(isolated[tensor] / d.scale - b).max(initial=0)))
            delta = np.abs(a - b)
            d.chained = max(d.chained, float(delta.max(initial=0)))
            if d.kernel == "integer":
                d.differing += int((delta > 0).sum())
                d.values += delta.size
        report.images += 1
    return report


def render(report: SimReport) -> str:
    width = max([len(d.node) for d in report.layers] + [5])
    lines = [f"simulated {len(report.layers)} quantized layers over {report.images} images against onnxruntime "
             f"(max |difference| in LSB of each output; isolated = fed onnxruntime's int8 inputs):",
             f"  {'layer':{width}}  {'op':18} {'kernel':40} {'isolated':>9} {'chained':>9}  differing (isolated, chained)"]
    for d in report.layers:
        share = f"{100 * d.isolated_differing / d.values:.4f}% {100 * d.differing / d.values:.4f}%" if d.values else "-"
        lines.append(f"  {d.node:{width}}  {d.op_type:18} {d.kernel:40} {d.isolated:9.3g} {d.chained:9.3g}  {share}")
    worst = report.worst(integer=True)
    count = sum(d.kernel == "integer" for d in report.layers)
    if worst is None:
        lines.append("no layer ran on an integer kernel")
    elif max(worst.isolated, worst.chained) == 0:
        lines.append(f"integer layers: bit-exact, all {count} match onnxruntime")
    else:
        lines.append(f"integer layers: largest difference {max(worst.isolated, worst.chained):.0f} LSB at {worst.node} "
                     f"(isolated {worst.isolated:.0f}, chained {worst.chained:.0f})")
    floats = report.worst(integer=False)
    if floats is not None:
        lines.append(f"float layers (as the int8 model computes them): largest difference "
                     f"{max(floats.isolated, floats.chained):.3g} LSB at {floats.node}")
    return "\n".join(lines)
