"""Weight-side post-training quantization: change the fp32 weights so that their int8 version loses less.

- equalize.py: cross-layer equalisation (changes the fp32 graph; before calibration, exact in fp32);
- clip_search.py: per-channel weight clip minimising the layer's output error;
- adaround.py: per-weight rounding up or down minimising the layer's output error;
- bias_correction.py: the quantized layer's mean output error added to its bias;
- layers.py: which layers, their calibration statistics (mean patches, Gram matrices), applying changes;
- sequential.py: the same statistics layer by layer on the inputs of the already-adjusted int8 model;
- rescale.py: per-channel rescaling around a float activation feeding depthwise convs (changes the fp32 graph;
  before calibration, exact in fp32; its scales come from one pass over the calibration images).

`adjust_weights` runs the last three on a prepared model: the result is a float model whose weights lie
on the int8 grid the rewrite then quantizes (exactly, by its own max|W_c| / 127 rule) and whose biases carry
the correction, so the rewrite needs no knowledge of any of this.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from ..errors import info
from ..qparams import QParam
from ..rewrite.plan import make_plan
from ..rewrite.weights import weight_qmax
from .adaround import adaround
from .bias_correction import bias_correction
from .clip_search import absmax_scale, grid_round, search_clip
from .equalize import equalize
from .layers import MAX_GRAM_BYTES, Change, Layer, LayerStats, apply_changes, collect, find_layers

__all__ = ["Adjust", "adjust_weights", "apply_changes", "equalize"]


@dataclass(frozen=True)
class Adjust:
    equalize: bool = False
    bias_correct: bool = False
    weight_clip: bool = False
    adaround: bool = False
    time_limit: float = 600.0  # seconds for the rounding search over all layers
    one_pass: bool = False  # clip and rounding on fp32 inputs (layers.py), not sequential (sequential.py)
    rescale: bool = False  # rescale.py

    @property
    def needs_data(self) -> bool:
        return self.bias_correct or self.weight_clip or self.adaround

    def describe(self) -> str:
        on = [name for name in ("equalize", "rescale", "bias_correct", "weight_clip", "adaround", "one_pass")
              if getattr(self, name)]
        return ",".join(on) or "none"


def adjust_weights(model: onnx.ModelProto, table: Mapping[str, QParam], samples, total: int, options: Adjust, *,
                   exclude: Sequence[str] = (), bits: int = 8, threads: int = 0) -> list[Change]:
    """New weights and biases for every layer the rewrite quantizes, from one pass over the samples (one
    per depth level for --weight-clip/--adaround unless one_pass: sequential.py). `model` is the prepared
    fp32 model with static shapes (equalised if the table was); `samples` an iterable of (key, feeds), or a
    function returning a fresh one (needed for more than one pass; an iterable is then kept in memory)."""
    plan = make_plan(model, dict(table), exclude)
    quantized = {g.weight for g in plan.groups.values() if g.weight and g.weight_axis is not None}
    layers = [layer for layer in find_layers(model) if layer.weight in quantized]
    if not layers:
        return []
    want_gram = options.weight_clip or options.adaround
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
              if t.name in {layer.weight for layer in layers} | {layer.bias for layer in layers}}
    qmax = weight_qmax(bits)
    deadline = time.monotonic() + options.time_limit
    counts = {"no_gram": 0, "late": 0, "few": 0}
    if want_gram and not options.one_pass:
        from .sequential import adjust_sequential

        changes = adjust_sequential(model, set(plan.qtensors), layers, table, samples, total, threads, qmax,
                                    deadline, lambda layer, st: _adjust_layer(layer, st, arrays, options, qmax,
                                                                              deadline, counts))
    else:
        stats = collect(model, layers, table, samples() if callable(samples) else samples, total, threads,
                        want_gram=want_gram)
        changes = [change for layer in tqdm(layers, unit="layer", desc="weights", dynamic_ncols=True)
                   for change in [_adjust_layer(layer, stats[layer.weight], arrays, options, qmax, deadline,
                                                counts)] if change is not None]
    if counts["no_gram"]:
        info(f"{counts['no_gram']} layer(s) have inputs too wide for the Gram matrices (K > "
             f"{int(np.sqrt(MAX_GRAM_BYTES / 16))}): they keep round-to-nearest weights")
    if counts["few"]:
        info(f"{counts['few']} layer(s) saw fewer calibration samples than they have inputs (e.g. a classifier "
             f"head: one per image): they keep round-to-nearest weights")
    if counts["late"]:
        info(f"the rounding search ran out of its time limit: {counts['late']} layer(s) kept round-to-nearest")
    return changes


def _adjust_layer(layer: Layer, st: LayerStats, arrays: dict, options: Adjust, qmax: int, deadline: float,
                  counts: dict) -> Change | None:
    """One layer's new weight and bias from its statistics; None when nothing changes."""
    w0 = arrays[layer.weight]
    w = layer.matrix(w0).astype(np.float64)
    scale = absmax_scale(w, qmax)
    new = w0
    if (options.weight_clip or options.adaround) and st.gram is None:
        counts["no_gram"] += 1
    elif options.weight_clip or options.adaround:
        if options.weight_clip:
            scale = search_clip(w, st.gram, st.cross, qmax)
        if options.adaround and st.count < st.gram.shape[-1]:
            # fewer samples (patches) than the layer has inputs: the rounding would fit the calibration images
            # and not the others (a classifier head after pooling: one sample per image)
            counts["few"] += 1
            q = grid_round(w, scale, qmax)
        elif options.adaround and time.monotonic() < deadline:
            q, _ = adaround(w, scale, st.gram, st.cross, qmax, deadline=deadline)
        else:
            counts["late"] += options.adaround
            q = grid_round(w, scale, qmax)
        new = layer.unmatrix(q * scale[..., None], w0)
    bias = None
    if options.bias_correct and layer.op_type != "MatMul":
        wq = layer.matrix(new).astype(np.float64) if new is not w0 else \
            grid_round(w, scale, qmax) * scale[..., None]
        b0 = arrays[layer.bias].reshape(-1).astype(np.float64) if layer.bias else 0.0
        bias = b0 + bias_correction(w, wq, st.mean)
    return Change(layer, new, bias) if new is not w0 or bias is not None else None
