"""Classifier guidance toward a target: sample the target's mixture of the base's groups from the base itself.

A base draws ``p(x) = sum_g rho_g p(x | g)`` (``rho``: the groups' shares it was trained on). The user asks for
``q(x) = sum_g pi_g p(x | g)``. At every noise level ``q_t(x_t) = p_t(x_t) w_t(x_t)`` with

    w_t(x_t) = sum_g pi_g p_t(x_t | g) / sum_g rho_g p_t(x_t | g),

so the score the sampler needs is the base's plus ``grad log w_t``: the model output becomes
``eps - scale * sqrt(1 - abar_t) * grad_x log w_t(x_t)`` (the classifier guidance of Dhariwal & Nichol, toward a
mixture rather than one class). A noise-aware group classifier ``c(x_t, t)`` fitted on group-balanced batches
(:func:`fairdiff.training.discriminator.fit_group_classifier`) has logits ``log p_t(x_t | g) + const(x_t)``, so
``log w_t = logsumexp_g(c_g + log pi_g) - logsumexp_g(c_g + log rho_g)``. Scale 1 is the exact answer for an exact
classifier; the guidance controller (fairdiff.debias.guide) finds the scale that reaches the target with this
classifier. ``assignments`` gives the per-sample form: image i is guided toward its own group ``g_i``
(``log w = c_{g_i} - logsumexp_g(c_g + log rho_g)``, i.e. toward ``p(x | g_i)``).

Unlike h-space guidance (methods/guidance.py) nothing here reads the denoiser's inside: the classifier sees x_t and
t only, so the same guidance serves any pixel-space U-Net. It wraps the denoiser call; the loop is
:func:`fairdiff.sampling.sample`.

:class:`CleanClassifierGuidance` needs no noise-aware classifier: a classifier of *clean* images reads the
denoiser's prediction of the clean image, ``x0(x_t) = (x_t - sqrt(1 - abar_t) eps(x_t)) / sqrt(abar_t)``, and the
gradient of ``log w`` flows back through the denoiser to ``x_t``. ``c_g(x0(x_t))`` stands in for
``log p_t(x_t | g)`` (a classifier fitted on group-balanced images has logits ``log p(x | g) + const``): an
approximation that is exact only where the posterior mean carries the group (late steps), so no scale is exact
and the controller finds one. It costs one backward pass through the denoiser per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fairdiff.errors import FairdiffError


class ClassifierGuidance:
    """``guidance(step_index, t, sample, denoise)`` that adds ``scale * grad log w_t`` (toward ``target``) to the
    score of the base, read by the noise-aware group classifier ``classifier``. ``base_shares``: the groups'
    shares the base was trained on. ``min_t``: steps at timesteps below it are left alone (at low noise the group is
    decided and the classifier's gradient only edits pixels). Scale 0 gives exactly the unguided samples."""

    def __init__(self, classifier: nn.Module, target: Sequence[float], base_shares: Sequence[float], scale: float, *,
                 alphas_cumprod: torch.Tensor, assignments: Sequence[int] | torch.Tensor | None = None,
                 min_t: int = 0, num_groups: int | None = None) -> None:
        from fairdiff.metrics.functional import check_shares

        k = int(num_groups if num_groups is not None else getattr(classifier, "out_dim", 1))
        try:
            pi = check_shares(target, k, positive=False, groups_word="groups the classifier knows")
            rho = check_shares(base_shares, k, positive=True, what="base shares",
                               groups_word="groups the classifier knows")
        except ValueError as e:
            raise FairdiffError(str(e)) from None
        if not scale >= 0 or scale == float("inf"):
            raise FairdiffError("the guidance scale must be a finite number, 0 or more")
        dev = next(classifier.parameters()).device
        self.classifier, self.scale, self.min_t = classifier, float(scale), int(min_t)
        self.log_pi = torch.as_tensor(pi, dtype=torch.float32, device=dev).clamp_min(1e-30).log()
        self.log_rho = torch.as_tensor(rho, dtype=torch.float32, device=dev).log()
        self.alphas_cumprod = alphas_cumprod
        self.assignments = None
        if assignments is not None:
            a = torch.as_tensor(assignments, dtype=torch.long)
            if a.ndim != 1 or (a < 0).any() or (a >= k).any():
                raise FairdiffError(f"assignments must be group indices in [0, {k})")
            self.assignments = a.to(dev)

    @property
    def active(self) -> bool:
        return self.scale > 0

    def group_logits(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The classifier's group logits ``[B, K]`` of ``x`` at timesteps ``t``."""
        return self.classifier(x, t).float()

    def log_w(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log w_t(x_t)`` per image ``[B]`` (toward the target, or toward each image's assigned group)."""
        c = self.group_logits(x, t)
        log_base = torch.logsumexp(c + self.log_rho, dim=1)
        if self.assignments is None:
            return torch.logsumexp(c + self.log_pi, dim=1) - log_base
        if len(self.assignments) != x.shape[0]:
            raise FairdiffError(f"{len(self.assignments)} assignments for a batch of {x.shape[0]} images")
        return c.gather(1, self.assignments[:, None]).squeeze(1) - log_base

    def __call__(self, step_index: int, t: torch.Tensor, sample: torch.Tensor, denoise) -> torch.Tensor:
        with torch.no_grad():
            eps = denoise(sample)
        tv = int(t.reshape(-1)[0])
        if self.scale == 0 or tv < self.min_t:
            return eps
        with torch.enable_grad():
            x = sample.detach().float().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_w(x, t.reshape(-1).expand(x.shape[0])).sum(), x)
        abar = self.alphas_cumprod[tv].to(eps.device, eps.dtype)
        return eps - self.scale * (1 - abar) ** 0.5 * grad.to(eps.dtype)

    def describe(self) -> dict:
        return {"kind": "classifier", "scale": self.scale, "min_t": self.min_t,
                "target": [round(float(v), 6) for v in self.log_pi.exp().cpu()],
                "base_shares": [round(float(v), 6) for v in self.log_rho.exp().cpu()],
                "per_sample": self.assignments is not None}


class CleanClassifierGuidance(ClassifierGuidance):
    """:class:`ClassifierGuidance` read by a classifier of clean images (``classifier(x) -> logits``; its first
    ``num_groups`` columns are the groups, later ones, e.g. the other digits of an open-set judge, are left out) on
    the denoiser's predicted clean image; the gradient passes through the denoiser. Scale 0 gives exactly the
    unguided samples."""

    def __init__(self, classifier: nn.Module, target: Sequence[float], base_shares: Sequence[float], scale: float, *,
                 alphas_cumprod: torch.Tensor, num_groups: int | None = None,
                 assignments: Sequence[int] | torch.Tensor | None = None, min_t: int = 0) -> None:
        k = int(num_groups if num_groups is not None else len(target))
        super().__init__(classifier, target, base_shares, scale, alphas_cumprod=alphas_cumprod,
                         assignments=assignments, min_t=min_t, num_groups=k)
        self.k = k

    def group_logits(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.classifier(x0).float()[:, : self.k]

    def __call__(self, step_index: int, t: torch.Tensor, sample: torch.Tensor, denoise) -> torch.Tensor:
        tv = int(t.reshape(-1)[0])
        if self.scale == 0 or tv < self.min_t:
            with torch.no_grad():
                return denoise(sample)
        abar = self.alphas_cumprod[tv].to(sample.device, torch.float32)
        with torch.enable_grad():
            x = sample.detach().float().requires_grad_(True)
            eps = denoise(x.to(sample.dtype)).float()
            x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
            (grad,) = torch.autograd.grad(self.log_w(x0, t.reshape(-1).expand(x.shape[0])).sum(), x)
        out = eps.detach() - self.scale * (1 - abar).sqrt() * grad
        return out.to(sample.dtype)

    def describe(self) -> dict:
        return {**super().describe(), "kind": "clean classifier on the predicted x0"}
