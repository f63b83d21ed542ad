"""llm-quantizer: the best quantized model that fits a memory budget, with measurements."""
__version__ = "0.1.0"

from .api import analyze, calibrate, measure, plan, quantize, report, run, validate  # noqa: E402
from .config import RunConfig  # noqa: E402
from .errors import LLMQuantizerError  # noqa: E402

__all__ = ["analyze", "calibrate", "measure", "plan", "quantize", "report", "run", "validate",
           "RunConfig", "LLMQuantizerError", "__version__"]
