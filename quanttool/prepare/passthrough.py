"""Remove inference no-ops (Identity, Dropout) while keeping every graph output name unchanged."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import (DEFAULT_DOMAINS, graph_output_names, initializers, readers, rename_reads, rename_tensor,
                    replace_nodes)


def _is_noop(node: onnx.NodeProto, inits: dict, read: dict, outputs: set[str]) -> bool:
    if node.domain not in DEFAULT_DOMAINS or not node.input or not node.input[0] or not node.output[0]:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout":
        return False
    if len(node.output) > 1 and node.output[1] and (node.output[1] in outputs or read.get(node.output[1])):
        return False  # the mask is used
    training = node.input[2] if len(node.input) > 2 else ""
    # opset 12+: training_mode is an input; only a constant False (or none) means inference
    return not training or (training in inits and not np.any(numpy_helper.to_array(inits[training])))


def remove_passthrough(graph: onnx.GraphProto) -> int:
    """Rewire readers of a no-op's output to its input; for a graph output, rename the producer's output
    instead. Keeps the node when input and output are both graph interface names."""
    inits = initializers(graph)
    read = readers(graph)
    outputs = graph_output_names(graph)
    interface = {i.name for i in graph.input} | set(inits) | outputs
    removed: dict[int, list] = {}
    for index, node in enumerate(graph.node):  # nodes are edited in place, so chains resolve in order
        if not _is_noop(node, inits, read, outputs):
            continue
        source, target = node.input[0], node.output[0]
        if target not in outputs:
            rename_reads(graph, target, source)
        elif source in interface:
            continue
        else:
            rename_tensor(graph, source, target)
        removed[index] = []
    replace_nodes(graph, removed)
    return len(removed)
