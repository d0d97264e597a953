"""The torch bridge: first export, ONNX -> trainable torch module, fine-tune, write-back.

torch is an optional extra (``pip install 'onnx-graphslim[torch]'``). Nothing here imports
it at package import time: :func:`require_torch` imports it on first use and turns its
absence into one :class:`TorchMissing` line with the install command.

Modules:

* :mod:`graphslim.bridge.export`: ``torch.nn.Module`` (or an ultralytics ``.pt``/``.yaml``)
  -> ONNX, checked against torch;
* :mod:`graphslim.bridge.interpreter`: an ONNX graph as a ``torch.nn.Module`` whose
  parameters are the graph's float initializers, one to one by name; parity check;
* :mod:`graphslim.bridge.writeback`: trained values back into the same graph;
* :mod:`graphslim.bridge.finetune`: label-free knowledge distillation from the teacher
  ONNX model (onnxruntime), optional task loss, checkpoints, DDP.
"""

from __future__ import annotations

from graphslim.errors import GraphslimError

INSTALL_HINT = "pip install 'onnx-graphslim[torch]' (or: pip install torch)"


class TorchMissing(GraphslimError):
    """torch (or another optional package of the bridge) is not installed."""


class BridgeError(GraphslimError):
    """The ONNX graph cannot be bridged to torch, or torch disagrees with onnxruntime."""


def require_torch():
    """Import and return ``torch``; raise :class:`TorchMissing` with the install line."""
    try:
        import torch
    except ImportError as exc:
        raise TorchMissing(
            f"this command needs torch, which is not installed; {INSTALL_HINT}"
        ) from exc
    return torch
