"""The op table (quanttool/ops.py) drives sharing, planning and the qoperator form alike: a value-preserving
op that shares its parameters with its input (no requantization in between) runs on int8 in the qoperator form
where onnxruntime has the kernel, and its result matches fp32."""

import numpy as np
import pytest
from onnx import helper

from quanttool import rules
from quanttool.rewrite import convert
from tests.helpers import init, make_model, run, run_int8, tensor_info
from tests.test_rewrite_common import calibrate


def _model(op, **attrs):
    rng = np.random.default_rng(5)
    extra = {"Tile": [init("reps", np.array([1, 1, 2, 1], np.int64))],
             "Gather": [init("idx", np.array([0, 2, 3], np.int64))]}.get(op, [])
    inputs = ["c"] + [t.name for t in extra]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
             helper.make_node(op, inputs, ["m"], name="move", **attrs),
             helper.make_node("Conv", ["m", "w2"], ["y"], name="conv2")]
    cout = {"Gather": 3}.get(op, 4)
    w1 = rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    w1[1] *= 10  # channel 1 holds the extremes, and Gather drops it: its output range is narrower
    inits = [init("w1", w1),
             init("w2", rng.normal(size=(2, cout, 1, 1)).astype(np.float32)), *extra]
    return make_model(nodes, [tensor_info("x", [1, 2, 8, 8])], [tensor_info("y", [1, 2, 1, 1] if op == "GlobalMaxPool" else [1, 2, 8, 8])], inits)


@pytest.mark.parametrize("op,attrs", [("Gather", {"axis": 1}), ("GlobalMaxPool", {})])
def test_value_preserving_op_shares_params_and_runs_int8(op, attrs):
    model = _model(op, **attrs)
    rng = np.random.default_rng(6)
    feeds = [{"x": rng.normal(size=(1, 2, 8, 8)).astype(np.float32)} for _ in range(4)]
    table = rules.apply(model, calibrate(model, feeds))
    assert table["c"] == table["m"]  # the input took the output's parameters: no requantization in between
    result = convert(model, table, fmt="qoperator")
    forms = {q.node: q.form for q in result.quantized}
    if op == "Gather":  # onnxruntime has no int8 GlobalMaxPool: that one stays QDQ, on shared parameters
        assert forms["move"] == "Gather(int8)"
    ref = run(model, feeds[0])[0]
    out = run_int8(result.model, feeds[0])[0]
    # two convs of int8 error: a few output LSBs on this scale of values
    assert np.abs(out - ref).max() <= 6 * table["y"].scale
