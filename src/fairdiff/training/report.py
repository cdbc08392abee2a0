"""``report.md`` of a training run: what was trained on what, and how the training ended."""

from __future__ import annotations

from pathlib import Path

from fairdiff.config import RunConfig
from fairdiff.utils.io import atomic_write_text, read_json, read_jsonl


def last_row(run_dir: Path) -> dict:
    """The last row of ``stats.jsonl`` (empty when nothing was logged)."""
    rows = read_jsonl(run_dir / "stats.jsonl") if (run_dir / "stats.jsonl").exists() else []
    return rows[-1] if rows else {}


def method_line(cfg: RunConfig) -> str:
    from fairdiff.methods.registry import describe

    return f"- method: {describe(cfg.method, bold=True)}"


def optimizer_line(cfg: RunConfig, last: dict) -> str:
    return (f"- optimizer steps: {last.get('step', 0)} (batch {cfg.train.batch_size} x accumulation "
            f"{cfg.train.grad_accum}), final loss {last.get('loss', float('nan')):.4f}, "
            f"time {last.get('elapsed_s', 0):.1f} s")


def extra_lines(run_dir: Path, manifest: dict) -> list[str]:
    """Clusters used as groups, and the discriminator's calibration (tiw / iw)."""
    lines = []
    if "clusters" in manifest:
        cl = manifest["clusters"]
        lines.append(f"- groups from k-means clusters (k={cl['k']}, counts {cl['counts']}); "
                     f"NMI with the true attribute {cl['nmi_with_attribute']:.3f}")
    if (run_dir / "method.json").exists():  # tiw / iw: the discriminator's calibration per timestep bucket
        from fairdiff.training.discriminator import report_lines

        lines += report_lines(read_json(run_dir / "method.json"))
    return lines


def write_train_report(cfg: RunConfig, run_dir: Path, manifest: dict) -> None:
    """The report of a pixel or latent U-Net run."""
    lines = [
        f"# Training run `{cfg.name}`",
        "",
        method_line(cfg),
        f"- data: {cfg.data.source}, attribute `{manifest['attribute']}`, groups {manifest['groups']}, "
        f"training counts {manifest['train_counts']} (shares {manifest['shares']}), "
        f"held-out counts {manifest['heldout_counts']}, seed {manifest['seed']}",
        f"- model: preset `{cfg.model.preset}`, {cfg.data.resolution}x{cfg.data.resolution}"
        + (", conditional on the group" if cfg.model.conditional else "")
        + (f", in the latent space of the VAE `{cfg.model.vae}`" if cfg.model.vae else ""),
        optimizer_line(cfg, last_row(run_dir)),
    ]
    lines += extra_lines(run_dir, manifest)
    lines += ["", "Samples (EMA weights, DDIM 25 steps):", "", "![samples](train_grid.png)", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))
