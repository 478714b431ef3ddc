"""Fold elementwise affine ops with constant operands (Mul, Add, Sub, Div by a scalar or per-channel constant)
into the Conv/ConvTranspose/Gemm next to them, exactly, as BatchNormalization folding does.

Why: every op quanttool quantizes requantizes its output, so a spelled-out affine map costs int8 precision for
no compute. PP-LCNet (PP-OCRv4's recogniser backbone) wraps every conv in "learnable affine blocks"
(conv -> Mul a -> Add b -> hardswish -> Div 6 -> Mul a' -> Add b' -> conv): about eight requantizations per conv
where three or four do. After folding, a block reads conv -> Add 3 -> Clip -> Mul (hardswish) [-> Add] -> conv
(this alone does not rescue that model's int8: its per-tensor channel ranges cost more, README "PP-OCRv4
recogniser").

Rewrites, each exact in real arithmetic, applied until none applies:
- into the producer: Conv/ConvTranspose/Gemm -> affine (its only reader): w' = w * f, b' = b * f + s per output
  channel (fold_bn's fusion);
- into the consumer: affine -> Conv (its only reader), tried first for offsets, which would otherwise stay in
  the quantized tensor between the layers: the scale goes into the Conv's input-channel weights
  (exact with zero padding too: a padded zero stays zero); the offset goes into the bias only when the Conv pads
  nothing (a padded zero would otherwise have to become the offset);
- Mul f -> Add s before a padded Conv becomes Add s/f -> Mul f, so the scale still folds;
- two scales (or two offsets) in a row become one.
A constant must be a scalar or per-channel along axis 1 (both for Conv's NCHW and Gemm's [M, N]).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .fold_bn import _Ctx, _fuse
from .graph import (DEFAULT_DOMAINS, all_names, attribute, graph_output_names, initializers, producers, readers,
                    replace_nodes, tensor_shapes, unique_name)

PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


def _affine(node: onnx.NodeProto, ctx: _Ctx) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(data input, f, s) with node(x) = x * f + s, f and s float64 arrays of the constant's shape; else None."""
    if node.domain not in DEFAULT_DOMAINS or node.op_type not in ("Mul", "Add", "Sub", "Div") or len(node.input) != 2:
        return None
    k = [i for i in (0, 1) if node.input[i] not in ctx.inits]
    if len(k) != 1:
        return None
    const = ctx.array(node.input[1 - k[0]])
    if const.dtype != np.float32:
        return None
    data, c = node.input[k[0]], const.astype(np.float64)
    if not np.isfinite(c).all():
        return None
    one, zero = np.ones_like(c), np.zeros_like(c)
    if node.op_type == "Mul":
        return data, c, zero
    if node.op_type == "Add":
        return data, one, c
    if node.op_type == "Sub":
        return (data, one, -c) if k[0] == 0 else (data, -one, c)
    if k[0] == 0 and np.all(c != 0):  # Div: x / c only (c / x is not affine)
        return data, 1.0 / c, zero
    return None


def _per_channel(c: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """A constant as one value per channel (axis 1 of a rank-`rank` tensor), or None when it varies along
    another axis or would broadcast the tensor to a larger shape."""
    if c.ndim > rank or rank < 2:
        return None
    if c.size == 1:
        return np.full(channels, float(c.reshape(-1)[0]))
    shape = (1,) * (rank - c.ndim) + c.shape
    if shape[1] != channels or any(d != 1 for k, d in enumerate(shape) if k != 1):
        return None
    return c.reshape(-1)


def _out_channels(node: onnx.NodeProto, weight: np.ndarray) -> tuple[int, int] | None:
    """(rank of the output, output channels) of a Conv/ConvTranspose/Gemm."""
    if node.op_type == "Conv":
        return weight.ndim, weight.shape[0]
    if node.op_type == "ConvTranspose":
        return weight.ndim, weight.shape[1] * int(attribute(node, "group", 1))
    if weight.ndim != 2:
        return None
    return 2, weight.shape[0] if attribute(node, "transB", 0) else weight.shape[1]


def _into_producer(graph: onnx.GraphProto, ctx: _Ctx, edits: dict[int, list]) -> None:
    made = producers(graph)
    for index, node in enumerate(graph.node):
        affine = None if index in edits else _affine(node, ctx)
        if affine is None:
            continue
        data, f, s = affine
        p = made.get(data)
        if p is None or p in edits or not ctx.only_reader(data, index) or graph.node[p].op_type not in PRODUCERS:
            continue
        producer = graph.node[p]
        weight = ctx.array(producer.input[1]) if len(producer.input) > 1 else None
        shape = _out_channels(producer, weight) if weight is not None else None
        if shape is None:
            continue
        fv, sv = _per_channel(f, *shape), _per_channel(s, *shape)
        if fv is None or sv is None or not _fuse(producer, p, fv, sv, ctx):
            continue
        producer.output[0] = node.output[0]  # downstream names survive
        edits[index], edits[p] = [], [producer]


def _conv_reader(graph: onnx.GraphProto, ctx: _Ctx, name: str) -> tuple[int, np.ndarray] | None:
    """(index, weight) of the Conv that is the only reader of `name`, reading it as its data input."""
    users = ctx.readers.get(name, [])
    if len(users) != 1 or name in ctx.outputs:
        return None
    conv = graph.node[users[0]]
    if conv.op_type != "Conv" or conv.domain not in DEFAULT_DOMAINS or conv.input[0] != name \
            or list(conv.input[1:]).count(name):
        return None
    weight = ctx.array(conv.input[1]) if len(conv.input) > 1 else None
    bias = conv.input[2] if len(conv.input) > 2 else ""
    if weight is None or weight.ndim < 3 or (bias and ctx.array(bias) is None):
        return None
    return users[0], weight


def _unpadded(conv: onnx.NodeProto) -> bool:
    auto = attribute(conv, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto == "VALID" or (auto == "NOTSET" and not any(attribute(conv, "pads", [])))


def _input_index(conv: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """[out, in/group] -> the input channel each weight column reads."""
    group = int(attribute(conv, "group", 1))
    out, per_group = weight.shape[0], weight.shape[1]
    return (np.arange(out) // (out // group))[:, None] * per_group + np.arange(per_group)[None, :]


def _into_consumer(graph: onnx.GraphProto, ctx: _Ctx, edits: dict[int, list], offsets_only: bool = False) -> None:
    for index, node in enumerate(graph.node):
        affine = None if index in edits else _affine(node, ctx)
        if affine is None or (offsets_only and not np.any(affine[2])):
            continue
        data, f, s = affine
        found = _conv_reader(graph, ctx, node.output[0])
        if found is None or found[0] in edits:
            continue
        c, weight = found
        conv = graph.node[c]
        group = int(attribute(conv, "group", 1))
        channels = weight.shape[1] * group
        fv, sv = _per_channel(f, weight.ndim, channels), _per_channel(s, weight.ndim, channels)
        if fv is None or sv is None or weight.shape[0] % group:
            continue
        columns = _input_index(conv, weight)
        spatial = (1,) * (weight.ndim - 2)
        w64 = weight.astype(np.float64)
        if np.any(sv != 0):
            if not _unpadded(conv):
                continue
            bias = ctx.array(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
            old = np.zeros(weight.shape[0]) if bias is None else bias.astype(np.float64).reshape(-1)
            added = (w64 * sv[columns].reshape(columns.shape + spatial)).reshape(weight.shape[0], -1).sum(axis=1)
            ctx.set_input(conv, c, 2, (old + added).astype(weight.dtype), f"{conv.name or conv.input[1]}_bias")
        new_weight = w64 * fv[columns].reshape(columns.shape + spatial)
        ctx.set_input(conv, c, 1, new_weight.astype(weight.dtype), f"{conv.name or conv.input[1]}_weight")
        conv.input[0] = data
        edits[index], edits[c] = [], [conv]


def _constant(ctx: _Ctx, value: np.ndarray, base: str) -> str:
    return ctx.add_initializer(value.astype(np.float32), base)


def _pairs(graph: onnx.GraphProto, ctx: _Ctx, edits: dict[int, list], shapes: dict) -> None:
    """Scale then scale (or offset then offset) -> one op; Mul f -> Add s before a padded Conv -> Add s/f -> Mul f."""
    for index, node in enumerate(graph.node):
        first = None if index in edits else _affine(node, ctx)
        users = ctx.readers.get(node.output[0], [])
        if first is None or len(users) != 1 or users[0] in edits or node.output[0] in ctx.outputs:
            continue
        second_node = graph.node[users[0]]
        second = _affine(second_node, ctx)
        if second is None or second[0] != node.output[0]:
            continue
        (data, f1, s1), (_, f2, s2) = first, second
        shape = shapes.get(data)
        same_shape = lambda c: c.size == 1 or (shape is not None and None not in shape  # noqa: E731
                                               and np.broadcast_shapes(c.shape, shape) == tuple(shape))
        base = second_node.name or second_node.output[0]
        if not (np.any(s1) or np.any(s2)) and same_shape(f1 * f2):
            new = [helper.make_node("Mul", [data, _constant(ctx, f1 * f2, f"{base}_scale")], [second_node.output[0]],
                                    name=second_node.name)]
        elif np.all(f1 == 1) and np.all(f2 == 1) and same_shape(s1 + s2):
            new = [helper.make_node("Add", [data, _constant(ctx, s1 + s2, f"{base}_shift")], [second_node.output[0]],
                                    name=second_node.name)]
        elif (not np.any(s1) and np.all(f2 == 1) and np.all(f1 != 0) and same_shape(s2 / f1)
              and _conv_reader(graph, ctx, second_node.output[0]) is not None):
            moved = _constant(ctx, s2 / f1, f"{base}_shift")
            # a new name: the Add's output holds other values than the Mul's did, and a table or --stats cache
            # from before must not lend it that tensor's range
            middle = unique_name(f"{node.output[0]}_shifted", ctx.taken)
            new = [helper.make_node("Add", [data, moved], [middle], name=second_node.name),
                   helper.make_node("Mul", [middle, _constant(ctx, f1, f"{base}_scale")], [second_node.output[0]],
                                    name=node.name)]
        else:
            continue
        edits[index], edits[users[0]] = [], new


def fold_affine_maps(graph: onnx.GraphProto) -> int:
    """Apply the rewrites until none applies; returns how many were made. Each scan applies one kind of rewrite
    wherever it applies to nodes no other rewrite of the scan touched (`edits`: node index -> its replacement),
    then the graph is rebuilt and the kinds are tried again in order."""
    count = 0
    shapes = tensor_shapes(graph)
    # an offset folded into the producer would stay in the tensor between the two layers, which is then
    # quantized around it (5 +- 0.07 in int8 keeps about one step of the variation): consumers take offsets first
    rules = (lambda c, e: _into_consumer(graph, c, e, offsets_only=True), lambda c, e: _into_producer(graph, c, e),
             lambda c, e: _into_consumer(graph, c, e), lambda c, e: _pairs(graph, c, e, shapes))
    while True:
        ctx = _Ctx(graph, initializers(graph), readers(graph), graph_output_names(graph), all_names(graph))
        for rule in rules:
            edits: dict[int, list] = {}
            rule(ctx, edits)
            if edits:
                break
        if not edits:
            return count
        count += sum(1 for nodes in edits.values() if not nodes)  # every rewrite removes one node
        replace_nodes(graph, edits)
