"""The layer distribution plot of an architecture report."""
from __future__ import annotations

from pathlib import Path

from ..io import atomic_path

_KIND_ORDER = ("q", "k", "v", "q+k+v", "o", "gate", "up", "gate+up", "down", "norm", "other")


def plot_layer_distribution(report: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    kinds = [k for k in _KIND_ORDER if any(k in L["kinds"] for L in layers)]
    xs = [L["layer"] for L in layers]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    bottom = [0.0] * len(xs)
    for k in kinds:
        vals = [L["kinds"].get(k, {}).get("params", 0) / 1e6 for L in layers]
        ax.bar(xs, vals, bottom=bottom, label=k, width=0.85)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("parameters (M)")
    ax.set_title(f"{report['model']['name']}: parameters per layer and tensor kind")
    ax.legend(ncol=min(6, len(kinds)), fontsize=8)
    t = report["totals"]
    parts = {"embeddings + lm_head": t["embedding_params"], "decoder layers": t["decoder_params"],
             "final norm, other": t["params"] - t["embedding_params"] - t["decoder_params"]}
    parts = {k: v for k, v in parts.items() if v > 0}
    ax2.pie(list(parts.values()), labels=[f"{k}\n{v / 1e6:.1f}M" for k, v in parts.items()], autopct="%1.0f%%")
    ax2.set_title(f"total {t['params'] / 1e6:.1f}M params")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
