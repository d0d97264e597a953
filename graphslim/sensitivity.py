"""Pruning sensitivity: what each channel group costs in output error and buys in latency.

For every prunable channel group ``g`` (:mod:`graphslim.channels`) and candidate ratio ``r``
(default 0.25 / 0.5 / 0.75), the model is pruned with *only* ``g`` at ``r`` (prune-channels
with the group's own override; its importance, rounding and minimum apply, so ``r`` may
remove nothing from a small group) and run on the feeds next to the original:

* error: per output the statistics of :mod:`graphslim.validate`; the curve keeps the worst
  output's ``max-rel`` and ``cosine`` (``1 - cosine`` is the error the budget search ranks by).

Latency comes from a per-node model, not from timing ``|groups| x |ratios|`` whole models
(on a shared CPU each of those differences is within the noise):

* onnxruntime's profiler times every node (``*_kernel_time`` events; ``basic`` optimization,
  where node names survive; ``all`` fuses and relayouts them) in the original and in the
  uniformly pruned models at each ratio, run alternately;
* a node's *size fraction* ``f`` is its MACs after / before (Conv/Gemm/MatMul) or its output
  elements after / before (everything else); its measured times give points ``(f, t)``
  (clipped so that ``t`` never grows as ``f`` falls: that is noise), and ``t(f)`` is
  interpolated linearly between them (proportionally below the smallest ``f``);
* profile latency = sum of node times + what the profiler does not see (unmatched kernels,
  session overhead), held fixed;
* calibration: the original and the uniform models are also timed whole at ``all`` (what
  users run: fused kernels, NCHWc layouts), alternately; their (profile ratio, measured
  ratio) points map any profile ratio to a predicted ``all`` ratio (piecewise linear,
  monotone). Predicted latency = the original's measured ms x that ratio.

Every time is the minimum over the runs, not the median: on a shared CPU, background load
only ever adds time, and the minimum of a few runs is the steadier estimate of the cost.

A group's latency contribution at ``r`` = predicted latency of the original minus that of
the model with only ``g`` pruned at ``r``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from graphslim import graph as G
from graphslim.channels import ChannelGraph, analyze
from graphslim.metrics import COMPUTE_OPS, node_work
from graphslim.pruning.canonical import canonical_copy
from graphslim.pruning.options import PruneOptions
from graphslim.pruning.plan import Plan, channels_removed, make_plan, pruned_copy
from graphslim.pruning.reconstruct import conv_input_means
from graphslim.validate import compare_outputs

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.25, 0.5, 0.75)
Feed = dict[str, np.ndarray]


# ------------------------------------------------------------------ data


@dataclass
class GroupCurve:
    """One group's curve: per ratio, channels removed, output error, predicted latency."""

    group: int
    head: str
    sources: list[str]
    channels: int
    macs_share: float
    removed: dict[float, int] = field(default_factory=dict)
    # max-rel, cosine, mean-abs; "task": the task metric, when one was given
    errors: dict[float, dict[str, float]] = field(default_factory=dict)
    latency_ms: dict[float, float] = field(default_factory=dict)  # whole model, only g pruned

    def error(self, ratio: float) -> float:
        """``1 - cosine`` of the worst output at ``ratio`` (0 at ratio 0)."""
        if ratio <= 0:
            return 0.0
        return max(0.0, 1.0 - self.errors[ratio]["cosine"])


@dataclass
class LatencyModel:
    """Per-node measured times at several size fractions, calibrated to whole-model latency
    at onnxruntime's ``all`` optimization; see the module doc."""

    points: dict[str, list[tuple[float, float]]]  # node -> [(fraction, ms)], fraction ascending
    fixed_ms: float  # unmatched kernels + session overhead
    sizes: dict[str, float]  # node -> size in the original (MACs or output elements)
    # (profile-predicted ratio, measured ratio at `all`) of the uniform models, ascending;
    # empty: no calibration (predictions stay in profile milliseconds).
    calibration: list[tuple[float, float]] = field(default_factory=list)
    measured_base_ms: float | None = None  # the original at `all`

    def node_ms(self, name: str, f: float) -> float:
        return _interp(self.points[name], f)

    def profile_ms(self, fractions: dict[str, float]) -> float:
        """Sum of node times at their size fractions (1.0 where not given) + the unseen."""
        return self.fixed_ms + sum(self.node_ms(n, fractions.get(n, 1.0)) for n in self.points)

    def predict(self, fractions: dict[str, float]) -> float:
        """Latency (ms) with each node at its size fraction (1.0 where not given)."""
        raw = self.profile_ms(fractions)
        if not self.calibration or not self.measured_base_ms:
            return raw
        return self.measured_base_ms * _interp(self.calibration, raw / self.profile_ms({}))

    @property
    def base_ms(self) -> float:
        return self.predict({})


def _interp(pts: list[tuple[float, float]], x: float) -> float:
    """Piecewise linear through ``pts`` (x ascending); proportional below the first point,
    flat above the last."""
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    if x < xs[0]:
        return ys[0] * x / xs[0] if xs[0] > 0 else ys[0]
    return float(np.interp(x, xs, ys))


def _monotone(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """y never falls as x grows: measurement noise that says otherwise is clipped (running
    minimum from the largest x down)."""
    pts = sorted(pts)
    for i in range(len(pts) - 2, -1, -1):
        pts[i] = (pts[i][0], min(pts[i][1], pts[i + 1][1]))
    return pts


@dataclass
class Sensitivity:
    ratios: list[float]
    feeds: int
    groups: list[GroupCurve]
    frozen_groups: int
    latency: LatencyModel
    profiled_ms: dict[str, float]  # "original" / "uniform-0.5" -> measured wall ms (basic)
    task_metric: str | None = None  # name of errors[r]["task"], when measured

    @property
    def base_ms(self) -> float:
        return self.latency.base_ms

    def to_dict(self) -> dict:
        return {
            "ratios": self.ratios,
            "feeds": self.feeds,
            "latency_method": "onnxruntime per-node profile (basic), interpolated, calibrated "
            "to whole-model latency at 'all' on the uniform models",
            "predicted_base_ms": self.base_ms,
            "profiled_ms": self.profiled_ms,
            "frozen_groups": self.frozen_groups,
            "task_metric": self.task_metric,
            "groups": [
                asdict(g)
                | {
                    "latency_saved": {
                        r: (self.base_ms - ms) / self.base_ms for r, ms in g.latency_ms.items()
                    }
                }
                for g in self.groups
            ],
        }


# ------------------------------------------------------------------ sizes


def node_sizes(cg: ChannelGraph) -> dict[str, float]:
    """Node name -> MACs (compute ops) or output elements (others), from ``cg``'s shapes."""
    return node_work(cg.model, cg.shapes)


def node_fractions(cg: ChannelGraph, removed: set[int]) -> dict[str, float]:
    """Node name -> size fraction after removing the classes ``removed`` (no editing):
    compute ops scale by their kept input x output channel shares (depthwise: output only),
    other ops by their output's kept channel share."""
    out = {}

    def kept(tensor: str) -> float:
        s = cg.slot(tensor)
        if s is None or not s.atoms:
            return 1.0
        return sum(1 for a in s.atoms if cg.uf[a] not in removed) / len(s.atoms)

    for node in cg.model.graph.node:
        if not node.output:
            continue
        name = G.node_name(node)
        if node.op_type in COMPUTE_OPS:
            depthwise = node.op_type == "Conv" and G.attr(node, "group", 1) > 1
            f = kept(node.output[0]) * (1.0 if depthwise else kept(node.input[0]))
        else:
            f = kept(node.output[0])
        if f < 1.0:
            out[name] = f
    return out


def _fractions_between(original: dict[str, float], pruned: dict[str, float]) -> dict[str, float]:
    return {n: pruned[n] / s for n, s in original.items() if s > 0 and n in pruned}


# ------------------------------------------------------------------ profiling


def profile(
    models: Sequence[onnx.ModelProto],
    feed: Feed,
    *,
    runs: int = 5,
    warmup: int = 2,
    level: str = "basic",
    op_types: dict | None = None,
) -> list[tuple[dict[str, float], float]]:
    """Per model: (node name -> minimum kernel ms over the runs, minimum wall ms), with the
    models run alternately (``level`` optimization: ``basic`` keeps node names; ``all`` is
    what users run, with fused and layout nodes of onnxruntime's own naming; all cores).
    ``op_types``: filled with profiled name -> the op type onnxruntime ran."""
    import time

    import onnxruntime as ort

    from graphslim.model_io import serialize_for_runtime

    with tempfile.TemporaryDirectory(prefix="graphslim-prof-") as tmp:
        sessions = []
        for k, m in enumerate(models):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.graph_optimization_level = {
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            }[level]
            so.enable_profiling = True
            # several sessions alternate: no idle spinning (see graphslim.runtime.Session)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.profile_file_prefix = os.path.join(tmp, f"m{k}")
            src = serialize_for_runtime(m, tmp)
            sessions.append(ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]))
        feeds = [{i.name: feed[i.name] for i in s.get_inputs() if i.name in feed} for s in sessions]
        walls: list[list[float]] = [[] for _ in sessions]
        for r in range(warmup + runs):
            for k, (s, f) in enumerate(zip(sessions, feeds)):
                t0 = time.perf_counter()
                s.run(None, f)
                if r >= warmup:
                    walls[k].append((time.perf_counter() - t0) * 1e3)
        results = []
        for s, wall in zip(sessions, walls):
            events = json.loads(Path(s.end_profiling()).read_text())
            per_run: dict[str, list[float]] = defaultdict(list)
            for e in events:
                if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                    name = e["name"][: -len("_kernel_time")]
                    per_run[name].append(e.get("dur", 0) / 1e3)
                    if op_types is not None:
                        op_types[name] = e.get("args", {}).get("op_name", "?")
            # Each node appears once per run (warm-up included). The minimum over the timed
            # runs: background load only ever adds time (this CPU may be shared).
            times = {n: float(np.min(v[-runs:])) for n, v in per_run.items()}
            results.append((times, float(np.min(wall))))
        return results


def latency_model(
    original: onnx.ModelProto,
    uniform: Sequence[onnx.ModelProto],
    feed: Feed,
    input_shapes: dict | None = None,
    *,
    runs: int = 5,
    known: tuple[dict[str, float], list[dict[str, float]]] | None = None,
) -> tuple[LatencyModel, list[float]]:
    """Fit the per-node latency model from profiles of ``original`` and ``uniform`` (the
    same graph pruned uniformly at several ratios) and calibrate it to their latency at
    ``all``; also returns each model's wall ms (profiled, then at ``all``). ``known``: the
    original's node sizes and each uniform model's node fractions, when the caller has
    them from its analysis (else each model is analyzed here)."""
    if known is not None:
        base_sizes, given = known
    else:
        base_sizes = node_sizes(analyze(original, input_shapes))
        given = [
            _fractions_between(base_sizes, node_sizes(analyze(m, input_shapes))) for m in uniform
        ]
    profiles = profile([original, *uniform], feed, runs=runs)
    raw: dict[str, list[tuple[float, float]]] = defaultdict(list)
    fixed = []
    fractions: list[dict[str, float]] = []
    for frac, (times, wall) in zip([{}, *given], profiles):
        fractions.append(frac)
        seen = 0.0
        for n, ms in times.items():
            if n in base_sizes:
                raw[n].append((frac.get(n, 1.0), ms))
                seen += ms
        fixed.append(max(wall - seen, 0.0))
    points = {}
    for n, pts in raw.items():
        by_f: dict[float, list[float]] = defaultdict(list)
        for f, ms in pts:
            by_f[round(f, 6)].append(ms)
        # Fewer channels never make a node slower.
        points[n] = _monotone([(f, float(np.mean(v))) for f, v in by_f.items()])
    # The original's unmatched time is what stays whatever is pruned.
    model = LatencyModel(points=points, fixed_ms=fixed[0], sizes=base_sizes)
    # Calibrate to what users run: whole-model latency at `all` (fusions, NCHWc layouts),
    # timed alternately; the per-node profile ranks the choices, this maps its ratios.
    from graphslim.bench import bench

    timings = bench(
        [(f"m{k}", m) for k, m in enumerate([original, *uniform])], feed, warmup=2, runs=runs
    )
    raw_base = model.profile_ms({})
    base_min = timings[0].min_ms
    model.calibration = _monotone(
        [(1.0, 1.0)]
        + [
            (model.profile_ms(f) / raw_base, t.min_ms / base_min)
            for f, t in zip(fractions[1:], timings[1:])
        ]
    )
    model.measured_base_ms = base_min
    log.info("latency calibration (profile ratio, measured ratio): %s", model.calibration)
    walls = [w for _, w in profiles] + [t.min_ms for t in timings]
    return model, walls


# ------------------------------------------------------------------ measurement


def measure(
    model: onnx.ModelProto,
    feeds: Sequence[Feed],
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    input_shapes: dict | None = None,
    prune_options: dict | None = None,
    calib: Sequence[Feed] | None = None,
    seed: int = 0,
    runs: int = 8,
    progress: Callable[[int, int, str], None] | None = None,
    task=None,
    metric: str | None = None,
    plan: Plan | None = None,
) -> Sensitivity:
    """Sensitivity curves of every prunable group of ``model`` on ``feeds`` (see module doc).

    ``prune_options``: prune-channels options (importance, round_to, min_channels, exclude,
    remove_dead) used for every candidate; ``calib``: feeds for activation importance.
    ``progress(done, total, label)`` after each candidate. ``task`` (a
    :class:`graphslim.tasks.Task`) and ``metric``: each candidate is also scored on the task
    against the original's outputs (``errors[r]["task"]``, e.g. map50 of the detections).
    ``plan``: the pruner's own plan of ``model``'s canonical copy (made with the same
    options), so a latency budget analyzes the model once.
    """
    from graphslim.runtime import Session

    ratios = sorted({float(r) for r in ratios})
    if not ratios or not all(0 < r <= 0.95 for r in ratios):
        raise ValueError("ratios must be in (0, 0.95]")
    if not feeds:
        raise ValueError("no feeds to measure on")
    from graphslim.contract import PassContext

    opts = dict(prune_options or {})
    options = PruneOptions(**{k: v for k, v in opts.items() if k not in ("ratio", "overrides")})
    options.validate()
    # Groups as the pruner sees them (Identity-read and Constant weights seen through). One
    # analysis serves every candidate: each is the plan's model edited with other classes.
    ctx = PassContext(seed=seed, feeds=calib, input_shapes=input_shapes)
    if plan is None:
        model, _ = canonical_copy(model)
        plan = make_plan(model, options, ctx)
    else:
        model = plan.cg.model
    cg = plan.cg
    means = conv_input_means(model, cg, calib) if options.compensate and calib else None
    base_sizes = node_sizes(cg)
    compute = {G.node_name(n) for n in cg.model.graph.node if n.op_type in COMPUTE_OPS}
    total_macs = sum(s for n, s in base_sizes.items() if n in compute) or 1.0
    prunable = plan.prunable
    none = {g.id: 0.0 for g in prunable}

    def candidate(removed: set[int]) -> onnx.ModelProto:
        return pruned_copy(model, ctx, plan, removed, means, compensate=options.compensate)

    with Session(model, label="original") as s:
        reference = [s.run(f) for f in feeds]
    if task is not None and metric is None:
        raise ValueError("a task needs the metric to record")

    def task_value(got) -> dict[str, float]:
        return {} if task is None else {"task": task.evaluate(reference, got, feeds).value(metric)}

    unchanged = task_value(reference)  # a candidate that removes nothing scores like this

    total = len(ratios) + len(prunable) * len(ratios)
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total, label)

    uniform, uniform_fractions = [], []
    for r in ratios:
        removed = plan.choose(r)
        uniform.append(candidate(removed) if removed else model)
        uniform_fractions.append(node_fractions(cg, removed))
        tick(f"uniform {r:g}")
    lat, walls = latency_model(
        model, uniform, feeds[0], input_shapes, runs=runs, known=(base_sizes, uniform_fractions)
    )
    labels = ["original"] + [f"uniform-{r:g}" for r in ratios]
    n = len(labels)
    profiled = {f"{lb} (profile, basic)": w for lb, w in zip(labels, walls[:n])}
    profiled |= {f"{lb} (all)": w for lb, w in zip(labels, walls[n:])}

    curves = []
    for g in prunable:
        curve = GroupCurve(
            group=g.id,
            head=g.sources[0],
            sources=list(g.sources),
            channels=g.channels,
            macs_share=g.macs / total_macs,
        )
        for r in ratios:
            removed = plan.pick(none | {g.id: r})
            pruned = candidate(removed) if removed else None
            if pruned is None:
                curve.removed[r] = 0
                curve.errors[r] = {"max-rel": 0.0, "cosine": 1.0, "mean-abs": 0.0}
                curve.errors[r] |= unchanged
                curve.latency_ms[r] = lat.base_ms
            else:
                curve.removed[r] = channels_removed(plan, removed)
                with Session(pruned, label=f"group {g.id} at {r:g}") as s:
                    got = [s.run({k: v for k, v in f.items() if k in s.input_names}) for f in feeds]
                c = compare_outputs(reference, got, ())
                curve.errors[r] = {
                    "max-rel": c.worst("max-rel"),
                    "cosine": c.worst("cosine"),
                    "mean-abs": c.worst("mean-abs"),
                } | task_value(got)
                curve.latency_ms[r] = lat.predict(node_fractions(cg, removed))
            tick(f"group {g.id} ({g.sources[0]}) at {r:g}")
        curves.append(curve)
    return Sensitivity(
        ratios=ratios,
        feeds=len(feeds),
        groups=curves,
        frozen_groups=sum(1 for g in cg.groups if g.frozen),
        latency=lat,
        profiled_ms=profiled,
        task_metric=metric if task is not None else None,
    )


# ------------------------------------------------------------------ plot


def plot(sens: Sensitivity, path: str | Path, *, top: int = 12) -> Path:
    """PNG: error (1 - cosine, log scale) and latency saved vs ratio for the ``top`` groups
    with the most latency saved at the middle ratio. Needs matplotlib (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid = sens.ratios[len(sens.ratios) // 2]
    base = sens.base_ms or 1.0
    ranked = sorted(sens.groups, key=lambda g: g.latency_ms.get(mid, base))[:top]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    xs = [0.0, *sens.ratios]
    for g in ranked:
        label = f"g{g.group} {g.head[-28:]}"
        # No point at ratio 0 (error 0) on a log scale.
        errs = [max(g.error(r), 1e-9) for r in sens.ratios]
        ax1.plot(sens.ratios, errs, marker="o", label=label)
        saved = [0.0] + [(base - g.latency_ms[r]) / base for r in sens.ratios]
        ax2.plot(xs, saved, marker="o", label=label)
    ax1.set_yscale("log")
    ax1.set_xlabel("ratio of the group's channels removed")
    ax1.set_ylabel("output error (1 - cosine, worst output)")
    ax2.set_xlabel("ratio of the group's channels removed")
    ax2.set_ylabel("predicted latency saved (share of the model)")
    ax2.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"pruning sensitivity, {len(sens.groups)} groups (top {len(ranked)} by latency)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
