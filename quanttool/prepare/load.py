"""Load an ONNX model safely (external data confined to the model's folder, checker run, IR version made
loadable by onnxruntime) and hash the file so cached statistics can be matched to it."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path, PureWindowsPath

import onnx
from onnx import external_data_helper

from ..errors import QuantError
from .graph import subgraphs

# Highest IR version written into prepared models: onnxruntime >= 1.17 loads IR 10, newer ones more, and a
# lower IR keeps the converted model loadable by older runtimes. fp32 graphs use nothing newer.
TARGET_IR = 10
MAX_CHECKER_BYTES = 2**31 - 2**20  # protobuf's 2 GB limit, with margin: bigger models are checked by path


@functools.lru_cache(maxsize=1)
def ort_max_ir() -> int:
    """The highest IR version this onnxruntime accepts, found by trying a one-node model."""
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    for ir in range(onnx.IR_VERSION, 3, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=ir)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return ir
        except Exception:
            continue
    return 7


def clamp_ir(model: onnx.ModelProto) -> None:
    """Lower a too-new IR version in memory (onnx writes IR newer than onnxruntime may load)."""
    limit = min(TARGET_IR, ort_max_ir())
    if model.ir_version > limit:
        model.ir_version = limit


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
        for sub in subgraphs(node):
            yield from _all_tensors(sub)


def _check_external_data(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Refuse external-data locations outside the model's folder before reading a byte of them; returns the
    data files (inputs too: no output may replace them)."""
    base = path.parent.resolve()
    files = []
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
        where = f"{path}: tensor '{tensor.name}' external data location '{location}'"
        win = PureWindowsPath(location)
        if not location or Path(location).is_absolute() or win.is_absolute() or win.drive or ".." in win.parts:
            raise QuantError(f"{where} is not a plain relative path inside the model's folder; "
                             "re-save the model with its data files beside it")
        target = (base / location).resolve()
        if not target.is_relative_to(base):
            raise QuantError(f"{where} points outside the model's folder (symlink); "
                             "copy the data file beside the model")
        if not target.is_file():
            raise QuantError(f"{where}: file not found; keep the data file beside the model")
        files.append(target)
    return files


def _checker_message(error: Exception) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read and validate an ONNX model; every problem is one QuantError line naming the file and the fix."""
    return read_model(path)[0]


def read_model(path: str | Path) -> tuple[onnx.ModelProto, list[Path]]:
    """load_model, plus the external data files the model was read from."""
    path = Path(path)
    if not path.is_file():
        what = ("is a folder, not a model file" if path.is_dir() else
                "is not a regular file" if path.exists() else "model file not found")
        raise QuantError(f"{path}: {what}; pass the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise QuantError(f"{path}: not a readable ONNX model ({type(error).__name__}); "
                         "pass an .onnx file exported by PyTorch, Paddle or similar") from None
    if not model.HasField("graph") or not model.opset_import or len(model.graph.node) == 0:
        raise QuantError(f"{path}: not an ONNX model (no graph nodes or opset); "
                         "pass an .onnx file exported by PyTorch, Paddle or similar")
    data_files = _check_external_data(model, path)
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as error:
        raise QuantError(f"{path}: cannot read external data ({error}); keep the data files beside the model "
                         "and re-save it if they are truncated") from None
    clamp_ir(model)
    try:
        if model.ByteSize() < MAX_CHECKER_BYTES:
            onnx.checker.check_model(model)
        else:
            onnx.checker.check_model(str(path))
    except Exception as error:
        raise QuantError(f"{path}: ONNX checker failed: {_checker_message(error)}; "
                         "re-export the model or fix the named node") from None
    return model, data_files


def _external_locations(path: Path) -> list[str]:
    """The external data files the model reads, by their relative location (sorted, each once)."""
    model = onnx.load(str(path), load_external_data=False)
    return sorted({entry.value for tensor in _all_tensors(model.graph)
                   if tensor.data_location == onnx.TensorProto.EXTERNAL
                   for entry in tensor.external_data if entry.key == "location"})


def model_hash(path: str | Path) -> str:
    """sha256 hex digest of every byte the model reads: the model file, then each external data file (by its
    location and contents), so a cache keyed on it is invalidated when an external weight file changes. A
    model without external data keeps the digest of its file alone (`sha256sum model.onnx`)."""
    path = Path(path)
    digest = hashlib.sha256()

    def feed(file: Path) -> None:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)

    feed(path)
    for location in _external_locations(path):  # load_model has already confined them to the model's folder
        digest.update(b"\0external data\0" + location.encode("utf-8") + b"\0")
        feed(path.parent / location)
    return digest.hexdigest()
