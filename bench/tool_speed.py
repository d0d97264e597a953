"""Tool speed as a user meets it: ``graphslim run`` with validation vs onnx load + save.

Issue 15's goal: on a 273 MB YOLOv8x (the zoo's ``yolov8x-640``, filled with seeded random
weights), ``graphslim run MODEL -o OUT -P "prune-channels{ratio=0.5}"`` -- the whole command:
interpreter start, imports, load, the pass, validation on the default two seeded feeds
(original and candidate in onnxruntime), the reports (JSON, Markdown, PNG chart) and the
atomic save -- within 5x of ``onnx.load`` + ``onnx.save`` of the same file (in-process, no
imports counted: the stricter reading). The two are timed alternately, ``--repeats`` rounds,
so that page cache and load drift hit both; medians and every sample are written.

    python bench/tool_speed.py [--repeats 5] [--model yolov8x-640]

Results: ``results/tool_speed.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_results  # noqa: E402

PIPELINE = "prune-channels{ratio=0.5}"
GOAL = 5.0


def load_save(path: Path, out: Path) -> float:
    import onnx

    t0 = time.perf_counter()
    model = onnx.load(str(path))
    onnx.save(model, str(out))
    seconds = time.perf_counter() - t0
    del model
    out.unlink()
    return seconds


def graphslim_run(path: Path, out: Path) -> float:
    exe = Path(sys.executable).with_name("graphslim")
    cmd = [str(exe), "run", str(path), "-o", str(out), "-P", PIPELINE]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"graphslim run failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    from graphslim import zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="yolov8x-640")
    args = ap.parse_args(argv)
    path = Path(zoo.fetch(args.model))
    plain, ours, load = [], [], []
    with tempfile.TemporaryDirectory(prefix="graphslim-speed-") as tmp:
        graphslim_run(path, Path(tmp) / "warm.onnx")  # page cache and .pyc files warm
        for i in range(args.repeats):
            before = os.getloadavg()
            plain.append(load_save(path, Path(tmp) / "plain.onnx"))
            ours.append(graphslim_run(path, Path(tmp) / f"pruned{i}.onnx"))
            load.append(before + os.getloadavg())
            print(f"round {i + 1}: load+save {plain[-1]:.2f} s, graphslim run {ours[-1]:.2f} s")
    a, b = statistics.median(plain), statistics.median(ours)
    ratio = b / a
    verdict = "met" if ratio <= GOAL else "MISSED"
    md = [
        "# Tool speed: `graphslim run` (validation included) vs onnx load + save",
        "",
        f"`python bench/tool_speed.py --repeats {args.repeats} --model {args.model}`: "
        f"{path.name} ({path.stat().st_size / 1e6:.0f} MB), `graphslim run MODEL -o OUT -P "
        f'"{PIPELINE}"` as a subprocess (imports, validation on two seeded feeds, reports, '
        "save) vs `onnx.load` + `onnx.save` in-process, alternately; medians.",
        "",
        "| onnx load + save s | graphslim run s | ratio | goal |",
        "|---|---|---|---|",
        f"| {a:.2f} | {b:.2f} | {ratio:.2f}x | <= {GOAL:g}x {verdict} |",
        "",
        "Every round (load+save / run): "
        + ", ".join(f"{x:.2f} / {y:.2f}" for x, y in zip(plain, ours)),
    ]
    env = environment(repeats=args.repeats, model=args.model)
    data = {"load_save_s": plain, "graphslim_run_s": ours, "loadavg": load, "ratio": ratio}
    print(f"median: load+save {a:.2f} s, graphslim run {b:.2f} s = {ratio:.2f}x ({verdict})")
    print(f"wrote {write_results('tool_speed', env, data, md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
