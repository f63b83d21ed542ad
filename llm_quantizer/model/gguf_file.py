"""A GGUF file as a model source: tensors dequantized with gguf-py, config and tokenizer
from its metadata (through transformers' GGUF support)."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelSourceError
from .source import ModelSource, TensorInfo

# general.architecture -> HF model_type, where they differ
_ARCH_TO_MODEL_TYPE = {"gemma3": "gemma3_text"}


def open_gguf_reader(path: Path):
    import gguf

    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelSourceError(f"{path}: cannot read: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise ModelSourceError(f"{path}: not a GGUF file (bad magic {magic!r})")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf-py raises ValueError/struct errors/IndexError
        raise ModelSourceError(f"{path}: corrupt GGUF file ({e.__class__.__name__}: {e})") from None


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's converter q/k row permutation."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFSource(ModelSource):
    kind = "gguf"

    def __init__(self, path: str | Path):
        super().__init__(str(path))
        self.path = Path(path)
        self.reader = open_gguf_reader(self.path)

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            return default
        v = f.contents()
        return v

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def arch(self) -> str:
        a = self.field("general.architecture")
        if not a:
            raise ModelSourceError(f"{self.path}: GGUF has no general.architecture")
        return a

    @property
    def model_type(self) -> str:
        if self.arch == "llama" and "mistral" in str(self.field("general.name", "")).lower():
            return "mistral"
        return _ARCH_TO_MODEL_TYPE.get(self.arch, self.arch)

    @property
    def num_layers(self) -> int:
        n = self.field(f"{self.arch}.block_count")
        if n is None:
            raise ModelSourceError(f"{self.path}: GGUF has no {self.arch}.block_count")
        return int(n)

    @cached_property
    def _gguf_to_hf(self) -> dict[str, str]:
        """Reverse of the layer map's HF -> GGUF names, built from the expected HF names."""
        lm = self.layer_map
        names = [f"{p}.weight" for p in (lm.embed_path, lm.final_norm_path, lm.lm_head_path)]
        rel = list(lm.stored_linears()) + list(lm.norms.values())
        for i in range(self.num_layers):
            names += [f"{lm.layer_prefix(i)}{r}.{s}" for r in rel for s in ("weight", "bias")]
        out = {}
        for hf in names:
            g = self.gguf_name(hf)
            if g:
                out[g] = hf
        return out

    @cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        out = {}
        mapping = self._gguf_to_hf
        for t in self.reader.tensors:
            hf = mapping.get(t.name)
            if hf is None:
                if t.name.startswith("rope_"):   # precomputed rope factors, not weights
                    continue
                raise ModelSourceError(f"{self.path}: tensor {t.name!r} has no Hugging Face name for {self.arch}")
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            out[hf] = TensorInfo(hf, shape, t.tensor_type.name, int(t.n_bytes), str(self.path))
        return out

    @cached_property
    def _by_hf(self):
        m = self._gguf_to_hf
        return {m[t.name]: t for t in self.reader.tensors if t.name in m}

    @cached_property
    def _checkpoint_meta(self) -> dict:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        try:
            return load_gguf_checkpoint(str(self.path), return_tensors=False)
        except (ValueError, NotImplementedError) as e:
            raise ModelSourceError(f"{self.path}: transformers cannot read this GGUF's metadata: {e}") from None

    @cached_property
    def config(self):
        from transformers import AutoConfig

        cfg = dict(self._checkpoint_meta["config"])
        model_type = cfg.pop("model_type")
        cfg.pop("_model_name_or_path", None)
        return AutoConfig.for_model(model_type, **cfg)

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path.parent), gguf_file=self.path.name)

    def load(self, name: str) -> torch.Tensor:
        import gguf

        t = self._by_hf[name]
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        lm = self.layer_map
        if lm.gguf_permute_qk and t.name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = self.config.num_attention_heads
            if t.name.endswith("attn_k.weight"):
                heads = getattr(self.config, "num_key_value_heads", None) or heads
            w = _unpermute(w, heads)
        if lm.norm_offset and t.name.endswith("norm.weight"):
            w = w - lm.norm_offset
        return torch.from_numpy(np.array(w, dtype=np.float32, order="C"))
