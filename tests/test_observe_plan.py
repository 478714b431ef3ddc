"""Calibration observes only the tensors the converter quantizes: on every test model, the table from the
planned tensors gives the same int8 model, byte for byte, as the table from observing every float activation
(the unobserved tensors got no entry, or share one), and every entry it has is the same."""

from __future__ import annotations

import numpy as np
import pytest

from quanttool import prepare as prep
from quanttool import rules
from quanttool.calibrate import Settings, choose_params, observed_tensors
from quanttool.commands import parse_shapes
from quanttool.observe import observe
from quanttool.prepare.activations import float_activations
from quanttool.rewrite import convert
from tests.test_exports import CASES, DATA


@pytest.mark.parametrize("name", sorted(CASES))
def test_observing_the_plan_gives_the_same_model_as_observing_everything(name):
    case = CASES[name]
    model = prep.load_model(DATA / f"{name}.onnx")
    shapes = [f"{k}={','.join(map(str, chw))}" for k, chw in case.inputs.items()] if case.dynamic_hw else []
    specs = prep.input_specs(model, parse_shapes(shapes))
    static = prep.prepare(model, specs)
    rng = np.random.default_rng(7)
    feeds = [(f"{i}", {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in specs}) for i in range(4)]

    shared = {src for src, _ in rules.shared_inputs(static)}
    everything = [n for n in float_activations(static) if n not in shared]  # what calibration observed before
    planned = observed_tensors(static)
    assert set(planned) <= set(everything)

    settings = Settings("minmax")
    tables = {}
    for key, names in (("all", everything), ("planned", planned)):
        stats = {n: s for n, s in observe(static, feeds, len(feeds), names=names, desc=None).items() if s.count}
        tables[key] = choose_params(static, stats, settings)
    for tensor, qp in tables["planned"].items():
        assert tables["all"][tensor] == qp, tensor
    dynamic = prep.prepare(model, None)
    for fmt in ("qdq", "qoperator"):
        a, b = (convert(dynamic, tables[k], fmt=fmt).model.SerializeToString() for k in ("all", "planned"))
        assert a == b, fmt


def test_float_islands_are_not_observed():
    """A spelled-out LayerNorm's var + eps stays float in the converted model: calibration does not observe it."""
    from onnx import helper

    from tests.helpers import init, make_model, tensor_info

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Sqrt", ["c"], ["s"], name="sqrt"),
             helper.make_node("Add", ["s", "eps"], ["v"], name="add_eps"),
             helper.make_node("Div", ["c", "v"], ["y"], name="div")]
    model = make_model(nodes, [tensor_info("x", [1, 2, 4, 4])], [tensor_info("y", [1, 2, 4, 4])],
                       [init("w", np.ones((2, 2, 1, 1), np.float32)), init("eps", np.array(1e-5, np.float32))])
    assert "v" in float_activations(model) and "s" in float_activations(model)
    planned = observed_tensors(model)
    assert planned == ["x", "c"]


def test_outputs_whose_shape_changes_between_samples_are_observed():
    """Observation writes into buffers allocated at the first sample; a Slice whose end comes from the data
    gives each sample another shape, and every value must still be counted (checked against numpy)."""
    from onnx import TensorProto, helper

    from tests.helpers import init, make_model, tensor_info

    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0, name="max"),
             helper.make_node("Cast", ["m"], ["mi"], to=TensorProto.INT64, name="cast"),
             helper.make_node("Reshape", ["mi", "one"], ["end"], name="end"),
             helper.make_node("Slice", ["f", "zero", "end", "axis"], ["s"], name="slice"),
             helper.make_node("Mul", ["s", "two"], ["y"], name="mul"),
             helper.make_node("Sigmoid", ["y"], ["z"], name="sigmoid")]
    model = make_model(nodes, [tensor_info("x", [1, 1, 4, 4])], [tensor_info("z", [1, "n"])],
                       [init("one", np.array([1], np.int64)), init("zero", np.array([0], np.int64)),
                        init("axis", np.array([1], np.int64)), init("two", np.array(2.0, np.float32))])
    rng = np.random.default_rng(8)
    xs = []
    for top in (3, 9, 5, 12):  # the largest value decides how many values the Slice keeps
        x = rng.uniform(-2, 2, (1, 1, 4, 4)).astype(np.float32)
        x[0, 0, 3, 3] = top
        xs.append(x)
    names = observed_tensors(model)
    assert names == ["s", "y", "z"]
    stats = observe(model, [(str(i), {"x": x}) for i, x in enumerate(xs)], len(xs), names=names, desc=None)
    kept = [x.reshape(-1)[:int(x.max())] for x in xs]
    assert stats["s"].count == sum(k.size for k in kept)
    assert stats["s"].min == min(k.min() for k in kept) and stats["s"].max == max(k.max() for k in kept)
    assert stats["y"].sum == pytest.approx(2 * sum(float(k.astype(np.float64).sum()) for k in kept), rel=1e-6)
