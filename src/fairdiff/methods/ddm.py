"""DDM, the Debiasing Diffusion Model objective (see docs/methods.md and the spec, section 1).

A small MLP, the *latent space indicator*, reads the denoiser's output eps_hat for the same noisy batch (not
detached) and predicts each image's group. Denoiser and indicator minimise one loss together (cooperative, one
optimizer, no gradient reversal):

    L = w_rec * L_denoise + alpha * CE(indicator(eps_hat), group),   w_rec = 1 - alpha unless set.

Because the indicator's gradient reaches the denoiser, the denoiser is pushed to make its output carry the group
information in a way the indicator separates, which the method credits with balancing what is generated.
The indicator is only used in training; sampling is the ordinary sampler with no attribute condition. Nothing
here depends on pixels: in a latent model eps_hat is the latent noise prediction and the same code applies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fairdiff.methods.base import DataInfo, LossOutput, Objective, predicted_x0
from fairdiff.models.indicator import MLPClassifier


class DDMObjective(Objective):
    name = "ddm"

    def __init__(
        self,
        alpha: float = 0.05,
        reconstruction_weight: float | None = None,
        widths: list[int] | tuple[int, ...] = (1024, 512),
        indicator_input: str = "eps",
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError("alpha must lie in [0, 1]")
        if indicator_input not in ("eps", "x0"):
            raise ValueError("indicator_input must be 'eps' or 'x0'")
        self.alpha = float(alpha)
        self.reconstruction_weight = 1.0 - self.alpha if reconstruction_weight is None else float(reconstruction_weight)
        self.widths = list(widths)
        self.indicator_input = indicator_input
        self.indicator: nn.Module | None = None

    @classmethod
    def from_config(cls, m) -> "DDMObjective":
        return cls(m.alpha, m.reconstruction_weight, m.indicator_widths, m.indicator_input)

    def setup(self, info: DataInfo) -> None:
        super().setup(info)
        d = math.prod(info.image_shape)
        self.indicator = MLPClassifier(d, info.num_groups, self.widths)

    def modules(self) -> dict[str, nn.Module]:
        return {"indicator": self.indicator} if self.indicator is not None else {}

    @property
    def module_configs(self) -> dict[str, dict]:
        cfg = dict(self.indicator.config) if self.indicator is not None else {}
        cfg.update(input=self.indicator_input, alpha=self.alpha, reconstruction_weight=self.reconstruction_weight)
        return {"indicator": cfg}

    def loss(self, unet: nn.Module, batch: dict, noise_scheduler, generator: torch.Generator) -> LossOutput:
        if self.indicator is None:
            raise RuntimeError("DDMObjective.setup() must be called before loss()")
        per_sample, eps, noisy, t = self.per_sample_denoise(unet, batch, noise_scheduler, generator)
        l_denoise = per_sample.mean()
        feats = eps if self.indicator_input == "eps" else predicted_x0(noise_scheduler, noisy, eps, t)
        logits = self.indicator(feats.float())
        groups = batch["group"]
        l_ind = F.cross_entropy(logits, groups)
        total = self.reconstruction_weight * l_denoise + self.alpha * l_ind
        acc = (logits.argmax(1) == groups).float().mean()
        return LossOutput(total, {"denoise": l_denoise.detach(), "indicator": l_ind.detach(),
                                  "indicator_acc": acc.detach()})
