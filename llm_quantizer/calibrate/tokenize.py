"""Documents -> a deterministic calibration set of N sequences of exactly L tokens.

Documents are shuffled with the seed, tokenized without special tokens (only as many as needed),
and concatenated with the EOS token between them; the stream is cut into N windows. Each
sequence starts with BOS iff the tokenizer adds BOS itself (``tokenizer("x")`` begins with it).
"""
from __future__ import annotations

import hashlib
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import layout
from ..errors import CalibrationError
from ..io import atomic_path, read_json, write_json

FORMAT_VERSION = 1
IDS_FILE = "calibration.safetensors"
META_FILE = "calibration_meta.json"
_BATCH_DOCS = 64          # documents tokenized per tokenizer call
_MAX_CHARS_PER_TOKEN = 64  # a document longer than (needed + margin) * this is tokenized cut short
_CUT_MARGIN = 64           # tokens dropped at the end of a cut document (its last word may differ)


@dataclass
class CalibrationSet:
    input_ids: torch.Tensor   # int64 [N, L]
    meta: dict
    texts: list[str]          # one decoded text per sequence; document breaks become blank lines

    @property
    def n_samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def save(self, out: str | Path) -> Path:
        """Write ``OUT/calibration_data/{calibration.safetensors, calibration_meta.json}``; the
        meta file (written last, carrying the ids' sha256) marks the set complete."""
        from safetensors.torch import save_file

        folder = calibration_dir(out)
        with atomic_path(folder / IDS_FILE) as tmp:
            save_file({"input_ids": self.input_ids.contiguous()}, str(tmp), metadata={"sha256": self.meta["sha256"]})
        write_json(folder / META_FILE, {**self.meta, "texts": self.texts})
        return folder

    @classmethod
    def load(cls, out: str | Path) -> "CalibrationSet":
        """Read a saved set; a missing, unreadable or inconsistent one is a CalibrationError."""
        from safetensors.torch import load_file

        folder = calibration_dir(out)
        ids_path, meta_path = folder / IDS_FILE, folder / META_FILE
        if not (ids_path.is_file() and meta_path.is_file()):
            raise CalibrationError(f"{folder}: no saved calibration set ({IDS_FILE} + {META_FILE})")
        try:
            meta = read_json(meta_path)
            ids = load_file(str(ids_path))["input_ids"]
        except Exception as e:  # json, safetensors and key errors alike
            raise CalibrationError(f"{folder}: unreadable calibration set ({type(e).__name__}: {e})") from None
        texts = meta.pop("texts", [])
        if ids_sha256(ids) != meta.get("sha256"):
            raise CalibrationError(f"{ids_path}: token ids do not match {META_FILE} (sha256 differs)")
        return cls(ids, meta, texts)


def calibration_dir(out: str | Path) -> Path:
    return Path(out) / layout.CALIBRATION


def ids_sha256(ids: torch.Tensor) -> str:
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().astype("<i8").tobytes()).hexdigest()


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of a text by itself."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("x")["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    return bool(with_special) and with_special[0] == bos and plain[:1] != [bos]


def separator_ids(tokenizer) -> list[int]:
    """EOS between documents; a blank line where the tokenizer has no EOS."""
    if tokenizer.eos_token_id is not None:
        return [int(tokenizer.eos_token_id)]
    return list(tokenizer("\n\n", add_special_tokens=False)["input_ids"])


def build_calibration(docs: Sequence[str], tokenizer, n_samples: int, seq_len: int, seed: int,
                      *, allow_fewer: bool = False) -> CalibrationSet:
    """Pack shuffled documents into ``n_samples`` sequences of exactly ``seq_len`` tokens.
    Too little text is a CalibrationError, or, with ``allow_fewer``, fewer samples and a warning."""
    if n_samples < 1 or seq_len < 2:
        raise CalibrationError(f"need at least 1 sample of 2 tokens (got {n_samples} x {seq_len})")
    bos = adds_bos(tokenizer)
    body = seq_len - int(bos)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    sep = separator_ids(tokenizer)
    stream, is_sep, used = _pack(docs, tokenizer, order, n_samples * body, sep)
    n = _samples_available(len(stream), n_samples, seq_len, body, docs, allow_fewer)
    rows = np.asarray(stream[:n * body], dtype=np.int64).reshape(n, body)
    if bos:
        rows = np.concatenate([np.full((n, 1), tokenizer.bos_token_id, dtype=np.int64), rows], axis=1)
    ids = torch.from_numpy(rows)
    seps = np.asarray(is_sep[:n * body], dtype=bool).reshape(n, body)
    texts = [_sequence_text(tokenizer, r[int(bos):], m) for r, m in zip(rows, seps)]
    meta = {"format_version": FORMAT_VERSION, "n_samples": n, "requested_samples": n_samples,
            "seq_len": seq_len, "seed": seed, "tokens": n * seq_len, "bos": bos,
            "bos_token_id": tokenizer.bos_token_id if bos else None, "separator_ids": sep,
            "documents_used": used, "documents_total": len(docs),
            "sources": list(getattr(docs, "sources", [])),
            "tokenizer": {"name": getattr(tokenizer, "name_or_path", "") or "", "vocab_size": len(tokenizer)},
            "sha256": ids_sha256(ids)}
    return CalibrationSet(ids, meta, texts)


def _pack(docs, tokenizer, order, needed, sep) -> tuple[list[int], list[bool], int]:
    """Token stream of the documents in ``order`` joined by ``sep``, stopped at ``needed``."""
    stream: list[int] = []
    is_sep: list[bool] = []
    used = 0
    cap = (needed + _CUT_MARGIN) * _MAX_CHARS_PER_TOKEN
    for start in range(0, len(order), _BATCH_DOCS):
        for ids in _encode(tokenizer, [docs[i] for i in order[start:start + _BATCH_DOCS]], cap):
            if not ids:
                continue
            if stream:
                stream += sep
                is_sep += [True] * len(sep)
            stream += ids
            is_sep += [False] * len(ids)
            used += 1
            if len(stream) >= needed:
                return stream[:needed], is_sep[:needed], used
    return stream, is_sep, used


def _encode(tokenizer, texts: list[str], cap: int) -> list[list[int]]:
    """Token ids of each text; a text over ``cap`` characters is cut there first (enough tokens for
    any request), and tokenized whole after all if the cut text yields too few tokens."""
    ids = tokenizer([t[:cap] for t in texts], add_special_tokens=False, verbose=False)["input_ids"]
    need = cap // _MAX_CHARS_PER_TOKEN
    for k, text in enumerate(texts):
        if len(text) > cap and len(ids[k]) < need:
            ids[k] = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        elif len(text) > cap:
            ids[k] = ids[k][:need - _CUT_MARGIN]
    return ids


def _samples_available(tokens: int, n_samples: int, seq_len: int, body: int, docs, allow_fewer: bool) -> int:
    n = tokens // body
    if n >= n_samples:
        return n_samples
    where = _describe_sources(docs)
    if allow_fewer and n >= 1:
        warnings.warn(f"calibration text {where} gives only {n} of {n_samples} samples of {seq_len} tokens "
                      f"({tokens} tokens available, {n_samples * body} needed)", stacklevel=3)
        return n
    raise CalibrationError(f"calibration text {where} is too short: {tokens} tokens available, "
                           f"{n_samples * body} needed for {n_samples} samples x {seq_len} tokens")


def _describe_sources(docs) -> str:
    paths = [s["path"] for s in getattr(docs, "sources", []) if "path" in s]
    names = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"({len(docs)} documents{' from ' + names if names else ''})"


def _sequence_text(tokenizer, row: np.ndarray, sep_mask: np.ndarray) -> str:
    """Decode a sequence, one piece per document; separators become blank lines."""
    cuts = np.flatnonzero(np.diff(np.concatenate(([True], sep_mask, [True])).astype(np.int8)))
    pieces = [row[a:b].tolist() for a, b in zip(cuts[::2], cuts[1::2])]
    return "\n\n".join(t for t in tokenizer.batch_decode(pieces, skip_special_tokens=False) if t.strip())


def heldout_calibration(calib: CalibrationSet, tokenizer, n_samples: int, seq_len: int | None = None) -> CalibrationSet:
    """Sequences packed from the documents of ``calib``'s sources that ``calib`` did not use
    (same files, same shuffle; the rest of the order), for measuring on text the measurements
    never saw. A CalibrationError when the sources are gone, changed, generated or used up."""
    from .sources import Documents, load_documents

    sources = calib.meta.get("sources", [])
    paths = [s.get("path") for s in sources]
    if not paths or not all(paths) or any(s.get("generated") for s in sources):
        raise CalibrationError("calibration data has no re-readable sources (generated text)")
    docs = load_documents(paths, tokenizer=tokenizer)
    if [s.get("sha256") for s in docs.sources] != [s.get("sha256") for s in sources]:
        raise CalibrationError("calibration sources changed since the calibration set was built")
    order = list(range(len(docs)))
    random.Random(int(calib.meta["seed"])).shuffle(order)
    rest = order[int(calib.meta["documents_used"]):]
    if not rest:
        raise CalibrationError("every calibration document is in the calibration set; none is held out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        held = build_calibration(Documents([docs[i] for i in rest], docs.sources), tokenizer, n_samples,
                                 seq_len or calib.seq_len, int(calib.meta["seed"]) + 1, allow_fewer=True)
    held.meta["heldout_documents"] = len(rest)
    return held
