"""Published numbers: one results file (CSV, one row per model and seed), markdown tables generated from it.

``docs/results/*.csv`` hold the rows (``add_rows`` appends the evaluations of run folders, replacing a row with
the same setting / method / seed / n). A doc embeds a table between two markers::

    <!-- table: debias.csv setting=mnist-01 cols=method,seed,valid_rate,share_0 -->
    ...generated...
    <!-- /table -->

``by=method`` turns the block into a summary: one row per method (in order of first appearance; ``by=a+b`` one per
combination of the fields a and b), numbers averaged
over its rows, ``seeds`` listing them, ``share_0_range`` the lowest and highest share, and ``bar`` counting the
seeds that meet the target bar of issue 26 against the ``base`` row of the same seed (two groups: share among
valid images within 0.03 of the target, valid rate at least the base's - 0.02, precision and recall at least the
base's - 0.03).

``python -m fairdiff.bench.published`` rewrites every such block in README.md and docs/*.md from the CSVs;
``--check`` only reports blocks that are out of date (a test runs it), so a typed number cannot drift from its
source. Without ``--check`` it also redraws the figures of :data:`FIGURES` (docs/img; ``--no-figures`` skips).
"""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path

FIELDS = ["setting", "method", "seed", "n", "target_0", "fd_strict", "fd_strict_lo", "fd_strict_hi", "valid_rate",
          "share_0", "share_0_lo", "share_0_hi", "share_1", "share_2", "precision", "recall", "domain_fid",
          "valid_rate_j2", "share_0_j2", "fd_strict_j2", "copy_rate", "drawn_per_kept", "seconds_per_image",
          "finetune_s", "note"]

HEADERS = {
    "setting": "setting", "method": "method", "seed": "seed", "n": "images", "target_0": "target g0",
    "fd_strict": "strict FD", "fd_strict_ci": "strict FD [95 % CI]", "valid_rate": "valid rate",
    "share_0": "share g0 (valid)", "share_0_ci": "share g0 (valid) [95 % CI]", "share_1": "share g1",
    "share_2": "share g2", "precision": "precision", "recall": "recall", "domain_fid": "domain FID",
    "valid_rate_j2": "judge 2 valid", "share_0_j2": "judge 2 share g0", "fd_strict_j2": "judge 2 strict FD",
    "copy_rate": "copy rate", "drawn_per_kept": "drawn per kept", "seconds_per_image": "s / image",
    "finetune_s": "fine-tune s", "note": "note", "seeds": "seeds", "share_0_range": "share g0 (lowest-highest)",
    "bar": "meets the bar (seeds)", "bar_j2": "judge 2: meets the bar", "cost_x_base": "s / image ÷ base's",
    "model": "model", "shares": "shares (valid)", "outside_by_group": "outside rate by forced group",
    "valid_at_target": "valid rate at the target, same rates", "finetune_overrides": "fine-tune overrides",
    "steps": "steps", "seconds_per_drawn_image": "s / drawn image", "drawn_cost_x_base": "s / drawn image ÷ base's",
    "seconds_per_kept_image": "s / kept image", "source": "images", "reference_n": "reference images",
}
BAR = {"share": 0.03, "valid_rate": 0.02, "precision": 0.03, "recall": 0.03}

BLOCK = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def row_from_metrics(m: dict, setting: str, method: str, seed: int, note: str = "") -> dict:
    """One results row from an evaluation's ``metrics.json`` (plus the debias record / timing it carries)."""
    j2 = m.get("judge2") or {}
    vs = m.get("valid_shares") or []
    vci = m.get("valid_shares_ci") or []
    sci = m.get("fd_strict_ci") or [math.nan, math.nan]
    deb = m.get("debias") or {}
    timing = m.get("timing") or {}
    j2s = j2.get("valid_shares") or []
    return {
        "setting": setting, "method": method, "seed": seed, "n": m.get("n"),
        "target_0": (m.get("target") or [math.nan])[0],
        "fd_strict": m.get("fd_strict"), "fd_strict_lo": sci[0], "fd_strict_hi": sci[1],
        "valid_rate": m.get("valid_rate"),
        "share_0": vs[0] if vs else math.nan,
        "share_0_lo": vci[0][0] if vci and isinstance(vci[0], list) else math.nan,
        "share_0_hi": vci[0][1] if vci and isinstance(vci[0], list) else math.nan,
        "share_1": vs[1] if len(vs) > 1 else math.nan, "share_2": vs[2] if len(vs) > 2 else math.nan,
        "precision": m.get("precision"), "recall": m.get("recall"), "domain_fid": m.get("domain_fid"),
        "valid_rate_j2": j2.get("valid_rate"), "share_0_j2": j2s[0] if j2s else math.nan,
        "fd_strict_j2": j2.get("fd_strict"),
        "copy_rate": (m.get("copying") or {}).get("copy_rate"),
        "drawn_per_kept": deb.get("drawn_per_kept", 1.0),
        "seconds_per_image": deb.get("seconds_per_kept_image", timing.get("seconds_per_image")),
        "finetune_s": timing.get("train_s"), "note": note,
    }


def read_rows(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: str | Path, rows: list[dict], fields: list[str] | None = None) -> None:
    """Write ``rows`` (columns ``fields``, default the debias results' ``FIELDS``) in one atomic replace."""
    p = Path(path)
    fields = FIELDS if fields is None else fields
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt_cell(r.get(k)) for k in fields})
    tmp.replace(p)


def _fmt_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def add_rows(path: str | Path, new: list[dict]) -> list[dict]:
    """Append ``new`` rows, replacing any row with the same (setting, method, seed, n, target)."""
    key = ("setting", "method", "seed", "n", "target_0")
    rows = read_rows(path)
    fresh = {tuple(str(_fmt_cell(r.get(k))) for k in key) for r in new}
    rows = [r for r in rows if tuple(str(r.get(k, "")) for k in key) not in fresh] + new
    write_rows(path, rows)
    return rows


def _fmt(v: str, digits: int = 3) -> str:
    x = _num(v)
    if math.isnan(x):
        return v if v not in (None, "", "nan") else "—"
    if x == int(x) and abs(x) >= 10:
        return str(int(x))
    return f"{x:.{digits}f}"


def render(rows: list[dict], cols: list[str]) -> str:
    """A markdown table of ``rows``; ``X_ci`` columns print ``X [X_lo, X_hi]``."""
    head = "| " + " | ".join(HEADERS.get(c, c) for c in cols) + " |"
    lines = [head, "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            if c.endswith("_ci"):
                b = c[:-3]
                cells.append(f"{_fmt(r.get(b, ''))} [{_fmt(r.get(b + '_lo', ''))}, {_fmt(r.get(b + '_hi', ''))}]")
            elif c in ("seed", "n", "seeds", "share_0_range", "bar"):
                cells.append(str(r.get(c, "")))
            elif c == "domain_fid":
                cells.append(_fmt(r.get(c, ""), 1))
            elif c in ("finetune_s", "train_seconds"):
                cells.append(_fmt(r.get(c, ""), 0))
            elif c in ("drawn_per_kept", "cost_x_base"):
                cells.append(_fmt(r.get(c, ""), 2))
            elif c == "seconds_per_image":
                cells.append(_fmt(r.get(c, ""), 4))
            else:
                cells.append(_fmt(r.get(c, "")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _parse_spec(spec: str) -> tuple[str, dict, list[str]]:
    parts = spec.split()
    src, filters, cols = parts[0], {}, []
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k == "cols":
            cols = v.split(",")
        else:
            filters[k] = v.split("|")
    return src, filters, cols


def meets_bar(row: dict, base: dict | None, judge: str = "") -> bool | None:
    """Whether a row meets the target bar against its base row (None: no base, or nothing to judge by).
    ``judge="_j2"``: the share and valid rate of the second judge (precision and recall are the same features).

    Three groups (``share_2`` set): every group's share within the band of a *uniform* target, the only target the
    file records for K > 2 (``target_0`` = 1/3; None for any other); the results file holds the second judge's share
    of group 0 alone, so the second judge's bar is None there."""
    if base is None:
        return None
    three = _num(row.get("share_2")) == _num(row.get("share_2"))  # share_2 set: K = 3
    if three and (judge or abs(_num(row.get("target_0")) - 1 / 3) > 1e-3):
        return None
    vals = [_num(row.get(k)) for k in (f"share_0{judge}", "target_0", f"valid_rate{judge}", "precision", "recall")]
    ref = [_num(base.get(k)) for k in (f"valid_rate{judge}", "precision", "recall")]
    shares = [vals[0], *([_num(row.get("share_1")), _num(row.get("share_2"))] if three else [])]
    if any(math.isnan(v) for v in vals + ref + shares):
        return None
    _, target, valid, prec, rec = vals
    target = 1 / 3 if three else target  # the file writes 1/3 as 0.3333
    return (all(abs(s - target) <= BAR["share"] + 1e-9 for s in shares)
            and valid >= ref[0] - BAR["valid_rate"] - 1e-9
            and prec >= ref[1] - BAR["precision"] - 1e-9 and rec >= ref[2] - BAR["recall"] - 1e-9)


def summarize(rows: list[dict], by: str) -> list[dict]:
    """One row per value of ``by``: numeric columns averaged, ``seeds``, ``share_0_range``, ``bar`` / ``bar_j2`` and
    ``cost_x_base`` (seconds per kept image over the base row's of the same seed, averaged over seeds)."""
    bases = {(r.get("seed"), r.get("target_0"), r.get("setting"), r.get("n")): r for r in rows
             if r.get("method") == "base"}
    keys = by.split("+")  # e.g. setting+method+target_0: one row per combination
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(k, "") for k in keys), []).append(r)
    summary = []
    for key, rs in out.items():
        agg: dict = dict(zip(keys, key))
        for f in FIELDS:
            if f in (*keys, "seed", "setting", "method", "note"):
                continue
            xs = [_num(r.get(f)) for r in rs]
            xs = [x for x in xs if not math.isnan(x)]
            agg[f] = str(sum(xs) / len(xs)) if xs else ""
        agg["seeds"] = ",".join(sorted((str(r.get("seed")) for r in rs), key=lambda x: (_num(x), x)))
        shares = [_num(r.get("share_0")) for r in rs]
        agg["share_0_range"] = f"{_fmt(str(min(shares)))}-{_fmt(str(max(shares)))}" if shares else ""
        ratios = []  # sampling cost per kept image against the base's, seed by seed
        for r in rs:
            b = bases.get((r.get("seed"), r.get("target_0"), r.get("setting"), r.get("n")))
            x, y = _num(r.get("seconds_per_image")), _num((b or {}).get("seconds_per_image"))
            if not (math.isnan(x) or math.isnan(y)) and y > 0:
                ratios.append(x / y)
        agg["cost_x_base"] = str(sum(ratios) / len(ratios)) if ratios else ""
        for col, judge in (("bar", ""), ("bar_j2", "_j2")):
            verdicts = [meets_bar(r, bases.get((r.get("seed"), r.get("target_0"), r.get("setting"), r.get("n"))),
                                  judge) for r in rs]
            known = [v for v in verdicts if v is not None]
            agg[col] = f"{sum(known)}/{len(known)}" if known and rs[0].get("method") != "base" else "—"
        summary.append(agg)
    return summary


def render_block(spec: str, results_dir: Path) -> str:
    src, filters, cols = _parse_spec(spec)
    by = filters.pop("by", [None])[0]
    rows = [r for r in read_rows(results_dir / src) if all(r.get(k) in v for k, v in filters.items())]
    return render(summarize(rows, by) if by else rows, cols)


def sync(paths: list[Path], results_dir: Path, write: bool = True) -> list[str]:
    """Regenerate every table block in ``paths``; returns ``file: spec`` of the blocks that were out of date."""
    stale = []
    for path in paths:
        text = path.read_text(encoding="utf-8")

        def repl(mo: re.Match) -> str:
            body = render_block(mo.group("spec"), results_dir)
            if body != mo.group("body"):
                stale.append(f"{path}: {mo.group('spec')}")
            return mo.group(1) + body + mo.group(4)

        new = BLOCK.sub(repl, text)
        if write and new != text:
            path.write_text(new, encoding="utf-8")
    return stale


def doc_paths(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# figures drawn from the results files as the tables are: (file, row filters, image under docs/img, title)
FIGURES = [
    ("debias.csv", {"setting": "mnist-01", "target_0": "0.5", "n": "2000"}, "debias-mnist-01-t0.5.png",
     "MNIST 0 vs 1 base (4:1) toward 50/50, 2000 images per model"),
    ("debias.csv", {"setting": "mnist-01", "target_0": "0.5", "n": "10000"}, "debias-mnist-01-t0.5-n10000.png",
     "MNIST 0 vs 1 base (4:1) toward 50/50, 10,000 images per model"),
    ("debias.csv", {"setting": "mnist-78", "target_0": "0.5", "n": "10000"}, "debias-mnist-78-t0.5-n10000.png",
     "MNIST 7 vs 8 base (4:1) toward 50/50, 10,000 images per model"),
    ("debias.csv", {"setting": "mnist-01", "target_0": "0.3", "n": "2000"}, "debias-mnist-01-t0.3.png",
     "MNIST 0 vs 1 base (4:1) toward 30 % zeros, 2000 images per model"),
    ("debias.csv", {"setting": "mnist-78", "target_0": "0.5", "n": "2000"}, "debias-mnist-78-t0.5.png",
     "MNIST 7 vs 8 base (4:1) toward 50/50, 2000 images per model"),
]


def draw_figures(root: Path) -> list[Path]:
    """Redraw every figure of :data:`FIGURES` from its results file; returns the images written."""
    from .plots import plot_target_vs_quality

    done = []
    for src, filters, name, title in FIGURES:
        rows = [r for r in read_rows(root / "docs" / "results" / src) if all(r.get(k) == v for k, v in filters.items())]
        if not rows:
            continue
        path = root / "docs" / "img" / name
        plot_target_vs_quality(rows, path, target=float(filters["target_0"]), bar=BAR, title=title)
        done.append(path)
    return done


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    root = Path.cwd()
    check = "--check" in argv
    stale = sync(doc_paths(root), root / "docs" / "results", write=not check)
    for s in stale:
        print(("out of date: " if check else "regenerated: ") + s)
    if not check and "--no-figures" not in argv:
        for p in draw_figures(root):
            print(f"drew: {p.relative_to(root)}")
    return 1 if (check and stale) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["add_rows", "read_rows", "render", "row_from_metrics", "sync", "write_rows"]
