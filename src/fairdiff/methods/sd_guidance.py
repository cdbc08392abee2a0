"""Distribution guidance for prompt-conditioned (Stable-Diffusion-style) U-Nets: the per-step guidance term.

The heads (:class:`~fairdiff.models.heads.GuidanceHeads`) read h-space, the U-Net middle block's output, of the
**conditional** branch of classifier-free guidance; the batch's predicted group shares are compared with a target
by the distribution loss of :mod:`fairdiff.methods.guidance` (chi-square or KL). Two ways to act on it, one per
``mode``:

* ``x`` (default): the gradient of the loss w.r.t. the latent x_t (through the heads, the middle block and the
  down path of the conditional pass) is added to the guided noise prediction, as classifier guidance does:
  ``eps <- eps + scale * sqrt(1 - abar_t) * B * grad_x L``. The sampler's image moves toward the target.
* ``h``: h of the conditional branch is replaced by ``h - scale * B * grad_h L`` inside the U-Net call, as the
  pixel-model guidance does (the unconditional branch is left alone).

The loss of a batch mean has a gradient of order 1/B per image; multiplying by B makes one ``scale`` fit any batch
size. ``scale == 0`` never touches the sampler (the samples are plain classifier-free guidance, bit for bit).
This module owns no loop: the sampler (:mod:`fairdiff.sampling.sd_guided`) calls it at each step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fairdiff.errors import ConfigError, FairdiffError
from fairdiff.methods.guidance import LOSSES, distribution_loss, parse_target
from fairdiff.models.heads import GuidanceHeads

MODES = ("x", "h")


class SDDistributionGuidance:
    """Per-step distribution guidance on the conditional branch of a text-conditioned U-Net.

    ``target`` is the heads' group shares (``"0.5,0.5"`` or a list); ``timesteps`` the schedule the sampler walks
    (checked against the heads' own). ``history`` keeps, per guided step, the loss and the batch's predicted
    shares before the guidance acted."""

    def __init__(self, heads: GuidanceHeads, target: str | Sequence[float], scale: float, *, mode: str = "x",
                 temperature: float = 1.0, loss: str = "chi2") -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown guidance mode '{mode}' (known: {', '.join(MODES)})")
        if loss not in LOSSES:
            raise ConfigError(f"unknown guidance loss '{loss}' (known: {', '.join(LOSSES)})")
        if not math.isfinite(temperature) or temperature <= 0:
            raise FairdiffError("--temperature must be a finite positive number")
        if not math.isfinite(scale) or scale < 0:
            raise FairdiffError("--scale must be a finite number, 0 or more")
        attrs = heads.config.attributes
        if len(attrs) != 1:
            raise FairdiffError(f"SD guidance steers one attribute; these heads predict {', '.join(attrs)}")
        self.attribute, k = next(iter(attrs.items()))
        dev = next(heads.parameters()).device
        self.target = torch.tensor(parse_target(target, k), device=dev)
        self.heads, self.scale, self.mode = heads, float(scale), mode
        self.temperature, self.loss = float(temperature), loss
        self.history: list[dict] = []

    @property
    def active(self) -> bool:
        """False at scale 0: the sampler then runs plain classifier-free guidance."""
        return self.scale > 0

    def check_schedule(self, timesteps: Sequence[int]) -> None:
        """Heads are per step position: the sampler must walk exactly the schedule they were fitted on."""
        cfg = self.heads.config
        if [int(t) for t in timesteps] != [int(t) for t in cfg.timesteps]:
            raise FairdiffError(f"the heads were fitted for {cfg.num_steps} DDIM steps (timesteps "
                                f"{list(cfg.timesteps)[:3]}...) but sampling walks {len(timesteps)} steps "
                                f"({[int(t) for t in timesteps][:3]}...); sample with --steps {cfg.num_steps}")

    def check_h(self, h: torch.Tensor) -> None:
        """Heads fitted on another U-Net (another h-space shape) are refused."""
        want = list(self.heads.config.h_shape)
        if want and list(h.shape[1:]) != want:
            raise FairdiffError(f"the heads were fitted on a U-Net with h-space {want}; this one has "
                                f"{list(h.shape[1:])} (fit heads on this model with 'fairdiff sd-guide fit-heads')")

    def loss_of(self, h_cond: torch.Tensor, step: int) -> torch.Tensor:
        """``B * loss(batch share of softmax(head(h) / T), target)`` for the conditional branch's h ``[B, ...]``."""
        logits = self.heads.logits(h_cond, step)[self.attribute]
        pbar = torch.softmax(logits / self.temperature, dim=1).mean(0)
        total = h_cond.shape[0] * distribution_loss(pbar, self.target, self.loss)
        self.history.append({"step": step, "loss": float(total.detach()) / h_cond.shape[0],
                             "shares": pbar.detach().cpu().tolist()})
        return total

    def edit_h(self, h: torch.Tensor, step: int, n_uncond: int) -> torch.Tensor:
        """``mode='h'``: h of a ``[uncond (n_uncond); cond]`` batch with only the conditional part moved down the
        loss gradient."""
        self.check_h(h[n_uncond:])
        with torch.enable_grad():
            hc = h[n_uncond:].detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.loss_of(hc, step), hc)
        moved = (hc.detach() - self.scale * grad).to(h.dtype)
        return torch.cat([h[:n_uncond], moved]) if n_uncond else moved

    def eps_shift(self, grad_x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """``mode='x'``: what is added to the guided noise prediction for the loss gradient ``grad_x`` (of
        :meth:`loss_of`, already times B) at noise level ``alpha_bar``."""
        return self.scale * (1 - alpha_bar) ** 0.5 * grad_x

    def describe(self) -> dict:
        """The settings, JSON-ready, for a samples folder's ``meta.json``."""
        return {"mode": self.mode, "scale": self.scale, "target": [round(v, 6) for v in self.target.cpu().tolist()],
                "temperature": self.temperature, "loss": self.loss, "attribute": self.attribute}
