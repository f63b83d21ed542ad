"""Per-tensor error probes: for each candidate format, the predicted output error
tr(dW H dW^T) / tokens, with dW from the format's real quantizer and H from the same
activations (``ActivationStats`` must run before this observer).

``rounding="gptq"``: int formats are rounded by GPTQ with the linear's own H (act-order, static
groups: what the gptq backend writes) instead of to nearest. GPTQ shrinks each format's error by
a different factor. These local errors leave out the compensation of the real sequential pass,
though: in bench/gptq_awq_bench.py their plans were better on gemma3-270m and worse on
smollm2-135m, so nearest stays the default.

``runtime=True``: GGUF and float formats also pay llama.cpp's rounding of the input
(``ggml.runtime``)."""
from __future__ import annotations

import numpy as np
import torch

from ... import formats as F
from .base import Observer, register_observer


def weighted_error(dw: torch.Tensor, h: torch.Tensor) -> float:
    """tr(dW H dW^T) for full H [in, in], or sum(dW^2 * h) for a diagonal h [in]."""
    dw = dw.float()
    if h.dim() == 2:
        return float(((dw @ h) * dw).sum())
    return float((dw.pow(2) * h).sum())


def written_type(fmt: str, shape: tuple) -> str | None:
    """The storage type a GGUF file gets for ``fmt`` on ``shape`` (llama.cpp's fallbacks applied);
    None for formats that are not GGUF or float types, or that cannot store ``shape``."""
    if fmt in F.FLOAT_TYPES:
        return fmt
    if F.get_format(fmt).family != "gguf" or not F.gguf_supports(fmt, shape):
        return None
    return F.gguf_effective_type(fmt, shape)


def fake_quant(w: torch.Tensor, fmt: str, imatrix: np.ndarray | None, stored: str | None = None) -> torch.Tensor:
    """``w`` [out, in] through the real quantizer of ``fmt`` and back.

    ``stored``: the ggml type this tensor already has in a quantized GGUF source (``w`` is its
    dequantization). A format written as that same type keeps the stored bytes (the gguf backend
    copies them, as llama-quantize does for a tensor already in its target type): exact."""
    if stored is not None and written_type(fmt, tuple(w.shape)) == stored:
        return w.float()
    if fmt in F.FLOAT_TYPES:
        return w.to({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[fmt]).float()
    f = F.get_format(fmt)
    if f.family == "gguf":
        from ...ggml.quantize import fake_quantize

        return torch.from_numpy(fake_quantize(w.float().cpu().numpy(), fmt, imatrix=imatrix)).to(w.device)
    from ...quant.rtn import QuantArgs, fake_quantize

    return fake_quantize(w.float(), QuantArgs(bits=f.bits, group_size=f.group_size, symmetric=f.symmetric,
                                              scale_dtype="bfloat16")).float()


def gptq_fake_quant(w: torch.Tensor, fmt: str, factor) -> torch.Tensor:
    """``w`` through GPTQ for the int format ``fmt`` with a ``factor_hessian`` of its H (act-order,
    static groups, bf16 scales: the gptq backend's defaults) and back."""
    from ...quant.gptq import gptq_quantize
    from ...quant.rtn import QuantArgs

    f = F.get_format(fmt)
    args = QuantArgs(bits=f.bits, group_size=f.group_size, symmetric=f.symmetric, scale_dtype="bfloat16")
    return gptq_quantize(w, None, args, static_groups=factor.perm is not None, factor=factor).qweight_fake.float()


def probe_tensor(w: torch.Tensor, h: torch.Tensor, formats: list[str], imatrix: np.ndarray | None,
                 max_numel: int = 1 << 20, stored: str | None = None, rounding: str = "nearest",
                 percdamp: float = 0.01, runtime: dict | None = None) -> dict:
    """format -> {"error": ..., "effective": type actually written} for one weight.

    Every format quantizes rows independently, so for a huge weight (embeddings, lm_head) the
    error is summed over evenly spaced rows and scaled up: an unbiased estimate. ``stored``: the
    tensor's type in a quantized GGUF source; the format written as that type has error 0.
    ``rounding="gptq"`` (with a full H): int formats are rounded by GPTQ (``gptq_fake_quant``).
    ``runtime``: activation type -> mean squared rounding error per input channel
    (``InputStats.runtime_mean_sq``); each GGUF / float format then also pays the error of
    llama.cpp rounding this weight's input to its ``vec_dot_type`` (``ggml.runtime``), also
    reported apart as "runtime"."""
    scale = 1.0
    if w.numel() > max_numel:
        rows = max(1, max_numel // w.shape[1])
        idx = torch.linspace(0, w.shape[0] - 1, rows).round().long().unique()
        scale = w.shape[0] / idx.numel()
        w = w[idx]
    out, effective = {}, {}
    for fmt in formats:
        eff = _effective(fmt, tuple(w.shape), imatrix is not None)
        if eff is not None:
            effective[fmt] = eff
    wf = w.float()
    uniq = list(dict.fromkeys(effective.values()))
    kept = [eff for eff in uniq if eff == stored]
    uniq = [eff for eff in uniq if eff != stored]
    gptq = rounding == "gptq" and h.dim() == 2
    factor = None
    if gptq and any(F.get_format(e).family == "int" for e in uniq):
        from ...quant.gptq import factor_hessian

        factor = factor_hessian(h, percdamp, act_order=True)

    def quantized(eff):
        if factor is not None and F.get_format(eff).family == "int":
            return gptq_fake_quant(w, eff, factor)
        return fake_quant(w, eff, imatrix)

    errors = weighted_errors((wf - quantized(eff) for eff in uniq), h)
    cache = {eff: scale * e for eff, e in zip(uniq, errors)} | {eff: 0.0 for eff in kept}
    rt = {}
    if runtime is not None:
        from ...ggml.runtime import activation_type, runtime_error

        for eff in dict.fromkeys(effective.values()):
            if eff in F.FLOAT_TYPES or F.get_format(eff).family == "gguf":
                act = activation_type(eff)
                rt[eff] = scale * runtime_error(wf, runtime[act]) if act in runtime else 0.0
    for fmt, eff in effective.items():
        out[fmt] = {"error": cache[eff] + rt.get(eff, 0.0), "effective": eff}
        if eff in rt:
            out[fmt]["runtime"] = rt[eff]
    return out


def _effective(fmt: str, shape: tuple, has_imatrix: bool) -> str | None:
    """The type actually written for ``fmt`` on ``shape``; None when ``fmt`` cannot apply."""
    f = F.get_format(fmt)
    if fmt in F.FLOAT_TYPES:
        return fmt
    if f.family == "gguf":
        if not F.gguf_supports(fmt, shape):
            return None
        eff = F.gguf_effective_type(fmt, shape)
        return None if eff in F.NEEDS_IMATRIX and not has_imatrix else eff
    return None if f.group_size > 0 and shape[1] % f.group_size else fmt


def weighted_errors(dws, h: torch.Tensor, max_numel: int = 1 << 21) -> list[float]:
    """``weighted_error`` of each dW (same shape), the dWs stacked into as few matmuls with H as
    ``max_numel`` allows (small weights: one GEMM for every format instead of one each). The cap
    bounds the transient memory (stack, product: ~3 x 8 MB): with 8M elements the probes put the
    2 GB llama of bench/memory_bench.py over its 25 % budget."""
    out, group = [], []

    def flush():
        if not group:
            return
        d = torch.cat(group) if len(group) > 1 else group[0]
        prod = (d @ h) * d if h.dim() == 2 else d.pow(2) * h
        out.extend(float(p.sum()) for p in prod.split(group[0].shape[0]))
        group.clear()

    for dw in dws:
        dw = dw.float()
        if group and (len(group) + 1) * dw.numel() > max_numel:
            flush()
        group.append(dw)
    flush()
    return out


def stored_types(source) -> dict[str, str]:
    """HF weight name -> ggml type of every quantized tensor of a GGUF source ({} otherwise): the
    tensors whose stored bytes a plan can keep exactly."""
    if getattr(source, "kind", None) != "gguf":
        return {}
    return {n: t.dtype for n, t in source.tensors.items() if t.dtype not in F.FLOAT_TYPES}


@register_observer
class ErrorProbe(Observer):
    name = "probes"

    def __init__(self, formats: list[str], only: set[str] | None = None, stored: dict[str, str] | None = None,
                 rounding: str = "nearest", runtime: bool = False):
        """``only``: HF weight names to probe (default: every linear and the head). ``stored``: HF
        weight name -> its ggml type in a quantized GGUF source (``stored_types``). ``rounding``:
        "nearest" or "gptq" (int formats of the decoder linears rounded by GPTQ). ``runtime``: add
        llama.cpp's activation rounding error to each GGUF / float format (``ActivationStats``
        must run with ``runtime=True``)."""
        if rounding not in ("nearest", "gptq"):
            raise ValueError(f"probe rounding must be 'nearest' or 'gptq', not {rounding!r}")
        self.formats = formats
        self.rounding = rounding
        self.runtime = runtime
        self.only = None if only is None else set(only)
        self.stored = stored or {}
        self.tensors: dict[str, dict] = {}

    def layer_end(self, ctx):
        stats = ctx.state["input_stats"]
        for path, lin in ctx.linears.items():
            name = f"{ctx.prefix}{path}.weight"
            if self.only is not None and name not in self.only:
                continue
            s = stats[path]
            imat = (s.sum_sq / max(s.count, 1)).float().cpu().numpy()
            self.tensors[name] = probe_tensor(lin.weight.detach(), s.hessian(), self.formats, imat,
                                              stored=self.stored.get(name), rounding=self.rounding,
                                              runtime=s.runtime_mean_sq() if self.runtime else None)

    def finish(self, final):
        s = final.state.get("head_stats")
        name = "lm_head.weight" if not final.tied else "model.embed_tokens.weight"
        if s is None or final.lm_head is None or (self.only is not None and name not in self.only):
            return
        w = final.lm_head.weight.detach()
        imat = (s.sum_sq / max(s.count, 1)).float().cpu().numpy()
        self.tensors[name] = probe_tensor(w, s.hessian(), self.formats, imat, stored=self.stored.get(name),
                                          runtime=s.runtime_mean_sq() if self.runtime else None)

    def result(self) -> dict:
        return {"formats": self.formats, "rounding": self.rounding, "runtime": self.runtime, "tensors": self.tensors}
