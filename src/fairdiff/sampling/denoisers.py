"""Denoisers: what the one denoising loop (:func:`fairdiff.sampling.sample`) calls at every step.

A denoiser is called as ``denoiser(x, t, **cond) -> model output`` (the noise prediction), where ``cond`` holds the
batch's rows of the per-image conditioning the sampler was given (class labels, text embeddings, or the two
branches of classifier-free guidance). Conditioning is never hidden state: it travels with the call.

* :class:`UNetDenoiser`: a diffusers ``UNet2DModel`` (unconditional or class-conditional: ``class_labels``).
* :class:`TextDenoiser`: a diffusers ``UNet2DConditionModel`` (``encoder_hidden_states``).
* :class:`CFGDenoiser`: classifier-free guidance around any conditional denoiser: one batched call on
  ``[unconditional; conditional]`` rows, ``eps_u + scale * (eps_c - eps_u)``. Guidance that reads h-space sees
  the conditional branch as the last rows of the batch.

A sampling-time guidance (e.g. :class:`~fairdiff.methods.guidance.DistributionGuidance`) wraps the *call*, not the
denoiser; :class:`RecordH` is such a wrapper that keeps the conditional branch's h at every step (for fitting
heads on a model's own generations).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fairdiff.models.heads import POOLS, pool_h
from fairdiff.models.hspace import capture_h


class UNetDenoiser:
    """A diffusers ``UNet2DModel``: ``unet(x, t, class_labels=...).sample``."""

    def __init__(self, unet: nn.Module) -> None:
        self.unet = unet

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        return (c.in_channels, c.sample_size, c.sample_size)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return self.unet(x, t, **cond).sample


class TextDenoiser(UNetDenoiser):
    """A text-conditioned diffusers ``UNet2DConditionModel``: ``unet(x, t, encoder_hidden_states=...)``."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond["encoder_hidden_states"], timestep_cond=None,
                         cross_attention_kwargs=None, added_cond_kwargs=None, return_dict=False)[0]


class CFGDenoiser:
    """Classifier-free guidance around ``inner``: called with ``cond={...}, uncond={...}`` (each the inner
    denoiser's keyword arguments for the batch), it runs the inner denoiser once on ``[x; x]`` with the
    unconditional rows first and returns ``eps_u + scale * (eps_c - eps_u)``."""

    def __init__(self, inner: UNetDenoiser, scale: float) -> None:
        self.inner, self.scale = inner, float(scale)

    @property
    def unet(self) -> nn.Module:
        return self.inner.unet

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.inner.sample_shape

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *, cond: dict, uncond: dict) -> torch.Tensor:
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        tt = torch.cat([t, t]) if t.ndim else t
        eps_u, eps_c = self.inner(torch.cat([x, x]), tt, **both).chunk(2)
        return eps_u + self.scale * (eps_c - eps_u)


class RecordH:
    """A guidance wrapper that keeps the pooled h of the last B rows (the conditional branch) at every step and
    otherwise leaves the call to ``inner`` (another guidance) or to the plain denoiser. ``feats()`` gives
    ``[S, N, D]`` over all batches sampled so far, in seed order."""

    def __init__(self, pool: str, inner: Callable | None = None, unet: nn.Module | None = None) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool, self.inner, self.unet = pool, inner, unet
        self._batches: list[list[torch.Tensor]] = []
        self.h_shape: list[int] = []

    def __call__(self, step_index: int, t: torch.Tensor, sample: torch.Tensor, denoise) -> torch.Tensor:
        b = sample.shape[0]
        if step_index == 0:
            self._batches.append([])
        with capture_h(self.unet) as seen:
            if self.inner is not None:
                out = self.inner(step_index, t, sample, denoise)
            else:
                with torch.no_grad():
                    out = denoise(sample)
        h = seen[0][-b:]  # the first middle-block call of the step: before any edit downstream
        self._batches[-1].append(pool_h(h.detach(), self.pool).cpu())
        self.h_shape = list(h.shape[1:])
        return out

    def feats(self) -> torch.Tensor:
        return torch.cat([torch.stack(steps) for steps in self._batches], dim=1)
