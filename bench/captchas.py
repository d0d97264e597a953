"""Synthetic click captchas for the yolox-det recovery bench, rendered from a seed with PIL.

ddddocr's detector (zoo ``yolox-det``) finds the glyphs of click captchas: a photo with a few
characters strewn over it, which the user must click in a given order. Each image here: a
random square crop of a real zoo photo (random colour cast and brightness, sometimes lightly
washed out; a flat tone in 1 of 20), then 3-6 glyphs, each in a random font, a random size
(font size 28-60 px at 416, scaled with ``size``), a random colour whose luma differs from the
background under it by at least 80/255, plain or with a contrasting outline or a soft drop
shadow, rotated by up to 40 degrees either way. Glyphs do not overlap (their boxes keep 4 px
apart); a placement that would is drawn again, and the glyph dropped after 50 tries.

Glyphs: common Chinese characters (GB2312 level 1, 3,755 of them: the real domain) when a CJK
font is installed (:data:`CJK_FONTS`: WenQuanYi Zen Hei, AR PL UKai / UMing, Noto CJK;
``apt-get install fonts-wqy-zenhei fonts-arphic-ukai fonts-arphic-uming``); otherwise
letters, digits, Greek and Cyrillic in the DejaVu faces. The folder name says which
(``captchas-cjk-...`` / ``captchas-dejavu-...``) and ``fonts.txt`` in it lists the fonts.

Labels: one YOLO text file next to each image (``captcha-00000.png`` ->
``captcha-00000.txt``), a line ``0 cx cy w h`` per glyph, normalised to 0..1: the tight box
of the glyph's pixels (fill and outline, alpha > 1/4; not its shadow) as pasted. Images are
PNG in a cache folder named after the glyph set, seed, size and count (never committed); the
same arguments give the same bytes.

    python bench/captchas.py [--count 50] [--seed 1] [--check]   # --check: the original's recall
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from text_pages import BACKGROUNDS, CACHE, FONT_DIR, zoo_photos

CJK_FONTS = [
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/arphic/ukai.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
]
FONT_PX = (28, 60)  # font size range at a 416-px image
INK = 64  # alpha (0..255) that counts as part of a glyph's box
GAP = 4  # px between glyph boxes
YOLOX_STRIDES = (8, 16, 32)
DETECTOR_SIZE = (416, 416)


def common_hanzi() -> list[str]:
    """The 3,755 level-1 characters of GB2312 (rows 0xB0-0xD7, the most used hanzi)."""
    chars = []
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.append(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:  # 0xD7FA-0xD7FE are unassigned
                continue
    return chars


def latin_greek_cyrillic() -> list[str]:
    """Letters and digits DejaVu draws: A-Z, a-z, 0-9, Greek and Cyrillic capitals."""
    import string

    greek = [chr(c) for c in range(0x391, 0x3AA) if c != 0x3A2]
    cyrillic = [chr(c) for c in range(0x410, 0x430)]
    return list(string.ascii_letters + string.digits) + greek + cyrillic


def glyph_set() -> tuple[str, list[Path], list[str]]:
    """``("cjk", fonts, hanzi)`` when a CJK font is installed, else ``("dejavu", fonts,
    letters)``."""
    cjk = [Path(p) for p in CJK_FONTS if Path(p).is_file()]
    if cjk:
        return "cjk", cjk, common_hanzi()
    fonts = sorted(p for p in FONT_DIR.glob("DejaVu*.ttf") if "MathTeX" not in p.name)
    if not fonts:
        raise SystemExit(
            f"no CJK font ({', '.join(CJK_FONTS[:3])}) and no DejaVu fonts in {FONT_DIR} "
            "(apt-get install fonts-wqy-zenhei, or fonts-dejavu-core)"
        )
    return "dejavu", fonts, latin_greek_cyrillic()


def _luma(rgb) -> float:
    return float(np.asarray(rgb, dtype=np.float32) @ [0.299, 0.587, 0.114])


def _background(rng: np.random.Generator, size: int, photos: list) -> np.ndarray:
    """A random square crop of a photo with a colour cast and brightness change, sometimes
    lightly washed out (float ``[size, size, 3]``); a flat tone in 1 of 20."""
    from PIL import Image

    if not photos or rng.random() < 0.05:
        tone = rng.integers(60, 256, size=3).astype(np.float32)
        return np.broadcast_to(tone, (size, size, 3)).copy()
    photo = photos[int(rng.integers(len(photos)))]
    w, h = photo.size
    side = int(rng.integers(min(w, h) // 3, min(w, h) + 1))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
    arr = np.asarray(crop, dtype=np.float32) * rng.uniform(0.85, 1.15, size=3)
    arr = arr * rng.uniform(0.7, 1.2)
    if rng.random() < 0.3:
        wash = rng.uniform(0.1, 0.35)
        arr = arr * (1 - wash) + 235 * wash
    return arr.clip(0, 255)


def _contrasting(rng: np.random.Generator, luma: float, at_least: float = 80) -> np.ndarray:
    for _ in range(30):
        colour = rng.integers(0, 256, size=3).astype(np.float32)
        if abs(_luma(colour) - luma) >= at_least:
            return colour
    return np.full(3, 255.0 if luma < 128 else 0.0, np.float32)


def _glyph_masks(rng, char: str, font, angle: float, style: str):
    """Rotated alpha masks ``(fill, outline, shadow)`` of one glyph (``float [h, w]`` 0..1; the
    outline / shadow are ``None`` when ``style`` has none), on one canvas."""
    from PIL import Image, ImageDraw, ImageFilter

    x0, y0, x1, y1 = font.getbbox(char)
    pad = 8
    w, h = x1 - x0 + 2 * pad, y1 - y0 + 2 * pad
    origin = (pad - x0, pad - y0)

    def layer(**kw) -> Image.Image:
        im = Image.new("L", (w, h), 0)
        ImageDraw.Draw(im).text(origin, char, font=font, fill=255, **kw)
        return im.rotate(angle, expand=True, resample=Image.BICUBIC)

    fill = layer()
    outline = shadow = None
    if style == "outline":
        width = int(rng.integers(1, 4))
        outline = layer(stroke_width=width, stroke_fill=255)
    elif style == "shadow":
        dx, dy = (int(v) for v in rng.integers(1, 5, size=2))
        moved = Image.new("L", fill.size, 0)
        moved.paste(fill, (dx, dy))
        shadow = moved.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    as_float = lambda im: None if im is None else np.asarray(im, dtype=np.float32) / 255  # noqa: E731
    return as_float(fill), as_float(outline), as_float(shadow)


def _apart(a, b) -> bool:
    """Boxes ``(x0, y0, x1, y1)`` at least :data:`GAP` px apart on one axis."""
    return a[0] >= b[2] + GAP or b[0] >= a[2] + GAP or a[1] >= b[3] + GAP or b[1] >= a[3] + GAP


def render_captcha(
    rng: np.random.Generator, size: int, fonts: list[Path], glyphs: list[str], photos: list
):
    """One captcha (``uint8 [size, size, 3]`` RGB) and its glyph boxes, a list of
    ``(x0, y0, x1, y1)`` in pixels (``x1``, ``y1`` exclusive)."""
    from PIL import ImageFont

    image = _background(rng, size, photos)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(3, 7))):
        px = int(round(rng.integers(FONT_PX[0], FONT_PX[1] + 1) * size / 416))
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), px)
        char = glyphs[int(rng.integers(len(glyphs)))]
        angle = float(rng.uniform(-40, 40))
        style = str(rng.choice(["plain", "outline", "shadow"], p=[0.5, 0.3, 0.2]))
        fill, outline, shadow = _glyph_masks(rng, char, font, angle, style)
        ink = np.maximum(fill, outline) if outline is not None else fill
        ys, xs = np.nonzero(ink * 255 > INK)
        if ys.size == 0:
            continue
        by0, by1, bx0, bx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        bw, bh = bx1 - bx0, by1 - by0
        if bw >= size or bh >= size:
            continue
        for _ in range(50):
            x = int(rng.integers(0, size - bw + 1))
            y = int(rng.integers(0, size - bh + 1))
            box = (x, y, x + bw, y + bh)
            if all(_apart(box, b) for b in boxes):
                break
        else:
            continue
        # the canvas origin that puts the glyph's box at (x, y); the canvas may hang over
        ox, oy = x - bx0, y - by0
        h, w = fill.shape
        cy0, cx0 = max(0, -oy), max(0, -ox)
        cy1, cx1 = min(h, size - oy), min(w, size - ox)
        region = (slice(oy + cy0, oy + cy1), slice(ox + cx0, ox + cx1))
        part = (slice(cy0, cy1), slice(cx0, cx1))
        under = image[box[1] : box[3], box[0] : box[2]].reshape(-1, 3).mean(0)
        colour = _contrasting(rng, _luma(under))
        second = _contrasting(rng, _luma(colour), 100)  # outline / shadow: against the fill
        for mask, tone in ((shadow, second * 0.4), (outline, second), (fill, colour)):
            if mask is not None:
                a = mask[part][..., None]
                image[region] = image[region] * (1 - a) + tone * a
        boxes.append(box)
    return image.round().clip(0, 255).astype(np.uint8), boxes


def yolo_lines(boxes, size: int) -> str:
    """``0 cx cy w h`` (normalised) per box."""
    rows = []
    for x0, y0, x1, y1 in boxes:
        cx, cy, w, h = ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
        rows.append(f"0 {cx / size:.6f} {cy / size:.6f} {w / size:.6f} {h / size:.6f}")
    return "".join(r + "\n" for r in rows)


def captchas(count: int, seed: int, size: int = 416, *, root: Path = CACHE) -> Path:
    """Folder of ``count`` captchas ``captcha-00000.png``... with YOLO labels
    ``captcha-00000.txt`` next to them, for ``seed`` (rendered once, cached)."""
    from PIL import Image

    kind, fonts, glyphs = glyph_set()
    folder = root / f"captchas-{kind}-s{seed}-{size}px-{count}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    photos = zoo_photos(BACKGROUNDS)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, boxes = render_captcha(rng, size, fonts, glyphs, photos)
        Image.fromarray(image).save(folder / f"captcha-{i:05d}.png")
        (folder / f"captcha-{i:05d}.txt").write_text(yolo_lines(boxes, size))
    (folder / "fonts.txt").write_text("".join(f"{f}\n" for f in fonts))
    done.touch()
    return folder


def label_scores(outputs, letterboxes, labels, conf: float = 0.25) -> dict:
    """A detector's ``outputs`` (one ``{name: [1, 3549, 6]}`` per image, raw YOLOX grid) against
    the glyph boxes ``labels`` (:func:`graphslim.tasks.labels.load_yolo_labels`): recall and
    precision at IoU 0.5 of the detections with score >= ``conf`` after NMS, and mAP50 /
    mAP50-95 of the detections ranked down to score 0.001 (as COCO evaluation does)."""
    from graphslim import detect
    from graphslim.detect import Detections
    from graphslim.tasks.map import COCO_IOUS, mean_average_precision

    def dets(out, lb, threshold) -> Detections:
        d = detect.decode_yolox(
            next(iter(out.values())), threshold, input_hw=DETECTOR_SIZE, strides=YOLOX_STRIDES
        )
        return Detections(lb.to_original(d.boxes), d.scores, d.classes)

    found = [dets(o, lb, conf) for o, lb in zip(outputs, letterboxes)]
    total = sum((detect.match(t, f) for t, f in zip(labels, found)), detect.MatchResult(0, 0, 0))
    ranked = [dets(o, lb, 0.001) for o, lb in zip(outputs, letterboxes)]
    maps = mean_average_precision(labels, ranked, COCO_IOUS)
    return {
        "recall": total.recall,
        "precision": total.precision,
        "matched": total.matched,
        "glyphs": total.reference,
        "detections": total.candidate,
        "map50": maps[0.5],
        "map50_95": float(np.mean(list(maps.values()))),
        "conf": conf,
    }


def labeled_inputs(folder: Path, limit: int | None = None):
    """The raw-BGR 416 inputs of ``folder``'s captchas (``[1, 3, 416, 416]`` each), their
    letterbox geometry and their glyph boxes."""
    from graphslim.feeds import Preprocess, list_images, preprocess_image
    from graphslim.tasks.labels import load_yolo_labels

    files = list_images(folder, limit)
    spec = Preprocess.parse("raw-bgr")
    pre = [preprocess_image(f, spec, DETECTOR_SIZE) for f in files]
    letterboxes = [lb for _, lb in pre]
    return [x[None] for x, _ in pre], letterboxes, load_yolo_labels(folder, files, letterboxes)


def check(folder: Path, model_path=None, confs=(0.25, 0.1), limit: int | None = None) -> dict:
    """The detector's (default: the original yolox-det) label scores on ``folder`` at each
    score threshold in ``confs`` (0.25: graphslim's detection checks; 0.1: ddddocr's own)."""
    from graphslim import zoo
    from graphslim.model_io import load_model
    from graphslim.runtime import run_model

    model = load_model(model_path or zoo.fetch("yolox-det"))
    name = model.graph.input[0].name
    inputs, letterboxes, labels = labeled_inputs(folder, limit)
    outputs = run_model(model, [{name: x} for x in inputs])
    return {str(c): label_scores(outputs, letterboxes, labels, c) for c in confs}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument(
        "--check", action="store_true",
        help="score the original yolox-det against the glyph boxes (recall, precision, mAP50)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    folder = captchas(args.count, args.seed, args.size)
    print(folder)
    if args.check:
        print(json.dumps(check(folder), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
