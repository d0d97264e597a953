"""prune-channels on plain exports, with no preparatory pass (issue: no silent no-ops).

A user's first try is the file the exporter wrote: torch.onnx (legacy exporter, BN folded,
no simplifier) deduplicates equal initializers, so a freshly built model's zero biases
become one tensor read through Identity nodes; Paddle exports keep weights in Constant
nodes. This bench exports such models (random weights, torch's default BatchNorm init: the
structure is what matters here) and runs ``prune-channels{ratio=0.5}`` on them as they are,
next to the same pruning after ``cleanup`` / ``constants-to-initializers`` (what a user had
to know to run before), and optionally a latency budget.

Needs torch, torchvision and ultralytics for the exports (a venv of their own: see
fixtures/export_structures.py); exports are cached in ~/.cache/graphslim/plain-exports.

    python bench/plain_exports.py [--only resnet18 ...] [--budget resnet18 yolov8n]

Writes bench/results/plain_exports.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "fixtures"))

from _common import environment, write_results  # noqa: E402  (bench/_common.py)

from graphslim import zoo  # noqa: E402
from graphslim.feeds import random_feeds  # noqa: E402
from graphslim.metrics import model_stats  # noqa: E402
from graphslim.pipeline import Pipeline  # noqa: E402
from graphslim.runtime import run_model  # noqa: E402

CACHE = Path.home() / ".cache" / "graphslim" / "plain-exports"

# id -> (how to get it, input shapes for analysis, preparatory pipeline users needed before)
MODELS = {
    "resnet18": ("tv:resnet18", None, "cleanup"),
    "resnet50": ("tv:resnet50", None, "cleanup"),
    "mobilenetv2": ("tv:mobilenet_v2", None, "cleanup"),
    "efficientnet-b0": ("tv:efficientnet_b0", None, "cleanup"),
    "regnet-y-400mf": ("tv:regnet_y_400mf", None, "cleanup"),
    "shufflenetv2": ("tv:shufflenet_v2_x1_0", None, "cleanup"),
    "convnext-tiny": ("tv:convnext_tiny", None, "cleanup"),
    "yolov8n": ("yolo:yolov8n.yaml", None, "cleanup"),
    "yolov8s": ("yolo:yolov8s.yaml", None, "cleanup"),
    "yolo11n": ("yolo:yolo11n.yaml", None, "cleanup"),
    "ppocr-det": ("zoo:ppocr-det", {"x": (1, 3, 320, 320)}, "constants-to-initializers"),
    "ppocr-cls": ("zoo:ppocr-cls", {"x": (1, 3, 48, 192)}, "constants-to-initializers"),
    "pplcnet-cls": ("zoo:pplcnet-cls", {"x": (1, 3, 224, 224)}, "cleanup"),
}


def get_model(source: str) -> Path:
    kind, name = source.split(":", 1)
    if kind == "zoo":
        return zoo.fetch(name)
    CACHE.mkdir(parents=True, exist_ok=True)
    dest = CACHE / f"{name.replace('.yaml', '')}-plain.onnx"
    if not dest.exists():
        import export_structures as ex

        tmp = dest.with_suffix(".tmp.onnx")
        if kind == "tv":
            ex.export_torchvision(name, tmp, randomize_bn=False)
        else:
            ex.export_yolo(name, tmp, simplify=False, randomize_bn=False)
        os.replace(tmp, dest)
    return dest


def prune(model: onnx.ModelProto, spec: str, shapes) -> tuple[onnx.ModelProto, dict, float]:
    t0 = time.perf_counter()
    result = Pipeline.parse(spec).run(model, input_shapes=shapes)
    seconds = time.perf_counter() - t0
    record = next(r for r in result.records if r.name == "prune-channels")
    return result.model, record, seconds


def run_one(model_id: str, args) -> dict:
    source, shapes, prep = MODELS[model_id]
    model = onnx.load(get_model(source))
    macs0 = model_stats(model, shapes).macs
    feeds = random_feeds(model, count=1, seed=0, shapes=shapes)
    reference = run_model(model, feeds)[0]
    row = {
        "model": model_id,
        "source": source,
        "identity_nodes": sum(n.op_type == "Identity" for n in model.graph.node),
        "constant_nodes": sum(n.op_type == "Constant" for n in model.graph.node),
        "macs": macs0,
    }
    for label, spec in (
        ("plain", "prune-channels{ratio=0.5}"),
        ("prepared", f"{prep},prune-channels{{ratio=0.5}}"),
    ):
        pruned, record, seconds = prune(model, spec, shapes)
        got = run_model(pruned, feeds)[0]
        c = record.counters
        row[label] = {
            "macs_ratio": model_stats(pruned, shapes).macs / macs0,
            "valid": all(got[k].shape == v.shape for k, v in reference.items()),
            "groups_pruned": c.get("groups_pruned"),
            "groups_frozen": c.get("groups_frozen"),
            "macs_asked": c.get("macs_asked"),
            "missed": bool(c.get("macs_missed")),
            "canonical": {k: v for k, v in c.items() if k.startswith("canonical_")},
            "freeze_reasons": [d for d in record.details if "freeze_reason" in d],
            "seconds": round(seconds, 2),
        }
    if model_id in args.budget:
        spec = "prune-channels{budget=latency=0.5}"
        pruned, record, seconds = prune(model, spec, shapes)
        row["budget"] = {
            "measured": record.counters.get("budget_measured"),
            "predicted": record.counters.get("budget_predicted"),
            "reached": record.counters.get("budget_reached"),
            "macs_ratio": model_stats(pruned, shapes).macs / macs0,
            "seconds": round(seconds, 1),
        }
    return row


def write(rows: list[dict]) -> None:
    env = environment()
    lines = [
        "# prune-channels{ratio=0.5} on plain exports, no preparatory pass",
        "",
        "`python bench/plain_exports.py` (the exports need torch, torchvision, ultralytics).",
        "",
        "torchvision / ultralytics models: random weights, torch's default BatchNorm init, "
        "exported by the legacy torch.onnx exporter without a simplifier (deduplicated zero "
        "biases behind Identity nodes). Paddle models: the zoo's files (Constant-node weights). "
        "MACs after / before; 'prepared' = the same pruning after the pass users had to run "
        "first (cleanup, or constants-to-initializers); 'asked' = what pruning every group "
        "would give. Valid = onnxruntime runs it and every output keeps its shape.",
        "",
        "| model | Identity / Constant nodes | MACs plain | MACs prepared | asked | valid | "
        "groups pruned / frozen | top freeze reason (share of MACs) | latency budget 0.5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, q = r["plain"], r["prepared"]
        top = p["freeze_reasons"][0] if p["freeze_reasons"] else None
        reason = f"{top['freeze_reason']} ({top['macs_share']:.0%})" if top else "-"
        b = r.get("budget")
        budget = f"{b['measured']:.2f}x measured ({b['macs_ratio']:.2f} MACs)" if b else "-"
        lines.append(
            f"| {r['model']} | {r['identity_nodes']} / {r['constant_nodes']} | "
            f"{p['macs_ratio']:.3f}{' (missed)' if p['missed'] else ''} | {q['macs_ratio']:.3f} | "
            f"{(p['macs_asked'] or 0):.3f} | {'yes' if p['valid'] and q['valid'] else 'NO'} | "
            f"{p['groups_pruned']} / {p['groups_frozen']} | {reason} | {budget} |"
        )
    md = write_results("plain_exports", env, {"rows": rows}, lines)
    print(md.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--budget", nargs="*", default=[], choices=list(MODELS))
    args = parser.parse_args()
    rows = []
    for model_id in args.only:
        print(f"... {model_id}", flush=True)
        rows.append(run_one(model_id, args))
    write(rows)


if __name__ == "__main__":
    main()
