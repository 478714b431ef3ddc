"""Which tensors are float activations: decided here once, for calibrate (what to observe), convert (what to
quantize) and evaluate (what to compare)."""

from __future__ import annotations

from typing import Container

import onnx
from onnx import TensorProto


def shape_derived(graph: onnx.GraphProto) -> set[str]:
    """Tensors computed only from constants and tensor shapes (Shape, Size), not from input values: e.g.
    Cast(Shape(x)[2]) in a model whose H stays dynamic. They are not activations: calibration saw them folded
    to constants, so they have no table entry, and nothing quantizes them."""
    known = {t.name for t in graph.initializer}
    derived: set[str] = set()
    for node in graph.node:  # topological order
        inputs = [name for name in node.input if name]
        if node.op_type in ("Shape", "Size") or (inputs and all(name in known or name in derived for name in inputs)):
            derived.update(o for o in node.output if o)
    return derived


def float_activations(model: onnx.ModelProto, untyped: Container[str] | None = None) -> list[str]:
    """float32 tensors that flow at run time, in graph order: graph inputs and node outputs, without
    initializers and shape-derived tensors.

    A tensor whose type shape inference cannot tell (custom ops) counts when it is in `untyped` (a table);
    with untyped=None every such tensor counts, and calibration drops it if it turns out not to be float.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # shape inference can fail on custom ops; fall back on the declared types
        inferred = model
    g = inferred.graph
    dtypes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            dtypes[vi.name] = vi.type.tensor_type.elem_type
    inits = {t.name for t in model.graph.initializer}
    derived = shape_derived(model.graph)
    names = [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output]
    result, seen = [], set()
    for name in names:
        if not name or name in inits or name in derived or name in seen:
            continue
        seen.add(name)
        dtype = dtypes.get(name, 0)
        if dtype == TensorProto.FLOAT or (dtype == 0 and (untyped is None or name in untyped)):
            result.append(name)
    return result
