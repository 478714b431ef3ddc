"""qoperator form of one quantized node: a QLinear* operator (onnx or com.microsoft domain) reading and
writing int8 directly, or the node itself on int8 for data-movement ops whose input and output qparams are
equal. Returns None when onnxruntime's CPU provider has no int8 kernel for the case, and the caller falls back
to the QDQ form for that node (`qdq.py`).

Choices (onnxruntime 1.17+ CPU):
- Conv -> QLinearConv with per-channel int8 weight scales and int32 bias.
- MatMul -> QLinearMatMul (per-column weight scales for a constant weight; per-tensor for two activations).
- Gemm -> com.microsoft QGemm (per-column weight scales, int32 bias, alpha already folded into the weight).
- Add, Mul, Concat, GlobalAveragePool, AveragePool, Sigmoid, LeakyRelu, Softmax -> com.microsoft QLinear*.
- MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Resize, Slice, Gather, Split, DepthToSpace,
  SpaceToDepth: the same op on int8 when every output has the input's scale and zero point.
- ConvTranspose, HardSigmoid, Pad, Expand, Tile, lone Relu/Clip: QDQ form.
"""

from __future__ import annotations

from onnx import helper

from ..ops import OPS, ops_where
from .builder import Builder
from .plan import QuantizedOp, record

MS = "com.microsoft"
INT8_DIRECT = ops_where(int8_direct=True)
UNARY = {op: entry.qlinear for op, entry in OPS.items() if entry.qlinear}


def _qin(b: Builder, x: str) -> list[str]:
    return [f"{x}_quantized", *b.act_qparams(x)]


def emit_qoperator(b: Builder, i: int, opset: int) -> QuantizedOp | None:
    plan = b.plan
    group = plan.groups.get(i)
    if group is None:
        return None
    node = plan.graph.node[i]
    op = group.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    out = group.outputs[0]
    name = plan.names[i]

    if group.kind == "pass" or op in INT8_DIRECT:
        if op not in INT8_DIRECT or len(node.output) != len(group.outputs):
            return None
        qp_in = b.qp(group.act_inputs[0])
        if any(b.qp(x) != qp_in for x in group.outputs):
            return None
        inputs = [f"{x}_quantized" if k == 0 else x for k, x in enumerate(node.input)]
        outputs = [b.claim(f"{x}_quantized") for x in node.output]
        b.add_node(op, inputs, outputs, name, keep_name=True, **attrs)
        return _finish(b, group, f"{op}(int8)")

    if op == "Conv" and group.weight_array is not None:
        wq = b.weight(group)
        ins = _qin(b, group.act_inputs[0]) + [wq.q, wq.scale, wq.zero_point, *b.act_qparams(out)]
        bias_q, stored = None, {group.weight: wq.names}
        if group.bias_array is not None:
            bq, bias_q = b.bias(group, b.qp(group.act_inputs[0]).scale, wq.scales)
            ins.append(bq.q)
            stored[group.bias] = [bq.q]  # the kernel scales it by s_in * s_w itself
        b.add_node("QLinearConv", ins, [b.claim(f"{out}_quantized")], name, keep_name=True, **attrs)
        return _finish(b, group, "QLinearConv", wq.scales, bias_q, stored=stored)

    if op == "MatMul":
        if group.weight_array is not None:
            if group.weight_array.ndim != 2:
                return None
            wq = b.weight(group)
            b_in, w_scales, stored = [wq.q, wq.scale, wq.zero_point], wq.scales, {group.weight: wq.names}
        else:
            b_in, w_scales, stored = _qin(b, group.act_inputs[1]), None, {}
        ins = _qin(b, group.act_inputs[0]) + b_in + list(b.act_qparams(out))
        b.add_node("QLinearMatMul", ins, [b.claim(f"{out}_quantized")], name, keep_name=True)
        return _finish(b, group, "QLinearMatMul", w_scales, stored=stored)

    if op == "Gemm" and group.weight_array is not None:
        wq = b.weight(group)
        ins = _qin(b, group.act_inputs[0]) + [wq.q, wq.scale, wq.zero_point]
        bias_q, stored = None, {group.weight: wq.names}
        if group.bias_array is not None:
            bq, bias_q = b.bias(group, b.qp(group.act_inputs[0]).scale, wq.scales)
            ins.append(bq.q)
            stored[group.bias] = [bq.q]  # the kernel scales it by s_in * s_w itself
        else:
            ins.append("")
        ins += list(b.act_qparams(out))
        b.add_node("QGemm", ins, [b.claim(f"{out}_quantized")], name, keep_name=True, domain=MS,
                   transB=int(attrs.get("transB", 0)), alpha=1.0)
        return _finish(b, group, "QGemm", wq.scales, bias_q, stored=stored)

    if op in ("Add", "Mul", "Concat"):
        operands, consts, stored = [], {}, {}
        for x in node.input:
            if x in group.const_inputs:
                cq = b.constant(x)
                operands.append(cq.names)
                consts[x] = (float(cq.scales), 0)
                stored[x] = cq.names
            else:
                operands.append(_qin(b, x))
        if op == "Concat":
            ins = list(b.act_qparams(out)) + [t for operand in operands for t in operand]
            b.add_node("QLinearConcat", ins, [b.claim(f"{out}_quantized")], name, keep_name=True, domain=MS,
                       axis=attrs["axis"])
        else:
            if len(operands) != 2:
                return None
            ins = operands[0] + operands[1] + list(b.act_qparams(out))
            b.add_node(f"QLinear{op}", ins, [b.claim(f"{out}_quantized")], name, keep_name=True, domain=MS)
        return _finish(b, group, f"QLinear{op}", constants=consts, stored=stored)

    if op in UNARY:
        if op == "Softmax":
            attrs = {"axis": int(attrs.get("axis", -1 if opset >= 13 else 1)), "opset": opset}
        if op in ("GlobalAveragePool", "AveragePool"):
            attrs["channels_last"] = 0
        ins = _qin(b, group.act_inputs[0]) + list(b.act_qparams(out))
        b.add_node(UNARY[op], ins, [b.claim(f"{out}_quantized")], name, keep_name=True, domain=MS, **attrs)
        return _finish(b, group, UNARY[op])
    return None


def _finish(b: Builder, group, form: str, w_scales=None, bias_q=None, constants=None, stored=None) -> QuantizedOp:
    for x in group.outputs:
        b.dequantize(x)
    return record(b.plan, group, form, w_scales, bias_q, constants, stored)
