"""Hardware parameters (--params): everything an integer-only implementation of the int8 model needs, per
quantized op, as a JSON-able dict (schema: README, "--params JSON"). `quanttool simulate` runs from it.

Per op: the exact int8 tensor and initializer names in the int8 model, shapes and attributes (strides, pads,
dilations, group, kernel...), input/weight/output scales and zero points, the int32 bias, the requantization
multipliers M as int32 m0 and a shift (M = m0 * 2^-(31 + shift)), the rounding rule, the output clamp
(fused or lone Relu/ReLU6 mapped to integers), pad values, pooling divisors and 256-entry lookup tables.

The multipliers are the float32 values onnxruntime itself forms (its MLAS kernels, read in its source):
- QLinearConv / QGemm / QLinearMatMul: M_c = (s_in * s_w[c]) / s_out in float32; the requantization
  (MlasRequantizeOutput) converts acc + bias to float32, multiplies by M_c, rounds half to even
  (_mm_cvtps_epi32 in the default MXCSR mode), adds the zero point and saturates. A float32 M has 24
  significant bits, so m0 holds it exactly and `round_half_even(acc * m0 / 2^(31 + shift))` is the same value
  except where float32(acc * M) itself rounds across a .5 (|acc| > 2^24, or a product within 2^-24 of a tie):
  at most 1 LSB. Layers marked `float32_product` say so; an integer design that wants onnxruntime's numbers
  bit for bit rounds acc, then acc * m0, to 24 significant bits (ties to even) before the final rounding
  (quanttool simulate's default; measured bit-exact on the demo).
- QLinearMul: M = (s_a * s_b) / s_c in float32, same rounding. QLinearGlobalAveragePool:
  M = s_in / (s_out * N) in float32 (N = H*W), acc = sum(q - zp_in), same rounding.
- QLinearAdd (MLAS, x86 and ARM): fixed point, not float. r_a = s_a / s_c, r_b = s_b / s_c (float32),
  shift = 21 - floor(log2(max(r_a, r_b))), m_a = lrintf(r_a * 2^shift), m_b likewise (22-bit multipliers),
  acc = m_a (q_a - zp_a) + m_b (q_b - zp_b) in int32, then a rounding right shift by `shift` with ties
  rounded AWAY from zero, then + zp_c and saturation. Integer-exact.
- QuantizeLinear, and every op onnxruntime runs through a lookup table (QLinearSigmoid, QLinearLeakyRelu, a
  QLinearConcat input whose parameters differ, a float op between DequantizeLinear and QuantizeLinear):
  dequantize in float32, apply the function, divide by the output scale, round half to even, saturate. Here
  these are 256-entry tables computed offline the same way, so the integer side is one lookup.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ops import ops_where
from ..qparams import QParam, decompose_multiplier, qrange
from .fuse import activation_bounds
from .plan import constant_values

# one-input elementwise functions onnxruntime evaluates per int8 value: a lookup table is exact for them
LUT_FUNCTIONS = {
    "Sigmoid": lambda x, a: 1.0 / (1.0 + np.exp(-x)),
    "HardSigmoid": lambda x, a: np.clip(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0.0, 1.0),
    "LeakyRelu": lambda x, a: np.where(x >= 0, x, a.get("alpha", 0.01) * x),
}
# ops that only move (or max-select) int8 values; a lone Relu/Clip is handled as a clamp instead
DATA_MOVEMENT = ops_where(kind="move") - ops_where(activation=True) | {"MaxPool", "GlobalMaxPool", "Resize"}
F32 = np.float32

FORMULAS = {
    "linear": "acc[c] = sum (q_in - zp_in) * q_w[c] + bias[c] (int32); "
              "q_out = clamp(zp_out + round_half_even(acc[c] * m0[c] / 2^(31 + shift[c])), clamp)",
    "mul": "acc = (q_a - zp_a) * (q_b - zp_b); q_out = clamp(zp_out + round_half_even(acc * m0 / 2^(31 + shift)), clamp)",
    "add": "acc = m_a * (q_a - zp_a) + m_b * (q_b - zp_b) (int32); "
           "q_out = clamp(zp_out + round_half_away(acc / 2^shift), clamp)",
    "global_average": "acc = sum over H*W of (q_in - zp_in); "
                      "q_out = clamp(zp_out + round_half_even(acc * m0 / 2^(31 + shift)), clamp) (M includes 1/(H*W))",
    "average": "acc = sum over the window of (q_in - zp_in) (pads count as 0); d = divisor; "
               "q_out = clamp(zp_out + round_half_even(acc * m0 / (d * 2^(31 + shift))), clamp)",
    "lut": "q_out = lut[q_in + 128]",
    "move": "the same op on the int8 values (pads with pad_value); then lut[q + 128] when a lut is given",
    "clip": "q_out = clamp(q_in, clamp) when input and output parameters are equal, else lut[q_in + 128]",
    "concat": "concatenate the inputs, each through its lut[q + 128] when it has one",
}


def f32_multiplier(m: np.float32) -> dict:
    """M as onnxruntime holds it (float32) and as int32 m0 with shift: M = m0 * 2^-(31 + shift), exactly."""
    m0, shift = decompose_multiplier(float(m))
    return {"M": float(m), "m0": m0, "shift": shift}


def global_average_requant(s_in: float, s_out: float, n: int) -> list[dict]:
    """onnxruntime's QLinearGlobalAveragePool multiplier s_in / (s_out * N), in float32."""
    return [f32_multiplier(F32(s_in) / (F32(s_out) * F32(n)))]


def add_multipliers(r_a: np.float32, r_b: np.float32) -> dict:
    """onnxruntime's QLinearAdd fixed point (MlasQLinearAddKernelHelper): 22-bit multipliers and one shift."""
    exponent = math.frexp(float(max(r_a, r_b)))[1] - 1  # floor(log2(r)) = the float32 exponent field - 127
    shift = 21 - exponent
    to_int = lambda r: int(np.rint(F32(r) * F32(2.0 ** shift)))  # lrintf: current mode, round half to even
    return {"multipliers": [to_int(r_a), to_int(r_b)], "shift": shift}


def lookup_table(fn, s_in: float, zp_in: int, s_out: float, zp_out: int) -> list[int]:
    """lut[q + 128] = quantize(fn(dequantize(q))) in float32, as onnxruntime's QlinearBuildLookupTable."""
    qmin, qmax = qrange(8)
    q = np.arange(qmin, qmax + 1)
    x = (q - zp_in).astype(F32) * F32(s_in)
    y = np.asarray(fn(x), dtype=F32)
    return np.clip(np.rint(y / F32(s_out)) + zp_out, qmin, qmax).astype(int).tolist()


def int_clamp(lo: float, hi: float, out: QParam) -> list[int]:
    """A real-valued clamp [lo, hi] (Relu: [0, inf), ReLU6: [0, 6]) on the output's int8 grid."""
    qmin, qmax = qrange(8)
    bound = lambda v, default: default if not math.isfinite(v) else int(np.rint(F32(v) / F32(out.scale))) + out.zero_point
    return [max(qmin, bound(lo, qmin)), min(qmax, bound(hi, qmax))]


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Shapes by tensor name from ONNX shape inference (dynamic dims by name, unknown ones None)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # shapes are informative only; custom ops may defeat inference
        inferred = model
    g = inferred.graph
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                        for d in vi.type.tensor_type.shape.dim]
              for vi in list(g.input) + list(g.value_info) + list(g.output) if vi.type.tensor_type.HasField("shape")}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    return shapes


class _Int8Model:
    """Name look-ups in the written int8 model: nodes by name, initializers behind DequantizeLinear, shapes.
    `X_quantized` has the shape of the fp32 tensor X: onnx cannot infer shapes through onnxruntime's
    com.microsoft QLinear ops, so the fp32 graph's shapes (ConvertResult.shapes) fill in."""

    def __init__(self, model: onnx.ModelProto, fp32_shapes: dict[str, list] | None = None):
        self.shapes = tensor_shapes(model)
        for name, shape in (fp32_shapes or {}).items():
            self.shapes.setdefault(f"{name}_quantized", shape)
            self.shapes.setdefault(name, shape)
        self.inits = {t.name: t for t in model.graph.initializer}
        self.nodes = {n.name: n for n in model.graph.node}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.constants = constant_values(model.graph)

    def initializer(self, tensor: str) -> str | None:
        """The initializer a node input reads, directly or through a DequantizeLinear."""
        if tensor in self.inits:
            return tensor
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in self.inits:
            return node.input[0]
        return None

    def node_input(self, node: onnx.NodeProto, index: int) -> str | None:
        return self.initializer(node.input[index]) if len(node.input) > index and node.input[index] else None


WEIGHT_SLOT = {"qdq": (1, 2), "QLinearConv": (3, 8), "QGemm": (3, 6), "QLinearMatMul": (3, None)}


def hardware_params(result, table: dict) -> dict:
    int8 = _Int8Model(result.model, getattr(result, "shapes", None))

    def qp(name: str) -> QParam:
        value = table[name]
        return value if isinstance(value, QParam) else QParam(*value)

    layers = [_layer(op, qp, int8) for op in result.quantized]
    return {
        "format": getattr(result, "fmt", "qdq"),
        "convention": "real = scale * (q - zero_point); int8 storage [-128, 127]; M = m0 * 2^-(31 + shift); "
                      "round_half_even(v / 2^n): nearest integer, ties to the even one; round_half_away: ties "
                      "away from zero; clamp = [lo, hi] applied last; lut[q + 128] for q in [-128, 127]",
        "layers": layers,
        "kept_fp32": [{"node": n, "op_type": t, "reason": r} for n, t, r in result.kept_fp32],
    }


def _layer(op, qp, int8: _Int8Model) -> dict:
    node = int8.nodes.get(op.node)
    attrs = {a.name: _jsonable(helper.get_attribute_value(a)) for a in node.attribute} if node is not None else {}
    ins = []
    for name in op.inputs:
        q = qp(name)
        ins.append({"name": name, "int8_tensor": f"{name}_quantized", "shape": int8.shapes.get(f"{name}_quantized"),
                    "scale": float(q.scale), "zero_point": int(q.zero_point)})
        if f"{name}_quantized" not in int8.producer:  # a Conv output fused into a residual Add (inputs_only targets)
            ins[-1].update(int8_tensor=None, shape=int8.shapes.get(name), float_in_model=True)
    for name, (scale, zp) in op.constants.items():
        init = _constant_initializer(node, name, int8)
        ins.append({"name": name, "initializer": init, "shape": int8.shapes.get(init), "scale": scale,
                    "zero_point": zp, "constant": True})
    if node is not None:  # operands in the node's order (Concat's order matters)
        ins.sort(key=lambda i: _position(node, i, int8))
    out = qp(op.output)
    output = {"name": op.output, "int8_tensor": None if op.float_output else f"{op.output}_quantized",
              "shape": int8.shapes.get(f"{op.output}_quantized", int8.shapes.get(op.output)),
              "scale": float(out.scale), "zero_point": int(out.zero_point)}
    if op.float_output:  # the scale is what an all-int8 target would use; the ONNX model outputs float
        output["float_in_model"] = True
    layer = {"node": op.node, "op_type": op.op_type, "form": op.form, "fused_activation": op.fused,
             "attributes": attrs, "inputs": ins, "output": output, "clamp": list(qrange(8))}
    if len(op.outputs) > 1:  # Split: every output, each with its lookup table when its parameters differ
        layer["outputs"] = []
        for name in op.outputs:
            o = qp(name)
            entry = {"name": name, "int8_tensor": f"{name}_quantized", "scale": float(o.scale),
                     "zero_point": int(o.zero_point)}
            if not _same(ins[0], o):
                entry["lut"] = lookup_table(lambda x: x, ins[0]["scale"], ins[0]["zero_point"], o.scale, o.zero_point)
            layer["outputs"].append(entry)
    bounds = op.act_bounds if op.fused else (activation_bounds(node, int8.constants) if node is not None else None)
    if bounds is not None:
        finite = lambda v: v if math.isfinite(v) else None  # JSON has no infinity
        layer["activation"] = {"op": op.fused or op.op_type, "min": finite(bounds[0]), "max": finite(bounds[1]),
                               "fused": op.fused is not None}
        layer["clamp"] = int_clamp(*bounds, out)
    _family(layer, op, node, ins, out, int8)
    return layer


def _family(layer: dict, op, node, ins: list[dict], out: QParam, int8: _Int8Model) -> None:
    """Requantization, rounding, tables, pads and divisors by op family."""
    t = op.op_type
    s_out, even = F32(out.scale), "half_to_even"
    if op.weight_scales is not None:
        w_slot, b_slot = WEIGHT_SLOT.get(op.form, (None, None))
        layer["weight"] = {"name": op.weight, "initializer": int8.node_input(node, w_slot) if w_slot else None,
                           "axis": op.weight_axis, "scales": op.weight_scales, "zero_point": 0}
        layer["weight"]["shape"] = int8.shapes.get(layer["weight"]["initializer"])
        if op.bias is not None:
            layer["bias"] = op.bias
            layer["bias_initializer"] = int8.node_input(node, b_slot) if b_slot else None
        s_in = F32(ins[0]["scale"])
        layer["requant"] = [f32_multiplier((s_in * F32(s_w)) / s_out) for s_w in op.weight_scales]
        layer.update(rounding=even, formula=FORMULAS["linear"], pad_value=ins[0]["zero_point"], float32_product=True)
    elif t == "Mul" or (t == "MatMul" and len(ins) == 2):
        layer["requant"] = [f32_multiplier((F32(ins[0]["scale"]) * F32(ins[1]["scale"])) / s_out)]
        layer.update(rounding=even, formula=FORMULAS["mul" if t == "Mul" else "linear"], float32_product=True)
    elif t == "Add":
        ratios = [F32(i["scale"]) / s_out for i in ins]
        layer["requant"] = [f32_multiplier(r) for r in ratios]
        layer["add"] = add_multipliers(*ratios)
        layer.update(rounding="half_away_from_zero", formula=FORMULAS["add"])
    elif t == "GlobalAveragePool":
        shape = ins[0]["shape"] or []
        n = int(np.prod(shape[2:])) if all(isinstance(d, int) and d > 0 for d in shape[2:]) and shape else None
        layer["divisor"] = n  # None when H*W is not static: then M is formed for the H*W met at run time
        if n is not None:
            layer["requant"] = global_average_requant(ins[0]["scale"], out.scale, n)
        layer.update(rounding=even, formula=FORMULAS["global_average"], float32_product=True)
    elif t == "AveragePool":
        include = int(layer["attributes"].get("count_include_pad", 0))
        layer["divisor"] = "kernel_area" if include else "valid_count"
        layer["pad_value"] = ins[0]["zero_point"]
        layer["requant"] = [f32_multiplier(F32(ins[0]["scale"]) / s_out)]
        layer.update(rounding=even, formula=FORMULAS["average"])
    elif t in LUT_FUNCTIONS:
        fn = LUT_FUNCTIONS[t]
        layer["lut"] = lookup_table(lambda x: fn(x, layer["attributes"]), ins[0]["scale"], ins[0]["zero_point"],
                                    out.scale, out.zero_point)
        layer.update(rounding=even, formula=FORMULAS["lut"])
    elif t in ("Relu", "Clip"):
        lo, hi = activation_bounds(node, int8.constants) or (-math.inf, math.inf)
        if _same(ins[0], out):
            layer["requant"] = [f32_multiplier(F32(1.0))]
        else:
            layer["lut"] = lookup_table(lambda x: np.clip(x, lo, hi), ins[0]["scale"], ins[0]["zero_point"],
                                        out.scale, out.zero_point)
        layer.update(rounding=even, formula=FORMULAS["clip"])
    elif t == "Concat":
        for i in ins:
            if not _same(i, out):
                i["lut"] = lookup_table(lambda x: x, i["scale"], i["zero_point"], out.scale, out.zero_point)
        layer.update(rounding=even, formula=FORMULAS["concat"])
    elif t in DATA_MOVEMENT:
        if not _same(ins[0], out):
            layer["lut"] = lookup_table(lambda x: x, ins[0]["scale"], ins[0]["zero_point"], out.scale, out.zero_point)
        layer["pad_value"] = _pad_value(t, node, ins[0], int8)
        layer.update(rounding=even, formula=FORMULAS["move"])
    elif t == "Softmax":
        layer.update(_softmax(layer, ins[0], out))
    else:  # anything else: the real-valued ratio, for reference; no integer recipe given
        layer["requant"] = [f32_multiplier(F32(i["scale"]) / s_out) for i in ins]
        layer.update(rounding=even, formula=None)


def _position(node: onnx.NodeProto, entry: dict, int8: _Int8Model) -> int:
    names = {entry["name"], f"{entry['name']}_quantized", f"{entry['name']}_dequantized"}
    for k, tensor in enumerate(node.input):
        if tensor in names or (entry.get("constant") and int8.initializer(tensor) == entry["initializer"]):
            return k
    return len(node.input)


def softmax_table(x_scale: float, reduce_len: int) -> list[int]:
    """onnxruntime's QLinearSoftmax exp table (int8 input): entry uint8(i - 128) = lrint(qscale * exp((i - 255) *
    x_scale)) for i in 0..255, qscale = min(2^32 - 1 / reduce_len, 2^23 - 1), in double precision."""
    qscale = min((2**32 - 1) / reduce_len, float(0x7FFFFF))
    table = [0] * 256
    for i in range(256):
        table[(i - 128) % 256] = int(np.rint(qscale * math.exp((i - 255) * float(F32(x_scale)))))
    return table


def _softmax(layer: dict, inp: dict, out: QParam) -> dict:
    """Integer softmax as onnxruntime's QLinearSoftmax runs it (its QDQ optimizer turns DQ -> Softmax -> Q into one)."""
    axis = int(layer["attributes"].get("axis", -1))
    shape = inp["shape"] or []
    d = shape[axis] if shape and isinstance(shape[axis], int) and shape[axis] > 0 else None
    return {"reduce_len": d, "exp_table": softmax_table(inp["scale"], d) if d else None,
            "y_scale_int": int(F32(1.0) / F32(out.scale)), "rounding": "half_up",
            "formula": "idx = uint8(127 - max(row) + q) (table index); t = exp_table[idx]; sum = sum of t over the "
                       "row (uint32); q_out = int8(low byte of (t * y_scale_int + sum // 2) // sum + zp_out); "
                       "exp_table formed for the row length at run time when reduce_len is null"}


def _same(i: dict, out: QParam) -> bool:
    return F32(i["scale"]) == F32(out.scale) and i["zero_point"] == out.zero_point


def _pad_value(op_type: str, node, inp: dict, int8: _Int8Model) -> int | None:
    """The int8 value padding takes: MaxPool pads never win (-128); Pad's constant on the input's grid."""
    if op_type == "MaxPool":
        return qrange(8)[0]
    if op_type != "Pad" or node is None:
        return None
    mode = helper.get_attribute_value(next((a for a in node.attribute if a.name == "mode"), None) or
                                      helper.make_attribute("mode", b"constant"))
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return None
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        const = int8.constants.get(node.input[2])
        value = float(const.reshape(-1)[0]) if const is not None else 0.0
    qmin, qmax = qrange(8)
    return int(np.clip(np.rint(F32(value) / F32(inp["scale"])) + inp["zero_point"], qmin, qmax))


def _constant_initializer(node, name: str, int8: _Int8Model) -> str | None:
    """The int8 initializer of a constant operand (named `<name>_quantized`, made unique if needed)."""
    if node is None:
        return None
    for tensor in node.input:
        init = int8.initializer(tensor)
        if init is not None and init.startswith(f"{name}_quantized") and int8.inits[init].data_type == onnx.TensorProto.INT8:
            return init
    return None


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value).tolist()
    if isinstance(value, (onnx.GraphProto,)):
        return None
    return value
