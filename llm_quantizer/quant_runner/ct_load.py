"""Reload a compressed-tensors checkpoint whose embedding (or tied head) is quantized.

compressed-tensors >= 0.20 packs an ``nn.Embedding`` exactly like a Linear (``weight_packed``,
``weight_scale``, ``weight_shape``; a config group targets it by name) and vLLM serves such
embeddings, but transformers 5.24 ``from_pretrained`` cannot load one: its generic
``_init_weights`` reads ``Embedding.weight``, which the packed module no longer has
(AttributeError; upstream PRs #47959 / #48123), and with tied embeddings ``tie_weights`` then
looks for ``embed_tokens.weight`` too. Its ``dequantize=True`` route decompresses every module
with the first config group's scheme, which is wrong for mixed bits.

So such a checkpoint is reloaded here: the model is built from its config (without the
quantization config), the tensors are decompressed by compressed-tensors' own model-free
``CompressedTensorsDequantizer`` (each config group's scheme, leftover quantization parameters
refused), loaded, and the head re-tied. The logits equal our fake-quantized model's.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelSourceError


def _config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def packed_embeddings(path: str | Path) -> list[str]:
    """Module names of the packed embedding / lm_head in a compressed-tensors checkpoint dir."""
    from safetensors import safe_open

    from ..model.archs import get_layer_map

    path = Path(path)
    cfg = _config(path)
    if (cfg.get("quantization_config") or {}).get("quant_method") != "compressed-tensors":
        return []
    try:
        lm = get_layer_map(str(cfg.get("model_type")))
    except Exception:  # noqa: BLE001 - an architecture we have no map for: not ours to reload
        return []
    wanted = {f"{m}.weight_packed": m for m in (lm.embed_path, lm.lm_head_path)}
    found = []
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            found += [wanted[k] for k in st.keys() if k in wanted]
    return sorted(found)


def load_dequantized(path: str | Path, dtype=torch.float32, device: str = "cpu"):
    """The checkpoint as a dense transformers model (see the module docstring)."""
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    try:
        cfg = AutoConfig.from_pretrained(str(path))
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        tensors: dict[str, torch.Tensor] = {}
        for f in sorted(path.glob("*.safetensors")):
            tensors.update(load_file(str(f)))
        dense = CompressedTensorsDequantizer(str(path), dtype=dtype).validate(tensors)
    except (OSError, ValueError, KeyError) as e:
        raise ModelSourceError(f"{path}: compressed-tensors cannot decompress it ({e.__class__.__name__}: {e})") from None
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    res = model.load_state_dict(dense, strict=False)
    tied = {k for k in res.missing_keys if getattr(cfg, "tie_word_embeddings", False) and k.startswith("lm_head.")}
    if res.unexpected_keys or set(res.missing_keys) - tied:
        raise ModelSourceError(f"{path}: checkpoint does not match its config (missing "
                               f"{sorted(set(res.missing_keys) - tied)[:3]}, unexpected {res.unexpected_keys[:3]})")
    model.tie_weights()
    return model.to(device).eval()
