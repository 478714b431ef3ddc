"""Decide what the int8 model quantizes: which nodes run int8, which activation tensors get Q/DQ, which
Relu/Clip are absorbed, and which nodes stay fp32 and why. Also checks the activation table against the model.

Nothing here edits the graph; `qdq.py` and `qoperator.py` write what the plan says.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import QuantError, warn
from ..ops import OPS, ops_where
from ..prepare.activations import float_activations
from ..qparams import QParam
from ..targets import TARGETS, Target
from .fuse import ACTIVATIONS, FUSABLE_PRODUCERS, absorbable, activation_bounds

# Ops with int8 kernels in onnxruntime: their float inputs and outputs are always quantized.
COMPUTE = ops_where(kind="compute")
# Data-movement ops (and lone Relu/Clip): quantized only when their data input already is, so int8 flows through.
PASS_THROUGH = ops_where(kind="move")
WEIGHT_OPS = ops_where(weight=True)
# Ops whose constant operands are quantized per-tensor (they have no table entry).
CONST_OPERAND_OPS = ops_where(const_operands=True)
# A Concat whose inputs' ranges differ by this factor or more cannot share one int8 scale: a detection head's
# box coordinates in pixels (0..640) next to scores in [0, 1] would leave the scores 0 or 1 step.
MIXED_RANGE_RATIO = 32.0


@dataclass
class Group:
    """One quantized node (plus an absorbed Relu/Clip)."""

    index: int
    name: str
    op_type: str
    kind: str  # "compute" or "pass"
    act_inputs: list[str]
    outputs: list[str]  # quantized float outputs; after fusion the Relu/Clip output
    weight: str | None = None
    weight_array: np.ndarray | None = None  # after folding Gemm alpha
    weight_axis: int | None = None  # None = per-tensor
    bias: str | None = None
    bias_array: np.ndarray | None = None  # per output channel, after folding Gemm beta
    const_inputs: list[str] = field(default_factory=list)
    act: int | None = None  # node index of the absorbed Relu/Clip
    attrs: dict = field(default_factory=dict)  # attribute overrides (Gemm alpha/beta after folding)


@dataclass
class Plan:
    graph: onnx.GraphProto
    names: list[str]  # node names, unnamed nodes given unique ones
    constants: dict[str, np.ndarray]
    graph_inputs: set[str]
    graph_outputs: set[str]
    groups: dict[int, Group]
    absorbed: dict[int, int]  # Relu/Clip node index -> index of the group that absorbs it
    qtensors: list[str]  # quantized activation tensors, in graph order
    kept: list[tuple[str, str, str]]
    float_outputs: set[str] = field(default_factory=set)  # outputs of quantized ops that stay float (mixed ranges)


def node_names(graph: onnx.GraphProto) -> list[str]:
    """Existing names, and `<op_type>_<k>` for nodes without one (unique within the graph)."""
    taken = {n.name for n in graph.node if n.name}
    names, counter = [], 0
    for node in graph.node:
        if node.name and node.name not in names:
            names.append(node.name)
            continue
        while True:
            candidate = f"{node.op_type}_{counter}"
            counter += 1
            if candidate not in taken:
                break
        taken.add(candidate)
        names.append(candidate)
    return names


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def float_tensors(model: onnx.ModelProto, table: dict) -> set[str]:
    """Names of float activations (graph inputs and node outputs; initializers excluded)."""
    return set(float_activations(model, table))


def _float_islands(graph: onnx.GraphProto, groups: dict, consumers: dict[str, list[int]]) -> list[int]:
    """Add/Mul groups with no int8 neighbour: every activation input comes from an op that stays float and
    every consumer stays float (looking through data-movement ops). Quantizing them only rounds, e.g. the
    variance + eps of a LayerNorm that an opset < 17 export spells out in basic ops, which Sqrt and Div then
    amplify. Re-checked until nothing changes, since dropping one may isolate another."""
    producer = {o: i for i, node in enumerate(graph.node) for o in node.output}

    def source(name: str) -> int | None:  # the op behind `name`, through data movement
        i = producer.get(name)
        while i is not None and graph.node[i].op_type in PASS_THROUGH and graph.node[i].input:
            i = producer.get(graph.node[i].input[0])
        return i

    def users(name: str) -> set[int]:  # the ops reading `name`, through data movement
        found, todo = set(), list(consumers.get(name, []))
        while todo:
            k = todo.pop()
            if graph.node[k].op_type in PASS_THROUGH and graph.node[k].input[0] == name:
                todo += [c for out in graph.node[k].output for c in consumers.get(out, [])]
            else:
                found.add(k)
        return found

    islands: list[int] = []
    changed = True
    while changed:
        changed = False
        for i, group in groups.items():
            if group.op_type not in ("Add", "Mul") or i in islands:
                continue
            near = {source(x) for x in group.act_inputs} | {k for out in group.outputs for k in users(out)}
            if not any(k in groups and k != i and k not in islands for k in near):
                islands.append(i)
                changed = True
    return islands


def _magnitude(table: dict, name: str) -> float | None:
    """The largest |value| the table's int8 grid represents for `name`."""
    qp = table_qparam(table, name)
    if qp is None:
        return None
    return max(abs(-128 - qp.zero_point), abs(127 - qp.zero_point)) * qp.scale


def mixed_range_tensors(graph: onnx.GraphProto, table: dict) -> dict[str, float]:
    """Concat outputs whose activation inputs' ranges differ by MIXED_RANGE_RATIO or more, and every tensor that
    carries them on through data movement or further Concats: tensor -> range ratio. One int8 scale for such a
    tensor keeps the large part and rounds the small part away, so it stays float; its inputs keep their own
    scales (the runtime dequantizes each before the float Concat)."""
    mixed: dict[str, float] = {}
    for node in graph.node:
        if not node.output:
            continue
        carried = [mixed[x] for x in node.input if x in mixed]
        if node.op_type == "Concat":
            sizes = [m for m in (_magnitude(table, x) for x in node.input if x and x not in mixed) if m]
            ratio = max(sizes) / min(sizes) if len(sizes) >= 2 else 0.0
            if ratio >= MIXED_RANGE_RATIO or carried:
                mixed[node.output[0]] = max([ratio] + carried)
        elif node.op_type in PASS_THROUGH and node.input and node.input[0] in mixed:
            for out in node.output:
                mixed[out] = mixed[node.input[0]]
    return mixed


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _weight_setup(node, constants, floats, group: Group) -> str | None:
    """Fill weight/bias fields of a Conv/ConvTranspose/Gemm/MatMul group; return a reason to keep fp32, or None."""
    op, attrs = node.op_type, _attrs(node)
    w_name = node.input[1] if len(node.input) > 1 else ""
    if op == "MatMul" and w_name in floats:
        group.act_inputs = [node.input[0], w_name]  # two activations, both per-tensor from the table
        return None
    w = constants.get(w_name)
    if w is None:
        return "weight is not a constant initializer"
    if w.dtype != np.float32:
        return f"weight '{w_name}' is {w.dtype}, not float32"
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    bias = constants.get(bias_name) if bias_name else None
    if bias_name and bias is None:
        return "bias is not a constant initializer"
    if op == "Conv":
        axis, channels = 0, w.shape[0]
    elif op == "ConvTranspose":
        group_count = int(attrs.get("group", 1))
        # per-channel along axis 1 cannot express per-group output channels: per-tensor for grouped deconv
        axis = 1 if group_count == 1 else None
        channels = w.shape[1] * group_count
    elif op == "Gemm":
        if attrs.get("transA", 0):
            return "Gemm with transA=1 (no int8 kernel; transpose A before the Gemm)"
        if w.ndim != 2:
            return "Gemm weight is not 2-D"
        axis = 0 if attrs.get("transB", 0) else 1
        channels = w.shape[axis]
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        w = (w * np.float32(alpha)).astype(np.float32)  # fold alpha into the weight: alpha*A*B = A*(alpha*B)
        if bias is not None:
            if bias.size not in (1, channels) or (bias.ndim == 2 and bias.shape[0] != 1):
                return "Gemm bias C is not per output column (shape [N], [1,N] or scalar)"
            bias = np.broadcast_to(bias.reshape(-1) * beta, (channels,)).astype(np.float32)
        group.attrs = {"alpha": 1.0, "beta": 1.0}
    else:  # MatMul with a constant weight [.., K, N]
        axis = 1 if w.ndim == 2 else None
        channels = w.shape[-1]
    if bias is not None and op != "Gemm":
        if bias.size != channels:
            return f"bias has {bias.size} values for {channels} output channels"
        bias = bias.reshape(-1).astype(np.float32)
    group.weight, group.weight_array, group.weight_axis = w_name, w, axis
    group.bias, group.bias_array = bias_name, bias
    return None


def make_plan(model: onnx.ModelProto, table: dict, exclude=(), target: Target | None = None) -> Plan:
    target = target or TARGETS["onnxruntime"]
    graph = model.graph
    names = node_names(graph)
    constants = constant_values(graph)
    inits = {t.name for t in graph.initializer}
    floats = float_tensors(model, table)
    graph_inputs = {i.name for i in graph.input if i.name not in inits}
    graph_outputs = {o.name for o in graph.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    excluded_set = set(exclude)
    matched = {e for e in excluded_set if e in names or any(n.op_type == e for n in graph.node)}
    known = {n.op_type.lower(): n.op_type for n in graph.node} | {name.lower(): name for name in names}
    for e in sorted(excluded_set - matched):
        hint = f" (did you mean {known[e.lower()]!r}? names are case-sensitive)" if e.lower() in known else ""
        warn(f"--exclude {e}: no node or op type of this name in the model; ignored{hint}")

    def excluded(i: int) -> bool:
        return names[i] in excluded_set or graph.node[i].op_type in excluded_set

    groups: dict[int, Group] = {}
    reasons: dict[int, str] = {}
    for i, node in enumerate(graph.node):
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op not in COMPUTE:
            continue
        if excluded(i):
            reasons[i] = "excluded"
            continue
        if not node.output or node.output[0] not in floats:
            continue  # integer arithmetic (shape computations) is not quantized
        if target.int8_ops is not None and op not in target.int8_ops:
            reasons[i] = f"--target {target.name} runs it in float"
            continue
        indices = OPS[op].act_inputs if OPS[op].act_inputs is not None else range(len(node.input))
        group = Group(i, names[i], op, "compute", [], [o for o in node.output if o in floats])
        if op in WEIGHT_OPS:
            group.act_inputs = [node.input[0]]
            reason = _weight_setup(node, constants, floats, group)
            if op not in target.per_channel:
                group.weight_axis = None
        else:
            reason = None
            for k in indices:
                name = node.input[k] if k < len(node.input) else ""
                if not name:
                    continue
                if name in floats:
                    group.act_inputs.append(name)
                elif (op in CONST_OPERAND_OPS and name in constants and constants[name].dtype == np.float32
                      and not np.isfinite(constants[name]).all()):
                    reason = f"constant '{name}' holds NaN or Inf (a mask?), which int8 cannot represent"
                elif op in CONST_OPERAND_OPS and name in constants and constants[name].dtype == np.float32:
                    group.const_inputs.append(name)
                else:
                    reason = f"input '{name}' is neither a float activation nor a float constant"
        if reason is None and not group.act_inputs:
            reason = "no activation input (constant subgraph; fold it in prepare)"
        if reason is None and target.inputs_only and op == "Add" and len(group.act_inputs) < 2:
            reason = f"a bias Add: --target {target.name} fuses it into the layer before"
        if reason is not None:
            reasons[i] = reason
            continue
        groups[i] = group
    for i in _float_islands(graph, groups, consumers):
        del groups[i]
        reasons[i] = "between float ops only: int8 would add rounding and no int8 compute"
    mixed = mixed_range_tensors(graph, table)
    float_outputs: set[str] = set()
    for i, group in list(groups.items()):
        read = [x for x in group.act_inputs if x in mixed]
        if group.op_type == "Concat" and group.outputs and group.outputs[0] in mixed:
            group.act_inputs = [x for x in group.act_inputs if x not in mixed]
            if group.act_inputs:  # int8 inputs, each with its own scale; the concatenation itself in float
                float_outputs.add(group.outputs[0])
                continue
            read = [group.outputs[0]]
        if read:
            del groups[i]
    for i, node in enumerate(graph.node):
        carried = [x for x in list(node.input) + list(node.output[:1]) if x in mixed]
        if carried and i not in groups:
            reasons[i] = (f"'{carried[0]}' concatenates ranges {mixed[carried[0]]:.0f}x apart (one int8 scale "
                          f"would round the small values away)")

    absorbed: dict[int, int] = {}
    for i, group in groups.items():
        out = graph.node[i].output[0]
        users = consumers.get(out, [])
        if group.op_type not in FUSABLE_PRODUCERS or len(users) != 1 or out in graph_outputs:
            continue
        j = users[0]
        act = graph.node[j]
        if act.op_type not in ACTIVATIONS or excluded(j) or act.output[0] not in floats:
            continue
        if absorbable(act, table_qparam(table, act.output[0]), constants):
            group.act, group.outputs = j, [act.output[0]]
            absorbed[j] = i

    qset: set[str] = set()
    for group in groups.values():
        qset.update(group.act_inputs)
        if not target.inputs_only:
            qset.update(o for o in group.outputs if o not in float_outputs)
    if target.inputs_only:
        qset -= _fused_residuals(graph, groups, consumers, graph_outputs)
    for i, node in enumerate(graph.node):  # topological order, so one pass reaches the fixpoint
        if target.inputs_only:
            break  # data movement stays as it is: the runtime moves Q/DQ across it itself
        if i in groups or i in absorbed or node.op_type not in PASS_THROUGH or node.domain not in ("", "ai.onnx"):
            continue
        data = node.input[0] if node.input else ""
        outs = [o for o in node.output if o in floats]
        if data not in qset or not outs:
            continue
        if excluded(i):
            reasons[i] = "excluded"
            continue
        groups[i] = Group(i, names[i], node.op_type, "pass", [data], outs)
        qset.update(outs)

    # graph order: graph inputs, then node outputs as produced
    order = [i.name for i in graph.input if i.name in graph_inputs] + [o for n in graph.node for o in n.output]
    seen: set[str] = set()
    qtensors = [t for t in order if t in qset and not (t in seen or seen.add(t))]

    kept = []
    for i, node in enumerate(graph.node):
        if i in groups or i in absorbed or node.op_type == "Constant":
            continue
        if not any(o in floats for o in node.output):
            continue
        if target.inputs_only and i not in reasons and node.op_type in PASS_THROUGH:
            continue  # data movement between int8 ops: the runtime carries the Q/DQ across it
        reason = reasons.get(i) or (
            "input is not quantized" if node.op_type in PASS_THROUGH else f"no int8 kernel for {node.op_type}"
        )
        kept.append((names[i], node.op_type, reason))
    return Plan(graph, names, constants, graph_inputs, graph_outputs, dict(sorted(groups.items())), absorbed,
                qtensors, kept, float_outputs)


def float_tails(plan: Plan, outputs: set[str]) -> set[str]:
    """`outputs` (graph outputs computed in float) plus the tensors behind them through pass-through ops: a
    Gemm -> Reshape -> output must compute the Gemm in float too, or it is requantized with the output's range
    first (clipped under ACIQ) and the promise that outputs stay float is broken. The pass-through ops on the
    way leave the plan (they run in float) and are listed as kept fp32."""
    producer = {o: i for i, node in enumerate(plan.graph.node) for o in node.output}
    readers = Counter(name for node in plan.graph.node for name in node.input)
    floats, todo = set(outputs), list(outputs)
    while todo:
        i = producer.get(todo.pop())
        group = plan.groups.get(i)
        if group is None or group.kind != "pass" or len(group.outputs) != 1:
            continue
        data = group.act_inputs[0]
        if readers[data] != 1 or data in plan.graph_inputs or data in plan.graph_outputs:
            continue
        del plan.groups[i]
        plan.kept.append((group.name, group.op_type, "carries a model output, which stays float"))
        floats.add(data)
        todo.append(data)
    return floats


def _fused_residuals(graph: onnx.GraphProto, groups: dict, consumers: dict[str, list[int]],
                     graph_outputs: set[str]) -> set[str]:
    """Per residual Add, one input written by a quantized Conv/Gemm/MatMul that nothing else reads: it stays
    float, so the runtime fuses that layer with the Add instead of requantizing between them."""
    producer = {o: i for i, node in enumerate(graph.node) for o in node.output}
    fused = set()
    for i, group in groups.items():
        if group.op_type != "Add" or len(group.act_inputs) != 2:
            continue
        for x in group.act_inputs:
            j = producer.get(x)
            if (j in groups and groups[j].op_type in WEIGHT_OPS and consumers.get(x) == [i]
                    and x not in graph_outputs):
                fused.add(x)
                break
    return fused


def table_qparam(table: dict, name: str) -> QParam | None:
    qp = table.get(name)
    return qp if isinstance(qp, QParam) or qp is None else QParam(*qp)


def all_tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def validate_table(model: onnx.ModelProto, table: dict, plan: Plan, where=lambda name: "") -> None:
    """QuantError naming the first table entry that does not belong to this model, or the first needed tensor
    without a usable entry. The one place a table's names are checked against a model; `where(name)` prefixes
    the message with the entry's file and line (`Table.where`)."""
    known = all_tensor_names(model.graph)
    source = where("")
    for name in table:
        if name not in known:
            raise QuantError(f"{where(name)}{name!r} is not a tensor of this model; the table was probably made "
                             f"for another model, re-run calibrate")
    for name in plan.qtensors:
        qp = table_qparam(table, name)
        if qp is None:
            raise QuantError(f"{source}tensor '{name}' has no entry in the table; re-run calibrate for this model")
        if not (np.isfinite(qp.scale) and qp.scale > 0):
            raise QuantError(f"{where(name)}tensor '{name}': table scale {qp.scale} is not positive; re-run calibrate")
        if int(qp.zero_point) != qp.zero_point or not -128 <= int(qp.zero_point) <= 127:
            raise QuantError(f"{where(name)}tensor '{name}': table zero point {qp.zero_point} is not an int8 value; "
                             f"re-run calibrate")


@dataclass
class QuantizedOp:
    """One quantized node, for reports and --params."""

    node: str
    op_type: str
    inputs: list[str]  # activation input tensor names (original names)
    output: str  # activation output whose qparams apply (after Relu/Clip absorption: the Relu/Clip output)
    weight_scales: list[float] | None = None  # per output channel (one value when per-tensor)
    weight: str | None = None  # weight initializer name
    weight_axis: int | None = None  # per-channel axis of the stored weight; None = per-tensor
    bias: list[int] | None = None  # int32 bias, scale input_scale * weight_scales[c]
    fused: str | None = None  # op type of the absorbed Relu/Clip
    constants: dict[str, tuple[float, int]] = field(default_factory=dict)  # constant operands: (scale, zp)
    outputs: list[str] = field(default_factory=list)  # every quantized output (Split has several)
    form: str = "qdq"  # "qdq", or the op run on int8 in qoperator format (e.g. "QLinearConv")
    float_output: bool = False  # its output is a graph output left in float (convert without int8_outputs)
    act_bounds: tuple[float, float] | None = None  # real-valued clamp of the absorbed Relu (0, inf) / Clip (lo, hi)
    # weight, bias and constant operands as stored in the int8 model: original initializer name ->
    # [int initializer, scale, zero point] names ([int initializer] alone for a QLinearConv/QGemm bias, whose
    # scale is s_in * s_w by definition); evaluate reads them there instead of recomputing them
    stored: dict[str, list[str]] = field(default_factory=dict)


def record(plan: Plan, group: Group, form: str, weight_scales=None, bias_q=None, constants=None,
           stored=None) -> QuantizedOp:
    act = plan.graph.node[group.act].op_type if group.act is not None else None
    bounds = activation_bounds(plan.graph.node[group.act], plan.constants) if act is not None else None
    return QuantizedOp(
        node=group.name, op_type=group.op_type, inputs=list(group.act_inputs), output=group.outputs[0],
        weight_scales=None if weight_scales is None else [float(s) for s in np.atleast_1d(weight_scales)],
        weight=group.weight, weight_axis=group.weight_axis,
        bias=None if bias_q is None else [int(v) for v in bias_q], fused=act, constants=dict(constants or {}),
        outputs=list(group.outputs), form=form, act_bounds=bounds, stored=dict(stored or {}),
    )
