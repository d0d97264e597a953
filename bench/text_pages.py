"""Synthetic text pages for the ppocr-det fine-tune bench, rendered from a seed with PIL.

Each page: a background (a crop of a real zoo photo, washed out towards paper white, or a
plain paper tone), then lines of random words in the system's DejaVu fonts (random face,
size 12-34 px, dark random colour, small rotation per line). Pages are written as PNG into a
cache folder named after the seed, size and count (never committed); the same arguments
give the same files.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
BACKGROUNDS = ["astronaut", "chelsea", "coffee", "rocket", "china", "flower", "camera", "coins",
               "horse", "brick", "grass", "gravel", "moon", "quokka"]  # fmt: skip
CACHE = Path.home() / ".cache" / "graphslim" / "bench"


def zoo_photos(names=BACKGROUNDS) -> list:
    """The zoo photos ``names`` as RGB PIL images (the backgrounds of the generated sets)."""
    from PIL import Image

    from graphslim import zoo

    photos = []
    for name in names:
        try:
            photos.append(Image.open(zoo.fetch(name)).convert("RGB"))
        except Exception:  # a photo missing from the cache only narrows the backgrounds
            continue
    return photos


def _word(rng: np.random.Generator) -> str:
    letters = string.ascii_letters + string.digits if rng.random() < 0.2 else string.ascii_lowercase
    word = "".join(rng.choice(list(letters), size=int(rng.integers(2, 10))))
    return word.capitalize() if rng.random() < 0.3 else word


def _background(rng, size: int, photos: list):
    from PIL import Image

    if photos and rng.random() < 0.6:
        photo = photos[int(rng.integers(len(photos)))]
        w, h = photo.size
        side = int(rng.integers(min(w, h) // 3, min(w, h) + 1))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = photo.crop((x, y, x + side, y + side)).resize((size, size)).convert("RGB")
        wash = rng.uniform(0.45, 0.8)  # text must stay readable on it
        arr = np.asarray(crop, dtype=np.float32) * (1 - wash) + 245 * wash
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    tone = rng.integers(200, 256, size=3)
    return Image.new("RGB", (size, size), tuple(int(t) for t in tone))


def render_page(
    rng: np.random.Generator, size: int, fonts: list[Path], photos: list, min_font: int = 12
):
    from PIL import Image, ImageDraw, ImageFont

    page = _background(rng, size, photos)
    y = int(rng.integers(2, 20))
    while y < size - 12:
        font_size = int(rng.integers(min_font, 35))
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), font_size)
        line = " ".join(_word(rng) for _ in range(int(rng.integers(1, 7))))
        colour = tuple(int(c) for c in rng.integers(0, 90, size=3))
        layer = Image.new("L", (size * 2, font_size * 2), 0)
        ImageDraw.Draw(layer).text((0, 0), line, font=font, fill=255)
        layer = layer.rotate(float(rng.uniform(-6, 6)), expand=True, resample=Image.BILINEAR)
        x = int(rng.integers(-10, size // 3))
        page.paste(Image.new("RGB", layer.size, colour), (x, y), layer)
        y += int(font_size * rng.uniform(1.3, 2.6))
        if rng.random() < 0.15:
            y += int(rng.integers(10, 60))  # a paragraph break
    return page


def text_pages(
    count: int, seed: int, size: int = 320, *, min_font: int = 12, root: Path = CACHE
) -> Path:
    """Folder of ``count`` pages ``page-00000.png``... for ``seed`` (rendered once, cached).
    ``min_font``: the smallest font size in px (12 by default; a whole scanned page at 384 px
    has text of ~5 px, which a student trained on 12-34 px only stops finding)."""

    tag = "" if min_font == 12 else f"-f{min_font}"
    folder = root / f"text-pages-s{seed}-{size}px-{count}{tag}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    fonts = sorted(p for p in FONT_DIR.glob("DejaVu*.ttf") if "MathTeX" not in p.name)
    if not fonts:
        raise SystemExit(f"no DejaVu fonts in {FONT_DIR} (apt-get install fonts-dejavu-core)")
    photos = zoo_photos()
    rng = np.random.default_rng(seed)
    for i in range(count):
        render_page(rng, size, fonts, photos, min_font).save(folder / f"page-{i:05d}.png")
    done.touch()
    return folder


def _paragraph_line(rng, draw, font, width: int) -> str:
    """Random words that fill ``width`` pixels in ``font`` (a justified-looking line)."""
    words: list[str] = []
    while True:
        word = _word(rng)
        if words and draw.textlength(" ".join([*words, word]), font=font) > width:
            return " ".join(words)
        words.append(word)
        if len(words) > 40:
            return " ".join(words)


def render_document(rng: np.random.Generator, fonts: list[Path]):
    """One photographed-document crop (the kind of ``page`` in the zoo): paper grey with an
    illumination gradient, an optional heading, paragraphs of left-aligned lines filling the
    text width, a dark ink colour, a small skew and blur. Upright: its rotation label is 0."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    w, h = int(rng.integers(320, 513)), int(rng.integers(160, 481))
    paper = float(rng.uniform(170, 250))
    page = Image.new("L", (w, h), int(paper))
    draw = ImageDraw.Draw(page)
    ink = int(rng.integers(0, 80))
    margin = int(rng.integers(4, 30))
    y = int(rng.integers(-8, 20))
    body = int(rng.integers(11, 22))
    face = fonts[int(rng.integers(len(fonts)))]
    if rng.random() < 0.5:  # a heading in a bigger face
        size = int(body * rng.uniform(1.4, 2.2))
        head = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size)
        text = " ".join(_word(rng).capitalize() for _ in range(int(rng.integers(1, 4))))
        draw.text((margin, y), text, font=head, fill=ink)
        y += int(size * rng.uniform(1.5, 2.2))
    font = ImageFont.truetype(str(face), body)
    spacing = rng.uniform(1.25, 1.7)
    while y < h:
        indent = int(rng.integers(0, 40)) if rng.random() < 0.1 else 0
        line = _paragraph_line(rng, draw, font, w - 2 * margin - indent)
        if rng.random() < 0.12:  # the last, shorter line of a paragraph
            line = " ".join(line.split()[: max(1, len(line.split()) // 2)])
        draw.text((margin + indent, y), line, font=font, fill=ink)
        y += int(body * spacing)
        if rng.random() < 0.1:
            y += int(body * rng.uniform(0.5, 1.5))  # a paragraph break
    # illumination: a linear ramp in a random direction, then sensor noise
    arr = np.asarray(page, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(a) * xx / w + np.sin(a) * yy / h) * rng.uniform(0, 60)
    arr = arr - ramp + rng.normal(0, rng.uniform(0, 6), size=arr.shape)
    page = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    page = page.rotate(float(rng.uniform(-4, 4)), resample=Image.BILINEAR, fillcolor=int(paper))
    return page.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.0))))


def document_pages(count: int, seed: int, *, root: Path = CACHE) -> Path:
    """Folder of class folders ``0/ 1/ 2/ 3/`` (clockwise turns of 0, 90, 180, 270 degrees)
    holding every one of ``count`` rendered documents (:func:`render_document`) turned by
    that class's angle: ``4 * count`` labeled images, rendered once for ``seed`` and cached.
    PIL's ``rotate`` turns counter-clockwise, hence ``-angle``."""
    folder = root / f"doc-pages-s{seed}-{count}"
    done = folder / ".complete"
    if done.exists():
        return folder
    fonts = sorted(p for p in FONT_DIR.glob("DejaVu*.ttf") if "MathTeX" not in p.name)
    if not fonts:
        raise SystemExit(f"no DejaVu fonts in {FONT_DIR} (apt-get install fonts-dejavu-core)")
    for k in range(4):
        (folder / str(k)).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        doc = render_document(rng, fonts)
        for k in range(4):
            doc.rotate(-90 * k, expand=True).save(folder / str(k) / f"doc-{i:05d}.png")
    done.touch()
    return folder


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--documents", action="store_true", help="rotated document crops instead")
    args = ap.parse_args(argv)
    if args.documents:
        print(document_pages(args.count, args.seed))
    else:
        print(text_pages(args.count, args.seed, args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
