"""evaluate: every number checked against a formula computed here from separate onnxruntime runs or numpy."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from quanttool.errors import QuantError
from quanttool.evaluate import EvalReport, evaluate, read_labels, render_text, to_json, write_html
from quanttool.evaluate.report_html import PLOT_HINT
from quanttool.qparams import QParam, qrange
from quanttool.rewrite import convert
from quanttool.runtime import with_outputs
from tests.helpers import init, make_model, run, run_int8, tensor_info

RNG = np.random.default_rng(7)


# ---- formulas, written out independently of quanttool.evaluate.metrics ------------------------------------
def sqnr(ref: np.ndarray, q: np.ndarray) -> float:
    ref, q = ref.astype(np.float64).ravel(), q.astype(np.float64).ravel()
    noise = np.sum((ref - q) ** 2)
    return math.inf if noise == 0 else 10 * math.log10(np.sum(ref ** 2) / noise)


def cos(ref: np.ndarray, q: np.ndarray) -> float:
    ref, q = ref.astype(np.float64).ravel(), q.astype(np.float64).ravel()
    return float(ref @ q / math.sqrt((ref @ ref) * (q @ q)))


def fake_quant(x: np.ndarray, qp: QParam) -> np.ndarray:
    qmin, qmax = qrange(8)
    q = np.clip(np.round(x / np.float32(qp.scale)) + qp.zero_point, qmin, qmax)
    return ((q - qp.zero_point) * np.float32(qp.scale)).astype(np.float32)


def minmax_table(model: onnx.ModelProto, names: list[str], samples) -> dict[str, QParam]:
    """Symmetric min/max over the samples, from fp32 onnxruntime runs."""
    exposed = with_outputs(model, [n for n in names if n not in {i.name for i in model.graph.input}])
    absmax = dict.fromkeys(names, 0.0)
    for _, feeds in samples:
        outs = dict(zip([o.name for o in exposed.graph.output], run(exposed, feeds)))
        outs.update(feeds)
        for n in names:
            absmax[n] = max(absmax[n], float(np.abs(outs[n]).max()))
    return {n: QParam(v / 127, 0) for n, v in absmax.items()}


def make_samples(count: int, shape, name="x", scale=1.0):
    return [(f"img{k:02d}.png", {name: (RNG.standard_normal(shape) * scale).astype(np.float32)})
            for k in range(count)]


# ---- a small classifier: Conv -> Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm -------------------
def classifier():
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    inits = [init("w1", RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3),
             init("b1", RNG.standard_normal(8).astype(np.float32) * 0.1),
             init("w2", RNG.standard_normal((6, 8, 3, 3)).astype(np.float32) * 0.2),
             init("b2", RNG.standard_normal(6).astype(np.float32) * 0.1),
             init("wf", RNG.standard_normal((5, 6)).astype(np.float32)),
             init("bf", RNG.standard_normal(5).astype(np.float32) * 0.1)]
    return make_model(nodes, [tensor_info("x", [1, 3, 8, 8])], [tensor_info("logits", [1, 5])], inits)


@pytest.fixture(scope="module")
def setup():
    model = classifier()
    samples = make_samples(8, (1, 3, 8, 8))
    table = minmax_table(model, ["x", "c1", "r1", "c2", "gap", "flat", "logits"], samples)
    result = convert(model, table)
    report = evaluate(model, result.model, table, result.quantized, iter(samples), len(samples))
    return model, samples, table, result, report


def test_output_metrics_equal_separate_runs(setup):
    model, samples, _, result, report = setup
    ref = np.concatenate([run(model, feeds)[0] for _, feeds in samples])
    q = np.concatenate([run_int8(result.model, feeds)[0] for _, feeds in samples])
    (out,) = report.outputs
    assert out.name == "logits"
    assert out.sqnr_db == pytest.approx(sqnr(ref, q), rel=1e-6)
    assert out.cosine == pytest.approx(cos(ref, q), abs=1e-9)
    assert out.max_abs_error == pytest.approx(float(np.abs(ref - q).max()), rel=1e-6)
    assert out.top1_agreement == pytest.approx(np.mean(ref.argmax(1) == q.argmax(1)))
    assert report.images == len(samples)


def test_accumulated_layer_and_channels_equal_int8_tensors(setup):
    model, samples, table, result, report = setup
    int8 = with_outputs(result.model, ["c2_quantized"])
    fp32 = with_outputs(model, ["c2"])
    refs, deqs = [], []
    scale, zp = table["c2"].scale, table["c2"].zero_point
    for _, feeds in samples:
        refs.append(run(fp32, feeds)[1])
        deqs.append((run_int8(int8, feeds)[1].astype(np.float32) - zp) * np.float32(scale))
    ref, deq = np.concatenate(refs), np.concatenate(deqs)
    layer = next(lay for lay in report.layers if lay.name == "conv2")
    assert layer.output == "c2"
    assert layer.sqnr_db == pytest.approx(sqnr(ref, deq), rel=1e-6)
    assert layer.cosine == pytest.approx(cos(ref, deq), abs=1e-9)
    per_channel = [cos(ref[:, c], deq[:, c]) for c in range(ref.shape[1])]
    assert layer.channel_cosines == pytest.approx(per_channel, abs=1e-9)
    worst = sorted(range(len(per_channel)), key=per_channel.__getitem__)[:5]
    assert [c for c, _ in layer.worst_channels] == worst


def test_isolated_conv_relu_equals_numpy_fake_quant():
    """1x1 Conv + absorbed Relu, isolated: fq_out(relu(conv(fq_in(x), deq W) + deq b)) written out here."""
    w = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32) * 0.1
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
                        helper.make_node("Relu", ["c"], ["y"], name="relu")],
                       [tensor_info("x", [1, 3, 5, 5])], [tensor_info("y", [1, 4, 5, 5])], [init("w", w), init("b", b)])
    samples = make_samples(4, (1, 3, 5, 5))
    table = {"x": QParam(0.03, 0), "c": QParam(0.05, 0), "y": QParam(0.02, -128)}  # zp -128: Relu is absorbed
    result = convert(model, table)
    assert [(op.node, op.output) for op in result.quantized] == [("conv", "y")]
    report = evaluate(model, result.model, table, result.quantized, iter(samples), len(samples))

    s_w = np.abs(w).reshape(4, -1).max(axis=1) / 127  # per output channel, symmetric +-127
    w_deq = np.clip(np.round(w / s_w[:, None, None, None]), -127, 127) * s_w[:, None, None, None]
    s_b = np.float32(0.03) * s_w.astype(np.float32)
    b_deq = np.round(b / s_b) * s_b
    refs, isos = [], []
    for _, feeds in samples:
        x = fake_quant(feeds["x"], table["x"])
        conv = np.einsum("nchw,oc->nohw", x, w_deq[:, :, 0, 0]) + b_deq[None, :, None, None]
        isos.append(fake_quant(np.maximum(conv, 0).astype(np.float32), table["y"]))
        refs.append(run(model, feeds)[0])
    (layer,) = report.layers
    assert layer.isolated_sqnr_db == pytest.approx(sqnr(np.concatenate(refs), np.concatenate(isos)), rel=1e-4)
    assert layer.isolated_cosine == pytest.approx(cos(np.concatenate(refs), np.concatenate(isos)), abs=1e-7)


def lossless_then_lossy():
    """conva is exact on integer inputs (weights +-127 -> weight scale 1, output scale 127); convb is not."""
    wa = np.array([127, -127], dtype=np.float32).reshape(2, 1, 1, 1)
    wb = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="conva"),
             helper.make_node("Conv", ["a", "wb"], ["b"], name="convb", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [tensor_info("x", [1, 1, 6, 6])], [tensor_info("b", [1, 3, 6, 6])],
                       [init("wa", wa), init("wb", wb)])
    samples = [(f"s{k}.png", {"x": RNG.integers(-3, 4, (1, 1, 6, 6)).astype(np.float32)}) for k in range(5)]
    return model, samples


def test_lossless_layer_is_infinite_and_lossy_layer_ranks_first():
    model, samples = lossless_then_lossy()
    table = minmax_table(model, ["b"], samples)
    table.update({"x": QParam(1.0, 0), "a": QParam(127.0, 0), "b": QParam(table["b"].scale * 50, 0)})
    result = convert(model, table)
    report = evaluate(model, result.model, table, result.quantized, iter(samples), len(samples))
    assert [lay.name for lay in report.layers] == ["convb", "conva"]
    lossy, exact = report.layers
    assert exact.isolated_sqnr_db == math.inf and exact.sqnr_db == math.inf and exact.mse == 0
    assert exact.cosine == 1.0
    assert lossy.isolated_sqnr_db < 10
    data = to_json(report)
    assert data["layers"][1]["sqnr_db"] is None and data["layers"][1]["isolated_sqnr_db"] is None
    json.dumps(data, allow_nan=False)  # strict JSON: no Infinity/NaN tokens


def test_clipped_fraction_counts_values_outside_the_grid():
    model, samples = lossless_then_lossy()
    table = minmax_table(model, ["x", "a", "b"], samples)
    tight = QParam(table["b"].scale / 4, 5)  # a tiny range, asymmetric, so both ends clip
    table["b"] = tight
    result = convert(model, table)
    report = evaluate(model, result.model, table, result.quantized, iter(samples), len(samples))
    ref = np.concatenate([run(model, feeds)[0] for _, feeds in samples])
    lo, hi = (-128 - tight.zero_point) * tight.scale, (127 - tight.zero_point) * tight.scale
    expected = np.count_nonzero((ref < lo) | (ref > hi)) / ref.size
    layer = next(lay for lay in report.layers if lay.output == "b")
    assert 0 < expected < 1
    assert layer.clipped_fraction == pytest.approx(expected, abs=1e-12)
    assert report.layers[0].output == "b"


def test_labels_accuracy_equals_counts(setup, tmp_path):
    model, samples, table, result, _ = setup
    labels = {key: int(k % 5) for k, (key, _) in enumerate(samples[:-1])}  # the last image is unlabeled
    report = evaluate(model, result.model, table, result.quantized, iter(samples), len(samples), labels=labels)
    fp32_hits = sum(int(run(model, f)[0].argmax() == labels[k]) for k, f in samples[:-1])
    int8_hits = sum(int(run_int8(result.model, f)[0].argmax() == labels[k]) for k, f in samples[:-1])
    acc = report.accuracy
    assert (acc.output, acc.labeled, acc.unlabeled) == ("logits", len(samples) - 1, 1)
    assert acc.fp32 == pytest.approx(fp32_hits / (len(samples) - 1))
    assert acc.int8 == pytest.approx(int8_hits / (len(samples) - 1))
    assert to_json(report)["accuracy"] == {"output": "logits", "labeled": 7, "unlabeled": 1,
                                           "fp32": acc.fp32, "int8": acc.int8}
    text = render_text(report)
    assert f"fp32 {fp32_hits / 7 * 100:.2f}%" in text and "1 of 8 images have no label" in text

    with pytest.raises(QuantError, match="none of the 8 images is listed"):
        evaluate(model, result.model, table, result.quantized, iter(samples), len(samples), labels={"other.png": 1})


def test_read_labels(tmp_path):
    good = tmp_path / "labels.txt"
    good.write_text("# comment\n\nclass a/img 1.png 3\n./b.png 0\nsub\\c.png 7\n")
    assert read_labels(good) == {"class a/img 1.png": 3, "b.png": 0, "sub/c.png": 7}
    for text, message in [("a.png\n", r"labels.txt:1: expected `relative/path.png label`"),
                          ("a.png 1\nb.png cat\n", r"labels.txt:2: label 'cat' is not an integer"),
                          ("a.png 1\n./a.png 2\n", r"labels.txt:2: 'a.png' is listed twice"),
                          ("a.png -1\n", r"labels.txt:1: label -1 is negative"),
                          ("# nothing\n", r"no `relative/path.png label` lines")]:
        bad = tmp_path / "labels.txt"
        bad.write_text(text)
        with pytest.raises(QuantError, match=message):
            read_labels(bad)
    with pytest.raises(QuantError, match="missing.txt: file not found"):
        read_labels(tmp_path / "missing.txt")


NUMBER = (int, float)
# The --json schema as the README documents it, written out here (not derived from to_json): key -> check.
LAYER_SCHEMA = {
    "rank": lambda v: type(v) is int and v >= 1,
    "name": lambda v: isinstance(v, str) and v != "",
    "op_type": lambda v: isinstance(v, str) and v != "",
    "output": lambda v: isinstance(v, str) and v != "",
    "scale": lambda v: isinstance(v, NUMBER) and v > 0,
    "zero_point": lambda v: type(v) is int and -128 <= v <= 127,
    "cosine": lambda v: v is None or isinstance(v, NUMBER) and -1 - 1e-9 <= v <= 1 + 1e-9,
    "sqnr_db": lambda v: v is None or isinstance(v, NUMBER),
    "mse": lambda v: v is None or isinstance(v, NUMBER) and v >= 0,
    "isolated_cosine": lambda v: v is None or isinstance(v, NUMBER) and -1 - 1e-9 <= v <= 1 + 1e-9,
    "isolated_sqnr_db": lambda v: v is None or isinstance(v, NUMBER),
    "clipped_fraction": lambda v: isinstance(v, NUMBER) and 0 <= v <= 1,
    "worst_channels": lambda v: isinstance(v, list) and len(v) <= 5 and all(
        set(c) == {"channel", "cosine"} and type(c["channel"]) is int and isinstance(c["cosine"], NUMBER) for c in v),
    "channel_cosines": lambda v: isinstance(v, list) and all(isinstance(c, NUMBER) for c in v),
}
OUTPUT_SCHEMA = {
    "name": lambda v: isinstance(v, str) and v != "",
    "cosine": lambda v: v is None or isinstance(v, NUMBER) and -1 - 1e-9 <= v <= 1 + 1e-9,
    "sqnr_db": lambda v: v is None or isinstance(v, NUMBER),
    "max_abs_error": lambda v: v is None or isinstance(v, NUMBER) and v >= 0,
    "top1_agreement": lambda v: v is None or isinstance(v, NUMBER) and 0 <= v <= 1,
    "worst_sqnr_db": lambda v: v is None or isinstance(v, NUMBER),
    "parts": lambda v: isinstance(v, list) and all(set(p) == {"axis", "channels", "max_abs", "sqnr_db"} for p in v),
    "largest_image_share": lambda v: v is None or isinstance(v, NUMBER) and 0 <= v <= 1,
}


def test_json_schema(setup):
    _, _, _, result, report = setup
    data = json.loads(json.dumps(to_json(report), allow_nan=False))
    assert set(data) == {"images", "layers", "outputs", "notes"}  # "accuracy" only with --labels
    assert type(data["images"]) is int and data["images"] == 8
    assert isinstance(data["notes"], list) and all(isinstance(n, str) for n in data["notes"])
    assert len(data["layers"]) == len(result.quantized) and data["layers"]
    for row in data["layers"]:
        assert set(row) == set(LAYER_SCHEMA), set(row) ^ set(LAYER_SCHEMA)
        for key, valid in LAYER_SCHEMA.items():
            assert valid(row[key]), (key, row[key])
        # the worst channels are the lowest of the per-channel cosines, lowest first
        lowest = sorted(enumerate(row["channel_cosines"]), key=lambda item: item[1])[:5]
        assert [(c["channel"], c["cosine"]) for c in row["worst_channels"]] == lowest
    assert [row["rank"] for row in data["layers"]] == list(range(1, len(data["layers"]) + 1))
    isolated = [row["isolated_sqnr_db"] for row in data["layers"]]
    assert isolated == sorted(isolated)  # ranked worst first (all measured and finite here)
    assert {row["name"] for row in data["layers"]} == {op.node for op in result.quantized}
    assert len(data["outputs"]) == 1
    for row in data["outputs"]:
        assert set(row) == set(OUTPUT_SCHEMA), set(row) ^ set(OUTPUT_SCHEMA)
        for key, valid in OUTPUT_SCHEMA.items():
            assert valid(row[key]), (key, row[key])
    assert data["outputs"][0]["name"] == "logits" and data["outputs"][0]["top1_agreement"] is not None


def test_ranking_and_text_table(setup):
    _, _, _, result, report = setup
    assert sorted(lay.name for lay in report.layers) == sorted(op.node for op in result.quantized)
    isolated = [lay.isolated_sqnr_db for lay in report.layers]
    assert isolated == sorted(isolated)
    lines = render_text(report, top=2).splitlines()
    assert report.layers[0].name in lines[3] and report.layers[1].name in lines[4]
    assert f"... {len(report.layers) - 2} more layers" in lines[5]


def test_html_with_plots(setup, tmp_path):
    _, _, _, _, report = setup
    path = tmp_path / "report.html"
    write_html(report, path)
    text = path.read_text()
    assert '<img alt="SQNR per layer" src="data:image/png;base64,' in text
    assert text.count("<tr class=") == len(report.layers)
    assert all(f'<td class="l">{lay.name}</td>' in text for lay in report.layers)
    assert PLOT_HINT not in text


def test_html_without_matplotlib(setup, tmp_path, monkeypatch):
    _, _, _, _, report = setup
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib...` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    path = tmp_path / "report.html"
    write_html(report, path)
    text = path.read_text()
    assert "data:image/png" not in text and PLOT_HINT in text
    assert text.count("<tr class=") == len(report.layers)


def test_float32_row_sums_match_float64():
    """sumsq / ChannelSimilarity add float32 row sums in float64. Positive terms summed in float32 lose at most
    k * 2^-24 relative over k terms per accumulator; rows are <= 16384 values spread over >= 8 SIMD lanes, so
    k <= 2048 and the bound is 1.2e-4 (typical error sqrt(k) * 2^-24 ~ 3e-6)."""
    from quanttool.evaluate.metrics import ChannelSimilarity, Similarity

    ref = (RNG.standard_normal((2, 24, 112, 112)) * RNG.uniform(0.1, 10, (1, 24, 1, 1))).astype(np.float32)
    q = (ref + RNG.standard_normal(ref.shape).astype(np.float32) * 0.05).astype(np.float32)
    tail = ref.reshape(-1)[: 4096 * 3 + 77]  # whole blocks plus a tail
    f64 = lambda x: float(np.sum(x.astype(np.float64) ** 2))  # noqa: E731
    sim = Similarity()
    sim.update(ref, q)
    sim2 = Similarity()
    sim2.update(tail, tail * np.float32(0.5))
    assert sim.ref2 == pytest.approx(f64(ref), rel=1.2e-4)
    assert sim.err2 == pytest.approx(f64(ref - q), rel=1.2e-4)
    assert sim2.ref2 == pytest.approx(f64(tail), rel=1.2e-4)
    assert sim.sqnr_db == pytest.approx(sqnr(ref, q), abs=1e-3)
    chan = ChannelSimilarity()
    totals = chan.update(ref, q)
    per_channel = [cos(ref[:, c], q[:, c]) for c in range(ref.shape[1])]
    assert chan.cosines() == pytest.approx(per_channel, abs=1e-7)
    assert totals[2] == pytest.approx(f64(ref - q), rel=1.2e-4)


def test_data_dependent_output_shapes_are_skipped_with_a_note():
    """Compress after a threshold: quantization moves 0.3049 to 0.30, below the 0.302 threshold, so the int8
    output has one element fewer on that image. It is left out (with a note), not a crash; the image whose
    values sit far from the threshold is still compared, and its SQNR is the one computed here."""
    nodes = [helper.make_node("Mul", ["x", "one"], ["m"], name="mul"),
             helper.make_node("Greater", ["m", "t"], ["keep"], name="gt"),
             helper.make_node("Compress", ["m", "keep"], ["y"], name="compress"),
             helper.make_node("MatMul", ["m", "w"], ["v"], name="matmul")]  # an int8 neighbour for the Mul
    model = make_model(nodes, [tensor_info("x", [2])], [tensor_info("y", ["k"]), tensor_info("v", [1])],
                       [init("one", np.ones(1, np.float32)), init("t", np.array(0.302, np.float32)),
                        init("w", np.array([[0.5], [0.25]], np.float32))])
    table = {"x": QParam(0.01, 0), "m": QParam(0.01, 0), "v": QParam(0.01, 0)}
    result = convert(model, table)
    samples = [("near.npy", {"x": np.array([1.27, 0.3049], np.float32)}),
               ("far.npy", {"x": np.array([1.0, 0.8567], np.float32)})]
    report = evaluate(model, result.model, table, result.quantized, iter(samples), len(samples))
    assert any("'y'" in note and "1 of 2 images" in note for note in report.notes)
    far_fp32 = run(model, samples[1][1])[0]
    far_int8 = run_int8(result.model, samples[1][1])[0]
    out = next(o for o in report.outputs if o.name == "y")
    assert math.isfinite(out.sqnr_db) and out.sqnr_db == pytest.approx(sqnr(far_fp32, far_int8), abs=1e-6)


def _db(signal, noise):
    return 10 * np.log10(signal / noise)


def test_mixed_range_output_is_measured_per_part():
    """A YOLO-style output [1, 6, 50]: rows 0-1 box coordinates in pixels, rows 2-5 scores in [0, 1]. A dead
    model (scores all 0, boxes exact) has the better whole-tensor SQNR than a working one (boxes off by ~2 px,
    scores by ~0.01), because the pixels dominate the sums. Per part, the dead model's scores are at 0 dB and
    the worst part ranks the two the right way round."""
    from quanttool.evaluate.run import _Output

    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0, 640, (1, 2, 50)), rng.uniform(0, 1, (1, 4, 50))], axis=1).astype(np.float32)
    working = ref + np.concatenate([rng.normal(0, 2, (1, 2, 50)), rng.normal(0, 0.01, (1, 4, 50))], axis=1)
    working = working.astype(np.float32)
    dead = ref.copy()
    dead[:, 2:] = 0
    reports = {}
    for name, q in (("working", working), ("dead", dead)):
        out = _Output(name)
        out.fold(ref, q)
        reports[name] = out.report()
    r64, w64 = ref.astype(np.float64), working.astype(np.float64)
    box2, score2 = (r64[:, :2] ** 2).sum(), (r64[:, 2:] ** 2).sum()
    w_box, w_score = ((r64 - w64)[:, :2] ** 2).sum(), ((r64 - w64)[:, 2:] ** 2).sum()
    work, dead_r = reports["working"], reports["dead"]
    assert work.sqnr_db == pytest.approx(_db(box2 + score2, w_box + w_score), abs=1e-3)
    assert dead_r.sqnr_db == pytest.approx(_db(box2 + score2, score2), abs=1e-3)
    assert dead_r.sqnr_db > work.sqnr_db  # the whole-tensor SQNR is fooled
    assert [(p.axis, p.channels) for p in work.parts] == [(1, "0-1"), (1, "2-5")]
    assert work.parts[0].sqnr_db == pytest.approx(_db(box2, w_box), abs=1e-3)
    assert work.parts[1].sqnr_db == pytest.approx(_db(score2, w_score), abs=1e-3)
    assert dead_r.parts[1].sqnr_db == pytest.approx(0.0, abs=1e-6)  # scores all lost: noise = signal
    assert work.worst_sqnr_db == pytest.approx(min(_db(box2, w_box), _db(score2, w_score)), abs=1e-3)
    assert work.worst_sqnr_db > dead_r.worst_sqnr_db + 20
    text = render_text(EvalReport([], [work], 1))
    assert "mixed ranges along axis 1" in text and "[2-5]" in text


def test_one_dead_class_does_not_split_an_output():
    """A class that never fires (max probability 1e-6 next to 0.5) is not a range part: the small side must hold
    at least 5% of the channels, so a classifier's output keeps one SQNR."""
    from quanttool.evaluate.run import _Output

    rng = np.random.default_rng(1)
    ref = rng.uniform(0.01, 0.5, (8, 40)).astype(np.float32)
    ref[:, 7] = 1e-6
    out = _Output("probs")
    out.fold(ref, ref + np.float32(1e-3))
    report = out.report()
    assert report.parts == [] and report.worst_sqnr_db == report.sqnr_db


def test_confident_softmax_classes_are_not_a_range_part():
    """A confident classifier: over a few images, the predicted classes reach 0.99 and every other class stays
    below 0.005 (a 200x gap). The confident classes are scattered indices, not a block of a head's layout, so
    the output is not split."""
    from quanttool.evaluate.run import _Output

    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 0.005, (4, 50)).astype(np.float32)
    for row, cls in enumerate((3, 17, 29, 41)):
        ref[row, cls] = 0.99
    out = _Output("probs")
    out.fold(ref, ref + np.float32(1e-4))
    assert out.report().parts == []


def test_layer_before_a_sharing_relu_is_measured_after_the_clamp():
    """Conv -> Relu with symmetric parameters (zp 0: the Relu is not absorbed, the Conv output takes the Relu
    output's parameters). The Conv's large negative values clip at -max(relu), which the Relu then zeroes: the
    layer is measured after the clamp, relu(ref) vs relu(fq(conv)), so that clipping counts neither as error
    nor as clipped (raw, it read a few dB and the check named it the worst layer)."""
    w = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
    b = np.float32([-6.0, 0.0, 0.5, -3.0])  # mostly negative outputs, far below -max(relu)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    model = make_model(nodes, [tensor_info("x", [1, 3, 5, 5])], [tensor_info("y", [1, 2, 5, 5])],
                       [init("w", w), init("b", b), init("w2", RNG.standard_normal((2, 4, 1, 1)).astype(np.float32))])
    samples = make_samples(4, (1, 3, 5, 5))
    table = minmax_table(model, ["x", "r", "y"], samples)
    table["c"] = table["r"]  # pass-through sharing, as calibrate writes it
    result = convert(model, table)
    report = evaluate(model, result.model, table, result.quantized, iter(samples), len(samples))
    conv = next(lay for lay in report.layers if lay.name == "conv")
    exposed = with_outputs(model, ["c"])
    s_w = np.abs(w).reshape(4, -1).max(axis=1) / 127
    w_deq = np.clip(np.round(w / s_w[:, None, None, None]), -127, 127) * s_w[:, None, None, None]
    s_b = np.float32(table["x"].scale) * s_w.astype(np.float32)
    b_deq = np.round(b / s_b) * s_b
    refs, isos, raw = [], [], []
    for _, feeds in samples:
        x = fake_quant(feeds["x"], table["x"])
        c = (np.einsum("nchw,oc->nohw", x, w_deq[:, :, 0, 0]) + b_deq[None, :, None, None]).astype(np.float32)
        isos.append(np.maximum(fake_quant(c, table["c"]), 0))
        ref = run(exposed, feeds)[1]
        raw.append(sqnr(ref, fake_quant(c, table["c"])))
        refs.append(np.maximum(ref, 0))
    assert conv.isolated_sqnr_db == pytest.approx(sqnr(np.concatenate(refs), np.concatenate(isos)), rel=1e-4)
    assert conv.clipped_fraction == 0.0
    assert conv.isolated_sqnr_db > max(raw) + 10  # the raw comparison would have blamed the harmless clip


def test_largest_image_share_is_one_image_error_over_the_sum(setup):
    """Per output, max_i sum (ref_i - q_i)^2 / sum_i sum (ref_i - q_i)^2 over the images, from separate runs."""
    model, samples, table, result, report = setup
    noise = [float(np.square(run(model, f)[0].astype(np.float64) - run_int8(result.model, f)[0]).sum())
             for _, f in samples]
    (out,) = report.outputs
    assert out.largest_image_share == pytest.approx(max(noise) / sum(noise), rel=1e-6)
