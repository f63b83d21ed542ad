"""A compressed-tensors ``pack-quantized`` checkpoint, written as the layers finish.

States: ``open`` (staging folder ``.<name>.tmp-<pid>`` next to the final one) -> layers added
(tensors buffered up to ``max_shard_bytes``, then flushed to a shard) -> ``finish`` (non-layer
tensors, config.json, index, extra files, then one rename onto the final folder) or ``abort``.
A crash or Ctrl-C leaves only the hidden staging folder, never a half-written final one.

Tensor layout per quantized linear (compressed-tensors 0.20 ``PackedQuantizationCompressor``):
``weight_packed`` int32 [out, ceil(in * bits / 32)] (``pack_to_int32`` of the signed codes),
``weight_scale`` [out, G] in the checkpoint dtype, ``weight_shape`` int64 [2], and for
asymmetric schemes ``weight_zero_point`` int32 packed along the output dim.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import OutputError
from ..io import write_json
from .schemes import CT_DTYPE, QuantizedLinear

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def pack_linear(module: str, q: QuantizedLinear) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of one quantized linear."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    bits = q.args.bits
    out = {f"{module}.weight_packed": pack_to_int32(q.codes.to(torch.int8), bits).contiguous(),
           f"{module}.weight_scale": q.scales.to(getattr(torch, CT_DTYPE)).contiguous(),
           f"{module}.weight_shape": torch.tensor(list(q.codes.shape), dtype=torch.int64)}
    if not q.args.symmetric:
        out[f"{module}.weight_zero_point"] = pack_to_int32(q.zeros.to(torch.int8), bits, packed_dim=0).contiguous()
    return out


class CompressedTensorsWriter:
    """Implements the passes' ``LayerSink``; call ``finish`` once the engine is done."""

    def __init__(self, final_dir: str | os.PathLike, max_shard_bytes: int = 2 << 30,
                 dtype: torch.dtype = getattr(torch, CT_DTYPE)):
        self.final = Path(final_dir)
        self.staging = self.final.parent / f".{self.final.name}.tmp-{os.getpid()}"
        self.max_shard_bytes, self.dtype = max_shard_bytes, dtype
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            self.staging.mkdir(parents=True)
        except OSError as e:
            raise OutputError(f"cannot create {self.staging}: {e.strerror or e}") from None
        self._buf: dict[str, torch.Tensor] = {}
        self._buf_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        self.state = "open"

    # -- LayerSink ---------------------------------------------------------------------------
    def add_layer(self, prefix: str, tensors: dict[str, torch.Tensor],
                  quantized: dict[str, QuantizedLinear]) -> None:
        self.add_tensors(tensors)
        for module, q in quantized.items():
            self.add_quantized(module, q)

    def add_quantized(self, module: str, q: QuantizedLinear) -> None:
        """One quantized module (a linear or an embedding: compressed-tensors packs both alike)."""
        self._add(pack_linear(module, q))

    def add_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """16-bit tensors (norms, biases, kept linears, embeddings): cast to the checkpoint dtype."""
        self._add({k: (v.to(self.dtype) if v.is_floating_point() else v) for k, v in tensors.items()})

    def _add(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.state != "open":
            raise RuntimeError(f"writer is {self.state}")
        for k, v in tensors.items():
            if k in self._buf or any(k in keys for _, keys in self._shards):
                raise ValueError(f"tensor {k} written twice")
            self._buf[k] = v.detach().cpu().contiguous()
            self._buf_bytes += v.numel() * v.element_size()
        if self._buf_bytes >= self.max_shard_bytes:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._buf:
            return
        path = self.staging / f".part-{len(self._shards):05d}.safetensors"
        save_file(self._buf, str(path), metadata={"format": "pt"})
        self.total_bytes += self._buf_bytes
        self._shards.append((path, list(self._buf)))
        self._buf, self._buf_bytes = {}, 0

    # -- finish ------------------------------------------------------------------------------
    def finish(self, config: dict, extras: Optional[Callable[[Path], None]] = None) -> Path:
        """Name the shards, write config.json (and ``extras(staging)``), then move into place."""
        try:
            self._flush()
            self._name_shards()
            write_json(self.staging / "config.json", config)
            if extras is not None:
                extras(self.staging)
            self._replace_final()
        except BaseException:
            self.abort()
            raise
        self.state = "finished"
        return self.final

    def _name_shards(self) -> None:
        n = len(self._shards)
        if n == 1:
            self._shards[0][0].rename(self.staging / SINGLE_FILE)
            return
        weight_map = {}
        for i, (path, keys) in enumerate(self._shards):
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.rename(self.staging / name)
            weight_map.update({k: name for k in keys})
        write_json(self.staging / INDEX_FILE, {"metadata": {"total_size": self.total_bytes},
                                               "weight_map": dict(sorted(weight_map.items()))})

    def _replace_final(self) -> None:
        old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.staging, self.final)
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.state = "aborted"


def checkpoint_config(source, quantization_config: dict, dtype: str = CT_DTYPE) -> dict:
    """config.json of the quantized model: the source's config in ``dtype`` plus the quant config."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = source.config.to_dict()
    cfg["dtype"] = dtype
    cfg.pop("torch_dtype", None)
    cfg.pop("_name_or_path", None)
    if not cfg.get("architectures") and cfg.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        cfg["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[cfg["model_type"]]]
    cfg["quantization_config"] = quantization_config
    return cfg


