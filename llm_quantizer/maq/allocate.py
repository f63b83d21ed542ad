"""MAQ's memory-driven bit allocation: decoder layers, least important first, step down a
ladder of bit widths until the model fits; optionally drop whole layers as a last resort."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BudgetError
from ..formats import get_format, int_format_name
from ..plan.budget import human_bytes

LADDER = (8, 4, 3, 2)


@dataclass
class Allocation:
    bits: dict[int, int]                      # layer -> bits
    order: list[int]                          # quantization order (least important first)
    pruned: list[int] = field(default_factory=list)
    total_bytes: int = 0
    budget_bytes: int = 0


def layer_bytes(source, layer: int, bits: int, group_size: int, symmetric: bool) -> int:
    """Bytes of decoder layer ``layer`` with its linears at ``bits`` (others 16-bit)."""
    fmt = get_format(int_format_name(bits, group_size, symmetric))
    total = 0
    linears = {f"{source.layer_map.layer_prefix(layer)}{p}.weight" for p in source.layer_map.stored_linears()}
    for name in source.layer_tensor_names(layer):
        info = source.tensors[name]
        total += fmt.nbytes(info.shape) if name in linears else 2 * info.numel
    return total


def allocate(source, scores: dict[int, float], budget_bytes: int, group_size: int = 128, symmetric: bool = True,
             ladder=LADDER, reverse: bool = False, use_pruning: bool = False) -> Allocation:
    order = sorted(scores, key=lambda i: scores[i], reverse=reverse)
    cost = {(i, b): layer_bytes(source, i, b, group_size, symmetric) for i in order for b in ladder}
    layer_prefix = source.layer_map.layers_path + "."
    fixed = sum(2 * t.numel for n, t in source.tensors.items() if not n.startswith(layer_prefix))
    bits = {i: ladder[0] for i in order}

    def size() -> int:
        return fixed + sum(cost[i, b] for i, b in bits.items())

    for rung in ladder[1:]:
        for i in order:
            if size() <= budget_bytes:
                return Allocation(bits, order, [], size(), budget_bytes)
            bits[i] = rung
    pruned = []
    while size() > budget_bytes and use_pruning and len(bits) > 1:
        victim = next(i for i in order if i in bits)
        del bits[victim]
        pruned.append(victim)
    if size() > budget_bytes:
        hint = "" if use_pruning else " (use_pruning=True may drop layers)"
        raise BudgetError(f"memory limit {human_bytes(budget_bytes)} is below the smallest model at "
                          f"{ladder[-1]} bits ({human_bytes(size())}){hint}")
    return Allocation(bits, order, pruned, size(), budget_bytes)
