"""The measure stage: one engine pass with every observer, then measurements.json,
the importance analysis and llama.cpp's importance matrix."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import layout
from ..engine import EngineOptions, LayerwiseEngine
from ..engine.observers.activations import ActivationStats
from ..engine.observers.importance import ImportanceObserver
from ..engine.observers.outliers import OutlierObserver
from ..engine.observers.probes import ErrorProbe, stored_types
from ..engine.observers.transfer import ResidualTransfer
from ..formats import FLOAT_TYPES, get_format
from ..io import write_json
from ..model.source import ModelSource

SCHEMA_VERSION = 1

DEFAULT_FORMATS = {
    "gguf": ["Q2_K", "Q3_K", "Q4_0", "Q4_K", "IQ4_XS", "Q5_0", "Q5_K", "Q6_K", "Q8_0", "F16"],
    "int": ["int2_g32", "int2_g64", "int2_g128", "int3_g32", "int3_g64", "int3_g128", "int4_g32", "int4_g64",
            "int4_g128", "int8_g32", "int8_g64", "int8_g128", "BF16"],
}


@dataclass
class MeasureResult:
    measurements: dict
    importance: dict
    imatrix: dict                       # HF weight name -> (sum x^2 [in], count)
    paths: dict


def run_measurements(source: ModelSource, input_ids: torch.Tensor, formats: list[str], metric: str = "lim",
                     device: str = "auto", batch_size: int = 4, progress: bool = True,
                     rounding: str = "nearest") -> MeasureResult:
    """``rounding``: how the error probes round int formats, "nearest" or "gptq" (GPTQ on each
    linear's own H; see ``engine.observers.probes``). GGUF formats among ``formats``: each also
    pays the error of llama.cpp's runtime rounding of its input (``ggml.runtime``)."""
    runtime = any(f not in FLOAT_TYPES and get_format(f).family == "gguf" for f in formats)
    stats, imp, out = ActivationStats(runtime=runtime), ImportanceObserver(), OutlierObserver()
    probe = ErrorProbe(formats, stored=stored_types(source), rounding=rounding, runtime=runtime)
    transfer = ResidualTransfer()
    eng = LayerwiseEngine(source, EngineOptions(device=device, batch_size=batch_size, progress=progress))
    eng.run(input_ids, [stats, imp, out, probe, transfer])
    importance = {**imp.result(), **out.result(), "selected_metric": metric}
    meas = build_measurements(source, probe.result(), importance, metric, tokens=int(input_ids.numel()),
                              transfer=transfer.result()["tensors"])
    return MeasureResult(meas, importance, stats.imatrix, {})


def layer_weights(per_layer: list[dict], metric: str, power: float = 0.5, clip=(0.1, 10.0)) -> dict[int, float]:
    """The planner's error weight per layer: importance normalised to mean 1, damped by a square
    root and clipped to [0.1, 10]. LIM spans ~1000x on real models (layer 0 vs the middle);
    used raw it sends middle layers to 2 bits although their output errors still add up."""
    vals = {d["layer"]: max(float(d[metric]), 0.0) for d in per_layer}
    mean = sum(vals.values()) / max(len(vals), 1)
    if mean <= 0:
        return {i: 1.0 for i in vals}
    return {i: min(max((v / mean) ** power, clip[0]), clip[1]) for i, v in vals.items()}


def build_measurements(source: ModelSource, probes: dict, importance: dict, metric: str, tokens: int,
                       transfer: dict | None = None) -> dict:
    """``transfer``: HF weight name -> residual transfer factor (``ResidualTransfer``)."""
    lm = source.layer_map
    transfer = transfer or {}
    weights = layer_weights(importance["layers"], metric)
    super_tensors = {s["tensor"] for s in importance["super_weights"]}
    tensors = []
    for info in source.tensors.values():
        layer, kind = lm.classify(info.name)
        probe = probes["tensors"].get(info.name, {})
        runtime = {f: p["runtime"] for f, p in probe.items() if "runtime" in p}
        tensors.append({
            "name": info.name, "gguf_name": source.gguf_name(info.name), "kind": kind, "layer": layer,
            "shape": list(info.shape), "numel": info.numel, "source_dtype": info.dtype, "source_bytes": info.nbytes,
            "quantizable": len(info.shape) == 2,
            "importance": weights.get(layer, 1.0) if layer is not None else 1.0,
            "super_weight": info.name in super_tensors,
            "transfer": transfer.get(info.name),
            "errors": {f: p["error"] for f, p in probe.items()},
            **({"runtime_errors": runtime} if runtime else {}),
            "effective": {f: p["effective"] for f, p in probe.items() if p["effective"] != f},
        })
    total_params = sum(t["numel"] for t in tensors)
    stored = sum(t["source_bytes"] for t in tensors)
    # A quantized source (GGUF) is dequantized before we quantize: its "original" is 16-bit.
    original = stored if source.kind == "hf" else 2 * total_params
    model_extra = {"gguf_overhead_bytes": gguf_overhead(source, tensors)}
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": source.name, "ref": source.ref, "architecture": source.model_type,
                  "num_layers": source.num_layers, "total_params": total_params,
                  "original_bytes": original, "stored_bytes": stored, "dtype": _float_dtype(source),
                  "tied_embeddings": source.tied_embeddings, **model_extra},
        "calibration": {"tokens": tokens},
        "metric": metric, "formats": probes["formats"],
        "error_definition": "tr(dW H dW^T) / tokens, H = sum x x^T of the linear's calibration inputs",
        "probe_rounding": probes.get("rounding", "nearest"),
        **({"runtime_error_definition": "GGUF formats include E||W dx||^2 / token, dx = llama.cpp CPU's rounding "
                                        "of the linear's input to the weight type's vec_dot_type (Q8_0/Q8_K/F16/BF16)"}
           if probes.get("runtime") else {}),
        "transfer_definition": "per-token relative residual error of the decoder layer / the linear's own "
                               "output error, both with 4-bit g32 RTN (errors * transfer: residual error)",
        "super_weights": importance["super_weights"],
        "tensors": tensors,
    }


def gguf_overhead(source: ModelSource, tensors: list[dict]) -> int:
    """Bytes of a GGUF file that are not tensor data: header, metadata, tensor infos, padding.

    A GGUF source: our writer copies its metadata, so its header size is exact. An HF source:
    the tokenizer dominates (each token: 8-byte length + text, a 4-byte score and type; each
    merge: 8 + text), plus per-tensor infos and the 32-byte alignment padding."""
    pad = 16 * len(tensors)
    if source.kind == "gguf":
        return int(source.reader.data_offset) + pad
    infos = sum(8 + len(t["gguf_name"] or t["name"]) + 4 + 8 * len(t["shape"]) + 4 + 8 for t in tensors)
    try:
        tok = source.tokenizer()
        vocab = tok.get_vocab()
        size = sum(8 + len(t.encode()) + 8 for t in vocab)
        model = json.loads(tok.backend_tokenizer.to_str()).get("model", {}) if hasattr(tok, "backend_tokenizer") else {}
        merges = model.get("merges") or []
        size += sum(8 + len(" ".join(m) if isinstance(m, list) else m) for m in merges)
        size += len(getattr(tok, "chat_template", None) or "")
    except Exception:  # noqa: BLE001 - no tokenizer: a generous fixed guess
        size = 1 << 20
    return 4096 + infos + size + pad


def _float_dtype(source: ModelSource) -> str:
    """The 16/32-bit dtype unquantized tensors keep: the source's, bf16 for a quantized source."""
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    counts: dict[str, int] = {}
    for t in source.tensors.values():
        if len(t.shape) == 2:
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel
    top = max(counts, key=counts.get) if counts else "BF16"
    return names.get(top, "bfloat16")


def write_outputs(res: MeasureResult, out_dir: Path, source: ModelSource, datasets=("calibration",),
                  chunk_size: int = 512) -> dict:
    from ..ggml.imatrix import write_imatrix
    from .plots import plot_layer_importance, plot_weight_distributions

    out_dir = Path(out_dir)
    paths = {"measurements": write_json(out_dir / layout.MEASUREMENTS, res.measurements),
             "importance": write_json(out_dir / layout.IMPORTANCE / "importance_analysis.json", res.importance)}
    entries = {}
    for name, (sum_sq, count) in res.imatrix.items():
        gname = source.gguf_name(name) if name != "lm_head.weight" or not source.tied_embeddings else "output.weight"
        if gname:
            entries[gname] = (sum_sq.float().numpy(), float(count))
    tokens = res.measurements["calibration"]["tokens"]
    paths["imatrix"] = write_imatrix(out_dir / layout.IMPORTANCE / "imatrix.gguf", entries, datasets=list(datasets),
                                     chunk_count=max(tokens // chunk_size, 1), chunk_size=chunk_size)
    paths["layer_importance_png"] = plot_layer_importance(res.importance, out_dir / layout.IMPORTANCE /
                                                          "layer_importance.png")
    paths["weight_distributions_png"] = plot_weight_distributions(source, out_dir / layout.IMPORTANCE /
                                                                  "weight_distributions.png")
    res.paths = paths
    return paths
