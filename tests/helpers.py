"""Small builders for test models. onnxruntime loads IR <= 10 reliably, so pin it (REFERENCE.md section 4)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8


def make_model(nodes, inputs, outputs, initializers=(), opset=13, name="test"):
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def save_model_and_inputs(tmp_path, model, arrays):
    """`model` as tmp_path/m.onnx and each array as tmp_path/npy/NNN.npy (zero-padded, so the folder's sorted
    order is the list's); returns (model path, folder)."""
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    folder = tmp_path / "npy"
    folder.mkdir()
    for i, array in enumerate(arrays):
        np.save(folder / f"{i:03d}.npy", array)
    return path, folder


def tensor_info(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def run(model, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def int8_session(model):
    """onnxruntime with int8 QDQ kept as int8 (S8S8 kernels), as quanttool runs int8 models: by default
    onnxruntime on x86 runs U8S8 kernels that saturate on CPUs without VNNI and give other numbers."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_int8(model, feeds):
    return int8_session(model).run(None, feeds)
