"""Labels for fine-tuning, matched to the streamed images.

Classification (one integer per image), :func:`read_labels`:

* a folder of class folders (``root/<class>/image.png``; usually the ``--images`` folder
  itself): an image's class is the first folder of its path under ``root``; folder names
  that are all integers are the class indices, else their position in sorted order;
* a ``.npy`` array, one label per image in the images' sorted order;
* a text/CSV file of ``name,label`` (or ``name label``) rows matched by file name (a header
  row ``file,label`` is skipped; integer labels, or class names numbered in sorted order), or
  one label per line in image order.

Detection: a folder of YOLO ``.txt`` files named after the images (rows
``class cx cy w h`` normalised to the image), read by :func:`graphslim.tasks.load_yolo_labels`
through :func:`yolo_label_files`, which checks that the files and the images match.

Every mismatch (an image with no label, a label count that is not the image count, a label
file for no image) is one :class:`~graphslim.bridge.BridgeError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from graphslim.bridge import BridgeError

HEADER_NAMES = ("file", "filename", "image", "name", "path")


def class_index(names: Sequence[str]) -> dict[str, int]:
    """``{name: class index}``: the integers themselves when every name is one, else the
    position of the name in sorted order."""
    unique = sorted(set(names))
    if all(n.lstrip("-").isdigit() for n in unique):
        return {n: int(n) for n in unique}
    return {n: i for i, n in enumerate(unique)}


def folder_labels(root: str | os.PathLike, images: Sequence[Path]) -> np.ndarray:
    """Class of each image = its first folder under ``root`` (see the module doc)."""
    base = Path(root).resolve()
    classes = []
    for image in images:
        try:
            parts = Path(image).resolve().relative_to(base).parts
        except ValueError:
            raise BridgeError(
                f"labels: image {image} is not under the class-folder root {root}"
            ) from None
        if len(parts) < 2:
            raise BridgeError(
                f"labels: image {image} lies directly in {root}, not in a class folder "
                f"({root}/<class>/{Path(image).name})"
            )
        classes.append(parts[0])
    # every class folder counts, with images or not: a subset keeps the class numbers
    index = class_index([d.name for d in base.iterdir() if d.is_dir()])
    return np.array([index[c] for c in classes], dtype=np.int64)


def read_labels(path: str | os.PathLike, images: Sequence[Path] | None = None) -> np.ndarray:
    """Integer labels for ``images`` from ``path`` (class folders, ``.npy`` or a text/CSV
    file; see the module doc)."""
    p = Path(path)
    if p.is_dir():
        if images is None:
            raise BridgeError(f"labels: class folders {p} need the image list")
        return folder_labels(p, images)
    if not p.is_file():
        raise BridgeError(f"labels file {p} does not exist")
    if p.suffix == ".npy":
        y = np.load(p).astype(np.int64).reshape(-1)
        return _count_checked(y, images, p)
    rows = [line.replace(",", " ").split() for line in p.read_text().splitlines() if line.strip()]
    if rows and rows[0][0].lower() in HEADER_NAMES:
        rows = rows[1:]
    if all(len(r) == 1 for r in rows):
        try:
            y = np.array([int(r[0]) for r in rows], dtype=np.int64)
        except ValueError as exc:
            raise BridgeError(f"{p}: one label per line must be an integer ({exc})") from None
        return _count_checked(y, images, p)
    table = {Path(r[0]).name: r[-1] for r in rows}
    index = class_index(list(table.values()))
    if images is None:
        return np.array([index[v] for v in table.values()], dtype=np.int64)
    missing = [i.name for i in images if i.name not in table]
    if missing:
        raise BridgeError(
            f"{p}: no label for image {missing[0]} ({len(missing)} of {len(images)} unlabeled)"
        )
    return np.array([index[table[i.name]] for i in images], dtype=np.int64)


def _count_checked(y: np.ndarray, images: Sequence[Path] | None, p: Path) -> np.ndarray:
    if images is not None and len(y) != len(images):
        raise BridgeError(f"{p}: {len(y)} labels for {len(images)} images")
    return y


def yolo_label_files(
    folder: str | os.PathLike, images: Sequence[Path], known: Sequence[Path] | None = None
) -> list[Path]:
    """The YOLO label file of each image (``folder/<stem>.txt``; a missing one means an image
    with no objects), after checking that ``folder`` exists and that every ``.txt`` in it
    names an image of ``known`` (default ``images``; the whole image folder when only some
    of its images are used): a stray label file means the folders do not match."""
    root = Path(folder)
    if not root.is_dir():
        raise BridgeError(f"labels folder {root} does not exist")
    stems = {Path(i).stem for i in (images if known is None else known)}
    files = sorted(root.glob("*.txt"))
    stray = [f.name for f in files if f.stem not in stems and f.name != "classes.txt"]
    if stray:
        raise BridgeError(
            f"{root}: label file {stray[0]} matches no image ({len(stray)} such files); "
            "labels and images must share file stems"
        )
    used = {Path(i).stem for i in images}
    if not any(f.stem in used for f in files):
        raise BridgeError(f"{root}: no YOLO .txt label matches any of the {len(images)} images")
    return [root / f"{Path(i).stem}.txt" for i in images]


class YoloLabels:
    """The YOLO labels of a streamed image set, read when indexed (never all up front).

    ``labels[i]`` is the :class:`graphslim.detect.Detections` of image ``i`` in *network
    input* pixels (the box mapped through the image's preprocessing: ``x' = x r_x + pad_x``),
    so that they compare with the detections decoded from the model's head directly; IoU,
    and so mAP, is unchanged by that per-axis scale and shift. ``labels[array]`` is the
    subset, still lazy."""

    def __init__(self, txt: Sequence[Path], images: Sequence[Path], preprocess, size) -> None:
        if len(txt) != len(images):
            raise BridgeError(f"{len(txt)} label files for {len(images)} images")
        self.txt, self.images = list(txt), list(images)
        self.preprocess, self.size = preprocess, size

    @classmethod
    def for_dataset(cls, folder: str | os.PathLike, dataset) -> YoloLabels:
        """Labels of an :class:`~graphslim.bridge.data.ImageFolderDataset`'s images."""
        txt = yolo_label_files(folder, dataset.files, getattr(dataset, "all_files", None))
        return cls(txt, dataset.files, dataset.preprocess, dataset.size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.detections(int(key))
        picked = np.atleast_1d(np.arange(len(self))[key])
        return YoloLabels(
            [self.txt[i] for i in picked],
            [self.images[i] for i in picked],
            self.preprocess,
            self.size,
        )

    def detections(self, i: int):
        """Image ``i``'s boxes in network-input pixels (see the class doc)."""
        from graphslim.detect import Detections
        from graphslim.errors import OptionsError
        from graphslim.feeds import FeedError, preprocess_image
        from graphslim.tasks.labels import load_yolo_labels

        try:
            geometry = preprocess_image(self.images[i], self.preprocess, self.size)[1]
            (d,) = load_yolo_labels(self.txt[i].parent, [self.images[i]], [geometry])
        except (OptionsError, FeedError, ValueError) as exc:
            raise BridgeError(f"{self.txt[i]}: {exc}") from None
        rx, ry = geometry.ratio_xy or (geometry.ratio, geometry.ratio)
        boxes = d.boxes * np.array([rx, ry, rx, ry], np.float32)
        boxes += np.array([*geometry.pad, *geometry.pad], np.float32)
        return Detections(boxes.astype(np.float32), d.scores, d.classes)

    def all(self) -> list:
        return [self.detections(i) for i in range(len(self))]
