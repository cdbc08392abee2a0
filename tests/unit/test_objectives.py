import numpy as np
import pytest
import torch

from fairdiff.data.clusters import cluster_agreement, cluster_groups
from fairdiff.data.sources import make_synthetic
from fairdiff.methods import BaselineObjective, DataInfo, build_objective
from fairdiff.methods.ddm import DDMObjective
from fairdiff.errors import ConfigError
from fairdiff.methods.reweight import ReweightObjective, group_weights
from fairdiff.models import build_noise_scheduler, build_unet
from fairdiff.utils.seed import make_generator


def _setup(seed=0, b=6):
    torch.manual_seed(seed)
    unet = build_unet("tiny", 16, 1)
    x = torch.rand(b, 1, 16, 16) * 2 - 1
    batch = {"pixel_values": x, "group": torch.tensor([0, 1, 0, 0, 1, 0][:b])}
    return unet, batch, build_noise_scheduler()


def _grads(unet):
    return [p.grad.clone() for p in unet.parameters()]


def test_ddm_alpha_zero_equals_baseline_loss_and_grads():
    unet, batch, ns = _setup()
    info = DataInfo(2, [4, 2], (1, 16, 16))
    base = BaselineObjective()
    base.setup(info)
    out_b = base.loss(unet, batch, ns, make_generator(0, "noise", 0))
    out_b.total.backward()
    g_b = _grads(unet)
    unet.zero_grad()
    ddm = DDMObjective(alpha=0.0)
    ddm.setup(info)
    out_d = ddm.loss(unet, batch, ns, make_generator(0, "noise", 0))
    out_d.total.backward()
    assert torch.equal(out_b.total, out_d.total)
    for a, b in zip(g_b, _grads(unet)):
        assert torch.equal(a, b)


def test_ddm_loss_is_weighted_sum_and_indicator_gradient_reaches_denoiser():
    unet, batch, ns = _setup()
    ddm = DDMObjective(alpha=0.3)
    ddm.setup(DataInfo(2, [4, 2], (1, 16, 16)))
    out = ddm.loss(unet, batch, ns, make_generator(0, "noise", 0))
    expected = 0.7 * out.parts["denoise"] + 0.3 * out.parts["indicator"]
    assert torch.allclose(out.total.detach(), expected)
    # gradient of the indicator term alone flows into the U-Net (eps_hat is not detached)
    ddm2 = DDMObjective(alpha=1.0, reconstruction_weight=0.0)
    ddm2.setup(DataInfo(2, [4, 2], (1, 16, 16)))
    unet.zero_grad()
    ddm2.loss(unet, batch, ns, make_generator(0, "noise", 0)).total.backward()
    gnorm = sum(float(p.grad.abs().sum()) for p in unet.parameters() if p.grad is not None)
    assert gnorm > 0
    assert all(p.grad is not None for p in ddm2.indicator.parameters())


def test_ddm_x0_input_and_shapes():
    unet, batch, ns = _setup()
    ddm = DDMObjective(alpha=0.1, widths=[32], indicator_input="x0")
    ddm.setup(DataInfo(3, [2, 2, 2], (1, 16, 16)))
    batch["group"] = torch.tensor([0, 1, 2, 0, 1, 2])
    out = ddm.loss(unet, batch, ns, make_generator(1))
    assert out.total.ndim == 0 and torch.isfinite(out.total)
    assert ddm.indicator.config == {"in_features": 256, "num_classes": 3, "widths": [32]}


def test_reweight_weights_match_hand_computation():
    w = group_weights([80, 20])
    np.testing.assert_allclose(w, [0.5 / 0.8, 0.5 / 0.2])  # 0.625, 2.5
    assert (np.array([0.8, 0.2]) * w).sum() == pytest.approx(1.0)
    w2 = group_weights([30, 10, 60], [0.75, 0.25, 0.0])
    np.testing.assert_allclose(w2, [0.75 / 0.3, 0.25 / 0.1, 0.0])


def test_reweight_loss_weights_samples():
    unet, batch, ns = _setup()
    rw = ReweightObjective()
    rw.setup(DataInfo(2, [80, 20], (1, 16, 16)))
    base = BaselineObjective()
    per, _, _, _ = base.per_sample_denoise(unet, batch, ns, make_generator(0))
    out = rw.loss(unet, batch, ns, make_generator(0))
    w = torch.tensor([0.625, 2.5])[batch["group"]]
    assert torch.allclose(out.total, (w * per).mean(), atol=1e-6)


def test_reweight_resample_draws_the_weights_and_leaves_the_loss_plain():
    unet, batch, ns = _setup()
    groups = torch.tensor([0] * 80 + [1] * 20)
    assert ReweightObjective().draw_probabilities(groups) is None  # weights mode: the trainer's epochs
    rs = ReweightObjective(balance="resample")
    rs.setup(DataInfo(2, [80, 20], (1, 16, 16)))
    p = rs.draw_probabilities(groups)
    # w = [0.625, 2.5]; sum over images 80 * 0.625 + 20 * 2.5 = 100: each zero 0.00625, each one 0.025
    np.testing.assert_allclose(p[:80], 0.00625)
    np.testing.assert_allclose(p[80:], 0.025)
    assert p[:80].sum() == pytest.approx(0.5) and p.sum() == pytest.approx(1.0)
    skew = ReweightObjective([0.3, 0.7], balance="resample")
    skew.setup(DataInfo(2, [80, 20], (1, 16, 16)))
    assert skew.draw_probabilities(groups)[:80].sum() == pytest.approx(0.3)
    base = BaselineObjective().loss(unet, batch, ns, make_generator(0)).total
    assert torch.allclose(rs.loss(unet, batch, ns, make_generator(0)).total, base, atol=1e-7)
    with pytest.raises(ConfigError, match="balance"):
        ReweightObjective(balance="both")


def test_drawn_indices_follow_the_probabilities_and_the_position():
    from fairdiff.training.batches import drawn_indices

    p = np.array([0.1, 0.2, 0.7])
    a = drawn_indices(p, 64, 3, seed=5)
    assert a.dtype == np.int64 and a.shape == (64,) and a.min() >= 0 and a.max() <= 2
    np.testing.assert_array_equal(a, drawn_indices(p, 64, 3, seed=5))  # resumable: (seed, position) alone
    assert not np.array_equal(a, drawn_indices(p, 64, 4, seed=5))
    many = np.concatenate([drawn_indices(p, 500, pos, seed=0) for pos in range(40)])  # 20,000 draws
    freq = np.bincount(many, minlength=3) / len(many)
    np.testing.assert_allclose(freq, p, atol=0.015)  # 4+ binomial standard errors (<= 0.0032)
    assert drawn_indices(np.array([0.0, 1.0]), 10, 0, seed=1).tolist() == [1] * 10


def _digit_images(digits: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    from fairdiff.config import DataConfig
    from fairdiff.data import load_source

    src = load_source(DataConfig(source="digits", groups=digits, shares=[1 / len(digits)] * len(digits)))
    keep = np.isin(src.attributes["label"], digits)
    return torch.from_numpy(src.images[keep]).float() / 127.5 - 1, src.attributes["label"][keep]


@pytest.mark.parametrize("digits", [[0, 1], [0, 1, 7]])
def test_clusters_recover_well_separated_digits(digits):
    # measured: NMI 0.956 for 0/1 and 0.971 for 0/1/7 (any k-means seed); a coin-flip partition gives ~0
    x, labels = _digit_images(digits)
    cl = cluster_groups(x, len(digits), seed=0)
    counts = np.bincount(cl, minlength=len(digits))
    assert counts.min() > 0.8 * len(x) / len(digits), counts  # balanced classes, balanced clusters
    assert cluster_agreement(cl, labels) > 0.85


def test_clusters_find_nothing_where_there_is_nothing():
    # pure noise with alternating labels: no partition of the pixels can know the labels (measured NMI < 0.002)
    x = torch.randn(200, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = np.arange(200) % 2
    cl = cluster_groups(x, 2, seed=0)
    assert np.bincount(cl, minlength=2).min() > 0
    assert cluster_agreement(cl, labels) < 0.05
    assert cluster_agreement(labels, labels) == pytest.approx(1.0)  # the score itself does reach 1


@pytest.mark.xfail(strict=True, reason="k-means on a pixel PCA does not see shape when position and scale vary: "
                   "NMI with the synthetic shape label is 0.0001-0.008 (seeds 0-3, K=2 and 3)")
def test_clusters_recover_synthetic_shapes():
    s = make_synthetic(200, 2, size=16, seed=0)
    x = torch.from_numpy(s.images).float() / 127.5 - 1
    cl = cluster_groups(x, 2, seed=0)
    assert np.bincount(cl, minlength=2).min() > 0
    assert cluster_agreement(cl, s.attributes["label"]) > 0.5


def test_build_objective_by_name():
    from fairdiff.config import load_config

    cfg = load_config(None, ["method.name=ddm", "method.alpha=0.1"])
    obj = build_objective(cfg.method)
    assert isinstance(obj, DDMObjective) and obj.alpha == 0.1 and obj.reconstruction_weight == pytest.approx(0.9)
