"""Write a model source as an F32 / F16 / BF16 GGUF that llama.cpp loads.

A state machine on gguf-py's ``GGUFWriter``: metadata and every tensor's info first (shapes are
known from the headers), then the tensor data streamed one tensor at a time from the source, so
peak memory is one tensor. Files appear atomically: they are written in a temp folder next to
the target and renamed into place (split shards first, the first shard last).
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from pathlib import Path

import gguf
import numpy as np

from ..errors import ConfigError, OutputError
from ..io import ensure_dir
from .metadata import write_metadata
from .tensors import OUT_TYPES, TensorJob, tensor_jobs

FILE_TYPES = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
              "BF16": gguf.LlamaFileType.MOSTLY_BF16}


def check_out_type(out_type: str) -> str:
    key = str(out_type).strip().upper()
    if key not in OUT_TYPES:
        raise ConfigError(f"GGUF output type {out_type!r} must be one of {', '.join(OUT_TYPES)}")
    return key


def _open(source):
    from ..model import ModelSource, open_source

    return source if isinstance(source, ModelSource) else open_source(source)


def gguf_arch_name(source) -> str:
    if getattr(source, "reader", None) is not None:
        return source.arch
    return gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, source.layer_map.gguf_arch)]


def write_gguf(source, path: str | os.PathLike, out_type: str = "F16", *, split_max_size: int = 0,
               split_max_tensors: int = 0, progress: bool | None = None) -> list[Path]:
    """Write ``source`` (a ModelSource or anything ``open_source`` takes) to ``path``.

    2-D tensors are stored as ``out_type`` (F32, F16 or BF16), 1-D tensors as F32. With
    ``split_max_size`` (bytes) or ``split_max_tensors``, shards ``<stem>-0000i-of-0000n.gguf``
    are written as llama.cpp's ``gguf-split`` does. Returns the written files, first shard first."""
    source, out_type, path = _open(source), check_out_type(out_type), Path(path)
    jobs = tensor_jobs(source, out_type)
    with _staging(path) as tmp:
        w = gguf.GGUFWriter(tmp / path.name, gguf_arch_name(source), split_max_size=int(split_max_size),
                            split_max_tensors=int(split_max_tensors))
        write_metadata(w, source, FILE_TYPES[out_type])
        for job in jobs:
            w.add_tensor_info(job.name, job.shape, np.dtype(np.float32), job.nbytes, raw_dtype=job.qtype)
        names = w.format_shard_names(tmp / path.name)
        try:
            _stream(w, jobs, progress)
        finally:
            w.close()
        return _publish(names, path.parent)


def _stream(w: gguf.GGUFWriter, jobs: list[TensorJob], progress: bool | None) -> None:
    from tqdm.auto import tqdm

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for job in tqdm(jobs, desc="GGUF tensors", unit="tensor", disable=None if progress is None else not progress):
        data = job.load()
        if data.nbytes != job.nbytes or tuple(data.shape) != job.shape:
            raise OutputError(f"{job.name}: loaded {tuple(data.shape)} does not match its header {job.shape}")
        w.write_tensor_data(data)
    for f in w.fout or []:
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _staging(path: Path):
    ensure_dir(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise OutputError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(names: list[Path], dest: Path) -> list[Path]:
    finals = [dest / n.name for n in names]
    for src, dst in list(zip(names, finals))[::-1]:     # first shard last: its presence = complete
        os.replace(src, dst)
    return finals


def shard_files(path: str | os.PathLike) -> list[Path]:
    """The files of the GGUF written to ``path``: itself, or its split shards in order."""
    path = Path(path)
    if path.is_file():
        return [path]
    firsts = sorted(path.parent.glob(f"{glob.escape(path.stem)}-00001-of-*.gguf"))
    if not firsts:
        return [path]
    count = int(firsts[-1].stem.rsplit("-of-", 1)[1])
    return [path.with_name(gguf.SHARD_NAME_FORMAT.format(path.stem, i + 1, count)) for i in range(count)]


def gguf_is_complete(path: str | os.PathLike, source, out_type: str = "F16") -> bool:
    """Whether ``path`` already holds what :func:`write_gguf` would write (names, types, file type)."""
    source, out_type = _open(source), check_out_type(out_type)
    want = {j.name: j.qtype for j in tensor_jobs(source, out_type)}
    got, file_type = {}, None
    try:
        for f in shard_files(path):
            r = gguf.GGUFReader(f)
            got.update({t.name: t.tensor_type for t in r.tensors})
            if gguf.Keys.General.FILE_TYPE in r.fields:
                file_type = int(r.fields[gguf.Keys.General.FILE_TYPE].contents())
    except (OSError, ValueError, IndexError, KeyError):
        return False
    return got == want and file_type == int(FILE_TYPES[out_type])
