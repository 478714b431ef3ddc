"""Issue 11 defects on the statistics, cache, table, model and determinism side: each test reproduces one defect
(it failed before the fix) and checks the fixed behaviour against an independent computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnx import helper

from tests.helpers import init, make_model, run, tensor_info
from tests.test_errors import run_cli
from tests.test_errors import workspace as conv_workspace  # noqa: F401 -- a fixture: Conv+Relu, 3 RGB images
from tests.test_evaluate import sqnr

RNG = np.random.default_rng(11)


def error_line(err: str) -> str:
    """The one `quanttool: error:` line (progress bars may precede it)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("quanttool: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def fake_quant(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    q = np.clip(np.round(x / np.float32(scale)) + zp, -128, 127)
    return ((q - zp) * np.float32(scale)).astype(np.float32)


def conv1x1_model():
    w = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32) * 0.1
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv")],
                       [tensor_info("x", [1, 3, 5, 5])], [tensor_info("c", [1, 4, 5, 5])], [init("w", w), init("b", b)])
    return model, w, b


def read_table_file(path):
    entries = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, scale, zp = line.rsplit(" ", 2)
            entries[name] = (float(scale), int(zp))
    return entries


# ---- item 5: evaluate -q reads the weights the converter stored (here 7-bit, --reduce-range) --------------
@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_evaluate_after_reduce_range_uses_the_stored_7_bit_weights(tmp_path, capsys, fmt):
    model, w, b = conv1x1_model()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    images = tmp_path / "npy"
    images.mkdir()
    xs = [RNG.standard_normal((1, 3, 5, 5)).astype(np.float32) for _ in range(4)]
    for k, x in enumerate(xs):
        np.save(images / f"{k}.npy", x)
    assert run_cli(capsys, "calibrate", "-m", path, "-i", images, "-o", tmp_path / "t.scale")[0] == 0
    assert run_cli(capsys, "convert", "-m", path, "-f", tmp_path / "t.scale", "-o", tmp_path / "q.onnx",
                   "--reduce-range", "--format", fmt)[0] == 0
    code, _, err = run_cli(capsys, "evaluate", "-m", path, "-q", tmp_path / "q.onnx", "-i", images,
                           "--json", tmp_path / "e.json")
    assert code == 0, err
    (layer,) = json.loads((tmp_path / "e.json").read_text())["layers"]

    table = read_table_file(tmp_path / "t.scale")
    s_w = np.abs(w).reshape(4, -1).max(axis=1) / 63  # 7-bit weights: levels +-63
    w_deq = np.clip(np.round(w.reshape(4, 3) / s_w[:, None]), -63, 63) * s_w[:, None]
    s_b = np.float32(table["x"][0]) * s_w.astype(np.float32)
    b_deq = np.round(b / s_b) * s_b
    refs, isos = [], []
    for x in xs:
        conv = np.einsum("nchw,oc->nohw", fake_quant(x, *table["x"]), w_deq) + b_deq[None, :, None, None]
        isos.append(conv.astype(np.float32))  # c is a graph output: computed in float from int8 inputs
        refs.append(run(model, {"x": x})[0])
    expected = sqnr(np.concatenate(refs), np.concatenate(isos))
    assert expected > 25  # the stored 7-bit weights, not 8-bit recomputed ones against a 7-bit bias
    assert layer["isolated_sqnr_db"] == pytest.approx(expected, rel=1e-4)


# ---- item 2: NaN/Inf inputs are refused by evaluate as by calibrate, naming the cause; JSON stays strict ----
@pytest.mark.parametrize("command", ["calibrate", "evaluate"])
@pytest.mark.parametrize("options, needle", [
    (["--resize", "letterbox", "--pad-value", "nan"], "--pad-value"),
    (["--norm", "1e39"], "--norm"),
    (["--mean", "-1e38", "--norm", "10"], "--mean"),
])
def test_nonfinite_preprocessing_is_a_usage_error(conv_workspace, capsys, command, options, needle):
    tmp, model, images = conv_workspace
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")[0] == 0
    extra = ["-f", tmp / "t.scale", "--json", tmp / "e.json"] if command == "evaluate" else ["-o", tmp / "u.scale"]
    code, _, err = run_cli(capsys, command, "-m", model, "-i", images, *options, *extra)
    assert code == 2 and needle in error_line(err)
    assert not (tmp / "e.json").exists() and not (tmp / "u.scale").exists()


def test_evaluate_refuses_a_nonfinite_input_naming_it():
    from quanttool.errors import QuantError
    from quanttool.evaluate import evaluate
    from quanttool.qparams import QParam
    from quanttool.rewrite import convert

    model, _, _ = conv1x1_model()
    table = {"x": QParam(0.03, 0), "c": QParam(0.05, 0)}
    result = convert(model, table)
    bad = np.zeros((1, 3, 5, 5), np.float32)
    bad[0, 1, 2, 3] = np.inf
    samples = [("good.npy", {"x": np.ones((1, 3, 5, 5), np.float32)}), ("bad.npy", {"x": bad})]
    with pytest.raises(QuantError, match=r"input 'x' contains NaN or Inf on image bad.npy"):
        evaluate(model, result.model, table, result.quantized, iter(samples), 2)


def test_json_report_is_strict_json_whatever_the_numbers():
    from quanttool.evaluate import to_json
    from quanttool.evaluate.report import EvalReport, LayerReport, OutputReport

    nan = float("nan")
    layer = LayerReport("conv", "Conv", "c", 0, 0.1, 0, nan, nan, math.inf, nan, nan, 0.0, [nan, 0.5], [(0, nan)])
    report = EvalReport([layer], [OutputReport("y", nan, -math.inf, nan, nan, [], nan)], 1)
    text = json.dumps(to_json(report), allow_nan=False)  # raises on NaN/Infinity
    data = json.loads(text)
    assert data["layers"][0]["isolated_sqnr_db"] is None and data["layers"][0]["channel_cosines"] == [None, 0.5]
    assert data["layers"][0]["worst_channels"] == [{"channel": 0, "cosine": None}]
    assert data["outputs"][0] == {"name": "y", "cosine": None, "sqnr_db": None, "max_abs_error": None,
                                  "top1_agreement": None, "worst_sqnr_db": None, "parts": [],
                                  "largest_image_share": None}


# ---- item 3: the --stats cache key covers the external data files too ----------------------------------------
def test_stats_cache_is_not_reused_after_the_external_weights_change(conv_workspace, capsys):
    import hashlib

    import onnx

    from quanttool.prepare import model_hash

    tmp, inline, images = conv_workspace
    assert model_hash(inline) == hashlib.sha256(inline.read_bytes()).hexdigest()  # no external data: the file's
    model = onnx.load(str(inline))
    folder = tmp / "ext"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    stats = tmp / "s.npz"
    assert run_cli(capsys, "calibrate", "-m", path, "-i", images, "-o", tmp / "a.scale", "--stats", stats)[0] == 0
    # the same weights times 10, same file size: the model file itself is unchanged
    before = path.read_bytes()
    model = onnx.load(str(inline))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    (folder / "m.data").unlink()
    for tensor in model.graph.initializer:
        tensor.CopyFrom(onnx.numpy_helper.from_array(weights[tensor.name] * 10, tensor.name))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    assert path.read_bytes() == before
    code, _, err = run_cli(capsys, "calibrate", "-m", path, "-i", images, "-o", tmp / "b.scale", "--stats", stats)
    assert code == 1 and "different model sha256" in error_line(err) and not (tmp / "b.scale").exists()


# ---- item 4: every field of a --stats file is validated on load ---------------------------------------------
def _rewrite_npz(path, **changes):
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    for key, change in changes.items():
        arrays[key] = change(arrays[key].copy())
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _set_first(value):
    def change(column):
        column[0] = value
        return column
    return change


@pytest.mark.parametrize("field, value", [("range", float("nan")), ("range", -4.0), ("range", 3.0),
                                          ("min", float("nan")), ("max", float("inf")), ("count", -5),
                                          ("zeros", 10**9), ("sumsq", -1.0), ("edge_pos", 10**9)])
@pytest.mark.parametrize("algorithm", ["mse", "kl"])
def test_damaged_stats_are_refused_naming_the_tensor(conv_workspace, capsys, field, value, algorithm):
    tmp, model, images = conv_workspace
    stats = tmp / "s.npz"
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "a.scale", "--stats", stats)[0] == 0
    _rewrite_npz(stats, **{field: _set_first(value)})
    code, _, err = run_cli(capsys, "calibrate", "-m", model, "-i", images, "-a", algorithm, "-o", tmp / "b.scale",
                           "--stats", stats)
    line = error_line(err)
    assert code == 1 and "damaged statistics" in line and "tensor 'x'" in line and not (tmp / "b.scale").exists()


def test_damaged_histogram_and_a_good_file_round_trip(tmp_path):
    from quanttool.errors import QuantError
    from quanttool.stats import TensorStats, load_stats, save_stats

    st = TensorStats()
    st.update(RNG.standard_normal((2, 50)).astype(np.float32), batch=2)
    st.update(np.zeros((1, 50), np.float32), batch=1)
    path = tmp_path / "s.npz"
    save_stats(path, {"t": st}, {"k": "v"})
    loaded, meta = load_stats(path)  # what update produced passes every check
    assert meta == {"k": "v"} and loaded["t"].count == 150 and loaded["t"].zeros == 50
    _rewrite_npz(path, pos=lambda h: h - 1)
    with pytest.raises(QuantError, match=r"damaged statistics \(tensor 't': histogram pos"):
        load_stats(path)


def test_growing_a_damaged_range_raises_instead_of_looping_forever():
    import threading

    from quanttool.stats import TensorStats

    outcome = []

    def grow():
        st = TensorStats(range=-1.0, count=1, min=-0.5, max=0.5)
        try:
            st.merge(TensorStats(range=2.0, count=1, samples=1, min=1.5, max=1.5))
        except ValueError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=grow, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and outcome and "cannot grow" in outcome[0]


# ---- the C statistics kernel: heap scratch, meaningful return codes, a visible load failure -------------------
def _kernel():
    from quanttool import stats

    if stats._KERNEL is None:
        pytest.skip("C kernel not built")
    return stats._KERNEL


def stats_library() -> str:
    import importlib.util

    return importlib.util.find_spec("quanttool._statskernel").origin


def test_kernel_runs_on_a_64_kb_thread_stack():
    import subprocess
    import sys

    _kernel()
    script = ("import threading, numpy as np\n"
              "threading.stack_size(64 * 1024)\n"
              "from quanttool import stats\n"
              "out = []\n"
              "def work():\n"
              "    st = stats.TensorStats(); st.update(np.linspace(-3, 5, 10000, dtype=np.float32)); out.append(st)\n"
              "t = threading.Thread(target=work); t.start(); t.join()\n"
              "print(stats._KERNEL is not None, out[0].count, int(out[0].pos.sum() + out[0].neg.sum()))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr  # was a segmentation fault: 80 KB of arrays on the stack
    assert result.stdout.split() == ["True", "10000", "10000"]  # no exact zero in the linspace


def test_kernel_return_codes_mean_what_they_say():
    import ctypes

    from quanttool.stats import BINS

    kernel = _kernel()

    from quanttool.stats import _SCRATCH_BYTES

    def call(x, n=None, bins=BINS, scratch_bytes=_SCRATCH_BYTES):
        hist, moments, box = np.zeros(2 * (BINS + 1), np.int64), np.empty(6), ctypes.c_double(0.0)
        scratch = np.empty(_SCRATCH_BYTES, np.uint8)
        return kernel(x.ctypes.data, x.size if n is None else n, bins, ctypes.byref(box), hist.ctypes.data,
                      moments.ctypes.data, scratch.ctypes.data, scratch_bytes), moments

    x = np.array([0.5, -2.0, 0.0, 3.0], np.float32)
    code, moments = call(x)
    assert code == 0 and list(moments[:3]) == [-2.0, 3.0, 1.0] and moments[3] == pytest.approx(1.5)
    assert call(np.array([1.0, np.nan], np.float32))[0] == 1
    assert call(np.array([np.inf], np.float32))[0] == 1
    assert call(x, bins=4096)[0] == 2 and call(x, bins=0)[0] == 2 and call(x, n=-1)[0] == 2
    assert call(x, scratch_bytes=_SCRATCH_BYTES - 1)[0] == 2  # too small a work area is refused, not overrun
    assert ctypes.CDLL(stats_library()).qt_scratch_bytes(BINS) == _SCRATCH_BYTES


def test_version_says_which_statistics_path_runs(monkeypatch, tmp_path, capsys):
    import importlib.machinery
    import importlib.util
    import subprocess
    import sys

    from quanttool import stats

    env = {"PATH": "/usr/bin:/bin", "QUANTTOOL_NO_KERNEL": "1"}
    result = subprocess.run([sys.executable, "-m", "quanttool", "--version"], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0 and "statistics: numpy fallback (QUANTTOOL_NO_KERNEL is set)" in result.stdout
    if stats._KERNEL is not None:
        code, out, _ = run_cli(capsys, "--version")
        assert code == 0 and "statistics: C kernel (" in out
    broken = tmp_path / "_statskernel.so"
    broken.write_bytes(b"not a shared library")
    monkeypatch.delenv("QUANTTOOL_NO_KERNEL", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: importlib.machinery.ModuleSpec(name, None, origin=str(broken)))
    kernel, status = stats._load_kernel()
    assert kernel is None and status.startswith(f"numpy fallback (the C kernel {broken} failed to load: ")


# ---- item 11: every tensor name round-trips through the .scale table --------------------------------------
ODD_NAMES = [" lead", "trail ", "a\x0cb", "c\x85d", "e\u2028f", "g\u2029h", "#hash", '"quoted"', "tab\tin",
             "new\nline", "cr\rret", "nul\x00byte", "nbsp\xa0x", "back\\slash", "ünï cødé", "sp ace", "x 1.0 0"]


def test_any_name_round_trips_through_the_table_file(tmp_path):
    from quanttool.qparams import QParam
    from quanttool.table import Table, read_table, write_table

    params = {name: QParam(0.001 * (k + 1), k - 8) for k, name in enumerate(ODD_NAMES)}
    meta = {"model": "we\u2028ird\nname.onnx", "images": "3", "preprocess": ' "quoted" '}
    path = tmp_path / "t.scale"
    write_table(path, Table(params, meta))
    lines = path.read_bytes().decode("utf-8").split("\n")
    assert "sp ace 0.0160000008 7" in lines and "x 1.0 0 0.0170000009 8" in lines  # plain names stay plain
    assert '" lead" 0.00100000005 -8' in lines and '"e\\u2028f" 0.00499999989 -4' in lines
    table = read_table(path)
    assert list(table.params) == ODD_NAMES and table.meta == meta
    for name, qp in params.items():
        got = table.params[name]
        assert (np.float32(got.scale), got.zero_point) == (np.float32(qp.scale), qp.zero_point)


def test_calibrate_then_convert_with_odd_tensor_names(tmp_path, capsys):
    """Each odd name is a real activation: calibrate writes it, convert reads it back and quantizes."""
    from onnx import TensorProto

    names = [" lead", "trail ", "a\x0cb", "c\x85d", "e\u2028f", "#hash"]
    nodes, prev = [], "x"
    for k, name in enumerate(names):
        nodes.append(helper.make_node("Conv", [prev, f"w{k}"], [name], name=f"conv{k}"))
        prev = name
    nodes.append(helper.make_node("Relu", [prev], ["y"], name="relu"))
    inits = [init(f"w{k}", RNG.standard_normal((2, 2, 1, 1)).astype(np.float32)) for k in range(len(names))]
    model = make_model(nodes, [tensor_info("x", [1, 2, 4, 4])], [tensor_info("y", [1, 2, 4, 4], TensorProto.FLOAT)],
                       inits)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    images = tmp_path / "npy"
    images.mkdir()
    for k in range(3):
        np.save(images / f"{k}.npy", RNG.standard_normal((1, 2, 4, 4)).astype(np.float32))
    assert run_cli(capsys, "calibrate", "-m", path, "-i", images, "--target", "onnxruntime",
                   "-o", tmp_path / "t.scale")[0] == 0
    code, out, err = run_cli(capsys, "convert", "-m", path, "-f", tmp_path / "t.scale", "-o", tmp_path / "q.onnx")
    assert code == 0, err
    assert "6 ops quantized (Conv 6)" in out  # the Relu is absorbed into the last Conv (zero point -128)


def test_a_foreign_name_is_reported_once_with_file_and_line(conv_workspace, capsys):
    """The names are checked in one place (the converter) and the message still cites the table's line."""
    tmp, model, images = conv_workspace
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")[0] == 0
    lines = (tmp / "t.scale").read_text().splitlines()
    bad = tmp / "bad.scale"
    bad.write_text("\n".join(lines[:-1] + ['"foreign\\u2028name" 0.5 0', lines[-1]]) + "\n")
    code, _, err = run_cli(capsys, "convert", "-m", model, "-f", bad, "-o", tmp / "q.onnx")
    assert code == 1
    assert f"{bad}:{len(lines)}: 'foreign\\u2028name' is not a tensor of this model" in error_line(err)


# ---- item 10: a model that already carries quanttool metadata gets one recipe, not two --------------------
def test_converting_a_model_with_a_recipe_replaces_it(conv_workspace, capsys):
    import onnx

    tmp, path, images = conv_workspace
    model = onnx.load(str(path))
    for key, value in (("quanttool.recipe", '{"stale": true}'), ("author", "me")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    carrying = tmp / "carrying.onnx"
    carrying.write_bytes(model.SerializeToString())
    assert run_cli(capsys, "calibrate", "-m", carrying, "-i", images, "-o", tmp / "t.scale")[0] == 0
    assert run_cli(capsys, "convert", "-m", carrying, "-f", tmp / "t.scale", "-o", tmp / "q.onnx")[0] == 0
    onnx.checker.check_model(str(tmp / "q.onnx"))  # duplicate metadata keys fail here
    props = [(e.key, e.value) for e in onnx.load(str(tmp / "q.onnx")).metadata_props]
    assert [key for key, _ in props] == ["author", "quanttool.recipe"]
    recipe = json.loads(props[1][1])
    assert "stale" not in recipe and set(recipe["table"]) == set(read_table_file(tmp / "t.scale"))


# ---- item 20: same images, same bytes -------------------------------------------------------------------------
def test_table_bytes_do_not_depend_on_file_times_or_folder(conv_workspace, capsys):
    import os
    import shutil

    tmp, model, images = conv_workspace
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "a.scale")[0] == 0
    copy = shutil.copytree(images, tmp / "copied", copy_function=shutil.copyfile)  # new modification times
    for k, file in enumerate(sorted(copy.iterdir())):
        os.utime(file, ns=(10**18 + k, 10**18 + k))
    assert run_cli(capsys, "calibrate", "-m", model, "-i", copy, "-o", tmp / "b.scale")[0] == 0
    assert (tmp / "a.scale").read_bytes() == (tmp / "b.scale").read_bytes()
    # and a changed image is another image set (the digest follows the contents)
    (copy / "0.png").write_bytes(_recolored(copy / "0.png"))
    assert run_cli(capsys, "calibrate", "-m", model, "-i", copy, "-o", tmp / "c.scale")[0] == 0
    header = [line for line in (tmp / "c.scale").read_text().splitlines() if line.startswith("# image_set")]
    assert header and header[0] not in (tmp / "a.scale").read_text()


def _recolored(path) -> bytes:
    import io

    from PIL import Image

    image = np.array(Image.open(path))
    image[0, 0] ^= 1
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_convert_from_images_equals_calibrate_then_convert(conv_workspace, capsys, fmt):
    tmp, model, images = conv_workspace
    common = ["-m", model, "-i", images, "--norm", "0.0123", "-a", "percentile"]
    assert run_cli(capsys, "calibrate", *common, "-o", tmp / "t.scale")[0] == 0
    assert run_cli(capsys, "convert", "-m", model, "-f", tmp / "t.scale", "-o", tmp / "f.onnx", "--format", fmt,
                   "--params", tmp / "f.json")[0] == 0
    # -i alone also runs AdaRound by default, which a table without images cannot: compare like with like
    assert run_cli(capsys, "convert", *common, "-o", tmp / "i.onnx", "--format", fmt, "--params", tmp / "i.json",
                   "--no-adaround")[0] == 0
    assert (tmp / "f.onnx").read_bytes() == (tmp / "i.onnx").read_bytes()
    assert (tmp / "f.json").read_bytes() == (tmp / "i.json").read_bytes()


def test_defaults_are_percentile_and_adaround_when_there_are_images(conv_workspace, capsys):
    """README "Defaults": -a percentile (minmax under --compat tengine), and AdaRound when convert has images;
    from a table alone the weights are rounded to nearest, and convert says so."""
    tmp, model, images = conv_workspace
    common = ["-m", model, "-i", images]
    for name, extra in (("d", []), ("p", ["-a", "percentile"]), ("td", ["--compat", "tengine"]),
                        ("tm", ["--compat", "tengine", "-a", "minmax"])):
        assert run_cli(capsys, "calibrate", *common, "-o", tmp / f"{name}.scale", *extra)[0] == 0
    assert (tmp / "d.scale").read_bytes() == (tmp / "p.scale").read_bytes()
    assert (tmp / "td.scale").read_bytes() == (tmp / "tm.scale").read_bytes()
    assert (tmp / "d.scale").read_bytes() != (tmp / "tm.scale").read_bytes()
    assert run_cli(capsys, "convert", *common, "-o", tmp / "d.onnx")[0] == 0
    assert run_cli(capsys, "convert", *common, "-o", tmp / "a.onnx", "-a", "percentile", "--adaround")[0] == 0
    assert run_cli(capsys, "convert", *common, "-o", tmp / "n.onnx", "--no-adaround")[0] == 0
    assert (tmp / "d.onnx").read_bytes() == (tmp / "a.onnx").read_bytes() != (tmp / "n.onnx").read_bytes()
    code, out, _ = run_cli(capsys, "convert", "-m", model, "-f", tmp / "d.scale", "-o", tmp / "f.onnx")
    assert code == 0 and "weights rounded to nearest: AdaRound (the default) needs the calibration images" in out
    assert run_cli(capsys, "convert", "-m", model, "-f", tmp / "d.scale", "-o", tmp / "g.onnx", "--no-adaround")[0] == 0
    assert (tmp / "f.onnx").read_bytes() == (tmp / "g.onnx").read_bytes()


def test_adaround_from_a_table_reads_the_images_as_the_table_recorded(conv_workspace, capsys):
    """convert -f TABLE -i DIR (AdaRound on those images): without preprocessing options the table's recorded
    preprocessing is used (the same model as giving it), a different one given is used with a warning."""
    tmp, model, images = conv_workspace
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "--norm", "0.0123", "-o", tmp / "t.scale")[0] == 0
    base = ["convert", "-m", model, "-f", tmp / "t.scale", "-i", images]
    code, _, err = run_cli(capsys, *base, "-o", tmp / "r.onnx")
    assert code == 0 and "preprocessing from" in err and "norm=0.0123" in err
    assert run_cli(capsys, *base, "-o", tmp / "g.onnx", "--norm", "0.0123")[0] == 0
    code, _, err = run_cli(capsys, *base, "-o", tmp / "w.onnx", "--norm", "1")
    assert code == 0 and "differs from the one recorded" in err
    assert (tmp / "r.onnx").read_bytes() == (tmp / "g.onnx").read_bytes() != (tmp / "w.onnx").read_bytes()


# ---- item 19: options that would be silently ignored or overlap ---------------------------------------------
@pytest.mark.parametrize("options, named", [
    (["-a", "kl"], "--algorithm"),
    (["--color", "bgr"], "--color"),
    (["--stats", "s.npz"], "--stats"),
    (["--norm", "0.5", "--percentile", "99"], "--norm, --percentile"),
])
def test_convert_with_a_table_refuses_calibration_options(conv_workspace, capsys, options, named):
    tmp, model, images = conv_workspace
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")[0] == 0
    code, _, err = run_cli(capsys, "convert", "-m", model, "-f", tmp / "t.scale", "-o", tmp / "q.onnx", *options)
    line = error_line(err)
    assert code == 2 and named in line and "-f TABLE.scale" in line
    assert not (tmp / "q.onnx").exists() and not (tmp / "s.npz").exists()


def test_params_cannot_overwrite_the_stats_cache(conv_workspace, capsys):
    tmp, model, images = conv_workspace
    stats = tmp / "s.npz"
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale", "--stats", stats)[0] == 0
    before = stats.read_bytes()
    code, _, err = run_cli(capsys, "convert", "-m", model, "-i", images, "-o", tmp / "q.onnx", "--stats", stats,
                           "--params", stats)
    assert code == 2 and "--params" in error_line(err) and stats.read_bytes() == before  # options clash: usage
    assert not (tmp / "q.onnx").exists()


# ---- item 6: NaN/Inf weights and float16 models --------------------------------------------------------------
def _save(model, path):
    path.write_bytes(model.SerializeToString())
    return path


def _npy_images(folder, shape, count=3):
    folder.mkdir()
    for k in range(count):
        np.save(folder / f"{k}.npy", RNG.standard_normal(shape).astype(np.float32))
    return folder


@pytest.mark.parametrize("where, bad", [("w", np.nan), ("w", np.inf), ("b", -np.inf)])
def test_nonfinite_weights_are_named_by_every_command(tmp_path, capsys, where, bad):
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    (w if where == "w" else b).reshape(-1)[1] = bad
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
                        helper.make_node("Relu", ["c"], ["y"], name="relu")],
                       [tensor_info("x", [1, 3, 8, 8])], [tensor_info("y", [1, 4, 6, 6])], [init("w", w), init("b", b)])
    path = _save(model, tmp_path / "m.onnx")
    images = _npy_images(tmp_path / "npy", (1, 3, 8, 8))
    (tmp_path / "t.scale").write_text("x 0.01 0\nc 0.01 0\ny 0.01 -128\n")
    for args in (["calibrate", "-i", images, "-o", tmp_path / "u.scale"],
                 ["convert", "-f", tmp_path / "t.scale", "-o", tmp_path / "q.onnx"],
                 ["evaluate", "-f", tmp_path / "t.scale", "-i", images]):
        code, _, err = run_cli(capsys, args[0], "-m", path, *args[1:])
        line = error_line(err)
        assert code == 1 and f"initializer '{where}'" in line and "NaN or Inf" in line and "image" not in line
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "u.scale").exists()


def test_an_infinite_mask_constant_stays_float_instead_of_an_infinite_scale():
    from quanttool.qparams import QParam
    from quanttool.rewrite import convert

    mask = np.array([0, -np.inf, 0, 0], np.float32)
    model = make_model([helper.make_node("Add", ["x", "mask"], ["s"], name="masked"),
                        helper.make_node("Softmax", ["s"], ["y"], name="softmax", axis=-1)],
                       [tensor_info("x", [2, 4])], [tensor_info("y", [2, 4])], [init("mask", mask)])
    result = convert(model, {"x": QParam(0.02, 0), "s": QParam(0.02, 0), "y": QParam(1 / 256, -128)})
    assert ("masked", "Add", "constant 'mask' holds NaN or Inf (a mask?), which int8 cannot represent") \
        in result.kept_fp32
    for tensor in result.model.graph.initializer:
        if tensor.name.endswith("_scale"):
            assert np.isfinite(onnx_array(tensor)).all(), tensor.name
    from tests.helpers import run_int8

    x = RNG.standard_normal((2, 4)).astype(np.float32)
    s = fake_quant(fake_quant(x, 0.02, 0) + mask, 0.02, 0)  # the float Add, then s's int8 grid (-inf -> -2.56)
    expected = fake_quant(np.exp(s) / np.exp(s).sum(axis=1, keepdims=True), 1 / 256, -128)
    assert np.abs(run_int8(result.model, {"x": x})[0] - expected).max() <= 1 / 256 + 1e-6


def onnx_array(tensor):
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def test_a_float16_model_is_refused_with_the_reason(tmp_path, capsys):
    from onnx import TensorProto

    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
                       [tensor_info("x", [1, 3, 8, 8], TensorProto.FLOAT16)],
                       [tensor_info("y", [1, 4, 6, 6], TensorProto.FLOAT16)],
                       [init("w", RNG.standard_normal((4, 3, 3, 3)).astype(np.float16))])
    path = _save(model, tmp_path / "m.onnx")
    images = _npy_images(tmp_path / "npy", (1, 3, 8, 8))
    (tmp_path / "t.scale").write_text("x 0.01 0\ny 0.01 0\n")
    for args in (["calibrate", "-i", images, "-o", tmp_path / "u.scale"],
                 ["convert", "-f", tmp_path / "t.scale", "-o", tmp_path / "q.onnx"]):
        code, out, err = run_cli(capsys, args[0], "-m", path, *args[1:])
        assert code == 1 and "computes in float16, not float32" in error_line(err) and not out
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "u.scale").exists()


# ---- item 8: the preparation check on a model whose outputs are tiny next to its intermediate values ----------
def tiny_output_model():
    """y = BN(Conv(x)) - Conv'(x) + 1e-3, where Conv' holds the BN-folded weights computed in float64: outputs
    ~1e-3 computed from values near 100, so folding the BN moves y by float32 rounding far beyond 1e-4 * |y|."""
    rng = np.random.default_rng(3)
    channels = 8
    w = (rng.standard_normal((channels, 3, 3, 3)) * 30).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, channels).astype(np.float32), rng.standard_normal(channels).astype(np.float32)
    mean, var = (rng.standard_normal(channels) * 10).astype(np.float32), rng.uniform(0.5, 2, channels).astype(np.float32)
    factor = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "be", "m", "v"], ["a"], name="bn"),
             helper.make_node("Conv", ["x", "w2", "b2"], ["b"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["a", "b"], ["d"], name="sub"),
             helper.make_node("Add", ["d", "t"], ["y"], name="add")]
    inits = [init("w", w), init("g", gamma), init("be", beta), init("m", mean), init("v", var),
             init("w2", (w * factor[:, None, None, None]).astype(np.float32)),
             init("b2", (beta - mean * factor).astype(np.float32)), init("t", np.full((1, channels, 1, 1), 1e-3, np.float32))]
    return make_model(nodes, [tensor_info("x", [1, 3, 8, 8])], [tensor_info("y", [1, channels, 8, 8])], inits)


def test_preparation_check_passes_a_correct_graph_with_tiny_outputs():
    from quanttool.prepare import input_specs, prepare
    from quanttool.prepare.verify import RTOL, random_feeds

    model = tiny_output_model()
    specs = input_specs(model, None)
    prepared = prepare(model, specs, name="tiny.onnx")  # was: "graph preparation changed output 'y'"
    assert [n.op_type for n in prepared.graph.node].count("BatchNormalization") == 0
    feeds = random_feeds(model, specs)
    expected, got = run(model, feeds)[0], run(prepared, feeds)[0]
    assert np.abs(expected).max() < 2e-3  # tiny outputs ...
    assert np.abs(expected - got).max() > RTOL * np.abs(expected).max()  # ... that the relative check rejected


def test_preparation_check_still_catches_a_wrong_fold_on_tiny_outputs(monkeypatch):
    from quanttool.errors import QuantError
    from quanttool.prepare import fold_bn, input_specs, prepare

    original = fold_bn._bn_affine
    monkeypatch.setattr(fold_bn, "_bn_affine", lambda *args: (original(*args)[0] * 1.001, original(*args)[1]))
    model = tiny_output_model()
    with pytest.raises(QuantError, match="changed output 'y'"):
        prepare(model, input_specs(model, None), name="tiny.onnx")


def test_preparation_is_verified_on_the_first_calibration_image(conv_workspace, monkeypatch, capsys):
    import quanttool.prepare as prep_module

    tmp, model, images = conv_workspace
    seen = []
    real = prep_module.verify_prepared
    monkeypatch.setattr(prep_module, "verify_prepared", lambda *args: seen.append(args[4]) or real(*args))
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale", "-g", "3,8,8")[0] == 0
    from PIL import Image

    first = np.asarray(Image.open(images / "0.png").convert("RGB").resize((8, 8), Image.BILINEAR), np.float32)
    (feeds,) = seen
    assert feeds["x"].shape == (1, 3, 8, 8)
    np.testing.assert_allclose(feeds["x"][0], first.transpose(2, 0, 1), atol=1.0)  # image pixels, not N(0, 1)


# ---- item 9: control flow ----------------------------------------------------------------------------------------
def loop_if_model():
    """Relu -> Loop (2 trips; body: If(cond) then v + W else v * W) -> MatMul(I): W is an outer initializer read
    only inside the If nested in the Loop body. y = relu(x) + 1."""
    from onnx import TensorProto as T

    then_g = helper.make_graph([helper.make_node("Add", ["v_in", "W"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", T.FLOAT, [1, 4])])
    else_g = helper.make_graph([helper.make_node("Mul", ["v_in", "W"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", T.FLOAT, [1, 4])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("If", ["cond_in"], ["v_out"], then_branch=then_g, else_branch=else_g)], "body",
        [helper.make_tensor_value_info("i", T.INT64, []), helper.make_tensor_value_info("cond_in", T.BOOL, []),
         helper.make_tensor_value_info("v_in", T.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", T.BOOL, []), helper.make_tensor_value_info("v_out", T.FLOAT, [1, 4])])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Loop", ["M", "c", "r"], ["loop_out"], name="loop", body=body),
             helper.make_node("MatMul", ["loop_out", "W2"], ["y"], name="mm")]
    return make_model(nodes, [tensor_info("x", [1, 4])], [tensor_info("y", [1, 4])],
                      [init("M", np.array(2, np.int64)), init("c", np.array(True)),
                       init("W", np.full((1, 4), 0.5, np.float32)), init("W2", np.eye(4, dtype=np.float32))])


def if_reads_outer_activation_model():
    """c = Conv1x1(x, identity); y = If(flag) then Relu(c) else Neg(c), the branches reading c from outside."""
    from onnx import TensorProto as T

    then_g = helper.make_graph([helper.make_node("Relu", ["c"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", T.FLOAT, [1, 3, 2, 2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["c"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", T.FLOAT, [1, 3, 2, 2])])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)]
    return make_model(nodes, [tensor_info("x", [1, 3, 2, 2]), tensor_info("flag", [], T.BOOL)],
                      [tensor_info("y", [1, 3, 2, 2])], [init("w", np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1))])


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_initializer_read_only_in_a_nested_subgraph(fmt):
    import onnx

    from quanttool.prepare import input_specs, prepare
    from quanttool.qparams import QParam
    from quanttool.rewrite import convert
    from tests.helpers import run_int8

    model = loop_if_model()
    table = {"x": QParam(0.02, 0), "r": QParam(0.01, -128), "loop_out": QParam(0.02, 0), "y": QParam(0.02, 0)}
    result = convert(prepare(model, input_specs(model, None)), table, fmt=fmt)  # was: internal error (checker)
    onnx.checker.check_model(result.model)
    assert "W" in {t.name for t in result.model.graph.initializer}
    x = np.array([[-1.0, 0.3, 0.77, 1.5]], np.float32)
    expected = np.maximum(fake_quant(x, 0.02, 0), 0) + 1.0
    assert np.abs(run_int8(result.model, {"x": x})[0] - expected).max() <= 0.02 * 1.5


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_if_branch_reading_an_outer_activation(fmt):
    import onnx

    from quanttool.prepare import input_specs, prepare
    from quanttool.qparams import QParam
    from quanttool.rewrite import convert
    from tests.helpers import run_int8

    model = if_reads_outer_activation_model()
    table = {"x": QParam(0.02, 0), "c": QParam(0.02, 0)}
    result = convert(prepare(model, input_specs(model, None)), table, fmt=fmt)
    onnx.checker.check_model(result.model)
    assert [op.node for op in result.quantized] == ["conv"]
    x = RNG.uniform(-2, 2, (1, 3, 2, 2)).astype(np.float32)
    c = fake_quant(x, 0.02, 0)  # identity weights: the int8 conv reproduces its input grid exactly
    for flag, expected in ((True, np.maximum(c, 0)), (False, -c)):
        got = run_int8(result.model, {"x": x, "flag": np.array(flag)})[0]
        np.testing.assert_allclose(got, expected, atol=1e-6)


# ---- item 11b: qoperator with If + LSTM, a useful checker message, and a warning when nothing is quantized ------
def lstm_if_model():
    """Conv -> Squeeze -> Transpose -> LSTM; an If whose branches read the quantized Conv output `cx` and the
    LSTM state; MatMul head. Unnamed nodes, as exporters write them."""
    from onnx import TensorProto as T

    hidden, size, steps = 4, 3, 5
    rng = np.random.default_rng(5)
    then_g = helper.make_graph([helper.make_node("ReduceMean", ["cx"], ["m"], axes=[1, 2, 3], keepdims=0),
                                helper.make_node("Add", ["h", "m"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", T.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["h"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", T.FLOAT, None)])
    nodes = [helper.make_node("Conv", ["x", "cw"], ["cx"]),
             helper.make_node("Squeeze", ["cx", "ax"], ["seq"]),
             helper.make_node("Transpose", ["seq"], ["seqT"], perm=[2, 0, 1]),
             helper.make_node("LSTM", ["seqT", "W", "R", "B"], ["Y", "h"], hidden_size=hidden),
             helper.make_node("If", ["flag"], ["z"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Reshape", ["z", "shp"], ["zr"]),
             helper.make_node("MatMul", ["zr", "fc"], ["y"])]
    inits = [init("cw", rng.normal(size=(size, size, 1, 1)).astype(np.float32)), init("ax", np.array([2], np.int64)),
             init("W", rng.normal(size=(1, 4 * hidden, size)).astype(np.float32) * 0.5),
             init("R", rng.normal(size=(1, 4 * hidden, hidden)).astype(np.float32) * 0.5),
             init("B", rng.normal(size=(1, 8 * hidden)).astype(np.float32) * 0.1),
             init("shp", np.array([1, hidden], np.int64)), init("fc", rng.normal(size=(hidden, 2)).astype(np.float32))]
    return make_model(nodes, [tensor_info("x", [1, size, 1, steps]), tensor_info("flag", [], T.BOOL)],
                      [tensor_info("y", [1, 2])], inits)


def test_qoperator_with_if_and_lstm_passes_the_checker_and_runs(tmp_path, capsys):
    import onnx

    model = lstm_if_model()
    path = _save(model, tmp_path / "m.onnx")
    images = tmp_path / "data"
    for name, shape, dtype in (("x", (1, 3, 1, 5), np.float32), ("flag", (), np.bool_)):
        (images / name).mkdir(parents=True)
        for k in range(4):
            value = RNG.standard_normal(shape).astype(dtype) if dtype == np.float32 else np.array(k % 2 == 0)
            np.save(images / name / f"{k}.npy", value)
    code, _, err = run_cli(capsys, "convert", "-m", path, "-i", f"x={images / 'x'}", "-i", f"flag={images / 'flag'}",
                           "-o", tmp_path / "q.onnx", "--format", "qoperator")
    assert code == 0, err
    int8 = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(int8)
    assert {"QLinearConv", "If", "LSTM"} <= {node.op_type for node in int8.graph.node}
    from tests.helpers import run_int8

    for flag in (True, False):
        feeds = {"x": RNG.standard_normal((1, 3, 1, 5)).astype(np.float32), "flag": np.array(flag)}
        ref, got = run(model, feeds)[0], run_int8(int8, feeds)[0]
        assert sqnr(ref, got) > 20


def test_a_convert_that_quantizes_nothing_says_why(tmp_path, capsys):
    from onnx import TensorProto as T

    inner = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["t"])],
                              "then", [], [helper.make_tensor_value_info("t", T.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", T.FLOAT, None)])
    model = make_model([helper.make_node("If", ["flag"], ["y"], then_branch=inner, else_branch=other)],
                       [tensor_info("x", [1, 2, 3, 3]), tensor_info("flag", [], T.BOOL)], [tensor_info("y", [1, 2, 3, 3])],
                       [init("w", RNG.standard_normal((2, 2, 1, 1)).astype(np.float32))])
    path = _save(model, tmp_path / "m.onnx")
    (tmp_path / "t.scale").write_text("x 0.02 0\ny 0.02 0\n")
    code, out, err = run_cli(capsys, "convert", "-m", path, "-f", tmp_path / "t.scale", "-o", tmp_path / "q.onnx")
    assert code == 0 and "0 ops quantized" in out
    warning = [line for line in err.splitlines() if "no op of" in line]
    assert warning and "3 of its nodes are inside If/Loop/Scan bodies" in warning[0]


# ---- item 18: messages that say what really happened --------------------------------------------------------
def test_a_zero_sized_dim_is_not_called_dynamic(tmp_path, capsys):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor_info("x", [1, 3, 0, 8])],
                       [tensor_info("y", [1, 3, 0, 8])])
    path = _save(model, tmp_path / "m.onnx")
    images = _npy_images(tmp_path / "npy", (1, 3, 4, 8))
    code, _, err = run_cli(capsys, "calibrate", "-m", path, "-i", images, "-o", tmp_path / "t.scale")
    line = error_line(err)
    assert code == 1 and "declares dim 2 as 0" in line and "dynamic" not in line


def test_convert_says_which_size_the_scales_of_a_dynamic_input_saw(tmp_path, capsys):
    from quanttool.prepare.shapes import calibrated_at, input_specs

    w = np.random.default_rng(3).normal(size=(2, 3, 1, 1)).astype(np.float32)
    for dims, shape, expected in (([1, 3, "H", "W"], "3,4,6", {"x": (3, 4, 6)}),
                                  (["N", 3, 4, 6], "3,4,6", {}),  # a dynamic batch alone: nothing to say
                                  ([1, 3, 4, 6], None, {})):
        model = make_model([helper.make_node("Conv", ["x", "w"], ["y"])], [tensor_info("x", dims)],
                           [tensor_info("y", [dims[0], 2, dims[2], dims[3]])], [init("w", w)])
        specs = input_specs(model, {None: (3, 4, 6)} if shape else None)
        assert calibrated_at(model, specs) == expected
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        path = _save(model, folder / "m.onnx")
        images = _npy_images(folder / "npy", (1, 3, 4, 6))
        code, out, _ = run_cli(capsys, "convert", "-m", path, "-i", images, "-o", folder / "q.onnx",
                               *(("-g", shape) if shape else ()))
        note = [line for line in out.splitlines() if line.startswith("note: input")]
        assert code == 0 and len(note) == len(expected)
        if expected:
            assert "'x' keeps its dynamic dims" in note[0] and "fit on 3,4,6 inputs only" in note[0]


def test_out_of_memory_messages(conv_workspace, capsys, monkeypatch):
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    import quanttool.commands as commands

    tmp, model, images = conv_workspace

    def fail(error):
        def raise_it(*args, **kwargs):
            raise error
        return raise_it

    for error in (MemoryError(), RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : "
                                                  "std::bad_alloc while running Conv")):
        monkeypatch.setattr(commands, "collect", fail(error))
        code, _, err = run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")
        line = error_line(err)
        assert code == 1 and "out of memory" in line and "internal error" not in err
        assert "if the model's input size is dynamic, a smaller --shape helps" in line  # not an order for static


def test_stats_pointed_at_the_model_or_a_pickle(conv_workspace, capsys):
    tmp, model, images = conv_workspace
    code, _, err = run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale", "--stats", model)
    assert code == 2 and "--stats" in error_line(err) and "pickle" not in err  # an output that is an input
    pickled = tmp / "p.npz"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp / "p.npz.npy").rename(pickled)
    code, _, err = run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale", "--stats", pickled)
    line = error_line(err)
    assert code == 1 and "not a quanttool statistics file (a pickle, which is never loaded)" in line
    assert "allow_pickle" not in line


def test_a_damaged_recipe_is_named_not_a_format_option(conv_workspace, capsys):
    import onnx

    tmp, model, images = conv_workspace
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")[0] == 0
    assert run_cli(capsys, "convert", "-m", model, "-f", tmp / "t.scale", "-o", tmp / "q.onnx")[0] == 0
    int8 = onnx.load(str(tmp / "q.onnx"))
    recipe = json.loads(int8.metadata_props[0].value)
    recipe["format"] = "qlinear"
    int8.metadata_props[0].value = json.dumps(recipe)
    (tmp / "bad.onnx").write_bytes(int8.SerializeToString())
    code, _, err = run_cli(capsys, "evaluate", "-m", model, "-q", tmp / "bad.onnx", "-i", images)
    line = error_line(err)
    assert code == 1 and "quanttool.recipe metadata is damaged (format 'qlinear')" in line and "--format" not in line
    # a target this version does not know (a damaged or newer file) was an internal error (KeyError)
    recipe.update(format="qdq", target="qnn")
    int8.metadata_props[0].value = json.dumps(recipe)
    (tmp / "bad.onnx").write_bytes(int8.SerializeToString())
    code, _, err = run_cli(capsys, "evaluate", "-m", model, "-q", tmp / "bad.onnx", "-i", images)
    line = error_line(err)
    assert code == 1 and "quanttool.recipe metadata is damaged (target 'qnn')" in line


def test_python_warnings_are_one_quanttool_line(conv_workspace, capsys, monkeypatch):
    import warnings

    import quanttool.commands as commands

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() replaces it; restore after
    tmp, model, images = conv_workspace
    real = commands.calibrate_table

    def noisy(*args, **kwargs):
        np.log(np.array([-1.0]))  # numpy: RuntimeWarning: invalid value encountered in log
        return real(*args, **kwargs)

    monkeypatch.setattr(commands, "calibrate_table", noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")
    assert code == 0
    lines = [line for line in err.replace("\r", "\n").splitlines() if "log" in line]
    assert lines == ["quanttool: warning: invalid value encountered in log (RuntimeWarning)"]


def test_convert_with_a_table_says_shape_is_unused(conv_workspace, capsys):
    import onnx

    tmp, model, images = conv_workspace
    assert run_cli(capsys, "calibrate", "-m", model, "-i", images, "-o", tmp / "t.scale")[0] == 0
    code, _, err = run_cli(capsys, "convert", "-m", model, "-f", tmp / "t.scale", "-o", tmp / "a.onnx", "-g", "3,8,8")
    assert code == 0 and "warning: --shape is not used with -f TABLE.scale" in err
    assert run_cli(capsys, "convert", "-m", model, "-f", tmp / "t.scale", "-o", tmp / "b.onnx")[0] == 0
    assert onnx.load(str(tmp / "a.onnx")).graph == onnx.load(str(tmp / "b.onnx")).graph  # indeed unused
