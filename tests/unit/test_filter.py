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


@pytest.mark.parametrize("method", ["spectral", "kmeans"])
def test_cluster_judge_orders_by_size_and_marks_outliers(method):
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
    cj = fit_cluster_judge(pilot, 2, seed=0, method=method)
    assert cj.method == method and cj.describe()["name"] == f"{method}-pca-k2"
    assert cj.pilot_shares == [0.8, 0.2]  # cluster 0 is the majority mode
    assert (cj.verdicts(blobs(20, left=True)) == 0).all() and (cj.verdicts(blobs(20, left=False)) == 1).all()
    odd = np.full((3, 1, 8, 8), 255, np.uint8)  # far from both modes
    assert (cj.verdicts(odd) == OUTSIDE).all()
    # pilot images beyond the 0.99 quantile of their cluster's distances are outside: about 1 %
    assert (cj.verdicts(pilot) == OUTSIDE).mean() <= 0.03


def _line_and_blob(rng, n_line=800, n_blob=200):
    """Images of 2 x 4 pixels whose rows are the coordinates of 2-D points (each pixel with its own small noise, so
    that no two images are equal): a long thin majority mode (a line) and a small minority blob beside its middle.
    k-means with 2 clusters halves the line (less squared error than separating the blob)."""
    line = np.stack([rng.uniform(4, 246, n_line), rng.normal(20, 1.0, n_line)], 1)
    blob = np.stack([rng.normal(125, 2.0, n_blob), rng.normal(60, 2.0, n_blob)], 1)
    pts = np.concatenate([line, blob])[:, :, None] + rng.normal(0, 1.0, (n_line + n_blob, 2, 4))
    return np.clip(pts, 0, 255).round().astype(np.uint8).reshape(-1, 1, 2, 4)


def test_spectral_clusters_find_an_imbalanced_elongated_mode_where_kmeans_splits_it():
    from fairdiff.debias.clusters import fit_cluster_judge

    pilot = _line_and_blob(np.random.default_rng(0))
    spectral = fit_cluster_judge(pilot, 2, seed=0, method="spectral")
    assert spectral.pilot_shares == [0.8, 0.2]
    new = _line_and_blob(np.random.default_rng(1), 50, 20)
    v = spectral.verdicts(new)
    assert (v[:50] == 0).mean() >= 0.96 and (v[50:] == 1).all()  # both ends of the line are one group
    kmeans = fit_cluster_judge(pilot, 2, seed=0, method="kmeans")
    assert abs(kmeans.pilot_shares[0] - 0.8) > 0.1  # k-means halves the line instead
    ends = np.array([[[[6] * 4, [20] * 4]], [[[244] * 4, [20] * 4]]], np.uint8)
    assert len(set(kmeans.verdicts(ends).tolist())) == 2 and set(spectral.verdicts(ends).tolist()) == {0}


@pytest.mark.parametrize("method", ["spectral", "kmeans"])
def test_cluster_judge_round_trips_through_npz(tmp_path, method):
    from fairdiff.debias.clusters import fit_cluster_judge, load_cluster_judge, save_cluster_judge

    pilot = _line_and_blob(np.random.default_rng(0), 200, 50)
    cj = fit_cluster_judge(pilot, 2, seed=0, method=method)
    save_cluster_judge(cj, tmp_path / "c.npz")
    back = load_cluster_judge(tmp_path / "c.npz")
    assert back.method == method and back.describe() == cj.describe()
    new = _line_and_blob(np.random.default_rng(2), 40, 10)
    np.testing.assert_array_equal(back.verdicts(new), cj.verdicts(new))


def test_cluster_judge_reads_files_written_before_spectral_clusters(tmp_path):
    from fairdiff.debias.clusters import fit_cluster_judge, load_cluster_judge

    cj = fit_cluster_judge(_line_and_blob(np.random.default_rng(0), 200, 50), 2, seed=0, method="kmeans")
    np.savez(tmp_path / "old.npz", mean=cj.mean, components=cj.components, centroids=cj.centroids, radius=cj.radius,
             pilot_shares=np.asarray(cj.pilot_shares), seed=np.asarray(0))  # no 'method': the earlier format
    back = load_cluster_judge(tmp_path / "old.npz")
    assert back.method == "kmeans"
    new = _line_and_blob(np.random.default_rng(3), 40, 10)
    np.testing.assert_array_equal(back.verdicts(new), cj.verdicts(new))


def test_cluster_method_reads_the_judge_option():
    from fairdiff.debias.clusters import cluster_method

    assert cluster_method("clusters") == "spectral" and cluster_method("clusters-kmeans") == "kmeans"
    assert cluster_method("auto") is None and cluster_method(None) is None


class _Stop(KeyboardInterrupt):
    pass


def _interrupting(draw, after_batches: int):
    """``draw`` that raises (as Ctrl-C would) on its call number ``after_batches + 1``."""
    calls = {"n": 0}

    def wrapped(seeds):
        calls["n"] += 1
        if calls["n"] > after_batches:
            raise _Stop()
        return draw(seeds)

    return wrapped, calls


def test_interrupted_filter_continues_from_its_state_and_keeps_what_an_uninterrupted_one_keeps(tmp_path):
    draw, judge, _ = _fake_model([0.7, 0.2], 0.1)
    whole = filter_to_target(draw, judge, [0.3, 0.7], 120, seed=5, batch_size=16)
    state = tmp_path / ".out.partial.npz"
    key = {"model": "m1"}
    stopping, _ = _interrupting(draw, 3)
    with pytest.raises(_Stop):
        filter_to_target(stopping, judge, [0.3, 0.7], 120, seed=5, batch_size=16, state_file=state, state_key=key)
    assert state.is_file()
    seen = []

    def counting(seeds):
        seen.extend(seeds)
        return draw(seeds)

    again = filter_to_target(counting, judge, [0.3, 0.7], 120, seed=5, batch_size=16, state_file=state,
                             state_key=key)
    assert min(seen) == 5 + 3 * 16  # the three finished batches were not drawn again
    np.testing.assert_array_equal(again.seeds, whole.seeds)
    np.testing.assert_array_equal(again.images, whole.images)
    np.testing.assert_array_equal(again.groups, whole.groups)
    assert again.drawn == whole.drawn and again.batches == whole.batches and again.log == whole.log
    assert again.drawn_per_group.tolist() == whole.drawn_per_group.tolist()
    assert again.drawn_outside == whole.drawn_outside


def test_filter_state_of_another_key_or_a_damaged_file_is_not_used(tmp_path):
    import shutil

    draw, judge, _ = _fake_model([0.5, 0.5], 0.2)
    saved = tmp_path / "saved.npz"
    stopping, _ = _interrupting(draw, 2)
    with pytest.raises(_Stop):
        filter_to_target(stopping, judge, [0.5, 0.5], 60, seed=0, batch_size=8, state_file=saved,
                         state_key={"model": "a"})
    state = tmp_path / "state.npz"
    for key, target, n, batch, first in (({"model": "a"}, [0.5, 0.5], 60, 8, 16),  # the same: continues
                                         ({"model": "b"}, [0.5, 0.5], 60, 8, 0),
                                         ({"model": "a"}, [0.4, 0.6], 60, 8, 0),
                                         ({"model": "a"}, [0.5, 0.5], 50, 8, 0),
                                         ({"model": "a"}, [0.5, 0.5], 60, 9, 0)):
        shutil.copy(saved, state)
        seen = []
        stop_early, _ = _interrupting(lambda s: (seen.extend(s), draw(s))[1], 1)
        with pytest.raises(_Stop):
            filter_to_target(stop_early, judge, target, n, seed=0, batch_size=batch, state_file=state, state_key=key)
        assert min(seen) == first
    state.write_bytes(b"not a state file")  # a damaged file: started afresh, then replaced by a good state
    seen = []
    res = filter_to_target(lambda s: (seen.extend(s), draw(s))[1], judge, [0.5, 0.5], 20, seed=0, batch_size=8,
                           state_file=state, state_key={"model": "a"})
    assert res.kept == 20 and min(seen) == 0
    assert np.load(state)["drawn"] == res.drawn
