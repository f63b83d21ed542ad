"""Write a plan under ``<out>/quantization_plan/``: the JSON, a PNG heatmap, the compiled forms.

Files: ``quantization_plan.json``, ``quantization_plan.png``; GGUF plans add
``llama_quantize.json`` ({ftype, tensor_types}) and ``tensor_types.txt`` (one ``regex=type``
per line, as ``--tensor-type`` takes them); int plans add ``compressed_tensors_config.json``
(the ``quantization_config`` block) and ``gptqmodel_config.json``. All writes are atomic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path, write_json, write_text
from ..layout import PLAN
from .compile import to_compressed_tensors, to_gptqmodel, to_llama_quantize
from .types import Plan

LAYER_KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def plan_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / PLAN


def write_plan(plan: Plan, out_dir: str | Path) -> dict[str, Path]:
    """Write every plan artifact; returns {label: path}."""
    d = plan_dir(out_dir)
    paths = {"plan": plan.save(d / "quantization_plan.json"),
             "plot": plot_plan(plan, d / "quantization_plan.png")}
    if plan.family == "gguf":
        spec = to_llama_quantize(plan)
        paths["llama_quantize"] = write_json(d / "llama_quantize.json", spec.to_dict())
        lines = "".join(f"{rx}={t.lower()}\n" for rx, t in spec.tensor_types)
        paths["tensor_types"] = write_text(d / "tensor_types.txt", lines)
    else:
        paths["compressed_tensors"] = write_json(d / "compressed_tensors_config.json",
                                                 to_compressed_tensors(plan))
        if any(t.format.startswith("int") for t in plan.tensors):
            paths["gptqmodel"] = write_json(d / "gptqmodel_config.json", to_gptqmodel(plan))
    return paths


def bits_grid(plan: Plan) -> tuple[np.ndarray, list[str]]:
    """Stored bits per weight, rows = layer kinds present, columns = layers (NaN where absent)."""
    layers = [t.layer for t in plan.tensors if t.layer is not None]
    n = (max(layers) + 1) if layers else 0
    kinds = [k for k in LAYER_KINDS if any(t.kind == k for t in plan.tensors)]
    grid = np.full((len(kinds), n), np.nan)
    for t in plan.tensors:
        if t.layer is not None and t.kind in kinds:
            grid[kinds.index(t.kind), t.layer] = t.bits_per_weight
    return grid, kinds


def plot_plan(plan: Plan, path: str | Path) -> Path:
    """Heatmap of stored bits per weight: layer kinds x layers; other tensors in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, kinds = bits_grid(plan)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * grid.shape[1] + 2.5), 1.0 + 0.45 * max(1, len(kinds))))
    im = ax.imshow(grid if grid.size else np.zeros((1, 1)), aspect="auto", cmap="viridis",
                   interpolation="nearest")
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlabel("layer")
    if grid.size and grid.shape[1] <= 40:
        _annotate(ax, grid, im)
    fig.colorbar(im, ax=ax, label="bits per weight")
    ax.set_title(_title(plan), fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def _annotate(ax, grid: np.ndarray, im) -> None:
    for (r, c), v in np.ndenumerate(grid):
        if np.isfinite(v):
            color = "k" if im.norm(v) > 0.6 else "w"
            ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=6, color=color)


def _title(plan: Plan) -> str:
    t = plan.totals
    extra = ", ".join(f"{x.kind}={x.format}" for x in plan.tensors if x.kind in ("embed", "lm_head"))
    return (f"{plan.model.get('name', '')}: {t.bytes / 1e9:.3f} GB of {t.budget_bytes / 1e9:.3f} GB, "
            f"{t.bpw:.2f} bpw" + (f" ({extra})" if extra else ""))
