"""The shipped recipes parse and run end to end (on the tiny_yolo fixture, random feeds), and
bring a task gate that never hands back a model that lost its detections."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from graphslim.contract import PassContext
from graphslim.feeds import random_feeds
from graphslim.pipeline import Pipeline
from graphslim.runtime import run_model

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load_model(ROOT / "fixtures" / "tiny_yolo.onnx")


def test_recipes_are_shipped():
    assert {p.stem for p in RECIPES} >= {"edge-cpu", "edge-tensorrt"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_end_to_end(path, model):
    pipe = Pipeline.from_toml(path)
    calib = random_feeds(model, 8, seed=1)
    evals = random_feeds(model, 2, seed=2)
    # gate=False: the passes themselves, each kept (the recipe's gate has its own test)
    res = pipe.run(model, ctx=PassContext(seed=0, feeds=calib), feeds=evals, gate=False)
    names = [r.name for r in res.records]
    assert names == [p.name for p in pipe.passes]
    onnx.checker.check_model(res.model)
    want = [{k: v.shape for k, v in o.items()} for o in run_model(model, evals)]
    assert [{k: v.shape for k, v in o.items()} for o in run_model(res.model, evals)] == want
    assert res.validation is not None  # the final comparison on --feeds ran
    ops = {n.op_type for n in res.model.graph.node}
    quant = res.records[names.index("quantize-int8")]
    if quant.modified:
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    else:  # the latency guard measured INT8 no faster on this machine: said, with figures
        assert any("INT8 is not faster than FP32 here" in n for n in quant.notes), quant.notes
    prune = res.records[names.index("prune-channels")]
    assert prune.modified and prune.counters["macs_estimate_ratio"] < 1
    if "latency" in str(prune.options.get("budget")):
        assert prune.counters["budget_checks"] >= 1 and prune.counters["budget_measured"] > 0
    if "finetune" in names:
        ft = res.records[names.index("finetune")]
        # torch is installed for the tests: it trains (and keeps epoch 0 if nothing beat it)
        assert ft.counters["epochs_run"] == 5


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipes_carry_a_rollback_task_gate(path):
    from graphslim.tasks import GateSpec

    assert Pipeline.from_toml(path).gate == GateSpec(task="auto", minimum=0.5, on_fail="rollback")


def test_recipe_gate_keeps_only_stages_that_keep_the_detections(model):
    """edge-tensorrt with its own gate (no gate argument): every measured stage below half
    the original's map50 is rolled back, every other one kept, and the verdict passes."""
    pipe = Pipeline.from_toml(ROOT / "recipes" / "edge-tensorrt.toml")
    calib = random_feeds(model, 8, seed=1)
    evals = random_feeds(model, 2, seed=2)
    res = pipe.run(model, ctx=PassContext(seed=0, feeds=calib), feeds=evals)
    assert res.gate is not None and res.gate.passed is True
    assert res.task["task"] == "detect" and res.task["details"]["original_detections"] > 0
    measured = [(k, r) for k, r in enumerate(res.records, 1) if r.task]
    assert measured
    for _, r in measured:
        assert (r.task["metrics"]["map50"] < 0.5) == r.rolled_back, r.name
    assert res.gate.rolled_back == [f"{k}:{r.name}" for k, r in measured if r.rolled_back]
    assert res.task["metrics"]["map50"] >= 0.5
