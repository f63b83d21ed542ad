"""validation.png: perplexity, KLD distribution, same-top share and repetition rates per model."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import atomic_path


def plot_validation(path, report: dict, kld_tokens: Sequence[np.ndarray]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arts = report["artifacts"]
    names = [a["label"] for a in arts]
    x = np.arange(len(arts))
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))

    a = ax[0, 0]
    a.bar(x, [r["ppl"] for r in arts], 0.6, color="tab:blue")
    a.axhline(report["original"]["ppl"], color="k", ls="--", label=f"original {report['original']['ppl']:.2f}")
    a.set_title("perplexity (eval text)")
    a.legend(fontsize=8)

    a = ax[0, 1]
    data = [np.clip(k, 1e-8, None) for k in kld_tokens]
    if any(len(d) for d in data):
        a.boxplot(data, positions=x, showfliers=False, whis=(1, 99))
        a.scatter(x, [r["kld_mean"] for r in arts], color="tab:red", zorder=3, label="mean")
        a.set_yscale("log")
        a.legend(fontsize=8)
    a.set_title("KLD to the original per token (box: quartiles, whiskers: p1-p99)")

    a = ax[1, 0]
    a.bar(x, [r["same_top_pct"] for r in arts], 0.6, color="tab:green")
    a.set_ylim(0, 100)
    a.set_title("same top token as the original (%)")

    a = ax[1, 1]
    rep = [r.get("repetition") or {} for r in arts]
    w = 0.38
    a.bar(x - w / 2, [r.get("before_rate", np.nan) for r in rep], w, label="base setting", color="tab:orange")
    a.bar(x + w / 2, [r.get("rate", np.nan) for r in rep], w, label="chosen (llama.cpp)", color="tab:purple")
    orig = report.get("original", {}).get("repetition_rate")
    if orig is not None:
        a.axhline(orig, color="k", ls="--", label=f"original {orig:.3f}")
    a.set_title("repetition rate of generations (seq-rep-3)")
    a.legend(fontsize=8)

    for a in ax.flat:
        a.set_xticks(x)
        a.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
