"""Deployment backends: onnxruntime's .ort format (:mod:`.ort_format`) and TensorRT engines
(:mod:`.tensorrt`, optional: needs the ``trt`` extra and an NVIDIA GPU). Nothing here is
imported by ``import graphslim``."""
