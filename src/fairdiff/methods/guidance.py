"""Distribution guidance ("Balancing Act", Parihar et al., CVPR 2024): steer a frozen model's attribute shares.

Three parts, in three rooms:

* **Heads** (:class:`~fairdiff.models.heads.GuidanceHeads`, a diffusers model): per step position, linear heads
  from h-space (the U-Net middle block's output) to attribute logits.
* **Fitting** (:func:`fairdiff.training.heads.train_heads`): the heads fitted on h of noised or DDIM-inverted
  real images.
* **Guidance** (here, :class:`DistributionGuidance`): at every sampling step but the first, the denoiser runs with a
  middle-block hook that predicts ``p_i = softmax(head_k(h_i) / tau)``, averages them over the batch, measures
  chi-square (or KL) from the batch share to the target and replaces h by ``h - s * B * grad_h``. The gradient
  of a batch mean scales as 1/B, so multiplying by B makes the same scale ``s`` work for any batch size.

Sampling a run with guidance (checks, heads, guidance, samples on disk) is :func:`fairdiff.sampling.guided.guide_run`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from fairdiff.errors import ConfigError, FairdiffError
from fairdiff.models.heads import (  # noqa: F401 - the heads' names, importable from the method as before
    POOLS,
    GuidanceHeads,
    HeadsConfig,
    StepHeads,
    load_heads,
    read_heads_record,
    save_heads,
    schedule_timesteps,
)
from fairdiff.models.hspace import edit_h

LOSSES = ("chi2", "kl")


def check_guidable(unet: nn.Module, latent: bool, run: str | Path) -> None:
    """Distribution guidance needs an unconditional pixel-space U-Net; anything else is one line."""
    if latent:
        raise FairdiffError(f"guidance supports pixel-space models only ({run} is a latent model)")
    if unet.config.num_class_embeds:
        raise FairdiffError(f"guidance needs an unconditional model ({run} conditions on the group)")


def parse_target(text: str | Sequence[float], num_classes: int | None = None) -> list[float]:
    """``"0.5,0.5"`` (or a list) -> a checked probability vector (positive, sums to 1, right length)."""
    try:
        vals = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise FairdiffError(f"target '{text}' is not a comma-separated list of numbers") from None
    if num_classes is not None and len(vals) != num_classes:
        raise FairdiffError(f"target {vals} has {len(vals)} shares but the heads predict {num_classes} classes")
    if any(not math.isfinite(v) or v <= 0 for v in vals):
        raise FairdiffError(f"target {vals}: every share must be positive")
    if abs(sum(vals) - 1) > 1e-3:
        raise FairdiffError(f"target {vals} sums to {sum(vals):.4f}, not 1")
    return vals


def distribution_loss(pbar: torch.Tensor, target: torch.Tensor, kind: str = "chi2") -> torch.Tensor:
    """Chi-square ``sum (pbar - p)^2 / p`` or ``KL(pbar || p)`` between a batch share and the target."""
    if kind == "chi2":
        return ((pbar - target) ** 2 / target).sum()
    if kind == "kl":
        return (pbar * (pbar.clamp_min(1e-12).log() - target.log())).sum()
    raise ConfigError(f"unknown guidance loss '{kind}' (known: {', '.join(LOSSES)})")


class DistributionGuidance:
    """The sampler guidance that pushes each batch's attribute shares toward ``target`` by editing h.

    ``target`` is one share vector (for the heads' single attribute) or ``{attribute: shares}`` (losses are
    summed). ``scale`` is the step size per image: h <- h - scale * B * grad_h(loss) with B the images one batch
    share is taken over, so a scale works for any batch size; 0 gives exactly the unguided samples.
    ``cfg_halves=True`` treats the batch as [conditional; unconditional] halves and takes the share in each half
    separately, so the two are never mixed. ``unet`` pins the hook to that model's middle block; without it any
    diffusers middle block called during the step is edited.
    """

    def __init__(
        self,
        heads: GuidanceHeads,
        target: Sequence[float] | str | Mapping[str, Sequence[float] | str],
        scale: float,
        *,
        temperature: float = 8.0,
        loss: str = "chi2",
        cfg_halves: bool = False,
        unet: nn.Module | None = None,
        check_timesteps: bool = True,
    ) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"unknown guidance loss '{loss}' (known: {', '.join(LOSSES)})")
        if temperature <= 0:
            raise FairdiffError("temperature must be positive")
        if not math.isfinite(scale) or scale < 0:
            raise FairdiffError("guidance scale must be a non-negative number")
        attrs = heads.config.attributes
        if not isinstance(target, Mapping):
            if len(attrs) != 1:
                raise FairdiffError(f"heads predict several attributes ({', '.join(attrs)}); give a target for each")
            target = {next(iter(attrs)): target}
        unknown = [a for a in target if a not in attrs]
        if unknown:
            raise FairdiffError(f"no heads for attribute(s) {', '.join(unknown)} (heads know {', '.join(attrs)})")
        dev = next(heads.parameters()).device
        self.targets = {a: torch.tensor(parse_target(v, attrs[a]), device=dev) for a, v in target.items()}
        self.heads, self.scale, self.temperature, self.loss = heads, float(scale), float(temperature), loss
        self.cfg_halves, self.unet, self.check_timesteps = cfg_halves, unet, check_timesteps
        self.history: list[dict] = []  # per guided step: position, loss and the batch shares before the edit

    def _check_step(self, step_index: int, t: torch.Tensor) -> None:
        cfg = self.heads.config
        if step_index >= cfg.num_steps:
            raise FairdiffError(f"heads cover {cfg.num_steps} steps but sampling reached step {step_index + 1}; "
                                f"sample with --steps {cfg.num_steps} --scheduler {cfg.scheduler}")
        tv = int(t.reshape(-1)[0])
        if self.check_timesteps and tv != cfg.timesteps[step_index]:
            raise FairdiffError(f"step {step_index} is at timestep {tv} but the heads were trained for "
                                f"{cfg.timesteps[step_index]}; sample with --steps {cfg.num_steps} "
                                f"--scheduler {cfg.scheduler}")

    def _edit(self, h: torch.Tensor, step: int) -> torch.Tensor:
        b = h.shape[0]
        groups = [slice(0, b // 2), slice(b // 2, b)] if self.cfg_halves and b >= 2 else [slice(0, b)]
        with torch.enable_grad():
            hh = h.detach().float().requires_grad_(True)
            logits = self.heads.logits(hh, step)
            total = hh.new_zeros(())
            shares = {}
            for a, target in self.targets.items():
                p = torch.softmax(logits[a] / self.temperature, dim=1)
                for gi, sl in enumerate(groups):
                    pbar = p[sl].mean(0)
                    # scaling each group's loss by its size makes grad_h independent of the batch size
                    total = total + (sl.stop - sl.start) * distribution_loss(pbar, target, self.loss)
                    shares[f"{a}/{gi}" if len(groups) > 1 else a] = pbar.detach().cpu().tolist()
            (grad,) = torch.autograd.grad(total, hh)
        self.history.append({"step": step, "loss": float(total.detach()) / b, "shares": shares})
        return (hh.detach() - self.scale * grad).to(h.dtype)

    def __call__(self, step_index: int, t: torch.Tensor, sample: torch.Tensor, denoise) -> torch.Tensor:
        if self.scale == 0:
            with torch.no_grad():
                return denoise(sample)
        self._check_step(step_index, t)
        if step_index == 0:  # the first step starts from pure noise: nothing to steer yet
            with torch.no_grad():
                return denoise(sample)
        with torch.no_grad(), edit_h(lambda h: self._edit(h, step_index), self.unet):
            return denoise(sample)


class AssignedGuidance(DistributionGuidance):
    """Per-sample group assignment: each image of the batch is given a group (``assignments``, drawn in the
    target's proportions by the caller) and guided toward it, h <- h - scale * grad_h(-log p_i(g_i)), with
    ``p_i = softmax(head(h_i) / temperature)``. Beside the batch-level mode, which only moves the batch's share;
    this one decides which image becomes which group. ``scale`` 0 gives exactly the unguided images."""

    def __init__(self, heads: GuidanceHeads, assignments: Sequence[int] | torch.Tensor, scale: float, *,
                 temperature: float = 1.0, unet: nn.Module | None = None, check_timesteps: bool = True) -> None:
        attrs = heads.config.attributes
        if len(attrs) != 1:
            raise FairdiffError("per-sample guidance steers one attribute; these heads predict several")
        k = next(iter(attrs.values()))
        super().__init__(heads, [1.0 / k] * k, scale, temperature=temperature, unet=unet,
                         check_timesteps=check_timesteps)
        a = torch.as_tensor(assignments, dtype=torch.long)
        if a.ndim != 1 or (a < 0).any() or (a >= k).any():
            raise FairdiffError(f"assignments must be group indices in [0, {k})")
        self.assignments = a

    def _edit(self, h: torch.Tensor, step: int) -> torch.Tensor:
        b = h.shape[0]
        if b != len(self.assignments):
            raise FairdiffError(f"{len(self.assignments)} assignments for a batch of {b} images")
        attr = next(iter(self.targets))
        with torch.enable_grad():
            hh = h.detach().float().requires_grad_(True)
            logp = torch.log_softmax(self.heads.logits(hh, step)[attr] / self.temperature, dim=1)
            idx = self.assignments.to(logp.device)
            total = -logp[torch.arange(b, device=logp.device), idx].sum()
            (grad,) = torch.autograd.grad(total, hh)
        self.history.append({"step": step, "loss": float(total.detach()) / b})
        return (hh.detach() - self.scale * grad).to(h.dtype)
