"""Quantize a GGUF file with llama.cpp itself (``llama_model_quantize``), and the equivalent
``llama-quantize`` command line for the reproduction script.

A plan compiles to: a default llama ftype (``Q4_K_M``) + ordered ``(regex, ggml type)`` tensor
overrides + an importance matrix. Patterns are regexes searched in GGUF tensor names
(``blk\\.1\\.ffn_down``); the first matching override wins.
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import BackendError, ConfigError, ModelSourceError
from ..io import atomic_path
from .imatrix import load_imatrix_means
from .lib import ggml_type

_FTYPE_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # as llama-quantize


def resolve_ftype(ftype: str | int) -> tuple[str, int]:
    """llama-quantize's type argument (``"Q4_K_M"``, ``"q8_0"``, ``15``) -> (name, llama_ftype)."""
    from gguf import LlamaFileType

    table = {m.name.split("_", 1)[1]: int(m) for m in LlamaFileType if m.name != "GUESSED"}
    if isinstance(ftype, str) and not ftype.strip().isdigit():
        name = ftype.strip().upper()
        name = _FTYPE_ALIASES.get(name, name)
        if name in table:
            return name, table[name]
    else:
        by_value = {v: k for k, v in table.items()}
        if int(ftype) in by_value:
            return by_value[int(ftype)], int(ftype)
    raise ConfigError(f"unknown llama.cpp quantization type {ftype!r} (e.g. Q4_K_M, Q8_0, IQ4_XS)")


def check_tensor_types(tensor_types: Sequence[tuple[str, object]]) -> list[tuple[str, str]]:
    """Validate ``(regex, ggml type)`` overrides -> ``[(regex, TYPE name)]``.

    llama-quantize lower-cases ``--tensor-type`` patterns and splits at the first '=', so a
    pattern must be lower case and '='-free for the API and the command line to agree."""
    out = []
    for pattern, qtype in tensor_types:
        if pattern != pattern.lower() or "=" in pattern or not pattern:
            raise ConfigError(f"tensor-type pattern {pattern!r} must be non-empty, lower case, without '='")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"tensor-type pattern {pattern!r} is not a valid regex: {e}") from None
        out.append((pattern, ggml_type(qtype).name))
    return out


@functools.lru_cache(maxsize=1)
def _llama():
    try:
        from llama_cpp import llama_cpp as L
    except ImportError:
        raise BackendError("llama-cpp-python is not installed (pip install llama-cpp-python)") from None
    L.llama_backend_init()
    return L


def _overrides_array(L, tensor_types, keep: list):
    arr = (L.llama_model_tensor_override * (len(tensor_types) + 1))()
    for i, (pattern, tname) in enumerate(tensor_types):
        keep.append(pattern.encode())
        arr[i].pattern, arr[i].type = keep[-1], int(ggml_type(tname))
    arr[len(tensor_types)].pattern = None
    keep.append(arr)
    return ctypes.cast(arr, ctypes.POINTER(L.llama_model_tensor_override))


def _imatrix_array(L, means: Mapping[str, np.ndarray], keep: list):
    arr = (L.llama_model_imatrix_data * (len(means) + 1))()
    for i, (name, vals) in enumerate(means.items()):
        v = np.ascontiguousarray(vals, dtype=np.float32).ravel()
        keep += [v, name.encode()]
        arr[i].name, arr[i].size = keep[-1], v.size
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    arr[len(means)].name = None
    keep.append(arr)
    return ctypes.cast(arr, ctypes.POINTER(L.llama_model_imatrix_data))


def llama_quantize(input_gguf, output_gguf, ftype: str | int = "Q4_K_M",
                   tensor_types: Sequence[tuple[str, object]] = (),
                   imatrix: Mapping[str, np.ndarray] | str | os.PathLike | None = None, *,
                   allow_requantize: bool = False, nthread: int | None = None,
                   output_tensor_type=None, token_embedding_type=None, pure: bool = False) -> int:
    """Run ``llama_model_quantize``; the output appears atomically. Returns 0, else BackendError.

    ``imatrix``: ``{weight name: mean x**2 per input channel}`` (see imatrix.imatrix_means) or
    the path of an imatrix file."""
    if not Path(input_gguf).is_file():
        raise ModelSourceError(f"GGUF file not found: {input_gguf}")
    _, ftype_id = resolve_ftype(ftype)
    tts = check_tensor_types(tensor_types)
    if isinstance(imatrix, (str, os.PathLike)):
        imatrix = load_imatrix_means(imatrix)
    L, keep = _llama(), []
    p = L.llama_model_quantize_default_params()
    p.ftype, p.nthread = ftype_id, int(nthread or os.cpu_count() or 1)
    p.allow_requantize, p.pure = bool(allow_requantize), bool(pure)
    if output_tensor_type is not None:
        p.output_tensor_type = int(ggml_type(output_tensor_type))
    if token_embedding_type is not None:
        p.token_embedding_type = int(ggml_type(token_embedding_type))
    if tts:
        p.tt_overrides = _overrides_array(L, tts, keep)
    if imatrix:
        p.imatrix = _imatrix_array(L, imatrix, keep)
    with atomic_path(output_gguf) as tmp:
        rc = L.llama_model_quantize(str(input_gguf).encode(), str(tmp).encode(), ctypes.byref(p))
        if rc != 0:
            raise BackendError(f"llama_model_quantize failed (rc={rc}) on {input_gguf}; see llama.cpp log above")
    return rc


def llama_quantize_command(input_gguf, output_gguf, ftype: str | int = "Q4_K_M",
                           tensor_types: Sequence[tuple[str, object]] = (),
                           imatrix_file: str | os.PathLike | None = None, *,
                           allow_requantize: bool = False, nthread: int | None = None,
                           output_tensor_type=None, token_embedding_type=None, pure: bool = False,
                           executable: str = "llama-quantize") -> list[str]:
    """The ``llama-quantize`` argv doing what :func:`llama_quantize` does (shlex.quote to print)."""
    name, _ = resolve_ftype(ftype)
    argv = [executable]
    argv += ["--allow-requantize"] if allow_requantize else []
    argv += ["--pure"] if pure else []
    argv += ["--imatrix", str(imatrix_file)] if imatrix_file is not None else []
    if output_tensor_type is not None:
        argv += ["--output-tensor-type", ggml_type(output_tensor_type).name]
    if token_embedding_type is not None:
        argv += ["--token-embedding-type", ggml_type(token_embedding_type).name]
    for pattern, tname in check_tensor_types(tensor_types):
        argv += ["--tensor-type", f"{pattern}={tname}"]
    argv += [str(input_gguf), str(output_gguf), name]
    return argv + ([str(int(nthread))] if nthread else [])
