"""Helpers of the torch-bridge tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from graphslim import Pipeline
from graphslim.feeds import random_feeds

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def fixture_model(name: str) -> onnx.ModelProto:
    return onnx.load_model(FIXTURES / f"{name}.onnx")


def stacked_feeds(model: onnx.ModelProto, count: int, seed: int = 0) -> np.ndarray:
    feeds = random_feeds(model, count, seed=seed)
    name = next(iter(feeds[0]))
    return np.concatenate([f[name] for f in feeds])


def tiny_yolo_pair() -> tuple[onnx.ModelProto, onnx.ModelProto, np.ndarray]:
    """(teacher, student pruned at ratio 0.5, 24 seeded random inputs)."""
    teacher = fixture_model("tiny_yolo")
    student = Pipeline.parse("prune-channels{ratio=0.5}").run(teacher).model
    return teacher, student, stacked_feeds(teacher, 24, seed=1)
