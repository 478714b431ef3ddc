"""rewrite: turn a prepared fp32 ONNX model and an activation table into an int8 ONNX model.

`convert(model, table, fmt="qdq"|"qoperator", exclude=(), weight_bits=8) -> ConvertResult`.

Tensor naming (evaluate relies on it). For every quantized activation X (graph input or node output):
- `X_scale`, `X_zero_point`: scalar float32 / int8 initializers, the table's entry for X;
- `X_quantized`: int8 tensor, QuantizeLinear(X) (in qoperator format the int8 output of QLinearConv etc.);
- `X_dequantized`: float DequantizeLinear(X_quantized), read by every consumer of X.
  Exception: when X is a graph output, the DequantizeLinear writes X itself (graph outputs keep their names,
  dtypes and shapes) and there is no `X_dequantized`; the float value before quantization is `X_prequant`.
Weights, biases and constant operands use the same suffixes on their initializer name (`W_quantized`,
`W_scale` (per-channel vector), `W_zero_point`, `W_dequantized`), made unique if needed.
Nodes keep their names; unnamed nodes are named `<op_type>_<k>`, the names reports and --exclude use.
A Conv/Gemm/MatMul/Add followed by its only consumer Relu or Clip(0, hi) has no Q/DQ in between when the
Relu/Clip output's zero point is -128 (and scale * 255 <= hi for Clip): its output X is the Relu/Clip output.

Other decisions: opset < 13 is upgraded to 13 (per-channel DequantizeLinear); ConvTranspose with group > 1 gets
per-tensor weights; Gemm alpha and beta are folded into weight and bias, transA=1 stays fp32; ops without an
int8 kernel stay float between DequantizeLinear and QuantizeLinear. See plan.py, weights.py, fuse.py.

Running the result: create onnxruntime sessions with `session.qdqisint8allowed=1`. Without it onnxruntime on
x86 rewrites int8 QDQ activations to uint8 and uses U8S8 kernels that saturate on CPUs without VNNI (AVX2):
a QDQ conv was seen off by up to 44 LSB. (`session.x64quantprecision=1` is not a substitute: it breaks
loading of int8 QLinearConv models.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import onnx
from onnx import helper

from ..errors import QuantError, UsageError, first_line
from ..prepare.graph import node_reads
from ..prepare.opset import default_opset, upgrade_opset
from ..table import Table
from ..targets import TARGETS, Target
from .builder import Builder
from .params import hardware_params, tensor_shapes
from .plan import QuantizedOp, all_tensor_names, float_tails, make_plan, validate_table
from .qdq import emit_qdq
from .qoperator import emit_qoperator

__all__ = ["ConvertResult", "QuantizedOp", "check_table", "convert", "hardware_params"]

FORMATS = ("qdq", "qoperator")


@dataclass
class ConvertResult:
    model: onnx.ModelProto
    quantized: list[QuantizedOp]
    kept_fp32: list[tuple[str, str, str]]  # (node name, op_type, reason)
    fmt: str = "qdq"
    shapes: dict | None = None  # fp32 tensor shapes before the rewrite (for --params)
    bias_raised: dict[str, int] = field(default_factory=dict)  # node -> weight channels raised so the bias fits


def check_table(model: onnx.ModelProto, table: dict | Table) -> None:
    """QuantError naming the tensor when the table does not fit the model (foreign names, missing entries)."""
    table, where = _params(table)
    validate_table(model, table, make_plan(model, table), where)


def _check_zero_points(table: dict, plan, target: Target) -> None:
    if not target.zero_point_zero():
        return
    for name in plan.qtensors:
        zp = table[name].zero_point if hasattr(table[name], "zero_point") else table[name][1]
        if int(zp) != 0:
            raise QuantError(f"tensor '{name}' has zero point {int(zp)} in the table, but --target {target.name} "
                             f"takes zero point 0 only; calibrate with --target {target.name} (or --scheme symmetric), "
                             f"or convert with --target onnxruntime")


def _params(table: dict | Table):
    """(name -> QParam, where(name) -> 'FILE:LINE: ' prefix for messages, empty for a plain dict)."""
    return (table.params, table.where) if isinstance(table, Table) else (table, lambda name: "")


def convert(model: onnx.ModelProto, table: dict | Table, *, fmt: str = "qdq", exclude: Sequence[str] = (),
            weight_bits: int = 8, int8_outputs: bool = True, target: Target | None = None) -> ConvertResult:
    """The int8 model. With int8_outputs=False, an op that writes a graph output computes it in float from
    its int8 inputs: a consumer of float outputs gains nothing from a last requantization, only its error.
    `weight_bits` is the weights' (and constant operands') bit width only: activations always use the table's
    8-bit parameters."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: unknown format; use one of {', '.join(FORMATS)}")
    if not 2 <= weight_bits <= 8:
        raise UsageError(f"weight bits {weight_bits}: int8 storage holds 2 to 8 bits; choose a value in that range")
    table, where = _params(table)
    target = target or TARGETS["onnxruntime"]
    if fmt not in target.formats:
        raise UsageError(f"--format {fmt} does not fit --target {target.name}; use --target onnxruntime")
    model = upgrade_opset(model)
    plan = make_plan(model, table, exclude, target)
    validate_table(model, table, plan, where)  # checked on the upgraded graph, the one that gets rewritten
    shapes = tensor_shapes(model)  # before the rewrite: the com.microsoft ops stop onnx's shape inference
    _check_zero_points(table, plan, target)

    b = Builder(plan, table, weight_bits, all_tensor_names(plan.graph), set(plan.names),
                int32_bias=target.int32_bias)
    qset = set(plan.qtensors)
    # only outputs no other node reads: an output that also feeds further ops stays quantized for them
    read = {name for node in plan.graph.node for name in node.input}
    float_outputs = set() if int8_outputs else float_tails(plan, qset & {o.name for o in plan.graph.output} - read)
    float_outputs |= plan.float_outputs
    qset -= float_outputs
    opset = default_opset(model)
    for x in plan.qtensors:
        if x in plan.graph_inputs:
            b.quantize(x)
            b.dequantize(x)
    quantized, as_qlinear = [], set()
    for i in range(len(plan.graph.node)):
        if i in plan.absorbed and plan.absorbed[i] in as_qlinear:
            continue  # the QLinear op's output clamp already is the Relu/Clip
        group = plan.groups.get(i)
        # its outputs stay float: graph outputs (without int8_outputs) or, with Q/DQ on inputs only, every output
        float_out = group is not None and (bool(float_outputs.intersection(group.outputs))
                                           or not qset.intersection(group.outputs))
        op = emit_qoperator(b, i, opset) if fmt == "qoperator" and not float_out else None
        if op is not None:
            as_qlinear.add(i)
        else:
            op = emit_qdq(b, i, qset)
        if op is not None:
            op.float_output = float_out
            quantized.append(op)

    graph = plan.graph
    del graph.node[:]
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.inits)
    _drop_dead_qdq(graph)
    _drop_unused(graph)
    for domain in sorted(b.domains):
        if not any(o.domain == domain for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(domain, 1))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        # the checker names nodes by name, and nodes inside If/Loop bodies often have none: only point at
        # --exclude when there is a name to give it
        named = "node: ;" not in str(exc) and "node: " in str(exc)
        hint = ("--format qdq may work meanwhile" if fmt == "qoperator" else
                "--exclude the node it names to work around it" if named else
                "--exclude the op types around it to work around it")
        raise QuantError(f"internal error: the int8 model fails the ONNX checker: {first_line(exc)}; "
                         f"please report this with the model; {hint}") from None
    return ConvertResult(model, quantized, plan.kept, fmt, shapes, dict(b.raised))


def _drop_dead_qdq(graph: onnx.GraphProto) -> None:
    """Q/DQ nodes nobody reads (the qoperator form reads X_quantized directly, leaving X's DequantizeLinear
    unused): ORT would skip them, but they clutter a model meant to be integer-only."""
    while True:
        read = {o.name for o in graph.output} | {name for node in graph.node for name in node_reads(node)}
        dead = {i for i, node in enumerate(graph.node) if node.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(out in read for out in node.output)}
        if not dead:
            return
        keep = [node for i, node in enumerate(graph.node) if i not in dead]
        del graph.node[:]
        graph.node.extend(keep)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove initializers (and their graph-input entries), Constant nodes and value_info no node reads."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node_reads(node))  # subgraphs (nested ones too) may read outer-scope names
    keep_nodes = [n for n in graph.node if n.op_type != "Constant" or any(o in used for o in n.output)]
    if len(keep_nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep_nodes)
    dropped = {t.name for t in graph.initializer if t.name not in used}
    if dropped:
        keep = [t for t in graph.initializer if t.name not in dropped]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        inputs = [i for i in graph.input if i.name not in dropped]
        del graph.input[:]
        graph.input.extend(inputs)
    produced = {o for n in graph.node for o in n.output}
    infos = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)
