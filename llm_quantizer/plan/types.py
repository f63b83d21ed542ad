"""Typed plan data: constraints in, a per-tensor plan out. Both round-trip to JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError
from ..io import read_json, write_json
from .budget import Budget

PLAN_SCHEMA_VERSION = 1
# why a tensor got its format
KNAPSACK = "knapsack"
KEPT = "kept by pattern"
SUPER_WEIGHT = "super-weight floor"
MIN_EMBED = "min embedding bits"
NOT_QUANTIZABLE = "not quantizable"
KEPT_BY_BACKEND = "kept by backend"      # int family: embeddings / lm_head stay 16-bit
EMBED_KINDS = ("embed", "lm_head")
ERROR_MODELS = ("auto", "local", "residual")
INT_EMBEDDINGS = ("auto", "keep", "quantize")


@dataclass(frozen=True)
class Constraints:
    """What the planner may choose. ``keep``: ``(regex, format)`` pairs, searched in the HF and
    the GGUF tensor name, first match wins. Bit floors compare stored bits per weight.
    ``imatrix``: an importance matrix will be given to llama.cpp, which refuses IQ1_S/IQ2_*
    without one; embeddings / lm_head never get those types (no imatrix data for them).
    ``error_model``: how a tensor's measured error is weighted in the objective: ``local`` (layer
    importance x the linear's own output error), ``residual`` (the measured residual transfer
    factor x that error: the per-token relative error the next layer sees; needs ``transfer`` in
    the measurements) or ``auto`` (residual when measured, else local).
    ``int_embeddings`` (int family): ``keep`` the ``int_keep_kinds`` (embeddings / lm_head) in
    16-bit, ``quantize`` them (knapsack items like the linears, ``min_embed_bits`` applies) or
    ``auto``: keep them while the budget allows it, quantize them when the budget is below the
    smallest plan that keeps them. A quantized embedding is a compressed-tensors
    ``pack-quantized`` Embedding, which transformers <= 5.24 ``from_pretrained`` cannot load
    (``quant_runner.ct_load`` reloads it through compressed-tensors' own decompressor).
    ``importance_power``: the objective weighs each tensor's error by (its error model's weight)
    ** power: 1 as measured, 0 the plain sum of output errors; end-to-end refinement
    (``plan.refine``) tries several and keeps the one with the least measured KL divergence."""

    allowed_formats: tuple[str, ...] = ()
    keep: tuple[tuple[str, str], ...] = ()
    min_embed_bits: Optional[float] = None
    super_weight_min_bits: Optional[float] = 6.0
    overhead_bytes: Optional[int] = None
    int_keep_kinds: tuple[str, ...] = EMBED_KINDS
    imatrix: bool = True
    error_model: str = "auto"
    int_embeddings: str = "auto"
    importance_power: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.importance_power <= 4.0:
            raise ConfigError(f"importance_power must be in [0, 4], got {self.importance_power}")
        if self.error_model not in ERROR_MODELS:
            raise ConfigError(f"error_model must be one of {', '.join(ERROR_MODELS)}, got {self.error_model!r}")
        if self.int_embeddings not in INT_EMBEDDINGS:
            raise ConfigError(f"int_embeddings must be one of {', '.join(INT_EMBEDDINGS)}, "
                              f"got {self.int_embeddings!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["keep"] = [list(k) for k in self.keep]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "Constraints":
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ConfigError(f"unknown constraint field(s) {sorted(extra)}; known: {sorted(known)}")
        d = dict(data)
        for key in ("allowed_formats", "int_keep_kinds"):
            if key in d:
                d[key] = tuple(d[key])
        if "keep" in d:
            d["keep"] = tuple(_keep_pair(k) for k in d["keep"])
        return cls(**d)


def _keep_pair(item: Any) -> tuple[str, str]:
    if isinstance(item, str) and "=" in item:
        item = item.rsplit("=", 1)
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise ConfigError(f"keep rule {item!r} must be [regex, format] or 'regex=format'")
    return str(item[0]), str(item[1])


@dataclass(frozen=True)
class TensorPlan:
    name: str
    gguf_name: Optional[str]
    kind: str
    layer: Optional[int]
    shape: list[int]
    numel: int
    format: str                 # the stored format (after llama.cpp's fallback for GGUF)
    bytes: int
    bits_per_weight: float
    predicted_error: float      # importance * error
    importance: float
    estimated: bool             # error from the fallback model, not measured
    reason: str


@dataclass(frozen=True)
class PlanTotals:
    bytes: int                  # tensor bytes + overhead
    tensor_bytes: int
    overhead_bytes: int
    budget_bytes: int
    bpw: float                  # tensor bytes * 8 / total params
    predicted_error: float
    dual_bound: float           # Lagrangian (LP) lower bound on the error
    lower_bound: float          # best proven lower bound (dual bound, tightened by the DP)
    gap: float                  # predicted_error - lower_bound
    optimal: bool
    solve_seconds: float


@dataclass(frozen=True)
class Plan:
    model: dict
    family: str
    budget: Budget
    allowed_formats: tuple[str, ...]
    constraints: Constraints
    tensors: tuple[TensorPlan, ...]
    totals: PlanTotals
    schema_version: int = field(default=PLAN_SCHEMA_VERSION)
    refinement: Optional[dict] = None     # plan.refine: the candidates scored end to end

    def to_dict(self) -> dict:
        d = {"schema_version": self.schema_version, "model": self.model, "family": self.family,
             "budget": {"spec": str(self.budget), **self.budget.to_dict(), "bytes": self.totals.budget_bytes},
             "allowed_formats": list(self.allowed_formats),
             "constraints": self.constraints.to_dict(),
             "tensors": [asdict(t) for t in self.tensors], "totals": asdict(self.totals)}
        if self.refinement is not None:
            d["refinement"] = self.refinement
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if data.get("schema_version") != PLAN_SCHEMA_VERSION:
            raise ConfigError(f"plan schema_version {data.get('schema_version')!r} is not supported "
                              f"(this build reads {PLAN_SCHEMA_VERSION})")
        try:
            return cls(dict(data["model"]), str(data["family"]), Budget.from_dict(data["budget"]),
                       tuple(data["allowed_formats"]), Constraints.from_dict(data["constraints"]),
                       tuple(TensorPlan(**t) for t in data["tensors"]),
                       PlanTotals(**data["totals"]), refinement=data.get("refinement"))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"plan is malformed: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        try:
            return cls.from_dict(read_json(path))
        except OSError as e:
            raise ConfigError(f"cannot read plan {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise ConfigError(f"plan {path} is not valid JSON: {e}") from None

    def by_name(self) -> dict[str, TensorPlan]:
        return {t.name: t for t in self.tensors}
