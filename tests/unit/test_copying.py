"""The copying check (``fairdiff.metrics.copying``): hand-computed distances, a model that copies, one that does not."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from fairdiff.metrics.copying import copy_metrics, matched_subsets, nearest_distance


def test_nearest_distance_by_hand_and_against_scipy():
    q = np.array([[0.0, 0.0], [3.0, 4.0]])
    p = np.array([[1.0, 0.0], [3.0, 3.0], [10.0, 10.0]])
    # (0,0): nearest (1,0) at 1; (3,4): nearest (3,3) at 1
    assert nearest_distance(q, p) == pytest.approx([1.0, 1.0])
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(37, 5, 2, 2)), rng.normal(size=(53, 5, 2, 2))
    ref = cdist(a.reshape(37, -1), b.reshape(53, -1)).min(1)
    assert nearest_distance(a, b, batch=8) == pytest.approx(ref, rel=1e-9, abs=1e-9)
    with pytest.raises(ValueError):
        nearest_distance(a, b[:, :3])


def test_matched_subsets_follow_the_training_shares_within_the_held_out_counts():
    tg = np.array([0] * 80 + [1] * 20)
    hg = np.array([0] * 50 + [1] * 50)
    ti, hi = matched_subsets(tg, hg, seed=1)
    # scale = min(50/80, 50/20) = 0.625 -> 50 zeros and 12 ones in each subset
    assert np.bincount(tg[ti]).tolist() == [50, 12] and np.bincount(hg[hi]).tolist() == [50, 12]
    assert len(set(ti.tolist())) == len(ti) and len(set(hi.tolist())) == len(hi)


def _mixture(rng, n, groups):
    """Two well separated Gaussian blobs in 16 dimensions: image stand-ins with a group each."""
    centres = np.stack([np.full(16, -2.0), np.full(16, 2.0)])
    return centres[groups] + rng.normal(size=(n, 16)), groups


def test_a_model_that_copies_is_caught_and_fresh_draws_are_not():
    rng = np.random.default_rng(0)
    tr_g = rng.permutation(np.array([0] * 160 + [1] * 40))
    train, _ = _mixture(rng, 200, tr_g)
    held, he_g = _mixture(rng, 400, np.repeat([0, 1], 200))
    # fresh draws at the training shares: as new as real held-out images
    fresh, _ = _mixture(rng, 2000, rng.permutation(np.array([0] * 1600 + [1] * 400)))
    m = copy_metrics(fresh, train, held, train_groups=tr_g, heldout_groups=he_g, quantile=0.05)
    assert 0.02 <= m["copy_rate"] <= 0.10 and m["copy_rate_real"] == 0.05
    assert 0.44 <= m["closer_to_train"] <= 0.56 and m["race_size"] == 200
    # a model that reproduces its training images (plus a little noise) is flagged by both numbers
    copies = train[rng.integers(0, 200, 2000)] + 0.01 * rng.normal(size=(2000, 16))
    c = copy_metrics(copies, train, held, train_groups=tr_g, heldout_groups=he_g)
    assert c["copy_rate"] == 1.0 and c["closer_to_train"] == 1.0
    assert c["nn_train_median"] < 0.1 < m["nn_train_median"]
    with pytest.raises(ValueError):
        copy_metrics(fresh, train, held, quantile=1.5)
