"""Benchmark `quanttool sensitivity` on a ~100-layer model, and the prefix sharing it relies on.

    python scripts/bench_sensitivity.py [--images 16] [--repeats 1] [--threads 0]

Model: MobileNetV2 (scripts/make_mobilenet.py, random weights, 224x224, BN kept) with more blocks per stage, so the
converter sees about 100 quantizable layers. Set-up (not timed): the model, generated JPEGs, a minmax table.
Measured, one after the other in one run:
- plain fp32 inference of the images (decode + preprocess + onnxruntime), the unit of cost;
- the whole sensitivity measurement (simulate.Simulator + sensitivity.sensitivity: build the graphs of all
  2L + 1 configurations, sessions, runs, comparison), as the command runs it after calibration;
- on a subset of 16 configurations (only-L and all-but-L for 8 layers spread over the graph): one shared graph
  versus one graph per configuration, side by side, to show what sharing the common prefixes saves;
- the fallback search (convert --target-sqnr, quanttool/fallback.py) with a target 6 dB above the all-int8 SQNR,
  side by side: ranking every layer alone (fallback.GROUP = 1, the ranking before group screening) and screening
  groups of 4 consecutive layers first (the default); time, layers measured alone, layers kept float, SQNR.
"""

from __future__ import annotations

import bench_common  # noqa: F401 - first: no onnxruntime telemetry (it sets ORT_DISABLE_TELEMETRY)

import time

from bench_common import PREPROCESS, ROOT, arguments, cpu_int8_features, median_time
import make_mobilenet

from quanttool import fallback
from quanttool import prepare as prep
from quanttool.calibrate import Settings, choose_params
from quanttool.inputs import Preprocess, discover, iter_samples
from quanttool.observe import observe
from quanttool.runtime import session
from quanttool.sensitivity import measure, score, sensitivity
from quanttool.variants import Simulator

DEEPER = [(1, 16, 1, 1), (6, 24, 3, 2), (6, 32, 5, 2), (6, 64, 6, 2), (6, 96, 5, 1), (6, 160, 4, 2), (6, 320, 1, 1)]


def main() -> None:
    args = arguments(__doc__, images=16)
    out = ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    make_mobilenet.INVERTED_RESIDUAL_SETTING = DEEPER
    raw = make_mobilenet.build()
    images = out / "images"
    if len(list(images.glob("*.jpg"))) < args.images:
        make_mobilenet.write_images(args.images, images)
    specs = prep.input_specs(raw, None)
    model = prep.prepare(raw, specs, name="mobilenet_v2_deep")
    pp = Preprocess(**PREPROCESS)
    samples = discover({specs[0].name: images}, args.images)

    def feeds():
        return iter_samples(samples, specs, pp, threads=max(1, args.threads))

    stats = observe(model, feeds(), total=len(samples), threads=args.threads)
    table = choose_params(model, stats, Settings("minmax"))
    sim = Simulator(model, table)
    plain = session(model, args.threads)

    def infer():
        for _, f in feeds():
            plain.run(None, f)

    print(f"CPU int8 features: {cpu_int8_features()}; machine shared with other jobs (timings noisy)")
    print(f"model: MobileNetV2, {len(DEEPER)} stages, {len(model.graph.node)} nodes, {len(sim.layers)} quantizable "
          f"layers, 224x224; {len(samples)} images")
    infer()  # warm-up
    t_plain, runs = median_time(infer, max(3, args.repeats))
    print(f"plain fp32 inference        : {t_plain:7.2f} s   (runs: {', '.join(f'{r:.2f}' for r in runs)})")
    start = time.perf_counter()
    report = sensitivity(sim, feeds(), len(samples), threads=args.threads)
    t_sens = time.perf_counter() - start
    configs = 2 * len(sim.layers) + 1
    print(f"sensitivity, all {configs} configs: {t_sens:7.2f} s   = {t_sens / t_plain:.1f}x plain inference "
          f"({t_sens / t_plain / configs:.2f}x per configuration)")

    picked = [sim.layers[k * len(sim.layers) // 8] for k in range(8)]
    everything = frozenset(layer.index for layer in sim.layers)
    subset = [{layer.index} for layer in picked] + [everything - {layer.index} for layer in picked]
    start = time.perf_counter()
    measure(sim, subset, feeds(), len(samples), threads=args.threads, desc="shared")
    t_shared = time.perf_counter() - start
    start = time.perf_counter()
    for config in subset:
        measure(sim, [config], feeds(), len(samples), threads=args.threads, desc="separate")
    t_separate = time.perf_counter() - start
    print(f"16 configurations, one shared graph   : {t_shared:7.2f} s")
    print(f"16 configurations, a graph for each   : {t_separate:7.2f} s   (ratio separate / shared "
          f"{t_separate / t_shared:.2f}x)")
    print("most harmful layers: " + ", ".join(f"{item.layer.name} ({item.only_db:.1f} dB)"
                                              for item in report.layers[:3]))

    target = round(score(report.all_int8) + 6.0, 1)
    default_group = fallback.GROUP
    for group in (1, default_group):
        fallback.GROUP = group
        start = time.perf_counter()
        result = fallback.search(sim, samples, target_db=target, max_float=None, threads=args.threads,
                                 load=lambda chosen: iter_samples(chosen, specs, pp, threads=max(1, args.threads)))
        seconds = time.perf_counter() - start
        print(f"fallback --target-sqnr {target:g}, groups of {group}: {seconds:7.2f} s   {len(result.alone_db)} layers "
              f"measured alone; kept float {len(result.kept)} of {len(sim.layers)}; simulated "
              f"{result.before_db:.1f} -> {result.after_db:.1f} dB; {result.measured} configurations in "
              f"{result.passes} passes")
    fallback.GROUP = default_group


if __name__ == "__main__":
    main()
