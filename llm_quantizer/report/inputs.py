"""Read what a run left in its output directory. Missing or unreadable files read as None."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import layout

TEXT_LIMIT = 20_000         # characters of a script / Modelfile shown on the page


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path: Path) -> Optional[str]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "\n… (truncated)"


def as_dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def as_list(x: Any) -> list:
    return x if isinstance(x, list) else []


def dicts(x: Any) -> list[dict]:
    return [d for d in as_list(x) if isinstance(d, dict)]


@dataclass
class Artifact:
    """One quantized model: a GGUF file or an HF directory (config.json)."""
    path: Path
    kind: str                   # "gguf" | "hf"
    nbytes: int


@dataclass
class RunFiles:
    out: Path
    architecture: dict = field(default_factory=dict)
    importance: dict = field(default_factory=dict)
    measurements: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def rel(self, p: Path) -> str:
        """``p`` relative to the output directory where possible (commands run from there)."""
        try:
            return str(Path(p).resolve().relative_to(self.out.resolve()))
        except ValueError:
            return str(p)

    def text(self, *parts: str) -> Optional[str]:
        return read_text(self.path(*parts))

    def model_name(self) -> str:
        for d in (self.architecture, self.plan, self.measurements, self.validation.get("original")):
            name = as_dict(as_dict(d).get("model", d)).get("name")
            if name:
                return str(name)
        return str(self.config.get("model") or "model")

    def model_ref(self) -> Optional[str]:
        """The original model reference (tokenizer source for GGUF in vLLM / transformers)."""
        for d in (self.architecture, self.measurements, self.plan):
            ref = as_dict(as_dict(d).get("model")).get("ref")
            if ref:
                return str(ref)
        return self.config.get("model") if isinstance(self.config.get("model"), str) else None


def find_artifacts(qdir: Path) -> list[Artifact]:
    """GGUF files and HF directories (config.json) under ``quantized_model/``."""
    if not qdir.is_dir():
        return []
    arts = [Artifact(p, "gguf", p.stat().st_size) for p in sorted(qdir.glob("*.gguf")) if p.is_file()]
    for d in [qdir, *sorted(p for p in qdir.iterdir() if p.is_dir())]:
        if (d / "config.json").is_file():
            n = sum(f.stat().st_size for f in d.iterdir() if f.is_file() and f.suffix == ".safetensors")
            arts.append(Artifact(d, "hf", n))
    return arts


def load_run(out_dir: str | Path) -> RunFiles:
    out = Path(out_dir)
    return RunFiles(
        out=out,
        architecture=as_dict(read_json(layout.architecture_json(out))),
        importance=as_dict(read_json(out / layout.IMPORTANCE / "importance_analysis.json")),
        measurements=as_dict(read_json(out / layout.MEASUREMENTS)),
        plan=as_dict(read_json(out / layout.PLAN / "quantization_plan.json")),
        validation=as_dict(read_json(out / layout.VALIDATION / "validation.json")),
        config=as_dict(read_json(out / "config.json")),
        artifacts=find_artifacts(out / layout.QUANTIZED),
    )
