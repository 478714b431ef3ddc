"""Fixed rules applied after the algorithm: bounded activations keep their known range (or Softmax outputs
get a fixed scale), and pass-through ops share their output's parameters backwards so no requantization sits in
front of them (REFERENCE.md section 1).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from .ops import ops_where
from .qparams import QParam, qrange

# Ops whose outputs are input values (moved, selected, clamped): int8 in, int8 out with the same parameters.
PASS_THROUGH = ops_where(shares_params=True)
# Activations whose output range is known whatever the input: a statistic can only make it narrower, and the
# clipping algorithms (KL, ACIQ, percentile) narrow it wrongly, e.g. a Sigmoid whose values pile up near 0 got
# a scale of 0.00047 under KL and lost every score above 0.06. Clip's bounds are its own inputs.
BOUNDED = {"Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0), "Tanh": (-1.0, 1.0)}


def _clip_bounds(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> tuple[float, float] | None:
    lo, hi = -np.inf, np.inf
    for attr in node.attribute:  # opset < 11 keeps the bounds as attributes
        if attr.name == "min":
            lo = attr.f
        elif attr.name == "max":
            hi = attr.f
    for k, name in ((1, "min"), (2, "max")):
        if len(node.input) > k and node.input[k]:
            value = constants.get(node.input[k])
            if value is None or value.size != 1:
                return None  # a bound computed at run time: unknown
            if name == "min":
                lo = float(value.reshape(()))
            else:
                hi = float(value.reshape(()))
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) else None


def known_ranges(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """Tensor -> the range its op can produce: bounded activations, and what pass-through ops make of them
    (a Reshape of a Sigmoid output is still in [0, 1])."""
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ranges: dict[str, tuple[float, float]] = {}
    for node in model.graph.node:  # topological order: a pass-through op sees its input's range first
        if not node.output:
            continue
        known = BOUNDED.get(node.op_type)
        if node.op_type == "Clip":
            known = _clip_bounds(node, constants)
        if node.op_type in PASS_THROUGH - {"Pad"} and node.input and node.input[0] in ranges:  # Pad adds values
            lo, hi = ranges[node.input[0]]
            if node.op_type == "Relu":
                lo, hi = max(lo, 0.0), max(hi, 0.0)
            if known is not None:  # a Clip narrows what it gets
                lo, hi = max(lo, known[0]), min(hi, known[1])
            known = (lo, max(lo, hi))
        if known is not None:
            ranges[node.output[0]] = known
    return ranges


def within(known: tuple[float, float], observed_min: float, observed_max: float) -> tuple[float, float]:
    """The known range clipped to what was observed (never wider than either)."""
    lo = min(max(known[0], observed_min), known[1])
    hi = max(min(known[1], observed_max), lo)
    return lo, hi


def _forward(model: onnx.ModelProto, name: str) -> list[str]:
    """`name` and the outputs of the pass-through ops that carry its values on (Softmax -> Reshape -> ...)."""
    chain, todo = [], [name]
    while todo:
        current = todo.pop()
        chain.append(current)
        todo += [node.output[0] for node in model.graph.node
                 if node.op_type in PASS_THROUGH and node.input and node.input[0] == current and node.output]
    return chain


def softmax_fixed(model: onnx.ModelProto, params: dict[str, QParam], bits: int = 8) -> None:
    """Softmax lies in [0, 1]: 1/127 when symmetric, 1/256 when it uses all levels with zp = qmin.

    The pass-through ops after it (the opset upgrade of an opset < 13 export inserts a Reshape) carry the same
    values, so they get the same fixed parameters; otherwise backward sharing would hand the Softmax the
    Reshape's calibrated (under KL, clipped) range. The Softmax output itself is often not observed at all
    (it shares its consumer's parameters), so the scheme is read from whichever tensor of the chain was."""
    qmin, qmax = qrange(bits)
    for node in model.graph.node:
        if node.op_type != "Softmax" or not node.output:
            continue
        chain = _forward(model, node.output[0])
        seen = [params[name] for name in chain if name in params]
        if not seen:
            continue
        unsigned = seen[0].zero_point == qmin
        fixed = QParam(1.0 / (qmax - qmin + 1), qmin) if unsigned else QParam(1.0 / qmax, 0)
        for name in chain:
            params[name] = fixed


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


def apply(model: onnx.ModelProto, params: dict[str, QParam], bits: int = 8,
          fixed_softmax: bool = True) -> dict[str, QParam]:
    """fixed_softmax=False when the Softmax output already got its known range clipped to the observed one
    (calibrate's `--bounded range`), which a fixed [0, 1] would only coarsen."""
    params = dict(params)
    if fixed_softmax:
        softmax_fixed(model, params, bits)
    share_pass_through(model, params)
    return params
