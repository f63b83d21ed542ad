"""Memory budgets: absolute bytes, a fraction of the original model, or bits per weight.

String forms (``Budget.parse`` / ``str(budget)`` round-trip):
* ``"3.2GB"`` = 3.2e9 bytes, ``"800MiB"`` = 800 * 2**20; units B, KB/MB/GB/TB (10**3) and
  KiB/MiB/GiB/TiB (2**10), case-insensitive; a plain integer ``"123456"`` > 1 is bytes.
* ``"0.3"`` or ``"30%"``: that share of the original model bytes, in (0, 1]; ``"1"`` is 100%.
* ``"4.5bpw"``: bits per weight over all parameters.
A bare float above 1 (``"3.5"``) is ambiguous and rejected: add a unit.

MAQ's ``memory_limit`` is different (a share of the *device* memory): :func:`from_memory_limit`.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Literal

from ..errors import BudgetError

Kind = Literal["bytes", "fraction", "bpw"]
UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_NUMBER = r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)"
_WITH_UNIT = re.compile(_NUMBER + r"\s*([a-z%]*)")


@dataclass(frozen=True)
class Budget:
    """``value`` is bytes (kind "bytes"), a share of the original (kind "fraction") or bits per
    weight (kind "bpw")."""

    kind: Kind
    value: float

    def __post_init__(self):
        if self.kind not in ("bytes", "fraction", "bpw"):
            raise BudgetError(f"unknown budget kind {self.kind!r}; known: bytes, fraction, bpw")
        if not (math.isfinite(self.value) and self.value > 0):
            raise BudgetError(f"budget must be a positive number, got {self.value!r}")
        if self.kind == "fraction" and self.value > 1:
            raise BudgetError(f"budget fraction must be in (0, 1], got {self.value:g}")

    @classmethod
    def parse(cls, text: str | int | float | "Budget") -> "Budget":
        """Parse ``"3.2GB"``, ``"800MiB"``, ``"123456"``, ``"0.3"``, ``"30%"``, ``"4.5bpw"``."""
        if isinstance(text, Budget):
            return text
        if isinstance(text, bool):
            raise BudgetError(f"budget {text!r} is not a number")
        if isinstance(text, (int, float)):
            return _from_number(float(text), str(text), is_int=isinstance(text, int))
        return _parse_text(str(text))

    def resolve(self, original_bytes: int, total_params: int) -> int:
        """The byte count this budget means for a model of that size and parameter count."""
        if self.kind == "bytes":
            return int(self.value)
        if self.kind == "fraction":
            return int(self.value * original_bytes)
        return int(self.value * total_params / 8)

    def __str__(self) -> str:
        if self.kind == "bytes":
            return f"{int(self.value)}B"
        if self.kind == "fraction":
            return f"{self.value:.12g}"
        return f"{self.value:.12g}bpw"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Budget":
        try:
            return cls(str(data["kind"]), float(data["value"]))
        except (KeyError, TypeError, ValueError):
            raise BudgetError(f"budget {data!r} needs a kind and a numeric value") from None


def _parse_text(text: str) -> Budget:
    m = _WITH_UNIT.fullmatch(text.strip().lower().replace("_", ""))
    if not m:
        raise BudgetError(f"cannot parse budget {text!r}; use e.g. 3.2GB, 800MiB, 0.3, 30% or 4.5bpw")
    number, unit = float(m.group(1)), m.group(2)
    if unit == "bpw":
        return Budget("bpw", number)
    if unit == "%":
        return Budget("fraction", number / 100)
    if unit in UNITS:
        return Budget("bytes", float(round(number * UNITS[unit])))
    if unit:
        raise BudgetError(f"unknown budget unit {unit!r} in {text!r}; use B, KB, MB, GB, TB, KiB, "
                          f"MiB, GiB, TiB, % or bpw")
    return _from_number(number, text, is_int=re.fullmatch(r"\s*[0-9]+\s*", text) is not None)


def _from_number(number: float, text: str, is_int: bool) -> Budget:
    if 0 < number <= 1:
        return Budget("fraction", number)
    if is_int and number > 1:
        return Budget("bytes", number)
    raise BudgetError(f"budget {text!r} is ambiguous; write a fraction in (0, 1] or add a unit "
                      f"(e.g. {text.strip()}GB or {text.strip()}bpw)")


def from_memory_limit(memory_limit: str | float, device_total_bytes: int | None) -> Budget:
    """MAQ ``memory_limit`` semantics: ``"70%"`` or a float in (0, 1] is that share of the device's
    total memory (``device_total_bytes``); a larger number is GiB (MAQ multiplies by 1024**3)."""
    text = str(memory_limit).strip()
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise BudgetError(f"memory_limit {memory_limit!r} is not valid; use e.g. '70%', 0.7 or 24 (GiB)") from None
    if not (math.isfinite(share) and share > 0):
        raise BudgetError(f"memory_limit must be positive, got {memory_limit!r}")
    if text.endswith("%") or share <= 1:
        if not device_total_bytes or device_total_bytes <= 0:
            raise BudgetError(f"memory_limit {memory_limit!r} is a share of device memory, "
                              f"but the device's total memory is unknown")
        if share > 1:
            raise BudgetError(f"memory_limit {memory_limit!r} is more than 100% of the device")
        return Budget("bytes", float(int(share * device_total_bytes)))
    return Budget("bytes", float(int(share * 2**30)))


def human_bytes(n: float) -> str:
    """``3.21 GB`` style (decimal units, as budgets are usually given)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.4g} {unit}"
    return f"{int(n)} B"
