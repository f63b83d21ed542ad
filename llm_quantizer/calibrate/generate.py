"""Model-generated calibration data: the model answers diverse seed prompts; duplicates and
repetitive answers are dropped. Sampling is done by a ``generate_fn`` handed in (the streaming
engine provides one; ``hf_generate_fn`` adapts a transformers model meanwhile).

``generate_fn(prompt_ids, max_new_tokens, temperature, top_p, seed) -> new_ids`` takes a batch of
prompts (token id lists) and returns, per prompt, only the newly generated token ids.
"""
from __future__ import annotations

import random
import sys
from typing import Callable, NamedTuple, Sequence

from ..errors import CalibrationError
from .repetition import jaccard, ngrams, repetition_stats
from .seed_prompts import SEED_PROMPTS
from .sources import Documents

GenerateFn = Callable[[list[list[int]], int, float, float, int], list[list[int]]]


class Prompt(NamedTuple):
    text: str       # the prompt as the model sees it (chat template applied), without a BOS string
    ids: list[int]
    plain: str      # the seed prompt itself


class GeneratedDocs(NamedTuple):
    docs: Documents        # prompt as seen by the model + response, one per kept sample
    pairs: list[dict]      # {"prompt", "response"} per kept sample
    stats: dict            # generated / kept / short / duplicate / repetitive


def render_prompt(tokenizer, prompt: str) -> Prompt:
    """A user turn through the chat template (generation prompt added) when the tokenizer has
    one; otherwise the prompt and a blank line, with BOS if the tokenizer adds it."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        text = prompt + "\n\n"
        ids = list(tokenizer(text)["input_ids"])
    bos = tokenizer.bos_token
    if bos and text.startswith(bos):
        text = text[len(bos):]
    return Prompt(text, ids, prompt)


class ResponseFilter:
    """Keeps a response unless it is short, a duplicate (exact after whitespace/case
    normalization, or n-gram Jaccard >= ``near_dup``) or repetitive (seq-rep-3 above
    ``max_repeat_share`` or distinct-1 below ``min_distinct_1``)."""

    def __init__(self, min_tokens: int = 16, max_repeat_share: float = 0.3, min_distinct_1: float = 0.2,
                 near_dup: float = 0.7, n: int = 3):
        self.min_tokens, self.max_repeat_share, self.min_distinct_1 = min_tokens, max_repeat_share, min_distinct_1
        self.near_dup, self.n = near_dup, n
        self.seen: set[str] = set()
        self.kept_grams: list[set] = []
        self.counts = {"generated": 0, "kept": 0, "short": 0, "duplicate": 0, "repetitive": 0}

    def check(self, ids: Sequence[int], text: str) -> str | None:
        """The reason to drop the response, or None (then it is recorded as kept)."""
        self.counts["generated"] += 1
        reason = self._reason(list(ids), text)
        self.counts[reason or "kept"] += 1
        return reason

    def _reason(self, ids: list[int], text: str) -> str | None:
        if len(ids) < self.min_tokens or not text.strip():
            return "short"
        stats = repetition_stats(ids, self.n)
        if stats.repeated_ngram_share > self.max_repeat_share or stats.distinct_1 < self.min_distinct_1:
            return "repetitive"
        key, grams = " ".join(text.lower().split()), set(ngrams(ids, self.n))
        if key in self.seen or any(jaccard(grams, g) >= self.near_dup for g in self.kept_grams):
            return "duplicate"
        self.seen.add(key)
        self.kept_grams.append(grams)
        return None


def generate_documents(tokenizer, generate_fn: GenerateFn, n_docs: int, max_new_tokens: int = 256,
                       temperature: float = 0.8, top_p: float = 0.95, seed: int = 0, *,
                       prompts: Sequence[str] | None = None, batch_size: int = 8,
                       max_attempts: int | None = None, response_filter: ResponseFilter | None = None) -> GeneratedDocs:
    """Sample until ``n_docs`` responses pass the filter (at most ``max_attempts`` samples,
    default ``4 * n_docs + 8``). Deterministic for a deterministic ``generate_fn``."""
    rng = random.Random(seed)
    rendered = [render_prompt(tokenizer, p) for p in (prompts or SEED_PROMPTS)]
    filt = response_filter or ResponseFilter()
    stop = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    limit = max_attempts or 4 * n_docs + 8
    order = _prompt_cycle(len(rendered), rng)
    texts, pairs = [], []
    with _progress(n_docs) as bar:
        while len(texts) < n_docs and filt.counts["generated"] < limit:
            batch = [rendered[next(order)] for _ in range(min(batch_size, n_docs - len(texts)))]
            outs = generate_fn([p.ids for p in batch], max_new_tokens, temperature, top_p, rng.randrange(2**31))
            for prompt, new_ids in zip(batch, outs):
                ids = _cut_at_stop(new_ids, stop)
                response = tokenizer.decode(ids, skip_special_tokens=True).strip()
                if filt.check(ids, response) is None:
                    texts.append(prompt.text + response)
                    pairs.append({"prompt": prompt.plain, "response": response})
                    bar.update(1)
    if not texts:
        raise CalibrationError(f"generation gave no usable calibration text ({_summary(filt.counts)})")
    source = {"generated": True, "n_docs": len(texts), "max_new_tokens": max_new_tokens,
              "temperature": temperature, "top_p": top_p, "seed": seed, **filt.counts}
    return GeneratedDocs(Documents(texts, [source]), pairs, dict(filt.counts))


def hf_generate_fn(model, pad_token_id: int | None = None) -> GenerateFn:
    """A ``generate_fn`` over a transformers model's ``.generate`` (left-padded batches;
    temperature 0 means greedy). Until the streaming engine provides one."""
    import torch

    cfg = model.generation_config
    pad = next((p for p in (pad_token_id, cfg.pad_token_id, _first(cfg.eos_token_id)) if p is not None), 0)

    def generate(prompt_ids, max_new_tokens, temperature, top_p, seed):
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompt_ids):
            ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p):] = 1
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, **sampling)
        return [row[width:].tolist() for row in out.cpu()]

    return generate


def _prompt_cycle(n: int, rng: random.Random):
    """Prompt indices forever: every prompt once per round, each round in a new shuffled order."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from order


def _cut_at_stop(ids: Sequence[int], stop: set[int]) -> list[int]:
    out = []
    for t in ids:
        if t in stop:
            break
        out.append(int(t))
    return out


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) and x else x


def _summary(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="generating calibration data", unit="doc", disable=not sys.stderr.isatty())
