"""Open-set judging metrics: strict FD by hand, simplex projection, judge-error correction on a simulated judge,
k-NN membership, replicates, judge agreement."""

from __future__ import annotations

import numpy as np
import pytest

from fairdiff.evaluation.openset import Verdicts, judges_agreement, open_metrics, replicate_metrics
from fairdiff.metrics import (
    OUTSIDE,
    confusion_matrix,
    corrected_strict_shares,
    knn_membership,
    manifold_scale,
    project_simplex,
    replicate_slices,
    strict_fairness_discrepancy,
    strict_shares,
    valid_shares,
)


def test_strict_fd_by_hand():
    verdicts = np.array([0] * 35 + [1] * 35 + [OUTSIDE] * 30)
    p = strict_shares(verdicts, 2)
    assert p.tolist() == pytest.approx([0.35, 0.35, 0.30])
    # sqrt(0.15^2 + 0.15^2 + 0.30^2) = sqrt(0.135)
    assert strict_fairness_discrepancy(p, [0.5, 0.5]) == pytest.approx(0.3674234614, abs=1e-9)
    assert valid_shares(p).tolist() == pytest.approx([0.5, 0.5])
    # no outside: the strict FD is the ordinary FD
    assert strict_fairness_discrepancy([0.8, 0.2, 0.0], [0.5, 0.5]) == pytest.approx(np.sqrt(2) * 0.3)
    # all outside: sqrt(0.25 + 0.25 + 1)
    assert strict_fairness_discrepancy([0.0, 0.0, 1.0], [0.5, 0.5]) == pytest.approx(np.sqrt(1.5))
    # batched
    b = strict_fairness_discrepancy(np.array([[0.35, 0.35, 0.3], [0.5, 0.5, 0.0]]), [0.5, 0.5])
    assert b.shape == (2,) and b[1] == 0.0
    with pytest.raises(ValueError):
        strict_shares(np.array([0, 2]), 2)


def test_garbage_split_evenly_cannot_lower_strict_fd():
    biased = strict_shares(np.array([0] * 80 + [1] * 20), 2)
    # add 100 images the judge calls outside; forced choice would have split them 50/50
    with_garbage = strict_shares(np.array([0] * 80 + [1] * 20 + [OUTSIDE] * 100), 2)
    forced = np.array([0.65, 0.35])
    assert strict_fairness_discrepancy(with_garbage, [0.5, 0.5]) > strict_fairness_discrepancy(biased, [0.5, 0.5])
    assert np.linalg.norm(forced - 0.5) < np.linalg.norm(biased[:2] - 0.5)  # what fooled the old FD


def test_project_simplex():
    assert project_simplex([0.3, 0.7]).tolist() == pytest.approx([0.3, 0.7])
    assert project_simplex([1.2, -0.2]).tolist() == pytest.approx([1.0, 0.0])
    assert project_simplex([0.6, 0.6]).tolist() == pytest.approx([0.5, 0.5])
    rng = np.random.default_rng(0)
    v = rng.normal(size=(200, 4))
    p = project_simplex(v)
    assert np.allclose(p.sum(1), 1) and (p >= 0).all()
    # optimality: no random point of the simplex is closer to v than its projection
    for i in range(20):
        others = rng.dirichlet(np.ones(4), size=500)
        assert np.linalg.norm(v[i] - p[i]) <= np.linalg.norm(v[i] - others, axis=1).min() + 1e-12


CONF = np.array([[0.80, 0.15, 0.05],   # true group 0: judged 0 / 1 / outside
                 [0.05, 0.90, 0.05]])  # true group 1


def _simulate(true_groups, rng):
    """A judge with the known confusion matrix CONF."""
    u = rng.random(len(true_groups))
    cum = np.cumsum(CONF[true_groups], axis=1)
    col = (u[:, None] > cum).sum(1)
    return np.where(col == 2, OUTSIDE, col)


def test_corrected_share_recovers_known_share_within_ci():
    rng = np.random.default_rng(1)
    true_share = 0.7
    gen_true = (rng.random(4000) > true_share).astype(int)  # 70 % group 0
    gen_v = _simulate(gen_true, rng)
    held_true = np.repeat([0, 1], 300)
    held_v = _simulate(held_true, rng)
    est = confusion_matrix(held_true, held_v, 2)
    assert np.abs(est - CONF).max() < 0.06
    k = 2
    v = Verdicts(gen_v, np.where(gen_v == OUTSIDE, 0, gen_v), np.zeros((len(gen_v), 2)), None,
                 gen_v == OUTSIDE, np.zeros(len(gen_v), bool), None)
    hv = Verdicts(held_v, np.where(held_v == OUTSIDE, 0, held_v), np.zeros((len(held_v), 2)), None,
                  held_v == OUTSIDE, np.zeros(len(held_v), bool), None)
    m = open_metrics(v, k, np.array([0.5, 0.5]), n_bootstrap=1000, confidence=0.95, seed=0, held=hv,
                     held_groups=held_true)
    lo, hi = m["valid_shares_ci"][0]
    assert not lo <= true_share <= hi  # the observed share is biased by the judge (about 0.61)
    clo, chi = m["corrected_shares_ci"][0]
    assert clo <= true_share <= chi, (m["corrected_shares"], m["corrected_shares_ci"])
    assert abs(m["corrected_shares"][0] - true_share) < 0.03
    assert m["corrected_valid_rate"] == pytest.approx(1.0, abs=0.03)  # every generated image was a group member
    # the correction CI is wider than the observed one: it also resamples the held-out images
    assert chi - clo > hi - lo


def test_corrected_identity_and_garbage():
    eye = np.eye(2, 3)
    assert corrected_strict_shares(np.array([0.3, 0.5, 0.2]), eye).tolist() == pytest.approx([0.3, 0.5, 0.2])
    # by hand: true (0.6, 0.3) of the groups and 0.1 garbage through CONF are observed as q = M^T p =
    # (0.6 * 0.80 + 0.3 * 0.05, 0.6 * 0.15 + 0.3 * 0.90, 0.6 * 0.05 + 0.3 * 0.05 + 0.1) = (0.495, 0.36, 0.145);
    # the correction inverts that exactly
    q = np.array([0.495, 0.36, 0.145])
    assert corrected_strict_shares(q, CONF) == pytest.approx([0.6, 0.3, 0.1], abs=1e-12)
    # every image outside: all of it is garbage, whatever the confusion
    assert corrected_strict_shares(np.array([0.0, 0.0, 1.0]), CONF) == pytest.approx([0.0, 0.0, 1.0], abs=1e-12)
    # an observation this judge cannot produce (all group 1, though it calls 5 % of group 1 outside): the
    # least-squares solution (-0.070, 1.123, -0.053) leaves the simplex and is projected back onto (0, 1, 0)
    q_bad = np.array([0.0, 1.0, 0.0])
    raw = np.linalg.solve(np.vstack([CONF, [0.0, 0.0, 1.0]]).T, q_bad)
    assert raw == pytest.approx([-0.0625 / 0.890625, 1 / 0.890625, -0.05 * 0.9375 / 0.890625])
    assert corrected_strict_shares(q_bad, CONF) == pytest.approx([0.0, 1.0, 0.0], abs=1e-12)
    # batched over resamples: each row is corrected with its own confusion matrix
    qs = np.stack([q, q_bad, np.array([0.3, 0.5, 0.2])])
    confs = np.stack([CONF, CONF, eye])
    out = corrected_strict_shares(qs, confs)
    assert out.shape == (3, 3)
    for row, (qi, ci) in enumerate(zip(qs, confs)):
        assert out[row] == pytest.approx(corrected_strict_shares(qi, ci), abs=1e-12)
    assert out[0] == pytest.approx([0.6, 0.3, 0.1]) and out[2] == pytest.approx([0.3, 0.5, 0.2])


def test_knn_membership_and_scale():
    ref = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    q = np.array([[0.5, 0.5], [5.0, 5.0], [1.0, 0.0]])
    inside = knn_membership(ref, q, k=1)
    assert inside.tolist() == [True, False, True]
    assert knn_membership(ref, q[1:2], k=1, scale=100.0).tolist() == [True]
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 5))
    cal = rng.normal(size=(100, 5))
    s = manifold_scale(real, cal, k=3, quantile=0.01)
    assert s >= 1.0
    assert knn_membership(real, cal, 3, s).mean() >= 0.99
    assert knn_membership(real, rng.normal(size=(100, 5)) + 8.0, 3, s).mean() == 0.0


def test_replicates_and_agreement():
    assert [(s.start, s.stop) for s in replicate_slices(10, 3)] == [(0, 3), (3, 7), (7, 10)]
    with pytest.raises(ValueError):
        replicate_slices(3, 4)
    ver = np.array(([0] * 6 + [1] * 3 + [OUTSIDE]) * 10)
    v = Verdicts(ver, np.where(ver == OUTSIDE, 1, ver), np.zeros((100, 2)), None, ver == OUTSIDE,
                 np.zeros(100, bool), None)
    r = replicate_metrics(v, 2, np.array([0.5, 0.5]), 5)
    assert r["valid_rate"]["mean"] == pytest.approx(0.9) and r["valid_rate"]["std"] == pytest.approx(0.0)
    assert len(r["fd_strict"]["values"]) == 5
    a = {"valid_shares_ci": [[0.4, 0.5], [0.5, 0.6]]}
    assert judges_agreement(a, {"valid_shares_ci": [[0.45, 0.55], [0.45, 0.55]]})["disagree"] is False
    assert judges_agreement(a, {"valid_shares_ci": [[0.6, 0.7], [0.3, 0.4]]})["groups"] == [0, 1]


def test_l2_strict_fd_can_drop_with_garbage_but_the_shortfall_cannot():
    """The L2 strict FD drops when outside images replace an over-represented group's excess (a known limit,
    docs/metrics.md); the shortfall sum_k max(t_k - p_k, 0) never does."""
    from fairdiff.metrics import strict_shortfall

    t = [0.5, 0.5]
    all_zero = np.array([1.0, 0.0, 0.0])
    quarter_garbage = np.array([0.75, 0.0, 0.25])
    assert strict_fairness_discrepancy(quarter_garbage, t) < strict_fairness_discrepancy(all_zero, t)
    assert strict_fairness_discrepancy(quarter_garbage, t) == pytest.approx(np.sqrt(0.375))
    assert strict_shortfall(all_zero, t) == pytest.approx(0.5) and strict_shortfall(quarter_garbage, t) == 0.5
    # by hand: (0.35, 0.35, 0.30) -> 0.15 + 0.15
    assert strict_shortfall([0.35, 0.35, 0.30], t) == pytest.approx(0.30)
    # any replacement of a valid image by an outside one never lowers the shortfall
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.dirichlet(np.ones(3))
        j, d = rng.integers(0, 2), rng.uniform(0, 1) * p[rng.integers(0, 2)]
        q = p.copy()
        d = min(d, q[j])
        q[j] -= d
        q[2] += d
        assert strict_shortfall(q, t) >= strict_shortfall(p, t) - 1e-12


def test_resamples_without_a_valid_image_are_ignored_not_an_error():
    # 2 valid images of 40: many bootstrap resamples hold no valid image (NaN valid shares)
    gen_v = np.full(40, OUTSIDE)
    gen_v[:2] = [0, 1]
    v = Verdicts(gen_v, np.where(gen_v == OUTSIDE, 0, gen_v), np.zeros((40, 2)), None,
                 gen_v == OUTSIDE, np.zeros(40, bool), None)
    m = open_metrics(v, 2, np.array([0.5, 0.5]), n_bootstrap=500, confidence=0.95, seed=0)
    assert m["valid_rate"] == pytest.approx(0.05)
    assert m["fd_valid"] == pytest.approx(0.0)
    lo, hi = m["fd_valid_ci"]
    assert 0.0 <= lo <= hi <= 2 ** -0.5 + 1e-9
