"""Graph preparation: every rewrite is checked against onnxruntime running the original model, plus the
structural fact the rewrite promises (BN gone, shape chain gone, names kept)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import init, make_model, run, tensor_info
from quanttool.errors import QuantError
from quanttool.inputs import InputSpec
from quanttool.prepare import fold_bn, input_specs, load_model, model_hash, prepare

RNG = np.random.default_rng(42)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def bn_params(prefix, channels):
    gamma = RNG.uniform(0.5, 1.5, channels).astype(np.float32)
    beta = rand(channels)
    mean = rand(channels)
    var = RNG.uniform(0.5, 2.0, channels).astype(np.float32)
    names = [f"{prefix}_{k}" for k in ("gamma", "beta", "mean", "var")]
    return names, [init(n, v) for n, v in zip(names, (gamma, beta, mean, var))], (gamma, beta, mean, var)


def bn_node(x, y, prefix, channels, eps=1e-3):
    names, inits, values = bn_params(prefix, channels)
    return helper.make_node("BatchNormalization", [x] + names, [y], name=prefix, epsilon=eps), inits, values


def assert_same(original, prepared, feeds):
    """Original and prepared agree per output: max|a-b| <= 1e-4 * max|a| (relative to magnitude)."""
    names = [o.name for o in original.graph.output]
    assert [o.name for o in prepared.graph.output] == names
    for a, b in zip(run(original, feeds), run(prepared, feeds)):
        assert a.shape == b.shape
        assert np.max(np.abs(a - b)) <= 1e-4 * max(np.max(np.abs(a)), 1e-6)


def ops(model):
    return [node.op_type for node in model.graph.node]


def weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# ---------------------------------------------------------------- BN folding

@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bn_folds_into_conv(group, with_bias):
    w = rand(4, 4 // group, 3, 3)
    b = rand(4)
    bn, bn_inits, (gamma, beta, mean, var) = bn_node("c", "y", "bn", 4)
    conv = helper.make_node("Conv", ["x", "w"] + (["b"] if with_bias else []), ["c"], name="conv", group=group,
                            pads=[1, 1, 1, 1])
    inits = [init("w", w)] + ([init("b", b)] if with_bias else []) + bn_inits
    model = make_model([conv, bn], [tensor_info("x", [1, 4, 6, 6])], [tensor_info("y", [1, 4, 6, 6])], inits)
    prepared = prepare(model)
    assert ops(prepared) == ["Conv"]
    node = prepared.graph.node[0]
    assert node.name == "conv" and list(node.output) == ["y"]
    factor = gamma / np.sqrt(var + 1e-3)  # the BN formula written out
    folded = weights(prepared)
    np.testing.assert_allclose(folded[node.input[1]], w * factor[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(folded[node.input[2]], ((b if with_bias else 0) - mean) * factor + beta,
                               rtol=1e-5, atol=1e-6)
    assert_same(model, prepared, {"x": rand(1, 4, 6, 6)})


@pytest.mark.parametrize("group", [1, 2])
def test_bn_folds_into_conv_transpose(group):
    cin, cout = 4, 6
    w = rand(cin, cout // group, 3, 3)
    bn, bn_inits, _ = bn_node("c", "y", "bn", cout)
    conv = helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], name="deconv", group=group, strides=[2, 2],
                            pads=[1, 1, 1, 1], output_padding=[1, 1])
    model = make_model([conv, bn], [tensor_info("x", [1, cin, 5, 5])], [tensor_info("y", [1, cout, 10, 10])],
                       [init("w", w), init("b", rand(cout))] + bn_inits)
    prepared = prepare(model)
    assert ops(prepared) == ["ConvTranspose"]
    assert_same(model, prepared, {"x": rand(1, cin, 5, 5)})


@pytest.mark.parametrize("trans_b, c_shape, alpha, beta", [
    (0, None, 1.0, 1.0), (1, (3,), 0.5, 2.0), (0, (1, 3), 1.5, 0.7), (1, (), 2.0, 0.3), (0, (2, 3), 1.0, 0.0)])
def test_bn_folds_into_gemm(trans_b, c_shape, alpha, beta):
    w = rand(3, 5) if trans_b else rand(5, 3)
    inits = [init("w", w)]
    inputs = ["x", "w"]
    if c_shape is not None:
        inits.append(init("c0", rand(*c_shape)))
        inputs.append("c0")
    gemm = helper.make_node("Gemm", inputs, ["g"], name="fc", transB=trans_b, alpha=alpha, beta=beta)
    bn, bn_inits, _ = bn_node("g", "y", "bn", 3)
    model = make_model([gemm, bn], [tensor_info("x", [2, 5])], [tensor_info("y", [2, 3])], inits + bn_inits)
    prepared = prepare(model)
    assert ops(prepared) == ["Gemm"]
    assert_same(model, prepared, {"x": rand(2, 5)})


def test_bn_after_add_becomes_depthwise_conv():
    bn, bn_inits, (gamma, beta, mean, var) = bn_node("s", "y", "bn", 3)
    add = helper.make_node("Add", ["x", "x2"], ["s"])
    model = make_model([add, bn], [tensor_info("x", [1, 3, 5, 7]), tensor_info("x2", [1, 3, 5, 7])],
                       [tensor_info("y", [1, 3, 5, 7])], bn_inits)
    prepared = prepare(model)
    assert ops(prepared) == ["Add", "Conv"]
    conv = prepared.graph.node[1]
    assert conv.name == "bn" and list(conv.output) == ["y"]
    assert helper.get_attribute_value(next(a for a in conv.attribute if a.name == "group")) == 3
    factor = gamma / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(weights(prepared)[conv.input[1]].reshape(-1), factor, rtol=1e-6)
    assert_same(model, prepared, {"x": rand(1, 3, 5, 7), "x2": rand(1, 3, 5, 7)})


def test_bn_on_2d_input_becomes_mul_add():
    bn, bn_inits, _ = bn_node("x", "y", "bn", 4)
    model = make_model([bn], [tensor_info("x", [3, 4])], [tensor_info("y", [3, 4])], bn_inits)
    prepared = prepare(model)
    assert ops(prepared) == ["Mul", "Add"]
    assert_same(model, prepared, {"x": rand(3, 4)})


def test_bn_on_3d_input_becomes_mul_add():
    bn, bn_inits, _ = bn_node("x", "y", "bn", 4)
    model = make_model([bn], [tensor_info("x", [2, 4, 9])], [tensor_info("y", [2, 4, 9])], bn_inits)
    prepared = prepare(model)
    assert ops(prepared) == ["Mul", "Add"]
    assert_same(model, prepared, {"x": rand(2, 4, 9)})


def test_conv_with_second_consumer_is_not_folded():
    w = rand(4, 3, 3, 3)
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])
    bn, bn_inits, _ = bn_node("c", "y1", "bn", 4)
    relu = helper.make_node("Relu", ["c"], ["y2"])
    model = make_model([conv, bn, relu], [tensor_info("x", [1, 3, 6, 6])],
                       [tensor_info("y1", [1, 4, 6, 6]), tensor_info("y2", [1, 4, 6, 6])], [init("w", w)] + bn_inits)
    prepared = prepare(model)
    assert "BatchNormalization" not in ops(prepared)
    conv_node = next(n for n in prepared.graph.node if n.name == "conv")
    assert list(conv_node.output) == ["c"]  # not fused: the ReLU still reads the raw conv output
    np.testing.assert_array_equal(weights(prepared)[conv_node.input[1]], w)
    assert_same(model, prepared, {"x": rand(1, 3, 6, 6)})


def test_bn_opset15_training_mode_zero_folds():
    bn, bn_inits, _ = bn_node("c", "y", "bn", 2)
    bn.attribute.append(helper.make_attribute("training_mode", 0))
    conv = helper.make_node("Conv", ["x", "w"], ["c"])
    model = make_model([conv, bn], [tensor_info("x", [1, 2, 4, 4])], [tensor_info("y", [1, 2, 2, 2])],
                       [init("w", rand(2, 2, 3, 3))] + bn_inits, opset=15)
    prepared = prepare(model)
    assert ops(prepared) == ["Conv"]
    assert_same(model, prepared, {"x": rand(1, 2, 4, 4)})


def test_old_export_with_weights_as_inputs():
    w = rand(4, 3, 1, 1)
    bn, bn_inits, _ = bn_node("c", "y", "bn", 4)
    conv = helper.make_node("Conv", ["x", "w"], ["c"])
    inits = [init("w", w)] + bn_inits
    weight_inputs = [tensor_info(t.name, list(t.dims)) for t in inits]
    model = make_model([conv, bn], [tensor_info("x", [1, 3, 4, 4])] + weight_inputs, [tensor_info("y", [1, 4, 4, 4])],
                       inits)
    specs = input_specs(model, None)
    assert specs == [InputSpec("x", (1, 3, 4, 4))]
    prepared = prepare(model, specs)
    assert ops(prepared) == ["Conv"]
    assert [i.name for i in prepared.graph.input] == ["x"]
    assert_same(model, prepared, {"x": rand(1, 3, 4, 4)})


def test_verify_catches_a_wrong_fold(monkeypatch):
    original = fold_bn._bn_affine

    def wrong_eps(*args):
        factor, shift = original(*args)
        return factor * 1.01, shift

    monkeypatch.setattr(fold_bn, "_bn_affine", wrong_eps)
    bn, bn_inits, _ = bn_node("c", "y", "bn", 2)
    conv = helper.make_node("Conv", ["x", "w"], ["c"])
    model = make_model([conv, bn], [tensor_info("x", [1, 2, 4, 4])], [tensor_info("y", [1, 2, 2, 2])],
                       [init("w", rand(2, 2, 3, 3))] + bn_inits)
    with pytest.raises(QuantError, match="output 'y'"):
        prepare(model, name="m.onnx")
    assert ops(prepare(model, verify=False)) == ["Conv"]  # the broken fold happened; only verify noticed


# ---------------------------------------------------------------- constant folding

def shape_chain_model(opset):
    """What torch.onnx exports for `y.reshape(y.shape[0], -1)` after a conv, with a dynamic batch."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["y"], ["s"]),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
    ]
    if opset < 13:
        nodes.append(helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]))
    else:
        nodes.append(helper.make_node("Constant", [], ["axes"], value_ints=[0]))
        nodes.append(helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]))
    nodes += [
        helper.make_node("Constant", [], ["minus1"], value=numpy_helper.from_array(np.array([-1], np.int64))),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["y", "shape"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["out"]),
    ]
    return make_model(nodes, [tensor_info("x", ["N", 3, 6, 6])], [tensor_info("out", ["N", 144])],
                      [init("w", rand(4, 3, 3, 3))], opset=opset)


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_shape_chain_folds_with_static_dims(opset):
    model = shape_chain_model(opset)
    specs = input_specs(model, None)
    assert specs == [InputSpec("x", (1, 3, 6, 6))]
    prepared = prepare(model, specs)
    assert ops(prepared) == ["Conv", "Reshape", "Relu"]
    shape_input = prepared.graph.node[1].input[1]
    np.testing.assert_array_equal(weights(prepared)[shape_input], [1, -1])
    assert_same(model, prepared, {"x": rand(1, 3, 6, 6)})


def test_shape_chain_kept_when_dims_stay_dynamic():
    model = shape_chain_model(13)
    prepared = prepare(model)  # convert's path: the int8 model must still run at any batch
    assert "Shape" in ops(prepared) and "Constant" not in ops(prepared)
    assert_same(model, prepared, {"x": rand(3, 3, 6, 6)})


def test_constant_of_shape_and_expand_fold_but_not_when_huge():
    nodes = [
        helper.make_node("Constant", [], ["dims"], value_ints=[1, 4]),
        helper.make_node("ConstantOfShape", ["dims"], ["ones"],
                         value=numpy_helper.from_array(np.array([2.0], np.float32))),
        helper.make_node("Mul", ["x", "ones"], ["y"]),
        helper.make_node("Constant", [], ["big"], value_ints=[2000, 2500]),
        helper.make_node("ConstantOfShape", ["big"], ["zeros"]),
        helper.make_node("Add", ["zeros", "x0"], ["z"]),
    ]
    model = make_model(nodes, [tensor_info("x", [1, 4]), tensor_info("x0", [1, 1])],
                       [tensor_info("y", [1, 4]), tensor_info("z", [2000, 2500])])
    prepared = prepare(model)
    assert ops(prepared) == ["Mul", "ConstantOfShape", "Add"]  # 5M elements stay a node
    np.testing.assert_array_equal(weights(prepared)[prepared.graph.node[0].input[1]], np.full((1, 4), 2.0))
    assert_same(model, prepared, {"x": rand(1, 4), "x0": rand(1, 1)})


def test_random_ops_are_not_folded():
    nodes = [helper.make_node("RandomUniform", [], ["r"], shape=[1, 3], seed=1.0),
             helper.make_node("Add", ["x", "r"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [1, 3])], [tensor_info("y", [1, 3])])
    assert ops(prepare(model, verify=False)) == ["RandomUniform", "Add"]


# ---------------------------------------------------------------- input shapes

def dynamic_model():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    return make_model([conv], [tensor_info("x", ["N", 3, "H", "W"])], [tensor_info("y", ["N", 2, "H", "W"])],
                      [init("w", rand(2, 3, 3, 3))])


def test_dynamic_dims_fixed_by_shape():
    model = dynamic_model()
    specs = input_specs(model, {None: (3, 16, 20)})
    assert specs == [InputSpec("x", (1, 3, 16, 20))]
    assert input_specs(model, {"x": (3, 8, 8)}) == [InputSpec("x", (1, 3, 8, 8))]
    prepared = prepare(model, specs)
    dims = [d.dim_value for d in prepared.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 16, 20]
    assert_same(model, prepared, {"x": rand(1, 3, 16, 20)})


def test_shape_errors():
    model = dynamic_model()
    with pytest.raises(QuantError, match=r"input 'x' has dynamic dims \['N', 3, 'H', 'W'\]; pass --shape"):
        input_specs(model, None)
    with pytest.raises(QuantError, match="contradicts input 'x'"):
        input_specs(model, {None: (4, 16, 20)})
    with pytest.raises(QuantError, match="no input 'image'"):
        input_specs(model, {"image": (3, 16, 20)})


def test_shape_applies_to_named_non_4d_input():
    model = make_model([helper.make_node("Relu", ["t"], ["u"])], [tensor_info("t", ["B", "L"])],
                       [tensor_info("u", ["B", "L"])])
    assert input_specs(model, {"t": (7,)}) == [InputSpec("t", (1, 7))]
    with pytest.raises(QuantError, match="--shape"):
        input_specs(model, {None: (3, 4, 5)})  # the plain --shape is for 4-D inputs only


# ---------------------------------------------------------------- Identity / Dropout

def test_identity_and_dropout_removed_and_output_names_kept():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="conv"),
        helper.make_node("Identity", ["a"], ["b"]),
        helper.make_node("Dropout", ["b"], ["c"]),
        helper.make_node("Relu", ["c"], ["d"], name="relu"),
        helper.make_node("Identity", ["d"], ["out"]),
        helper.make_node("Identity", ["x"], ["x_copy"]),  # graph input straight to graph output: must stay
    ]
    model = make_model(nodes, [tensor_info("x", [1, 2, 4, 4])],
                       [tensor_info("out", [1, 3, 4, 4]), tensor_info("x_copy", [1, 2, 4, 4])],
                       [init("w", rand(3, 2, 1, 1))])
    prepared = prepare(model)
    assert sorted(ops(prepared)) == ["Conv", "Identity", "Relu"]
    relu = next(n for n in prepared.graph.node if n.name == "relu")
    assert list(relu.output) == ["out"] and list(relu.input) == ["a"]
    assert_same(model, prepared, {"x": rand(1, 2, 4, 4)})


def test_dropout_with_used_mask_is_kept():
    nodes = [helper.make_node("Dropout", ["x"], ["y", "mask"]), helper.make_node("Cast", ["mask"], ["m"], to=1)]
    model = make_model(nodes, [tensor_info("x", [2, 3])], [tensor_info("y", [2, 3]), tensor_info("m", [2, 3])])
    prepared = prepare(model)
    assert ops(prepared) == ["Dropout", "Cast"]
    assert_same(model, prepared, {"x": rand(2, 3)})


# ---------------------------------------------------------------- pass-through and names

def test_rare_ops_pass_through():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Celu", ["c"], ["d"], alpha=0.7),
             helper.make_node("Mish", ["d"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [1, 2, 4, 4])], [tensor_info("y", [1, 2, 4, 4])],
                       [init("w", rand(2, 2, 1, 1))], opset=18)
    prepared = prepare(model)
    assert ops(prepared) == ["Conv", "Celu", "Mish"]
    assert helper.get_attribute_value(prepared.graph.node[1].attribute[0]) == pytest.approx(0.7)
    assert_same(model, prepared, {"x": rand(1, 2, 4, 4)})


def test_custom_domain_op_passes_through(capsys):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Frob", ["r"], ["y"], domain="my.ops")]
    graph = helper.make_graph(nodes, "g", [tensor_info("x", [2])], [tensor_info("y", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("my.ops", 1)],
                              ir_version=8)
    prepared = prepare(model)  # onnxruntime cannot run it: a warning, not an error
    assert [(n.op_type, n.domain) for n in prepared.graph.node] == [("Relu", ""), ("Frob", "my.ops")]
    assert "not verified" in capsys.readouterr().err


def test_unnamed_nodes_get_stable_names_in_both_preparations():
    model = shape_chain_model(13)
    static = prepare(model, input_specs(model, None))
    dynamic = prepare(model)
    static_names = {n.name for n in static.graph.node}
    dynamic_names = {n.name for n in dynamic.graph.node}
    assert all(static_names) and len(static_names) == len(static.graph.node)
    assert static_names <= dynamic_names  # position in the original graph, not in the prepared one
    # original order: Conv 0, Shape 1, Constant 2, Gather 3, Constant 4, Unsqueeze 5, Constant 6, Concat 7, ...
    assert static_names == {"Conv_0", "Reshape_8", "Relu_9"}


def test_prepare_does_not_touch_its_input():
    model = shape_chain_model(13)
    before = model.SerializeToString()
    prepare(model, input_specs(model, None))
    assert model.SerializeToString() == before


# ---------------------------------------------------------------- loading

def small_model():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    return make_model([conv], [tensor_info("x", [1, 2, 4, 4])], [tensor_info("y", [1, 3, 4, 4])],
                      [init("w", rand(3, 2, 1, 1))])


def test_load_errors(tmp_path):
    with pytest.raises(QuantError, match="not found"):
        load_model(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01" * 10)
    with pytest.raises(QuantError, match="garbage.onnx"):
        load_model(garbage)
    bad = small_model()
    bad.graph.node.append(helper.make_node("Cast", ["y"], ["z"], name="cast_without_to"))
    path = tmp_path / "bad.onnx"
    onnx.save(bad, path)
    with pytest.raises(QuantError, match="cast_without_to"):
        load_model(path)


def save_external(model, folder):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    model = onnx.ModelProto.FromString(model.SerializeToString())  # onnx.save moves the data out of the proto
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.bin",
              size_threshold=0)
    return path


def set_location(path, location):
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, path)


def test_external_data_loads_and_escapes_are_refused(tmp_path):
    model = small_model()
    path = save_external(model, tmp_path / "ok")
    before = model_hash(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(weights(loaded)["w"], weights(model)["w"])
    # every byte the model reads: the model file, then each external file by location and contents
    data = (path.parent / "m.bin").read_bytes()
    expected = hashlib.sha256(path.read_bytes() + b"\0external data\0m.bin\0" + data).hexdigest()
    assert model_hash(path) == before == expected

    outside = save_external(model, tmp_path / "up" / "inner")
    os.replace(outside.parent / "m.bin", tmp_path / "up" / "x.bin")
    set_location(outside, "../x.bin")
    with pytest.raises(QuantError, match=r"'\.\./x\.bin'"):
        load_model(outside)
    set_location(outside, str(tmp_path / "up" / "x.bin"))
    with pytest.raises(QuantError, match="not a plain relative path"):
        load_model(outside)
    (outside.parent / "link.bin").symlink_to(tmp_path / "up" / "x.bin")
    set_location(outside, "link.bin")
    with pytest.raises(QuantError, match="outside the model's folder"):
        load_model(outside)
    set_location(outside, "gone.bin")
    with pytest.raises(QuantError, match="gone.bin.*not found"):
        load_model(outside)


def test_new_ir_version_is_lowered_for_onnxruntime(tmp_path):
    model = small_model()
    model.ir_version = onnx.IR_VERSION
    path = tmp_path / "new_ir.onnx"
    onnx.save(model, path)
    loaded = load_model(path)
    assert loaded.ir_version <= 10
    x = rand(1, 2, 4, 4)
    expected = np.einsum("oc,nchw->nohw", weights(model)["w"][:, :, 0, 0], x)
    np.testing.assert_allclose(run(loaded, {"x": x})[0], expected, rtol=1e-5, atol=1e-6)
    assert onnx.load(path).ir_version == onnx.IR_VERSION  # the file itself is untouched


def test_if_subgraph_reading_outer_tensors_survives():
    """A BN whose conv output is also read inside an If branch must not fold, and nothing the branch reads
    from the outer graph may be dropped or reordered after the If."""
    then_graph = helper.make_graph([helper.make_node("Add", ["c", "one"], ["t"])], "then", [],
                                   [tensor_info("t", [1, 2, 3, 3])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["c"], ["e"])], "else", [],
                                   [tensor_info("e", [1, 2, 3, 3])])
    bn, bn_inits, _ = bn_node("c", "y", "bn", 2)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn,
             helper.make_node("If", ["flag"], ["z"], then_branch=then_graph, else_branch=else_graph)]
    model = make_model(nodes, [tensor_info("x", [1, 2, 3, 3]), tensor_info("flag", [], TensorProto.BOOL)],
                       [tensor_info("y", [1, 2, 3, 3]), tensor_info("z", [1, 2, 3, 3])],
                       [init("w", rand(2, 2, 1, 1)), init("one", np.ones(1, np.float32))] + bn_inits)
    prepared = prepare(model)
    conv = next(n for n in prepared.graph.node if n.name == "conv")
    assert list(conv.output) == ["c"] and "one" in weights(prepared)
    for flag in (True, False):
        assert_same(model, prepared, {"x": rand(1, 2, 3, 3), "flag": np.array(flag)})


def test_ir3_model_with_weights_as_inputs():
    """PyTorch 0.4-era export: IR 3, opset 8, every weight also a graph input, no node names."""
    bn, bn_inits, _ = bn_node("c", "y", "bn", 3)
    bn.name = ""
    conv = helper.make_node("Conv", ["x", "w"], ["c"])
    inits = [init("w", rand(3, 2, 3, 3))] + bn_inits
    graph = helper.make_graph([conv, bn], "old", [tensor_info("x", [1, 2, 5, 5])] +
                              [tensor_info(t.name, list(t.dims)) for t in inits],
                              [tensor_info("y", [1, 3, 3, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    onnx.checker.check_model(model)
    prepared = prepare(model)
    assert ops(prepared) == ["Conv"] and prepared.graph.node[0].name == "Conv_0"
    assert_same(model, prepared, {"x": rand(1, 2, 5, 5)})


def test_dequantize_of_constant_weights_is_not_folded():
    w = RNG.integers(-127, 128, (3, 2, 1, 1)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
             helper.make_node("Conv", ["x", "w"], ["y"])]
    model = make_model(nodes, [tensor_info("x", [1, 2, 3, 3])], [tensor_info("y", [1, 3, 3, 3])],
                       [init("wq", w), init("ws", np.float32(0.02)), init("wz", np.int8(0))])
    prepared = prepare(model)
    assert ops(prepared) == ["DequantizeLinear", "Conv"]
    x = rand(1, 2, 3, 3)
    expected = np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float32) * 0.02, x)
    np.testing.assert_allclose(run(prepared, {"x": x})[0], expected, rtol=1e-5, atol=1e-6)


def test_dynamic_preparation_keeps_declared_output_types_exactly():
    """Shape inference names anonymous dims ('unk__6'); the int8 model must declare its outputs as the fp32
    model did, so the prepared graph (what convert rewrites) keeps the original output ValueInfo."""
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, None, None])
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])], [out])
    prepared = prepare(model, None)
    assert prepared.graph.output[0] == model.graph.output[0]


def test_static_dims_picked_from_a_dynamic_shape_fold_without_shape_option():
    """x is [N, 4, 6]: Shape(x)[2] is 6 whatever N is, so Gather/Slice of it fold even when dims stay dynamic
    (a transformer's 1/sqrt(head_dim)); Shape(x)[0] stays, since N is unknown."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "two"], ["d"], axis=0),
        helper.make_node("Cast", ["d"], ["df"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["df"], ["r"]),
        helper.make_node("Div", ["x", "r"], ["y"]),
        helper.make_node("Slice", ["s", "one", "three"], ["last2"]),
        helper.make_node("Concat", ["minus1", "last2"], ["shape"], axis=0),
        helper.make_node("Reshape", ["y", "shape"], ["z"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
    ]
    model = make_model(nodes, [tensor_info("x", ["N", 4, 6])],
                       [tensor_info("z", ["N", 4, 6]), helper.make_tensor_value_info("n", TensorProto.INT64, [])],
                       [init("two", np.array(2, np.int64)), init("zero", np.array(0, np.int64)),
                        init("one", np.array([1], np.int64)), init("three", np.array([3], np.int64)),
                        init("minus1", np.array([-1], np.int64))])
    prepared = prepare(model, None)
    ops = [n.op_type for n in prepared.graph.node]
    assert "Sqrt" not in ops and "Slice" not in ops and "Reshape" in ops
    assert ops.count("Gather") == 1 and "Shape" in ops  # Shape(x)[0] is the dynamic batch: kept
    x = np.random.default_rng(0).normal(size=(3, 4, 6)).astype(np.float32)
    for want, got in zip(run(model, {"x": x}), run(prepared, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-6)
