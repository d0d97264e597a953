"""prune-channels: remove whole channels from the convolutions of any CNN ONNX graph.

The channel analysis (:mod:`graphslim.channels`) splits the graph's channels into classes
that must go together and groups of classes that share sources (residual Adds, SE gates,
shared weights); frozen groups (graph outputs, detection-head layouts, ops without a rule)
are left alone with their reason. Then:

1. Exactly-zero channels go first, whatever the ratio: a class whose every source filter and
   bias are zero, and which is still zero where a Conv/Gemm reads it (the ops between map
   0 to 0), contributes nothing; removing it keeps the outputs (``dead_channels_removed``).
2. Importance per class: the mean over its sources of the source's per-filter score divided
   by that source's mean score (every member votes equally):
   ``l1`` = mean |W[o]|, ``l2`` = sqrt(mean W[o]^2), ``bn-scale`` = |gamma[o]| of the
   BatchNormalization right after the source (l1 where there is none), ``activation`` =
   mean |y[o]| of the source's output on the context's feeds (seeded random feeds if none).
3. Selection: ``uniform`` removes ``ratio`` of each group's classes; ``global`` ranks the
   classes of all groups together (importances normalized per group) and removes the lowest
   ``ratio`` share of all prunable classes; a group matched by ``overrides`` keeps its own
   ratio in either scope. Kept counts are rounded up to ``round_to`` and never fall below
   ``min_channels`` (dead classes included); no tensor loses all of its channels (one half
   of a C2f split could, by a group-level choice). ``target_macs`` searches the ratio
   (bisection) whose estimated MACs reach that fraction of the original. ``budget``
   (``latency=0.5`` / ``macs=0.5``) gives every group its own ratio instead, greedily, least
   measured output error first (:mod:`passes._prune_budget`).
4. The same indices are removed from every member of a group: weights, biases, BatchNorm
   parameters, per-channel constants, and the input side of every consumer; Split sizes,
   Slice bounds, Reshape targets and Resize sizes follow.
5. ``reconstruct`` (with feeds): each Conv whose inputs lost channels gets its remaining
   weights refit by least squares so that its output matches the unpruned model's on the
   feeds (AIMET's channel-pruning reconstruction); per-layer errors before/after are
   recorded.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import partial
from typing import Literal

import onnx

from graphslim.channels import ChannelGraph, ChannelGroup, Editor, analyze
from graphslim.contract import Pass, PassContext, PassResult, option
from graphslim.metrics import COMPUTE_OPS
from passes._prune_reconstruct import apply_compensation, mean_compensation
from passes._prune_select import (
    dead_classes,
    estimate_macs,
    importance_by_class,
    keep_nonempty,
    select,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PruneChannelsOptions:
    ratio: float = option(0.0, help="fraction of channels removed from each group (0..0.95)")
    target_macs: float | None = option(
        None, help="reach this fraction of the original MACs instead of a fixed ratio"
    )
    importance: Literal["l1", "l2", "bn-scale", "activation"] = option(
        "l1", help="channel score: filter L1/L2 norm, BN |gamma|, or mean |activation|"
    )
    scope: Literal["uniform", "global"] = option(
        "uniform", help="same ratio per group, or one ranking across all groups"
    )
    round_to: int = option(8, help="round kept channel counts up to a multiple of this")
    min_channels: int = option(1, help="never keep fewer channels in a group")
    exclude: tuple[str, ...] = option((), help="regexes of source node names to leave alone")
    overrides: dict[str, float] = option(
        help="per-node ratio: {regex = ratio}; first match on a group's sources wins",
        factory=dict,
    )
    remove_dead: bool = option(True, help="remove exactly-zero channels (lossless)")
    compensate: bool = option(
        True,
        help="put the mean of removed input channels (on calibration feeds, --calib) back "
        "into consumer conv biases",
    )
    reconstruct: bool = option(False, help="refit consumer convs by least squares on feeds")
    max_samples: int = option(20000, help="rows per layer for the least-squares refit")
    budget: str | None = option(
        None,
        help="'latency=0.5' or 'macs=0.5': per-group ratios chosen greedily to meet it with "
        "the least output error (measured sensitivity; see passes/_prune_budget.py)",
    )
    budget_ratios: tuple[float, ...] = option(
        (0.25, 0.5, 0.75), help="candidate per-group ratios the budget search measures"
    )
    budget_checks: int = option(
        5,
        help="latency budget: rounds of build + measure against the input (onnxruntime CPU), "
        "searching lower when the measured ratio misses; 0 trusts the prediction",
    )

    def validate(self) -> None:
        if not 0.0 <= self.ratio <= 0.95:
            raise ValueError("ratio must be in [0, 0.95]")
        if self.target_macs is not None and not 0.05 <= self.target_macs <= 1.0:
            raise ValueError("target_macs must be in [0.05, 1]")
        if self.round_to < 1 or self.min_channels < 1:
            raise ValueError("round_to and min_channels must be >= 1")
        for pattern in list(self.exclude) + list(self.overrides):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regex {pattern!r}: {exc}") from None
        for value in self.overrides.values():
            if not 0.0 <= value <= 0.95:
                raise ValueError("override ratios must be in [0, 0.95]")
        if self.budget is not None:
            from passes._prune_budget import parse_budget

            parse_budget(self.budget)
            if self.target_macs is not None:
                raise ValueError("give budget or target_macs, not both")
        if not self.budget_ratios or not all(0 < r <= 0.95 for r in self.budget_ratios):
            raise ValueError("budget_ratios must be in (0, 0.95]")
        if self.budget_checks < 0:
            raise ValueError("budget_checks must be >= 0")


class PruneChannels(Pass):
    name = "prune-channels"
    summary = "structured channel pruning with channel groups (residual/concat/split safe)"
    numerics = "lossy"
    Options = PruneChannelsOptions
    after = ("constants-to-initializers", "fold-bn", "simplify")
    before = ("quantize-int8",)

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        o = self.options
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
        macs0 = estimate_macs(cg, set())

        # A group matched by an override keeps its own ratio, whatever the scope; the global
        # ranking shares the base ratio among the others.
        pinned = {g.id: r for g in prunable if (r := _override(g, o.overrides)) is not None}
        free = [g for g in prunable if g.id not in pinned]
        fixed = [g for g in prunable if g.id in pinned]

        def choose(ratio: float) -> set[int]:
            picked = select(
                free, scores, {g.id: ratio for g in free}, o.scope, o.round_to, o.min_channels, dead
            ) | select(fixed, scores, pinned, "uniform", o.round_to, o.min_channels, dead)
            return keep_nonempty(cg, prunable, picked | dead, scores, o.min_channels)

        budget_info: dict[str, float] = {}
        if o.budget is not None:
            from passes._prune_budget import (
                budget_ratios,
                check_latency,
                parse_budget,
                sensitivity,
            )

            def pick(ratios: dict[int, float]) -> set[int]:
                got = select(prunable, scores, ratios, "uniform", o.round_to, o.min_channels, dead)
                return keep_nonempty(cg, prunable, got | dead, scores, o.min_channels)

            sens = sensitivity(model, ctx, o)
            search = partial(budget_ratios, cg, prunable, pinned, pick, sens, o.budget)
            if parse_budget(o.budget)[0] == "latency" and o.budget_checks > 0:
                pinned, budget_info = check_latency(
                    model,
                    o.budget,
                    search,
                    lambda ratios: _pruned_copy(model, ctx, cg, pick(ratios)),
                    _timing_feed(model, ctx),
                    rounds=o.budget_checks,
                )
            else:
                pinned, budget_info = search()
            free, fixed = [], prunable
        ratio = o.ratio
        if o.target_macs is not None:
            ratio = _search_ratio(
                lambda r: estimate_macs(cg, choose(r)) / max(macs0, 1), o.target_macs
            )
        removed = choose(ratio)
        counters: dict[str, int | float] = {
            "groups": len(cg.groups),
            "groups_pruned": sum(1 for g in prunable if any(c in removed for c in g.classes)),
            "groups_frozen": sum(1 for g in cg.groups if g.frozen),
            "channels_removed": sum(_removed_positions(cg, g, removed) for g in prunable),
            "dead_channels_removed": len(dead & removed),
            "ratio_used": round(ratio, 4),
        } | budget_info
        if not removed:
            return PassResult(model, False, counters, skipped)
        reference = None
        if o.reconstruct:
            from passes._prune_reconstruct import capture

            reference = capture(model, cg, removed, ctx)
        deltas = mean_compensation(model, cg, removed, ctx) if o.compensate else {}
        Editor(cg, removed).apply()
        counters["convs_compensated"] = apply_compensation(model, cg, removed, deltas)
        notes = []
        if o.compensate and not ctx.feeds:
            notes.append(
                "compensate: no calibration feeds (--calib); removed channels' means not restored"
            )
        counters["macs_estimate_ratio"] = estimate_macs(cg, removed) / max(macs0, 1)
        if reference is not None:
            from passes._prune_reconstruct import refit

            details = refit(model, reference, ctx, o.max_samples)
            counters["layers_reconstructed"] = len(details)
            notes.extend(
                f"reconstruct {d['node']}: rel error {d['before']:.4f} -> {d['after']:.4f}"
                for d in details
            )
        return PassResult(model, True, counters, skipped, notes)


def _pruned_copy(model, ctx: PassContext, cg: ChannelGraph, removed: set[int]):
    """A copy of ``model`` with the classes ``removed`` (structure only: for timing)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    twin = analyze(copy, ctx.input_shapes)
    # Class ids come from the union-find's roots, which depend only on the graph: the same
    # graph analyzed again numbers its classes alike. Checked, since the ids index `removed`.
    if [sorted(g.classes) for g in twin.groups] != [sorted(g.classes) for g in cg.groups]:
        raise RuntimeError("prune-channels: channel classes differ between two analyses")
    Editor(twin, removed).apply()
    return copy


def _timing_feed(model, ctx: PassContext) -> dict:
    if ctx.feeds:
        return dict(ctx.feeds[0])
    from graphslim.feeds import random_feeds

    return random_feeds(model, count=1, seed=ctx.seed, shapes=ctx.input_shapes)[0]


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
        name = node.name or node.output[0]
        s = cg.slot(node.output[0]) if node.op_type in COMPUTE_OPS else None
        if name in cg.sources or s is None or not s.atoms:
            continue
        why = cg.frozen.get(s.atoms[0])
        if why is not None and why.startswith(f"{node.op_type} ({name})"):
            out.append((name, f"frozen: {why}"))
    return out
