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
    unreadable: list[str] = field(default_factory=list)     # files present but not a JSON object

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

    def hf_ref(self) -> Optional[str]:
        """The original model as an HF directory or hub id (a tokenizer source for vLLM); None when
        the original was a GGUF file or an example name."""
        m = as_dict(self.architecture.get("model") or self.measurements.get("model"))
        ref = m.get("ref")
        if not isinstance(ref, str) or m.get("source") == "gguf" or ref.endswith(".gguf"):
            return None
        return ref


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
    unreadable: list[str] = []

    def load(path: Path) -> dict:
        data = read_json(path)
        if path.exists() and not isinstance(data, dict):
            unreadable.append(str(path.relative_to(out)))
        return as_dict(data)

    return RunFiles(
        out=out,
        architecture=load(layout.architecture_json(out)),
        importance=load(out / layout.IMPORTANCE / "importance_analysis.json"),
        measurements=load(out / layout.MEASUREMENTS),
        plan=load(out / layout.PLAN / "quantization_plan.json"),
        validation=load(out / layout.VALIDATION / "validation.json"),
        config=load(out / "run_config.json") or load(out / "config.json"),
        artifacts=find_artifacts(out / layout.QUANTIZED),
        unreadable=unreadable,
    )
