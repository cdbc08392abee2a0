"""Put several evaluated runs side by side: one markdown table, one CSV and one chart."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.utils.io import atomic_write_text, read_json_checked

COLUMNS = ["run", "method", "train_shares", "n", "fd_strict", "fd_strict_lo", "fd_strict_hi", "shortfall", "valid_rate",
           "valid_shares", "corrected_shares", "fd_valid", "fd_strict_j2", "judges_disagree", "shares", "fd_forced",
           "fd_hard", "fd_hard_lo", "fd_hard_hi", "fd_soft", "kl",
           "spd", "mean_pairwise_gap", "conditional_spd", "domain_fid", "precision", "recall", "classifier",
           "classifier_accuracy"]


def _row(run_dir: Path, m: dict) -> dict:
    run = m.get("run") or {}
    ci = m.get("fd_hard_ci") or [None, None]
    clf = m.get("classifier", {})
    sci = m.get("fd_strict_ci") or [None, None]
    j2 = m.get("judge2") or {}
    vec = (lambda key: [round(x, 4) for x in m[key]] if m.get(key) and None not in m[key] else None)  # noqa: E731
    return {
        "fd_strict": m.get("fd_strict"), "fd_strict_lo": sci[0], "fd_strict_hi": sci[1],
        "valid_rate": m.get("valid_rate"), "valid_shares": vec("valid_shares"), "shortfall": m.get("shortfall"),
        "corrected_shares": vec("corrected_shares"), "fd_valid": m.get("fd_valid"),
        "fd_strict_j2": j2.get("fd_strict"), "judges_disagree": (m.get("judges_agreement") or {}).get("disagree"),
        "fd_forced": m.get("fd_hard"),
        "run": run.get("name") or run_dir.name, "method": run.get("method"),
        "train_shares": run.get("train_shares"), "n": m.get("n"),
        "shares": [round(s, 4) for s in m.get("shares", [])],
        "fd_hard": m.get("fd_hard"), "fd_hard_lo": ci[0], "fd_hard_hi": ci[1], "fd_soft": m.get("fd_soft"),
        "kl": m.get("kl"), "spd": m.get("spd"), "mean_pairwise_gap": m.get("mean_pairwise_gap"),
        "conditional_spd": m.get("conditional_spd"),
        "domain_fid": m.get("domain_fid") if m.get("domain_fid") is not None else m.get("fid"),
        "precision": m.get("precision"), "recall": m.get("recall"),
        "classifier": clf.get("name"), "classifier_accuracy": clf.get("accuracy"), "dir": str(run_dir),
    }


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path, *, evaluate_missing: bool = True,
                 progress: bool = True) -> list[dict]:
    """Read (or compute) each run's ``metrics.json`` and write ``compare.md``, ``compare.csv``, ``compare.png``.

    Runs without ``metrics.json`` are evaluated first with their own config. A note is added when runs were
    judged by different classifiers, target or N, since their numbers are then not directly comparable.
    """
    from fairdiff.evaluation.evaluate import evaluate_run

    if not run_dirs:
        raise FairdiffError("compare needs at least one run folder")
    rows, metrics = [], []
    for d in run_dirs:
        d = Path(d)
        f = d / "metrics.json"
        if f.exists():
            m = read_json_checked(f, "metrics file")
            if not isinstance(m, dict):
                raise FairdiffError(f"{f} does not hold metrics (expected a JSON object)")
        elif evaluate_missing and (d / "config.yaml").exists():
            m = evaluate_run(d, progress=progress)
        else:
            raise FairdiffError(f"{d} has no metrics.json (run 'fairdiff evaluate {d}' first)")
        metrics.append(m)
        rows.append(_row(d, m))
    names = [r["run"] for r in rows]
    if len(set(names)) < len(names):  # config names collide (e.g. the default "run"): use folder names
        for r in rows:
            r["run"] = Path(r["dir"]).name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    notes = []
    for key, label in (("classifier", "classifiers"), ("n", "sample counts")):
        if len({str(r[key]) for r in rows}) > 1:
            notes.append(f"runs differ in {label}: {sorted({str(r[key]) for r in rows})}; compare with care")
    if len({str(m.get("target")) for m in metrics}) > 1:
        notes.append("runs use different targets")

    lines = [f"| {' | '.join(COLUMNS)} |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    text = ["# Run comparison", "",
            "fd_strict (headline): ||(p_1..p_K, p_outside) - (target, 0)||_2 over all images; valid_rate: share "
            "in a group and on the real-image manifold; fd_forced = fd_hard: every image forced into a group. "
            "*_lo/hi: bootstrap CI.", "",
            *lines, "", *(f"- note: {n}" for n in notes), "", *seed_summary(metrics), "![comparison](compare.png)", ""]
    atomic_write_text(out / "compare.md", "\n".join(text))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS + ["dir"])
    w.writeheader()
    for r in rows:
        w.writerow({k: (r[k] if not isinstance(r[k], list) else " ".join(map(str, r[k]))) for k in COLUMNS + ["dir"]})
    atomic_write_text(out / "compare.csv", buf.getvalue())
    _plot(rows, metrics, out / "compare.png")
    return rows


def _plot(rows: list[dict], metrics: list[dict], path: Path) -> None:
    """Left: stacked group shares per run (target dashed). Right: FD with CI per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["run"] for r in rows]
    x = np.arange(len(rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(7.0, 1.6 * len(rows) + 4), 3.4))
    bottom = np.zeros(len(rows))
    k = max(len(m.get("shares", [])) for m in metrics)
    cmap = plt.get_cmap("tab10")
    for g in range(k):
        vals = np.array([m["shares"][g] if g < len(m.get("shares", [])) else 0.0 for m in metrics])
        a1.bar(x, vals, bottom=bottom, color=cmap(g % 10), label=f"group {g}")
        bottom += vals
    tgt = metrics[0].get("target")
    if tgt:
        for c in np.cumsum(tgt)[:-1]:
            a1.axhline(c, color="k", linestyle="--", linewidth=1)
    a1.set_xticks(x, names, rotation=30, ha="right")
    a1.set_ylim(0, 1)
    a1.set_title("group shares (dashed: target)")
    a1.legend(fontsize=7, loc="upper right")
    fd = np.array([r["fd_hard"] if r["fd_hard"] is not None else np.nan for r in rows], float)
    lo = np.array([r["fd_hard_lo"] if r["fd_hard_lo"] is not None else np.nan for r in rows], float)
    hi = np.array([r["fd_hard_hi"] if r["fd_hard_hi"] is not None else np.nan for r in rows], float)
    err = np.vstack([np.nan_to_num(fd - lo), np.nan_to_num(hi - fd)]).clip(min=0)
    a2.bar(x, fd, yerr=err, capsize=4, color="#4C72B0")
    a2.set_xticks(x, names, rotation=30, ha="right")
    a2.set_ylim(0, 0.75)
    a2.set_title("FD (hard, L2) with CI; lower is fairer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SEED_METRICS = ("fd_strict", "valid_rate", "fd_hard", "fd_soft", "kl", "spd", "domain_fid", "precision", "recall")


def seed_summary(metrics: list[dict]) -> list[str]:
    """Mean +- std over runs that differ only in their training seed (same method, shares, steps, N).

    The bootstrap CI covers the sampled images only; this covers training randomness, usually the larger part.
    """
    groups: dict[tuple, list[dict]] = {}
    for m in metrics:
        run = m.get("run") or {}
        if run.get("train_seed") is None:
            continue
        key = (run.get("method"), str(run.get("train_shares")), run.get("train_steps"), run.get("conditional"),
               m.get("n"), (m.get("classifier") or {}).get("name"))
        groups.setdefault(key, []).append(m)
    out = []
    for key, ms in groups.items():
        seeds = {(m.get("run") or {}).get("train_seed") for m in ms}
        if len(seeds) < 2:
            continue
        if not out:
            out = ["## Mean +- std over training seeds", "",
                   "| method | train shares | seeds | " + " | ".join(SEED_METRICS) + " |",
                   "|" + "---|" * (3 + len(SEED_METRICS))]
        cells = []
        for name in SEED_METRICS:
            vals = np.array([m[name] for m in ms if m.get(name) is not None], float)
            cells.append(f"{vals.mean():.4f} +- {vals.std(ddof=1):.4f}" if len(vals) > 1 else "")
        out.append(f"| {key[0]} | {key[1]} | {len(seeds)} | " + " | ".join(cells) + " |")
    return [*out, ""] if out else []
