"""The on-disk teacher cache: exact reuse of the teacher's outputs per input sample."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("torch")

from test_logits import _inputs, _map_model  # noqa: E402

from graphslim.bridge.finetune import FinetuneOptions, finetune  # noqa: E402
from graphslim.bridge.teacher_cache import CachedTeacher  # noqa: E402


class _Counting:
    """A teacher runner that counts the samples it computes."""

    def __init__(self, scale: float = 2.0) -> None:
        self.output_names = ["y"]
        self.scale = scale
        self.computed = 0
        self.closed = False

    def run(self, feed):
        (x,) = feed.values()
        self.computed += len(x)
        return {"y": x.sum(axis=1) * self.scale, ("logit", "y"): x[:, :1] - 1}

    def close(self) -> None:
        self.closed = True


TAPS = {("logit", "y"): "z"}


def test_seen_samples_are_read_and_only_new_ones_computed(tmp_path):
    model = _map_model()
    x = np.random.default_rng(0).standard_normal((6, 3, 4, 4)).astype(np.float32)
    inner = _Counting()
    cache = CachedTeacher(inner, tmp_path, model, TAPS)
    first = cache.run({"x": x[:4]})
    assert inner.computed == 4 and cache.stats()["misses"] == 4
    # a batch of two seen and two new samples, in another order: two computed
    mixed = cache.run({"x": x[[5, 1, 4, 0]]})
    assert inner.computed == 6 and cache.stats() | {"folder": None} == {
        "folder": None,
        "hits": 2,
        "misses": 6,
    }
    np.testing.assert_array_equal(mixed["y"][1], first["y"][1])
    np.testing.assert_array_equal(mixed[("logit", "y")][3], first[("logit", "y")][0])
    # a fresh runner on the same folder (a rerun) computes nothing
    again = CachedTeacher(_Counting(), tmp_path, model, TAPS)
    out = again.run({"x": x})
    assert again.inner.computed == 0 and again.stats()["hits"] == 6
    np.testing.assert_array_equal(out["y"], x.sum(axis=1) * 2.0)
    again.close()
    assert again.inner.closed


def test_another_teacher_or_other_taps_never_read_the_entries(tmp_path):
    x = np.ones((2, 3, 4, 4), np.float32)
    CachedTeacher(_Counting(), tmp_path, _map_model(), TAPS).run({"x": x})
    other_model = CachedTeacher(_Counting(3.0), tmp_path, _map_model(bias_shift=1.0), TAPS)
    assert float(other_model.run({"x": x})["y"][0, 0, 0]) == 9.0  # computed, not read
    other_taps = CachedTeacher(_Counting(), tmp_path, _map_model(), {})
    other_taps.run({"x": x})
    assert other_taps.stats()["misses"] == 2


def test_a_damaged_entry_is_computed_again(tmp_path, caplog):
    model, x = _map_model(), np.zeros((1, 3, 4, 4), np.float32)
    cache = CachedTeacher(_Counting(), tmp_path, model, TAPS)
    cache.run({"x": x})
    (entry,) = cache.folder.rglob("*.npz")
    entry.write_bytes(b"not a zip")
    again = CachedTeacher(_Counting(), tmp_path, model, TAPS)
    again.run({"x": x})
    assert again.stats()["misses"] == 1 and "unreadable" in caplog.text
    assert not list(cache.folder.rglob(".tmp-*"))  # written by rename, nothing left over


def test_a_rerun_with_the_cache_trains_exactly_like_the_first(tmp_path):
    """Same seed, augmentation on: the second run reads every teacher output (the augmented
    inputs repeat) and its history is the first's, figure for figure."""
    teacher, student, x = _map_model(), _map_model(bias_shift=-2.0), _inputs(24)
    opts = FinetuneOptions(
        epochs=2,
        batch=8,
        lr=0.05,
        optimizer="adam",
        seed=0,
        augment=("flip", "crop"),
        task="dense",
        teacher_cache=str(tmp_path / "cache"),
    )
    first = finetune(student, teacher, x, opts)
    assert first.teacher_cache["misses"] > 0
    second = finetune(student, teacher, x, opts)
    assert second.teacher_cache["misses"] == 0 and second.teacher_cache["hits"] > 0
    for field in ("loss", "val_loss", "value"):  # epoch 0's loss is nan in both
        np.testing.assert_array_equal(
            [getattr(h, field) for h in second.history], [getattr(h, field) for h in first.history]
        )
    plain = finetune(student, teacher, x, dataclasses.replace(opts, teacher_cache=None))
    assert [h.value for h in plain.history] == [h.value for h in first.history]
    assert plain.teacher_cache is None and "teacher_cache" in plain.to_dict()
