"""QDQ form of one node: float op reading DequantizeLinear outputs, its quantized outputs followed by
QuantizeLinear -> DequantizeLinear. onnxruntime's QDQ optimizer turns DQ -> op -> Q groups into int8 kernels;
ops it cannot fuse still run correctly in float. Also used for nodes that stay fp32 (they read X_dequantized)
and as the fallback of the qoperator format.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..prepare.graph import outer_names, rename_reads, subgraphs
from .builder import Builder
from .plan import QuantizedOp, record


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for k, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[k]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _float_weight_view(plan, node: onnx.NodeProto) -> tuple[int, int] | None:
    """(axis, channels) of the input of a float Conv/ConvTranspose/Gemm with a constant weight (Builder.float_view
    says why it needs one), or None."""
    w = plan.constants.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim < 2:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return 1, w.shape[1] * int(attrs.get("group", 1))
    if node.op_type == "ConvTranspose":
        return 1, w.shape[0]
    if node.op_type == "Gemm":
        return (0 if attrs.get("transA", 0) else 1), w.shape[1 if attrs.get("transB", 0) else 0]
    return None


def emit_qdq(b: Builder, i: int, qset: set[str]) -> QuantizedOp | None:
    plan = b.plan
    node = plan.graph.node[i]
    group = plan.groups.get(i)
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.name = plan.names[i]
    inputs = list(node.input)
    w_scales = bias_q = None
    consts, stored = {}, {}
    if group is not None and group.weight_array is not None:
        wq = b.weight(group)
        inputs[1] = b.dequantized(wq)
        w_scales = wq.scales
        stored[group.weight] = wq.names
        if group.bias_array is not None and b.int32_bias:
            bq, bias_q = b.bias(group, b.qp(group.act_inputs[0]).scale, wq.scales)
            inputs[2] = b.dequantized(bq)
            stored[group.bias] = bq.names
        elif group.bias_array is not None:  # the bias stays float (tensorrt, openvino targets)
            if group.attrs:  # Gemm: with beta folded into it
                inputs[2] = b.add_init(b.unique(f"{group.bias}_folded"), group.bias_array)
            stored[group.bias] = [inputs[2]]
        for name, value in group.attrs.items():
            _set_attr(new, name, value)
    if group is not None:
        for name in group.const_inputs:
            cq = b.constant(name)
            consts[name] = (float(cq.scales), 0)
            stored[name] = cq.names
            inputs = [b.dequantized(cq) if x == name else x for x in inputs]
    inputs = [b.deq(x) if x in qset else x for x in inputs]
    if group is None and node.input and node.input[0] in qset:
        view = _float_weight_view(plan, node)
        if view is not None:
            inputs[0] = b.float_view(node.input[0], *view)
    del new.input[:]
    new.input.extend(inputs)
    for sub in subgraphs(new):  # If/Loop bodies read quantized outer activations like any float consumer
        for x in outer_names(sub) & qset:
            rename_reads(sub, x, b.deq(x), nested=True)
    outputs = [b.src(x) if x in qset else x for x in node.output]
    del new.output[:]
    new.output.extend(outputs)
    b.nodes.append(new)
    for x in node.output:
        if x in qset:
            b.quantize(x)
            b.dequantize(x)
    if group is None:
        return None
    return record(plan, group, "qdq", w_scales, bias_q, consts, stored)


def _is_activation_q(node: onnx.NodeProto, inits: set[str]) -> bool:
    return node.op_type == "QuantizeLinear" and node.input[0] not in inits


def dedicate_pairs(graph: onnx.GraphProto) -> None:
    """Give every reader of a quantized activation its own QuantizeLinear -> DequantizeLinear pair, sharing the
    scale and zero point initializers (so the values are the same). Why: onnxruntime's default x86 session
    first gives each reader its own DequantizeLinear, then QDQS8ToU8Transformer rewrites an int8 pair to uint8
    only when the QuantizeLinear feeds exactly one DequantizeLinear and is no graph output; an op whose input
    stays int8 is not fused and runs in float (a residual block's Conv and Add). onnxruntime's quantizer calls
    this DedicatedQDQPair. The first reader keeps X_quantized / X_dequantized; the others read
    X_quantized_k -> X_dequantized_k (k = 2, 3, ...). A DequantizeLinear that writes a graph output keeps only
    that: every node reading it gets a pair of its own."""
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    taken = inits | {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
    node_names = {n.name for n in graph.node}
    slots: dict[str, list[tuple[onnx.NodeProto, int | None]]] = {}  # tensor -> (reader, input index | subgraphs)
    for node in graph.node:
        for k, name in enumerate(node.input):
            slots.setdefault(name, []).append((node, k))
        for name in sorted(set().union(*(outer_names(sub) for sub in subgraphs(node)))):
            slots.setdefault(name, []).append((node, None))

    def fresh(base: str, used: set[str]) -> str:
        k = 2
        while f"{base}_{k}" in used:
            k += 1
        used.add(f"{base}_{k}")
        return f"{base}_{k}"

    by_name = {t.name: t for t in graph.initializer}
    new_inits: list[onnx.TensorProto] = []

    def copy(template: onnx.NodeProto, inputs: list[str], output: str) -> onnx.NodeProto:
        """template reading `inputs[0]`, writing `output`, with copies of its scale and zero point under new
        names: onnxruntime's CommonSubexpressionElimination merges nodes with the same inputs back into one."""
        new = onnx.NodeProto()
        new.CopyFrom(template)
        new.name = fresh(template.name, node_names)
        new.input[0] = inputs[0]
        new.output[0] = output
        for k in range(1, len(new.input)):
            init = onnx.TensorProto()
            init.CopyFrom(by_name[template.input[k]])
            init.name = new.input[k] = fresh(template.input[k], taken)
            new_inits.append(init)
        return new

    def pair(q: onnx.NodeProto, dq: onnx.NodeProto, reader: onnx.NodeProto, k: int | None) -> list[onnx.NodeProto]:
        """A new Q -> DQ copy of (q, dq) for one input slot of `reader`."""
        dq_base = f"{dq.output[0]}_dequantized" if dq.output[0] in outputs else dq.output[0]
        q_out, dq_out = fresh(q.output[0], taken), fresh(dq_base, taken)
        if k is None:
            for sub in subgraphs(reader):
                rename_reads(sub, dq.output[0], dq_out, nested=True)
        else:
            reader.input[k] = dq_out
        return [copy(q, [q.input[0]], q_out), copy(dq, [q_out], dq_out)]

    after: dict[int, list[onnx.NodeProto]] = {}  # id(original QuantizeLinear) -> the new nodes that follow it
    for q in [n for n in graph.node if _is_activation_q(n, inits)]:
        readers = slots.get(q.output[0], [])
        dqs = [(r, k) for r, k in readers if r.op_type == "DequantizeLinear" and k == 0]
        if len(dqs) != len(readers) or not dqs:
            continue  # a QLinear op reads X_quantized itself (qoperator form): nothing to split
        for n, (dq, _) in enumerate(dqs):
            new = []
            if n > 0 or q.output[0] in outputs:  # this DequantizeLinear gets a QuantizeLinear of its own
                q_out = fresh(q.output[0], taken)
                new.append(copy(q, [q.input[0]], q_out))
                dq.input[0] = q_out
            shared = slots.get(dq.output[0], [])
            for reader, k in shared[0 if dq.output[0] in outputs else 1:]:
                new.extend(pair(q, dq, reader, k))
            after.setdefault(id(q), []).extend(new)  # q precedes every reader
    graph.initializer.extend(new_inits)
    if after:
        nodes = [m for node in graph.node for m in (node, *after.get(id(node), []))]
        del graph.node[:]
        graph.node.extend(nodes)


def duplicate_quantizers(graph: onnx.GraphProto) -> dict[str, str]:
    """Output of each QuantizeLinear that repeats an earlier one (same input, scale and zero point, as
    dedicate_pairs writes them) -> that earlier one's output: the same int8 values."""
    inits = {t.name for t in graph.initializer}
    first: dict[tuple, str] = {}
    same = {}
    for node in graph.node:
        if _is_activation_q(node, inits):
            key = (tuple(node.input), tuple((a.name, a.SerializeToString()) for a in node.attribute))
            if key in first:
                same[node.output[0]] = first[key]
            else:
                first[key] = node.output[0]
    return same
