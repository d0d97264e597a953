"""Input feeds for validation, calibration and benchmarking.

A *feed* is one set of graph inputs, ``dict[str, np.ndarray]`` keyed by graph input name;
every provider here returns ``list[feed]``. Three sources:

- random, from the input signature (:func:`random_feeds`): seeded with
  ``np.random.default_rng(seed)``, so the same model, seed and shapes give the same bytes;
- arrays saved by the user (:func:`load_array_feeds`): ``.npy``, ``.npz`` or a folder of them;
- images (:func:`image_folder_feeds`), decoded with Pillow and turned into a network input
  by a declared :class:`Preprocess`:

  ``x = (pixel[c'] * scale - mean[c]) / std[c]``  with ``pixel`` in 0..255 after resizing,
  ``c'`` the source channel for output channel ``c`` (RGB or BGR order), then laid out as
  NCHW or NHWC.

Letterbox geometry follows ultralytics ``LetterBox`` (center, no auto/stride padding):
``r = min(H/h, W/w)``, the unpadded size is ``(round(w*r), round(h*r))`` and the padding
``dw = W - round(w*r)``, ``dh = H - round(h*r)`` is split as ``left = round(dw/2 - 0.1)``,
``top = round(dh/2 - 0.1)``. A network-input point maps back to the original image by
``x = (x' - pad_x) / r`` (see :meth:`Letterbox.to_original`).

:func:`load_feeds` picks the provider from a CLI-style source.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
from onnx import helper

from graphslim.errors import GraphslimError

logger = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
Dim = int | str | None

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ARRAY_SUFFIXES = (".npy", ".npz")
_INPUT_SHAPE_HINT = "--input-shape"


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


def _is_float(dtype: np.dtype) -> bool:
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


def _shape_template(spec: InputSpec, prefix: Sequence[int] = ()) -> str:
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


def _check_override(spec: InputSpec, shape: tuple[int, ...]) -> None:
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
            _check_override(spec, shapes[spec.name])
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
                f"{_INPUT_SHAPE_HINT} {spec.name}:d0,d1,..."
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
                    f"{_INPUT_SHAPE_HINT} {_shape_template(spec, dims)} "
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
    feeds = [_random_feed(specs, resolved, rng, low, high, int_high) for _ in range(count)]
    signature = ", ".join(f"{s.name}: {s.dtype.name}{list(resolved[s.name])}" for s in specs)
    logger.info("random feeds: %d x {%s} (seed %d)", count, signature, seed)
    return feeds


def _random_feed(
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
        if _is_float(spec.dtype):
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


def load_array_feeds(path: str | Path, model: onnx.ModelProto) -> list[Feed]:
    """Feeds from a ``.npy`` file, a ``.npz`` file or a folder of them (sorted by name).

    - ``.npy``: one array for a single-input model; an array of rank ``input rank + 1``
      holds several samples along its first axis.
    - ``.npz``: one entry per input name; each entry may carry the same leading sample
      axis (entries without it are shared by every sample).

    Dtypes must match the model; float64 is cast to float32 and lossless widenings
    (``np.can_cast(..., "safe")``) are allowed, anything else is refused. Ranks and static
    dims are checked.
    """
    path = Path(path)
    specs = input_specs(model)
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in ARRAY_SUFFIXES
        )
        if not files:
            raise FeedError(f"no .npy/.npz files in folder {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FeedError(f"feed file {path} does not exist")
    feeds: list[Feed] = []
    for file in files:
        feeds.extend(_load_array_file(file, specs))
    logger.info("array feeds: %d sample(s) from %s", len(feeds), path)
    return feeds


def _load_array_file(path: Path, specs: Sequence[InputSpec]) -> list[Feed]:
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise FeedError(f"{path}: expected a .npy or .npz file")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as loaded:
                arrays = {k: loaded[k] for k in loaded.files}
        else:
            array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise FeedError(f"cannot read {path}: {exc}") from exc
    if suffix == ".npy":
        if len(specs) != 1:
            raise FeedError(
                f"{path}: a .npy holds one array but the model has {len(specs)} inputs "
                f"{[s.name for s in specs]}; save an .npz with one entry per input name"
            )
        arrays = {specs[0].name: array}
    return _split_samples(path, arrays, specs)


def _split_samples(
    path: Path, arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec]
) -> list[Feed]:
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise FeedError(
            f"{path}: entries {sorted(arrays)} do not match the model's inputs {names}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
            + "; name each entry after its input (np.savez(path, **{name: array}))"
        )
    counts: dict[str, int] = {}
    batched: dict[str, bool] = {}
    for spec in specs:
        array = arrays[spec.name]
        rank = len(spec.shape) if spec.shape is not None else array.ndim
        if array.ndim == rank + 1:
            batched[spec.name] = True
            counts[spec.name] = array.shape[0]
        elif array.ndim == rank:
            batched[spec.name] = False
        else:
            raise FeedError(
                f"{path}: '{spec.name}' has shape {list(array.shape)} but the model wants "
                f"rank {rank} ({spec.describe()}), or rank {rank + 1} for several samples"
            )
    if len(set(counts.values())) > 1:
        raise FeedError(
            f"{path}: entries disagree on the number of samples {counts}; give every "
            "batched entry the same leading sample axis"
        )
    n = next(iter(counts.values()), 1)
    feeds: list[Feed] = [{} for _ in range(n)]
    for spec in specs:
        array = _cast(path, spec, arrays[spec.name])
        for i in range(n):
            sample = array[i] if batched[spec.name] else array
            _check_dims(path, spec, sample)
            feeds[i][spec.name] = np.ascontiguousarray(sample)
    return feeds


def _cast(path: Path, spec: InputSpec, array: np.ndarray) -> np.ndarray:
    if array.dtype == spec.dtype:
        return array
    if array.dtype == np.float64 and spec.dtype == np.float32:
        return array.astype(np.float32)
    if np.can_cast(array.dtype, spec.dtype, "safe"):
        return array.astype(spec.dtype)
    raise FeedError(
        f"{path}: '{spec.name}' is {array.dtype.name} but the model wants "
        f"{spec.dtype.name}; save it with .astype(np.{spec.dtype.name})"
    )


def _check_dims(path: Path, spec: InputSpec, sample: np.ndarray) -> None:
    for axis, (want, got) in enumerate(zip(spec.shape or (), sample.shape, strict=False)):
        if isinstance(want, int) and want != got:
            raise FeedError(
                f"{path}: '{spec.name}' has shape {list(sample.shape)} but the model fixes "
                f"dim {axis} to {want} ({spec.describe()})"
            )


# ----------------------------------------------------------------------------- preprocess

_RESIZE_MODES = ("letterbox", "resize", "center-crop")
_CHANNELS = ("RGB", "BGR", "GRAY")
_LAYOUTS = ("NCHW", "NHWC")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes one network input sample.

    ``x = (pixel * scale - mean) / std`` per output channel, ``pixel`` in 0..255 after
    ``resize`` to ``size`` = (H, W). ``center-crop`` resizes so the short side covers
    ``size / crop_fraction`` (224 / 0.875 = 256, the torchvision/timm eval recipe) and crops
    the center. ``channels="GRAY"`` gives one channel (chosen automatically for a model
    with one input channel); it uses ``mean[0]`` and ``std[0]``.
    """

    size: tuple[int, int] | None = None
    resize: str = "letterbox"
    pad_value: float = 114.0
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channels: str = "RGB"
    layout: str = "NCHW"
    crop_fraction: float = 0.875

    def __post_init__(self) -> None:
        resize = str(self.resize).lower()
        channels = str(self.channels).upper()
        layout = str(self.layout).upper()
        if resize not in _RESIZE_MODES:
            raise FeedError(f"preprocess resize '{self.resize}' is not one of {_RESIZE_MODES}")
        if channels not in _CHANNELS:
            raise FeedError(f"preprocess channels '{self.channels}' is not one of {_CHANNELS}")
        if layout not in _LAYOUTS:
            raise FeedError(f"preprocess layout '{self.layout}' is not one of {_LAYOUTS}")
        mean = _triple("mean", self.mean)
        std = _triple("std", self.std)
        if any(s == 0 for s in std):
            raise FeedError(f"preprocess std {std} has a zero")
        size = self.size
        if size is not None:
            size = tuple(int(v) for v in size)
            if len(size) != 2 or min(size) < 1:
                raise FeedError(f"preprocess size {self.size} must be two positive ints (H, W)")
        if not 0 < self.crop_fraction <= 1:
            raise FeedError(f"preprocess crop {self.crop_fraction} must be in (0, 1]")
        object.__setattr__(self, "resize", resize)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "layout", layout)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "pad_value", float(self.pad_value))
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "crop_fraction", float(self.crop_fraction))

    @classmethod
    def presets(cls) -> dict[str, Preprocess]:
        """The named presets accepted by :meth:`parse` as its first token."""
        return {
            "yolo": cls(resize="letterbox", pad_value=114.0, scale=1 / 255),
            "imagenet": cls(
                size=(224, 224),
                resize="center-crop",
                scale=1 / 255,
                mean=_IMAGENET_MEAN,
                std=_IMAGENET_STD,
            ),
            "raw-bgr": cls(resize="letterbox", pad_value=114.0, scale=1.0, channels="BGR"),
        }

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """Build from a CLI string such as ``"letterbox=640,pad=114,scale=1/255,bgr,nhwc"``.

        An optional preset (``yolo``, ``imagenet``, ``raw-bgr``) comes first and the rest
        refines it. Keys: ``letterbox|resize|center-crop[=H[xW]]``, ``size=H[xW]``,
        ``pad=V``, ``scale=V`` (fractions like ``1/255`` allowed),
        ``mean=a/b/c``, ``std=a/b/c``, ``crop=F``, ``channels=rgb|bgr|gray``,
        ``layout=nchw|nhwc`` and the flags ``rgb``, ``bgr``, ``gray``, ``nchw``, ``nhwc``.
        """
        tokens = [t.strip() for t in (text or "").split(",") if t.strip()]
        presets = cls.presets()
        spec = cls()
        if tokens and tokens[0].lower() in presets:
            spec = presets[tokens.pop(0).lower()]
        changes: dict[str, Any] = {}
        for token in tokens:
            key, sep, value = token.partition("=")
            key = key.strip().lower()
            value = value.strip()
            if key in presets:
                raise FeedError(f"preprocess preset '{key}' must come first in '{text}'")
            if key in _PARSE_FLAGS and not sep:
                changes.update(_PARSE_FLAGS[key])
                continue
            if key in _RESIZE_MODES:
                changes["resize"] = key
                if sep:
                    changes["size"] = _parse_size(key, value)
            elif key == "size" and sep:
                changes["size"] = _parse_size(key, value)
            elif key == "pad" and sep:
                changes["pad_value"] = _parse_number(key, value)
            elif key == "scale" and sep:
                changes["scale"] = _parse_number(key, value)
            elif key in ("mean", "std") and sep:
                changes[key] = tuple(_parse_number(key, v) for v in re.split(r"[/:]", value))
            elif key == "crop" and sep:
                changes["crop_fraction"] = _parse_number(key, value)
            elif key in ("channels", "layout") and sep:
                changes[key] = value
            else:
                raise FeedError(
                    f"unknown preprocess key '{token}' in '{text}'; valid: presets "
                    f"{sorted(presets)} first, then {', '.join(_PARSE_KEYS)}"
                )
        return replace(spec, **changes)

    def to_string(self) -> str:
        """A string that :meth:`parse` turns back into this spec."""
        parts = [self.resize + (f"={self.size[0]}x{self.size[1]}" if self.size else "")]
        parts.append(f"pad={self.pad_value:g}")
        scale = Fraction(self.scale).limit_denominator(10000)
        parts.append(f"scale={scale}" if float(scale) == self.scale else f"scale={self.scale!r}")
        parts.append("mean=" + "/".join(f"{v:g}" for v in self.mean))
        parts.append("std=" + "/".join(f"{v:g}" for v in self.std))
        if self.resize == "center-crop":
            parts.append(f"crop={self.crop_fraction:g}")
        parts += [self.channels.lower(), self.layout.lower()]
        return ",".join(parts)


_PARSE_FLAGS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "rgb": {"channels": "RGB"},
        "bgr": {"channels": "BGR"},
        "gray": {"channels": "GRAY"},
        "nchw": {"layout": "NCHW"},
        "nhwc": {"layout": "NHWC"},
    }
)
_PARSE_KEYS = (
    "letterbox[=H[xW]]",
    "resize[=H[xW]]",
    "center-crop[=H[xW]]",
    "size=H[xW]",
    "pad=V",
    "scale=V",
    "mean=a/b/c",
    "std=a/b/c",
    "crop=F",
    "channels=rgb|bgr|gray",
    "layout=nchw|nhwc",
    "rgb",
    "bgr",
    "gray",
    "nchw",
    "nhwc",
)


def _triple(what: str, values: Any) -> tuple[float, float, float]:
    try:
        floats = tuple(float(v) for v in (values if np.iterable(values) else (values,)))
    except (TypeError, ValueError) as exc:
        raise FeedError(f"preprocess {what} {values!r} must be numbers") from exc
    if len(floats) == 1:
        floats = floats * 3
    if len(floats) != 3:
        raise FeedError(f"preprocess {what} {values!r} needs 1 or 3 values")
    return floats  # type: ignore[return-value]


def _parse_number(key: str, text: str) -> float:
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise FeedError(f"preprocess {key}='{text}' is not a number (e.g. 1/255, 0.5)") from exc


def _parse_size(key: str, text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:[x*](\d+))?", text.lower())
    if not m:
        raise FeedError(f"preprocess {key}='{text}' must be H or HxW (e.g. 640 or 480x640)")
    h = int(m.group(1))
    return (h, int(m.group(2)) if m.group(2) else h)


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Letterbox:
    """Geometry from original image to network input: ``x' = x * ratio_x + pad_x``.

    ``ratio_xy`` differs from ``(ratio, ratio)`` only for the stretching ``resize`` mode;
    ``center-crop`` gives a negative ``pad`` (the crop offset).
    """

    ratio: float
    pad: tuple[float, float]
    orig_size: tuple[int, int]
    ratio_xy: tuple[float, float] | None = None

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``[..., 4]`` xyxy boxes from network-input pixels to original pixels, clipped."""
        rx, ry = self.ratio_xy or (self.ratio, self.ratio)
        out = np.array(boxes, dtype=np.float32, copy=True)
        out[..., [0, 2]] = (out[..., [0, 2]] - self.pad[0]) / rx
        out[..., [1, 3]] = (out[..., [1, 3]] - self.pad[1]) / ry
        h, w = self.orig_size
        out[..., [0, 2]] = out[..., [0, 2]].clip(0, w)
        out[..., [1, 3]] = out[..., [1, 3]].clip(0, h)
        return out


def preprocess_image(
    path_or_array: str | Path | np.ndarray | Any,
    spec: Preprocess,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """One float32 sample (no batch axis) in ``spec.layout`` and its geometry.

    ``path_or_array`` is an image file, a PIL image, or a uint8 array HxW / HxWx3 (RGB) /
    HxWx4. ``size`` = (H, W) of the network input; ``None`` takes ``spec.size``.
    """
    from PIL import Image

    target = size if size is not None else spec.size
    if target is None:
        raise FeedError("preprocess needs a target size: give size (H, W) or e.g. letterbox=640")
    th, tw = int(target[0]), int(target[1])
    image = _open_image(path_or_array)
    w, h = image.size
    resample = Image.Resampling.BILINEAR
    if spec.resize == "letterbox":
        r = min(th / h, tw / w)
        nw, nh = int(round(w * r)), int(round(h * r))
        left, top = int(round((tw - nw) / 2 - 0.1)), int(round((th - nh) / 2 - 0.1))
        resized = image if (nw, nh) == (w, h) else image.resize((nw, nh), resample)
        pixels = np.full((th, tw, 3), spec.pad_value, dtype=np.float32)
        pixels[top : top + nh, left : left + nw] = np.asarray(resized, dtype=np.float32)
        box = Letterbox(r, (float(left), float(top)), (h, w))
    elif spec.resize == "resize":
        resized = image if (tw, th) == (w, h) else image.resize((tw, th), resample)
        pixels = np.asarray(resized, dtype=np.float32)
        rx, ry = tw / w, th / h
        box = Letterbox(min(rx, ry), (0.0, 0.0), (h, w), ratio_xy=(rx, ry))
    else:  # center-crop
        r = max(th / spec.crop_fraction / h, tw / spec.crop_fraction / w)
        nw, nh = max(tw, int(round(w * r))), max(th, int(round(h * r)))
        resized = image if (nw, nh) == (w, h) else image.resize((nw, nh), resample)
        # torchvision center_crop offsets
        top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
        pixels = np.asarray(resized, dtype=np.float32)[top : top + th, left : left + tw]
        box = Letterbox(r, (float(-left), float(-top)), (h, w), ratio_xy=(nw / w, nh / h))
    return _normalize(pixels, spec), box


def _open_image(source: Any) -> Any:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        if (
            source.dtype != np.uint8
            or source.ndim not in (2, 3)
            or (source.ndim == 3 and source.shape[2] not in (1, 3, 4))
        ):
            raise FeedError(
                f"image array must be uint8 HxW, HxWx3 (RGB) or HxWx4, got "
                f"{source.dtype.name}{list(source.shape)}"
            )
        image = Image.fromarray(
            source[..., 0] if source.ndim == 3 and source.shape[2] == 1 else source
        )
    else:
        path = Path(source)
        try:
            with Image.open(path) as opened:
                opened.load()
                # cv2.imread (what ultralytics uses) honours EXIF orientation too.
                image = ImageOps.exif_transpose(opened)
                image.load()
        except (
            OSError,
            UnidentifiedImageError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombError,
        ) as exc:
            raise FeedError(f"cannot read image {path}: {exc}; remove or replace the file") from exc
    return image.convert("RGB")


def _normalize(pixels: np.ndarray, spec: Preprocess) -> np.ndarray:
    """HxWx3 RGB pixels (0..255) -> the spec's channels, scale, mean/std and layout."""
    if spec.channels == "GRAY":
        # ITU-R 601-2 luma, what Pillow's convert("L") uses.
        gray = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        x = (gray[..., None] * spec.scale - spec.mean[0]) / spec.std[0]
    else:
        if spec.channels == "BGR":
            pixels = pixels[..., ::-1]
        mean = np.asarray(spec.mean, dtype=np.float32)
        std = np.asarray(spec.std, dtype=np.float32)
        x = (pixels * np.float32(spec.scale) - mean) / std
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def list_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """Image files in ``folder`` (or ``[folder]`` for one image file), sorted by name."""
    folder = Path(folder)
    if folder.is_file():
        if folder.suffix.lower() not in IMAGE_SUFFIXES:
            raise FeedError(f"{folder} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        files = [folder]
    elif folder.is_dir():
        files = sorted(
            (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: p.name,
        )
        if not files:
            raise FeedError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    else:
        raise FeedError(f"image folder {folder} does not exist")
    return files[:limit] if limit is not None else files


def image_folder_feeds(
    folder: str | Path,
    model: onnx.ModelProto,
    spec: Preprocess,
    *,
    limit: int | None = None,
    input_name: str | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> list[Feed]:
    """One feed per image (or per ``N`` consecutive images for a static batch ``N``).

    Files are taken sorted by name, at most ``limit`` of them; a last incomplete batch is
    dropped. Target H, W come from ``shapes``, else the model's static dims, else
    ``spec.size``. Other inputs of a multi-input model (``input_name`` picks the image
    input) get seeded random values.
    """
    specs = input_specs(model)
    image_spec = _pick_image_input(specs, input_name)
    spec, (batch, height, width) = _image_geometry(image_spec, spec, shapes)
    files = list_images(folder, limit)
    if len(files) < batch:
        raise FeedError(
            f"input '{image_spec.name}' has a static batch of {batch} but only "
            f"{len(files)} image(s) were found in {folder}"
        )
    if len(files) % batch:
        logger.warning(
            "dropping the last %d image(s): they do not fill a batch of %d",
            len(files) % batch,
            batch,
        )
    samples = [preprocess_image(f, spec, (height, width))[0] for f in files]
    dtype = image_spec.dtype
    feeds: list[Feed] = []
    for start in range(0, len(samples) - batch + 1, batch):
        stacked = np.stack(samples[start : start + batch])
        feeds.append({image_spec.name: _to_input_dtype(image_spec, stacked, spec)})
    others = [s for s in specs if s is not image_spec]
    if others:
        logger.warning(
            "inputs %s are not images; filling them with seeded random values",
            [s.name for s in others],
        )
        resolved = resolve_shapes(
            others, {k: v for k, v in (shapes or {}).items() if k != image_spec.name}
        )
        rng = np.random.default_rng(seed)
        for feed in feeds:
            feed.update(_random_feed(others, resolved, rng, 0.0, 1.0, 10))
    logger.info(
        "image feeds: %d feed(s) of %s%s from %d image(s) in %s (%s)",
        len(feeds),
        dtype.name,
        list(feeds[0][image_spec.name].shape),
        len(files),
        folder,
        spec.to_string(),
    )
    return feeds


def _pick_image_input(specs: Sequence[InputSpec], input_name: str | None) -> InputSpec:
    names = [s.name for s in specs]
    if input_name is not None:
        for spec in specs:
            if spec.name == input_name:
                return spec
        raise FeedError(f"image input '{input_name}' is not a model input; inputs are {names}")
    if len(specs) != 1:
        raise FeedError(
            f"the model has {len(specs)} inputs {names}; name the one that takes images "
            "(input_name=...)"
        )
    return specs[0]


def _image_geometry(
    image_spec: InputSpec, spec: Preprocess, shapes: Mapping[str, Sequence[int]] | None
) -> tuple[Preprocess, tuple[int, int, int]]:
    """The (possibly GRAY-adjusted) spec and the (batch, H, W) of the image input."""
    name = image_spec.name
    shape: Sequence[Dim] | None = image_spec.shape
    if shapes and name in shapes:
        _check_override(image_spec, tuple(shapes[name]))
        shape = tuple(int(d) for d in shapes[name])
    if shape is None or len(shape) != 4:
        raise FeedError(f"image input {image_spec.describe()} is not rank 4 (N,C,H,W or N,H,W,C)")
    if not (_is_float(image_spec.dtype) or image_spec.dtype == np.uint8):
        raise FeedError(f"image input {image_spec.describe()} must be a float or uint8 tensor")
    axes = {"NCHW": (1, 2, 3), "NHWC": (3, 1, 2)}
    c_axis, h_axis, w_axis = axes[spec.layout]
    channels = shape[c_axis]
    if isinstance(channels, int) and channels not in (1, 3):
        other = "NHWC" if spec.layout == "NCHW" else "NCHW"
        if shape[axes[other][0]] in (1, 3):
            raise FeedError(
                f"image input {image_spec.describe()} is not {spec.layout} with 1 or 3 "
                f"channels; it looks {other}: add '{other.lower()}' to the preprocess string"
            )
        raise FeedError(f"image input {image_spec.describe()} needs 1 or 3 channels")
    if channels == 1 and spec.channels != "GRAY":
        logger.info("input '%s' has one channel: converting images to grayscale", name)
        spec = replace(spec, channels="GRAY")
    elif channels == 3 and spec.channels == "GRAY":
        raise FeedError(f"image input {image_spec.describe()} has 3 channels; drop 'gray'")
    hw = []
    for axis, idx in (("H", h_axis), ("W", w_axis)):
        d = shape[idx]
        want = spec.size[0 if axis == "H" else 1] if spec.size else None
        if isinstance(d, int):
            if want is not None and want != d:
                raise FeedError(
                    f"preprocess size {spec.size} does not match input {image_spec.describe()}"
                    f"; the model fixes {axis} to {d}"
                )
            hw.append(d)
        elif want is not None:
            hw.append(want)
        else:
            raise FeedError(
                f"image input {image_spec.describe()} has a dynamic {axis}; give the size in "
                f"the preprocess string (e.g. letterbox=640) or pass {_INPUT_SHAPE_HINT} "
                f"{_shape_template(image_spec, [shape[0] if isinstance(shape[0], int) else 1])}"
            )
    batch = shape[0] if isinstance(shape[0], int) else 1
    if batch < 1:
        raise FeedError(f"image input {image_spec.describe()} has batch {batch}")
    return spec, (batch, hw[0], hw[1])


def _to_input_dtype(image_spec: InputSpec, x: np.ndarray, spec: Preprocess) -> np.ndarray:
    if _is_float(image_spec.dtype):
        return np.ascontiguousarray(x.astype(image_spec.dtype))
    # uint8 inputs take raw pixels; a scaled/normalized spec would be silently truncated.
    if spec.scale != 1.0 or spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        raise FeedError(
            f"image input {image_spec.describe()} takes uint8 pixels; use scale=1 with no "
            "mean/std (e.g. the 'raw-bgr' preset or 'scale=1')"
        )
    return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- dispatch


def load_feeds(
    source: str | Path | None,
    model: onnx.ModelProto,
    *,
    count: int = 1,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    preprocess: Preprocess | str | None = None,
    limit: int | None = None,
    input_name: str | None = None,
) -> list[Feed]:
    """Feeds from a CLI-style ``source``.

    ``None`` or ``"random"``: :func:`random_feeds` (``count``, ``seed``, ``shapes``).
    A ``.npy``/``.npz`` file or a folder of them: :func:`load_array_feeds` (first ``limit``
    samples). An image file or a folder of images: :func:`image_folder_feeds` with
    ``preprocess`` (a :class:`Preprocess` or a string for :meth:`Preprocess.parse`;
    default preset ``yolo``), at most ``limit`` images.
    """
    if source is None or (isinstance(source, str) and source.strip().lower() == "random"):
        return random_feeds(model, count=count, seed=seed, shapes=shapes)
    path = Path(source)
    if not path.exists():
        raise FeedError(
            f"feed source {path} does not exist; give 'random', a .npy/.npz file, a folder "
            "of them, an image or a folder of images"
        )
    kind = _source_kind(path)
    if kind == "arrays":
        feeds = load_array_feeds(path, model)
        return feeds[:limit] if limit is not None else feeds
    if preprocess is None:
        preprocess = "yolo"
    spec = Preprocess.parse(preprocess) if isinstance(preprocess, str) else preprocess
    return image_folder_feeds(
        path, model, spec, limit=limit, input_name=input_name, shapes=shapes, seed=seed
    )


def _source_kind(path: Path) -> str:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in ARRAY_SUFFIXES:
            return "arrays"
        if suffix in IMAGE_SUFFIXES:
            return "images"
        raise FeedError(
            f"feed file {path} is neither .npy/.npz nor an image ({', '.join(IMAGE_SUFFIXES)})"
        )
    suffixes = {p.suffix.lower() for p in path.iterdir() if p.is_file()}
    has_arrays = bool(suffixes & set(ARRAY_SUFFIXES))
    has_images = bool(suffixes & set(IMAGE_SUFFIXES))
    if has_arrays and has_images:
        raise FeedError(
            f"folder {path} holds both .npy/.npz files and images; keep one kind per folder"
        )
    if has_arrays:
        return "arrays"
    if has_images:
        return "images"
    raise FeedError(
        f"folder {path} has no .npy/.npz files and no images ({', '.join(IMAGE_SUFFIXES)})"
    )


__all__ = [
    "ARRAY_SUFFIXES",
    "IMAGE_SUFFIXES",
    "Feed",
    "FeedError",
    "InputSpec",
    "Letterbox",
    "Preprocess",
    "image_folder_feeds",
    "input_specs",
    "list_images",
    "load_array_feeds",
    "load_feeds",
    "parse_shape_overrides",
    "preprocess_image",
    "random_feeds",
    "resolve_shapes",
]
