"""Tokenizer metadata (``tokenizer.ggml.*``) from a Hugging Face model directory.

Three tokenizer kinds, as llama.cpp knows them:

* ``tokenizer.model`` (SentencePiece: Llama 2, Gemma): model ``llama``; pieces, scores and types
  straight from the protobuf (SentencePiece piece types are numbered like gguf's TokenType).
* ``tokenizer.json`` byte-level BPE (GPT-2 style: SmolLM, Qwen, Llama 3): model ``gpt2``, merges,
  and ``tokenizer.ggml.pre`` recognized from the pre-tokenizer (:data:`PRE_TOKENIZERS`).
* ``tokenizer.json`` BPE with byte fallback (SentencePiece converted to HF fast): model ``llama``,
  scores ``-id`` (SentencePiece BPE pieces are stored in merge order).

Added tokens override their ids (special -> CONTROL, else USER_DEFINED); the list is padded with
``[PAD{i}]`` (UNUSED) up to the model's vocab_size. Special ids, add_bos/add_eos and the chat
template come from gguf-py's ``SpecialVocab``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf
from gguf import TokenType

from ..errors import ModelSourceError

log = logging.getLogger(__name__)

_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = _LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")
# pre-tokenizer signature (see _pre_signature) -> llama.cpp's tokenizer.ggml.pre
PRE_TOKENIZERS = {
    (("ByteLevel", True),): "gpt-2",
    (("Split", _GPT2_RE), ("ByteLevel", False)): "gpt-2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
    (("Split", _LLAMA3_RE), ("ByteLevel", False)): "llama-bpe",
    (("Split", _QWEN2_RE), ("ByteLevel", False)): "qwen2",
}


def write_vocab(w: gguf.GGUFWriter, model_dir: Path, n_vocab: int) -> list[bytes]:
    """All ``tokenizer.*`` keys for the tokenizer saved in ``model_dir``; returns the token list."""
    model_dir = Path(model_dir)
    tj = _read_json(model_dir / "tokenizer.json")
    if (model_dir / "tokenizer.model").is_file():
        model, pre, (tokens, scores, types), space = "llama", "default", *_spm(model_dir / "tokenizer.model")
    elif tj and tj["model"].get("type") == "BPE" and tj["model"].get("byte_fallback"):
        model, pre, (tokens, scores, types), space = "llama", "default", _bpe_vocab(tj, llama=True), _hf_space(tj)
    elif tj and tj["model"].get("type") == "BPE":
        model, pre, (tokens, scores, types), space = "gpt2", _pre_name(tj), _bpe_vocab(tj, llama=False), None
    else:
        raise ModelSourceError(f"{model_dir}: no tokenizer.model or BPE tokenizer.json for the GGUF tokenizer")
    _apply_added(tokens, scores, types, (tj or {}).get("added_tokens", []))
    _pad(tokens, scores, types, n_vocab)
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    if model == "llama":
        w.add_token_scores(scores)
    w.add_token_types(types)
    if space is not None:
        w.add_add_space_prefix(space)
    gguf.SpecialVocab(model_dir, load_merges=model == "gpt2", n_vocab=len(tokens)).add_to_gguf(w, quiet=True)
    return tokens


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"{path}: unreadable ({e.__class__.__name__})") from None


def _spm(path: Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    tokens = [p.piece.encode("utf-8") for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]          # same numbering as gguf.TokenType
    return (tokens, scores, types), bool(proto.normalizer_spec.add_dummy_prefix)


def _bpe_vocab(tj: dict, llama: bool):
    vocab = tj["model"]["vocab"]
    n = max(vocab.values(), default=-1) + 1
    tokens: list = [f"[PAD{i}]".encode() for i in range(n)]
    types = [int(TokenType.UNUSED)] * n
    for text, i in vocab.items():
        tokens[i], types[i] = text.encode("utf-8"), int(TokenType.NORMAL)
        if llama and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[i] = int(TokenType.BYTE)
    scores = [-float(i) if llama else 0.0 for i in range(n)]
    return tokens, scores, types


def _apply_added(tokens: list, scores: list, types: list, added: list[dict]) -> None:
    for tok in sorted(added, key=lambda t: t["id"]):
        i = int(tok["id"])
        _pad(tokens, scores, types, i + 1)
        kind = int(TokenType.CONTROL if tok.get("special") else TokenType.USER_DEFINED)
        tokens[i], types[i] = tok["content"].encode("utf-8"), kind    # new ids score -1000 (_pad)


def _pad(tokens: list, scores: list, types: list, n: int) -> None:
    for i in range(len(tokens), n):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(TokenType.UNUSED))


def _hf_space(tj: dict) -> bool:
    """Whether a converted SentencePiece tokenizer prepends a space (``Prepend`` / ``Metaspace``)."""
    text = json.dumps([tj.get("normalizer"), tj.get("pre_tokenizer")])
    return '"Prepend"' in text or '"prepend_scheme": "first"' in text or '"prepend_scheme": "always"' in text


def _pre_signature(pt: dict | None) -> tuple:
    items = (pt.get("pretokenizers") or []) if pt and pt.get("type") == "Sequence" else ([pt] if pt else [])
    sig = []
    for p in items:
        kind = p.get("type")
        if kind == "Split":
            pattern = p.get("pattern", {})
            sig.append((kind, pattern.get("Regex", pattern.get("String"))))
        elif kind == "ByteLevel":
            sig.append((kind, bool(p.get("use_regex", True))))
        elif kind == "Digits":
            sig.append((kind, bool(p.get("individual_digits"))))
        else:
            sig.append((kind,))
    return tuple(sig)


def _pre_name(tj: dict) -> str:
    sig = _pre_signature(tj.get("pre_tokenizer"))
    name = PRE_TOKENIZERS.get(sig)
    if name is None:
        log.warning("unknown BPE pre-tokenizer %r: writing tokenizer.ggml.pre='default' "
                    "(llama.cpp may split text differently from transformers)", sig)
    return name or "default"
