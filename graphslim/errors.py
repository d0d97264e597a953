"""Exceptions that carry a message meant for the user.

Every error a user can cause (a missing file, a bad option, a model a pass cannot take) is a
:class:`GraphslimError`: its message is one line that names the file, node, op or option and
says what to do. The CLI prints that line and exits with :attr:`GraphslimError.exit_code`;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GraphslimError(Exception):
    """A problem with the user's input, reported as one line and a non-zero exit code."""

    exit_code = 2


class ModelLoadError(GraphslimError):
    """The model file is missing, unreadable, not ONNX or truncated."""


class ModelSaveError(GraphslimError):
    """The output could not be written (bad path, unwritable folder, full disk)."""


class OptionsError(GraphslimError):
    """A pass name, option name or option value is wrong."""


class PipelineError(GraphslimError):
    """A pipeline spec cannot be parsed, or its ordering constraints are violated."""


class PreconditionError(GraphslimError):
    """A pass cannot take this model at all; the message says how to fix it."""


class PassFailedError(GraphslimError):
    """A pass raised, or produced a model that does not check or run.

    The message names the pass and the passes that ran before it.
    """


class ValidationFailed(GraphslimError):
    """A candidate's outputs differ from the original's beyond tolerance."""

    exit_code = 1


class RuntimeFailure(GraphslimError):
    """onnxruntime could not load or run a model."""
