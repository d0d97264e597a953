"""Feature distillation: intermediate tensors of the student learn the teacher's (FitNets).

A pruned graph keeps its tensor names, so a feature map of the student (``C_s`` channels, the
kept ones) has a namesake in the teacher (``C_t`` channels). A 1x1 map per feature (an
*adapter*, thrown away after training) takes ``C_s`` to ``C_t``; the loss is
``mean((adapter(s) - t)^2) / mean(t^2)`` (``t`` over a few validation inputs), so every
feature weighs alike whatever its magnitude.

The adapters are not trained by the optimizer: each is the least-squares map (per pixel, with
a bias) from the student's channels to the teacher's on a few validation inputs, fitted again
at the start of every epoch (:meth:`Adapters.fit`). Trained with the student's learning rate,
a 1x1 map over tens of correlated channels diverged on the test fixtures (SGD at 1e-2: loss
0.6 -> 180 -> NaN); the closed form needs no rate, and right after pruning, when most kept
channels are still the teacher's, it starts close to a channel selection.

``auto`` picks, per spatial size, the last 4-D tensor (in graph order) that both graphs
produce under the same name and that feeds two or more nodes of the student (a SiLU's
``Sigmoid`` + ``Mul`` pair counting as one): in a detector
those are the neck's outputs that the head's branches read (YOLOv8's P3/P4/P5), in a
classifier the last stage's output at each resolution.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from graphslim.bridge import BridgeError

log = logging.getLogger(__name__)
RIDGE = 1e-3  # ridge of the least-squares fit, relative to the mean diagonal of the Gram matrix


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Tensor name -> inferred dims (ints, or None where unknown)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def _readers(tensor: str, users: Mapping[str, list]) -> int:
    """Nodes reading ``tensor``, a SiLU written as ``Mul(x, Sigmoid(x))`` counting as one (its
    Sigmoid is dropped when a Mul beside it reads the Sigmoid's output)."""
    nodes = users.get(tensor, [])
    read = {i for n in nodes for i in n.input}
    return sum(1 for n in nodes if not (n.op_type == "Sigmoid" and n.output[0] in read))


def auto_features(student: onnx.ModelProto, teacher: onnx.ModelProto) -> list[str]:
    """The ``auto`` choice (see the module doc); may be empty."""
    from graphslim.graph import consumers

    made_by_teacher = {o for n in teacher.graph.node for o in n.output}
    users = consumers(student.graph)
    shapes = _shapes(student)
    last: dict[tuple[int, int], str] = {}
    for node in student.graph.node:
        for out in node.output:
            dims = shapes.get(out)
            if out not in made_by_teacher or not dims or len(dims) != 4:
                continue
            if dims[2] is None or dims[3] is None or _readers(out, users) < 2:
                continue
            last[(dims[2], dims[3])] = out
    return list(last.values())


def resolve_features(
    asked: Sequence[str], student: onnx.ModelProto, teacher: onnx.ModelProto
) -> list[str]:
    """Feature tensor names from the option: ``()`` none, ``("auto",)`` :func:`auto_features`,
    else the names given (each must be made by a node in both graphs)."""
    if not asked:
        return []
    if list(asked) == ["auto"]:
        found = auto_features(student, teacher)
        if not found:
            log.warning("feature distillation: no tensor fits the auto choice; outputs only")
        return found
    made = [{o for n in m.graph.node for o in n.output} for m in (student, teacher)]
    for name in asked:
        if name not in made[0] or name not in made[1]:
            raise BridgeError(
                f"feature '{name}' is not produced by a node of both the student and the "
                "teacher; name tensors the pruned graph kept (or use auto)"
            )
    return list(asked)


class Adapters:
    """The 1x1 adapters of the features (a ``torch.nn.ModuleDict``: :attr:`module`)."""

    def __init__(
        self, torch, student: Mapping[str, np.ndarray], teacher: Mapping[str, np.ndarray]
    ) -> None:
        """``student``/``teacher``: each feature's values ``[N, C, H, W]`` on a few inputs,
        for the first fit and the loss scales (fixed from then on)."""
        self.torch = torch
        self.keys = {name: re.sub(r"\W", "_", name) or "_" for name in student}
        self.module = torch.nn.ModuleDict()
        self.scales = {
            name: float(np.mean(np.square(t.astype(np.float64)))) + 1e-8
            for name, t in teacher.items()
        }
        self.fit(student, teacher)

    def fit(self, student: Mapping[str, np.ndarray], teacher: Mapping[str, np.ndarray]) -> None:
        """Set each adapter to the least-squares map from ``student`` to ``teacher`` values."""
        torch = self.torch
        for name, key in self.keys.items():
            s, t = student[name], teacher[name]
            if s.ndim != 4 or t.ndim != 4 or s.shape[2:] != t.shape[2:]:
                raise BridgeError(
                    f"feature '{name}': student {list(s.shape)} and teacher {list(t.shape)} "
                    "must both be [N, C, H, W] with the same H, W"
                )
            conv = (
                self.module[key]
                if key in self.module
                else torch.nn.Conv2d(s.shape[1], t.shape[1], 1)
            )
            conv.requires_grad_(False)
            x = s.transpose(0, 2, 3, 1).reshape(-1, s.shape[1]).astype(np.float64)
            y = t.transpose(0, 2, 3, 1).reshape(-1, t.shape[1]).astype(np.float64)
            a = np.hstack([x, np.ones((len(x), 1))])
            # ridge: a near-dead student channel would otherwise get a huge weight, and the
            # feature loss a huge gradient through it
            gram = a.T @ a
            ridge = RIDGE * np.trace(gram) / len(gram)
            w = np.linalg.solve(gram + ridge * np.eye(len(gram)), a.T @ y)  # [C_s + 1, C_t]
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(w[:-1].T.astype(np.float32))[..., None, None])
                conv.bias.copy_(torch.from_numpy(w[-1].astype(np.float32)))
            self.module[key] = conv

    def loss(self, name: str, s, t):
        """The scaled mean squared error of ``adapter(s)`` against ``t``."""
        conv = self.module[self.keys[name]]
        dev = conv.weight.device
        a = conv(s.to(dev).float())
        return self.torch.nn.functional.mse_loss(a, t.to(dev).float()) / self.scales[name]
