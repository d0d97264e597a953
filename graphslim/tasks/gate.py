"""A task with its settings, scoring two models, and the pipeline's task gate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from graphslim.errors import OptionsError, ValidationFailed
from graphslim.feeds import Letterbox
from graphslim.tasks.infer import infer_task, input_hw
from graphslim.tasks.metrics import (
    METRICS,
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
            input_hw=self.input_hw or (input_hw(feeds[0]) if feeds else None),
            decoder=self.decoder,
            conf=self.conf,
            iou=self.iou,
            letterboxes=self.letterboxes,
            labels=self.labels,
            output=self.output,
        )


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


ON_FAIL = ("stop", "rollback", "final")
# The share of the original's score below which the default gate calls a model dead: the
# original scores 1.0 against itself on every agreement metric (map50, top1, iou), so the
# default minimum is 0.5; metrics against labels are scaled by the original's own score.
DEFAULT_MINIMUM = 0.5
# Metrics measured against labels, and the original's own score on the same labels.
_ORIGINAL_SCORE = {
    "accuracy": "accuracy_original",
    "label_map50": "label_map50_original",
    "label_map50_95": "label_map50_95_original",
}


@dataclass
class TaskGate:
    """Pipeline gate: after every pass that modified the model, score it on ``task`` against
    the original over ``feeds``.

    The threshold is ``minimum`` (absolute), or with ``relative=True`` ``minimum * s`` where
    ``s`` is the original's own score on the metric (1.0 for every agreement metric, since
    the original's outputs are the reference; ``accuracy_original`` / ``label_map50_original``
    for metrics against labels). Below it, ``on_fail`` says what happens:

    * ``"stop"`` -- the pipeline stops at that pass (:class:`TaskGateFailed`);
    * ``"rollback"`` -- that pass is undone and the pipeline goes on;
    * ``"final"`` -- every pass is measured and kept; only the final model is judged
      (:meth:`verdict`), so the run finishes and its report names the stage that fell below.

    With ``minimum=None`` the metrics are only recorded. A detector whose original finds no
    detection on ``feeds`` cannot be judged (every candidate would score 1.0 or 0.0 for
    reasons that say nothing about it): the gate then holds and the verdict says why."""

    task: Task
    metric: str
    minimum: float | None
    feeds: Sequence[dict]
    on_fail: str = "stop"
    relative: bool = False
    _reference: Outputs | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.on_fail not in ON_FAIL:
            raise OptionsError(f"on_fail must be one of {', '.join(ON_FAIL)}, not '{self.on_fail}'")
        if not self.feeds:
            raise OptionsError("a task gate needs feeds (images the task is measured on)")

    @classmethod
    def default(
        cls, task: Task, feeds: Sequence[dict], on_fail: str = "final", metric: str | None = None
    ) -> TaskGate:
        """The gate a run gets when the user set no minimum: the task's first metric (map50,
        top1, agreement) at :data:`DEFAULT_MINIMUM` of the original's score."""
        metric = metric or METRICS[task.kind][0]
        return cls(task, metric, DEFAULT_MINIMUM, feeds, on_fail=on_fail, relative=True)

    def reference(self, original: onnx.ModelProto) -> Outputs:
        """The original's outputs on the gate's feeds (computed once)."""
        from graphslim.runtime import run_model

        if self._reference is None:
            self._reference = run_model(original, self.feeds, label="original")
        return self._reference

    def measure(self, original: onnx.ModelProto, candidate: onnx.ModelProto) -> TaskMetrics:
        from graphslim.runtime import run_model

        ref = self.reference(original)
        got = run_model(candidate, self.feeds, label="candidate")
        return self.task.evaluate(ref, got, self.feeds)

    def threshold(self, m: TaskMetrics) -> float | None:
        """The value ``m``'s metric must reach (``None``: no minimum)."""
        if self.minimum is None:
            return None
        if not self.relative:
            return self.minimum
        return self.minimum * float(m.metrics.get(_ORIGINAL_SCORE.get(self.metric, ""), 1.0))

    def judgeable(self, m: TaskMetrics) -> str | None:
        """Why ``m`` cannot be judged, or None when it can."""
        if m.task == "detect" and m.details.get("original_detections") == 0:
            return (
                f"the original finds no detection on these {m.details.get('images')} "
                "image(s) at conf {:g}: give --feeds real images of the model's domain".format(
                    m.details.get("conf", 0.25)
                )
            )
        return None

    def holds(self, m: TaskMetrics) -> bool:
        value, need = m.value(self.metric), self.threshold(m)
        if need is None or self.judgeable(m):
            return True
        return not np.isnan(value) and value >= need

    def describe(self, m: TaskMetrics) -> str:
        """Why ``m`` fails: ``detect map50 0.0312 < minimum 0.5``, and every detection lost
        when not one of the original's detections is matched."""
        need = self.threshold(m)
        text = f"{self.task.kind} {self.metric} {m.value(self.metric):.4f} < minimum {need:g}"
        if self.relative and need is not None:
            orig = float(m.metrics.get(_ORIGINAL_SCORE.get(self.metric, ""), 1.0))
            text += f" ({self.minimum:g} x the original's {orig:.3g})"
        lost = _lost(m)
        return f"{text}; {lost}" if lost else text

    def verdict(
        self, final: TaskMetrics, stages: Sequence[tuple[str, dict | None, bool]]
    ) -> GateVerdict:
        """Judge the final model. ``stages``: ``(label, task metrics dict or None, rolled
        back)`` per pass in order. The stage named for a failure is the first kept stage whose
        metric fell below the threshold: the one that killed the task, whatever came after."""
        value, need = final.value(self.metric), self.threshold(final)
        trail = [
            {
                "stage": label,
                "value": (t or {}).get("metrics", {}).get(self.metric),
                "rolled_back": rb,
            }
            for label, t, rb in stages
            if t is not None
        ]
        rolled = [s["stage"] for s in trail if s["rolled_back"]]
        base = dict(metric=self.metric, value=value, minimum=need, trail=trail, rolled_back=rolled)
        why = self.judgeable(final)
        if need is None or why:
            note = f"not judged: {why}" if why else "measured only (no minimum)"
            return GateVerdict(passed=None, message=f"{self.metric} {value:.4f}; {note}", **base)
        if self.holds(final):
            text = f"{self.metric} {value:.4f} >= minimum {need:g}"
            if rolled:
                text += f"; rolled back: {', '.join(rolled)}"
            return GateVerdict(passed=True, message=text, **base)
        culprit = next(
            (
                s
                for s in trail
                if not s["rolled_back"] and not (s["value"] is not None and s["value"] >= need)
            ),
            None,
        )
        text = self.describe(final)
        if culprit is not None:
            before = [s["value"] for s in trail[: trail.index(culprit)] if not s["rolled_back"]]
            original = float(final.metrics.get(_ORIGINAL_SCORE.get(self.metric, ""), 1.0))
            prev = before[-1] if before and before[-1] is not None else original
            text += (
                f"; broken by pass {culprit['stage']} ({self.metric} {prev:.3f} -> "
                f"{culprit['value']:.3f})"
            )
        return GateVerdict(
            passed=False,
            message=text,
            stage=culprit["stage"] if culprit else None,
            **base,
        )


def _lost(m: TaskMetrics) -> str | None:
    d = m.details
    if m.task == "detect" and d.get("original_detections") and d.get("matched") == 0:
        return (
            f"every detection lost at conf {d.get('conf', 0.25):g} "
            f"(0 of {d['original_detections']} matched)"
        )
    return None


@dataclass
class GateVerdict:
    """The task gate's judgement of a pipeline's final model. ``passed``: True / False, or
    None when not judged (no minimum, or nothing the metric could be measured on). ``stage``:
    the first kept stage below the minimum (``"3:prune-channels"``) when it failed. ``trail``:
    the metric after every measured stage."""

    passed: bool | None
    metric: str
    value: float
    minimum: float | None
    message: str
    trail: list[dict[str, Any]] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    stage: str | None = None

    @property
    def label(self) -> str:
        return {True: "PASS", False: "FAIL", None: "NOT JUDGED"}[self.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.label,
            "passed": self.passed,
            "metric": self.metric,
            "value": self.value,
            "minimum": self.minimum,
            "stage": self.stage,
            "message": self.message,
            "rolled_back": list(self.rolled_back),
            "trail": list(self.trail),
        }


@dataclass(frozen=True)
class GateSpec:
    """A pipeline file's ``[gate]`` table: the task gate the pipeline brings with it.

    ``task``: ``auto`` (from the output layout, :func:`graphslim.tasks.infer_task`) or a task
    name; ``metric``: default the task's first (map50 / top1 / agreement); ``minimum``: the
    share of the original's score (``relative``, default) or the value itself; ``on_fail``:
    ``rollback`` (default: undo a pass that kills the task and go on), ``stop`` or ``final``
    (see :class:`TaskGate`)."""

    task: str = "auto"
    metric: str | None = None
    minimum: float = DEFAULT_MINIMUM
    relative: bool = True
    on_fail: str = "rollback"

    @classmethod
    def from_table(cls, table: Any, where: str) -> GateSpec:
        """Check a ``[gate]`` table; errors name the file and the key."""
        if not isinstance(table, dict):
            raise OptionsError(f"{where}: [gate] must be a table (task = ..., minimum = ...)")
        known = {f for f in cls.__dataclass_fields__}
        extra = sorted(set(table) - known)
        if extra:
            raise OptionsError(
                f"{where}: [gate] has no key '{extra[0]}' (keys: {', '.join(sorted(known))})"
            )
        spec = cls(**table)
        if spec.task != "auto" and spec.task not in TASKS:
            raise OptionsError(f"{where}: [gate] task '{spec.task}': use auto, {', '.join(TASKS)}")
        if (
            spec.metric is not None
            and spec.task != "auto"
            and spec.metric not in METRICS[spec.task]
        ):
            raise OptionsError(
                f"{where}: [gate] metric '{spec.metric}': task {spec.task} has "
                f"{', '.join(METRICS[spec.task])}"
            )
        if isinstance(spec.minimum, bool) or not isinstance(spec.minimum, (int, float)):
            raise OptionsError(f"{where}: [gate] minimum must be a number, e.g. 0.5")
        if spec.on_fail not in ON_FAIL:
            raise OptionsError(
                f"{where}: [gate] on_fail '{spec.on_fail}': use {', '.join(ON_FAIL)}"
            )
        return spec

    def build(self, task: Task, feeds: Sequence[dict]) -> TaskGate:
        """The :class:`TaskGate` of this spec for ``task`` measured on ``feeds``."""
        metric = self.metric or METRICS[task.kind][0]
        return TaskGate(
            task, metric, float(self.minimum), feeds, on_fail=self.on_fail, relative=self.relative
        )


UNKNOWN_TASK = (
    "the pipeline's task gate cannot tell the task from the model's outputs; running WITHOUT "
    "it, so nothing checks that the result still does its job"
)
"""What a caller says (and how it goes on) when a ``[gate]`` with ``task = "auto"`` meets a
model whose outputs no rule recognizes."""


def gate_task(
    kind: str, original: onnx.ModelProto, feeds: Sequence[dict]
) -> tuple[str, str | None] | None:
    """``(task, output)`` for a gate's task: as named, or read from ``original``'s outputs
    when ``auto`` (None when no rule knows the layout: the caller goes on ungated and says
    :data:`UNKNOWN_TASK`). One rule for the CLI and for Python callers of the pipeline."""
    if kind != "auto":
        return kind, None
    return task_from_outputs(original, feeds)


def task_from_outputs(original: onnx.ModelProto, feeds: Sequence[dict]) -> tuple[str, str] | None:
    """``(task, output)`` of ``original`` from its outputs on the first feed
    (:func:`graphslim.tasks.infer_task`), or None when no rule matches."""
    from graphslim.runtime import run_model

    outputs = run_model(original, list(feeds[:1]), label="original")[0]
    return infer_task(outputs, input_hw(feeds[0]))
