"""Streamed training images: recursive listing, corrupt files skipped, workers, same result."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from bridge_helpers import FIXTURES
from PIL import Image

from graphslim.bridge import BridgeError
from graphslim.bridge.data import ImageFolderDataset
from graphslim.bridge.finetune import FinetuneOptions, finetune, load_image_inputs
from graphslim.feeds import Preprocess
from graphslim.model_io import load_model


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        sub = tmp_path / "imgs" / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    (tmp_path / "imgs" / "a" / "broken.jpg").write_bytes(b"not an image")
    return tmp_path / "imgs"


def test_dataset_streams_the_folder_recursively_and_skips_a_corrupt_file(folder, caplog):
    model = load_model(FIXTURES / "tiny_yolo.onnx")
    spec = Preprocess.parse("yolo")
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(folder, model, spec)
    assert len(ds) == 12 and "broken.jpg" in caplog.text
    assert [f.parent.name for f in ds.files[:2]] == ["a", "a"]
    # each sample is what the in-memory loader makes of the same file
    single = load_image_inputs(ds.files[0], model, spec)
    assert single.shape == (1, *ds[0].shape)
    np.testing.assert_array_equal(ds[0], single[0])


def test_no_readable_image_is_one_clear_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"junk")
    model = load_model(FIXTURES / "tiny_yolo.onnx")
    with pytest.raises(BridgeError, match="no readable image"):
        ImageFolderDataset(tmp_path, model, Preprocess.parse("yolo"))


def test_streamed_training_matches_the_in_memory_one_with_workers(folder, pruned_tiny_yolo):
    teacher, student, _ = pruned_tiny_yolo
    spec = Preprocess.parse("yolo")
    ds = ImageFolderDataset(folder, teacher, spec)
    array = np.stack([ds[i] for i in range(len(ds))])
    opts = FinetuneOptions(epochs=1, batch=4, lr=1e-2, seed=3, augment=("flip",))
    a = finetune(student, teacher, array, opts)
    b = finetune(student, teacher, ds, dataclasses.replace(opts, workers=2))
    assert [h.val_loss for h in a.history] == pytest.approx([h.val_loss for h in b.history])
