"""Calibration documents from files: .txt (blank-line separated), .jsonl and .parquet (a ``text``
field, or chat ``messages``), or folders of those (recursive, sorted, hidden files skipped)."""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import CalibrationError

SUFFIXES = (".txt", ".jsonl", ".parquet")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


@dataclass
class Documents(Sequence[str]):
    """Document texts plus where they came from (one dict per file, or per generation run)."""

    texts: list[str]
    sources: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i]


def load_documents(paths: str | os.PathLike | Iterable[str | os.PathLike], tokenizer=None) -> Documents:
    """Read every document of ``paths`` (files or folders), in order. ``tokenizer`` renders chat
    ``messages`` with its chat template; without one (or without a template) messages become
    ``role: content`` lines."""
    from .builtin import is_builtin, load_builtin

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    texts, sources = [], []
    for p in [p for p in paths if is_builtin(str(p))]:
        docs = load_builtin(str(p))
        texts += docs.texts
        sources += docs.sources
    paths = [p for p in paths if not is_builtin(str(p))]
    for f in (f for p in paths for f in _expand(Path(p))):
        data = _read_bytes(f)
        docs = _READERS[f.suffix.lower()](f, data, tokenizer)
        if not docs:
            raise CalibrationError(f"{f}: no documents (the file is empty or holds only blank text)")
        texts += docs
        sources.append({"path": str(f), "sha256": hashlib.sha256(data).hexdigest(), "documents": len(docs)})
    if not sources:
        raise CalibrationError("no calibration files given")
    return Documents(texts, sources)


def render_messages(messages: Any, tokenizer=None, where: str = "messages") -> str:
    """A chat as text: the tokenizer's chat template when it has one, else ``role: content`` lines."""
    msgs = _check_messages(messages, where)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(msgs, tokenize=False)
        except Exception as e:  # jinja errors of a template we did not write
            raise CalibrationError(f"{where}: the tokenizer's chat template failed: {e}") from None
    return "\n".join(f"{m['role']}: {m['content']}" for m in msgs)


# -- files -------------------------------------------------------------------------------------
def _expand(path: Path) -> list[Path]:
    if not path.exists():
        raise CalibrationError(f"calibration path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise CalibrationError(f"{path}: unknown calibration file type {path.suffix or '(none)'!r} "
                                   f"(expected {', '.join(SUFFIXES)})")
        return [path]
    files = sorted((f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES
                    and not any(part.startswith(".") for part in f.relative_to(path).parts)),
                   key=lambda f: f.relative_to(path).as_posix())
    if not files:
        raise CalibrationError(f"calibration folder {path} holds no {', '.join(SUFFIXES)} files")
    return files


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CalibrationError(f"{path}: cannot read: {e.strerror or e}") from None


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CalibrationError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_txt(path: Path, data: bytes, tokenizer) -> list[str]:
    return [d.strip() for d in _BLANK_LINE.split(_decode(path, data)) if d.strip()]


def _read_jsonl(path: Path, data: bytes, tokenizer) -> list[str]:
    docs = []
    for lineno, line in enumerate(_decode(path, data).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        docs.append(_record_text(record, tokenizer, f"{path}:{lineno}"))
    return [d for d in docs if d.strip()]


def _read_parquet(path: Path, data: bytes, tokenizer) -> list[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise CalibrationError(f"{path}: reading parquet needs pyarrow: "
                               "pip install 'llm-quantizer[parquet]'") from None
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise CalibrationError(f"{path}: not a readable parquet file ({e})") from None
    if "text" in table.column_names:
        rows = [{"text": t} for t in table.column("text").to_pylist()]
    elif "messages" in table.column_names:
        rows = [{"messages": m} for m in table.column("messages").to_pylist()]
    else:
        raise CalibrationError(f"{path}: no 'text' or 'messages' column "
                               f"(columns: {', '.join(table.column_names) or 'none'})")
    docs = [_record_text(r, tokenizer, f"{path}: row {i}") for i, r in enumerate(rows)]
    return [d for d in docs if d.strip()]


def _record_text(record: Any, tokenizer, where: str) -> str:
    if not isinstance(record, dict):
        raise CalibrationError(f"{where}: expected an object with a string 'text' or a 'messages' list")
    text = record.get("text")
    if isinstance(text, str):
        return text
    if record.get("messages") is not None:
        return render_messages(record["messages"], tokenizer, where)
    if "text" in record and text is None:
        return ""  # a null text is skipped like a blank one
    raise CalibrationError(f"{where}: expected a string 'text' or a 'messages' list")


def _check_messages(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise CalibrationError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise CalibrationError(f"{where}: every message needs a 'role' string and a 'content'")
        out.append({"role": m["role"], "content": _content_text(m["content"])})
    return out


def _content_text(content: Any) -> str:
    """A message's content: a string, or a list of parts of which the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join((p.get("text") or "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


_READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}
