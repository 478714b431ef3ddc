"""Automatic mixed precision within a budget: keep the most harmful layers float until every output reaches the
target SQNR (convert --target-sqnr DB, --max-fp32-ops N).

1. Rank: the output SQNR with only layer L int8, for every L (the sensitivity measurement, one fake-quantized
   run over the slice); lowest first, ties in graph order (quanttool.sensitivity.rank_key without the
   "all but" column, which the search does not need).
2. Search, greedily along that ranking: "all int8 but the first k" for k = 0..K (K = --max-fp32-ops or every
   layer), all measured in the same kind of run, where the configurations share their common prefixes. The
   smallest k whose lowest output SQNR reaches the target wins; without a target (only --max-fp32-ops), the k
   with the best SQNR, the smallest among equals.
Same model, table and images give the same numbers, so the same choice. The simulation rounds like the int8 model
but is not bit-identical to onnxruntime's int8 kernels; the check after convert measures the real model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .evaluate.report_text import fmt_db
from .sensitivity import measure, score
from .variants import Layer, Simulator


@dataclass
class Fallback:
    kept: list[Layer]          # layers the search keeps float, most harmful first
    before_db: float           # simulated lowest output SQNR, all int8
    after_db: float            # the same with `kept` float
    target_db: float | None
    layers: int                # quantizable layers in the model
    weight_share: float        # fraction of the weight values that stay float
    reached: bool

    def summary(self) -> str:
        names = ", ".join(layer.name for layer in self.kept) or "none"
        goal = f"target {self.target_db:g} dB" if self.target_db is not None else "best within --max-fp32-ops"
        text = (f"fallback ({goal}): kept float {names} ({len(self.kept)} of {self.layers} quantizable layers, "
                f"{self.weight_share * 100:.1f}% of the weights); simulated output SQNR "
                f"{fmt_db(self.before_db)} -> {fmt_db(self.after_db)} dB")
        if not self.reached:
            text += f"; the target is NOT reached within the budget"
        return text


def search(sim: Simulator, samples: list, *, target_db: float | None, max_float: int | None, threads: int = 0,
           load=None) -> Fallback:
    """`samples` are decoded by `load(samples)` (an iterator of (key, feeds)) for each of the two runs."""
    layers = sim.layers
    everything = frozenset(layer.index for layer in layers)
    ranked_runs, _ = measure(sim, [everything] + [{layer.index} for layer in layers], load(samples), len(samples),
                             threads=threads, desc="rank layers")
    before = score(ranked_runs[0])
    only = {layer.index: score(result) for layer, result in zip(layers, ranked_runs[1:])}
    ranking = sorted(layers, key=lambda layer: (only[layer.index], layer.index))
    budget = len(layers) if max_float is None else min(max_float, len(layers))
    if target_db is not None and before >= target_db:
        return Fallback([], before, before, target_db, len(layers), 0.0, True)
    configs = [everything - {layer.index for layer in ranking[:k]} for k in range(1, budget + 1)]
    results, _ = measure(sim, configs, load(samples), len(samples), threads=threads, desc="search") \
        if configs else ([], 0)
    scores = [before] + [score(result) for result in results]
    if target_db is not None:
        k = next((k for k, value in enumerate(scores) if value >= target_db), None)
        reached = k is not None
        if k is None:  # not reachable within the budget: the best the budget allows
            k = max(range(len(scores)), key=lambda j: (scores[j], -j))
    else:
        k = max(range(len(scores)), key=lambda j: (scores[j] if not math.isnan(scores[j]) else -math.inf, -j))
        reached = True
    kept = ranking[:k]
    total = sum(layer.weights for layer in layers)
    share = sum(layer.weights for layer in kept) / total if total else 0.0
    return Fallback(kept, before, scores[k], target_db, len(layers), share, reached)


def choose(static, params: dict, inputs, *, exclude, weight_bits: int, int8_outputs: bool, target_db: float | None,
           max_float: int | None, images: int) -> Fallback:
    """convert's use: the search on the check's held-out slice of `inputs` (quanttool.commands.Inputs)."""
    from .check import DEFAULT_IMAGES, check_samples
    from .inputs import iter_samples

    samples, _ = check_samples(inputs, images or DEFAULT_IMAGES)
    sim = Simulator(static, params, exclude=exclude, weight_bits=weight_bits, int8_outputs=int8_outputs)

    def load(chosen):
        return iter_samples(chosen, inputs.specs, inputs.pp, threads=max(1, inputs.threads))

    return search(sim, samples, target_db=target_db, max_float=max_float, threads=inputs.threads, load=load)
