"""Constant folding: Constant nodes, Shape of statically shaped tensors, and every deterministic node whose
inputs are all constants become initializers, repeated to a fixed point. This removes the exporters'
Shape/Gather/Unsqueeze/Concat/Reshape chains once the input dims are static."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import (DEFAULT_DOMAINS, graph_output_names, initializers, is_static, remove_dead, replace_nodes,
                    subgraphs, tensor_shapes)
from .load import ort_max_ir
from .shapes import infer_shapes

log = logging.getLogger(__name__)

MAX_ELEMENTS = 4_000_000  # never materialise a folded tensor larger than this (e.g. a broadcast Expand)
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}
# Q/DQ on constant weights is quantization structure, not arithmetic to fold: folding it to fp32 weights would
# stop onnxruntime from running those layers in int8 and change the results
NEVER_FOLD = NONDETERMINISTIC | {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def fold_constants(model: onnx.ModelProto) -> None:
    """Fold in place. Each round re-runs shape inference, since a folded Shape can make the next tensor's
    shape static; every round that changes something removes a node, so the loop ends."""
    while True:
        infer_shapes(model)
        if not _fold_round(model):
            break
    remove_dead(model.graph)


def _fold_round(model: onnx.ModelProto) -> bool:
    graph = model.graph
    changed = _fold_constant_nodes(graph) | _fold_shapes(graph) | _fold_shape_parts(graph)
    while _fold_wave(model):
        changed = True
    return changed


def _add_folded(graph: onnx.GraphProto, folded: dict[int, list[onnx.TensorProto]]) -> bool:
    """Replace folded nodes by their output tensors."""
    for tensors in folded.values():
        graph.initializer.extend(tensors)
    replace_nodes(graph, {index: [] for index in folded})
    return bool(folded)


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if len(node.attribute) != 1 or not node.output:
        return None
    attr = node.attribute[0]
    values = {
        "value_float": lambda: np.array(attr.f, np.float32),
        "value_floats": lambda: np.array(list(attr.floats), np.float32),
        "value_int": lambda: np.array(attr.i, np.int64),
        "value_ints": lambda: np.array(list(attr.ints), np.int64),
        "value_string": lambda: np.array(attr.s, dtype=object),
        "value_strings": lambda: np.array(list(attr.strings), dtype=object),
    }
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
    elif attr.name in values:
        tensor = numpy_helper.from_array(values[attr.name]())
    else:  # sparse_value: rare, left as a node
        return None
    tensor.name = node.output[0]
    return tensor


def _fold_constant_nodes(graph: onnx.GraphProto) -> bool:
    outputs = graph_output_names(graph)
    folded = {}
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output[0] not in outputs:
            tensor = _constant_tensor(node)
            if tensor is not None:
                folded[index] = [tensor]
    return _add_folded(graph, folded)


def _fold_shapes(graph: onnx.GraphProto) -> bool:
    """Shape of a tensor whose inferred shape is fully static is a constant."""
    shapes = tensor_shapes(graph)
    outputs = graph_output_names(graph)
    folded = {}
    for index, node in enumerate(graph.node):
        if node.op_type != "Shape" or node.domain not in DEFAULT_DOMAINS or node.output[0] in outputs:
            continue
        shape = shapes.get(node.input[0])
        if not is_static(shape):
            continue
        attrs = {a.name: a.i for a in node.attribute}
        # ONNX start/end follow Python slicing: negative counts from the back, then clamp to [0, rank]
        value = np.array(shape[attrs.get("start", 0):attrs.get("end", len(shape))], np.int64)
        folded[index] = [numpy_helper.from_array(value, node.output[0])]
    return _add_folded(graph, folded)


def _fold_shape_parts(graph: onnx.GraphProto) -> bool:
    """Gather or Slice of a Shape whose picked dims are all static is a constant even when other dims are
    dynamic: dynamic-batch exports compute head sizes and flatten widths this way (Shape -> Gather(2) ->
    Cast -> Sqrt), and the int8 model keeps its dynamic dims, so these must fold without --shape."""
    shapes = tensor_shapes(graph)
    constants = initializers(graph)
    outputs = graph_output_names(graph)
    dims_of = {}  # Shape output -> the dims it holds (None where dynamic)
    for node in graph.node:
        if node.op_type == "Shape" and node.domain in DEFAULT_DOMAINS and shapes.get(node.input[0]) is not None:
            attrs = {a.name: a.i for a in node.attribute}
            shape = shapes[node.input[0]]
            dims_of[node.output[0]] = shape[attrs.get("start", 0):attrs.get("end", len(shape))]
    folded = {}
    for index, node in enumerate(graph.node):
        if node.domain not in DEFAULT_DOMAINS or not node.input or node.input[0] not in dims_of \
                or node.output[0] in outputs or any(name not in constants for name in node.input[1:] if name):
            continue
        dims = np.array([-1 if d is None else d for d in dims_of[node.input[0]]], np.int64)
        args = [numpy_helper.to_array(constants[name]) if name else None for name in node.input[1:]]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gather" and attrs.get("axis", 0) == 0:
            picked = np.take(dims, args[0].astype(np.int64), mode="raise") if args[0].size else args[0]
        elif node.op_type == "Slice" and len(args) >= 2:
            starts, ends = args[0], args[1]
            axes = args[2] if len(args) > 2 and args[2] is not None else np.zeros_like(starts)
            steps = args[3] if len(args) > 3 and args[3] is not None else np.ones_like(starts)
            if starts.size != 1 or int(axes.ravel()[0]) not in (0, -1):
                continue
            picked = dims[int(starts.ravel()[0]):int(ends.ravel()[0]):int(steps.ravel()[0])]
        else:
            continue
        if np.all(picked >= 0):
            folded[index] = [numpy_helper.from_array(np.asarray(picked, np.int64), node.output[0])]
    return _add_folded(graph, folded)


def _foldable(node: onnx.NodeProto, constants: dict, outputs: set[str], shapes: dict) -> bool:
    if (node.domain not in DEFAULT_DOMAINS or node.op_type in NEVER_FOLD or node.op_type == "Constant"
            or subgraphs(node) or not any(node.input)):
        return False
    if any(name and name not in constants for name in node.input) or any(o in outputs for o in node.output):
        return False
    for name in node.output:  # skip outputs known (or, for ConstantOfShape, computed) to be huge
        shape = shapes.get(name)
        if is_static(shape) and int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
            return False
    if node.op_type == "ConstantOfShape":
        dims = numpy_helper.to_array(constants[node.input[0]])
        if np.prod(dims.astype(np.float64)) > MAX_ELEMENTS:
            return False
    return True


def _fold_wave(model: onnx.ModelProto) -> bool:
    """Evaluate every node whose inputs are all constants now, in one onnxruntime session."""
    graph = model.graph
    constants = initializers(graph)
    outputs = graph_output_names(graph)
    shapes = tensor_shapes(graph)
    wave = [i for i, node in enumerate(graph.node) if _foldable(node, constants, outputs, shapes)]
    if not wave:
        return False
    results = _evaluate(model, [graph.node[i] for i in wave], constants)
    folded = {}
    for index in wave:
        node = graph.node[index]
        if results is None:  # the batch failed: try this node alone
            values = _evaluate(model, [node], constants)
        else:
            values = results
        if values is None:
            continue
        arrays = [values[name] for name in node.output if name]
        if any(a.size > MAX_ELEMENTS for a in arrays):
            continue
        folded[index] = [numpy_helper.from_array(np.asarray(values[name]), name) for name in node.output if name]
    # A node that cannot be evaluated stays; the loop ends when a wave folds nothing
    return _add_folded(graph, folded)


def _evaluate(model: onnx.ModelProto, nodes: list[onnx.NodeProto], constants: dict) -> dict | None:
    """Run `nodes` (inputs all constants) with onnxruntime, falling back to onnx's reference evaluator."""
    needed = dict.fromkeys(name for node in nodes for name in node.input if name)
    outputs = [name for node in nodes for name in node.output if name]
    graph = helper.make_graph(list(nodes), "fold", [], [helper.make_value_info(n, onnx.TypeProto()) for n in outputs],
                              [constants[name] for name in needed])
    tiny = helper.make_model(graph, opset_imports=list(model.opset_import),
                             ir_version=min(model.ir_version or 8, ort_max_ir()))
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4
        session = ort.InferenceSession(tiny.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return dict(zip(outputs, session.run(outputs, {})))
    except Exception as error:
        log.debug("onnxruntime could not fold %s: %s", [n.name or n.op_type for n in nodes], error)
    if len(nodes) > 1:
        return None  # let the caller retry node by node
    try:
        from onnx.reference import ReferenceEvaluator

        return dict(zip(outputs, ReferenceEvaluator(tiny).run(outputs, {})))
    except Exception as error:
        log.debug("reference evaluator could not fold %s: %s", nodes[0].name or nodes[0].op_type, error)
        return None
