"""Tiny models for validation tests: an HF llama with a real BPE tokenizer and chat template
(gguf_writer.tiny), a perturbed copy, and fake runtimes with scripted logits."""
from __future__ import annotations

from pathlib import Path

import torch

from gguf_writer.tiny import build_model  # noqa: F401 - re-exported
from llm_quantizer.validate import Runtime

EVAL_TEXT = " ".join(f"The river {w} flows past the old mill and the town of {w}." for w in
                     "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split() * 6)


def write_eval(tmp: Path, text: str = EVAL_TEXT) -> Path:
    p = tmp / "eval.txt"
    p.write_text(text)
    return p


def perturbed_copy(src_dir: Path, out: Path, scale: float = 0.05, seed: int = 1) -> Path:
    """The same model with Gaussian noise on every 2-D weight (the tokenizer copied along)."""
    import shutil

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    model.save_pretrained(out)
    for f in src_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "chat_template.jinja":
            shutil.copy(f, out / f.name)
    return out


class ScriptedRuntime(Runtime):
    """Logits from a function of the context: ``fn(ids) -> Tensor[V]`` for the next token."""

    kind = "fake"

    def __init__(self, fn, vocab: int, name: str = "fake"):
        self.fn, self.vocab, self.name, self._ids = fn, vocab, name, []

    def logits(self, ids):
        ids = list(ids)
        return torch.stack([self.fn(ids[:i + 1]) for i in range(len(ids))])

    def start(self, ids):
        self._ids = list(ids)
        return self.fn(self._ids)

    def step(self, token):
        self._ids.append(int(token))
        return self.fn(self._ids)


def looping_fn(vocab: int = 40, period: int = 4, strength: float = 3.0, seed: int = 0):
    """Greedy decoding cycles through ``period`` tokens; other tokens sit a little below."""
    base = torch.rand(vocab, generator=torch.Generator().manual_seed(seed)) * 2.0

    def fn(ids):
        x = base.clone()
        x[(ids[-1] + 1) % period + 5] = strength
        return x
    return fn


def wandering_fn(vocab: int = 40, seed: int = 0):
    """Greedy decoding that rarely repeats: the favourite depends on a hash of the last 3 tokens."""
    def fn(ids):
        h = hash(tuple(ids[-3:])) % (2 ** 31)
        x = torch.rand(vocab, generator=torch.Generator().manual_seed(h + seed)) * 2.0
        return x
    return fn
