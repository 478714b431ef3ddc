"""Run an int8 ONNX model from its --params file alone: every quantized op by an integer kernel, the rest
(graph inputs' QuantizeLinear, DequantizeLinear before float consumers, ops kept fp32, outputs left float)
as the int8 model itself computes them in float.

Only what the graph outputs need is computed. A quantized op with no integer kernel here (ConvTranspose,
Resize other than nearest, 3-D pooling...) is run the way the QDQ model spells it, in float
between its DequantizeLinear and QuantizeLinear, and listed in `float_layers`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..errors import QuantError, first_line
from ..rewrite.params import DATA_MOVEMENT
from ..rewrite.plan import constant_values
from . import elementwise, linear, movement, pool

# op type -> the integer kernel family that runs it
KERNELS: dict[str, str] = {
    "Conv": "linear", "Gemm": "linear", "MatMul": "linear", "Add": "add", "Mul": "mul",
    "Sigmoid": "table", "HardSigmoid": "table", "LeakyRelu": "table", "Relu": "clip", "Clip": "clip",
    "GlobalAveragePool": "global_average", "AveragePool": "average", "MaxPool": "max", "GlobalMaxPool": "global_max",
    "Concat": "concat", "Softmax": "softmax",
    **{op: "move" for op in DATA_MOVEMENT - {"MaxPool", "GlobalMaxPool"}},
}
F32 = np.float32


def _axis_shape(node: onnx.NodeProto, ndim: int, size: int) -> list[int] | None:
    if size <= 1:
        return None
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def quantize_linear(node, x, scale, zp=None):
    """onnxruntime's QuantizeLinear: float32 x / scale, round half to even, + zero point, saturate."""
    zp = np.zeros((), np.int8) if zp is None else zp
    shape = _axis_shape(node, x.ndim, np.size(scale))
    scale, zp = (scale.reshape(shape), zp.reshape(shape)) if shape else (scale, zp)
    info = np.iinfo(zp.dtype)
    q = np.rint(x.astype(F32) / scale.astype(F32)) + zp.astype(np.int64)
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def dequantize_linear(node, q, scale, zp=None):
    zp = np.zeros((), q.dtype) if zp is None else zp
    shape = _axis_shape(node, q.ndim, np.size(scale))
    scale, zp = (scale.reshape(shape), zp.reshape(shape)) if shape else (scale, zp)
    return (q.astype(np.int64) - zp.astype(np.int64)).astype(F32) * scale.astype(F32)


def why_float(layer: dict) -> str | None:
    """Why a quantized op runs as the model spells it in float (None: it has an integer kernel here)."""
    op, attrs = layer["op_type"], layer["attributes"]
    shape = layer["inputs"][0].get("shape") or []
    if op not in KERNELS:
        return "no integer kernel"
    if any(i.get("float_in_model") for i in layer["inputs"]):
        return "an input is float in the model"
    if op == "Resize" and attrs.get("mode", "nearest") != "nearest":
        return f"Resize mode {attrs.get('mode')}"
    if op == "Pad" and layer.get("pad_value") is None:
        return "Pad other than constant"
    if op in ("AveragePool", "MaxPool") and attrs.get("ceil_mode", 0):
        return "ceil_mode=1"
    if op in ("Conv", "AveragePool", "MaxPool") and shape and len(shape) != 4:
        return "not 2-D"
    if op == "Gemm" and attrs.get("transA", 0):
        return "Gemm transA=1"
    return None


class Simulation:
    def __init__(self, model: onnx.ModelProto, params: dict, where: str = "the params file",
                 rounding: str = "onnxruntime"):
        """rounding: "onnxruntime" rounds acc and acc * m0 to float32's 24 significant bits where onnxruntime
        computes in float32 (layers marked float32_product), so the integers match it bit for bit;
        "fixed-point" is the plain round_half_even(acc * m0 / 2^(31 + shift)) of Jacob et al."""
        graph = model.graph
        self.rounding = rounding
        self.nodes = list(graph.node)
        self.opsets = {o.domain or "": o.version for o in model.opset_import}
        self.inits = constant_values(graph)
        self.by_name = {n.name: n for n in self.nodes}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.outputs = [o.name for o in graph.output]
        self.layers: dict[str, dict] = {}  # int8 tensor -> the layer computing it with an integer kernel
        self.float_layers: list[dict] = []
        known = set(self.producer) | set(self.inits) | {i.name for i in graph.input}
        for layer in params.get("layers", []):
            if layer["node"] not in self.by_name:
                raise QuantError(f"{where}: node {layer['node']!r} is not in the int8 model; pass the --params "
                                 f"file written together with this model")
            if layer["output"].get("float_in_model"):
                continue  # the model computes this output in float itself
            outs = [o["int8_tensor"] for o in layer.get("outputs", [layer["output"]])]
            reason = why_float(layer) or (None if all(o in known for o in outs) else "int8 output not in the model")
            if reason is not None:
                self.float_layers.append({**layer, "why_float": reason})
                continue
            for out in outs:
                self.layers[out] = layer
        int8 = [l for l in params.get("layers", []) if l["output"].get("int8_tensor")]
        if int8 and not any(l["output"]["int8_tensor"] in known for l in int8):
            raise QuantError(f"{where}: none of its int8 tensors is in the model; -m must be the int8 model "
                             f"written together with this --params file, not the fp32 one")

    # --- what to compute ------------------------------------------------------------------------------------
    def _layer_deps(self, layer: dict) -> list[str]:
        deps = [i["int8_tensor"] for i in layer["inputs"] if not i.get("constant")]
        if KERNELS[layer["op_type"]] == "move":  # shapes, indices, pads: as the model computes them
            deps += [x for x in self.by_name[layer["node"]].input[1:] if x]
        return deps

    def _needed(self) -> set[str]:
        needed, stack = set(), list(self.outputs)
        while stack:
            t = stack.pop()
            if t in needed or t in self.inits:
                continue
            needed.add(t)
            if t in self.layers:
                stack += self._layer_deps(self.layers[t])
            elif t in self.producer:
                stack += [x for x in self.producer[t].input if x]
        return needed

    # --- running --------------------------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray], sources: dict[str, np.ndarray] | None = None) -> dict:
        """Every computed tensor by name. With `sources` (onnxruntime's int8 tensors), each integer layer reads
        its inputs from there instead of from this simulation: one layer at a time, no error carried over."""
        values: dict[str, np.ndarray] = {**self.inits, **feeds}
        needed, done = self._needed(), set()
        for node in self.nodes:
            outs = [o for o in node.output if o in needed and o not in values]
            if not outs:
                continue
            layer = self.layers.get(outs[0])
            if layer is not None:
                if layer["node"] not in done:
                    done.add(layer["node"])
                    values.update(self._run_layer(layer, values, sources))
                continue
            values.update(zip(node.output, self._run_float(node, [values.get(x) if x else None for x in node.input])))
        return values

    def _int8(self, spec: dict, values: dict, sources: dict | None) -> np.ndarray:
        if spec.get("constant"):
            return self.inits[spec["initializer"]]
        name = spec["int8_tensor"]
        return (sources if sources is not None and name in sources else values)[name]

    def _run_layer(self, layer: dict, values: dict, sources: dict | None) -> dict[str, np.ndarray]:
        kind = KERNELS[layer["op_type"]]
        ins = [self._int8(spec, values, sources) for spec in layer["inputs"]]
        f32 = self.rounding == "onnxruntime" and bool(layer.get("float32_product"))
        try:
            if kind == "linear":
                weight = self.inits[layer["weight"]["initializer"]] if "weight" in layer else None
                outs = [linear.linear_layer(layer, ins, weight, f32)]
            elif kind == "add":
                outs = [elementwise.add(layer, *ins)]
            elif kind == "mul":
                outs = [elementwise.mul(layer, *ins, f32)]
            elif kind in ("table", "clip"):
                outs = [getattr(elementwise, kind)(layer, ins[0])]
            elif kind == "global_average":
                outs = [pool.global_average(layer, ins[0], f32)]
            elif kind in ("average", "max", "global_max"):
                out = {"average": pool.average, "max": pool.maximum, "global_max": pool.global_maximum}[kind](layer, ins[0])
                outs = [elementwise.lookup(out, layer["lut"]) if "lut" in layer and kind != "average" else out]
            elif kind == "softmax":
                outs = [elementwise.softmax(layer, ins[0])]
            elif kind == "concat":
                outs = [movement.concat(layer, ins)]
            else:
                node = self.by_name[layer["node"]]
                others = [values.get(x) if x else None for x in node.input[1:]]
                outs = movement.move(layer, node, ins[0], others, self.opsets)
        except linear.Unsupported as exc:
            raise QuantError(f"node {layer['node']!r} ({layer['op_type']}): {exc}; not simulated") from None
        names = [o["int8_tensor"] for o in layer.get("outputs", [layer["output"]])]
        return dict(zip(names, outs))

    def _run_float(self, node: onnx.NodeProto, ins: list) -> list[np.ndarray]:
        """A node of the int8 model that is not an integer layer, computed as the model computes it."""
        if node.op_type == "QuantizeLinear":
            return [quantize_linear(node, *[x for x in ins if x is not None])]
        if node.op_type == "DequantizeLinear":
            return [dequantize_linear(node, *[x for x in ins if x is not None])]
        try:
            return movement.run_node(node, ins, self.opsets)
        except Exception as exc:  # onnx.reference covers the standard ops, not onnxruntime's contrib ops
            raise QuantError(f"node {node.name!r} ({node.domain + '.' if node.domain else ''}{node.op_type}) cannot "
                             f"be run by the simulator: {first_line(exc)}") from None
