"""``--rounding gptq`` for the gguf backend: llama.cpp picks every tensor's type (its mixes, its
fallbacks for rows that are not a multiple of 256), then the tensors whose type has one of our
encoders (``llm_quantizer.kquants``) are re-encoded with GPTQ error feedback and written over
llama.cpp's bytes in place. Same types, same offsets, same file size; the rest of the file
(metadata, embeddings, output, norms) is llama.cpp's.

Hessians come from one streaming engine pass with quantized outputs propagated layer to layer
(the layer's linears all see the unquantized layer's inputs, as GPTQ without true-sequential).
The weights encoded are the F16 intermediate's (what llama.cpp quantized), rows permuted as the
GGUF stores them (q/k of llama-style models).
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

from ..engine.observers.activations import shared_inputs
from ..engine.observers.base import Observer
from ..io import atomic_path
from ..kquants import get_codec, has_codec
from ..kquants.feedback import feedback_encode
from ..quant.gptq import HessianAccumulator

log = logging.getLogger(__name__)


def gguf_tensor_table(path) -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """GGUF name -> (ggml type name, shape [rows, cols], absolute data offset, bytes)."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    return {t.name: (t.tensor_type.name, tuple(int(x) for x in reversed(t.shape.tolist())),
                     int(t.data_offset), int(t.n_bytes)) for t in r.tensors}


def _row_perm(source, gguf_name: str, rows: int) -> Optional[torch.Tensor]:
    """GGUF row r holds HF row perm[r] (llama.cpp's q/k permutation), or None."""
    import re

    from ..gguf_writer.hparams import n_kv_heads
    from ..gguf_writer.tensors import permute_qk

    lm, cfg = source.layer_map, source.config
    if not lm.gguf_permute_qk:
        return None
    if re.search(r"attn_q\.weight$", gguf_name):
        heads = cfg.num_attention_heads
    elif re.search(r"attn_k\.weight$", gguf_name):
        heads = n_kv_heads(cfg)
    else:
        return None
    return permute_qk(torch.arange(rows, dtype=torch.float64)[:, None], heads)[:, 0].long()


def weight_first_tokens(x: torch.Tensor, seq_len: int, weight: float) -> torch.Tensor:
    """x [N * seq_len, C] with the first token of every sequence scaled by sqrt(weight), so that
    it counts ``weight`` times in H = sum x x^T. The first token of a window is the attention
    sink of the tokens after it: its keys and values are read by every later position, so an
    error there costs far more than its 1 / seq_len share of the tokens."""
    if weight == 1.0 or not seq_len or x.shape[0] % seq_len:
        return x
    x = x.reshape(-1, seq_len, x.shape[-1]).clone()
    x[:, 0] *= weight ** 0.5
    return x.reshape(-1, x.shape[-1])


class FeedbackPass(Observer):
    """Engine observer + layer transform: Hessians of the layer's linear inputs, then error
    feedback encoding of every linear with a codec type; fake weights written back."""

    name = "gguf-feedback"
    wants_linear_io = True

    def __init__(self, source, table: Mapping[str, tuple], imatrix: Optional[Mapping[str, np.ndarray]] = None,
                 percdamp: float = 0.01, intermediate_dtype=torch.float16, *, seq_len: int = 0,
                 first_token_weight: float = 1.0, skip=(), **encode_options):
        self.source, self.table, self.imatrix = source, table, imatrix or {}
        self.skip = set(skip)                    # GGUF names left as they are (kept source bytes)
        self.percdamp, self.inter_dtype = percdamp, intermediate_dtype
        self.seq_len, self.first_weight = seq_len, first_token_weight
        self.encode_options = encode_options     # feedback_encode's act_order, codes, refit
        self.raw: dict[str, np.ndarray] = {}
        self.stats: dict[str, dict] = {}
        self._acc: dict[str, HessianAccumulator] = {}
        self._shared: dict[str, str] = {}

    def _target(self, ctx, path: str):
        """(gguf name, ggml type) when this linear is re-encoded, else None."""
        g = self.source.gguf_name(ctx.prefix + path + ".weight")
        if g is None or g not in self.table or g in self.skip:
            return None
        t, shape, _, _ = self.table[g]
        w = ctx.linears[path].weight
        if not has_codec(t) or tuple(w.shape) != shape:
            return None
        return g, t

    def layer_start(self, ctx):
        self._acc = {}
        self._shared = shared_inputs(ctx.layer_map)

    def linear_io(self, ctx, path, x, y):
        owner = self._shared.get(path, path)
        if path != owner:
            return
        if not any(self._shared.get(p, p) == owner and self._target(ctx, p) for p in ctx.linears):
            return
        if owner not in self._acc:
            self._acc[owner] = HessianAccumulator(x.shape[-1], device=x.device)
        self._acc[owner].add_batch(weight_first_tokens(x, self.seq_len, self.first_weight))

    def __call__(self, ctx) -> bool:
        done = False
        for path, lin in ctx.linears.items():
            tgt = self._target(ctx, path)
            acc = self._acc.get(self._shared.get(path, path))
            if tgt is None or acc is None or acc.H is None:
                continue
            g, t = tgt
            t0 = time.perf_counter()
            W = lin.weight.detach().to(self.inter_dtype).float()
            qw = self.imatrix.get(g)
            qw = None if qw is None else torch.as_tensor(np.asarray(qw, dtype=np.float32), device=W.device)
            res = feedback_encode(get_codec(t), W, acc.H, qw=qw, percdamp=self.percdamp, **self.encode_options)
            perm = _row_perm(self.source, g, W.shape[0])
            self.raw[g] = res.raw if perm is None else res.raw[perm.numpy()]
            lin.weight.data.copy_(res.fake.to(lin.weight.device, lin.weight.dtype))
            self.stats[g] = {"type": t, "loss": res.loss, "percdamp": res.percdamp,
                             "seconds": round(time.perf_counter() - t0, 3)}
            done = True
        self._acc = {}
        return done


def patch_tensors(src_file, out_file, raw: Mapping[str, np.ndarray], table=None) -> Path:
    """Copy ``src_file`` to ``out_file`` (atomically) with the data of the tensors in ``raw``
    replaced; each must have exactly the size it has in the file."""
    table = table or gguf_tensor_table(src_file)
    with atomic_path(out_file) as tmp:
        shutil.copyfile(src_file, tmp)
        with open(tmp, "r+b") as f:
            for name, data in raw.items():
                _, _, off, nbytes = table[name]
                buf = np.ascontiguousarray(data, dtype=np.uint8)
                if buf.nbytes != nbytes:
                    raise ValueError(f"{name}: {buf.nbytes} bytes for a {nbytes}-byte tensor")
                f.seek(off)
                f.write(buf.tobytes())
    return Path(out_file)


def gptq_round_gguf(source, llama_file, out_file, input_ids: torch.Tensor,
                    imatrix: Optional[Mapping[str, np.ndarray]] = None, *, device: str = "auto",
                    batch_size: int = 4, percdamp: float = 0.01, progress: bool = True,
                    first_token_weight: float = 1.0, skip=(), **encode_options) -> dict:
    """Re-encode ``llama_file``'s codec-typed layer tensors with error feedback into ``out_file``;
    ``skip``: GGUF names to leave alone (tensors that keep a quantized source's own bytes: their
    weights are the source's exactly, so the layers after them see no error from them).

    Returns {"tensors": per-tensor stats, "kept": names left as llama.cpp wrote them, "seconds"}."""
    from ..engine import EngineOptions, LayerwiseEngine

    t0 = time.perf_counter()
    table = gguf_tensor_table(llama_file)
    fb = FeedbackPass(source, table, imatrix, percdamp, seq_len=int(input_ids.shape[1]),
                      first_token_weight=first_token_weight, skip=skip, **encode_options)
    engine = LayerwiseEngine(source, EngineOptions(device=device, dtype=torch.float32, batch_size=batch_size,
                                                   progress=progress, run_head=False))
    engine.run(input_ids, [fb], transform=fb)
    patch_tensors(llama_file, out_file, fb.raw, table)
    kept = sorted(n for n, (t, shape, _, _) in table.items()
                  if n not in fb.raw and n not in fb.skip and len(shape) == 2)
    log.info("gptq rounding: %d tensors re-encoded, %d kept from llama.cpp", len(fb.raw), len(kept))
    return {"tensors": fb.stats, "kept": kept, "seconds": round(time.perf_counter() - t0, 2)}
