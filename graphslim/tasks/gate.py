"""A task with its settings, scoring two models, and the pipeline's task gate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from graphslim.errors import OptionsError, ValidationFailed
from graphslim.feeds import Letterbox
from graphslim.tasks.metrics import (
    TASKS,
    Outputs,
    TaskMetrics,
    classify_metrics,
    dense_metrics,
    detect_metrics,
)


@dataclass
class Task:
    """A task and its settings; :meth:`evaluate` picks the matching ``*_metrics`` function.

    ``labels``: classify -> one class index per sample; detect -> one :class:`Detections`
    per image in original pixels (:func:`load_yolo_labels`)."""

    kind: str
    output: str | None = None
    labels: Sequence[Any] | None = None
    decoder: str = "auto"
    conf: float = 0.25
    iou: float = 0.45
    input_hw: tuple[int, int] | None = None
    letterboxes: Sequence[Letterbox] | None = None
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise OptionsError(f"unknown task '{self.kind}' (use one of {', '.join(TASKS)})")

    def evaluate(
        self, reference: Outputs, candidate: Outputs, feeds: Sequence[dict] | None = None
    ) -> TaskMetrics:
        if self.kind == "classify":
            return classify_metrics(reference, candidate, self.labels, output=self.output)
        if self.kind == "dense":
            return dense_metrics(reference, candidate, threshold=self.threshold, output=self.output)
        return detect_metrics(
            reference,
            candidate,
            input_hw=self.input_hw or (_input_hw(feeds[0]) if feeds else None),
            decoder=self.decoder,
            conf=self.conf,
            iou=self.iou,
            letterboxes=self.letterboxes,
            labels=self.labels,
            output=self.output,
        )


def _input_hw(feed: dict) -> tuple[int, int] | None:
    """(H, W) of the first rank-4 input, NCHW unless the last axis holds 1 or 3 channels."""
    for x in feed.values():
        s = np.shape(x)
        if len(s) == 4:
            return (
                (int(s[1]), int(s[2]))
                if s[3] in (1, 3) and s[1] not in (1, 3)
                else (
                    int(s[2]),
                    int(s[3]),
                )
            )
    return None


def evaluate_models(
    task: Task, original: onnx.ModelProto, candidate: onnx.ModelProto, feeds: Sequence[dict]
) -> TaskMetrics:
    """Run both models on ``feeds`` in onnxruntime and score ``candidate`` on ``task``."""
    from graphslim.runtime import run_model

    ref = run_model(original, feeds, label="original")
    got = run_model(candidate, feeds, label="candidate")
    return task.evaluate(ref, got, feeds)


class TaskGateFailed(ValidationFailed):
    """A pass dropped a task metric below the pipeline gate's minimum (exit code 1)."""


@dataclass
class TaskGate:
    """Pipeline gate: after every pass that modified the model, score it on ``task`` against
    the original over ``feeds``; below ``minimum`` the pipeline stops (``on_fail="stop"``,
    :class:`TaskGateFailed`) or undoes that pass and goes on (``"rollback"``). With
    ``minimum=None`` the metrics are only recorded."""

    task: Task
    metric: str
    minimum: float | None
    feeds: Sequence[dict]
    on_fail: str = "stop"
    _reference: Outputs | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.on_fail not in ("stop", "rollback"):
            raise OptionsError(f"on_fail must be 'stop' or 'rollback', not '{self.on_fail}'")
        if not self.feeds:
            raise OptionsError("a task gate needs feeds (images the task is measured on)")

    def measure(self, original: onnx.ModelProto, candidate: onnx.ModelProto) -> TaskMetrics:
        from graphslim.runtime import run_model

        if self._reference is None:
            self._reference = run_model(original, self.feeds, label="original")
        got = run_model(candidate, self.feeds, label="candidate")
        return self.task.evaluate(self._reference, got, self.feeds)

    def holds(self, m: TaskMetrics) -> bool:
        value = m.value(self.metric)
        return self.minimum is None or (not np.isnan(value) and value >= self.minimum)

    def describe(self, m: TaskMetrics) -> str:
        return (
            f"{self.task.kind} {self.metric} {m.value(self.metric):.4f} < minimum {self.minimum:g}"
        )
