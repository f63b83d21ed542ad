"""The stable output layout (documented in README)."""
from __future__ import annotations

from pathlib import Path

ARCHITECTURE = "architecture_analysis"
IMPORTANCE = "importance_analysis"
PLAN = "quantization_plan"
CALIBRATION = "calibration_data"
QUANTIZED = "quantized_model"
VALIDATION = "validation"
MEASUREMENTS = "measurements.json"
REPORT = "report.html"


def architecture_json(out: Path) -> Path:
    return Path(out) / ARCHITECTURE / "architecture_analysis.json"


def architecture_png(out: Path) -> Path:
    return Path(out) / ARCHITECTURE / "layer_distribution.png"
