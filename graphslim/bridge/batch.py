"""A batch-of-N copy of a graph exported with a fixed batch of 1, for training in batches.

Exporters write a static batch (ultralytics: ``images [1, 3, 640, 640]``) and bake it into
``Reshape`` targets (the YOLOv8 head's ``[1, 144, -1]``, the DFL's ``[1, 4, 16, -1]``). The
torch bridge would then run such a graph one sample at a time: on a GPU, 32 launches of every
kernel for a batch of 32 (measured on an H200: 1.3 s a step for a pruned YOLOv8n at 256 px,
the GPU idle). :func:`batched` rewrites the copy: the input's and outputs' dim 0 becomes
symbolic, and every ``Reshape`` whose data comes from the input (so its dim 0 is the batch)
and whose constant target starts with the static batch gets ``0`` there (ONNX: copy that dim
from the data; ``allowzero=1`` reshapes are left alone). Nothing else is guessed: the result
is accepted only if onnxruntime gives, for a batch of 2 different samples, what the original
gives for each sample alone (``rtol``); otherwise :func:`batched` returns None and the caller
keeps running the original in chunks. No library does this rewrite with a check (onnx's
``update_inputs_outputs_dims`` changes only the declared dims, not the Reshape targets).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from graphslim.graph import attr, constant_node_value, consumers, initializers, producers

log = logging.getLogger(__name__)
BATCH = "N"


def _from_inputs(graph: onnx.GraphProto, names: list[str]) -> set[str]:
    """Tensors computed from the graph inputs ``names`` (they included)."""
    users = consumers(graph)
    seen, todo = set(names), list(names)
    while todo:
        for node in users.get(todo.pop(), []):
            for out in node.output:
                if out and out not in seen:
                    seen.add(out)
                    todo.append(out)
    return seen


def rewrite(model: onnx.ModelProto, batch: int) -> tuple[onnx.ModelProto, int]:
    """The copy with a symbolic batch and its batch-carrying Reshape targets set to 0, and
    the number of Reshapes rewritten (unchecked: :func:`batched` checks)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    values, made = initializers(g), producers(g)  # one index for every Reshape below
    real_inputs = [i for i in g.input if i.name not in values]
    for vi in [*real_inputs, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = BATCH
    del g.value_info[:]  # shapes inferred for the fixed batch would be stale
    batched_tensors = _from_inputs(g, [i.name for i in real_inputs])
    count = 0
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if attr(node, "allowzero", 0) == 1 or node.input[0] not in batched_tensors:
            continue
        shape = node.input[1]
        if shape in values:
            target = numpy_helper.to_array(values[shape])
        elif shape in made and made[shape].op_type == "Constant":
            target = constant_node_value(made[shape])
        else:
            target = None
        if target is None or target.ndim != 1 or not len(target) or int(target[0]) != batch:
            continue
        new = target.astype(np.int64).copy()
        new[0] = 0
        name = f"{node.input[1]}__batched_{count}"
        g.initializer.append(numpy_helper.from_array(new, name))
        node.input[1] = name
        count += 1
    return out, count


def batched(
    model: onnx.ModelProto, batch: int, samples: np.ndarray, *, rtol: float = 1e-4
) -> onnx.ModelProto | None:
    """A copy of ``model`` (single input, static dim 0 = ``batch``) that runs any batch, or
    None when the rewrite does not reproduce the original on ``samples`` (at least two,
    shaped like one input of the original)."""
    from graphslim.runtime import run_model

    if batch != 1 or len(samples) < 2:
        return None
    try:
        copy, count = rewrite(model, batch)
        name = next(i.name for i in model.graph.input if i.name not in initializers(model.graph))
        pair = np.ascontiguousarray(samples[:2], dtype=np.float32)
        alone = run_model(model, [{name: pair[i : i + 1]} for i in range(2)], label="model")
        (together,) = run_model(copy, [{name: pair}], label="batched model")
    except Exception as exc:  # any failure means: keep running the original in chunks
        log.info("no batched copy: %s", exc)
        return None
    for out, value in together.items():
        ref = np.concatenate([a[out] for a in alone])
        if value.shape != ref.shape:
            log.info("no batched copy: output %s is %s, not %s", out, value.shape, ref.shape)
            return None
        scale = max(float(np.abs(ref).max()), 1e-12)
        if float(np.abs(value - ref).max()) > rtol * scale:
            log.info("no batched copy: output %s differs from the per-sample runs", out)
            return None
    log.info("batched copy: %d Reshape target(s) follow the batch", count)
    return copy
