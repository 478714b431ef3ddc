"""Check that preparation did not change what the model computes: run the original and the prepared model in
onnxruntime on the same random inputs and compare every float output relative to its magnitude."""

from __future__ import annotations

import logging

import numpy as np
import onnx

from ..errors import QuantError, first_line, warn
from ..runtime import session
from .load import clamp_ir
from .shapes import model_inputs

log = logging.getLogger(__name__)

RTOL = 1e-4  # max|a - b| <= RTOL * max(max|a|, FLOOR), per output
FLOOR = 1e-6


def random_feeds(model: onnx.ModelProto, specs: list | None) -> dict[str, np.ndarray] | None:
    """Standard-normal floats, zeros otherwise (seeded). Shapes from specs; without one, a dynamic batch is 1
    and any other dynamic dim means no feed can be built (None)."""
    rng = np.random.default_rng(0)
    by_name = {spec.name: spec for spec in specs or []}
    feeds = {}
    for info in model_inputs(model.graph):
        tensor_type = info.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            return None
        if info.name in by_name:
            shape = tuple(by_name[info.name].shape)
        else:
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
            if dims and dims[0] is None:
                dims[0] = 1
            if not tensor_type.HasField("shape") or None in dims:
                return None
            shape = tuple(dims)
        if np.issubdtype(dtype, np.floating):
            feeds[info.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[info.name] = np.zeros(shape, dtype)
    return feeds


def _run(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    if model.ir_version > 10:  # the caller's model may not have come through load_model
        model = onnx.ModelProto.FromString(model.SerializeToString())
        clamp_ir(model)
    sess = session(model)
    names = [out.name for out in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def mismatch(expected: np.ndarray, got: np.ndarray) -> str | None:
    """Why two outputs differ beyond tolerance, or None. NaN/inf must sit in the same places."""
    if expected.shape != got.shape:
        return f"shape {list(got.shape)} instead of {list(expected.shape)}"
    a, b = expected.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    same_special = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    if not np.all(finite | same_special):
        return "NaN/inf in different places"
    if not finite.any():
        return None
    error = float(np.max(np.abs(a[finite] - b[finite])))
    scale = max(float(np.max(np.abs(a[finite]))), FLOOR)
    if error > RTOL * scale:
        return f"max abs difference {error:.3g} exceeds {RTOL:g} x output magnitude {scale:.3g}"
    return None


def verify_prepared(original: onnx.ModelProto, prepared: onnx.ModelProto, specs: list | None, name: str) -> None:
    """Raise QuantError when a float output of the prepared model differs from the original's. Integer and bool
    outputs (ArgMax, TopK indices, NMS) are not compared: legitimate fp32 rounding can flip them."""
    feeds = random_feeds(original, specs)
    if feeds is None:
        log.debug("%s: dynamic input dims and no --shape; preparation not verified", name)
        return
    try:
        expected = _run(original, feeds)
    except Exception as error:
        warn(f"{name}: onnxruntime cannot run the original model ({first_line(error)[:200]}); "
             "graph preparation not verified")
        return
    try:
        got = _run(prepared, feeds)
    except Exception as error:
        raise QuantError(f"{name}: onnxruntime cannot run the prepared graph ({first_line(error)[:200]}); "
                         "this is a quanttool bug, please report it with the model") from None
    for output, value in expected.items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        if output not in got:
            raise QuantError(f"{name}: graph preparation lost output '{output}'; this is a quanttool bug")
        problem = mismatch(value, got[output])
        if problem:
            raise QuantError(f"{name}: graph preparation changed output '{output}' ({problem}); "
                             "this is a quanttool bug, please report it with the model")
