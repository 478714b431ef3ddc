"""Sequential statistics for --weight-clip and --adaround: each layer's Gram and cross matrices on the inputs
the int8 model really gives it, i.e. with every earlier layer already adjusted.

The one-pass statistics (layers.py) see each layer's input as the fp32 model computes it, fake-quantized:
the error the earlier int8 layers add is invisible, so the rounding cannot compensate it. Here (as AMD
Quark's AdaRound does) layer l's objective is ||W x - W~ x~||^2 with x its input in the fp32 model (the
target) and x~ its input in a float fake-quant copy of the model in which every earlier layer already
carries its chosen int8-grid weight and bias and every activation the int8 model quantizes goes through
QuantizeLinear -> DequantizeLinear with the table's parameters. Only the statistics change (G = sum p~ p~^T,
C = sum p p~^T), so clip search, rounding and bias correction run unchanged on them.

Cost: layers whose inputs do not depend on each other's adjustment share a pass. A layer's depth is the
number of weight layers on the longest path from the graph inputs to its input; all layers of one depth are
done in one pass over the images, running only the part of the two models that feeds them. A chain of N
layers therefore costs about N/2 forward passes of both models per image. Memory: the Gram matrices of one
depth at a time. When the time limit is reached, all remaining layers share one last pass (on the model
adjusted so far) and keep round-to-nearest weights (bias correction still applies).
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from ..evaluate.isolated import FakeQuantGraph
from ..rewrite.plan import table_qparam
from ..prepare.graph import subgraphs
from ..qparams import QParam
from ..runtime import session
from .clip_search import absmax_scale, grid_round
from .layers import Change, Layer, LayerStats, apply_changes


def depth_levels(model: onnx.ModelProto, layers: list[Layer]) -> list[list[Layer]]:
    """`layers` grouped by depth (weight layers on the longest path before their input), shallowest first."""
    weights = {layer.weight for layer in layers}
    depth: dict[str, int] = {}
    for node in model.graph.node:  # a prepared model is topologically sorted
        d = max((depth.get(name, 0) for name in node.input if name), default=0)
        d += len(node.input) > 1 and node.input[1] in weights
        for name in node.output:
            depth[name] = d
    levels: dict[int, list[Layer]] = {}
    for layer in layers:
        levels.setdefault(depth.get(layer.input, 0), []).append(layer)
    return [levels[d] for d in sorted(levels)]


def fake_quant_model(model: onnx.ModelProto, table: Mapping[str, QParam], quantized: set[str]
                     ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of `model` in which every tensor of `quantized` with a table entry is read through
    QuantizeLinear -> DequantizeLinear, and the name of each such fake-quantized tensor."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    g = FakeQuantGraph(graph, 8)
    nodes: list[onnx.NodeProto] = []
    fq: dict[str, str] = {}

    def add(name: str) -> None:
        qp = table_qparam(table, name)
        if name in quantized and qp is not None:
            fq[name] = g.fake_quant(name, qp, nodes)

    for inp in graph.input:
        add(inp.name)
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(fq.get(name, name) for name in node.input)
        nodes.append(copy)
        for name in node.output:
            add(name)
    del graph.node[:]
    graph.node.extend(nodes)
    return out, fq


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor a node reads, its subgraphs' outer-scope reads included (over-approximated)."""
    names = set(node.input)
    for sub in subgraphs(node):
        for inner in sub.node:
            names |= _reads(inner)
    return names


def pruned(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """`model` computing only `names` (its graph outputs), without the nodes they do not need."""
    needed, keep = set(names), []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed |= _reads(node)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(reversed(keep))
    del out.graph.output[:]
    out.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    return out


def _values(sess, names: list[str], feeds: Mapping[str, np.ndarray], wanted: list[str]) -> list[np.ndarray]:
    got = dict(zip(names, sess.run(names, dict(feeds)))) if sess is not None else {}
    return [np.asarray(got[n] if n in got else feeds[n], dtype=np.float32) for n in wanted]


def adjust_sequential(model: onnx.ModelProto, quantized: set[str], layers: list[Layer],
                      table: Mapping[str, QParam], samples, total: int, threads: int, qmax: int, deadline: float,
                      choose: Callable[[Layer, LayerStats], Change | None]) -> list[Change]:
    """The changes `choose` makes from each layer's sequential statistics (module docstring).
    `quantized`: the activations the int8 model quantizes; `samples`: iterable or function returning one."""
    if not callable(samples):
        kept = list(samples)
        samples = lambda: kept  # noqa: E731
    levels = depth_levels(model, layers)
    fq_model, fq_names = fake_quant_model(model, table, quantized)
    graph_inputs = {i.name for i in model.graph.input}
    inits = {t.name: t for t in model.graph.initializer}
    changes: list[Change] = []
    current: list[Change] = []  # every done layer as the int8 model holds it (round-to-nearest if unchanged)
    bar = tqdm(total=total * len(levels), unit="img", desc="sequential statistics", dynamic_ncols=True)
    k = 0
    while k < len(levels):
        level = levels[k]
        if time.monotonic() > deadline:  # the rest in one pass, on the model adjusted so far
            level = [layer for rest in levels[k:] for layer in rest]
            bar.total = bar.n + total
            bar.refresh()
            k = len(levels)
        k += 1
        wanted = sorted({layer.input for layer in level})
        qwanted = [fq_names.get(n, n) for n in wanted]
        ref_names = [n for n in wanted if n not in graph_inputs]
        fq_run = [n for n in qwanted if n not in graph_inputs]
        ref = session(pruned(model, ref_names), threads, "the model (sequential statistics)") \
            if ref_names else None
        # QDQ handling off: the fake-quant model must run as float arithmetic, not be fused into int8 kernels
        fq = session(pruned(apply_changes(fq_model, current), fq_run), threads,
                     "the fake-quant model (sequential statistics)", config={"session.disable_quant_qdq": "1"}) \
            if fq_run else None
        stats = {layer.weight: LayerStats() for layer in level}
        for _key, feeds in samples():
            xs = dict(zip(wanted, _values(ref, ref_names, feeds, wanted)))
            xqs = dict(zip(wanted, _values(fq, fq_run, feeds, qwanted)))
            for layer in level:
                stats[layer.weight].update(xs[layer.input], layer, None, True, xqs[layer.input])
            bar.update()
        for layer in level:
            change = choose(layer, stats[layer.weight])
            if change is not None:
                changes.append(change)
            else:  # the int8 model rounds this weight to nearest: so must the inputs of the next layers
                w0 = numpy_helper.to_array(inits[layer.weight])
                w = layer.matrix(w0).astype(np.float64)
                scale = absmax_scale(w, qmax)
                change = Change(layer, layer.unmatrix(grid_round(w, scale, qmax) * scale[..., None], w0))
            current.append(change)
    bar.close()
    return changes
