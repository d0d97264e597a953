"""The pruning entry point: a ratio, a MACs target or a latency/MACs budget, on a canonical
working copy of the model, with an honest account of what was reached.

What was asked, as a fraction of the original MACs: ``target_macs`` or a ``macs=`` budget
as given; a plain ``ratio`` r asks for what pruning every group would give: each compute
node keeps ``(1 - r)`` of its input channels unless it reads a graph input, and ``(1 - r)``
of its output channels unless it writes a graph output (a depthwise conv, whose input and
output channels are one, keeps ``1 - r``). When the estimate reached is more than a tenth above what was asked, the
record says so (``macs_asked``, ``macs_reached``, a note with the freeze reasons that hold
the most MACs) and ``strict=true`` makes it an error: a pruner that silently does nothing
on a plain export (deduplicated biases behind Identity nodes) is how users lose a day.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict

import onnx

from graphslim import graph as G
from graphslim.contract import PassContext, PassResult
from graphslim.errors import PreconditionError
from graphslim.metrics import COMPUTE_OPS, node_cost
from graphslim.pruning.canonical import canonical_copy
from graphslim.pruning.options import PruneOptions, parse_budget
from graphslim.pruning.plan import Plan, make_plan, prune_at, pruned_copy

log = logging.getLogger(__name__)

MISS_TOLERANCE = 0.10
"""Relative excess of the MACs reached over the MACs asked that is reported as a miss."""


def prune(model: onnx.ModelProto, options: PruneOptions, ctx: PassContext) -> PassResult:
    """Prune ``model`` as ``options`` say. The input is never edited: the work happens on a
    canonical copy (:func:`graphslim.pruning.canonical.canonical_copy`), returned when
    something was removed; otherwise the input comes back with ``modified=False``."""
    work, canon = canonical_copy(model)
    plan = make_plan(work, options, ctx)
    if options.budget is not None:
        result = _prune_to_budget(work, options, ctx, plan)
    else:
        result = prune_at(work, options, ctx, plan)
    result.counters.update({f"canonical_{k}": v for k, v in canon.items() if v})
    _account(result, options, plan)
    if not result.modified:
        result.model = model
    return result


def _prune_to_budget(model, options: PruneOptions, ctx: PassContext, plan: Plan) -> PassResult:
    from functools import partial

    from graphslim.pruning.budget import budget_ratios, check_latency, sensitivity

    t0 = time.perf_counter()
    sens = sensitivity(model, ctx, options, plan)
    t1 = time.perf_counter()
    search = partial(
        budget_ratios, plan.cg, plan.prunable, plan.pinned, plan.pick, sens, options.budget
    )
    if parse_budget(options.budget)[0] == "latency" and options.budget_checks > 0:
        ratios, info = check_latency(
            model,
            options.budget,
            search,
            lambda ratios: pruned_copy(model, ctx, plan, plan.pick(ratios)),
            _timing_feed(model, ctx),
            rounds=options.budget_checks,
        )
    else:
        ratios, info = search()
    # Where the budget's time went (the record shows it; the search is the slow part).
    info["budget_seconds_sensitivity"] = round(t1 - t0, 2)
    info["budget_seconds_search_and_checks"] = round(time.perf_counter() - t1, 2)
    return prune_at(model, options, ctx, plan, ratios=ratios, extra=info)


def _timing_feed(model, ctx: PassContext) -> dict:
    return dict(ctx.feeds_or_random(model, 1)[0])


def macs_asked(options: PruneOptions, plan: Plan) -> float | None:
    """The MACs fraction ``options`` ask for (module doc); None for a latency budget."""
    if options.target_macs is not None:
        return options.target_macs
    if options.budget is not None:
        kind, value = parse_budget(options.budget)
        return value if kind == "macs" else None
    if options.ratio <= 0:
        return None
    g = plan.cg.model.graph
    inputs = {i.name for i in g.input}
    outputs = {o.name for o in g.output}
    keep = 1.0 - options.ratio
    total = asked = 0.0
    for node in g.node:
        if node.op_type not in COMPUTE_OPS:
            continue
        m = float(node_cost(node, plan.cg.shapes).macs or 0)
        depthwise = node.op_type == "Conv" and G.attr(node, "group", 1) > 1
        f_in = 1.0 if node.input[0] in inputs or depthwise else keep
        f_out = 1.0 if node.output[0] in outputs else keep
        total += m
        asked += m * f_in * f_out
    return asked / total if total else None


def freeze_reasons(plan: Plan) -> list[tuple[str, float]]:
    """Why frozen groups are frozen, as (reason without node names, share of the model's
    convolution MACs those groups touch), largest share first."""
    total = sum(g.macs for g in plan.cg.groups) or 1
    shares: dict[str, float] = defaultdict(float)
    for grp in plan.cg.groups:
        if grp.frozen:
            shares[re.sub(r"\s*\([^)]*\)", "", grp.frozen)] += grp.macs / total
    return sorted(shares.items(), key=lambda kv: -kv[1])


def _account(result: PassResult, options: PruneOptions, plan: Plan) -> None:
    asked = macs_asked(options, plan)
    reached = result.counters.get("macs_estimate_ratio", 1.0) if result.modified else 1.0
    result.counters["macs_reached"] = round(float(reached), 4)
    if asked is None:
        return
    result.counters["macs_asked"] = round(asked, 4)
    if reached <= asked * (1 + MISS_TOLERANCE):
        return
    reasons = freeze_reasons(plan)
    frozen = sum(share for _, share in reasons)
    top = "; ".join(f"{reason} ({share:.0%})" for reason, share in reasons[:3] if share >= 0.01)
    why = [f"frozen groups hold {frozen:.0%} of the MACs" + (f": {top}" if top else "")]
    if options.round_to != 1 or options.min_channels > 1:
        step = "this CPU's channel block" if options.round_to == "auto" else options.round_to
        why.append(
            f"kept counts round up to multiples of {step} (min_channels {options.min_channels})"
        )
    message = f"prune-channels reached {reached:.2f} of the MACs, asked {asked:.2f}: " + "; ".join(
        why
    )
    top = reasons[:3]
    result.counters["macs_missed"] = 1
    result.notes.append(message)
    result.details.extend(
        {"freeze_reason": reason, "macs_share": round(share, 4)} for reason, share in top
    )
    log.warning(message)
    if options.strict:
        raise PreconditionError(message + " (strict=true; see `graphslim analyze`)")
