"""Deployment backends: onnxruntime's .ort format (:mod:`.ort_format`), OpenVINO (:mod:`.openvino`,
optional: the ``openvino`` extra) and TensorRT engines through Polygraphy (:mod:`.tensorrt`,
optional: the ``trt`` extra and an NVIDIA GPU). Nothing here is imported by ``import graphslim``;
each backend imports its runtime lazily and says how to install it when it is missing."""

from graphslim.errors import GraphslimError


class BackendUnavailable(GraphslimError):
    """The backend's package or hardware is missing (the message says which, and how to fix)."""
