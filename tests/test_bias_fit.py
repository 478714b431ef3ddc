"""No saturated int32 biases: a channel whose bias does not fit int32 at scale s_in * s_w gets a larger weight
scale (onnxruntime's rule, REFERENCE.md section 6), and convert says so once in its summary line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from quanttool.calibrate import Settings
from quanttool.commands import convert_model
from quanttool.rewrite import convert
from quanttool.table import Table, write_table
from tests.helpers import run
from tests.test_calibrate import OPTIONS
from tests.test_rewrite_common import calibrate, conv_model, feeds_for, initializer, linear_bound, run_q

INT32_MAX = 2**31 - 1


def tiny_weight_large_bias_conv():
    """Channel 1 has weights ~1e-7 (a BatchNorm with a tiny gamma folded in) and bias 40: at s_w = max|W|/127
    its bias would need ~1e12 as int32."""
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    w[1] *= 1e-7
    b = np.array([0.3, 40.0, -0.7], np.float32)
    return conv_model(w, b), w, b, rng


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_tiny_weight_large_bias_channel_gets_a_raised_weight_scale(fmt):
    model, w, b, rng = tiny_weight_large_bias_conv()
    feeds = feeds_for(model, rng, n=4)
    table = calibrate(model, feeds)
    s_in = np.float32(table["x"].scale)
    plain = np.abs(w).reshape(3, -1).max(axis=1) / 127
    assert b[1] / (s_in * plain[1]) > 100 * INT32_MAX  # the case: it would saturate without the rule

    result = convert(model, table, fmt=fmt)
    s_w = initializer(result.model, "W_scale")
    bq = result.quantized[0].bias
    # channel 1: the smallest scale with onnxruntime's margin, so |bias| lands just inside int32
    floor = 1.0001 * 2 * 40.0 / (2.0**32 - 2) / float(s_in)
    assert s_w[1] == pytest.approx(floor, rel=1e-6)
    assert abs(bq[1]) < INT32_MAX and abs(bq[1]) > 0.99 * INT32_MAX
    np.testing.assert_allclose(s_w[[0, 2]], plain[[0, 2]], rtol=1e-6)  # the other channels keep max|W|/127
    assert result.bias_raised == {"conv": 1}

    # in onnxruntime the int8 output matches fp32 within the usual bound, with the raised scale
    k, s_out = w[0].size, table["y"].scale
    bound = linear_bound(np.abs(w).reshape(3, -1).sum(axis=1), k, max(np.abs(f["x"]).max() for f in feeds),
                         float(s_in), s_w.astype(np.float64), s_out)
    for f in feeds:
        ref, got = run(model, f)[0], run_q(result.model, f)[0]
        assert np.abs(got - ref).max() <= bound
    # a saturated bias would have put channel 1 near (2^31 - 1) * s_in * s_w, about 0.1, instead of 40
    saturated = INT32_MAX * float(s_in) * float(plain[1])
    assert abs(40.0 - saturated) > 10 * bound


def test_convert_reports_raised_channels_once_in_the_summary(tmp_path, capsys):
    model, _, _, rng = tiny_weight_large_bias_conv()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    write_table(tmp_path / "m.scale", Table(calibrate(model, feeds_for(model, rng, n=2)), {}))
    text = convert_model(path, tmp_path / "q.onnx", tmp_path / "m.scale", Settings(), fmt="qdq", exclude=(),
                         params_path=None, images=(), **OPTIONS)
    assert text.endswith("; weight scale raised on 1 channels of 1 ops so their int32 bias fits")
    assert "overflow" not in capsys.readouterr().err
