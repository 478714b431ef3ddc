"""Scale/zero-point conventions and the fixed-point multiplier, against the seeds' formulas."""

import math

import numpy as np
import pytest

from quanttool.qparams import MIN_SCALE, asymmetric, decompose_multiplier, symmetric, unsigned


def test_symmetric_is_absmax_over_127():
    assert symmetric(2.54).scale == pytest.approx(2.54 / 127)
    assert symmetric(2.54).zero_point == 0
    assert symmetric(1.5, bits=4).scale == pytest.approx(1.5 / 7)


def test_unsigned_uses_all_256_levels_with_zero_point_minus_128():
    qp = unsigned(6.0)
    assert qp.zero_point == -128
    assert qp.scale == pytest.approx(6.0 / 255)
    # 0 maps to -128 and 6 maps to 127 exactly
    assert round(0 / qp.scale) + qp.zero_point == -128
    assert round(6.0 / qp.scale) + qp.zero_point == 127


def test_asymmetric_matches_seed_002_worked_example():
    # seed 002: S = (rmax - rmin) / (qmax - qmin), Z = round(qmin - rmin / S)
    r = np.array([1.3742, -2.7129, 2.9312, -1.1382, 3.8776, -1.1048, 4.1834, -6.2159, 4.9783, -6.4220])
    qp = asymmetric(r.min(), r.max())
    s = (4.9783 - -6.4220) / 255
    assert qp.scale == pytest.approx(s)
    assert qp.zero_point == round(-128 - (-6.4220) / s)
    q = np.clip(np.round(r / qp.scale) + qp.zero_point, -128, 127)
    assert np.abs((q - qp.zero_point) * qp.scale - r).max() <= qp.scale / 2 + 1e-12


def test_asymmetric_range_is_widened_to_contain_zero():
    qp = asymmetric(2.0, 4.0)  # all positive: rmin becomes 0 so zero is exact
    assert qp.scale == pytest.approx(4.0 / 255)
    assert qp.zero_point == -128


def test_constant_zero_gets_a_scale_that_keeps_the_next_bias_in_int32():
    # An all-zero tensor is quantized as if its range were [-1, 1]: a bias of 1.0 behind a weight scale of
    # 0.01 then needs round(1.0 / (scale * 0.01)) to fit int32, which a 1e-8 placeholder would not.
    for qp in (symmetric(0.0), unsigned(0.0), asymmetric(0.0, 0.0)):
        assert qp.scale >= MIN_SCALE and math.isfinite(qp.scale)
        assert abs(round(1.0 / (qp.scale * 0.01))) < 2**31
    assert symmetric(0.0).scale == pytest.approx(1 / 127)


@pytest.mark.parametrize("m", [0.2, 0.5, 0.999999999, 1e-5, 0.75, 3.0, 0.0123456])
def test_decompose_multiplier(m):
    m0, n = decompose_multiplier(m)
    assert 2**30 <= m0 < 2**31  # M0 in [0.5, 1) as a Q31 int32
    assert m0 * 2.0 ** (-31 - n) == pytest.approx(m, rel=2**-30)


def test_decompose_multiplier_seed_example():
    # seed 002 asks for M = 0.2: 0.2 = 2^-2 * 0.8
    m0, n = decompose_multiplier(0.2)
    assert n == 2
    assert m0 == round(0.8 * 2**31)
