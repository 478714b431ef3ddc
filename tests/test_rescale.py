"""convert --rescale (quanttool/adjust/rescale.py) against independent computations: onnxruntime on the fp32
model, the per-channel maxima computed here in numpy, and a numpy per-channel int8 reference."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from quanttool.adjust.rescale import channel_ranges, choose_scales, find_sites, rescale
from quanttool.calibrate import Settings, choose_params
from quanttool.observe import observe
from quanttool.rewrite import convert

from .helpers import init, make_model, run, run_int8, save_model_and_inputs, tensor_info

C = 4


def hardswish_model(rng, feed_pointwise=False):
    """Conv 3->4 (channel 0 ~40x the others) -> HardSwish spelled out as x * Clip(x + 3, 0, 6) / 6 ->
    depthwise 3x3 whose channels 1-3 are amplified 50x (a folded BatchNorm with a tiny variance). With
    `feed_pointwise`, a 1x1 conv reads the HardSwish output too (a second model output)."""
    w1 = rng.normal(size=(C, 3, 1, 1)).astype(np.float32)
    w1[0] *= 40
    w1[1:] *= 0.3
    w2 = rng.normal(size=(C, 1, 3, 3)).astype(np.float32)
    w2[1:] *= 50
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["p"], name="P", kernel_shape=[1, 1]),
             helper.make_node("Add", ["p", "three"], ["a"], name="add"),
             helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
             helper.make_node("Mul", ["p", "c"], ["m"], name="mul"),
             helper.make_node("Div", ["m", "six"], ["y"], name="div"),
             helper.make_node("Conv", ["y", "w2", "b2"], ["out"], name="D", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              group=C)]
    inits = [init("w1", w1), init("b1", (rng.normal(size=C) * 0.1).astype(np.float32)), init("three", np.float32(3)),
             init("zero", np.float32(0)), init("six", np.float32(6)), init("w2", w2),
             init("b2", rng.normal(size=C).astype(np.float32))]
    outputs = [tensor_info("out", [1, C, 8, 8])]
    if feed_pointwise:
        nodes.append(helper.make_node("Conv", ["y", "w3"], ["out2"], name="pw", kernel_shape=[1, 1]))
        inits.append(init("w3", rng.normal(size=(2, C, 1, 1)).astype(np.float32)))
        outputs.append(tensor_info("out2", [1, 2, 8, 8]))
    return make_model(nodes, [tensor_info("x", [1, 3, 8, 8])], outputs, inits)


def _feeds(rng, n=8):
    return [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _samples(feeds):
    return ((str(k), f) for k, f in enumerate(feeds))


def _probe(model, names):
    from quanttool.runtime import with_outputs

    return with_outputs(model, names)


def test_rescale_keeps_the_fp32_function_and_uses_the_channel_ranges():
    rng = np.random.default_rng(0)
    model = hardswish_model(rng)
    feeds = _feeds(rng)
    sites = find_sites(model)
    assert [(s.x, s.y, len(s.region)) for s in sites] == [("p", "y", 4)]
    ranges = channel_ranges(model, sites, _samples(feeds), len(feeds))
    # the same maxima computed here: per channel, max |p| and max |y| over all images and positions
    values = [run(_probe(model, ["p", "y"]), f)[1:] for f in feeds]
    r = np.maximum(np.max([np.abs(p).max(axis=(0, 2, 3)) for p, _ in values], axis=0),
                   np.max([np.abs(y).max(axis=(0, 2, 3)) for _, y in values], axis=0))
    np.testing.assert_allclose(ranges["p"], r, rtol=1e-6)
    scales = choose_scales(ranges)
    np.testing.assert_allclose(scales["p"], r.max() / r, rtol=1e-6)
    assert scales["p"][0] == 1.0 and scales["p"][1:].min() > 10  # the outlier channel is 0
    scaled, floats = rescale(model, scales)
    assert sorted(floats) == sorted(["P_rescale_inv", "add", "clip", "mul", "div", "y_rescale_mul"])
    for f in feeds[:3]:
        ref, got = run(model, f)[0], run(scaled, f)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
        # and what the int8 model quantizes has every channel at the same range: |p'_c| = s_c |p_c|
        p, p_scaled = run(_probe(model, ["p"]), f)[1], run(_probe(scaled, ["p_rescaled"]), f)[1]
        np.testing.assert_allclose(p_scaled, p * scales["p"].reshape(1, -1, 1, 1), rtol=1e-4, atol=1e-4)


def test_sites_need_a_depthwise_reader_and_keep_other_readers_unscaled():
    rng = np.random.default_rng(1)
    model = hardswish_model(rng, feed_pointwise=True)
    (site,) = find_sites(model)
    assert [model.graph.node[j].name for j in site.consumers] == ["D"]
    feeds = _feeds(rng, 4)
    scaled, _ = rescale(model, choose_scales(channel_ranges(model, [site], _samples(feeds), len(feeds))))
    for f in feeds:
        for ref, got in zip(run(model, f), run(scaled, f)):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    # a HardSwish read only by a 1x1 conv is no site: dividing its weights' columns would change their rounding
    nodes = [n for n in model.graph.node if n.name != "D"]
    pointwise_only = make_model(nodes, [tensor_info("x", [1, 3, 8, 8])], [tensor_info("out2", [1, 2, 8, 8])],
                                [t for t in model.graph.initializer if t.name not in ("w2", "b2")])
    assert find_sites(pointwise_only) == []


def _int8_outputs(model, feeds, exclude=(), fmt="qdq"):
    table = choose_params(model, observe(model, _samples(feeds), len(feeds)), Settings())
    int8 = convert(model, table, fmt=fmt, exclude=exclude, int8_outputs=False).model
    return np.stack([run_int8(int8, f)[0] for f in feeds])


def _sqnr(ref, got, axis=None):
    return 10 * np.log10((ref ** 2).sum(axis=axis) / ((ref - got) ** 2).sum(axis=axis))


def test_rescale_raises_the_int8_sqnr_to_the_per_channel_reference():
    rng = np.random.default_rng(2)
    model = hardswish_model(rng)
    feeds = _feeds(rng, 16)
    ref = np.stack([run(model, f)[0] for f in feeds])
    plain = _int8_outputs(model, feeds)
    sites = find_sites(model)
    scaled, floats = rescale(model, choose_scales(channel_ranges(model, sites, _samples(feeds), len(feeds))))
    rescaled = _int8_outputs(scaled, feeds, exclude=floats)

    # numpy reference: p and y rounded per channel to 255 levels of their own range (per-channel activation
    # scales), HardSwish and the depthwise conv in float64 with the fp32 weights
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    values = [run(_probe(model, ["p"]), f)[1].astype(np.float64) for f in feeds]
    hs = [p * np.clip(p + 3, 0, 6) / 6 for p in values]
    r = np.maximum(np.max([np.abs(p).max(axis=(0, 2, 3)) for p in values], 0),
                   np.max([np.abs(y).max(axis=(0, 2, 3)) for y in hs], 0)).reshape(1, -1, 1, 1)

    def q(v):
        return np.round(v / (r / 127)) * (r / 127)

    def depthwise(y):
        yp = np.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1)))
        out = np.zeros_like(y)
        for i in range(3):
            for j in range(3):
                out += yp[:, :, i:i + 8, j:j + 8] * w["w2"][:, 0, i, j].reshape(1, -1, 1, 1)
        return out + w["b2"].reshape(1, -1, 1, 1)

    reference = np.stack([depthwise(q(p_ * np.clip(p_ + 3, 0, 6) / 6)) for p_ in (q(p) for p in values)])
    small = (slice(None), slice(None), slice(1, None))  # the channels the per-tensor scale starves
    per_tensor, per_channel, expected = (_sqnr(ref[small], plain[small]), _sqnr(ref[small], rescaled[small]),
                                         _sqnr(ref[small], reference[small]))
    assert per_tensor < 10 < expected
    assert per_channel > per_tensor + 15
    assert per_channel > expected - 3  # int8 weights and the input's own rounding cost the rest
    assert _sqnr(ref, rescaled) > _sqnr(ref, plain) + 10
    # the integer-only form runs the same computation (QLinearConv in, float region, QLinearConv out)
    qoperator = _int8_outputs(scaled, feeds, exclude=floats, fmt="qoperator")
    assert abs(_sqnr(ref[small], qoperator[small]) - per_channel) < 1


def _on_disk(tmp_path, seed: int, count: int):
    """The toy model as a file and `count` random .npy inputs in a folder."""
    rng = np.random.default_rng(seed)
    model = hardswish_model(rng)
    return save_model_and_inputs(tmp_path, model, [rng.normal(size=(3, 8, 8)).astype(np.float32)
                                                    for _ in range(count)])


def test_cli_rescale_records_its_scales_and_refuses_a_table(tmp_path):
    from click.testing import CliRunner

    from quanttool.cli import cli

    model_path, images = _on_disk(tmp_path, 3, 8)
    runner = CliRunner()
    out = tmp_path / "q.onnx"
    result = runner.invoke(cli, ["convert", "-m", str(model_path), "-i", str(images), "-o", str(out), "--rescale",
                                 "--check-images", "0"])
    assert result.exit_code == 0, result.output
    assert "rescale: 1 activations" in result.output
    import onnx

    from quanttool.commands import read_recipe

    int8 = onnx.load(str(out))
    recipe = read_recipe(int8, out)
    assert recipe["adjust"] == "rescale,adaround" and list(recipe["rescale"]) == ["p"]  # AdaRound: the default with -i
    # (preparation folds the /6 into the depthwise conv, so the rescaled tensor is the Mul's output there)
    assert {"add", "mul", "P_rescale_inv"} <= set(recipe["exclude"])
    assert len([name for name in recipe["exclude"] if name.endswith("_rescale_mul")]) == 1
    # the int8 model's float region: the Add and Mul of the HardSwish are not int8 ops
    assert not [n for n in int8.graph.node if n.name in ("add", "mul") and n.op_type.startswith("QLinear")]
    result = runner.invoke(cli, ["evaluate", "-m", str(model_path), "-q", str(out), "-i", str(images)])
    assert result.exit_code == 0, result.output
    table = tmp_path / "m.scale"
    assert runner.invoke(cli, ["calibrate", "-m", str(model_path), "-i", str(images), "-o", str(table)]).exit_code == 0
    result = runner.invoke(cli, ["convert", "-m", str(model_path), "-f", str(table), "-o", str(out), "--rescale"])
    assert result.exit_code != 0 and "--rescale" in str(result.exception)


def test_check_points_at_rescale_when_the_model_has_sites(tmp_path, capsys):
    from quanttool.adjust import Adjust
    from quanttool.commands import convert_model

    path, images = _on_disk(tmp_path, 4, 12)
    options = dict(shape=(), mean="0", norm="1", color="rgb", resize="stretch", pad_value=None, focus=False,
                   threads=0, images=[str(images)], max_images=8, check_images=4, check_floor=20.0)
    convert_model(path, tmp_path / "q.onnx", None, Settings("minmax"), fmt="qdq", exclude=(), params_path=None,
                  **options)
    err = capsys.readouterr().err
    assert "below the 20 dB floor" in err and "--rescale gives the activations that feed its 1 depthwise" in err
    text = convert_model(path, tmp_path / "r.onnx", None, Settings("minmax"), fmt="qdq", exclude=(),
                         params_path=None, adjust=Adjust(rescale=True), **options)
    assert "--rescale gives" not in capsys.readouterr().err and "rescale: 1 activations" in text
