"""quanttool simulate: the integer-only reference reproduces onnxruntime running the int8 model.

Oracles: onnxruntime itself (every int8 tensor exposed), numpy's own float32 conversion for the 24-bit
rounding, and hand-worked roundings. Models: the demo (a trained MobileNet-style CNN) and a MobileNet-style
graph built here with onnx.helper (inverted residuals, depthwise, ReLU6, squeeze-excite with HardSigmoid and
Mul, MaxPool, AveragePool with pads, Concat of differently scaled branches, Softmax head).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from quanttool.calibrate import Settings
from quanttool.cli import main
from quanttool.commands import calibrate_table, convert_model
from quanttool.qparams import symmetric
from quanttool.rewrite import convert, hardware_params
from quanttool.simulate import compare
from quanttool.simulate.integer import round_div_half_even, round_to_float32, shift_half_away
from tests.helpers import init, make_model, tensor_info
from tests.test_calibrate import OPTIONS
from tests.test_rewrite_common import calibrate

ROOT = Path(__file__).resolve().parent.parent
DEMO = dict(OPTIONS, color="gray", norm="0.00392156862745098")


def test_roundings_against_hand_worked_values_and_numpy_float32():
    assert round_div_half_even(np.array([5, -5, 7, -7, 3, 6]), 2).tolist() == [2, -2, 4, -4, 2, 3]
    assert shift_half_away(np.array([5, -5, 7, -7, 3, -3, 6]), 1).tolist() == [3, -3, 4, -4, 2, -2, 3]
    x = np.random.default_rng(0).integers(-2**61, 2**61, size=20000) >> np.arange(20000) % 60
    x = np.concatenate([x, [2**24 + 1, 2**24 + 3, -(2**25) - 2, 2**53 + 1]])
    assert (round_to_float32(x) == x.astype(np.float32).astype(np.int64)).all()


def mobilenet_style(rng) -> onnx.ModelProto:
    """A small MobileNet-style graph (N, 3, 16, 16) -> 10 classes, random weights."""
    nodes, inits = [], [init("lo", np.array(0.0, np.float32)), init("hi", np.array(6.0, np.float32))]

    def conv(x, cin, cout, k, name, stride=1, group=1, act=True):
        w = rng.normal(0, np.sqrt(2 / (cin // group * k * k)), (cout, cin // group, k, k)).astype(np.float32)
        inits.extend([init(f"{name}.w", w), init(f"{name}.b", rng.normal(0, 0.1, cout).astype(np.float32))])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name,
                                      kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2, group=group))
        if not act:
            return f"{name}.y"
        nodes.append(helper.make_node("Clip", [f"{name}.y", "lo", "hi"], [f"{name}.r"], name=f"{name}.relu6"))
        return f"{name}.r"

    x = conv("x", 3, 8, 3, "stem", stride=2)                                   # 8 x 8 x 8
    e = conv(x, 8, 24, 1, "b1.expand")
    d = conv(e, 24, 24, 3, "b1.dw", group=24)
    p = conv(d, 24, 8, 1, "b1.project", act=False)
    nodes.append(helper.make_node("Add", [x, p], ["b1.out"], name="b1.add"))   # residual
    # squeeze-excite: GAP -> 1x1 -> Relu -> 1x1 -> HardSigmoid -> Mul
    nodes.append(helper.make_node("GlobalAveragePool", ["b1.out"], ["se.pool"], name="se.pool"))
    s = conv("se.pool", 8, 4, 1, "se.reduce", act=False)
    nodes.append(helper.make_node("Relu", [s], ["se.relu"], name="se.relu"))
    s = conv("se.relu", 4, 8, 1, "se.expand", act=False)
    nodes.append(helper.make_node("HardSigmoid", [s], ["se.gate"], name="se.gate", alpha=1 / 6, beta=0.5))
    nodes.append(helper.make_node("Mul", ["b1.out", "se.gate"], ["se.out"], name="se.mul"))
    # two branches at different scales, concatenated
    nodes.append(helper.make_node("MaxPool", ["se.out"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("AveragePool", ["se.out"], ["ap"], name="avgpool", kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0))
    a = conv("ap", 8, 8, 1, "branch", act=False)
    nodes.append(helper.make_node("Concat", ["mp", a], ["cat"], name="concat", axis=1))
    h = conv("cat", 16, 32, 1, "head.conv")
    nodes.append(helper.make_node("GlobalAveragePool", [h], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    inits.append(init("fc.w", rng.normal(0, 0.2, (10, 32)).astype(np.float32)))
    inits.append(init("fc.b", rng.normal(0, 0.1, 10).astype(np.float32)))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1))
    return make_model(nodes, [tensor_info("x", [1, 3, 16, 16])], [tensor_info("prob", [1, 10])], inits)


def integer_and_float(report):
    integer = [d for d in report.layers if d.kernel == "integer"]
    return integer, [d for d in report.layers if d.kernel != "integer"]


@pytest.mark.parametrize("fmt, scheme, int8_outputs", [("qdq", "auto", False), ("qoperator", "symmetric", True)])
def test_mobilenet_style_bit_exact(fmt, scheme, int8_outputs):
    rng = np.random.default_rng(7)
    model = mobilenet_style(rng)
    feeds = [{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(6)]
    table = calibrate(model, feeds)
    if scheme == "symmetric":
        table = {k: symmetric(max(abs(q.scale * (-128 - q.zero_point)), abs(q.scale * (127 - q.zero_point))))
                 for k, q in table.items()}
    result = convert(model, table, fmt=fmt, int8_outputs=int8_outputs)
    params = json.loads(json.dumps(hardware_params(result, table)))  # as --params writes it
    layers = {layer["node"]: layer for layer in params["layers"]}
    # geometry, hand-derived from the architecture: 16x16 stride 2 -> 8x8; pools 2x2/2 and 3x3/2 pad 1 -> 4x4
    assert layers["stem"]["output"]["shape"] == [1, 8, 8, 8] and layers["stem"]["weight"]["shape"] == [8, 3, 3, 3]
    assert layers["head.conv"]["inputs"][0]["shape"] == [1, 16, 4, 4]
    assert layers["se.pool"]["divisor"] == 64 and layers["gap"]["divisor"] == 16
    assert layers["avgpool"]["divisor"] == "valid_count" and layers["maxpool"]["pad_value"] == -128
    assert layers["b1.dw"]["attributes"]["group"] == 24 and layers["b1.dw"]["attributes"]["pads"] == [1, 1, 1, 1]
    report = compare(result.model, params, feeds)
    integer, floats = integer_and_float(report)
    ops = {d.op_type for d in integer}
    expected = {"Conv", "Add", "Mul", "HardSigmoid", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Flatten"}
    assert expected | ({"Gemm", "Softmax"} if int8_outputs else set()) <= ops
    assert all(d.isolated == 0 and d.chained == 0 for d in integer), [(d.node, d.isolated, d.chained) for d in integer]
    assert all(d.chained < 1e-3 for d in floats)  # float outputs: float rounding only
    fixed = compare(result.model, params, feeds, rounding="fixed-point")
    assert max(d.isolated for d in fixed.layers) <= 1  # one rounding of the exact product: within 1 LSB per layer


def test_demo_bit_exact_through_the_cli_files(tmp_path):
    """The README's demo flow: calibrate, convert --params, then the simulation on held-out images."""
    demo = ROOT / "demo" / "digits_mobilenet.onnx"
    calibrate_table(demo, tmp_path / "d.scale", Settings("minmax"), **{**DEMO, "images": [str(ROOT / "calibration_data")],
                                                                       "max_images": 40})
    convert_model(demo, tmp_path / "d8.onnx", tmp_path / "d.scale", Settings(), fmt="qdq", exclude=(),
                  params_path=tmp_path / "p.json", **{**DEMO, "images": ()})
    params = json.loads((tmp_path / "p.json").read_text())
    model = onnx.load(tmp_path / "d8.onnx")
    from quanttool.commands import Inputs
    from quanttool.inputs import discover, iter_samples
    inputs = Inputs(tmp_path / "d8.onnx", **{**DEMO, "images": [str(ROOT / "demo" / "heldout")], "max_images": 15})
    feeds = [f for _, f in iter_samples(discover(inputs.roots, 15), inputs.specs, inputs.pp)]
    integer, floats = integer_and_float(compare(model, params, feeds))
    assert len(integer) == 18 and all(d.isolated == 0 and d.chained == 0 for d in integer)
    assert all(d.chained < 1e-3 for d in floats)
    fixed = compare(model, params, feeds, rounding="fixed-point")
    assert max(d.isolated for d in fixed.layers) <= 1


def test_symmetric_relu6_clamp_in_params(tmp_path):
    """A lone Clip(0, 6) under the symmetric scheme: its clamp is [zp + round(0/s), zp + round(6/s)]."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="relu6")]
    model = make_model(nodes, [tensor_info("x", [1, 2, 4, 4])], [tensor_info("y", [1, 3, 4, 4])],
                       [init("w", rng.normal(size=(3, 2, 1, 1)).astype(np.float32) * 4),
                        init("lo", np.array(0.0, np.float32)), init("hi", np.array(6.0, np.float32))])
    s = 6 / 100.4  # 6 / s = 100.4: the ReLU6 bound is level 100
    table = {"x": symmetric(3.0), "c": symmetric(127 * s), "y": symmetric(127 * s)}
    result = convert(model, table, int8_outputs=True)
    layer = next(l for l in hardware_params(result, table)["layers"] if l["node"] == "relu6")
    assert layer["clamp"] == [0, 100]
    assert layer["activation"] == {"op": "Clip", "min": 0.0, "max": 6.0, "fused": False}
    feeds = [{"x": rng.normal(size=(1, 2, 4, 4)).astype(np.float32) * 3} for _ in range(3)]
    report = compare(result.model, json.loads(json.dumps(hardware_params(result, table))), feeds)
    assert all(d.chained == 0 for d in report.layers)


def test_cli_simulate_reports_and_rejects_a_foreign_params_file(tmp_path, capsys):
    rng = np.random.default_rng(5)
    model = mobilenet_style(rng)
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "npy").mkdir()
    for i in range(3):
        np.save(tmp_path / "npy" / f"{i}.npy", rng.normal(size=(3, 16, 16)).astype(np.float32))
    common = ["-i", str(tmp_path / "npy")]

    def errors(capsys):  # the error lines (simulate first says it takes the recipe's preprocessing)
        return "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                         if "preprocessing from" not in line)
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "-m", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--params",
              str(tmp_path / "p.json"), *common])
    assert exit_.value.code == 0
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "-m", str(tmp_path / "q.onnx"), "--params", str(tmp_path / "p.json"), *common,
              "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "integer layers: bit-exact" in out
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["images"] == 3 and all(l["chained"] == 0 for l in saved["layers"] if l["kernel"] == "integer")
    # a params file of another model: one line naming the node and the fix
    other = json.loads((tmp_path / "p.json").read_text())
    other["layers"][0]["node"] = "not_a_node"
    (tmp_path / "o.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "-m", str(tmp_path / "q.onnx"), "--params", str(tmp_path / "o.json"), *common])
    err = errors(capsys)
    assert exit_.value.code == 1 and len(err.splitlines()) == 1 and "not_a_node" in err and "--params" in err
    # an older params file without the fields simulate needs: one line, exit 1
    for layer in other["layers"]:
        layer.pop("attributes", None)
    other["layers"][0]["node"] = saved["layers"][0]["node"]
    (tmp_path / "o.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "-m", str(tmp_path / "q.onnx"), "--params", str(tmp_path / "o.json"), *common])
    err = errors(capsys)
    assert exit_.value.code == 1 and len(err.splitlines()) == 1 and "attributes" in err and "convert --params" in err
    # a damaged entry (not a dict) is called damaged, not "lacks 'int' object is not subscriptable"
    other["layers"][0] = 5
    (tmp_path / "o.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "-m", str(tmp_path / "q.onnx"), "--params", str(tmp_path / "o.json"), *common])
    err = errors(capsys)
    assert exit_.value.code == 1 and len(err.splitlines()) == 1 and "an entry is damaged" in err and "lacks" not in err
    # the fp32 model instead of the int8 one: one line saying so
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "-m", str(tmp_path / "m.onnx"), "--params", str(tmp_path / "p.json"), *common])
    err = errors(capsys)
    assert exit_.value.code == 1 and len(err.splitlines()) == 1 and "int8 model" in err


@pytest.mark.parametrize("target", ["openvino", "tensorrt"])
def test_input_only_targets_simulate(target):
    """--target openvino/tensorrt leave the Conv output entering a residual Add float (the runtime fuses them):
    the params file says that input is float in the model, and simulate runs the Add as the model spells it."""
    from quanttool.targets import TARGETS
    rng = np.random.default_rng(7)
    model = mobilenet_style(rng)
    feeds = [{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(3)]
    table = calibrate(model, feeds)
    table = {k: symmetric(max(abs(q.scale * (-128 - q.zero_point)), abs(q.scale * (127 - q.zero_point))))
             for k, q in table.items()}
    result = convert(model, table, int8_outputs=False, target=TARGETS[target])
    params = json.loads(json.dumps(hardware_params(result, table)))
    produced = {o for n in result.model.graph.node for o in n.output}
    add = next(l for l in params["layers"] if l["node"] == "b1.add")
    fused = next(i for i in add["inputs"] if i["name"] == "b1.project.y")
    assert "b1.project.y_quantized" not in produced  # the Conv + Add fusion the target asks for
    assert fused["int8_tensor"] is None and fused["float_in_model"] is True
    assert all(i["int8_tensor"] in produced for l in params["layers"] for i in l["inputs"] if i.get("int8_tensor"))
    report = compare(result.model, params, feeds)
    kinds = {d.node: d.kernel for d in report.layers}
    assert kinds["b1.add"].startswith("float") and kinds["head.conv"] == "float: output left float"
    # the int8 ops' arithmetic matches; float layers (numpy vs onnxruntime summation order) can flip a
    # QuantizeLinear rounding downstream, so they are compared within a few LSB only
    assert all(d.isolated == 0 for d in report.layers if d.kernel == "integer")
    assert max(d.chained for d in report.layers) < 2


def test_params_of_another_conversion_is_named():
    """A --params file written with another --target than the model: one error naming the missing int8 tensor
    and the fix (it was onnxruntime's 'invalid model' about a graph output quanttool itself had added)."""
    from quanttool.errors import QuantError
    from quanttool.targets import TARGETS
    rng = np.random.default_rng(7)
    model = mobilenet_style(rng)
    feeds = [{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)}]
    table = calibrate(model, feeds)
    table = {k: symmetric(max(abs(q.scale * (-128 - q.zero_point)), abs(q.scale * (127 - q.zero_point))))
             for k, q in table.items()}
    generic = json.loads(json.dumps(hardware_params(convert(model, table, target=TARGETS["generic"]), table)))
    trt = convert(model, table, target=TARGETS["tensorrt"]).model
    with pytest.raises(QuantError, match=r"^--params p\.json: int8 tensor '[^']+_quantized' is not in the model.*written together"):
        compare(trt, generic, feeds, where="--params p.json")


def test_simulate_takes_the_preprocessing_convert_recorded(tmp_path, capsys):
    """Without preprocessing options simulate feeds the images as convert saw them (the recipe's gray, 1/255):
    the same report as with the options spelled out; other options given are used, with a warning."""
    root = Path(__file__).parent.parent
    demo, pre = root / "demo" / "digits_mobilenet.onnx", ["--color", "gray", "--norm", "0.00392156862745098"]
    images = ["-i", str(root / "demo" / "heldout"), "--max-images", "4"]
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "-m", str(demo), "-i", str(root / "calibration_data"), *pre, "--max-images", "20",
              "--check-images", "0", "-o", str(tmp_path / "q.onnx"), "--params", str(tmp_path / "p.json")])
    assert exit_.value.code == 0

    def simulate(name, *options):
        with pytest.raises(SystemExit) as exit_:
            main(["simulate", "-m", str(tmp_path / "q.onnx"), "--params", str(tmp_path / "p.json"), *images,
                  *options, "--json", str(tmp_path / name)])
        assert exit_.value.code == 0
        return json.loads((tmp_path / name).read_text()), capsys.readouterr().err

    explicit, err = simulate("a.json", *pre)
    assert "differs" not in err
    recorded, err = simulate("b.json")
    assert recorded == explicit and "preprocessing from" in err
    wrong, err = simulate("c.json", "--color", "gray")  # norm 1 instead of 1/255
    assert "differs from the one" in err and wrong != explicit
