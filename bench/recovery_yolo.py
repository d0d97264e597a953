"""Recovery bench (issue 14.6c): a YOLOv8n we train ourselves, pruned, fine-tuned, INT8.

The flow an edge user runs, every step through the ``graphslim`` command line:

1. data: :func:`recovery_digits.digit_set` (MNIST digits pasted on zoo photos, YOLO labels,
   train/val split by digit; generated from a seed, cached under
   ``~/.cache/graphslim/recovery-digits``).
2. baseline: YOLOv8n trained from scratch by ultralytics on the train split (imgsz 256,
   batch 8), offline, on CPU, for a wall-time budget (:func:`trained_weights`; the .pt is
   cached), then ``graphslim export best.pt --imgsz 256``.
3. pruned: ``graphslim run baseline.onnx -P "prune-channels{ratio=R}" --calib CALIB`` (64 train
   images give the compensation means), for each ratio R.
4. fine-tuned: ``graphslim finetune pruned.onnx --teacher baseline.onnx --images train
   --limit N --task detect --loss detect`` (label-free distillation from the unpruned model:
   graphslim's finetune takes no YOLO labels yet; the best epoch is picked on a seeded tenth of
   the N images by map50 against the teacher, so the val split is never seen). N, epochs and
   batch are small by default (120 images, 1 epoch, batch 8) because on the shared 2-core box
   this ran on one step of 8 images took about a minute; raise them where CPU time allows.
5. INT8: ``graphslim run finetuned.onnx -P quantize-int8 --calib CALIB``.

Per model: parameters and MACs (:func:`graphslim.metrics.model_stats`), file size, latency
(:func:`graphslim.bench.bench`: all models side by side in one process, alternating, on one
val image), and the label mAP50 / mAP50-95 on the val split against the YOLO labels
(:func:`graphslim.tasks.map.mean_average_precision`, checked against pycocotools in
tests/test_map_vs_pycocotools.py; detections decoded as ultralytics' val does: conf 0.001,
class-aware NMS at IoU 0.7, at most 300 per image). CPU minutes per row: the CPU time
(user + system, all processes) of the step that made that row's model.

    python bench/recovery_yolo.py [--hours 0.5] [--ft-epochs 1] [--ft-limit 120] [--ft-batch 8]

needs ultralytics + torch (+ torchvision) and mlxtend in the running environment. Writes
bench/results/recovery_yolo.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import environment, machine_line, write_results  # noqa: E402
from recovery_digits import ROOT, DigitSet, digit_set  # noqa: E402

log = logging.getLogger("recovery_yolo")

# ultralytics settings: from scratch (no hub weights), no flips (a mirrored 2 is not a 2),
# a short warm-up and mosaic off for the last epochs, as a short schedule needs.
TRAIN_ARGS = dict(
    model="yolov8n.yaml", imgsz=256, batch=8, workers=2, device="cpu", seed=0,
    deterministic=True, pretrained=False, fliplr=0.0, mosaic=1.0, close_mosaic=2,
    warmup_epochs=1.0, cache="ram", plots=False, amp=False, patience=1000,
)  # fmt: skip
CALIB_IMAGES = 64
DATA_SIZE = 320  # images are generated at 320 px; the network sees them letterboxed to imgsz
# mAP as ultralytics' val computes it: keep boxes down to conf 0.001, NMS IoU 0.7, 300 a image
MAP_CONF, MAP_NMS_IOU, MAP_MAX_DET = 0.001, 0.7, 300


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its waited-for children so far."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def trained_weights(data: DigitSet, hours: float = 0.5, epochs: int = 100) -> tuple[Path, dict]:
    """best.pt of YOLOv8n trained on ``data`` for ``hours`` of wall time (cached), and the cost.

    ultralytics' ``time`` budget re-plans the epoch count after the first epoch (and the LR
    schedule with it), so the run ends inside the budget on a loaded box; the trained .pt is
    kept under the data set's folder and reused by every later run with the same arguments.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(ROOT / "ultralytics-config"))
    name = f"yolov8n-{data.root.name}-{TRAIN_ARGS['imgsz']}px-b{TRAIN_ARGS['batch']}-{hours}h"
    best = ROOT / "runs" / name / "weights" / "best.pt"
    cost_file = best.parent / "cost.json"
    if best.exists() and cost_file.exists():
        return best, json.loads(cost_file.read_text())
    from ultralytics import YOLO

    t0, w0 = _cpu_seconds(), time.perf_counter()
    YOLO(TRAIN_ARGS["model"]).train(
        data=str(data.yaml), epochs=epochs, time=hours, project=str(ROOT / "runs"), name=name,
        exist_ok=True, **{k: v for k, v in TRAIN_ARGS.items() if k != "model"},
    )  # fmt: skip
    cost = {"cpu_s": _cpu_seconds() - t0, "wall_s": time.perf_counter() - w0}
    cost_file.write_text(json.dumps(cost))
    return best, cost


def ultralytics_val(best: Path) -> dict:
    """ultralytics' own val mAP of the epoch it kept (results.csv next to weights/), a
    cross-check of :func:`label_map` on the baseline (its val letterboxes per batch)."""
    import csv

    path = best.parent.parent / "results.csv"
    if not path.exists():
        return {}
    rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(path.open())]
    score = [float(r["metrics/mAP50-95(B)"]) for r in rows]
    kept = rows[max(range(len(rows)), key=score.__getitem__)]  # ultralytics 8.4's fitness
    return {"epochs": len(rows), "kept_epoch": int(float(kept["epoch"])),
            "map50": float(kept["metrics/mAP50(B)"]), "map50_95": float(kept["metrics/mAP50-95(B)"])}  # fmt: skip


def graphslim(*args, log_file: Path) -> dict:
    """Run one ``graphslim`` command (this environment's; its output goes to ``log_file``)
    and return its CPU time (user + system of the child) and wall time."""
    exe = shutil.which("graphslim", path=str(Path(sys.executable).parent)) or "graphslim"
    cmd = [exe, *map(str, args)]
    log.info("$ %s  (log: %s)", " ".join(cmd), log_file)
    t0, w0 = _cpu_seconds(), time.perf_counter()
    with log_file.open("w") as out:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log shows each epoch as it ends
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {code}; end of {log_file}:\n{tail}")
    return {"cpu_s": _cpu_seconds() - t0, "wall_s": time.perf_counter() - w0,
            "command": "graphslim " + " ".join(map(str, args))}  # fmt: skip


def calibration_folder(data: DigitSet, work: Path, count: int = CALIB_IMAGES) -> Path:
    """``count`` train images (the last ones; symlinks) for pruning means and INT8 ranges."""
    folder = work / f"calib-{count}"
    if not folder.exists():
        tmp = work / f".calib-{count}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in sorted(data.images("train").glob("*.png"))[-count:]:
            (tmp / f.name).symlink_to(f)
        try:
            tmp.rename(folder)
        except OSError:  # another run of this bench made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def cached_label_map(model_path: Path, data: DigitSet, split: str = "val") -> dict:
    """:func:`label_map`, kept in ``<stem>.map.json`` next to the model for as long as the
    model file and the data set are the same (size and mtime of the model, the set's folder)."""
    stat = model_path.stat()
    key = {"model_size": stat.st_size, "model_mtime_ns": stat.st_mtime_ns,
           "data": str(data.root), "split": split}  # fmt: skip
    cache = model_path.with_name(f"{model_path.stem}.map.json")
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["result"]
    result = label_map(model_path, data, split)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "result": result}))
    os.replace(tmp, cache)  # a reader never sees half a file
    return result


def label_map(model_path: Path, data: DigitSet, split: str = "val") -> dict:
    """Label mAP50 and mAP50-95 of a YOLOv8-layout ONNX model on ``split`` (onnxruntime)."""
    import numpy as np
    import onnxruntime as ort

    from graphslim import detect
    from graphslim.feeds import Preprocess, list_images, preprocess_image
    from graphslim.tasks.labels import load_yolo_labels
    from graphslim.tasks.map import COCO_IOUS, mean_average_precision

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    hw = (int(inp.shape[2]), int(inp.shape[3]))
    spec = Preprocess.parse("yolo")
    files = list_images(data.images(split))
    found, boxes = [], []
    for f in files:
        x, lb = preprocess_image(f, spec, hw)
        out = sess.run(None, {inp.name: x[None].astype(np.float32)})[0]
        d = detect.decode(out, "yolov8", MAP_CONF, MAP_NMS_IOU, MAP_MAX_DET)
        found.append(detect.Detections(lb.to_original(d.boxes), d.scores, d.classes))
        boxes.append(lb)
    truth = load_yolo_labels(data.labels(split), files, boxes)
    maps = mean_average_precision(truth, found, COCO_IOUS)
    return {"map50": maps[0.5], "map50_95": float(np.mean(list(maps.values()))),
            "images": len(files), "label_boxes": sum(map(len, truth))}  # fmt: skip


def weight_count(model) -> int:
    """Weights a model stores: float parameters (:func:`graphslim.metrics.param_count`) plus
    the integer tensors that DequantizeLinear turns back into weights (INT8 QDQ), so that an
    INT8 model counts the same weights as its float parent."""
    import math

    from onnx import TensorProto

    from graphslim.metrics import param_count

    ints = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT32)  # INT32: quantized biases
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return param_count(model) + sum(
        math.prod(t.dims) for t in model.graph.initializer
        if t.name in quantized and t.data_type in ints
    )  # fmt: skip


def _finetune_summary(path: Path) -> dict:
    if not path.exists():
        return {}
    result = json.loads(path.read_text())
    keep = ("best_epoch", "epochs", "metric", "history", "before", "after")
    return {k: result[k] for k in keep if k in result}


def _cached_step(path: Path, cmd: tuple) -> dict:
    """Run ``graphslim CMD`` that writes ``path``, unless a previous run did (its cost is kept
    in ``<stem>.cost.json``, its output in ``<stem>.log``)."""
    key = path.with_name(f"{path.stem}.cost.json")
    if path.exists() and key.exists():
        return json.loads(key.read_text())
    cost = graphslim(*cmd, log_file=path.with_name(f"{path.stem}.log"))
    key.write_text(json.dumps(cost))
    return cost


def finetune_extras(data: DigitSet, args) -> list:
    """The fine-tune options beyond the CPU defaults, as command-line words: a time budget,
    warm-up, EMA, device, DataLoader workers, albumentations, and the train labels (the
    held-out tenth of train then picks the best epoch by label mAP50-95, val stays unseen)."""
    words: list = []
    if args.ft_time:
        words += ["--time", args.ft_time]
    if args.ft_warmup:
        words += ["--warmup", args.ft_warmup]
    if args.ft_ema:
        words += ["--ema", args.ft_ema]
    if args.ft_device != "auto":
        words += ["--device", args.ft_device]
    if args.ft_workers:
        words += ["--workers", args.ft_workers, "--augmenter", "albumentations"]
    if args.ft_labels:
        words += ["--labels", data.labels("train")]
    if args.ft_features:
        words += ["--features", args.ft_features]
    return words


def reuse_models(source: Path, work: Path) -> None:
    """Copy the baseline and pruned models of another flow folder (with their cost.json and
    logs) into ``work``, so a fine-tune with other settings starts from the same models."""
    for pattern in ("baseline.*", "pruned-*"):
        for f in sorted(source.glob(pattern)):
            if f.is_file() and not (work / f.name).exists():
                shutil.copy2(f, work / f.name)


def run_name(args) -> str:
    """The flow folder's name: every setting that changes a fine-tuned model is in it."""
    name = f"yolov8n{TRAIN_ARGS['imgsz']}-{args.hours}h-ft{args.ft_epochs}x{args.ft_limit}"
    name += f"b{args.ft_batch}-lr{args.ft_lr}"
    extras = [("t", args.ft_time), ("w", args.ft_warmup), ("ema", args.ft_ema)]
    name += "".join(f"-{k}{v}" for k, v in extras if v)
    if args.ft_workers:
        name += "-alb"
    if args.ft_labels:
        name += "-labels"
    if args.ft_features:
        name += f"-feat{args.ft_features.replace(',', '+').replace('/', '_')}"
    return name


def make_models(data: DigitSet, work: Path, args) -> tuple[list[dict], dict[str, Path]]:
    """Build every model of the table (cached in ``work``); rows carry stage, ratio, cost."""
    pt, train_cost = trained_weights(data, args.hours)
    calib = calibration_folder(data, work)
    rows, paths = [], {}
    base = work / "baseline.onnx"
    cost = _cached_step(base, ("export", pt, "-o", base, "--imgsz", TRAIN_ARGS["imgsz"]))
    rows.append({"stage": "baseline", "ratio": 0.0, "cpu_s": train_cost["cpu_s"] + cost["cpu_s"],
                 "wall_s": train_cost["wall_s"] + cost["wall_s"],
                 "command": f"ultralytics train ({args.hours} h budget) + graphslim export",
                 "ultralytics_val": ultralytics_val(pt)})  # fmt: skip
    paths["baseline"] = base
    for ratio in args.ratios:
        tag = f"{int(round(ratio * 100))}"
        pruned, tuned, int8 = (work / f"{s}-{tag}.onnx" for s in ("pruned", "finetuned", "int8"))
        steps = [
            ("pruned", pruned, ("run", base, "-o", pruned, "-P", f"prune-channels{{ratio={ratio}}}",
                                "--calib", calib, "--feeds", calib, "--limit", CALIB_IMAGES,
                                "--write-anyway")),
            ("fine-tuned", tuned, ("finetune", pruned, "--teacher", base, "--images",
                                   data.images("train"), "-o", tuned, "--task", "detect",
                                   "--loss", "detect", "--preprocess", "yolo", "--epochs",
                                   args.ft_epochs, "--limit", args.ft_limit, "--batch", args.ft_batch,
                                   "--optimizer", "adam", "--lr", args.ft_lr,
                                   "--augment", "crop,color,blur", "--seed", 0,
                                   *finetune_extras(data, args),
                                   "--json", work / f"finetune-{tag}.json")),
            ("INT8", int8, ("run", tuned, "-o", int8, "-P", "quantize-int8", "--calib", calib,
                            "--feeds", calib, "--limit", CALIB_IMAGES, "--write-anyway")),
        ]  # fmt: skip
        for stage, path, cmd in steps:
            if args.only_finetune and stage == "INT8":
                break
            row = {"stage": stage, "ratio": ratio, **_cached_step(path, cmd)}
            if stage == "fine-tuned":
                row["finetune"] = _finetune_summary(work / f"finetune-{tag}.json")
            rows.append(row)
            paths[f"{stage}-{tag}"] = path
    return rows, paths


def measure(rows: list[dict], paths: dict[str, Path], data: DigitSet, runs: int) -> None:
    """Fill params, MACs, size, latency (side by side) and label mAP into ``rows``."""
    from graphslim.bench import bench
    from graphslim.feeds import Preprocess, list_images, preprocess_image
    from graphslim.metrics import model_stats
    from graphslim.model_io import load_model

    models = {k: load_model(p) for k, p in paths.items()}
    inp = models["baseline"].graph.input[0]
    hw = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim[2:4])
    x, _ = preprocess_image(list_images(data.images("val"))[0], Preprocess.parse("yolo"), hw)
    timings = {t.label: t for t in bench(list(models.items()), {inp.name: x[None]}, runs=runs)}
    for row, (key, model) in zip(rows, models.items()):
        stats = model_stats(model)
        t = timings[key]
        row.update(
            model=str(paths[key]), params=weight_count(model), macs=stats.macs,
            size_bytes=paths[key].stat().st_size, latency_ms=t.median_ms,
            latency_p90_ms=t.p90_ms, latency_ratio=t.ratio, threads=t.threads,
            **{f"label_{k}": v for k, v in cached_label_map(paths[key], data).items()},
        )  # fmt: skip
    base = rows[0]
    for row in rows:
        row["params_ratio"] = row["params"] / base["params"]
        row["macs_ratio"] = row["macs"] / base["macs"] if base["macs"] and row["macs"] else None
        row["size_ratio"] = row["size_bytes"] / base["size_bytes"]
        row["map50_95_drop"] = base["label_map50_95"] - row["label_map50_95"]
        row["cpu_min"] = row["cpu_s"] / 60


FT_DEFAULTS = dict(ft_epochs=1, ft_limit=120, ft_batch=8, ft_lr=1e-3, ft_time=None,
                   ft_warmup=0.0, ft_ema=0.0, ft_device="auto", ft_workers=0, ft_labels=False,
                   ft_features=None, only_finetune=False)  # fmt: skip


def run(*, train: int = 2000, val: int = 400, seed: int = 0, hours: float = 0.5,
        ratios: tuple[float, ...] = (0.3, 0.5), bench_runs: int = 30, work: Path | None = None,
        models_from: Path | None = None, **ft) -> list[dict]:  # fmt: skip
    """The table's rows (baseline, then per ratio pruned / fine-tuned / INT8); see the doc.
    ``ft``: the ``FT_DEFAULTS`` settings (fine-tune and ``only_finetune``: stop after the
    fine-tuned models, unmeasured: the GPU box makes them, this box measures)."""
    args = argparse.Namespace(hours=hours, ratios=ratios, **(FT_DEFAULTS | ft))
    data = digit_set(train, val, seed, DATA_SIZE)
    work = work or ROOT / "flow" / f"{data.root.name}-{run_name(args)}"
    work.mkdir(parents=True, exist_ok=True)
    if models_from is not None:
        reuse_models(Path(models_from), work)
    rows, paths = make_models(data, work, args)
    if args.only_finetune:
        return rows
    measure(rows, paths, data, bench_runs)
    return rows


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def render(rows: list[dict], env: dict, settings: dict) -> list[str]:
    lines = [
        "# Recovery: YOLOv8n trained on digits, pruned, fine-tuned (KD), INT8",
        "",
        "Generated by `python bench/recovery_yolo.py` (see its docstring for every command). "
        f"Settings: `{json.dumps(settings)}`.",
        "",
        machine_line(env),
        "Latencies are medians of alternating runs in one process on this machine (ratios "
        "are fairer than absolute values when the box is shared); mAP on the val split "
        "(400 images, never trained on or used to pick an epoch).",
        "",
        *(
            [
                "The fine-tunes ran on a GPU machine (`bench/device/recovery_yolo.sh`: one "
                "NVIDIA H200, 16 CPU cores); their rows' CPU minutes are that machine's, "
                f"for {settings.get('ft_time')} min of training each, both ratios side by "
                "side. Every other step and every measurement ran here.",
                "",
            ]
            if settings.get("ft_device") == "cuda"
            else []
        ),
        "| model | ratio | params | MACs | latency ms (x base) | size KB (x base) | label mAP50 "
        "| label mAP50-95 (drop) | CPU min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['ratio']:.1f} | {r['params']:,} ({r['params_ratio']:.2f}x) | "
            f"{_num(r['macs'] and r['macs'] / 1e6, '.0f')} M ({_num(r['macs_ratio'], '.2f')}x) | "
            f"{r['latency_ms']:.2f} ({r['latency_ratio']:.2f}x) | "
            f"{r['size_bytes'] / 1024:.0f} ({r['size_ratio']:.2f}x) | {r['label_map50']:.3f} | "
            f"{r['label_map50_95']:.3f} ({r['map50_95_drop'] * 100:+.1f} pt) | {r['cpu_min']:.1f} |"
        )
    lines += ["", "Commands and fine-tune epochs:", ""]
    for r in rows:
        ft = r.get("finetune") or {}
        extra = f" (best epoch {ft.get('best_epoch')})" if ft else ""
        lines.append(f"- {r['stage']} {r['ratio']:.1f}: `{r['command']}`{extra}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hours", type=float, default=0.5, help="ultralytics training budget")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--ft-epochs", type=int, default=1)
    ap.add_argument("--ft-limit", type=int, default=120, help="train images per fine-tune")
    ap.add_argument("--ft-batch", type=int, default=8)
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--ft-time", type=float, default=None, help="fine-tune minutes (--time)")
    ap.add_argument("--ft-warmup", type=float, default=0.0, help="warm-up epochs")
    ap.add_argument("--ft-ema", type=float, default=0.0, help="EMA decay of the weights")
    ap.add_argument("--ft-device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--ft-workers", type=int, default=0,
                    help="DataLoader workers (albumentations augments in them)")  # fmt: skip
    ap.add_argument("--ft-labels", action="store_true",
                    help="give the train labels (best epoch by label mAP50-95 on a held-out "
                    "tenth of train)")  # fmt: skip
    ap.add_argument("--ft-features", default=None, help="feature distillation (--features)")
    ap.add_argument(
        "--only-finetune",
        action="store_true",
        help="stop after the fine-tuned models (no INT8, no measurement)",
    )
    ap.add_argument(
        "--models-from",
        type=Path,
        default=None,
        help="a flow folder whose baseline and pruned models to start from",
    )
    ap.add_argument("--bench-runs", type=int, default=30)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    ft = {k: v for k, v in vars(args).items() if k in FT_DEFAULTS}
    rows = run(train=args.train, val=args.val, seed=args.seed, hours=args.hours,
               ratios=tuple(args.ratios), bench_runs=args.bench_runs,
               models_from=args.models_from, **ft)  # fmt: skip
    if args.only_finetune:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    env = environment(torch=_torch_version(), train_args=TRAIN_ARGS)
    name = "recovery_yolo_gpu" if args.ft_device == "cuda" else "recovery_yolo"
    write_results(name, env, {"settings": settings, "rows": rows},
                  render(rows, env, settings))  # fmt: skip
    print("\n".join(render(rows, env, settings)))
    return 0


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


if __name__ == "__main__":
    raise SystemExit(main())
