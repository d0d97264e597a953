"""Knowledge distillation: the loss drops, resume continues, labels add a task loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from bridge_helpers import fixture_model, stacked_feeds
from onnx import numpy_helper

from graphslim import Pipeline
from graphslim.bridge import BridgeError
from graphslim.bridge.finetune import Distiller, FinetuneOptions, finetune

OPTS = FinetuneOptions(epochs=1, batch=8, lr=1e-2, seed=3, augment=("flip", "color"))


def test_one_epoch_lowers_the_student_teacher_loss(pruned_tiny_yolo):
    teacher, student, x = pruned_tiny_yolo
    result = finetune(student, teacher, x, OPTS)
    before, after = result.history
    assert before.epoch == 0 and after.epoch == 1
    assert after.val_loss < before.val_loss
    assert result.best_epoch == 1
    assert result.parity["passed"] and not result.parity["forced"]
    (out,) = result.parity["outputs"]
    assert out["name"] == "output0" and out["stats"]["max-rel"] <= 1e-4
    # the result is the student graph with new values
    assert [n.name for n in result.model.graph.node] == [n.name for n in student.graph.node]
    changed = [
        a.name
        for a, b in zip(result.model.graph.initializer, student.graph.initializer)
        if not np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    ]
    assert changed


def test_resume_continues_from_the_checkpoint(pruned_tiny_yolo, tmp_path):
    teacher, student, x = pruned_tiny_yolo
    two = dataclasses.replace(OPTS, epochs=2)
    straight = finetune(student, teacher, x, two)
    ckpt = str(tmp_path / "state.pt")

    # an interrupted run: stopped after epoch 1 (the checkpoint is written before on_epoch)
    def stop(record):
        if record.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(student, teacher, x, dataclasses.replace(two, checkpoint=ckpt), on_epoch=stop)
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 1
    seen = []
    resumed = finetune(
        student,
        teacher,
        x,
        dataclasses.replace(two, checkpoint=ckpt, resume=True),
        on_epoch=lambda r: seen.append(r.epoch),
    )
    assert seen == [2]  # only the missing epoch ran
    assert [h.epoch for h in resumed.history] == [0, 1, 2]
    for a, b in zip(resumed.model.graph.initializer, straight.model.graph.initializer):
        np.testing.assert_allclose(
            numpy_helper.to_array(a), numpy_helper.to_array(b), rtol=1e-5, atol=1e-6
        )


def test_labels_add_cross_entropy_and_report_accuracy():
    teacher = fixture_model("flatten_gemm")
    student = Pipeline.parse("prune-channels{ratio=0.5}").run(teacher).model
    x = stacked_feeds(teacher, 20, seed=2)
    d = Distiller(student, teacher, x, OPTS, labels=np.arange(20) % 2)
    assert d.class_output is not None
    kd_only = Distiller(student, teacher, x, OPTS)
    assert d.backward(np.arange(8), 1) > kd_only.backward(np.arange(8), 1)
    scores = d.evaluate()
    # with validation labels the best epoch is chosen by label accuracy, not teacher agreement
    assert scores.metric == "accuracy" and scores.accuracy is not None
    assert scores.value == scores.accuracy and 0 <= scores.value <= 1
    assert kd_only.evaluate().metric == "top1"


def test_bad_options_are_refused():
    with pytest.raises(BridgeError, match="optimizer"):
        FinetuneOptions(optimizer="rmsprop")
    with pytest.raises(BridgeError, match="augmentation 'mixup'"):
        FinetuneOptions(augment=("mixup",))
    with pytest.raises(BridgeError, match="loss"):
        FinetuneOptions(loss="huber")


def test_augmentation_is_seeded_per_sample(pruned_tiny_yolo):
    teacher, student, x = pruned_tiny_yolo
    d = Distiller(student, teacher, x, FinetuneOptions(seed=1), check_parity=False)
    idx = np.array([3, 5])
    a = d.augment(d.inputs[idx], idx, 1)
    b = d.augment(d.inputs[idx[1:]], idx[1:], 1)  # same sample, another batch
    assert np.array_equal(a[1], b[0])
    assert not np.array_equal(a[0], d.inputs[3])
