"""One engine pass that quantizes every decoder layer and streams a compressed-tensors checkpoint."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..engine import EngineOptions, LayerwiseEngine
from ..errors import CalibrationError, ConfigError, ModelSourceError
from ..io import write_json, write_text
from ..quant.rtn import QuantArgs, quantize_rtn
from .awq_pass import AWQOptions, AWQPass
from .card import model_card
from .ct_writer import CompressedTensorsWriter, checkpoint_config
from .gptq_pass import GPTQOptions, GPTQPass
from .passes import QuantPass, RTNPass
from .schemes import CT_DTYPE, QuantizedLinear, ct_config, embedding_module_names, scheme_label

log = logging.getLogger(__name__)
METHODS = ("rtn", "gptq", "awq")
INFO_FILE = "llm_quantizer.json"


@dataclass
class IntQuantResult:
    path: Path
    method: str
    schemes: dict[str, Optional[QuantArgs]]
    quantization_config: dict
    stats: dict
    seconds: float
    nbytes: int
    fake_state: Optional[dict[str, torch.Tensor]] = field(default=None, repr=False)


class _Tee:
    """Sink forwarding to the writer; keeps the decompressed layer tensors when asked (tests)."""

    def __init__(self, writer: CompressedTensorsWriter, keep_fake: bool):
        self.writer, self.fake = writer, ({} if keep_fake else None)

    def add_layer(self, prefix, tensors, quantized: dict[str, QuantizedLinear]):
        self.writer.add_layer(prefix, tensors, quantized)
        if self.fake is not None:
            self.fake.update({k: v.to(self.writer.dtype) for k, v in tensors.items()})
            self.fake.update({f"{m}.weight": q.dequantize().to(self.writer.dtype) for m, q in quantized.items()})

    def add_outer(self, module: str, q: QuantizedLinear) -> None:
        """A quantized tensor outside the layers (embedding, lm_head)."""
        self.writer.add_quantized(module, q)
        if self.fake is not None:
            self.fake[f"{module}.weight"] = q.dequantize().to(self.writer.dtype)


def _write_outer_tensors(source, schemes, sink: _Tee) -> None:
    """Everything outside the decoder layers: 16-bit, except the embedding / untied lm_head when
    the schemes quantize them (RTN: they have no Hessian here; the tied head is the embedding)."""
    layers = source.layer_map.layers_path + "."
    for name in source.tensors:
        if name.startswith(layers):
            continue
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        args = schemes.get(module) if module is not None else None
        if args is None:
            sink.writer.add_tensors({name: source.load(name)})
            continue
        codes, scales, zeros = _rtn_by_rows(source.load(name), args)
        sink.add_outer(module, QuantizedLinear(args, codes, scales.to(sink.writer.dtype), zeros))


def _rtn_by_rows(w: torch.Tensor, args: QuantArgs, rows: int = 1 << 14):
    """``quantize_rtn`` over row chunks (rows quantize independently): a 262k-row embedding
    never has its float32 copies and per-column scale expansions in memory at once."""
    parts = [quantize_rtn(w[i:i + rows].float(), args) for i in range(0, w.shape[0], rows)]
    return tuple(torch.cat(p) for p in zip(*parts))


def _make_pass(method: str, schemes, sink, names, options) -> QuantPass:
    if method == "gptq":
        return GPTQPass(schemes, sink, names, options or GPTQOptions())
    if method == "awq":
        return AWQPass(schemes, sink, names, options or AWQOptions())
    if method == "rtn":
        p = RTNPass(schemes, sink, names)
        p.propagate = False
        return p
    raise ConfigError(f"unknown int quantization method {method!r}; known: {', '.join(METHODS)}")


def _writer(fmt: str, schemes, plan, final_dir, options, source):
    """(quantization_config, writer, checkpoint dtype) for a checkpoint format."""
    if fmt == "compressed-tensors":
        return ct_config(schemes, plan), CompressedTensorsWriter(final_dir), CT_DTYPE
    from .classic import CLASSIC_DTYPE, ClassicWriter, check_classic, classic_config

    outer = set(embedding_module_names(source))
    if any(schemes.get(m) is not None for m in outer):
        raise ConfigError(f"a classic {fmt} checkpoint cannot store a quantized embedding / lm_head; "
                          "write compressed-tensors (the default) or keep them in 16-bit (--int-embeddings keep)")
    args = check_classic(fmt, {m: a for m, a in schemes.items() if m not in outer})
    return (classic_config(fmt, args, bool(getattr(options, "act_order", False))),
            ClassicWriter(final_dir, fmt), CLASSIC_DTYPE)


def _layer_tensor_names(source):
    by_prefix: dict[str, list[str]] = {}
    lm = source.layer_map
    prefixes = [lm.layer_prefix(i) for i in range(source.num_layers)]
    for n in source.tensors:
        for p in prefixes:
            if n.startswith(p):
                by_prefix.setdefault(p, []).append(n)
                break
    return lambda prefix: by_prefix.get(prefix, [])


def quantize_int(source, method: str, schemes: Mapping[str, Optional[QuantArgs]], input_ids: Optional[torch.Tensor],
                 final_dir: str | Path, *, plan=None, options=None, device: str = "auto", batch_size: int = 4,
                 progress: bool = True, keep_fake: bool = False, card_info: Optional[dict] = None,
                 checkpoint_format: str = "compressed-tensors", compute_dtype: torch.dtype = torch.float32) -> IntQuantResult:
    """Quantize ``source`` layer by layer with ``method`` and write ``final_dir`` atomically.

    ``checkpoint_format``: ``compressed-tensors`` (pack-quantized, per-layer bits), or for uniform
    bits the classic ``gptq`` / ``awq`` layouts (``classic``; float16, scales quantized in float16)."""
    t0 = time.perf_counter()
    if input_ids is None:
        if method != "rtn":
            raise CalibrationError(f"{method} needs calibration token ids (N x L)")
        input_ids = torch.zeros(1, 8, dtype=torch.long)      # RTN: layers are only streamed
    qconfig, writer, dtype = _writer(checkpoint_format, schemes, plan, final_dir, options, source)
    sink = _Tee(writer, keep_fake)
    qpass = _make_pass(method, schemes, sink, _layer_tensor_names(source), options)
    try:
        engine = LayerwiseEngine(source, EngineOptions(device=device, dtype=compute_dtype, batch_size=batch_size,
                                                       progress=progress, run_head=False))
        engine.run(input_ids, [qpass], transform=qpass)
        _write_outer_tensors(source, schemes, sink)
        info = {"method": method, "checkpoint_format": checkpoint_format, "compute_dtype": str(compute_dtype).removeprefix("torch."), "calibration_tokens": int(input_ids.numel()) if method != "rtn" else 0,
                "device": str(engine.device), **(card_info or {})}
        if options is not None:
            info.update({f"{method}_{k}": v for k, v in asdict(options).items()})
        seconds = time.perf_counter() - t0
        info["seconds"] = round(seconds, 2)

        def extras(folder: Path) -> None:
            _save_tokenizer_and_generation(source, folder)
            write_text(folder / "README.md", model_card(source, method, schemes, info))
            write_json(folder / INFO_FILE, {**info, "schemes": {m: scheme_label(a) for m, a in schemes.items()},
                                            "stats": qpass.stats})

        path = writer.finish(checkpoint_config(source, qconfig, dtype), extras)
    except BaseException:
        writer.abort()
        raise
    return IntQuantResult(path, method, dict(schemes), qconfig, qpass.stats, seconds, writer.total_bytes, sink.fake)


def _save_tokenizer_and_generation(source, folder: Path) -> None:
    from transformers import GenerationConfig

    try:
        source.tokenizer().save_pretrained(str(folder))
    except (ModelSourceError, OSError, ValueError) as e:
        log.warning("no tokenizer saved with the quantized model (%s)", e)
    gen = None
    src_dir = getattr(source, "path", None)
    if src_dir is not None and (Path(src_dir) / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(str(src_dir))
    if gen is None:
        gen = GenerationConfig.from_model_config(source.config)
    gen.save_pretrained(str(folder))
