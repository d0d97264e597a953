"""prune-channels{budget=...}: greedy per-group ratios from measured sensitivity."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from graphslim.contract import PassContext
from graphslim.errors import OptionsError
from graphslim.feeds import random_feeds
from graphslim.runtime import run_model
from passes import _prune_budget
from passes._prune_budget import parse_budget
from passes.prune_channels import PruneChannels

TINY_YOLO = Path(__file__).resolve().parents[1] / "fixtures" / "tiny_yolo.onnx"


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load_model(TINY_YOLO)


@pytest.fixture(scope="module")
def ctx() -> PassContext:
    """One context for the module: the sensitivity is measured once and cached."""
    return PassContext(seed=0)


def copy(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def test_parse_budget():
    assert parse_budget("latency=0.5") == ("latency", 0.5)
    assert parse_budget("macs:0.4") == ("macs", 0.4)
    for bad in ("speed=0.5", "latency=2", "latency"):
        with pytest.raises(ValueError):
            parse_budget(bad)


@pytest.mark.parametrize(
    "opts",
    [{"budget": "fast"}, {"budget": "macs=0.5", "target_macs": 0.5}, {"budget_ratios": (1.2,)}],
)
def test_bad_options_refused(opts):
    with pytest.raises(OptionsError):
        PruneChannels(**opts)


def test_macs_budget_met_and_model_runs(model, ctx):
    r = PruneChannels(budget="macs=0.5", budget_ratios=(0.5, 0.75), round_to=1)(copy(model), ctx)
    c = r.counters
    assert r.modified and c["budget_reached"] == 1
    assert c["macs_estimate_ratio"] <= 0.5 + 1e-9
    assert c["budget_predicted"] == pytest.approx(c["macs_estimate_ratio"], abs=1e-3)
    feeds = random_feeds(model, count=1, seed=1)
    (got,) = run_model(r.model, feeds)
    (ref,) = run_model(model, feeds)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}


def test_greedy_prunes_insensitive_groups_first(model, ctx):
    """Each group takes the largest ratio whose error is within the threshold (AIMET's rule):
    the counts per ratio the pass reports follow from the curves and the threshold."""
    opts = dict(budget="macs=0.7", budget_ratios=(0.5, 0.75), round_to=1)
    r = PruneChannels(**opts)(copy(model), ctx)
    sens = _prune_budget.sensitivity(model, ctx, PruneChannels(**opts).options)
    t = r.counters["budget_error_threshold"]
    chosen = [max([0.0] + [x for x in sens.ratios if g.error(x) <= t]) for g in sens.groups]
    for x in sens.ratios:
        assert r.counters[f"budget_groups_at_{x:g}"] == chosen.count(x)
    assert 0 < chosen.count(0.0) < len(chosen)  # the most sensitive groups are spared
    # A looser budget never uses a higher error threshold.
    loose = PruneChannels(**(opts | {"budget": "macs=0.9"}))(copy(model), ctx)
    assert loose.counters["budget_error_threshold"] <= t
    assert loose.counters["macs_estimate_ratio"] >= r.counters["macs_estimate_ratio"]


def test_sensitivity_cached_in_ctx(model, monkeypatch):
    calls = []
    real = _prune_budget.measure
    monkeypatch.setattr(_prune_budget, "measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    ctx = PassContext(seed=0)
    opts = dict(budget="macs=0.6", budget_ratios=(0.5,), round_to=1)
    PruneChannels(**opts)(copy(model), ctx)
    PruneChannels(**(opts | {"budget": "macs=0.8"}))(copy(model), ctx)
    assert len(calls) == 1


def test_latency_budget_reports_prediction(model, ctx):
    r = PruneChannels(budget="latency=0.95", budget_ratios=(0.5, 0.75), round_to=1)(
        copy(model), ctx
    )
    c = r.counters
    assert c["budget_base_ms"] > 0 and c["budget_target"] == 0.95
    if c["budget_reached"]:
        assert c["budget_predicted"] <= 0.95


def test_pipeline_inline_budget(model):
    from graphslim.pipeline import Pipeline

    pipe = Pipeline.parse("prune-channels{budget=macs=0.6,budget_ratios=[0.5],round_to=1}")
    assert pipe.passes[0].options.budget == "macs=0.6"
    res = pipe.run(model, validate=False)
    assert res.records[0].counters["macs_estimate_ratio"] <= 0.6 + 1e-9
