"""albumentations on the uint8 image: seeded per (epoch, sample), the teacher sees the student's
input, a clear line when the package is missing."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
from bridge_helpers import FIXTURES
from PIL import Image

from graphslim.bridge import BridgeError, TorchMissing
from graphslim.bridge.data import ImageFolderDataset
from graphslim.bridge.finetune import Distiller, FinetuneOptions
from graphslim.feeds import Preprocess
from graphslim.model_io import load_model

pytest.importorskip("albumentations", reason="the aug extra (in dev) is not installed")

from graphslim.bridge.augment import ImageAugment  # noqa: E402

NAMES = ("flip", "crop", "scale", "rotate", "color", "blur")


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    return tmp_path


def test_draws_repeat_per_epoch_and_sample_and_survive_pickling():
    image = np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    aug = ImageAugment(NAMES, seed=5)
    a = aug(image, 1, 3)
    np.testing.assert_array_equal(a, aug(image, 1, 3))  # the same draw again
    np.testing.assert_array_equal(a, pickle.loads(pickle.dumps(aug))(image, 1, 3))  # in a worker
    others = [aug(image, e, i) for e, i in ((2, 3), (1, 4), (3, 3))]
    assert any(o.shape != a.shape or not np.array_equal(o, a) for o in others)
    assert a.dtype == np.uint8 and image.shape == (30, 40, 3)  # the input is left as it was


def test_the_teacher_sees_exactly_the_students_augmented_input(photos, pruned_tiny_yolo):
    teacher, student, _ = pruned_tiny_yolo
    spec = Preprocess.parse("yolo")
    ds = ImageFolderDataset(photos, teacher, spec, augment=ImageAugment(NAMES, seed=0))
    opts = FinetuneOptions(epochs=1, batch=4, augment=NAMES, augmenter="albumentations")
    d = Distiller(student, teacher, ds, opts)
    assert d.augments_on_read
    seen = {"teacher": [], "student": []}
    real_teacher = d._teacher

    def teacher(x):
        seen["teacher"].append(x.copy())
        return real_teacher(x)

    d._teacher = teacher  # the student runs in chunks of its static batch of 1: collect them
    d.module.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].detach().numpy()))
    d.backward(np.arange(4), epoch=2)
    (to_teacher,) = seen["teacher"]
    np.testing.assert_array_equal(to_teacher, np.concatenate(seen["student"]))
    # what both saw is the augmented read of those samples, not the plain decode
    expected = np.stack([d.inputs[(i, 2)] for i in range(4)])
    np.testing.assert_array_equal(to_teacher, expected)
    assert not np.array_equal(expected, d.inputs[np.arange(4)])


def test_albumentations_needs_image_folders(pruned_tiny_yolo):
    teacher, student, x = pruned_tiny_yolo
    opts = FinetuneOptions(epochs=1, batch=4, augment=("flip",), augmenter="albumentations")
    with pytest.raises(BridgeError, match="albumentations augments the uint8 images"):
        Distiller(student, teacher, x, opts)
    with pytest.raises(BridgeError, match="not one of flip, crop, color, blur, rotate"):
        FinetuneOptions(augment=("scale",))  # albumentations only


def test_missing_albumentations_is_one_line_with_the_install_command(monkeypatch, photos):
    monkeypatch.setitem(sys.modules, "albumentations", None)  # import -> ImportError
    with pytest.raises(TorchMissing, match=r"pip install 'onnx-graphslim\[aug\]'"):
        ImageAugment(("flip",))
    teacher = load_model(FIXTURES / "tiny_yolo.onnx")
    assert len(ImageFolderDataset(photos, teacher, Preprocess.parse("yolo"))) == 8
