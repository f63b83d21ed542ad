"""Perplexity and KL divergence to the original, in llama-perplexity's convention.

Windows: the eval text is tokenized once with the original's tokenizer (BOS in front when the
tokenizer adds one), cut into non-overlapping windows of ``ctx`` tokens, each window's first token
replaced by BOS when the tokenizer adds one. ``score="half"`` (the default, as llama-perplexity):
the logits at positions ``ctx//2 .. ctx-2`` score the next tokens (``ctx - 1 - ctx//2`` per
window); ``score="all"``: every position from 0.

The original's distribution is stored once (``--kl-divergence-base``-like, safetensors): per
scored token the log-probs of a kept set - the top ``k`` (32) and every token down to log-prob
``floor`` (-12; llama-perplexity itself ignores base log-probs below -16) - the log of the
remaining mass and the true token's log-prob. KL(P_orig || Q) = sum over the kept set of
p (log p - log q) + p_rest (log p_rest - log q_rest), the tail lumped into one outcome: a lower
bound on the full-vocabulary KLD, equal when nothing is left out (``floor=None`` and ``k >=
vocab``). Measured on SmolLM2-135M Q4_K_M (vocab 49k): top-32 alone reads 20 % low, floor -12
(~1,100 tokens kept per position) 1.2 % low. Same-top, PPL(base) and delta-p are exact.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import ConfigError
from ..io import atomic_path


@dataclass
class EvalWindows:
    ids: torch.Tensor            # [W, ctx] int64, BOS already in place
    first: int                   # logits[first:-1] score ids[first+1:]
    text_sha256: str = ""

    @property
    def ctx(self) -> int:
        return int(self.ids.shape[1])

    @property
    def scored_per_window(self) -> int:
        return self.ctx - 1 - self.first

    def describe(self) -> dict:
        return {"ctx": self.ctx, "windows": int(self.ids.shape[0]), "first_scored": self.first + 1,
                "scored_tokens": int(self.ids.shape[0]) * self.scored_per_window, "text_sha256": self.text_sha256}


def eval_windows(tokenizer, text: str, ctx: int = 512, max_tokens: Optional[int] = None,
                 score: str = "half") -> EvalWindows:
    from ..calibrate.tokenize import adds_bos

    if score not in ("half", "all"):
        raise ConfigError(f"score must be 'half' or 'all', not {score!r}")
    if ctx < 4:
        raise ConfigError(f"eval context {ctx} is too short")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
    ids = ([bos] if bos is not None else []) + ids
    n = len(ids) // ctx if max_tokens is None else min(len(ids), max_tokens) // ctx
    if n < 1:
        raise ConfigError(f"eval text has {len(ids)} tokens, fewer than one window of {ctx} (and max_tokens={max_tokens})")
    w = torch.tensor(ids[:n * ctx], dtype=torch.long).view(n, ctx)
    if bos is not None:
        w[:, 0] = bos
    return EvalWindows(w, ctx // 2 if score == "half" else 0, hashlib.sha256(text.encode()).hexdigest())


# -- the original's distribution, stored once ---------------------------------------------------
@dataclass
class BaseLogprobs:
    """Per scored token, the original's log-probs of a kept set of tokens (ragged rows, sorted
    descending: entry 0 is the argmax), the log of the remaining mass and the true token's."""

    windows: torch.Tensor        # [W, ctx] int64
    first: int
    offsets: torch.Tensor        # [S+1] int64: row r is tok/logp[offsets[r]:offsets[r+1]]
    tok: torch.Tensor            # [N] int32
    logp: torch.Tensor           # [N] float32
    rest_logp: torch.Tensor      # [S] float32 (-inf when nothing is left out)
    target_logp: torch.Tensor    # [S] float32
    meta: dict = field(default_factory=dict)

    @property
    def kept_mean(self) -> float:
        return float(self.offsets[-1]) / max(len(self.offsets) - 1, 1)

    def rows(self, w: int) -> slice:
        n = self.windows.shape[1] - 1 - self.first
        return slice(w * n, (w + 1) * n)

    def matches(self, ew: EvalWindows, keep: Optional[dict] = None) -> bool:
        same = self.first == ew.first and torch.equal(self.windows, ew.ids)
        return same and (keep is None or all(self.meta.get(k) == v for k, v in keep.items()))

    def save(self, path) -> Path:
        from safetensors.torch import save_file

        t = {k: getattr(self, k).contiguous() for k in ("windows", "offsets", "tok", "logp", "rest_logp", "target_logp")}
        meta = {"format": _FORMAT, "first": str(self.first), "meta": json.dumps(self.meta)}
        with atomic_path(path) as tmp:
            save_file(t, str(tmp), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path) -> "BaseLogprobs":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FORMAT:
                raise ConfigError(f"{path}: not a KL-divergence base file of this version")
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(t["windows"], int(meta["first"]), t["offsets"], t["tok"], t["logp"], t["rest_logp"],
                   t["target_logp"], json.loads(meta.get("meta", "{}")))


_FORMAT = "llm-quantizer-kld-base/2"


def _bar(items, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="window", leave=False, disable=None)


def _scored_logp(logits: torch.Tensor, first: int) -> torch.Tensor:
    return torch.log_softmax(logits[first:-1].float(), -1)


def keep_set(logp: torch.Tensor, k: int = 32, floor: Optional[float] = -12.0, max_kept: int = 8192):
    """Per row: the top ``k`` tokens and every token with log-prob >= ``floor`` (at most
    ``max_kept``), sorted descending -> (counts [S], tok [N], logp [N], rest [S])."""
    vocab = logp.shape[1]
    width = min(max(k, 1) if floor is None else max_kept, vocab)
    lp, idx = torch.topk(logp, width, dim=-1)
    keep = (torch.arange(width) < min(k, width)).expand_as(lp).clone()
    if floor is not None:
        keep |= lp >= floor
    counts = keep.sum(1)
    masked = logp.scatter(1, idx, torch.where(keep, float("-inf"), lp))
    rest = masked.logsumexp(-1)
    return counts, idx[keep].int(), lp[keep], rest


class BaseBuilder:
    """Collects the original's distribution window by window (see :func:`keep_set`); the
    engine's divergence observer feeds it logits it computed itself."""

    def __init__(self, first: int, k: int = 32, floor: Optional[float] = -12.0, max_kept: int = 8192):
        self.first, self.k, self.floor, self.max_kept = first, k, floor, max_kept
        self.parts: dict[str, list] = {"n": [], "tok": [], "lp": [], "rest": [], "tgt": []}
        self.windows: list[torch.Tensor] = []

    def add(self, ids: torch.Tensor, logits: torch.Tensor) -> None:
        ids = ids.cpu()
        logp = _scored_logp(logits.cpu(), self.first)
        for key, v in zip(("n", "tok", "lp", "rest"), keep_set(logp, self.k, self.floor, self.max_kept)):
            self.parts[key].append(v)
        self.parts["tgt"].append(logp.gather(1, ids[self.first + 1:, None])[:, 0])
        self.windows.append(ids)

    def build(self, meta: Optional[dict] = None) -> BaseLogprobs:
        if not self.windows:
            raise ConfigError("no windows for the KL-divergence base")
        counts = torch.cat(self.parts["n"])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
        meta = {"k": self.k, "floor": self.floor, "max_kept": self.max_kept, **(meta or {})}
        return BaseLogprobs(torch.stack(self.windows), self.first, offsets, torch.cat(self.parts["tok"]),
                            torch.cat(self.parts["lp"]), torch.cat(self.parts["rest"]),
                            torch.cat(self.parts["tgt"]), meta)


def compute_base(rt, ew: EvalWindows, k: int = 32, floor: Optional[float] = -12.0, max_kept: int = 8192,
                 on_window: Optional[Callable] = None) -> BaseLogprobs:
    """Run the original over every window and keep its distribution (see :func:`keep_set`)."""
    builder = BaseBuilder(ew.first, k, floor, max_kept)
    for w, ids in enumerate(_bar(ew.ids, f"original {getattr(rt, 'name', '')}")):
        logits = rt.logits(ids.tolist())
        if on_window:
            on_window(w, ids, logits)
        builder.add(ids, logits)
    return builder.build({"model": getattr(rt, "name", "?")})


# -- one quantized model against the base --------------------------------------------------------
def window_divergence(base: BaseLogprobs, w: int, logits: torch.Tensor) -> dict[str, np.ndarray]:
    """Per scored token of window ``w``: kld, nll, nll_base, same_top, p_diff."""
    sl = base.rows(w)
    logq = _scored_logp(logits, base.first)
    lo, hi = int(base.offsets[sl.start]), int(base.offsets[sl.stop])
    tok = base.tok[lo:hi].long()
    if hi > lo and int(tok.max()) >= logq.shape[1]:
        raise ConfigError(f"vocabulary mismatch: the original has token ids up to {int(tok.max())}, "
                          f"the quantized model only {logq.shape[1]} logits")
    counts = base.offsets[sl.start + 1:sl.stop + 1] - base.offsets[sl.start:sl.stop]
    row = torch.repeat_interleave(torch.arange(len(counts)), counts)
    lp, lq = base.logp[lo:hi].double(), logq[row, tok].double()
    kld = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, row, lp.exp() * (lp - lq))
    rest = base.rest_logp[sl].double()
    if torch.isfinite(rest).any():
        q_rest = logq.index_put((row, tok), torch.tensor(float("-inf"))).logsumexp(-1).double()
        kld += torch.where(torch.isfinite(rest), rest.exp() * (rest - q_rest), torch.zeros_like(rest))
    target = base.windows[w, base.first + 1:]
    nll = -logq.gather(1, target[:, None])[:, 0].double()
    nll_base = -base.target_logp[sl].double()
    top = base.tok[base.offsets[sl.start:sl.stop]].long()
    return {"kld": kld.numpy(), "nll": nll.numpy(), "nll_base": nll_base.numpy(),
            "same_top": (logq.argmax(1) == top).numpy(),
            "p_diff": (torch.exp(-nll) - torch.exp(-nll_base)).numpy()}


def evaluate(rt, base: BaseLogprobs, on_window: Optional[Callable] = None) -> dict[str, np.ndarray]:
    """Every window of ``base`` through ``rt``; the per-token arrays concatenated."""
    acc: dict[str, list] = {}
    for w, ids in enumerate(_bar(base.windows, f"eval {getattr(rt, 'name', '')}")):
        logits = rt.logits(ids.tolist())
        if on_window:
            on_window(w, ids, logits)
        for key, v in window_divergence(base, w, logits).items():
            acc.setdefault(key, []).append(v)
    return {k: np.concatenate(v) for k, v in acc.items()}


def _mean_unc(x: np.ndarray) -> tuple[float, float]:
    """llama-perplexity's mean and its standard error."""
    n, m = len(x), float(np.mean(x))
    var = float(np.mean(np.square(x))) - m * m
    return m, (float(np.sqrt(var / (n - 1))) if var > 0 and n > 10 else 0.0)


def summarize(t: dict[str, np.ndarray]) -> dict:
    """The statistics llama-perplexity prints for ``--kl-divergence``."""
    kld, nll, nll_b = t["kld"], t["nll"], t["nll_base"]
    m_kld, u_kld = _mean_unc(kld)
    m_nll, u_nll = _mean_unc(nll)
    m_b, u_b = _mean_unc(nll_b)
    top = float(np.mean(t["same_top"]))
    n = len(kld)
    pct = {f"p{q:g}": float(np.percentile(kld, q)) for q in (90, 95, 99, 99.9)}
    return {"tokens": n, "ppl": float(np.exp(m_nll)), "ppl_unc": float(np.exp(m_nll) * u_nll),
            "ppl_base": float(np.exp(m_b)), "ppl_base_unc": float(np.exp(m_b) * u_b),
            "ln_ppl_ratio": m_nll - m_b, "kld_mean": m_kld, "kld_mean_unc": u_kld,
            "kld_median": float(np.median(kld)), **{f"kld_{k}": v for k, v in pct.items()},
            "kld_max": float(kld.max()), "same_top_pct": 100 * top,
            "same_top_pct_unc": 100 * float(np.sqrt(top * (1 - top) / max(n - 1, 1))),
            "delta_p_mean_pct": 100 * float(np.mean(t["p_diff"])),
            "delta_p_rms_pct": 100 * float(np.sqrt(np.mean(np.square(t["p_diff"]))))}


def perplexity(nll: np.ndarray) -> float:
    return float(np.exp(np.mean(nll)))
