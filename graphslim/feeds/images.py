"""Feeds from images: a declared :class:`Preprocess` (resize / letterbox / crop, channel
order, scale, mean, std, layout) turns each decoded image into one network input sample.

Letterbox geometry follows ultralytics ``LetterBox``: see the package docstring.
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

from graphslim.feeds.specs import (
    IMAGE_SUFFIXES,
    INPUT_SHAPE_HINT,
    Dim,
    Feed,
    FeedError,
    InputSpec,
    check_override,
    input_specs,
    is_float,
    random_feed,
    resolve_shapes,
    shape_template,
)

logger = logging.getLogger(__name__)

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
            feed.update(random_feed(others, resolved, rng, 0.0, 1.0, 10))
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
        check_override(image_spec, tuple(shapes[name]))
        shape = tuple(int(d) for d in shapes[name])
    if shape is None or len(shape) != 4:
        raise FeedError(f"image input {image_spec.describe()} is not rank 4 (N,C,H,W or N,H,W,C)")
    if not (is_float(image_spec.dtype) or image_spec.dtype == np.uint8):
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
                f"the preprocess string (e.g. letterbox=640) or pass {INPUT_SHAPE_HINT} "
                f"{shape_template(image_spec, [shape[0] if isinstance(shape[0], int) else 1])}"
            )
    batch = shape[0] if isinstance(shape[0], int) else 1
    if batch < 1:
        raise FeedError(f"image input {image_spec.describe()} has batch {batch}")
    return spec, (batch, hw[0], hw[1])


def _to_input_dtype(image_spec: InputSpec, x: np.ndarray, spec: Preprocess) -> np.ndarray:
    if is_float(image_spec.dtype):
        return np.ascontiguousarray(x.astype(image_spec.dtype))
    # uint8 inputs take raw pixels; a scaled/normalized spec would be silently truncated.
    if spec.scale != 1.0 or spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        raise FeedError(
            f"image input {image_spec.describe()} takes uint8 pixels; use scale=1 with no "
            "mean/std (e.g. the 'raw-bgr' preset or 'scale=1')"
        )
    return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- dispatch
