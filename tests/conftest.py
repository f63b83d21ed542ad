"""Shared fixtures: tiny random models built in code, saved as HF directories."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
TEXT = SHARED / "data" / "text"

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)


def tiny_config(arch: str):
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(**TINY, tie_word_embeddings=False)
    if arch == "mistral":
        return tf.MistralConfig(**TINY)
    if arch == "qwen2":
        return tf.Qwen2Config(**TINY, tie_word_embeddings=True)
    if arch == "qwen3":
        return tf.Qwen3Config(**TINY, head_dim=16, tie_word_embeddings=True)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**TINY, head_dim=16, sliding_window=32)
    if arch == "phi3":
        return tf.Phi3Config(**TINY, pad_token_id=0, tie_word_embeddings=False)
    raise KeyError(arch)


def build_tiny(arch: str, out: Path, dtype=torch.bfloat16, seed: int = 0, shard_size: str | None = None):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch)).to(dtype).eval()
    kw = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(out, **kw)
    return model


TINY_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """arch -> (HF directory, sum(p.numel()) of the transformers model)."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for arch in TINY_ARCHS:
        model = build_tiny(arch, root / arch)
        out[arch] = (root / arch, sum(p.numel() for p in model.parameters()))
    return out


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"][0]
