"""Compress a set of tensor / module names into a few anchored regexes.

``blk.3.attn_q.weight`` and ``blk.4.attn_q.weight`` become ``^blk\\.(?:3|4)\\.attn_q\\.weight$``;
when every layer of the universe that has a suffix is selected, ``\\d+`` replaces the list;
suffixes sharing one layer set merge: ``^blk\\.\\d+\\.(?:attn_q|attn_k)\\.weight$``. The patterns
match exactly the selected names among ``universe`` (lower case in, lower case out), so they
work with ``re.search`` / ``re.match`` / std::regex_search alike and never overlap across groups.
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable

_LAYER = re.compile(r"^(.*?)\.(\d+)\.(.*)$")


def _split(name: str) -> tuple[str, int, str] | None:
    m = _LAYER.match(name)
    return (m.group(1), int(m.group(2)), m.group(3)) if m else None


def compress(selected: Iterable[str], universe: Iterable[str]) -> list[str]:
    """Anchored regexes matching exactly ``selected`` among ``universe``."""
    selected = sorted(set(selected))
    all_layers: dict[tuple[str, str], set[int]] = defaultdict(set)
    for name in universe:
        parts = _split(name)
        if parts:
            all_layers[(parts[0], parts[2])].add(parts[1])
    layers: dict[tuple[str, str], set[int]] = defaultdict(set)
    exact = []
    for name in selected:
        parts = _split(name)
        if parts is None:
            exact.append(f"^{re.escape(name)}$")
        else:
            layers[(parts[0], parts[2])].add(parts[1])
    merged: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (prefix, suffix), ls in sorted(layers.items()):
        merged[(prefix, _layer_regex(ls, all_layers[(prefix, suffix)]))].append(re.escape(suffix))
    out = [f"^{re.escape(prefix)}\\.{lrx}\\.{_alternation(sfx)}$" for (prefix, lrx), sfx in merged.items()]
    return out + exact


def _layer_regex(layers: set[int], universe_layers: set[int]) -> str:
    if layers >= universe_layers:
        return r"\d+"
    return _alternation([str(i) for i in sorted(layers)])


def _alternation(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "(?:" + "|".join(items) + ")"
