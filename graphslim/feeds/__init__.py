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

:func:`load_feeds` picks the provider from a CLI-style source. The package is split into
:mod:`~graphslim.feeds.specs` (signature, shapes, random feeds),
:mod:`~graphslim.feeds.arrays` and :mod:`~graphslim.feeds.images`; every public name is
importable from ``graphslim.feeds``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx

from graphslim.feeds.arrays import load_array_feeds
from graphslim.feeds.images import (
    Letterbox,
    Preprocess,
    image_folder_feeds,
    list_images,
    preprocess_image,
)
from graphslim.feeds.specs import (
    ARRAY_SUFFIXES,
    GUESS_SPATIAL,
    IMAGE_SUFFIXES,
    Feed,
    FeedError,
    InputSpec,
    concrete_shapes,
    input_specs,
    parse_shape_overrides,
    random_feeds,
    resolve_shapes,
)


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
    "GUESS_SPATIAL",
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
    "concrete_shapes",
    "random_feeds",
    "resolve_shapes",
]
