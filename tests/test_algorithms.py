"""Clip-range algorithms against independent computations written out here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quanttool import algorithms
from quanttool.algorithms import aciq, kl, tengine
from quanttool.algorithms._histogram import histogram_over_extent
from quanttool.errors import UsageError
from quanttool.stats import BINS, TensorStats

# Banner et al. (Laplace) and Tengine's alpha_gaussian table (index = bits - 1).
LAPLACE_ALPHA = {2: 2.83, 3: 3.89, 4: 5.03}
TENGINE_ALPHA_GAUSSIAN = [0, 1.71063519, 2.15159277, 2.55913646, 2.93620062, 3.28691474, 3.6151146, 3.92403714]


def stats_of(x, batch=1) -> TensorStats:
    st = TensorStats()
    st.update(np.asarray(x, np.float32), batch=batch)
    return st


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(2024)
    return {
        "laplace": rng.laplace(0.0, 0.7, 1_000_000).astype(np.float32),
        "gaussian": rng.normal(0.0, 1.3, 1_000_000).astype(np.float32),
    }


# ---- minmax and the registry ----------------------------------------------------------------------------
def test_minmax_and_aliases():
    st = stats_of([-3.0, 0.0, 2.0])
    assert algorithms.compute_range("minmax", st, "symmetric") == (-3.0, 3.0)
    assert algorithms.compute_range("0", st, "asymmetric") == (-3.0, 2.0)
    assert algorithms.compute_range("minmax", stats_of([0.5, 2.5]), "unsigned") == (0.0, 2.5)
    assert algorithms.resolve("1") == "kl" and algorithms.resolve("2") == "aciq"
    with pytest.raises(UsageError, match="unknown algorithm 'entropy'"):
        algorithms.compute_range("entropy", st, "symmetric")
    with pytest.raises(UsageError, match="symmetric only"):
        algorithms.compute_range("kl", st, "asymmetric", compat="tengine")


# ---- ACIQ ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_laplace_alpha_matches_the_paper(bits):
    assert aciq.laplace_alpha(bits) == pytest.approx(LAPLACE_ALPHA[bits], abs=0.01)
    a = aciq.laplace_alpha(bits)
    assert a == pytest.approx(3 * 4**bits * math.exp(-a), rel=1e-12)  # the paper's fixed-point equation


@pytest.mark.parametrize("bits", range(2, 9))
def test_gaussian_alpha_minimises_the_expected_mse(bits):
    def mse_of(a):  # sigma = 1, written out from the paper
        tail = 0.5 * math.erfc(a / math.sqrt(2))
        pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
        return 2 * ((a * a + 1) * tail - a * pdf) + a * a / (3 * 4**bits)

    grid = np.arange(0.5, 8.0, 1e-4)
    best = grid[np.argmin([mse_of(a) for a in grid])]
    assert aciq.gaussian_alpha(bits) == pytest.approx(best, abs=2e-4)
    assert aciq.gaussian_alpha(bits) == pytest.approx(TENGINE_ALPHA_GAUSSIAN[bits - 1], abs=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_aciq_on_laplace_samples(samples, bits):
    st = stats_of(samples["laplace"])
    assert aciq.choose_prior(st, "symmetric") == "laplace"
    lo, hi = algorithms.compute_range("aciq", st, "symmetric", bits)
    assert hi == -lo == pytest.approx(LAPLACE_ALPHA[bits] * 0.7, rel=0.02)


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_aciq_on_gaussian_samples(samples, bits):
    st = stats_of(samples["gaussian"])
    assert aciq.choose_prior(st, "symmetric") == "gaussian"
    lo, hi = algorithms.compute_range("aciq", st, "symmetric", bits)
    assert hi == -lo == pytest.approx(TENGINE_ALPHA_GAUSSIAN[bits - 1] * 1.3, rel=0.02)


@pytest.mark.parametrize("bits", [3, 5, 7])
def test_aciq_unsigned_uses_the_folded_prior_with_one_more_bit(samples, bits):
    # ReLU of N(0, 1.3): the positive part is half-normal with sigma 1.3; [0, T] with 2**bits levels is the
    # symmetric problem with bits + 1.
    st = stats_of(np.maximum(samples["gaussian"], 0.0))
    assert aciq.choose_prior(st, "unsigned") == "gaussian"
    assert algorithms.compute_range("aciq", st, "unsigned", bits) == \
        (0.0, pytest.approx(TENGINE_ALPHA_GAUSSIAN[bits] * 1.3, rel=0.02))
    st = stats_of(np.abs(samples["laplace"]))
    assert aciq.choose_prior(st, "unsigned") == "laplace"


def test_aciq_never_exceeds_absmax_and_handles_constants():
    st = stats_of(np.linspace(-1, 1, 101))  # 8-bit Gaussian alpha 3.92 sigma > absmax
    assert algorithms.compute_range("aciq", st, "symmetric", 8) == (-1.0, 1.0)
    assert algorithms.compute_range("aciq", stats_of([2.0, 2.0]), "symmetric") == (-2.0, 2.0)
    assert algorithms.compute_range("aciq", stats_of([0.0, 0.0]), "symmetric") == (0.0, 0.0)


# ---- KL --------------------------------------------------------------------------------------------------
def brute_force_kl(hist, levels):
    """The KL of each candidate t by the definition in kl.py, one candidate at a time."""
    hist = np.asarray(hist, np.float64)
    out = []
    for t in range(levels, hist.size + 1):
        p = hist[:t].copy()
        p[t - 1] += hist[t:].sum()
        q = np.zeros(t)
        for j in range(levels):
            a, b = j * t // levels, (j + 1) * t // levels
            group = hist[a:b]
            nonzero = group > 0
            if nonzero.any():
                q[a:b][nonzero] = group.sum() / nonzero.sum()
        p, q = p / p.sum(), (q / q.sum() if q.sum() else q)  # no kept mass: q stays 0 (EPSILON below)
        used = p > 0
        q_used = np.where(q[used] > 0, q[used], kl.EPSILON)
        out.append(np.sum(p[used] * np.log(p[used] / q_used)))
    return np.array(out)


def first_min(values):
    best = values.min()
    return int(np.flatnonzero(values <= best + kl.TIE_TOLERANCE * abs(best))[0])


def kl_histograms():
    rng = np.random.default_rng(5)
    yield rng.integers(0, 50, 300).astype(float)                       # random counts with zeros
    yield np.histogram(np.abs(rng.laplace(0, 1, 20000)), bins=400)[0].astype(float)
    sparse = np.zeros(260)
    sparse[rng.choice(260, 40, replace=False)] = rng.integers(1, 9, 40)
    yield sparse                                                       # mostly empty bins (tails)
    spike = np.histogram(np.abs(rng.normal(0, 1, 5000)), bins=256)[0].astype(float)
    spike[-1] += 300                                                   # a clipped spike at the top
    yield spike


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("levels", [16, 32])
def test_kl_vectorised_equals_brute_force(case, levels):
    hist = list(kl_histograms())[case]
    ts, kls = kl.kl_divergences(hist, levels)
    reference = brute_force_kl(hist, levels)
    np.testing.assert_allclose(kls, reference, rtol=1e-7, atol=1e-9)
    assert ts[kl.best_bin(kls)] == levels + first_min(reference)


def test_kl_full_size_argmin_equals_brute_force(samples):
    hist, _ = np.histogram(np.abs(samples["gaussian"][:200_000]), bins=BINS)
    ts, kls = kl.kl_divergences(hist.astype(float), 128)
    assert ts[kl.best_bin(kls)] == 128 + first_min(brute_force_kl(hist, 128))


def test_kl_threshold_on_gaussian_and_laplace_samples(samples):
    st = stats_of(samples["gaussian"])
    lo, hi = algorithms.compute_range("kl", st, "symmetric")
    assert -lo == hi
    assert 3.5 * 1.3 < hi <= st.absmax
    # the threshold is the right edge of a bin of the 2048-bin histogram over [0, absmax]
    t = hi / st.absmax * BINS
    assert t == pytest.approx(round(t), abs=1e-6)
    st = stats_of(samples["laplace"])  # heavy tails: KL clips well inside the observed range
    assert 0.4 * st.absmax < algorithms.compute_range("kl", st, "symmetric")[1] < 0.9 * st.absmax


# ---- percentile ------------------------------------------------------------------------------------------
def test_percentile_matches_numpy_within_one_bin(samples):
    # inverted_cdf: the smallest sample whose empirical CDF reaches p; the interpolated value lies in its bin.
    def pct(values, p):
        return np.percentile(values, p, method="inverted_cdf")

    x = samples["laplace"].copy()
    x[::7] = 0.0  # zeros are part of the population
    st = stats_of(x)
    width = st.range / BINS
    for p in (99.0, 99.9, 99.99):
        lo, hi = algorithms.compute_range("percentile", st, "symmetric", percentile=p)
        assert hi == -lo == pytest.approx(pct(np.abs(x), p), abs=width)
        lo, hi = algorithms.compute_range("percentile", st, "asymmetric", percentile=p)
        assert lo == pytest.approx(pct(x, (100 - p) / 2), abs=width)
        assert hi == pytest.approx(pct(x, (100 + p) / 2), abs=width)
    relu = np.maximum(x, 0)
    st = stats_of(relu)
    assert algorithms.compute_range("percentile", st, "unsigned", percentile=99.9)[1] == \
        pytest.approx(pct(relu, 99.9), abs=st.range / BINS)


def test_percentile_on_almost_all_zeros_keeps_the_extreme():
    x = np.zeros(100_000, np.float32)
    x[0] = 3.0
    assert algorithms.compute_range("percentile", stats_of(x), "symmetric", percentile=99.0) == (-3.0, 3.0)


# ---- MSE -------------------------------------------------------------------------------------------------
def brute_force_mse(hist, extent, threshold, step):
    """count * (c - T)^2 for bin centres beyond T, count * step^2 / 12 inside."""
    centres = (np.arange(hist.size) + 0.5) * extent / hist.size
    return float(np.sum(np.where(centres > threshold, hist * (centres - threshold) ** 2, hist * step**2 / 12.0)))


@pytest.mark.parametrize("bits", [4, 8])
def test_mse_picks_the_brute_force_minimum(samples, bits):
    st = stats_of(samples["laplace"][:100_000])
    hist, extent = histogram_over_extent(st, "abs")
    qmax = 2 ** (bits - 1) - 1
    candidates = [t * extent / BINS for t in range(128, BINS + 1)]
    errors = [brute_force_mse(hist, extent, c, c / qmax) for c in candidates]
    lo, hi = algorithms.compute_range("mse", st, "symmetric", bits)
    assert -lo == hi
    assert brute_force_mse(hist, extent, hi, hi / qmax) <= min(errors) * (1 + 1e-9)
    assert hi < extent  # a heavy-tailed sample is clipped


def test_mse_unsigned_uses_all_levels(samples):
    relu = np.maximum(samples["gaussian"][:100_000], 0)
    st = stats_of(relu)
    hist, extent = histogram_over_extent(st, "pos")
    candidates = [t * extent / BINS for t in range(128, BINS + 1)]
    errors = [brute_force_mse(hist, extent, c, c / 255) for c in candidates]
    assert algorithms.compute_range("mse", st, "unsigned")[1] == pytest.approx(candidates[int(np.argmin(errors))])


# ---- Tengine compatibility ---------------------------------------------------------------------------------
def tengine_threshold_distribution(histogram, target_bin=128):
    """Line-by-line port of Tengine's threshold_distribution / normalize_histogram / compute_kl_divergence."""
    length = len(histogram)
    total = sum(histogram[1:])
    distribution = [0.0] + [h / total for h in histogram[1:]]
    target_threshold, min_kl = target_bin, float("inf")
    threshold_sum = sum(distribution[target_bin:])
    for threshold in range(target_bin, length):
        t_distribution = distribution[:threshold]
        t_distribution[threshold - 1] += threshold_sum
        threshold_sum -= distribution[threshold]
        quantize = [0.0] * target_bin
        num_per_bin = threshold / target_bin
        for i in range(target_bin):
            start = i * num_per_bin
            end = start + num_per_bin
            left_upper = math.ceil(start)
            if left_upper > start:
                quantize[i] += (left_upper - start) * distribution[left_upper - 1]
            right_lower = math.floor(end)
            if right_lower < end:
                quantize[i] += (end - right_lower) * distribution[right_lower]
            quantize[i] += sum(distribution[left_upper:right_lower])
        expand = [0.0] * threshold
        for i in range(target_bin):
            start = i * num_per_bin
            end = start + num_per_bin
            count = 0.0
            left_upper = math.ceil(start)
            left_scale = right_scale = 0.0
            if left_upper > start:
                left_scale = left_upper - start
                if distribution[left_upper - 1] != 0:
                    count += left_scale
            right_lower = math.floor(end)
            if right_lower < end:
                right_scale = end - right_lower
                if distribution[right_lower] != 0:
                    count += right_scale
            count += sum(1 for j in range(left_upper, right_lower) if distribution[j] != 0)
            value = quantize[i] / count if count else 0.0
            if left_upper > start and distribution[left_upper - 1] != 0:
                expand[left_upper - 1] += value * left_scale
            if right_lower < end and distribution[right_lower] != 0:
                expand[right_lower] += value * right_scale
            for j in range(left_upper, right_lower):
                if distribution[j] != 0:
                    expand[j] += value
        kl_value = 0.0
        for a, b in zip(t_distribution, expand):
            if a != 0:
                kl_value += 1.0 if b == 0 else a * math.log(a / b)
        if kl_value < min_kl:
            min_kl, target_threshold = kl_value, threshold
    return target_threshold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tengine_kl_bin_equals_a_port_of_tengine(seed):
    rng = np.random.default_rng(seed)
    values = np.abs(rng.standard_t(3 + seed, 4000))
    hist = np.histogram(values, bins=300)[0].astype(float)   # fractional merges: 300 / 128 is not whole
    hist[rng.choice(300, 30)] = 0                              # empty bins, incl. maybe bin t-1
    assert tengine.threshold_bin(hist, 128) == tengine_threshold_distribution(list(hist), 128)


def test_tengine_minmax_aciq_kl_formulas():
    rng = np.random.default_rng(3)
    x = (rng.normal(0, 2.0, (1, 8, 32, 32))).astype(np.float32)  # N = 8192 elements per image
    st = stats_of(x)
    absmax = np.float32(np.abs(x).max())
    assert algorithms.compute_range("0", st, "symmetric", compat="tengine") == (-float(absmax), float(absmax))

    gaussian_const = 0.5 * 0.35 * (1 + math.sqrt(math.pi * math.log(4)))
    for bits in (4, 8):
        std = float(absmax) * 2 * gaussian_const / math.sqrt(2 * math.log(8 * 32 * 32))
        expected = float(np.float32(float(np.float32(TENGINE_ALPHA_GAUSSIAN[bits - 1])) * std))
        assert algorithms.compute_range("2", st, "symmetric", bits, compat="tengine")[1] == expected

    small = stats_of(x[:, :1, :8, :8])                           # N = 64: Tengine does not clip at absmax
    assert algorithms.compute_range("aciq", small, "symmetric", compat="tengine")[1] > small.absmax

    t = algorithms.compute_range("1", st, "symmetric", compat="tengine")[1]
    # Tengine's threshold: (absmax / 2048) * (bin + 0.5) in float32, for a whole bin index in [128, 2047]
    step = np.float32(absmax / np.float32(2048))
    bin_index = round(t / float(step) - 0.5)
    assert 128 <= bin_index <= 2047
    assert t == float(np.float32(step * np.float32(bin_index + 0.5)))


def test_kl_never_clips_a_distribution_that_stays_away_from_zero():
    """Sigmoid-like values in [0.27, 0.62]: the kept bins of some candidate hold a single non-empty bin, the
    clipped tail piles into it and P = Q = one spike (KL 0). The guard keeps such candidates out: at most
    MAX_CLIPPED of the values may be clipped, and among the allowed candidates the brute-force argmin wins."""
    x = np.random.default_rng(11).uniform(0.27, 0.62, 200_000).astype(np.float32)
    st = TensorStats()
    st.update(x)
    lo, hi = kl.compute_range(st, "unsigned", 8)
    assert np.mean(x > hi) <= kl.MAX_CLIPPED
    hist, extent = histogram_over_extent(st, "pos")
    reference = brute_force_kl(hist, 256)
    kept = np.cumsum(hist)[np.arange(256, hist.size + 1) - 1]
    allowed = np.flatnonzero(kept >= (1 - kl.MAX_CLIPPED) * hist.sum())
    best = allowed[first_min(reference[allowed])]
    assert hi == pytest.approx((256 + best) * extent / hist.size)
    assert reference.min() < reference[best]  # the unguarded minimum was elsewhere: the degenerate spike
