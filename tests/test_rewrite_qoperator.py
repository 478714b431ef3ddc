"""rewrite: qoperator vs QDQ agreement, and the --params round trip: an integer-only re-computation of a
QLinearConv from hardware_params matches onnxruntime's int8 output."""

from __future__ import annotations

import json

import numpy as np
from onnx import TensorProto

from quanttool.rewrite import convert, hardware_params
from tests.test_rewrite_common import calibrate, conv_model, initializer, run_all


def conv_case(seed=21, relu="Relu"):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
    w[3] *= 0.01  # a channel with a much smaller scale: per-channel multipliers differ
    b = rng.normal(size=6).astype(np.float32)
    model = conv_model(w, b, relu=relu, strides=(2, 1), shape=(2, None, 9, 10))
    feeds = [{"x": rng.normal(size=(2, 4, 9, 10)).astype(np.float32)} for _ in range(3)]
    return model, feeds, calibrate(model, feeds)


def test_qdq_and_qoperator_agree_within_one_lsb():
    for relu in (None, "Relu"):
        model, feeds, table = conv_case(relu=relu)
        q = {fmt: convert(model, table, fmt=fmt).model for fmt in ("qdq", "qoperator")}
        assert any(n.op_type == "QLinearConv" for n in q["qoperator"].graph.node)
        assert not any(n.op_type == "QLinearConv" for n in q["qdq"].graph.node)
        for f in feeds:
            a = run_all(q["qdq"], f, ["y_quantized"], TensorProto.INT8)["y_quantized"].astype(int)
            b = run_all(q["qoperator"], f, ["y_quantized"], TensorProto.INT8)["y_quantized"].astype(int)
            assert np.abs(a - b).max() <= 1


def rounding_right_shift(x: np.ndarray, n: int) -> np.ndarray:
    """Round-half-away-from-zero division by 2^n in integers (Jacob et al. 2018, RoundingDivideByPOT)."""
    if n <= 0:
        return x << -n
    mask = (np.int64(1) << n) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> n) + (remainder > threshold).astype(np.int64)


def test_params_round_trip_integer_conv_matches_onnxruntime():
    model, feeds, table = conv_case()
    result = convert(model, table, fmt="qoperator")
    params = json.loads(json.dumps(hardware_params(result, table)))  # JSON round trip, as --params writes it
    layer = params["layers"][0]
    assert layer["op_type"] == "Conv" and layer["form"] == "QLinearConv" and layer["fused_activation"] == "Relu"
    w_q = initializer(result.model, "W_quantized").astype(np.int64)  # the int8 weights the model carries
    bias = np.array(layer["bias"], dtype=np.int64)
    z_in, z_out = layer["inputs"][0]["zero_point"], layer["output"]["zero_point"]
    assert z_out == -128  # unsigned Relu output: the clamp at -128 is the ReLU
    # the multipliers recorded must be (s_in * s_w[c]) / s_out as onnxruntime's QLinearConv forms it in float32,
    # held exactly by m0 (in [2^30, 2^31)) and the shift
    s_in, s_out = layer["inputs"][0]["scale"], layer["output"]["scale"]
    assert layer["rounding"] == "half_to_even" and layer["clamp"] == [-128, 127]
    assert layer["activation"] == {"op": "Relu", "min": 0.0, "max": None, "fused": True}
    assert layer["weight"]["initializer"] == "W_quantized" and layer["bias_initializer"] == "B_quantized"
    assert layer["attributes"]["strides"] == [2, 1] and layer["pad_value"] == z_in
    for req, s_w in zip(layer["requant"], layer["weight"]["scales"]):
        assert 2**30 <= req["m0"] < 2**31
        m = np.float32(np.float32(s_in) * np.float32(s_w)) / np.float32(s_out)
        assert req["m0"] * 2.0 ** (-31 - req["shift"]) == float(m) == req["M"]
    for f in feeds:
        got = run_all(result.model, f, ["x_quantized", "y_quantized"], TensorProto.INT8)
        xq = got["x_quantized"].astype(np.int64)
        # integer conv: stride (2, 1), pads 1, as conv_model builds it
        xp = np.pad(xq - z_in, ((0, 0), (0, 0), (1, 1), (1, 1)))  # padding is the real 0, i.e. q = z_in
        n, cin, h, wd = xq.shape
        oh, ow = (h + 2 - 3) // 2 + 1, wd
        acc = np.zeros((n, 6, oh, ow), dtype=np.int64)
        for i in range(3):
            for j in range(3):
                patch = xp[:, :, i:i + 2 * oh:2, j:j + ow]
                acc += np.einsum("oc,nchw->nohw", w_q[:, :, i, j], patch)
        acc += bias.reshape(1, -1, 1, 1)
        out = np.empty_like(acc)
        for c, req in enumerate(layer["requant"]):
            # acc * M = acc * m0 / 2^(31 + shift): int64 product, then a rounding right shift
            out[:, c] = z_out + rounding_right_shift(acc[:, c] * np.int64(req["m0"]), 31 + req["shift"])
        out = np.clip(out, -128, 127)
        assert np.abs(out - got["y_quantized"].astype(np.int64)).max() <= 1
