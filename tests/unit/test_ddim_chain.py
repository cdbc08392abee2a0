"""The differentiable DDIM chain (models/ddim.py: alignment's chain, heads' inversion) against diffusers'
schedulers as the independent reference: down the schedule it is ``DDIMScheduler.step`` (eta 0) bit for bit,
up the schedule it is ``DDIMInverseScheduler.step``; gradients flow through it."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler

from fairdiff.models.ddim import ddim_chain, inversion_chain, sampling_chain

W = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))


def eps_fn(i: int, t, x: torch.Tensor) -> torch.Tensor:
    """A stand-in model: depends on x and on the timestep, so a step walked at the wrong t would differ."""
    return torch.tanh(torch.einsum("ij,bjhw->bihw", W, x)) * (1 + int(t) / 1000)


@pytest.mark.parametrize("schedule,clip,steps", [("linear", True, 10), ("squaredcos_cap_v2", False, 7),
                                                 ("linear", False, 50)])
def test_sampling_chain_is_ddim_scheduler_step_bit_for_bit(schedule, clip, steps):
    cfg = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, clip_sample=clip).config
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    ours = ddim_chain(eps_fn, x, sampling_chain(cfg, steps))
    ref = DDIMScheduler.from_config(cfg)
    ref.set_timesteps(steps)
    y = x.clone()
    for i, t in enumerate(ref.timesteps):
        y = ref.step(eps_fn(i, t, y), t, y, eta=0.0).prev_sample
    assert torch.equal(ours, y)
    assert not torch.equal(ours, x)


def test_inversion_chain_is_ddim_inverse_scheduler_step():
    cfg = DDPMScheduler(num_train_timesteps=1000, clip_sample=False).config
    inv = DDIMInverseScheduler.from_config(cfg)
    inv.set_timesteps(10)
    ts = [int(t) for t in inv.timesteps]  # 0, 100, ..., 900
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    ours = ddim_chain(eps_fn, x, inversion_chain(inv.alphas_cumprod, ts))
    # diffusers' step(eps, t) climbs from t - stride to t; the model was evaluated at the lower level
    y = x.clone()
    for i in range(len(ts) - 1):
        y = inv.step(eps_fn(i, ts[i], y), ts[i + 1], y).prev_sample
    assert torch.allclose(ours, y, atol=1e-5, rtol=1e-5)
    assert (ours - x).abs().max() > 0.1


def test_gradients_flow_through_the_chain():
    cfg = DDPMScheduler(num_train_timesteps=1000, clip_sample=False).config
    w = torch.nn.Parameter(torch.ones(()))
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    out = ddim_chain(lambda i, t, x: w * eps_fn(i, t, x), x, sampling_chain(cfg, 5))
    out.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad) and float(w.grad) != 0.0
