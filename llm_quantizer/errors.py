"""User-facing errors: one line each, printed by the CLI without a traceback."""
from __future__ import annotations


class LLMQuantizerError(Exception):
    """Base class for every error a user can cause. Its message is a single line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class ModelSourceError(LLMQuantizerError):
    """The model path, hub id or weight files cannot be used."""


class UnsupportedArchitectureError(LLMQuantizerError):
    """The model's architecture has no layer map."""


class ConfigError(LLMQuantizerError):
    """A config file or flag value is invalid."""


class OutputError(LLMQuantizerError):
    """The output directory cannot be written."""


class CalibrationError(LLMQuantizerError):
    """Calibration data is missing, empty or unreadable."""


class BudgetError(LLMQuantizerError):
    """The memory budget cannot be met or parsed."""


class BackendError(LLMQuantizerError):
    """A quantization backend failed or is unavailable."""


class NotBuiltYetError(LLMQuantizerError):
    """A pipeline stage that this version does not implement yet."""
