"""benchmarks/real_ceiling.py: the two halves of the held-out images are disjoint and cover every group half and
half; the real set is drawn from half A only, at the requested shares, as large as half A allows."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def rc():
    from tests.conftest import load_benchmark

    return load_benchmark("real_ceiling")


def test_halves_are_disjoint_balanced_and_seeded(rc):
    groups = np.repeat([0, 1, 2], [10, 7, 4])
    a, b = rc.halves(groups, 0)
    assert set(a).isdisjoint(b) and sorted(np.concatenate([a, b]).tolist()) == list(range(len(groups)))
    assert np.bincount(groups[a]).tolist() == [5, 3, 2] and np.bincount(groups[b]).tolist() == [5, 4, 2]
    a2, _ = rc.halves(groups, 0)
    a3, _ = rc.halves(groups, 1)
    np.testing.assert_array_equal(a, a2)
    assert not np.array_equal(np.sort(a), np.sort(a3))


@pytest.mark.parametrize("sizes, shares, counts", [([490, 490], [0.8, 0.2], [489, 122]),
                                                   ([490, 490, 490], [0.6, 0.3, 0.1], [489, 244, 81]),
                                                   ([100, 300], [0.5, 0.5], [100, 100])])
def test_draw_at_shares_takes_the_largest_set_half_a_allows(rc, sizes, shares, counts):
    k = len(shares)
    groups = np.repeat(np.arange(k), sizes)
    pool = np.arange(len(groups))
    pick = rc.draw_at_shares(pool, groups, shares, 0)
    assert len(set(pick.tolist())) == len(pick)
    assert np.bincount(groups[pick], minlength=k).tolist() == counts


def test_draw_at_shares_never_leaves_the_pool(rc):
    groups = np.repeat([0, 1], [50, 50])
    pool = np.flatnonzero(np.arange(100) % 2 == 0)  # every other image
    pick = rc.draw_at_shares(pool, groups, [0.8, 0.2], 3)
    assert set(pick.tolist()) <= set(pool.tolist())
    # 25 of each group in the pool: 25 / 0.8 = 31 images at most, floor(31 * 0.8) = 24 and floor(31 * 0.2) = 6
    assert np.bincount(groups[pick]).tolist() == [24, 6]
