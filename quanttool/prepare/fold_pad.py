"""Fold a zero Pad into the Conv it feeds (TF-style 'same' padding exported as Pad -> Conv, as in EfficientNet-
Lite). Exact: a Conv's own pads add zeros too. Without it the int8 model needs a Q/DQ pair around the Pad, and
onnxruntime then runs the Pad in float between DequantizeLinear and QuantizeLinear and cannot fold it into the
int8 Conv (README "Deploying", speed)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import DEFAULT_DOMAINS, attribute, graph_output_names, initializers, readers, replace_nodes


def _spatial_pads(pad: onnx.NodeProto, inits: dict) -> list[int] | None:
    """[begin..., end...] over the spatial dims when the Pad adds zeros on those dims only, else None."""
    if attribute(pad, "mode", b"constant") not in (b"constant", "constant"):
        return None
    if len(pad.input) > 3 and pad.input[3]:
        return None  # opset 18 axes: rare, not worth the bookkeeping
    if len(pad.input) > 2 and pad.input[2]:
        value = inits.get(pad.input[2])
        if value is None or np.any(numpy_helper.to_array(value) != 0):
            return None
    if len(pad.input) > 1 and pad.input[1]:
        pads = inits.get(pad.input[1])
        if pads is None:
            return None
        pads = [int(v) for v in numpy_helper.to_array(pads).reshape(-1)]
    else:
        pads = list(attribute(pad, "pads", []))
    rank = len(pads) // 2
    if rank < 3 or any(v < 0 for v in pads) or any(pads[k] or pads[rank + k] for k in (0, 1)):
        return None  # negative pads crop; batch or channel padding is not a Conv pad
    return pads[2:rank] + pads[rank + 2:]


def fold_pad_into_conv(graph: onnx.GraphProto) -> int:
    inits = initializers(graph)
    read = readers(graph)
    outputs = graph_output_names(graph)
    removed: dict[int, list] = {}
    for index, pad in enumerate(graph.node):
        if pad.op_type != "Pad" or pad.domain not in DEFAULT_DOMAINS or pad.output[0] in outputs:
            continue
        users = read.get(pad.output[0], [])
        if len(users) != 1:
            continue
        conv = graph.node[users[0]]
        if conv.op_type != "Conv" or conv.input[0] != pad.output[0] or attribute(conv, "auto_pad", b"NOTSET") not in (
                b"NOTSET", "NOTSET"):
            continue
        spatial = _spatial_pads(pad, inits)
        if spatial is None:
            continue
        n = len(spatial) // 2
        own = list(attribute(conv, "pads", [0] * (2 * n)))
        if len(own) != 2 * n:
            continue
        merged = [a + b for a, b in zip(own, spatial)]
        for k, a in enumerate(conv.attribute):
            if a.name == "pads":
                del conv.attribute[k]
                break
        conv.attribute.append(helper.make_attribute("pads", merged))
        conv.input[0] = pad.input[0]
        removed[index] = []
    replace_nodes(graph, removed)
    return len(removed)
