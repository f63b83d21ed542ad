"""The measure stage."""
from .run import DEFAULT_FORMATS, MeasureResult, build_measurements, run_measurements, write_outputs

__all__ = ["DEFAULT_FORMATS", "MeasureResult", "build_measurements", "run_measurements", "write_outputs"]
