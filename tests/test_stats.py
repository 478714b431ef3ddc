"""Streaming statistics: exact, order- and batch-independent histograms and moments; the .npz round trip."""

from __future__ import annotations

import numpy as np
import pytest

from quanttool import stats as stats_module
from quanttool.errors import QuantError
from quanttool.stats import BINS, TensorStats, load_stats, save_stats

KERNEL = stats_module._KERNEL


@pytest.fixture(autouse=True, params=["kernel", "numpy"])
def fold_path(request, monkeypatch):
    """Every test runs with the C kernel and with the numpy fallback (QUANTTOOL_NO_KERNEL=1 has the same effect)."""
    if request.param == "kernel" and KERNEL is None:
        pytest.skip("C kernel not built")
    monkeypatch.setattr(stats_module, "_KERNEL", KERNEL if request.param == "kernel" else None)
    return request.param


def reference(values: np.ndarray) -> dict:
    """Single-pass statistics of all values, computed directly (float64, final R found by halving/doubling)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    absmax = np.abs(x).max()
    r = 1.0
    while r < absmax:
        r *= 2.0
    while r / 2.0 >= absmax:
        r /= 2.0
    pos = np.minimum(np.floor(x[x > 0] / r * BINS), BINS - 1).astype(np.int64)
    neg = np.minimum(np.floor(-x[x < 0] / r * BINS), BINS - 1).astype(np.int64)
    return {
        "range": r, "pos": np.bincount(pos, minlength=BINS), "neg": np.bincount(neg, minlength=BINS),
        "count": x.size, "zeros": int(np.sum(x == 0)), "min": x.min(), "max": x.max(),
        "sum": x.sum(), "sumsq": np.sum(x * x), "sumabs": np.abs(x).sum(),
    }


def assert_matches(st: TensorStats, ref: dict) -> None:
    assert st.range == ref["range"]
    np.testing.assert_array_equal(st.pos, ref["pos"])
    np.testing.assert_array_equal(st.neg, ref["neg"])
    assert (st.count, st.zeros, st.min, st.max) == (ref["count"], ref["zeros"], ref["min"], ref["max"])
    for key in ("sum", "sumsq", "sumabs"):
        assert getattr(st, key) == pytest.approx(ref[key], rel=1e-9, abs=1e-9)


def assert_same_stats(a: TensorStats, b: TensorStats, rel: float) -> None:
    """Histograms, counts and extremes exactly equal; float64 sums to `rel` (their summation order differs)."""
    assert a.range == b.range
    np.testing.assert_array_equal(a.pos, b.pos)
    np.testing.assert_array_equal(a.neg, b.neg)
    assert (a.count, a.zeros, a.min, a.max, a.samples, a.numel, a.edge_pos, a.edge_neg) == \
           (b.count, b.zeros, b.min, b.max, b.samples, b.numel, b.edge_pos, b.edge_neg)
    for key in ("sum", "sumsq", "sumabs"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=rel, abs=0)


@pytest.fixture
def images():
    rng = np.random.default_rng(7)
    out = []
    for i in range(8):
        x = (rng.standard_normal((1, 4, 9, 9)) * 3.0 ** (i % 4 - 1)).astype(np.float32)
        x[x < -1.5] = 0.0                      # zeros, ReLU-style
        out.append(x)
    # values exactly on bin edges (dyadic) and on R itself
    out[3].flat[:5] = [0.5, -0.5, 1.0, -1.0, -8.0]
    return out


def test_histogram_and_moments_match_a_direct_single_pass(images):
    st = TensorStats()
    for x in images:
        st.update(x)
    assert_matches(st, reference(np.concatenate([x.ravel() for x in images])))
    assert (st.samples, st.numel) == (8, 4 * 9 * 9)


def test_identical_for_any_order_batching_and_merge(images):
    rng = np.random.default_rng(1)
    one = TensorStats()
    for x in images:
        one.update(x)

    shuffled = TensorStats()
    order = rng.permutation(len(images))
    batches = [order[:3], order[3:4], order[4:]]
    for b in batches:
        shuffled.update(np.concatenate([images[i] for i in b]), batch=len(b))

    left, right = TensorStats(), TensorStats()
    for x in images[4:]:       # the large-valued images first into one part, small ones into the other
        left.update(x)
    for x in images[:4]:
        right.update(x)
    right.merge(left)

    for other in (shuffled, right):
        assert_same_stats(other, one, rel=1e-9)


def test_range_doubles_and_merges_bin_pairs():
    st = TensorStats()
    small = np.array([0.3, -0.2, 0.299, 0.01], np.float32)
    st.update(small)
    assert st.range == 0.5                       # smallest power of two >= 0.3
    big = np.array([5.0, -0.26], np.float32)
    st.update(big)
    assert st.range == 8.0
    assert_matches(st, reference(np.concatenate([small, big])))
    exact = TensorStats()
    exact.update(np.array([0.25], np.float32))
    assert exact.range == 0.25                   # a power of two is its own range
    np.testing.assert_array_equal(np.flatnonzero(exact.pos), [BINS - 1])  # x == R goes to the top bin


def test_zeros_are_counted_apart_and_all_zero_tensor_has_no_range():
    st = TensorStats()
    st.update(np.zeros((2, 3), np.float32), batch=2)
    assert (st.count, st.zeros, st.range, st.pos.sum(), st.neg.sum()) == (6, 6, 0.0, 0, 0)
    assert (st.numel, st.samples, st.absmax, st.is_constant, st.is_nonnegative) == (3, 2, 0.0, True, True)
    st.update(np.array([[0.0, 2.0, 0.0]], np.float32))
    assert (st.zeros, st.pos.sum(), st.range) == (8, 1, 2.0)
    hist, r = st.abs_hist()
    assert (hist.sum(), r) == (1, 2.0)


def test_derived_moments():
    x = np.array([-2.0, 0.0, 1.0, 3.0], np.float32)
    st = TensorStats()
    st.update(x)
    assert st.mean == pytest.approx(0.5)
    assert st.std == pytest.approx(np.std(x.astype(np.float64)))
    assert st.mean_abs == pytest.approx(1.5)
    assert st.absmax == 3.0 and not st.is_nonnegative and not st.is_constant


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_raise(bad):
    st = TensorStats()
    with pytest.raises(ValueError, match="NaN or Inf"):
        st.update(np.array([1.0, bad], np.float32))
    assert st.count == 0


def test_save_load_round_trip_with_any_names(tmp_path, images):
    stats = {}
    for i, name in enumerate(["conv/out:0", "", "ünïcode name", "with\x00nul", "a b\nc"]):
        st = TensorStats()
        for x in images[i:]:
            st.update(x)
        stats[name] = st
    path = tmp_path / "calib.npz"
    save_stats(path, stats, {"model": "abc123", "images": "17"})
    loaded, meta = load_stats(path)
    assert meta == {"model": "abc123", "images": "17"}
    assert list(loaded) == list(stats)
    for name, st in stats.items():
        got = loaded[name]
        np.testing.assert_array_equal(got.pos, st.pos)
        np.testing.assert_array_equal(got.neg, st.neg)
        for key in ("count", "numel", "samples", "zeros", "min", "max", "sum", "sumsq", "sumabs", "range",
                    "edge_pos", "edge_neg"):
            assert getattr(got, key) == getattr(st, key)


def test_foreign_or_corrupt_file_is_a_quant_error_naming_it(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(QuantError, match="junk.npz"):
        load_stats(junk)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.arange(3))
    with pytest.raises(QuantError, match="other.npz"):
        load_stats(other)
    with pytest.raises(QuantError, match="missing.npz"):
        load_stats(tmp_path / "missing.npz")


def test_exact_across_chunks_lanes_and_runs_of_equal_values():
    """Tensors longer than a chunk, with long runs of zeros and of one bin, signed and not, match a direct pass."""
    from quanttool import stats as module
    rng = np.random.default_rng(3)
    n = 2 * module._CHUNK + 12345                  # several chunks, the last one partial
    x = rng.standard_normal(n).astype(np.float32)
    x[1000:50000] = 0.0                            # a ReLU-like run of zeros across a chunk boundary
    x[60000:70000] = 0.75                          # a run that hits one bin
    x[5] = -4.0                                    # R = 4 exactly: -R lands in the top negative bin
    st = TensorStats()
    st.update(x.reshape(1, -1))
    assert_matches(st, reference(x))
    relu = TensorStats()
    relu.update(np.maximum(x, 0))
    assert_matches(relu, reference(np.maximum(x, 0)))


def test_concurrent_updates_in_threads_equal_sequential_ones(images):
    """Scratch buffers are per thread: tensors folded in parallel threads get exactly the sequential result."""
    from concurrent.futures import ThreadPoolExecutor
    big = [np.concatenate([x.ravel()] * 400) * (i + 1) for i, x in enumerate(images[:4])]
    sequential = [TensorStats() for _ in big]
    for st, x in zip(sequential, big):
        for _ in range(3):
            st.update(x)
    parallel = [TensorStats() for _ in big]

    def fold(i):
        for _ in range(3):
            parallel[i].update(big[i])

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(fold, range(len(big))))
    for a, b in zip(sequential, parallel):
        np.testing.assert_array_equal(a.pos, b.pos)
        np.testing.assert_array_equal(a.neg, b.neg)
        assert (a.zeros, a.count, a.range, a.sum, a.sumsq) == (b.zeros, b.count, b.range, b.sum, b.sumsq)
    ref = reference(np.concatenate([big[0]] * 3))  # and the histogram is the direct single-pass one
    np.testing.assert_array_equal(parallel[0].pos, ref["pos"])
    np.testing.assert_array_equal(parallel[0].neg, ref["neg"])
    assert (parallel[0].zeros, parallel[0].range) == (ref["zeros"], ref["range"])


def test_values_equal_to_the_range_stay_exact_when_it_doubles(tmp_path):
    """|x| == R sits in the top bin; once R doubles it must land in bin BINS / 2 like a direct pass puts it."""
    values = [np.array([0.25, -0.25, 0.1], np.float32), np.array([1.0, -0.5], np.float32),
              np.array([-4.0, 3.0], np.float32)]
    ref = reference(np.concatenate(values))            # R = 4: 0.25 -> bin 128, 0.5 -> 256, 1.0 -> 512
    assert ref["pos"][128] == 1 and ref["neg"][128] == 1 and ref["neg"][256] == 1
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        st = TensorStats()
        for i in order:
            st.update(values[i])
        assert_matches(st, ref)
    first, second = TensorStats(), TensorStats()     # edges survive a file round trip and a merge
    first.update(values[0])
    path = tmp_path / "edge.npz"
    save_stats(path, {"t": first}, {})
    loaded = load_stats(path)[0]["t"]
    assert (loaded.edge_pos, loaded.edge_neg) == (1, 1)
    second.update(values[1])
    second.update(values[2])
    loaded.merge(second)
    assert_matches(loaded, ref)


def test_zero_tensor_after_a_range_is_set_adds_only_zeros():
    st = TensorStats()
    st.update(np.array([2.0, -1.0], np.float32))
    st.update(np.zeros(70000, np.float32))
    assert_matches(st, reference(np.concatenate([[2.0, -1.0], np.zeros(70000)])))


def test_nan_deep_in_a_long_tensor_raises_and_changes_nothing():
    st = TensorStats()
    st.update(np.ones(10, np.float32))
    x = np.linspace(-3, 3, 50000, dtype=np.float32)
    x[41234] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        st.update(x)
    assert (st.count, st.samples, st.range, int(st.pos.sum()), st.max) == (10, 1, 1.0, 10, 1.0)


@pytest.mark.skipif(KERNEL is None, reason="C kernel not built")
@pytest.mark.parametrize("kind", ["signed", "relu", "tiny", "huge", "subnormal"])
def test_kernel_and_numpy_paths_agree(kind, monkeypatch, fold_path):
    if fold_path == "numpy":
        pytest.skip("compares both paths itself")
    rng = np.random.default_rng(11)
    x = rng.standard_normal(3 * stats_module._CHUNK + 777).astype(np.float32)
    x[:5000] = np.round(x[:5000] * 4) / 4          # values on bin edges
    x = {"signed": x, "relu": np.maximum(x, 0), "tiny": x * np.float32(1e-30), "huge": x * np.float32(1e36),
         "subnormal": x * np.float32(1e-42)}[kind].astype(np.float32)
    assert np.isfinite(x).all()
    parts = np.array_split(x, [1000, 70000])       # R grows between updates, and inside the first kernel call
    results = []
    for kernel in (KERNEL, None):
        monkeypatch.setattr(stats_module, "_KERNEL", kernel)
        st = TensorStats()
        for part in parts[::-1]:
            st.update(part)
        results.append(st)
    fast, slow = results
    assert_same_stats(fast, slow, rel=1e-12)
    assert_matches(fast, reference(x))
