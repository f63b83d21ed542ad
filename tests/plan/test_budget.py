"""Budget strings, fractions, bits per weight and MAQ memory_limit semantics."""
from __future__ import annotations

import pytest

from llm_quantizer.errors import BudgetError
from llm_quantizer.plan.budget import Budget, from_memory_limit, human_bytes


@pytest.mark.parametrize("text,kind,value", [
    ("3.2GB", "bytes", 3.2e9), ("800MiB", "bytes", 800 * 2**20), ("800 mib", "bytes", 800 * 2**20),
    ("123456", "bytes", 123456), ("2TB", "bytes", 2e12), ("10KiB", "bytes", 10240),
    ("0.3", "fraction", 0.3), ("30%", "fraction", 0.3), ("1", "fraction", 1.0),
    ("4.5bpw", "bpw", 4.5), (123456, "bytes", 123456), (0.25, "fraction", 0.25)])
def test_parse(text, kind, value):
    b = Budget.parse(text)
    assert (b.kind, b.value) == (kind, pytest.approx(value))


@pytest.mark.parametrize("text", ["3.5", "abc", "0", "-1GB", "1.5", "150%", "4 parsecs", "", "0bpw"])
def test_parse_rejects(text):
    with pytest.raises(BudgetError) as e:
        Budget.parse(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["3.2GB", "800MiB", "0.3", "1", "4.5bpw", "123456"])
def test_round_trip(text):
    b = Budget.parse(text)
    assert Budget.parse(str(b)) == b
    assert Budget.from_dict(b.to_dict()) == b


def test_resolve():
    assert Budget.parse("0.3").resolve(original_bytes=10_000, total_params=5_000) == 3_000
    assert Budget.parse("4bpw").resolve(original_bytes=10_000, total_params=5_000) == 2_500
    assert Budget.parse("2KB").resolve(original_bytes=10_000, total_params=5_000) == 2_000


def test_memory_limit_maq_semantics():
    dev = 80 * 10**9
    assert from_memory_limit("70%", dev).value == 56 * 10**9
    assert from_memory_limit(0.5, dev).value == 40 * 10**9
    assert from_memory_limit(24, None).value == 24 * 2**30          # MAQ: value * 1024**3
    with pytest.raises(BudgetError, match="device"):
        from_memory_limit(0.7, None)
    for bad in ("abc", -1, "150%"):
        with pytest.raises(BudgetError):
            from_memory_limit(bad, dev)


def test_human_bytes():
    assert human_bytes(3.2e9) == "3.2 GB"
    assert human_bytes(512) == "512 B"
