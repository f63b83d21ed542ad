"""ctypes bindings to the libggml that ships inside the installed ``llama_cpp`` package.

Only the quantization corner of ggml.h is declared: ``ggml_quantize_chunk`` and friends,
type sizes, and the type traits (for ``to_float``). The library is loaded lazily, once.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import sys
from pathlib import Path

from gguf import GGMLQuantizationType

from ..errors import BackendError, ConfigError

_INSTALL_HINT = "llama-cpp-python is not installed (pip install llama-cpp-python); it provides libggml"

# ggml_to_float_t: void (*)(const void * x, float * y, int64_t k)
TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)


class TypeTraits(ctypes.Structure):
    """``struct ggml_type_traits`` (ggml.h)."""

    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


class CPUTypeTraits(ctypes.Structure):
    """``struct ggml_type_traits_cpu`` (ggml-cpu.h)."""

    _fields_ = [
        ("from_float", ctypes.c_void_p),
        ("vec_dot", ctypes.c_void_p),
        ("vec_dot_type", ctypes.c_int),
        ("nrows", ctypes.c_int64),
    ]


# ggml_from_float_t: void (*)(const float * x, void * y, int64_t k)
FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64)


def lib_dir() -> Path:
    """Folder holding libggml*: ``$LLAMA_CPP_LIB_PATH`` (as llama_cpp honours it) or llama_cpp/lib."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise BackendError(_INSTALL_HINT)
    return Path(spec.origin).parent / "lib"


def _lib_file(folder: Path, base: str) -> Path:
    names = {"win32": [f"{base}.dll", f"lib{base}.dll"], "darwin": [f"lib{base}.dylib", f"lib{base}.so"]}
    for name in names.get(sys.platform, [f"lib{base}.so"]):
        if (folder / name).exists():
            return folder / name
    raise BackendError(f"lib{base} not found in {folder}; reinstall llama-cpp-python")


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, sz, vp, fp = ctypes.c_int64, ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)
    sigs = {
        "ggml_quantize_chunk": (sz, [ctypes.c_int, fp, vp, i64, i64, i64, fp]),
        "ggml_quantize_requires_imatrix": (ctypes.c_bool, [ctypes.c_int]),
        "ggml_quantize_init": (None, [ctypes.c_int]),
        "ggml_row_size": (sz, [ctypes.c_int, i64]),
        "ggml_type_size": (sz, [ctypes.c_int]),
        "ggml_blck_size": (i64, [ctypes.c_int]),
        "ggml_type_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ggml_get_type_traits": (ctypes.POINTER(TypeTraits), [ctypes.c_int]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


@functools.lru_cache(maxsize=1)
def ggml() -> ctypes.CDLL:
    """The loaded libggml-base with the quantization functions declared. Raises BackendError."""
    path = _lib_file(lib_dir(), "ggml-base")
    try:
        return _declare(ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL))
    except (OSError, AttributeError) as e:
        raise BackendError(f"cannot load {path}: {e}") from None


def ggml_type(qtype: str | int | GGMLQuantizationType) -> GGMLQuantizationType:
    """Resolve ``"q4_k"``, ``"Q4_K"``, ``12`` or the enum itself to a GGMLQuantizationType."""
    if isinstance(qtype, GGMLQuantizationType):
        return qtype
    try:
        if isinstance(qtype, str):
            return GGMLQuantizationType[qtype.strip().upper()]
        return GGMLQuantizationType(int(qtype))
    except (KeyError, ValueError):
        raise ConfigError(f"unknown ggml type {qtype!r}") from None


def block_size(qtype) -> int:
    return int(ggml().ggml_blck_size(int(ggml_type(qtype))))


def type_size(qtype) -> int:
    """Bytes per block."""
    return int(ggml().ggml_type_size(int(ggml_type(qtype))))


def row_size(qtype, n_per_row: int) -> int:
    """Bytes of one row of ``n_per_row`` values (exact, scales included)."""
    return int(ggml().ggml_row_size(int(ggml_type(qtype)), int(n_per_row)))


def requires_imatrix(qtype) -> bool:
    return bool(ggml().ggml_quantize_requires_imatrix(int(ggml_type(qtype))))


@functools.lru_cache(maxsize=1)
def ggml_cpu() -> ctypes.CDLL:
    """libggml-cpu (the CPU backend: its type traits and native row quantizers)."""
    ggml()
    path = _lib_file(lib_dir(), "ggml-cpu")
    try:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        fn = lib.ggml_get_type_traits_cpu
    except (OSError, AttributeError) as e:
        raise BackendError(f"cannot load {path}: {e}") from None
    fn.restype, fn.argtypes = ctypes.POINTER(CPUTypeTraits), [ctypes.c_int]
    return lib


def vec_dot_type(qtype) -> GGMLQuantizationType:
    """The type ggml's CPU matmul converts the activations to for a ``qtype`` weight."""
    return GGMLQuantizationType(ggml_cpu().ggml_get_type_traits_cpu(int(ggml_type(qtype))).contents.vec_dot_type)


def cpu_from_float_fn(qtype):
    """ggml-cpu's (native, SIMD) row quantizer to ``qtype`` as a callable, or None."""
    traits = ggml_cpu().ggml_get_type_traits_cpu(int(ggml_type(qtype)))
    if not traits or not traits.contents.from_float:
        return None
    return FROM_FLOAT(traits.contents.from_float)


def to_float_fn(qtype):
    """libggml's ``to_float`` for this type as a callable, or None where ggml has none."""
    traits = ggml().ggml_get_type_traits(int(ggml_type(qtype)))
    if not traits or not traits.contents.to_float:
        return None
    return TO_FLOAT(traits.contents.to_float)
