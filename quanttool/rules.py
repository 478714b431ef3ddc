"""Fixed rules applied after the algorithm: Softmax outputs get a fixed scale, and pass-through ops share
their output's parameters backwards so no requantization sits in front of them (REFERENCE.md section 1).
"""

from __future__ import annotations

from collections import Counter

import onnx

from .qparams import QParam, qrange

# Ops that only move, select or clamp values: int8 in, int8 out with the same parameters.
PASS_THROUGH = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "Relu", "Clip", "Slice"}


def softmax_fixed(model: onnx.ModelProto, params: dict[str, QParam], bits: int = 8) -> None:
    """Softmax lies in [0, 1]: 1/127 when symmetric, 1/256 when it uses all levels with zp = qmin."""
    qmin, qmax = qrange(bits)
    for node in model.graph.node:
        out = node.output[0] if node.output else None
        if node.op_type == "Softmax" and out in params:
            unsigned = params[out].zero_point == qmin
            params[out] = QParam(1.0 / (qmax - qmin + 1), qmin) if unsigned else QParam(1.0 / qmax, 0)


def share_pass_through(model: onnx.ModelProto, params: dict[str, QParam]) -> None:
    """Give a pass-through op's input its output's parameters when that op is the input's only consumer.

    Nodes are visited last to first so a chain (Reshape -> Transpose -> MaxPool) takes the parameters of
    its final output.
    """
    graph = model.graph
    consumers = Counter(name for node in graph.node for name in node.input)
    graph_outputs = {out.name for out in graph.output}
    for node in reversed(graph.node):
        if node.op_type not in PASS_THROUGH or not node.input or not node.output:
            continue
        src, dst = node.input[0], node.output[0]
        if src in params and dst in params and consumers[src] == 1 and src not in graph_outputs:
            params[src] = params[dst]


def apply(model: onnx.ModelProto, params: dict[str, QParam], bits: int = 8) -> dict[str, QParam]:
    params = dict(params)
    softmax_fixed(model, params, bits)
    share_pass_through(model, params)
    return params
