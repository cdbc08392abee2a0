"""The shared classifier-fitting routine, its batch sources, DomainCNN as a diffusers model, and the paired
bootstrap blocks of the evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairdiff.metrics import bootstrap_means, paired_bootstrap_means
from fairdiff.models.classifier import DomainCNN
from fairdiff.models.classifier_fit import balanced_batches, fit_classifier, random_shift, shuffled_batches


def _toy(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes told apart by the brightness of the left half of an 8x8 image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5 - 0.25
    x[:, :, :, :4] += (y.float() * 1.2 - 0.6)[:, None, None, None]
    return x, y


def _fit(seed: int, one_cycle: float | None) -> tuple[DomainCNN, torch.Tensor, torch.Tensor]:
    x, y = _toy()
    torch.manual_seed(seed)
    model = DomainCNN(1, 2, width=4, feature_dim=8)
    g = torch.Generator().manual_seed(seed + 1)
    fit_classifier(model, shuffled_batches(x, y, 16, g, shift=True), 60, 1e-2, one_cycle_pct=one_cycle)
    return model, x, y


@pytest.mark.parametrize("one_cycle", [None, 0.15])
def test_fit_learns_and_is_reproducible(one_cycle):
    model, x, y = _fit(3, one_cycle)
    assert not model.training
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc >= 0.95, acc
    again, _, _ = _fit(3, one_cycle)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    other, _, _ = _fit(4, one_cycle)
    assert not torch.equal(model.head.weight, other.head.weight)


def test_fit_restores_thread_count():
    before = torch.get_num_threads()
    _fit(0, None)
    assert torch.get_num_threads() == before


def test_shuffled_batches_walk_every_image_once_per_epoch():
    x = torch.arange(10, dtype=torch.float32)[:, None, None, None].expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)
    nxt = shuffled_batches(x, y, 3, torch.Generator().manual_seed(0))
    first = torch.cat([nxt()[1] for _ in range(3)])  # 9 of 10, then a fresh permutation
    assert len(set(first.tolist())) == 9
    xb, yb = nxt()
    assert torch.equal(xb[:, 0, 0, 0].long(), yb)  # images travel with their labels


def test_balanced_batches_draw_every_class_equally():
    y = torch.tensor([0] * 50 + [1] * 5 + [2] * 5)
    x = torch.zeros(60, 1, 2, 2)
    pools = [torch.nonzero(y == c).flatten() for c in range(3)]
    nxt = balanced_batches(x, y, pools, 31, torch.Generator().manual_seed(0), noise_std=0.1)
    xb, yb = nxt()
    assert torch.equal(torch.bincount(yb, minlength=3), torch.tensor([10, 10, 10]))
    assert 0.05 < float(xb.std()) < 0.15  # the Gaussian noise is added


def test_random_shift_moves_by_at_most_one_pixel():
    x = -torch.ones(50, 1, 5, 5)
    x[:, :, 2, 2] = 1.0
    out = random_shift(x, torch.Generator().manual_seed(0))
    pos = [tuple(torch.nonzero(o[0] == 1.0)[0].tolist()) for o in out]
    assert all(abs(r - 2) <= 1 and abs(c - 2) <= 1 for r, c in pos)
    assert len(set(pos)) > 3  # it does move them


def test_domain_cnn_round_trips_through_save_pretrained(tmp_path):
    model, x, _ = _fit(1, 0.15)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").exists()
    assert not list((tmp_path / "m").glob("*.bin")) and not list((tmp_path / "m").glob("*.pt"))
    back = DomainCNN.from_pretrained(tmp_path / "m")
    assert (back.config.in_channels, back.config.num_classes, back.config.width) == (1, 2, 4)
    with torch.no_grad():
        a, fa = model.forward_features(x)
        b, fb = back.forward_features(x)
    assert torch.equal(a, b) and torch.equal(fa, fb)


def test_paired_bootstrap_blocks_equal_the_concatenated_columns():
    rng = np.random.default_rng(0)
    a, b, c = rng.random((40, 2)), rng.random((40, 3)), rng.random(40)
    got = paired_bootstrap_means({"a": a, "b": b, "c": c}, 200, seed=7)
    want = bootstrap_means(np.concatenate([a, b, c[:, None]], 1), 200, 7)
    assert list(got) == ["a", "b", "c"]
    np.testing.assert_array_equal(got["a"], want[:, :2])
    np.testing.assert_array_equal(got["b"], want[:, 2:5])
    np.testing.assert_array_equal(got["c"], want[:, 5:])
