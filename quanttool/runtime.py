"""onnxruntime sessions on CPU, and model copies that expose intermediate tensors as outputs."""

from __future__ import annotations

import onnx
import onnxruntime as ort

from .errors import QuantError


def session(model: onnx.ModelProto, threads: int = 0, what: str = "model") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, int(threads))
    options.log_severity_level = 3  # onnxruntime's warnings would break the progress bars
    # Keep int8 QDQ as int8: by default onnxruntime on x86 rewrites it to uint8 and runs U8S8 kernels that
    # saturate on CPUs without VNNI (the demo lost 7 points of accuracy that way). See README, "Running".
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    # quanttool alternates sessions and numpy work on few cores; spinning threads would steal those cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantError(f"{what}: onnxruntime cannot load it: {first}") from None


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
