"""The weight layers the weight-side methods change, and the calibration statistics they need.

Every layer is seen as a matrix product per group: y[g] = W[g] @ p over the layer's input patches p (im2col
rows for Conv, rows of the input for Gemm/MatMul), W[g] of shape [out/g, K]. Everything the methods need
from the calibration data is three sufficient statistics of those patches, streamed image by image:
- the mean patch m (fp32 input) and mq (the input as the int8 model sees it, fake-quantized with the
  table's scale): bias correction's E[W p] - E[Wq pq] = W m - Wq mq per output channel;
- the Gram matrix of the quantized patches G = sum pq pq^T and the cross matrix C = sum p pq^T: the squared
  output error of the int8 layer, sum ||Wq pq - W p||^2 over all calibration patches, is
  tr(Wq G Wq^T) - 2 tr(Wq C^T W^T) + const, so clip search and rounding search optimise the layer's real
  output error (weight rounding and the layer's own input quantization together) exactly, without keeping
  the activations (memory 2 K^2 per group, independent of the image count).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tqdm import tqdm

from ..qparams import QParam
from ..runtime import session, with_outputs

# A Gram matrix larger than this (float64 bytes per layer) is not collected: that layer keeps
# round-to-nearest and its bias correction uses the means only.
MAX_GRAM_BYTES = 64 << 20


@dataclass
class Layer:
    node: str          # node name, for messages
    op_type: str
    input: str         # the activation input
    weight: str        # initializer name
    bias: str | None   # initializer name, None when the node has none
    groups: int = 1
    kernel: tuple = ()         # Conv: (kh, kw)
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple = (1, 1)
    transposed: bool = False   # weight stored [K, N] (Gemm transB=0, MatMul)

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as [groups, out/groups, K], K in (in-channel, kh, kw) order like the patches."""
        m = w.T if self.transposed else w.reshape(w.shape[0], -1)
        return m.reshape(self.groups, m.shape[0] // self.groups, m.shape[1])

    def unmatrix(self, m: np.ndarray, like: np.ndarray) -> np.ndarray:
        m = m.reshape(-1, m.shape[-1])
        return (m.T if self.transposed else m).reshape(like.shape).astype(like.dtype)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def find_layers(model: onnx.ModelProto) -> list[Layer]:
    """Conv (2-D, explicit pads), Gemm (alpha = beta = 1, transA = 0) and MatMul with a constant 2-D weight,
    each weight used by one node only. Anything else is left as it is."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    layers = []
    for k, node in enumerate(graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        if w is None or w.data_type != onnx.TensorProto.FLOAT or uses[node.input[1]] != 1:
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and (bias not in inits or uses[bias] != 1):
            continue
        a = _attrs(node)
        name = node.name or f"{node.op_type}_{k}"
        if node.op_type == "Conv":
            if len(w.dims) != 4 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                continue
            p = tuple(a.get("pads", (0, 0, 0, 0)))
            layers.append(Layer(name, "Conv", node.input[0], node.input[1], bias, int(a.get("group", 1)),
                                tuple(w.dims[2:]), tuple(a.get("strides", (1, 1))), p,
                                tuple(a.get("dilations", (1, 1)))))
        elif node.op_type == "Gemm":
            if len(w.dims) != 2 or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                continue
            if bias is not None and int(np.prod(inits[bias].dims)) != w.dims[0 if a.get("transB", 0) else 1]:
                continue  # a scalar or broadcast C is not per output channel
            layers.append(Layer(name, "Gemm", node.input[0], node.input[1], bias,
                                transposed=not a.get("transB", 0)))
        elif len(w.dims) == 2:
            layers.append(Layer(name, "MatMul", node.input[0], node.input[1], None, transposed=True))
    return layers


def _padded(x: np.ndarray, layer: Layer) -> np.ndarray:
    t, l, b, r = layer.pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r))) if any(layer.pads) else x


def _windows(xp: np.ndarray, layer: Layer):
    """(i, j, view [B, C, oh, ow]) for every kernel offset: the input each weight tap multiplies."""
    kh, kw = layer.kernel
    (sh, sw), (dh, dw) = layer.strides, layer.dilations
    oh = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]


def patches(x: np.ndarray, layer: Layer) -> np.ndarray:
    """im2col, transposed: [groups, K, positions], K in the weight matrix's order (contiguous, so the Gram
    matrix p p^T is one BLAS product per group)."""
    if layer.op_type != "Conv":
        return np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T)[None]
    xp = _padded(x, layer)
    kh, kw = layer.kernel
    g = layer.groups
    views = list(_windows(xp, layer))
    bsz, c, oh, ow = views[0][2].shape
    cols = np.empty((g, c // g, kh, kw, bsz, oh, ow), dtype=np.float32)
    for i, j, view in views:
        cols[:, :, i, j] = view.reshape(bsz, g, c // g, oh, ow).transpose(1, 2, 0, 3, 4)
    return cols.reshape(g, (c // g) * kh * kw, bsz * oh * ow)


def patch_sum(x: np.ndarray, layer: Layer) -> tuple[np.ndarray, int]:
    """Sum of all patches [groups, K] and their count, without forming them (one sum per kernel tap)."""
    if layer.op_type != "Conv":
        rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
        return rows.sum(0)[None], rows.shape[0]
    xp = _padded(x, layer)
    kh, kw = layer.kernel
    out = np.empty((xp.shape[1], kh, kw))
    count = 0
    for i, j, view in _windows(xp, layer):
        out[:, i, j] = view.sum(axis=(0, 2, 3), dtype=np.float64)
        count = view.shape[0] * view.shape[2] * view.shape[3]
    g = layer.groups
    return out.reshape(g, -1), count


def fake_quant(x: np.ndarray, qp: QParam) -> np.ndarray:
    """x as the int8 model carries it: clamp(round(x / s) + z, -128, 127), dequantized."""
    q = np.clip(np.round(x / np.float32(qp.scale)) + qp.zero_point, -128, 127)
    return ((q - qp.zero_point) * np.float32(qp.scale)).astype(np.float32)


@dataclass
class LayerStats:
    count: int = 0
    total: np.ndarray | None = None    # [g, K] sum of fp32 patches
    qtotal: np.ndarray | None = None   # [g, K] sum of fake-quantized patches
    gram: np.ndarray | None = None     # [g, K, K] sum of pq pq^T (None: too large, not collected)
    cross: np.ndarray | None = None    # [g, K, K] sum of p pq^T
    skip_gram: bool = False

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    @property
    def qmean(self) -> np.ndarray:
        return self.qtotal / max(self.count, 1)

    def update(self, x: np.ndarray, layer: Layer, qp: QParam | None, want_gram: bool,
               xq: np.ndarray | None = None) -> None:
        """Add one batch: x the fp32 input; xq the int8 model's input (default: x fake-quantized with qp,
        or x itself when qp is None)."""
        if xq is None and qp is not None:
            xq = fake_quant(x, qp)
        total, count = patch_sum(x, layer)
        qtotal, _ = patch_sum(xq, layer) if xq is not None else (total, count)
        if self.total is None:
            self.total, self.qtotal = np.zeros_like(total), np.zeros_like(qtotal)
            k = total.shape[1]
            self.skip_gram = not want_gram or 2 * total.shape[0] * k * k * 8 > MAX_GRAM_BYTES
        self.count += count
        self.total += total
        self.qtotal += qtotal
        if not self.skip_gram:
            p = patches(x, layer)
            pq = patches(xq, layer) if xq is not None else p
            gram = np.matmul(pq, pq.transpose(0, 2, 1))  # float32 per image, summed in float64
            cross = np.matmul(p, pq.transpose(0, 2, 1)) if xq is not None else gram
            if self.gram is None:
                self.gram, self.cross = np.zeros(gram.shape), np.zeros(gram.shape)
            self.gram += gram
            self.cross += cross


def collect(model: onnx.ModelProto, layers: list[Layer], table: Mapping[str, QParam],
            samples: Iterable[tuple[str, Mapping[str, np.ndarray]]], total: int, threads: int = 0,
            want_gram: bool = True) -> dict[str, LayerStats]:
    """One onnxruntime pass over the samples (fp32 model, static shapes) with every layer input exposed."""
    names = sorted({layer.input for layer in layers})
    feeds_names = {i.name for i in model.graph.input}
    run_names = [n for n in names if n not in feeds_names]
    sess = session(with_outputs(model, run_names), threads, "the model (weight adjustment pass)")
    stats = {layer.weight: LayerStats() for layer in layers}
    for _key, feeds in tqdm(samples, total=total, unit="img", desc="layer statistics", dynamic_ncols=True):
        values = dict(zip(run_names, sess.run(run_names, dict(feeds))))
        values.update({n: feeds[n] for n in names if n in feeds})
        for layer in layers:
            x = np.asarray(values[layer.input], dtype=np.float32)
            stats[layer.weight].update(x, layer, table.get(layer.input), want_gram)
    return stats


@dataclass
class Change:
    """New float weight and bias for one layer (weights on the int8 grid: the rewrite quantizes them exactly)."""

    layer: Layer
    weight: np.ndarray
    bias: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def apply_changes(model: onnx.ModelProto, changes: list[Change]) -> onnx.ModelProto:
    """A copy of `model` with the changed initializers; a bias is added to a Conv/Gemm that had none.
    Layers are found by weight initializer name, which is the same in every preparation of the model."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    by_name = {t.name: k for k, t in enumerate(graph.initializer)}
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    for change in changes:
        layer = change.layer
        k = by_name[layer.weight]
        graph.initializer[k].CopyFrom(numpy_helper.from_array(change.weight.astype(np.float32), layer.weight))
        if change.bias is None:
            continue
        if layer.bias is not None:
            old = numpy_helper.to_array(graph.initializer[by_name[layer.bias]])
            graph.initializer[by_name[layer.bias]].CopyFrom(
                numpy_helper.from_array(change.bias.reshape(old.shape).astype(np.float32), layer.bias))
            continue
        name, n = f"{layer.weight}_bias", 1
        while name in taken:
            name, n = f"{layer.weight}_bias{n}", n + 1
        taken.add(name)
        graph.initializer.append(numpy_helper.from_array(change.bias.astype(np.float32), name))
        for node in graph.node:
            if len(node.input) > 1 and node.input[1] == layer.weight:
                while len(node.input) < 3:
                    node.input.append("")
                node.input[2] = name
    return out
