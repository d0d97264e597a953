"""The README's first command (`graphslim demo`): its assets and pipeline. The whole run
(about a minute on 2 cores) is the README's command itself; here the parts that can break
quietly: the pinned downloads, the folders, the pipeline string."""

from __future__ import annotations

import pytest

from graphslim import demo
from graphslim.pipeline import Pipeline

pytestmark = pytest.mark.zoo


def test_demo_prepares_model_and_disjoint_image_sets(tmp_path):
    paths = demo.prepare(tmp_path / "demo")
    assert paths["model"].is_file() and paths["model"].stat().st_size > 10_000_000
    calib = {p.name for p in paths["calib"].iterdir()}
    evaluation = {p.name for p in paths["eval"].iterdir()}
    assert len(calib) == len(demo.CALIBRATION) and len(evaluation) == len(demo.EVALUATION)
    assert not calib & evaluation  # calibration and evaluation images kept apart
    again = demo.prepare(tmp_path / "demo")  # a second run reuses what is there
    assert again == paths
    names = [p.name for p in Pipeline.parse(demo.pipeline(paths["calib"])).passes]
    assert names == ["simplify", "prune-channels", "quantize-int8"]
