"""Generate-and-filter (fairdiff.debias.filter): quotas, exact shares, outside images never kept, cost, errors."""

from __future__ import annotations

import numpy as np
import pytest

from fairdiff.debias import filter_to_target, quotas
from fairdiff.errors import FairdiffError
from fairdiff.metrics import OUTSIDE


def test_quotas_largest_remainder():
    assert quotas([0.5, 0.5], 10).tolist() == [5, 5]
    assert quotas([0.3, 0.7], 10).tolist() == [3, 7]
    # 1/3 each of 10: 3.33 -> 3, 3, 3 and the one left goes to the first largest remainder
    assert quotas([1 / 3, 1 / 3, 1 / 3], 10).tolist() == [4, 3, 3]
    assert quotas([0.6, 0.3, 0.1], 7).tolist() == [4, 2, 1]  # 4.2, 2.1, 0.7 -> 4, 2, 0 + 1 to the 0.7
    assert quotas([1.0, 0.0], 5).tolist() == [5, 0]
    for bad in ([0.5, 0.6], [1.0], [-0.1, 1.1]):
        with pytest.raises(FairdiffError):
            quotas(bad, 10)
    with pytest.raises(FairdiffError):
        quotas([0.5, 0.5], 0)


def _fake_model(rate_per_group, outside_rate, seed=123):
    """A 'model' whose image for seed s encodes a verdict drawn from the given rates (deterministic per seed)."""
    probs = np.asarray([*rate_per_group, outside_rate], float)
    probs = probs / probs.sum()

    def verdict_of(s: int) -> int:
        v = int(np.random.default_rng([seed, s]).choice(len(probs), p=probs))
        return OUTSIDE if v == len(probs) - 1 else v

    def draw(seeds):
        # one 1x2x2 uint8 image per seed: pixel 0 holds the verdict + 1 (0 = outside), pixel 1 the seed mod 256
        out = np.zeros((len(seeds), 1, 2, 2), np.uint8)
        for i, s in enumerate(seeds):
            out[i, 0, 0, 0] = verdict_of(s) + 1
            out[i, 0, 0, 1] = s % 256
        return out

    def judge(images):
        return images[:, 0, 0, 0].astype(np.int64) - 1

    return draw, judge, verdict_of


def test_filter_hits_target_exactly_and_never_keeps_outside():
    draw, judge, verdict_of = _fake_model([0.72, 0.18], 0.10)
    res = filter_to_target(draw, judge, [0.5, 0.5], 200, seed=7, batch_size=64)
    assert res.kept == 200
    assert np.bincount(res.groups, minlength=2).tolist() == [100, 100]
    # every kept image is what the judge said, and none is outside
    assert all(verdict_of(int(s)) == g for s, g in zip(res.seeds, res.groups))
    assert (judge(res.images) == res.groups).all()
    # seeds are unique, start at 7 and come in drawing order
    assert len(set(res.seeds.tolist())) == 200 and res.seeds.min() >= 7 and (np.diff(res.seeds) > 0).all()
    # cost: the scarce group (0.18 of draws) needs about 100 / 0.18 = 556 draws; every drawn image is counted
    assert 400 < res.drawn < 800
    assert res.drawn_per_group.sum() + res.drawn_outside == res.drawn
    expected = [sum(verdict_of(s) == g for s in range(7, 7 + res.drawn)) for g in (0, 1)]
    assert res.drawn_per_group.tolist() == expected
    s = res.summary()
    assert s["drawn_per_kept"] == pytest.approx(res.drawn / 200, abs=1e-4)


def test_filter_nonuniform_and_three_groups():
    draw, judge, _ = _fake_model([0.6, 0.3, 0.1], 0.0)
    res = filter_to_target(draw, judge, [0.2, 0.3, 0.5], 50, batch_size=32)
    assert np.bincount(res.groups, minlength=3).tolist() == [10, 15, 25]


def test_filter_reproducible_by_seed():
    draw, judge, _ = _fake_model([0.5, 0.4], 0.1)
    a = filter_to_target(draw, judge, [0.3, 0.7], 40, seed=3, batch_size=16)
    b = filter_to_target(draw, judge, [0.3, 0.7], 40, seed=3, batch_size=16)
    assert a.seeds.tolist() == b.seeds.tolist() and (a.images == b.images).all()


def test_filter_unreachable_target_is_one_line_error():
    draw, judge, _ = _fake_model([0.99, 0.0], 0.01)  # the model never draws group 1
    with pytest.raises(FairdiffError, match="group 1: 10 missing"):
        filter_to_target(draw, judge, [0.5, 0.5], 20, batch_size=16, max_draws=200)


def test_filter_rejects_a_judge_with_wrong_groups():
    draw, _, _ = _fake_model([0.5, 0.5], 0.0)
    with pytest.raises(FairdiffError, match="verdict outside"):
        filter_to_target(draw, lambda imgs: np.full(len(imgs), 2), [0.5, 0.5], 10, batch_size=8)


def test_cluster_judge_orders_by_size_and_marks_outliers():
    from fairdiff.debias.clusters import fit_cluster_judge

    rng = np.random.default_rng(0)

    def blobs(n, left):
        x = rng.integers(0, 30, size=(n, 1, 8, 8)).astype(np.uint8)
        if left:
            x[:, :, :, :4] += 200
        else:
            x[:, :, :4, :] += 200
        return x

    pilot = np.concatenate([blobs(160, left=True), blobs(40, left=False)])
    cj = fit_cluster_judge(pilot, 2, seed=0)
    assert cj.pilot_shares == [0.8, 0.2]  # cluster 0 is the majority mode
    assert (cj.verdicts(blobs(20, left=True)) == 0).all() and (cj.verdicts(blobs(20, left=False)) == 1).all()
    odd = np.full((3, 1, 8, 8), 255, np.uint8)  # far from both modes
    assert (cj.verdicts(odd) == OUTSIDE).all()
    # pilot images beyond the 0.99 quantile of their cluster's distances are outside: about 1 %
    assert (cj.verdicts(pilot) == OUTSIDE).mean() <= 0.03
