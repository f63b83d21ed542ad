"""The chosen sampler settings written for three runtimes, with the measured rates:

- ``generation_config.json`` (transformers; its ``repetition_penalty`` counts the whole context,
  llama.cpp only the last ``repeat_last_n`` tokens; it applies temperature before top-p/min-p);
- an Ollama ``Modelfile`` (``FROM`` the artifact, ``PARAMETER`` lines; no DRY in Ollama);
- ``quantization_plan/prevent_repetition.sh``: ``llama-cli`` with every sampler flag explicit
  (llama-cli's own defaults are top-k 40, top-p 0.95, min-p 0.05, temp 0.8), every argument
  shell-quoted.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Sequence

from ..io import read_json, write_json, write_text
from .sampler import SamplerSettings

_HF_SAMPLER_KEYS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                    "typical_p", "no_repeat_ngram_size")


def comment(text: str) -> str:
    """One safe comment line: control characters (newlines first) become '?'."""
    return "# " + re.sub(r"[\x00-\x1f\x7f]", "?", str(text))


def rates_line(label: str, rep: dict) -> str:
    return (f"{label}: repetition rate (seq-rep-3 of generations) original {rep['original_rate']:.3f}, "
            f"base setting {rep['before_rate']:.3f}, these settings {rep['rate']:.3f} "
            f"({'reaches' if rep['reached_target'] else 'does not reach'} the original's level); "
            f"eval perplexity cost {rep['ppl_cost_pct']:+.2f}%, eval tokens kept by truncation {rep['kept_pct']:.1f}%")


def hf_generation_config(s: SamplerSettings, existing: dict | None = None) -> dict:
    cfg = {k: v for k, v in (existing or {}).items() if k not in _HF_SAMPLER_KEYS}
    if s.greedy:
        cfg["do_sample"] = False
    else:
        cfg.update(do_sample=True, temperature=s.temperature, top_k=max(s.top_k, 0), top_p=s.top_p)
        if s.min_p > 0:
            cfg["min_p"] = s.min_p
    if s.repeat_penalty != 1.0:
        cfg["repetition_penalty"] = s.repeat_penalty
    return cfg


def write_generation_config(path, s: SamplerSettings, existing_dir=None, base: dict | None = None) -> Path:
    """``generation_config.json`` for ``s``, keeping the non-sampler keys (eos, bos, pad) of an
    existing one in ``existing_dir``, else of ``base``."""
    existing = base or {}
    if existing_dir is not None and (Path(existing_dir) / "generation_config.json").is_file():
        existing = read_json(Path(existing_dir) / "generation_config.json")
    return write_json(path, hf_generation_config(s, existing))


def ollama_parameters(s: SamplerSettings) -> list[tuple[str, object]]:
    return [("temperature", max(s.temperature, 0.0)), ("top_k", max(s.top_k, 0)), ("top_p", s.top_p),
            ("min_p", s.min_p), ("repeat_penalty", s.repeat_penalty), ("repeat_last_n", s.repeat_last_n),
            ("presence_penalty", s.presence_penalty), ("frequency_penalty", s.frequency_penalty)]


def _modelfile_value(path: str) -> str:
    return path if re.fullmatch(r"[\w@%+=:,./-]+", path) else json.dumps(path)


def write_modelfile(path, model_path, s: SamplerSettings, rates: str = "") -> Path:
    lines = [comment("Ollama Modelfile written by llm-quantizer validate")]
    lines += [comment(rates)] if rates else []
    lines += [comment(f"DRY ({s.label()}) has no Ollama parameter; this file leaves it out")] if s.has_dry else []
    lines.append(f"FROM {_modelfile_value(str(model_path))}")
    lines += [f"PARAMETER {k} {v:g}" if isinstance(v, float) else f"PARAMETER {k} {v}" for k, v in ollama_parameters(s)]
    return write_text(path, "\n".join(lines) + "\n")


def llama_cli_flags(s: SamplerSettings) -> list[str]:
    flags = ["--temp", f"{max(s.temperature, 0.0):g}", "--top-k", str(max(s.top_k, 0)), "--top-p", f"{s.top_p:g}",
             "--min-p", f"{s.min_p:g}", "--repeat-penalty", f"{s.repeat_penalty:g}",
             "--repeat-last-n", str(s.repeat_last_n), "--presence-penalty", f"{s.presence_penalty:g}",
             "--frequency-penalty", f"{s.frequency_penalty:g}"]
    if s.has_dry:
        flags += ["--dry-multiplier", f"{s.dry_multiplier:g}", "--dry-base", f"{s.dry_base:g}",
                  "--dry-allowed-length", str(s.dry_allowed_length), "--dry-penalty-last-n", str(s.dry_last_n),
                  "--dry-sequence-breaker", "none"]
    return flags


def write_llama_script(path, entries: Sequence[tuple[str, str, SamplerSettings, str]]) -> Path:
    """``entries``: (label, gguf path, settings, rates line). One entry: the script runs it;
    several: the first argument picks the label. Extra arguments go to llama-cli."""
    q = shlex.quote
    head = ["#!/usr/bin/env bash",
            comment("Repetition-safe sampling for llama.cpp's llama-cli, measured by llm-quantizer validate."),
            comment("Override the binary with LLAMA_CLI=/path/to/llama-cli.")]
    head += [comment(e[3]) for e in entries if e[3]]
    head += ["set -euo pipefail", 'LLAMA_CLI="${LLAMA_CLI:-llama-cli}"']

    def run(model, s):
        return " ".join(['exec "$LLAMA_CLI"', "-m", q(str(model)), *map(q, llama_cli_flags(s)), '"$@"'])

    if len(entries) == 1:
        body = [run(entries[0][1], entries[0][2])]
    else:
        usage = q("usage: prevent_repetition.sh {" + "|".join(e[0] for e in entries) + "} [llama-cli args]")
        body = ['label="${1:-}"', "shift || true", 'case "$label" in']
        body += [f"  {q(label)}) {run(model, s)} ;;" for label, model, s, _ in entries]
        body += [f"  *) echo {usage} >&2; exit 2 ;;", "esac"]
    return write_text(path, "\n".join(head + body) + "\n")
