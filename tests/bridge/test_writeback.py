"""Write-back: trained values land in the same graph; nothing else changes by a byte."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from bridge_helpers import fixture_model
from onnx import numpy_helper

from graphslim.bridge import BridgeError
from graphslim.bridge.interpreter import parity_check, to_module
from graphslim.bridge.writeback import save_trained, trained_values, write_back
from graphslim.feeds import random_feeds


def _without_payloads(model: onnx.ModelProto, names: set[str]) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in copy.graph.initializer:
        if t.name in names:
            t.ClearField("raw_data")
            del t.float_data[:]
    return copy.SerializeToString()


@pytest.mark.parametrize("name", ["tiny_yolo", "unfused_bn", "flatten_gemm", "shared_initializer"])
def test_write_back_changes_only_initializer_values(name, tmp_path):
    model = fixture_model(name)
    module = to_module(model)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.5).add_(0.25)
    out = save_trained(model, module, tmp_path / "trained.onnx")
    again = onnx.load_model(tmp_path / "trained.onnx")
    params = set(module.param_names)
    assert params
    # every byte outside the trained initializers' payloads is the same
    assert _without_payloads(again, params) == _without_payloads(model, params)
    assert _without_payloads(out, params) == _without_payloads(model, params)
    before = {t.name: t for t in model.graph.initializer}
    for t in again.graph.initializer:
        if t.name in params:
            want = module.parameter_for(t.name).detach().numpy()
            assert np.array_equal(numpy_helper.to_array(t), want)
        else:  # buffers and non-float initializers: untouched
            assert t.SerializeToString() == before[t.name].SerializeToString()
    # the written graph is exactly what the trained module computes
    parity_check(again, module, random_feeds(again, 1))


def test_write_back_refuses_a_changed_graph():
    model = fixture_model("unfused_bn")
    values = trained_values(to_module(model))
    name = next(iter(values))
    values[name] = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(BridgeError, match="student graph changed"):
        write_back(model, values)
    with pytest.raises(BridgeError, match="not an initializer"):
        write_back(model, {"nope": np.zeros(1, np.float32)})


def test_recalibrated_batchnorm_statistics_are_written_back(tmp_path):
    model = fixture_model("unfused_bn")
    module = to_module(model)
    x = torch.from_numpy(np.concatenate([f["images"] for f in random_feeds(model, 4, seed=2)]))
    updated = module.recalibrate_batchnorm([x[:2], x[2:]])
    bn = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert set(updated) == {n.input[k] for n in bn for k in (3, 4)}
    # the first BN's new mean is the per-channel mean of its input over all samples
    first = bn[0]
    with torch.no_grad():
        env = to_module(model).run(x, keep_all=True)
    want = env[first.input[0]].mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(
        module.parameter_for(first.input[3]).numpy(), want, rtol=1e-4, atol=1e-5
    )
    out = save_trained(model, module, tmp_path / "recal.onnx")
    changed = set(module.param_names) | set(updated)
    assert _without_payloads(out, changed) == _without_payloads(model, changed)
    parity_check(out, module, random_feeds(out, 1))
