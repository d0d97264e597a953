"""fix-input-shapes: give symbolic input dimensions fixed values.

``shapes = "images:1,3,640,640"`` sets every dimension of graph input ``images``. Only
symbolic or unknown dims may change: a static dim given a different value is refused, since
the graph was exported for it (constants such as Reshape targets would no longer fit;
re-export instead). Output shapes and ``value_info`` are recomputed by ONNX shape inference.
The computation is unchanged, so outputs are bit-identical for inputs of the fixed shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from graphslim import graph as G
from graphslim.contract import Pass, PassContext, PassResult, option
from graphslim.errors import PreconditionError
from graphslim.feeds import FeedError, parse_shape_overrides
from graphslim.metrics import infer_shapes


@dataclass(frozen=True, kw_only=True)
class FixInputShapesOptions:
    shapes: str = option(
        "",
        help="input shapes, 'name:d0,d1,...' separated by ';' (e.g. images:1,3,640,640)",
    )

    def validate(self) -> None:
        if not self.shapes.strip():
            raise ValueError("give shapes='name:d0,d1,...' (e.g. images:1,3,640,640)")
        try:
            parse_shape_overrides(self.shapes)
        except FeedError as exc:  # a bad option value: reported as OptionsError by make_options
            raise ValueError(str(exc)) from None


class FixInputShapes(Pass):
    name = "fix-input-shapes"
    summary = "fix symbolic input dimensions (images:1,3,640,640) and re-infer shapes"
    numerics = "exact"
    Options = FixInputShapesOptions

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        wanted = parse_shape_overrides(self.options.shapes)
        inputs = {vi.name: vi for vi in G.real_inputs(model.graph)}
        for name, dims in wanted.items():
            vi = inputs.get(name)
            if vi is None:
                raise PreconditionError(
                    f"fix-input-shapes: the model has no input '{name}' "
                    f"(inputs: {', '.join(inputs) or 'none'})"
                )
            _check(vi, dims)
        # Every input checked before any is touched: a refused model is left as it was.
        changed = sum(_fix(inputs[name], dims) for name, dims in wanted.items())
        if not changed:
            return PassResult(model, False, {"dims_fixed": 0})
        _refresh_shapes(model)
        return PassResult(model, True, {"dims_fixed": changed})


def _check(vi: onnx.ValueInfoProto, dims: tuple[int, ...]) -> None:
    if not vi.type.tensor_type.HasField("shape"):
        return
    have = list(vi.type.tensor_type.shape.dim)
    if len(have) != len(dims):
        raise PreconditionError(
            f"fix-input-shapes: input '{vi.name}' has rank {len(have)}, "
            f"got {len(dims)} dims {list(dims)}"
        )
    for k, (dim, value) in enumerate(zip(have, dims)):
        if _is_fixed(dim) and dim.dim_value != value:
            raise PreconditionError(
                f"fix-input-shapes: input '{vi.name}' dim {k} is fixed at {dim.dim_value} "
                f"in the graph, not {value}; re-export the model for that size"
            )


def _is_fixed(dim: onnx.TensorShapeProto.Dimension) -> bool:
    # Paddle exports write -1 for a dynamic dim (as graphslim.feeds reads it): not fixed.
    return dim.HasField("dim_value") and dim.dim_value >= 0


def _fix(vi: onnx.ValueInfoProto, dims: tuple[int, ...]) -> int:
    shape = vi.type.tensor_type.shape
    if not vi.type.tensor_type.HasField("shape"):
        for d in dims:
            shape.dim.add().dim_value = d
        return len(dims)
    changed = 0
    for dim, value in zip(shape.dim, dims):
        if _is_fixed(dim):
            continue
        dim.Clear()
        dim.dim_value = value
        changed += 1
    return changed


def _refresh_shapes(model: onnx.ModelProto) -> None:
    g = model.graph
    del g.value_info[:]
    for out in g.output:  # a -1 (Paddle's dynamic) output dim would win over the inferred one
        for dim in out.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()
    shapes = infer_shapes(model)
    for out in g.output:
        s = shapes.get(out.name)
        if s is None or not out.type.HasField("tensor_type"):
            continue
        dims = out.type.tensor_type.shape.dim
        if len(dims) not in (0, len(s)):
            continue
        if len(dims) == 0:
            for _ in s:
                dims.add()
        for dim, value in zip(dims, s):
            if isinstance(value, int) and not _is_fixed(dim):
                dim.Clear()
                dim.dim_value = value
