"""Load an ONNX model safely (external data confined to the model's folder, checker run, IR version made
loadable by onnxruntime) and hash the file so cached statistics can be matched to it."""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
from dataclasses import dataclass
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
    return read(path).model


def read_model(path: str | Path) -> tuple[onnx.ModelProto, list[Path]]:
    """load_model, plus the external data files the model was read from."""
    loaded = read(path)
    return loaded.model, loaded.files


@dataclass(frozen=True)
class Loaded:
    """A model file read once: the validated model, the files it was read from and the digest of their bytes."""

    path: Path
    model: onnx.ModelProto
    files: list[Path]  # the model file, then its external data files (inputs: no output may replace them)
    sha: str  # model_hash of the same bytes the model was parsed from


def _external_views(model: onnx.ModelProto, path: Path) -> dict[str, memoryview]:
    """Each external data file, mapped once by its location: hashed and sliced into tensors from the same pages."""
    views = {}
    for location in sorted({entry.value for tensor in _all_tensors(model.graph)
                            if tensor.data_location == onnx.TensorProto.EXTERNAL
                            for entry in tensor.external_data if entry.key == "location"}):
        with open(path.parent / location, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            views[location] = memoryview(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b"")
    return views


def _digest(data: bytes, views: dict[str, memoryview]) -> str:
    """sha256 of the model file's bytes, then of each external data file by location and contents (sorted)."""
    digest = hashlib.sha256(data)
    for location in sorted(views):
        digest.update(b"\0external data\0" + location.encode("utf-8") + b"\0")
        for start in range(0, len(views[location]), 1 << 24):
            digest.update(views[location][start:start + (1 << 24)])
    return digest.hexdigest()


def _fill_external(model: onnx.ModelProto, views: dict[str, memoryview]) -> None:
    """Move each external tensor's bytes into the model, as onnx's loader does (offset, then length or to the end)."""
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        offset = int(info.get("offset") or 0)
        length = int(info["length"]) if info.get("length") else None
        view = views[info["location"]]
        tensor.raw_data = bytes(view[offset:] if length is None else view[offset:offset + length])
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def read(path: str | Path) -> Loaded:
    """Read the model file and its external data once each: parse, hash and validate from the same bytes."""
    path = Path(path)
    if not path.is_file():
        what = ("is a folder, not a model file" if path.is_dir() else
                "is not a regular file" if path.exists() else "model file not found")
        raise QuantError(f"{path}: {what}; pass the path of an .onnx file")
    try:
        data = path.read_bytes()
        model = onnx.load_model_from_string(data)
    except Exception as error:
        raise QuantError(f"{path}: not a readable ONNX model ({type(error).__name__}); "
                         "pass an .onnx file exported by PyTorch, Paddle or similar") from None
    if not model.HasField("graph") or not model.opset_import or len(model.graph.node) == 0:
        raise QuantError(f"{path}: not an ONNX model (no graph nodes or opset); "
                         "pass an .onnx file exported by PyTorch, Paddle or similar")
    data_files = _check_external_data(model, path)
    try:
        views = _external_views(model, path)
        sha = _digest(data, views)
        _fill_external(model, views)
    except Exception as error:
        raise QuantError(f"{path}: cannot read external data ({error}); keep the data files beside the model "
                         "and re-save it if they are truncated") from None
    del data, views
    clamp_ir(model)
    try:
        if model.ByteSize() < MAX_CHECKER_BYTES:
            onnx.checker.check_model(model)
        else:
            onnx.checker.check_model(str(path))
    except Exception as error:
        raise QuantError(f"{path}: ONNX checker failed: {_checker_message(error)}; "
                         "re-export the model or fix the named node") from None
    return Loaded(path, model, [path, *data_files], sha)


def model_hash(path: str | Path) -> str:
    """sha256 hex digest of every byte the model reads: the model file, then each external data file (by its
    location and contents), so a cache keyed on it is invalidated when an external weight file changes. A
    model without external data keeps the digest of its file alone (`sha256sum model.onnx`). (`read` gives the
    same digest of the bytes it parsed, without reading the files again.)"""
    path = Path(path)
    data = path.read_bytes()
    model = onnx.load_model_from_string(data)  # external data not loaded: only its locations are needed
    return _digest(data, _external_views(model, path))  # read has already confined them to the model's folder
