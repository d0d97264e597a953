"""Distillation on logits under Sigmoid outputs, dead starts, and bridge parity tolerances."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from graphslim.bridge import BridgeError
from graphslim.bridge.finetune import Distiller, FinetuneOptions, dice_loss, finetune
from graphslim.bridge.interpreter import ParityError, parity_check, to_module
from graphslim.bridge.logits import find_logits
from graphslim.runtime import run_model


def _map_model(bias_shift: float = 0.0, dead: bool = False) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv 3x3 (8) -> Relu -> Conv 1x1 (1) -> Sigmoid: a dense map head.

    ``bias_shift`` moves the last bias (a large negative shift saturates the Sigmoid);
    ``dead`` zeroes the first conv and gives it a negative bias (every Relu output 0)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5
    b1 = rng.standard_normal(8).astype(np.float32) * 0.1
    if dead:
        w1[:] = 0
        b1[:] = -1
    w2 = rng.standard_normal((1, 8, 1, 1)).astype(np.float32)
    b2 = np.array([-0.5 + bias_shift], dtype=np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in ((w1, "c1.w"), (b1, "c1.b"), (w2, "c2.w"), (b2, "c2.b"))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["a"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "c2.w", "c2.b"], ["z"], name="c2"),
        helper.make_node("Sigmoid", ["z"], ["map"], name="sig"),
    ]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("map", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _inputs(n: int = 48, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


OPTS = FinetuneOptions(
    epochs=6, batch=8, lr=0.1, optimizer="adam", seed=0, augment=(), task="dense"
)


def test_logits_are_found_under_sigmoid_and_softmax():
    model = _map_model()
    (logit,) = find_logits(model).values()
    assert (logit.output, logit.tensor, logit.activation, logit.loss) == (
        "map",
        "z",
        "Sigmoid",
        "bce-logit",
    )


def test_saturated_student_learns_under_logit_kd_but_not_on_probabilities():
    teacher, student, x = _map_model(), _map_model(bias_shift=-35.0), _inputs()
    start = run_model(student, [{"x": x}])[0]["map"]
    assert float(start.max()) < 1e-9  # saturated: every probability ~0, gradient ~0
    d = Distiller(student, teacher, x, OPTS)
    assert d.kinds["map"] == ["bce-logit", "dice"]  # task dense: Dice on the thresholded map too
    assert d.dead_start() == {"map": "saturated"}

    result = finetune(student, teacher, x, OPTS)
    assert result.dead == {"map": "saturated"}
    assert result.metric == "iou" and result.history[0].value == 0.0
    best = result.history[result.best_epoch]
    assert best.value > 0.5 and best.task["iou"] == best.value
    # the written-back graph, run by onnxruntime, is no longer constant and follows the teacher
    got = run_model(result.model, [{"x": x}])[0]["map"]
    ref = run_model(teacher, [{"x": x}])[0]["map"]
    assert got.max() - got.min() > 0.5
    inter, union = ((got > 0.5) & (ref > 0.5)).sum(), ((got > 0.5) | (ref > 0.5)).sum()
    assert inter / union > 0.5

    # the same run with the loss on probabilities cannot move it
    flat = finetune(student, teacher, x, dataclasses.replace(OPTS, loss="mse"))
    assert all(h.value == 0.0 for h in flat.history) and flat.best_epoch == 0


def test_a_dead_student_is_reported_before_training():
    teacher, student, x = _map_model(), _map_model(dead=True), _inputs(16)
    seen = []
    finetune(
        student,
        teacher,
        x,
        dataclasses.replace(OPTS, epochs=1),
        on_start=seen.append,
        on_epoch=lambda r: seen.append(r.epoch),
    )
    assert seen[0]["dead"] == {"map": "constant"} and seen[0]["metric"] == "iou"
    assert seen[1:] == [0, 1]  # reported before epoch 0's record


def _tiny_output_model() -> onnx.ModelProto:
    """y = Conv1x1(x) with weights ~1e-6: every output value is near zero."""
    w = (np.random.default_rng(0).standard_normal((2, 3, 1, 1)) * 1e-6).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 4, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _perturbed(model):
    module = to_module(model)
    with torch.no_grad():  # 1% off: max-rel 1e-2, but max-abs ~1e-8 on values ~1e-6
        module.parameter_for("w").mul_(1.01)
    return module


def test_parity_passes_near_zero_outputs_within_max_abs():
    model = _tiny_output_model()
    feeds = [{"x": np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)}]
    c = parity_check(model, _perturbed(model), feeds)
    (out,) = c.outputs
    assert c.passed and out.stats["max-rel"] > 1e-4 and out.stats["max-abs"] < 1e-6


def test_parity_failure_reports_figures_and_force_goes_on():
    model = _tiny_output_model()
    feeds = [{"x": np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)}]
    strict = ["max-rel=1e-4"]
    from graphslim.validate import Tolerance

    tol = [Tolerance.parse(t) for t in strict]
    with pytest.raises(ParityError, match=r"max-rel .* \(want max-rel=0.0001\).*--force") as exc:
        parity_check(model, _perturbed(model), feeds, tol)
    assert not exc.value.comparison.passed
    assert "first diverging node: 'conv' (Conv)" in str(exc.value)
    c = parity_check(model, _perturbed(model), feeds, tol, force=True)
    assert not c.passed and c.outputs[0].stats["max-rel"] > 1e-4


def test_dice_is_zero_on_the_teachers_map_and_one_on_its_complement():
    t = torch.tensor([[0.9, 0.2], [0.7, 0.1]])
    assert float(dice_loss((t > 0.5).float(), t > 0.5)) == pytest.approx(0.0)
    assert float(dice_loss((t <= 0.5).float(), t > 0.5)) == pytest.approx(1 - 1 / 5)  # smooth 1
    # the foreground counts as much as the background: a student that misses half the text
    # pays ~1/3 however much background the map has
    big = torch.zeros(1, 1, 64, 64)
    big[..., :2, :2] = 1.0
    half = big.clone()
    half[..., :1, :2] = 0.0
    assert float(dice_loss(half, big > 0.5)) == pytest.approx(1 - (2 * 2 + 1) / (2 + 4 + 1))


def test_dice_on_an_output_outside_zero_one_is_refused():
    teacher = _tiny_output_model()
    x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32) * 1e6
    with pytest.raises(BridgeError, match="loss 'dice' on output 'y': its values leave"):
        Distiller(teacher, teacher, x, dataclasses.replace(OPTS, loss="dice"))
