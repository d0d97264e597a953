"""Labels (class folders, CSV, YOLO .txt files), image geometry, and tasks built for CLI feeds."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphslim import detect
from graphslim.detect import Detections
from graphslim.errors import OptionsError
from graphslim.feeds import Letterbox, Preprocess, list_images, preprocess_image
from graphslim.tasks.gate import Task
from graphslim.tasks.infer import input_hw


def parse_min_metric(text: str) -> tuple[str, float]:
    """``NAME=VALUE`` (e.g. ``map50=0.9``) -> ``("map50", 0.9)``."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise OptionsError(f"bad --min-metric '{text}': write NAME=VALUE, e.g. map50=0.9") from None


def labeled_images(path: str | Path) -> list[tuple[Path, int]]:
    """Images of a folder-per-class tree (``root/<class>/*.jpg``) with their class index: the
    folder name when every name is an integer, else its position in sorted order."""
    root = Path(path)
    dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not dirs:
        raise OptionsError(f"{root}: not a folder of class folders (root/<class>/image.jpg)")
    numeric = all(d.name.isdigit() for d in dirs)
    out = []
    for i, d in enumerate(dirs):
        for f in list_images(d):
            out.append((f, int(d.name) if numeric else i))
    return out


def csv_labels(path: str | Path, files: Sequence[Path]) -> list[int]:
    """Labels for ``files`` from a CSV of ``file,label`` rows (file name or path as written;
    a header row is skipped; integer labels, or class names numbered in sorted order)."""
    rows: dict[str, str] = {}
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if len(row) >= 2 and row[0].strip():
                rows[Path(row[0].strip()).name] = row[1].strip()
    rows = {k: v for k, v in rows.items() if k.lower() not in ("file", "filename", "image")}
    names = sorted(set(rows.values()))
    index = {n: int(n) if n.lstrip("-").isdigit() else names.index(n) for n in names}
    missing = [f.name for f in files if f.name not in rows]
    if missing:
        raise OptionsError(f"{path}: no label for {missing[0]} ({len(missing)} image(s) unlabeled)")
    return [index[rows[f.name]] for f in files]


def image_geometry(
    files: Sequence[Path], spec: Preprocess | str, size: tuple[int, int]
) -> list[Letterbox]:
    """The :class:`Letterbox` of each image file under ``spec`` at network size ``size``."""
    spec = Preprocess.parse(spec) if isinstance(spec, str) else spec
    return [preprocess_image(f, spec, size)[1] for f in files]


def load_yolo_labels(
    folder: str | Path, files: Sequence[Path], letterboxes: Sequence[Letterbox]
) -> list[Detections]:
    """YOLO-format labels (``folder/<image stem>.txt``, rows ``class cx cy w h`` normalised to
    the original image) -> one :class:`Detections` per image in original pixels (score 1);
    a missing file means no objects."""
    out = []
    for f, lb in zip(files, letterboxes):
        p = Path(folder) / f"{f.stem}.txt"
        rows = np.loadtxt(p, ndmin=2) if p.exists() and p.stat().st_size else np.zeros((0, 5))
        if rows.shape[1] < 5:
            raise OptionsError(f"{p}: rows must be 'class cx cy w h' (normalised)")
        h, w = lb.orig_size
        xywh = rows[:, 1:5] * np.array([w, h, w, h])
        out.append(
            Detections(
                detect.xywh_to_xyxy(xywh).astype(np.float32),
                np.ones(len(rows), np.float32),
                rows[:, 0].astype(np.int64),
            )
        )
    return out


def make_task(
    kind: str,
    model: onnx.ModelProto,
    feeds: list[dict],
    *,
    source: str | Path | None = None,
    preprocess: Preprocess | str | None = None,
    labels: str | Path | None = None,
    limit: int | None = None,
    **settings: Any,
) -> tuple[Task, list[dict]]:
    """A :class:`Task` for feeds the CLI made from ``source`` (an image folder gives each
    image's letterbox geometry); ``labels``: classify -> a folder of class folders (the
    feeds are then made from its images) or a ``file,label`` CSV for ``source``'s images;
    detect -> a folder of YOLO ``.txt`` files named after ``source``'s images. ``settings``:
    :class:`Task` fields (``decoder``, ``conf``, ``iou``, ``threshold``, ``output``).
    Returns the task and the feeds to use."""
    from graphslim.feeds import load_feeds

    task = Task(kind, **settings)
    spec = (
        Preprocess.parse(preprocess or "yolo")
        if not isinstance(preprocess, Preprocess)
        else preprocess
    )
    is_images = source is not None and str(source).lower() != "random" and _has_images(Path(source))
    if kind == "classify" and labels is not None and Path(labels).is_dir():
        pairs = labeled_images(labels)[:limit]
        feeds = [f for path, _ in pairs for f in load_feeds(path, model, preprocess=spec)]
        task.labels = [y for _, y in pairs]
        return task, feeds
    files = list_images(source, limit) if is_images else None
    if labels is not None and files is None:
        raise OptionsError("--labels needs image feeds: give --feeds IMAGE_FOLDER")
    if kind == "classify" and labels is not None:
        task.labels = csv_labels(labels, files)
    if kind == "detect":
        task.input_hw = input_hw(feeds[0])
        if files is not None and task.input_hw is not None:
            images = sum(int(np.shape(next(iter(f.values())))[0]) for f in feeds)
            files = files[:images]
            task.letterboxes = image_geometry(files, spec, task.input_hw)
            if labels is not None:
                task.labels = load_yolo_labels(labels, files, task.letterboxes)
    return task, feeds


def _has_images(path: Path) -> bool:
    from graphslim.feeds import IMAGE_SUFFIXES

    if path.is_file():
        return path.suffix.lower() in IMAGE_SUFFIXES
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
