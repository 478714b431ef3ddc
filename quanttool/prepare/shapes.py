"""Input shapes: turn the model's (possibly dynamic) input dims plus --shape into static InputSpecs, write
them into the graph, and run ONNX shape inference."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..errors import QuantError
from ..inputs import InputSpec


def model_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: old exports also list every initializer as a graph input."""
    weights = {t.name for t in graph.initializer}
    return [info for info in graph.input if info.name not in weights]


def _dims(info: onnx.ValueInfoProto) -> list[int | str] | None:
    """Declared dims (an int, or the symbolic name / '?' when dynamic); None when the rank is unknown.

    A dim_value <= 0 is dynamic too: old Paddle exports write a dynamic batch as -1."""
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in tensor_type.shape.dim]


def _fmt(dims) -> str:
    return ",".join(str(d) for d in dims)


def input_specs(model: onnx.ModelProto, shapes: dict[str | None, tuple[int, ...]] | None) -> list[InputSpec]:
    """Static shape and dtype of each real input. A dynamic batch becomes 1; other dynamic dims come from
    shapes[name], or shapes[None] (the plain --shape) for the only input, 4-D inputs and inputs of unknown rank."""
    shapes = dict(shapes or {})
    inputs = model_inputs(model.graph)
    names = [info.name for info in inputs]
    for key in shapes:
        if key is not None and key not in names:
            raise QuantError(f"--shape {key}=...: the model has no input '{key}'; its inputs are {names}")
    specs = []
    for info in inputs:
        if not info.type.HasField("tensor_type"):
            raise QuantError(f"input '{info.name}' is not a tensor; quanttool supports tensor inputs only")
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            raise QuantError(f"input '{info.name}' has no usable element type; re-export the model") from None
        declared = _dims(info)
        given = shapes.get(info.name)
        if given is None and (declared is None or len(declared) == 4 or len(inputs) == 1):
            given = shapes.get(None)
        if declared is None and given is None:
            raise QuantError(f"input '{info.name}' has unknown rank; pass --shape {info.name}=D1,D2,... "
                             f"(its dims after the batch: C,H,W for images)")
        dims: list[int | str] = list(declared) if declared is not None else ["?"] * (len(given) + 1)
        if given is not None:
            _apply(info.name, dims, tuple(int(g) for g in given))
        if dims and not isinstance(dims[0], int):
            dims[0] = 1  # dynamic batch: calibrate and evaluate run one sample at a time
        if any(not isinstance(d, int) for d in dims):
            zero = [k for k, d in enumerate(info.type.tensor_type.shape.dim)
                    if d.HasField("dim_value") and d.dim_value == 0 and not isinstance(dims[k], int)]
            if zero:  # 0 is not "dynamic" to the user who wrote it; old exporters meant "any size" by it
                raise QuantError(f"input '{info.name}' declares dim {zero[0]} as 0 (a zero-sized tensor holds no "
                                 f"data); if it means 'any size', pass --shape with that dim")
            raise QuantError(f"input '{info.name}' has dynamic dims {declared}; pass --shape {info.name}="
                             f"{_fmt(dims[1:])} with each named dim as a number")
        specs.append(InputSpec(info.name, tuple(dims), dtype))
    return specs


def calibrated_at(model: onnx.ModelProto, specs: list) -> dict[str, tuple[int, ...]]:
    """Input name -> the sizes calibration fixed for the dims (after the batch) the model declares dynamic;
    the int8 model keeps them dynamic, but its scales only saw these sizes."""
    declared = {info.name: _dims(info) for info in model_inputs(model.graph)}
    result = {}
    for spec in specs:
        dims = declared.get(spec.name)
        if dims is not None and any(not isinstance(d, int) for d in dims[1:]):
            result[spec.name] = tuple(spec.shape[1:])
    return result


def _apply(name: str, dims: list[int | str], given: tuple[int, ...]) -> None:
    """Write --shape dims over the trailing dims (all but batch, or all of them); refuse contradictions."""
    if len(given) == len(dims) - 1:
        offset = 1
    elif len(given) == len(dims):
        offset = 0
    else:
        raise QuantError(f"--shape {_fmt(given)} has {len(given)} dims but input '{name}' has shape [{_fmt(dims)}]; "
                         f"pass its {len(dims) - 1} dims after the batch, e.g. --shape {name}={_fmt(dims[1:])}")
    if any(g <= 0 for g in given):
        raise QuantError(f"--shape {_fmt(given)} for input '{name}': every dim must be a positive integer")
    declared = list(dims)
    for k, value in enumerate(given):
        current = dims[offset + k]
        if isinstance(current, int) and current != value:
            fixed = [d if isinstance(d, int) else "?" for d in declared[offset:]]
            raise QuantError(f"--shape {_fmt(given)} contradicts input '{name}' shape [{_fmt(declared)}] "
                             f"(dim {offset + k} is {current}); pass --shape matching [{_fmt(fixed)}]")
        dims[offset + k] = value


def fix_input_dims(model: onnx.ModelProto, specs: list) -> None:
    """Write the specs' static dims into the graph inputs."""
    by_name = {info.name: info for info in model.graph.input}
    for spec in specs:
        info = by_name.get(spec.name)
        if info is None:
            raise QuantError(f"input '{spec.name}' is not an input of the model; its inputs are {list(by_name)}")
        shape = info.type.tensor_type.shape
        shape.ClearField("dim")
        for value in spec.shape:
            shape.dim.add().dim_value = int(value)


SMALL = 1024  # initializers up to this many elements keep their values (data propagation reads them)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its big weights (declared as typed inputs instead): inference only needs their
    shapes, and this keeps each inference round cheap however large the model is."""
    graph = model.graph
    light = helper.make_graph([], graph.name, list(graph.input), list(graph.output))
    light.node.extend(graph.node)
    for tensor in graph.initializer:
        if np.prod(tensor.dims, dtype=np.int64) <= SMALL:
            light.initializer.append(tensor)
        else:
            light.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return helper.make_model(light, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                             functions=list(model.functions))


def infer_shapes(model: onnx.ModelProto) -> None:
    """Fresh shape inference, in place (stale value_info from an exporter may claim static dims that are not).
    On failure the model just has no value_info, and folding sees fewer static shapes."""
    model.graph.ClearField("value_info")
    skeleton = _skeleton(model)
    for data_prop in (True, False):  # data propagation resolves some Shape->Reshape chains; retry without
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=False, strict_mode=False,
                                                         data_prop=data_prop)
        except Exception:
            continue
        model.graph.value_info.extend(inferred.graph.value_info)
        for output, typed in zip(model.graph.output, inferred.graph.output):
            output.type.CopyFrom(typed.type)
        return
