"""End-to-end refinement: the real KL divergence of the top candidate plans, keep the best.

The knapsack minimizes a *predicted* loss: each tensor's measured output error times a weight
(the layer importance or the residual transfer, ``Constraints.error_model``). Which weighting
predicts the end-to-end loss best differs between models and budgets, so several objectives are
solved (error model x ``importance_power``), the distinct plans that come out are each streamed
through the engine once with every weight fake-quantized by the real quantizer of its planned
format (llama.cpp's for GGUF types, with the importance matrix the GGUF backend hands
llama-quantize; RTN for int formats, a proxy of GPTQ / AWQ), and the plan with the lowest mean
KL divergence to the original on held-out calibration text wins. All candidates fit the same
budget, so the choice is by measured quality alone.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..formats import FLOAT_TYPES
from .budget import Budget
from .planner import make_plan
from .types import Constraints, Plan

# the objectives tried, in order: the configured one first, then these
POWERS = (1.0, 0.5, 2.0, 0.0)


@dataclass
class Candidate:
    label: str
    plan: Plan
    divergence: Optional[dict] = None


def candidate_plans(measurements: dict, budget: Budget | str, constraints: Constraints, n: int,
                    allowed: Optional[Sequence[str]] = None) -> list[Candidate]:
    """Up to ``n`` distinct plans (different formats somewhere) from objectives that vary the
    error model and the importance power; the configured objective is always the first."""
    has_transfer = any(isinstance(t, dict) and t.get("transfer") for t in measurements.get("tensors", []))
    models = ["residual", "local"] if has_transfer else ["local"]
    first = (constraints.error_model if constraints.error_model != "auto" else models[0],
             constraints.importance_power)
    objectives = [first] + [(m, p) for p in POWERS for m in models if (m, p) != first]
    seen, out = set(), []
    for model, power in objectives:
        if len(out) >= n:
            break
        cons = replace(constraints, error_model=model, importance_power=power)
        plan = make_plan(measurements, budget, allowed_formats=allowed, constraints=cons)
        key = tuple(t.format for t in plan.tensors)
        if key in seen:
            continue
        seen.add(key)
        out.append(Candidate(f"{model}^{power:g}", plan))
    return out


def fake_quant_hook(plan: Plan, imatrix: dict[str, np.ndarray] | None = None, stored: dict[str, str] | None = None):
    """A weight hook for ``LayerwiseEngine.run``: every parameter the plan quantizes is replaced
    by its round trip through the planned format's quantizer (F32 stays as it is; so does a
    tensor planned in the type it is ``stored`` in, see ``probes.fake_quant``)."""
    from ..engine.observers.probes import fake_quant

    planned = {t.name: t for t in plan.tensors if t.format != "F32"}
    imatrix, stored = imatrix or {}, stored or {}

    def hook(prefix: str, module: torch.nn.Module) -> None:
        for name, p in module.named_parameters():
            t = planned.get(prefix + name)
            if t is None or p.dim() < 2:
                continue
            imat = imatrix.get(t.gguf_name or "") if t.format not in FLOAT_TYPES else None
            with torch.no_grad():
                p.data = fake_quant(p.data, t.format, imat, stored.get(prefix + name)).to(p.dtype)

    return hook


def _softcap(source) -> Optional[float]:
    cfg = source.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(text, "final_logit_softcapping", None) or None


def score_plans(source, candidates: Sequence[Candidate], input_ids: torch.Tensor,
                imatrix: dict[str, np.ndarray] | None = None, device: str = "auto",
                batch_size: int = 4, log=None) -> None:
    """Each candidate's KL divergence to the original on ``input_ids`` (every position scored),
    put in ``candidate.divergence`` (llama-perplexity's statistics, ``validate.metrics``)."""
    from ..engine import EngineOptions, LayerwiseEngine
    from ..engine.observers.divergence import Divergence
    from ..engine.observers.probes import stored_types

    opts = EngineOptions(device=device, batch_size=batch_size, progress=False)
    cap = _softcap(source)
    ref = LayerwiseEngine(source, opts).run(input_ids, [Divergence(softcap=cap)])[0]
    base = ref.base_logprobs()
    stored = stored_types(source)
    for c in candidates:
        obs = Divergence(base=base, softcap=cap)
        LayerwiseEngine(source, opts).run(input_ids, [obs], weights=fake_quant_hook(c.plan, imatrix, stored))
        c.divergence = obs.result()
        if log:
            log(f"[plan] refine {c.label}: mean KLD {c.divergence['kld_mean']:.4g}, "
                f"same top {c.divergence['same_top_pct']:.1f}%")


def refine_plan(source, measurements: dict, budget: Budget | str, constraints: Constraints, n: int,
                input_ids: torch.Tensor, heldout: bool, allowed: Optional[Sequence[str]] = None,
                imatrix_path: Path | None = None, device: str = "auto", log=None) -> Plan:
    """The candidate plan with the least measured KL divergence, with ``refinement`` filled in."""
    from ..ggml.imatrix import load_imatrix_means

    cands = candidate_plans(measurements, budget, constraints, n, allowed)
    imatrix = load_imatrix_means(imatrix_path) if imatrix_path and Path(imatrix_path).exists() else None
    score_plans(source, cands, input_ids, imatrix, device, log=log)
    best = min(cands, key=lambda c: c.divergence["kld_mean"])
    keys = ("kld_mean", "kld_mean_unc", "kld_p99", "same_top_pct", "ppl", "ppl_base")
    info = {"samples": int(input_ids.shape[0]), "seq_len": int(input_ids.shape[1]), "heldout": heldout,
            "scored_tokens": int(best.divergence["tokens"]), "chosen": best.label,
            "quantizer": "llama.cpp (imatrix)" if best.plan.family == "gguf" else "RTN (proxy of GPTQ/AWQ)",
            "candidates": [{"label": c.label, "error_model": c.plan.constraints.error_model,
                            "importance_power": c.plan.constraints.importance_power,
                            "bytes": c.plan.totals.bytes, "bpw": c.plan.totals.bpw,
                            "predicted_error": c.plan.totals.predicted_error,
                            **{k: c.divergence[k] for k in keys}} for c in cands]}
    return replace(best.plan, refinement=info)
