"""Rich renderables for the CLI: tables built from results (library code never prints)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from graphslim.bench import Timing
from graphslim.pipeline import PipelineResult
from graphslim.summary import ModelSummary
from graphslim.validate import Comparison


def human(n: float | int | None, unit: str = "") -> str:
    if n is None:
        return "?"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:g}{unit}" if isinstance(n, float) else f"{n}{unit}"


def _arrow(a, b, unit: str = "") -> str:
    if a == b:
        return human(a, unit)
    return f"{human(a, unit)} -> {human(b, unit)}"


def summary_tables(s: ModelSummary) -> list[Table]:
    head = Table(title=f"{s.path or 'model'}", show_header=False, title_justify="left")
    head.add_column("what", style="bold")
    head.add_column("value")
    head.add_row("file size", human(s.file_bytes, "B"))
    head.add_row("IR / opset / producer", f"{s.ir_version} / {s.opset} / {s.producer or '-'}")
    head.add_row("nodes", str(s.nodes))
    head.add_row(
        "parameters", f"{human(s.params)} ({human(s.initializer_bytes, 'B')} of initializers)"
    )
    macs = human(s.macs) if s.macs is not None else f"{human(s.macs_known)} + unknown"
    head.add_row("MACs (Conv/ConvTranspose/Gemm/MatMul)", macs)
    if s.unknown_macs:
        head.add_row(
            "MACs unknown for",
            ", ".join(s.unknown_macs[:5]) + (" ..." if len(s.unknown_macs) > 5 else ""),
        )
    io = Table(title="inputs / outputs", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind, rows in (("in", s.inputs), ("out", s.outputs)):
        for r in rows:
            io.add_row(kind, r["name"], r["dtype"], str(r["shape"]))
    kinds = Table(title="MACs by op", title_justify="left")
    kinds.add_column("op")
    kinds.add_column("MACs", justify="right")
    kinds.add_column("share", justify="right")
    total = s.macs_known or 1
    for k, v in s.macs_by_kind.items():
        kinds.add_row(k, human(v), f"{100 * v / total:.1f}%")
    top = Table(title=f"top {len(s.top_nodes)} nodes by MACs", title_justify="left")
    for col in ("node", "op", "kind", "MACs", "share", "output"):
        top.add_column(col, justify="right" if col in ("MACs", "share") else "left")
    for n in s.top_nodes:
        top.add_row(
            n["name"],
            n["op"],
            n["kind"],
            human(n["macs"]),
            f"{100 * n['share']:.1f}%",
            str(n["output_shape"]),
        )
    hist = Table(title="op histogram", title_justify="left")
    hist.add_column("op")
    hist.add_column("count", justify="right")
    for op, c in s.op_histogram.items():
        hist.add_row(op, str(c))
    return [head, io, kinds, top, hist]


def pipeline_table(result: PipelineResult) -> Table:
    t = Table(title="passes", title_justify="left")
    for col in (
        "pass",
        "kind",
        "modified",
        "seconds",
        "nodes",
        "params",
        "MACs",
        "counters",
        "skipped",
        "max-rel",
    ):
        t.add_column(col, justify="right" if col in ("seconds", "skipped", "max-rel") else "left")
    for r in result.records:
        counters = ", ".join(f"{k}={_fmt(v)}" for k, v in r.counters.items() if v)
        err = f"{r.validation.worst('max-rel'):.2e}" if r.validation else "-"
        t.add_row(
            r.name,
            r.numerics,
            "yes" if r.modified else "no",
            f"{r.seconds:.2f}",
            _arrow(r.before.nodes, r.after.nodes),
            _arrow(r.before.params, r.after.params),
            _arrow(r.before.macs, r.after.macs),
            counters or "-",
            str(len(r.skipped)),
            err,
        )
    return t


def skipped_table(result: PipelineResult, limit: int = 20) -> Table | None:
    rows = [(r.name, n, why) for r in result.records for n, why in r.skipped]
    if not rows:
        return None
    t = Table(title=f"declined ({len(rows)})", title_justify="left")
    for col in ("pass", "node", "reason"):
        t.add_column(col)
    for row in rows[:limit]:
        t.add_row(*row)
    if len(rows) > limit:
        t.add_row("...", f"{len(rows) - limit} more", "see the JSON report")
    return t


def comparison_table(c: Comparison, title: str = "validation") -> Table:
    # With no tolerance nothing was judged: saying PASS there reads as a verdict it is not.
    verdict = "[green]PASS[/]" if c.passed else "[red]FAIL[/]"
    if not c.tolerances:
        verdict = "measured"
    tol = ", ".join(c.tolerances) or "none (measured only)"
    t = Table(
        title=f"{title}: {verdict} on {c.feeds} feed(s); tolerance {tol}", title_justify="left"
    )
    for col in ("output", "shape", "max-abs", "max-rel", "mean-abs", "p99-abs", "cosine", "result"):
        t.add_column(col, justify="left" if col in ("output", "shape", "result") else "right")
    for o in c.outputs:
        st = o.stats
        t.add_row(
            o.name,
            str(o.shape),
            *(
                f"{st[k]:.3e}" if k in st else "-"
                for k in ("max-abs", "max-rel", "mean-abs", "p99-abs")
            ),
            f"{st['cosine']:.6f}" if "cosine" in st else "-",
            "ok" if o.passed else "[red]" + "; ".join(o.failures) + "[/]",
        )
    return t


def bench_table(timings: Sequence[Timing]) -> Table:
    names = {"ort": "onnxruntime", "openvino": "OpenVINO"}
    used = dict.fromkeys(names.get(x.runtime, x.runtime) for x in timings)
    t = Table(
        title=f"{' + '.join(used)} CPU latency ({timings[0].runs} runs each, alternating, "
        f"{timings[0].threads} threads)",
        title_justify="left",
    )
    for col in ("model", "median ms", "p90 ms", "mean ms", "min ms", "ratio"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for x in timings:
        ratio = f"{x.ratio:.3f}x" if x.ratio is not None else "-"
        t.add_row(
            x.label,
            f"{x.median_ms:.3f}",
            f"{x.p90_ms:.3f}",
            f"{x.mean_ms:.3f}",
            f"{x.min_ms:.3f}",
            ratio,
        )
    return t


def _fmt(v) -> str:
    return f"{v:.2e}" if isinstance(v, float) else str(v)


def analysis_tables(rep: dict, limit: int = 40) -> list[Table]:
    """Tables for ``graphslim analyze``: prunable groups, then frozen ones with reasons."""
    head = Table(show_header=False, title="channel analysis", title_justify="left")
    head.add_column("what", style="bold")
    head.add_column("value")
    head.add_row(
        "groups",
        f"{len(rep['groups'])} ({rep['groups_prunable']} prunable, {rep['groups_frozen']} frozen)",
    )
    head.add_row("prunable share of conv/GEMM MACs", f"{100 * rep['prunable_macs_share']:.1f}%")
    tables = [head]
    for frozen in (False, True):
        rows = [g for g in rep["groups"] if bool(g["frozen"]) == frozen]
        rows.sort(key=lambda g: -g["macs"])
        t = Table(
            title=("frozen groups" if frozen else "prunable groups") + f" ({len(rows)})",
            title_justify="left",
        )
        for col in ("group", "sources", "channels", "MACs share") + (("reason",) if frozen else ()):
            t.add_column(col, justify="right" if col in ("channels", "MACs share") else "left")
        for g in rows[:limit]:
            srcs = ", ".join(g["sources"][:3]) + (
                f" +{len(g['sources']) - 3}" if len(g["sources"]) > 3 else ""
            )
            cells = [str(g["id"]), srcs, str(g["channels"]), f"{100 * g['macs_share']:.1f}%"]
            t.add_row(*cells, *([g["frozen"]] if frozen else []))
        if len(rows) > limit:
            t.add_row(
                "...", f"{len(rows) - limit} more (see --json)", "", "", *([""] if frozen else [])
            )
        tables.append(t)
    return tables


_VERDICT_STYLE = {"PASS": "green", "FAIL": "bold red", "NOT JUDGED": "yellow"}


def task_table(task: dict, title: str = "task metrics", verdict=None) -> Table:
    """A :meth:`graphslim.tasks.TaskMetrics.to_dict` as a two-column table; with the gate's
    ``verdict`` (a :class:`graphslim.tasks.GateVerdict` or its dict) in the title (its
    message: :func:`gate_line`)."""
    head = f"{title} ({task['task']}, candidate against the original)"
    if verdict is not None:
        v = verdict if isinstance(verdict, dict) else verdict.to_dict()
        head = f"{title}: [{_VERDICT_STYLE[v['verdict']]}]{v['verdict']}[/] ({task['task']})"
    t = Table(title=head, title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in task["metrics"].items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    for k, v in task["details"].items():
        t.add_row(f"[dim]{k}[/]", f"{v:.4g}" if isinstance(v, float) else str(v))
    return t


def gate_line(verdict) -> Text:
    """One line: the task gate's verdict and why (``task gate: FAIL: map50 0.03 < ...``)."""
    v = verdict if isinstance(verdict, dict) else verdict.to_dict()
    line = Text("task gate: ")
    line.append(v["verdict"], style=_VERDICT_STYLE[v["verdict"]])
    line.append(f": {v['message']}")
    return line


def report_tables(report: dict) -> list[Table | Text]:
    """Tables for ``graphslim report``: models before/after, stages, passes, task metrics."""
    tables = []
    models = report.get("models")
    if models:
        names = " -> ".join(p["name"] for p in report.get("passes", []))
        t = Table(
            title=f"{report.get('input', '?')} -> {report.get('output', '?')}: {names}",
            title_justify="left",
        )
        for col in ("", "before", "after", "ratio"):
            t.add_column(col, justify="left" if not col else "right")
        for key, name in (
            ("params", "params"),
            ("macs", "MACs"),
            ("nodes", "nodes"),
            ("file_bytes", "file size"),
            ("latency_ms", "latency ms"),
        ):
            b, a = models["before"].get(key), models["after"].get(key)
            if b is None and a is None:
                continue
            ratio = f"{a / b:.3f}x" if a is not None and b else "-"
            unit = "B" if key == "file_bytes" else ""
            cells = [
                "-" if v is None else f"{v:.2f}" if key == "latency_ms" else human(v, unit)
                for v in (b, a)
            ]
            t.add_row(name, *cells, ratio)
        tables.append(t)
    stages = report.get("stages")
    if stages:
        t = Table(title="stages", title_justify="left")
        for col in (
            "stage",
            "MACs",
            "params",
            "latency ms",
            "max-rel",
            report.get("chart_metric") or "task",
        ):
            t.add_column(col, justify="left" if col == "stage" else "right")
        for s in stages:
            t.add_row(
                s["stage"] + (" (rolled back)" if s.get("rolled_back") else ""),
                human(s["macs"]),
                human(s["params"]),
                f"{s['latency_ms']:.2f}" if s.get("latency_ms") is not None else "-",
                f"{s['max_rel']:.2e}" if s.get("max_rel") is not None else "-",
                f"{s['task_metric']:.4f}" if s.get("task_metric") is not None else "-",
            )
        tables.append(t)
    t = Table(title="passes", title_justify="left")
    for col in ("pass", "kind", "options", "seconds", "counters", "skipped", "notes"):
        t.add_column(col, justify="right" if col in ("seconds", "skipped") else "left")
    for p in report.get("passes", []):
        t.add_row(
            p["name"],
            p["numerics"],
            ", ".join(f"{k}={v}" for k, v in p["options"].items()) or "-",
            f"{p['seconds']:.2f}",
            ", ".join(f"{k}={_fmt(v)}" for k, v in p["counters"].items() if v) or "-",
            str(len(p["skipped"])),
            "; ".join(p.get("notes", []))[:120] or "-",
        )
    tables.append(t)
    if report.get("task"):
        tables.append(task_table(report["task"], "final task metrics", report.get("gate")))
    if report.get("gate"):
        tables.append(gate_line(report["gate"]))
    return tables


def sensitivity_table(sens, top: int) -> Table:
    """Per channel group (the ``top`` that save the most latency at the middle ratio):
    channels removed, 1 - cosine, max-rel, the task metric when recorded, latency saved %."""
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
    return t


def metric_label(metric: str) -> str:
    """Column / progress label of a fine-tune selection metric."""
    fixed = {"cosine": "output cosine", "accuracy": "label accuracy"}
    vs = "labels" if metric.startswith("label_") else "teacher"
    return fixed.get(metric, f"{metric.removeprefix('label_')} vs {vs}")


def finetune_start_line(info: dict) -> str:
    """Bridge parity figures, the losses and the selection metric of a fine-tune, one line."""
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
    where = f"; teacher in {info['teacher']} on {info['device']}" if "teacher" in info else ""
    return f"{what}; losses {losses}; best epoch by {metric_label(info['metric'])}{where}"


def finetune_table(result) -> Table:
    """Per epoch (0 = before training; the best marked *): losses, the selection metric, the
    output cosine, label accuracy, seconds."""
    t = Table(title="fine-tune (epoch 0 = before training)", title_justify="left")
    cols = ["epoch", "train loss", "val loss", metric_label(result.metric)]
    cols += [] if result.metric == "cosine" else ["output cosine"]
    accuracy = result.metric != "accuracy"  # else it is the selection column already
    for col in [*cols, *(["accuracy"] if accuracy else []), "seconds"]:
        t.add_column(col, justify="right")
    for h in result.history:
        mark = " *" if h.epoch == result.best_epoch else ""
        row = [f"{h.epoch}{mark}", f"{h.loss:.4g}", f"{h.val_loss:.4g}", f"{h.value:.4f}"]
        row += [] if result.metric == "cosine" else [f"{h.cosine:.4f}"]
        row += ["-" if h.accuracy is None else f"{h.accuracy:.4f}"] if accuracy else []
        t.add_row(*row, f"{h.seconds:.1f}")
    return t


def explain_table(e, measured: float | None = None) -> Table:
    """Per op type: profiled ms before / after, share of the original's kernel time, the time
    ratio next to the work ratio; the title has the per-op limit (graphslim.explain)."""
    head = f"measured {measured:.2f}x, " if measured is not None else ""
    t = Table(
        title=f"where the time goes: {head}kernels {e.kernel_ratio:.2f}x, per-op limit "
        f"{e.limit_ratio:.2f}x (each op's time scaled by its work; onnxruntime {e.level} "
        "profiles)",
        title_justify="left",
    )
    for col in ("op type", "nodes", "ms before", "ms after", "share", "time ratio", "work ratio"):
        t.add_column(col, justify="right" if col != "op type" else "left")
    for r in e.rows:
        t.add_row(
            r.op_type, str(r.nodes), f"{r.ms_before:.2f}", f"{r.ms_after:.2f}",
            f"{100 * r.share:.1f}%", f"{r.ratio:.2f}", f"{r.work_ratio:.2f}",
        )  # fmt: skip
    return t
