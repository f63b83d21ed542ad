"""Tiny random HF models with a real tokenizer, for GGUF tests (built in code, no downloads)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from conftest import tiny_config

WORDS = ("the of and to in is was that for on with as by at from his her they this which be had not are "
         "but have one all were when there been would more their what about said time into only some "
         "could other then them these two may first over after water long little very world people").split()
CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=12)).capitalize() + f" {i}." for i in range(n)]


def save_bpe_tokenizer(out: Path, vocab_size: int = 300) -> None:
    """A byte-level BPE (GPT-2 style) tokenizer with chat specials, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT
    fast.save_pretrained(out)


def save_spm_tokenizer(out: Path, vocab_size: int = 320) -> None:
    """A SentencePiece BPE model with byte fallback (Gemma's id layout: pad 0, eos 1, bos 2, unk 3)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=buf, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                                   add_dummy_prefix=False, hard_vocab_limit=False, minloglevel=2)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "tokenizer.model").write_bytes(buf.getvalue())


def build_model(arch: str, out: Path, vocab_size: int = 320, tokenizer: str = "bpe", scale: float = 4.0,
                seed: int = 0, **overrides):
    """A float32 tiny ``arch`` model with ``vocab_size`` rows, 2-D weights scaled up so logits spread."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(arch)
    cfg.vocab_size = vocab_size
    if arch == "gemma3":
        cfg.query_pre_attn_scalar = cfg.head_dim        # llama.cpp scales by 1/sqrt(head_dim)
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 2, 1, 0
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(scale)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)     # non-trivial norms expose a missing offset
    model.save_pretrained(out)
    (save_spm_tokenizer if tokenizer == "spm" else save_bpe_tokenizer)(out)
    return model


def token_ids(n: int, vocab: int, seed: int = 1) -> list[int]:
    return np.random.default_rng(seed).integers(3, vocab, size=n).tolist()


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def gguf_logits(path, ids: list[int], n_ctx: int = 256) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def mean_kl(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(test))."""
    def log_softmax(x):
        x = np.asarray(x, dtype=np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(test)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())
