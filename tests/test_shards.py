"""Calibration split over shards, worker processes or machines gives the statistics and the table of one pass,
bit for bit; merge-stats refuses parts that do not belong together."""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from quanttool.stats import TensorStats, load_stats, save_stats
from tests.helpers import init, make_model, save_model_and_inputs, tensor_info
from tests.test_errors import one_line_error, run_cli

FIELDS = ("count", "numel", "samples", "zeros", "edge_pos", "edge_neg", "min", "max", "sum", "sumsq", "sumabs",
          "range")


def assert_same_stats(a: dict[str, TensorStats], b: dict[str, TensorStats]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        for key in FIELDS:
            x, y = getattr(a[name], key), getattr(b[name], key)
            assert x == y and math.copysign(1, x) == math.copysign(1, y), (name, key, x, y)  # same bits
        assert np.array_equal(a[name].pos, b[name].pos) and np.array_equal(a[name].neg, b[name].neg), name


def test_shards_merged_in_any_order_equal_one_pass_bit_for_bit(tmp_path):
    rng = np.random.default_rng(3)
    # growing and shrinking ranges, so R doubles in different places for different splits
    arrays = [rng.standard_normal(1000).astype(np.float32) * np.float32(10.0 ** rng.uniform(-3, 3))
              for _ in range(30)]
    whole = TensorStats()
    for x in arrays:
        whole.update(x)
    # plain float64 addition of the per-image sums gives other bits for another split (so the test can tell):
    totals = [float(np.sum(x, dtype=np.float64)) for x in arrays]
    forward = 0.0
    for t in totals:
        forward += t
    split = sum(sum(totals[k::3]) for k in range(3))
    assert forward != split
    for order in (None, [2, 0, 1], [1, 2, 0]):
        parts = []
        for k in range(3):
            part = TensorStats()
            for x in arrays[k::3]:
                part.update(x)
            save_stats(tmp_path / f"p{k}.npz", {"t": part}, {})  # through the file, as merge-stats reads it
            parts.append(load_stats(tmp_path / f"p{k}.npz")[0]["t"])
        merged = TensorStats()
        for k in order or range(3):
            merged.merge(parts[k])
        assert_same_stats({"t": whole}, {"t": merged})


def _model_and_images(tmp_path, n=11):
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c2", "x"], ["y"], name="add")]
    model = make_model(nodes, [tensor_info("x", [1, 3, 6, 6])], [tensor_info("y", [1, 3, 6, 6])],
                       [init("w1", rng.normal(size=(4, 3, 3, 3)).astype(np.float32)),
                        init("w2", rng.normal(size=(3, 4, 1, 1)).astype(np.float32))])
    return save_model_and_inputs(tmp_path, model, [(rng.standard_normal((3, 6, 6)) * (i + 1) ** 2).astype(np.float32)
                                                    for i in range(n)])


def test_shard_merge_calibrate_gives_the_one_machine_table_bytes(tmp_path, capsys):
    path, images = _model_and_images(tmp_path)
    one = ["calibrate", "-m", path, "-i", images, "-a", "aciq"]  # ACIQ reads the sums, not only histograms
    code, _, err = run_cli(capsys, *one, "-j", "1", "--stats", tmp_path / "one.npz", "-o", tmp_path / "one.scale")
    assert code == 0, err
    for k in (1, 2, 3):
        code, out, err = run_cli(capsys, *one, "--shard", f"{k}/3", "--stats", tmp_path / f"part{k}.npz")
        assert code == 0 and f"shard {k}/3" in out, err
    assert not (tmp_path / "m.scale").exists()  # a shard writes statistics only
    parts = [tmp_path / f"part{k}.npz" for k in (3, 1, 2)]
    code, out, err = run_cli(capsys, "merge-stats", *parts, "-o", tmp_path / "all.npz")
    assert code == 0 and "11 images" in out, err
    assert_same_stats(load_stats(tmp_path / "one.npz")[0], load_stats(tmp_path / "all.npz")[0])
    code, _, err = run_cli(capsys, *one, "--stats", tmp_path / "all.npz", "-o", tmp_path / "all.scale")
    assert code == 0 and "reusing" in err
    assert (tmp_path / "all.scale").read_bytes() == (tmp_path / "one.scale").read_bytes()


def test_worker_processes_give_the_same_table_bytes(tmp_path, capsys):
    path, images = _model_and_images(tmp_path, n=20)  # 3 chunks of 8: both processes get work
    tables = []
    for jobs in ("1", "2"):
        out = tmp_path / f"j{jobs}.scale"
        code, _, err = run_cli(capsys, "calibrate", "-m", path, "-i", images, "-a", "kl", "-j", jobs, "-o", out)
        assert code == 0, err
        tables.append(out.read_bytes())
    assert tables[0] == tables[1]


def test_merge_stats_refuses_parts_that_do_not_belong_together(tmp_path, capsys):
    path, images = _model_and_images(tmp_path)
    base = ["calibrate", "-m", path, "-i", images]
    for name, extra in [("a1", ["--shard", "1/2"]), ("a2", ["--shard", "2/2"]), ("b2", ["--shard", "2/2", "--norm",
                                                                                        "0.5"]),
                        ("c2", ["--shard", "2/3"]), ("whole", ["-o", tmp_path / "w.scale"])]:
        code, _, err = run_cli(capsys, *base, *extra, "--stats", tmp_path / f"{name}.npz")
        assert code == 0, err
    for parts, needle in [(["a1", "b2"], "preprocess"), (["a1", "c2"], "layout"), (["a1", "a1"], "also in"),
                          (["a1"], "2/2 missing"), (["a1", "whole"], "without --shard")]:
        code, _, err = run_cli(capsys, "merge-stats", *[tmp_path / f"{p}.npz" for p in parts], "-o",
                               tmp_path / "m.npz")
        assert code == 1 and needle in one_line_error(err), (parts, err)
        assert not (tmp_path / "m.npz").exists()
    code, _, err = run_cli(capsys, *base, "--shard", "3/2", "--stats", tmp_path / "x.npz")
    assert code == 2 and "--shard" in one_line_error(err)
    code, _, err = run_cli(capsys, *base, "--shard", "1/2")
    assert code == 2 and "--stats" in one_line_error(err)


def test_shard_statistics_are_not_reused_as_a_whole_run(tmp_path, capsys):
    path, images = _model_and_images(tmp_path)
    code, _, err = run_cli(capsys, "calibrate", "-m", path, "-i", images, "--shard", "1/2", "--stats",
                           tmp_path / "p.npz")
    assert code == 0, err
    code, _, err = run_cli(capsys, "calibrate", "-m", path, "-i", images, "--stats", tmp_path / "p.npz", "-o",
                           tmp_path / "t.scale")
    assert code == 1 and "shard" in one_line_error(err) and not (tmp_path / "t.scale").exists()
