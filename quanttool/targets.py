"""Deployment targets: what each runtime takes from an int8 ONNX model, as data (README "Deploying").

One frozen profile per `--target`. The rewrite reads it; nothing else in quanttool names a runtime.

- generic (default): runs in onnxruntime and in OpenVINO's CPU plugin with their default settings. Activations
  symmetric (zero point 0): OpenVINO's CPU plugin, whose default inference precision is bf16 on AMX CPUs, failed
  to compile non-zero activation zero points there with its defaults (REFERENCE.md section 6).
- onnxruntime: any scheme (auto puts zero point -128 on never-negative tensors, so a Relu/Clip(0, 6) folds into
  the quantization of its producer and onnxruntime runs Conv+Relu as one QLinearConv), QDQ or QOperator.
- tensorrt: the ONNX parser takes QuantizeLinear/DequantizeLinear with zero point 0 and int8 data only (no int32
  DequantizeLinear, so biases stay float and TensorRT quantizes them itself), no QLinear* ops. Q/DQ go on the
  inputs of the layers TensorRT runs in int8 (Conv, ConvTranspose, Gemm, MatMul, pooling, residual Add), not on
  their outputs, and the Conv output entering a residual Add stays float so TensorRT fuses Conv + Add (+ Relu)
  (onnx-tensorrt docs/operators.md; NVIDIA, "Working with Quantized Types", Q/DQ layer placement).
- openvino: zero point 0, Q/DQ on the inputs of the same ops as tensorrt, float biases: NNCF's layout, what
  OpenVINO's low-precision transformations are written for. In OpenVINO's CPU plugin every quanttool layout ran
  faster than fp32 (scripts/bench_runtime.py); which one was fastest changed from run to run on the shared machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError
from .ops import ops_where

WEIGHT_OPS = frozenset(ops_where(weight=True))


@dataclass(frozen=True)
class Target:
    name: str
    summary: str  # one line for --help and the summary
    schemes: tuple[str, ...]  # --scheme values allowed; the first is the default
    formats: tuple[str, ...]  # --format values allowed; the first is the default
    int32_bias: bool  # bias as int32 DequantizeLinear (scale s_in * s_w); False: the float bias stays
    inputs_only: bool  # Q/DQ only on inputs of int8 ops (and the producer's output stays float) vs around each op
    int8_ops: frozenset[str] | None  # op types run in int8 (None: every op quanttool knows)
    per_channel: frozenset[str] = WEIGHT_OPS  # weight ops with per-output-channel scales (others per-tensor)

    def zero_point_zero(self) -> bool:
        return self.schemes == ("symmetric",)


INPUT_QUANTIZED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "AveragePool", "GlobalAveragePool"})

TARGETS = {
    "generic": Target("generic", "symmetric activations, int32 biases, QDQ: runs in onnxruntime and OpenVINO with "
                      "their default settings", ("symmetric",), ("qdq",), True, False, None),
    "onnxruntime": Target("onnxruntime", "any scheme (auto: Relu folded into its producer), QDQ or QOperator",
                          ("auto", "symmetric", "asymmetric"), ("qdq", "qoperator"), True, False, None),
    "tensorrt": Target("tensorrt", "zero point 0 only, float biases, Q/DQ on the inputs of Conv/Gemm/MatMul/pooling/"
                       "residual Add only", ("symmetric",), ("qdq",), False, True, INPUT_QUANTIZED_OPS),
    "openvino": Target("openvino", "zero point 0, float biases, Q/DQ on the inputs of Conv/Gemm/MatMul/pooling/"
                       "residual Add only (NNCF's layout, faster there)", ("symmetric",), ("qdq",), False, True,
                       INPUT_QUANTIZED_OPS),
}
DEFAULT = "generic"


def resolve(target: str | None, scheme: str | None, fmt: str | None) -> tuple[Target, str, str]:
    """(profile, scheme, format) from the options, the target's defaults filling what was not given.
    Without --target: generic, or onnxruntime when --format qoperator or a non-zero-point scheme asks for it; the
    scheme then stays generic's (symmetric), so --format alone never changes the table."""
    implied = target is None
    if implied:
        target = "onnxruntime" if fmt == "qoperator" or scheme in ("auto", "asymmetric") else DEFAULT
    profile = TARGETS[target]
    scheme = scheme or (TARGETS[DEFAULT].schemes[0] if implied else profile.schemes[0])
    fmt = fmt or profile.formats[0]
    if scheme not in profile.schemes:
        raise UsageError(f"--scheme {scheme} does not fit --target {target}: it takes zero point 0 only "
                         f"(--scheme {'|'.join(profile.schemes)}); drop --scheme or choose --target onnxruntime")
    if fmt not in profile.formats:
        raise UsageError(f"--format {fmt} does not fit --target {target} (--format {'|'.join(profile.formats)}); "
                         f"QOperator ops run in onnxruntime only: use --target onnxruntime")
    return profile, scheme, fmt
