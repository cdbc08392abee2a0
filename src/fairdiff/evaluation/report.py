"""``report.md`` and its charts: group shares against the target (with CIs), a sample grid, a metrics table."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from fairdiff.utils.io import atomic_write_text, write_json


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _fmt_ci(ci) -> str:
    if not ci or ci[0] is None:
        return ""
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _esc(text: str) -> str:
    """Escape pipes so formulas like ||p - q|| do not split a markdown table cell."""
    return str(text).replace("|", "\\|")


def group_labels(metrics: dict) -> list[str]:
    names = metrics.get("classifier", {}).get("class_names")
    if names:
        return list(names)
    groups = metrics.get("data", {}).get("groups")
    k = metrics["num_classes"]
    if groups and len(groups) == k:
        attr = metrics.get("data", {}).get("attribute", "value")
        return [f"group {i} ({attr}={g})" for i, g in enumerate(groups)]
    return [f"group {i}" for i in range(k)]


def plot_shares(metrics: dict, path: Path, title: str | None = None) -> None:
    """Bar chart of the hard group shares with bootstrap CI error bars, the target as a dashed marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strict = metrics.get("strict_shares") is not None
    key = "strict_shares" if strict else "shares"
    shares = np.asarray(metrics[key], float)
    k = len(shares)
    labels = group_labels(metrics) + (["outside"] if strict else [])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * k + 2), 3.2))
    x = np.arange(k)
    yerr = None
    if metrics.get(f"{key}_ci"):
        ci = np.asarray(metrics[f"{key}_ci"], float)
        yerr = np.vstack([shares - ci[:, 0], ci[:, 1] - shares]).clip(min=0)
    ax.bar(x, shares, yerr=yerr, capsize=4, color="#4C72B0", label="generated (judge, all images)")
    tgt = np.asarray(metrics["target"] + ([0.0] if strict else []), float)
    ax.hlines(tgt, x - 0.4, x + 0.4, colors="#DD8452", linestyles="--", linewidth=2, label="target")
    ax.set_xticks(x, labels, rotation=0 if k <= 4 else 45)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of generated images")
    conf = metrics.get("bootstrap", {}).get("confidence", 0.95)
    fd = f"strict FD={metrics['fd_strict']:.3f}" if strict else f"FD={metrics['fd_hard']:.3f}"
    ax.set_title(title or f"Shares (N={metrics['n']}, {int(conf * 100)}% CI)  {fd}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt_vec(v, ci=None) -> str:
    if v is None:
        return "n/a"
    text = "/".join("n/a" if x is None else f"{x:.3f}" for x in v)
    if ci and all(c is not None and c[0] is not None for c in ci):
        text += " [" + "; ".join(f"{c[0]:.3f}-{c[1]:.3f}" for c in ci) + "]"
    return text


def _judge_row(label: str, m: dict) -> str:
    clf = m.get("classifier") or {}
    acc = clf.get("accuracy")
    return (f"| {label} `{clf.get('name')}` (acc {_fmt(acc, 3)}) | {_fmt(m.get('fd_strict'))} "
            f"{_fmt_ci(m.get('fd_strict_ci'))} | {_fmt(m.get('shortfall'))} {_fmt_ci(m.get('shortfall_ci'))} | "
            f"{_fmt(m.get('valid_rate'), 3)} {_fmt_ci(m.get('valid_rate_ci'))} | "
            f"{_fmt_vec(m.get('valid_shares'), m.get('valid_shares_ci'))} | "
            f"{_fmt_vec(m.get('corrected_shares'), m.get('corrected_shares_ci'))} | {_fmt(m.get('fd_valid'))} | "
            f"{_fmt(m.get('fd_forced'))} | {_fmt(m.get('reference_valid_rate'), 3)} |")


def headline_table(metrics: dict) -> str:
    """Both judges side by side: strict FD, valid rate, observed and corrected shares over valid images."""
    if metrics.get("fd_strict") is None:
        return ""
    lines = ["| judge | **strict FD** [CI] | shortfall [CI] | valid rate [CI] | shares over valid [CI] | "
             "corrected shares [CI] | FD over valid | forced-choice FD | real held-out valid rate |",
             "|---|---|---|---|---|---|---|---|---|",
             _judge_row("1", metrics)]
    j2 = metrics.get("judge2")
    if j2 and not j2.get("skipped"):
        lines.append(_judge_row("2", j2))
    out = "\n".join(lines)
    agree = metrics.get("judges_agreement") or {}
    if j2 and j2.get("skipped"):
        out += f"\n\nSecond judge skipped: {j2['skipped']}"
    elif agree.get("disagree"):
        out += (f"\n\n**The two judges disagree beyond their CIs** on the share of group(s) {agree['groups']}: "
                "treat the shares as uncertain.")
    elif agree:
        out += "\n\nThe two judges agree within their CIs on every share over valid images."
    if agree.get("valid_rate_disagree"):
        out += " Their valid rates differ beyond their CIs (their outside tests differ)."
    r = metrics.get("outside_rates") or {}
    out += (f"\n\nOutside (judge 1; an image can fail several tests): another class {_fmt(r.get('other_class'), 3)}, "
            f"low confidence {_fmt(r.get('low_confidence'), 3)}, off the real-image manifold "
            f"{_fmt(r.get('off_manifold'), 3)}.")
    return out


def replicates_table(metrics: dict) -> str:
    rep = metrics.get("replicates")
    if not rep:
        return ""
    lines = [f"{rep['replicates']} replicates of {rep['n_each']} images (mean +- std over replicates):", "",
             "| metric | mean +- std | bootstrap CI (all images) |", "|---|---|---|"]
    for key, ci_key in (("fd_strict", "fd_strict_ci"), ("shortfall", "shortfall_ci"), ("valid_rate", "valid_rate_ci"),
                        ("fd_valid", "fd_valid_ci"), ("fd_forced", "fd_forced_ci")):
        r = rep.get(key) or {}
        std = r.get("std")
        lines.append(f"| {key} | {_fmt(r.get('mean'))} +- {_fmt(std)} | {_fmt_ci(metrics.get(ci_key))} |")
    return "\n".join(lines)


def metrics_table(metrics: dict) -> str:
    """The main numbers as a markdown table (value, CI, what it means)."""
    rows = []
    if metrics.get("fd_strict") is not None:
        rows += [
            ("strict FD (headline)", metrics.get("fd_strict"), metrics.get("fd_strict_ci"),
             "||(p_1..p_K, p_outside) - (target, 0)||_2 over all images; outside counts as deviation"),
            ("shortfall", metrics.get("shortfall"), metrics.get("shortfall_ci"),
             "sum_k max(t_k - p_k, 0) over all images: outside images can never lower it"),
            ("valid rate", metrics.get("valid_rate"), metrics.get("valid_rate_ci"),
             "share of images in a group and on the real-image manifold"),
            ("FD over valid images", metrics.get("fd_valid"), metrics.get("fd_valid_ci"), "shares among valid images"),
            ("strict FD, corrected", metrics.get("fd_strict_corrected"), metrics.get("fd_strict_corrected_ci"),
             "judge error corrected with its held-out confusion matrix"),
        ]
    rows += [
        ("FD forced-choice (hard, L2)", metrics.get("fd_hard"), metrics.get("fd_hard_ci"),
         "every image forced into a group; ||p_hat - target||_2"),
        ("FD (soft, L2)", metrics.get("fd_soft"), metrics.get("fd_soft_ci"), "same with mean softmax"),
        ("KL(p_hat || target)", metrics.get("kl"), metrics.get("kl_ci"), "nats"),
        ("SPD", metrics.get("spd"), metrics.get("spd_ci"),
         "p_0 - p_1 (signed)" if metrics["num_classes"] == 2 else "max - min share"),
        ("mean pairwise gap", metrics.get("mean_pairwise_gap"), metrics.get("mean_pairwise_gap_ci"),
         "mean |p_i - p_j|"),
    ]
    if metrics.get("conditional_spd") is not None:
        rows.append(("conditional SPD", metrics.get("conditional_spd"), metrics.get("conditional_spd_ci"),
                     "gap of per-condition success rates"))
    fid_key = "domain_fid" if metrics.get("domain_fid") is not None else "fid"
    rows += [
        ("domain FID" if fid_key == "domain_fid" else "FID", metrics.get(fid_key), None,
         f"features: {metrics.get('quality_features')}"),
        ("precision", metrics.get("precision"), None, f"k-NN manifold, k={metrics.get('pr_k')}"),
        ("recall", metrics.get("recall"), None, f"vs {metrics.get('reference_n')} real held-out images"),
    ]
    lines = ["| metric | value | CI | note |", "|---|---|---|---|"]
    lines += [f"| {_esc(n)} | {_fmt(v)} | {_fmt_ci(ci)} | {_esc(note)} |" for n, v, ci, note in rows]
    return "\n".join(lines)


def copying_text(c: dict) -> str:
    """The copying check (``metrics.copying``) in two sentences, each number beside what real images give."""
    race = c.get("closer_to_train")
    race_text = ("" if race is None else
                 f" Against an equal-size race ({c.get('race_size')} training vs {c.get('race_size')} held-out "
                 f"images, same group counts), {race:.1%} of them lie nearer a training image (about 50% for "
                 f"images as new as real ones; near 100% for a model that copies).")
    return (f"Of {c.get('n')} generated images, **{c.get('copy_rate', 0):.1%}** lie closer to one of the "
            f"{c.get('train_n')} training images ({c.get('trained_on')}) than {1 - c.get('copy_rate_real', 0.05):.0%} "
            f"of real held-out images do (by construction {c.get('copy_rate_real', 0.05):.0%} for real images; "
            f"{c.get('space')}, median nearest-training distance {c.get('nn_train_median', float('nan')):.1f} vs "
            f"{c.get('nn_train_median_real', float('nan')):.1f} for real images).{race_text}")


def write_report(metrics: dict, out_dir: str | Path, images: np.ndarray | None = None,
                 grid_source: Path | None = None) -> Path:
    """Write ``metrics.json``, ``shares.png``, ``samples.png`` and ``report.md`` into ``out_dir``."""
    from fairdiff.utils.images import save_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # every file is written into a hidden stage first and moved into place only when all are complete, so a
    # failure (a full disk) leaves the folder as it was: never a new metrics.json beside an old or cut-off figure
    import tempfile

    from fairdiff.utils.io import disk_full_as_error

    stage = Path(tempfile.mkdtemp(dir=out, prefix=".report.", suffix=".tmp"))
    try:
        with disk_full_as_error(out):
            names = _write_report_files(metrics, out, stage, images, grid_source, save_grid)
        for name in names:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out / "report.md"


def _write_report_files(metrics: dict, out: Path, st: Path, images, grid_source, save_grid) -> list[str]:
    """The report's files written into the stage ``st`` (``out`` is the final folder); returns their names."""
    names = ["metrics.json", "shares.png", "report.md"]
    write_json(st / "metrics.json", metrics)
    plot_shares(metrics, st / "shares.png")
    if grid_source is not None and Path(grid_source).exists():
        if Path(grid_source).resolve() != (out / "samples.png").resolve():
            shutil.copyfile(grid_source, st / "samples.png")
            names.append("samples.png")
    elif images is not None and len(images):
        save_grid(images[:64], st / "samples.png", nrow=8)
        names.append("samples.png")
    clf = metrics["classifier"]
    labels = group_labels(metrics)
    share_rows = ["| group | share of all images [CI] | over valid [CI] | corrected [CI] | forced-choice [CI] | "
                  "soft (forced) | target |", "|---|---|---|---|---|---|---|"]

    def cell(key: str, i: int) -> str:
        v = metrics.get(key)
        cis = metrics.get(f"{key}_ci")
        if v is None or v[i] is None:
            return "n/a"
        return f"{v[i]:.4f} {_fmt_ci(cis[i]) if cis else ''}".strip()

    for i, lab in enumerate(labels):
        share_rows.append(f"| {lab} | {cell('strict_shares', i)} | {cell('valid_shares', i)} | "
                          f"{cell('corrected_shares', i)} | {cell('shares', i)} | "
                          f"{metrics['soft_shares'][i]:.4f} | {metrics['target'][i]:.4f} |")
    if metrics.get("strict_shares") is not None:
        share_rows.append(f"| outside | {cell('strict_shares', len(labels))} | | | | | 0 |")
    run = metrics.get("run") or {}
    bs = metrics.get("bootstrap", {})
    head = f"# Evaluation: {run.get('name', Path(metrics.get('samples', {}).get('path', str(out))).name)}"
    acc = clf.get("accuracy")
    seeds = metrics.get("samples", {}).get("seeds")
    seed_text = f" (seeds {seeds[0]}..{seeds[1]})" if seeds else ""
    if acc is None:
        acc_text = "unknown"
    else:
        acc_text = f"{acc:.4f}" + (f" (n={clf['heldout_n']})" if clf.get("heldout_n") else "")
    abs_fd = metrics.get("fd_hard_abs_scale")
    abs_text = f"on the |p_1 - 0.5| scale FD = {abs_fd:.4f}" if abs_fd is not None else "see docs/metrics.md"
    conf_pct = round(bs.get("confidence", 0.95) * 100)
    parts = [
        head, "",
        f"- generated images N = {metrics['n']}{seed_text}",
        f"- classifier: `{clf['name']}`, accuracy on balanced held-out real images: {acc_text}",
        f"- target: {metrics['target']}",
        (f"- CIs: {bs.get('method', 'percentile')} bootstrap over generated images, "
         f"{bs.get('resamples')} resamples, {conf_pct}% (seed {bs.get('seed')})"),
        f"- FD is on the L2 scale: binary range [0, 0.7071]; {abs_text}",
    ]
    if run:
        parts.append(f"- run: method `{run.get('method')}`, training shares {run.get('train_shares')}, "
                     f"{run.get('train_steps')} steps, seed {run.get('train_seed')}")
    if metrics.get("reference_shares"):
        parts.append(f"- classifier shares on the real held-out images (should be near uniform): "
                     f"{[round(x, 3) for x in metrics['reference_shares']]}")
    head_tbl = headline_table(metrics)
    if head_tbl:
        parts += ["", "## Headline: strict FD (both judges)", "", head_tbl]
    rep_tbl = replicates_table(metrics)
    if rep_tbl:
        parts += ["", "## Replicates", "", rep_tbl]
    parts += ["", "![group shares](shares.png)", "", "## Group shares", "", *share_rows, "",
              "## Metrics", "", metrics_table(metrics), ""]
    if metrics.get("conditional_rates") is not None:
        parts += ["## Conditional scenario", "", "| condition | success rate | CI | n |", "|---|---|---|---|"]
        cis = metrics.get("conditional_rates_ci") or [None] * len(labels)
        for i, lab in enumerate(labels):
            r = metrics["conditional_rates"][i]
            parts.append(f"| {lab} | {_fmt(r)} | {_fmt_ci(cis[i])} | {metrics['conditional_counts'][i]} |")
        parts.append("")
    if metrics.get("copying"):
        parts += ["## Copying check", "", copying_text(metrics["copying"]), ""]
    if (out / "samples.png").exists() or (st / "samples.png").exists():
        parts += ["## Samples", "", "![samples](samples.png)", ""]
    parts += [("Quality numbers are only comparable between evaluations with the same feature extractor, "
               "reference set and N."), ""]
    training = _training_section(out / "report.md")
    if training:
        parts += [TRAINING_MARKER, "", training, ""]
    atomic_write_text(st / "report.md", "\n".join(parts))
    return names


TRAINING_MARKER = "<!-- training report (kept from the trainer) -->"


def _training_section(path: Path) -> str | None:
    """The trainer writes its own ``report.md`` into the run folder; keep it below the evaluation."""
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    if TRAINING_MARKER in text:
        return text.split(TRAINING_MARKER, 1)[1].strip() or None
    if text.startswith("# Training run"):
        return "#" + text.strip()  # demote its title under the evaluation
    return None
