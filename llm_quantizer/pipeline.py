"""The whole run: analyze -> calibrate -> measure -> plan -> quantize -> validate -> report.

Resumable: each finished stage leaves a manifest (``.stages/<stage>.json``) with the hash of
its inputs (config section, upstream outputs, model files, versions) and of its outputs. A
rerun skips a stage whose manifest matches and whose outputs are intact; ``force`` redoes all.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

from . import __version__, api, layout
from .config import RunConfig
from .errors import ConfigError
from .io import ensure_dir, read_json, write_json, write_text
from .model import ModelSource, open_source

STAGES = ("analyze", "calibrate", "measure", "plan", "quantize", "validate", "report")


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _quick_digest(path: Path) -> str:
    """Size + mtime (model files are large: their content is not re-hashed)."""
    st = path.stat()
    return f"{st.st_size}:{int(st.st_mtime)}"


def source_fingerprint(src: ModelSource) -> dict:
    files = sorted({t.file for t in src.tensors.values()})
    return {"ref": src.ref, "files": {f: _quick_digest(Path(f)) for f in files}}


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Stages:
    """Manifest bookkeeping for one output directory."""

    def __init__(self, out: Path, force: bool = False, log: Callable[[str], None] = print):
        self.out, self.force, self.log = out, force, log
        self.dir = out / ".stages"

    def _manifest(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

    def done(self, stage: str, key: dict) -> bool:
        m = self._manifest(stage)
        if self.force or not m.exists():
            return False
        try:
            data = read_json(m)
        except (OSError, ValueError):
            return False
        if data.get("key") != _key(key):
            return False
        return all((self.out / p).exists() and file_digest(self.out / p) == d for p, d in data["outputs"].items())

    def record(self, stage: str, key: dict, outputs: list[Path]) -> None:
        rel = {str(Path(p).resolve().relative_to(self.out.resolve())): file_digest(Path(p)) for p in outputs}
        write_json(self._manifest(stage), {"stage": stage, "key": _key(key), "inputs": key, "outputs": rel,
                                           "version": __version__})

    def output_digest(self, stage: str) -> str:
        return _key(read_json(self._manifest(stage))["outputs"])

    def run(self, stage: str, key: dict, fn: Callable[[], list[Path]]) -> bool:
        """Run ``fn`` unless the stage is done; returns True when it ran."""
        if self.done(stage, key):
            self.log(f"[{stage}] up to date, skipped")
            return False
        self.log(f"[{stage}] running")
        t0 = time.perf_counter()
        self.record(stage, key, fn())
        self.log(f"[{stage}] done in {time.perf_counter() - t0:.1f} s")
        return True


def write_run_script(cfg: RunConfig, out: Path) -> Path:
    """run.sh: reproduces this run with the same config (embedded, every argument quoted)."""
    cfg_json = cfg.to_json()
    lines = ["#!/usr/bin/env bash", "# Reproduces this llm-quantizer run with the same config.", "set -euo pipefail",
             'cfg="$(mktemp)"', "trap 'rm -f \"$cfg\"' EXIT",
             "cat > \"$cfg\" <<'LLM_QUANTIZER_CONFIG'", cfg_json.rstrip("\n"), "LLM_QUANTIZER_CONFIG",
             f"{shlex.quote(sys.executable)} -m llm_quantizer run --config \"$cfg\" \"$@\""]
    if "LLM_QUANTIZER_CONFIG" in cfg_json:
        raise ConfigError("config contains the run.sh heredoc marker")
    return write_text(out / "run.sh", "\n".join(lines) + "\n")


def _files(out: Path, *rel: str) -> list[Path]:
    return [out / r for r in rel if (out / r).exists()]


def run_pipeline(cfg: RunConfig, force: bool = False, log: Callable[[str], None] = print) -> dict:
    if not cfg.model:
        raise ConfigError("no model given (MODEL or --model)")
    _check_int_options(cfg)
    src = open_source(cfg.model)
    out = ensure_dir(cfg.output_dir)
    cfg.save(out / "run_config.json")
    write_run_script(cfg, out)
    st = Stages(out, force, log)
    fp = source_fingerprint(src)
    results: dict = {}
    if not cfg.skip_architecture:
        st.run("analyze", {"model": fp}, lambda: [api.analyze(src, out).json_path, layout.architecture_png(out)])
    c = cfg.calibration
    data_digest = {str(p): file_digest(p) for d in c.data for p in _data_files(Path(d))}
    st.run("calibrate", {"model": fp, "cal": c.model_dump(), "data": data_digest}, lambda: _calibrate(src, out, cfg))
    measure_key = {"model": fp, "cal": st.output_digest("calibrate"), "backend_family": _family(cfg.backend),
                   "metric": cfg.metric}
    st.run("measure", measure_key, lambda: _measure(src, out, cfg))
    quant_inputs = {"measure": st.output_digest("measure")}
    if cfg.budget:
        st.run("plan", {**quant_inputs, "budget": cfg.budget, "plan": cfg.plan.model_dump(),
                        "backend": cfg.backend}, lambda: _plan(src, out, cfg, log))
        quant_inputs["plan"] = st.output_digest("plan")
    opts = getattr(cfg, cfg.backend).model_dump()
    st.run("quantize", {**quant_inputs, "backend": cfg.backend, "options": opts, "budget": cfg.budget},
           lambda: _quantize(src, out, cfg, results))
    return _after_quantize(src, out, cfg, st, results)


def _after_quantize(src, out, cfg, st, results) -> dict:
    if cfg.skip_validation:
        st.log("[validate] skipped (--skip-validation)")
    else:
        key = {"quantize": st.output_digest("quantize"), "validation": cfg.validation.model_dump(),
               "seed": cfg.calibration.seed, "eval": _eval_digest(cfg)}
        st.run("validate", key, lambda: _validate(src, out, cfg, results, st.log))
    results["report"] = api.report(out)
    st.log(f"[report] wrote {results['report']}")
    return results


def _eval_digest(cfg) -> dict:
    files = cfg.validation.eval_data or api.default_eval_data()
    return {f: [file_digest(p) for p in _data_files(Path(f))] or f for f in files}


def _validate(src, out, cfg, results, log) -> list[Path]:
    rep = api.validate(src, out, config=cfg)
    results["validate"] = rep
    for row in rep["comparison"]:
        rate = row.get("rep_before")
        rep_txt = "" if rate is None else f", repetition {rate:.3f} (original {rep['original'].get('repetition_rate', 0):.3f})"
        log(f"[validate] {row['label']}: ppl {row['ppl']:.3f} (original {rep['original']['ppl']:.3f}), "
              f"mean KLD {row['kld_mean']:.4g}, same top {row['same_top_pct']:.1f}%{rep_txt}")
    vdir = out / layout.VALIDATION
    return [p for p in vdir.rglob("*") if p.is_file() and not p.name.startswith(".")]


def _family(backend: str) -> str:
    from .backends import get_backend

    return get_backend(backend).format_family


def _data_files(p: Path) -> list[Path]:
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    return [p] if p.exists() else []


def _calibrate(src, out, cfg) -> list[Path]:
    c = cfg.calibration
    api.calibrate(src, out, data=c.data, generate=c.generate, samples=c.samples, seq_len=c.seq_len,
                  seed=c.seed, device=cfg.device)
    d = out / layout.CALIBRATION
    return [p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")]


def _check_int_options(cfg: RunConfig) -> None:
    """Refuse before any work what the int backends could write but transformers could not load."""
    from .quant.rtn import QuantArgs
    from .quant_runner.compat import check_asymmetric

    sym = {"gptq": cfg.gptq.symmetric, "awq": not cfg.awq.zero_point}.get(cfg.backend)
    ct = getattr(getattr(cfg, cfg.backend, None), "checkpoint_format", None) == "compressed-tensors"
    if sym is False and ct and not cfg.budget:       # with a budget the plan's formats decide (checked later)
        check_asymmetric({"uniform": QuantArgs(4, -1, False)})


def _measure(src, out, cfg) -> list[Path]:
    res = api.measure(src, out, backend=cfg.backend, metric=cfg.metric, device=cfg.device)
    return [Path(p) for p in res.paths.values()]


def _plan(src, out, cfg, log) -> list[Path]:
    api.plan(out, cfg.budget, options=cfg.plan, model=src, device=cfg.device, log=log)
    d = out / layout.PLAN
    return [p for p in d.iterdir() if p.is_file() and p.name != "quantization_command.sh"
            and not p.name.startswith(".") and p.name != "prevent_repetition.sh"]


def _quantize(src, out, cfg, results) -> list[Path]:
    art = api.quantize(src, out, backend=cfg.backend, plan="saved" if cfg.budget else None, config=cfg)
    results["quantize"] = art
    files = [f for f in art.files if Path(f).is_file()]
    if Path(art.path).is_dir():
        files += [f for f in Path(art.path).rglob("*") if f.is_file()]
    return files
