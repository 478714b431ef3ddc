"""Fixed costs per command (issue 11 "the model file read once", issue 12 "prepare once per command, verify with
one session pair"): the model file is opened once, each shape mode is prepared once, and the static and dynamic
preparations share one verification when they hold the same nodes and weights (and only then)."""

from __future__ import annotations

import builtins
import hashlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest

import quanttool.prepare as prep_module
from quanttool.cli import main
from quanttool.prepare import load_model, read

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "digits_mobilenet.onnx"
PRE = ["--color", "gray", "--norm", "0.00392156862745098"]


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    return out.out


@pytest.fixture
def counted(monkeypatch):
    """Counts: opens of each file (resolved path), prepare calls by shape mode, verifications (their feeds)."""
    counts = {"open": {}, "prepare": [], "verify": []}
    real_open, real_prepare, real_verify = builtins.open, prep_module.prepare, prep_module.verify_prepared

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)):
            key = Path(file).resolve()
            counts["open"][key] = counts["open"].get(key, 0) + 1
        return real_open(file, *args, **kwargs)

    def counting_prepare(model, specs=None, **kwargs):
        counts["prepare"].append("static" if specs else "dynamic")
        return real_prepare(model, specs, **kwargs)

    def counting_verify(*args):
        counts["verify"].append(args[4])
        return real_verify(*args)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)  # what Path.read_bytes opens with
    monkeypatch.setattr(prep_module, "prepare", counting_prepare)
    monkeypatch.setattr(prep_module, "verify_prepared", counting_verify)
    return counts


def test_each_command_reads_the_demo_once_and_prepares_and_verifies_once_per_need(tmp_path, capsys, counted):
    demo = DEMO.resolve()
    run_cli(capsys, "calibrate", "-m", DEMO, "-i", ROOT / "calibration_data", *PRE, "-o", tmp_path / "d.scale")
    assert counted["open"][demo] == 1 and counted["prepare"] == ["static"] and len(counted["verify"]) == 1
    assert counted["verify"][0] is not None  # on the first calibration image

    for key in counted:
        counted[key].clear()
    run_cli(capsys, "convert", "-m", DEMO, "-f", tmp_path / "d.scale", "-o", tmp_path / "f8.onnx")
    assert counted["open"][demo] == 1 and counted["prepare"] == ["dynamic"] and len(counted["verify"]) == 1

    for key in counted:
        counted[key].clear()
    run_cli(capsys, "convert", "-m", DEMO, "-i", ROOT / "calibration_data", *PRE, "-o", tmp_path / "i8.onnx")
    # two shape modes, one verification: the demo's dynamic batch folds no shape chain, so both copies hold
    # the same nodes and weights, and the pair ran on the first image (the static copy is made first)
    assert counted["open"][demo] == 1 and counted["prepare"] == ["static", "dynamic"]
    (feeds,) = counted["verify"]
    assert feeds is not None and feeds["input"].shape == (1, 1, 32, 32)

    for key in counted:
        counted[key].clear()
    run_cli(capsys, "evaluate", "-m", DEMO, "-q", tmp_path / "i8.onnx", "-i", ROOT / "demo" / "heldout")
    # the recipe's preprocessing needs the fp32 model's input names: still one read of it
    assert counted["open"][demo] == 1 and counted["prepare"] == ["static"] and len(counted["verify"]) == 1


def test_a_shape_chain_that_folds_differently_is_verified_in_both_modes(tmp_path, capsys, counted):
    """transformer.onnx reshapes with Shape -> Gather -> Concat: with the batch fixed the chain folds, so the
    static and dynamic copies differ and one verification does not stand for the other."""
    model = ROOT / "tests" / "data" / "transformer.onnx"
    static = prep_module.prepare(load_model(model), prep_module.input_specs(load_model(model), {}), verify=False)
    dynamic = prep_module.prepare(load_model(model), None, verify=False)
    assert len(static.graph.node) != len(dynamic.graph.node)  # the premise: the preparations really differ
    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        np.save(images / f"{k}.npy", rng.standard_normal((3, 16, 16)).astype(np.float32))
    for key in counted:
        counted[key].clear()
    run_cli(capsys, "convert", "-m", model, "-i", images, "-o", tmp_path / "t8.onnx")
    assert counted["prepare"] == ["static", "dynamic"] and len(counted["verify"]) == 2
    assert counted["verify"][0] is not None and counted["verify"][1] is None  # image first, random as before


def test_external_data_is_read_once_and_hashed_from_the_bytes_parsed(tmp_path, capsys, counted):
    model = onnx.load(str(DEMO))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}  # save moves them out
    folder = tmp_path / "ext"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    for key in counted:
        counted[key].clear()
    loaded = read(path)
    assert counted["open"] == {path.resolve(): 1, (folder / "m.data").resolve(): 1}
    # the digest as written out in model_hash's contract: model file, then each data file by location
    expected = hashlib.sha256(path.read_bytes() + b"\0external data\0m.data\0" + (folder / "m.data").read_bytes())
    assert loaded.sha == expected.hexdigest() == prep_module.model_hash(path)
    assert len(loaded.model.graph.initializer) == len(weights)
    for tensor in loaded.model.graph.initializer:
        assert tensor.data_location == onnx.TensorProto.DEFAULT and not tensor.external_data
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor), weights[tensor.name])
