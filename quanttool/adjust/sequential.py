"""Sequential statistics for --weight-clip and --adaround: each layer's Gram and cross matrices on the inputs
the int8 model really gives it, i.e. with every earlier layer already adjusted.

The one-pass statistics (layers.py) see each layer's input as the fp32 model computes it, fake-quantized:
the error the earlier int8 layers add is invisible, so the rounding cannot compensate it. Here (as AMD
Quark's AdaRound does) layer l's objective is ||W x - W~ x~||^2 with x its input in the fp32 model (the
target) and x~ its input in a float fake-quant copy of the model in which every earlier layer already
carries its chosen int8-grid weight and bias and every activation the int8 model quantizes goes through
QuantizeLinear -> DequantizeLinear with the table's parameters. Only the statistics change (G = sum p~ p~^T,
C = sum p p~^T), so clip search, rounding and bias correction run unchanged on them.

Cost: layers whose inputs do not depend on each other's adjustment share a step. A layer's depth is the
number of weight layers on the longest path from the graph inputs to its input; all layers of one depth get
their statistics together. The images are read once; per image both models keep the tensors that later
layers still need (the cut between done and not-yet-done layers) and each step runs only the nodes between
the previous cut and the next depth's inputs (Propagation), the fake-quant nodes with the weights chosen so
far. Every node of both models therefore runs once per image: a chain of N layers costs about one forward
pass of each model per image, not N/2 as when every depth is run from the graph inputs. Memory: the cut's
tensors for all images (e.g. 2 x 4.8 MB per image at EfficientNet-Lite0's widest cut) and the Gram matrices
of one depth; beyond MAX_CACHE_BYTES an evenly spread subset of the images is used. When the time limit is
reached, all remaining layers share one last step (on the model adjusted so far) and keep round-to-nearest
weights (bias correction still applies).
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tqdm import tqdm

from ..errors import info
from ..evaluate.isolated import FakeQuantGraph
from ..rewrite.plan import table_qparam
from ..prepare.graph import is_static, subgraphs, tensor_shapes
from ..qparams import QParam
from ..runtime import session
from .clip_search import absmax_scale, grid_round
from .layers import Change, Layer, LayerStats, apply_changes

MAX_CACHE_BYTES = 4 << 30  # both models' cut tensors for all images (AdaRound is on by default: bound it)


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


class Propagation:
    """A graph run segment by segment over cached images: segment k computes the k-th list of targets from
    what earlier segments left, so each node runs once per image (O(L) for L layers, where running the graph
    from its inputs for every depth is O(L^2)). Per image only the tensors later segments read are kept:
    memory is the widest cut of the graph times the image count."""

    def __init__(self, model: onnx.ModelProto, targets: list[list[str]], threads: int, what: str,
                 config: dict[str, str] | None = None) -> None:
        self.model, self.threads, self.what, self.config = model, threads, what, config
        nodes = model.graph.node
        inits = {t.name for t in model.graph.initializer}
        done: set[int] = set()
        self.segments: list[list[int]] = []  # per target list, the node indices not run before it
        self.reads: list[set[str]] = []  # per segment, the tensors it needs from before it (targets included)
        for names in targets:
            needed, keep = set(names), []
            for k in reversed(range(len(nodes))):
                if k not in done and any(o in needed for o in nodes[k].output):
                    keep.append(k)
                    needed |= _reads(nodes[k])
            done.update(keep)
            self.segments.append(sorted(keep))
            made = {o for k in keep for o in nodes[k].output}
            self.reads.append({n for n in needed if n not in made and n not in inits} | set(names))
        self.next = 0
        self.cache: list[dict[str, np.ndarray]] = []

    def cut_bytes(self) -> int:
        """Bytes per image of the widest cut (float32; tensors of unknown shape count 0)."""
        shapes = tensor_shapes(self.model.graph)
        return max((sum(4 * int(np.prod(shapes[n])) for n in reads if is_static(shapes.get(n)))
                    for reads in self.reads), default=0)

    def start(self, images) -> None:
        """Cache the feeds of every image: (key, feeds) pairs, read once."""
        self.cache = [{name: np.asarray(v) for name, v in dict(feeds).items()} for _key, feeds in images]

    def advance(self, count: int = 1, changes: list[Change] = ()) -> list[dict[str, np.ndarray]]:
        """Run the next `count` segments (merged) on every cached image with `changes` (weights chosen so far)
        applied; the per-image cache returned holds their targets until the next call."""
        lo, hi = self.next, min(self.next + count, len(self.segments))
        self.next = hi
        needed = set().union(*self.reads[lo:])
        for values in self.cache:  # what the rest of the graph does not read any more
            for name in [n for n in values if n not in needed]:
                del values[name]
        nodes = sorted(k for seg in self.segments[lo:hi] for k in seg)
        if not nodes or not self.cache:
            return self.cache
        made = {o for k in nodes for o in self.model.graph.node[k].output}
        outputs = sorted(made & needed)
        sess, inputs = self._session(nodes, outputs, self.cache[0], changes)
        for values in self.cache:
            values.update(zip(outputs, sess.run(outputs, {n: values[n] for n in inputs})))
        return self.cache

    def _session(self, nodes: list[int], outputs: list[str], values: dict, changes: list[Change]):
        """The nodes `nodes` alone as a model reading the cached tensors as graph inputs."""
        graph = self.model.graph
        made = {o for k in nodes for o in graph.node[k].output}
        reads = set().union(*(_reads(graph.node[k]) for k in nodes))
        inputs = sorted(n for n in reads if n in values and n not in made)
        part = onnx.ModelProto(ir_version=self.model.ir_version)
        part.opset_import.extend(self.model.opset_import)
        part.graph.node.extend(graph.node[k] for k in nodes)
        part.graph.initializer.extend(t for t in graph.initializer if t.name in reads)
        part.graph.input.extend(helper.make_tensor_value_info(
            n, helper.np_dtype_to_tensor_dtype(values[n].dtype), values[n].shape) for n in inputs)
        part.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs)
        mine = {t.name for t in part.graph.initializer}
        part = apply_changes(part, [c for c in changes if c.layer.weight in mine])
        return session(part, self.threads, self.what, config=self.config), inputs


def _within_memory(samples, total: int, per_image: int):
    """`samples` thinned to evenly spread images when caching all of them would exceed MAX_CACHE_BYTES (the
    statistics then come from fewer images; a note says how many)."""
    keep = total if per_image <= 0 else max(1, min(total, MAX_CACHE_BYTES // per_image))
    if keep == total:
        return samples, total
    info(f"the sequential statistics cache {per_image / 2 ** 20:.0f} MB per image: they use {keep} of the "
         f"{total} calibration images (evenly spread), to stay within {MAX_CACHE_BYTES / 2 ** 30:.0f} GB")
    chosen = {int(i) for i in np.linspace(0, total - 1, keep).round()}

    def thinned():
        return (item for i, item in enumerate(samples() if callable(samples) else samples) if i in chosen)
    return thinned, len(chosen)


def adjust_sequential(model: onnx.ModelProto, quantized: set[str], layers: list[Layer],
                      table: Mapping[str, QParam], samples, total: int, threads: int, qmax: int, deadline: float,
                      choose: Callable[[Layer, LayerStats], Change | None]) -> list[Change]:
    """The changes `choose` makes from each layer's sequential statistics (module docstring).
    `quantized`: the activations the int8 model quantizes; `samples`: iterable or function returning one."""
    levels = depth_levels(model, layers)
    fq_model, fq_names = fake_quant_model(model, table, quantized)
    inputs = [sorted({layer.input for layer in level}) for level in levels]
    ref = Propagation(model, inputs, threads, "the model (sequential statistics)")
    samples, total = _within_memory(samples, total, 2 * ref.cut_bytes())
    # QDQ handling off: the fake-quant model must run as float arithmetic, not be fused into int8 kernels
    fq = Propagation(fq_model, [[fq_names.get(n, n) for n in names] for names in inputs], threads,
                     "the fake-quant model (sequential statistics)", config={"session.disable_quant_qdq": "1"})
    inits = {t.name: t for t in model.graph.initializer}
    changes: list[Change] = []
    current: list[Change] = []  # every done layer as the int8 model holds it (round-to-nearest if unchanged)
    bar = tqdm(total=total * len(levels), unit="img", desc="sequential statistics", dynamic_ncols=True)
    k = 0
    while k < len(levels):
        level, count = levels[k], 1
        if time.monotonic() > deadline:  # the rest in one go, on the model adjusted so far
            level = [layer for rest in levels[k:] for layer in rest]
            count = len(levels) - k
            bar.total = bar.n + total
            bar.refresh()
        k += count
        if ref.next == 0:  # the images are read once; both runs start from the same feeds
            ref.start(samples() if callable(samples) else samples)
            fq.cache = [dict(values) for values in ref.cache]
        xs, xqs = ref.advance(count), fq.advance(count, current)
        stats = {layer.weight: LayerStats() for layer in level}
        for x, xq in zip(xs, xqs):
            for layer in level:
                stats[layer.weight].update(x[layer.input].astype(np.float32, copy=False), layer, None, True,
                                           xq[fq_names.get(layer.input, layer.input)].astype(np.float32, copy=False))
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
