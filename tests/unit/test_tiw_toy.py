"""The "done when" toy: a 2-D two-component Gaussian mixture at 0.8/0.2 with a reference set at 0.5/0.5.

Everything is closed-form under the forward process (a component N(mu, s^2 I) becomes
N(sqrt(abar) mu, ((1 - abar) + abar s^2) I)), so the learned discriminator's log ratio can be compared with the
true one at several t, and a small MLP score model trained with the tiw loss (fairdiff's objective, the real
discriminator fit) must generate the components at 0.5/0.5 while the same model trained plainly stays at 0.8/0.2.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from fairdiff.methods import BaselineObjective, DataInfo
from fairdiff.methods.tiw import TIWObjective
from fairdiff.models import build_noise_scheduler
from fairdiff.models.discriminator import NoiseAwareDiscriminator, timestep_embedding
from fairdiff.training.discriminator import calibration, fit_discriminator

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
STD = 0.5
BIAS, REF = [0.8, 0.2], [0.5, 0.5]


def sample_mixture(n: int, weights: list[float], gen: torch.Generator, exact: bool = False) -> torch.Tensor:
    """n points; ``exact``: exactly round(n * weight) from each component (as data.reference draws)."""
    if exact:
        comp = torch.cat([torch.full((round(n * w),), k) for k, w in enumerate(weights)])
    else:
        comp = torch.multinomial(torch.tensor(weights), n, replacement=True, generator=gen)
    return MEANS[comp] + STD * torch.randn(len(comp), 2, generator=gen)


def log_prob_t(x: torch.Tensor, weights: list[float], abar: torch.Tensor) -> torch.Tensor:
    var = (1 - abar) + abar * STD**2
    diff = x[:, None, :] - abar.sqrt() * MEANS[None]
    lp = -0.5 * (diff**2).sum(-1) / var - torch.log(2 * math.pi * var)
    return torch.logsumexp(lp + torch.log(torch.tensor(weights))[None], dim=1)


class ScoreMLP(nn.Module):
    """eps_theta(x_t, t) for 2-D points; returns an object with ``.sample`` like a diffusers U-Net."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + 64, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))

    def forward(self, x, t, class_labels=None):
        out = self.net(torch.cat([x, timestep_embedding(t.reshape(-1), 64)], dim=1))
        return type("Out", (), {"sample": out})()


def train_score(objective, data: torch.Tensor, sched, steps: int = 2000, batch: int = 512, seed: int = 0):
    torch.manual_seed(seed)
    net = ScoreMLP()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(data), (batch,), generator=gen)
        out = objective.loss(net, {"pixel_values": data[idx]}, sched, gen)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        lr.step()
    return net.eval()


@torch.no_grad()
def generate(net, sched, n: int = 4000, steps: int = 100, seed: int = 1) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from N(0, I)."""
    abar = sched.alphas_cumprod
    ts = torch.linspace(sched.config.num_train_timesteps - 1, 0, steps).round().long()
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))
    for i, t in enumerate(ts):
        a = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        eps = net(x, t.repeat(n)).sample
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return c - h, c + h


def test_toy_mixture_ratio_and_generated_shares():
    start = time.time()
    torch.set_num_threads(1)
    sched = build_noise_scheduler(1000, "linear")
    gen = torch.Generator().manual_seed(0)
    biased = sample_mixture(8000, BIAS, gen, exact=True)
    reference = sample_mixture(400, REF, gen, exact=True)  # small, unlabeled, drawn at 0.5/0.5 (5 % of the data)

    # ---- the discriminator: learned log ratio vs the true one at several t
    tiw = TIWObjective(width=128, weight_clip=20.0)
    tiw.setup(DataInfo(2, [0, 0], (2,)))
    torch.manual_seed(0)
    tiw.discriminator = NoiseAwareDiscriminator((2,), 128, depth=3)  # the MLP body, one layer deeper
    fit_discriminator(tiw.discriminator, reference, biased, sched, steps=1000, batch_size=512, lr=2e-3,
                      weight_decay=1e-4, seed=0)
    t_disc = time.time() - start
    errs = {}
    for t in (0, 100, 300, 600):
        x0 = sample_mixture(4000, BIAS, gen)
        tt = torch.full((4000,), t)
        a = sched.alphas_cumprod[t]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(4000, 2, generator=gen)
        true = log_prob_t(xt, REF, a) - log_prob_t(xt, BIAS, a)
        with torch.no_grad():
            learned = tiw.discriminator(xt, tt)
        errs[t] = (learned - true).abs().mean().item()
        side = (xt[:, 0] > 0).float()
        w = learned.exp()
        print(f"t={t}: mean |log w learned - log w true| = {errs[t]:.3f}; true log w at the modes "
              f"{math.log(0.5 / 0.8):.3f} / {math.log(0.5 / 0.2):.3f}; reweighted minority share "
              f"{(w * side).mean().item() / w.mean().item():.3f} (true 0.5)")
    cal = calibration(tiw.discriminator, sample_mixture(2000, REF, gen), sample_mixture(2000, BIAS, gen), sched)
    print("calibration E_bias[w] per bucket:", [r["mean_w_biased"] for r in cal["buckets"]],
          "ECE:", [r["ece"] for r in cal["buckets"]])

    # ---- score models: plain vs tiw, same data, same seed, same budget
    plain_net = train_score(BaselineObjective(), biased, sched)
    t_plain = time.time() - start
    tiw_net = train_score(tiw, biased, sched)
    t_tiw = time.time() - start
    n = 4000
    shares = {}
    for name, net in (("plain", plain_net), ("tiw", tiw_net)):
        x = generate(net, sched, n)
        k = int((x[:, 0] > 0).sum())
        lo, hi = wilson(k, n)
        on_modes = ((x[:, None, :] - MEANS[None]).norm(dim=-1).min(1).values < 4 * STD).float().mean().item()
        shares[name] = (k / n, lo, hi)
        print(f"{name}: minority share {k / n:.3f} (95 % CI {lo:.3f}-{hi:.3f}), on a mode {on_modes:.3f}")
        assert on_modes > 0.97  # the samples are the mixture's components, not noise
    print(f"toy test took {time.time() - start:.1f} s (discriminator {t_disc:.1f}, plain until {t_plain:.1f}, "
          f"tiw until {t_tiw:.1f})")

    # the learned ratio matches the true one: mean absolute log-ratio error below 0.1 at every t (measured
    # 0.02-0.05; the true log ratio spans -0.47 .. +0.92 at t = 0)
    assert all(e < 0.1 for e in errs.values()), errs
    assert all(abs(r["mean_w_biased"] - 1.0) < 0.1 for r in cal["buckets"])
    # plain training stays near the data's 0.2; tiw reaches 0.5 (the CI of its share holds 0.5)
    assert abs(shares["plain"][0] - 0.2) < 0.04 and shares["plain"][2] < 0.3
    assert shares["tiw"][1] <= 0.5 <= shares["tiw"][2], shares
