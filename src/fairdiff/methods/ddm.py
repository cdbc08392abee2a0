"""DDM, the Debiasing Diffusion Model objective (see docs/methods.md and the spec, section 1).

A small MLP, the *latent space indicator*, reads the denoiser's output eps_hat for the same noisy batch (not
detached) and predicts each image's group. Denoiser and indicator minimise one loss together (cooperative, one
optimizer, no gradient reversal):

    L = w_rec * L_denoise + alpha * CE(indicator(eps_hat), group),   w_rec = 1 - alpha unless set.

Because the indicator's gradient reaches the denoiser, the denoiser is pushed to make its output carry the group
information in a way the indicator separates, which the method credits with balancing what is generated.
The indicator is only used in training; sampling is the ordinary sampler with no attribute condition. Nothing
here depends on pixels: in a latent model eps_hat is the latent noise prediction and the same code applies.

Variants (options; the defaults are exactly the published method), studied in docs/ddm-analysis.md:

- ``indicator_ce="balanced"``: each image's cross-entropy is weighted by w(g) = 1 / (K * share(g)), so that the
  weights average to 1 over the training data and each group contributes equally in expectation.
- ``indicator_t_min`` / ``indicator_t_max``: the indicator term counts only for timesteps in [t_min, t_max);
  the per-image terms are still averaged over the whole batch, so alpha keeps its per-image meaning.
- ``indicator_grad="detach"``: the indicator reads eps_hat detached: it still learns, the denoiser is not pushed
  (a control: its gradient equals the baseline's, scaled by the reconstruction weight).
- ``indicator_grad="reverse"``: gradient reversal: the indicator minimises the cross-entropy while the denoiser
  receives the opposite gradient, i.e. it is pushed to *hide* the group from the indicator (adversarial reading).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fairdiff.errors import ConfigError
from fairdiff.methods.base import DataInfo, LossOutput, Objective, predicted_x0
from fairdiff.models.indicator import MLPClassifier


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; the gradient is negated on the way back (gradient reversal)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def reverse_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged, but the gradient that flows back through it changes sign."""
    return _ReverseGrad.apply(x)


def balanced_ce_weights(group_counts: list[int]) -> torch.Tensor:
    """w(g) = 1 / (K * share(g)): the data-average weight is 1 and every group carries equal total weight."""
    counts = torch.tensor(group_counts, dtype=torch.float64)
    if torch.any(counts <= 0):
        raise ConfigError("method.indicator_ce=balanced: every group needs at least one training image")
    share = counts / counts.sum()
    return (1.0 / (len(group_counts) * share)).float()


class DDMObjective(Objective):
    name = "ddm"

    def __init__(
        self,
        alpha: float = 0.05,
        reconstruction_weight: float | None = None,
        widths: list[int] | tuple[int, ...] = (1024, 512),
        indicator_input: str = "eps",
        indicator_ce: str = "plain",
        indicator_grad: str = "cooperative",
        t_min: int = 0,
        t_max: int | None = None,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"method.alpha: must lie in [0, 1], got {alpha}")
        if indicator_input not in ("eps", "x0"):
            raise ConfigError("method.indicator_input must be 'eps' or 'x0'")
        if indicator_ce not in ("plain", "balanced"):
            raise ConfigError("method.indicator_ce must be 'plain' or 'balanced'")
        if indicator_grad not in ("cooperative", "detach", "reverse"):
            raise ConfigError("method.indicator_grad must be 'cooperative', 'detach' or 'reverse'")
        if t_min < 0 or (t_max is not None and t_max <= t_min):
            raise ConfigError(f"method.indicator_t_min/t_max: need 0 <= t_min < t_max, got {t_min}, {t_max}")
        self.indicator_ce = indicator_ce
        self.indicator_grad = indicator_grad
        self.t_min, self.t_max = int(t_min), (None if t_max is None else int(t_max))
        self.ce_weights: torch.Tensor | None = None
        self.alpha = float(alpha)
        self.reconstruction_weight = 1.0 - self.alpha if reconstruction_weight is None else float(reconstruction_weight)
        self.widths = list(widths)
        self.indicator_input = indicator_input
        self.indicator: nn.Module | None = None

    @classmethod
    def from_config(cls, m) -> "DDMObjective":
        return cls(m.alpha, m.reconstruction_weight, m.indicator_widths, m.indicator_input,
                   getattr(m, "indicator_ce", "plain"), getattr(m, "indicator_grad", "cooperative"),
                   getattr(m, "indicator_t_min", 0), getattr(m, "indicator_t_max", None))

    def setup(self, info: DataInfo) -> None:
        super().setup(info)
        d = math.prod(info.image_shape)
        self.indicator = MLPClassifier(d, info.num_groups, self.widths)
        if self.indicator_ce == "balanced":
            self.ce_weights = balanced_ce_weights(info.group_counts)

    def modules(self) -> dict[str, nn.Module]:
        return {"indicator": self.indicator} if self.indicator is not None else {}

    @property
    def module_configs(self) -> dict[str, dict]:
        ind = getattr(self.indicator, "module", self.indicator)  # the trainer may hand a DDP-wrapped indicator
        cfg = dict(ind.config) if ind is not None else {}
        cfg.update(input=self.indicator_input, alpha=self.alpha, reconstruction_weight=self.reconstruction_weight,
                   ce=self.indicator_ce, grad=self.indicator_grad, t_min=self.t_min, t_max=self.t_max)
        return {"indicator": cfg}

    def loss(self, unet: nn.Module, batch: dict, noise_scheduler, generator: torch.Generator) -> LossOutput:
        if self.indicator is None:
            raise RuntimeError("DDMObjective.setup() must be called before loss()")
        per_sample, eps, noisy, t = self.per_sample_denoise(unet, batch, noise_scheduler, generator)
        l_denoise = per_sample.mean()
        feats = eps if self.indicator_input == "eps" else predicted_x0(noise_scheduler, noisy, eps, t)
        if self.indicator_grad == "detach":
            feats = feats.detach()
        elif self.indicator_grad == "reverse":
            feats = reverse_grad(feats)
        logits = self.indicator(feats.float())
        groups = batch["group"]
        l_ind = self.indicator_loss(logits, groups, t)
        total = self.reconstruction_weight * l_denoise + self.alpha * l_ind
        acc = (logits.argmax(1) == groups).float().mean()
        return LossOutput(total, {"denoise": l_denoise.detach(), "indicator": l_ind.detach(),
                                  "indicator_acc": acc.detach()})

    def indicator_loss(self, logits: torch.Tensor, groups: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The indicator's cross-entropy, per-image weighted (balanced variant) and restricted to [t_min, t_max).

        With the defaults this is exactly ``F.cross_entropy(logits, groups)`` (the published method).
        """
        if self.indicator_ce == "plain" and self.t_min == 0 and self.t_max is None:
            return F.cross_entropy(logits, groups)
        per = F.cross_entropy(logits, groups, reduction="none")
        if self.ce_weights is not None:
            per = per * self.ce_weights.to(per.device)[groups]
        mask = t >= self.t_min
        if self.t_max is not None:
            mask = mask & (t < self.t_max)
        return (per * mask.to(per.dtype)).mean()
