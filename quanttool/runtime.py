"""onnxruntime sessions on CPU, and model copies that expose intermediate tensors as outputs."""

from __future__ import annotations

import onnx
import onnxruntime as ort

from .errors import QuantError, first_line


def session(model: onnx.ModelProto | str, threads: int = 0, what: str = "model",
            config: dict[str, str] | None = None, optimize: bool = True,
            save_optimized: str | None = None) -> ort.InferenceSession:
    """A CPU session of a model (or a model file); `config` adds onnxruntime session config entries (e.g.
    session.disable_quant_qdq). optimize=False runs the graph as given (one onnxruntime already optimized);
    `save_optimized` is where onnxruntime writes its optimized graph."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, int(threads))
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if save_optimized:
        options.optimized_model_filepath = save_optimized
    options.log_severity_level = 3  # onnxruntime's warnings would break the progress bars
    entries = {
        # Keep int8 QDQ as int8: by default onnxruntime on x86 rewrites it to uint8 and runs U8S8 kernels that
        # saturate on CPUs without VNNI (the demo lost 7 points of accuracy that way). README, "Running".
        "session.qdqisint8allowed": "1",
        # quanttool alternates sessions and numpy work on few cores; spinning threads would steal those cores.
        "session.intra_op.allow_spinning": "0",
        **(config or {}),
    }
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    try:
        source = model if isinstance(model, str) else model.SerializeToString()
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        raise QuantError(f"{what}: onnxruntime cannot load it: {first_line(exc)}") from None


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs are its own outputs followed by `names`.

    Outputs are added without a type: onnxruntime infers it, and shape inference may not know the
    types of custom ops anyway.
    """
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {out.name for out in exposed.graph.output}
    inputs = {inp.name for inp in exposed.graph.input}
    for name in names:
        if name not in present and name not in inputs:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return exposed
