"""Deployment runtimes on real models: convert-fp16 accuracy, OpenVINO vs onnxruntime latency.

Calibration and evaluation images are DISJOINT: calibrate (the INT8 ranges, convert-fp16's
block-list search) on astronaut, coffee, chelsea, rocket, china, flower; evaluate on bus,
zidane, motorcycle-left, page, text.

1. FP16 (``convert-fp16``, default options: I/O kept float32, automatic block list,
   tolerance 1e-2 max-rel): every zoo model with real weights (yolox-det, pplcnet-cls,
   ppocr-det after constants-to-initializers, ppocr-cls, and the trained YOLOv8s at
   /work/models/fall-yolov8s.onnx or $GRAPHSLIM_FALL_YOLOV8S when present). Reported on the
   evaluation images against FP32 in onnxruntime CPU: worst output max-rel and cosine, the
   task metric (detect: map50 of FP16's detections against FP32's; classify: top-1
   agreement; dense: IoU of the thresholded maps), the nodes kept in FP32 and why.
2. OpenVINO vs onnxruntime (detectors): FP32; ``quantize-int8{target=cpu-x86}`` (QDQ,
   onnxruntime's placement; YOLOv8's final Concat kept float, see ``INT8``) in onnxruntime
   and in OpenVINO; ``quantize-int8{target=openvino}`` (Q/DQ placed for OpenVINO) in
   OpenVINO; with ``--nncf PYTHON`` NNCF's PTQ with its defaults (run in NNCF's own venv) in
   OpenVINO -- all calibrated on the same six images, all timed alternately in one
   :func:`graphslim.bench.bench` call (ratio = median / onnxruntime FP32 median); how many of
   OpenVINO's executed convolutions run as u8 kernels; detection match of each INT8 variant
   against onnxruntime FP32 (map50, matched / FP32 detections); the OpenVINO IR
   (``convert --to openvino``) loaded back and compared with onnxruntime FP32.

    python bench/runtimes.py [--runs 30] [--skip-fp16] [--skip-openvino] [--models ...]
                             [--nncf /path/to/nncf-venv/bin/python]

writes bench/results/runtimes.md and .json next to this file (a skipped part keeps its rows
from the last run). Needs the fp16 and openvino extras.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import run_nncf  # noqa: E402  (bench/_common.py)

from graphslim import zoo  # noqa: E402
from graphslim.bench import bench  # noqa: E402
from graphslim.contract import PassContext  # noqa: E402
from graphslim.feeds import load_feeds  # noqa: E402
from graphslim.passes.quantize_int8 import QuantizeInt8  # noqa: E402
from graphslim.runtime import run_model  # noqa: E402
from graphslim.tasks import make_task  # noqa: E402
from graphslim.validate import compare_outputs  # noqa: E402

CALIBRATION = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]
EVALUATION = ["bus", "zidane", "motorcycle-left", "page", "text"]
PPOCR = "scale=1/255,mean=0.5/0.5/0.5,std=0.5/0.5/0.5,bgr"
FALL = Path(os.environ.get("GRAPHSLIM_FALL_YOLOV8S", "/work/models/fall-yolov8s.onnx"))
# id -> (preprocess, input shapes, task, calibration samples for the FP16 search: its probes
# hold every intermediate tensor, so the big inputs get fewer)
MODELS = {
    "yolox-det": ("raw-bgr", None, "detect", 4),
    "pplcnet-cls": ("imagenet,bgr", {"x": (1, 3, 224, 224)}, "classify", 4),
    "ppocr-det": (f"resize=736x736,{PPOCR}", {"x": (1, 3, 736, 736)}, "dense", 2),
    "ppocr-cls": (f"resize=48x192,{PPOCR}", {"x": (1, 3, 48, 192)}, "classify", 4),
    "fall-yolov8s": ("yolo", None, "detect", 2),
}
DETECTORS = ("yolox-det", "fall-yolov8s")
# quantize-int8 options per detector: no node names (YOLOv8's last Concat, which joins box
# pixels and class scores, and the box decoding after the last convs stay float by the pass's
# own mixed-Concat and output-tail rules).
INT8 = {  # detector -> {variant: options}
    model: {"cpu-x86": {"target": "cpu-x86"}, "openvino": {"target": "openvino"}}
    for model in ("yolox-det", "fall-yolov8s")
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--skip-fp16", action="store_true")
    ap.add_argument("--skip-openvino", action="store_true")
    ap.add_argument(
        "--nncf",
        default=os.environ.get("GRAPHSLIM_NNCF_PYTHON"),
        help="python of a venv with nncf (a peer, kept out of graphslim's venv): adds an NNCF "
        "PTQ row to the OpenVINO tables ($GRAPHSLIM_NNCF_PYTHON)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs to root

    images = zoo.fetch_all(CALIBRATION + EVALUATION)
    print(f"calibration images: {', '.join(CALIBRATION)}")
    print(f"evaluation images:  {', '.join(EVALUATION)}  (disjoint)")
    record = {"machine": machine(), "fp16": [], "openvino": []}
    nncf_arg = ["--nncf", "NNCF_VENV/bin/python"] if args.nncf else []  # path is this box's
    argv = [a for a in sys.argv[1:] if a != args.nncf and a != "--nncf"] + nncf_arg
    record["machine"]["command"] = " ".join(["python bench/runtimes.py", *argv])
    with tempfile.TemporaryDirectory(prefix="graphslim-runtimes-") as tmp:
        tmp = Path(tmp)
        calib_dir, eval_dir = tmp / "calib", tmp / "eval"
        for folder, names in ((calib_dir, CALIBRATION), (eval_dir, EVALUATION)):
            folder.mkdir()
            for name in names:
                src = images[name]
                (folder / src.name).write_bytes(src.read_bytes())
        for model_id in args.models.split(","):
            model = load(model_id)
            if model is None:
                print(f"{model_id}: not available here, skipped")
                continue
            pre, shapes, task, n_calib = MODELS[model_id]
            calib = load_feeds(calib_dir, model, preprocess=pre, shapes=shapes)
            the_task, feeds = make_task(
                task,
                model,
                load_feeds(eval_dir, model, preprocess=pre, shapes=shapes),
                source=eval_dir,
                preprocess=pre,
            )
            reference = run_model(model, feeds, label="fp32")
            if not args.skip_fp16:
                row = fp16(model_id, model, calib[:n_calib], shapes, feeds, reference, the_task)
                record["fp16"].append(row)
                print(json.dumps(row))
            if not args.skip_openvino and model_id in DETECTORS:
                row = openvino(
                    model_id, model, calib, feeds, reference, the_task, tmp, args.runs, args.nncf
                )
                record["openvino"].append(row)
                print(json.dumps(row))
    record["machine"]["load_after"] = os.getloadavg()
    if NNCF_VERSION:
        record["machine"]["versions"]["nncf"] = NNCF_VERSION[0]
    out = ROOT / "bench" / "results"
    # A part skipped this time keeps its rows from the last run (FP16 accuracy does not
    # depend on the machine's load; latency rows carry their own load figures).
    last = out / "runtimes.json"
    if last.is_file():
        previous = json.loads(last.read_text())
        for part, skipped in (("fp16", args.skip_fp16), ("openvino", args.skip_openvino)):
            if skipped and previous.get(part):
                record[part] = previous[part]
                if part == "fp16":  # say which run the kept rows come from
                    record["machine"]["fp16_rows"] = previous["machine"].get("fp16_rows") or (
                        "from an earlier run (load "
                        f"{tuple(round(x, 1) for x in previous['machine']['load_before'])})"
                    )
    (out / "runtimes.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "runtimes.md").write_text(markdown(record))
    print(f"wrote {out / 'runtimes.md'}")


def load(model_id: str) -> onnx.ModelProto | None:
    if model_id == "fall-yolov8s":
        return onnx.load_model(FALL) if FALL.is_file() else None
    model = onnx.load_model(zoo.fetch(model_id))
    if any(n.op_type == "Constant" for n in model.graph.node):
        from graphslim.passes.constants_to_initializers import ConstantsToInitializers

        model = ConstantsToInitializers()(model).model
    return model


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def fp16(model_id, model, calib, shapes, feeds, reference, task) -> dict:
    from graphslim.passes.convert_fp16 import ConvertFp16

    t0 = time.perf_counter()
    result = ConvertFp16()(copy(model), PassContext(feeds=calib, input_shapes=shapes))
    seconds = time.perf_counter() - t0
    got = run_model(result.model, feeds, label="fp16")
    c = compare_outputs(reference, got, ())
    metrics = flat(task.evaluate(reference, got, feeds))
    name = {"detect": "map50", "classify": "top1", "dense": "iou"}[task.kind]
    kept = [
        (n, r.removeprefix("kept in float32: "))
        for n, r in result.skipped
        if "op block list" not in r
    ]
    return {
        "model": model_id,
        "max_rel": c.worst("max-rel"),
        "cosine": c.worst("cosine"),
        "metric": name,
        "value": metrics.get(name),
        "search_max_rel_on_calibration": result.counters.get("max_rel"),
        "nodes_fp16": result.counters["nodes_fp16"],
        "nodes_fp32": result.counters["nodes_fp32"],
        "blocked": kept,
        "seconds": round(seconds, 1),
    }


def openvino(model_id, model, calib, feeds, reference, task, tmp, runs, nncf_python) -> dict:
    from graphslim.backends import openvino as OV
    from graphslim.backends import openvino_ir as OV_IR

    variants = {}  # label -> (model, runtime, how it was made)
    for target, options in INT8[model_id].items():
        made = QuantizeInt8(**options, latency_guard="off")(copy(model), PassContext(feeds=calib))
        variants[target] = (made.model, f"quantize-int8 {options}")
    if nncf_python:
        variants["nncf"] = (nncf_ptq(model, calib, tmp, nncf_python), NNCF_HOW)
    rows = []
    for name, (int8, how) in variants.items():
        runtimes = ("ort", "openvino") if name == "cpu-x86" else ("openvino",)
        for rt in runtimes:
            if rt == "openvino":
                with OV.OpenVINOSession(int8, label=name) as s:
                    convs = s.executed_precisions().get("Convolution", {})
                    got = [s.run({k: v for k, v in f.items() if k in s.input_names}) for f in feeds]
            else:
                convs, got = None, run_model(int8, feeds)
            match = flat(task.evaluate(reference, got, feeds))
            rows.append(
                {
                    "label": f"{RUNTIME_LABEL[rt]} INT8 {name}",
                    "variant": name,
                    "runtime": rt,
                    "how": how,
                    "convolutions": convs,
                    "vs_ort_fp32": {
                        k: match.get(k)
                        for k in ("map50", "original_detections", "matched", "missed", "extra")
                    },
                }
            )
    xml = OV_IR.convert(model, tmp / f"{model_id}.xml")
    ir = OV_IR.check(model, xml, feeds, ())
    load_before = os.getloadavg()
    entries = [("onnxruntime FP32", model, "ort"), ("OpenVINO FP32", model, "openvino")]
    entries += [(r["label"], variants[r["variant"]][0], r["runtime"]) for r in rows]
    timings = bench(entries, feeds[0], runs=runs, warmup=5)
    return {
        "model": model_id,
        "timings": [t.to_dict() for t in timings],
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "int8": rows,
        "ir_vs_ort_fp32": {"max_rel": ir.worst("max-rel"), "cosine": ir.worst("cosine")},
    }


RUNTIME_LABEL = {"ort": "onnxruntime", "openvino": "OpenVINO"}
NNCF_HOW = "NNCF PTQ, defaults (nncf.quantize on the ONNX model, preset performance)"


def nncf_ptq(model, calib, tmp: Path, python: str) -> onnx.ModelProto:
    """NNCF's post-training quantization with its defaults on the same calibration feeds, run
    in NNCF's own venv (``python``): a peer, not a dependency."""

    import numpy as np

    src, data, out = tmp / "nncf-in.onnx", tmp / "nncf-calib.npz", tmp / "nncf-out.onnx"
    onnx.save_model(model, src)
    np.savez(data, **{f"s{i}": next(iter(f.values())) for i, f in enumerate(calib)})
    done = run_nncf(python, src, data, out)
    if done.returncode:
        sys.exit(f"error: NNCF failed ({python}): {done.stderr.strip().splitlines()[-1]}")
    NNCF_VERSION.append(done.stdout.strip().splitlines()[-1])
    return onnx.load_model(out)


NNCF_VERSION: list[str] = []


def flat(metrics) -> dict:
    """A task result's metrics and details in one dict."""
    d = metrics.to_dict()
    return d["details"] | d["metrics"]


def machine() -> dict:
    import onnxruntime

    cpu, flags = platform.processor(), []
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            have = set(line.split(":", 1)[1].split())
            flags = [
                f
                for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
                if f in have
            ]
    versions = {"onnxruntime": onnxruntime.__version__}
    try:
        import onnxconverter_common
        import openvino

        versions |= {
            "openvino": openvino.__version__,
            "onnxconverter-common": onnxconverter_common.__version__,
        }
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "isa": flags,
        "cores": os.cpu_count(),
        "load_before": os.getloadavg(),
        "versions": versions,
        "note": "shared machine (other jobs running): latency is noisy; ratios come from "
        "alternating runs in one process",
    }


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Runtimes: convert-fp16, OpenVINO vs onnxruntime",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, ISA {' '.join(m['isa'])}; "
        f"load average before {tuple(round(x, 1) for x in m['load_before'])}, after "
        f"{tuple(round(x, 1) for x in m.get('load_after', ()))}; {m['note']}. Versions: "
        + ", ".join(f"{k} {v.split('-')[0]}" for k, v in m["versions"].items())
        + f". Command: `{m.get('command', 'python bench/runtimes.py')}`.",
        "",
    ]
    if r["fp16"]:
        lines += [
            "## convert-fp16 (I/O float32, automatic block list), evaluation images vs FP32",
            "",
            *([f"Rows {m['fp16_rows']}.", ""] if m.get("fp16_rows") else []),
            "| model | max-rel | cosine | task metric | FP16 / FP32 nodes | kept in FP32 (measured) | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for x in r["fp16"]:
            blocked = "; ".join(f"{n} ({why})" for n, why in x["blocked"]) or "none"
            value = "-" if x["value"] is None else f"{x['value']:.4f}"
            lines.append(
                f"| {x['model']} | {x['max_rel']:.2e} | {x['cosine']:.6f} | {x['metric']} {value} "
                f"| {x['nodes_fp16']} / {x['nodes_fp32']} | {blocked} | {x['seconds']} |"
            )
        lines.append("")
    for x in r["openvino"]:
        lines += [
            f"## {x['model']}: OpenVINO vs onnxruntime (load {tuple(round(v, 1) for v in x['load_before'])}"
            f" -> {tuple(round(v, 1) for v in x['load_after'])})",
            "",
            "| variant | median ms | p90 ms | min ms | ratio to onnxruntime FP32 |",
            "|---|---|---|---|---|",
        ]
        for t in x["timings"]:
            lines.append(
                f"| {t['label']} | {t['median_ms']:.1f} | {t['p90_ms']:.1f} | {t['min_ms']:.1f} | {t['ratio']:.2f}x |"
            )
        lines += [
            "",
            "| INT8 variant | runtime | made by | u8 convolutions | detections vs onnxruntime FP32 |",
            "|---|---|---|---|---|",
        ]
        for r in x["int8"]:
            o = r["vs_ort_fp32"]
            convs = "-" if r["convolutions"] is None else r["convolutions"]
            lines.append(
                f"| {r['variant']} | {RUNTIME_LABEL[r['runtime']]} | {r['how']} | {convs} | "
                f"map50 {o['map50']:.4f}, {o['matched']}/{o['original_detections']} matched, "
                f"{o['extra']} extra |"
            )
        lines += [
            "",
            "Calibrated on the six calibration images. OpenVINO IR of FP32 vs onnxruntime: "
            f"max-rel {x['ir_vs_ort_fp32']['max_rel']:.2e}, "
            f"cosine {x['ir_vs_ort_fp32']['cosine']:.6f}.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
