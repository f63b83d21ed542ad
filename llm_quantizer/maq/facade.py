"""MaqQuantizationConfig / MaqQuantizer with MAQ's documented semantics, saving real packed
weights (compressed-tensors pack-quantized, per-layer bits) that ``from_pretrained`` loads."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import CalibrationError, ConfigError
from .allocate import LADDER, Allocation, allocate

_HUB_DATASETS = ("wikitext2", "wikitext", "c4", "pileval", "ptb")


class MaqQuantizationConfig:
    """MAQ's config. ``memory_limit``: "70%" or a float <= 1 = share of the device's total memory;
    a float > 1 = GiB (MAQ multiplies by 1024**3). ``dataset``: a local file or folder (text,
    jsonl, parquet); hub dataset names need the network and are refused offline."""

    def __init__(self, quantization_config: Any = None, memory_limit: str | float = "70%", metric: str | None = None,
                 reverse_sort: bool = False, tokenizer: Any = None, dataset: str = "wikitext2",
                 dataset_split: str = "validation", remove_columns=(), n_samples: Optional[int] = None,
                 use_pruning: bool = False, max_seq_len: int = 512, seed: int = 0, ladder=LADDER, **kwargs):
        self.quantization_config = quantization_config
        self.memory_limit, self.metric, self.reverse_sort = memory_limit, metric, reverse_sort
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.tokenizer, self.dataset, self.dataset_split = tokenizer, dataset, dataset_split
        self.remove_columns, self.n_samples = remove_columns, n_samples
        self.use_pruning, self.max_seq_len, self.seed, self.ladder = use_pruning, max_seq_len, seed, tuple(ladder)
        self.extra = kwargs

    @property
    def method(self) -> str:
        qc = self.quantization_config
        name = str(getattr(qc, "quant_method", "gptq")).lower()
        return "awq" if "awq" in name else "gptq"

    def scheme(self) -> tuple[int, bool]:
        """(group size, symmetric) from the GPTQConfig / AwqConfig (MAQ ignores its ``bits``)."""
        qc = self.quantization_config
        group = int(getattr(qc, "group_size", 128) or 128)
        sym = bool(getattr(qc, "sym", True)) if self.method == "gptq" else not bool(getattr(qc, "zero_point", True))
        return group, sym


def device_total_bytes(model) -> int:
    dev = next(model.parameters()).device
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class MaqQuantizer:
    def __init__(self, config: MaqQuantizationConfig, metric: str = "lim"):
        from ..engine.observers.importance import metric_names

        self.config = config
        # the keyword is honoured; MAQ's config-level ``metric`` applies when the keyword is the default
        self.metric = config.metric if (config.metric and metric == "lim") else metric
        if self.metric not in metric_names():
            raise ConfigError(f"unknown metric {self.metric!r}; available: {', '.join(metric_names())}")
        self.scores: dict[int, float] = {}
        self.allocation: Optional[Allocation] = None
        self._ckpt: Optional[Path] = None

    # -- steps ---------------------------------------------------------------------------------
    def calibration_ids(self, tokenizer) -> torch.Tensor:
        from ..calibrate import build_calibration, load_documents

        ds = str(self.config.dataset)
        if not Path(ds).exists():
            where = "a hub dataset" if ds in _HUB_DATASETS or "/" in ds else "not found"
            raise CalibrationError(f"dataset {ds!r} is {where}; this machine is offline: give a local text/jsonl/"
                                   "parquet file or folder")
        docs = load_documents(ds, tokenizer=tokenizer)
        n = self.config.n_samples or 32
        calib = build_calibration(docs, tokenizer, n, self.config.max_seq_len, self.config.seed, allow_fewer=True)
        return calib.input_ids

    def layer_scores(self, source, ids) -> dict[int, float]:
        from ..engine import EngineOptions, LayerwiseEngine
        from ..engine.observers.importance import ImportanceObserver

        obs = ImportanceObserver([self.metric])
        LayerwiseEngine(source, EngineOptions(device="auto", progress=False, run_head=False)).run(ids, [obs])
        return {d["layer"]: d[self.metric] for d in obs.per_layer}

    def quantize_model(self, model, tokenizer=None):
        """Quantize ``model`` in place (its weights become exactly the saved checkpoint's)."""
        from ..model.memory import InMemorySource
        from ..plan.budget import from_memory_limit
        from ..quant_runner import quantize_int, resolve_schemes

        tok = tokenizer or self.config.tokenizer
        if tok is None:
            raise ConfigError("MaqQuantizationConfig needs a tokenizer")
        source = InMemorySource(model, tok)
        ids = self.calibration_ids(tok)
        self.scores = self.layer_scores(source, ids)
        budget = int(from_memory_limit(self.config.memory_limit, device_total_bytes(model)).value)
        group, sym = self.config.scheme()
        self.allocation = allocate(source, self.scores, budget, group, sym, self.config.ladder,
                                   self.config.reverse_sort, self.config.use_pruning)
        if self.allocation.pruned:
            _prune(model, self.allocation.pruned)
            source = InMemorySource(model, tok)
            self.allocation.bits = _renumber(self.allocation.bits, self.allocation.pruned)
        plan = {f"{source.layer_map.layer_prefix(i)}{p}.weight": f"int{b}_g{group if group > 0 else 'ch'}"
                + ("" if sym else "_asym") for i, b in self.allocation.bits.items()
                for p in source.layer_map.stored_linears()}
        schemes = resolve_schemes(source, plan, None)
        self._ckpt = Path(tempfile.mkdtemp(prefix="maq-")) / "model"
        res = quantize_int(source, self.config.method, schemes, ids, self._ckpt, plan=plan, progress=False,
                           keep_fake=True, card_info={"maq": self.summary()})
        from ..quant_runner.schemes import CT_DTYPE

        model.to(getattr(torch, CT_DTYPE) if isinstance(CT_DTYPE, str) else CT_DTYPE)   # as saved
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, t in res.fake_state.items():
                if name in params:
                    params[name].copy_(t.to(params[name].dtype))
        return model

    def summary(self) -> dict:
        a = self.allocation
        return {"metric": self.metric, "memory_limit": str(self.config.memory_limit), "budget_bytes": a.budget_bytes,
                "predicted_bytes": a.total_bytes, "order": a.order, "layer_bits": {str(k): v for k, v in a.bits.items()},
                "pruned_layers": a.pruned, "method": self.config.method, "scores": self.scores}

    def save_model(self, model, save_dir: str | os.PathLike):
        """Write the packed checkpoint (per-layer bits in config.json under ``maq``)."""
        if self._ckpt is None:
            raise ConfigError("call quantize_model(model) before save_model")
        out = Path(save_dir)
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self._ckpt, tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["maq"] = self.summary()
        cfg["num_hidden_layers"] = model.config.num_hidden_layers
        cfg_path.write_text(json.dumps(cfg, indent=2))
        if self.config.tokenizer is not None:
            self.config.tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return out


def _prune(model, layers: list[int]) -> None:
    """Drop whole decoder layers (MAQ's use_pruning) and keep the config consistent."""
    keep = [i for i in range(len(model.model.layers)) if i not in set(layers)]
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in keep)
    for new, layer in enumerate(model.model.layers):
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]


def _renumber(bits: dict[int, int], pruned: list[int]) -> dict[int, int]:
    kept = sorted(bits)
    return {new: bits[old] for new, old in enumerate(kept)}
