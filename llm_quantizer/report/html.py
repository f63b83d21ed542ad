"""Small HTML builders. Every piece of text goes through ``esc``; nothing refers outside the page."""
from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The page allows nothing but inline styles and data: images (no scripts, no requests).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:18px 24px 48px}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d8dde3;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}.sub{color:#5b6672;margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:0 0 10px}.card{background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:19px}.card span{color:#5b6672;font-size:12px}
table{border-collapse:collapse;background:#fff;margin:6px 0;font-size:13px}
th,td{border:1px solid #d8dde3;padding:3px 7px;text-align:left;vertical-align:top}th{background:#eef1f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}
table.heat td{text-align:center;font-size:11px;padding:1px 5px;white-space:nowrap}
table.gen{width:100%;table-layout:fixed}table.gen td{white-space:pre-wrap;font-size:12px}table.gen th:first-child{width:18%}
pre{background:#fff;border:1px solid #d8dde3;border-radius:4px;padding:8px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
img{max-width:100%;border:1px solid #d8dde3;background:#fff;margin:4px 0}
.note{color:#5b6672;font-style:italic}.warn{color:#a33}details{margin:6px 0}summary{cursor:pointer;color:#2c5d8f}
"""


def esc(x: Any) -> str:
    return escape("" if x is None else str(x), quote=True)


def fmt(v: Any) -> str:
    """A cell value: floats to 4 significant digits, bools as yes/no, None as '-'."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    return str(v)


def size(n: Any) -> str:
    """Bytes as MiB / GiB."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def td(v: Any, attrs: str = "") -> str:
    cls = ' class="n"' if is_number(v) else ""
    return f"<td{cls}{attrs}>{esc(fmt(v))}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """A table of plain values (escaped; numbers right-aligned)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(td(v) for v in r) + "</tr>" for r in rows)
    c = f' class="{esc(cls)}"' if cls else ""
    return f"<table{c}><tr>{head}</tr>{body}</table>"


def cards(items: Iterable[tuple[str, Any]]) -> str:
    """Headline figures: (label, value) pairs; values that are None are left out."""
    cs = [f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for k, v in items if v is not None]
    return f'<div class="cards">{"".join(cs)}</div>' if cs else ""


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def png_data_uri(path: Path) -> Optional[str]:
    """A base64 data URI for a PNG file; None when the file is missing or is not a PNG."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(PNG_MAGIC):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(path: Path, alt: str) -> str:
    uri = png_data_uri(path)
    return f'<img src="{uri}" alt="{esc(alt)}">' if uri else ""


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>' if body else ""


def page(title: str, subtitle: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>"
            f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p>\n{body}\n</main></body></html>\n")


# viridis at five stops: the colour of a bits-per-weight cell.
_VIRIDIS = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
BPW_RANGE = (2.0, 8.5)


def bpw_color(bpw: float) -> tuple[str, str]:
    """(background, text colour) for a bits-per-weight value on a fixed 2..8.5 viridis scale
    (16-bit and wider tensors are grey)."""
    if bpw > 9.0:
        return "#c9ced4", "#1d232a"
    lo, hi = BPW_RANGE
    t = min(max((bpw - lo) / (hi - lo), 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(_VIRIDIS[i], _VIRIDIS[i + 1]))
    text = "#000" if (0.299 * r + 0.587 * g + 0.114 * b) > 140 else "#fff"
    return f"#{r:02x}{g:02x}{b:02x}", text
