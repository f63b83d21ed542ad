"""Importance matrices in llama-imatrix's GGUF layout (and its legacy ``.dat`` layout, read only).

An entry is keyed by the GGUF weight name (``blk.0.attn_q.weight``) and holds
``in_sum2``: the sum over tokens of x**2 per input channel, [n_in] (or [n_mat, n_in] for a
stack of experts), and ``counts``: the number of tokens summed, [n_mat]. llama.cpp quantizes
with the per-channel mean ``in_sum2 / counts`` (see :func:`imatrix_means`).
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import CalibrationError
from ..io import atomic_path

Entry = tuple[np.ndarray, np.ndarray]  # (in_sum2 [n_in] | [n_mat, n_in], counts [n_mat])

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUM_SUFFIX, COUNT_SUFFIX = ".in_sum2", ".counts"


def _normalize(in_sum2, counts) -> Entry:
    sums = np.asarray(in_sum2, dtype=np.float32)
    cnt = np.atleast_1d(np.asarray(counts, dtype=np.float32)).ravel()
    if sums.size % cnt.size:
        raise CalibrationError(f"imatrix: {sums.size} sums do not split into {cnt.size} count(s)")
    return (sums.ravel() if cnt.size == 1 else sums.reshape(cnt.size, -1)), cnt


def write_imatrix(path: str | os.PathLike, entries: Mapping[str, tuple], *, datasets=(),
                  chunk_count: int = 0, chunk_size: int = 0) -> Path:
    """Write ``{weight name: (in_sum2, counts)}`` as an imatrix GGUF, atomically."""
    import gguf

    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, "llama")
        w.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix writes none
        w.add_type("imatrix")
        w.add_key_value(KEY_DATASETS, [str(d) for d in datasets], gguf.GGUFValueType.ARRAY,
                        sub_type=gguf.GGUFValueType.STRING)
        w.add_uint32(KEY_CHUNK_COUNT, int(chunk_count))
        w.add_uint32(KEY_CHUNK_SIZE, int(chunk_size))
        for name, (sums, counts) in entries.items():
            sums, cnt = _normalize(sums, counts)
            w.add_tensor(name + SUM_SUFFIX, sums)
            w.add_tensor(name + COUNT_SUFFIX, cnt if cnt.size == 1 else cnt.reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return Path(path)


def _is_gguf(path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def read_imatrix(path: str | os.PathLike) -> dict[str, Entry]:
    """``{weight name: (in_sum2, counts)}`` from an imatrix GGUF or a legacy ``.dat`` file."""
    try:
        return _read_gguf(path) if _is_gguf(path) else _read_legacy(path)
    except (OSError, ValueError, struct.error) as e:
        raise CalibrationError(f"cannot read imatrix {path}: {e}") from None


def _read_gguf(path) -> dict[str, Entry]:
    from gguf import GGUFReader

    tensors = {t.name: np.array(t.data) for t in GGUFReader(path).tensors}
    out = {}
    for tname, sums in tensors.items():
        if tname.endswith(SUM_SUFFIX):
            name = tname[: -len(SUM_SUFFIX)]
            if name + COUNT_SUFFIX not in tensors:
                raise ValueError(f"{name} has in_sum2 but no counts")
            out[name] = _normalize(sums, tensors[name + COUNT_SUFFIX])
    return out


def _read_legacy(path) -> dict[str, Entry]:
    """Legacy layout: int32 n; n x (int32 len, name, int32 ncall, int32 nval, f32[nval]) ..."""
    data = Path(path).read_bytes()
    (n,), pos, out = struct.unpack_from("<i", data), 4, {}
    for _ in range(n):
        (ln,) = struct.unpack_from("<i", data, pos)
        name = data[pos + 4: pos + 4 + ln].decode()
        ncall, nval = struct.unpack_from("<ii", data, pos + 4 + ln)
        pos += 12 + ln
        vals = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        out[name] = _normalize(vals, max(ncall, 1))  # stored values are mean * ncall
    return out


def read_imatrix_metadata(path: str | os.PathLike) -> dict:
    """``{"datasets": [...], "chunk_count": int, "chunk_size": int}`` of an imatrix GGUF."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    get = lambda k, d: fields[k].contents() if k in fields else d  # noqa: E731
    return {"datasets": list(get(KEY_DATASETS, [])), "chunk_count": int(get(KEY_CHUNK_COUNT, 0)),
            "chunk_size": int(get(KEY_CHUNK_SIZE, 0))}


def imatrix_means(entries: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """Per-weight mean of x**2 (in_sum2 / counts), flat float32, as llama.cpp quantizes with.

    A matrix with count 0 gets ones, as llama-quantize does."""
    out = {}
    for name, (sums, counts) in entries.items():
        sums, cnt = _normalize(sums, counts)
        rows = sums.reshape(cnt.size, -1)
        safe = np.where(cnt > 0, cnt, 1.0)[:, None]
        out[name] = np.where(cnt[:, None] > 0, rows / safe, 1.0).astype(np.float32).ravel()
    return out


def load_imatrix_means(path: str | os.PathLike) -> dict[str, np.ndarray]:
    return imatrix_means(read_imatrix(path))
