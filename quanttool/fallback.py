"""Automatic mixed precision within a budget: keep the most harmful layers float until every output reaches the
target SQNR (convert --target-sqnr DB, --max-fp32-ops N).

1. Rank: the output SQNR with only layer L int8, for every L (the sensitivity measurement: fake-quantized
   configurations sharing their prefixes in one float graph), on RANK_IMAGES images of the slice; lowest first,
   ties in graph order. This is the costly step (each configuration recomputes the graph from L on), so it
   runs on a few images: it only has to order the layers.
2. Search, greedily along that ranking, on the whole slice: "all int8 but the first k". First k = 0, 1, 2, 4,
   8, ... up to K (--max-fp32-ops, else every layer) in one run, then the bracket around the first k that reaches
   the target is narrowed, SPLIT configurations per run, to the smallest such k (more layers float is assumed to
   not make the output worse, which the measurements then confirm or not: the k chosen is one that was
   measured to reach the target). No k reaches it: the best measured within the budget. Without a target
   (only --max-fp32-ops): the best measured k, the smallest among equals.
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
            text += "; the target is NOT reached within the budget"
        return text


RANK_IMAGES = 8
SPLIT = 3  # interior points measured per narrowing run


def search(sim: Simulator, samples: list, *, target_db: float | None, max_float: int | None, threads: int = 0,
           load=None) -> Fallback:
    """`load(samples)` decodes the samples (an iterator of (key, feeds)); it is called once per run."""
    layers = sim.layers
    everything = frozenset(layer.index for layer in layers)
    ranking_samples = [samples[i * len(samples) // RANK_IMAGES] for i in range(RANK_IMAGES)] \
        if len(samples) > RANK_IMAGES else samples
    ranked_runs, _ = measure(sim, [{layer.index} for layer in layers], load(ranking_samples),
                             len(ranking_samples), threads=threads, desc="rank layers")
    only = {layer.index: score(result) for layer, result in zip(layers, ranked_runs)}
    ranking = sorted(layers, key=lambda layer: (only[layer.index], layer.index))
    budget = len(layers) if max_float is None else min(max_float, len(layers))
    scores: dict[int, float] = {}

    def run(ks: list[int], desc: str) -> None:
        ks = [k for k in dict.fromkeys(ks) if k not in scores]
        configs = [everything - {layer.index for layer in ranking[:k]} for k in ks]
        results, _ = measure(sim, configs, load(samples), len(samples), threads=threads, desc=desc)
        scores.update({k: score(result) for k, result in zip(ks, results)})

    def reaches(k: int) -> bool:
        return target_db is not None and scores[k] >= target_db

    run([0] + [min(2 ** j, budget) for j in range(budget.bit_length() + 1) if budget], "search")
    if target_db is not None and any(reaches(k) for k in scores):
        high = min(k for k in scores if reaches(k))
        low = max([k for k in scores if k < high], default=high)
        while high - low > 1:  # narrow to the smallest k measured to reach the target
            inner = sorted({low + (high - low) * j // (SPLIT + 1) for j in range(1, SPLIT + 1)} - {low, high})
            run(inner, "narrow")
            high = min([high] + [k for k in inner if reaches(k)])
            low = max([low] + [k for k in inner if k < high and not reaches(k)])
        k, reached = high, True
    else:
        k = max(sorted(scores), key=lambda j: (scores[j] if not math.isnan(scores[j]) else -math.inf, -j))
        reached = target_db is None
    kept = ranking[:k]
    total = sum(layer.weights for layer in layers)
    share = sum(layer.weights for layer in kept) / total if total else 0.0
    return Fallback(kept, scores[0], scores[k], target_db, len(layers), share, reached)

def choose(static, params: dict, inputs, *, exclude, weight_bits: int, int8_outputs: bool, target=None,
           target_db: float | None, max_float: int | None, images: int) -> Fallback:
    """convert's use: the search on the check's held-out slice of `inputs` (quanttool.commands.Inputs)."""
    from .check import DEFAULT_IMAGES, check_samples
    from .inputs import iter_samples

    samples, _ = check_samples(inputs, images or DEFAULT_IMAGES)
    sim = Simulator(static, params, exclude=exclude, weight_bits=weight_bits, int8_outputs=int8_outputs, target=target)

    def load(chosen):
        return iter_samples(chosen, inputs.specs, inputs.pp, threads=max(1, inputs.threads))

    return search(sim, samples, target_db=target_db, max_float=max_float, threads=inputs.threads, load=load)
