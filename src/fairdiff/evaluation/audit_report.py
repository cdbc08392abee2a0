"""The files of a prompt audit: ``audit.json``, ``audit.csv``, ``report.md`` and ``shares.png`` (strict shares of
every prompt), the prompts ranked by strict FD (highest, i.e. most biased, first)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from fairdiff.evaluation.report import group_labels
from fairdiff.metrics import strict_fairness_discrepancy
from fairdiff.utils.io import atomic_write_text, write_json

AUDIT_VERSION = 1
ROW_KEYS = ("n", "shares", "shares_ci", "strict_shares", "strict_shares_ci", "fd_strict", "fd_strict_ci",
            "valid_rate", "valid_rate_ci", "valid_shares", "corrected_shares", "corrected_shares_ci",
            "fd_strict_corrected", "fd_hard", "fd_hard_ci", "outside_rates")


def rank_rows(rows: list[dict]) -> list[dict]:
    """The prompts' metrics, most biased (highest strict FD) first; ties keep the prompts' order."""
    key = [(-(m["fd_strict"] if m.get("fd_strict") is not None else -np.inf), i) for i, m in enumerate(rows)]
    return [rows[i] for _, i in sorted(key)]


def overall(rows: list[dict], target: list[float]) -> dict:
    """All prompts pooled (each image counts once): strict shares, their strict FD, the valid rate."""
    n = np.array([m["n"] for m in rows], float)
    strict = np.array([m["strict_shares"] for m in rows], float)
    pooled = (strict * n[:, None]).sum(0) / n.sum()
    fds = [m["fd_strict"] for m in rows]
    return {"prompts": len(rows), "n": int(n.sum()), "strict_shares": pooled.tolist(),
            "shares_of_valid": (pooled[:-1] / pooled[:-1].sum()).tolist() if pooled[:-1].sum() > 0 else None,
            "valid_rate": float(1.0 - pooled[-1]), "fd_strict_pooled": strict_fairness_discrepancy(pooled, target),
            "fd_strict_mean": float(np.mean(fds)), "fd_strict_max": float(np.max(fds)),
            "most_biased": rows[int(np.argmax(fds))]["prompt"]}


def write_audit(out: Path, rows: list[dict], settings: dict, judge) -> dict:
    """Write the audit's files into ``out``; returns what ``audit.json`` holds."""
    ranked = rank_rows(rows)
    first = ranked[0]
    target = first["target"]
    labels = group_labels(first)
    result = {
        "version": AUDIT_VERSION, "settings": settings, "classifier": first["classifier"], "target": target,
        "groups": labels, "bootstrap": first.get("bootstrap"),
        "prompts": [{"rank": r, "prompt": m["prompt"], "folder": f"prompts/{m['slug']}",
                     **{k: m.get(k) for k in ROW_KEYS}} for r, m in enumerate(ranked, 1)],
        "overall": overall(rows, target),
    }
    write_json(out / "audit.json", result)
    atomic_write_text(out / "audit.csv", _csv(result, labels))
    plot_prompt_shares(result, out / "shares.png")
    atomic_write_text(out / "report.md", _markdown(result, labels))
    return result


def _csv(result: dict, labels: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "prompt", "n", "fd_strict", "fd_strict_lo", "fd_strict_hi", "valid_rate",
                *[f"share:{g}" for g in labels], "share:outside", *[f"corrected:{g}" for g in labels], "folder"])
    for p in result["prompts"]:
        ci = p.get("fd_strict_ci") or [None, None]
        corr = p.get("corrected_shares") or [None] * len(labels)
        w.writerow([p["rank"], p["prompt"], p["n"], p["fd_strict"], ci[0], ci[1], p["valid_rate"],
                    *p["strict_shares"], *corr, p["folder"]])
    return buf.getvalue()


def _vec(v, digits: int = 3) -> str:
    return "n/a" if v is None else " / ".join("n/a" if x is None else f"{x:.{digits}f}" for x in v)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(result: dict, labels: list[str]) -> str:
    s, o, clf = result["settings"], result["overall"], result["classifier"]
    conf = round((result.get("bootstrap") or {}).get("confidence", 0.95) * 100)
    if s["mode"] == "generate":
        made = (f"- generated: `{s['sd']['path']}`, {s['n']} images per prompt, image i from seed {s['seed']} + i, "
                f"{s['steps']} DDIM steps, guidance scale {s['guidance_scale']}")
    else:
        made = f"- images made elsewhere: `{s['images']}` (one subfolder per prompt)"
    acc = clf.get("accuracy")
    parts = [
        "# Prompt audit", "", made,
        f"- judge: `{clf['name']}`" + (f", accuracy on balanced held-out real images {acc:.3f}" if acc else
                                       ", accuracy unknown (no reference images)"),
        f"- groups: {', '.join(labels)}; target shares {result['target']}",
        f"- strict FD: L2 distance of (group shares over all images, outside share) from (target, 0); images the "
        f"judge cannot place count as deviation. CIs: percentile bootstrap over images, {conf}%.",
        "", "## Prompts ranked by bias (strict FD, highest first)", "",
        f"| rank | prompt | N | strict FD [{conf}% CI] | valid rate | shares ({' / '.join(labels)} / outside) | "
        f"corrected shares |", "|---|---|---|---|---|---|---|",
    ]
    for p in result["prompts"]:
        ci = p.get("fd_strict_ci")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else ""
        link = f"[{_cell(p['prompt'])}]({p['folder']}/report.md)"
        parts.append(f"| {p['rank']} | {link} | {p['n']} | {p['fd_strict']:.3f}{ci_text} | {p['valid_rate']:.3f} | "
                     f"{_vec(p['strict_shares'])} | {_vec(p.get('corrected_shares'))} |")
    parts += [
        "", "## Overall (all prompts pooled)", "", "| quantity | value |", "|---|---|",
        f"| prompts / images | {o['prompts']} / {o['n']} |",
        f"| pooled shares ({' / '.join(labels)} / outside) | {_vec(o['strict_shares'])} |",
        f"| pooled valid rate | {o['valid_rate']:.3f} |",
        f"| strict FD of the pooled shares | {o['fd_strict_pooled']:.3f} |",
        f"| strict FD, mean over prompts | {o['fd_strict_mean']:.3f} |",
        f"| strict FD, highest (prompt) | {o['fd_strict_max']:.3f} ({_cell(o['most_biased'])}) |",
        "", "![shares per prompt](shares.png)", "",
        "Each prompt's folder holds its samples, grid (`samples.png`), `metrics.json` and `report.md`. Corrected "
        "shares need reference images with known groups (the judge's data config); n/a without them.", ""]
    return "\n".join(parts)


def plot_prompt_shares(result: dict, path: Path) -> None:
    """Grouped bars: the strict shares (groups and outside) of every prompt, in ranked order, targets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["prompts"]
    labels = result["groups"] + ["outside"]
    shares = np.array([p["strict_shares"] for p in rows], float)
    k = shares.shape[1]
    x = np.arange(len(rows))
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j in range(k):
        ax.bar(x - 0.4 + width * (j + 0.5), shares[:, j], width, label=labels[j], color=colors[j % len(colors)])
    for j, t in enumerate(result["target"]):
        ax.axhline(t, color=colors[j % len(colors)], linestyle="--", linewidth=1)
    names = [p["prompt"] if len(p["prompt"]) <= 28 else p["prompt"][:25] + "..." for p in rows]
    ax.set_xticks(x, names, rotation=30 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of the prompt's images")
    ax.set_title("Shares per prompt, most biased first (dashed: target)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
