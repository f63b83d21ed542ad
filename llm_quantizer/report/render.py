"""``render_report(out_dir)``: one self-contained HTML page of a run (written atomically)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .. import layout
from ..errors import OutputError
from ..io import write_text
from .html import esc, note, page, section
from .inputs import RunFiles, load_run
from .plan_view import plan_section
from .sections import architecture, importance, overview, reproduction
from .usage import usage_section
from .validation_view import generations, repetition, validation_section

SECTIONS: list[tuple[str, str, Callable[[RunFiles], str]]] = [
    ("overview", "Model, budget and size", overview),
    ("plan", "Quantization plan (bits per weight, layer x tensor)", plan_section),
    ("importance", "Layer importance and super weights", importance),
    ("validation", "Validation against the original", validation_section),
    ("generations", "Generations side by side", lambda r: generations(r.validation)),
    ("repetition", "Repetition-safe generation settings", repetition),
    ("run", "How to run the result", usage_section),
    ("architecture", "Architecture", architecture),
    ("reproduce", "Reproduce this run", reproduction),
]


def _render(anchor: str, title: str, fn: Callable[[RunFiles], str], run: RunFiles) -> str:
    """One section; a malformed input file costs that section only, never the page."""
    try:
        body = fn(run)
    except Exception as e:          # inputs are written by other stages and versions
        body = note(f"This section could not be rendered from the files found: {type(e).__name__}: {e}", "warn")
    return section(anchor, title, body)


def build_html(run: RunFiles) -> str:
    parts = [(a, t, _render(a, t, fn, run)) for a, t, fn in SECTIONS]
    shown = [(a, t, html) for a, t, html in parts if html]
    nav = " · ".join(f'<a href="#{esc(a)}">{esc(t.split(" (")[0])}</a>' for a, t, _ in shown)
    missing = [t for a, t, html in parts if not html]
    body = f"<nav>{nav}</nav>"
    if run.unreadable:
        body += note("Unreadable (not a JSON object), left out: " + ", ".join(run.unreadable) + ".", "warn")
    body += "".join(html for *_, html in shown)
    if missing:
        body += note("Not in this run (yet): " + "; ".join(missing) + ".")
    subtitle = "llm-quantizer report"
    if run.plan.get("family"):
        subtitle += f" · {run.plan['family']} plan"
    return page(run.model_name(), subtitle, body)


def render_report(out_dir: str | Path) -> Path:
    """Write ``<out_dir>/report.html`` from whatever stages' outputs exist there; returns its path."""
    out = Path(out_dir)
    if not out.is_dir():
        raise OutputError(f"no run output directory at {out}")
    return write_text(out / layout.REPORT, build_html(load_run(out)))
