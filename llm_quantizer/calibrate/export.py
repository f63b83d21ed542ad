"""Calibration data in the forms other tools read, under ``OUT/calibration_data/``:

- ``calibration_data.txt``: the sequences' texts joined by blank lines, for ``llama-imatrix -f``
  (which tokenizes the whole file and cuts it into ``-c`` sized chunks itself).
- ``awq_calibration_data.jsonl``: ``{"text": ...}`` per sequence (AutoAWQ / llm-awq take texts).
- ``gptq_calibration_data.jsonl``: ``{"input_ids": [...], "attention_mask": [...]}`` per sequence,
  the exact ids. No ``text`` key on purpose: GPTQModel tokenizes ``text`` when a record has
  one and would ignore the ids; AutoGPTQ's examples are exactly these two keys.
- ``calibration_pairs.json``: ``[{"prompt", "response"}]``, only for model-generated data.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..io import write_json, write_text
from .tokenize import CalibrationSet, calibration_dir

IMATRIX_TXT = "calibration_data.txt"
AWQ_JSONL = "awq_calibration_data.jsonl"
GPTQ_JSONL = "gptq_calibration_data.jsonl"
PAIRS_JSON = "calibration_pairs.json"


def export_calibration(calib: CalibrationSet, out_dir: str | Path, pairs: Iterable[dict] | None = None) -> dict[str, Path]:
    """Write the export files (atomically) and return them by kind: imatrix, awq, gptq[, pairs].
    The calibration set itself is written by ``calib.save(out_dir)``."""
    folder = calibration_dir(out_dir)
    written = {
        "imatrix": write_text(folder / IMATRIX_TXT, "\n\n".join(calib.texts) + "\n"),
        "awq": write_text(folder / AWQ_JSONL, _jsonl({"text": t} for t in calib.texts)),
        "gptq": write_text(folder / GPTQ_JSONL, _jsonl(
            {"input_ids": row, "attention_mask": [1] * len(row)} for row in calib.input_ids.tolist())),
    }
    pairs = list(pairs or [])
    if pairs:
        written["pairs"] = write_json(folder / PAIRS_JSON, pairs)
    return written


def _jsonl(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
