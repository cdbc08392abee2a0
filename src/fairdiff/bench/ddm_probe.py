"""Where does DDM's push come from? Per-timestep measurements of a trained DDM run (docs/ddm-analysis.md).

For timestep buckets over [0, T), training-distribution images (the run's biased split) are noised as in training
and passed through the trained U-Net and the trained indicator. Per bucket:

- ``acc_train`` / ``ce_train``: the indicator's accuracy and cross-entropy on the biased training distribution,
  ``acc_balanced``: its accuracy on the balanced held-out real images (chance = 1/K), ``ce_prior``: the
  cross-entropy of predicting the training shares (what an indicator that reads nothing achieves);
- ``push_along``: the mean, over images, of the component of the push that the indicator term gives the
  predicted x0 along the unit vector from the minority group's mean image to the majority's (positive = toward
  the majority). The denoiser moves eps_hat along -dCE/d eps_hat; since x0_hat = (x_t - sqrt(1 - abar) eps_hat) /
  sqrt(abar), x0_hat moves along +sqrt(1 - abar) / sqrt(abar) * dCE/d eps_hat (for an indicator on eps; for an
  indicator on x0 directly along -dCE/d x0_hat). ``push_cos`` is the cosine of the summed push with that
  direction; ``push_along_major`` / ``push_along_minor`` split the mean by the image's true group.

Two groups only (the direction is majority minus minority).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fairdiff.data import prepare_data
from fairdiff.errors import RunDirError
from fairdiff.methods.base import predicted_x0
from fairdiff.models.indicator import MLPClassifier
from fairdiff.runs import load_module_state, load_run_model, model_dir, read_run_config


def load_indicator(run_dir: str | Path) -> tuple[MLPClassifier, dict]:
    """The trained indicator of a DDM run and its saved config (input, alpha, variant)."""
    folder = model_dir(run_dir) / "indicator"
    if not (folder / "config.json").exists():
        raise RunDirError(f"{run_dir} has no indicator (not a DDM run)")
    cfg = json.loads((folder / "config.json").read_text())
    ind = MLPClassifier(cfg["in_features"], cfg["num_classes"], cfg["widths"])
    ind.load_state_dict(load_module_state(folder))
    return ind.eval(), cfg


@torch.no_grad()
def _noised(x0: torch.Tensor, ns, lo: int, hi: int, gen: torch.Generator):
    t = torch.randint(lo, hi, (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    return ns.add_noise(x0, noise, t), t


def probe_ddm(run_dir: str | Path, buckets: int = 10, n: int = 256, seed: int = 0) -> list[dict]:
    """Per-bucket indicator accuracy, cross-entropy and push direction of a trained two-group DDM run."""
    from diffusers import DDPMScheduler

    cfg = read_run_config(run_dir)
    data = prepare_data(cfg.data)
    if data.num_groups != 2:
        raise RunDirError("the DDM probe handles two groups")
    unet, sched_cfg = load_run_model(run_dir)
    unet.eval()
    ns = DDPMScheduler.from_config(sched_cfg)
    ind, icfg = load_indicator(run_dir)
    use_x0 = icfg.get("input", "eps") == "x0"
    counts = torch.bincount(data.train_groups, minlength=2).float()
    major = int(counts.argmax())
    minor = 1 - major
    means = [data.train_images[data.train_groups == g].mean(0) for g in (0, 1)]
    direction = (means[major] - means[minor]).flatten()
    direction = direction / direction.norm()
    prior_logp = torch.log(counts / counts.sum())
    gen = torch.Generator().manual_seed(seed)
    T = ns.config.num_train_timesteps
    edges = [round(i * T / buckets) for i in range(buckets + 1)]
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        idx = torch.randint(0, len(data.train_images), (n,), generator=gen)
        x0, g = data.train_images[idx], data.train_groups[idx]
        noisy, t = _noised(x0, ns, lo, hi, gen)
        with torch.no_grad():
            eps = unet(noisy, t).sample
        eps = eps.detach().requires_grad_(True)
        feats = predicted_x0(ns, noisy, eps, t) if use_x0 else eps
        logits = ind(feats.float())
        ce = F.cross_entropy(logits, g, reduction="sum")
        (grad_eps,) = torch.autograd.grad(ce, eps)
        abar = ns.alphas_cumprod[t].view(-1, 1, 1, 1).float()
        # the denoiser lowers the CE by moving eps along -grad_eps; x0_hat moves by -d x0/d eps * grad_eps
        push_x0 = ((1 - abar).sqrt() / abar.sqrt() * grad_eps).flatten(1)
        along = push_x0 @ direction
        total = push_x0.sum(0)
        with torch.no_grad():
            hx, hg = data.heldout_images, data.heldout_groups
            hnoisy, ht = _noised(hx, ns, lo, hi, gen)
            heps = unet(hnoisy, ht).sample
            hfeat = predicted_x0(ns, hnoisy, heps, ht) if use_x0 else heps
            acc_bal = (ind(hfeat.float()).argmax(1) == hg).float().mean()
        rows.append({
            "t_lo": lo, "t_hi": hi,
            "acc_train": float((logits.detach().argmax(1) == g).float().mean()),
            "acc_balanced": float(acc_bal),
            "ce_train": float(ce.detach()) / n,
            "ce_prior": float(-prior_logp[g].mean()),
            "push_along": float(along.mean()),
            "push_along_major": float(along[g == major].mean()) if (g == major).any() else float("nan"),
            "push_along_minor": float(along[g == minor].mean()) if (g == minor).any() else float("nan"),
            "push_cos": float(total @ direction / total.norm().clamp_min(1e-12)),
            "push_norm": float(push_x0.norm(dim=1).mean()),
        })
    return rows


def plot_probe(results: dict[str, list[dict]], path: str | Path) -> None:
    """One figure: per bucket, the indicator's balanced accuracy and the push toward the majority, per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    for i, (name, rows) in enumerate(results.items()):
        color = f"C{i}"
        mids = [(r["t_lo"] + r["t_hi"]) / 2 for r in rows]
        axes[0].plot(mids, [r["acc_balanced"] for r in rows], marker="o", label=name, color=color)
        axes[1].plot(mids, [r["ce_train"] - r["ce_prior"] for r in rows], marker="o", label=name, color=color)
        axes[2].plot(mids, [r["push_cos"] for r in rows], marker="o", label=name, color=color)
        axes[3].plot(mids, [r["push_along_minor"] / r["push_norm"] for r in rows], marker="o", color=color,
                     label=f"{name}: minority images")
        axes[3].plot(mids, [r["push_along_major"] / r["push_norm"] for r in rows], marker="x", ls="--",
                     color=color, label=f"{name}: majority images")
    axes[0].axhline(0.5, color="gray", lw=0.8, ls="--")
    axes[0].set(title="indicator accuracy (balanced held-out)", xlabel="timestep t", ylim=(0.3, 1.02))
    axes[1].axhline(0.0, color="gray", lw=0.8, ls="--")
    axes[1].set(title="CE minus CE of the prior (biased data)", xlabel="timestep t")
    axes[2].axhline(0.0, color="gray", lw=0.8, ls="--")
    axes[2].set(title="cos(summed push on x0_hat, majority - minority)", xlabel="timestep t", ylim=(-1.05, 1.05))
    axes[2].legend(fontsize=7)
    axes[3].axhline(0.0, color="gray", lw=0.8, ls="--")
    axes[3].set(title="per-image push along (majority - minority) / mean |push|", xlabel="timestep t")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m fairdiff.bench.ddm_probe RUN [RUN...] --out DIR``: probe.json and probe.png."""
    import argparse

    from fairdiff.utils.io import write_json

    p = argparse.ArgumentParser(prog="python -m fairdiff.bench.ddm_probe", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--buckets", type=int, default=10)
    p.add_argument("--n", type=int, default=256)
    args = p.parse_args(argv)
    results = {str(Path(r).name): probe_ddm(r, args.buckets, args.n) for r in args.runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "probe.json", results)
    plot_probe(results, out / "probe.png")
    for name, rows in results.items():
        print(name)
        for r in rows:
            print(f"  t {r['t_lo']:4d}-{r['t_hi']:4d}  acc_bal {r['acc_balanced']:.3f}  ce {r['ce_train']:.3f} "
                  f"(prior {r['ce_prior']:.3f})  push_cos {r['push_cos']:+.3f}  along maj/min "
                  f"{r['push_along_major']:+.4f}/{r['push_along_minor']:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
