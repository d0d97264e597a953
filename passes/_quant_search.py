"""auto_exclude's two stages: a float *suffix* searched from the outputs, then a greedy search.

First stage, the suffix.

Per-node SQNR (the greedy stage in :mod:`passes.quantize_int8`) ranks nodes by the noise they
add, which points into the backbone when every layer adds a little; a detector's damage is
usually at its end (box decoding, DFL Softmax/Conv, stride Muls, score branches), where values
leave the range their producers were calibrated for. Name-free, this stage tries the quantized
nodes nearest the outputs first.

Let ``c_1 .. c_n`` be the quantized nodes in reverse topological order (``c_1`` nearest an
output) and ``S_k = {c_1 .. c_k}``; ``e(k)`` is the output error (per output column,
:func:`passes._quant_sensitivity.output_error`) with ``S_k`` in float. With the budget
``K = min(n, max_excluded)``:

1. measure ``e(K)``; if ``e(K) > e(0) (1 - min_gain)`` the suffix does not help: stop;
2. bisect for the smallest ``k`` with ``e(k) <= max(tolerance, e(K) + 0.1 (e(0) - e(K)))``
   (90% of the suffix's gain at the fewest float nodes; ``e`` is close to monotone in ``k``,
   and where it is not the bisection still returns a measured ``k`` no worse than ``e(K)``'s
   bound), ``ceil(log2 K)`` more quantizations.
"""

from __future__ import annotations

import logging

import onnx

from graphslim.passes import _quant_sensitivity as S

log = logging.getLogger("graphslim.passes.quantize_int8")

ANALYSIS_FEEDS = 4  # feeds used to record intermediate tensors for the greedy stage
PATIENCE = 4  # the greedy stage stops after this many candidates in a row brought no gain


def suffix_order(pre: onnx.ModelProto, candidates: set[str]) -> list[str]:
    """Candidate nodes in reverse topological order (``pre`` is topologically sorted)."""
    return [n.name for n in reversed(pre.graph.node) if n.name in candidates]


def suffix_search(
    q, o, pre, qdq, error: float, excluded: list[str], reference, run, score=S.output_error
):
    """Returns ``(model, its path, error, kept nodes, detail row)``; ``run(model, feeds)``
    evaluates, ``score(reference outputs, outputs)`` is the error minimised (the output
    error, or the task error of ``quantize-int8{task=...}``).

    ``q`` is the pass's quantizer (``q.run(exclude, tag)``, ``q.feeds``); the detail row has
    the greedy stage's keys plus ``strategy = "suffix"``."""
    order = suffix_order(pre, S.quantized_nodes(qdq) - set(excluded))
    budget = min(len(order), o.max_excluded)
    row = {
        "strategy": "suffix",
        "node": f"last {budget} quantized node(s)",
        "op_type": "suffix",
        "drop_db": None,
        "sqnr_db": None,
        "error_before": error,
        "kept_float": [],
        "trials": [],
    }
    if budget == 0:
        row["error_after"] = error
        return qdq, q.last_path, error, [], row
    start_path = q.last_path
    measured: dict[int, tuple[float, onnx.ModelProto, object]] = {}

    def err(k: int) -> float:
        if k not in measured:
            model = q.run(excluded + order[:k], f"suffix{k}")
            e = score(reference, run(model, q.feeds))
            measured[k] = (e, model, q.last_path)
            row["trials"].append({"nodes": order[:k], "error": e})
            log.info("auto_exclude suffix: last %d node(s) float -> output error %.4g", k, e)
        return measured[k][0]

    e_full = err(budget)
    if e_full > error * (1 - max(o.min_gain, 1e-6)):
        row["error_after"] = error
        return qdq, start_path, error, [], row
    aim = max(o.tolerance, e_full + 0.1 * (error - e_full))
    lo, hi = 0, budget  # e(hi) <= aim; e(lo) > aim (lo = 0: the start)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if err(mid) <= aim:
            hi = mid
        else:
            lo = mid
    e, model, path = measured[hi]
    row["kept_float"] = order[:hi]
    row["error_after"] = e
    return model, path, e, order[:hi], row


def greedy_search(
    q, o, pre, qdq, error, excluded, reference, run, budget, best_path, score=S.output_error
):
    """Second stage: the node adding the most measured noise first (module doc of
    :mod:`passes.quantize_int8`), at most ``budget`` nodes, from the model at ``best_path``;
    returns (model, error, auto nodes, details)."""
    o_tol = o.tolerance
    recorder = S.TensorRecorder(q.pre_path, q.feeds[:ANALYSIS_FEEDS], q.work)
    auto: list[str] = []
    tried: set[str] = set()
    details: list[dict] = []
    trials = misses = 0
    sqnr, measured = {}, None
    while error > o_tol and len(auto) < budget and trials < 2 * budget + 2:
        if misses >= PATIENCE:
            log.info("auto_exclude: %d candidates in a row brought no gain; stopping", misses)
            break
        if measured != best_path:  # re-measure only after the model changed
            sqnr, measured = recorder.sqnr(best_path), best_path
        candidates = S.quantized_nodes(qdq) - set(excluded) - set(auto) - tried
        ranked = S.node_drops(pre, sqnr, candidates)
        if not ranked:
            break
        node, drop, out_db = ranked[0]
        tried.add(node)
        options = [[node]]
        ups = [p for p in S.input_producers(pre, node) if p in S.quantized_nodes(qdq)]
        ups = [p for p in ups if p not in auto and p not in excluded]
        if ups and len(auto) + 1 + len(ups) <= budget:
            options.append([node, *ups])
        row = {
            "node": node,
            "op_type": _op(pre, node),
            "drop_db": round(drop, 2),
            "sqnr_db": round(out_db, 2),
            "error_before": error,
            "kept_float": [],
            "trials": [],
        }
        for group in options:
            trials += 1
            cand = q.run(excluded + auto + group, f"auto{len(auto)}")
            err = score(reference, run(cand, q.feeds))
            log.info("auto_exclude: %s -> output error %.4g (was %.4g)", group, err, error)
            row["trials"].append({"nodes": group, "error": err})
            if err < error * (1 - max(o.min_gain, 1e-6)):
                qdq, error, best_path = cand, err, q.last_path
                auto += group
                tried.update(group)
                row["kept_float"] = group
                break
        misses = 0 if row["kept_float"] else misses + 1
        row["error_after"] = error
        details.append(row)
    return qdq, error, auto, details


def _op(model: onnx.ModelProto, name: str) -> str:
    return next((n.op_type for n in model.graph.node if n.name == name), "?")
