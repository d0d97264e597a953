"""graphslim: validated graph-level passes that make ONNX models smaller and faster.

The public API; importing it loads no optional extra (torch, ultralytics, tensorrt).
"""

from graphslim.contract import Pass, PassContext, PassResult, option
from graphslim.errors import GraphslimError, PreconditionError
from graphslim.model_io import load_model, save_model
from graphslim.pipeline import Pipeline, PipelineResult
from graphslim.validate import Comparison, Tolerance, compare

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "GraphslimError",
    "Pass",
    "PassContext",
    "PassResult",
    "Pipeline",
    "PipelineResult",
    "PreconditionError",
    "Tolerance",
    "compare",
    "load_model",
    "option",
    "save_model",
]
