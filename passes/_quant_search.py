"""auto_exclude, first stage: keep a *suffix* of the graph in float, searched from the outputs.

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

from passes import _quant_sensitivity as S

log = logging.getLogger("passes.quantize_int8")


def suffix_order(pre: onnx.ModelProto, candidates: set[str]) -> list[str]:
    """Candidate nodes in reverse topological order (``pre`` is topologically sorted)."""
    return [n.name for n in reversed(pre.graph.node) if n.name in candidates]


def suffix_search(q, o, pre, qdq, error: float, excluded: list[str], reference, run):
    """Returns ``(model, its path, error, kept nodes, detail row)``; ``run(model, feeds)``
    evaluates.

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
            e = S.output_error(reference, run(model, q.feeds))
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
