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


def render_page(rng: np.random.Generator, size: int, fonts: list[Path], photos: list):
    from PIL import Image, ImageDraw, ImageFont

    page = _background(rng, size, photos)
    y = int(rng.integers(2, 20))
    while y < size - 12:
        font_size = int(rng.integers(12, 35))
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


def text_pages(count: int, seed: int, size: int = 320, *, root: Path = CACHE) -> Path:
    """Folder of ``count`` pages ``page-00000.png``... for ``seed`` (rendered once, cached)."""
    from PIL import Image

    from graphslim import zoo

    folder = root / f"text-pages-s{seed}-{size}px-{count}"
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    fonts = sorted(p for p in FONT_DIR.glob("DejaVu*.ttf") if "MathTeX" not in p.name)
    if not fonts:
        raise SystemExit(f"no DejaVu fonts in {FONT_DIR} (apt-get install fonts-dejavu-core)")
    photos = []
    for name in BACKGROUNDS:
        try:
            photos.append(Image.open(zoo.fetch(name)).convert("RGB"))
        except Exception:  # a photo missing from the cache only narrows the backgrounds
            continue
    rng = np.random.default_rng(seed)
    for i in range(count):
        render_page(rng, size, fonts, photos).save(folder / f"page-{i:05d}.png")
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
    args = ap.parse_args(argv)
    print(text_pages(args.count, args.seed, args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
