"""Observation: one onnxruntime pass over the calibration samples, streaming every float activation into
per-tensor statistics (quanttool.stats) with memory that does not grow with the number of images.

Inference and histogramming overlap: while onnxruntime runs sample k, a worker thread folds sample k-1
into the statistics (numpy releases the GIL), and decoding runs ahead in quanttool.inputs' thread pool.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Mapping

import numpy as np
import onnx
from tqdm import tqdm

from .errors import QuantError
from .runtime import session, with_outputs
from .stats import TensorStats

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def activation_names(model: onnx.ModelProto) -> list[str]:
    """Float tensors that flow at run time: graph inputs and node outputs, in graph order.

    A tensor whose type shape inference could not find (custom ops) is kept; `observe` drops it if
    it turns out not to be float.
    """
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    types = _elem_types(model)
    names: list[str] = []
    seen = set()
    candidates = [inp.name for inp in graph.input] + [out for node in graph.node for out in node.output]
    for name in candidates:
        if not name or name in constants or name in seen:
            continue
        seen.add(name)
        if types.get(name, onnx.TensorProto.FLOAT) in FLOAT_TYPES:
            names.append(name)
    return names


def nonfinite(name: str, key: str, is_input: bool) -> QuantError:
    """The error for a NaN/Inf in tensor `name` on image `key`, blaming what can cause it."""
    if is_input:
        return QuantError(f"input {name!r} contains NaN or Inf on image {key}; check the image and the "
                          f"preprocessing options (--mean/--norm)")
    return QuantError(f"tensor {name!r} contains NaN or Inf on image {key} although the model's inputs are finite: "
                      f"the model overflows or divides by zero on this input; check the model")


def observe(model: onnx.ModelProto, samples: Iterable[tuple[str, Mapping[str, np.ndarray]]], total: int,
            threads: int = 0, names: list[str] | None = None, desc: str = "calibrate") -> dict[str, TensorStats]:
    """Run every sample once and return streaming statistics for each float activation."""
    names = activation_names(model) if names is None else names
    inputs = {inp.name for inp in model.graph.input}
    run_names = [n for n in names if n not in inputs]
    shapes = ", ".join(f"{i.name}=" + "x".join(str(d.dim_value) for d in i.type.tensor_type.shape.dim)
                       for i in model.graph.input)
    # the dims are fixed by then: an inconsistent --shape is the usual reason onnxruntime refuses the graph
    sess = session(with_outputs(model, run_names), threads, f"the model at input shapes {shapes} (check --shape)")
    stats = {name: TensorStats() for name in names}

    def fold(key: str, values: dict[str, np.ndarray]) -> None:
        for name, value in values.items():
            if value.dtype.kind != "f":
                stats.pop(name, None)  # a tensor typed float by default that is really integer
                continue
            try:
                stats[name].update(value, batch=value.shape[0] if value.ndim else 1)
            except ValueError:
                raise nonfinite(name, key, name in inputs) from None

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for key, feeds in tqdm(samples, total=total, unit="img", desc=desc, dynamic_ncols=True):
            outputs = sess.run(run_names, dict(feeds))
            values = {name: feeds[name] for name in names if name in feeds}
            values.update({name: out for name, out in zip(run_names, outputs) if name in stats})
            if pending is not None:
                pending.result()
            pending = pool.submit(fold, key, values)
        if pending is not None:
            pending.result()
    if not any(s.count for s in stats.values()):
        raise QuantError("no calibration sample could be run; check the --images folder")
    return {name: s for name, s in stats.items() if s.count}
