"""Fitting distribution guidance's per-step attribute heads (:class:`~fairdiff.models.heads.GuidanceHeads`).

Heads are fitted on h of real images noised to each step's timestep (``mode='noise'``) or DDIM-inverted to it
(``mode='invert'``, the shared chain of :mod:`fairdiff.models.ddim`): one class-balanced logistic regression per
step position and attribute, fitted full-batch with L-BFGS.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fairdiff.errors import ConfigError
from fairdiff.models.ddim import ddim_chain, inversion_chain
from fairdiff.models.heads import POOLS, GuidanceHeads, HeadsConfig, model_fingerprint, pool_h, schedule_timesteps
from fairdiff.models.hspace import capture_h

MODES = ("noise", "invert")


@torch.no_grad()
def collect_features(
    unet: nn.Module,
    noise_scheduler_config,
    images: torch.Tensor,
    timesteps: Sequence[int],
    *,
    mode: str = "noise",
    pool: str = "flatten",
    seed: int = 0,
    batch_size: int = 128,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head inputs ``[S, N, D]`` of real images (in [-1, 1]) at each schedule position.

    ``noise``: each image gets fresh Gaussian noise at each step (a generator seeded by ``seed``), as training
    does. ``invert``: deterministic DDIM inversion of each image up the schedule, so h comes from the same kind
    of trajectory sampling follows.
    """
    from diffusers import DDPMScheduler

    if mode not in MODES:
        raise ConfigError(f"unknown head training mode '{mode}' (known: {', '.join(MODES)})")
    ab = DDPMScheduler.from_config(noise_scheduler_config).alphas_cumprod
    device = next(unet.parameters()).device
    gen = torch.Generator("cpu").manual_seed(seed)
    out: list[torch.Tensor] = []
    was_training = unet.training
    unet.eval()

    def run(x: torch.Tensor, t: int, labels) -> tuple[torch.Tensor, torch.Tensor]:
        with capture_h(unet) as seen:
            eps = unet(x, torch.full((x.shape[0],), t, device=device), class_labels=labels).sample
        return eps, pool_h(seen[-1], pool).cpu()

    order = sorted(range(len(timesteps)), key=lambda k: timesteps[k])  # the inversion's climbing order
    chain = inversion_chain(ab, timesteps, device)
    try:
        for b in range(0, len(images), batch_size):
            x0 = images[b : b + batch_size].to(device)
            labels = class_labels[b : b + batch_size].to(device) if class_labels is not None else None
            feats = [None] * len(timesteps)
            if mode == "noise":
                for k, t in enumerate(timesteps):
                    noise = torch.randn(x0.shape, generator=gen).to(device)
                    a = ab[t].to(device)
                    feats[k] = run(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, labels)[1]
            else:  # DDIM inversion: climb the schedule from the clean image (the lowest timestep ~ clean)
                def eps_fn(j: int, t: torch.Tensor, x: torch.Tensor, _labels=labels, _feats=feats) -> torch.Tensor:
                    eps, _feats[order[j]] = run(x, int(t), _labels)
                    return eps

                ddim_chain(eps_fn, x0, chain)
            out.append(torch.stack(feats))
    finally:
        unet.train(was_training)
    return torch.cat(out, dim=1)


def fit_linear(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, *, iters: int = 200, weight_decay: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-balanced multinomial logistic regression ``[N, D] -> K`` (full batch L-BFGS); returns W, b.

    Features are standardised while fitting and the scaling is folded back into W and b, so the head takes raw
    h. Classes are weighted by inverse frequency, so a 4:1 training set does not bias the head's prior.
    """
    feats = feats.float()
    mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-4)
    z = (feats - mu) / sd
    counts = torch.bincount(labels, minlength=num_classes).float()
    cw = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    w = torch.zeros(num_classes, z.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, labels, weight=cw) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = (w / sd).detach()
    return w_raw, (b - w_raw @ mu).detach()


def _balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    pred = logits.argmax(1)
    accs = [(pred[labels == c] == c).float().mean().item() for c in range(num_classes) if (labels == c).any()]
    return float(sum(accs) / len(accs))


def split_heldout(indices: torch.Tensor, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, held)``: a seeded random ``share`` of ``indices`` held out to score the heads, the rest to fit."""
    perm = indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))]
    n_held = int(round(share * len(perm)))
    return perm[n_held:], perm[:n_held]


def fit_step_heads(cfg: HeadsConfig, feats: torch.Tensor, labels: Mapping[str, torch.Tensor], *,
                   heldout_feats: torch.Tensor | None = None,
                   heldout_labels: Mapping[str, torch.Tensor] | None = None, weight_decay: float = 1e-3,
                   on_step: Callable[[int, dict, dict], None] | None = None,
                   ) -> tuple[GuidanceHeads, dict[str, list[float]], dict[str, list[float]]]:
    """The one heads fitter: per step position k and attribute a, a class-balanced linear head
    (:func:`fit_linear`) on ``feats[k]`` ``[S, N, D]`` with ``labels[a]`` ``[N]``, wherever the features came from
    (noised or inverted real images, the model's own recorded generations) and whoever labelled them (data, a
    judge, clusters). Returns the heads (eval, frozen) and the balanced accuracies per step, on the fitted images
    and on ``heldout_*`` (empty lists without them)."""
    ks = cfg.attributes
    heads = GuidanceHeads.from_spec(cfg)
    tr_acc: dict[str, list[float]] = {a: [] for a in ks}
    he_acc: dict[str, list[float]] = {a: [] for a in ks}
    for k in range(cfg.num_steps):
        for a, bank in heads.banks.items():
            w, b = fit_linear(feats[k], labels[a], ks[a], weight_decay=weight_decay)
            with torch.no_grad():
                bank.weight[k].copy_(w)
                bank.bias[k].copy_(b)
            tr_acc[a].append(_balanced_accuracy(feats[k] @ w.T + b, labels[a], ks[a]))
            if heldout_feats is not None and heldout_labels is not None and a in heldout_labels:
                he_acc[a].append(_balanced_accuracy(heldout_feats[k] @ w.T + b, heldout_labels[a], ks[a]))
        if on_step is not None:
            on_step(k, tr_acc, he_acc)
    return heads.eval().requires_grad_(False), tr_acc, he_acc


@dataclass
class HeadsTrainResult:
    heads: GuidanceHeads
    heldout_accuracy: dict[str, list[float]]  # attribute -> balanced accuracy per step position
    train_accuracy: dict[str, list[float]]
    seconds: float


def train_heads(
    unet: nn.Module,
    noise_scheduler_config,
    images: torch.Tensor,
    labels: torch.Tensor | Mapping[str, torch.Tensor],
    num_steps: int = 50,
    scheduler_kind: str = "ddim",
    *,
    heldout_images: torch.Tensor | None = None,
    heldout_labels: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    num_classes: int | Mapping[str, int] | None = None,
    n_per_step: int | None = 512,
    mode: str = "invert",
    pool: str = "flatten",
    seed: int = 0,
    batch_size: int = 128,
    weight_decay: float = 1e-3,
    progress: bool = False,
    fitted_on: dict | None = None,
) -> HeadsTrainResult:
    """Fit one linear head per step position of a ``scheduler_kind`` schedule with ``num_steps`` steps.

    The heads record the model they were fitted on (``fitted_on``; by default the fingerprint of ``unet``'s
    weights file, :func:`~fairdiff.models.heads.model_fingerprint`), so guidance can refuse another model.

    ``labels`` is a tensor (one attribute, named ``group``) or ``{attribute: tensor}``. ``n_per_step`` images
    (a seeded random subset; all when None) are used for fitting; accuracy on ``heldout_*`` is reported per step.
    """
    start = time.time()
    if pool not in POOLS:
        raise ConfigError(f"unknown head pool '{pool}' (known: {', '.join(POOLS)})")
    lab = {"group": labels} if torch.is_tensor(labels) else dict(labels)
    held = None
    if heldout_images is not None:
        held = {"group": heldout_labels} if torch.is_tensor(heldout_labels) else dict(heldout_labels or {})
    if num_classes is None:
        ks = {a: int(v.max()) + 1 for a, v in lab.items()}
    elif isinstance(num_classes, int):
        ks = {a: num_classes for a in lab}
    else:
        ks = dict(num_classes)
    timesteps = schedule_timesteps(scheduler_kind, noise_scheduler_config, num_steps)
    g = torch.Generator("cpu").manual_seed(seed)
    idx = torch.randperm(len(images), generator=g)[: n_per_step or len(images)]
    imgs, lab = images[idx], {a: v[idx].long() for a, v in lab.items()}

    feats = collect_features(unet, noise_scheduler_config, imgs, timesteps, mode=mode, pool=pool, seed=seed,
                             batch_size=batch_size)
    with capture_h(unet) as seen, torch.no_grad():
        dev = next(unet.parameters()).device
        unet(imgs[:1].to(dev), torch.tensor([timesteps[0]], device=dev))
    h_shape = list(seen[-1].shape[1:])
    hfeats = None
    if held is not None:
        hfeats = collect_features(unet, noise_scheduler_config, heldout_images, timesteps, mode=mode, pool=pool,
                                  seed=seed + 1, batch_size=batch_size)
    cfg = HeadsConfig(attributes=ks, num_steps=num_steps, scheduler=scheduler_kind, timesteps=timesteps,
                      pool=pool, h_shape=h_shape, mode=mode,
                      fitted_on=fitted_on if fitted_on is not None else model_fingerprint(unet))
    report = None
    if progress:
        def report(k: int, tr: dict, he: dict) -> None:
            accs = ", ".join(f"{a} {he[a][-1] if he[a] else tr[a][-1]:.3f}" for a in ks)
            print(f"step {k:3d} (t={timesteps[k]:4d}): {accs}", flush=True)
    heads, tr_acc, he_acc = fit_step_heads(cfg, feats, lab, heldout_feats=hfeats,
                                           heldout_labels={a: v.long() for a, v in held.items()} if held else None,
                                           weight_decay=weight_decay, on_step=report)
    heads = heads.to(next(unet.parameters()).device)
    return HeadsTrainResult(heads, {a: v for a, v in he_acc.items() if v}, tr_acc, time.time() - start)
