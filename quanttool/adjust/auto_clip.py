"""`-a auto`: per tensor, the clip among minmax, percentile, KL, MSE and ACIQ whose quantization error
hurts the *consuming layer's output* least, not the tensor itself.

A clip that looks good on the tensor's own MSE can be bad where it matters: a channel with small values
that the next conv multiplies by large weights, or a few large values the next layer amplifies. So each
candidate range is scored, over the calibration images, by the error it causes downstream:
sum ||W p(x) - W p(Q(x))||^2 over every Conv/Gemm/MatMul reading the tensor (p: the layer's im2col
patches, W its fp32 weight), plus ||x - Q(x)||^2 for each other reader (Add, Concat, pools: the tensor's
own error, as those ops carry it on unchanged). Ties go to the earlier candidate in CANDIDATES.
One extra onnxruntime pass exposes the tensors; the scoring costs about one forward pass of the weight
layers per candidate.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from .. import rules
from ..qparams import QParam
from ..runtime import session, with_outputs
from .layers import fake_quant, find_layers, patches

CANDIDATES = ("minmax", "percentile", "kl", "mse", "aciq")


def _readers(model: onnx.ModelProto) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node.op_type)
    return out


def downstream_error(x: np.ndarray, qp: QParam, layers, weights: dict, other_readers: int) -> float:
    """Squared output error of every reader of x when x is quantized with qp (see the module docstring)."""
    xq = fake_quant(x, qp)
    err = float(((x - xq) ** 2).sum()) * other_readers
    for layer in layers:  # W p(x) - W p(xq) = W p(x - xq): one im2col of the difference
        err += float((np.matmul(weights[layer.weight], patches(x - xq, layer)) ** 2).sum())
    return err


def choose_auto(model: onnx.ModelProto, stats: dict, settings, choose_params,
                samples: Iterable[tuple[str, Mapping[str, np.ndarray]]], total: int, threads: int = 0
                ) -> tuple[dict[str, QParam], dict[str, str]]:
    """Parameters per tensor (the winning candidate's), and which candidate won for each tensor.

    `choose_params(model, stats, settings)` is calibrate's, called once per candidate algorithm."""
    options = {a: choose_params(model, stats, replace(settings, algorithm=a)) for a in CANDIDATES}
    names = [n for n in options[CANDIDATES[0]] if n in stats]  # observed tensors (shared ones follow rules)
    layers_by_input: dict[str, list] = {}
    for layer in find_layers(model):
        layers_by_input.setdefault(layer.input, []).append(layer)
    inits = {t.name: t for t in model.graph.initializer}
    weights = {layer.weight: layer.matrix(numpy_helper.to_array(inits[layer.weight]).astype(np.float32))
               for layers in layers_by_input.values() for layer in layers}
    readers = _readers(model)
    graph_outputs = {o.name for o in model.graph.output}
    candidates = {}
    for name in names:
        unique: list[tuple[str, QParam]] = []
        for a in CANDIDATES:
            if all(options[a][name] != qp for _, qp in unique):
                unique.append((a, options[a][name]))
        if len(unique) > 1:
            candidates[name] = unique
    errors = {name: np.zeros(len(c)) for name, c in candidates.items()}
    feeds_names = {i.name for i in model.graph.input}
    run_names = [n for n in candidates if n not in feeds_names]
    sess = session(with_outputs(model, run_names), threads, "the model (-a auto pass)")
    for _key, feeds in tqdm(samples, total=total, unit="img", desc="auto clip", dynamic_ncols=True):
        values = dict(zip(run_names, sess.run(run_names, dict(feeds))))
        values.update({n: feeds[n] for n in candidates if n in feeds})
        for name, cands in candidates.items():
            x = np.asarray(values[name], dtype=np.float32)
            layers = layers_by_input.get(name, [])
            others = len(readers.get(name, [])) - len(layers) + (name in graph_outputs)
            for k, (_, qp) in enumerate(cands):
                errors[name][k] += downstream_error(x, qp, layers, weights, others)
    chosen = dict(options[CANDIDATES[0]])
    won = {}
    for name, cands in candidates.items():
        k = int(np.argmin(errors[name]))  # first minimum: the earlier candidate wins ties
        chosen[name], won[name] = cands[k][1], cands[k][0]
    return rules.apply(model, chosen, settings.bits), won
