"""Does latency follow the work? prune-channels{ratio=0.5}, measured against its per-op limit.

For each model: the original and ``prune-channels{ratio=0.5}`` are timed side by side at
onnxruntime's ``all`` level (:func:`graphslim.bench.bench`, alternating, ratio of medians:
what a user measures), and :func:`graphslim.explain.explain` gives the per-op limit (every
node of the original profiled at ``--level`` (default ``all``, what users run; ``basic`` was
this bench's level before: im2col convolutions, another kernel's scaling), scaled by its own
work ratio). ``over`` =
measured ratio / limit ratio (1.00: the runtime turns the removed work into time; the
issue's goal is <= 1.15). The op types whose time falls least against their work are
listed.

Models: YOLOv8n, MobileNetV2, EfficientNet-B0 (zoo structure models, random weights:
latency depends on structure only) and yolox-det (real weights).

    python bench/latency_limit.py [--runs 30] [--only yolov8n-640 ...]

Writes bench/results/latency_limit.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import environment, load_cell, write_results  # noqa: E402  (bench/_common.py)

from graphslim import zoo  # noqa: E402
from graphslim.bench import bench  # noqa: E402
from graphslim.explain import explain  # noqa: E402
from graphslim.feeds import random_feeds  # noqa: E402
from graphslim.metrics import model_stats  # noqa: E402
from graphslim.pipeline import Pipeline  # noqa: E402

MODELS = ["yolov8n-640", "mobilenetv2-224", "efficientnet-b0-224", "yolox-det"]


def run_one(model_id: str, runs: int, level: str = "all") -> dict:
    original = onnx.load(str(zoo.fetch(model_id)))
    pruned = Pipeline.parse("prune-channels{ratio=0.5}").run(original, validate=False).model
    feed = random_feeds(original, count=1, seed=0)[0]
    load_before = os.getloadavg()
    t = bench([("original", original), ("pruned", pruned)], feed, warmup=3, runs=runs)
    e = explain(original, pruned, feed, runs=max(5, runs // 3), level=level)
    measured = t[1].median_ms / t[0].median_ms
    slow = sorted(
        (r for r in e.rows if r.share >= 0.02),
        key=lambda r: -(r.ratio / r.work_ratio if r.work_ratio else 0),
    )
    return {
        "model": model_id,
        "macs_ratio": model_stats(pruned).macs / model_stats(original).macs,
        "ms_original": t[0].median_ms,
        "ms_pruned": t[1].median_ms,
        "measured_ratio": measured,
        "limit_ratio": e.limit_ratio,
        "over_limit": measured / e.limit_ratio,
        "profile_wall_ratio": e.measured_ratio,
        "kernel_ratio": e.kernel_ratio,
        "kernel_over_limit": e.over_limit,
        "level": level,
        "explain": e.to_dict(),
        "lagging_ops": [
            f"{r.op_type} {r.ratio:.2f} vs work {r.work_ratio:.2f} ({r.share:.0%})"
            for r in slow[:3]
        ],
        "loadavg": [round(x, 2) for x in load_before + os.getloadavg()],
    }


def write(rows: list[dict], runs: int, level: str = "all") -> None:
    env = environment(runs=runs)
    lines = [
        "# Latency vs its per-op limit: prune-channels{ratio=0.5}",
        "",
        f"`python bench/latency_limit.py --runs {runs} --level {level}`. Measured = ratio of "
        "medians at `all`, alternating; limit = every original node's profiled kernel time "
        f"(`{level}`) scaled by its work ratio (graphslim/explain.py); over = measured / limit; "
        "kernel over = the profiled kernel time ratio / limit (the part of `over` inside the "
        "kernels; the rest is time between them).",
        "",
        "| model | MACs | measured | limit | over | kernel over | lagging op types (time ratio vs work ratio, share) | load avg before / after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        load = load_cell(r["loadavg"])
        lines.append(
            f"| {r['model']} | {r['macs_ratio']:.2f}x | {r['measured_ratio']:.2f}x "
            f"({r['ms_original']:.1f} -> {r['ms_pruned']:.1f} ms) | {r['limit_ratio']:.2f}x | "
            f"{r['over_limit']:.2f} | {r['kernel_over_limit']:.2f} | "
            f"{'; '.join(r['lagging_ops'])} | {load} |"
        )
    md = write_results("latency_limit", env, {"rows": rows}, lines)
    print(md.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--only", nargs="*", default=MODELS)
    parser.add_argument("--level", default="all", choices=["all", "basic"])
    args = parser.parse_args()
    write([run_one(m, args.runs, args.level) for m in args.only], args.runs, args.level)


if __name__ == "__main__":
    main()
