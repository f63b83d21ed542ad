"""measurements + budget + constraints -> a per-tensor format plan (multiple-choice knapsack).

Objective: sum over tensors of importance * error. Tensors that are not quantizable (norms,
1-D), kept by a pattern, or kept by the int backend (embeddings / lm_head in 16-bit, see
``Constraints.int_embeddings``) are fixed; their bytes and the metadata overhead count against
the budget. The rest are knapsack items over the allowed formats,
minus those below a bit floor (super weights, embeddings / lm_head).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from ..errors import BudgetError, ConfigError
from ..formats import Format, default_candidates, get_format
from .budget import Budget, human_bytes
from .measurements import (ErrorModel, Option, TensorInfo, make_option, parse_measurements,
                           stored_format, tensor_options)
from .solver import solve
from .types import (EMBED_KINDS, KEPT, KEPT_BY_BACKEND, KNAPSACK, MIN_EMBED, NOT_QUANTIZABLE,
                    SUPER_WEIGHT, Constraints, Plan, PlanTotals, TensorPlan)

_FLOAT_BYTES = {1: "F16", 2: "BF16", 4: "F32"}


@dataclass
class _Item:
    info: TensorInfo
    options: list[Option]
    reason: str                 # reason if the knapsack picks the lightest option, else KNAPSACK


def make_plan(measurements: dict, budget: Budget | str | float,
              allowed_formats: Optional[Sequence[str]] = None,
              constraints: Optional[Constraints] = None) -> Plan:
    """Plan formats so the model fits ``budget``. ``allowed_formats`` overrides the constraints'."""
    cons = constraints or Constraints()
    allowed = tuple(allowed_formats or cons.allowed_formats)
    model, infos = parse_measurements(measurements)
    family, formats = _family(allowed)
    cons = replace(cons, allowed_formats=tuple(f.name for f in formats))
    budget = Budget.parse(budget)
    infos = error_weights(infos, cons.error_model, family, cons.importance_power)
    errs, source = ErrorModel(infos), _source_float(model, family)
    overhead = cons.overhead_bytes if cons.overhead_bytes is not None else estimate_overhead(family, len(infos))
    budget_bytes = budget.resolve(int(model["original_bytes"]), int(model["total_params"]))
    keep_kinds = () if family == "int" and cons.int_embeddings == "quantize" else cons.int_keep_kinds
    fixed, items = _split(infos, family, formats, cons, errs, source, keep_kinds)
    if (family == "int" and cons.int_embeddings == "auto" and keep_kinds
            and budget_bytes < overhead + _smallest(fixed, items)):
        fixed, items = _split(infos, family, formats, cons, errs, source, ())   # embeddings quantized too
    fixed_bytes = overhead + sum(f.bytes for f in fixed)
    kept = [f.name for f in fixed if f.reason == KEPT_BY_BACKEND]
    hint = f"; {len(kept)} embedding tensor(s) kept in 16-bit (int_embeddings={cons.int_embeddings})" if kept else ""
    _check_budget(budget, budget_bytes, fixed_bytes, items, int(model["original_bytes"]), formats, hint)
    chosen, sol = _solve(items, budget_bytes - fixed_bytes)
    tensors = _ordered(infos, fixed + chosen)
    totals = _totals(tensors, overhead, budget_bytes, int(model["total_params"]), sol, fixed)
    return Plan(model, family, budget, cons.allowed_formats, cons, tensors, totals)


def error_weights(infos: list[TensorInfo], error_model: str, family: str,
                  power: float = 1.0) -> list[TensorInfo]:
    """Each tensor's weight in the objective, put in ``importance``: the layer importance
    (``local``) or the measured residual transfer (``residual``; tensors without one, e.g. the
    embeddings, get the median transfer). ``auto``: residual when measured (int and GGUF plans;
    on smollm2-135m it lowered the GGUF KLD 30-60 % vs local at llama.cpp's preset sizes,
    bench/presets_bench.py), else local. ``power``: the weights raised to it (see
    ``Constraints.importance_power``)."""
    if power != 1.0:
        return [replace(t, importance=float(t.importance) ** power)
                for t in error_weights(infos, error_model, family)]
    measured = [t.transfer for t in infos if t.transfer is not None and t.transfer > 0]
    if error_model == "auto":
        error_model = "residual" if measured else "local"
    if error_model == "local":
        return infos
    if not measured:
        raise ConfigError("error_model 'residual' needs transfer factors in measurements.json; "
                          "re-run the measure stage with this version")
    median = float(np.median(measured))
    return [replace(t, importance=t.transfer if t.transfer is not None and t.transfer > 0 else median)
            for t in infos]


def _family(allowed: tuple[str, ...]) -> tuple[str, list[Format]]:
    formats = [get_format(n) for n in allowed] or [get_format(n) for n in default_candidates("gguf")]
    fams = {f.family for f in formats if not f.is_float}
    if len(fams) > 1:
        raise ConfigError("allowed formats mix GGUF types and int formats; plan one family at a time")
    return (fams.pop() if fams else "gguf"), list(dict.fromkeys(formats))


def _source_float(model: dict, family: str) -> str:
    """The float format of unquantized tensors: F32 in GGUF, the source dtype otherwise."""
    if family == "gguf":
        return "F32"
    dtype = str(model.get("dtype", "")).lower().replace("torch.", "")
    named = {"bfloat16": "BF16", "bf16": "BF16", "float16": "F16", "fp16": "F16", "float32": "F32"}
    if dtype in named:
        return named[dtype]
    per_param = round(int(model["original_bytes"]) / max(1, int(model["total_params"])))
    return _FLOAT_BYTES.get(per_param, "BF16")


def _split(infos, family, formats, cons, errs, source, keep_kinds) -> tuple[list[TensorPlan], list[_Item]]:
    """(fixed tensors, knapsack items); ``keep_kinds``: int tensor kinds kept in 16-bit."""
    fixed, items = [], []
    for t in infos:
        entry = _classify(t, family, formats, cons, errs, source, keep_kinds)
        (items if isinstance(entry, _Item) else fixed).append(entry)
    return fixed, items


def _smallest(fixed: list[TensorPlan], items: list[_Item]) -> int:
    """Tensor bytes of the smallest plan (every item at its lightest option)."""
    return sum(f.bytes for f in fixed) + sum(min(o.bytes for o in it.options) for it in items)


def _classify(t: TensorInfo, family: str, formats: list[Format], cons: Constraints,
              errs: ErrorModel, source: str, keep_kinds: tuple[str, ...] = ()):
    if not t.quantizable or len(t.shape) < 2:
        return _fixed(t, source, NOT_QUANTIZABLE, errs, family)
    for pattern, fmt_name in cons.keep:
        if _matches(pattern, t):
            return _fixed(t, _keep_format(fmt_name, family).name, KEPT, errs, family)
    if family == "int" and t.kind in keep_kinds:
        return _fixed(t, source, KEPT_BY_BACKEND, errs, family)
    options = [o for o in tensor_options(t, formats, errs) if _imatrix_ok(o.format, t, cons)]
    if not options:
        raise ConfigError(f"no allowed format can store {t.name} (shape {list(t.shape)}); allow "
                          f"F16 or a type with a smaller block")
    floor, reason = _floor(t, cons)
    if floor is None:
        return _Item(t, options, KNAPSACK)
    kept = [o for o in options if o.bits >= floor - 1e-9]
    if not kept:
        kept = [make_option(t, "F16" if family == "gguf" else source, (), errs)]
    return _Item(t, kept, reason if len(kept) < len(options) else KNAPSACK)


def _imatrix_ok(fmt_name: str, t: TensorInfo, cons: Constraints) -> bool:
    """llama.cpp refuses IQ1_S/IQ2_* (and IQ1_M but on token_embd/output) without imatrix data;
    token_embd never has any and output only with llama-imatrix --process-output."""
    fmt = get_format(fmt_name)
    embed = t.kind in EMBED_KINDS
    needs = fmt.requires_imatrix and not (fmt.name == "IQ1_M" and embed)
    return not needs or (cons.imatrix and not embed)


def _matches(pattern: str, t: TensorInfo) -> bool:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"keep pattern {pattern!r} is not a valid regex: {e}") from None
    return bool(rx.search(t.name) or (t.gguf_name and rx.search(t.gguf_name)))


def _keep_format(name: str, family: str) -> Format:
    fmt = get_format(name)
    if not fmt.is_float and fmt.family != family:
        raise ConfigError(f"keep format {fmt.name} is not a {family} format")
    return fmt


def _floor(t: TensorInfo, cons: Constraints) -> tuple[Optional[float], str]:
    floors = []
    if t.super_weight and cons.super_weight_min_bits is not None:
        floors.append((cons.super_weight_min_bits, SUPER_WEIGHT))
    if t.kind in EMBED_KINDS and cons.min_embed_bits is not None:
        floors.append((cons.min_embed_bits, MIN_EMBED))
    return max(floors) if floors else (None, KNAPSACK)


def _fixed(t: TensorInfo, fmt_name: str, reason: str, errs: ErrorModel, family: str) -> TensorPlan:
    fmt = get_format(fmt_name)
    if family == "gguf":
        stored = stored_format(fmt, t.shape)
        nbytes = get_format(stored).nbytes(t.shape)
    else:                                   # safetensors: stored as given, 1-D included
        stored, nbytes = fmt.name, (fmt.nbytes(t.shape) if len(t.shape) >= 2 or fmt.family == "int"
                                    else t.numel * fmt.type_size)
    err, est = (0.0, False) if reason == NOT_QUANTIZABLE else errs.error(t, stored, (fmt.name,))
    return _tensor_plan(t, Option(stored, nbytes, 8.0 * nbytes / t.numel, err, est), reason)


def _tensor_plan(t: TensorInfo, o: Option, reason: str) -> TensorPlan:
    return TensorPlan(t.name, t.gguf_name, t.kind, t.layer, list(t.shape), t.numel, o.format,
                      o.bytes, o.bits, t.importance * o.error, t.importance, o.estimated, reason)


def _check_budget(budget, budget_bytes, fixed_bytes, items, original, formats, hint: str = "") -> None:
    lo = _smallest([], items) + fixed_bytes
    rng = f"achievable range is {human_bytes(lo)} to {human_bytes(original)} (original size)"
    if budget_bytes < lo:
        names = ", ".join(f.name for f in formats)
        raise BudgetError(f"budget {budget} ({human_bytes(budget_bytes)}) is below the smallest "
                          f"plan with formats {names}; {rng}{hint}")
    if budget_bytes > original:
        raise BudgetError(f"budget {budget} ({human_bytes(budget_bytes)}) is above the original "
                          f"model size; {rng}")


def _solve(items: list[_Item], capacity: int):
    if not items:
        return [], None
    weights = [[o.bytes for o in it.options] for it in items]
    errors = [[it.info.importance * o.error for o in it.options] for it in items]
    sol = solve(weights, errors, capacity)
    chosen = []
    for it, j in zip(items, sol.choice):
        o = it.options[int(j)]
        lightest = o.bytes == min(x.bytes for x in it.options)
        chosen.append(_tensor_plan(it.info, o, it.reason if lightest else KNAPSACK))
    return chosen, sol


def _ordered(infos: list[TensorInfo], plans: list[TensorPlan]) -> tuple[TensorPlan, ...]:
    by_name = {p.name: p for p in plans}
    return tuple(by_name[t.name] for t in infos)


def _totals(tensors, overhead, budget_bytes, total_params, sol, fixed) -> PlanTotals:
    tensor_bytes = sum(t.bytes for t in tensors)
    error = sum(t.predicted_error for t in tensors)
    fixed_err = sum(t.predicted_error for t in fixed)
    lp = fixed_err + (sol.lp_bound if sol else 0.0)
    lower = fixed_err + (sol.lower_bound if sol else 0.0)
    return PlanTotals(tensor_bytes + overhead, tensor_bytes, overhead, budget_bytes,
                      8.0 * tensor_bytes / max(1, total_params), error, lp, lower,
                      max(0.0, error - lower), sol.optimal if sol else True,
                      sol.seconds if sol else 0.0)


def estimate_overhead(family: str, n_tensors: int) -> int:
    """Bytes beyond tensor data: GGUF header, KV metadata with the tokenizer (~4 MiB) and per
    tensor info + 32-byte alignment; safetensors JSON headers (~160 B per stored tensor)."""
    if family == "gguf":
        return 4 * 2**20 + 96 * n_tensors
    return 64 * 2**10 + 160 * 4 * n_tensors
