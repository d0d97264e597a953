"""Feature distillation (graphslim.bridge.features): auto choice, adapters, loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from bridge_helpers import tiny_yolo_pair

from graphslim.bridge import BridgeError
from graphslim.bridge.features import auto_features, resolve_features
from graphslim.bridge.finetune import Distiller, FinetuneOptions, finetune
from graphslim.graph import consumers

OPTS = FinetuneOptions(epochs=1, batch=8, lr=1e-2, seed=3, augment=(), features=("auto",))


def test_auto_picks_one_multi_reader_tensor_per_resolution_made_in_both_graphs():
    teacher, student, _ = tiny_yolo_pair()
    found = auto_features(student, teacher)
    assert found
    users = consumers(student.graph)
    made = {o for n in teacher.graph.node for o in n.output}
    for name in found:
        assert name in made and len(users[name]) >= 2
    assert resolve_features((), student, teacher) == []
    assert resolve_features(("auto",), student, teacher) == found
    with pytest.raises(BridgeError, match="feature 'nope'"):
        resolve_features(("nope",), student, teacher)


def test_adapters_start_at_the_least_squares_map_and_the_feature_loss_falls():
    teacher, student, x = tiny_yolo_pair()
    d = Distiller(student, teacher, x, OPTS)
    assert d.features and d.adapters is not None
    assert {k for k in d.keys if isinstance(k, tuple) and k[0] == "feature"} == {
        ("feature", f) for f in d.features
    }
    # the least-squares start beats a zero map: each feature's start loss is below 1
    pred = d.predict()
    import torch

    for f in d.features:
        start = float(  # no gradient is asked here
            d.adapters.loss(
                f,
                torch.from_numpy(pred[("feature", f)]),
                torch.from_numpy(d.val_teacher[("feature", f)]),
            )
        )
        assert start < 1.0
    # the adapters are fitted in closed form, not by the optimizer, and refitted each epoch
    n_params = sum(p.numel() for p in d.module.parameters())
    assert sum(p.numel() for g in d.opt.param_groups for p in g["params"]) == n_params
    before = {k: v.clone() for k, v in d.adapters.module.state_dict().items()}
    d.backward(np.arange(8), 1)
    d.step()
    d.refit_adapters()
    after = d.adapters.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    adam = dataclasses.replace(OPTS, epochs=3, optimizer="adam", lr=1e-3)
    result = finetune(student, teacher, x, adam)
    assert result.history[-1].val_loss < result.history[0].val_loss
    assert [i.name for i in result.model.graph.initializer] == [
        i.name for i in student.graph.initializer
    ]


def test_feature_weight_zero_leaves_the_output_loss():
    teacher, student, x = tiny_yolo_pair()
    plain = Distiller(student, teacher, x, dataclasses.replace(OPTS, features=()))
    zero = Distiller(student, teacher, x, dataclasses.replace(OPTS, feature_weight=0.0))
    idx = np.arange(8)
    assert zero.backward(idx, 1) == pytest.approx(plain.backward(idx, 1), rel=1e-5)
    with pytest.raises(BridgeError, match="feature weight"):
        FinetuneOptions(feature_weight=-1)
