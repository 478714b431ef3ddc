"""What quanttool knows about each ONNX op, in one table: a new op is one entry here.

Calibration (rules.py), the plan (rewrite/plan.py, fuse.py), the qoperator form (rewrite/qoperator.py), the
hardware parameters (rewrite/params.py) and evaluate read their op sets from this table, so they cannot
disagree about an op. Ops not listed stay fp32 between DequantizeLinear and QuantizeLinear.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpInfo:
    # "compute": quantized whenever its activation inputs are float; "move": data movement (and a lone
    # Relu/Clip), quantized only when its data input already is, so int8 flows through
    kind: str
    act_inputs: tuple[int, ...] | None = (0,)  # indices of the activation inputs; None = every input
    weight: bool = False  # constant weight at input 1 (int8 per output channel) and optional bias at input 2
    const_operands: bool = False  # constant float operands are quantized per-tensor (no table entry)
    fuses_activation: bool = False  # a following Relu/Clip can be absorbed into its output quantization
    activation: bool = False  # a Relu/Clip that can be absorbed into its producer (fuse.absorbable)
    # every output value is an input value (moved, selected, max-pooled, clamped): when nothing else reads
    # the input, it takes the output's parameters, so no requantization sits in front (rules.shared_inputs)
    shares_params: bool = False
    int8_direct: bool = False  # qoperator: the op itself runs on int8 when input and outputs share parameters
    qlinear: str | None = None  # qoperator: the com.microsoft QLinear* op of a one-input op
    lookup: bool = False  # nonlinear: a lookup table on integer hardware, no requantization multiplier
    channels_out: bool = False  # output axis 1 holds the weight's output channels (evaluate's per-channel cosine)


_MOVE = OpInfo("move", shares_params=True, int8_direct=True)

OPS: dict[str, OpInfo] = {
    "Conv": OpInfo("compute", weight=True, fuses_activation=True, channels_out=True),
    "ConvTranspose": OpInfo("compute", weight=True, fuses_activation=True, channels_out=True),
    "Gemm": OpInfo("compute", weight=True, fuses_activation=True),
    "MatMul": OpInfo("compute", (0, 1), weight=True, fuses_activation=True),
    "Add": OpInfo("compute", (0, 1), const_operands=True, fuses_activation=True),
    "Mul": OpInfo("compute", (0, 1), const_operands=True),
    "Concat": OpInfo("compute", None, const_operands=True),
    "AveragePool": OpInfo("compute", qlinear="QLinearAveragePool"),
    "GlobalAveragePool": OpInfo("compute", qlinear="QLinearGlobalAveragePool"),
    "MaxPool": OpInfo("compute", shares_params=True, int8_direct=True),
    "GlobalMaxPool": OpInfo("compute", shares_params=True),
    # int8 direct only when its parameters happen to match: linear interpolation can average an extreme away,
    # so the input does not take the output's parameters
    "Resize": OpInfo("compute", int8_direct=True),
    "Sigmoid": OpInfo("compute", lookup=True, qlinear="QLinearSigmoid"),
    "HardSigmoid": OpInfo("compute", lookup=True),
    "LeakyRelu": OpInfo("compute", lookup=True, qlinear="QLinearLeakyRelu"),
    "Softmax": OpInfo("compute", lookup=True, qlinear="QLinearSoftmax"),
    "Reshape": _MOVE, "Flatten": _MOVE, "Transpose": _MOVE, "Squeeze": _MOVE, "Unsqueeze": _MOVE, "Slice": _MOVE,
    "Gather": _MOVE, "DepthToSpace": _MOVE, "SpaceToDepth": _MOVE,
    # several outputs with their own ranges: the input cannot take one output's parameters
    "Split": OpInfo("move", int8_direct=True),
    "Pad": OpInfo("move", shares_params=True), "Expand": OpInfo("move", shares_params=True),
    "Tile": OpInfo("move", shares_params=True),
    "Relu": OpInfo("move", shares_params=True, activation=True),
    "Clip": OpInfo("move", shares_params=True, activation=True),
}


def ops_where(**flags) -> set[str]:
    """Op types whose entry has every given field equal to the given value, e.g. ops_where(weight=True)."""
    return {op for op, entry in OPS.items() if all(getattr(entry, k) == v for k, v in flags.items())}
