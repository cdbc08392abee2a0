"""The discriminator's noising is the scheduler's ``add_noise``: the same numbers as the hand formula it replaced."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from fairdiff.training.discriminator import _noised


@pytest.mark.parametrize("make", [lambda: DDPMScheduler(num_train_timesteps=1000),
                                  lambda: DDPMScheduler(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2"),
                                  lambda: DDIMScheduler(num_train_timesteps=1000)])
def test_noised_equals_the_hand_formula(make):
    sched = make()
    x0 = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.randint(0, sched.config.num_train_timesteps, (16,), generator=torch.Generator().manual_seed(1))
    got = _noised(x0, t, sched, torch.Generator().manual_seed(2))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    abar = sched.alphas_cumprod.to(torch.float32)[t].view(-1, 1, 1, 1)
    want = abar.sqrt() * x0 + (1 - abar).sqrt() * noise  # the formula discriminator.py used before
    assert torch.equal(got, want)
    # t = 0 keeps nearly all of x0, the last step nearly none of it
    t0 = torch.tensor([0, sched.config.num_train_timesteps - 1])
    out = _noised(torch.ones(2, 1, 2, 2), t0, sched, torch.Generator().manual_seed(3))
    n = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    assert (out[0] - 1).abs().max() < 0.1 and (out[1] - n[1]).abs().max() < 0.1
