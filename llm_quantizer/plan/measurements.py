"""Read measurements.json (schema_version 1) and turn each tensor into candidate options.

A tensor's error for a format comes from ``errors`` when measured; otherwise from the fallback
model ``c * 2**(-2 * bits)`` (bits = stored bits per weight), with ``c`` fitted to the tensor's
own measured errors, else to ``numel`` times the median ``c / numel`` of the measured tensors,
else ``numel``; such options are flagged ``estimated``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import ConfigError
from ..formats import Format, get_format, gguf_effective_type

MEASUREMENTS_SCHEMA_VERSION = 1
_MODEL_KEYS = ("name", "architecture", "num_layers", "total_params", "original_bytes")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    numel: int
    gguf_name: Optional[str] = None
    kind: str = "other"
    layer: Optional[int] = None
    quantizable: bool = True
    importance: float = 1.0
    super_weight: bool = False
    errors: dict = field(default_factory=dict)
    transfer: Optional[float] = None      # residual transfer factor (engine.observers.transfer)


@dataclass(frozen=True)
class Option:
    format: str
    bytes: int
    bits: float
    error: float          # unweighted
    estimated: bool


def parse_measurements(data: dict) -> tuple[dict, list[TensorInfo]]:
    """Validate the measurements dict -> (model info, tensors). Bad input -> ConfigError."""
    if not isinstance(data, dict) or data.get("schema_version") != MEASUREMENTS_SCHEMA_VERSION:
        got = data.get("schema_version") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"measurements schema_version {got!r} is not supported "
                          f"(this build reads {MEASUREMENTS_SCHEMA_VERSION})")
    model = data.get("model")
    missing = [k for k in _MODEL_KEYS if not isinstance(model, dict) or k not in model]
    if missing:
        raise ConfigError(f"measurements 'model' lacks {', '.join(missing)}")
    tensors = data.get("tensors")
    if not isinstance(tensors, list) or not tensors:
        raise ConfigError("measurements have no 'tensors' list")
    infos = [_tensor(t, i) for i, t in enumerate(tensors)]
    names = [t.name for t in infos]
    if len(set(names)) != len(names):
        raise ConfigError("measurements list a tensor name twice")
    return dict(model), infos


def _tensor(t: dict, i: int) -> TensorInfo:
    try:
        shape = tuple(int(s) for s in t["shape"])
        errors = {_canonical(str(k)): float(v) for k, v in (t.get("errors") or {}).items()}
        return TensorInfo(
            name=str(t["name"]), shape=shape, numel=int(t.get("numel") or math.prod(shape)),
            gguf_name=t.get("gguf_name"), kind=str(t.get("kind") or "other"),
            layer=None if t.get("layer") is None else int(t["layer"]),
            quantizable=bool(t.get("quantizable", len(shape) >= 2)),
            importance=float(1.0 if t.get("importance") is None else t["importance"]),
            super_weight=bool(t.get("super_weight", False)), errors=errors,
            transfer=None if t.get("transfer") is None else float(t["transfer"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"measurements tensor #{i} is malformed: {e!r}") from None


def stored_format(fmt: Format, shape: tuple[int, ...]) -> str:
    """The format actually stored: llama.cpp's effective type for GGUF, else the format."""
    return gguf_effective_type(fmt.name, shape) if fmt.family == "gguf" else fmt.name


class ErrorModel:
    """Measured errors where present, the fitted ``c * 2**(-2 bits)`` model elsewhere."""

    def __init__(self, tensors: list[TensorInfo]):
        self._c = {t.name: _fit_c(t) for t in tensors}
        per_param = [c / t.numel for t in tensors if (c := self._c[t.name]) is not None]
        self._c_per_param = float(np.median(per_param)) if per_param else 1.0

    def error(self, t: TensorInfo, stored: str, requested: tuple[str, ...] = ()) -> tuple[float, bool]:
        for name in (stored, *requested):
            if name in t.errors:
                return t.errors[name], False
        c = self._c[t.name]
        c = t.numel * self._c_per_param if c is None else c
        return c * 2.0 ** (-2 * get_format(stored).effective_bits(t.shape)), True


def _fit_c(t: TensorInfo) -> Optional[float]:
    logs = []
    for name, err in t.errors.items():
        fmt = _known(name)
        if fmt is None or err <= 0 or not fmt.supports(t.shape):
            continue
        bits = get_format(stored_format(fmt, t.shape)).effective_bits(t.shape)
        logs.append(math.log(err) + 2 * bits * math.log(2))
    return math.exp(sum(logs) / len(logs)) if logs else None


def _canonical(name: str) -> str:
    fmt = _known(name)
    return fmt.name if fmt else name


def _known(name: str) -> Optional[Format]:
    try:
        return get_format(name)
    except ConfigError:
        return None


def tensor_options(t: TensorInfo, formats: list[Format], model: ErrorModel) -> list[Option]:
    """One option per distinct stored format (GGUF types that fall back to the same type merge)."""
    requested: dict[str, list[str]] = {}
    for fmt in formats:
        if not fmt.supports(t.shape):
            continue
        requested.setdefault(stored_format(fmt, t.shape), []).append(fmt.name)
    return [make_option(t, stored, tuple(req), model) for stored, req in requested.items()]


def make_option(t: TensorInfo, stored: str, requested: tuple[str, ...], model: ErrorModel) -> Option:
    fmt = get_format(stored)
    err, est = model.error(t, stored, requested)
    nbytes = fmt.nbytes(t.shape)
    return Option(stored, nbytes, 8.0 * nbytes / t.numel, err, est)
