"""Quantize / dequantize one tensor with libggml, and the per-format error probe.

``w`` is laid out as ggml sees it: rows x n_per_row, i.e. a torch Linear weight [out, in]
(n_per_row = in_features). The imatrix, when given, has n_per_row entries.
"""
from __future__ import annotations

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from gguf import GGMLQuantizationType as QT

from ..errors import BackendError
from . import lib

# Types ggml_quantize_chunk handles; anything else hits GGML_ABORT inside libggml.
QUANTIZABLE = frozenset({
    QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0,
    QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.TQ1_0, QT.TQ2_0, QT.MXFP4, QT.NVFP4, QT.Q1_0,
    QT.IQ1_S, QT.IQ1_M, QT.IQ2_XXS, QT.IQ2_XS, QT.IQ2_S, QT.IQ3_XXS, QT.IQ3_S, QT.IQ4_NL, QT.IQ4_XS,
})
_ROWS_PER_TASK = 64


@functools.lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    """One long-lived pool per worker count: probes call this thousands of times per model."""
    return ThreadPoolExecutor(workers, thread_name_prefix="ggml-quantize")


def check_quantizable(qtype, n_per_row: int, imatrix: np.ndarray | None = None) -> QT:
    """Raise BackendError unless libggml can quantize rows of ``n_per_row`` values to ``qtype``."""
    t = lib.ggml_type(qtype)
    if t not in QUANTIZABLE:
        raise BackendError(f"ggml cannot quantize to {t.name}")
    if n_per_row % lib.block_size(t):
        raise BackendError(f"{t.name} needs rows of a multiple of {lib.block_size(t)} values, got {n_per_row}")
    if imatrix is None and lib.requires_imatrix(t):
        raise BackendError(f"{t.name} needs an importance matrix (imatrix); none was given")
    if imatrix is not None and np.size(imatrix) != n_per_row:
        raise BackendError(f"imatrix has {np.size(imatrix)} values, rows have {n_per_row}")
    return t


def _as_rows(w) -> np.ndarray:
    a = np.ascontiguousarray(w, dtype=np.float32)
    return a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a


def _fptr(a: np.ndarray | None):
    return None if a is None else a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def quantize_tensor(w, qtype, imatrix: np.ndarray | None = None, nthread: int | None = None) -> np.ndarray:
    """Quantize ``w`` [rows, n_per_row] with ggml_quantize_chunk -> uint8 [rows, row_bytes].

    The result is what llama.cpp writes for the tensor (GGUFWriter.add_tensor(raw_dtype=qtype))."""
    src = _as_rows(w)
    rows, n = src.shape
    imat = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32).ravel()
    t = check_quantizable(qtype, n, imat)
    dst = np.empty((rows, lib.row_size(t, n)), dtype=np.uint8)
    g = lib.ggml()
    g.ggml_quantize_init(int(t))  # table setup once, before threads start

    def run(r0: int, r1: int) -> int:
        return g.ggml_quantize_chunk(int(t), _fptr(src), dst.ctypes.data, r0 * n, r1 - r0, n, _fptr(imat))

    spans = [(r, min(r + _ROWS_PER_TASK, rows)) for r in range(0, rows, _ROWS_PER_TASK)]
    workers = min(nthread or os.cpu_count() or 1, len(spans))
    if workers <= 1:
        written = sum(run(a, b) for a, b in spans)
    else:  # ctypes releases the GIL during the call
        written = sum(_pool(workers).map(lambda s: run(*s), spans))
    if written != dst.nbytes:
        raise BackendError(f"ggml_quantize_chunk wrote {written} bytes, expected {dst.nbytes}")
    return dst


def dequantize_tensor(raw, qtype, shape) -> np.ndarray:
    """Dequantize raw ggml bytes to float32 of ``shape`` (libggml's to_float, else gguf-py)."""
    t = lib.ggml_type(qtype)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(raw, dtype=np.uint8)
    buf = np.ascontiguousarray(raw).view(np.uint8).ravel()
    n = int(np.prod(shape))
    need = n // shape[-1] * lib.row_size(t, shape[-1]) if n else 0
    if buf.nbytes != need:  # to_float would read out of bounds
        raise BackendError(f"{t.name} data of shape {tuple(shape)} needs {need} bytes, got {buf.nbytes}")
    out = np.empty(n, dtype=np.float32)
    fn = lib.to_float_fn(t)
    if fn is not None:
        fn(buf.ctypes.data, _fptr(out), n)
    else:
        from gguf import quants
        out[:] = quants.dequantize(buf, t).ravel()[:n]
    return out.reshape(shape)


def fake_quantize(w, qtype, imatrix: np.ndarray | None = None, nthread: int | None = None) -> np.ndarray:
    """Quantize then dequantize: the float32 weights a llama.cpp runtime would compute with."""
    src = np.asarray(w, dtype=np.float32)
    return dequantize_tensor(quantize_tensor(src, qtype, imatrix, nthread), qtype, src.shape)


def quant_error(w, qtype, imatrix: np.ndarray | None = None, h: np.ndarray | None = None,
                nthread: int | None = None) -> float:
    """Predicted output error tr(dW H dW^T), dW = W - fake_quant(W).

    ``h`` is the input Hessian [in, in] or just its diagonal [in]; None means H = I."""
    src = _as_rows(w)
    dw = (src - fake_quantize(src, qtype, imatrix, nthread)).astype(np.float64)
    if h is None:
        return float(np.sum(dw * dw))
    h = np.asarray(h, dtype=np.float64)
    if h.ndim == 1:
        return float(np.sum(dw * dw * h[None, :]))
    return float(np.sum((dw @ h) * dw))
