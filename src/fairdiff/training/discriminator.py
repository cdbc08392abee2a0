"""Fitting and calibrating the noise-aware discriminator of the label-free methods (tiw / iw) before training.

``fit_discriminator`` trains ``d(x_t, t)`` with BCE, reference = 1 and training (biased) = 0, in balanced batches
(as many of each), at timesteps drawn uniformly from the whole schedule, so that its optimum is
``p_ref^t / (p_ref^t + p_bias^t)`` at every t. ``calibration`` then measures, per timestep bucket, how reliable d
is on images kept out of the fit: accuracy, BCE, Brier score, a reliability table and its expected calibration
error (ECE), and the mean ratio over biased images (1 for an exact ratio: E_bias[p_ref / p_bias] = 1).

Only images reach this module; no group label does.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fairdiff.errors import ConfigError
from fairdiff.utils.seed import derive_seed

log = logging.getLogger(__name__)


def _noised(x0: torch.Tensor, t: torch.Tensor, noise_scheduler, gen: torch.Generator) -> torch.Tensor:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` by the scheduler's own ``add_noise`` (eps drawn from ``gen``
    on the CPU, so a fit is the same on every device)."""
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(x0.device, x0.dtype)
    return noise_scheduler.add_noise(x0, noise, t)


def _fit_noisy(model: nn.Module, draw, y: torch.Tensor, loss_fn, correct, noise_scheduler, *, steps: int, lr: float,
               weight_decay: float, gen: torch.Generator, device, desc: str | None = None) -> tuple[list, list]:
    """The one loop that fits a noise-aware classifier in place: each step ``draw(gen)`` gives clean images, they
    are noised to t ~ U{0..T-1} and ``loss_fn(model(x_t, t), y)`` is minimised by AdamW with a cosine decay to 0
    (the late, small steps average out the minibatch noise, which matters most at large t, where the noised
    distributions barely differ). Returns the per-step losses and accuracies (``correct(out, y)``)."""
    from tqdm.auto import tqdm

    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    num_t = noise_scheduler.config.num_train_timesteps
    losses, accs = [], []
    for _ in tqdm(range(steps), desc=desc, disable=desc is None, leave=False):
        x0 = draw(gen).to(device).float()
        t = torch.randint(0, num_t, (len(x0),), generator=gen).to(device)
        out = model(_noised(x0, t, noise_scheduler, gen), t)
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        accs.append(correct(out, y).float().mean().item())
    model.eval()
    for p in model.parameters():
        p.grad = None
    return losses, accs


def _tail_mean(xs: list, first: bool = False) -> float:
    tail = max(1, len(xs) // 10)
    return float(np.mean(xs[:tail] if first else xs[-tail:])) if xs else math.nan


def fit_discriminator(disc: nn.Module, reference: torch.Tensor, biased: torch.Tensor, noise_scheduler, *,
                      steps: int = 500, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                      seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """Train ``disc`` in place (reference 1, biased 0, balanced batches, BCE, t ~ U{0..T-1}, AdamW with a cosine
    learning-rate decay); returns a summary of the fit."""
    if len(reference) == 0 or len(biased) == 0:
        raise ConfigError("the discriminator needs at least one reference and one training image")

    def draw(gen: torch.Generator) -> torch.Tensor:
        ri = torch.randint(len(reference), (batch_size,), generator=gen)
        bi = torch.randint(len(biased), (batch_size,), generator=gen)
        return torch.cat([reference[ri], biased[bi]])

    y = torch.cat([torch.ones(batch_size), torch.zeros(batch_size)]).to(device)
    gen = torch.Generator().manual_seed(derive_seed(seed, "discriminator"))
    losses, accs = _fit_noisy(disc, draw, y, F.binary_cross_entropy_with_logits, lambda o, y: (o > 0).float() == y,
                              noise_scheduler, steps=steps, lr=lr, weight_decay=weight_decay, gen=gen, device=device)
    return {"steps": steps, "batch_size_per_class": batch_size, "lr": lr, "weight_decay": weight_decay,
            "final_bce": _tail_mean(losses), "final_train_acc": _tail_mean(accs),
            "first_bce": _tail_mean(losses, first=True)}


def fit_group_classifier(clf: nn.Module, images: torch.Tensor, groups: torch.Tensor, noise_scheduler, *,
                         steps: int = 3000, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4,
                         seed: int = 0, device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """Train the K-logit noise-aware classifier ``clf(x_t, t)`` of classifier guidance in place: cross-entropy on
    group-balanced batches (``batch_size`` images of every group), images noised to t ~ U{0..T-1}, AdamW with a
    cosine decay. Balanced batches make its logits ``log p_t(x_t | g)`` up to one constant per input, whatever the
    groups' shares in ``images``; the guidance puts the shares back in (methods/classifier_guidance.py)."""
    groups = torch.as_tensor(groups, dtype=torch.long)
    k = int(getattr(clf, "out_dim", 1))
    members = [torch.nonzero(groups == g).flatten() for g in range(k)]
    if k < 2 or any(len(m) == 0 for m in members):
        raise ConfigError(f"the group classifier needs images of each of its {k} groups "
                          f"(counts {[len(m) for m in members]})")

    def draw(gen: torch.Generator) -> torch.Tensor:
        return images[torch.cat([m[torch.randint(len(m), (batch_size,), generator=gen)] for m in members])]

    y = torch.arange(k).repeat_interleave(batch_size).to(device)
    gen = torch.Generator().manual_seed(derive_seed(seed, "group-classifier"))
    losses, accs = _fit_noisy(clf, draw, y, F.cross_entropy, lambda o, y: o.argmax(1) == y, noise_scheduler,
                              steps=steps, lr=lr, weight_decay=weight_decay, gen=gen, device=device,
                              desc="group classifier" if progress else None)
    for p in clf.parameters():
        p.requires_grad_(False)
    return {"steps": steps, "batch_size_per_group": batch_size, "lr": lr, "weight_decay": weight_decay,
            "final_ce": _tail_mean(losses), "final_train_acc": _tail_mean(accs),
            "first_ce": _tail_mean(losses, first=True)}


@torch.no_grad()
def group_accuracy(clf: nn.Module, images: torch.Tensor, groups: torch.Tensor, noise_scheduler, *,
                   buckets: int = 4, seed: int = 0, device: str | torch.device = "cpu", batch: int = 512) -> list[dict]:
    """Balanced accuracy of the group classifier on (held-out) images noised into each of ``buckets`` timestep
    ranges: how much group signal it reads at each noise level."""
    groups = torch.as_tensor(groups, dtype=torch.long)
    k = int(getattr(clf, "out_dim", 1))
    num_t = noise_scheduler.config.num_train_timesteps
    gen = torch.Generator().manual_seed(derive_seed(seed, "group-classifier-eval"))
    rows = []
    for b in range(buckets):
        lo, hi = b * num_t // buckets, (b + 1) * num_t // buckets
        t = torch.randint(lo, hi, (len(images),), generator=gen)
        pred = []
        for s in range(0, len(images), batch):
            xb, tb = images[s : s + batch].to(device).float(), t[s : s + batch].to(device)
            pred.append(clf(_noised(xb, tb, noise_scheduler, gen), tb).argmax(1).cpu())
        hit = torch.cat(pred) == groups
        per = [float(hit[groups == g].float().mean()) for g in range(k) if (groups == g).any()]
        rows.append({"t": [lo, hi - 1], "balanced_accuracy": round(float(np.mean(per)), 4)})
    return rows


@torch.no_grad()
def calibration(disc: nn.Module, reference: torch.Tensor, biased: torch.Tensor, noise_scheduler, *,
                buckets: int = 4, n_per_class: int = 512, bins: int = 10, seed: int = 0,
                device: str | torch.device = "cpu", batch: int = 512) -> dict:
    """Reliability of d on held-out reference (1) vs biased (0) images, per timestep bucket (balanced draws)."""
    disc.to(device).eval()
    num_t = noise_scheduler.config.num_train_timesteps
    gen = torch.Generator().manual_seed(derive_seed(seed, "calibration"))
    rows = []
    for b in range(buckets):
        lo, hi = b * num_t // buckets, (b + 1) * num_t // buckets
        ri = torch.randint(len(reference), (n_per_class,), generator=gen)
        bi = torch.randint(len(biased), (n_per_class,), generator=gen)
        x0 = torch.cat([reference[ri], biased[bi]]).float()
        t = torch.randint(lo, hi, (2 * n_per_class,), generator=gen)
        y = torch.cat([torch.ones(n_per_class), torch.zeros(n_per_class)])
        logits = []
        for s in range(0, len(x0), batch):
            xb, tb = x0[s : s + batch].to(device), t[s : s + batch].to(device)
            logits.append(disc(_noised(xb, tb, noise_scheduler, gen), tb).float().cpu())
        logit = torch.cat(logits)
        p = torch.sigmoid(logit)
        which = torch.clamp((p * bins).long(), max=bins - 1)
        table, ece = [], 0.0
        for k in range(bins):
            m = which == k
            if m.any():
                mp, fy = p[m].mean().item(), y[m].mean().item()
                table.append({"bin": [k / bins, (k + 1) / bins], "count": int(m.sum()), "mean_d": round(mp, 4),
                              "frac_reference": round(fy, 4)})
                ece += m.float().mean().item() * abs(mp - fy)
        w = torch.exp(logit.clamp(max=80))
        rows.append({
            "t": [lo, hi - 1],
            "accuracy": round(((p > 0.5).float() == y).float().mean().item(), 4),
            "bce": round(F.binary_cross_entropy_with_logits(logit, y).item(), 4),
            "brier": round((p - y).pow(2).mean().item(), 4),
            "ece": round(ece, 4),
            "mean_w_biased": round(w[y == 0].mean().item(), 4),
            "mean_w_reference": round(w[y == 1].mean().item(), 4),
            "reliability": table,
        })
    return {"buckets": rows, "n_per_class": n_per_class,
            "note": "E_bias[w] is 1 for an exact ratio; ECE over the reliability bins of d"}


def _split(n: int, share: float, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = gen.permutation(n)
    k = int(round(share * n))
    if share > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    else:
        k = 0
    return perm[k:], perm[:k]


def fit_for_objective(objective, cfg, data, images: torch.Tensor, noise_scheduler,
                      device: str | torch.device = "cpu", encode=None) -> dict:
    """Fit the discriminator of a label-free objective on ``data.reference_images`` vs ``images`` (the training
    tensor, latents in a latent model); returns the facts for ``method.json`` (fit summary and calibration).

    ``encode`` maps reference images into the space of ``images`` (a model adapter's; default: through
    ``model.vae`` when it is set)."""
    ref = getattr(data, "reference_images", None)
    if ref is None:
        raise ConfigError(f"method {objective.name} needs a reference set: set data.reference (a count or a "
                          "fraction of the training set) or data.reference_dir (a folder of images)")
    if encode is not None:
        ref = encode(ref)
    elif cfg.model.vae:
        from fairdiff.training.latent import encode_dataset

        _, ref = encode_dataset(cfg.model.vae, ref, device)
    seed = cfg.train.seed
    rng = np.random.default_rng(derive_seed(seed, "discriminator-holdout"))
    r_fit, r_held = _split(len(ref), objective.holdout, rng)
    b_fit, b_held = _split(len(images), objective.holdout, rng)
    disc = objective.discriminator
    disc.config["num_train_timesteps"] = int(noise_scheduler.config.num_train_timesteps)
    fit = fit_discriminator(disc, ref[r_fit], images[b_fit], noise_scheduler, steps=objective.fit_steps,
                            batch_size=objective.fit_batch_size, lr=objective.fit_lr,
                            weight_decay=objective.fit_weight_decay, seed=seed, device=device)
    facts = {"method": objective.name, "reference_images": int(len(ref)),
             "discriminator": {**fit, "fit_reference": int(len(r_fit)), "fit_biased": int(len(b_fit)),
                               "heldout_reference": int(len(r_held)), "heldout_biased": int(len(b_held)),
                               "width": disc.config["width"], "kind": disc.config["kind"]}}
    if len(r_held) and len(b_held):
        facts["calibration"] = calibration(disc, ref[r_held], images[b_held], noise_scheduler, seed=seed,
                                           device=device)
    else:
        log.warning("%s: no held-out images (method.disc_holdout=%s); calibration measured on the fit images",
                    objective.name, objective.holdout)
        facts["calibration"] = calibration(disc, ref, images, noise_scheduler, seed=seed, device=device)
        facts["calibration"]["in_sample"] = True
    for p in disc.parameters():  # frozen from here on: the denoiser's loss only reads its input gradient
        p.requires_grad_(False)
    return facts


def report_lines(facts: dict) -> list[str]:
    """Markdown lines for the run report: the discriminator fit and its calibration per timestep bucket."""
    cal, fit = facts.get("calibration"), facts.get("discriminator")
    if not cal or not fit:
        return []
    where = "its fit images (no held-out images)" if cal.get("in_sample") else (
        f"held-out images ({fit['heldout_reference']} reference, {fit['heldout_biased']} training)")
    lines = ["", f"Discriminator d(x_t, t) ({fit['kind']}, width {fit['width']}, {fit['steps']} steps on "
             f"{fit['fit_reference']} reference vs {fit['fit_biased']} training images, final BCE "
             f"{fit['final_bce']:.3f}); calibration on {where}:", "",
             "| t | accuracy | BCE | Brier | ECE | E_bias[w] | E_ref[w] |", "|---|---|---|---|---|---|---|"]
    for r in cal["buckets"]:
        lines.append(f"| {r['t'][0]}-{r['t'][1]} | {r['accuracy']:.3f} | {r['bce']:.3f} | {r['brier']:.3f} | "
                     f"{r['ece']:.3f} | {r['mean_w_biased']:.3f} | {r['mean_w_reference']:.3f} |")
    return lines
