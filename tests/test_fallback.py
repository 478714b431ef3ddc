"""convert's fallback (--target-sqnr) and self-check on a model with a planted culprit layer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from quanttool.calibrate import Settings
from quanttool.commands import convert_model
from quanttool.rewrite import convert
from tests.helpers import init, make_model, run, run_int8, save_model_and_inputs, tensor_info
from tests.test_rewrite_common import calibrate

OPTIONS = dict(shape=(), mean="0", norm="1", color="rgb", resize="stretch", pad_value=None, focus=False, threads=0)


def _db(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())


def _model():
    """Four 3x3 convs with ReLU. The planted culprit c2 has, in every output channel, one weight 100x the others,
    on an input channel that is always 0 (c1's channel 0 has bias -100, so its ReLU output is 0): the weight sets
    the channel's int8 scale but never contributes, and the weights that do round to 0 or +-1 step."""
    rng = np.random.default_rng(0)
    nodes, inits, src = [], [], "x"
    for k in range(4):
        w = rng.normal(0, 0.3, size=(6, 3 if k == 0 else 6, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, size=6).astype(np.float32)
        if k == 1:
            b[0] = -100.0
        if k == 2:
            w[:, 0, 0, 0] = 30.0
        inits += [init(f"w{k}", w), init(f"b{k}", b)]
        out = "y" if k == 3 else f"r{k}"
        nodes.append(helper.make_node("Conv", [src, f"w{k}", f"b{k}"], [f"c{k}" if k < 3 else out], name=f"c{k}",
                                      pads=[1, 1, 1, 1]))
        if k < 3:
            nodes.append(helper.make_node("Relu", [f"c{k}"], [out], name=f"relu{k}"))
        src = out
    return make_model(nodes, [tensor_info("x", [1, 3, 8, 8])], [tensor_info("y", [1, 6, 8, 8])], inits)


def _setup(tmp_path, count=40, model=None, seed=1):
    model = model if model is not None else _model()
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(3, 8, 8)).astype(np.float32) for _ in range(count)]
    path, folder = save_model_and_inputs(tmp_path, model, xs)
    return model, path, folder, xs


def test_fallback_keeps_the_planted_culprit_float(tmp_path):
    """The culprit is real (excluding c2 by hand gains > 10 dB in onnxruntime); with a target just below what
    excluding it gives, the search keeps exactly c2 float, and the written model reaches the target on the
    held-out images when onnxruntime runs it."""
    model, path, folder, xs = _setup(tmp_path)
    calib = [{"x": xs[i * 5][None]} for i in range(8)]  # convert's --max-images 8 picks every 5th of 40
    held = [{"x": x[None]} for i, x in enumerate(xs) if i % 5]
    table = calibrate(model, calib)
    ref = np.concatenate([run(model, f)[0] for f in held])

    def real_db(int8_model):
        return _db(ref, np.concatenate([run_int8(int8_model, f)[0] for f in held]))

    all_int8 = real_db(convert(model, table).model)
    without_c2 = real_db(convert(model, table, exclude=["c2"]).model)
    assert without_c2 > all_int8 + 10
    target = without_c2 - 1.0
    out = tmp_path / "q.onnx"
    text = convert_model(path, out, None, Settings("minmax"), fmt="qdq", exclude=(), params_path=None,
                         images=[str(folder)], max_images=8, check_images=32, target_sqnr=target, **OPTIONS)
    assert "kept float c2 (1 of 4 quantizable layers" in text
    assert "check on 32 held-out images" in text
    q = onnx.load(str(out))
    conv2 = next(n for n in q.graph.node if n.name == "c2")
    assert conv2.input[1] == "w2"  # float weights: not behind a DequantizeLinear
    assert real_db(q) >= target


def test_check_warns_below_the_floor_and_names_the_culprit(tmp_path, capsys):
    model, path, folder, xs = _setup(tmp_path, count=20)
    text = convert_model(path, tmp_path / "q.onnx", None, Settings("minmax"), fmt="qdq", exclude=(),
                         params_path=None, images=[str(folder)], max_images=8, check_images=12, check_floor=60.0,
                         **OPTIONS)
    err = capsys.readouterr().err
    assert "check on 12 held-out images" in text
    assert "below the 60 dB floor" in err and "worst layers by isolated SQNR: c2 (" in err
    assert "--target-sqnr 60" in err


def test_check_says_when_it_reuses_calibration_images(tmp_path):
    model, path, folder, xs = _setup(tmp_path, count=10)
    text = convert_model(path, tmp_path / "q.onnx", None, Settings("minmax"), fmt="qdq", exclude=(),
                         params_path=None, images=[str(folder)], max_images=None, check_images=4, **OPTIONS)
    assert "check on 4 images, the calibration images among them" in text


def test_an_excluded_conv_stays_float_in_onnxruntime():
    """onnxruntime quantizes the float weights of a Conv per tensor when its input comes from a per-tensor
    DequantizeLinear (its WeightBiasQuantization pass), so an excluded Conv after an int8 one ran int8 after all:
    on c2, whose one large weight sets a per-tensor scale, the model lost 17 dB. The excluded Conv reads a
    per-channel DequantizeLinear instead; its output must equal a float Conv of that same input."""
    from tests.test_rewrite_common import run_all

    model = _model()
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    table = calibrate(model, feeds)
    q = convert(model, table, exclude=["c2"]).model
    conv2 = next(n for n in q.graph.node if n.name == "c2")
    weights = {t.name: t for t in model.graph.initializer}
    lone = make_model([helper.make_node("Conv", ["a", "w2", "b2"], ["o"], pads=[1, 1, 1, 1])],
                      [tensor_info("a", [1, 6, 8, 8])], [tensor_info("o", [1, 6, 8, 8])],
                      [weights["w2"], weights["b2"]])
    for f in feeds:
        values = run_all(q, f, [conv2.input[0], "c2"])
        expected = run(lone, {"a": values[conv2.input[0]]})[0]
        np.testing.assert_allclose(values["c2"], expected, rtol=1e-5, atol=1e-5)


def test_search_stops_at_zero_when_all_int8_already_reaches_the_target():
    from quanttool.fallback import search
    from quanttool.variants import Simulator

    model = _model()
    rng = np.random.default_rng(3)
    feeds = [(str(k), {"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)}) for k in range(4)]
    table = calibrate(model, [f for _, f in feeds])
    result = search(Simulator(model, table), feeds, target_db=-100.0, max_float=None, load=lambda s: iter(s))
    assert result.kept == [] and result.reached and result.after_db == result.before_db
    # a budget of one layer and an unreachable target: c2 (the culprit) is the one kept, and it says so
    result = search(Simulator(model, table), feeds, target_db=1000.0, max_float=1, load=lambda s: iter(s))
    assert [layer.name for layer in result.kept] == ["c2"] and not result.reached
    assert "NOT reached" in result.summary()


def _branches(count: int, culprit: int):
    """`count` independent branches (one input, one 3x3 conv, one output each), the `culprit` branch's conv with
    one weight 100x the others on an input channel that is always 0; and three images."""
    from quanttool.variants import Simulator

    rng = np.random.default_rng(4)
    nodes, inits, inputs, outputs = [], [], [], []
    for k in range(count):
        w = rng.normal(0, 0.3, size=(4, 3, 3, 3)).astype(np.float32)
        if k == culprit:
            w[:, 0, 0, 0] = 30.0  # the largest weight sets a coarse scale for the others
        inits.append(init(f"w{k}", w))
        nodes.append(helper.make_node("Conv", [f"x{k}", f"w{k}"], [f"y{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]))
        inputs.append(tensor_info(f"x{k}", [1, 3, 6, 6]))
        outputs.append(tensor_info(f"y{k}", [1, 4, 6, 6]))
    model = make_model(nodes, inputs, outputs, inits)
    feeds = []
    for i in range(3):
        f = {f"x{k}": rng.normal(size=(1, 3, 6, 6)).astype(np.float32) for k in range(count)}
        f[f"x{culprit}"][:, 0] = 0.0
        feeds.append((str(i), f))
    return Simulator(model, calibrate(model, [f for _, f in feeds])), feeds


def test_predicted_search_points_equal_the_measurement_where_errors_add_exactly():
    """The search measures first where the first-order prediction (the "only L int8" output errors add up in
    power) says the target is reached. On independent branches every output's error comes from one layer, so the
    prediction is exact: for every k it must equal the measured SQNR of "all int8 but the first k"."""
    from quanttool.fallback import noise_ratios, predict
    from quanttool.sensitivity import measure, score

    sim, feeds = _branches(3, culprit=1)
    everything = frozenset(layer.index for layer in sim.layers)
    results, _ = measure(sim, [everything] + [{layer.index} for layer in sim.layers], iter(feeds), len(feeds))
    ranked = sorted(zip(sim.layers, results[1:]), key=lambda pair: (score(pair[1]), pair[0].index))
    assert ranked[0][0].name == "conv1"
    predicted = predict([noise_ratios(result) for _, result in ranked], noise_ratios(results[0]))
    configs = [everything - {layer.index for layer, _ in ranked[:k]} for k in range(len(ranked) + 1)]
    measured, _ = measure(sim, configs, iter(feeds), len(feeds))
    assert len(set(np.round(predicted[:3], 3))) == 3 and predicted[3] == np.inf
    np.testing.assert_allclose(predicted[:3], [score(m) for m in measured[:3]], rtol=0, atol=1e-6)
    assert score(measured[3]) == np.inf


def test_group_screening_measures_only_the_groups_that_matter():
    """Ranking screens GROUP consecutive layers as one configuration. On six independent branches a group's
    outputs are exactly its layers' outputs, so its SQNR must equal the lowest of its layers' measured alone; the
    culprit's group (the second) is then measured layer by layer, the first group is not (its error is far
    below a target the culprit's group misses), and the culprit ranks first with its own number."""
    from quanttool.fallback import GROUP, rank
    from quanttool.sensitivity import measure, score

    assert GROUP == 4
    sim, feeds = _branches(6, culprit=4)
    alone, _ = measure(sim, [{layer.index} for layer in sim.layers], iter(feeds), len(feeds))
    alone_db = {layer.index: score(result) for layer, result in zip(sim.layers, alone)}
    first, second = sorted(alone_db)[:4], sorted(alone_db)[4:]
    target = min(alone_db[i] for i in first) - 10.0
    assert alone_db[sorted(alone_db)[4]] < target  # only the culprit misses it
    loads = []
    everything = frozenset(layer.index for layer in sim.layers)
    all_int8 = score(measure(sim, [everything], iter(feeds), len(feeds))[0][0])
    assert all_int8 == pytest.approx(min(alone_db.values()), abs=1e-9)  # the branches' errors do not meet
    ranked = rank(sim, feeds, lambda s: loads.append(len(s)) or iter(s), target_db=target, budget=6,
                  slice_db=all_int8)
    assert loads == [3, 3]  # the screening pass and one pass for the culprit's group
    assert set(ranked.alone) == set(second) and set(ranked.group_db) == set(first)
    for i in first:
        assert ranked.group_db[i] == pytest.approx(min(alone_db[j] for j in first), abs=1e-9)
    for i in second:
        assert ranked.alone[i] == pytest.approx(alone_db[i], abs=1e-9)
    assert ranked.layers[0].name == "conv4"


def _head_model():
    """A YOLO-style head: a trunk conv (ReLU; channel 0 always 0), a box branch in pixels (x640) and a score branch
    (Sigmoid) whose conv is the planted culprit (a weight 300x the others on the dead channel), concatenated along
    the last axis as [1, 64, 6] = 4 box values next to 2 scores."""
    rng = np.random.default_rng(5)
    w0 = rng.normal(0, 0.3, size=(6, 3, 3, 3)).astype(np.float32)
    b0 = rng.normal(0, 0.1, size=6).astype(np.float32)
    b0[0] = -100.0
    wb = (rng.normal(0, 0.3, size=(4, 6, 1, 1)) * 640).astype(np.float32)
    ws = rng.normal(0, 0.3, size=(2, 6, 1, 1)).astype(np.float32)
    ws[:, 0] = 100.0
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["t"], name="trunk", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["t"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wb"], ["box"], name="box"),
             helper.make_node("Conv", ["r", "ws"], ["logit"], name="score"),
             helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid"),
             helper.make_node("Reshape", ["box", "shape4"], ["box2"], name="box_flat"),
             helper.make_node("Reshape", ["prob", "shape2"], ["prob2"], name="prob_flat"),
             helper.make_node("Concat", ["box2", "prob2"], ["cat"], name="cat", axis=1),
             helper.make_node("Transpose", ["cat"], ["y"], name="rows", perm=[0, 2, 1])]
    inits = [init("w0", w0), init("b0", b0), init("wb", wb), init("ws", ws),
             init("shape4", np.array([1, 4, 64], np.int64)), init("shape2", np.array([1, 2, 64], np.int64))]
    return make_model(nodes, [tensor_info("x", [1, 3, 8, 8])], [tensor_info("y", [1, 64, 6])], inits)


def test_fallback_judges_a_detection_head_per_part(tmp_path):
    """Box coordinates (hundreds of pixels) dominate one SQNR over the whole output, so all int8 already passes
    the target that way while the scores do not; the fallback judges the score part on its own, keeps the score
    branch's culprit conv float, and onnxruntime's int8 model then reaches the target on the scores too."""
    model, path, folder, xs = _setup(tmp_path, model=_head_model(), seed=6)
    held = [{"x": x[None]} for i, x in enumerate(xs) if i % 5]
    ref = np.concatenate([run(model, f)[0] for f in held])

    def real(int8_model):  # (whole-output SQNR, box part, score part) in onnxruntime
        got = np.concatenate([run_int8(int8_model, f)[0] for f in held])
        return _db(ref, got), _db(ref[..., :4], got[..., :4]), _db(ref[..., 4:], got[..., 4:])

    table = calibrate(model, [{"x": xs[i * 5][None]} for i in range(8)])
    whole, boxes, scores = real(convert(model, table).model)
    target = 25.0
    assert whole > target + 5 and boxes > target + 5 and scores < target - 5  # one SQNR would be fooled
    out = tmp_path / "q.onnx"
    text = convert_model(path, out, None, Settings("minmax"), fmt="qdq", exclude=(), params_path=None,
                         images=[str(folder)], max_images=8, check_images=32, target_sqnr=target, **OPTIONS)
    assert "kept float score (1 of 5 quantizable layers" in text
    assert "kept float: score (Conv; alone int8 " in text
    whole, boxes, scores = real(onnx.load(str(out)))
    assert scores >= target and boxes >= target


def test_same_inputs_give_the_same_choice():
    from quanttool.fallback import search

    sim, feeds = _branches(6, culprit=4)
    first, again = (search(sim, feeds, target_db=30.0, max_float=None, load=lambda s: iter(s)) for _ in range(2))
    assert [layer.name for layer in first.kept] == [layer.name for layer in again.kept] == ["conv4"]
    assert (first.after_db, first.summary()) == (again.after_db, again.summary())


def test_ranking_images_are_those_with_the_largest_all_int8_error():
    """Hand-worked: each output's error is taken relative to its signal over the whole slice (a: 10, b: 1000), so
    image 3's error on b (300 / 1000) outweighs image 1's on a (2 / 10) and image 0's (1 / 10); slice order is
    kept. With an unreadable image the losses no longer line up with the samples: an even spread."""
    from quanttool.fallback import worst_images

    per_image = [{"a": (2.0, 1.0), "b": (200.0, 10.0)}, {"a": (2.0, 2.0), "b": (200.0, 1.0)},
                 {"a": (2.0, 0.5), "b": (200.0, 50.0)}, {"a": (2.0, 0.0), "b": (200.0, 300.0)},
                 {"a": (2.0, 0.0), "b": (200.0, 0.0)}]
    samples = ["s0", "s1", "s2", "s3", "s4"]
    # shares: s0 max(0.1, 0.01) = 0.1; s1 0.2; s2 max(0.05, 0.05) = 0.05; s3 0.3; s4 0
    assert worst_images(samples, per_image, 2) == ["s1", "s3"]
    assert worst_images(samples, per_image, 3) == ["s0", "s1", "s3"]
    assert worst_images(samples, per_image[:4], 2) == ["s0", "s2"]
    assert worst_images(samples, per_image, 5) == samples


def test_check_says_when_one_image_holds_most_of_the_error():
    from quanttool.check import summarize
    from quanttool.evaluate.report import EvalReport, OutputReport

    def line(share, images=16):
        report = EvalReport([], [OutputReport("prob", 0.99, 25.0, 0.1, 1.0, [], share)], images)
        return summarize(report, True, 20.0)

    assert "one image holds 85% of the error" in line(0.85)
    assert "one image holds" not in line(0.4)  # spread over the images: nothing to say
    assert "one image holds" not in line(1.0, images=1)  # a single image always holds all of it


def test_fallback_simulates_the_adjusted_weights_and_keeps_fp32_ones_on_float_layers(tmp_path):
    """With --adaround / --bias-correct the search simulates the weights convert writes: its all-int8 SQNR is
    the one onnxruntime measures on the all-int8 adjusted model, its final SQNR the one the check measures on
    the written model, and the layer it keeps float has its fp32 weights there (a bias corrected for an int8
    layer is wrong on a float one: before, c2 kept float with its corrected bias read 16 dB against 27 dB)."""
    import re

    from quanttool.adjust import Adjust
    model, path, folder, xs = _setup(tmp_path, count=20)
    w2 = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2"))
    b2 = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b2"))
    common = dict(fmt="qdq", params_path=None, images=[str(folder)], max_images=8, check_images=12, **OPTIONS)
    for adjust in (Adjust(adaround=True), Adjust(bias_correct=True)):
        alone = convert_model(path, tmp_path / "all.onnx", None, Settings("minmax"), exclude=(), adjust=adjust,
                              **common)
        text = convert_model(path, tmp_path / "q.onnx", None, Settings("minmax"), exclude=(), adjust=adjust,
                             target_sqnr=20.0, **common)
        before, after = map(float, re.search(r"simulated output SQNR ([\d.]+) -> ([\d.]+) dB", text).groups())
        checked = float(re.search(r"y: SQNR ([\d.]+) dB", text).group(1))
        assert "kept float c2 " in text
        assert before == pytest.approx(float(re.search(r"y: SQNR ([\d.]+) dB", alone).group(1)), abs=0.3)
        assert after == pytest.approx(checked, abs=0.3) and checked >= 20.0
        written = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(tmp_path / "q.onnx").graph.initializer}
        assert np.array_equal(written["w2"], w2) and np.array_equal(written["b2"], b2)
