"""Typed, versioned run configuration. Round-trips to JSON byte for byte; CLI flags map 1:1."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .io import write_text

CONFIG_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CalibrationConfig(_Strict):
    data: list[str] = Field(default_factory=list, description="text/jsonl/parquet files or folders")
    generate: bool = False
    samples: int = Field(128, ge=1)
    seq_len: int = Field(512, ge=8)
    seed: int = 0


class GGUFOptions(_Strict):
    llamacpp_type: Optional[str] = None          # e.g. "q4_k_m"; None: follow the plan
    # nearest: llama.cpp rounds every block on its own. gptq: tensors whose type has one of our
    # encoders (llm_quantizer.kquants) are re-encoded with Hessian error feedback, same types/size.
    rounding: Literal["nearest", "gptq"] = "nearest"
    # rounding=gptq (kquants/feedback.py): act-order over static llama.cpp block params, rounds of
    # least-squares refit of the stored fp16 scales/mins, weight of each calibration sequence's
    # first token (the attention sink) in the Hessian, GPTQ damping.
    feedback_act_order: bool = True
    feedback_refit: int = Field(1, ge=0, le=4)
    feedback_first_token_weight: float = Field(100.0, ge=1.0)
    feedback_percdamp: float = Field(0.01, gt=0.0, le=1.0)


class GPTQOptions(_Strict):
    bits: int = Field(4, ge=2, le=8)
    group_size: int = 128
    act_order: bool = True        # with static groups (GPTQModel / llm-compressor users expect it)
    symmetric: bool = True
    checkpoint_format: Literal["compressed-tensors", "gptq"] = "compressed-tensors"   # gptq: uniform bits only
    # dtype of the layer forwards (hidden states, propagation); Hessians and the solve stay float32.
    # bfloat16 is what GPTQModel runs on CPU (the checkpoint's dtype): about 2x faster matmuls here
    compute_dtype: Literal["float32", "bfloat16"] = "float32"


class AWQOptions(_Strict):
    bits: int = Field(4, ge=2, le=8)
    group_size: int = 128
    zero_point: bool = False      # asymmetric compressed-tensors checkpoints do not load in transformers >= 5.23
    checkpoint_format: Literal["compressed-tensors", "awq"] = "compressed-tensors"    # awq (GEMM): uniform 4-bit


class ValidationConfig(_Strict):
    eval_data: list[str] = Field(default_factory=list, description="held-out text files; default: the built-in "
                                 "corpus' eval split when installed, else text sampled from the original")
    ctx: int = Field(512, ge=16)
    eval_tokens: int = Field(4096, ge=16)
    prompts: Optional[list[str]] = None          # None: the built-in validation prompts
    max_new_tokens: int = Field(96, ge=1)
    generations: bool = True
    repetition_search: bool = True


class PlanOptions(_Strict):
    formats: Optional[list[str]] = None          # candidate formats; None: the measured ones
    keep: list[str] = Field(default_factory=list)  # "REGEX=FORMAT" pins
    min_embed_bits: Optional[float] = None
    super_weight_min_bits: Optional[float] = 6.0
    int_embeddings: Literal["auto", "keep", "quantize"] = "auto"   # int plans: see plan.Constraints
    error_model: Literal["auto", "local", "residual"] = "auto"     # see plan.Constraints.error_model
    refine: int = Field(0, ge=0, le=16)          # > 1: score this many candidate plans end to end (plan.refine)
    refine_samples: int = Field(16, ge=1)        # held-out sequences for that (calibration length)


class RunConfig(_Strict):
    version: int = CONFIG_VERSION
    model: Optional[str] = None
    output_dir: str = "llm_quantizer_output"
    backend: Literal["gguf", "gptq", "awq"] = "gguf"
    budget: Optional[str] = None
    metric: str = "lim"
    device: str = "auto"
    skip_architecture: bool = False
    skip_importance: bool = False
    skip_validation: bool = False
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    plan: PlanOptions = Field(default_factory=PlanOptions)
    gguf: GGUFOptions = Field(default_factory=GGUFOptions)
    gptq: GPTQOptions = Field(default_factory=GPTQOptions)
    awq: AWQOptions = Field(default_factory=AWQOptions)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    def save(self, path: str | Path) -> Path:
        return write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"config {path} is not valid JSON: {e}") from None
        return cls.from_dict(data, origin=str(path))

    @classmethod
    def from_dict(cls, data: dict, origin: str = "config") -> "RunConfig":
        if isinstance(data, dict) and data.get("version", CONFIG_VERSION) != CONFIG_VERSION:
            raise ConfigError(f"{origin}: config version {data.get('version')} is not supported "
                              f"(this build reads version {CONFIG_VERSION})")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "config"
            raise ConfigError(f"{origin}: {where}: {err['msg']}") from None

    def with_overrides(self, overrides: dict[str, object]) -> "RunConfig":
        """Apply dotted-path overrides ("gptq.group_size": 64) and re-validate."""
        data = self.model_dump(mode="json")
        for path, value in overrides.items():
            node = data
            *parents, leaf = path.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        return RunConfig.from_dict(data, origin="flags")
