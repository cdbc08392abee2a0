"""DDM variants (docs/ddm-analysis.md): each loss against a hand computation, and what each does to the gradient."""

from __future__ import annotations

import math

import pytest
import torch

from fairdiff.errors import ConfigError
from fairdiff.methods import BaselineObjective, DataInfo
from fairdiff.methods.ddm import DDMObjective, balanced_ce_weights, reverse_grad
from fairdiff.models import build_noise_scheduler, build_unet
from fairdiff.utils.seed import make_generator

LOGITS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 3.0]])
GROUPS = torch.tensor([0, 1, 0, 1])
T = torch.tensor([10, 500, 900, 100])


def _ce_by_hand() -> list[float]:
    # -log softmax(logits)[group], written out
    return [
        -(2 - math.log(math.exp(2) + 1)),
        -(1 - math.log(1 + math.e)),
        math.log(2.0),
        -(3 - math.log(1 + math.exp(3))),
    ]


def _objective(**kw) -> DDMObjective:
    obj = DDMObjective(alpha=0.5, widths=[8], **kw)
    obj.setup(DataInfo(2, [3, 1], (1, 16, 16)))
    return obj


def test_default_is_the_published_cross_entropy():
    ce = _ce_by_hand()
    assert _objective().indicator_loss(LOGITS, GROUPS, T).item() == pytest.approx(sum(ce) / 4, rel=1e-6)


def test_balanced_weights_and_loss_by_hand():
    w = balanced_ce_weights([3, 1])  # shares 0.75 / 0.25 -> 1/(2*0.75), 1/(2*0.25)
    assert w.tolist() == pytest.approx([2 / 3, 2.0])
    assert (torch.tensor([0.75, 0.25]) * w).sum().item() == pytest.approx(1.0)
    ce = _ce_by_hand()
    want = (2 / 3 * ce[0] + 2 * ce[1] + 2 / 3 * ce[2] + 2 * ce[3]) / 4
    got = _objective(indicator_ce="balanced").indicator_loss(LOGITS, GROUPS, T).item()
    assert got == pytest.approx(want, rel=1e-6)


def test_timestep_window_by_hand():
    ce = _ce_by_hand()
    got = _objective(t_max=200).indicator_loss(LOGITS, GROUPS, T).item()  # t = 10 and 100 count
    assert got == pytest.approx((ce[0] + ce[3]) / 4, rel=1e-6)
    got = _objective(t_min=400, t_max=1000, indicator_ce="balanced").indicator_loss(LOGITS, GROUPS, T).item()
    assert got == pytest.approx((2 * ce[1] + 2 / 3 * ce[2]) / 4, rel=1e-6)


def test_bad_variant_options_are_config_errors():
    for kw in ({"indicator_ce": "focal"}, {"indicator_grad": "up"}, {"t_min": 5, "t_max": 5}, {"t_min": -1}):
        with pytest.raises(ConfigError):
            DDMObjective(**kw)


def _unet_grads(objective, seed=0):
    torch.manual_seed(seed)
    unet = build_unet("tiny", 16, 1)
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    batch = {"pixel_values": x, "group": torch.tensor([0, 1, 0, 0, 1, 0])}
    torch.manual_seed(1)
    objective.setup(DataInfo(2, [4, 2], (1, 16, 16)))
    out = objective.loss(unet, batch, build_noise_scheduler(), make_generator(0, "noise", 0))
    out.total.backward()
    return [p.grad.clone() for p in unet.parameters()], objective


def test_detached_indicator_leaves_the_baseline_gradient():
    g_base, _ = _unet_grads(BaselineObjective())
    g_det, obj = _unet_grads(DDMObjective(alpha=0.3, widths=[16], indicator_grad="detach"))
    for a, b in zip(g_base, g_det):
        torch.testing.assert_close(0.7 * a, b, rtol=1e-5, atol=1e-7)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.indicator.parameters())


def test_gradient_reversal_flips_the_indicator_gradient_at_the_denoiser():
    # indicator term alone (reconstruction weight 0): the U-Net's gradient changes sign, the indicator's does not
    g_coop, o_coop = _unet_grads(DDMObjective(alpha=1.0, reconstruction_weight=0.0, widths=[16]))
    rev = DDMObjective(alpha=1.0, reconstruction_weight=0.0, widths=[16], indicator_grad="reverse")
    g_rev, o_rev = _unet_grads(rev)
    assert sum(float(g.abs().sum()) for g in g_coop) > 0
    for a, b in zip(g_coop, g_rev):
        torch.testing.assert_close(b, -a, rtol=1e-5, atol=1e-8)
    for pa, pb in zip(o_coop.indicator.parameters(), o_rev.indicator.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-8)


def test_reverse_grad_is_identity_forward():
    x = torch.randn(3, requires_grad=True)
    y = reverse_grad(x)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [-1.0, -2.0, -3.0]
