"""Classifier guidance toward a target (fairdiff.methods.classifier_guidance) on a problem whose answer is exact.

Two Gaussian groups in 2-D drawn at 4:1; the denoiser is the mixture's exact eps and the classifier the exact
``log p_t(x_t | g)``. Then scale 1 must turn the base's 4:1 into any target (up to the sampler's discretisation),
the per-sample form must send each point to its assigned group, and scale 0 or target = base change nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler
from torch import nn

from fairdiff.errors import FairdiffError
from fairdiff.methods.classifier_guidance import ClassifierGuidance, CleanClassifierGuidance

MU = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
S = 0.3
RHO = torch.tensor([0.8, 0.2])


def _sched():
    s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    s.set_timesteps(50)
    return s


def _log_pt(x, abar):
    """``log p_t(x | g)`` ``[B, 2]`` (up to a constant shared by the groups)."""
    var = abar * S * S + 1 - abar
    d = x[:, None, :] - abar.sqrt() * MU[None]
    return -(d * d).sum(-1) / (2 * var)


class ExactClassifier(nn.Module):
    out_dim = 2

    def __init__(self, abar):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.abar = abar

    def forward(self, x, t):
        return _log_pt(x, self.abar[t.reshape(-1)[0]])


def _run(guidance, n=4000, seed=0):
    sch = _sched()
    abar_all = sch.alphas_cumprod
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    for i, t in enumerate(sch.timesteps):
        tb = t.reshape(1).expand(n)
        abar = abar_all[int(t)]

        def denoise(inp, abar=abar):
            var = abar * S * S + 1 - abar
            r = torch.softmax(_log_pt(inp, abar) + RHO.log(), dim=1)
            score = -(inp - (r @ MU) * abar.sqrt()) / var
            return -(1 - abar).sqrt() * score

        eps = denoise(x) if guidance is None else guidance(i, tb, x, denoise)
        x = sch.step(eps.detach(), t, x).prev_sample
    return (x[:, 0] > 0).float()  # group 1 on the right


def _guide(target, scale, **kw):
    sch = _sched()
    return ClassifierGuidance(ExactClassifier(sch.alphas_cumprod), target, RHO.tolist(), scale,
                              alphas_cumprod=sch.alphas_cumprod, **kw)


def test_the_base_draws_its_training_shares():
    assert _run(None).mean().item() == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize("target", [[0.5, 0.5], [0.3, 0.7], [0.9, 0.1]])
def test_scale_one_with_an_exact_classifier_samples_the_target(target):
    share1 = _run(_guide(target, 1.0)).mean().item()
    assert share1 == pytest.approx(target[1], abs=0.03)


def test_scale_moves_the_share_monotonically():
    shares = [_run(_guide([0.5, 0.5], s)).mean().item() for s in (0.0, 0.5, 1.0)]
    assert shares[0] < shares[1] < shares[2]
    assert shares[0] == pytest.approx(0.2, abs=0.02)


def test_scale_zero_and_target_equal_to_base_change_nothing():
    plain = _run(None, n=500)
    assert torch.equal(_run(_guide([0.5, 0.5], 0.0), n=500), plain)
    assert torch.equal(_run(_guide(RHO.tolist(), 3.0), n=500), plain)  # w = 1 everywhere: zero gradient


def test_describe_names_what_it_steers():
    d = _guide([0.3, 0.7], 1.5, min_t=200).describe()
    assert d == {"kind": "classifier", "scale": 1.5, "min_t": 200, "target": [0.3, 0.7], "base_shares": [0.8, 0.2],
                 "per_sample": False}


def test_guidance_below_min_t_is_left_alone():
    """``min_t`` = every timestep: nothing is guided, the samples are the base's."""
    assert torch.equal(_run(_guide([0.5, 0.5], 1.0, min_t=10_000), n=300), _run(None, n=300))


def test_per_sample_assignment_sends_each_point_to_its_group():
    a = torch.tensor([0, 1] * 200)
    got = _run(_guide([0.5, 0.5], 1.0, assignments=a), n=400)
    assert (got == a.float()).float().mean().item() > 0.97


def test_bad_input_is_one_line():
    sch = _sched()
    clf = ExactClassifier(sch.alphas_cumprod)
    with pytest.raises(FairdiffError, match="has 3 values"):
        ClassifierGuidance(clf, [0.3, 0.3, 0.4], [0.8, 0.2], 1.0, alphas_cumprod=sch.alphas_cumprod)
    with pytest.raises(FairdiffError, match="base shares"):
        ClassifierGuidance(clf, [0.5, 0.5], [1.0, 0.0], 1.0, alphas_cumprod=sch.alphas_cumprod)
    with pytest.raises(FairdiffError, match="finite"):
        ClassifierGuidance(clf, [0.5, 0.5], [0.8, 0.2], math.inf, alphas_cumprod=sch.alphas_cumprod)
    with pytest.raises(FairdiffError, match="assignments"):
        ClassifierGuidance(clf, [0.5, 0.5], [0.8, 0.2], 1.0, alphas_cumprod=sch.alphas_cumprod, assignments=[0, 2])


class CleanClassifier(nn.Module):
    """A smoothed ``log p(x0 | g)`` of the clean groups (std 1.5 around each mean: a classifier as sharp as the
    groups themselves, std 0.3, saturates on the blurred x0 of early steps and hardly moves the share toward the
    minority), plus an extra column (an open-set judge's other classes) that the guidance must leave out."""

    def __init__(self, extra: float = 0.0):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.extra = extra

    def forward(self, x0):
        d = x0[:, None, :] - MU[None].to(x0.dtype)
        c = -(d * d).sum(-1) / (2 * 1.5**2)
        return torch.cat([c, self.extra * x0[:, :1] ** 3], dim=1)


def _clean(target, scale, **kw):
    sch = _sched()
    return CleanClassifierGuidance(CleanClassifier(kw.pop("extra", 0.0)), target, RHO.tolist(), scale,
                                   alphas_cumprod=sch.alphas_cumprod, num_groups=2, **kw)


def test_clean_classifier_guidance_at_scale_zero_is_the_base():
    assert torch.equal(_run(_clean([0.5, 0.5], 0.0), n=500), _run(None, n=500))


def test_clean_classifier_guidance_moves_the_share_toward_the_target():
    shares = [_run(_clean([0.5, 0.5], s)).mean().item() for s in (0.0, 1.0, 4.0)]
    assert shares[0] == pytest.approx(0.2, abs=0.02)
    assert shares[0] + 0.05 < shares[1] < shares[2]  # toward the minority, more with the scale
    assert shares[2] == pytest.approx(0.5, abs=0.06)  # measured 0.531: no scale is exact, the controller finds one
    toward_majority = _run(_clean([0.95, 0.05], 1.0)).mean().item()
    assert toward_majority < shares[0] - 0.1


def test_clean_classifier_guidance_is_the_gradient_through_the_predicted_clean_image():
    """The guidance's correction divided by ``scale sqrt(1 - abar)`` equals a central finite difference of
    ``log w(x0(x_t))`` with x0 read through the denoiser (a nonlinear one), and extra logit columns change nothing."""
    abar = torch.tensor(0.4, dtype=torch.float64)
    acp = torch.full((1000,), 0.4, dtype=torch.float64)

    def denoise(x):
        return torch.tanh(x) * 0.7 + 0.1 * x ** 2

    x = torch.tensor([[0.3, -0.2], [1.1, 0.5], [-0.8, 0.9]], dtype=torch.float64)
    t = torch.tensor([500])
    g = CleanClassifierGuidance(CleanClassifier().double(), [0.5, 0.5], RHO.tolist(), 2.0, alphas_cumprod=acp,
                                num_groups=2)
    out = g(0, t, x, denoise)
    grad = (denoise(x) - out) / (2.0 * (1 - abar).sqrt())

    def log_w(xx):
        x0 = (xx - (1 - abar).sqrt() * denoise(xx)) / abar.sqrt()
        c = CleanClassifier().double()(x0)[:, :2]  # the group columns only
        pi, rho = torch.tensor([0.5, 0.5], dtype=torch.float64), RHO.double()
        return torch.logsumexp(c + pi.log(), 1) - torch.logsumexp(c + rho.log(), 1)

    h = 1e-6
    for j in range(2):
        e = torch.zeros_like(x)
        e[:, j] = h
        fd = (log_w(x + e) - log_w(x - e)) / (2 * h)
        torch.testing.assert_close(grad[:, j], fd, rtol=1e-3, atol=1e-4)  # the guidance works in float32
    g_extra = CleanClassifierGuidance(CleanClassifier(extra=5.0).double(), [0.5, 0.5], RHO.tolist(), 2.0,
                                      alphas_cumprod=acp, num_groups=2)
    torch.testing.assert_close(g_extra(0, t, x, denoise), out)
    assert g.describe()["kind"] == "clean classifier on the predicted x0"
