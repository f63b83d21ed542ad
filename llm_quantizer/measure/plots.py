"""Plots of the importance analysis."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _plt().close(fig)
    return Path(path)


def plot_layer_importance(importance: dict, path: Path) -> Path:
    plt = _plt()
    layers = importance["layers"]
    xs = [d["layer"] for d in layers]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4))
    for m in importance["metrics"]:
        v = np.array([d[m] for d in layers], dtype=float)
        ax.plot(xs, v / max(v.max(), 1e-12), marker="o", ms=3, label=m)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("importance (normalised to max)")
    ax.set_title(f"layer importance (planner uses {importance.get('selected_metric')})")
    ax.legend()
    ma = importance.get("massive_activations", [])
    ax2.semilogy([d["layer"] for d in ma], [d["value"] for d in ma], marker="o", ms=3, label="max |hidden|")
    sp = importance.get("down_proj_spikes", [])
    ax2.semilogy([d["layer"] for d in sp], [d["out_max"] for d in sp], marker="s", ms=3, label="max |down_proj out|")
    for s in importance.get("super_weights", []):
        ax2.annotate(f"super weight\n[{s['row']}, {s['col']}]", (s["layer"], s["out_max"]), fontsize=8)
    ax2.set_xlabel("decoder layer")
    ax2.set_title("massive activations and super weights")
    ax2.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_weight_distributions(source, path: Path, max_layers: int = 6, sample: int = 200_000) -> Path:
    """Histograms of each linear kind's weights in a few layers (loaded one at a time)."""
    plt = _plt()
    lm = source.layer_map
    n = source.num_layers
    picks = sorted({0, n // 4, n // 2, 3 * n // 4, n - 1})[:max_layers]
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, i in zip(axes, picks):
        for rel, kinds in lm.stored_linears().items():
            name = f"{lm.layer_prefix(i)}{rel}.weight"
            if name not in source.tensors:
                continue
            w = source.load(name).float().numpy().ravel()
            if w.size > sample:
                w = rng.choice(w, sample, replace=False)
            ax.hist(w, bins=120, histtype="step", log=True, label="+".join(kinds))
        ax.set_title(f"layer {i}")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{source.name}: weight distributions")
    fig.tight_layout()
    return _save(fig, path)
