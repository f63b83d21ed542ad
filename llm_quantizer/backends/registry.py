"""The backend registry: one module per backend, one decorator line to register it."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..errors import ConfigError


@dataclass
class Artifact:
    """What a backend produced: the files, their total size, and how to run them."""

    backend: str
    path: Path
    files: list[Path] = field(default_factory=list)
    nbytes: int = 0
    info: dict = field(default_factory=dict)


class Backend(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    format_family: ClassVar[str]          # "gguf" or "int": the formats the planner may pick

    @abc.abstractmethod
    def quantize(self, source, plan, calibration, out_dir: Path, config) -> Artifact:
        """Write the quantized model for ``plan`` under ``out_dir``."""


_BACKENDS: dict[str, type[Backend]] = {}
_ALIASES: dict[str, str] = {}


def register_backend(cls: type[Backend] | None = None, *, aliases: tuple[str, ...] = ()):
    """Class decorator registering a backend under ``cls.name`` (and aliases); duplicates are refused."""
    def add(c: type[Backend]) -> type[Backend]:
        for key in (c.name, *aliases):
            if key in _BACKENDS or key in _ALIASES:
                raise ValueError(f"backend {key!r} registered twice")
        _BACKENDS[c.name] = c
        _ALIASES.update({a: c.name for a in aliases})
        return c

    return add(cls) if cls is not None else add


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> Backend:
    key = _ALIASES.get(name, name)
    if key not in _BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; available: {', '.join(backend_names())}")
    return _BACKENDS[key]()


def describe_backends() -> list[dict]:
    alias_of = {}
    for a, n in _ALIASES.items():
        alias_of.setdefault(n, []).append(a)
    return [{"name": n, "aliases": alias_of.get(n, []), "formats": c.format_family, "description": c.description}
            for n, c in sorted(_BACKENDS.items())]
