"""The key/value metadata of the written GGUF: copied verbatim from a GGUF source (tokenizer,
architecture, general.*), or built from a Hugging Face directory's config and tokenizer."""
from __future__ import annotations

import logging
import re

import gguf
from gguf import GGUFValueType as VT

from .hparams import write_hparams
from .vocab import write_vocab

log = logging.getLogger(__name__)
# keys never copied: file layout, the type of the tensors (ours differ), split bookkeeping
_NOT_COPIED = ("GGUF.", "split.", gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE,
               gguf.Keys.General.QUANTIZATION_VERSION)


def write_metadata(w: gguf.GGUFWriter, source, file_type: int) -> None:
    if getattr(source, "reader", None) is not None:
        copy_metadata(w, source.reader)
    else:
        w.add_type("model")
        write_hparams(w, source.config, source.layer_map.gguf_arch, source.num_layers)
        tokens = write_vocab(w, source.path, int(source.config.vocab_size))
        w.add_name(safe_name(source.name, tokens))
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def safe_name(name: str, tokens: list[bytes]) -> str:
    """llama.cpp gives Phi-3 tokens attributes when general.name contains 'phi3'/'phi-3', and fails
    to load unless <s>, </s>, <unk> and <|endoftext|> all exist: keep such names off then."""
    needed = {b"<s>", b"</s>", b"<unk>", b"<|endoftext|>"}
    if re.search(r"phi-?3", name.lower()) and not needed <= set(tokens):
        log.warning("general.name %r renamed: llama.cpp needs Phi-3's special tokens for such names", name)
        return re.sub(r"(?i)phi-?3", "phi", name)
    return name


def copy_metadata(w: gguf.GGUFWriter, reader: gguf.GGUFReader) -> int:
    """Copy every key of ``reader`` except :data:`_NOT_COPIED`, byte-exact for strings."""
    n = 0
    for key, field in reader.fields.items():
        if key.startswith(_NOT_COPIED):
            continue
        vtype = VT(field.types[0])
        sub = VT(field.types[1]) if vtype == VT.ARRAY else None
        if sub == VT.ARRAY:
            raise ValueError(f"GGUF key {key!r}: nested arrays are not supported")
        w.add_key_value(key, _value(field, vtype, sub), vtype, sub_type=sub)
        n += 1
    return n


def _value(field, vtype: VT, sub: VT | None):
    if vtype == VT.STRING:
        return bytes(field.parts[field.data[0]])
    if vtype == VT.ARRAY and sub == VT.STRING:
        return [bytes(field.parts[i]) for i in field.data]
    return field.contents()
