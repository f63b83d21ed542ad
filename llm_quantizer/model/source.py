"""The one interface every model source implements: headers and config without weights,
then one tensor at a time."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Iterator

import torch

from .archs import LayerMap, get_layer_map


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor, named and shaped as in the Hugging Face model ([out, in] for linears)."""

    name: str
    shape: tuple[int, ...]
    dtype: str           # storage type: "BF16", "F16", "F32", or a GGUF type such as "Q4_1"
    nbytes: int          # bytes as stored
    file: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class ModelSource(abc.ABC):
    """A model we can read lazily: config, tensor headers, then tensors one by one."""

    kind: str = "?"

    def __init__(self, ref: str):
        self.ref = ref

    # -- metadata (no weights) ---------------------------------------------------------------
    @property
    @abc.abstractmethod
    def model_type(self) -> str: ...

    @property
    @abc.abstractmethod
    def num_layers(self) -> int: ...

    @cached_property
    @abc.abstractmethod
    def tensors(self) -> dict[str, TensorInfo]:
        """Stored tensors by HF name, in file order."""

    @property
    @abc.abstractmethod
    def config(self):
        """The transformers ``PretrainedConfig`` of the model."""

    @abc.abstractmethod
    def tokenizer(self):
        """The transformers tokenizer of the model."""

    @property
    def name(self) -> str:
        return self.ref

    @cached_property
    def layer_map(self) -> LayerMap:
        return get_layer_map(self.model_type)

    @property
    def tied_embeddings(self) -> bool:
        return f"{self.layer_map.lm_head_path}.weight" not in self.tensors

    # -- weights -----------------------------------------------------------------------------
    @abc.abstractmethod
    def load(self, name: str) -> torch.Tensor:
        """One tensor, HF layout; float tensors keep their stored float dtype (GGUF: float32)."""

    def iter_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for n in (self.tensors if names is None else names):
            yield n, self.load(n)

    def layer_tensor_names(self, i: int) -> list[str]:
        prefix = self.layer_map.layer_prefix(i)
        return [n for n in self.tensors if n.startswith(prefix)]

    def load_layer(self, i: int) -> dict[str, torch.Tensor]:
        """The state dict of decoder layer ``i``, keys relative to the layer."""
        prefix = self.layer_map.layer_prefix(i)
        return {n[len(prefix):]: self.load(n) for n in self.layer_tensor_names(i)}

    def gguf_name(self, hf_name: str) -> str | None:
        return self.layer_map.gguf_name(hf_name, self.num_layers)
