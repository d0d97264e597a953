"""Does the sensitivity ranking hold on fewer feeds? (the budget search's cost is its runs)

The budget search ranks channel groups by output error (1 - cosine of the worst output)
with only that group pruned. Each candidate runs on every feed, so the feed count sets the
search's cost. This measures the curves of one model on 1, 2 and 4 real calibration images
and compares each ranking at ratio 0.5 with the 4-image one (Spearman's rho over groups,
and how many of the 10 least sensitive groups agree), with the seconds each took.

    python bench/sensitivity_feeds.py [--model yolox-det]

Writes bench/results/sensitivity_feeds.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import environment, write_results  # noqa: E402  (bench/_common.py)

from graphslim import zoo  # noqa: E402
from graphslim.feeds import Preprocess, load_feeds  # noqa: E402
from graphslim.sensitivity import measure  # noqa: E402

IMAGES = ["astronaut", "coffee", "chelsea", "rocket"]
PREPROCESS = {"yolox-det": "raw-bgr", "pplcnet-cls": "imagenet"}


def ranks(values: np.ndarray) -> np.ndarray:
    r = np.empty(len(values))
    r[np.argsort(values, kind="stable")] = np.arange(len(values))
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolox-det", choices=list(PREPROCESS))
    args = parser.parse_args()
    model = onnx.load(str(zoo.fetch(args.model)))
    folder = Path(zoo.fetch(IMAGES[0])).parent
    files = [zoo.fetch(i) for i in IMAGES]
    tmp = folder / f"sens-feeds-{args.model}"
    tmp.mkdir(exist_ok=True)
    for f in files:
        (tmp / Path(f).name).write_bytes(Path(f).read_bytes())
    feeds = load_feeds(str(tmp), model, preprocess=Preprocess.parse(PREPROCESS[args.model]))
    runs = {}
    for n in (4, 2, 1):
        t0 = time.perf_counter()
        sens = measure(model, feeds[:n], ratios=(0.5,), calib=feeds[:n], runs=3)
        runs[n] = {
            "seconds": time.perf_counter() - t0,
            "errors": {c.head: 1.0 - c.errors[0.5]["cosine"] for c in sens.groups},
        }
    heads = sorted(runs[4]["errors"])
    ref = np.array([runs[4]["errors"][h] for h in heads])
    rows = []
    for n in (4, 2, 1):
        got = np.array([runs[n]["errors"][h] for h in heads])
        rho = float(np.corrcoef(ranks(ref), ranks(got))[0, 1])
        top = len(set(np.argsort(ref)[:10]) & set(np.argsort(got)[:10]))
        rows.append(
            {"feeds": n, "seconds": round(runs[n]["seconds"], 1), "spearman": rho, "top10": top}
        )
    lines = [
        f"# Sensitivity ranking on fewer feeds: {args.model}, ratio 0.5, {len(heads)} groups",
        "",
        f"`python bench/sensitivity_feeds.py --model {args.model}`; calibration images: "
        f"{', '.join(IMAGES)}. Spearman's rho of the group ranking (1 - cosine) against the "
        "4-image ranking; top10 = the 10 least sensitive groups in common.",
        "",
        "| feeds | seconds | Spearman vs 4 | top-10 overlap |",
        "|---|---|---|---|",
    ] + [f"| {r['feeds']} | {r['seconds']} | {r['spearman']:.3f} | {r['top10']}/10 |" for r in rows]
    md = write_results("sensitivity_feeds", environment(model=args.model), {"rows": rows}, lines)
    print(md.read_text())


if __name__ == "__main__":
    main()
