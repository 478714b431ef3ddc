"""Check that preparation did not change what the model computes: run the original and the prepared model in
onnxruntime on the same inputs (the first calibration image when there is one, else seeded random values) and
compare every float output.

The tolerance is scale-aware. A difference within RTOL of the output's magnitude passes at once. A larger one
is compared with the model's own float32 rounding noise at these inputs: the original model is run again with
every float weight moved by about one unit in the last place, and a difference within NOISE_FACTOR times that
change passes too. Folding BatchNormalization moves weights by exactly such roundings, so a model whose outputs
are tiny next to its intermediate values (a detector head's ~1e-3 outputs computed from values near 100) passes,
while a real preparation bug (a wrong fold moves an output by a fraction of itself) still fails."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.numpy_helper

from ..errors import QuantError, first_line, warn
from ..runtime import session
from .load import clamp_ir
from .shapes import model_inputs

log = logging.getLogger(__name__)

RTOL = 1e-4  # max|a - b| <= RTOL * max(max|a|, FLOOR), per output
FLOOR = 1e-6
NOISE_FACTOR = 10  # ... or <= NOISE_FACTOR * the output's change under one-ulp weight perturbations
WEIGHT_JITTER = 2.0**-22  # relative: one or two units in the last place of a float32


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


def _jittered(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every float32 initializer multiplied by 1 +- WEIGHT_JITTER (seeded signs)."""
    rng = np.random.default_rng(1)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for k, tensor in enumerate(copy.graph.initializer):
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        values = onnx.numpy_helper.to_array(tensor).astype(np.float64)
        signs = rng.choice([-1.0, 1.0], size=values.shape)
        moved = (values * (1.0 + signs * WEIGHT_JITTER)).astype(np.float32)
        copy.graph.initializer[k].CopyFrom(onnx.numpy_helper.from_array(moved, tensor.name))
    return copy


def rounding_noise(model: onnx.ModelProto, feeds: dict, expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Per float output, max |change| when the weights move by float32 rounding: the scale below which two
    computations of this model at these inputs cannot be told apart."""
    moved = _run(_jittered(model), feeds)
    noise = {}
    for name, value in expected.items():
        other = moved.get(name)
        if other is None or other.shape != value.shape or not np.issubdtype(value.dtype, np.floating):
            continue
        finite = np.isfinite(value) & np.isfinite(other)
        if finite.any():
            noise[name] = float(np.max(np.abs(value[finite].astype(np.float64) - other[finite])))
    return noise


def mismatch(expected: np.ndarray, got: np.ndarray, noise: float = 0.0) -> str | None:
    """Why two outputs differ beyond tolerance, or None. NaN/inf must sit in the same places. `noise`: the
    output's change under weight rounding (`rounding_noise`)."""
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
    if error > max(RTOL * scale, NOISE_FACTOR * noise):
        return (f"max abs difference {error:.3g} exceeds both {RTOL:g} x output magnitude {scale:.3g} and "
                f"{NOISE_FACTOR} x the change float32 rounding of the weights causes ({noise:.3g})")
    return None


def verify_prepared(original: onnx.ModelProto, prepared: onnx.ModelProto, specs: list | None, name: str,
                    feeds: dict[str, np.ndarray] | None = None) -> bool:
    """Raise QuantError when a float output of the prepared model differs from the original's. Integer and bool
    outputs (ArgMax, TopK indices, NMS) are not compared: legitimate fp32 rounding can flip them. `feeds`:
    realistic inputs (a calibration image); seeded random values otherwise. True when the outputs were compared,
    False when the check could not run (no feed for dynamic dims, or onnxruntime cannot run the original)."""
    feeds = feeds if feeds is not None else random_feeds(original, specs)
    if feeds is None:
        log.debug("%s: dynamic input dims and no --shape; preparation not verified", name)
        return False
    try:
        expected = _run(original, feeds)
    except Exception as error:
        warn(f"{name}: onnxruntime cannot run the original model ({first_line(error)[:200]}); "
             "graph preparation not verified")
        return False
    try:
        got = _run(prepared, feeds)
    except Exception as error:
        raise QuantError(f"{name}: onnxruntime cannot run the prepared graph ({first_line(error)[:200]}); "
                         "this is a quanttool bug, please report it with the model") from None
    noise = None
    for output, value in expected.items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        if output not in got:
            raise QuantError(f"{name}: graph preparation lost output '{output}'; this is a quanttool bug")
        problem = mismatch(value, got[output])
        if problem:  # beyond the plain relative tolerance: measure what float32 rounding does to this model
            if noise is None:
                noise = rounding_noise(original, feeds, expected)
            problem = mismatch(value, got[output], noise.get(output, 0.0))
        if problem:
            raise QuantError(f"{name}: graph preparation changed output '{output}' ({problem}); "
                             "this is a quanttool bug, please report it with the model")
    return True
