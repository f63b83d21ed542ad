"""An already-loaded transformers model as a ModelSource (the Python API and the MAQ facade)."""
from __future__ import annotations

from functools import cached_property

import torch

from .source import ModelSource, TensorInfo

_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


class InMemorySource(ModelSource):
    kind = "hf"

    def __init__(self, model, tokenizer=None, name: str | None = None):
        super().__init__(name or getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.model, self._tokenizer = model, tokenizer

    @property
    def name(self) -> str:
        return str(self.ref).rstrip("/").split("/")[-1] or "model"

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def config(self):
        return self.model.config

    def tokenizer(self):
        if self._tokenizer is None:
            from ..errors import ModelSourceError

            raise ModelSourceError("this in-memory model was given without a tokenizer")
        return self._tokenizer

    @cached_property
    def _params(self) -> dict[str, torch.Tensor]:
        seen, out = set(), {}
        for name, p in self.model.named_parameters(remove_duplicate=False):
            if id(p) in seen:          # tied weights: stored once, like save_pretrained
                continue
            seen.add(id(p))
            out[name] = p
        return out

    @cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        return {n: TensorInfo(n, tuple(p.shape), _DTYPES.get(p.dtype, str(p.dtype)), p.numel() * p.element_size(),
                              "<memory>") for n, p in self._params.items()}

    def load(self, name: str) -> torch.Tensor:
        return self._params[name].detach().to("cpu").clone()
