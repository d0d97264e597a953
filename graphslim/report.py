"""Run reports: what a pipeline did, as JSON (the record), Markdown (for people) and a PNG chart.

A report is a plain dict (see :func:`build_report`): the pipeline record of
:meth:`graphslim.pipeline.PipelineResult.to_dict` (per pass: options, seconds, counters,
skipped nodes with reasons, validation, task metrics) plus

* ``models``: ``before`` / ``after`` -- params, MACs, nodes, file size in bytes and, when
  timed, median latency;
* ``stages``: one row per stage (``input``, then each pass) -- MACs, params, latency (when
  timed), worst max-rel error and the gate's task metric (when measured) -- the data of the
  chart;
* ``latency``: the :class:`graphslim.bench.Timing` of every timed stage, measured alternately.

:func:`write_reports` writes ``<stem>.report.json``, ``<stem>.report.md`` and
``<stem>.report.png`` next to the output model. matplotlib is imported only there, with the
non-interactive Agg backend.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from graphslim.model_io import fits_protobuf, model_nbytes

# The task metric a chart shows for each task (the first gateable one).
CHART_METRIC = {"classify": "top1", "detect": "map50", "dense": "iou"}


def report_paths(output: str | Path) -> dict[str, Path]:
    """``<stem>.report.{json,md,png}`` next to ``output``."""
    out = Path(output)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return {k: out.with_name(f"{stem}.report.{k}") for k in ("json", "md", "png")}


def build_report(
    record: dict[str, Any],
    *,
    original: onnx.ModelProto,
    final: onnx.ModelProto,
    input_file_bytes: int | None = None,
    timings: Sequence[Any] | None = None,
    metric: str | None = None,
) -> dict[str, Any]:
    """``record``: ``{"input", "output", "pipeline"} | PipelineResult.to_dict()``.
    ``timings``: :class:`~graphslim.bench.Timing` per timed stage, labelled ``input`` or a
    pass's position and name (``"2:prune-channels"``), the first being ``input``.
    ``metric``: the task metric to chart (default: the task's usual one)."""
    passes = record.get("passes", [])
    latency = {t.label: t.median_ms for t in timings or ()}
    task = record.get("task")
    metric = metric or (CHART_METRIC.get(task["task"]) if task else None)
    stages = [_stage("input", record["initial"], latency.get("input"), 0.0, None, None)]
    for i, p in enumerate(passes, 1):
        label = f"{i}:{p['name']}"
        err = p["validation"]["outputs"] if p.get("validation") else None
        worst = (
            max((o["stats"].get("max-rel", math.nan) for o in err), default=None) if err else None
        )
        value = p["task"]["metrics"].get(metric) if p.get("task") and metric else None
        # an unmodified or rolled-back pass leaves the model, and so its latency, as it was
        same = not p["modified"] or p.get("rolled_back")
        lat = stages[-1]["latency_ms"] if same else latency.get(label)
        stages.append(_stage(label, p["after"], lat, worst, value, p))
    final_val = record.get("validation")
    if final_val and stages[-1]["max_rel"] is None:
        stages[-1]["max_rel"] = max(
            o["stats"].get("max-rel", math.nan) for o in final_val["outputs"]
        )
    models = {
        "before": _model_row(record["initial"], input_file_bytes, latency.get("input")),
        "after": _model_row(record["final"], _file_bytes(final), stages[-1]["latency_ms"]),
    }
    return record | {
        "models": models,
        "stages": stages,
        "latency": [t.to_dict() for t in timings] if timings else None,
        "chart_metric": metric,
    }


def _file_bytes(model: onnx.ModelProto) -> int:
    """Bytes the model takes as one .onnx file (estimated past protobuf's 2 GB limit)."""
    return model.ByteSize() if fits_protobuf(model) else model_nbytes(model)


def _stage(label, stats, latency, max_rel, value, rec) -> dict[str, Any]:
    return {
        "stage": label,
        "macs": stats.get("macs"),
        "params": stats.get("params"),
        "nodes": stats.get("nodes"),
        "latency_ms": latency,
        "max_rel": max_rel,
        "task_metric": value,
        "rolled_back": bool(rec and rec.get("rolled_back")),
    }


def _model_row(stats: dict, file_bytes: int | None, latency: float | None) -> dict[str, Any]:
    return {
        "params": stats.get("params"),
        "macs": stats.get("macs"),
        "nodes": stats.get("nodes"),
        "file_bytes": file_bytes,
        "latency_ms": latency,
    }


# ----------------------------------------------------------------------------- Markdown


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _ratio(a, b) -> str:
    return f"{b / a:.3f}x" if a and b is not None else "-"


def to_markdown(report: dict[str, Any], chart: str | None = None) -> str:
    """The report as Markdown; ``chart``: file name of the PNG to embed."""
    m = report["models"]
    lines = [
        f"# graphslim run report: {Path(report['input']).name} -> {Path(report['output']).name}",
        "",
        f"Pipeline: `{report['pipeline']}`",
        "",
        "## Model",
        "",
        "| | before | after | after / before |",
        "|---|---|---|---|",
    ]
    for key, name in (
        ("params", "parameters"),
        ("macs", "MACs"),
        ("nodes", "nodes"),
        ("file_bytes", "file size (bytes)"),
        ("latency_ms", "latency, median ms (onnxruntime CPU)"),
    ):
        b, a = m["before"][key], m["after"][key]
        lines.append(f"| {name} | {_num(b)} | {_num(a)} | {_ratio(b, a)} |")
    lines += [
        "",
        "Parameters: elements of float initializers (INT8 weights are not counted; see the "
        "file size). MACs: Conv/ConvTranspose/Gemm/MatMul, quantized or not.",
    ]
    if chart:
        lines += ["", f"![MACs, latency and error per stage]({chart})"]
    lines += [
        "",
        "## Passes",
        "",
        "| # | pass | kind | options | seconds | MACs after | counters | skipped | max-rel | task |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (p, st) in enumerate(zip(report["passes"], report["stages"][1:]), 1):
        opts = ", ".join(f"{k}={v}" for k, v in p["options"].items()) or "-"
        counters = ", ".join(f"{k}={_num(v)}" for k, v in p["counters"].items() if v) or "-"
        task = _task_text(p.get("task"))
        if p.get("rolled_back"):
            task += " (rolled back)"
        lines.append(
            f"| {i} | {p['name']} | {p['numerics']} | {opts} | {p['seconds']:.2f} | "
            f"{_num(st['macs'])} | {counters} | {len(p['skipped'])} | {_num(st['max_rel'])} | "
            f"{task} |"
        )
    skipped = [(p["name"], s["node"], s["reason"]) for p in report["passes"] for s in p["skipped"]]
    if skipped:
        lines += ["", f"## Declined nodes ({len(skipped)})", "", "| pass | node | reason |"]
        lines.append("|---|---|---|")
        lines += [f"| {a} | {b} | {c} |" for a, b, c in skipped[:100]]
        if len(skipped) > 100:
            lines.append(f"| ... | {len(skipped) - 100} more | see the JSON report |")
    val = report.get("validation")
    if val:
        verdict = "PASS" if val["passed"] else "FAIL"
        verdict = verdict if val["tolerances"] else "measured"  # nothing was judged
        tol = ", ".join(val["tolerances"]) or "none (measured only)"
        lines += ["", f"## Final validation: {verdict} on {val['feeds']} feed(s), tolerance {tol}"]
        lines += ["", "| output | max-abs | max-rel | mean-abs | p99-abs | cosine |"]
        lines.append("|---|---|---|---|---|---|")
        for o in val["outputs"]:
            st = o["stats"]
            cells = [_num(st.get(k)) for k in ("max-abs", "max-rel", "mean-abs", "p99-abs")]
            lines.append(f"| {o['name']} | {' | '.join(cells)} | {_num(st.get('cosine'))} |")
    gate = report.get("gate")
    if gate:
        lines += ["", f"## Task gate: {gate['verdict']}", "", gate["message"]]
        if gate.get("trail"):
            lines += ["", f"| stage | {gate['metric']} | |", "|---|---|---|"]
            for s in gate["trail"]:
                mark = "rolled back" if s["rolled_back"] else ""
                if s["stage"] == gate.get("stage"):
                    mark = f"below the minimum {gate['minimum']:.3g} here"
                lines.append(f"| {s['stage']} | {_num(s['value'])} | {mark} |")
    task = report.get("task")
    if task:
        lines += ["", f"## Task metrics ({task['task']}, final model against the input)", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_num(v)} |" for k, v in task["metrics"].items()]
        lines += [f"| {k} | {_num(v)} |" for k, v in task["details"].items()]
    if report.get("latency"):
        t0 = report["latency"][0]
        lines += [
            "",
            f"Latency: onnxruntime CPU, {t0['runs']} runs per stage alternating, "
            f"{t0['threads']} threads.",
        ]
    return "\n".join(lines) + "\n"


def _task_text(task: dict | None) -> str:
    if not task:
        return "-"
    return ", ".join(f"{k} {v:.3f}" for k, v in list(task["metrics"].items())[:2])


# ----------------------------------------------------------------------------- chart


def write_chart(report: dict[str, Any], path: str | Path) -> Path:
    """Bars of MACs, latency and error (worst max-rel; and the task metric) per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["stages"]
    labels = [s["stage"] for s in stages]
    x = list(range(len(stages)))
    panels = [("MACs (M)", [(s["macs"] or 0) / 1e6 for s in stages], "tab:blue")]
    if any(s["latency_ms"] is not None for s in stages):
        panels.append(("latency, median ms", [s["latency_ms"] or 0 for s in stages], "tab:green"))
    has_err = any(s["max_rel"] is not None for s in stages)
    has_task = any(s["task_metric"] is not None for s in stages)
    if has_err or has_task:
        panels.append(("error", None, None))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, values, color) in zip(axes[0], panels):
        if values is not None:
            ax.bar(x, values, color=color)
            ax.set_title(title)
        else:
            ax.set_title("error per stage")
            if has_err:
                errs = [s["max_rel"] if s["max_rel"] is not None else math.nan for s in stages]
                ax.plot(x, errs, "o-", color="tab:red", label="worst max-rel")
                ax.set_ylabel("max-rel vs input", color="tab:red")
            if has_task:
                tx = ax.twinx() if has_err else ax
                vals = [
                    s["task_metric"] if s["task_metric"] is not None else math.nan for s in stages
                ]
                vals[0] = 1.0 if math.isnan(vals[0]) else vals[0]  # the input agrees with itself
                tx.plot(x, vals, "s--", color="tab:purple", label=report.get("chart_metric"))
                tx.set_ylim(0, 1.05)
                tx.set_ylabel(f"{report.get('chart_metric')} vs input", color="tab:purple")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    names = " -> ".join(p["name"] for p in report["passes"])
    fig.suptitle(f"{Path(report['input']).name}: {names}"[:120], fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(report: dict[str, Any], output: str | Path) -> dict[str, Path]:
    """Write ``<stem>.report.json``, ``.md`` and ``.png`` next to ``output``; returns them."""
    from graphslim.model_io import atomic_write_bytes

    paths = report_paths(output)
    atomic_write_bytes(paths["json"], (json.dumps(report, indent=2, default=str) + "\n").encode())
    write_chart(report, paths["png"])
    atomic_write_bytes(paths["md"], to_markdown(report, paths["png"].name).encode())
    return paths


def read_report(path: str | Path) -> dict[str, Any]:
    """A report written by :func:`write_reports` (or ``graphslim run --json``)."""
    from graphslim.errors import OptionsError

    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise OptionsError(f"{p}: no such report file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OptionsError(f"{p}: not a JSON report ({exc})") from None
    if not isinstance(data, dict) or "passes" not in data or "initial" not in data:
        raise OptionsError(f"{p}: not a graphslim run report (no 'passes' / 'initial')")
    return data
