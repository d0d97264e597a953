"""A model's input signature, concrete shapes for symbolic dims, and random feeds.

The base of :mod:`graphslim.feeds`: the ``Feed`` type, :class:`FeedError` and
:class:`InputSpec` that the array and image providers build on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from graphslim.errors import GraphslimError

if TYPE_CHECKING:
    from graphslim.feeds.images import Preprocess


logger = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
Dim = int | str | None

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ARRAY_SUFFIXES = (".npy", ".npz")
INPUT_SHAPE_HINT = "--input-shape"


class FeedError(GraphslimError):
    """A feed source that cannot produce inputs for the model; the message says what to do."""


# ----------------------------------------------------------------------------- signature


@dataclass(frozen=True)
class InputSpec:
    """One real graph input.

    ``shape`` holds ints for static dims, the ``dim_param`` string for symbolic dims and
    ``None`` for unknown dims; the whole shape is ``None`` when the rank is unknown.
    """

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def describe(self) -> str:
        """``images: float32[batch,3,640,640]``."""
        if self.shape is None:
            dims = "?rank"
        else:
            dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype.name}[{dims}]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that are not also initializers, in graph order."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if value.type.WhichOneof("value") != "tensor_type":
            kind = value.type.WhichOneof("value")
            raise FeedError(
                f"input '{value.name}' is a {kind}, not a tensor; graphslim feeds only "
                "tensor inputs"
            )
        tensor = value.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, ValueError, TypeError) as exc:
            raise FeedError(
                f"input '{value.name}' has unsupported element type {tensor.elem_type}"
            ) from exc
        shape: tuple[Dim, ...] | None = None
        if tensor.HasField("shape"):
            shape = tuple(_dim(d) for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    # Paddle exports write -1 for a dynamic dim: treat it as unknown.
    if dim.HasField("dim_value") and dim.dim_value >= 0:
        return int(dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param:
        return dim.dim_param
    return None


def is_float(dtype: np.dtype) -> bool:
    # bfloat16 / float8 come from ml_dtypes with kind "V".
    return dtype.kind == "f" or dtype.name.startswith(("bfloat16", "float8", "float4"))


# ----------------------------------------------------------------------------- shapes


def parse_shape_overrides(text: str) -> dict[str, tuple[int, ...]]:
    """Parse ``"images:1,3,640,640;mask:1,1,64,64"`` into ``{name: shape}``.

    Inputs are separated by ``;`` or whitespace; dims by ``,`` (``1x3x640x640`` and brackets
    are accepted too). The last ``:`` splits name from dims, so TF-style names such as
    ``input:0:1,224,224,3`` work.
    """
    text = (text or "").strip()
    if not text:
        return {}
    # Let "1, 3, 640" survive the whitespace split between inputs.
    text = re.sub(r"\s*([,:\[\]])\s*", r"\1", text)
    overrides: dict[str, tuple[int, ...]] = {}
    for item in filter(None, re.split(r"[;\s]+", text)):
        name, sep, dims_text = item.rpartition(":")
        if not sep or not name:
            raise FeedError(
                f"bad input shape '{item}': expected name:d0,d1,... "
                "(e.g. images:1,3,640,640; separate inputs with ';')"
            )
        dims_text = dims_text.strip("[]()")
        parts = re.split(r"[,x]", dims_text) if dims_text else []
        if not parts or not all(re.fullmatch(r"\d+", p) for p in parts):
            raise FeedError(
                f"bad input shape '{item}': dims must be non-negative integers "
                "separated by ',' (e.g. images:1,3,640,640)"
            )
        if name in overrides:
            raise FeedError(f"input shape for '{name}' is given twice in '{text}'")
        overrides[name] = tuple(int(p) for p in parts)
    return overrides


def shape_template(spec: InputSpec, prefix: Sequence[int] = ()) -> str:
    """A concrete example, ``name:1,3,640,640``: known leading and static dims, then
    :data:`GUESS_SPATIAL` for each symbolic or unknown one."""
    out = [str(d) for d in prefix]
    for d in (spec.shape or ())[len(prefix) :]:
        out.append(str(d) if isinstance(d, int) else str(GUESS_SPATIAL))
    return f"{spec.name}:{','.join(out) if out else '1,3,640,640'}"


def _check_override_names(specs: Sequence[InputSpec], shapes: Mapping[str, Any]) -> None:
    names = {s.name for s in specs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise FeedError(
            f"input shape given for unknown input(s) {unknown}; the model's inputs are "
            f"{[s.name for s in specs]}"
        )


def check_override(spec: InputSpec, shape: tuple[int, ...]) -> None:
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise FeedError(
            f"input shape for '{spec.name}' has rank {len(shape)} but the model's input is "
            f"{spec.describe()}; give {len(spec.shape)} dims"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if isinstance(want, int) and want != got:
            raise FeedError(
                f"input shape for '{spec.name}' sets dim {axis} to {got} but the model fixes "
                f"it to {want} ({spec.describe()})"
            )


def resolve_shapes(
    specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for ``specs``.

    Rules, in order: an override from ``shapes`` (checked against static dims); a symbolic
    dim whose name an override or an earlier batch rule already fixed; a symbolic or unknown
    first (batch) dim -> 1. Anything else raises a :class:`FeedError` that says to pass
    ``--input-shape``.
    """
    shapes = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
    _check_override_names(specs, shapes)
    symbols: dict[str, int] = {}
    for spec in specs:
        if spec.name in shapes:
            check_override(spec, shapes[spec.name])
            for want, got in zip(spec.shape or (), shapes[spec.name], strict=False):
                if isinstance(want, str):
                    symbols.setdefault(want, got)
    resolved: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        if spec.name in shapes:
            resolved[spec.name] = shapes[spec.name]
            continue
        if spec.shape is None:
            raise FeedError(
                f"input '{spec.name}' has no shape in the model; pass "
                f"{INPUT_SHAPE_HINT} {spec.name}:d0,d1,..."
            )
        dims = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                dims.append(d)
            elif isinstance(d, str) and d in symbols:
                dims.append(symbols[d])
            elif axis == 0:
                dims.append(1)
                if isinstance(d, str):
                    symbols[d] = 1
            else:
                what = f"'{d}'" if isinstance(d, str) else "unknown"
                raise FeedError(
                    f"input '{spec.name}' dim {axis} is {what} ({spec.describe()}); pass "
                    f"{INPUT_SHAPE_HINT} {shape_template(spec, dims)} "
                    "with concrete numbers"
                )
        resolved[spec.name] = tuple(dims)
    return resolved


GUESS_SPATIAL = 640
"""Spatial size guessed for a symbolic height/width when nothing else says (the YOLO default)."""


def concrete_shapes(
    model: onnx.ModelProto,
    given: Mapping[str, Sequence[int]] | None = None,
    pipeline: Mapping[str, Sequence[int]] | None = None,
    preprocess: Preprocess | None = None,
) -> tuple[dict[str, tuple[int, ...]] | None, str | None]:
    """Concrete input shapes for feeds and analyses of a model with symbolic dims, and a
    one-line note when they were guessed.

    Sources, first that has an input wins: ``pipeline`` (the pipeline's own
    ``fix-input-shapes``), ``given`` (``--input-shape``), the image size of ``preprocess``
    (image feeds: H and W of a rank-4 input), the model's metadata (ultralytics writes
    ``imgsz`` = ``[640, 640]``: the last two dims of a rank-4 input), else a guess
    (batch 1, other symbolic dims :data:`GUESS_SPATIAL`) that the note states. A static
    model gives ``(given or None, None)``. Only feeds and analyses use these shapes: the
    written model keeps its symbolic dims unless ``fix-input-shapes`` says otherwise.
    """
    shapes = {k: tuple(int(d) for d in v) for k, v in {**(given or {}), **(pipeline or {})}.items()}
    specs = input_specs(model)
    imgsz = _metadata_imgsz(model)
    nhwc = preprocess is not None and preprocess.layout == "NHWC"
    if preprocess is not None and preprocess.size is not None:
        imgsz = tuple(preprocess.size)
    guessed = []
    for spec in specs:
        if spec.name in shapes or spec.is_static or spec.shape is None:
            continue
        dims = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int):
                dims.append(d)
            elif axis == 0:
                dims.append(1)
            elif (
                imgsz is not None and len(spec.shape) == 4 and axis in ((1, 2) if nhwc else (2, 3))
            ):
                dims.append(imgsz[axis - (1 if nhwc else 2)])
            else:
                dims.append(GUESS_SPATIAL)
                guessed.append(spec.name)
        shapes[spec.name] = tuple(dims)
    note = None
    if guessed:
        names = sorted(set(guessed))
        fixed = "; ".join(f"{n}:{','.join(map(str, shapes[n]))}" for n in names)
        note = (
            f"symbolic input dims: using {fixed} for feeds and analyses "
            f"(choose with --input-shape {names[0]}:{','.join(map(str, shapes[names[0]]))})"
        )
    return (shapes or None), note


def _metadata_imgsz(model: onnx.ModelProto) -> tuple[int, int] | None:
    """ultralytics' ``imgsz`` metadata (``[640, 640]`` or ``640``) as (height, width)."""
    for prop in model.metadata_props:
        if prop.key == "imgsz":
            nums = [int(x) for x in re.findall(r"\d+", prop.value)]
            if len(nums) == 1:
                return nums[0], nums[0]
            if len(nums) == 2:
                return nums[0], nums[1]
    return None


# ----------------------------------------------------------------------------- random


def random_feeds(
    model: onnx.ModelProto,
    count: int = 1,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    low: float = 0.0,
    high: float = 1.0,
    int_high: int = 10,
) -> list[Feed]:
    """``count`` feeds drawn from the input signature.

    Floats are uniform in ``[low, high)``, integers uniform in ``[0, int_high)``, booleans
    fair coins. Shapes come from :func:`resolve_shapes`.
    """
    if count < 1:
        raise FeedError(f"feed count must be at least 1, got {count}")
    if not low < high:
        raise FeedError(f"random feed range needs low < high, got [{low}, {high})")
    specs = input_specs(model)
    resolved = resolve_shapes(specs, shapes)
    rng = np.random.default_rng(seed)
    feeds = [random_feed(specs, resolved, rng, low, high, int_high) for _ in range(count)]
    signature = ", ".join(f"{s.name}: {s.dtype.name}{list(resolved[s.name])}" for s in specs)
    logger.info("random feeds: %d x {%s} (seed %d)", count, signature, seed)
    return feeds


def random_feed(
    specs: Sequence[InputSpec],
    resolved: Mapping[str, tuple[int, ...]],
    rng: np.random.Generator,
    low: float,
    high: float,
    int_high: int,
) -> Feed:
    feed: Feed = {}
    for spec in specs:
        shape = resolved[spec.name]
        if is_float(spec.dtype):
            array = rng.uniform(low, high, size=shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            array = rng.random(size=shape) < 0.5
        elif spec.dtype.kind in "iu":
            hi = min(int_high, int(np.iinfo(spec.dtype).max) + 1)
            array = rng.integers(0, hi, size=shape).astype(spec.dtype)
        else:
            raise FeedError(
                f"cannot make random values for input '{spec.name}' of type "
                f"{spec.dtype.name}; give the feed as a .npy/.npz file instead"
            )
        feed[spec.name] = np.ascontiguousarray(array)
    return feed


# ----------------------------------------------------------------------------- arrays
