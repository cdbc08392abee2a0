"""The deterministic DDIM move (eta 0) and the one chain loop built on it, for every chain that is not the sampler.

Alignment fine-tuning runs a short DDIM sampling chain with gradient; guidance heads are fitted on h of images
DDIM-inverted up a schedule. Both walk the same move: x at noise level ``abar_t`` with the model's noise
prediction ``eps`` goes to noise level ``abar_next`` through the predicted clean image

    x0 = (x - sqrt(1 - abar_t) eps) / sqrt(abar_t)        (clamped to [-c, c] when the schedule clips)
    x_next = sqrt(abar_next) x0 + sqrt(1 - abar_next) eps

Down the schedule (a sampling step) this is, op for op, diffusers' ``DDIMScheduler.step`` with ``eta=0`` for an
epsilon-predicting model; up the schedule it is DDIM inversion. The user-facing sampler
(:mod:`fairdiff.sampling.sampler`) keeps diffusers' schedulers, which also do stochastic and multistep sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

EpsFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]  # (position, timestep, x) -> eps


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, abar_next: torch.Tensor,
              clip: float | None = None) -> torch.Tensor:
    """Move ``x`` from noise level ``abar_t`` to ``abar_next`` along ``eps`` (deterministic DDIM, eta 0)."""
    x0 = (x - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return abar_next ** 0.5 * x0 + (1 - abar_next) ** 0.5 * eps


@dataclass
class DDIMChain:
    """The steps of a chain: the timestep the model sees at each position, the noise level there and the one
    the step moves to (None: the chain ends after that model call), and the x0 clamp (None: no clamp)."""

    timesteps: list[torch.Tensor]
    abar: list[torch.Tensor]
    abar_next: list[torch.Tensor | None]
    clip: float | None = None


def sampling_chain(scheduler_config, steps: int) -> DDIMChain:
    """The ``steps``-step DDIM sampling chain of a training schedule, as diffusers' ``DDIMScheduler`` walks it
    (its timestep spacing, its final noise level and its ``clip_sample``); epsilon prediction only."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler_config)
    cfg = sched.config
    if cfg.prediction_type != "epsilon" or cfg.thresholding:
        raise ValueError(f"the DDIM chain supports epsilon prediction without thresholding (this schedule has "
                         f"prediction_type={cfg.prediction_type}, thresholding={cfg.thresholding})")
    sched.set_timesteps(steps)
    stride = cfg.num_train_timesteps // sched.num_inference_steps
    ab = sched.alphas_cumprod
    ts = list(sched.timesteps)
    nxt = [ab[t - stride] if t - stride >= 0 else sched.final_alpha_cumprod for t in ts]
    return DDIMChain(ts, [ab[t] for t in ts], nxt, float(cfg.clip_sample_range) if cfg.clip_sample else None)


def inversion_chain(alphas_cumprod: torch.Tensor, timesteps: Sequence[int],
                    device: str | torch.device | None = None) -> DDIMChain:
    """DDIM inversion up ``timesteps`` (visited in increasing order; the lowest is taken as nearly clean): the
    model runs at every timestep and each step climbs to the next one; no clamp. Noise levels on ``device``."""
    ts = sorted(int(t) for t in timesteps)
    ab = [alphas_cumprod[t].to(device) for t in ts]
    return DDIMChain([torch.tensor(t) for t in ts], ab, [*ab[1:], None])


def ddim_chain(eps_fn: EpsFn, x: torch.Tensor, chain: DDIMChain) -> torch.Tensor:
    """Run ``chain`` from ``x``: at each position i, ``eps = eps_fn(i, t_i, x)`` then one :func:`ddim_step`.

    ``eps_fn`` decides how the model is called (detached input, scaled gradient, captured features); autograd
    is whatever the caller enabled."""
    for i, t in enumerate(chain.timesteps):
        eps = eps_fn(i, t, x)
        if chain.abar_next[i] is not None:
            x = ddim_step(x, eps, chain.abar[i], chain.abar_next[i], chain.clip)
    return x
