"""The small runtime interface validation runs every model through: raw logits for a window of
token ids, and a stepwise decoder that :mod:`.sampler` drives. Token ids come from the
original's tokenizer; runtimes never tokenize.

- :class:`HFRuntime`: a transformers model (the original via ``load_full_model``, or a quantized
  HF directory via ``from_pretrained``).
- :class:`LlamaCppRuntime`: a GGUF through llama-cpp-python (``logits_all=True``).
"""
from __future__ import annotations

import abc
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import BackendError, ModelSourceError
from .sampler import SamplerSettings, sample_next


class Runtime(abc.ABC):
    """One model that scores and generates token ids."""

    name: str = "?"
    kind: str = "?"

    @abc.abstractmethod
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Raw logits [T, V] (float32) of ``ids`` in a fresh context."""

    @abc.abstractmethod
    def start(self, ids: Sequence[int]) -> torch.Tensor:
        """Begin decoding after ``ids`` (a fresh context); the last position's logits [V]."""

    @abc.abstractmethod
    def step(self, token: int) -> torch.Tensor:
        """Append one token; the new last position's logits [V]."""

    def logprobs(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.log_softmax(self.logits(ids), -1)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 settings: SamplerSettings = SamplerSettings(), seed: int = 0,
                 stop_ids: Iterable[int] = ()) -> list[int]:
        """New token ids (the stop token included when one ends the generation)."""
        rng, stop = np.random.default_rng(seed), set(stop_ids)
        history, out = list(prompt_ids), []
        logits = self.start(history)
        for _ in range(max_new_tokens):
            tok = sample_next(logits, history, settings, rng)
            out.append(tok)
            history.append(tok)
            if tok in stop or len(out) == max_new_tokens:
                break
            logits = self.step(tok)
        return out

    def close(self) -> None:
        pass


class HFRuntime(Runtime):
    kind = "transformers"

    def __init__(self, model, name: str = "original"):
        import inspect

        self.model, self.name = model.eval(), name
        self._device = next(model.parameters()).device
        self._past = None
        # transformers >= 5.24 calls the KV cache ``cache`` (``past_key_values`` is deprecated)
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype=torch.float32, device: str = "cpu") -> "HFRuntime":
        from transformers import AutoModelForCausalLM

        from ..quant_runner.ct_load import load_dequantized, packed_embeddings

        try:
            if packed_embeddings(path):      # transformers <= 5.24 cannot load a packed embedding
                return cls(load_dequantized(path, dtype=dtype, device=device), name=Path(path).name)
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, device_map=device)
        except ModelSourceError:
            raise
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds on a bad checkpoint
            raise ModelSourceError(f"{path}: transformers cannot load it ({e.__class__.__name__}: {e})") from None
        return cls(model, name=Path(path).name)

    @torch.no_grad()
    def _forward(self, ids: Sequence[int], past=None, cache: bool = True):
        x = torch.tensor([list(ids)], dtype=torch.long, device=self._device)
        out = self.model(input_ids=x, use_cache=cache, **({self._cache_kw: past} if past is not None else {}))
        return out.logits, getattr(out, self._cache_kw, None)

    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        return self._forward(ids, cache=False)[0][0].float().cpu()

    def start(self, ids: Sequence[int]) -> torch.Tensor:
        logits, self._past = self._forward(ids)
        return logits[0, -1].float().cpu()

    def step(self, token: int) -> torch.Tensor:
        logits, self._past = self._forward([token], self._past)
        return logits[0, -1].float().cpu()

    def close(self) -> None:
        self._past = None


class LlamaCppRuntime(Runtime):
    kind = "llama.cpp"

    def __init__(self, path: str | os.PathLike, n_ctx: int = 512, n_threads: int | None = None):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise BackendError("llama-cpp-python is not installed (pip install llama-cpp-python)") from None
        self.path, self.name, self.n_ctx = Path(path), Path(path).stem, int(n_ctx)
        threads = n_threads or os.cpu_count() or 1
        try:
            self.llm = Llama(str(path), logits_all=True, n_ctx=self.n_ctx, n_batch=self.n_ctx,
                             n_threads=threads, n_threads_batch=threads, verbose=False)
        except Exception as e:  # noqa: BLE001 - llama-cpp-python raises ValueError on load failure
            raise ModelSourceError(f"{path}: llama.cpp cannot load it ({e})") from None

    def _check(self, n: int) -> None:
        if n > self.n_ctx:
            raise BackendError(f"{self.name}: {n} tokens exceed the llama.cpp context of {self.n_ctx}")

    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        self._check(len(ids))
        self.llm.reset()
        self.llm.eval(list(ids))
        return torch.from_numpy(np.array(self.llm.scores[:len(ids)], dtype=np.float32))

    def start(self, ids: Sequence[int]) -> torch.Tensor:
        self._check(len(ids))
        self.llm.reset()
        self.llm.eval(list(ids))
        return self._last()

    def step(self, token: int) -> torch.Tensor:
        self._check(self.llm.n_tokens + 1)
        self.llm.eval([int(token)])
        return self._last()

    def _last(self) -> torch.Tensor:
        return torch.from_numpy(np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float32))

    def close(self) -> None:
        self.llm.close()


# -- artifacts -------------------------------------------------------------------------------------
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")


def artifact_path(artifact) -> Path:
    """A path, or a backend ``Artifact`` (its ``.path``)."""
    return Path(getattr(artifact, "path", artifact))


def artifact_gguf(path: Path) -> Path | None:
    """The GGUF file an artifact path stands for, if it is one."""
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        firsts = [g for g in ggufs if not _SHARD.match(g.name) or _SHARD.match(g.name)["i"] == "00001"]
        return firsts[0] if len(firsts) == 1 else None
    return None


def artifact_bytes(artifact) -> int:
    """Bytes of the weights: the GGUF (all shards), or an HF directory's weight files."""
    path = artifact_path(artifact)
    if getattr(artifact, "nbytes", 0):
        return int(artifact.nbytes)
    gguf = artifact_gguf(path)
    if gguf is not None:
        m = _SHARD.match(gguf.name)
        files = sorted(gguf.parent.glob(f"{m['stem']}-*-of-{m['n']}.gguf")) if m else [gguf]
    else:
        files = [f for f in path.iterdir() if f.suffix in (".safetensors", ".bin", ".pt")]
    return sum(f.stat().st_size for f in files)


def open_runtime(artifact, n_ctx: int = 512, n_threads: int | None = None,
                 dtype=torch.float32, device: str = "cpu") -> Runtime:
    """A GGUF -> :class:`LlamaCppRuntime`; an HF directory -> :class:`HFRuntime`."""
    path = artifact_path(artifact)
    if not path.exists():
        raise ModelSourceError(f"artifact {path} does not exist")
    gguf = artifact_gguf(path)
    if gguf is not None:
        return LlamaCppRuntime(gguf, n_ctx=n_ctx, n_threads=n_threads)
    if path.is_dir() and (path / "config.json").exists():
        return HFRuntime.from_pretrained(path, dtype=dtype, device=device)
    raise ModelSourceError(f"{path}: not a quantized model (expected a .gguf file or an HF directory)")
