"""Alignment fine-tuning pieces: dynamic targets, OT, gradient scales, LoRA wrapping, config checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fairdiff.config import load_config
from fairdiff.errors import ConfigError
from fairdiff.methods.align import (
    chain_scales, dynamic_targets, joint_probs, ot_assignment, ot_targets, rank_targets, scale_grad,
)


def test_rank_targets_hand_case():
    p1 = np.array([0.9, 0.1, 0.6, 0.3])
    assert rank_targets(p1, 0.5).tolist() == [1, 0, 1, 0]  # the two least group-1-like images get 0
    assert rank_targets(p1, 0.25).tolist() == [1, 0, 0, 0]  # ceil(4 * 0.75) = 3 zeros
    assert rank_targets(p1, 1.0).tolist() == [1, 1, 1, 1]
    # five images, share 0.5: ceil(2.5) = 3 zeros
    assert rank_targets(np.array([0.5, 0.4, 0.3, 0.2, 0.1]), 0.5).tolist() == [1, 1, 0, 0, 0]


def test_ot_assignment_hand_case():
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    # one image per group: 0->0, 1->1, 2->2 costs -log(.7*.3*.8); swapping 0 and 1 costs -log(.2*.6*.8), larger
    assert ot_assignment(probs, np.array([1, 1, 1])).tolist() == [0, 1, 2]
    assert ot_assignment(probs, np.array([2, 1, 0])).tolist() == [0, 0, 1]
    with pytest.raises(ValueError):
        ot_assignment(probs, np.array([1, 1, 0]))


def test_ot_assignment_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(20):
        probs = rng.dirichlet(np.ones(3), size=5)
        counts = rng.multinomial(5, [0.4, 0.4, 0.2])
        got = ot_assignment(probs, counts)
        assert np.bincount(got, minlength=3).tolist() == counts.tolist()
        slots = np.repeat(np.arange(3), counts)
        best = min(-np.log(probs[np.arange(5), list(p)]).sum() for p in itertools.permutations(slots))
        assert -np.log(probs[np.arange(5), got]).sum() == pytest.approx(best)


def test_ot_targets_average_and_uncertainty():
    rng = np.random.default_rng(0)
    probs = np.array([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01], [0.34, 0.33, 0.33], [0.01, 0.01, 0.98]])
    labels, keep, unc = ot_targets(probs, np.array([1.0, 0.0, 0.0]), 5, rng)
    assert labels.tolist() == [0, 0, 0, 0] and keep.all() and np.allclose(unc, 0)  # every draw has counts [4,0,0]
    labels, keep, unc = ot_targets(probs, np.array([0.25, 0.25, 0.5]), 50, rng, threshold=0.2)
    assert labels[0] == 0 and labels[1] == 1 and labels[3] == 2  # confident images keep their own group
    assert np.array_equal(keep, unc <= 0.2 + 1e-12)
    assert unc[2] > unc[0]  # the ambiguous image is the least sure


def test_dynamic_targets_binary_uses_ranks_and_keeps_all():
    probs = np.array([[0.1, 0.9], [0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    labels, keep = dynamic_targets(probs, np.array([0.5, 0.5]))
    assert labels.tolist() == [1, 0, 1, 0] and keep.all()


def test_joint_probs():
    a = np.array([[0.2, 0.8]])
    b = np.array([[0.5, 0.25, 0.25]])
    j = joint_probs([a, b])
    assert j.shape == (1, 6)
    assert np.allclose(j, [[0.1, 0.05, 0.05, 0.4, 0.2, 0.2]])


def test_chain_scales_geometric_mean_one_and_formula():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    ts = torch.tensor([900, 600, 300, 1])
    c = chain_scales(abar.float(), ts)
    assert math.exp(float(c.double().log().mean())) == pytest.approx(1.0, abs=1e-5)
    raw = [float(abar[t].sqrt() * (1 - abar[t]).sqrt() / betas[t]) for t in ts.tolist()]
    gm = math.exp(sum(math.log(r) for r in raw) / len(raw))
    assert c.tolist() == pytest.approx([r / gm for r in raw], rel=1e-3)


def test_scale_grad():
    x = torch.ones(3, requires_grad=True)
    y = scale_grad(x * 2, 0.25)
    assert torch.equal(y, x * 2)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), 0.5))


def test_lora_wrap_and_merge_equal():
    from fairdiff.models import build_unet
    from fairdiff.models.lora import add_unet_lora, lora_parameter_count, merge_lora

    torch.manual_seed(0)
    unet = build_unet("tiny", 16, 1)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 500])
    before = unet(x, t).sample
    wrapped = add_unet_lora(unet, ["conv1", "conv2", "to_q"], 4, 8.0)
    trainable, total = lora_parameter_count(wrapped)
    assert 0 < trainable < total / 10
    assert torch.equal(wrapped(x, t).sample, before)  # adapters start as a no-op
    for p in wrapped.parameters():
        if p.requires_grad:
            p.data.add_(0.01)
    after = wrapped(x, t).sample
    merged = merge_lora(wrapped)
    assert type(merged).__name__ == "UNet2DModel"
    assert not any("lora" in k for k in merged.state_dict())
    assert torch.allclose(merged(x, t).sample, after, atol=1e-5)
    with pytest.raises(ConfigError):
        add_unet_lora(build_unet("tiny", 16, 1), ["nope"], 4, 8.0)


@pytest.mark.parametrize("overrides, needle", [
    (["method.name=align"], "model.pretrained"),
    (["model.lora=true"], "model.pretrained"),
    (["method.name=align", "model.pretrained=x", "method.uncertainty_threshold=2"], "uncertainty_threshold"),
    (["method.name=align", "model.pretrained=x", "model.conditional=true"], "unconditional"),
])
def test_align_config_errors(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


def _spied_align_loss(monkeypatch, k: int, target: list[float]):
    """One AlignObjective loss on random images with k groups, the two target rules spied on."""
    import fairdiff.methods.align as align_mod
    from fairdiff.methods.align import AlignObjective
    from fairdiff.methods.base import DataInfo
    from fairdiff.models import build_noise_scheduler, build_unet

    calls: dict[str, list] = {"ot": [], "rank": []}
    ot, rank = align_mod.ot_targets, align_mod.rank_targets

    def ot_spy(probs, *a, **kw):
        out = ot(probs, *a, **kw)
        calls["ot"].append((np.array(probs), out))
        return out

    def rank_spy(p1, share1):
        out = rank(p1, share1)
        calls["rank"].append((np.array(p1), out))
        return out

    monkeypatch.setattr(align_mod, "ot_targets", ot_spy)
    monkeypatch.setattr(align_mod, "rank_targets", rank_spy)
    torch.manual_seed(0)
    unet = build_unet("tiny", 16, 1)
    images = torch.rand(60, 1, 16, 16) * 2 - 1
    groups = torch.arange(60) % k
    obj = AlignObjective(target=target, steps=3, classifier_steps=5, draws=4)
    obj.setup(DataInfo(k, [60 // k] * k, (1, 16, 16)))
    facts = obj.prepare(unet, images, groups)
    out = obj.loss(unet, {"pixel_values": images[:8]}, build_noise_scheduler(), torch.Generator().manual_seed(1))
    return unet, obj, facts, out, calls


def test_align_loss_three_groups_uses_ot_and_reaches_the_unet(monkeypatch):
    """K = 3 (e.g. a joint attribute): OT targets (spied on; the rank rule is never asked), the loss is the
    cross-entropy toward exactly the OT labels over the images OT keeps, gradients on the U-Net, none on the
    frozen copy."""
    unet, obj, facts, out, calls = _spied_align_loss(monkeypatch, 3, [0.5, 0.25, 0.25])
    assert facts["kind"] == "align-cnn" and len(facts["train_accuracy_per_group"]) == 3
    assert len(calls["ot"]) == 1 and calls["rank"] == []
    probs, (labels, keep, _) = calls["ot"][0]
    assert probs.shape == (8, 3) and keep.any()
    assert out.parts["kept"] == pytest.approx(keep.mean())
    ce_by_hand = -np.log(probs[np.arange(8), labels])[keep].mean()  # toward the OT labels, kept images only
    assert float(out.parts["align_ce"]) == pytest.approx(ce_by_hand, rel=1e-4)
    assert torch.isfinite(out.total)
    assert {"align_ce", "preserve", "kept", "gen_share_2"} <= set(out.parts)
    assert out.parts["preserve"] == pytest.approx(0.0, abs=1e-5)  # nothing fine-tuned yet: same images as frozen
    out.total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.parameters())
    assert all(p.grad is None for p in obj.frozen.parameters())


def test_align_loss_two_groups_uses_rank_targets(monkeypatch):
    """The contrast: with two groups the rank rule gives the labels (OT is never asked) and every image is kept."""
    _, _, _, out, calls = _spied_align_loss(monkeypatch, 2, [0.5, 0.5])
    assert calls["ot"] == [] and len(calls["rank"]) == 1
    p1, labels = calls["rank"][0]
    assert labels.tolist() == rank_targets(p1, 0.5).tolist() and labels.sum() == 4  # half of 8 toward group 1
    assert out.parts["kept"] == 1.0
    p = np.stack([1 - p1, p1], 1)
    assert float(out.parts["align_ce"]) == pytest.approx(-np.log(p[np.arange(8), labels]).mean(), rel=1e-4)
