"""First export: torch module -> ONNX, checked against torch; and the bridge back."""

from __future__ import annotations

import sys

import pytest
import torch

from graphslim.bridge import BridgeError, TorchMissing
from graphslim.bridge.export import export_module, export_ultralytics
from graphslim.bridge.interpreter import parity_check, to_module
from graphslim.feeds import input_specs, random_feeds
from graphslim.model_io import load_model


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.Hardswish(),
        torch.nn.Upsample(scale_factor=2, mode="nearest"),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
        torch.nn.Softmax(dim=1),
    )


@pytest.mark.parametrize("opset", [13, 17])
def test_export_module_matches_torch_and_has_a_dynamic_batch(tmp_path, opset):
    result = export_module(_net(), torch.rand(1, 3, 16, 16), tmp_path / "m.onnx", opset=opset)
    assert result.max_rel["output"] <= 1e-4
    model = load_model(result.path)
    assert model.opset_import[0].version == opset
    assert input_specs(model)[0].shape == ("batch", 3, 16, 16)
    # and back: the export runs in the torch bridge too
    parity_check(model, to_module(model), random_feeds(model, 2))


def test_export_static_shapes_and_names(tmp_path):
    result = export_module(
        _net(),
        torch.rand(2, 3, 8, 8),
        tmp_path / "m.onnx",
        input_names=["images"],
        output_names=["scores"],
        dynamic_batch=False,
    )
    model = load_model(result.path)
    assert input_specs(model)[0].shape == (2, 3, 8, 8)
    assert [o.name for o in model.graph.output] == ["scores"]


def test_export_into_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(BridgeError, match="does not exist"):
        export_module(_net(), torch.rand(1, 3, 8, 8), tmp_path / "no" / "m.onnx")


def test_ultralytics_source_must_be_pt_or_yaml(tmp_path):
    with pytest.raises(BridgeError, match=r"\.pt checkpoint or \.yaml"):
        export_ultralytics(tmp_path / "model.bin", tmp_path / "m.onnx")
    with pytest.raises(BridgeError, match="never downloaded"):
        export_ultralytics(tmp_path / "yolov8n.pt", tmp_path / "m.onnx")


def test_ultralytics_missing_says_how_to_install(tmp_path, monkeypatch):
    # CI has no ultralytics; the export itself was checked by hand (bench/README.md)
    monkeypatch.setitem(sys.modules, "ultralytics", None)
    with pytest.raises(TorchMissing, match=r"onnx-graphslim\[yolo\]"):
        export_ultralytics("yolov8n.yaml", tmp_path / "m.onnx")
