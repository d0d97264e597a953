"""The click-captcha set of bench/recovery.py row d (bench/captchas.py): the same seed gives
the same bytes, every image has a YOLO label file of class-0 boxes inside it, and each box
hugs the glyph that was pasted there, with the CJK glyph set and with the DejaVu fallback."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import captchas as cap  # noqa: E402

KINDS = ["cjk", "dejavu"]


@pytest.fixture(params=KINDS)
def kind(request, monkeypatch):
    """Each glyph set this machine can draw (``cjk`` needs a CJK font, ``dejavu`` DejaVu)."""
    if request.param == "dejavu":
        monkeypatch.setattr(cap, "CJK_FONTS", [])
    try:
        got = cap.glyph_set()[0]
    except SystemExit:
        pytest.skip("no font for this glyph set")
    if got != request.param:
        pytest.skip(f"no {request.param} font installed")
    return got


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def test_same_seed_same_bytes_and_labels_next_to_images(kind, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(cap, "BACKGROUNDS", ["astronaut"])
    a = cap.captchas(4, seed=3, size=160, root=tmp_path / "a")
    b = cap.captchas(4, seed=3, size=160, root=tmp_path / "b")
    c = cap.captchas(4, seed=4, size=160, root=tmp_path / "c")
    assert a.name == f"captchas-{kind}-s3-160px-4"
    fa = _files(a)
    assert fa == _files(b)
    assert fa["captcha-00000.png"] != _files(c)["captcha-00000.png"]
    assert fa["fonts.txt"].decode().split() and all(
        Path(f).is_file() for f in fa["fonts.txt"].decode().split()
    )
    images = sorted(a.glob("*.png"))
    assert [p.stem for p in images] == [p.stem for p in sorted(a.glob("captcha-*.txt"))]
    for img in images:
        assert Image.open(img).size == (160, 160)
        rows = np.loadtxt(img.with_suffix(".txt"), ndmin=2)
        assert 1 <= len(rows) <= 6 and rows.shape[1] == 5
        cls, cx, cy, w, h = rows.T
        assert np.all(cls == 0) and np.all((w > 0) & (h > 0))
        assert np.all((cx - w / 2 >= -1e-6) & (cx + w / 2 <= 1 + 1e-6))
        assert np.all((cy - h / 2 >= -1e-6) & (cy + h / 2 <= 1 + 1e-6))


def test_box_hugs_the_glyph_and_no_ink_lies_elsewhere(kind):
    """On a flat background (no photos) every changed pixel is a glyph's (fill, outline or
    shadow): each box holds strong ink touching all four sides, boxes keep apart, and nothing
    changed lies further than a shadow's reach from a box."""
    _, fonts, glyphs = cap.glyph_set()
    rng = np.random.default_rng(0)
    for _ in range(4):
        image, boxes = cap.render_captcha(rng, 256, fonts, glyphs, [])
        colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
        tone = colours[counts.argmax()].astype(int)
        diff = np.abs(image.astype(int) - tone).max(-1)
        assert 3 <= len(boxes) <= 6
        covered = np.zeros(diff.shape, bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
            ink = diff[y0:y1, x0:x1] > 0
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
            assert (diff[y0:y1, x0:x1] >= 60).any()  # a contrasting colour, fully drawn
            for u0, v0, u1, v1 in boxes[i + 1 :]:
                assert (
                    x1 + cap.GAP <= u0
                    or u1 + cap.GAP <= x0
                    or y1 + cap.GAP <= v0
                    or v1 + cap.GAP <= y0
                )
            covered[max(0, y0 - 12) : y1 + 12, max(0, x0 - 12) : x1 + 12] = True
        assert not (diff[~covered] > 0).any(), "ink outside every box"


def test_yolo_lines_normalise_the_boxes():
    text = cap.yolo_lines([(0, 0, 40, 20), (100, 50, 160, 110)], 200)
    rows = np.array([[float(v) for v in line.split()] for line in text.splitlines()])
    np.testing.assert_allclose(rows, [[0, 0.1, 0.05, 0.2, 0.1], [0, 0.65, 0.4, 0.3, 0.3]])


def test_common_hanzi_is_gb2312_level_one():
    chars = cap.common_hanzi()
    assert len(chars) == 3755 and len(set(chars)) == 3755
    assert chars[0] == "啊" and "中" in chars and "的" in chars
