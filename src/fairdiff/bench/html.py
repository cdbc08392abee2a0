"""One self-contained HTML page for a bench folder: the tables, the plots and a sample grid per cell.

Everything is embedded (PNG images as base64 data URIs, CSS inline), so the page can be mailed or attached to a
paper's supplement as one file and opened offline. It is built from what the bench already wrote:
``results.csv`` (mean/std per setting x method), ``runs.csv`` (one row per run), ``*.png`` plots at the top of the
folder, and ``cells/<setting>/<cell>/samples/grid.png``.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from pathlib import Path

from fairdiff.utils.io import atomic_write_text

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}th{background:#f3f3f3}
td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}
.plots img{max-width:100%;margin:.5rem 0}.grids{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;text-align:center;font-size:.8rem}
figure img{width:192px;image-rendering:pixelated;border:1px solid #ccc}
.note{color:#666;font-size:.85rem}
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return html.escape(v)
    if math.isnan(f):
        return "&ndash;"
    return f"{f:.0f}" if f.is_integer() else f"{f:.3f}"


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(str(r.get(c, '')))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    if not path.exists():
        return [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


HEADLINE = ("method", "seeds", "fd_strict", "fd_strict_std", "valid_rate", "valid_rate_std", "shortfall", "fd_valid",
            "fd_strict_corrected", "fd_strict_j2", "fd_forced", "share_0", "share_0_std", "domain_fid", "precision",
            "recall", "cell", "seed", "fd_strict_lo", "fd_strict_hi", "judges_disagree", "n")


def _columns(cols: list[str], max_columns: int) -> list[str]:
    """The headline columns first (strict FD, valid rate, ...), then the rest, at most ``max_columns``."""
    first = [c for c in HEADLINE if c in cols]
    return (first + [c for c in cols if c not in first])[:max_columns]


def write_html_report(out_dir: str | Path, title: str, max_columns: int = 16) -> Path:
    """Write ``out_dir/report.html`` from the bench's files; returns its path."""
    out_dir = Path(out_dir)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    cols, summary = _read_csv(out_dir / "results.csv")
    if summary:
        settings = list(dict.fromkeys(r.get("setting", "") for r in summary))
        for s in settings:
            rows = [r for r in summary if r.get("setting", "") == s]
            parts.append(f"<h2>{html.escape(s or 'results')}</h2>")
            parts.append(_table(rows, _columns([c for c in cols if c != "setting"], max_columns)))
    else:
        parts.append("<p class='note'>No cell has finished yet.</p>")
    plots = sorted(p for p in out_dir.glob("*.png"))
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        parts += [_img(p, p.stem) for p in plots]
        parts.append("</div>")
    grids = sorted((out_dir / "cells").glob("*/*/samples/grid.png")) + sorted((out_dir / "cells").glob(
        "*/samples/grid.png"))
    if grids:
        parts.append("<h2>Samples (first 64 of each cell)</h2><div class='grids'>")
        for g in grids:
            name = g.parent.parent.relative_to(out_dir / "cells").as_posix()
            parts.append(f"<figure>{_img(g, name)}<figcaption>{html.escape(name)}</figcaption></figure>")
        parts.append("</div>")
    rcols, runs = _read_csv(out_dir / "runs.csv")
    if runs:
        parts.append("<h2>Every run</h2>")
        parts.append(_table(runs, _columns([c for c in rcols if c != "setting"], max_columns)))
    parts.append("<p class='note'>Written by fairdiff bench; every image is embedded in this file.</p></body></html>")
    path = out_dir / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path
