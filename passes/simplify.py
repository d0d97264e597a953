"""simplify: constant folding, shape inference and the onnx optimizer's exact fusions, by onnxsim.

onnxsim does the work; this pass makes it safe to run on models we did not write:

* the result is compared with the input in onnxruntime on the context's feeds (or seeded
  random feeds) and kept only when every output matches within ``tolerance`` (max-rel);
* when onnxsim raises, or the outputs differ, the input graph is kept unchanged
  (``modified=False``) and the reason is recorded; the pipeline goes on;
* IR version, opset imports, producer and metadata of the input are restored on the result
  (onnxsim may bump or annotate them), so only the graph changes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import onnx

from graphslim.contract import Pass, PassContext, PassResult, option
from graphslim.errors import GraphslimError, PreconditionError
from graphslim.feeds import FeedError, random_feeds
from graphslim.model_io import needs_external_data
from graphslim.validate import Tolerance, compare

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SimplifyOptions:
    optimize: bool = option(True, help="run onnxsim's onnx-optimizer fusions (not only folding)")
    skip_fuse_bn: bool = option(False, help="leave BatchNormalization to the fold-bn pass")
    tolerance: float = option(
        1e-4, help="max-rel error allowed between input and result (or max-abs 1e-6)"
    )
    check_feeds: int = option(2, help="random feeds for the check when the context has none")

    def validate(self) -> None:
        if self.tolerance < 0:
            raise ValueError("tolerance must be >= 0")
        if self.check_feeds < 1:
            raise ValueError("check_feeds must be >= 1")


class Simplify(Pass):
    name = "simplify"
    summary = "onnxsim constant folding + exact fusions, checked, input kept on failure"
    numerics = "exact"
    in_place = False  # returns a new model; the input is left as it was
    Options = SimplifyOptions

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        if needs_external_data(model):
            return _keep(model, "model is over 2 GB; onnxsim is not run on it")
        feeds = ctx.feeds
        if not feeds:
            try:
                feeds = random_feeds(
                    model, count=self.options.check_feeds, seed=ctx.seed, shapes=ctx.input_shapes
                )
            except FeedError as exc:
                raise PreconditionError(f"cannot check the result: {exc}") from exc
        reasons: list[str] = []
        for optimize, skip_fuse_bn in self._attempts():
            simplified, why, err = _try(
                model, feeds, optimize, skip_fuse_bn, self.options.tolerance
            )
            if simplified is None:
                reasons.append(why)
                continue
            notes = (
                [f"onnxsim retried with {why}; earlier: {'; '.join(reasons)}"] if reasons else []
            )
            counters = {
                "nodes_removed": len(model.graph.node) - len(simplified.graph.node),
                "check_max_rel": err,
            }
            if _graph_bytes(simplified) == _graph_bytes(model):
                # onnxsim only annotated shapes (value_info) or reordered nodes: no change.
                return PassResult(model, False, counters, notes=notes)
            return PassResult(simplified, True, counters, notes=notes)
        return _keep(model, "; ".join(reasons))

    def _attempts(self) -> list[tuple[bool, bool]]:
        """onnxsim settings to try in turn. onnx-optimizer's BN fusion works in float32 and
        loses precision on BNs with huge running variance (seen: PP-OCRv4 det, var ~1e8,
        2e-3 relative error); fold-bn does it in float64, so the fallbacks skip that fusion,
        then all optimizer fusions (constant folding only)."""
        first = (self.options.optimize, self.options.skip_fuse_bn)
        tries = [first, (self.options.optimize, True), (False, True)]
        # Never turn on what the user turned off.
        return list(dict.fromkeys(t for t in tries if first[0] or not t[0]))


def _try(model, feeds, optimize: bool, skip_fuse_bn: bool, tolerance: float):
    """(simplified model, settings label, max-rel error) when onnxsim succeeds and the outputs
    match, else (None, why, nan)."""
    import onnxsim  # imported here: it loads a large native library

    label = (
        "optimize=false" if not optimize else "skip_fuse_bn=true" if skip_fuse_bn else "defaults"
    )
    try:
        simplified, _ = onnxsim.simplify(
            model,
            check_n=0,  # checked below, with our comparator and feeds
            perform_optimization=optimize,
            skip_fuse_bn=skip_fuse_bn,
            initializers_as_constants=True,
            certify=False,
        )
    except Exception as exc:  # onnxsim raises many kinds; any of them means "not this way"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"onnxsim ({label}) failed: {first}", math.nan
    _restore_model_fields(simplified, model)
    # An output whose values are all near zero passes on absolute error (see validate).
    tol = Tolerance("max-rel", tolerance, alternatives=(("max-abs", 1e-6),))
    try:
        cmp = compare(model, simplified, feeds, [tol])
    except GraphslimError as exc:
        return None, f"onnxsim's result ({label}) does not run: {exc}", math.nan
    if not cmp.passed:
        return None, f"onnxsim ({label}) changed the outputs ({cmp.failure_summary()})", math.nan
    return simplified, label, cmp.worst("max-rel")


def _graph_bytes(model: onnx.ModelProto) -> tuple[bytes, list[bytes]]:
    """The graph without value_info, its nodes as a sorted list: onnxsim may reorder nodes
    without changing anything else (seen: the Constant nodes of Paddle-style models), and a new
    order alone is no simplification."""
    g = onnx.GraphProto()
    g.CopyFrom(model.graph)
    del g.value_info[:]
    nodes = sorted(n.SerializeToString(deterministic=True) for n in g.node)
    del g.node[:]
    return g.SerializeToString(deterministic=True), nodes


def _keep(model: onnx.ModelProto, why: str) -> PassResult:
    log.warning("simplify: %s; keeping the input graph", why)
    return PassResult(model, False, {"nodes_removed": 0}, skipped=[("<model>", why)], notes=[why])


def _restore_model_fields(out: onnx.ModelProto, src: onnx.ModelProto) -> None:
    out.ir_version = src.ir_version
    out.producer_name = src.producer_name
    out.producer_version = src.producer_version
    out.domain = src.domain
    out.model_version = src.model_version
    out.doc_string = src.doc_string
    del out.metadata_props[:]
    out.metadata_props.extend(src.metadata_props)
    # Opsets: keep the input's versions for every domain it imports; keep domains onnxsim
    # needed beyond those (rare: none for the default optimizer set).
    versions = {o.domain: o.version for o in src.opset_import}
    for o in out.opset_import:
        if o.domain in versions:
            o.version = versions[o.domain]
    out.graph.name = src.graph.name
