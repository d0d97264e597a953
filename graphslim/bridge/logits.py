"""Pre-activation taps: distil the logits of outputs that end in Sigmoid or Softmax.

A graph output ``p = sigmoid(z)`` (or ``softmax(z)``) saturates when ``|z|`` is large: in
float32 ``sigmoid(z)`` is exactly 0 below ``z ~ -88``, and any loss on ``p`` has gradient
``dL/dz = dL/dp * p (1 - p) = 0`` there. A pruned student whose map reads 0.0 everywhere
therefore never moves under a loss on probabilities. The same comparison made on ``z``
keeps its gradient:

* Sigmoid, ``bce-logit``: the mean Bernoulli KL divergence from the teacher,
  ``KL = p_t (log p_t - log p_s) + (1 - p_t) (log(1 - p_t) - log(1 - p_s))`` with
  ``log p = logsigmoid(z)``, ``log(1 - p) = logsigmoid(-z)``; ``dKL/dz_s = p_s - p_t``,
  which stays ``-p_t`` on the teacher's foreground however saturated the student is.
  (BCE with logits minus the teacher's entropy: zero when the maps match.)
* Softmax, ``kl-logit``: ``T^2 KL(softmax(z_t / T) || softmax(z_s / T))`` over the softmax
  axis, summed over it and averaged over every other position.

:func:`find_logits` finds, for each graph output, the input of the node that produces it
when that node is a Sigmoid or Softmax: the tensor the trainer taps in both graphs (the
teacher through extra onnxruntime outputs, the student through
:class:`~graphslim.bridge.interpreter.OnnxModule` taps).

:func:`dead_outputs` tells, before training, which outputs are constant over the validation
inputs while the teacher's vary: ``saturated`` when the tapped logits still vary (the logit
loss will move it), ``constant`` when they do not (no gradient reaches the weights behind it
through the output; recalibrating BatchNorm or pruning with calibration data is the remedy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

ACTIVATIONS = ("Sigmoid", "Softmax")
# Relative spread (max - min) / max(1, |values|) below which an output counts as constant.
CONSTANT_SPREAD = 1e-6


@dataclass(frozen=True)
class Logit:
    """The pre-activation tensor of one output: ``output = activation(tensor)``."""

    output: str
    tensor: str
    activation: str  # Sigmoid | Softmax
    axis: int  # Softmax axis (as written; negative counts from the end)
    flatten: bool  # opset < 13 Softmax: coerced to 2-D at ``axis``

    @property
    def loss(self) -> str:
        return "bce-logit" if self.activation == "Sigmoid" else "kl-logit"


def find_logits(model: onnx.ModelProto) -> dict[str, Logit]:
    """``{output: Logit}`` for every graph output produced directly by Sigmoid or Softmax."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    producer = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for o in model.graph.output:
        node = producer.get(o.name)
        if node is None or node.op_type not in ACTIVATIONS or not node.input[0]:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
        found[o.name] = Logit(o.name, node.input[0], node.op_type, axis, opset < 13)
    return found


def matching_logits(student: onnx.ModelProto, teacher: onnx.ModelProto) -> dict[str, Logit]:
    """The student's logits whose teacher output ends in the same activation (same axis)."""
    mine, theirs = find_logits(student), find_logits(teacher)
    return {
        o: lg
        for o, lg in mine.items()
        if o in theirs and (theirs[o].activation, theirs[o].axis) == (lg.activation, lg.axis)
    }


def logit_loss(torch, logit: Logit, s, t, temperature: float):
    """The loss of the module docstring on student logits ``s`` and teacher logits ``t``."""
    F = torch.nn.functional
    if logit.activation == "Sigmoid":
        p = torch.sigmoid(t)
        kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (
            F.logsigmoid(-t) - F.logsigmoid(-s)
        )
        return kl.mean()
    T = temperature
    axis = logit.axis % s.dim()
    if logit.flatten:
        lead = int(np.prod(s.shape[:axis], dtype=np.int64))
        s, t, axis = s.reshape(lead, -1), t.reshape(lead, -1), 1
    ls, lt = F.log_softmax(s / T, dim=axis), F.log_softmax(t / T, dim=axis)
    kl = (lt.exp() * (lt - ls)).sum(dim=axis)
    return kl.mean() * (T * T)


def _spread(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return 0.0
    return float(finite.max() - finite.min()) / max(1.0, float(np.abs(finite).max()))


def dead_outputs(
    student: Mapping[str, np.ndarray],
    teacher: Mapping[str, np.ndarray],
    logits: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, str]:
    """``{output: 'saturated' | 'constant'}`` for outputs constant in ``student`` (over every
    sample and position) but not in ``teacher``; ``logits[output] = (student z, teacher z)``
    tells a saturated activation (``z`` varies) from a dead one."""
    logits = logits or {}
    dead = {}
    for name, s in student.items():
        if _spread(s) > CONSTANT_SPREAD or _spread(teacher[name]) <= CONSTANT_SPREAD:
            continue
        z = logits.get(name)
        dead[name] = (
            "saturated" if z is not None and _spread(z[0]) > CONSTANT_SPREAD else "constant"
        )
    return dead
