"""Tests for graphslim.bench: models are timed alternately on one feed and reported with
medians and ratios. No test compares wall-clock times between models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphslim.bench import bench
from graphslim.errors import RuntimeFailure
from graphslim.feeds import random_feeds
from graphslim.runtime import Session

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def tiny_model() -> onnx.ModelProto:
    """Same input as tiny_yolo (images [1,3,64,64]); one ReduceMean."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0)],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def models():
    big = onnx.load_model(FIXTURES / "tiny_yolo.onnx")
    return [("tiny", tiny_model()), ("tiny_yolo", big)]


@pytest.fixture(scope="module")
def feed(models):
    return random_feeds(models[1][1], count=1, seed=0)[0]


def test_two_models_alternate(models, feed, monkeypatch):
    calls = []
    real_run = Session.run

    def spy(self, f, output_names=None):
        calls.append(self.label)
        return real_run(self, f, output_names)

    monkeypatch.setattr(Session, "run", spy)
    rounds = []
    timings = bench(
        models, feed, warmup=2, runs=4, threads=1, progress=lambda d, n: rounds.append((d, n))
    )
    # warm-up per model, then A B A B ... so drift hits both alike
    assert calls == ["tiny"] * 2 + ["tiny_yolo"] * 2 + ["tiny", "tiny_yolo"] * 4
    assert rounds == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [t.label for t in timings] == ["tiny", "tiny_yolo"]


def test_timings_report_runs_medians_and_ratio(models, feed):
    timings = bench(models, feed, warmup=1, runs=3, threads=1)
    for t in timings:
        assert t.runs == 3 and t.threads == 1
        assert t.median_ms > 0 and t.min_ms > 0
        assert t.min_ms <= t.median_ms <= t.p90_ms
        assert t.min_ms <= t.mean_ms
        assert t.ratio is not None and t.ratio > 0
    assert timings[0].ratio == 1.0
    assert timings[1].ratio == pytest.approx(timings[1].median_ms / timings[0].median_ms)
    json.dumps([t.to_dict() for t in timings])


def test_a_single_model(models, feed):
    (t,) = bench(models[1:], feed, warmup=0, runs=2)
    assert t.runs == 2 and t.ratio == 1.0 and t.threads >= 1


def test_extra_feed_entries_are_dropped_per_model(models, feed):
    # Each model gets only the inputs it has.
    extra = dict(feed, unused=np.zeros(3, np.float32))
    timings = bench(models, extra, warmup=0, runs=1, threads=1)
    assert len(timings) == 2


def test_a_model_that_cannot_run_is_a_runtime_failure(models):
    wrong = {"images": np.zeros((1, 3, 32, 32), np.float32)}
    with pytest.raises(
        RuntimeFailure,
        match=r"^onnxruntime failed to run tiny: Got invalid dimensions for input: images for the following indices; index: 2 Got: 32 Expected: 64; index: 3",
    ):
        bench(models, wrong, warmup=1, runs=1)


def _spinning(session: Session) -> str:
    opts = session.session.get_session_options()
    try:
        return opts.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: onnxruntime's default, spinning on
        return "default"


def test_side_by_side_sessions_do_not_spin(models, feed, monkeypatch):
    # Idle sessions' spinning threads would take the cores of the one being timed.
    seen = []
    real_init = Session.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append(_spinning(self))

    monkeypatch.setattr(Session, "__init__", spy)
    bench(models, feed, warmup=1, runs=1)
    assert seen == ["0", "0"]
    seen.clear()
    bench(models[:1], feed, warmup=1, runs=1)  # alone: onnxruntime's default
    assert seen == ["default"]


def test_runtime_is_recorded_and_checked_before_any_session(models, feed, monkeypatch):
    timings = bench(models[:1], feed, warmup=0, runs=1)
    assert timings[0].runtime == "ort" and timings[0].to_dict()["runtime"] == "ort"
    opened = []
    monkeypatch.setattr(Session, "__init__", lambda self, *a, **k: opened.append(1))
    from graphslim.errors import OptionsError

    with pytest.raises(OptionsError, match="runtime 'onnx': use one of ort, openvino"):
        bench([(*models[0], "ort"), (*models[1], "onnx")], feed, runs=1)
    assert opened == []  # refused up front, not after building the first sessions
