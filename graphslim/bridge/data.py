"""Streaming training images: a Dataset over image folders, decoded one sample at a time.

``ImageFolderDataset(folder, model, preprocess)`` lists the images under ``folder``
recursively (``.jpg .jpeg .png .bmp .webp``, sorted by relative path), checks each file once
without decoding it (PIL's ``verify``: a file it cannot identify, or a truncated PNG, is
skipped with a warning naming it), and decodes and
preprocesses an image only when it is indexed: memory holds the file list, not the pixels.
It is a ``torch.utils.data.Dataset`` (``__len__`` / ``__getitem__``), so a ``DataLoader``
with worker processes can decode batches ahead of training
(:meth:`graphslim.bridge.finetune.Distiller.batches`).

The network size comes from ``shapes`` (``{input: (N, C, H, W)}``), else the model's static
H and W, else the preprocess spec's own size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from graphslim.bridge import BridgeError

log = logging.getLogger(__name__)


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively; or ``[folder]`` for one image file), sorted
    by path relative to ``folder``."""
    from graphslim.feeds import IMAGE_SUFFIXES

    root = Path(folder)
    if root.is_file():
        return [root] if root.suffix.lower() in IMAGE_SUFFIXES else []
    if not root.is_dir():
        raise BridgeError(f"image folder {root} does not exist")
    return sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def _readable(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()  # reads the file through (PNG CRCs, truncation), decodes no pixels
        return True
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False


class ImageFolderDataset:
    """Preprocessed float32 samples ``[C, H, W]`` (the spec's layout) of an image folder."""

    def __init__(
        self,
        folder: str | os.PathLike,
        model: onnx.ModelProto,
        preprocess,
        *,
        limit: int | None = None,
        shapes: Mapping[str, Sequence[int]] | None = None,
        augment=None,
    ) -> None:
        """``augment``: an :class:`graphslim.bridge.augment.ImageAugment` applied to the
        uint8 image before preprocessing when the dataset is indexed by ``(index, epoch)``."""
        from graphslim.feeds import input_specs

        self.augment = augment

        specs = input_specs(model)
        if len(specs) != 1:
            raise BridgeError(
                f"fine-tuning takes single-input models; this one has {[s.name for s in specs]}"
            )
        spec = specs[0]
        shape = list((shapes or {}).get(spec.name) or spec.shape or [])
        hw = shape[-2:] if preprocess.layout == "NCHW" else shape[-3:-1]
        if len(hw) == 2 and all(isinstance(d, int) and d > 0 for d in hw):
            self.size: tuple[int, int] | None = (int(hw[0]), int(hw[1]))
        else:
            self.size = preprocess.size
        if self.size is None:
            raise BridgeError(
                f"input '{spec.name}' has no static H, W: give --input-shape "
                f"'{spec.name}:1,3,H,W' or a preprocess size (e.g. resize=640x640)"
            )
        self.preprocess = preprocess
        self.dtype = np.float32
        files = find_images(folder)
        good = []
        for f in files:
            if _readable(f):
                good.append(f)
            else:
                log.warning("skipping %s: not a readable image", f)
            if limit is not None and len(good) >= limit:
                break
        if not good:
            raise BridgeError(
                f"no readable image (.jpg .jpeg .png .bmp .webp) under {folder}; point "
                "--images at a folder of images"
            )
        self.files = good
        # every image of the folder, also past ``limit``: label folders are checked against it
        self.all_files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key) -> np.ndarray:
        """Sample ``key``: an index (as decoded), or ``(index, epoch)`` (augmented with the
        draw of that epoch, when the dataset has an ``augment``)."""
        from PIL import Image

        from graphslim.feeds import FeedError, preprocess_image

        index, epoch = key if isinstance(key, tuple) else (key, None)
        path = self.files[int(index)]
        try:
            if epoch is None or self.augment is None:
                return preprocess_image(path, self.preprocess, self.size)[0]
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
            image = self.augment(pixels, epoch, int(index))
            return preprocess_image(image, self.preprocess, self.size)[0]
        except (FeedError, OSError) as exc:
            raise BridgeError(f"{path}: {exc}") from None


class Rows:
    """Rows ``index`` of a sample source (an array or a dataset): ``rows[i]`` is one sample,
    ``rows[array or slice]`` a stacked float32 batch."""

    def __init__(self, source, index: np.ndarray) -> None:
        self.source, self.index = source, np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def augments(self) -> bool:
        """Whether samples are augmented as they are read (``rows[(i, epoch)]``)."""
        return getattr(self.source, "augment", None) is not None

    def take(self, positions, epoch: int) -> np.ndarray:
        """The stacked batch of ``positions``, each sample augmented with ``epoch``'s draw."""
        positions = np.atleast_1d(positions)
        return stack_batch([self[(int(p), epoch)] for p in positions])

    def __getitem__(self, key):
        if isinstance(key, tuple):  # (position, epoch): augmented as read
            return np.asarray(self.source[(int(self.index[key[0]]), key[1])], dtype=np.float32)
        if isinstance(key, (int, np.integer)):
            return np.asarray(self.source[int(self.index[key])], dtype=np.float32)
        picked = np.atleast_1d(self.index[key])
        if picked.size == 0:
            return np.zeros((0,), dtype=np.float32)
        first = np.asarray(self.source[int(picked[0])], dtype=np.float32)
        out = np.empty((len(picked), *first.shape), dtype=np.float32)  # filled in place: no
        out[0] = first  # list of samples beside the batch (peak memory = one copy)
        for k, i in enumerate(picked[1:], start=1):
            out[k] = self.source[int(i)]
        return out


def stack_batch(samples: list) -> np.ndarray:
    """``DataLoader`` collate: a list of ``[C, H, W]`` samples -> ``[N, C, H, W]``."""
    return np.stack(samples).astype(np.float32, copy=False)
