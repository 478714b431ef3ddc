"""calibrate end to end: table values against onnxruntime runs done in the test, the --stats cache, and
fixed rules on a real graph."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import quanttool.calibrate as calibrate_module
from quanttool.calibrate import Settings
from quanttool.commands import calibrate_table, convert_model
from quanttool.errors import QuantError
from quanttool.table import read_table
from tests.helpers import init, make_model, run, run_int8, save_model_and_inputs, tensor_info

OPTIONS = dict(shape=(), mean="0", norm="1", color="rgb", resize="stretch", pad_value=None, focus=False,
               max_images=None, threads=0)


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "x"], ["a"], name="add"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Softmax", ["f"], ["y"], name="softmax"),
    ]
    model = make_model(nodes, [tensor_info("x", [1, 3, 6, 6])], [tensor_info("y", [1, 3])],
                       [init("w1", rng.normal(size=(4, 3, 3, 3)).astype(np.float32)),
                        init("w2", rng.normal(size=(3, 4, 1, 1)).astype(np.float32))])
    xs = [rng.normal(size=(3, 6, 6)).astype(np.float32) * (i + 1) for i in range(5)]
    path, images = save_model_and_inputs(tmp_path, model, xs)
    return tmp_path, path, images, model, xs


def exposed_minmax(model, xs, names):
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names])
    runs = [run(exposed, {"x": x[None]}) for x in xs]
    outs = {}
    for k, name in enumerate(names):
        values = np.concatenate([r[1 + k].ravel() for r in runs])
        outs[name] = (values.min(), values.max())
    return outs


def test_minmax_table_matches_onnxruntime(setup):
    tmp, path, images, model, xs = setup
    calibrate_table(path, tmp / "t.scale", Settings("minmax"), images=[str(images)], **OPTIONS)
    table = read_table(tmp / "t.scale").params
    ranges = exposed_minmax(model, xs, ["c2", "a", "g", "r1"])
    x_absmax = max(abs(x).max() for x in xs)
    assert table["x"].scale == pytest.approx(x_absmax / 127, rel=1e-6) and table["x"].zero_point == 0
    assert table["r1"].scale == pytest.approx(ranges["r1"][1] / 255, rel=1e-6)  # never negative: 256 levels
    assert table["r1"].zero_point == -128
    lo, hi = ranges["a"]
    assert table["a"].scale == pytest.approx(max(-lo, hi) / 127, rel=1e-6)
    # Flatten is g's only consumer: g shares f's parameters; the Softmax output keeps [0, 1] clipped to what
    # was observed (--bounded range): its max over the images on 256 levels
    assert table["g"] == table["f"]
    y_max = max(float(run(model, {"x": x[None]})[0].max()) for x in xs)
    assert table["y"].scale == pytest.approx(y_max / 255, rel=1e-6) and table["y"].zero_point == -128
    # Relu is c1's only consumer: c1 is not observed but shares r1's parameters
    assert table["c1"] == table["r1"]


def test_asymmetric_scheme_follows_seed_formula(setup):
    tmp, path, images, model, xs = setup
    calibrate_table(path, tmp / "t.scale", Settings("minmax", scheme="asymmetric"), images=[str(images)], **OPTIONS)
    read = read_table(tmp / "t.scale")
    # the header says how the table was made (README: File formats)
    assert (read.meta["algorithm"], read.meta["scheme"], read.meta["bits"]) == ("minmax", "asymmetric", "8")
    table = read.params
    lo, hi = exposed_minmax(model, xs, ["a"])["a"]
    scale = (max(hi, 0) - min(lo, 0)) / 255
    assert table["a"].scale == pytest.approx(scale, rel=1e-6)
    assert table["a"].zero_point == int(round(-128 - min(lo, 0) / scale))


def test_stats_cache_reused_without_inference_and_mismatch_is_an_error(setup, monkeypatch):
    tmp, path, images, _, _ = setup
    cache = tmp / "stats.npz"
    calibrate_table(path, tmp / "a.scale", Settings("minmax"), images=[str(images)], stats_path=cache, **OPTIONS)
    assert cache.exists()

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran although cached statistics matched")

    monkeypatch.setattr(calibrate_module, "observe_parallel", no_inference)
    calibrate_table(path, tmp / "b.scale", Settings("percentile"), images=[str(images)], stats_path=cache,
                    **OPTIONS)
    calibrate_table(path, tmp / "c.scale", Settings("minmax"), images=[str(images)], stats_path=cache, **OPTIONS)
    assert read_table(tmp / "c.scale").params == read_table(tmp / "a.scale").params
    with pytest.raises(QuantError, match="preprocess"):
        calibrate_table(path, tmp / "d.scale", Settings("minmax"), images=[str(images)], stats_path=cache,
                        **{**OPTIONS, "norm": "0.5"})
    assert not (tmp / "d.scale").exists()
    other = tmp / "other"  # the same relative names, other contents: another image set
    other.mkdir()
    for i in range(5):
        np.save(other / f"{i}.npy", np.full((3, 6, 6), float(i), np.float32))
    with pytest.raises(QuantError, match="image set"):
        calibrate_table(path, tmp / "e.scale", Settings("minmax"), images=[str(other)], stats_path=cache, **OPTIONS)


def test_compat_tengine_aciq_matches_tengine_formula(setup):
    """Tengine's ACIQ: std = 2 * absmax * gaussian_const / sqrt(2 ln N), T = alpha_gaussian[7] * std, N the
    tensor's element count per image; symmetric int8, scale = T / 127 (REFERENCE.md section 1)."""
    tmp, path, images, model, xs = setup
    calibrate_table(path, tmp / "t.scale", Settings("2", compat="tengine"), images=[str(images)], **OPTIONS)
    table = read_table(tmp / "t.scale").params
    lo, hi = exposed_minmax(model, xs, ["a"])["a"]
    absmax, n = max(-lo, hi), 3 * 6 * 6
    gaussian_const = 0.5 * 0.35 * (1 + np.sqrt(np.pi * np.log(4)))
    std = 2 * absmax * gaussian_const / np.sqrt(2 * np.log(n))
    assert table["a"].scale == pytest.approx(3.92403714 * std / 127, rel=1e-6)
    assert table["a"].zero_point == 0 and table["r1"].zero_point == 0  # symmetric only


def test_all_zero_tensor_gets_a_usable_scale_and_a_warning(tmp_path, capsys):
    """z = x * 0 feeds a Conv with a bias: z's placeholder scale must leave that bias representable in int32
    (a 1e-8 placeholder overflowed it and the int8 output lost the bias), so the int8 output equals the bias.
    The zero constant spans H and W, so preparation does not fold the Mul into the Conv's weights."""
    bias = np.array([0.5, -1.0, 2.0, 0.1], np.float32)
    nodes = [helper.make_node("Mul", ["x", "zero"], ["z"], name="mul"),
             helper.make_node("Conv", ["z", "w", "b"], ["y"], name="conv")]
    model = make_model(nodes, [tensor_info("x", [1, 2, 3, 3])], [tensor_info("y", [1, 4, 3, 3])],
                       [init("zero", np.zeros((1, 1, 3, 3), np.float32)),
                        init("w", np.random.default_rng(0).normal(size=(4, 2, 1, 1)).astype(np.float32)),
                        init("b", bias)])
    path = tmp_path / "c.onnx"
    onnx.save(model, path)
    folder = tmp_path / "npy"
    folder.mkdir()
    for i in range(2):
        np.save(folder / f"{i}.npy", np.random.default_rng(i).normal(size=(2, 3, 3)).astype(np.float32))
    calibrate_table(path, tmp_path / "c.scale", Settings("kl"), images=[str(folder)], **OPTIONS)
    table = read_table(tmp_path / "c.scale").params
    assert table["z"].scale == pytest.approx(1 / 255) and table["z"].zero_point == -128  # never negative
    assert "'z' is constant" in capsys.readouterr().err
    convert_model(path, tmp_path / "q.onnx", tmp_path / "c.scale", Settings(), fmt="qdq", exclude=(),
                  params_path=None, **{**OPTIONS, "images": ()})
    assert "overflow" not in capsys.readouterr().err
    y = run_int8(onnx.load(str(tmp_path / "q.onnx")), {"x": np.ones((1, 2, 3, 3), np.float32)})[0]
    s_w = np.abs(numpy_helper.to_array(model.graph.initializer[1])).reshape(4, -1).max(axis=1) / 127
    step = table["z"].scale * s_w  # the int32 bias grid
    assert np.all(np.abs(y[0, :, 0, 0] - bias) <= step / 2 + 1e-6)


def test_opset_11_softmax_over_channels_converts_with_its_table(tmp_path):
    """Softmax-11 on a 4-D tensor flattens to 2-D; onnx's version converter (opset 13 is needed for per-channel
    int8) rewrites it with new tensors. The upgrade happens in preparation, so the table that calibrate writes
    names those tensors too and convert finds every entry; the int8 model matches fp32 closely."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Softmax", ["c"], ["y"], axis=1, name="softmax")]
    model = make_model(nodes, [tensor_info("x", [1, 3, 4, 4])], [tensor_info("y", [1, 5, 4, 4])],
                       [init("w", rng.normal(size=(5, 3, 1, 1)).astype(np.float32))], opset=11)
    path = tmp_path / "s11.onnx"
    onnx.save(model, path)
    folder = tmp_path / "npy"
    folder.mkdir()
    xs = [rng.normal(size=(3, 4, 4)).astype(np.float32) for _ in range(4)]
    for i, x in enumerate(xs):
        np.save(folder / f"{i}.npy", x)
    calibrate_table(path, tmp_path / "t.scale", Settings("minmax"), images=[str(folder)], **OPTIONS)
    convert_model(path, tmp_path / "q.onnx", tmp_path / "t.scale", Settings(), fmt="qdq", exclude=(),
                  params_path=None, **{**OPTIONS, "images": ()})
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert q.opset_import[0].version == 13
    ref = run(model, {"x": xs[0][None]})[0]
    got = run_int8(q, {"x": xs[0][None]})[0]
    assert 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()) > 25  # 8-bit conv + softmax: ~35-45 dB


def test_stats_cache_is_not_reused_for_other_input_shapes(tmp_path):
    from PIL import Image

    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    model = make_model(nodes, [tensor_info("x", [1, 3, "H", "W"])], [tensor_info("y", [1, 2, "H", "W"])],
                       [init("w", np.ones((2, 3, 1, 1), np.float32))])
    path = tmp_path / "d.onnx"
    onnx.save(model, path)
    folder = tmp_path / "png"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)).save(folder / "a.png")
    cache = tmp_path / "s.npz"
    calibrate_table(path, tmp_path / "a.scale", Settings("minmax"), images=[str(folder)], stats_path=cache,
                    **{**OPTIONS, "shape": ("3,6,6",)})
    with pytest.raises(QuantError, match="preprocess|input shapes"):
        calibrate_table(path, tmp_path / "b.scale", Settings("minmax"), images=[str(folder)], stats_path=cache,
                        **{**OPTIONS, "shape": ("3,8,8",)})
