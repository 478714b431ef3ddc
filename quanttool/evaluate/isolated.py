"""The "isolated" model: the fp32 graph plus, for every quantized op, a clone that sees only that op's own
quantization. One onnxruntime run of it gives every fp32 activation and every isolated output at once.

A clone reads fake-quantized copies of the op's fp32 activation inputs (QuantizeLinear -> DequantizeLinear
with the table's parameters), and its weights, bias and constant operands exactly as the int8 model stores
them: its int8 (int32 for a bias) initializers, scales and zero points, copied behind a DequantizeLinear.
They are read, never recomputed, so options that change them (--reduce-range, weight-side PTQ) cannot make
the isolated numbers describe another model. An absorbed Relu/Clip is cloned after it, then the output is
fake-quantized with its own parameters. evaluate runs this model with onnxruntime's QDQ handling off, so
each clone is a float op on the dequantized weights (fake-quant arithmetic; see run.py). New names carry the
suffix `__eval`, which the converter never uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..qparams import QParam, qrange
from ..rewrite import upgrade_opset
from ..rewrite.plan import QuantizedOp, make_plan, table_qparam
from ..rewrite.weights import bias_scale

SUFFIX = "__eval"


@dataclass
class Isolated:
    model: onnx.ModelProto  # the fp32 graph (opset >= 13, as the converter sees it) plus the clones
    outputs: dict[str, str]  # quantized op's output tensor -> its isolated (fake-quantized) clone output
    notes: list[str]


class FakeQuantGraph:
    """Appends fake-quant nodes and initializers to a graph under unique `__eval` names."""

    def __init__(self, graph: onnx.GraphProto, bits: int) -> None:
        self.graph = graph
        self.bits = bits
        self.taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        self.taken |= {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
        self.nodes: list[onnx.NodeProto] = []
        self.fq: dict[tuple[str, float, int], str] = {}

    def unique(self, base: str) -> str:
        name, k = f"{base}{SUFFIX}", 1
        while name in self.taken:
            name, k = f"{base}{SUFFIX}{k}", k + 1
        self.taken.add(name)
        return name

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.unique(base)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def dequantized(self, base: str, stored: list[np.ndarray], axis: int | None, nodes: list[onnx.NodeProto]) -> str:
        """A constant as the int8 model stores it ([int values, scale, zero point] + DequantizeLinear):
        onnxruntime folds the DequantizeLinear into a float initializer with its own arithmetic, the int8
        model's dequantized value."""
        q, scale, zero_point = stored
        names = [self.constant(f"{base}_quantized", q), self.constant(f"{base}_scale", scale),
                 self.constant(f"{base}_zero_point", zero_point)]
        out = self.unique(f"{base}_dequantized")
        attrs = {"axis": axis} if axis is not None and scale.ndim == 1 else {}
        nodes.append(helper.make_node("DequantizeLinear", names, [out], name=self.unique(f"{base}_DQ"), **attrs))
        return out

    def fake_quant(self, x: str, qp: QParam, nodes: list[onnx.NodeProto]) -> str:
        """x -> QuantizeLinear -> DequantizeLinear (shared per tensor and parameters); with bits < 8 a Clip
        narrows the int8 grid to the bit width's levels."""
        key = (x, float(qp.scale), int(qp.zero_point))
        if key in self.fq:
            return self.fq[key]
        scale = self.constant(f"{x}_scale", np.array(qp.scale, dtype=np.float32))
        zp = self.constant(f"{x}_zero_point", np.array(int(qp.zero_point), dtype=np.int8))
        q, dq = self.unique(f"{x}_quantized"), self.unique(f"{x}_fakequant")
        nodes.append(helper.make_node("QuantizeLinear", [x, scale, zp], [q], name=self.unique(f"{x}_Q")))
        nodes.append(helper.make_node("DequantizeLinear", [q, scale, zp], [dq], name=self.unique(f"{x}_DQ")))
        if self.bits < 8:
            qmin, qmax = qrange(self.bits)
            lo = self.constant(f"{x}_lo", np.array((qmin - qp.zero_point) * qp.scale, dtype=np.float32))
            hi = self.constant(f"{x}_hi", np.array((qmax - qp.zero_point) * qp.scale, dtype=np.float32))
            clipped = self.unique(f"{x}_clipped")
            nodes.append(helper.make_node("Clip", [dq, lo, hi], [clipped], name=self.unique(f"{x}_Clip")))
            dq = clipped
        self.fq[key] = dq
        return dq


def _stored(int8: onnx.ModelProto, op: QuantizedOp) -> dict[str, list[np.ndarray]] | str:
    """The op's weight, bias and constant operands as arrays read from the int8 model, or why they cannot be."""
    inits = {t.name: t for t in int8.graph.initializer}
    arrays = {}
    for name, names in op.stored.items():
        missing = [n for n in names if n not in inits]
        if missing:
            return f"the int8 model has no initializer {missing[0]!r} for {name!r}"
        arrays[name] = [numpy_helper.to_array(inits[n]) for n in names]
    return arrays


def build(fp32: onnx.ModelProto, table: dict, quantized: list[QuantizedOp], int8: onnx.ModelProto,
          bits: int = 8) -> Isolated:
    """`bits`: the activations' bit width (fake-quant grid); weights come from `int8` as they are."""
    model = upgrade_opset(fp32)  # the converter plans on this graph; node names and weights then match
    plan = make_plan(model, table, ())
    by_name = {plan.names[i]: i for i in range(len(plan.graph.node))}
    graph = model.graph
    g = FakeQuantGraph(graph, bits)
    fq_nodes: list[onnx.NodeProto] = []
    clones: list[onnx.NodeProto] = []
    outputs: dict[str, str] = {}
    notes: list[str] = []

    for op in quantized:
        index = by_name.get(op.node)
        out_qp = table_qparam(table, op.output)
        if index is None or out_qp is None:
            notes.append(f"{op.node}: not found in the fp32 model or no table entry for {op.output!r}; "
                         f"no isolated measurement")
            continue
        node = graph.node[index]
        group = plan.groups.get(index)
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        clone.name = g.unique(op.node)
        inputs = list(node.input)
        missing = [x for x in op.inputs if table_qparam(table, x) is None]
        if missing:
            notes.append(f"{op.node}: no table entry for input {missing[0]!r}; no isolated measurement")
            continue
        for x in dict.fromkeys(op.inputs):
            fq = g.fake_quant(x, table_qparam(table, x), fq_nodes)
            inputs = [fq if name == x else name for name in inputs]
        stored = _stored(int8, op)
        if isinstance(stored, str):
            notes.append(f"{op.node}: {stored}; no isolated measurement")
            continue
        if group is not None and group.weight_array is not None:
            if group.weight not in stored or (group.bias_array is not None and group.bias not in stored):
                notes.append(f"{op.node}: the int8 model does not say where its weight is stored; "
                             f"no isolated measurement")
                continue
            inputs[1] = g.dequantized(group.weight, stored[group.weight], group.weight_axis, fq_nodes)
            if group.bias_array is not None:
                bias = stored[group.bias]
                if len(bias) == 1 and bias[0].dtype.kind == "f":  # a float bias (--target tensorrt, openvino)
                    inputs[2] = g.constant(group.bias, bias[0])
                elif len(bias) == 1:  # QLinearConv/QGemm: int32 at scale s_in * s_w[c], as the kernel applies it
                    scale = bias_scale(table_qparam(table, op.inputs[0]).scale,
                                       np.broadcast_to(stored[group.weight][1], bias[0].shape))
                    bias = [bias[0], scale, np.zeros(scale.shape, np.int32)]
                if len(bias) == 3:
                    inputs[2] = g.dequantized(group.bias, bias, 0, fq_nodes)
            for name, value in group.attrs.items():  # Gemm alpha/beta, already folded into weight and bias
                for attr in clone.attribute:
                    if attr.name == name:
                        attr.CopyFrom(helper.make_attribute(name, value))
        for name in op.constants:
            if name in stored:
                deq = g.dequantized(name, stored[name], None, fq_nodes)
                inputs = [deq if x == name else x for x in inputs]
        del clone.input[:]
        clone.input.extend(inputs)
        renamed = {o: g.unique(o) for o in node.output if o}
        del clone.output[:]
        clone.output.extend(renamed.get(o, o) for o in node.output)
        clones.append(clone)
        last = renamed.get(node.output[0], node.output[0])
        if op.output not in renamed:  # an absorbed Relu/Clip follows
            act_index = group.act if group is not None else None
            if act_index is None or graph.node[act_index].output[0] != op.output:
                notes.append(f"{op.node}: cannot find the Relu/Clip that writes {op.output!r}; "
                             f"no isolated measurement")
                clones.pop()
                continue
            act = onnx.NodeProto()
            act.CopyFrom(graph.node[act_index])
            act.name = g.unique(act.name or op.output)
            act.input[0] = last
            act.output[0] = g.unique(op.output)
            clones.append(act)
            last = act.output[0]
        else:
            last = renamed[op.output]
        outputs[op.output] = last if op.float_output else g.fake_quant(last, out_qp, clones)

    # fake-quant nodes read only original tensors, clones read fake-quant outputs: appending in this order
    # keeps the graph topologically sorted
    graph.node.extend(fq_nodes)
    graph.node.extend(clones)
    return Isolated(model, outputs, notes)

