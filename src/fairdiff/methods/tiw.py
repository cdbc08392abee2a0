"""Label-free debiasing with a small reference set: time-dependent importance reweighting ("tiw") and its
time-independent baseline ("iw"). Spec section 5; docs/tiw.md.

Setting: a large biased training set with density p_bias and a small unlabeled reference set from the wanted
density p_ref. Under the forward process x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps both are blurred into
p_bias^t and p_ref^t. A noise-aware discriminator d(x_t, t) (models/discriminator.py), fitted before the denoiser
trains (training/discriminator.py), estimates at its BCE optimum with balanced classes

    d = p_ref^t / (p_ref^t + p_bias^t),   so   w_t(x_t) = p_ref^t(x_t) / p_bias^t(x_t) = d / (1 - d) = exp(logit).

Derivation of the corrected target (the sign). Write s^t = grad_x log p^t. Because p_ref^t = p_bias^t * w_t,

    s_ref^t(x) = s_bias^t(x) + grad_x log w_t(x).

Denoising score matching: the MSE-optimal noise prediction is eps*(x_t) = E[eps | x_t] = -sqrt(1 - abar_t) s^t(x_t)
(Tweedie). Hence

    eps*_ref(x_t) = -sqrt(1 - abar_t) (s_bias^t + grad log w_t) = eps*_bias(x_t) - sqrt(1 - abar_t) grad log w_t(x_t).

With x_t drawn from the *biased* data, E[eps | x_t] = eps*_bias(x_t), so the regression target

    eps_tilde = eps - sqrt(1 - abar_t) * grad_x log w_t(x_t)

has conditional mean eps*_ref(x_t): the minimiser of E_bias ||eps_hat - eps_tilde||^2 is the reference model's noise
prediction. Weighting each term by w_t(x_t) turns the expectation over x_t ~ p_bias^t into one over x_t ~ p_ref^t
(E_bias[w_t f] = E_ref[f]), so the model also spends its capacity where the reference data lives. Both the weight
and the correction are detached (they are data, not parameters). tests/unit/test_tiw.py checks the sign on Gaussian
mixtures where every quantity is known in closed form.

In practice the weights are **self-normalised per batch** (w_i / mean_batch(w), computed as B * softmax(logit)),
so the loss scale does not depend on the discriminator's overall calibration, and the raw ratio may be **clipped**
to [1/c, c] before normalising (``weight_clip`` c; None = no clip), which bounds the influence of any one image.

IW (the time-independent baseline): w(x_0) = the ratio at t ~ 0 on the clean image, used as a weight only, with the
plain target eps. No per-image group label is used anywhere in this file.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fairdiff.errors import ConfigError
from fairdiff.methods.base import DataInfo, LossOutput, Objective, add_noise, predict_noise
from fairdiff.models.discriminator import NoiseAwareDiscriminator

# ---------------------------------------------------------------------------------------------------- the math


def density_ratio(logits: torch.Tensor) -> torch.Tensor:
    """w = d / (1 - d) with d = sigmoid(logit), computed stably as exp(logit) (clamped below float32 overflow)."""
    return torch.exp(logits.float().clamp(max=80.0))


def log_ratio_and_grad(discriminator: nn.Module, x_t: torch.Tensor,
                       t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log w_t(x_t), grad_x log w_t(x_t)), both detached; log w = the discriminator's logit.

    The gradient comes from autograd through the discriminator with respect to its input only (no parameter
    receives a gradient). Each logit depends on its own input alone, so one backward of the sum gives every
    per-sample gradient.
    """
    with torch.enable_grad():
        x = x_t.detach().float().requires_grad_(True)
        logit = discriminator(x, t)
        (grad,) = torch.autograd.grad(logit.sum(), x)
    return logit.detach(), grad.detach()


def corrected_eps_target(noise: torch.Tensor, grad_log_w: torch.Tensor, alphas_cumprod_t: torch.Tensor) -> torch.Tensor:
    """eps - sqrt(1 - abar_t) * grad_x log w_t(x_t) (detached); ``alphas_cumprod_t`` is abar per sample ``[B]``."""
    abar = alphas_cumprod_t.to(noise.device, torch.float32).view(-1, *([1] * (noise.dim() - 1)))
    return (noise.float() - (1.0 - abar).sqrt() * grad_log_w.float()).detach()


def batch_weights(log_w: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """Self-normalised per-batch weights from log ratios: w_i / mean_j w_j (mean exactly 1), detached.

    With ``clip`` = c the ratio is first clipped to [1/c, c] (in log space). Computed as B * softmax(log w), which
    never overflows.
    """
    lw = log_w.detach().float()
    if clip is not None:
        if clip < 1.0:
            raise ValueError(f"weight clip must be >= 1, got {clip}")
        c = math.log(clip)
        lw = lw.clamp(-c, c)
    return torch.softmax(lw, dim=0) * lw.numel()


# ---------------------------------------------------------------------------------------------------- objectives


class TIWObjective(Objective):
    """Time-dependent importance reweighting with score correction (``method.name=tiw``).

    L = mean_i  w_i * || eps_hat(x_t,i) - (eps_i - sqrt(1 - abar_t) grad log w_t(x_t,i)) ||^2 / D,
    w_i the self-normalised (optionally clipped) w_t(x_t,i). The discriminator ``d(x_t, t)`` is a module of the
    run (``model/discriminator/``), fitted on the reference set before the denoiser trains and frozen after.
    """

    name = "tiw"
    uses_reference = True  # the trainer fits the discriminator on data.reference before training
    time_dependent = True

    def __init__(self, width: int = 32, weight_clip: float | None = 20.0, steps: int = 500, batch_size: int = 64,
                 lr: float = 1e-3, weight_decay: float = 1e-4, holdout: float = 0.2, iw_timestep: int = 0) -> None:
        if weight_clip is not None and weight_clip < 1.0:
            raise ValueError("weight_clip must be >= 1 (or None)")
        if not 0.0 <= holdout < 1.0:
            raise ValueError("holdout must lie in [0, 1)")
        self.width, self.weight_clip = int(width), weight_clip
        self.fit_steps, self.fit_batch_size, self.fit_lr = int(steps), int(batch_size), float(lr)
        self.fit_weight_decay, self.holdout, self.iw_timestep = float(weight_decay), float(holdout), int(iw_timestep)
        self.discriminator: nn.Module | None = None

    @classmethod
    def from_config(cls, m) -> "TIWObjective":
        """Built from the method section; out-of-range options are one-line ConfigErrors."""
        if m.weight_clip is not None and m.weight_clip < 1.0:
            raise ConfigError(f"method.weight_clip: must be >= 1 (or null), got {m.weight_clip}")
        if not 0.0 <= m.disc_holdout < 1.0:
            raise ConfigError(f"method.disc_holdout: must lie in [0, 1), got {m.disc_holdout}")
        for key in ("disc_width", "disc_steps", "disc_batch_size"):
            if getattr(m, key) < 1:
                raise ConfigError(f"method.{key}: must be at least 1, got {getattr(m, key)}")
        if m.disc_lr <= 0 or m.disc_weight_decay < 0:
            raise ConfigError("method.disc_lr must be > 0 and method.disc_weight_decay >= 0")
        if m.iw_timestep < 0:
            raise ConfigError(f"method.iw_timestep: must be >= 0, got {m.iw_timestep}")
        return cls(m.disc_width, m.weight_clip, m.disc_steps, m.disc_batch_size, m.disc_lr, m.disc_weight_decay,
                   m.disc_holdout, m.iw_timestep)

    def setup(self, info: DataInfo) -> None:
        super().setup(info)
        self.discriminator = NoiseAwareDiscriminator(info.image_shape, self.width)

    def modules(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator} if self.discriminator is not None else {}

    def bind_modules(self, modules: dict[str, nn.Module]) -> None:
        # a DDP wrapper is bypassed: the discriminator is frozen and only its input gradient is taken
        for name, module in modules.items():
            setattr(self, name, getattr(module, "module", module))

    @property
    def module_configs(self) -> dict[str, dict]:
        if self.discriminator is None:
            return {}
        cfg = dict(self.discriminator.config)
        cfg.update(method=self.name, weight_clip=self.weight_clip)
        return {"discriminator": cfg}

    def weights_and_target(self, x0: torch.Tensor, noisy: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                           noise_scheduler) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-sample weights, eps target, raw log ratio) for one noised batch; no labels involved."""
        if self.discriminator is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must be called before loss()")
        if self.time_dependent:
            log_w, grad = log_ratio_and_grad(self.discriminator, noisy, t)
            abar = noise_scheduler.alphas_cumprod.to(noisy.device)[t]
            target = corrected_eps_target(noise, grad, abar)
        else:
            t0 = torch.full_like(t, self.iw_timestep)
            with torch.no_grad():
                log_w = self.discriminator(x0.float(), t0).detach()
            target = noise.float()
        return batch_weights(log_w, self.weight_clip), target, log_w

    def loss(self, unet: nn.Module, batch: dict, noise_scheduler, generator: torch.Generator) -> LossOutput:
        x0 = batch["pixel_values"]
        noisy, noise, t = add_noise(x0, noise_scheduler, generator)
        w, target, log_w = self.weights_and_target(x0, noisy, noise, t, noise_scheduler)
        eps = predict_noise(unet, noisy, t, batch)
        per_sample = (eps.float() - target).pow(2).flatten(1).mean(1)
        total = (w * per_sample).mean()
        plain = (eps.detach().float() - noise.float()).pow(2).flatten(1).mean(1).mean()
        return LossOutput(total, {"denoise": plain, "weighted": total.detach(),
                                  "log_w_mean": log_w.mean(), "w_max": w.max()})


class IWObjective(TIWObjective):
    """Time-independent importance weighting (``method.name=iw``): w = the ratio at t ~ 0 on the clean image,
    a per-sample weight only (plain eps target, no score correction). Same discriminator as tiw."""

    name = "iw"
    time_dependent = False

