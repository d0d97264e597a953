"""prune-channels ``budget``: per-group ratios that meet a latency or MACs budget with the
least output error (AIMET's greedy compression-ratio selection, with measured latency).

Given each group's error curve ``e_g(r)`` at the candidate ratios (``1 - cosine`` of the
worst output with only ``g`` pruned at ``r``; ``e_g(0) = 0``; :mod:`graphslim.sensitivity`):

1. for an error threshold ``t``, every group takes the largest candidate ratio whose error is
   within ``t``: ``r_g(t) = max {r : e_g(r) <= t}``;
2. the cost of that choice is predicted without editing the graph: the classes it removes
   (selection, rounding to ``round_to`` and ``min_channels`` as for any ratio) give each
   node's size fraction, and ``latency = sum_n t_n(f_n) + fixed`` from the per-node profile
   (``latency=``), or the MACs estimate (``macs=``);
3. ``t`` is bisected over the measured error levels: the smallest threshold whose cost is
   within the budget wins (cost falls as ``t`` grows, since every ``r_g`` grows);
4. what that threshold prunes beyond the budget is given back: groups step down to their
   next smaller ratio, largest error first, while the cost stays within the budget.

Groups pinned by ``overrides`` keep their ratio. The curves are measured once per model and
options, on the context's feeds (seeded random feeds when it has none), and cached in
``ctx.cache``.

The latency prediction is a model, and on a real graph it can be far off: onnxruntime's
``all`` level reorders to blocked layouts (NCHWc, 8/16 channels a block on x86), fuses
activations, and a loaded CPU moves every number. So a ``latency`` budget is then *checked*
(NetAdapt's rule: measure, don't trust a proxy): :func:`check_latency` builds the candidate,
times it against the input model side by side (:func:`graphslim.bench.bench`, alternating
runs, ratio of medians), and when the measured ratio misses the budget, aims the search
lower and tries again, up to ``budget_checks`` rounds; a candidate measured more than
:data:`UNDERSHOOT` below the budget prunes more than asked, and the search aims higher. Of
the rounds measured, the pass keeps the least pruned one that meets the budget, and reports
its measured ratio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from graphslim import graph as G
from graphslim.channels import ChannelGraph, ChannelGroup
from graphslim.contract import PassContext
from graphslim.pruning.options import PruneOptions, parse_budget
from graphslim.pruning.select import estimate_macs
from graphslim.sensitivity import Sensitivity, measure, node_fractions

log = logging.getLogger(__name__)


def sensitivity(model, ctx: PassContext, options: PruneOptions, plan=None) -> Sensitivity:
    """The curves for ``model`` with these pruning options, cached in ``ctx.cache``;
    ``plan``: the pass's plan of ``model`` (saves a second analysis)."""
    prune = {  # measure what the pass will do
        "importance": options.importance,
        "round_to": options.round_to,
        "min_channels": options.min_channels,
        "exclude": tuple(options.exclude),
        "remove_dead": options.remove_dead,
        "compensate": options.compensate,
    }
    # The model is part of the key: a context may see several models.
    digest = G.fingerprint(model)
    key = (
        f"prune-channels/sensitivity/{digest}/{sorted(prune.items())}/{options.budget_ratios}"
        f"/{options.budget_feeds}"
    )
    if key not in ctx.cache:
        feeds = ctx.feeds_or_random(
            model, 2, warn="prune-channels budget: no calibration feeds; measuring on random inputs"
        )[: options.budget_feeds]
        ctx.cache[key] = measure(
            model,
            feeds,
            ratios=options.budget_ratios,
            input_shapes=ctx.input_shapes,
            prune_options=prune,
            calib=ctx.feeds,
            seed=ctx.seed,
            plan=plan,
        )
    return ctx.cache[key]


def budget_ratios(
    cg: ChannelGraph,
    prunable: list[ChannelGroup],
    pinned: dict[int, float],
    pick: Callable[[dict[int, float]], set[int]],
    sens: Sensitivity,
    budget: str,
    aim: float | None = None,
) -> tuple[dict[int, float], dict[str, float]]:
    """Per-group ratios for ``budget`` (see the module doc) and counters describing them.

    ``pick(ratios)`` -> the classes removed for per-group ``ratios`` (the pass's selection).
    ``aim``: the predicted cost to search for, when not the budget itself (a measured check
    found the prediction optimistic).
    """
    kind, value = parse_budget(budget)
    target = value if aim is None else aim
    curves = {c.head: c for c in sens.groups}
    free = [g for g in prunable if g.id not in pinned and g.sources[0] in curves]
    if kind == "latency":
        base = sens.latency.base_ms

        def cost(removed: set[int]) -> float:
            return sens.latency.predict(node_fractions(cg, removed)) / base
    else:
        macs0 = max(estimate_macs(cg, set()), 1)

        def cost(removed: set[int]) -> float:
            return estimate_macs(cg, removed) / macs0

    def ratios_at(t: float) -> dict[int, float]:
        chosen = dict(pinned)
        for g in free:
            c = curves[g.sources[0]]
            chosen[g.id] = max([0.0] + [r for r in sens.ratios if c.error(r) <= t])
        for g in prunable:
            chosen.setdefault(g.id, 0.0)
        return chosen

    levels = sorted({0.0} | {curves[g.sources[0]].error(r) for g in free for r in sens.ratios})
    lo, hi = 0, len(levels) - 1
    reached = cost(pick(ratios_at(levels[hi]))) <= target
    if not reached:
        log.warning(
            "prune-channels: budget %s not reachable with ratios up to %g; using the largest",
            budget,
            max(sens.ratios),
        )
    else:
        while lo < hi:
            mid = (lo + hi) // 2
            if cost(pick(ratios_at(levels[mid]))) <= target:
                hi = mid
            else:
                lo = mid + 1
    chosen = ratios_at(levels[hi])
    if reached:
        chosen = _give_back(chosen, free, curves, sens.ratios, lambda c: cost(pick(c)), target)
    info = {
        "budget_target": value,
        "budget_predicted": round(cost(pick(chosen)), 4),
        "budget_reached": int(reached),
        "budget_error_threshold": levels[hi],
    }
    for r in sens.ratios:
        info[f"budget_groups_at_{r:g}"] = sum(1 for g in free if chosen[g.id] == r)
    if kind == "latency":
        info["budget_base_ms"] = round(sens.latency.base_ms, 3)
    return chosen, info


def _give_back(chosen, free, curves, ratios, cost_of, target: float) -> dict[int, float]:
    """Step groups down to their next smaller candidate ratio while the predicted cost stays
    within ``target``: the threshold that meets the budget moves every group whose error is
    within it at once, which can prune far more than asked (a model whose every error is 0,
    e.g. on inputs it saturates on, goes to the largest ratio everywhere). Groups with the
    largest error at their ratio step down first; among equal errors, the smaller (fewer
    MACs) first, so the pruning that buys the most stays."""
    steps = sorted(ratios)
    changed = True
    while changed:
        changed = False
        order = sorted(
            (g for g in free if chosen[g.id] > 0),
            key=lambda g: (-curves[g.sources[0]].error(chosen[g.id]), g.macs),
        )
        for g in order:
            lower = max([0.0] + [r for r in steps if r < chosen[g.id]])
            trial = dict(chosen)
            trial[g.id] = lower
            if cost_of(trial) <= target:
                chosen, changed = trial, True
    return chosen


def check_latency(
    model,
    budget: str,
    search: Callable[[float | None], tuple[dict[int, float], dict[str, float]]],
    build: Callable[[dict[int, float]], object],
    feed: dict,
    *,
    rounds: int,
    runs: int = 10,
    margin: float = 0.03,
) -> tuple[dict[int, float], dict[str, float]]:
    """Measured check of a latency budget (module doc): ``search(aim)`` -> (ratios, info),
    ``build(ratios)`` -> the pruned candidate. Returns the ratios whose measured latency
    ratio meets the budget (see below), else those of the fastest round tried.

    A candidate meets the budget when its measured ratio (medians of alternating runs, as
    ``graphslim bench`` reports) is within ``budget * (1 - margin / 2)``: half the margin
    keeps a second measurement of the same model from landing just above the budget; the
    search stops at the first round in ``[budget - UNDERSHOOT, that]``. After a miss (above,
    or far below: pruned more than asked) the next aim is the secant through the last two
    (aim, measured) points, solved for ``budget * (1 - margin)``; with one point, or a secant
    that points the wrong way, the aim is scaled by the miss. Kept: the least pruned round
    that meets the budget, else the fastest."""
    from graphslim.bench import bench

    _, target = parse_budget(budget)
    goal, accept = target * (1 - margin), target * (1 - margin / 2)
    low = target - UNDERSHOOT
    aim = None
    points: list[tuple[float, float]] = []  # (aim, measured)
    rounds_info: list[tuple[float, dict[int, float], dict[str, float]]] = []
    tried: set[tuple] = set()
    done = 0
    for k in range(rounds):
        chosen, info = search(aim)
        key = tuple(sorted(chosen.items()))
        # An aim within one step of the last gives the same ratios: step on, the same way.
        up = bool(points) and points[-1][1] < low
        while key in tried and aim is not None and 0.05 < aim < 1.0:
            aim = min(1.0, aim * 1.03) if up else max(0.05, aim * 0.97)
            chosen, info = search(aim)
            key = tuple(sorted(chosen.items()))
        if key in tried:
            break
        tried.add(key)
        done = k + 1
        timings = bench([("input", model), ("candidate", build(chosen))], feed, warmup=2, runs=runs)
        measured = timings[1].median_ms / max(timings[0].median_ms, 1e-9)
        current = aim or target
        log.info(
            "budget check %d: aim %.3f, predicted %.3f, measured %.3f (%.1f / %.1f ms)",
            k + 1, current, info["budget_predicted"], measured,
            timings[1].median_ms, timings[0].median_ms,
        )  # fmt: skip
        info = info | {"budget_measured": round(measured, 4), "budget_aim": round(current, 4)}
        rounds_info.append((measured, chosen, info))
        if low <= measured <= accept:
            break
        points.append((current, measured))
        aim = _next_aim(points, goal)
    measured, chosen, info = _best_round(rounds_info, accept)
    info["budget_reached"] = int(measured <= accept)
    info["budget_checks"] = done
    if measured > accept:
        log.warning(
            "prune-channels: budget %s not met when measured (%.3f after %d checks)",
            budget,
            measured,
            done,
        )
    elif measured < low:
        log.warning(
            "prune-channels: budget %s met with room to spare: measured %.3f after %d checks "
            "(more pruned than asked)",
            budget,
            measured,
            done,
        )
    return chosen, info


UNDERSHOOT = 0.05
"""A measured latency ratio more than this below the budget prunes more than asked: the
check aims higher (less pruning) again, as it aims lower after a miss."""


def _best_round(rounds_info, accept: float):
    """The round to keep: among those meeting the budget the slowest (least pruned, closest
    to what was asked); when none meets it, the fastest."""
    meeting = [r for r in rounds_info if r[0] <= accept]
    if meeting:
        return max(meeting, key=lambda r: r[0])
    return min(rounds_info, key=lambda r: r[0])


def _next_aim(points: list[tuple[float, float]], goal: float) -> float:
    """The aim (a predicted ratio) expected to measure ``goal``, from the (aim, measured)
    points so far (misses above the budget, or rounds far below it): the secant through the
    last two when it points the right way, else the last aim scaled by the miss."""
    a1, m1 = points[-1]
    scaled = a1 * goal / m1
    if len(points) >= 2:
        a0, m0 = points[-2]
        if abs(a1 - a0) > 1e-6 and (m1 - m0) / (a1 - a0) > 0:
            secant = a1 + (goal - m1) * (a1 - a0) / (m1 - m0)
            if (secant - a1) * (goal - m1) > 0:
                return min(1.0, max(0.05, secant))
    return min(1.0, max(0.05, scaled))
