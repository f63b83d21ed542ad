"""A Hugging Face model directory: config.json plus single or sharded safetensors."""
from __future__ import annotations

import json
import struct
from functools import cached_property
from pathlib import Path

import torch

from ..errors import ModelSourceError
from .source import ModelSource, TensorInfo

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header without reading tensor data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ModelSourceError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(_MAX_HEADER, size - 8):
                raise ModelSourceError(f"{path}: corrupt safetensors header (length {n} for a {size}-byte file)")
            header = json.loads(f.read(n))
    except OSError as e:
        raise ModelSourceError(f"{path}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"{path}: corrupt safetensors header ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise ModelSourceError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_len = size - 8 - n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = meta["dtype"], tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
            numel = 1
            for d in shape:
                numel *= d
            ok = end - begin == numel * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise ModelSourceError(f"{path}: corrupt safetensors header entry for {name!r}") from None
        if not ok:
            raise ModelSourceError(f"{path}: corrupt safetensors header: {name!r} offsets do not match its shape")
        if end > data_len:
            raise ModelSourceError(f"{path}: truncated safetensors file ({name!r} ends at byte {end} of {data_len})")
        out[name] = TensorInfo(name, shape, dtype, end - begin, str(path))
    return out


class HFDirSource(ModelSource):
    kind = "hf"

    def __init__(self, path: str | Path):
        super().__init__(str(path))
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise ModelSourceError(f"{self.path}: no config.json, not a Hugging Face model directory")
        if not self._weight_files():
            raise ModelSourceError(f"{self.path}: no *.safetensors weights found (only safetensors is read)")

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def raw_config(self) -> dict:
        try:
            return json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelSourceError(f"{self.path / 'config.json'}: unreadable ({e.__class__.__name__})") from None

    @property
    def model_type(self) -> str:
        cfg = self.raw_config
        mt = cfg.get("model_type")
        if not mt:
            raise ModelSourceError(f"{self.path / 'config.json'}: no model_type")
        return mt

    @property
    def num_layers(self) -> int:
        cfg = self.raw_config.get("text_config", self.raw_config)
        return int(cfg["num_hidden_layers"])

    @cached_property
    def config(self):
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(self.path)
        return getattr(cfg, "text_config", None) or cfg

    def tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path)
        except Exception as e:  # noqa: BLE001 - transformers raises many types here
            raise ModelSourceError(f"{self.path}: no usable tokenizer ({e.__class__.__name__})") from None

    def _weight_files(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, KeyError, ValueError):
                raise ModelSourceError(f"{index}: corrupt safetensors index") from None
            files = sorted(set(wm.values()))
            missing = [f for f in files if not (self.path / f).is_file()]
            if missing:
                raise ModelSourceError(f"{index}: shard {missing[0]} is missing")
            return [self.path / f for f in files]
        return sorted(self.path.glob("*.safetensors"))

    @cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        out: dict[str, TensorInfo] = {}
        for f in self._weight_files():
            out.update(read_safetensors_header(f))
        return out

    def load(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        info = self.tensors[name]
        with safe_open(info.file, framework="pt") as f:
            return f.get_tensor(name)
