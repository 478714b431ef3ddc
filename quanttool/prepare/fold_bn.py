"""BatchNormalization folding. Inference BN is y = x * f + s per channel, with f = gamma / sqrt(var + eps) and
s = beta - mean * f. After a Conv, ConvTranspose or Gemm it folds into that node's weight and bias
(w' = w * f per output channel, b' = b * f + s = (b - mean) * f + beta); elsewhere it becomes a depthwise 1x1
Conv (4-D input) or a per-channel Mul + Add, so later passes only ever see convolutions and elementwise ops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import (DEFAULT_DOMAINS, all_names, graph_output_names, initializers, producers, readers, replace_nodes,
                    tensor_shapes, unique_name)


@dataclass
class _Ctx:
    graph: onnx.GraphProto
    inits: dict
    readers: dict
    outputs: set
    taken: set

    def only_reader(self, name: str, index: int) -> bool:
        return self.readers.get(name, []) == [index] and name not in self.outputs

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.inits.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def add_initializer(self, value: np.ndarray, base: str) -> str:
        """A new initializer holding `value`, under a fresh name made from `base`; its name."""
        name = unique_name(base, self.taken)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.inits[name] = self.graph.initializer[-1]
        return name

    def set_input(self, node: onnx.NodeProto, node_index: int, slot: int, value: np.ndarray, base: str) -> None:
        """Give `node` input `slot` the value: in place when only this node reads the initializer, else a new one."""
        current = node.input[slot] if slot < len(node.input) else ""
        if current and current in self.inits and self.only_reader(current, node_index):
            self.inits[current].CopyFrom(numpy_helper.from_array(value, current))
            return
        name = self.add_initializer(value, base)
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _bn_affine(bn: onnx.NodeProto, ctx: _Ctx) -> tuple[np.ndarray, np.ndarray] | None:
    """(f, s) as float64, or None when this BN cannot be treated as a fixed affine map."""
    attrs = _attrs(bn)
    if attrs.get("training_mode", 0) != 0 or attrs.get("spatial", 1) != 1 or len(bn.input) < 5:
        return None
    if any(name and (name in ctx.outputs or ctx.readers.get(name)) for name in bn.output[1:]):
        return None  # the training statistics outputs are used
    params = [ctx.array(name) for name in bn.input[1:5]]
    if any(p is None for p in params) or len({p.size for p in params}) != 1:
        return None
    gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
    factor = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
    return factor, beta - mean * factor


def fold_batchnorm(graph: onnx.GraphProto) -> int:
    """Fold or convert every inference BatchNormalization; returns how many were rewritten."""
    ctx = _Ctx(graph, initializers(graph), readers(graph), graph_output_names(graph), all_names(graph))
    made = producers(graph)
    ranks = {name: len(shape) for name, shape in tensor_shapes(graph).items()}
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for index, bn in enumerate(graph.node):
        if bn.op_type != "BatchNormalization" or bn.domain not in DEFAULT_DOMAINS:
            continue
        affine = _bn_affine(bn, ctx)
        if affine is None:
            continue
        source = bn.input[0]
        producer = made.get(source)
        if producer is not None and producer not in replacements and ctx.only_reader(source, index) \
                and _fuse(graph.node[producer], producer, *affine, ctx):
            graph.node[producer].output[0] = bn.output[0]  # downstream names survive
            replacements[index] = []
            continue
        nodes = _standalone(bn, *affine, ranks.get(source), ctx)
        if nodes is not None:
            replacements[index] = nodes
    replace_nodes(graph, replacements)
    return len(replacements)


def _fuse(node: onnx.NodeProto, index: int, factor: np.ndarray, shift: np.ndarray, ctx: _Ctx) -> bool:
    if node.domain not in DEFAULT_DOMAINS or len(node.output) != 1 or len(node.input) < 2:
        return False
    weight = ctx.array(node.input[1])
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = ctx.array(bias_name) if bias_name else None
    if weight is None or (bias_name and bias is None):
        return False
    channels = factor.size
    attrs = _attrs(node)
    base = f"{node.name or node.input[1]}"
    if node.op_type in ("Conv", "ConvTranspose"):
        group = attrs.get("group", 1)
        if node.op_type == "Conv":
            if weight.ndim < 3 or weight.shape[0] != channels:
                return False
            new_weight = weight * factor.reshape((-1,) + (1,) * (weight.ndim - 1))
        else:  # weight [Cin, Cout/g, k...]: output channel o = g_idx * (Cout/g) + j
            if weight.ndim < 3 or weight.shape[0] % group or weight.shape[1] * group != channels:
                return False
            per_group = weight.reshape((group, weight.shape[0] // group) + weight.shape[1:])
            scaled = per_group * factor.reshape((group, 1, weight.shape[1]) + (1,) * (weight.ndim - 2))
            new_weight = scaled.reshape(weight.shape)
        old_bias = np.zeros(channels) if bias is None else bias.astype(np.float64).reshape(-1)
        if old_bias.size != channels:
            return False
        ctx.set_input(node, index, 1, new_weight.astype(weight.dtype), f"{base}_weight")
        ctx.set_input(node, index, 2, (old_bias * factor + shift).astype(weight.dtype), f"{base}_bias")
        return True
    if node.op_type == "Gemm":
        return _fuse_gemm(node, index, weight, bias, attrs, factor, shift, ctx, base)
    return False


def _fuse_gemm(node, index, weight, bias, attrs, factor, shift, ctx: _Ctx, base: str) -> bool:
    """Y = alpha * A' B' + beta * C with B' = B ([K,N]) or B^T (B is [N,K] when transB=1): scale B's output
    channels, and set beta = 1 with C' = beta * C * f + s (a missing or scalar C becomes a full [N] bias)."""
    if weight.ndim != 2:
        return False
    trans_b = attrs.get("transB", 0)
    channels = weight.shape[0] if trans_b else weight.shape[1]
    if channels != factor.size:
        return False
    new_weight = weight * (factor[:, None] if trans_b else factor[None, :])
    c = np.zeros(channels) if bias is None else attrs.get("beta", 1.0) * bias.astype(np.float64)
    try:
        new_c = c * factor + shift  # broadcasts scalar, [N], [1,N], [M,N] or [M,1] C to a valid Gemm C
    except ValueError:
        return False
    ctx.set_input(node, index, 1, new_weight.astype(weight.dtype), f"{base}_weight")
    ctx.set_input(node, index, 2, new_c.astype(weight.dtype), f"{base}_bias")
    for attr in node.attribute:
        if attr.name == "beta":
            attr.f = 1.0
    return True


def _standalone(bn: onnx.NodeProto, factor: np.ndarray, shift: np.ndarray, rank: int | None,
                ctx: _Ctx) -> list[onnx.NodeProto] | None:
    """A BN with no foldable producer: depthwise 1x1 Conv for 4-D input, else per-channel Mul + Add."""
    if rank is None or rank < 2:
        return None
    dtype = numpy_helper.to_array(ctx.inits[bn.input[1]]).dtype
    channels = factor.size
    base = bn.name or bn.output[0]

    def constant(value: np.ndarray, suffix: str) -> str:
        name = unique_name(f"{base}_{suffix}", ctx.taken)
        ctx.graph.initializer.append(numpy_helper.from_array(value.astype(dtype), name))
        return name

    if rank == 4:
        weight = constant(factor.reshape(channels, 1, 1, 1), "weight")
        bias = constant(shift, "bias")
        return [helper.make_node("Conv", [bn.input[0], weight, bias], [bn.output[0]], name=bn.name,
                                 group=channels, kernel_shape=[1, 1])]
    trailing = (1,) * (rank - 2)  # channel axis 1, so [C, 1, ...] broadcasts from the right
    scale = constant(factor.reshape((channels,) + trailing), "scale")
    offset = constant(shift.reshape((channels,) + trailing), "shift")
    scaled = unique_name(f"{base}_scaled", ctx.taken)
    return [helper.make_node("Mul", [bn.input[0], scale], [scaled], name=f"{bn.name}_mul" if bn.name else ""),
            helper.make_node("Add", [scaled, offset], [bn.output[0]], name=bn.name)]
