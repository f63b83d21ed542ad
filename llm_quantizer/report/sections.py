"""Headline figures, the architecture, importance / super weights and the reproduction script."""
from __future__ import annotations

import json

from .html import cards, details, esc, figure, fmt, is_number, note, pre, size, table
from .inputs import RunFiles, as_dict, dicts


def total_params(run: RunFiles):
    for v in (as_dict(run.architecture.get("totals")).get("params"),
              as_dict(run.measurements.get("model")).get("total_params"),
              as_dict(run.validation.get("original")).get("params")):
        if is_number(v) and v > 0:
            return v
    return None


def original_bytes(run: RunFiles):
    for v in (as_dict(run.measurements.get("model")).get("original_bytes"),
              as_dict(run.architecture.get("totals")).get("bytes")):
        if is_number(v) and v > 0:
            return v
    return None


def overview(run: RunFiles) -> str:
    m, t = as_dict(run.architecture.get("model")), as_dict(run.architecture.get("totals"))
    params, orig = total_params(run), original_bytes(run)
    stored = as_dict(run.measurements.get("model")).get("stored_bytes")
    items = [("architecture", m.get("model_type") or as_dict(run.measurements.get("model")).get("architecture")),
             ("decoder layers", m.get("num_layers") or as_dict(run.measurements.get("model")).get("num_layers")),
             ("parameters", f"{params / 1e6:,.1f} M" if params else None),
             ("original size", size(orig) if orig else None),
             ("original bits / weight", f"{8 * orig / params:.3g}" if orig and params else None),
             ("source file as stored", size(stored) if is_number(stored) and stored != orig else None),
             ("embedding share", f"{100 * t['embedding_share']:.1f}%" if is_number(t.get("embedding_share")) else None)]
    plan_t, budget = as_dict(run.plan.get("totals")), as_dict(run.plan.get("budget"))
    body, items = cards(items), []
    if budget:
        items.append(("budget", f"{budget.get('spec', '')} = {size(budget.get('bytes'))}"))
    if plan_t:
        items += [("planned size", size(plan_t.get("bytes"))), ("planned bits / weight", fmt(plan_t.get("bpw")))]
    for a in run.artifacts:
        items.append((f"written: {a.path.name}", size(a.nbytes)))
        if params:
            items.append(("file bits / weight", f"{8 * a.nbytes / params:.3f}"))
        if orig:
            items.append(("of the original size", f"{100 * a.nbytes / orig:.1f}%"))
    body += cards(items)
    if plan_t:
        gap = "optimal" if plan_t.get("optimal") else f"gap to the proven lower bound {fmt(plan_t.get('gap'))}"
        body += note(f"Plan: predicted error {fmt(plan_t.get('predicted_error'))} ({gap}); "
                     f"backend family {run.plan.get('family', '?')}.")
    return body


def architecture(run: RunFiles) -> str:
    if not run.architecture:
        return ""
    kinds = as_dict(run.architecture.get("per_kind"))
    rows = [(k, v.get("params"), size(v.get("bytes")), v.get("tensors")) for k, v in kinds.items() if isinstance(v, dict)]
    body = table(["kind", "params", "size", "tensors"], rows) if rows else ""
    body += figure(run.path("architecture_analysis", "layer_distribution.png"), "parameters per layer")
    return body


def importance(run: RunFiles) -> str:
    imp = run.importance
    if not imp:
        return ""
    parts = []
    sw = dicts(imp.get("super_weights"))
    if sw:
        rows = [(s.get("layer"), s.get("tensor"), s.get("row"), s.get("col"), s.get("weight"), s.get("out_max"),
                 s.get("spike_ratio")) for s in sw]
        parts.append("<h3>Super weights</h3>" + table(["layer", "tensor", "row", "col", "weight", "output spike",
                                                        "spike / median"], rows))
    elif imp.get("super_weights") == []:
        parts.append(note("No super weight found (no down_proj output spike above the threshold)."))
    ma = sorted(dicts(imp.get("massive_activations")), key=lambda d: -d["ratio"] if is_number(d.get("ratio")) else 0)
    if ma:
        rows = [(d.get("layer"), d.get("channel"), d.get("value"), d.get("ratio")) for d in ma[:5]]
        parts.append("<h3>Largest activations</h3>" + table(["layer", "channel", "|hidden state|", "x median"], rows))
    layers = dicts(imp.get("layers"))
    names = dict.fromkeys(k for d in layers for k in d if k != "layer")
    keys = [k for k in names if any(is_number(d.get(k)) for d in layers)]
    if layers and keys:
        rows = [(d.get("layer"), *(d.get(k) for k in keys)) for d in layers]
        legend = _metric_list(as_dict(imp.get("metrics")), keys)
        parts.append(details(f"importance per layer ({', '.join(keys)})", table(["layer", *keys], rows) + legend))
    parts.append(figure(run.path("importance_analysis", "layer_importance.png"), "layer importance"))
    parts.append(figure(run.path("importance_analysis", "weight_distributions.png"), "weight distributions"))
    return "".join(p for p in parts if p)


def _metric_list(metrics: dict, keys: list[str]) -> str:
    items = "".join(f"<li><b>{esc(k)}</b>: {esc(v if isinstance(v, str) else json.dumps(v))}</li>"
                    for k, v in metrics.items() if k in keys)
    return f"<ul>{items}</ul>" if items else ""


def reproduction(run: RunFiles) -> str:
    parts = []
    script = run.text("run.sh")
    if script:
        parts.append(note("run.sh reproduces this run with the same config:") + pre(script))
    if run.config:
        parts.append(details("the run config (run_config.json)", pre(json.dumps(run.config, indent=2))))
    cmd = run.text("quantization_plan", "quantization_command.sh")
    if cmd:
        parts.append(details("quantization_plan/quantization_command.sh", pre(cmd)))
    return "".join(parts)
