"""quantize-int8 mode=dynamic vs static on a real text recognizer (PP-OCRv4 rec, SVTR neck).

Model: ``ch_PP-OCRv4_rec_infer.onnx`` from the same pinned wheel as the zoo's ppocr-det /
ppocr-cls (rapidocr-onnxruntime 1.4.4, sha256 pinned below; fetched through
:func:`graphslim.zoo.fetch` with a catalog entry built here, so the project's zoo list is
unchanged). Input fixed to 1x3x48x320 (rapidocr's ``rec_img_shape``), output ``[1, 40, 6625]``
CTC class scores per time step; weights are Constant nodes (``constants-to-initializers``
first).

Data: text lines rendered with PIL (DejaVu fonts, random words, dark ink on light paper, BGR,
``(x/255 - 0.5) / 0.5`` as rapidocr does): calibration lines from seed 0, evaluation lines
from seed 1 (disjoint).

Variants: FP32; ``quantize-int8{target=cpu-x86}`` (static QDQ, calibrated on the calibration
lines); ``quantize-int8{mode=dynamic}`` (MatMul weights s8 offline, activations at run time).
Both with ``latency_guard=off`` so that both are measured (the guard's verdict is what the
ratio column says). Measured: onnxruntime CPU latency, FP32 and both INT8 variants
alternating in one :func:`graphslim.bench.bench` call; agreement with FP32 on the evaluation
lines: the greedy CTC decoding (argmax per step, repeats collapsed, blank 0 dropped) equal to
FP32's, per-step argmax agreement, output cosine.

    python bench/quantize_dynamic.py [--runs 30] [--lines 32]

writes bench/results/quantize_dynamic.md and .json (machine, load, versions).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import string
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import environment, machine_line, write_results  # noqa: E402

from graphslim import zoo  # noqa: E402
from graphslim.bench import bench  # noqa: E402
from graphslim.contract import PassContext  # noqa: E402
from graphslim.passes.constants_to_initializers import ConstantsToInitializers  # noqa: E402
from graphslim.passes.quantize_int8 import QuantizeInt8  # noqa: E402
from graphslim.runtime import run_model  # noqa: E402

REC_MEMBER = "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"
REC_SHA256 = "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"
SHAPE = (1, 3, 48, 320)
FONTS = Path("/usr/share/fonts/truetype/dejavu")


def fetch_rec() -> Path:
    base = zoo.load_catalog()["ppocr-cls"]  # same package, version and wheel
    entry = dataclasses.replace(
        base,
        id="ppocr-rec",
        member=REC_MEMBER,
        sha256=REC_SHA256,
        description="PP-OCRv4 text recognizer (SVTR neck), CTC over 6625 classes",
        input_shape=["N", 3, 48, "W"],
    )
    return zoo.fetch("ppocr-rec", catalog={"ppocr-rec": entry})


def text_lines(count: int, seed: int) -> list[np.ndarray]:
    """``count`` rendered lines as network inputs ``[1, 3, 48, 320]`` (BGR, (x/255-0.5)/0.5)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = sorted(FONTS.glob("DejaVuSans*.ttf")) or sorted(FONTS.glob("*.ttf"))
    out = []
    for _ in range(count):
        paper = tuple(int(v) for v in rng.integers(200, 256, 3))
        ink = tuple(int(v) for v in rng.integers(0, 70, 3))
        im = Image.new("RGB", (SHAPE[3], SHAPE[2]), paper)
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(22, 34)))
        words = [
            "".join(rng.choice(list(string.ascii_letters + string.digits), rng.integers(2, 8)))
            for _ in range(int(rng.integers(2, 5)))
        ]
        ImageDraw.Draw(im).text((int(rng.integers(2, 12)), 6), " ".join(words), ink, font=font)
        bgr = np.asarray(im, np.float32)[:, :, ::-1] / 255.0
        out.append(((bgr - 0.5) / 0.5).transpose(2, 0, 1)[None].astype(np.float32))
    return out


def ctc_greedy(scores: np.ndarray) -> tuple[int, ...]:
    best = scores.argmax(-1).ravel()
    keep = [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]
    return tuple(keep)


def agreement(reference, got) -> dict:
    name = next(iter(reference[0]))
    ref = [r[name] for r in reference]
    cand = [g[name] for g in got]
    a = np.concatenate([x.ravel() for x in ref]).astype(np.float64)
    b = np.concatenate([x.ravel() for x in cand]).astype(np.float64)
    steps = np.concatenate([(r.argmax(-1) == c.argmax(-1)).ravel() for r, c in zip(ref, cand)])
    return {
        "sequence_agreement": float(
            np.mean([ctc_greedy(r) == ctc_greedy(c) for r, c in zip(ref, cand)])
        ),
        "step_agreement": float(steps.mean()),
        "cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--lines", type=int, default=32, help="evaluation lines (calibration: 16)")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs to root

    fp32 = onnx.load_model(str(fetch_rec()))
    fp32 = ConstantsToInitializers()(fp32, PassContext()).model
    name = fp32.graph.input[0].name
    for d, v in zip(fp32.graph.input[0].type.tensor_type.shape.dim, SHAPE):
        d.ClearField("dim_param")
        d.dim_value = v
    calib = [{name: x} for x in text_lines(16, seed=0)]
    evals = [{name: x} for x in text_lines(args.lines, seed=1)]
    env = environment(runs=args.runs, calibration="16 rendered lines, seed 0",
                      evaluation=f"{args.lines} rendered lines, seed 1")  # fmt: skip
    print(machine_line(env))
    variants = []
    for label, options in (
        ("static", {"target": "cpu-x86"}),
        ("dynamic", {"target": "cpu-x86", "mode": "dynamic"}),
    ):
        t0 = time.perf_counter()
        r = QuantizeInt8(latency_guard="off", **options)(fp32, PassContext(feeds=calib))
        info = {
            "seconds": round(time.perf_counter() - t0, 1),
            "counters": r.counters,
            "notes": r.notes,
        }
        variants.append((label, r.model, info))
    reference = run_model(fp32, evals, optimization="all")
    timings = bench(
        [("fp32", fp32)] + [(lbl, m) for lbl, m, _ in variants], evals[0], runs=args.runs
    )
    size0 = len(fp32.SerializeToString())
    rows = [{"variant": "fp32", "median_ms": round(timings[0].median_ms, 2), "ratio": 1.0,
             "size_ratio": 1.0, "quality": {}}]  # fmt: skip
    for (label, model, info), t in zip(variants, timings[1:]):
        got = run_model(model, evals, optimization="all")
        rows.append(
            {
                "variant": label,
                "median_ms": round(t.median_ms, 2),
                "ratio": round(t.ratio, 3),
                "size_ratio": round(len(model.SerializeToString()) / size0, 3),
                "quality": agreement(reference, got),
                **info,
            }
        )
    lines = [
        "# quantize-int8 mode=dynamic vs static: PP-OCRv4 text recognizer",
        "",
        f"`python bench/quantize_dynamic.py --runs {args.runs} --lines {args.lines}` (shared "
        "2-core box: see the load above), onnxruntime CPU, FP32 and both INT8 variants "
        "alternating in one process. Calibration: 16 rendered text lines (seed 0); evaluation: "
        f"{args.lines} other lines (seed 1).",
        "",
        "| variant | median ms | vs FP32 | size | CTC text = FP32's | per-step argmax agree | cosine |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q = r["quality"]
        if not q:
            lines.append(f"| fp32 | {r['median_ms']:.2f} | 1.00x | 1.00x | reference | | |")
            continue
        lines.append(
            f"| {r['variant']} | {r['median_ms']:.2f} | {r['ratio']:.2f}x | {r['size_ratio']:.2f}x | "
            f"{q['sequence_agreement']:.3f} | {q['step_agreement']:.4f} | {q['cosine']:.5f} |"
        )
    lines += ["", "Notes of the pass:", ""]
    lines += [f"- {r['variant']}: {n}" for r in rows for n in r.get("notes", [])]
    md = write_results("quantize_dynamic", env, {"rows": rows}, lines)
    print("\n".join(lines))
    print(f"wrote {md} and .json")


if __name__ == "__main__":
    main()
