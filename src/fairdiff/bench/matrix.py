"""Run a matrix of (config + overrides) cells: train -> sample -> evaluate, each in its own run folder.

A cell whose ``metrics.json`` exists is finished and kept; an unfinished one continues from its latest
checkpoint. Results are gathered into a table (markdown + CSV), aggregated over seeds, and plotted as fairness
(FD) against quality (domain FID) with confidence intervals.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fairdiff.bench.plots import plot_fd_vs_fid
from fairdiff.bench.records import (  # noqa: F401  (re-exported: the cell records live in bench.records)
    CELL_RECORD,
    cell_record,
    refuse_stale,
    stale_reason,
    write_cell_record,
)
from fairdiff.config import RunConfig, load_config
from fairdiff.runs import logged_training_seconds
from fairdiff.utils.io import atomic_write_text, read_json_checked, write_json


@dataclass
class Cell:
    """One run of the matrix: ``setting`` groups cells that differ only by seed."""

    name: str
    setting: str
    overrides: list[str] = field(default_factory=list)
    seed: int = 0
    method: str = ""  # the row label within a setting (``fairdiff bench``); empty for sweeps
    from_run: str | None = None  # a trained run (a base) used as this cell's model instead of training one
    debias: dict | None = None  # {"from": <cell name>, "method": "filter"}: debias another cell's model


def copy_base_run(src: str | Path, dest: Path, cfg: RunConfig | None = None) -> None:
    """Copy a trained run's model, config, data manifest and base record into ``dest`` (atomically); ``cfg``
    (the cell's config, same recipe) replaces the copied ``config.yaml``."""
    import shutil

    from fairdiff.config import save_config

    from fairdiff.utils.atomic import atomic_dir

    src = Path(src)
    with atomic_dir(dest) as tmp:
        shutil.copytree(src / "model", tmp / "model")
        for f in ("config.yaml", "manifest.json", "base.json", "stats.jsonl", ".fairdiff.json"):
            if (src / f).is_file():
                shutil.copy2(src / f, tmp / f)
        if cfg is not None:
            save_config(cfg, tmp / "config.yaml")


def _run_debias_cell(cfg: RunConfig, cell: Cell, cell_dir: Path, quiet: bool) -> dict:
    from fairdiff.debias import debias_run

    src = cell_dir.parent / cell.debias["from"]
    t0 = time.time()
    rec = debias_run(src, cell_dir, cfg.eval.target, method=cell.debias.get("method", "filter"),
                     n=cfg.eval.n_samples, overwrite=cell_dir.exists(), evaluate=True, progress=not quiet)
    m = rec.pop("metrics")
    m["debias"] = rec
    m["timing"] = {"train_s": 0.0, "train_and_sample_s": round(time.time() - t0, 1),
                   "seconds_per_image": rec["seconds_per_kept_image"]}
    write_cell_record(cell_dir, cfg)
    write_json(cell_dir / "metrics.json", m)
    return m


def run_cell(base: str | Path | None, cell: Cell, cell_dir: Path, *, quiet: bool = False) -> dict:
    """Train, sample and evaluate one cell (skipping what is already done); returns its metrics."""
    from fairdiff.evaluation import evaluate_run
    from fairdiff.sampling import sample_run
    from fairdiff.training import train

    if (cell_dir / "metrics.json").exists():
        return read_json_checked(cell_dir / "metrics.json", "cell metrics")
    cfg: RunConfig = load_config(base, cell.overrides)
    if cell.debias:
        return _run_debias_cell(cfg, cell, cell_dir, quiet)
    t0 = time.time()
    if cell.from_run and not (cell_dir / "model").exists():
        copy_base_run(cell.from_run, cell_dir, cfg)
        train_s = 0.0  # a pretrained base: its training is not this cell's cost
    elif not (cell_dir / "model").exists():
        resume = "latest" if (cell_dir / "config.yaml").exists() else None
        train(cfg, cell_dir, resume=resume, quiet=quiet)
        train_s = time.time() - t0
    else:  # trained by an earlier, interrupted invocation: its time is in the training log
        train_s = logged_training_seconds(cell_dir / "stats.jsonl")
    samples = cell_dir / "samples" / "samples.npz"
    if not samples.exists() or len(np.load(samples)["seeds"]) != cfg.eval.n_samples:
        sample_run(cell_dir, cfg.eval.n_samples, seed=cfg.sample.seed, batch_size=cfg.sample.batch_size,
                   steps=cfg.sample.steps, scheduler=cfg.sample.scheduler, eta=cfg.sample.eta, png=False,
                   progress=not quiet)
    metrics = evaluate_run(cell_dir, progress=not quiet)
    metrics.setdefault("timing", {})["train_and_sample_s"] = round(time.time() - t0, 1)
    metrics["timing"]["train_s"] = round(train_s, 1)
    write_cell_record(cell_dir, cfg)
    write_json(cell_dir / "metrics.json", metrics)
    return metrics


def run_matrix(base: str | Path | None, cells: list[Cell], out_dir: str | Path, *, quiet: bool = False,
               title: str = "Results") -> list[dict]:
    """Run every cell under ``out_dir/cells/<name>`` and write ``table.md``, ``table.csv`` and ``fd_vs_fid.png``."""
    out_dir = Path(out_dir)
    if len({c.name for c in cells}) != len(cells):
        from fairdiff.errors import FairdiffError

        dup = next(c.name for c in cells if sum(d.name == c.name for d in cells) > 1)
        raise FairdiffError(f"two cells would share the folder {dup}; give distinct values")
    cfgs = [load_config(base, c.overrides) for c in cells]  # every cell's config is checked before any work
    refuse_stale(cells, {c.name: r for c, cfg in zip(cells, cfgs)
                         if (r := stale_reason(out_dir / "cells" / c.name, cfg))}, out_dir)
    (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, cell in enumerate(cells):
        if not quiet:
            print(f"[{i + 1}/{len(cells)}] {cell.name}", flush=True)
        m = run_cell(base, cell, out_dir / "cells" / cell.name, quiet=quiet)
        rows.append(metrics_row(cell, m))
    write_tables(rows, out_dir, title)
    return rows


def _get(m: dict, key: str, default=math.nan):
    v = m.get(key, default)
    return default if v is None else v


def metrics_row(cell: Cell, m: dict) -> dict:
    """One flat table row from a cell's ``metrics.json`` (``share_<k>`` for every group k)."""
    ci = _get(m, "fd_hard_ci", [math.nan, math.nan])
    sci = _get(m, "fd_strict_ci", [math.nan, math.nan])
    vci = _get(m, "valid_rate_ci", [math.nan, math.nan])
    j2 = m.get("judge2") or {}
    # group shares over valid images (older metrics.json without open-set keys: the forced-choice shares)
    shares = _get(m, "valid_shares", None) or _get(m, "shares", []) or [math.nan]
    target = _get(m, "target", []) or [math.nan]
    train_shares = (m.get("run") or {}).get("train_shares") or [math.nan]
    return {
        "cell": cell.name, "setting": cell.setting, "method": cell.method, "seed": cell.seed,
        "fd_strict": _get(m, "fd_strict"), "fd_strict_lo": sci[0], "fd_strict_hi": sci[1],
        "valid_rate": _get(m, "valid_rate"), "valid_rate_lo": vci[0], "valid_rate_hi": vci[1],
        "shortfall": _get(m, "shortfall"),
        "fd_valid": _get(m, "fd_valid"), "fd_strict_corrected": _get(m, "fd_strict_corrected"),
        "fd_strict_j2": _get(j2, "fd_strict"), "valid_rate_j2": _get(j2, "valid_rate"),
        "judges_disagree": (m.get("judges_agreement") or {}).get("disagree"),
        "fd_forced": _get(m, "fd_hard"),
        "fd_hard": _get(m, "fd_hard"), "fd_hard_lo": ci[0], "fd_hard_hi": ci[1],
        "fd_soft": _get(m, "fd_soft"), "kl": _get(m, "kl"), "spd": _get(m, "spd"),
        "domain_fid": _get(m, "domain_fid"), "precision": _get(m, "precision"), "recall": _get(m, "recall"),
        "copy_rate": _get(m.get("copying") or {}, "copy_rate"),
        "closer_to_train": _get(m.get("copying") or {}, "closer_to_train"),
        **{f"share_{i}": v for i, v in enumerate(shares)},
        "conditional_spd": _get(m, "conditional_spd"),
        "n": _get(m, "n"), "train_s": m.get("timing", {}).get("train_s", math.nan),
        "drawn_per_kept": (m.get("debias") or {}).get("drawn_per_kept", 1.0 if m.get("n") else math.nan),
        "groups": "/".join(str(g) for g in (m.get("data") or {}).get("groups", [])),
        "target_0": target[0], "train_share_0": train_shares[0],
    }


METRICS = ("fd_strict", "shortfall", "valid_rate", "fd_valid", "fd_strict_corrected", "fd_strict_j2", "valid_rate_j2",
           "fd_forced", "fd_hard", "fd_soft", "kl", "spd", "domain_fid", "precision", "recall", "conditional_spd",
           "copy_rate", "closer_to_train", "train_s")


def _share_keys(rows: list[dict]) -> list[str]:
    keys = {k for r in rows for k in r if k.startswith("share_") and k[6:].isdigit()}
    return sorted(keys, key=lambda k: int(k[6:]))


def summarise(rows: list[dict], by: tuple[str, ...] = ("setting",)) -> list[dict]:
    """Mean and std (ddof 1) over the rows that share the ``by`` keys, e.g. the seeds of one setting (order of
    first appearance kept). Missing or NaN values are ignored; a std needs two finite values."""
    out = []
    for key in dict.fromkeys(tuple(r.get(b) for b in by) for r in rows):
        rs = [r for r in rows if tuple(r.get(b) for b in by) == key]
        agg: dict = {**dict(zip(by, key)), "seeds": len(rs)}
        for k in (*METRICS, *_share_keys(rows)):
            vals = np.asarray([r.get(k, math.nan) for r in rs], float)
            agg[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
            agg[k + "_std"] = float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else math.nan
        out.append(agg)
    return out


def _fmt(v: float, std: float = math.nan, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    s = f"{v:.{digits}f}"
    if std is not None and not math.isnan(std):
        s += f" ± {std:.{digits}f}"
    return s


def _summary_table(aggs: list[dict], label: str, cols: list[tuple[str, str, int]]) -> list[str]:
    """Markdown lines: one row per aggregate, ``mean ± std`` for each (header, key, digits) column."""
    head = f"| {label} | seeds | " + " | ".join(h for h, _, _ in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for a in aggs:
        vals = " | ".join(_fmt(a.get(k, math.nan), a.get(k + "_std", math.nan), d) for _, k, d in cols)
        lines.append(f"| {a[label]} | {a['seeds']} | {vals} |")
    return lines


def _runs_table(rows: list[dict], shares: bool = False) -> list[str]:
    """Markdown lines: one row per run, strict FD and valid rate with their bootstrap CIs (and the shares over
    valid images), the forced-choice FD beside them."""
    sk = _share_keys(rows) if shares else []
    head = ("| run | strict FD [CI] | valid rate [CI] | FD over valid | forced-choice FD [CI] | judge 2 strict FD | "
            + ("shares over valid | " if sk else ""))
    lines = [head + "domain FID | N | train s |", "|" + "---|" * (9 + bool(sk))]
    for r in rows:
        sh = " / ".join(_fmt(r.get(k, math.nan)) for k in sk) + " | " if sk else ""
        flag = " (judges disagree)" if r.get("judges_disagree") else ""
        lines.append(
            f"| {r['cell']} | {_fmt(r.get('fd_strict', math.nan))} [{_fmt(r.get('fd_strict_lo', math.nan))}, "
            f"{_fmt(r.get('fd_strict_hi', math.nan))}] | {_fmt(r.get('valid_rate', math.nan))} "
            f"[{_fmt(r.get('valid_rate_lo', math.nan))}, {_fmt(r.get('valid_rate_hi', math.nan))}] | "
            f"{_fmt(r.get('fd_valid', math.nan))} | "
            f"{_fmt(r['fd_hard'])} [{_fmt(r['fd_hard_lo'])}, {_fmt(r['fd_hard_hi'])}] | "
            f"{_fmt(r.get('fd_strict_j2', math.nan))}{flag} | {sh}{_fmt(r['domain_fid'], digits=2)} | {r['n']} | "
            f"{_fmt(r['train_s'], digits=0)} |")
    return lines


_QUALITY = [("domain FID", "domain_fid", 2), ("precision", "precision", 2), ("recall", "recall", 2),
            ("copy rate", "copy_rate", 3)]
_FAIRNESS = [("strict FD", "fd_strict", 3), ("shortfall", "shortfall", 3), ("valid rate", "valid_rate", 3),
             ("FD over valid", "fd_valid", 3),
             ("strict FD corrected", "fd_strict_corrected", 3), ("judge 2 strict FD", "fd_strict_j2", 3),
             ("forced-choice FD", "fd_forced", 3)]


def markdown_tables(rows: list[dict], title: str = "Results", per: str | None = None) -> str:
    """Results as markdown: a summary table (mean ± std over seeds) and a per-run table with FD's bootstrap CI.

    ``per=None``: one summary row per setting (sweeps, the demo). ``per="setting"``: one section per setting whose
    summary has one row per method, every group's share and the training seconds (``fairdiff bench``).
    """
    cond = any(np.isfinite(r.get("conditional_spd", math.nan)) for r in rows)
    cond_col = [("conditional SPD", "conditional_spd", 3)] if cond else []
    lines = [f"## {title}", "",
             "Strict FD (the headline) = ||(p_1..p_K, p_outside) - (target, 0)||_2 over all images, where outside "
             "images (another class, low judge confidence, or off the real-image manifold) count as deviation; "
             "shortfall = sum_k max(t_k - p_k, 0) over all images (outside images can never lower it, unlike the "
             "L2 strict FD, which drops when they replace an over-represented group's excess); "
             "valid rate = share not outside; FD over valid and the shares use valid images only; forced-choice "
             "FD is the old FD that forces every image into a group. Mean ± std over seeds.", ""]
    if per is None:
        cols = [*_FAIRNESS, ("share of group 0 (valid)", "share_0", 3), *_QUALITY, *cond_col]
        lines += _summary_table(summarise(rows), "setting", cols)
        lines += ["", "Per run (with bootstrap CIs):", "", *_runs_table(rows)]
        return "\n".join(lines) + "\n"
    for value in dict.fromkeys(r[per] for r in rows):
        rs = [r for r in rows if r[per] == value]
        share_cols = [(f"share g{k[6:]} (valid)", k, 3) for k in _share_keys(rs)]
        cols = [*_FAIRNESS, *share_cols, *_QUALITY, *cond_col, ("train s", "train_s", 0)]
        r0 = rs[0]
        lines += [f"### {value}", "",
                  f"Groups {r0.get('groups') or '?'} (g0 first); training share of g0 "
                  f"{_fmt(r0.get('train_share_0', math.nan), digits=2)}, target "
                  f"{_fmt(r0.get('target_0', math.nan), digits=2)}.", "",
                  *_summary_table(summarise(rs, by=("method",)), "method", cols),
                  "", "Per run (with bootstrap CIs):", "", *_runs_table(rs, shares=True), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    """Write dict rows as CSV atomically; the columns are the union of the rows' keys in order of appearance."""
    from fairdiff.utils.io import atomic_output

    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:  # a failed write leaves no temp file
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)


def write_tables(rows: list[dict], out_dir: Path, title: str = "Results") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "table.md", markdown_tables(rows, title))
    if rows:
        write_csv(rows, out_dir / "table.csv")
        write_json(out_dir / "summary.json", summarise(rows))
        plot_fd_vs_fid(rows, out_dir / "fd_vs_fid.png")


SWEEP_METHOD = "ddm"  # the sweep is DDM's alpha sweep (plus an optional reweighting row)


def sweep_cells(alphas: list[float], seeds: list[int], extra: list[str] | None = None,
                include_reweight: bool = False) -> list[Cell]:
    """DDM alpha x seed cells (alpha 0 is the baseline loss), optionally with a reweighting row.

    The sweep sets ``method.name``, ``method.alpha`` and ``train.seed`` of each cell itself: an override of one
    of them (which the cell would silently replace) is a one-line :class:`FairdiffError`."""
    from fairdiff.errors import FairdiffError

    for ov in extra or []:
        key, _, value = str(ov).partition("=")
        key, value = key.strip(), value.strip().strip("'\"")
        if key == "method.name" and value.lower() != SWEEP_METHOD:
            raise FairdiffError(f"sweep sweeps DDM's alpha and trains DDM only, not {ov!r}: add a reweighting row "
                                f"with --reweight, or compare methods with 'fairdiff bench'")
        if key == "method.alpha":
            raise FairdiffError(f"sweep sets method.alpha of each cell itself; give the values with --alphas, "
                                f"not {ov!r}")
        if key == "train.seed":
            raise FairdiffError(f"sweep sets train.seed of each cell itself; give the values with --seeds, not {ov!r}")
    cells = []
    for a in alphas:
        for s in seeds:
            ov = [*(extra or []), f"method.name={SWEEP_METHOD}", f"method.alpha={a}", f"train.seed={s}"]
            cells.append(Cell(f"ddm-a{a:g}-s{s}", f"ddm alpha={a:g}", ov, s))
    if include_reweight:
        for s in seeds:
            cells.append(Cell(f"reweight-s{s}", "reweight", [*(extra or []), "method.name=reweight",
                                                             f"train.seed={s}"], s))
    return cells


