"""Fixed rules applied after the algorithm: Softmax outputs get a fixed scale, and pass-through ops share
their output's parameters backwards so no requantization sits in front of them (REFERENCE.md section 1).
"""

from __future__ import annotations

from collections import Counter

import onnx

from .ops import ops_where
from .qparams import QParam, qrange

# Ops whose outputs are input values (moved, selected, clamped): int8 in, int8 out with the same parameters.
PASS_THROUGH = ops_where(shares_params=True)


def softmax_fixed(model: onnx.ModelProto, params: dict[str, QParam], bits: int = 8) -> None:
    """Softmax lies in [0, 1]: 1/127 when symmetric, 1/256 when it uses all levels with zp = qmin."""
    qmin, qmax = qrange(bits)
    for node in model.graph.node:
        out = node.output[0] if node.output else None
        if node.op_type == "Softmax" and out in params:
            unsigned = params[out].zero_point == qmin
            params[out] = QParam(1.0 / (qmax - qmin + 1), qmin) if unsigned else QParam(1.0 / qmax, 0)


def shared_inputs(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(input, output) of each pass-through op that is its input's only consumer, last node first.

    The input takes the output's parameters, so calibration need not observe it at all (which also lets
    onnxruntime keep Conv+Clip fused during the pass). Last-to-first order resolves chains
    (Reshape -> Transpose -> MaxPool all take the final output's parameters).
    """
    graph = model.graph
    consumers = Counter(name for node in graph.node for name in node.input)
    graph_outputs = {out.name for out in graph.output}
    pairs = []
    for node in reversed(graph.node):
        if node.op_type in PASS_THROUGH and node.input and node.output:
            src, dst = node.input[0], node.output[0]
            if consumers[src] == 1 and src not in graph_outputs:
                pairs.append((src, dst))
    return pairs


def share_pass_through(model: onnx.ModelProto, params: dict[str, QParam]) -> None:
    for src, dst in shared_inputs(model):
        if dst in params:
            params[src] = params[dst]


def apply(model: onnx.ModelProto, params: dict[str, QParam], bits: int = 8) -> dict[str, QParam]:
    params = dict(params)
    softmax_fixed(model, params, bits)
    share_pass_through(model, params)
    return params
