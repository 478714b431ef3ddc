"""--target: every test model converted for TensorRT passes the checker of TensorRT's documented Q/DQ rules
(tests/trt_rules.py) and still matches fp32 in onnxruntime; the default output compiles and runs int8 in
OpenVINO's CPU plugin with its default configuration; conflicting options are usage errors; no bias saturates;
the int8 model records how it was made and evaluate uses that preprocessing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quanttool.runtime import session
from tests.test_exports import CASES, DATA, SQNR_FLOOR_DB, Workspace, compare, fp32_session, quanttool
from tests.trt_rules import violations

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "demo" / "digits_mobilenet.onnx"
DEMO_PRE = ["--color", "gray", "--norm", "0.00392156862745098"]
INT32_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("targets"))


SUMMARIES: dict[Path, str] = {}  # convert's summary line per int8 file


def converted(work: Workspace, model: str, target: str = "generic") -> onnx.ModelProto:
    """convert -f TABLE --target TARGET, in process (the CLI path is covered by the tests below)."""
    from quanttool.calibrate import Settings
    from quanttool.commands import convert_model

    path = work.root / model / f"{model}_{target}.onnx"
    if not path.exists():
        SUMMARIES[path] = convert_model(DATA / f"{model}.onnx", path, work.table(model), Settings(target=target, scheme="symmetric"),
                      fmt="qdq", exclude=(), params_path=None, images=(), shape=work.shape_args(model)[1::2],
                      mean=(), norm=(), color=(), resize=(), pad_value=(), focus=False, max_images=None, threads=1)
    return onnx.load(str(path))


@pytest.mark.parametrize("model", list(CASES))
def test_tensorrt_output_follows_the_rules_and_matches_fp32(work, model):
    trt = converted(work, model, "tensorrt")
    assert violations(trt) == []
    inits = [numpy_helper.to_array(t) for t in trt.graph.initializer]
    assert any(a.dtype == np.int8 for a in inits) and not any(a.dtype == np.int32 for a in inits)
    fp32 = fp32_session(DATA / f"{model}.onnx")
    for sqnr in compare(fp32, session(trt), work.held_out_feeds(model)):
        assert sqnr >= SQNR_FLOOR_DB
    # the checker is not vacuous: the default output has int32 bias DequantizeLinear nodes it rejects
    default = converted(work, model)
    if any(len(n.input) > 2 and n.op_type in ("Conv", "Gemm") for n in onnx.load(str(DATA / f"{model}.onnx")).graph.node):
        assert any("int32" in v for v in violations(default))


def test_tensorrt_placement_on_a_residual_block(tmp_path):
    """conv1 -> relu -> conv2 -> Add(relu, conv2) -> Gemm(beta 0.5): Q/DQ on the inputs of conv1, conv2, the Add's
    residual input and the Gemm; none on conv2's output (TensorRT fuses it with the Add); biases float, with
    Gemm's beta folded in."""
    from onnx import helper

    from tests.helpers import init, make_model, tensor_info

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(4, 4, 3, 3)).astype(np.float32), rng.normal(size=(4, 4, 3, 3)).astype(np.float32)
    b1, b2 = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    wg, bg = rng.normal(size=(64, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["r1", "c2"], ["s"], name="add"),
             helper.make_node("Flatten", ["s"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", beta=0.5)]
    model = make_model(nodes, [tensor_info("x", [1, 4, 4, 4])], [tensor_info("y", [1, 5])],
                       [init("w1", w1), init("b1", b1), init("w2", w2), init("b2", b2), init("wg", wg), init("bg", bg)])
    path = tmp_path / "res.onnx"
    onnx.save(model, path)
    (tmp_path / "x").mkdir()
    for i in range(4):
        np.save(tmp_path / "x" / f"{i}.npy", rng.normal(size=(4, 4, 4)).astype(np.float32))
    quanttool("convert", "-m", path, "-i", tmp_path / "x", "--target", "tensorrt", "-o", tmp_path / "q.onnx")
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert violations(q) == []
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized == {"x", "r1", "f"}  # conv1 input, conv2 input = residual, Gemm input; not c1, c2, s
    by_name = {n.name: n for n in q.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert by_name["conv2"].output[0] == "c2" and by_name["add"].input[1] == "c2"  # c2 straight into the Add
    np.testing.assert_array_equal(inits[by_name["conv1"].input[2]], b1)
    np.testing.assert_allclose(inits[by_name["fc"].input[2]], 0.5 * bg, rtol=1e-7)


@pytest.mark.parametrize("args, needle", [
    (["--target", "tensorrt", "--format", "qoperator"], "--format qoperator does not fit --target tensorrt"),
    (["--target", "tensorrt", "--scheme", "asymmetric"], "--scheme asymmetric does not fit --target tensorrt"),
    (["--target", "openvino", "--scheme", "auto"], "--scheme auto does not fit --target openvino"),
    (["--target", "generic", "--format", "qoperator"], "--format qoperator does not fit --target generic"),
    (["--target", "tensorrt", "--int8-outputs"], "--int8-outputs does not fit --target tensorrt"),
    (["--target", "openvino", "--int8-outputs"], "--int8-outputs does not fit --target openvino"),
])
def test_conflicting_options_are_usage_errors(tmp_path, args, needle):
    result = subprocess.run([sys.executable, "-m", "quanttool", "convert", "-m", DEMO, "-i", tmp_path, "-o",
                             tmp_path / "q.onnx", *args], capture_output=True, text=True)
    assert result.returncode == 2 and needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_table_with_zero_points_and_a_symmetric_target_is_one_line_error(work, tmp_path):
    table = tmp_path / "auto.scale"
    calib, _ = work.samples("resnet_bn")
    quanttool("calibrate", "-m", DATA / "resnet_bn.onnx", "-i", calib / "input", "--target", "onnxruntime", "-o", table)
    assert "-128" in table.read_text()  # auto: Relu outputs take zero point -128
    result = subprocess.run([sys.executable, "-m", "quanttool", "convert", "-m", DATA / "resnet_bn.onnx", "-f", table,
                             "--target", "tensorrt", "-o", tmp_path / "q.onnx"], capture_output=True, text=True)
    assert result.returncode == 1 and "takes zero point 0 only" in result.stderr
    # without --target the table's own target applies
    out = quanttool("convert", "-m", DATA / "resnet_bn.onnx", "-f", table, "-o", tmp_path / "q.onnx")
    assert out.strip().splitlines()[0].endswith("target onnxruntime")


@pytest.mark.parametrize("model", list(CASES))
def test_no_test_model_has_a_saturated_bias(work, model):
    q = converted(work, model, "onnxruntime")
    biases = [numpy_helper.to_array(t) for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT32]
    assert biases and all(np.abs(b.astype(np.int64)).max() < INT32_MAX for b in biases)
    if model == "efficientnet_lite":  # its gamma ~ 0 channels (2 per BatchNorm, 8 convs) are the overflow case
        assert SUMMARIES[work.root / model / f"{model}_onnxruntime.onnx"].endswith(
            "; weight scale raised on 16 channels of 8 ops so their int32 bias fits")


# ---- OpenVINO ---------------------------------------------------------------------------------------------
def _openvino():
    return pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'quanttool[test]')")


def _int8_layers(compiled) -> int:
    """Convolution/FullyConnected layers the CPU plugin runs on 8-bit data (its runtime model says so)."""
    count = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
        count += kind in ("Convolution", "FullyConnected") and precision in ("u8", "i8")
    return count


def _openvino_vs_onnxruntime(path: Path, feeds: list[dict]) -> tuple[float, float, int]:
    """Worst output SQNR of OpenVINO against onnxruntime's int8 run, of onnxruntime's int8 against fp32 is not
    needed here; also the count of layers OpenVINO runs in int8."""
    ov = _openvino()
    compiled = ov.Core().compile_model(str(path), "CPU")  # the default configuration
    ort_int8 = session(onnx.load(str(path)))
    refs = [ort_int8.run(None, f) for f in feeds]
    outs = [[compiled(f)[k] for k in range(len(compiled.outputs))] for f in feeds]
    from tests.test_exports import sqnr_db

    worst = min(sqnr_db([r[k] for r in refs], [o[k] for o in outs]) for k in range(len(refs[0])))
    return worst, len(refs), _int8_layers(compiled)


@pytest.mark.parametrize("target", ["generic", "openvino", "tensorrt"])
def test_demo_runs_int8_in_openvino_default_config(tmp_path, target):
    """OpenVINO and onnxruntime run the same int8 model: they differ only where a requantization rounds a tie
    or a float product differently (1 LSB here and there), far below the int8 model's own error vs fp32 (33 dB
    on the demo): 30 dB between the two runtimes."""
    _openvino()
    path = tmp_path / "q.onnx"
    quanttool("convert", "-m", DEMO, "-i", ROOT / "calibration_data", *DEMO_PRE, "--max-images", "40",
              "--target", target, "-o", path)
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.random((1, 1, 32, 32)).astype(np.float32)} for _ in range(4)]
    sqnr, _, int8_layers = _openvino_vs_onnxruntime(path, feeds)
    assert sqnr >= 30.0
    assert int8_layers >= 13  # the 13 convs (and the Gemm) run on 8-bit data, not in float


def test_mobilenet_style_default_output_runs_in_openvino(work):
    _openvino()
    path = work.root / "mobilenet_se_default_ov.onnx"
    quanttool("convert", "-m", DATA / "mobilenet_se.onnx", "-f", work.table("mobilenet_se"), "-o", path,
              *work.shape_args("mobilenet_se"))
    sqnr, _, int8_layers = _openvino_vs_onnxruntime(path, work.held_out_feeds("mobilenet_se"))
    assert sqnr >= 30.0 and int8_layers >= 1


# ---- the recipe ---------------------------------------------------------------------------------------------
def test_int8_model_records_how_it_was_made_and_evaluate_reuses_it(tmp_path):
    path = tmp_path / "q.onnx"
    quanttool("convert", "-m", DEMO, "-i", ROOT / "calibration_data", *DEMO_PRE, "--max-images", "20", "-a", "kl",
              "-o", path)
    recipe = json.loads(next(p.value for p in onnx.load(str(path)).metadata_props if p.key == "quanttool.recipe"))
    from quanttool import __version__

    assert (recipe["target"], recipe["algorithm"], recipe["scheme"]) == ("generic", "kl", "symmetric")
    assert recipe["quanttool_version"] == __version__
    assert "color=gray" in recipe["preprocess"] and "norm=0.00392156862745098" in recipe["preprocess"]

    def evaluate(*pre):
        out = tmp_path / "e.json"
        result = subprocess.run([sys.executable, "-m", "quanttool", "evaluate", "-m", DEMO, "-q", path, "-i",
                                 ROOT / "demo" / "heldout", "--max-images", "10", *pre, "--json", out],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return json.loads(out.read_text())["outputs"][0]["sqnr_db"], result.stderr

    explicit, err = evaluate(*DEMO_PRE)
    assert "differs" not in err
    recorded, err = evaluate()
    assert recorded == explicit and "preprocessing from" in err
    wrong, err = evaluate("--color", "gray")  # norm 1 instead of 1/255
    assert "differs from the one" in err and wrong != explicit
