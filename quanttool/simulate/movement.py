"""Ops that only move int8 values (Reshape, Transpose, Slice, Pad, Resize nearest, ...) and Concat.

The move itself is the ONNX operator run on the int8 array by onnx's reference implementation (it is the
same op on integers); a lookup table follows when the output's parameters differ from the input's.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from .integer import lookup
from .linear import Unsupported


def run_node(node: onnx.NodeProto, values: list, opsets: dict[str, int]) -> list[np.ndarray]:
    """One ONNX node through onnx.reference at the model's opset; inputs by position ('' = absent)."""
    names = [f"in{k}" if name else "" for k, name in enumerate(node.input)]
    copy = helper.make_node(node.op_type, names, [f"out{k}" for k in range(len(node.output))],
                            domain=node.domain or None)
    copy.attribute.extend(node.attribute)
    graph = helper.make_graph([copy], "one", [onnx.ValueInfoProto(name=n) for n in names if n],
                              [onnx.ValueInfoProto(name=f"out{k}") for k in range(len(node.output))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    feeds = {n: v for n, v in zip(names, values) if n}
    return ReferenceEvaluator(model).run(None, feeds)


def move(layer: dict, node: onnx.NodeProto, data: np.ndarray, others: list, opsets: dict) -> list[np.ndarray]:
    """The node on int8 data (other inputs: shapes, indices, pads... as the model has them)."""
    op = layer["op_type"]
    if op == "Resize" and layer["attributes"].get("mode", "nearest") != "nearest":
        raise Unsupported("Resize other than nearest")
    if op == "Pad":
        if layer.get("pad_value") is None:
            raise Unsupported("Pad other than constant mode")
        others = list(others)
        if len(others) > 1:
            others[1] = np.array(layer["pad_value"], dtype=np.int8)
        else:
            others.append(np.array(layer["pad_value"], dtype=np.int8))
    outs = run_node(node, [data, *others], opsets)
    outs = [np.asarray(o).astype(np.int8) for o in outs]
    specs = layer.get("outputs", [layer])  # Split lists every output; other ops have one
    return [lookup(o, spec["lut"]) if "lut" in spec else o for o, spec in zip(outs, specs)]


def concat(layer: dict, inputs: list[np.ndarray]) -> np.ndarray:
    parts = [lookup(x, spec["lut"]) if "lut" in spec else x for x, spec in zip(inputs, layer["inputs"])]
    return np.concatenate(parts, axis=int(layer["attributes"]["axis"]))
