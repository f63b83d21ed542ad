"""``validate``: one report card per quantized model against the original.

Writes under ``out_dir``: ``validation/validation.json``, ``validation/validation.png``,
``validation/kld_base.safetensors`` (the original's top-k distribution, reused by later runs on
the same windows), ``validation/<label>/generation_config.json`` and ``.../Modelfile`` per
artifact, and ``quantization_plan/prevent_repetition.sh`` for the GGUF artifacts.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field

from .. import layout
from ..errors import ConfigError
from ..io import ensure_dir, write_json
from . import export, metrics
from .generations import generate_all, prompt_set, repetition_summary, side_by_side
from .plot import plot_validation
from .runtime import HFRuntime, Runtime, artifact_bytes, artifact_gguf, artifact_path, open_runtime
from .sampler import SamplerSettings
from .search import DEFAULT_GRID, CostMeter, search


class ValidateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ctx: int = Field(512, ge=4, description="eval window (tokens)")
    max_eval_tokens: Optional[int] = Field(8192, ge=4, description="cap on eval tokens (whole windows)")
    score: Literal["half", "all"] = "half"       # llama-perplexity scores the second half
    topk: int = Field(32, ge=1, description="original's top log-probs always kept per token for the KLD")
    kld_floor: Optional[float] = Field(-12.0, description="also keep every log-prob >= this (None: top-k only)")
    kld_max_kept: int = Field(8192, ge=1, description="cap on kept log-probs per token")
    prompts: Optional[list[str]] = None
    max_new_tokens: int = Field(128, ge=1)
    generations: bool = True
    search: bool = True
    grid: Optional[list[dict]] = None            # SamplerSettings dicts; the first is the base setting
    rep_tolerance: float = Field(0.02, ge=0)
    exhaustive: bool = Field(False, description="generate with every grid setting, not only until each target is settled")
    cost_windows: Optional[int] = Field(None, ge=1, description="eval windows that score the grid")
    seed: int = 0
    n_threads: Optional[int] = None
    device: str = "cpu"
    calibration_files: list[str] = Field(default_factory=list)


def _grid(opt: ValidateOptions) -> list[SamplerSettings]:
    return [SamplerSettings.from_dict(d) for d in opt.grid] if opt.grid else list(DEFAULT_GRID)


def eval_text(eval_files: Sequence, calibration_files: Sequence = ()) -> tuple[str, list[dict]]:
    """The eval documents joined by blank lines; refuses a file that is also calibration text."""
    from ..calibrate.sources import load_documents

    docs = load_documents([Path(p) for p in eval_files])
    if calibration_files:
        cal = {s["sha256"] for s in load_documents([Path(p) for p in calibration_files]).sources}
        clash = [s["path"] for s in docs.sources if s["sha256"] in cal]
        if clash:
            raise ConfigError(f"eval file {clash[0]} is also calibration text; pass held-out text")
    return "\n\n".join(docs.texts), docs.sources


def _generated_text(rt: Runtime, tok, n_tokens: int, seed: int) -> str:
    """Held-out text sampled from the original (temperature 1) when no eval file is given."""
    from ..calibrate.seed_prompts import SEED_PROMPTS

    ps = prompt_set(tok, SEED_PROMPTS)
    texts, total, i = [], 0, 0
    while total < n_tokens and i < 4 * len(ps):
        j = i % len(ps)
        g = rt.generate(ps.ids[j], 256, SamplerSettings(temperature=1.0), seed=seed + i, stop_ids=ps.stop_ids)
        texts.append(tok.decode([t for t in g if t not in ps.stop_ids], skip_special_tokens=True))
        total, i = total + len(g), i + 1
    return "\n\n".join(texts)


def _labels(paths: Sequence[Path]) -> list[str]:
    out: list[str] = []
    for p in paths:
        name = p.stem if p.is_file() else p.parent.name if p.name == layout.QUANTIZED else p.name
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name or "model")[:80] or "model"
        label, n = base, 2
        while label in out:
            label, n = f"{base}-{n}", n + 1
        out.append(label)
    return out


def _n_params(src) -> int:
    return sum(t.numel for t in src.tensors.values())


def validate(original, artifact_paths: Sequence, eval_files: Optional[Sequence], out_dir,
             options: Optional[ValidateOptions] = None, *, original_runtime: Optional[Runtime] = None,
             **overrides) -> dict:
    """Validate each artifact (GGUF file or HF directory) against ``original`` (a model reference
    or ModelSource; its runtime is ``load_full_model`` unless ``original_runtime`` is given)."""
    from ..model import ModelSource, open_source

    opt = ValidateOptions.model_validate({**(options or ValidateOptions()).model_dump(), **overrides})
    src = original if isinstance(original, ModelSource) else open_source(original)
    tok, out = src.tokenizer(), Path(out_dir)
    vdir = ensure_dir(out / layout.VALIDATION)
    paths = [artifact_path(a) for a in artifact_paths]
    labels, grid = _labels(paths), _grid(opt)
    t0 = time.time()

    orig_rt = original_runtime

    def original_rt() -> Runtime:
        nonlocal orig_rt
        if orig_rt is None:
            from ..engine.skeleton import load_full_model
            orig_rt = HFRuntime(load_full_model(src, opt.device), name=src.name)
        return orig_rt

    if eval_files:
        text, eval_sources = eval_text(eval_files, opt.calibration_files)
    else:
        text = _generated_text(original_rt(), tok, opt.max_eval_tokens or 2 * opt.ctx, opt.seed)
        eval_sources = [{"generated_by": src.name, "temperature": 1.0, "note": "no eval file given"}]
    ew = metrics.eval_windows(tok, text, opt.ctx, opt.max_eval_tokens, opt.score)

    base_path = vdir / "kld_base.safetensors"
    base = metrics.BaseLogprobs.load(base_path) if base_path.is_file() else None
    who = f"{original_runtime.kind}:{original_runtime.name}" if original_runtime else f"transformers:{src.ref}"
    keep = {"k": opt.topk, "floor": opt.kld_floor, "max_kept": opt.kld_max_kept, "original": who}
    if base is None or not base.matches(ew, keep):
        base = metrics.compute_base(original_rt(), ew, opt.topk, opt.kld_floor, opt.kld_max_kept)
        base.meta.update(original=who, text_sha256=ew.text_sha256)
        base.save(base_path)
    orig = {"name": src.name, "ppl": metrics.perplexity(-base.target_logp.double().numpy()),
            "params": _n_params(src)}

    ps = prompt_set(tok, opt.prompts, src.config) if opt.generations else None
    orig_gens = None
    if ps is not None:
        orig_gens = generate_all(original_rt(), ps, grid[0], opt.max_new_tokens, opt.seed)
        rep = repetition_summary(orig_gens, ps.stop_ids)
        orig.update(repetition=rep, repetition_rate=rep["rate"], base_setting=grid[0].label())
    n_ctx = max(opt.ctx, (ps.max_len + opt.max_new_tokens + 1) if ps else 0)

    records, kld_tokens = [], []
    for label, path in zip(labels, paths):
        rec, t_tok = _validate_one(label, path, base, ps, orig_gens, orig, grid, opt, n_ctx, tok)
        records.append(rec)
        kld_tokens.append(t_tok)
    report = {"version": 1, "original": orig,
              "eval": {**ew.describe(), "files": eval_sources, "score": opt.score,
                       "convention": ("llama-perplexity: BOS-replaced windows, scored from ctx//2"
                                      if opt.score == "half" else "every position of each window"),
                       "kld": (f"kept: top {opt.topk} and log-p >= {opt.kld_floor} (mean {base.kept_mean:.0f} per "
                               "token); the rest lumped (a lower bound)")},
              "options": opt.model_dump(), "artifacts": records, "comparison": comparison(records),
              "seconds": round(time.time() - t0, 1)}
    _write_exports(out, vdir, records, grid, src)
    write_json(vdir / "validation.json", report)
    plot_validation(vdir / "validation.png", report, kld_tokens)
    return report


def _validate_one(label, path, base, ps, orig_gens, orig, grid, opt, n_ctx, tok):
    rt = open_runtime(path, n_ctx=n_ctx, n_threads=opt.n_threads, device=opt.device)
    try:
        meter = CostMeter(grid, base.first, opt.cost_windows) if (ps is not None and opt.search) else None
        t = metrics.evaluate(rt, base, on_window=meter)
        stats = metrics.summarize(t)
        nbytes = artifact_bytes(path)
        rec = {"label": label, "path": str(path), "runtime": rt.kind, "bytes": nbytes,
               "bits_per_weight": 8 * nbytes / max(orig["params"], 1), **stats}
        if ps is not None:
            if meter is not None:
                found = search(rt, ps, grid, meter.results(), meter.plain_ppl, orig["repetition_rate"],
                               opt.max_new_tokens, opt.rep_tolerance, opt.seed, opt.exhaustive)
                rows = found.pop("grid")
                ch = found["chosen"]["llama.cpp"]
                before_g, after_g = rows[0]["generations"], rows[ch["index"]]["generations"]
                found["grid"] = [{k: v for k, v in r.items() if k != "generations"} for r in rows]
                rec["prevention"] = found
                rec["repetition"] = {"original_rate": orig["repetition_rate"], "before_rate": found["before"]["rate"],
                                     **{k: ch[k] for k in ("rate", "reached_target", "ppl_cost_pct", "kept_pct", "label")}}
            else:
                before_g = after_g = generate_all(rt, ps, grid[0], opt.max_new_tokens, opt.seed)
                r0 = repetition_summary(before_g, ps.stop_ids)
                rec["repetition"] = {"original_rate": orig["repetition_rate"], "before_rate": r0["rate"]}
            rec["generations"] = side_by_side(tok, ps, orig_gens, quantized=before_g, quantized_chosen=after_g)
        return rec, t["kld"]
    finally:
        rt.close()


def _write_exports(out: Path, vdir: Path, records: list[dict], grid, src) -> None:
    entries = []
    base_cfg = {k: getattr(src.config, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    base_cfg = {k: v for k, v in base_cfg.items() if v is not None}
    for rec in records:
        prev = rec.get("prevention")
        if not prev:
            continue
        path, files = Path(rec["path"]), {}
        for target, fname in (("transformers", "generation_config.json"), ("ollama", "Modelfile")):
            ch = prev["chosen"][target]
            if ch["index"] is None:
                continue
            s = SamplerSettings.from_dict(ch["settings"])
            rates = export.rates_line(rec["label"], {**ch, "original_rate": prev["original_rate"],
                                                     "before_rate": prev["before"]["rate"]})
            dest = vdir / rec["label"] / fname
            if fname == "Modelfile":
                files[fname] = str(export.write_modelfile(dest, path.resolve(), s, rates))
            else:
                hf_dir = path if path.is_dir() else None
                files[fname] = str(export.write_generation_config(dest, s, hf_dir, base_cfg))
        gguf = artifact_gguf(path)
        ch = prev["chosen"]["llama.cpp"]
        if gguf is not None and ch["index"] is not None:
            rates = export.rates_line(rec["label"], {**ch, "original_rate": prev["original_rate"],
                                                     "before_rate": prev["before"]["rate"]})
            entries.append((rec["label"], str(gguf.resolve()), SamplerSettings.from_dict(ch["settings"]), rates))
        rec["files"] = files
    if entries:
        script = export.write_llama_script(out / layout.PLAN / "prevent_repetition.sh", entries)
        script.chmod(0o755)
        for rec in records:
            if any(e[0] == rec["label"] for e in entries):
                rec.setdefault("files", {})["prevent_repetition.sh"] = str(script)


COLUMNS = ("label", "bytes", "bits_per_weight", "ppl", "ln_ppl_ratio", "kld_mean", "kld_p99", "same_top_pct",
           "rep_before", "rep_after")


def comparison(records: Sequence[dict]) -> list[dict]:
    """One row per artifact, smallest first."""
    rows = []
    for r in sorted(records, key=lambda r: r["bytes"]):
        rep = r.get("repetition") or {}
        row = {k: r.get(k) for k in COLUMNS[:8]}
        row.update(rep_before=rep.get("before_rate"), rep_after=rep.get("rate"))
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    table = [list(COLUMNS)] + [[cell(r.get(c)) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table)


def validate_many(original, artifacts: Sequence, eval_files, out_dir, **kw) -> list[dict]:
    """Several artifacts at once against one stored original: the comparison table, smallest first."""
    return validate(original, artifacts, eval_files, out_dir, **kw)["comparison"]
