"""Automatic mixed precision within a budget: keep the most harmful layers float until every output reaches the
target SQNR (convert --target-sqnr DB, --max-fp32-ops N). An output's SQNR is evaluate's: the worst part of a
mixed-range output (boxes in pixels next to scores), so a detection head is judged by its scores too.

0. All int8 on the whole slice: reached, nothing to do; else its per-image errors pick the ranking images.
1. Rank (rank): the output SQNR with only layer L int8 (the sensitivity measurement: fake-quantized
   configurations sharing their prefixes in one float graph) on the RANK_IMAGES images of the slice with the
   largest all-int8 error (worst_images); lowest first, ties in graph order. Each configuration recomputes the
   graph from L on, which made this the costly step (~37 s per image on a 267-layer detector), so GROUP
   consecutive layers are screened as one configuration first and only the worst groups are measured layer by
   layer; the others rank by an even share of their group's error.
2. Predict (predict, on_slice): first order, the "only L int8" output errors add up in power, so "all int8 but
   the first k" is predicted from the ranking's numbers, scaled to the all-int8 point of the ranking images and
   moved to the slice's all-int8 SQNR.
3. Search, greedily along the ranking, on the whole slice: "all int8 but the first k" for k from half to twice
   the predicted k in one run (a detector that needs 30 layers float is not measured at 64, 128, 256 layers float
   first); the doubling ladder k = 1, 2, 4, ... only when none of them reaches the target. Then the bracket
   around the first k that reaches it is narrowed, SPLIT configurations per run, to the smallest such k (more
   layers float is assumed to not make the output worse, which the measurements then confirm or not: the k
   chosen is one that was measured to reach the target). No k reaches it: the best measured within the budget.
   Without a target (only --max-fp32-ops): k = 0, 1, 2, 4, ..., N, the best measured, the smallest among equals.
Same model, table and images give the same numbers, so the same choice. The simulation rounds like the int8 model
but is not bit-identical to onnxruntime's int8 kernels; the check after convert measures the real model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .evaluate.report import OutputReport
from .evaluate.report_text import fmt_db
from .sensitivity import measure, score
from .variants import Layer, Simulator


@dataclass
class Fallback:
    kept: list[Layer]          # layers the search keeps float, most harmful first
    before_db: float           # simulated lowest output SQNR, all int8
    after_db: float            # the same with `kept` float
    target_db: float | None
    layers: list[Layer]        # every quantizable layer of the model
    alone_db: dict[int, float]  # layer index -> output SQNR with only that layer int8 (layers measured alone)
    group_db: dict[int, float]  # layer index -> output SQNR with only its group int8 (the others)
    reached: bool
    measured: int = 0          # "all int8 but the first k" configurations measured on the slice
    passes: int = 0            # passes over the slice they took

    @property
    def weight_share(self) -> float:
        """Fraction of the weight values that stay float."""
        return _share(self.kept, self.layers, "weights")

    def summary(self) -> str:
        names = ", ".join(layer.name for layer in self.kept) or "none"
        goal = f"target {self.target_db:g} dB" if self.target_db is not None else "best within --max-fp32-ops"
        text = (f"fallback ({goal}): kept float {names} ({len(self.kept)} of {len(self.layers)} quantizable layers, "
                f"{self.weight_share * 100:.1f}% of the weights); simulated output SQNR "
                f"{fmt_db(self.before_db)} -> {fmt_db(self.after_db)} dB ({_count(self.measured, 'configuration')} "
                f"measured in {_count(self.passes, 'pass')} over the slice"
                + (f"; ranked {len(self.alone_db)} layers alone, {len(self.group_db)} by their group"
                   if self.alone_db or self.group_db else "") + ")")
        if not self.reached:
            text += "; the target is NOT reached within the budget"
        int8 = [layer for layer in self.layers if layer not in self.kept]
        macs = _share(int8, self.layers, "macs")
        text += (f"\n  int8 coverage: {len(int8)} of {len(self.layers)} layers, "
                 f"{_share(int8, self.layers, 'weights') * 100:.1f}% of the weights"
                 + ("" if macs is None else f", {macs * 100:.1f}% of the conv/matmul multiply-accumulates"))
        for layer in self.kept:
            cost = f"{_share([layer], self.layers, 'weights') * 100:.1f}% of the weights"
            share = _share([layer], self.layers, "macs")
            cost += "" if share is None else f", {share * 100:.1f}% of the multiply-accumulates"
            alone = (f"alone int8 {fmt_db(self.alone_db[layer.index])} dB" if layer.index in self.alone_db else
                     f"its group of {GROUP} int8 {fmt_db(self.group_db[layer.index])} dB")
            text += f"\n  kept float: {layer.name} ({layer.op_type}; {alone}; {cost})"
        return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("s") else "s")


def _share(part: list[Layer], whole: list[Layer], field: str) -> float | None:
    """Fraction of `field` (weights or macs) of `whole` that `part` holds; None when a value is unknown."""
    values = [getattr(layer, field) for layer in whole]
    if any(v is None for v in values):
        return None
    total = sum(values)
    return sum(getattr(layer, field) for layer in part) / total if total else 0.0


RANK_IMAGES = 4  # the slice's images with the largest all-int8 error (worst_images)
GROUP = 4       # consecutive layers screened as one configuration before the worst groups are measured per layer
MARGIN_DB = 3.0  # headroom the groups left unmeasured must be predicted to leave (first order is approximate)
SPLIT = 3  # interior points measured per narrowing run


def noise_ratios(result: dict[str, OutputReport]) -> dict[tuple[str, str], float]:
    """Noise-to-signal power per output, per part of a mixed-range output (the worst part decides, so each part
    is predicted on its own): the quantity that adds up when independent errors meet at the output."""
    ratios = {}
    for name, out in result.items():
        for part, db in [(p.channels, p.sqnr_db) for p in out.parts] or [("", out.sqnr_db)]:
            if not math.isnan(db):
                ratios[(name, part)] = 10.0 ** (-db / 10.0)  # inf dB -> 0, -inf dB -> inf
    return ratios


def predict(ranking_ratios: list[dict], all_int8: dict) -> list[float]:
    """Predicted lowest output SQNR of "all int8 but the first k" for k = 0..len(ranking_ratios).

    First order, the output errors the layers cause on their own add up in power: "all but the first k" is the
    sum of the "only L int8" ratios of the layers after k. Tensors shared by two int8 layers are counted by both,
    and errors compound, so per output part the sum is scaled to the measured all-int8 ratio (the k = 0 point).
    It only chooses which k the search measures first: the choice is always a measured k."""
    keys = list(all_int8)
    tails = [{key: 0.0 for key in keys}]
    for ratios in reversed(ranking_ratios):
        tails.append({key: tails[-1][key] + ratios.get(key, 0.0) for key in keys})
    tails.reverse()  # tails[k] = sum over the layers ranked after k
    scale = {key: all_int8[key] / tails[0][key] if tails[0][key] > 0 else 1.0 for key in keys}

    def db(tail: dict) -> float:
        worst = max((scale[key] * tail[key] for key in keys), default=0.0)
        return math.inf if worst == 0 else -10.0 * math.log10(worst)

    return [db(tail) for tail in tails]


@dataclass
class Ranking:
    layers: list[Layer]             # most harmful first
    ratios: list[dict]              # per ranked layer: its output noise ratios (noise_ratios)
    alone: dict[int, float]         # layer index -> output SQNR with only it int8 (layers measured alone)
    group_db: dict[int, float]      # layer index -> output SQNR with only its group int8 (layers screened)
    all_int8: dict[str, OutputReport]


def on_slice(predicted: list[float], slice_db: float) -> list[float]:
    """The prediction, made on the ranking images, moved to the slice: by the difference of the all-int8 SQNRs."""
    shift = slice_db - predicted[0]
    return [db + shift for db in predicted] if math.isfinite(shift) else predicted


def rank(sim: Simulator, samples: list, load, *, target_db: float | None, budget: int, slice_db: float,
         threads: int = 0) -> Ranking:
    """Most harmful first, by the output SQNR with only that layer int8; screened by groups of GROUP consecutive
    layers first, since such a configuration costs as much as one layer's (the graph from its first layer on is
    recomputed either way). The worst groups are then measured layer by layer until the groups left are predicted
    (first order, see predict) to leave MARGIN_DB of headroom over the target when every measured layer is float,
    or, without a target, until they cover twice the budget; the others' layers rank by an even share of their
    group's error (its SQNR + 10 log10 of its size)."""
    layers = sim.layers
    everything = frozenset(layer.index for layer in layers)
    groups = [layers[i:i + GROUP] for i in range(0, len(layers), GROUP)]
    runs, _ = measure(sim, [everything] + [{layer.index for layer in group} for group in groups], load(samples),
                      len(samples), threads=threads, desc="screen layers")
    all_int8, screened = runs[0], dict(zip(range(len(groups)), runs[1:]))
    order = sorted(screened, key=lambda j: (score(screened[j]), j))
    if target_db is not None:
        predicted = on_slice(predict([noise_ratios(screened[j]) for j in order], noise_ratios(all_int8)), slice_db)
        split = next((m for m, db in enumerate(predicted) if db >= target_db + MARGIN_DB), len(order))
    else:
        covered = [sum(len(groups[j]) for j in order[:m]) for m in range(len(order) + 1)]
        split = next((m for m, n in enumerate(covered) if n >= 2 * budget), len(order))
    alone = {group[0].index: screened[j] for j, group in enumerate(groups) if len(group) == 1}
    singles = [layer for j in order[:split] if len(groups[j]) > 1 for layer in groups[j]]
    if singles:
        results, _ = measure(sim, [{layer.index} for layer in singles], load(samples), len(samples),
                             threads=threads, desc="rank layers")
        alone.update({layer.index: result for layer, result in zip(singles, results)})
    group_of = {layer.index: j for j, group in enumerate(groups) for layer in group}

    def result(layer: Layer) -> dict[str, OutputReport]:
        return alone[layer.index] if layer.index in alone else screened[group_of[layer.index]]

    def share_db(layer: Layer) -> float:  # a screened layer's even share of its group's error, in dB
        size = 1 if layer.index in alone else len(groups[group_of[layer.index]])
        return score(result(layer)) + 10 * math.log10(size)

    ranking = sorted(layers, key=lambda layer: (share_db(layer), layer.index))
    ratios = [noise_ratios(result(layer)) if layer.index in alone else
              {key: r / len(groups[group_of[layer.index]]) for key, r in noise_ratios(result(layer)).items()}
              for layer in ranking]
    group_db = {layer.index: score(screened[group_of[layer.index]]) for layer in layers if layer.index not in alone}
    return Ranking(ranking, ratios, {i: score(r) for i, r in alone.items()}, group_db, all_int8)


def worst_images(samples: list, per_image: list[dict], n: int) -> list:
    """The n samples that add the most error to the all-int8 outputs (each output's error relative to its signal
    over the whole slice), in slice order. The slice's pooled SQNR, which the search measures, is dominated by
    them (on the YOLOX detector two images' all-int8 SQNRs were 24 and 17 dB), so they rank the layers by what
    the search will see. When an image could not be read, an even spread (the losses no longer line up)."""
    if len(samples) <= n:
        return list(samples)
    if len(per_image) != len(samples):
        return [samples[i * len(samples) // n] for i in range(n)]
    signal = {name: sum(image[name][0] for image in per_image) for name in per_image[0]}
    share = [max((image[name][1] / signal[name] for name in image if signal[name] > 0), default=0.0)
             for image in per_image]
    return [samples[i] for i in sorted(sorted(range(len(samples)), key=lambda i: (-share[i], i))[:n])]


def search(sim: Simulator, samples: list, *, target_db: float | None, max_float: int | None, threads: int = 0,
           load=None) -> Fallback:
    """`load(samples)` decodes the samples (an iterator of (key, feeds)); it is called once per run."""
    layers = sim.layers
    everything = frozenset(layer.index for layer in layers)
    per_image: list[dict] = []
    results, _ = measure(sim, [everything], load(samples), len(samples), threads=threads, desc="all int8",
                         per_image=per_image)
    scores: dict[int, float] = {0: score(results[0])}
    passes = 1
    budget = len(layers) if max_float is None else min(max_float, len(layers))
    if budget == 0 or (target_db is not None and scores[0] >= target_db):  # nothing to rank
        reached = target_db is None or scores[0] >= target_db
        return Fallback([], scores[0], scores[0], target_db, layers, {}, {}, reached, 1, passes)
    ranked = rank(sim, worst_images(samples, per_image, RANK_IMAGES), load, target_db=target_db, budget=budget,
                  slice_db=scores[0], threads=threads)
    ranking = ranked.layers

    def run(ks: list[int], desc: str) -> None:
        ks = [k for k in dict.fromkeys(ks) if k not in scores]
        if not ks:
            return
        configs = [everything - {layer.index for layer in ranking[:k]} for k in ks]
        results, _ = measure(sim, configs, load(samples), len(samples), threads=threads, desc=desc)
        nonlocal passes
        passes += 1
        scores.update({k: score(result) for k, result in zip(ks, results)})

    def reaches(k: int) -> bool:
        return target_db is not None and scores[k] >= target_db

    ladder = [0] + [min(2 ** j, budget) for j in range(budget.bit_length() + 1) if budget]
    if target_db is None:
        run(ladder, "search")
    else:  # first the predicted k and its neighbours; the doubling ladder only when none of them reaches
        predicted = on_slice(predict(ranked.ratios[:budget], noise_ratios(ranked.all_int8)), scores[0])
        guess = next((k for k, db in enumerate(predicted) if db >= target_db), budget)
        # the first-order prediction was optimistic by ~2 dB on the YOLOX detector (errors compound), so the
        # points reach past it: one pass brackets a true k from guess/2 to 2 * guess
        run([k for k in (-(-guess // 2), guess, -(-3 * guess // 2), 2 * guess) if 0 < k <= budget], "search")
        if not any(reaches(k) for k in scores):
            run([k for k in ladder if k > max(scores)], "search")
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
    return Fallback(ranking[:k], scores[0], scores[k], target_db, layers, ranked.alone, ranked.group_db, reached,
                    len(scores), passes)

def choose(static, params: dict, inputs, *, exclude, weight_bits: int, int8_outputs: bool, target=None,
           target_db: float | None, max_float: int | None, images: int, int8_weights=None) -> Fallback:
    """convert's use: the search on the check's held-out slice of `inputs` (quanttool.commands.Inputs);
    `int8_weights`: `static` with the weights the weight-side methods chose (Simulator)."""
    from .check import DEFAULT_IMAGES, check_samples
    from .inputs import iter_samples

    samples, _ = check_samples(inputs, images or DEFAULT_IMAGES)
    sim = Simulator(static, params, exclude=exclude, weight_bits=weight_bits, int8_outputs=int8_outputs, target=target,
                    int8_weights=int8_weights)

    def load(chosen):
        return iter_samples(chosen, inputs.specs, inputs.pp, threads=max(1, inputs.threads))

    return search(sim, samples, target_db=target_db, max_float=max_float, threads=inputs.threads, load=load)
