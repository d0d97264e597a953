"""Pipelines: an ordered list of passes, written three equal ways.

* Python:  ``Pipeline([Simplify(), FoldBN()]).run(model)`` or ``Pipeline.parse("simplify,fold-bn")``
* TOML:    ``[[pass]]`` tables, each with ``name`` and the pass's options, and an optional
  ``[gate]`` table: the task gate the pipeline brings (:class:`graphslim.tasks.GateSpec`)
* Inline:  ``simplify,fix-input-shapes{shapes=images:1,3,640,640},fold-bn``

The user's order is kept. A pass's ``after`` / ``before`` constraints are checked and a
violation is an error naming both passes; nothing is reordered silently.

Running a pipeline records, per pass: options, seconds, nodes/params/MACs before and after,
``modified``, counters, skipped nodes with reasons and (with ``validate_each``) the output
error against the original. After a pass that modified the model the pipeline — not the
pass — removes dead nodes and unused initializers, restores a topological order and runs
the ONNX checker; the final model is always compared with the original.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphslim import graph as G
from graphslim.contract import Pass, PassContext, PassResult, options_dict
from graphslim.errors import GraphslimError, PassFailedError, PipelineError
from graphslim.metrics import ModelStats, checkable, model_stats
from graphslim.registry import Registry, default_registry
from graphslim.validate import DEFAULT_TOLERANCES, Comparison, Tolerance, compare, reference_outputs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassSpec:
    """A pass named in a pipeline, with its options as the user wrote them."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


def parse_inline(text: str) -> list[PassSpec]:
    """Parse ``a,b{k=v,k2=v2},c``. Option values are TOML literals where they parse as such
    (``0.3``, ``true``, ``[1, 2]``, ``"x"``), else plain strings; a comma-separated piece
    without ``=`` continues the previous value (``shapes=images:1,3,640,640``)."""
    specs = []
    for chunk in _split_top(text, ","):
        chunk = chunk.strip()
        if not chunk:
            continue
        name, brace, rest = chunk.partition("{")
        name = name.strip()
        if not brace:
            specs.append(PassSpec(name))
            continue
        if not rest.rstrip().endswith("}"):
            raise PipelineError(f"pipeline: '{chunk}' has no closing '}}'")
        specs.append(PassSpec(name, _parse_options(name, rest.rstrip()[:-1])))
    if not specs:
        raise PipelineError("pipeline is empty: name at least one pass (see `graphslim passes`)")
    for s in specs:
        if not s.name or not all(ch.isalnum() or ch == "-" for ch in s.name):
            raise PipelineError(f"pipeline: '{s.name}' is not a pass name")
    return specs


_OPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _parse_options(owner: str, body: str) -> dict[str, Any]:
    opts: dict[str, str] = {}
    last = None
    for piece in _split_top(body, ","):
        if "=" in piece and not piece.lstrip().startswith(("[", '"', "'")):
            key, _, value = piece.partition("=")
            last = key.strip()
            if not last:
                raise PipelineError(f"pipeline: {owner}{{{body}}} has an option with no name")
            if not _OPTION_NAME.match(last):
                raise PipelineError(f"pipeline: {owner}{{{body}}}: '{last}' is not an option name")
            opts[last] = value.strip()
        elif last is not None:
            opts[last] += "," + piece.strip()
        elif piece.strip():
            raise PipelineError(f"pipeline: {owner}{{{body}}}: '{piece}' is not key=value")
    return {k: _literal(v) for k, v in opts.items()}


def _literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside braces, brackets and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:  # a closing bracket before its opening one: "a{x=1}{y=2}", "a}"
                break
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if depth != 0 or quote:
        raise PipelineError(f"pipeline: unbalanced brackets or quotes in '{text}'")
    parts.append("".join(cur))
    return parts


def parse_toml(path: str | Path) -> list[PassSpec]:
    """Read ``[[pass]]`` tables from a TOML pipeline file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{p}: no such pipeline file") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise PipelineError(f"{p}: not a text file") from None
    extra = set(data) - {"pass", "gate"}
    if extra:
        raise PipelineError(
            f"{p}: unknown top-level key '{sorted(extra)[0]}'; a pipeline file holds [[pass]] "
            "tables and an optional [gate] table"
        )
    tables = data.get("pass")
    if not isinstance(tables, list) or not tables:
        raise PipelineError(f"{p}: no [[pass]] tables; see `graphslim passes` for pass names")
    specs = []
    for i, t in enumerate(tables, 1):
        if not isinstance(t, dict):
            raise PipelineError(
                f"{p}: [[pass]] number {i} is not a table; write [[pass]] name = ..."
            )
        if "name" not in t:
            raise PipelineError(f"{p}: [[pass]] number {i} has no 'name'")
        opts = {k: v for k, v in t.items() if k != "name"}
        specs.append(PassSpec(str(t["name"]), opts))
    return specs


def parse_gate(path: str | Path):
    """The ``[gate]`` table of a TOML pipeline file as a :class:`graphslim.tasks.GateSpec`, or
    None when the file has none."""
    from graphslim.tasks import GateSpec

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"{p}: cannot read the pipeline file: {exc}") from None
    if "gate" not in data:
        return None
    try:
        return GateSpec.from_table(data["gate"], str(p))
    except TypeError as exc:
        raise PipelineError(f"{p}: [gate]: {exc}") from None
    except GraphslimError as exc:
        raise PipelineError(str(exc)) from None


def build(specs: Sequence[PassSpec], registry: Registry | None = None) -> list[Pass]:
    reg = registry or default_registry()
    return [reg.get(s.name)(**s.options) for s in specs]


def check_order(passes: Sequence[Pass]) -> None:
    position: dict[str, int] = {}
    for i, p in enumerate(passes):
        position.setdefault(p.name, i)
    for i, p in enumerate(passes):
        for other in p.after:
            j = position.get(other)
            if j is not None and j > i:
                raise PipelineError(
                    f"pipeline order: '{p.name}' must run after '{other}'; move '{other}' earlier"
                )
        for other in p.before:
            j = position.get(other)
            if j is not None and j < i:
                raise PipelineError(
                    f"pipeline order: '{p.name}' must run before '{other}'; move '{p.name}' earlier"
                )


@dataclass
class StageStats:
    nodes: int
    params: int
    macs: int | None

    @classmethod
    def of(cls, model: onnx.ModelProto, input_shapes=None) -> StageStats:
        s: ModelStats = model_stats(model, input_shapes)
        return cls(s.nodes, s.params, s.macs)


@dataclass
class PassRecord:
    name: str
    numerics: str
    options: dict[str, Any]
    seconds: float
    modified: bool
    before: StageStats
    after: StageStats
    counters: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    validation: Comparison | None = None
    details: list[dict[str, Any]] = field(default_factory=list)
    task: dict[str, Any] | None = None  # task metrics after this pass (with a gate)
    rolled_back: bool = False  # the gate undid this pass

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "numerics": self.numerics,
            "options": _jsonable(self.options),
            "seconds": round(self.seconds, 4),
            "modified": self.modified,
            "before": vars(self.before),
            "after": vars(self.after),
            "counters": self.counters,
            "skipped": [{"node": n, "reason": r} for n, r in self.skipped],
            "notes": self.notes,
            "details": _jsonable(self.details),
            "validation": self.validation.to_dict() if self.validation else None,
            "task": self.task,
            "rolled_back": self.rolled_back,
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


class Observer:
    """What a caller of :meth:`Pipeline.run` may watch: override the hooks wanted (the CLI's
    live progress and per-stage timing are one). Every hook defaults to doing nothing."""

    def pass_started(self, name: str, index: int, total: int) -> None:
        """Pass ``index`` of ``total`` starts (also for the task gate's scoring after it:
        ``name`` is then ``"<pass>: task gate, <metric>"``)."""

    def pass_done(self, record: PassRecord, model: onnx.ModelProto) -> None:
        """A pass ran (``record``), ``model`` is the current model after it (and after a
        rollback); e.g. to time every stage. Do not edit ``model``."""


@dataclass
class PipelineResult:
    model: onnx.ModelProto
    records: list[PassRecord]
    initial: StageStats
    validation: Comparison | None
    task: dict[str, Any] | None = None  # the final model's task metrics (with a gate)
    gate: Any = None  # the gate's GateVerdict on the final model (with a gate)

    @property
    def final(self) -> StageStats:
        return self.records[-1].after if self.records else self.initial

    @property
    def modified(self) -> bool:
        return any(r.modified and not r.rolled_back for r in self.records)

    def to_dict(self) -> dict:
        return {
            "initial": vars(self.initial),
            "final": vars(self.final),
            "passes": [r.to_dict() for r in self.records],
            "validation": self.validation.to_dict() if self.validation else None,
            "task": self.task,
            "gate": self.gate.to_dict() if self.gate is not None else None,
        }


class Pipeline:
    def __init__(
        self, passes: Sequence[Pass | str | PassSpec], *, registry: Registry | None = None
    ):
        reg = registry
        built: list[Pass] = []
        for p in passes:
            if isinstance(p, Pass):
                built.append(p)
            else:
                reg = reg or default_registry()
                spec = p if isinstance(p, PassSpec) else PassSpec(p)
                built.extend(build([spec], reg))
        check_order(built)
        self.passes = built
        self.gate = None  # a GateSpec: the task gate the pipeline file brings ([gate])

    @classmethod
    def parse(cls, text: str, *, registry: Registry | None = None) -> Pipeline:
        return cls(parse_inline(text), registry=registry)

    @classmethod
    def from_toml(cls, path: str | Path, *, registry: Registry | None = None) -> Pipeline:
        pipe = cls(parse_toml(path), registry=registry)
        pipe.gate = parse_gate(path)
        return pipe

    @property
    def exact(self) -> bool:
        return all(p.numerics == "exact" for p in self.passes)

    def __repr__(self) -> str:
        return ",".join(repr(p) for p in self.passes)

    def run(
        self,
        model: onnx.ModelProto,
        *,
        ctx: PassContext | None = None,
        feeds: Sequence[dict[str, np.ndarray]] | None = None,
        validate: bool = True,
        validate_each: bool = False,
        tolerances: Sequence[Tolerance] | None = None,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        gate=None,
        observer: Observer | None = None,
        source: str | os.PathLike | None = None,
    ) -> PipelineResult:
        """Run every pass in order on a copy of ``model`` (the caller's model is untouched).

        ``feeds``: inputs for validation (default: one seeded random feed). ``tolerances``:
        default ``max-rel=1e-4`` for an all-exact pipeline; for lossy pipelines the error is
        measured and reported, and judged only against tolerances the caller gives.
        ``gate``: optional :class:`graphslim.tasks.TaskGate`, scored after every pass that
        modified the model; below its minimum the run stops, that pass is rolled back
        (``rec.rolled_back``), or the run goes on to be judged at the end, as the gate's
        ``on_fail`` says; the verdict on the final model (naming the stage that fell below
        the minimum) is ``result.gate``. ``gate=None`` uses the pipeline file's ``[gate]``
        (:attr:`gate`) when it has one, measured on ``feeds`` with the task read from the
        output layout; ``gate=False``: no gate. ``observer``: an :class:`Observer` told when
        each pass starts and ends (progress displays, per-stage timing). ``source``: the file
        ``model`` was read from, unchanged since; the validation's reference outputs then
        come from onnxruntime reading that file instead of a serialized copy of ``model``
        (1 s of the 9 s `graphslim run` took on a 273 MB YOLOv8x).
        """
        ctx = ctx or PassContext(input_shapes=input_shapes)
        input_shapes = input_shapes or ctx.input_shapes
        watch = observer or Observer()
        original = model
        if ctx.reference is None:
            ctx = replace(ctx, reference=original)  # the teacher of `finetune`
        current = onnx.ModelProto()
        current.CopyFrom(model)
        if tolerances is None:
            tolerances = DEFAULT_TOLERANCES if self.exact else ()
        check = _Checker(original, feeds, tolerances, ctx.seed, input_shapes, source)
        if validate or validate_each:
            check.feeds_for(original)  # an input the feeds cannot be made for fails up front
            check.prefetch()
        checked_in = _checks(original)
        if gate is None and self.gate is not None:
            gate = _gate_from_spec(self.gate, original, feeds)
        gate = gate or None
        stats = StageStats.of(current, input_shapes)
        initial = stats
        records: list[PassRecord] = []
        done: list[str] = []
        final_metrics = None
        for i, p in enumerate(self.passes):
            watch.pass_started(p.name, i, len(self.passes))
            kept = None
            if gate is not None and gate.on_fail == "rollback":
                kept = onnx.ModelProto()
                kept.CopyFrom(current)  # a pass may edit its input in place
            rec, current = _step(p, current, ctx, stats, input_shapes, checked_in, done)
            if gate is not None and rec.modified:
                watch.pass_started(f"{p.name}: task gate, {gate.metric}", i, len(self.passes))
                metrics = _judge(gate, rec, original, current, done)
                if rec.rolled_back:
                    current, rec.after = kept, stats
                else:
                    final_metrics = metrics
            if validate_each:
                rec.validation = check(current, p.name, done)
            watch.pass_done(rec, current)
            records.append(rec)
            done.append(p.name)
            stats = rec.after
            log.info("%s: modified=%s %.2fs", p.name, rec.modified, rec.seconds)
        validation = None
        if validate:
            last = records[-1].validation if records else None
            validation = last or check(current, "pipeline", done)
        task = verdict = None
        if gate is not None:
            final_metrics = final_metrics or gate.measure(original, current)
            task = final_metrics.to_dict()
            stages = [(f"{k}:{r.name}", r.task, r.rolled_back) for k, r in enumerate(records, 1)]
            verdict = gate.verdict(final_metrics, stages)
        return PipelineResult(current, records, initial, validation, task, verdict)


def _step(p: Pass, current, ctx, stats, input_shapes, checked_in: bool, done: list[str]):
    """Run one pass on ``current``: its errors named with the passes before it, a modified
    result tidied (toposort, dead nodes) and checked; returns (record, model after)."""
    t0 = time.perf_counter()
    try:
        result: PassResult = p(current, ctx)
    except GraphslimError as exc:
        own = str(exc).startswith((f"{p.name}:", f"pass '{p.name}'"))
        named = str(exc) if own else f"{p.name}: {exc}"
        raise type(exc)(named + _after(done)) from exc
    except Exception as exc:
        raise PassFailedError(
            f"pass '{p.name}' failed{_after(done)}: {type(exc).__name__}: {exc}"
        ) from exc
    seconds = time.perf_counter() - t0
    current = result.model
    after = stats
    if result.modified:
        _tidy(current, p.name, done)
        ctx.cache.clear()
        if checked_in:
            _check_or_fail(current, p.name, done)
        after = StageStats.of(current, input_shapes)
    rec = PassRecord(
        name=p.name,
        numerics=p.numerics,
        options=options_dict(p.options),
        seconds=seconds,
        modified=result.modified,
        before=stats,
        after=after,
        counters=dict(result.counters),
        skipped=list(result.skipped),
        notes=list(result.notes),
        details=list(result.details),
    )
    return rec, current


def _judge(gate, rec: PassRecord, original, current, done: list[str]):
    """Score ``current`` on the task gate after ``rec``'s pass; below the minimum: stop
    (raise), mark the pass rolled back (the caller restores the model), or note it and go
    on, as the gate's ``on_fail`` says. Returns the metrics."""
    metrics = gate.measure(original, current)
    rec.task = metrics.to_dict()
    if gate.holds(metrics):
        return metrics
    why = gate.describe(metrics)
    if gate.on_fail == "stop":
        from graphslim.tasks import TaskGateFailed

        raise TaskGateFailed(f"task gate: after '{rec.name}'{_after(done)}, {why}; stopped")
    if gate.on_fail == "rollback":
        rec.rolled_back = True
        rec.notes.append(f"rolled back: {why}")
        log.warning("task gate: rolled back '%s' (%s)", rec.name, why)
    else:
        rec.notes.append(f"task gate: {why}")
        log.warning("task gate: after '%s', %s", rec.name, why)
    return metrics


def _gate_from_spec(spec, original: onnx.ModelProto, feeds):
    """The TaskGate of a pipeline file's ``[gate]`` for a Python caller (the CLI builds its
    own, with image geometry): the task from the output layout when ``auto``. Without feeds,
    or with a layout no rule knows, the run goes on ungated and says so."""
    from graphslim.tasks import UNKNOWN_TASK, Task, gate_task

    if not feeds:
        log.warning(
            "the pipeline's task gate needs feeds (real inputs of the model's domain); "
            "running WITHOUT it: nothing checks the task"
        )
        return None
    found = gate_task(spec.task, original, feeds)
    if found is None:
        log.warning("%s (pass gate=TaskGate(...) to name the task)", UNKNOWN_TASK)
        return None
    kind, output = found
    return spec.build(Task(kind, output=output), feeds)


class _Checker:
    """Compares candidates with the original on the caller's feeds, or on seeded random
    feeds made from the *candidate's* input signature: after fix-input-shapes{images:2,...}
    the candidate wants batch 2, which the original (batch 'N') accepts too. The original's
    outputs are computed once per distinct feed shape.

    With the caller's feeds and the original's ``source`` file, :meth:`prefetch` computes the
    reference outputs in a background thread while the passes run: onnxruntime reads the
    file (the thread never touches a proto the passes may read) and releases the GIL while
    it runs. On a 273 MB YOLOv8x, 2 cores, the 3 s of reference runs then overlap the 2 s
    pruning pass instead of following it."""

    def __init__(self, original, feeds, tolerances, seed: int, shapes, source=None) -> None:
        self.original, self.feeds, self.tolerances = original, feeds, tolerances
        self.seed, self.shapes, self.source = seed, shapes, source
        self._reference: dict[tuple, tuple[list, list]] = {}
        self._pending: tuple[tuple, object] | None = None

    @staticmethod
    def _key(feeds) -> tuple:
        return tuple((k, v.shape) for f in feeds for k, v in sorted(f.items()))

    def prefetch(self) -> None:
        if self.feeds is None or self.source is None:
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graphslim-reference")
        future = pool.submit(reference_outputs, self.source, self.feeds)
        pool.shutdown(wait=False)  # the thread ends with its one task
        self._pending = (self._key(self.feeds), future)

    def feeds_for(self, model: onnx.ModelProto):
        if self.feeds is not None:
            return self.feeds
        from graphslim.feeds import random_feeds

        return random_feeds(model, count=1, seed=self.seed, shapes=self.shapes)

    def __call__(self, candidate: onnx.ModelProto, name: str, done: list[str]) -> Comparison:
        feeds = self.feeds_for(candidate)
        key = self._key(feeds)
        if self._pending is not None and self._pending[0] == key:
            future, self._pending = self._pending[1], None
            self._reference[key] = (feeds, future.result())  # its error is raised here
        if key not in self._reference:
            runs = self.original if self.source is None else self.source
            self._reference[key] = (feeds, reference_outputs(runs, feeds))
        feeds, reference = self._reference[key]
        return _compare_or_fail(
            self.original, candidate, feeds, self.tolerances, reference, name, done
        )


def _after(done: list[str]) -> str:
    return f" (after passes [{', '.join(done)}])" if done else ""


def _tidy(model: onnx.ModelProto, name: str, done: list[str]) -> None:
    g = model.graph
    try:
        G.toposort(g)
    except ValueError as exc:  # a cycle: no order fixes that
        raise PassFailedError(
            f"pass '{name}' produced an invalid graph{_after(done)}: {exc}"
        ) from exc
    G.remove_dead_nodes(g)
    G.remove_unused_initializers(g)
    G.remove_stale_value_info(g)


def _checks(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(checkable(model))
        return True
    except Exception as exc:
        log.warning("the input model does not pass the ONNX checker (%s); not checking passes", exc)
        return False


def _check_or_fail(model: onnx.ModelProto, name: str, done: list[str]) -> None:
    try:
        onnx.checker.check_model(checkable(model))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PassFailedError(
            f"pass '{name}' produced a model the ONNX checker rejects{_after(done)}: {first}"
        ) from exc


def _compare_or_fail(original, current, feeds, tolerances, reference, name, done) -> Comparison:
    try:
        return compare(original, current, feeds, tolerances, reference=reference)
    except GraphslimError as exc:
        raise PassFailedError(
            f"validation after '{name}' could not run{_after(done)}: {exc}"
        ) from exc
