"""Latency budget search vs uniform pruning at the same MACs, and the edge-cpu recipe.

Models (onnxruntime CPU):

* yolov8n-640: the ultralytics export's graph with RANDOM weights (zoo structure, seed 0):
  output error only, detections of random weights mean nothing; preprocessing ``yolo``;
* yolox-det: ddddocr's YOLOX detector, real weights, input 416, preprocessing ``raw-bgr``.

Calibration images (pruning sensitivity, INT8): astronaut, coffee, chelsea, rocket, china,
flower; evaluation (disjoint): bus, zidane, motorcycle-left, page, text.

Per model:

1. ``budget``: ``prune-channels{budget=latency=B}`` for B = 0.5 (the issue's target) and
   0.75 (per-group ratios from measured sensitivity on the first ``--sens-feeds``
   calibration images, measured once and cached in the context; the chosen candidate is
   built and timed against the original inside the pass, and the search aims lower when
   the measured ratio misses: ``budget_checks``, graphslim/pruning/budget.py);
2. ``uniform``: ``prune-channels{ratio=r}`` with the r (0.05 steps) whose estimated MACs
   are closest to the budget model's (the same ratio for every group, at about the same
   MACs; rounding kept counts to multiples of 8 makes MACs fall in steps);
3. onnxruntime CPU latency of each budget and uniform model against the original, run
   alternately in one :func:`graphslim.bench.bench` call per pair (``os.getloadavg()``
   recorded before and after);
   output error on the evaluation images (worst output's max-rel, cosine, mean-abs);
   yolox-det: detection agreement with the original (score >= 0.25 after NMS, IoU >= 0.5,
   same class).

Then ``recipes/edge-cpu.toml`` on yolox-det end to end (calibration images as --calib,
evaluation images as --feeds): latency ratio, size ratio, detection agreement.

    python bench/budget.py [--runs 20] [--models yolov8n-640,yolox-det] [--no-recipe | --keep-recipe]

writes bench/results/budget.md and .json next to this file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import environment, write_results  # noqa: E402  (bench/_common.py)

from graphslim import detect, zoo  # noqa: E402
from graphslim.bench import bench  # noqa: E402
from graphslim.contract import PassContext  # noqa: E402
from graphslim.feeds import Preprocess, preprocess_image  # noqa: E402
from graphslim.metrics import model_stats  # noqa: E402
from graphslim.passes.prune_channels import PruneChannels  # noqa: E402
from graphslim.pipeline import Pipeline  # noqa: E402
from graphslim.runtime import run_model  # noqa: E402
from graphslim.validate import compare_outputs  # noqa: E402

CALIBRATION = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]
EVALUATION = ["bus", "zidane", "motorcycle-left", "page", "text"]
MODELS = {
    # id -> (preprocess, input size, real weights)
    "yolov8n-640": ("yolo", (640, 640), False),
    "yolox-det": ("raw-bgr", (416, 416), True),
}
YOLOX_STRIDES = (8, 16, 32)
BUDGETS = (0.5, 0.75)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--sens-feeds", type=int, default=2, help="calibration images for sensitivity")
    ap.add_argument("--no-recipe", action="store_true")
    ap.add_argument(
        "--keep-recipe",
        action="store_true",
        help="skip the recipe run and keep the recipe results of the last run's budget.json",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.ERROR)
    images = zoo.fetch_all(CALIBRATION + EVALUATION)
    print(f"calibration: {', '.join(CALIBRATION)}; evaluation (disjoint): {', '.join(EVALUATION)}")
    results = [run_one(mid, images, args) for mid in args.models.split(",")]
    if args.keep_recipe:
        last = Path(__file__).resolve().parent / "results" / "budget.json"
        recipe = json.loads(last.read_text()).get("recipe")
    else:
        recipe = (
            None
            if args.no_recipe
            else [run_recipe(images, args, gated=False), run_recipe(images, args, gated=True)]
        )
    write(results, recipe, args)


def _feeds(model, images, names, pre, size):
    spec = Preprocess.parse(pre)
    name = model.graph.input[0].name
    return [{name: preprocess_image(images[k], spec, size)[0][None]} for k in names]


def _errors(reference, got) -> dict:
    c = compare_outputs(reference, got, ())
    return {
        "max-rel": c.worst("max-rel"),
        "cosine": c.worst("cosine"),
        "mean-abs": c.worst("mean-abs"),
    }


def _detections(reference, got, size) -> dict:
    name = next(iter(reference[0]))
    total = detect.MatchResult(0, 0, 0)
    kw = dict(input_hw=size, strides=YOLOX_STRIDES)
    for r, g in zip(reference, got):
        total = total + detect.match(
            detect.decode_yolox(r[name], **kw), detect.decode_yolox(g[name], **kw)
        )
    return {"matched": total.matched, "reference": total.reference, "candidate": total.candidate}


def _timed(models, feed, runs) -> tuple[list, list, list]:
    before = list(os.getloadavg())
    timings = bench(models, feed, runs=runs)
    return timings, before, list(os.getloadavg())


def run_one(model_id: str, images: dict, args) -> dict:
    pre, size, real = MODELS[model_id]
    model = onnx.load_model(str(zoo.fetch(model_id)))
    calib = _feeds(model, images, CALIBRATION, pre, size)
    evals = _feeds(model, images, EVALUATION, pre, size)
    macs0 = model_stats(model).macs

    ctx = PassContext(seed=0, feeds=calib[: args.sens_feeds])
    variants = [("original", model)]
    budgets = {}
    for level in BUDGETS:
        # The sensitivity is measured once (first level) and cached in ctx for the others.
        t0 = time.perf_counter()
        b = PruneChannels(budget=f"latency={level}")(_copy(model), ctx)
        seconds = time.perf_counter() - t0
        u = _uniform_closest(model, b.counters["macs_estimate_ratio"])
        print(f"{model_id} latency={level}: {seconds:.0f} s; counters {b.counters}")
        variants += [(f"budget {level}", b.model), (f"uniform @ budget {level} MACs", u.model)]
        budgets[str(level)] = {"seconds": round(seconds, 1), "counters": b.counters}

    # Each variant is timed against the original in a pair (two sessions), the way the
    # pass's own check times it, so the table and the check measure alike.
    load_before = list(os.getloadavg())
    pairs = [bench([variants[0], v], evals[0], runs=args.runs) for v in variants[1:]]
    load_after = list(os.getloadavg())
    timings = [pairs[0][0]] + [p[1] for p in pairs]
    reference = run_model(model, evals, optimization="all")
    rows = []
    for (label, m), t in zip(variants, timings):
        got = run_model(m, evals, optimization="all") if label != "original" else reference
        row = {
            "variant": label,
            "median_ms": round(t.median_ms, 2),
            "latency_ratio": round(t.ratio or 1.0, 3),
            "macs_ratio": round(model_stats(m).macs / macs0, 3),
            "errors": _errors(reference, got) if label != "original" else {},
        }
        if real and label != "original":
            row["detections"] = _detections(reference, got, size)
        rows.append(row)
        print(row)
    return {
        "model": model_id,
        "weights": "real" if real else "random (zoo structure, seed 0)",
        "budgets": budgets,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "rows": rows,
    }


def _uniform_closest(model, macs: float):
    """Uniform pruning whose estimated MACs are closest to ``macs``. With kept counts
    rounded to multiples of 8, MACs fall in steps as the ratio grows, so ``target_macs``
    (the smallest ratio at or below the target) can land far below; scan instead."""
    best = None
    for ratio in [round(0.05 * k, 2) for k in range(1, 19)]:
        r = PruneChannels(ratio=ratio)(_copy(model), PassContext(seed=0))
        gap = abs(r.counters.get("macs_estimate_ratio", 1.0) - macs)
        if best is None or gap < best[0]:
            best = (gap, r)
    return best[1]


def run_recipe(images: dict, args, gated: bool) -> dict:
    """``recipes/edge-cpu.toml`` end to end; ``gated``: with the CLI's ``--task detect
    --min-metric map50=0.5 --on-fail rollback`` (the gate scores every step on the
    evaluation images, as the CLI's gate does on --feeds)."""
    from graphslim.tasks import Task, TaskGate

    pre, size, _ = MODELS["yolox-det"]
    model = onnx.load_model(str(zoo.fetch("yolox-det")))
    calib = _feeds(model, images, CALIBRATION, pre, size)
    evals = _feeds(model, images, EVALUATION, pre, size)
    pipe = Pipeline.from_toml(ROOT / "recipes" / "edge-cpu.toml")
    # As `graphslim run MODEL -p recipes/edge-cpu.toml --calib CAL --feeds EVAL`.
    ctx = PassContext(seed=0, feeds=calib)
    gate = False  # the passes alone, without the recipe's own [gate]
    if gated:
        task = Task("detect", decoder="yolox", input_hw=size)
        gate = TaskGate(task, "map50", 0.5, evals, on_fail="rollback")
    t0 = time.perf_counter()
    res = pipe.run(model, ctx=ctx, feeds=evals, gate=gate)
    seconds = time.perf_counter() - t0
    out = res.model
    timings, load_before, load_after = _timed(
        [("original", model), ("edge-cpu", out)], evals[0], args.runs
    )
    reference = run_model(model, evals, optimization="all")
    got = run_model(out, evals, optimization="all")
    size0, size1 = len(model.SerializeToString()), len(out.SerializeToString())
    rec = {
        "model": "yolox-det",
        "gate": "map50>=0.5, rollback" if gated else None,
        "pipeline": repr(pipe),
        "seconds": round(seconds, 1),
        "median_ms": [round(t.median_ms, 2) for t in timings],
        "latency_ratio": round(timings[1].ratio, 3),
        "size_ratio": round(size1 / size0, 3),
        "errors": _errors(reference, got),
        "detections": _detections(reference, got, size),
        "passes": {r.name: r.counters for r in res.records},
        "rolled_back": [r.name for r in res.records if r.rolled_back],
        "notes": {r.name: r.notes for r in res.records if r.notes},
        "task_per_pass": {r.name: r.task for r in res.records if r.task},
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    print({k: v for k, v in rec.items() if k not in ("passes", "pipeline")})
    return rec


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _load(v: list) -> str:
    return "/".join(f"{x:.2f}" for x in v)


def write(results: list[dict], recipe: dict | None, args) -> None:
    env = environment(
        runs=args.runs,
        sensitivity_feeds=args.sens_feeds,
        calibration_images=CALIBRATION,
        evaluation_images=EVALUATION,
    )
    lines = [
        "# Latency budget search vs uniform pruning (onnxruntime CPU)",
        "",
        f"onnxruntime {env['onnxruntime']} CPU, {env['cores']} cores ({env['arch']}; "
        f"load average in the table); each variant timed against the original in its own pair, "
        f"{args.runs} alternating runs (ratio of medians). Budget "
        "`prune-channels{budget=latency=B}` for B in "
        f"{', '.join(map(str, BUDGETS))} (sensitivity on {args.sens_feeds} "
        "calibration images); uniform = `prune-channels{ratio=r}` with the r (0.05 steps) "
        "whose MACs are closest to the budget model's. Errors on the 5 evaluation images "
        "(worst output).",
        "",
        "| model | weights | variant | median ms | latency | MACs | max-rel | cosine | "
        "detections kept | load avg before / after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for row in r["rows"]:
            e = row["errors"]
            d = row.get("detections")
            det = f"{d['matched']}/{d['reference']}" if d else "-"
            lines.append(
                f"| {r['model']} | {r['weights'].split(' ')[0]} | {row['variant']} | "
                f"{row['median_ms']:.1f} | {row['latency_ratio']:.2f}x | {row['macs_ratio']:.2f}x | "
                f"{e.get('max-rel', 0):.3g} | {e.get('cosine', 1):.4f} | {det} | "
                f"{_load(r['loadavg_before'])} / {_load(r['loadavg_after'])} |"
            )
    lines.append("")
    for r in results:
        for level, b in r["budgets"].items():
            c = b["counters"]
            lines.append(
                f"- {r['model']} latency={level}: search {b['seconds']:.0f} s; predicted latency "
                f"{c.get('budget_predicted')}x, measured in the search {c.get('budget_measured')}x "
                f"after {c.get('budget_checks')} check(s) (aim {c.get('budget_aim')}; met "
                f"{bool(c.get('budget_reached'))}); groups per ratio: "
                + ", ".join(f"{k.split('_')[-1]}: {v}" for k, v in c.items() if "_at_" in k)
            )
    if recipe:
        lines += [
            "",
            "## edge-cpu recipe on yolox-det",
            "",
            "`graphslim run MODEL -p recipes/edge-cpu.toml --calib CAL --feeds EVAL` (as shipped), "
            "and with `--task detect --min-metric map50=0.5 --on-fail rollback`:",
            "",
            "| run | seconds | latency | size | detections kept | cosine | rolled back | load avg "
            "before / after |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for rec in recipe if isinstance(recipe, list) else [recipe]:
            d = rec["detections"]
            lines.append(
                f"| {'gate ' + rec['gate'] if rec.get('gate') else 'as shipped'} | "
                f"{rec['seconds']:.0f} | {rec['latency_ratio']:.2f}x ({rec['median_ms'][0]:.1f} "
                f"-> {rec['median_ms'][1]:.1f} ms) | {rec['size_ratio']:.2f}x | "
                f"{d['matched']}/{d['reference']} (candidate has {d['candidate']}) | "
                f"{rec['errors']['cosine']:.4f} | {', '.join(rec.get('rolled_back', [])) or '-'} | "
                f"{_load(rec['loadavg_before'])} / {_load(rec['loadavg_after'])} |"
            )
        lines.append("")
        for rec in recipe if isinstance(recipe, list) else [recipe]:
            label = f"gate {rec['gate']}" if rec.get("gate") else "as shipped"
            p = rec["passes"].get("prune-channels", {})
            lines.append(
                f"- {label}: prune-channels measured {p.get('budget_measured')}x in its search "
                f"({p.get('budget_checks')} check(s)), {p.get('layers_reconstructed', 0)} "
                "layers refitted"
            )
            for name, task in (rec.get("task_per_pass") or {}).items():
                m, d = task["metrics"], task["details"]
                back = " -> rolled back" if name in rec.get("rolled_back", []) else ""
                lines.append(
                    f"  - gate after {name}: map50 {m['map50']:.3f}, {d['matched']}/"
                    f"{d['original_detections']} matched{back}"
                )
            ft = rec["passes"].get("finetune", {})
            why = "; ".join(rec.get("notes", {}).get("finetune", []))
            if ft.get("epochs_run"):
                # the finetune pass names its epoch-choosing metric: val_<metric>_before/after
                metric = next(
                    (k[4:-7] for k in ft if k.startswith("val_") and k.endswith("_before")
                     and k not in ("val_loss_before", "val_cosine_before")),
                    "cosine",
                )  # fmt: skip
                why = (
                    f"{ft['epochs_run']} epochs on {ft.get('samples')} calibration images, best "
                    f"epoch {ft.get('best_epoch')} (validation {metric} "
                    f"{ft.get(f'val_{metric}_before')} -> {ft.get(f'val_{metric}_after')}); {why}"
                )
            lines.append(f"  - finetune: {why}")
    write_results("budget", env, {"results": results, "recipe": recipe}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
