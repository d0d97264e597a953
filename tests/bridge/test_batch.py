"""Batch-of-N copies of fixed-batch graphs (graphslim.bridge.batch), checked in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
from bridge_helpers import tiny_yolo_pair
from onnx import TensorProto, helper, numpy_helper

from graphslim.bridge.batch import BATCH, batched, rewrite
from graphslim.bridge.finetune import Distiller, FinetuneOptions, finetune
from graphslim.runtime import run_model


def test_a_yolo_head_with_batch_one_reshapes_runs_a_batch_as_its_samples_alone():
    teacher, _, x = tiny_yolo_pair()
    copy, count = rewrite(teacher, 1)
    assert count == sum(n.op_type == "Reshape" for n in teacher.graph.node) > 0
    assert copy.graph.input[0].type.tensor_type.shape.dim[0].dim_param == BATCH
    assert batched(teacher, 1, x[:2]) is not None
    name = teacher.graph.input[0].name
    (together,) = run_model(copy, [{name: x[:5]}])
    alone = run_model(teacher, [{name: x[i : i + 1]} for i in range(5)])
    for out, value in together.items():
        ref = np.concatenate([a[out] for a in alone])
        np.testing.assert_allclose(value, ref, rtol=1e-5, atol=1e-5)
    # the original is untouched
    assert teacher.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


def _folds_the_batch_into_channels() -> onnx.ModelProto:
    """x [1, 4, 8] -> Reshape [4, 8] -> Relu: the target has no batch entry to follow."""
    shape = numpy_helper.from_array(np.array([4, 8], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["r"]),
            helper.make_node("Relu", ["r"], ["y"]),
        ],
        "fold",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_graph_the_rewrite_cannot_batch_is_refused_not_guessed():
    model = _folds_the_batch_into_channels()
    x = np.random.default_rng(0).random((2, 1, 4, 8), dtype=np.float32).reshape(2, 4, 8)
    assert batched(model, 1, x) is None
    assert batched(model, 2, x) is None  # only a batch of 1 is rewritten


def test_the_fine_tune_trains_in_batches_and_writes_the_users_fixed_batch_graph():
    teacher, student, x = tiny_yolo_pair()
    opts = FinetuneOptions(epochs=1, batch=8, lr=1e-2, seed=3, augment=())
    d = Distiller(student, teacher, x, opts)
    assert d.batched and d.chunk is None
    assert d.parity["passed"]
    result = finetune(student, teacher, x, opts)
    dim0 = result.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 1  # the written model keeps the batch it was exported with
    assert [n.input[:] for n in result.model.graph.node] == [n.input[:] for n in student.graph.node]
