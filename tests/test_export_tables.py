"""--table-format: each writer against a hand-written example of its format, and calibrate end to end."""

import struct

import numpy as np
import onnx
import pytest
from onnx import helper

from quanttool.calibrate import Settings
from quanttool.commands import calibrate_table
from quanttool.errors import QuantError
from quanttool.export import write
from quanttool.table import Table
from quanttool.qparams import QParam
from tests.helpers import init, make_model, tensor_info
from tests.test_calibrate import OPTIONS, exposed_minmax


def small_model():
    """x -> conv1 (2 channels, max|W| 2 and 0.5) -> Flatten -> fc (Gemm transB=1, rows max|W| 1, 4, 0.25)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv1"),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1)]
    w = np.array([2.0, -0.5], np.float32).reshape(2, 1, 1, 1)
    wf = np.array([[1.0, -0.5], [0.0, -4.0], [0.25, 0.125]], np.float32)
    return make_model(nodes, [tensor_info("x", [1, 1, 1, 1])], [tensor_info("y", [1, 3])],
                      [init("w", w), init("wf", wf)])


PARAMS = {"x": QParam(0.5, 0), "c": QParam(0.0078125, 0), "f": QParam(0.25, 0), "y": QParam(1.0, 0)}


def test_ncnn_table_matches_hand_written_example(tmp_path):
    write("ncnn", tmp_path / "m.table", Table(PARAMS), small_model())
    # s = 127 / max|W_c| per output channel; activation s = 127 / T with T = 127 * scale of the layer's input
    assert (tmp_path / "m.table").read_text() == ("conv1_param_0 63.5 254\n"
                                                  "fc_param_0 127 31.75 508\n"
                                                  "conv1 2\n"
                                                  "fc 4\n")


def test_ncnn_grouped_conv_has_one_scale_per_group(tmp_path):
    """onnx2ncnn makes a grouped Conv a ConvolutionDepthWise, whose weight scales are per group."""
    w = np.array([1.0, -2.0, 0.5, 0.25], np.float32).reshape(4, 1, 1, 1)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="gconv", group=2)],
                       [tensor_info("x", [1, 2, 1, 1])], [tensor_info("y", [1, 4, 1, 1])], [init("w", w)])
    write("ncnn", tmp_path / "g.table", Table({"x": QParam(0.5, 0), "y": QParam(1.0, 0)}), model)
    assert (tmp_path / "g.table").read_text() == "gconv_param_0 63.5 254\ngconv 2\n"


def test_tensorrt_cache_matches_hand_written_example(tmp_path, capsys):
    params = {"x": QParam(0.5, 0), "c": QParam(2.0 ** -7, 0), "f": QParam(127 / 255, -128)}
    write("tensorrt-cache", tmp_path / "m.cache", Table(params), small_model())
    # 0.5 = 0x3f000000, 2^-7 = 0x3c000000; f has zero point -128: T = 255 * 127/255 = 127 -> scale 1.0 = 0x3f800000
    assert (tmp_path / "m.cache").read_text() == ("TRT-8601-EntropyCalibration2\n"
                                                  "x: 3f000000\n"
                                                  "c: 3c000000\n"
                                                  "f: 3f800000\n")
    assert "1 tensor(s) have a zero point" in capsys.readouterr().err


def test_tengine_table_matches_hand_written_example(tmp_path):
    write("tengine", tmp_path / "t.scale", Table(PARAMS), small_model())
    assert (tmp_path / "t.scale").read_text() == "x 0.5 0\nc 0.0078125 0\nf 0.25 0\ny 1 0\n"
    with pytest.raises(QuantError, match="white space"):
        write("tengine", tmp_path / "u.scale", Table({"a b": QParam(0.5, 0)}), small_model())


def test_calibrate_writes_tensorrt_cache_with_minmax_scales(tmp_path):
    """End to end: the cache's hex scales decode to max|x| / 127 of every tensor, from onnxruntime runs here."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    model = make_model(nodes, [tensor_info("x", [1, 2, 5, 5])], [tensor_info("y", [1, 2, 5, 5])],
                       [init("w", rng.normal(size=(3, 2, 3, 3)).astype(np.float32)),
                        init("w2", rng.normal(size=(2, 3, 1, 1)).astype(np.float32))])
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "npy").mkdir()
    xs = [rng.normal(size=(2, 5, 5)).astype(np.float32) for _ in range(3)]
    for i, x in enumerate(xs):
        np.save(tmp_path / "npy" / f"{i}.npy", x)
    calibrate_table(tmp_path / "m.onnx", tmp_path / "m.cache", Settings("minmax", "symmetric"),
                    table_format="tensorrt-cache", images=[str(tmp_path / "npy")], **OPTIONS)
    lines = (tmp_path / "m.cache").read_text().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    scales = {name: struct.unpack(">f", bytes.fromhex(value.strip()))[0]
              for name, value in (line.split(":") for line in lines[1:])}
    ranges = exposed_minmax(model, xs, ["c", "y"])
    ranges["x"] = (min(x.min() for x in xs), max(x.max() for x in xs))
    # (c feeds only a Relu, so it shares the Relu output's scale: only x and y are checked against their own range)
    for name in ("x", "y"):
        lo, hi = ranges[name]
        assert scales[name] == pytest.approx(max(-lo, hi) / 127, rel=1e-6)


@pytest.mark.parametrize("table_format, named", [("ncnn", "ncnn int8 table"), ("tensorrt-cache", "TensorRT calibration cache")])
def test_convert_names_a_runtime_table_it_cannot_read(tmp_path, table_format, named):
    """A table written for ncnn or TensorRT fed back to convert -f: the error says which format it is and
    how to get quanttool's own table, instead of a parse error about numbers on line 1."""
    from quanttool.table import read_table
    write(table_format, tmp_path / "t.table", Table(dict(PARAMS)), small_model())
    with pytest.raises(QuantError) as error:
        read_table(tmp_path / "t.table")
    assert named in str(error.value) and "--table-format scale" in str(error.value)
    write("tengine", tmp_path / "t.tengine", Table(dict(PARAMS)), small_model())  # `name scale 0`: readable
    assert {name: qp.scale for name, qp in read_table(tmp_path / "t.tengine").params.items()} == \
        pytest.approx({name: qp.scale for name, qp in PARAMS.items()}, rel=1e-6)
