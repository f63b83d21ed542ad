"""report.html: one self-contained page of a run (plots embedded, no scripts, no requests)."""
from .render import build_html, render_report

__all__ = ["render_report", "build_html"]
