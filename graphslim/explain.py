"""Where a slimmed model's time goes, and how far it is from what its work allows.

The *per-op limit* of a candidate against its original: onnxruntime's profiler times every
node of both (``basic`` optimization, where node names survive; alternating runs, the
minimum of each node's kernel time), and each original node's time is scaled by its own
*work ratio* after slimming:

* work of a Conv / ConvTranspose / Gemm / MatMul = its MACs, of any other node = its
  output elements (:func:`graphslim.metrics.node_work`, from each model's shapes);
* ``limit(n) = t_original(n) * work_candidate(n) / work_original(n)`` for a node in both
  models (matched by name: pruning keeps names), 0 for a node the candidate dropped, and
  the measured time of a node only the candidate has;
* the limit ratio is ``sum limit(n) / sum t_original(n)`` over kernel times: the profiled
  wall time is not used (profiling itself inflates it several-fold on a small model), so a
  model whose fixed overhead matters shows it as time above the limit.

``limit / original`` is the latency ratio a runtime that scales every kernel with its work
would give; ``measured / limit`` says how much of the time the work does not explain
(layout reorders, activations that stopped fusing, Concat/Split copies). Per op type the
table gives ms before and after, the share of the original's time, and the measured ratio
next to the work ratio, so the ops that do not follow their work stand out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass

import onnx

from graphslim.graph import node_name
from graphslim.metrics import infer_shapes
from graphslim.metrics import node_work as work_of


@dataclass
class OpRow:
    op_type: str
    nodes: int
    ms_before: float
    ms_after: float
    limit_ms: float
    share: float  # of the original's profiled kernel time

    @property
    def ratio(self) -> float:
        return self.ms_after / self.ms_before if self.ms_before else math.nan

    @property
    def work_ratio(self) -> float:
        return self.limit_ms / self.ms_before if self.ms_before else math.nan


@dataclass
class Explanation:
    rows: list[OpRow]
    kernel_ms_before: float
    kernel_ms_after: float
    limit_kernel_ms: float
    wall_ms_before: float  # while profiling: inflated, for reference only
    wall_ms_after: float

    @property
    def measured_ratio(self) -> float:
        return self.wall_ms_after / self.wall_ms_before

    @property
    def limit_ratio(self) -> float:
        """The latency ratio if every kernel scaled with its work (module doc)."""
        return self.limit_kernel_ms / self.kernel_ms_before if self.kernel_ms_before else 1.0

    @property
    def kernel_ratio(self) -> float:
        """Profiled kernel time after / before (``basic`` level)."""
        return self.kernel_ms_after / self.kernel_ms_before if self.kernel_ms_before else 1.0

    @property
    def over_limit(self) -> float:
        return self.kernel_ratio / self.limit_ratio

    def to_dict(self) -> dict:
        return {
            "rows": [asdict(r) | {"ratio": r.ratio, "work_ratio": r.work_ratio} for r in self.rows],
            "kernel_ms_before": self.kernel_ms_before,
            "kernel_ms_after": self.kernel_ms_after,
            "limit_kernel_ms": self.limit_kernel_ms,
            "wall_ms_before": self.wall_ms_before,
            "wall_ms_after": self.wall_ms_after,
            "measured_ratio": self.measured_ratio,
            "kernel_ratio": self.kernel_ratio,
            "limit_ratio": self.limit_ratio,
            "over_limit": self.over_limit,
        }


def node_work(model: onnx.ModelProto, input_shapes: dict | None = None) -> dict[str, float]:
    """Node name -> MACs (compute ops) or output elements (others), from ``model``'s shapes."""
    return work_of(model, infer_shapes(model, input_shapes))


def explain(
    original: onnx.ModelProto,
    candidate: onnx.ModelProto,
    feed: dict,
    *,
    runs: int = 10,
    input_shapes: dict | None = None,
) -> Explanation:
    """Profile both models side by side and compare each op type with its work (module doc)."""
    from graphslim.sensitivity import profile

    (t0, wall0), (t1, wall1) = profile([original, candidate], feed, runs=runs)
    w0, w1 = node_work(original, input_shapes), node_work(candidate, input_shapes)
    op_of = {node_name(n): n.op_type for m in (original, candidate) for n in m.graph.node}
    acc: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for name, ms in t0.items():
        row = acc[op_of.get(name, "?")]
        row[0] += 1
        row[1] += ms
        if name in t1:
            ratio = w1.get(name, 0.0) / w0[name] if w0.get(name) else 1.0
            row[3] += ms * ratio
    for name, ms in t1.items():
        row = acc[op_of.get(name, "?")]
        row[2] += ms
        if name not in t0:
            row[3] += ms  # only the candidate has it: its own time is its limit
    k0, k1 = sum(t0.values()), sum(t1.values())
    rows = [
        OpRow(op, int(n), before, after, limit, before / k0 if k0 else 0.0)
        for op, (n, before, after, limit) in acc.items()
    ]
    rows.sort(key=lambda r: -r.ms_before)
    return Explanation(
        rows=rows,
        kernel_ms_before=k0,
        kernel_ms_after=k1,
        limit_kernel_ms=sum(r.limit_ms for r in rows),
        wall_ms_before=wall0,
        wall_ms_after=wall1,
    )
