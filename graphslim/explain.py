"""Where a slimmed model's time goes, and how far it is from what its work allows.

The *per-op limit* of a candidate against its original: onnxruntime's profiler times every
node of both (alternating runs, the minimum of each node's kernel time) at the optimization
level users run (``all``: NCHWc layouts, fused activations; ``level="basic"`` profiles the
unfused graph), and each original node's time is scaled by its own *work ratio* after
slimming:

* work of a Conv / ConvTranspose / Gemm / MatMul = its MACs, of any other node = its
  output elements (:func:`graphslim.metrics.node_work`, from each model's shapes);
* at ``all`` onnxruntime renames what it rewrites; a profiled node is mapped back to the
  model's node it runs: an NCHWc convolution is named after its output tensor + ``_nchwc``, a
  fusion after the node it replaced + ``/<Name>Fusion/`` (SiLU becomes QuickGelu, timed under
  its Mul); nodes of the runtime's own (NCHWc layout reorders) are rows of their own, their
  limit the original's time scaled by the time-weighted work ratio of the model's
  value-moving (non-compute) nodes;
* ``limit(n) = t_original(n) * work_candidate(n) / work_original(n)`` for a node in both
  models (matched by name: pruning keeps names), 0 for a node the candidate dropped, and
  the measured time of a node only the candidate has;
* the limit ratio is ``sum limit(n) / sum t_original(n)`` over kernel times: the profiled
  wall time is not used (profiling itself inflates it several-fold on a small model), so a
  model whose fixed overhead matters shows it as time above the limit.

``limit / original`` is the latency ratio a runtime that scales every kernel with its work
would give; ``measured / limit`` says how much of the time the work does not explain
(kernels less efficient on fewer channels, layout reorders, activations that stopped fusing,
Concat/Split copies). Per op type the table gives ms before and after, the share of the
original's time, and the measured ratio next to the work ratio, so the ops that do not
follow their work stand out.

Why ``all`` by default: at ``basic`` a convolution is im2col + GEMM, whose im2col part scales
with the input channels only (the stem conv of YOLOv8n, 3 -> 16 channels at 640, took as long
with 8 output channels), while at ``all`` onnxruntime runs direct NCHWc kernels; a limit from
``basic`` profiles judged the ``all`` latency by another kernel's scaling.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import asdict, dataclass

import onnx

from graphslim.graph import node_name
from graphslim.metrics import COMPUTE_OPS, infer_shapes
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
    level: str = "all"  # onnxruntime optimization level of the profiles

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
            "level": self.level,
        }


def node_work(model: onnx.ModelProto, input_shapes: dict | None = None) -> dict[str, float]:
    """Node name -> MACs (compute ops) or output elements (others), from ``model``'s shapes."""
    return work_of(model, infer_shapes(model, input_shapes))


LEVELS = ("all", "basic")
# onnxruntime's names at ``all``: an NCHWc convolution is named after its output tensor +
# "_nchwc"; a fusion after the node it replaced + "/<Name>Fusion/" (QuickGelu for SiLU).
_FUSED = re.compile(r"^(?P<base>.*)/\w+Fusion/?$")
# activations onnxruntime fuses into the Conv before it (its FusedConv kernels)
CONV_ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid")


def _canonical(model: onnx.ModelProto):
    """``f(profiled name) -> the model's node it runs`` (None: a node of the runtime's own).
    A convolution with a fused activation is named after the activation's output: its time
    goes to the Conv (whose MACs are the work), not to the activation."""
    nodes = {node_name(n): n for n in model.graph.node}
    producers = {o: node_name(n) for n in model.graph.node for o in n.output}

    def conv_of(name: str) -> str:
        n = nodes[name]
        while n.op_type in CONV_ACTIVATIONS and n.input and n.input[0] in producers:
            up = nodes[producers[n.input[0]]]
            if up.op_type not in ("Conv", *CONV_ACTIVATIONS):
                break
            n = up
        return node_name(n) if n.op_type == "Conv" else name

    def one(p: str) -> str | None:
        if p in nodes:
            return p
        if p.endswith("_nchwc") and p[: -len("_nchwc")] in producers:
            return conv_of(producers[p[: -len("_nchwc")]])
        m = _FUSED.match(p)
        return m.group("base") if m and m.group("base") in nodes else None

    return one


def _by_node(times: dict[str, float], model: onnx.ModelProto, ops: dict[str, str]):
    """``({node: ms}, {runtime op type: ms})``: profiled kernel times summed per model node,
    and the runtime's own nodes (layout reorders) per op type."""
    canon = _canonical(model)
    nodes: dict[str, float] = defaultdict(float)
    own: dict[str, float] = defaultdict(float)
    for p, ms in times.items():
        n = canon(p)
        if n is None:
            own[ops.get(p, "?")] += ms
        else:
            nodes[n] += ms
    return nodes, own


def explain(
    original: onnx.ModelProto,
    candidate: onnx.ModelProto,
    feed: dict,
    *,
    runs: int = 10,
    input_shapes: dict | None = None,
    level: str = "all",
) -> Explanation:
    """Profile both models side by side and compare each op type with its work (module doc)."""
    from graphslim.sensitivity import profile

    if level not in LEVELS:
        raise ValueError(f"level {level!r} is not one of {', '.join(LEVELS)}")
    ops: dict[str, str] = {}
    (p0, wall0), (p1, wall1) = profile(
        [original, candidate], feed, runs=runs, level=level, op_types=ops
    )
    (t0, own0), (t1, own1) = _by_node(p0, original, ops), _by_node(p1, candidate, ops)
    w0, w1 = node_work(original, input_shapes), node_work(candidate, input_shapes)
    op_of = {node_name(n): n.op_type for m in (original, candidate) for n in m.graph.node}
    acc: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    moved = [0.0, 0.0]  # time and limit of the matched nodes that move values (not compute)
    for name, ms in t0.items():
        op = op_of.get(name, "?")
        row = acc[op]
        row[0] += 1
        row[1] += ms
        if name in t1:
            ratio = w1.get(name, 0.0) / w0[name] if w0.get(name) else 1.0
            row[3] += ms * ratio
            if op not in COMPUTE_OPS:
                moved[0] += ms
                moved[1] += ms * ratio
    for name, ms in t1.items():
        row = acc[op_of.get(name, "?")]
        row[2] += ms
        if name not in t0:
            row[3] += ms  # only the candidate has it: its own time is its limit
    # The runtime's own nodes (layout reorders) move activations: their limit scales with
    # the time-weighted work ratio of the model's own value-moving nodes.
    elementwise = moved[1] / moved[0] if moved[0] else 1.0
    for op in set(own0) | set(own1):
        row = acc[f"{op} (runtime's)"]
        row[0] += 1
        row[1] += own0.get(op, 0.0)
        row[2] += own1.get(op, 0.0)
        row[3] += own0[op] * elementwise if op in own0 else own1[op]
    k0, k1 = sum(p0.values()), sum(p1.values())
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
        level=level,
    )
