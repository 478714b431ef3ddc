"""Graph preparation shared by calibrate, convert and evaluate: load a model safely, fix its input shapes,
fold constants and BatchNormalization, drop no-ops, name every node, and prove the result computes the same.

One job per module: load (read, validate, hash), shapes (input specs, inference), fold_constants, fold_bn,
passthrough (Identity/Dropout), fold_pad (zero Pad -> Conv pads), fold_affine (Mul/Add by constants -> Conv), graph (bookkeeping), verify (numeric check).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper

from ..errors import QuantError
from .fold_affine import fold_affine_maps
from .fold_bn import fold_batchnorm
from .fold_constants import fold_constants
from .fold_pad import fold_pad_into_conv
from .graph import name_nodes, remove_dead, topo_sort
from .load import Loaded, clamp_ir, load_model, model_hash, read, read_model
from .opset import upgrade_opset
from .passthrough import remove_passthrough
from .shapes import fix_input_dims, infer_shapes, input_specs
from .verify import verify_prepared

__all__ = ["Loaded", "read", "load_model", "read_model", "model_hash", "input_specs", "prepare", "same_computation"]


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Old exports list weights as graph inputs too; they are constants, not inputs to feed."""
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [info for info in graph.input if info.name not in weights]
    if len(inputs) != len(graph.input):
        graph.ClearField("input")
        graph.input.extend(inputs)
    # IR 3 required every initializer to be a graph input; IR 4 lifted that and changed nothing else
    model.ir_version = max(model.ir_version, 4)


def _check(model: onnx.ModelProto, name: str) -> None:
    if model.ByteSize() >= 2**31 - 2**20:
        return  # the checker needs a serialisable proto; load_model already checked the original by path
    try:
        onnx.checker.check_model(model)
    except Exception as error:
        detail = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise QuantError(f"{name}: the prepared graph fails the ONNX checker ({detail}); "
                         "this is a quanttool bug, please report it with the model") from None


FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE}


# Inputs that are weights: quantizing them needs finite values, and a NaN/Inf there is a broken model, not an
# image problem (a -inf attention mask in an Add is legitimate and is left alone).
WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
                 "BatchNormalization": (1, 2, 3, 4)}


def _check_weights(model: onnx.ModelProto, name: str) -> None:
    """QuantError naming the first weight initializer that holds a NaN or an Inf."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        for k in WEIGHT_INPUTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ():
            tensor = inits.get(node.input[k]) if k < len(node.input) else None
            if tensor is None or tensor.data_type not in FLOAT_TYPES:
                continue
            values = onnx.numpy_helper.to_array(tensor)
            bad = values.size - int(np.count_nonzero(np.isfinite(values)))
            if bad:
                raise QuantError(f"{name}: initializer '{tensor.name}' (input {k} of {node.op_type} node "
                                 f"'{node.name or node.output[0]}') holds {bad} NaN or Inf value(s); the model "
                                 f"itself is broken there: fix or re-export it")


def _check_float32(model: onnx.ModelProto, name: str) -> None:
    """Refuse a model that computes in float16/bfloat16/float64 only: quanttool quantizes float32 activations,
    so it would otherwise write the model back with nothing quantized."""
    graph = model.graph
    produced = {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
    types = {info.name: info.type.tensor_type.elem_type for info in [*graph.input, *graph.value_info, *graph.output]
             if info.type.HasField("tensor_type")}
    found = {types[n] for n in produced if types.get(n) in FLOAT_TYPES}
    if found and onnx.TensorProto.FLOAT not in found:
        kinds = ", ".join(sorted(onnx.helper.tensor_dtype_to_np_dtype(t).name for t in found))
        raise QuantError(f"{name}: the model computes in {kinds}, not float32; quanttool quantizes float32 models: "
                         f"export or convert the model to float32 first")


def prepare(model: onnx.ModelProto, specs: list | None = None, *, verify: bool = True,
            name: str = "model", feeds: dict | None = None) -> onnx.ModelProto:
    """A new, inference-ready copy of `model`. With specs, input dims are fixed to them first (so shape chains
    fold); without, the model's dynamic dims are kept. Ops the tool does not know pass through untouched, and
    surviving tensors keep their names; graph output names never change. `feeds` (one input sample, e.g. the
    first calibration image) is what the result is verified on; seeded random inputs otherwise."""
    _check_weights(model, name)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    clamp_ir(work)
    _drop_initializer_inputs(work)
    work = upgrade_opset(work)
    # Name unnamed nodes by their position in the ORIGINAL graph, so the static (calibrate) and dynamic
    # (convert) preparations of one model agree on names whatever each one folds away.
    name_nodes(work.graph)
    if specs:
        fix_input_dims(work, specs)
    fold_constants(work)  # runs shape inference each round
    remove_passthrough(work.graph)
    fold_batchnorm(work.graph)
    fold_pad_into_conv(work.graph)
    fold_affine_maps(work.graph)  # after BN and Pad folding, so Conv -> Mul/Add chains are adjacent
    remove_dead(work.graph)
    topo_sort(work.graph)
    name_nodes(work.graph)  # nodes created above (BN -> Mul + Add of an unnamed BN)
    infer_shapes(work)  # fresh value_info for the passes downstream
    _check_float32(work, name)
    if not specs:  # the declared outputs, exactly: inference would name anonymous dims ('unk__6')
        declared = {out.name: out for out in model.graph.output}
        for out in work.graph.output:
            if out.name in declared:
                out.CopyFrom(declared[out.name])
    _check(work, name)
    if verify:
        verify_prepared(model, work, specs, name, feeds)  # feeds: realistic inputs if the caller has them
    return work


def same_computation(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """True when two preparations of one model hold the same nodes, weights and graph inputs/outputs by name:
    they compute the same function wherever both accept the input, so verifying one verifies the other there.
    (The static and dynamic preparations of a model with no shape chain to fold differ only in declared dims.)"""
    ga, gb = a.graph, b.graph
    return (list(ga.node) == list(gb.node) and list(ga.initializer) == list(gb.initializer)
            and list(ga.sparse_initializer) == list(gb.sparse_initializer)
            and [i.name for i in ga.input] == [i.name for i in gb.input]
            and [o.name for o in ga.output] == [o.name for o in gb.output]
            and list(a.opset_import) == list(b.opset_import) and list(a.functions) == list(b.functions))
