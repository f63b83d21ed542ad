"""validation.json rendered defensively: a results table, generations side by side, repetition
settings. Unknown layouts fall back to the scalar fields found; nothing here assumes a key exists."""
from __future__ import annotations

from typing import Any

from .html import details, esc, figure, fmt, is_number, note, pre, table
from .inputs import RunFiles, as_dict, dicts

# Columns shown first when present (validate's comparison rows, then common spellings).
PREFERRED = ("label", "name", "model", "runtime", "bytes", "bits_per_weight", "ppl", "perplexity", "ppl_base",
             "ln_ppl_ratio", "kld_mean", "kld_median", "kld_p99", "same_top_pct", "rep_before", "rep_after",
             "repetition_rate")
MAX_COLUMNS = 14
GENERATION_HEADS = {"quantized": "quantized (base setting)", "quantized_chosen": "quantized (chosen setting)"}
SHOWN_GENERATIONS = 3


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) and not (isinstance(v, str) and len(v) > 80)


def result_rows(val: dict) -> list[dict]:
    for key in ("comparison", "artifacts", "results", "models"):
        rows = dicts(val.get(key))
        if rows:
            return rows
    return []


def columns(rows: list[dict]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        seen += [k for k, v in r.items() if k not in seen and k != "path" and _scalar(v)]
    cols = [k for k in PREFERRED if k in seen] + [k for k in seen if k not in PREFERRED]
    return cols[:MAX_COLUMNS]


def results(val: dict) -> str:
    rows = result_rows(val)
    parts = []
    orig = as_dict(val.get("original"))
    if orig:
        facts = [f"{k} {fmt(v)}" for k, v in orig.items() if is_number(v) or (k == "name" and isinstance(v, str))]
        parts.append(note("Original: " + ", ".join(facts)) if facts else "")
    if rows:
        cols = columns(rows)
        parts.append(table(cols, [[r.get(c) for c in cols] for r in rows]))
    else:
        flat = [(k, v) for k, v in val.items() if is_number(v)]
        parts.append(table(["field", "value"], flat) if flat else "")
    ev = as_dict(val.get("eval"))
    if ev:
        text = "; ".join(f"{k}: {fmt(v)}" for k, v in ev.items() if _scalar(v) and "sha" not in k)
        parts.append(note(f"Eval: {text}") if text else "")
    return "".join(parts)


def _models(val: dict) -> list[tuple[str, dict]]:
    """(label, record) for each quantized model that carries per-model details."""
    out = []
    for i, r in enumerate(dicts(val.get("artifacts") or val.get("results") or val.get("models"))):
        out.append((str(r.get("label") or r.get("name") or f"model {i + 1}"), r))
    return out


def _generation_table(gens: list[dict]) -> str:
    keys: list[str] = []
    for g in gens:
        keys += [k for k, v in g.items() if k not in keys and k != "prompt" and isinstance(v, str)]
    heads = ["prompt", *(GENERATION_HEADS.get(k, k.replace("_", " ")) for k in keys)]

    def row(g: dict) -> str:
        return "<tr>" + "".join(f"<td>{esc(g.get(k, ''))}</td>" for k in ["prompt", *keys]) + "</tr>"

    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>"
    first = f'<table class="gen">{head}{"".join(row(g) for g in gens[:SHOWN_GENERATIONS])}</table>'
    rest = gens[SHOWN_GENERATIONS:]
    more = details(f"{len(rest)} more prompts", f'<table class="gen">{head}{"".join(map(row, rest))}</table>') if rest else ""
    return first + more


def generations(val: dict) -> str:
    parts = []
    top = dicts(val.get("generations"))
    if top:
        parts.append(_generation_table(top))
    for label, rec in _models(val):
        gens = dicts(rec.get("generations"))
        if gens:
            parts.append(f"<h3>{esc(label)}</h3>" + _generation_table(gens))
    if parts:
        parts.insert(0, note("Same prompts and seed for the original and the quantized model; "
                             "the chosen setting is the repetition-safe one below."))
    return "".join(parts)


def _chosen_rows(prev: dict) -> list[tuple]:
    rows = []
    for target, ch in as_dict(prev.get("chosen")).items():
        ch = as_dict(ch)
        rows.append((target, ch.get("label") or "(none found)", ch.get("rate"), ch.get("reached_target"),
                     ch.get("ppl_cost_pct"), ch.get("kept_pct")))
    return rows


def repetition(run: RunFiles) -> str:
    val, parts = run.validation, []
    for label, rec in _models(val):
        rep, prev = as_dict(rec.get("repetition")), as_dict(rec.get("prevention"))
        if not rep and not prev:
            continue
        body = ""
        if rep:
            body += note(f"Repetition rate (share of repeated 3-grams in generations): original "
                         f"{fmt(rep.get('original_rate'))}, quantized with the base setting {fmt(rep.get('before_rate'))}"
                         + (f", with the chosen setting {fmt(rep.get('rate'))}" if "rate" in rep else "") + ".")
        rows = _chosen_rows(prev)
        if rows:
            body += table(["runtime", "setting", "repetition rate", "reaches original", "perplexity cost %",
                           "eval tokens kept %"], rows)
        parts.append(f"<h3>{esc(label)}</h3>{body}" if body else "")
    parts += [details(run.rel(p), pre(run.text(run.rel(p)) or "")) for p in _setting_files(run)]
    return "".join(parts)


def _setting_files(run: RunFiles) -> list:
    vdir = run.path("validation")
    found = sorted(vdir.rglob("Modelfile")) + sorted(vdir.rglob("generation_config.json")) if vdir.is_dir() else []
    script = run.path("quantization_plan", "prevent_repetition.sh")
    return found + ([script] if script.is_file() else [])


def validation_section(run: RunFiles) -> str:
    body = results(run.validation) if run.validation else ""
    body += figure(run.path("validation", "validation.png"), "validation plots")
    return body
