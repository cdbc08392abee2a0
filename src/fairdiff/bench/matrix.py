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

from fairdiff.config import RunConfig, load_config
from fairdiff.utils.io import atomic_write_text, read_json, write_json


@dataclass
class Cell:
    """One run of the matrix: ``setting`` groups cells that differ only by seed."""

    name: str
    setting: str
    overrides: list[str] = field(default_factory=list)
    seed: int = 0


def run_cell(base: str | Path | None, cell: Cell, cell_dir: Path, *, quiet: bool = False) -> dict:
    """Train, sample and evaluate one cell (skipping what is already done); returns its metrics."""
    from fairdiff.evaluation import evaluate_run
    from fairdiff.sampling import sample_run
    from fairdiff.training import train

    if (cell_dir / "metrics.json").exists():
        return read_json(cell_dir / "metrics.json")
    cfg: RunConfig = load_config(base, cell.overrides)
    t0 = time.time()
    if not (cell_dir / "model").exists():
        resume = "latest" if (cell_dir / "config.yaml").exists() else None
        train(cfg, cell_dir, resume=resume, quiet=quiet)
    train_s = time.time() - t0
    samples = cell_dir / "samples" / "samples.npz"
    if not samples.exists() or len(np.load(samples)["seeds"]) != cfg.eval.n_samples:
        sample_run(cell_dir, cfg.eval.n_samples, seed=cfg.sample.seed, batch_size=cfg.sample.batch_size,
                   steps=cfg.sample.steps, scheduler=cfg.sample.scheduler, eta=cfg.sample.eta, png=False,
                   progress=not quiet)
    metrics = evaluate_run(cell_dir, progress=not quiet)
    metrics.setdefault("timing", {})["train_and_sample_s"] = round(time.time() - t0, 1)
    metrics["timing"]["train_s"] = round(train_s, 1)
    write_json(cell_dir / "metrics.json", metrics)
    return metrics


def run_matrix(base: str | Path | None, cells: list[Cell], out_dir: str | Path, *, quiet: bool = False,
               title: str = "Results") -> list[dict]:
    """Run every cell under ``out_dir/cells/<name>`` and write ``table.md``, ``table.csv`` and ``fd_vs_fid.png``."""
    out_dir = Path(out_dir)
    (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, cell in enumerate(cells):
        if not quiet:
            print(f"[{i + 1}/{len(cells)}] {cell.name}", flush=True)
        m = run_cell(base, cell, out_dir / "cells" / cell.name, quiet=quiet)
        rows.append(_row(cell, m))
    write_tables(rows, out_dir, title)
    return rows


def _get(m: dict, key: str, default=math.nan):
    v = m.get(key, default)
    return default if v is None else v


def _row(cell: Cell, m: dict) -> dict:
    ci = _get(m, "fd_hard_ci", [math.nan, math.nan])
    shares = _get(m, "shares", [])
    return {
        "cell": cell.name, "setting": cell.setting, "seed": cell.seed,
        "fd_hard": _get(m, "fd_hard"), "fd_hard_lo": ci[0], "fd_hard_hi": ci[1],
        "fd_soft": _get(m, "fd_soft"), "kl": _get(m, "kl"), "spd": _get(m, "spd"),
        "domain_fid": _get(m, "domain_fid"), "precision": _get(m, "precision"), "recall": _get(m, "recall"),
        "share_0": shares[0] if shares else math.nan,
        "conditional_spd": _get(m, "conditional_spd"),
        "n": _get(m, "n"), "train_s": m.get("timing", {}).get("train_s", math.nan),
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds for each setting (order of first appearance kept)."""
    out = []
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    for s in settings:
        rs = [r for r in rows if r["setting"] == s]
        agg: dict = {"setting": s, "seeds": len(rs)}
        for k in ("fd_hard", "fd_soft", "kl", "spd", "domain_fid", "precision", "recall", "share_0",
                  "conditional_spd"):
            vals = np.asarray([r[k] for r in rs], float)
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


def markdown_tables(rows: list[dict], title: str = "Results") -> str:
    summary = summarise(rows)
    cond = any(np.isfinite(r["conditional_spd"]) for r in rows)
    lines = [f"## {title}", "",
             "FD is the L2 distance of generated group shares to the target (binary range 0..0.7071); "
             "mean ± std over seeds.", ""]
    head = "| setting | seeds | FD hard | FD soft | SPD | share of group 0 | domain FID | precision | recall |"
    if cond:
        head += " conditional SPD |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for a in summary:
        line = (f"| {a['setting']} | {a['seeds']} | {_fmt(a['fd_hard'], a['fd_hard_std'])} | "
                f"{_fmt(a['fd_soft'], a['fd_soft_std'])} | {_fmt(a['spd'], a['spd_std'])} | "
                f"{_fmt(a['share_0'], a['share_0_std'])} | {_fmt(a['domain_fid'], a['domain_fid_std'], 2)} | "
                f"{_fmt(a['precision'], a['precision_std'], 2)} | {_fmt(a['recall'], a['recall_std'], 2)} |")
        if cond:
            line += f" {_fmt(a['conditional_spd'], a['conditional_spd_std'])} |"
        lines.append(line)
    lines += ["", "Per run (FD with its bootstrap CI):", "",
              "| run | FD hard [CI] | FD soft | SPD | domain FID | N | train s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {_fmt(r['fd_hard'])} [{_fmt(r['fd_hard_lo'])}, {_fmt(r['fd_hard_hi'])}] | "
                     f"{_fmt(r['fd_soft'])} | {_fmt(r['spd'])} | {_fmt(r['domain_fid'], digits=2)} | {r['n']} | "
                     f"{_fmt(r['train_s'], digits=0)} |")
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], out_dir: Path, title: str = "Results") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "table.md", markdown_tables(rows, title))
    if rows:
        tmp = out_dir / "table.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        tmp.replace(out_dir / "table.csv")
        write_json(out_dir / "summary.json", summarise(rows))
        plot_fd_vs_fid(rows, out_dir / "fd_vs_fid.png")


def plot_fd_vs_fid(rows: list[dict], path: Path) -> None:
    """Fairness (hard FD with bootstrap CI) against quality (domain FID), one colour per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    cmap = plt.get_cmap("tab10")
    for i, s in enumerate(settings):
        rs = [r for r in rows if r["setting"] == s]
        x = np.asarray([r["domain_fid"] for r in rs], float)
        y = np.asarray([r["fd_hard"] for r in rs], float)
        lo = y - np.asarray([r["fd_hard_lo"] for r in rs], float)
        hi = np.asarray([r["fd_hard_hi"] for r in rs], float) - y
        ax.errorbar(x, y, yerr=[np.nan_to_num(lo), np.nan_to_num(hi)], fmt="o", color=cmap(i % 10), label=s,
                    capsize=3, alpha=0.85)
    ax.set_xlabel("domain FID (lower is better)")
    ax.set_ylabel("hard FD to target (lower is fairer)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def sweep_cells(alphas: list[float], seeds: list[int], extra: list[str] | None = None,
                include_reweight: bool = False) -> list[Cell]:
    """DDM alpha x seed cells (alpha 0 is the baseline loss), optionally with a reweighting row."""
    cells = []
    for a in alphas:
        for s in seeds:
            ov = [*(extra or []), "method.name=ddm", f"method.alpha={a}", f"train.seed={s}"]
            cells.append(Cell(f"ddm-a{a:g}-s{s}", f"ddm alpha={a:g}", ov, s))
    if include_reweight:
        for s in seeds:
            cells.append(Cell(f"reweight-s{s}", "reweight", [*(extra or []), "method.name=reweight",
                                                             f"train.seed={s}"], s))
    return cells


