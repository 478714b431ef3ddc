"""Where a model's int8 loss comes from, by fake quantization of chosen parts (issue 8: PP-OCRv4 recogniser).

    python scripts/probe_fakequant.py --model ppocr_rec [--trained /work/trained] [--calib 32] [--heldout 32]

The prepared fp32 model (quanttool's own preparation) gets QuantizeLinear -> DequantizeLinear pairs (symmetric
int8, ranges = max |x| over the calibration images, per tensor or per channel) on a chosen set of tensors,
and/or its Conv/MatMul weights rounded to per-output-channel int8; onnxruntime runs it with graph optimisations
off (so every pair is exact float fake quantization, not an int8 kernel). Per probe: output SQNR against fp32
and, for [1, T, C] outputs, the share of held-out lines whose greedy CTC decode (argmax per step, repeats
collapsed, class 0 dropped) is identical to fp32's. Per-channel activation ranges cannot run as int8 in
onnxruntime; that probe shows what equalising the channels could reach at most.
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from bench_accuracy import feeds, files
from bench_common import cpu_int8_features
from onnx import helper, numpy_helper

from quanttool.prepare import prepare


def session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def channel_absmax(model: onnx.ModelProto, samples: list[dict]) -> dict[str, np.ndarray]:
    """Tensor -> max |x| per channel (axis 1 of 4-D tensors, the last axis otherwise) over the samples."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    names = [n.output[0] for n in model.graph.node if n.output] + [i.name for i in model.graph.input]
    del exposed.graph.output[:]
    exposed.graph.output.extend(helper.make_value_info(n, onnx.TypeProto()) for n in names)
    sess = session(exposed)
    result: dict[str, np.ndarray] = {}
    for feed in samples:
        values = dict(zip(names[:-len(model.graph.input)], sess.run(names[:-len(model.graph.input)], feed)))
        values.update(feed)
        for name, v in values.items():
            if v.dtype != np.float32 or v.ndim < 2:
                continue
            axes = tuple(k for k in range(v.ndim) if k != (1 if v.ndim == 4 else v.ndim - 1))
            if v.ndim == 4:
                FOUR_D.add(name)
            result[name] = np.maximum(result.get(name, 0), np.abs(v).max(axis=axes))
    return result


def fake_quantized(model: onnx.ModelProto, absmax: dict, tensors: list[str], per_channel: set[str],
                   weights: bool) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    renamed, nodes = {}, []
    for t in tensors:
        a = absmax[t]
        axis = {} if t not in per_channel else {"axis": 1 if t in FOUR_D else -1}
        scale = np.maximum(a, 1e-12) / 127 if t in per_channel else np.float32(max(a.max(), 1e-12) / 127)
        zero = np.zeros(np.shape(scale), np.int8)
        g.initializer.extend([numpy_helper.from_array(np.asarray(scale, np.float32), f"{t}_fq_s"),
                              numpy_helper.from_array(zero, f"{t}_fq_z")])
        nodes += [helper.make_node("QuantizeLinear", [t, f"{t}_fq_s", f"{t}_fq_z"], [f"{t}_fq_q"], **axis),
                  helper.make_node("DequantizeLinear", [f"{t}_fq_q", f"{t}_fq_s", f"{t}_fq_z"], [f"{t}_fq"], **axis)]
        renamed[t] = f"{t}_fq"
    for node in g.node:
        for k, x in enumerate(node.input):
            if x in renamed:
                node.input[k] = renamed[x]
    position = {n.output[0]: k for k, n in enumerate(g.node)}
    ordered = list(g.node)
    for q, dq in zip(nodes[::2], nodes[1::2]):  # right after the producer (or first, for a graph input)
        at = position.get(q.input[0], -1) + 1
        ordered[at:at] = [q, dq]
        position = {n.output[0]: k for k, n in enumerate(ordered)}
    del g.node[:]
    g.node.extend(ordered)
    if weights:
        for t in g.initializer:
            if t.name in WEIGHTS:
                w = numpy_helper.to_array(t)
                axis = 0 if WEIGHTS[t.name] == "Conv" else w.ndim - 1
                rest = tuple(k for k in range(w.ndim) if k != axis)
                s = np.maximum(np.abs(w).max(axis=rest, keepdims=True), 1e-12) / 127
                t.CopyFrom(numpy_helper.from_array((np.clip(np.round(w / s), -127, 127) * s).astype(np.float32),
                                                   t.name))
    return m


def collapse(p: np.ndarray) -> list[int]:
    out, prev = [], -1
    for v in p.reshape(-1, p.shape[-1]).argmax(-1):
        if v != prev and v != 0:
            out.append(int(v))
        prev = v
    return out


def score(model, held, ref) -> str:
    sess = session(model)
    got = [sess.run(None, f)[0] for f in held]
    db = 10 * np.log10(sum((r.astype(np.float64) ** 2).sum() for r in ref)
                       / sum(((r.astype(np.float64) - g) ** 2).sum() for r, g in zip(ref, got)))
    text = f"SQNR {db:5.1f} dB"
    if ref[0].ndim == 3:
        same = np.mean([collapse(g) == collapse(r) for g, r in zip(got, ref)]) * 100
        text += f"  strings {same:5.1f}% of {len(held)}"
    return text


FOUR_D: set[str] = set()  # tensors seen 4-D (channel axis 1; the last axis otherwise)
WEIGHTS: dict[str, str] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ppocr_rec")
    parser.add_argument("--trained", default="/work/trained")
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--each-weight", action="store_true", help="also quantize each weight tensor alone")
    args = parser.parse_args()
    from trained_models import BY_NAME

    spec = BY_NAME[args.model]
    folder = Path(args.trained) / args.model
    model = prepare(onnx.load(str(folder / "model.onnx")), None, verify=False)
    calib = feeds(spec, files(folder / "calib")[:args.calib])
    held = feeds(spec, files(folder / "heldout")[:args.heldout])
    print(f"CPU int8 features: {cpu_int8_features()}; {args.model}: {len(calib)} calibration, {len(held)} held-out")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    absmax = channel_absmax(model, calib)
    WEIGHTS.update({n.input[1]: n.op_type for n in model.graph.node
                    if n.op_type in ("Conv", "MatMul") and len(n.input) > 1 and n.input[1] in inits})
    ref = [session(model).run(None, f)[0] for f in held]
    if ref[0].ndim == 3:  # near ties in fp32's own decoding: any perturbation may flip those lines
        top2 = [np.sort(r.reshape(-1, r.shape[-1]), axis=-1)[:, -2:] for r in ref]
        close = sum(bool((t[:, 1] - t[:, 0] < 0.05).any()) for t in top2)
        print(f"  fp32: {close} of {len(ref)} lines have a step whose top-1 leads the second by < 0.05")
    # the inputs of the layers that compute in int8 (TensorRT's layout: Q/DQ only there)
    layer_inputs = [n.input[0] for n in model.graph.node
                    if n.op_type in ("Conv", "MatMul", "GlobalAveragePool", "AveragePool") and n.input[0] in absmax]
    first_matmul = min((k for k, n in enumerate(model.graph.node) if n.op_type == "MatMul"),
                       default=len(model.graph.node))
    order = {n.output[0]: k for k, n in enumerate(model.graph.node)}
    cnn = [t for t in layer_inputs if order.get(t, -1) < first_matmul]
    rest = [t for t in layer_inputs if t not in cnn]
    probes = [
        ("int8 weights only (per output channel)", [], set(), True),
        ("int8 layer inputs, per tensor (float weights)", layer_inputs, set(), False),
        ("int8 layer inputs, per channel (float weights)", layer_inputs, set(layer_inputs) - {"x"}, False),
        ("int8 layer inputs per tensor + int8 weights", layer_inputs, set(), True),
        (f"only the {len(cnn)} inputs before the first MatMul, per tensor", cnn, set(), False),
        (f"only the {len(cnn)} inputs before the first MatMul, per channel", cnn, set(cnn) - {"x"}, False),
        (f"only the {len(rest)} inputs from the first MatMul on, per tensor", rest, set(), False),
    ]
    for label, tensors, per_channel, weights in probes:
        print(f"  {label:62s} {score(fake_quantized(model, absmax, tensors, per_channel, weights), held, ref)}",
              flush=True)
    if args.each_weight:
        for name in WEIGHTS:
            keep = dict(WEIGHTS)
            WEIGHTS.clear()
            WEIGHTS[name] = keep[name]
            print(f"  weight {name:55s} {score(fake_quantized(model, absmax, [], set(), True), held, ref)}",
                  flush=True)
            WEIGHTS.update(keep)


if __name__ == "__main__":
    main()
