"""The `finetune` pipeline step: distils from the pipeline's input on the --calib feeds."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
from bridge_helpers import fixture_model
from onnx import numpy_helper

from graphslim import Pipeline
from graphslim.bridge import TorchMissing
from graphslim.contract import PassContext
from graphslim.errors import OptionsError
from graphslim.feeds import random_feeds
from graphslim.passes.finetune import Finetune
from graphslim.runtime import run_model


def _mse(a: dict, b: dict) -> float:
    return float(np.mean([np.mean((a[k] - b[k]) ** 2) for k in a]))


def test_prune_then_finetune_in_one_pipeline_moves_toward_the_teacher():
    teacher = fixture_model("tiny_yolo")
    calib = random_feeds(teacher, 24, seed=1)
    held_out = random_feeds(teacher, 4, seed=7)
    pruned = Pipeline.parse("prune-channels{ratio=0.5}").run(
        teacher, ctx=PassContext(feeds=calib), validate=False
    )
    res = Pipeline.parse(
        "prune-channels{ratio=0.5},finetune{epochs=2,lr=0.01,batch=8,augment=[flip]}"
    ).run(teacher, ctx=PassContext(feeds=calib), validate=False)
    rec = res.records[1]
    assert rec.name == "finetune" and rec.modified
    c = rec.counters
    assert c["samples"] == 24 and c["best_epoch"] >= 1
    assert c["val_loss_after"] < c["val_loss_before"]
    assert [d["epoch"] for d in rec.details] == [0, 1, 2]
    # no task: the epoch is picked by the output cosine, and the record says so
    assert "val_cosine_before" in c and "cosine" in rec.details[0]
    assert not any("agreement" in k for k in c)
    # Same graph as the pruned one, new float values only.
    got, ref = res.model.graph, pruned.model.graph
    assert [(n.name, n.op_type) for n in got.node] == [(n.name, n.op_type) for n in ref.node]
    assert [(i.name, tuple(i.dims)) for i in got.initializer] == [
        (i.name, tuple(i.dims)) for i in ref.initializer
    ]
    assert any(
        not np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
        for a, b in zip(got.initializer, ref.initializer)
    )
    # Closer to the teacher on inputs it never saw.
    t = run_model(teacher, held_out)
    before = run_model(pruned.model, held_out)
    after = run_model(res.model, held_out)
    assert sum(map(_mse, t, after)) < sum(map(_mse, t, before))


def test_skips_with_a_note_without_feeds_or_teacher():
    model = fixture_model("tiny_yolo")
    r = Finetune()(model, PassContext(reference=model))
    assert not r.modified and "no calibration feeds" in r.notes[0]
    r = Finetune()(model, PassContext(feeds=random_feeds(model, 2)))
    assert not r.modified and "no teacher" in r.notes[0]
    # In a pipeline with nothing lossy before it there is nothing to recover.
    res = Pipeline.parse("finetune").run(model, ctx=PassContext(feeds=random_feeds(model, 2)))
    assert not res.records[0].modified and "nothing to recover" in res.records[0].notes[0]


def test_without_torch_skips_or_fails_when_required(monkeypatch):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    model = fixture_model("tiny_yolo")
    ctx = PassContext(feeds=random_feeds(model, 2), reference=model)
    r = Finetune()(model, ctx)
    assert not r.modified and "torch is not installed" in r.notes[0]
    assert "pip install" in r.notes[0]
    with pytest.raises(TorchMissing, match="pip install"):
        Finetune(required=True)(model, ctx)


@pytest.mark.parametrize(
    "opts",
    [
        {"epochs": 0},
        {"optimizer": "rmsprop"},
        {"augment": ("mixup",)},
        {"lr": 0},
        {"warmup": -1},
        {"ema": 1.0},
        {"time": -2},
    ],
)
def test_bad_options_refused(opts):
    with pytest.raises(OptionsError):
        Finetune(**opts)


def test_order_constraints():
    with pytest.raises(Exception, match="quantize-int8"):
        Pipeline.parse("quantize-int8{calibration=random},finetune")


def test_with_a_task_the_record_names_the_task_metric():
    teacher = fixture_model("tiny_yolo")
    calib = random_feeds(teacher, 16, seed=1)
    res = Pipeline.parse(
        "prune-channels{ratio=0.5},finetune{epochs=1,lr=0.01,batch=8,augment=[],task=detect}"
    ).run(teacher, ctx=PassContext(feeds=calib), validate=False)
    rec = res.records[1]
    c = rec.counters
    assert {"val_map50_before", "val_map50_after", "val_cosine_before"} <= set(c)
    assert 0 <= c["val_map50_before"] <= 1 and "map50" in rec.details[0]
    assert any("map50" in n for n in rec.notes)


def test_the_training_recipe_options_reach_the_loop():
    """warm-up, EMA and the time budget (what recovered the bench's models) are pass options
    too, mapped onto the loop's settings; ``time=0`` is no budget."""
    loop = Finetune(
        optimizer="adam", warmup=1, ema=0.999, time=3, teacher_cache="/tmp/tc"
    ).options.loop_options(seed=0, samples=10)
    assert (loop.optimizer, loop.warmup, loop.ema, loop.time_budget) == ("adam", 1, 0.999, 3)
    assert loop.teacher_cache == "/tmp/tc"
    default = Finetune().options.loop_options(seed=0, samples=10)
    assert default.time_budget is None and default.teacher_cache is None


def test_a_pipeline_finetune_with_warmup_and_ema_still_moves_toward_the_teacher():
    teacher = fixture_model("tiny_yolo")
    calib = random_feeds(teacher, 16, seed=1)
    res = Pipeline.parse(
        "prune-channels{ratio=0.5},"
        "finetune{epochs=2,lr=0.01,batch=8,augment=[],optimizer=adam,warmup=1,ema=0.9}"
    ).run(teacher, ctx=PassContext(feeds=calib), validate=False)
    c = res.records[1].counters
    assert c["val_loss_after"] < c["val_loss_before"]
