"""Hardware parameters (--params): per quantized op, every scale and zero point, the int32 bias and the
requantization multipliers M = 2^-shift * m0 / 2^31 (qparams.decompose_multiplier), as a JSON-able dict.

Integer reference for a conv/gemm/matmul output channel c (what the test reproduces bit-exactly up to 1 LSB):
  acc = sum (q_in - zp_in) * q_w[c] + bias[c]            (int32; weights are symmetric, zero point 0)
  out = clamp(zp_out + round(acc * m0[c] / 2^(31 + shift[c])), -128, 127)
with M_c = s_in * s_w[c] / s_out. Add: M_i = s_i / s_out per input; Mul: M = s_a * s_b / s_out;
Concat and pass-through/pooling ops: M_i = s_i / s_out. Sigmoid-like ops are lookup tables (no multiplier).
"""

from __future__ import annotations

from ..ops import ops_where
from ..qparams import QParam, decompose_multiplier

NONLINEAR = ops_where(lookup=True)  # lookup tables: no multiplier


def _multiplier(m: float) -> dict:
    m0, shift = decompose_multiplier(m)
    return {"M": m, "m0": m0, "shift": shift}


def hardware_params(result, table: dict) -> dict:
    def qp(name: str) -> QParam:
        value = table[name]
        return value if isinstance(value, QParam) else QParam(*value)

    layers = []
    for op in result.quantized:
        ins = []
        for name in op.inputs:
            ins.append({"name": name, "scale": float(qp(name).scale), "zero_point": int(qp(name).zero_point)})
        for name, (scale, zp) in op.constants.items():
            ins.append({"name": name, "scale": scale, "zero_point": zp, "constant": True})
        out = qp(op.output)
        layer = {
            "node": op.node, "op_type": op.op_type, "form": op.form, "fused_activation": op.fused,
            "inputs": ins, "output": {"name": op.output, "scale": float(out.scale), "zero_point": int(out.zero_point)},
        }
        if op.float_output:  # the scale is what an all-int8 target would use; the ONNX model outputs float
            layer["output"]["float_in_model"] = True
        if op.weight_scales is not None:
            layer["weight"] = {"name": op.weight, "axis": op.weight_axis, "scales": op.weight_scales,
                               "zero_point": 0}
            if op.bias is not None:
                layer["bias"] = op.bias
            s_in = ins[0]["scale"]
            layer["requant"] = [_multiplier(s_in * s_w / out.scale) for s_w in op.weight_scales]
        elif op.op_type == "Mul" or (op.op_type == "MatMul" and len(ins) == 2):
            layer["requant"] = [_multiplier(ins[0]["scale"] * ins[1]["scale"] / out.scale)]
        elif op.op_type not in NONLINEAR:
            layer["requant"] = [_multiplier(i["scale"] / out.scale) for i in ins]
        layers.append(layer)
    return {
        "format": getattr(result, "fmt", "qdq"),
        "convention": "real = scale * (q - zero_point); int8 storage; requant M = m0 * 2^-(31 + shift)",
        "layers": layers,
        "kept_fp32": [{"node": n, "op_type": t, "reason": r} for n, t, r in result.kept_fp32],
    }
