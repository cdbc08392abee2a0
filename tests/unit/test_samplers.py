"""Sampling schedulers: every choice reaches the data of an exactly known denoiser; per-image seeds hold."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fairdiff.errors import ConfigError
from fairdiff.models import build_noise_scheduler, build_sampling_scheduler
from fairdiff.sampling.sampler import sample

X_STAR = torch.linspace(-0.8, 0.8, 16).view(1, 1, 4, 4)


class ExactDenoiser(nn.Module):
    """The ideal eps-prediction for data that is one point x*: eps = (x_t - sqrt(abar) x*) / sqrt(1 - abar)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.register_buffer("abar", alphas_cumprod.float())
        self.dummy = nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(in_channels=1, sample_size=4)

    def forward(self, x, t, class_labels=None):
        a = self.abar[t.long()].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x - a.sqrt() * X_STAR) / (1 - a).sqrt())


@pytest.mark.parametrize("kind,steps", [("ddim", 10), ("dpmpp", 10), ("unipc", 10), ("ddpm", 50)])
def test_every_scheduler_reaches_the_data_point(kind, steps):
    ns = build_noise_scheduler()
    net = ExactDenoiser(ns.alphas_cumprod)
    out = sample(net, build_sampling_scheduler(kind, ns.config), [0, 1, 2], num_steps=steps, progress=False,
                 clip_output=False)
    assert out.shape == (3, 1, 4, 4)
    err = (out - X_STAR).abs().max().item()
    assert err < 0.05, f"{kind} with {steps} steps ends {err:.3f} from the data point"


@pytest.mark.parametrize("kind", ["dpmpp", "unipc"])
def test_multistep_schedulers_keep_per_image_seeds(kind):
    torch.manual_seed(0)
    from fairdiff.models import build_unet

    unet = build_unet("tiny", 16, 1)
    ns = build_noise_scheduler()
    sched = build_sampling_scheduler(kind, ns.config)
    batch = sample(unet, sched, [5, 6, 7], num_steps=4, progress=False)
    alone = sample(unet, sched, [6], num_steps=4, progress=False)
    torch.testing.assert_close(alone[0], batch[1], rtol=1e-4, atol=1e-5)
    assert torch.isfinite(batch).all()


def test_unknown_scheduler_is_a_config_error():
    with pytest.raises(ConfigError, match="dpmpp"):
        build_sampling_scheduler("euler", build_noise_scheduler().config)


@pytest.mark.parametrize("kind", ["ddim", "dpmpp", "unipc"])
def test_x0_predictions_are_clipped_like_ddim_when_the_schedule_says_so(kind):
    far = 3 * X_STAR  # data outside [-1, 1]: a clipping sampler cannot reach it
    ns = build_noise_scheduler()

    class FarDenoiser(ExactDenoiser):
        def forward(self, x, t, class_labels=None):
            a = self.abar[t.long()].view(-1, 1, 1, 1)
            return SimpleNamespace(sample=(x - a.sqrt() * far) / (1 - a).sqrt())

    net = FarDenoiser(ns.alphas_cumprod)
    clipped = {**dict(ns.config), "clip_sample": True}
    free = {**dict(ns.config), "clip_sample": False}
    out_c = sample(net, build_sampling_scheduler(kind, clipped), [0, 1], num_steps=10, progress=False,
                   clip_output=False)
    out_f = sample(net, build_sampling_scheduler(kind, free), [0, 1], num_steps=10, progress=False,
                   clip_output=False)
    assert out_c.abs().max() <= 1.0 + 1e-3
    assert (out_f - far).abs().max() < 0.1


def test_eta_per_step_matches_a_single_eta_and_mixes_when_it_varies():
    """``eta`` may be one number per step: all equal is the single number, bit for bit; ancestral steps first and
    deterministic ones after lies between the two, and a list of the wrong length is refused."""
    torch.manual_seed(0)
    from fairdiff.models import build_unet

    unet = build_unet("tiny", 16, 1)
    sched = build_sampling_scheduler("ddim", build_noise_scheduler().config)
    run = lambda eta: sample(unet, sched, [3, 4], num_steps=4, eta=eta, progress=False)  # noqa: E731
    torch.testing.assert_close(run([1.0] * 4), run(1.0), rtol=0, atol=0)
    torch.testing.assert_close(run([0.0] * 4), run(0.0), rtol=0, atol=0)
    mixed = run([1.0, 1.0, 0.0, 0.0])
    assert not torch.equal(mixed, run(0.0)) and not torch.equal(mixed, run(1.0))
    with pytest.raises(ValueError, match="one per step"):
        run([1.0, 0.0])
