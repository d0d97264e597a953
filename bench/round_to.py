"""Which channel multiple should pruning round to? ``prune-channels{ratio=0.5}`` with
``round_to`` 1 / 8 / 16 / auto, timed side by side on this machine.

For each model the original and the four pruned candidates run in one
:func:`graphslim.bench.bench` call (alternating, ratio of medians against the original:
what a user measures), next to each candidate's MACs and how many of its convolutions
onnxruntime runs blocked (NCHWc). ``auto`` is onnxruntime's NCHWc channel block on this
machine, probed (:func:`graphslim.machine.channel_block`).

Models: YOLOv8n, MobileNetV2, EfficientNet-B0, ShuffleNetV2 (zoo structure models, random
weights: latency depends on structure only) and yolox-det (real weights).

    python bench/round_to.py [--runs 30] [--only yolov8n-640 ...]

Writes bench/results/round_to.{json,md}.
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
from graphslim.feeds import random_feeds  # noqa: E402
from graphslim.machine import channel_block  # noqa: E402
from graphslim.metrics import model_stats  # noqa: E402
from graphslim.pipeline import Pipeline  # noqa: E402

MODELS = ["yolov8n-640", "mobilenetv2-224", "efficientnet-b0-224", "shufflenetv2-224", "yolox-det"]
SETTINGS = ("1", "8", "16", "auto")


def blocked_convs(model: onnx.ModelProto) -> tuple[int, int]:
    """(blocked, all) convolutions after onnxruntime's ``all``-level optimization: blocked =
    rewritten to the NCHWc domain by its NCHWc transformer."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = f"{tmp}/opt.onnx"
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        nodes = onnx.load(so.optimized_model_filepath).graph.node
    convs = [n for n in nodes if n.op_type in ("Conv", "FusedConv")]
    return sum(n.domain == "com.microsoft.nchwc" for n in convs), len(convs)


def run_one(model_id: str, runs: int) -> dict:
    original = onnx.load(str(zoo.fetch(model_id)))
    macs0 = model_stats(original).macs
    candidates, macs, blocked = [("original", original)], {}, {"original": blocked_convs(original)}
    for rt in SETTINGS:
        spec = f"prune-channels{{ratio=0.5,round_to={rt}}}"
        pruned = Pipeline.parse(spec).run(original, validate=False).model
        candidates.append((f"round_to={rt}", pruned))
        macs[rt] = model_stats(pruned).macs / macs0
        blocked[rt] = blocked_convs(pruned)
    feed = random_feeds(original, count=1, seed=0)[0]
    load_before = os.getloadavg()
    t = bench(candidates, feed, warmup=3, runs=runs)
    base = t[0].median_ms
    return {
        "model": model_id,
        "ms_original": base,
        "macs_ratio": macs,
        "blocked_convs": blocked,
        "latency_ratio": {rt: t[i + 1].median_ms / base for i, rt in enumerate(SETTINGS)},
        "loadavg": [round(x, 2) for x in load_before + os.getloadavg()],
    }


def write(rows: list[dict], runs: int) -> None:
    env = environment(runs=runs, channel_block=channel_block())
    head = " | ".join(f"round_to={rt}" for rt in SETTINGS)
    lines = [
        "# round_to: channel multiples for prune-channels{ratio=0.5}",
        "",
        f"`python bench/round_to.py --runs {runs}`. Each cell: latency ratio vs the original "
        "(medians of alternating runs at onnxruntime's `all` level) / MACs ratio / "
        "convolutions onnxruntime runs blocked (NCHWc) of all. "
        f"This machine's channel block (auto): {channel_block()}.",
        "",
        f"| model | original ms, blocked convs | {head} | load avg before / after |",
        "|---|---|" + "---|" * len(SETTINGS) + "---|",
    ]
    for r in rows:
        load = load_cell(r["loadavg"])
        best = min(r["latency_ratio"].values())
        cells = " | ".join(
            ("**{:.3f}x**" if r["latency_ratio"][rt] == best else "{:.3f}x").format(
                r["latency_ratio"][rt]
            )
            + f" / {r['macs_ratio'][rt]:.3f} / {'/'.join(map(str, r['blocked_convs'][rt]))}"
            for rt in SETTINGS
        )
        b0 = "/".join(map(str, r["blocked_convs"]["original"]))
        lines.append(f"| {r['model']} | {r['ms_original']:.1f}, {b0} | {cells} | {load} |")
    md = write_results("round_to", env, {"rows": rows}, lines)
    print(md.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--only", nargs="*", default=MODELS)
    args = parser.parse_args()
    write([run_one(m, args.runs) for m in args.only], args.runs)


if __name__ == "__main__":
    main()
