"""tiw math: the density ratio, its input gradient, the corrected target and the batch weights.

The sign check uses Gaussian mixtures, where the forward process keeps everything closed-form: a component
N(mu, s^2 I) of x_0 becomes N(sqrt(abar) mu, ((1 - abar) + abar s^2) I) at time t, so p_bias^t, p_ref^t, the
true ratio w_t and the true reference noise prediction eps*_ref = -sqrt(1 - abar) grad log p_ref^t are exact.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fairdiff.methods.tiw import batch_weights, corrected_eps_target, density_ratio, log_ratio_and_grad
from fairdiff.models import build_noise_scheduler


class Mixture:
    """Isotropic Gaussian mixture in D dimensions, pushed through the forward process in closed form."""

    def __init__(self, means: torch.Tensor, std: float, weights: list[float]) -> None:
        self.means, self.std = means.double(), float(std)
        self.logw = torch.log(torch.tensor(weights, dtype=torch.float64))

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        comp = torch.multinomial(self.logw.exp(), n, replacement=True, generator=gen)
        x = self.means[comp] + self.std * torch.randn(n, self.means.shape[1], generator=gen, dtype=torch.float64)
        return x, comp

    def log_prob_t(self, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """log p^t(x) for x ``[B, D]`` at per-sample abar ``[B]``."""
        x = x.double()
        abar = abar.double().view(-1, 1)
        var = (1 - abar) + abar * self.std**2  # [B, 1]
        d = x.shape[1]
        diff = x[:, None, :] - abar.sqrt()[:, None, :] * self.means[None]  # [B, K, D]
        lp = -0.5 * (diff**2).sum(-1) / var - 0.5 * d * torch.log(2 * math.pi * var)
        return torch.logsumexp(lp + self.logw[None], dim=1)


class TrueLogRatio(nn.Module):
    """A 'discriminator' whose logit is the exact log p_ref^t - log p_bias^t."""

    def __init__(self, ref: Mixture, bias: Mixture, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.ref, self.bias, self.abar = ref, bias, alphas_cumprod.double()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar[t]
        return (self.ref.log_prob_t(x, a) - self.bias.log_prob_t(x, a)).to(x.dtype)


def true_eps(mix: Mixture, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """eps*(x_t) = -sqrt(1 - abar) grad log p^t(x_t), by autograd through the exact density."""
    x = x.detach().double().requires_grad_(True)
    (g,) = torch.autograd.grad(mix.log_prob_t(x, abar).sum(), x)
    return -(1 - abar.double()).sqrt().view(-1, 1) * g


def _mixtures(dim: int) -> tuple[Mixture, Mixture]:
    # overlapping components, so that grad log w_t is not negligible where the data lies
    if dim == 1:
        means = torch.tensor([[-1.0], [1.0]])
    else:
        means = torch.tensor([[-0.8, -0.6], [0.8, 0.6]])
    return Mixture(means, 0.6, [0.8, 0.2]), Mixture(means, 0.6, [0.5, 0.5])


def test_density_ratio_is_d_over_one_minus_d_and_stable():
    logits = torch.tensor([-6.0, -1.0, 0.0, 0.5, 3.0])
    d = torch.sigmoid(logits.double())
    assert torch.allclose(density_ratio(logits).double(), d / (1 - d), rtol=1e-5)
    big = density_ratio(torch.tensor([500.0, -500.0]))
    assert torch.isfinite(big).all() and big[1] == 0.0


def test_batch_weights_self_normalised_clipped_and_shift_invariant():
    lw = torch.tensor([-3.0, 0.0, 1.0, 4.0])
    w = batch_weights(lw)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(w, lw.exp() / lw.exp().mean())
    assert torch.allclose(batch_weights(lw + 7.5), w, atol=1e-6)  # overall calibration does not matter
    wc = batch_weights(lw, clip=2.0)  # ratio clipped to [1/2, 2] before normalising
    raw = lw.exp().clamp(0.5, 2.0)
    assert torch.allclose(wc, raw / raw.mean(), atol=1e-6)
    assert wc.max() / wc.min() <= 4.0 + 1e-5
    big = batch_weights(torch.tensor([1000.0, 0.0]))
    assert torch.isfinite(big).all() and big[0].item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        batch_weights(lw, clip=0.5)


def test_log_ratio_grad_matches_analytic_and_leaves_parameters_alone():
    lin = nn.Linear(3, 1)

    class D(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x, t):
            return self.lin(x).squeeze(1) + 0.5 * (x**2).sum(1)

    x = torch.randn(5, 3)
    logit, grad = log_ratio_and_grad(D(), x, torch.zeros(5, dtype=torch.long))
    assert torch.allclose(grad, lin.weight.detach().expand(5, 3) + x, atol=1e-6)
    assert not logit.requires_grad and not grad.requires_grad
    assert lin.weight.grad is None


def test_corrected_target_formula():
    noise = torch.randn(4, 2)
    g = torch.randn(4, 2)
    abar = torch.tensor([0.99, 0.5, 0.1, 0.0])
    tgt = corrected_eps_target(noise, g, abar)
    assert torch.allclose(tgt, noise - (1 - abar).sqrt()[:, None] * g)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("t", [30, 150, 400])
def test_corrected_target_has_the_reference_noise_prediction_as_its_mean(dim, t):
    """E[eps - sqrt(1-abar) grad log w_t(x_t) | x_t] = eps*_ref(x_t) for x_t from the *biased* data.

    Checked with test functions g = indicators of bins along the axis between the modes: the per-bin mean of
    the residual (target - eps*_ref(x_t)) must be zero within sampling error, and the opposite sign must fail.
    """
    bias, ref = _mixtures(dim)
    sched = build_noise_scheduler(1000, "linear")
    abar_all = sched.alphas_cumprod.double()
    gen = torch.Generator().manual_seed(dim * 1000 + t)
    n = 200_000
    x0, _ = bias.sample(n, gen)
    eps = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.long)
    abar = abar_all[tt]
    xt = abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * eps
    log_w, grad = log_ratio_and_grad(TrueLogRatio(ref, bias, abar_all), xt, tt)
    eps_ref = true_eps(ref, xt, abar)
    axis = (bias.means[1] - bias.means[0]) / (bias.means[1] - bias.means[0]).norm()
    proj = xt @ axis
    edges = torch.linspace(-3.0, 3.0, 25, dtype=torch.float64)
    w = batch_weights(log_w)

    def worst_z(target: torch.Tensor, weighted: bool) -> float:
        r = (target.double() - eps_ref) @ axis  # residual along the axis where the two targets differ
        zs = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (proj >= lo) & (proj < hi)
            if m.sum() < 400:
                continue
            rw = r[m] * (w[m].double() if weighted else 1.0)
            norm = w[m].double().mean() if weighted else 1.0
            zs.append(abs(rw.mean() / norm) / (rw.std() / norm / math.sqrt(m.sum())))
        assert len(zs) >= 6
        return max(zs)

    good = corrected_eps_target(eps, grad, abar)
    z_good, z_good_w = worst_z(good, weighted=False), worst_z(good, weighted=True)
    wrong = eps + (1 - abar).sqrt()[:, None] * grad  # the opposite sign
    z_wrong, z_plain = worst_z(wrong, weighted=False), worst_z(eps, weighted=False)  # eps: no correction
    print(f"dim {dim} t {t}: worst |z| corrected {z_good:.2f} (weighted {z_good_w:.2f}), "
          f"opposite sign {z_wrong:.1f}, uncorrected {z_plain:.1f}")
    assert z_good < 4.5
    assert z_good_w < 4.5  # the weight is a function of x_t: the conditional mean is unchanged
    assert z_wrong > 10.0
    assert z_plain > 5.0


@pytest.mark.parametrize("t", [0, 200, 600])
def test_weights_turn_biased_marginal_into_reference_marginal(t):
    """E_bias[w_t 1{x_t on the minority side}] = P_ref^t(minority side) (0.5 by symmetry here)."""
    bias, ref = _mixtures(2)
    abar_all = build_noise_scheduler(1000, "linear").alphas_cumprod.double()
    gen = torch.Generator().manual_seed(t + 7)
    n = 100_000
    x0, _ = bias.sample(n, gen)
    tt = torch.full((n,), t, dtype=torch.long)
    a = abar_all[tt]
    xt = a.sqrt()[:, None] * x0 + (1 - a).sqrt()[:, None] * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    log_w = TrueLogRatio(ref, bias, abar_all)(xt, tt)
    side = (xt @ (bias.means[1] - bias.means[0]) > 0).double()
    w = density_ratio(log_w).double()
    assert w.mean().item() == pytest.approx(1.0, abs=0.03)  # E_bias[w] = 1 for the exact ratio
    assert (w * side).mean().item() == pytest.approx(0.5, abs=0.02)
    if t == 0:  # unweighted: the biased side share 0.8 Phi(-|mu|/s) + 0.2 Phi(|mu|/s), |mu| = 1, s = 0.6
        phi = 0.5 * (1 + math.erf(-1.0 / 0.6 / math.sqrt(2)))
        assert side.mean().item() == pytest.approx(0.8 * phi + 0.2 * (1 - phi), abs=0.01)


class _Quadratic(nn.Module):
    """logit = a * sum(x) + b * sum(x^2) + c * t / 1000, with its inputs recorded."""

    def __init__(self):
        super().__init__()
        self.seen_t: list[torch.Tensor] = []

    def forward(self, x, t):
        self.seen_t.append(t.clone())
        return 0.3 * x.flatten(1).sum(1) - 0.1 * x.flatten(1).pow(2).sum(1) + 0.5 * t.float() / 1000


def test_tiw_and_iw_objectives_use_the_ratio_as_derived():
    from fairdiff.methods.tiw import IWObjective, TIWObjective

    sched = build_noise_scheduler(1000, "linear")
    x0 = torch.randn(6, 1, 4, 4)
    noise = torch.randn(6, 1, 4, 4)
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    noisy = sched.add_noise(x0, noise, t)
    tiw, iw = TIWObjective(weight_clip=None), IWObjective(weight_clip=None)
    tiw.discriminator, iw.discriminator = _Quadratic(), _Quadratic()

    w, target, log_w = tiw.weights_and_target(x0, noisy, noise, t, sched)
    grad = 0.3 - 0.2 * noisy  # d logit / dx
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(target, noise - (1 - abar).sqrt() * grad, atol=1e-5)
    assert torch.allclose(log_w, tiw.discriminator(noisy, t), atol=1e-5)
    assert torch.allclose(w, batch_weights(log_w), atol=1e-6)

    w, target, log_w = iw.weights_and_target(x0, noisy, noise, t, sched)
    assert torch.equal(target, noise)  # no correction
    assert torch.equal(iw.discriminator.seen_t[0], torch.zeros(6, dtype=torch.long))  # the ratio at t = 0
    assert torch.allclose(log_w, iw.discriminator(x0, torch.zeros(6, dtype=torch.long)), atol=1e-6)  # on clean x0
