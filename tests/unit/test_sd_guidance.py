"""Distribution guidance as the SD path uses it, alone (no pipeline): its checks, the h edit touching only the
conditional branch (the last rows of a classifier-free-guidance batch), and the x_t direction lowering the loss."""

from __future__ import annotations

import pytest
import torch

from fairdiff.errors import FairdiffError
from fairdiff.methods.guidance import DistributionGuidance
from fairdiff.models.heads import GuidanceHeads, HeadsConfig


ABAR = torch.linspace(0.99, 0.01, 1000)


def SDDistributionGuidance(heads, target, scale, **kw):  # noqa: N802 - the settings sd_guidance uses
    kw.setdefault("mode", "x")
    return DistributionGuidance(heads, target, scale, temperature=1.0, alphas_cumprod=ABAR, guide_first_step=True,
                                **kw)


def _heads(attrs=None, h_shape=(4, 2, 2)) -> GuidanceHeads:
    heads = GuidanceHeads.from_spec(HeadsConfig(attrs or {"group": 2}, 3, "ddim", [900, 500, 100], "mean",
                                                list(h_shape), "generated"))
    torch.manual_seed(0)
    with torch.no_grad():
        for bank in heads.banks.values():
            bank.weight.normal_()
    return heads.eval().requires_grad_(False)


def test_checks_are_one_line_errors():
    heads = _heads()
    with pytest.raises(FairdiffError, match="has 3 values"):
        SDDistributionGuidance(heads, "0.2,0.3,0.5", 1.0)
    with pytest.raises(FairdiffError, match="sums to"):
        SDDistributionGuidance(heads, "0.5,0.2", 1.0)
    with pytest.raises(FairdiffError, match="mode"):
        SDDistributionGuidance(heads, "0.5,0.5", 1.0, mode="z")
    with pytest.raises(FairdiffError, match="scale"):
        SDDistributionGuidance(heads, "0.5,0.5", float("nan"))
    with pytest.raises(FairdiffError, match="several attributes"):
        SDDistributionGuidance(_heads({"a": 2, "b": 2}), "0.5,0.5", 1.0)
    g = SDDistributionGuidance(heads, "0.5,0.5", 1.0)
    g.check_schedule([900, 500, 100])
    with pytest.raises(FairdiffError, match="--steps 3"):
        g.check_schedule([900, 100])
    with pytest.raises(FairdiffError, match="h-space"):
        g.check_h(torch.zeros(2, 8, 2, 2))
    assert not SDDistributionGuidance(heads, "0.5,0.5", 0.0).active and g.active


def test_h_edit_moves_only_the_conditional_half_and_lowers_the_loss():
    heads = _heads()
    g = SDDistributionGuidance(heads, "0.1,0.9", 0.5, mode="h")
    h = torch.randn(6, 4, 2, 2)
    out = g._edit(h, 1, rows=3)
    assert torch.equal(out[:3], h[:3]) and not torch.equal(out[3:], h[3:])
    before = float(g.loss_of(h[3:], 1))
    after = float(g.loss_of(out[3:], 1))
    assert after < before
    with pytest.raises(FairdiffError, match="h-space"):  # heads of another U-Net: one line, not a shape error
        g._edit(torch.randn(4, 8, 2, 2), 1, rows=2)


def test_x_direction_lowers_the_loss_of_a_differentiable_h():
    heads = _heads()
    g = SDDistributionGuidance(heads, "0.9,0.1", 1.0)
    proj = torch.nn.Conv2d(3, 4, 1)  # a stand-in for the down path: x -> h
    x = torch.randn(5, 3, 2, 2, requires_grad=True)
    (grad,) = torch.autograd.grad(g.loss_of(proj(x), 0), x)
    # the sampler adds s * sqrt(1 - abar) * grad to eps, i.e. moves x_0's estimate by about -grad: loss falls
    x2 = (x - 0.05 * grad).detach()
    with torch.no_grad():
        assert float(g.loss_of(proj(x2), 0)) < float(g.loss_of(proj(x.detach()), 0))
    shift = g.eps_shift(grad, torch.tensor(0.75))
    assert torch.allclose(shift, 0.5 * grad)
