"""Peak memory of fine-tuning on a large image folder, streamed.

Builds a folder of ``--count`` images (links to the seeded synthetic text pages of
``bench/text_pages.py``, so no disk is spent on copies), sets up the distillation of a
student from its teacher on it exactly as ``graphslim finetune`` does (streamed
:class:`graphslim.bridge.data.ImageFolderDataset`, validation share capped at 256 samples),
runs ``--steps`` training steps, and prints the peak RSS of the process next to what the
old in-memory loader would have needed for the pixels alone (N x C x H x W x 4 bytes).

    python bench/stream_memory.py STUDENT.onnx TEACHER.onnx [--count 10000] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main(argv: list[str] | None = None) -> int:
    from text_pages import text_pages

    from graphslim.bridge.data import ImageFolderDataset
    from graphslim.bridge.finetune import Distiller, FinetuneOptions
    from graphslim.feeds import Preprocess
    from graphslim.model_io import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("student")
    ap.add_argument("teacher")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--preprocess", default="imagenet,resize=320x320")
    args = ap.parse_args(argv)

    pages = sorted(text_pages(240, 0).glob("*.png"))
    with tempfile.TemporaryDirectory(prefix="graphslim-stream-") as tmp:
        for i in range(args.count):
            os.symlink(pages[i % len(pages)], Path(tmp) / f"img-{i:06d}.png")
        student, teacher = load_model(args.student), load_model(args.teacher)
        spec = Preprocess.parse(args.preprocess)
        t0 = time.perf_counter()
        ds = ImageFolderDataset(tmp, teacher, spec)
        opts = FinetuneOptions(epochs=1, batch=args.batch, augment=("flip", "color"))
        d = Distiller(student, teacher, ds, opts)
        setup = time.perf_counter() - t0
        for step, (mine, x) in enumerate(d.batches(1)):
            if step == args.steps:
                break
            d.backward(mine, 1, x)
            d.opt.step()
        sample = ds[0]
        pixels = len(ds) * sample.nbytes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    print(f"images {len(ds)}, sample {list(sample.shape)}, validation {len(d.val_inputs)}")
    print(f"peak RSS {peak:.0f} MiB after setup ({setup:.0f} s) and {args.steps} steps")
    print(f"in-memory pixels alone would be {pixels / 2**30:.1f} GiB")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
