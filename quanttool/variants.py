"""Many int8 configurations of one model in a single float graph, for sensitivity and the fallback search.

A configuration is the set of quantizable ops (the converter's compute groups, by node index) that run int8;
the others stay float. Each configuration is simulated with fake quantization, as evaluate's isolated model
does (quanttool/evaluate/isolated.py): QuantizeLinear -> DequantizeLinear on every tensor the int8 model would
quantize, int8 weights and int32 biases behind DequantizeLinear, run with onnxruntime's QDQ handling off so
every op is a float op on the rounded values.

All configurations live in one graph, and a node is emitted once per distinct computation: its key is the node,
whether its weights are quantized, and the keys of its inputs (hash-consing). So configurations share every
node up to the first op where they differ: "only layer L int8" shares the fp32 graph up to L, "all but L"
shares the all-int8 graph up to L, and one onnxruntime run gives every configuration's outputs.

Which tensors are quantized follows the converter's plan (quanttool/rewrite/plan.py): a compute op's activation
inputs and outputs; a pass-through op's output when its input is quantized; graph outputs (and what reaches them
through pass-through ops) stay float unless int8_outputs, as convert does by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper

from .evaluate.isolated import FakeQuantGraph
from .prepare.graph import is_static, tensor_shapes
from .qparams import QParam
from .rewrite import upgrade_opset
from .rewrite.plan import Plan, float_tails, make_plan
from .rewrite.weights import bias_fit_scale, bias_scale, constant_qparam, quantize_bias, quantize_weight
from .targets import TARGETS, Target


@dataclass
class Layer:
    """One quantizable op: the unit that sensitivity measures and the fallback keeps float."""

    index: int           # node index in the plan's graph
    name: str            # node name (what --exclude takes)
    op_type: str
    weights: int         # number of weight values (0 for ops without weights)
    macs: int | None = None  # multiply-accumulates per image (None: a shape is unknown)


def multiply_accumulates(node: onnx.NodeProto, weight: np.ndarray | None, shapes: dict) -> int | None:
    """Per image, of a Conv/ConvTranspose/Gemm/MatMul (0 for other ops: elementwise work is negligible), so the
    fallback can say how much of the compute stays int8; weights alone understate early high-resolution convs."""
    def elements(name):
        shape = shapes.get(name)
        return int(np.prod(shape)) if is_static(shape) else None

    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return 0
    out, inp = elements(node.output[0]), elements(node.input[0])
    if node.op_type == "Conv" and weight is not None and out is not None:
        return out * (weight.size // weight.shape[0])          # each output value: Cin/group * kernel products
    if node.op_type == "ConvTranspose" and weight is not None and inp is not None:
        return inp * (weight.size // weight.shape[0])          # each input value: Cout/group * kernel products
    shape_out, shape_in = shapes.get(node.output[0]), shapes.get(node.input[0])
    if out is None or not shape_out or not shape_in or shape_in[-1] is None:
        return None
    return out * (weight.size // shape_out[-1] if weight is not None else shape_in[-1])  # out values * K


@dataclass
class Variants:
    model: onnx.ModelProto
    outputs: list[dict[str, str]]  # per configuration: graph output -> the tensor holding it in `model`


class Simulator:
    """The converter's plan for a prepared model and table, and fake-quant graphs of chosen configurations."""

    def __init__(self, model: onnx.ModelProto, table: dict, *, exclude: Sequence[str] = (), weight_bits: int = 8,
                 int8_outputs: bool = False, target: Target | None = None,
                 int8_weights: onnx.ModelProto | None = None) -> None:
        """`int8_weights`: the same graph with the weights and biases convert quantizes when they differ from
        `model`'s (--adaround, --weight-clip, --bias-correct); the float configuration keeps `model`'s, so it
        stays the fp32 reference."""
        self.model = upgrade_opset(model)
        self.table = table
        self.bits = 8  # activations are int8; weight_bits is 7 under --reduce-range
        self.weight_bits = weight_bits
        self.target = target or TARGETS["onnxruntime"]  # as convert's default
        plan = make_plan(self.model, table, exclude, self.target)
        read = {name for node in plan.graph.node for name in node.input}
        outputs = {o.name for o in plan.graph.output} - read
        self.float_outputs = (set() if int8_outputs else float_tails(plan, outputs)) | plan.float_outputs
        self.plan: Plan = plan
        self.int8_groups = plan.groups
        if int8_weights is not None:
            other = make_plan(upgrade_opset(int8_weights), table, exclude, self.target)
            if [n.op_type for n in other.graph.node] != [n.op_type for n in plan.graph.node]:
                raise ValueError("int8_weights must be the same graph as the model, with other initializers")
            self.int8_groups = other.groups
        shapes = tensor_shapes(plan.graph)
        self.layers = [Layer(i, g.name, g.op_type, int(g.weight_array.size) if g.weight_array is not None else 0,
                             multiply_accumulates(plan.graph.node[i], g.weight_array, shapes))
                       for i, g in plan.groups.items() if g.kind == "compute"]

    def qp(self, name: str) -> QParam:
        qp = self.table[name]
        return qp if isinstance(qp, QParam) else QParam(*qp)

    def quantized_tensors(self, config: frozenset[int]) -> set[str]:
        """The tensors the int8 model of this configuration quantizes (see the module docstring)."""
        plan, tensors = self.plan, set()
        for i, group in plan.groups.items():
            if group.kind == "compute" and i in config:
                tensors.update(group.act_inputs)
                if not self.target.inputs_only:  # TensorRT/OpenVINO layout: Q/DQ on int8 ops' inputs only
                    tensors.update(o for o in group.outputs if o not in self.float_outputs)
        for i, group in plan.groups.items():  # graph order: a chain of pass-through ops follows its input
            if group.kind == "pass" and group.act_inputs[0] in tensors:
                tensors.update(o for o in group.outputs if o not in self.float_outputs)
        return tensors

    def build(self, configs: Sequence[Iterable[int]]) -> Variants:
        """One float graph holding every configuration (index sets of self.layers' node indices)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        graph = model.graph
        original = list(graph.node)
        del graph.node[:]
        g = FakeQuantGraph(graph, self.bits)
        emitted: dict[tuple, list[str]] = {}  # node key -> its output names in the new graph
        weights: dict[int, dict[int, str]] = {}  # node index -> {input position: dequantized constant}
        nodes: list[onnx.NodeProto] = []
        graph_inputs = [i.name for i in graph.input]
        results = []
        for number, config in enumerate([frozenset()] + [frozenset(c) for c in configs]):
            quantized = self.quantized_tensors(config)
            env: dict[str, str] = {}  # original tensor -> its name in this configuration
            for x in graph_inputs:
                env[x] = g.fake_quant(x, self.qp(x), nodes) if x in quantized else x
            for i, node in enumerate(original):
                group = self.plan.groups.get(i)
                int8_consts = bool(group is not None and group.kind == "compute" and i in config and
                                   (group.weight_array is not None or group.const_inputs))
                inputs = [env.get(x, x) for x in node.input]
                key = (i, int8_consts, tuple(inputs))
                if key not in emitted:
                    emitted[key] = self._emit(g, node, i, inputs, int8_consts, weights, nodes, first=number == 0)
                for out, name in zip(node.output, emitted[key]):
                    env[out] = g.fake_quant(name, self.qp(out), nodes) if out in quantized else name
            results.append({o.name: env[o.name] for o in graph.output})
        graph.node.extend(nodes)
        return Variants(model, results[1:])

    def _emit(self, g: FakeQuantGraph, node, i: int, inputs: list[str], int8_consts: bool, weights: dict,
              nodes: list, first: bool) -> list[str]:
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        if int8_consts:
            for position, name in self._constants(g, i, weights, nodes).items():
                inputs.extend([""] * (position + 1 - len(inputs)))  # a bias the weight methods added
                inputs[position] = name
            for attr_name, value in self.plan.groups[i].attrs.items():  # Gemm alpha/beta folded into W and B
                for attr in clone.attribute:
                    if attr.name == attr_name:
                        attr.CopyFrom(helper.make_attribute(attr_name, value))
        del clone.input[:]
        clone.input.extend(inputs)
        if not first:  # the fp32 configuration keeps the original names; every other copy gets new ones
            clone.name = g.unique(node.name or node.op_type)
            del clone.output[:]
            clone.output.extend(g.unique(o) if o else "" for o in node.output)
        nodes.append(clone)
        return list(clone.output)

    def _constants(self, g: FakeQuantGraph, i: int, cache: dict, nodes: list) -> dict[int, str]:
        """Node i's weight, bias and constant operands as the converter stores them (int8/int32 + DQ), once."""
        if i in cache:
            return cache[i]
        group, node = self.int8_groups[i], self.plan.graph.node[i]
        found: dict[int, str] = {}
        if group.weight_array is not None:
            floor = 0.0  # the converter raises a channel's weight scale where the int32 bias would not fit
            if group.bias_array is not None:
                floor = bias_fit_scale(group.bias_array, self.qp(group.act_inputs[0]).scale,
                                       group.weight_axis is not None)
            q, w_scales = quantize_weight(group.weight_array, group.weight_axis, self.weight_bits, floor)
            found[1] = g.dequantized(group.weight or "weight", [q, w_scales, np.zeros(w_scales.shape, np.int8)],
                                     group.weight_axis, nodes)
            if group.bias_array is not None and self.target.int32_bias:  # else the float bias stays
                channels = group.bias_array.size
                s_b = bias_scale(self.qp(group.act_inputs[0]).scale, np.broadcast_to(w_scales, (channels,)))
                q_b = quantize_bias(group.bias_array, s_b, group.name)
                found[2] = g.dequantized(group.bias or "bias", [q_b, s_b, np.zeros(s_b.shape, np.int32)], 0, nodes)
        for name in group.const_inputs:
            value = self.plan.constants[name]
            scale = np.float32(constant_qparam(value, self.bits).scale)
            qmax = 2 ** (self.bits - 1) - 1
            q = np.clip(np.round(value.astype(np.float64) / scale), -qmax, qmax).astype(np.int8)
            deq = g.dequantized(name, [q, np.array(scale), np.array(0, np.int8)], None, nodes)
            for position, x in enumerate(node.input):
                if x == name:
                    found[position] = deq
        cache[i] = found
        return found
