"""Cross-layer equalisation (DFQ, Nagel et al. 2019) for Conv -> Relu/Clip(0, hi) -> Conv pairs.

Per-channel int8 weights lose most where one conv's output channels have very different ranges and the next
layer reads them through one per-tensor activation scale (depthwise-separable nets after BN folding). For a
pair W1 (output channel i) -> ReLU -> W2 (input channel i), ReLU(x / s) = ReLU(x) / s for s > 0, so
W1_i /= s_i, b1_i /= s_i, W2[:, i] *= s_i leaves the function unchanged. s_i = sqrt(r1_i / r2_i) (r: the
channel's absmax in W1 and in W2) makes both ranges sqrt(r1_i r2_i). Pairs are equalised in graph order,
repeated (a conv that ends one pair starts the next) until the scales settle.

ReLU6 and other Clip(0, hi): the bound moves with the channel, Clip(x / s_i, 0, hi / s_i), which a Clip with
one scalar bound cannot express. Such a Clip becomes Relu followed by Min with a per-channel constant
hi / s_i (exact; the Min output keeps the Clip's tensor name, the Relu output is `<name>_eq_relu`). A
Clip with a lower bound other than 0, or any other op between the convs, ends no pair.

The Relu output then gets the Min output's quantization parameters (`share_bounds`): its own range is the
unbounded pre-ReLU6 range, while clipping it at the largest per-channel bound loses nothing the Min keeps.

Only the bias of the first conv moves with its channel (b1_i /= s_i); DFQ's high-bias absorption (which needs
BN statistics) is not done.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..prepare.graph import readers as graph_readers
from ..rewrite.fuse import clip_bounds
from ..rewrite.plan import constant_values

ROUNDS = 8
MIN_SCALE, MAX_SCALE = 1e-4, 1e4  # a channel (almost) dead on one side is not blown up


def _conv_weight(node: onnx.NodeProto, inits: dict) -> str | None:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return None
    return node.input[1] if inits[node.input[1]].ndim == 4 else None


@dataclass
class GraphIndex:
    """What the pair and site searches look up: initializer values, constants, graph outputs, readers."""
    graph: onnx.GraphProto
    inits: dict
    constants: dict
    outputs: set
    readers: dict[str, list[int]]
    uses: dict[str, int]


def index_graph(graph: onnx.GraphProto) -> GraphIndex:
    readers = graph_readers(graph)
    return GraphIndex(graph, {t.name: numpy_helper.to_array(t) for t in graph.initializer}, constant_values(graph),
                      {o.name for o in graph.output}, readers, {name: len(ks) for name, ks in readers.items()})


def scalable_convs(g: GraphIndex):
    """(index, node, weight name) of every Conv whose output channels may be rescaled in place: its weight
    and bias are initializers no other node reads, and its output is not a graph output."""
    for k, node in enumerate(g.graph.node):
        w = _conv_weight(node, g.inits)
        if w is None or g.uses.get(w) != 1 or node.output[0] in g.outputs:
            continue
        if len(node.input) > 2 and node.input[2] and (node.input[2] not in g.inits or g.uses[node.input[2]] != 1):
            continue
        yield k, node, w


def find_pairs(model: onnx.ModelProto) -> list[tuple[int, int, int]]:
    """(conv1, activation, conv2) node indices, each link the only reader of the tensor before it."""
    g = index_graph(model.graph)
    graph, inits, constants, outputs, readers, uses = g.graph, g.inits, g.constants, g.outputs, g.readers, g.uses
    pairs = []
    for k, node, w1 in scalable_convs(g):
        after = readers.get(node.output[0], [])
        if len(after) != 1:
            continue
        act = graph.node[after[0]]
        if act.op_type == "Clip":
            bounds = clip_bounds(act, constants)
            if bounds is None or bounds[0] != 0.0 or not np.isfinite(bounds[1]):
                continue
        elif act.op_type != "Relu":
            continue
        if act.output[0] in outputs or len(readers.get(act.output[0], [])) != 1:
            continue
        j = readers[act.output[0]][0]
        w2 = _conv_weight(graph.node[j], inits)
        if w2 is None or uses.get(w2) != 1 or graph.node[j].input[0] != act.output[0]:
            continue
        pairs.append((k, after[0], j))
    return pairs


def _in_channel_view(w2: np.ndarray, groups: int) -> np.ndarray:
    """W2 [out, in/g, kh, kw] as [in_channels, out/g, rest]: every weight reading input channel i in row i."""
    out, cpg = w2.shape[0], w2.shape[1]
    v = w2.reshape(groups, out // groups, cpg, -1).transpose(0, 2, 1, 3)  # [g, in/g, out/g, khkw]
    return v.reshape(groups * cpg, out // groups, -1)


def _from_in_channel_view(v: np.ndarray, shape: tuple, groups: int) -> np.ndarray:
    out, cpg = shape[0], shape[1]
    return v.reshape(groups, cpg, out // groups, -1).transpose(0, 2, 1, 3).reshape(shape)


def _group(node: onnx.NodeProto) -> int:
    return next((int(helper.get_attribute_value(a)) for a in node.attribute if a.name == "group"), 1)


def equalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy with every pair equalised, and the number of pairs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    pairs = find_pairs(out)
    if not pairs:
        return out, 0
    index = {t.name: k for k, t in enumerate(graph.initializer)}
    arrays = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
    total = {k: np.ones(arrays[graph.node[k].input[1]].shape[0]) for k, _, _ in pairs}
    for _ in range(ROUNDS):
        worst = 0.0
        for k, _, j in pairs:
            n1, n2 = graph.node[k], graph.node[j]
            w1, w2 = arrays[n1.input[1]], arrays[n2.input[1]]
            g2 = _group(n2)
            v2 = _in_channel_view(w2, g2)
            if v2.shape[0] != w1.shape[0]:
                continue  # channel counts disagree (never in a valid graph)
            r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
            r2 = np.abs(v2).reshape(v2.shape[0], -1).max(axis=1)
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[ok] = np.clip(np.sqrt(r1[ok] / r2[ok]), MIN_SCALE, MAX_SCALE)
            arrays[n1.input[1]] = w1 / s[:, None, None, None]
            if len(n1.input) > 2 and n1.input[2]:
                arrays[n1.input[2]] = arrays[n1.input[2]] / s
            arrays[n2.input[1]] = _from_in_channel_view(v2 * s[:, None, None], w2.shape, g2)
            total[k] *= s
            worst = max(worst, float(np.abs(np.log(s)).max()))
        if worst < 1e-3:
            break
    changed = {n for k, _, j in pairs for n in graph.node[k].input[1:3] if n} | {graph.node[j].input[1]
                                                                             for _, _, j in pairs}
    for name in changed:
        old = graph.initializer[index[name]]
        graph.initializer[index[name]].CopyFrom(
            numpy_helper.from_array(arrays[name].astype(np.float32), old.name))
    _split_clips(out, [(k, a) for k, a, _ in pairs if graph.node[a].op_type == "Clip"], total)
    return out, len(pairs)


def share_bounds(model: onnx.ModelProto, params: dict) -> dict:
    """Each `_eq_relu` tensor quantized like the Min output it feeds (see the module docstring)."""
    params = dict(params)
    for node in model.graph.node:
        if node.op_type == "Min" and node.input[0].endswith("_eq_relu") and node.output[0] in params:
            params[node.input[0]] = params[node.output[0]]
    return params


def _split_clips(model: onnx.ModelProto, clips: list[tuple[int, int]], total: dict) -> None:
    """Clip(0, hi) after an equalised conv -> Relu + Min(per-channel hi / s_i), in place of the Clip."""
    if not clips:
        return
    graph = model.graph
    constants = constant_values(graph)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    replace = {}
    for k, a in clips:
        clip = graph.node[a]
        hi = clip_bounds(clip, constants)[1]
        mid, bound = f"{clip.output[0]}_eq_relu", f"{clip.output[0]}_eq_bound"
        while mid in taken or bound in taken:
            mid, bound = mid + "_", bound + "_"
        taken |= {mid, bound}
        graph.initializer.append(numpy_helper.from_array(
            (hi / total[k]).astype(np.float32).reshape(-1, 1, 1), bound))
        name = clip.name or f"Clip_{a}"
        replace[a] = [helper.make_node("Relu", [clip.input[0]], [mid], name=f"{name}_eq_relu"),
                      helper.make_node("Min", [mid, bound], [clip.output[0]], name=name)]
    bounds = {name for a in replace for name in graph.node[a].input[1:] if name}
    nodes = []
    for k, node in enumerate(graph.node):
        nodes.extend(replace.get(k, [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for node in graph.node for name in node.input}
    unused = bounds - read  # the Clips' scalar bounds, now read by nobody
    keep = [t for t in graph.initializer if t.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(keep)
