"""The plan as a layer x tensor-kind table of coloured cells (bits per weight), plus a format summary."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

from ..model.archs import LINEAR_KINDS
from .html import BPW_RANGE, bpw_color, esc, figure, fmt, is_number, note, size, table
from .inputs import RunFiles, as_dict, dicts



def _is_matrix(t: dict) -> bool:
    shape = t.get("shape")
    return not isinstance(shape, list) or len(shape) >= 2


def _layer(t: dict) -> Optional[int]:
    v = t.get("layer")
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _kinds(tensors: list[dict]) -> list[str]:
    """Columns in the layer map's order; fused kinds ("q+k+v") where their first part goes."""
    def key(kind: str) -> tuple[int, str]:
        first = kind.split("+")[0]
        return (LINEAR_KINDS.index(first) if first in LINEAR_KINDS else len(LINEAR_KINDS), kind)

    return sorted({str(t.get("kind")) for t in tensors}, key=key)


def _cell(t: Optional[dict], super_names: set) -> str:
    if t is None:
        return "<td></td>"
    bpw = t.get("bits_per_weight")
    fmt_name = str(t.get("format", "?"))
    star = "★" if t.get("name") in super_names else ""
    if not is_number(bpw):
        return f"<td>{esc(fmt_name + star)}</td>"
    bg, fg = bpw_color(float(bpw))
    tip = (f"{t.get('name', '')}: {fmt_name}, {bpw:.3g} bpw, predicted error {fmt(t.get('predicted_error'))}"
           + (f" ({t['reason']})" if t.get("reason") else "") + (" (holds a super weight)" if star else ""))
    return f'<td style="background:{bg};color:{fg}" title="{esc(tip)}">{esc(fmt_name + star)}</td>'


def _num(ts: list[dict], key: str) -> float:
    return sum(t[key] for t in ts if is_number(t.get(key)))


def _layer_scores(run: RunFiles) -> tuple[str, dict[int, Any]]:
    """The selected importance metric per layer (measurements' choice, else LIM)."""
    metric = str(run.measurements.get("metric") or run.importance.get("selected_metric") or "lim")
    return metric, {d["layer"]: d.get(metric) for d in dicts(run.importance.get("layers")) if "layer" in d}


def heatmap(run: RunFiles) -> str:
    tensors = [t for t in dicts(run.plan.get("tensors")) if _is_matrix(t) and _layer(t) is not None]
    if not tensors:
        return ""
    kinds = _kinds(tensors)
    grid: dict[int, dict[str, dict]] = defaultdict(dict)
    for t in tensors:
        grid[_layer(t)][str(t.get("kind"))] = t
    super_names = {s.get("tensor") for s in dicts(run.importance.get("super_weights"))}
    metric, scores = _layer_scores(run)
    rows = []
    for layer in sorted(grid):
        cells = "".join(_cell(grid[layer].get(k), super_names) for k in kinds)
        ts = list(grid[layer].values())
        numel, nbytes = _num(ts, "numel"), _num(ts, "bytes")
        extra = [8 * nbytes / numel if numel else None] + ([scores.get(layer)] if scores else [])
        rows.append(f"<tr><th>{layer}</th>{cells}" + "".join(f'<td class="n">{esc(fmt(v))}</td>' for v in extra) + "</tr>")
    heads = ["layer", *kinds, "layer bpw"] + ([metric] if scores else [])
    head = "".join(f"<th>{esc(k)}</th>" for k in heads)
    return f'<table class="heat"><tr>{head}</tr>{"".join(rows)}</table>' + legend()


def legend() -> str:
    lo, hi = BPW_RANGE
    steps = [lo + (hi - lo) * i / 6 for i in range(7)] + [16.0]
    cells = "".join(f'<td style="background:{bpw_color(v)[0]};color:{bpw_color(v)[1]}">{v:.3g}</td>' for v in steps)
    return (f'<table class="heat"><tr><th>bits per weight</th>{cells}</tr></table>'
            + note("Cells name the stored format; colour = bits per weight (hover for the tensor, "
                   "its predicted error and the planner's reason); ★ = holds a super weight."))


def other_tensors(run: RunFiles) -> str:
    """Matrices outside the decoder layers (embeddings, lm_head)."""
    ts = [t for t in dicts(run.plan.get("tensors")) if _is_matrix(t) and _layer(t) is None]
    rows = [(t.get("name"), t.get("kind"), t.get("format"), t.get("bits_per_weight"), size(t.get("bytes")), t.get("reason"))
            for t in ts]
    return table(["tensor", "kind", "format", "bpw", "size", "reason"], rows) if rows else ""


def format_summary(run: RunFiles) -> str:
    by: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for t in dicts(run.plan.get("tensors")):
        row = by[str(t.get("format", "?"))]
        row[0] += 1
        row[1] += _num([t], "numel")
        row[2] += _num([t], "bytes")
    total = sum(r[1] for r in by.values()) or 1
    rows = [(f, n, f"{100 * p / total:.1f}%", size(b)) for f, (n, p, b) in sorted(by.items(), key=lambda kv: -kv[1][1])]
    return table(["format", "tensors", "share of weights", "size"], rows) if rows else ""


def constraints_note(plan: dict) -> str:
    c = as_dict(plan.get("constraints"))
    if not c:
        return ""
    sw, emb = c.get("super_weight_min_bits"), c.get("min_embed_bits")
    pairs = [x for x in c.get("keep") or [] if isinstance(x, (list, tuple)) and len(x) == 2]
    facts = [f"super-weight tensors >= {sw:g} bpw" if is_number(sw) else "",
             f"embeddings >= {emb:g} bpw" if is_number(emb) else "",
             "pinned " + ", ".join(f"{a}={b}" for a, b in pairs) if pairs else "",
             "allowed formats: " + ", ".join(map(str, plan.get("allowed_formats") or []))]
    allowed = {str(f) for f in plan.get("allowed_formats") or []}
    stored = sorted({str(t.get("format")) for t in plan.get("tensors") or [] if isinstance(t, dict)}
                    - allowed - {"F32", "F16", "BF16", "None"})
    if allowed and stored and plan.get("family") == "gguf":
        facts.append("stored as " + ", ".join(stored) + " where llama.cpp's row-length rule "
                     "(K-quants need rows that are a multiple of 256) replaces an allowed format")
    return note("Constraints: " + "; ".join(f for f in facts if f) + ".")


def refinement(plan: dict) -> str:
    """The candidates of ``plan --refine``: their measured KL divergence, the one kept."""
    r = as_dict(plan.get("refinement"))
    cands = [c for c in r.get("candidates") or [] if isinstance(c, dict)]
    if not cands:
        return ""
    rows = [("✓" if c.get("label") == r.get("chosen") else "", c.get("label"), c.get("error_model"),
             c.get("importance_power"), size(c.get("bytes")), fmt(c.get("predicted_error")), fmt(c.get("kld_mean")),
             fmt(c.get("kld_p99")), fmt(c.get("same_top_pct"))) for c in cands]
    where = "held-out calibration text" if r.get("heldout") else "the calibration sequences (nothing held out)"
    return ("<h3>End-to-end refinement</h3>"
            + note(f"{len(cands)} candidate plans fake-quantized with {r.get('quantizer', 'the real quantizers')} "
                   f"and streamed through the model; KL divergence to the original on {where}: "
                   f"{r.get('samples')} x {r.get('seq_len')} tokens. The least divergent is kept.")
            + table(["kept", "objective", "error model", "power", "size", "predicted error", "KLD mean",
                     "KLD p99", "same top %"], rows))


def plan_section(run: RunFiles) -> str:
    if not run.plan:
        return ""
    parts = [heatmap(run)]
    other = other_tensors(run)
    if other:
        parts.append("<h3>Outside the decoder layers</h3>" + other)
    summary = format_summary(run)
    if summary:
        parts.append("<h3>Formats</h3>" + summary)
    parts.append(constraints_note(run.plan))
    parts.append(refinement(run.plan))
    parts.append(figure(run.path("quantization_plan", "quantization_plan.png"), "quantization plan heatmap"))
    return "".join(p for p in parts if p)
