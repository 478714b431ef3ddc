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
