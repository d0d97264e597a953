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


def test_new_training_options_are_checked():
    with pytest.raises(BridgeError, match="teacher runtime 'tensorrt'"):
        FinetuneOptions(teacher_runtime="tensorrt")
    with pytest.raises(BridgeError, match="warmup"):
        FinetuneOptions(warmup=-1)
    with pytest.raises(BridgeError, match="ema"):
        FinetuneOptions(ema=1.0)
    with pytest.raises(BridgeError, match="time budget"):
        FinetuneOptions(time_budget=0)


def test_torch_teacher_gives_the_onnxruntime_teacher_outputs(pruned_tiny_yolo):
    teacher, student, x = pruned_tiny_yolo
    ort = Distiller(student, teacher, x, OPTS, check_parity=False)
    opts = dataclasses.replace(OPTS, teacher_runtime="torch")
    tt = Distiller(student, teacher, x, opts, check_parity=False)
    assert ort.teacher_runtime == "onnxruntime" and tt.teacher_runtime == "torch"
    a, b = ort._teacher(x[:4]), tt._teacher(x[:4])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-4)
    # the same loss on the same batch, whichever runtime computed the teacher
    assert tt.backward(np.arange(8), 1) == pytest.approx(ort.backward(np.arange(8), 1), rel=1e-4)
    result = finetune(student, teacher, x, opts)
    assert result.teacher_runtime == "torch" and result.to_dict()["teacher_runtime"] == "torch"


def test_warmup_then_cosine_learning_rate(pruned_tiny_yolo):
    teacher, student, x = pruned_tiny_yolo  # 24 samples: 21 train, 2 steps of 8 an epoch
    opts = dataclasses.replace(OPTS, epochs=4, warmup=2.0, lr=0.1)
    d = Distiller(student, teacher, x, opts, check_parity=False)
    assert d.steps_per_epoch == 2 and d.warmup_steps == 4 and d.total_steps == 8
    lrs = []
    for _ in range(d.total_steps):
        lrs.append(d.opt.param_groups[0]["lr"])
        d.backward(np.arange(8), 1)
        d.step()
    assert lrs[0] == pytest.approx(0.01)  # warm-up starts at lr / 10
    assert lrs[:5] == sorted(lrs[:5])  # rises to lr over the warm-up
    assert lrs[4] == pytest.approx(0.1)
    assert lrs[4:] == sorted(lrs[4:], reverse=True) and lrs[-1] < 0.02  # then cosine to 0
    # a shorter plan (time budget) ends the cosine sooner
    d.plan(3)
    assert d._lr_factor(6) == 0.0 and d._lr_factor(5) > 0


def test_ema_is_what_is_evaluated_and_kept(pruned_tiny_yolo):
    teacher, student, x = pruned_tiny_yolo
    d = Distiller(student, teacher, x, dataclasses.replace(OPTS, ema=0.9), check_parity=False)
    assert d.eval_module is not d.module
    for _ in range(3):
        d.backward(np.arange(8), 1)
        d.step()
    live = {k: v.detach().clone() for k, v in d.module.state_dict().items()}
    avg = d.eval_module.state_dict()
    moved = [k for k in live if not torch.equal(live[k], avg[k])]
    assert moved  # the average lags the live weights
    # buffers (graph constants: int64 shapes, BN statistics) are never averaged
    for name, buf in d.module.named_buffers():
        assert torch.equal(buf, dict(d.eval_module.named_buffers())[name])
    result = finetune(student, teacher, x, dataclasses.replace(OPTS, ema=0.9))
    assert result.history[-1].epoch == 1


def test_time_budget_bounds_the_epochs(pruned_tiny_yolo):
    teacher, student, x = pruned_tiny_yolo
    # a budget far below one epoch's time: the first epoch runs, then the plan shrinks to it
    opts = dataclasses.replace(OPTS, epochs=50, time_budget=1e-6)
    result = finetune(student, teacher, x, opts)
    assert [h.epoch for h in result.history] == [0, 1]
    assert result.to_dict()["epochs_run"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_teacher_and_student_run_on_the_gpu(pruned_tiny_yolo):
    teacher, student, x = pruned_tiny_yolo
    opts = dataclasses.replace(OPTS, device="cuda", ema=0.9, warmup=1.0)
    d = Distiller(student, teacher, x, opts)
    assert d.teacher_runtime == "torch" and d.device.type == "cuda"
    ort = Distiller(student, teacher, x, dataclasses.replace(opts, teacher_runtime="onnxruntime"))
    a, b = ort._teacher(x[:4]), d._teacher(x[:4])
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-3, atol=1e-3)
    result = finetune(student, teacher, x, opts)
    assert result.history[-1].val_loss < result.history[0].val_loss


def test_adam_decays_weights_decoupled(pruned_tiny_yolo):
    # Adam's coupled L2 shrinks every weight with a small gradient by ~lr a step; AdamW does not
    teacher, student, x = pruned_tiny_yolo
    d = Distiller(
        student, teacher, x, dataclasses.replace(OPTS, optimizer="adam"), check_parity=False
    )
    assert isinstance(d.opt, torch.optim.AdamW)
