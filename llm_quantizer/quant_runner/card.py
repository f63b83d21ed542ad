"""The model card (README.md) of a quantized checkpoint: method, schemes, per-layer bits."""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Optional

from .. import __version__
from ..quant.rtn import QuantArgs
from .schemes import scheme_label

_METHODS = {"gptq": "GPTQ (Frantar et al. 2022)", "awq": "AWQ (Lin et al. 2023)", "rtn": "round-to-nearest"}


def per_layer_table(source, schemes: Mapping[str, Optional[QuantArgs]]) -> str:
    """Markdown table: one row per decoder layer, one column per stored linear."""
    lm = source.layer_map
    paths = list(lm.stored_linears())
    cols = ["+".join(lm.stored_linears()[p]) for p in paths]
    lines = ["| layer | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for i in range(source.num_layers):
        cells = [scheme_label(schemes.get(f"{lm.layer_prefix(i)}{p}")) for p in paths]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_card(source, method: str, schemes: Mapping[str, Optional[QuantArgs]], info: dict) -> str:
    counts = Counter(scheme_label(a) for a in schemes.values())
    labels = sorted({scheme_label(a).split("_")[0] for a in schemes.values()})
    asym = any(a is not None and not a.symmetric for a in schemes.values())
    tags = ["compressed-tensors", method, "llm-quantizer"] + [lab for lab in labels if lab != "BF16"]
    out = ["---", "library_name: transformers", f"base_model: {source.name}", "tags:"]
    out += [f"- {t}" for t in tags] + ["---", "", f"# {source.name} — {method.upper()} (llm-quantizer)", ""]
    fmt = info.get("checkpoint_format", "compressed-tensors")
    lm = source.layer_map
    outer = {m: schemes.get(m) for m in (lm.embed_path, lm.lm_head_path) if schemes.get(m) is not None}
    kept = ("Norms stay in bfloat16; " + ", ".join(f"`{m}` is {scheme_label(a)}" for m, a in outer.items())
            + ("" if lm.lm_head_path in outer or not source.tied_embeddings else " (the tied LM head shares it)")
            + "." if outer else "Embeddings, norms and the LM head stay in bfloat16.")
    stored = ("compressed-tensors `pack-quantized` (one config group per bit width / group size / symmetry). "
              + kept if fmt == "compressed-tensors" else
              f"a classic `quant_method: {fmt}` checkpoint (float16; loads with optimum + gptqmodel). "
              "Embeddings, norms and the LM head stay in float16.")
    out += [f"Quantized with {_METHODS.get(method, method)} by llm-quantizer {__version__}; weights stored as "
            + stored, ""]
    out += ["| scheme | modules |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(counts.items())] + [""]
    details = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))}
    if details:
        out += ["Settings: " + ", ".join(f"{k}={v}" for k, v in details.items()), ""]
    if outer and lm.embed_path in outer:
        out += ["## Load", "", "The embedding is a packed compressed-tensors Embedding: vLLM with compressed-tensors "
                "embedding support serves it; transformers <= 5.24 `from_pretrained` cannot load it yet "
                "(its weight init reads `Embedding.weight`). With llm-quantizer installed:", "",
                "```python", "from llm_quantizer.quant_runner.ct_load import load_dequantized",
                "from transformers import AutoTokenizer",
                'model = load_dequantized("path/to/this/folder")     # decompressed by compressed-tensors',
                'tok = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", ""]
    else:
        out += ["## Load", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
                'tok = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", ""]
    if asym:
        out += ["Note: asymmetric (zero-point) schemes load with transformers <= 5.22.2 + compressed-tensors "
                "0.20 or with vLLM; transformers >= 5.23 with compressed-tensors >= 0.18 reports a "
                "zero-point size mismatch.", ""]
    out += ["## Bits per layer", "", per_layer_table(source, schemes), ""]
    return "\n".join(out)
