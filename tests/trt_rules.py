"""A checker of TensorRT's documented rules for Q/DQ ONNX models (no GPU here, so no TensorRT to ask).

Rules, with their sources (README "Deploying"):
1. QuantizeLinear's y_zero_point and DequantizeLinear's x_zero_point must be 0, and the quantized type int8
   (onnx-tensorrt docs/operators.md: DequantizeLinear "INT8, x_zero_point must be zero", QuantizeLinear
   "y_zero_point must be 0"; NVIDIA "Working with Quantized Types": symmetric quantization only).
2. No DequantizeLinear of int32 (biases stay float; TensorRT quantizes them itself) and no integer-only ops
   (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger: "N" in operators.md; com.microsoft ops unknown).
3. Scales are positive finite float32; activations per tensor (scalar scale); per-channel scales only on a
   constant weight, along its output-channel axis (Conv 0, ConvTranspose 1, Gemm transB ? 0 : 1, MatMul last),
   which needs opset >= 13 for the axis attribute.
4. Every QuantizeLinear feeds DequantizeLinear nodes only (explicit quantization is Q -> DQ pairs).
5. Conv/ConvTranspose weights are initializers, or a DequantizeLinear of one ("Weights W must be an initializer").
6. Placement ("Q/DQ layer placement recommendations"): the output of a Conv/Gemm/MatMul is not quantized
   when its only consumer is a Relu/Clip or a residual Add it would fuse with (a requantization there
   prevents the fusion).
`violations(model) -> list[str]`, empty when every rule holds.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _out_axis(node, ndim: int) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return ndim - 1  # MatMul [.., K, N]


def violations(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    found = []
    for n in g.node:
        where = f"{n.op_type} '{n.name}'"
        if n.domain not in ("", "ai.onnx") or n.op_type in INTEGER_OPS:
            found.append(f"{where}: not a TensorRT op (rule 2)")
            continue
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = inits.get(n.input[1])
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if scale is None or scale.dtype != np.float32 or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            found.append(f"{where}: scale must be a positive finite float32 initializer (rule 3)")
            continue
        if zp is not None and np.any(zp != 0):
            found.append(f"{where}: zero point {zp.reshape(-1)[:3]} is not 0 (rule 1)")
        data = inits.get(n.input[0])
        qtype = zp.dtype if zp is not None else (data.dtype if n.op_type == "DequantizeLinear" and data is not None
                                                  else np.dtype(np.uint8))  # no zp: uint8 by the ONNX default
        if qtype != np.int8:
            found.append(f"{where}: quantized type {qtype} is not int8 (rules 1, 2)")
        if scale.ndim > 0 and scale.size > 1:
            if data is None and n.op_type == "DequantizeLinear":
                found.append(f"{where}: per-channel scales on an activation (rule 3)")
            elif opset < 13:
                found.append(f"{where}: per-channel axis needs opset >= 13, model has {opset} (rule 3)")
            else:
                for user in consumers.get(n.output[0], []):
                    if user.op_type in WEIGHTED and user.input[1] == n.output[0] and data is not None:
                        axis = _attr(n, "axis", 1) % data.ndim
                        if axis != _out_axis(user, data.ndim):
                            found.append(f"{where}: per-channel axis {axis} is not the output-channel axis of "
                                         f"{user.op_type} '{user.name}' (rule 3)")
        if n.op_type == "QuantizeLinear":
            bad = [u for u in consumers.get(n.output[0], []) if u.op_type != "DequantizeLinear"]
            if bad:
                found.append(f"{where}: feeds {bad[0].op_type} '{bad[0].name}', not a DequantizeLinear (rule 4)")
    for n in g.node:
        if n.op_type in ("Conv", "ConvTranspose"):
            w = n.input[1]
            src = producer.get(w)
            ok = w in inits or (src is not None and src.op_type == "DequantizeLinear" and src.input[0] in inits)
            if not ok:
                found.append(f"{n.op_type} '{n.name}': weight is not an initializer (rule 5)")
        if n.op_type in WEIGHTED and n.output:
            users = consumers.get(n.output[0], [])
            if len(users) == 1 and users[0].op_type == "QuantizeLinear":
                after = [u for dq in consumers.get(users[0].output[0], []) for u in consumers.get(dq.output[0], [])]
                if len(after) == 1 and after[0].op_type in ("Relu", "Clip", "Add"):
                    found.append(f"{n.op_type} '{n.name}': output requantized before the {after[0].op_type} "
                                 f"it fuses with (rule 6)")
    return found
