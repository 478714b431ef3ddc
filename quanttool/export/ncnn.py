"""ncnn's int8 table (what `ncnn2table` writes and `ncnn2int8` reads): for every Convolution /
ConvolutionDepthWise / InnerProduct layer a weight line `<layer>_param_0 s_0 s_1 ...` (per output channel,
s = 127 / max|W_c|; per group for a grouped conv, which onnx2ncnn turns into ConvolutionDepthWise), then for the same layers an activation line `<layer> s` for the layer's input blob
(s = 127 / T). Layer names are what onnx2ncnn calls them: the node name, or its first output when unnamed.
Weights are read from the prepared model (BatchNorm folded, Gemm alpha folded), per output channel along the
axis convert uses; an all-zero channel gets s = 1 (its weights are 0 under any scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from ..errors import QuantError
from ..fileio import atomic_open
from ..qparams import QParam
from ..rewrite.plan import make_plan

NCNN_LAYERS = {"Conv", "Gemm", "MatMul"}  # Convolution(DepthWise) and InnerProduct after onnx2ncnn


def _number(value: float) -> str:
    return format(float(np.float32(value)), ".9g")


def weight_scales(w: np.ndarray, axis: int | None) -> np.ndarray:
    """127 / max|W_c| per output channel along `axis` (one value when per-tensor)."""
    w = np.abs(np.asarray(w, dtype=np.float64))
    absmax = np.atleast_1d(w.max()) if axis is None else np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).max(1)
    return np.where(absmax > 0, 127.0 / np.where(absmax > 0, absmax, 1.0), 1.0)


def write_ncnn(path: str | Path, thresholds: Mapping[str, float], model: onnx.ModelProto) -> None:
    plan = make_plan(model, {name: QParam(t / 127.0) for name, t in thresholds.items()})
    weight_lines, blob_lines = [], []
    for group in plan.groups.values():
        if group.op_type not in NCNN_LAYERS or group.weight_array is None:
            continue
        node = plan.graph.node[group.index]
        layer = node.name or node.output[0]
        if any(ch.isspace() for ch in layer):
            raise QuantError(f"node name {layer!r} contains white space, which ncnn's table cannot hold; "
                             f"use --table-format scale")
        groups = next((a.i for a in node.attribute if a.name == "group"), 1) if node.op_type == "Conv" else 1
        if groups > 1:  # onnx2ncnn makes it a ConvolutionDepthWise, whose scales are per group
            scales = weight_scales(group.weight_array.reshape(groups, -1), 0)
        else:
            scales = weight_scales(group.weight_array, group.weight_axis)
        weight_lines.append(f"{layer}_param_0 " + " ".join(_number(s) for s in scales))
        blob_lines.append(f"{layer} {_number(127.0 / thresholds[group.act_inputs[0]])}")
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(weight_lines + blob_lines) + "\n")
