"""Pruning one model: the plan (channel groups, what may be pruned, importance scores) and
its execution at a ratio, a MACs target or per-group ratios.

Steps (the rules, see :mod:`graphslim.pruning.select` and :mod:`graphslim.channels`):

1. Exactly-zero channels go first, whatever the ratio (lossless).
2. Importance per class: the mean over its sources of each source's normalized filter score.
3. Selection: ``uniform`` removes ``ratio`` of each group's classes; ``global`` ranks all
   classes together; a group matched by ``overrides`` keeps its own ratio in either scope.
   Kept counts are rounded up to ``round_to``, never below ``min_channels``, and no tensor
   loses all of its channels. ``target_macs`` bisects the ratio whose estimated MACs reach
   that fraction.
4. The same indices leave every member of a group (weights, biases, BatchNorm parameters,
   per-channel constants, consumers' input side; Split sizes, Slice bounds, Reshape targets
   and Resize sizes follow), then removed means are compensated and, with ``reconstruct``,
   consumer convs are refit by least squares (:mod:`graphslim.pruning.reconstruct`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import onnx

from graphslim.channels import ChannelGraph, ChannelGroup, Editor, analyze, node_name
from graphslim.contract import PassContext, PassResult
from graphslim.metrics import COMPUTE_OPS
from graphslim.pruning.options import PruneOptions
from graphslim.pruning.reconstruct import apply_compensation, capture, mean_compensation, refit
from graphslim.pruning.select import (
    dead_classes,
    estimate_macs,
    importance_by_class,
    keep_nonempty,
    select,
)

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What can be pruned in ``cg.model`` with ``options``, and how each class scores."""

    cg: ChannelGraph
    options: PruneOptions
    prunable: list[ChannelGroup]
    skipped: list[tuple[str, str]]
    dead: set[int]
    scores: dict[int, float]
    macs0: int
    pinned: dict[int, float] = field(default_factory=dict)  # group id -> override ratio

    def choose(self, ratio: float) -> set[int]:
        """Classes removed at ``ratio`` (in the options' scope; overridden groups at theirs)."""
        o = self.options
        free = [g for g in self.prunable if g.id not in self.pinned]
        fixed = [g for g in self.prunable if g.id in self.pinned]
        picked = select(
            free, self.scores, {g.id: ratio for g in free}, o.scope, o.round_to, o.min_channels,
            self.dead,
        ) | select(fixed, self.scores, self.pinned, "uniform", o.round_to, o.min_channels, self.dead)  # fmt: skip
        return keep_nonempty(
            self.cg, self.prunable, picked | self.dead, self.scores, o.min_channels
        )

    def pick(self, ratios: dict[int, float]) -> set[int]:
        """Classes removed with a ratio per group id (the budget search's choice)."""
        o = self.options
        got = select(
            self.prunable, self.scores, ratios, "uniform", o.round_to, o.min_channels, self.dead
        )
        return keep_nonempty(self.cg, self.prunable, got | self.dead, self.scores, o.min_channels)

    def macs_fraction(self, removed: set[int]) -> float:
        return estimate_macs(self.cg, removed) / max(self.macs0, 1)


def make_plan(model: onnx.ModelProto, options: PruneOptions, ctx: PassContext) -> Plan:
    """Analyze ``model`` (not modified) and score its prunable classes."""
    o = options
    cg = analyze(model, ctx.input_shapes)
    skipped: list[tuple[str, str]] = []
    prunable: list[ChannelGroup] = []
    for grp in cg.groups:
        head = grp.sources[0]
        if grp.frozen:
            skipped.append((head, f"frozen: {grp.frozen}"))
        elif any(re.search(p, s) for p in o.exclude for s in grp.sources):
            skipped.append((head, "excluded by pattern"))
        else:
            prunable.append(grp)
    skipped.extend(_frozen_compute(cg))
    dead = dead_classes(cg, prunable) if o.remove_dead else set()
    scores = importance_by_class(cg, prunable, o.importance, ctx)
    pinned = {g.id: r for g in prunable if (r := _override(g, o.overrides)) is not None}
    return Plan(cg, o, prunable, skipped, dead, scores, estimate_macs(cg, set()), pinned)


def prune_at(
    model: onnx.ModelProto,
    options: PruneOptions,
    ctx: PassContext,
    plan: Plan | None = None,
    ratios: dict[int, float] | None = None,
    extra: dict[str, int | float] | None = None,
) -> PassResult:
    """Prune ``model`` in place at ``options.ratio`` (or the ratio meeting
    ``options.target_macs``), or at per-group ``ratios`` when given (``plan`` must then be
    the plan of this model). ``extra`` counters are merged into the record."""
    o = options
    plan = plan or make_plan(model, o, ctx)
    cg = plan.cg
    ratio = o.ratio
    if ratios is not None:
        removed = plan.pick(ratios)
    else:
        if o.target_macs is not None:
            ratio = _search_ratio(lambda r: plan.macs_fraction(plan.choose(r)), o.target_macs)
        removed = plan.choose(ratio)
    counters: dict[str, int | float] = {
        "groups": len(cg.groups),
        "groups_pruned": sum(1 for g in plan.prunable if any(c in removed for c in g.classes)),
        "groups_frozen": sum(1 for g in cg.groups if g.frozen),
        "channels_removed": channels_removed(plan, removed),
        "dead_channels_removed": len(plan.dead & removed),
        "ratio_used": round(ratio, 4),
    } | (extra or {})
    if not removed:
        return PassResult(model, False, counters, list(plan.skipped))
    # Estimated on the unedited graph (costs read the weights' shapes).
    counters["macs_estimate_ratio"] = plan.macs_fraction(removed)
    notes = []
    # Without calibration data the refit has nothing real to fit (random inputs rarely
    # help real data), and means come only from BatchNorm statistics: said, not hidden.
    refit_on = o.reconstruct and bool(ctx.feeds)
    reference = capture(model, cg, removed, ctx) if refit_on else None
    deltas = mean_compensation(model, cg, removed, ctx) if o.compensate else {}
    Editor(cg, removed).apply()
    counters["convs_compensated"] = apply_compensation(model, cg, removed, deltas)
    counters["calibration_feeds"] = len(ctx.feeds or [])
    if not ctx.feeds and (o.compensate or o.reconstruct):
        done = [
            f"{counters['convs_compensated']} convs compensated data-free from BatchNorm statistics"
            if o.compensate
            else "compensation off",
            "reconstruct off" if o.reconstruct else "",
        ]
        notes.append(
            "no calibration feeds (--calib): "
            + ", ".join(d for d in done if d)
            + "; give calibration images to restore removed channels' means and refit"
        )
    if reference is not None:
        details = refit(model, reference, ctx, o.max_samples)
        counters["layers_reconstructed"] = len(details)
        notes.extend(
            f"reconstruct {d['node']}: rel error {d['before']:.4f} -> {d['after']:.4f}"
            for d in details
        )
    return PassResult(model, True, counters, list(plan.skipped), notes)


def pruned_copy(
    model: onnx.ModelProto,
    ctx: PassContext,
    plan: Plan,
    removed: set[int],
    means: dict | None = None,
    compensate: bool = False,
) -> onnx.ModelProto:
    """A copy of ``model`` (the plan's model, unedited) with the classes ``removed``, on the
    plan's analysis (no second one); with ``compensate``, removed means go into consumer
    biases (``means`` from :func:`conv_input_means`, measured once for many candidates).
    No refit: for timing and measuring candidates."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    deltas = mean_compensation(model, plan.cg, removed, ctx, means) if compensate else {}
    Editor(plan.cg, removed, model=copy).apply()
    apply_compensation(copy, plan.cg, removed, deltas)
    return copy


def channels_removed(plan: Plan, removed: set[int]) -> int:
    """Output channels removed from the sources of the plan's prunable groups."""
    return sum(_removed_positions(plan.cg, g, removed) for g in plan.prunable)


def _override(grp: ChannelGroup, overrides: dict[str, float]) -> float | None:
    for pattern, value in overrides.items():
        if any(re.search(pattern, s) for s in grp.sources):
            return value
    return None


def _search_ratio(macs_at, target: float) -> float:
    """Smallest ratio whose estimated MACs fraction is <= target (bisection)."""
    lo, hi = 0.0, 0.95
    if macs_at(hi) > target:
        log.warning("prune-channels: target_macs %.2f not reachable; using ratio 0.95", target)
        return hi
    for _ in range(20):
        mid = (lo + hi) / 2
        if macs_at(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def _removed_positions(cg: ChannelGraph, grp: ChannelGroup, removed: set[int]) -> int:
    """Output channels removed from the group's sources (what a user counts as 'channels')."""
    total = 0
    for name in grp.sources:
        src = cg.sources[name]
        total += sum(1 for a in cg.slots[src.tensor].atoms if cg.uf[a] in removed)
    return total


def _frozen_compute(cg: ChannelGraph) -> list[tuple[str, str]]:
    """Compute nodes that are not sources at all (a Constant-node weight, a grouped Conv):
    their own output channels are frozen, and no group would report why."""
    out = []
    for node in cg.model.graph.node:
        name = node_name(node)
        s = cg.slot(node.output[0]) if node.op_type in COMPUTE_OPS else None
        if name in cg.sources or s is None or not s.atoms:
            continue
        why = cg.frozen.get(s.atoms[0])
        if why is not None and why.startswith(f"{node.op_type} ({name})"):
            out.append((name, f"frozen: {why}"))
    return out
