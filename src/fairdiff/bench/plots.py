"""Plots of a matrix of runs (matplotlib, Agg backend): fairness against quality, and generated group shares.

Both take the flat rows of :mod:`fairdiff.bench.matrix` (one per run) and write a PNG atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from fairdiff.utils.io import atomic_output

    plt = _pyplot()
    try:
        with atomic_output(path) as tmp:  # a failed write leaves neither a temp file nor a cut-off figure
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


def _col(rows: list[dict], key: str) -> np.ndarray:
    return np.asarray([r.get(key, np.nan) for r in rows], float)


def plot_fd_vs_fid(rows: list[dict], path: Path, panel: str | None = None, color: str = "setting") -> None:
    """Fairness (strict FD with its bootstrap CI as error bars; the forced-choice FD for metrics without it) against
    quality (domain FID), one point per run.

    Points are coloured by ``color`` (a row key); with ``panel`` (a row key, e.g. "setting") each value of it gets
    its own panel, with a shared FD axis.
    """
    plt = _pyplot()
    panels = list(dict.fromkeys(r[panel] for r in rows)) if panel else [None]
    colors = list(dict.fromkeys(r[color] for r in rows))
    cmap = plt.get_cmap("tab10" if len(colors) <= 10 else "tab20")
    markers = "os^Dv<>p*h"
    fig, axes = plt.subplots(1, len(panels), figsize=(2 + 4 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, p in zip(axes[0], panels):
        for i, c in enumerate(colors):
            rs = [r for r in rows if r[color] == c and (p is None or r[panel] == p)]
            if not rs:
                continue
            key = "fd_strict" if np.isfinite(_col(rs, "fd_strict")).any() else "fd_hard"
            y = _col(rs, key)
            # a percentile interval need not contain the point estimate (e.g. FD near 0): no negative bars
            err = np.clip([np.nan_to_num(y - _col(rs, f"{key}_lo")), np.nan_to_num(_col(rs, f"{key}_hi") - y)], 0, None)
            ax.errorbar(_col(rs, "domain_fid"), y, yerr=err, fmt=markers[(i // 10) % len(markers)],
                        color=cmap(i % cmap.N), label=c, capsize=3, alpha=0.85)
        if p is not None:
            ax.set_title(str(p), fontsize=10)
        ax.set_xlabel("domain FID (lower is better)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("strict FD to target (lower is fairer)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_shares(rows: list[dict], path: Path, group: str = "setting", bar: str = "method") -> None:
    """Grouped bars of the generated share of group 0: one group of bars per ``group`` value, one bar per ``bar``
    value (mean ± std over seeds); dashed lines mark the target (black) and the training share (grey)."""
    plt = _pyplot()
    groups = list(dict.fromkeys(r[group] for r in rows))
    bars = list(dict.fromkeys(r[bar] for r in rows))
    width = 0.8 / len(bars)
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(groups) * max(1, len(bars) / 3), 4.2))
    for j, b in enumerate(bars):
        means, stds = [], []
        for g in groups:
            v = _col([r for r in rows if r[group] == g and r[bar] == b], "share_0")
            fin = v[np.isfinite(v)]
            means.append(fin.mean() if len(fin) else np.nan)
            stds.append(fin.std(ddof=1) if len(fin) > 1 else 0.0)
        x = np.arange(len(groups)) - 0.4 + (j + 0.5) * width
        ax.bar(x, means, width, yerr=stds, capsize=3, color=cmap(j % 10), label=b)
    for i, g in enumerate(groups):
        rs = [r for r in rows if r[group] == g]
        for key, style, label in (("target_0", "k", "target"), ("train_share_0", "0.55", "training share")):
            v = _col(rs, key)
            if np.isfinite(v).any():
                ax.hlines(np.nanmean(v), i - 0.45, i + 0.45, colors=style, linestyles="dashed",
                          label=label if i == 0 else None)
    ax.set_xticks(np.arange(len(groups)), [str(g) for g in groups], fontsize=9)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of group 0 among valid images")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    _save(fig, path)


def method_points(rows: list[dict], keys: tuple[str, ...] = ("share_0", "recall", "valid_rate")) -> dict:
    """``{method: {key: (mean, lowest, highest)}}`` over a method's rows (its seeds), in order of first appearance;
    values that are missing or not numbers are left out."""
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["method"], {k: [] for k in keys})
        for k in keys:
            try:
                v = float(r.get(k, ""))
            except (TypeError, ValueError):
                continue
            if v == v:
                out[r["method"]][k].append(v)
    return {m: {k: (float(np.mean(v)), min(v), max(v)) for k, v in d.items() if v} for m, d in out.items()}


def plot_target_vs_quality(rows: list[dict], path: Path, *, target: float, bar: dict, title: str = "") -> dict:
    """Where each method lands against the target and the base's quality: the share of group 0 among valid images
    (x) against recall and against the valid rate (two panels), one point per method (mean over its seeds, bars
    from the lowest to the highest seed), the base a black star, the target a dashed line and the region that
    meets ``bar`` (share within ``bar['share']`` of the target, the y value at least the base's minus its
    allowance) shaded. Returns the points plotted (:func:`method_points`)."""
    plt = _pyplot()
    pts = method_points(rows)
    base = pts.get("base", {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, key, label in ((axes[0], "recall", "recall"), (axes[1], "valid_rate", "valid rate (test judge)")):
        ax.axvline(target, ls="--", c="grey", lw=1)
        if key in base:
            floor = base[key][0] - bar[key]
            ax.axvspan(target - bar["share"], target + bar["share"], ymin=0, ymax=1, color="tab:green", alpha=0.06)
            ax.fill_between([target - bar["share"], target + bar["share"]], floor, 1.0, color="tab:green",
                            alpha=0.18, lw=0, label="meets the bar")
        for i, (m, p) in enumerate(pts.items()):
            if "share_0" not in p or key not in p:
                continue
            (x, x0, x1), (y, y0, y1) = p["share_0"], p[key]
            style = (dict(marker="*", ms=14, c="black") if m == "base"
                     else dict(marker="osD^vP"[i // 10 % 6], ms=6, c=f"C{i % 10}"))
            ax.errorbar([x], [y], xerr=[[max(x - x0, 0)], [max(x1 - x, 0)]], yerr=[[max(y - y0, 0)], [max(y1 - y, 0)]],
                        capsize=2, ls="none",
                        label=m, **style)
        ax.set_xlabel("share of group 0 among valid images")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(title or f"target {target:g}: where each method lands (mean over seeds, bars: lowest-highest)")
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    _save(fig, path)
    return pts
