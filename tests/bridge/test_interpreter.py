"""ONNX -> torch interpreter: parity with onnxruntime, the parameter name map, refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from bridge_helpers import FIXTURES, fixture_model
from onnx import helper, numpy_helper

from graphslim import zoo
from graphslim.bridge import BridgeError
from graphslim.bridge.interpreter import OnnxModule, parity_check, to_module
from graphslim.feeds import random_feeds
from graphslim.model_io import load_model

FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.onnx"))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_parity_on_fixture(name):
    model = fixture_model(name)
    c = parity_check(model, to_module(model), random_feeds(model, 2, seed=0))
    assert c.passed and c.outputs
    assert all(o.stats["max-rel"] <= 1e-4 or o.stats["max-abs"] <= 1e-6 for o in c.outputs)


@pytest.mark.zoo
@pytest.mark.parametrize("model_id", ["yolox-det", "pplcnet-cls", "yolov8n-640", "resnet18-224"])
def test_parity_on_zoo_model(model_id):
    model = load_model(zoo.fetch(model_id))
    module = to_module(model)
    c = parity_check(model, module, random_feeds(model, 1, seed=0))
    assert c.passed
    assert len(module.param_names) > 40


def test_every_weight_initializer_is_a_parameter_named_after_it():
    model = fixture_model("unfused_bn")
    module = to_module(model)
    state = dict(module.named_parameters())
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert set(module.param_names) <= floats
    assert len(state) == len(module.param_names)
    for init in model.graph.initializer:
        attr = module.name_map[init.name]
        value = getattr(module, attr)
        assert np.array_equal(value.detach().numpy(), numpy_helper.to_array(init))
        if init.name in module.param_names:
            assert attr in state
    # BatchNorm running statistics stay buffers: training never changes them
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    assert bn.input[1] in module.param_names and bn.input[3] not in module.param_names


def _two_conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(
        rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv1.weight"
    )
    w2 = numpy_helper.from_array(
        rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "conv2.weight"
    )
    nodes = [
        helper.make_node("Conv", ["x", "conv1.weight"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Conv", ["b", "conv2.weight"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 8, 8])],
        [w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_parity_failure_names_the_first_diverging_node():
    model = _two_conv_model()
    module = to_module(model)
    with torch.no_grad():
        module.parameter_for("conv1.weight").add_(0.5)  # torch now disagrees from conv1 on
    with pytest.raises(BridgeError, match=r"first diverging node: 'conv1' \(Conv\)"):
        parity_check(model, module, random_feeds(model, 1))


def test_quantized_model_is_refused():
    model = _two_conv_model()
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q")
    model.graph.node.insert(0, q)
    with pytest.raises(BridgeError, match="quantized.*fine-tune the float model"):
        OnnxModule(model)


def test_unsupported_op_is_named():
    model = _two_conv_model()
    model.graph.node[1].op_type = "Celu"
    with pytest.raises(BridgeError, match=r"'relu' \(Celu\): op not supported"):
        OnnxModule(model)


def test_gradients_reach_every_parameter():
    model = fixture_model("se_block")
    module = to_module(model)
    x = torch.from_numpy(random_feeds(model, 1)[0][module.input_names[0]])
    sum(o.sum() for o in module(x)).backward()
    assert all(p.grad is not None for p in module.parameters())
