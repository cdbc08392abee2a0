"""Distribution guidance ("Balancing Act", Parihar et al., CVPR 2024): steer a frozen model's attribute shares.

Three parts, in three rooms:

* **Heads** (:class:`~fairdiff.models.heads.GuidanceHeads`, a diffusers model): per step position, linear heads
  from h-space (the U-Net middle block's output) to attribute logits.
* **Fitting** (:func:`fairdiff.training.heads.train_heads`): the heads fitted on h of noised or DDIM-inverted
  real images.
* **Guidance** (here, :class:`DistributionGuidance`, one class for pixel, latent and text-conditioned U-Nets):
  at every sampling step (but the first, for pixel models), the denoiser runs with a middle-block hook that
  predicts ``p_i = softmax(head_k(h_i) / tau)``, averages them over the batch, measures chi-square (or KL) from
  the batch share to the target and either replaces h by ``h - s * B * grad_h`` (mode ``h``) or adds the loss
  gradient w.r.t. x_t to the model output (mode ``x``). The gradient of a batch mean scales as 1/B, so
  multiplying by B makes the same scale ``s`` work for any batch size. Under classifier-free guidance only the
  conditional branch is read and edited. :class:`AssignedGuidance` guides each image toward its own group.
  The guidance is a wrapper around the denoiser call; it owns no loop (:func:`fairdiff.sampling.sample` drives).

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
from fairdiff.models.hspace import capture_h, edit_h

LOSSES = ("chi2", "kl")
MODES = ("h", "x")


def check_guidable(unet: nn.Module, latent: bool, run: str | Path) -> None:
    """Distribution guidance needs an unconditional pixel-space U-Net; anything else is one line."""
    if latent:
        raise FairdiffError(f"guidance supports pixel-space models only ({run} is a latent model)")
    if unet.config.num_class_embeds:
        raise FairdiffError(f"guidance needs an unconditional model ({run} conditions on the group)")


def parse_target(text: str | Sequence[float], num_classes: int | None = None) -> list[float]:
    """``"0.5,0.5"`` (or a list) -> a checked probability vector (the one rule, :func:`fairdiff.metrics.check_shares`;
    every share positive: guidance divides by it)."""
    from fairdiff.metrics.functional import check_shares

    try:
        return check_shares(text, num_classes, positive=True, groups_word="classes the heads predict").tolist()
    except ValueError as e:
        raise FairdiffError(str(e)) from None


def distribution_loss(pbar: torch.Tensor, target: torch.Tensor, kind: str = "chi2") -> torch.Tensor:
    """Chi-square ``sum (pbar - p)^2 / p`` or ``KL(pbar || p)`` between a batch share and the target."""
    if kind == "chi2":
        return ((pbar - target) ** 2 / target).sum()
    if kind == "kl":
        return (pbar * (pbar.clamp_min(1e-12).log() - target.log())).sum()
    raise ConfigError(f"unknown guidance loss '{kind}' (known: {', '.join(LOSSES)})")


class DistributionGuidance:
    """The sampler guidance that pushes each batch's attribute shares toward ``target``; one class for pixel,
    latent and prompt-conditioned (Stable-Diffusion) U-Nets.

    ``target`` is one share vector (for the heads' single attribute) or ``{attribute: shares}`` (losses are
    summed). ``scale`` is the step size per image; the loss of a batch mean has a gradient of order 1/B per image,
    so it is multiplied by B (the images one batch share is taken over) and one scale works for any batch size;
    0 gives exactly the unguided samples. Two ways to act, one per ``mode``:

    * ``h`` (default): h is replaced by ``h - scale * B * grad_h(loss)`` inside the U-Net call.
    * ``x``: the gradient of the loss w.r.t. the sample x_t (through the heads, the middle block and the down path)
      is added to the model output, as classifier guidance does: ``eps <- eps + scale * sqrt(1 - abar_t) * B *
      grad_x(loss)``; needs the scheduler's ``alphas_cumprod``.

    Classifier-free guidance aware: the denoiser may run a batched ``[unconditional; conditional]`` U-Net call;
    the heads read (and ``h`` mode edits) only the last B rows, the conditional branch. ``guide_first_step``:
    the first step starts from pure noise; the pixel models leave it alone, the SD path guides it too.
    ``unet`` pins the hooks to that model's middle block; without it any diffusers middle block called during
    the step is used.
    """

    def __init__(
        self,
        heads: GuidanceHeads,
        target: Sequence[float] | str | Mapping[str, Sequence[float] | str],
        scale: float,
        *,
        temperature: float = 8.0,
        loss: str = "chi2",
        mode: str = "h",
        alphas_cumprod: torch.Tensor | None = None,
        guide_first_step: bool = False,
        unet: nn.Module | None = None,
        check_timesteps: bool = True,
    ) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"unknown guidance loss '{loss}' (known: {', '.join(LOSSES)})")
        if mode not in MODES:
            raise ConfigError(f"unknown guidance mode '{mode}' (known: {', '.join(MODES)})")
        if not math.isfinite(temperature) or temperature <= 0:
            raise FairdiffError("--temperature must be a finite positive number")
        if not math.isfinite(scale) or scale < 0:
            raise FairdiffError("--scale must be a finite number, 0 or more")
        if mode == "x" and alphas_cumprod is None and scale > 0:
            raise ConfigError("guidance mode 'x' needs the scheduler's alphas_cumprod")
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
        self.mode, self.alphas_cumprod, self.guide_first_step = mode, alphas_cumprod, guide_first_step
        self.unet, self.check_timesteps = unet, check_timesteps
        self.history: list[dict] = []  # per guided step: position, loss and the batch shares before the edit

    @property
    def active(self) -> bool:
        """False at scale 0: the sampler then runs the plain denoiser."""
        return self.scale > 0

    @property
    def target(self) -> torch.Tensor:
        """The target shares of the single attribute (heads with one attribute)."""
        if len(self.targets) != 1:
            raise FairdiffError("this guidance steers several attributes; see .targets")
        return next(iter(self.targets.values()))

    def check_schedule(self, timesteps: Sequence[int]) -> None:
        """Heads are per step position: the sampler must walk exactly the schedule they were fitted on (checked
        before sampling starts, so a wrong ``--steps`` is one line before any image is drawn)."""
        cfg = self.heads.config
        if [int(t) for t in timesteps] != [int(t) for t in cfg.timesteps]:
            raise FairdiffError(f"the heads were fitted for {cfg.num_steps} {cfg.scheduler.upper()} steps (timesteps "
                                f"{list(cfg.timesteps)[:3]}...) but sampling walks {len(timesteps)} steps "
                                f"({[int(t) for t in timesteps][:3]}...); sample with --steps {cfg.num_steps}")

    def check_h(self, h: torch.Tensor) -> None:
        """Heads fitted on another U-Net (another h-space shape) are refused."""
        want = list(self.heads.config.h_shape)
        if want and list(h.shape[1:]) != want:
            raise FairdiffError(f"the heads were fitted on a U-Net with h-space {want}; this one has "
                                f"{list(h.shape[1:])} (fit heads on this model)")

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

    def loss_of(self, h: torch.Tensor, step: int) -> torch.Tensor:
        """``B * sum_a loss(batch share of softmax(head_a(h) / T), target_a)`` for h ``[B, ...]`` of the guided
        images; the step's loss and shares go to ``history``."""
        self.check_h(h)
        logits = self.heads.logits(h, step)
        b = h.shape[0]
        total = h.new_zeros((), dtype=torch.float32)
        shares = {}
        for a, target in self.targets.items():
            pbar = torch.softmax(logits[a] / self.temperature, dim=1).mean(0)
            total = total + b * distribution_loss(pbar, target, self.loss)
            shares[a] = pbar.detach().cpu().tolist()
        self.history.append({"step": step, "loss": float(total.detach()) / b, "shares": shares})
        return total

    def _edit(self, h: torch.Tensor, step: int, rows: int | None = None) -> torch.Tensor:
        """``mode='h'``: the last ``rows`` rows of h (all by default; the conditional branch under CFG) moved
        down the loss gradient, the rows before them left alone."""
        rows = h.shape[0] if rows is None else rows
        with torch.enable_grad():
            hh = h[-rows:].detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.loss_of(hh, step), hh)
        moved = (hh.detach() - self.scale * grad).to(h.dtype)
        return torch.cat([h[:-rows], moved]) if rows < h.shape[0] else moved

    def eps_shift(self, grad_x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """``mode='x'``: what is added to the model output for the loss gradient ``grad_x`` (already times B) at
        noise level ``alpha_bar``."""
        return self.scale * (1 - alpha_bar) ** 0.5 * grad_x

    def __call__(self, step_index: int, t: torch.Tensor, sample: torch.Tensor, denoise) -> torch.Tensor:
        if self.scale == 0:
            with torch.no_grad():
                return denoise(sample)
        self._check_step(step_index, t)
        if step_index == 0 and not self.guide_first_step:  # pure noise: nothing to steer yet
            with torch.no_grad():
                return denoise(sample)
        b = sample.shape[0]
        if self.mode == "h":
            with torch.no_grad(), edit_h(lambda h: self._edit(h, step_index, b), self.unet):
                return denoise(sample)
        x = sample.detach().requires_grad_(True)
        with torch.enable_grad(), capture_h(self.unet) as seen:
            eps = denoise(x)
            (grad,) = torch.autograd.grad(self.loss_of(seen[-1][-b:].float(), step_index), x)
        abar = self.alphas_cumprod[int(t.reshape(-1)[0])].to(eps.device)
        return eps.detach() + self.eps_shift(grad.detach(), abar)

    def describe(self) -> dict:
        """The settings, JSON-ready, for a samples folder's ``meta.json``."""
        d = {"mode": self.mode, "scale": self.scale, "temperature": self.temperature, "loss": self.loss}
        if len(self.targets) == 1:
            a, t = next(iter(self.targets.items()))
            return {**d, "target": [round(v, 6) for v in t.cpu().tolist()], "attribute": a}
        return {**d, "target": {a: [round(v, 6) for v in t.cpu().tolist()] for a, t in self.targets.items()}}


class AssignedGuidance(DistributionGuidance):
    """Per-sample group assignment: each image of the batch is given a group (``assignments``, drawn in the
    target's proportions by the caller) and guided toward it, h <- h - scale * grad_h(-log p_i(g_i)), with
    ``p_i = softmax(head(h_i) / temperature)``. Beside the batch-level mode, which only moves the batch's share;
    this one decides which image becomes which group. ``scale`` 0 gives exactly the unguided images."""

    def __init__(self, heads: GuidanceHeads, assignments: Sequence[int] | torch.Tensor, scale: float, *,
                 temperature: float = 1.0, mode: str = "h", alphas_cumprod: torch.Tensor | None = None,
                 guide_first_step: bool = False, unet: nn.Module | None = None,
                 check_timesteps: bool = True) -> None:
        attrs = heads.config.attributes
        if len(attrs) != 1:
            raise FairdiffError("per-sample guidance steers one attribute; these heads predict several")
        k = next(iter(attrs.values()))
        super().__init__(heads, [1.0 / k] * k, scale, temperature=temperature, mode=mode,
                         alphas_cumprod=alphas_cumprod, guide_first_step=guide_first_step, unet=unet,
                         check_timesteps=check_timesteps)
        a = torch.as_tensor(assignments, dtype=torch.long)
        if a.ndim != 1 or (a < 0).any() or (a >= k).any():
            raise FairdiffError(f"assignments must be group indices in [0, {k})")
        self.assignments = a

    def loss_of(self, h: torch.Tensor, step: int) -> torch.Tensor:
        """``-sum_i log p_i(g_i)`` of the batch's images toward their assigned groups."""
        self.check_h(h)
        b = h.shape[0]
        if b != len(self.assignments):
            raise FairdiffError(f"{len(self.assignments)} assignments for a batch of {b} images")
        attr = next(iter(self.targets))
        logp = torch.log_softmax(self.heads.logits(h, step)[attr] / self.temperature, dim=1)
        idx = self.assignments.to(logp.device)
        total = -logp[torch.arange(b, device=logp.device), idx].sum()
        self.history.append({"step": step, "loss": float(total.detach()) / b})
        return total
