"""The GGUF backend: our F16 GGUF, then llama.cpp's own quantizer with per-tensor types.

``quantize(source, plan, calibration, out_dir, config)``:

1. writes ``quantized_model/intermediate/<name>-f16.gguf`` with our writer (reused when it is
   already complete); an already-quantized GGUF source is dequantized on the way (a warning says
   so: llama.cpp's ``--allow-requantize`` route, done through F16);
2. runs ``llama_model_quantize`` with a default type and ``(regex, type)`` tensor overrides and
   an importance matrix, into ``quantized_model/<name>-<label>.gguf``;
3. a quantized GGUF source: every tensor that ends up in the type it is stored in keeps the
   source's bytes (``keep_source_tensors``), as llama-quantize does for a tensor already in its
   target type; re-quantizing its dequantization would not give them back exactly;
4. writes ``quantization_plan/quantization_command.sh``: the same with llama.cpp's command line
   tools (every argument shell-quoted; step 3 with gguf-py).

``plan``: ``None`` (``config.gguf.llamacpp_type``, default Q4_K_M, llama.cpp's own mix), a
``{tensor name (GGUF or HF): ggml type}`` dict, a list of ``(regex, type)`` rules, a compiled
``plan.LlamaQuantizeSpec`` or a ``plan.Plan`` of the gguf family.
``calibration``: ``None``, an imatrix path, ``{gguf weight name: mean x**2 per input channel}``,
a :class:`GGUFCalibration`, or any object / dict with ``imatrix_path`` / ``imatrix``.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .. import __version__, layout
from ..errors import ConfigError
from ..ggml import llama_quantize, llama_quantize_command, resolve_ftype, write_imatrix
from ..gguf_writer import check_out_type, gguf_is_complete, shard_files, write_gguf
from ..io import ensure_dir, write_text
from .registry import Artifact, Backend, register_backend

log = logging.getLogger(__name__)
DEFAULT_FTYPE = "Q4_K_M"
SCRIPT_NAME = "quantization_command.sh"
_FLOAT = ("F32", "F16", "BF16")


@dataclass
class GGUFCalibration:
    """What the gguf backend takes from calibration: an imatrix file or in-memory means."""

    imatrix_path: Optional[Path] = None
    imatrix: Optional[Mapping[str, np.ndarray]] = None   # {gguf weight: mean x**2 per input channel}
    input_ids: Optional[object] = None                   # token ids [N, L]: needed by rounding="gptq"

    @classmethod
    def coerce(cls, cal) -> "GGUFCalibration":
        if cal is None or isinstance(cal, cls):
            return cal or cls()
        if isinstance(cal, (str, os.PathLike)):
            return cls(imatrix_path=Path(cal))
        if isinstance(cal, Mapping):
            if set(cal) & {"imatrix_path", "imatrix", "input_ids"}:
                return cls(_path(cal.get("imatrix_path")), cal.get("imatrix"), cal.get("input_ids"))
            return cls(imatrix=cal)
        return cls(_path(getattr(cal, "imatrix_path", None)), getattr(cal, "imatrix", None),
                   getattr(cal, "input_ids", None))


def _path(p) -> Optional[Path]:
    return Path(p) if p is not None else None


@dataclass(frozen=True)
class QuantizeSpec:
    ftype: str                                  # llama-quantize positional type, e.g. "Q4_K_M"
    tensor_types: tuple[tuple[str, str], ...]   # (regex on GGUF names, ggml type), first match wins

    @property
    def label(self) -> str:
        return self.ftype.lower() + ("-mixed" if self.tensor_types else "")


def resolve_spec(plan, config=None, source=None) -> QuantizeSpec:
    """The default type and tensor overrides for ``plan`` (see the module docstring); dict keys
    may be GGUF names or, given ``source``, HF names."""
    default = getattr(getattr(config, "gguf", None), "llamacpp_type", None) or DEFAULT_FTYPE
    if plan is None:
        return QuantizeSpec(resolve_ftype(default)[0], ())
    if hasattr(plan, "tensors") and hasattr(plan, "family"):      # a plan.Plan: compile it
        from ..plan import to_llama_quantize

        plan = to_llama_quantize(plan)
    if hasattr(plan, "ftype") and hasattr(plan, "tensor_types"):  # a compiled LlamaQuantizeSpec
        return QuantizeSpec(resolve_ftype(plan.ftype)[0], tuple((p, str(t).upper()) for p, t in plan.tensor_types))
    if isinstance(plan, Mapping):
        names = {n: (source.gguf_name(n) if source is not None and n in source.tensors else n) for n in plan}
        rules = [(f"^{re.escape(names[n].lower())}$", str(t).upper()) for n, t in plan.items()]
    elif isinstance(plan, (list, tuple)):
        rules = [(str(p), str(t).upper()) for p, t in plan]
    else:
        raise ConfigError(f"gguf backend: unsupported plan of type {type(plan).__name__}")
    ftype = resolve_ftype(default)[0]
    if ftype in _FLOAT and rules:
        raise ConfigError(f"default type {ftype} is not quantized: llama.cpp ignores tensor overrides then")
    return QuantizeSpec(ftype, tuple(rules))


def model_name(source) -> str:
    """The source's name without a trailing quantization tag (``SmolLM2.Q4_1`` -> ``SmolLM2``)."""
    name = re.sub(r"[.\-_](I?Q\d\w*|[BF]F?16|F32)$", "", str(source.name), flags=re.IGNORECASE)
    return re.sub(r"[^\w.\-]+", "_", name).strip("._") or "model"


def quantized_types(source) -> list[str]:
    """The quantized storage types of a source ([] for float sources)."""
    return sorted({t.dtype for t in source.tensors.values() if t.dtype not in _FLOAT})


@register_backend(aliases=("llamacpp",))
class GGUFBackend(Backend):
    name = "gguf"
    format_family = "gguf"
    description = "GGUF: our F16 GGUF writer + llama.cpp quantization with per-tensor types and our imatrix"
    intermediate_type = "F16"
    nthread: Optional[int] = None

    def quantize(self, source, plan, calibration, out_dir, config=None) -> Artifact:
        from ..model import ModelSource, open_source

        source = source if isinstance(source, ModelSource) else open_source(source)
        out_dir, spec = Path(out_dir), resolve_spec(plan, config, source)
        cal = GGUFCalibration.coerce(calibration)
        requant = quantized_types(source)
        if requant:
            log.warning("%s is already quantized (%s): it is dequantized to %s and quantized again "
                        "(tensors that stay in their stored type keep its bytes); quality is bounded by the source",
                        source.name, ", ".join(requant), self.intermediate_type)
        inter = self.intermediate(source, out_dir)
        imat_file = self._imatrix_file(cal, out_dir)
        final = out_dir / layout.QUANTIZED / f"{model_name(source)}-{spec.label}.gguf"
        rounding = getattr(getattr(config, "gguf", None), "rounding", "nearest")
        llama_file = final if rounding == "nearest" else inter.parent / final.name
        llama_quantize(inter, llama_file, spec.ftype, spec.tensor_types, cal.imatrix or imat_file,
                       nthread=self.nthread)
        same = same_type_tensors(source, llama_file) if requant else []
        feedback = None
        if rounding == "gptq":
            feedback = self._gptq_rounding(source, llama_file, final, cal, imat_file, config, skip=same)
        kept = keep_source_tensors(source, final, same) if same else []
        script = write_text(out_dir / layout.PLAN / SCRIPT_NAME,
                            quantization_script(source, inter, final, spec, imat_file, requant,
                                                self.intermediate_type.upper(), kept=bool(kept)))
        info = self._info(final, inter, spec, imat_file, requant)
        info["kept_source_tensors"] = len(kept)
        if feedback is not None:
            info.update(rounding="gptq", llamacpp_file=str(llama_file), feedback=feedback)
        return Artifact(self.name, final, [final, script] + ([imat_file] if imat_file else []),
                        final.stat().st_size, info)

    def _gptq_rounding(self, source, llama_file: Path, final: Path, cal: GGUFCalibration,
                       imat_file: Optional[Path], config, skip=()) -> dict:
        """llama.cpp's file re-encoded with our error-feedback encoders (gguf_feedback.py)."""
        from ..ggml.imatrix import load_imatrix_means
        from .gguf_feedback import gptq_round_gguf
        from .int_common import calibration_ids

        ids = calibration_ids(cal.input_ids)
        means = cal.imatrix or (load_imatrix_means(imat_file) if imat_file else None)
        device = getattr(config, "device", None) or "auto"
        g = getattr(config, "gguf", None)
        opts = {} if g is None else dict(act_order=g.feedback_act_order, refit=g.feedback_refit,
                                         first_token_weight=g.feedback_first_token_weight,
                                         percdamp=g.feedback_percdamp)
        return gptq_round_gguf(source, llama_file, final, ids, means, device=device, skip=skip, **opts)

    def intermediate(self, source, out_dir: Path) -> Path:
        """The float GGUF llama.cpp quantizes from; reused when already complete."""
        out_type = check_out_type(self.intermediate_type)
        path = out_dir / layout.QUANTIZED / "intermediate" / f"{model_name(source)}-{out_type.lower()}.gguf"
        if gguf_is_complete(path, source, out_type):
            log.info("reusing %s", path)
            return shard_files(path)[0]
        return write_gguf(source, path, out_type)[0]

    @staticmethod
    def _imatrix_file(cal: GGUFCalibration, out_dir: Path) -> Optional[Path]:
        if cal.imatrix_path is not None:
            return cal.imatrix_path
        if not cal.imatrix:
            return None
        entries = {k: (np.asarray(v, dtype=np.float32), 1.0) for k, v in cal.imatrix.items()}
        return write_imatrix(ensure_dir(out_dir / layout.PLAN) / "imatrix.gguf", entries, datasets=["llm-quantizer"])

    def _info(self, final: Path, inter: Path, spec: QuantizeSpec, imat: Optional[Path], requant) -> dict:
        from gguf import GGUFReader

        types = Counter(t.tensor_type.name for t in GGUFReader(final).tensors)
        return {"ftype": spec.ftype, "tensor_types": [list(r) for r in spec.tensor_types],
                "intermediate": str(inter), "imatrix": str(imat) if imat else None,
                "source_quantized": requant, "tensor_type_counts": dict(sorted(types.items()))}


def _line(argv: list[str], exe_var: str) -> str:
    """``"$VAR" arg ...``: the executable from the environment, every argument quoted."""
    return " ".join([f'"${exe_var}"'] + [shlex.quote(str(a)) for a in argv[1:]])


def same_type_tensors(source, path: Path) -> list[str]:
    """GGUF names of the tensors of ``path`` that have the ggml type and shape they have in the
    (GGUF) ``source``, checked on their first rows: their dequantizations must agree to within
    one quantization step, so that a name or row-order mismatch is never papered over."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    if getattr(source, "kind", None) != "gguf":
        return []
    ours = {t.name: t for t in GGUFReader(path).tensors}
    out = []
    for t in source.reader.tensors:
        o = ours.get(t.name)
        if (o is None or o.tensor_type != t.tensor_type or o.shape.tolist() != t.shape.tolist()
                or int(o.n_bytes) != int(t.n_bytes)):
            continue
        rows = min(8, int(t.shape[1])) if len(t.shape) == 2 else 1
        a = dequantize(_rows(t.data, rows), t.tensor_type).astype(np.float64).ravel()
        b = dequantize(_rows(o.data, rows), t.tensor_type).astype(np.float64).ravel()
        if np.sqrt(np.mean((a - b) ** 2)) > 0.25 * np.sqrt(np.mean(a ** 2)) + 1e-12:
            log.warning("%s: same type %s as the source but different values; not kept", t.name,
                        t.tensor_type.name)
            continue
        out.append(t.name)
    return out


def keep_source_tensors(source, path: Path, names) -> list[str]:
    """Write the source GGUF's stored bytes of ``names`` over theirs in ``path`` (atomically)."""
    from .gguf_feedback import patch_tensors

    names = set(names)
    raw = {t.name: np.asarray(t.data).view(np.uint8).reshape(-1) for t in source.reader.tensors if t.name in names}
    patch_tensors(path, path, raw)
    log.info("%d tensors keep the source's own bytes (already in their planned type)", len(raw))
    return sorted(raw)


def _rows(data, rows: int) -> np.ndarray:
    """The first ``rows`` rows of a tensor's data as gguf-py holds it (2-D: [rows, bytes or values])."""
    a = np.asarray(data)
    return a[:rows] if a.ndim >= 2 else a


_KEEP_SCRIPT = """# 3. tensors already in the type the source stores them in keep the source's bytes
#    (llama-quantize does the same for a tensor already in its target type); needs gguf-py
python3 - {src} {final} <<'EOF'
import sys
from gguf import GGUFReader
src, out = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
mine = {{t.name: t for t in out.tensors}}
with open(sys.argv[2], "r+b") as f:
    for t in src.tensors:
        o = mine.get(t.name)
        if o is not None and o.tensor_type == t.tensor_type and o.n_bytes == t.n_bytes and list(o.shape) == list(t.shape):
            f.seek(o.data_offset)
            f.write(t.data.tobytes())
EOF"""


def quantization_script(source, inter: Path, final: Path, spec: QuantizeSpec, imatrix: Optional[Path],
                        requant: list[str], out_type: str = "F16", kept: bool = False) -> str:
    """A bash script reproducing ``final`` with llama.cpp's tools (``bash -n`` clean); ``kept``:
    the file has tensors that kept the quantized source's bytes (step 3, with gguf-py)."""
    inter, final = Path(inter).resolve(), Path(final).resolve()
    quant = llama_quantize_command(inter, final, spec.ftype, spec.tensor_types,
                                   imatrix_file=Path(imatrix).resolve() if imatrix else None)
    lines = ["#!/usr/bin/env bash",
             f"# Generated by llm-quantizer {__version__}: reproduces {final.name} with llama.cpp's tools.",
             "# LLAMA_QUANTIZE / CONVERT_HF_TO_GGUF: the llama-quantize binary and convert_hf_to_gguf.py.",
             "set -euo pipefail",
             'LLAMA_QUANTIZE="${LLAMA_QUANTIZE:-llama-quantize}"',
             'CONVERT_HF_TO_GGUF="${CONVERT_HF_TO_GGUF:-convert_hf_to_gguf.py}"', ""]
    lines += _convert_step(source, inter, out_type, requant)
    lines += ["", f"# 2. quantize: default {spec.ftype}, {len(spec.tensor_types)} per-tensor override(s)"
              + (", importance matrix" if imatrix else ""), _line(quant, "LLAMA_QUANTIZE"), ""]
    if kept:
        lines += [_KEEP_SCRIPT.format(src=shlex.quote(str(Path(source.path).resolve())),
                                      final=shlex.quote(str(final))), ""]
    return "\n".join(lines)


def _convert_step(source, inter: Path, out_type: str, requant: list[str]) -> list[str]:
    head = [f"# 1. {out_type} GGUF of the source. llm-quantizer wrote it with its own GGUF writer (gguf-py)."]
    if getattr(source, "reader", None) is not None:           # a GGUF source
        cmd = llama_quantize_command(Path(source.path).resolve(), inter, out_type, allow_requantize=True)
        note = (f"#    The source is already quantized ({', '.join(requant)}): it was dequantized, so the result "
                "is bounded by the source's quality." if requant else "#    The source is a float GGUF.")
        return head + [note, "#    The same with llama.cpp:", _line(cmd, "LLAMA_QUANTIZE")]
    args = [Path(source.path).resolve(), "--outtype", out_type.lower(), "--outfile", inter]
    return head + ["#    llama.cpp's converter gives the same tensors:",
                   " ".join(['python3 "$CONVERT_HF_TO_GGUF"'] + [shlex.quote(str(a)) for a in args])]
