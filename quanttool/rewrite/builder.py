"""Emit new nodes and initializers under the tensor naming convention (see the package docstring).

For an activation X: X_scale, X_zero_point (scalar initializers), X_quantized (int8), X_dequantized (float;
X itself when X is a graph output), and X_prequant for the float value a graph output X had before Q/DQ.
Weights and biases use the same suffixes on the initializer's name (made unique if one initializer is
quantized two different ways).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import QuantError
from ..qparams import QParam
from .plan import Group, Plan
from .weights import bias_fit_scale, bias_scale, constant_qparam, quantize_bias, quantize_weight


@dataclass
class WeightQ:
    q: str  # int8 initializer
    scale: str
    zero_point: str
    dequantized: str
    scales: np.ndarray  # float32, [C] or []
    axis: int | None
    emitted: bool = False  # whether the DequantizeLinear producing `dequantized` exists yet

    @property
    def names(self) -> list[str]:
        """The stored initializers: [int values, scale, zero point]."""
        return [self.q, self.scale, self.zero_point]


@dataclass
class Builder:
    plan: Plan
    table: dict
    weight_bits: int  # weights and constant operands; activations come from the table
    taken: set[str]  # tensor names in use
    node_names: set[str]  # node names in use (original nodes keep theirs)
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    made: set[str] = field(default_factory=set)  # activation qparams already emitted
    weights: dict[tuple, WeightQ] = field(default_factory=dict)
    domains: set[str] = field(default_factory=set)
    int32_bias: bool = True  # False: biases stay float (TensorRT, OpenVINO)
    raised: dict[str, int] = field(default_factory=dict)  # node -> channels whose weight scale the bias raised

    # --- names -------------------------------------------------------------------------------------------
    def claim(self, name: str) -> str:
        """A convention-fixed name; it must not already exist in the model."""
        if name in self.taken:
            raise QuantError(f"tensor '{name}' already exists in the model, so the int8 naming convention cannot be "
                             f"applied; rename it (was this model already quantized?)")
        self.taken.add(name)
        return name

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def is_output(self, x: str) -> bool:
        return x in self.plan.graph_outputs and x not in self.plan.graph_inputs

    def deq(self, x: str) -> str:
        """Name the float consumers of a quantized activation read."""
        return x if self.is_output(x) else f"{x}_dequantized"

    def src(self, x: str) -> str:
        """Name of the float value before quantization (graph outputs get renamed, their name goes to the DQ)."""
        return f"{x}_prequant" if self.is_output(x) else x

    def qp(self, x: str) -> QParam:
        qp = self.table[x]
        return qp if isinstance(qp, QParam) else QParam(*qp)

    # --- emission ----------------------------------------------------------------------------------------
    def add_init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add_node(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", *,
                 keep_name: bool = False, **attrs):
        """Append a node; `keep_name` for the replacement of an original node, else a fresh unique name."""
        if not keep_name:
            base, k = name, 1
            while name in self.node_names:
                name, k = f"{base}_{k}", k + 1
            self.node_names.add(name)
        node = helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs)
        if domain:
            self.domains.add(domain)
        self.nodes.append(node)
        return node

    def act_qparams(self, x: str) -> tuple[str, str]:
        scale, zp = f"{x}_scale", f"{x}_zero_point"
        if x not in self.made:
            qp = self.qp(x)
            self.add_init(self.claim(scale), np.array(qp.scale, dtype=np.float32))
            self.add_init(self.claim(zp), np.array(int(qp.zero_point), dtype=np.int8))
            self.made.add(x)
        return scale, zp

    def quantize(self, x: str) -> None:
        scale, zp = self.act_qparams(x)
        self.add_node("QuantizeLinear", [self.src(x), scale, zp], [self.claim(f"{x}_quantized")], f"{x}_QuantizeLinear")

    def dequantize(self, x: str) -> None:
        scale, zp = self.act_qparams(x)
        out = self.deq(x) if self.is_output(x) else self.claim(self.deq(x))
        self.add_node("DequantizeLinear", [f"{x}_quantized", scale, zp], [out], f"{x}_DequantizeLinear")

    def float_view(self, x: str, axis: int, channels: int) -> str:
        """X dequantized with its one scale repeated per channel along `axis`, for a Conv/ConvTranspose/Gemm that
        stays float. onnxruntime's WeightBiasQuantization quantizes the float weights of such an op (per tensor,
        to int8) whenever its input comes from a per-tensor DequantizeLinear, so an excluded Conv would run int8
        after all, with one scale for all its channels. A per-channel DequantizeLinear gives the same values and
        does not match that pattern."""
        out = f"{x}_dequantized_per_channel"
        if out not in self.made:
            qp = self.qp(x)
            scale = self.unique(f"{x}_scale_per_channel")
            zp = self.unique(f"{x}_zero_point_per_channel")
            self.add_init(scale, np.full(channels, qp.scale, dtype=np.float32))
            self.add_init(zp, np.full(channels, int(qp.zero_point), dtype=np.int8))
            self.add_node("DequantizeLinear", [f"{x}_quantized", scale, zp], [self.claim(out)],
                          f"{out}_DequantizeLinear", axis=axis)
            self.made.add(out)
        return out

    def weight(self, group: Group) -> WeightQ:
        """The int8 weight, its channel scales raised where the bias would not fit int32 at s_in * s_w. Also when
        the bias stays float: runtimes quantize it that way themselves (onnxruntime's WeightBiasQuantization
        turned a float bias of 3 on a channel with weights ~1e-7 into a saturated int32, losing the 3)."""
        floor = 0.0
        if group.bias_array is not None:
            floor = bias_fit_scale(group.bias_array, self.qp(group.act_inputs[0]).scale, group.weight_axis is not None)
        key = (group.weight, group.weight_axis, group.weight_array.tobytes(), np.asarray(floor).tobytes())
        if key not in self.weights:
            q, scales = quantize_weight(group.weight_array, group.weight_axis, self.weight_bits, floor)
            floors = np.broadcast_to(np.asarray(floor, dtype=np.float32), scales.shape)
            raised = int(np.count_nonzero((floors > 0) & (floors >= scales)))  # the floor, not max|W|/127, won
            if raised:
                self.raised[group.name] = raised
            self.weights[key] = self._const_q(group.weight, q, scales, group.weight_axis)
        return self.weights[key]

    def constant(self, name: str) -> WeightQ:
        """Per-tensor int8 for a constant operand of Add/Mul/Concat."""
        key = (name, "const")
        if key not in self.weights:
            value = self.plan.constants[name]
            qp = constant_qparam(value, self.weight_bits)
            qmax = 2 ** (self.weight_bits - 1) - 1
            q = np.clip(np.round(value.astype(np.float64) / np.float32(qp.scale)), -qmax, qmax).astype(np.int8)
            self.weights[key] = self._const_q(name, q, np.array(qp.scale, dtype=np.float32), None)
        return self.weights[key]

    def bias(self, group: Group, s_in: float, w_scales: np.ndarray) -> tuple[WeightQ, np.ndarray]:
        channels = group.bias_array.size
        scale = bias_scale(s_in, np.broadcast_to(w_scales, (channels,)))
        q = quantize_bias(group.bias_array, scale, group.name)
        return self._const_q(group.bias, q, scale, 0, zp_dtype=np.int32), q

    def _const_q(self, base: str, q: np.ndarray, scales: np.ndarray, axis: int | None, zp_dtype=np.int8) -> WeightQ:
        names = [self.unique(f"{base}_{suffix}") for suffix in ("quantized", "scale", "zero_point", "dequantized")]
        self.add_init(names[0], q)
        self.add_init(names[1], scales)
        self.add_init(names[2], np.zeros(scales.shape, dtype=zp_dtype))
        return WeightQ(*names, scales, axis if scales.ndim == 1 else None)

    def dequantized(self, wq: WeightQ) -> str:
        """Float view of a quantized constant, emitting its DequantizeLinear on first use (QDQ form only)."""
        if not wq.emitted:
            attrs = {"axis": wq.axis} if wq.axis is not None else {}
            self.add_node("DequantizeLinear", [wq.q, wq.scale, wq.zero_point], [wq.dequantized],
                          f"{wq.dequantized}_DequantizeLinear", **attrs)
            wq.emitted = True
        return wq.dequantized
