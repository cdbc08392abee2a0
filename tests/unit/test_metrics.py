"""Hand-computed values for every metric, streaming == one-shot, and bootstrap coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from fairdiff.metrics import (
    FeatureStatistics,
    GroupHistogram,
    bootstrap_ci,
    bootstrap_means,
    conditional_parity,
    fairness_discrepancy,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    group_histogram,
    kl_to_target,
    mean_pairwise_gap,
    precision_recall,
    resolve_target,
    soft_histogram,
    statistical_parity_difference,
)


def test_group_histogram_fixed_length():
    # every sample in group 0 of two: the histogram must still have two entries
    h = group_histogram(np.zeros(10, int), 2)
    assert h.tolist() == [1.0, 0.0]
    assert group_histogram([2, 2, 0, 1], 4).tolist() == [0.25, 0.25, 0.5, 0.0]
    with pytest.raises(ValueError):
        group_histogram([0, 3], 2)
    with pytest.raises(ValueError):
        group_histogram([], 2)


def test_fd_all_in_one_group_is_07071_not_05():
    h = group_histogram(np.ones(50, int), 2)
    assert fairness_discrepancy(h) == pytest.approx(math.sqrt(0.5), abs=1e-12)  # 0.7071
    assert fairness_discrepancy(h) != pytest.approx(0.5)


def test_fd_hand_values():
    # binary 0.8 / 0.2: sqrt(0.3^2 + 0.3^2) = 0.3 * sqrt(2) = sqrt(2) * |0.2 - 0.5|
    assert fairness_discrepancy([0.8, 0.2]) == pytest.approx(0.3 * math.sqrt(2))
    assert fairness_discrepancy([0.5, 0.5]) == 0.0
    # K = 3 vs target (0.5, 0.25, 0.25): diff (0, 0.25, -0.25) -> sqrt(0.125)
    assert fairness_discrepancy([0.5, 0.5, 0.0], [0.5, 0.25, 0.25]) == pytest.approx(math.sqrt(0.125))
    # batched
    np.testing.assert_allclose(fairness_discrepancy(np.array([[1.0, 0.0], [0.5, 0.5]])), [math.sqrt(0.5), 0.0])


def test_soft_histogram():
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])
    np.testing.assert_allclose(soft_histogram(probs), [0.6, 0.4])
    logits = np.log(probs)
    np.testing.assert_allclose(soft_histogram(logits, from_logits=True), [0.6, 0.4])
    assert fairness_discrepancy(soft_histogram(probs)) == pytest.approx(math.sqrt(2) * 0.1)


def test_kl_hand_value():
    # KL((0.75, 0.25) || uniform) = 0.75 ln 1.5 + 0.25 ln 0.5
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl_to_target([0.75, 0.25], eps=0.0) == pytest.approx(expected, abs=1e-12)
    assert kl_to_target([0.75, 0.25]) == pytest.approx(expected, abs=1e-5)
    assert kl_to_target([0.5, 0.5]) == pytest.approx(0.0, abs=1e-12)
    assert np.isfinite(kl_to_target([1.0, 0.0]))  # epsilon keeps an empty group finite
    assert kl_to_target([1.0, 0.0]) == pytest.approx(math.log(2), abs=1e-4)


def test_spd_and_pairwise_gap_hand_values():
    assert statistical_parity_difference([0.8, 0.2]) == pytest.approx(0.6)
    assert statistical_parity_difference([0.2, 0.8]) == pytest.approx(-0.6)  # signed for binary
    assert statistical_parity_difference([0.5, 0.3, 0.2]) == pytest.approx(0.3)  # K > 2: max - min
    # pairs: |0.5-0.3| + |0.5-0.2| + |0.3-0.2| = 0.6, / 3
    assert mean_pairwise_gap([0.5, 0.3, 0.2]) == pytest.approx(0.2)
    assert mean_pairwise_gap([0.8, 0.2]) == pytest.approx(0.6)


def test_spd_matches_fairlearn_demographic_parity_difference():
    fairlearn_metrics = pytest.importorskip("fairlearn.metrics")
    # Construction where both coincide: every generated image i contributes one row per group g, with
    # sensitive feature g and "selected" = [pred_i == g]. The selection rate of sensitive group g is then
    # p_hat_g, so fairlearn's max-min selection-rate gap equals |p_hat_0 - p_hat_1| = |SPD|.
    preds = np.array([0] * 70 + [1] * 30)
    y_pred = np.concatenate([(preds == 0), (preds == 1)]).astype(int)
    sensitive = np.array(["g0"] * len(preds) + ["g1"] * len(preds))
    dpd = fairlearn_metrics.demographic_parity_difference(
        y_true=np.zeros_like(y_pred), y_pred=y_pred, sensitive_features=sensitive
    )
    spd = statistical_parity_difference(group_histogram(preds, 2))
    assert spd == pytest.approx(0.4)
    assert dpd == pytest.approx(abs(spd))
    # K = 3: fairlearn's gap is max - min of the rates, as is fairdiff's SPD for K > 2
    preds3 = np.array([0] * 50 + [1] * 30 + [2] * 20)
    y3 = np.concatenate([(preds3 == g) for g in range(3)]).astype(int)
    s3 = np.repeat(["g0", "g1", "g2"], len(preds3))
    dpd3 = fairlearn_metrics.demographic_parity_difference(np.zeros_like(y3), y3, sensitive_features=s3)
    assert dpd3 == pytest.approx(statistical_parity_difference(group_histogram(preds3, 3)))


def test_conditional_parity():
    cond = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 0, 0, 0])
    res = conditional_parity(pred, cond, 2)
    np.testing.assert_allclose(res["rates"], [0.75, 0.25])
    assert res["gap"] == pytest.approx(0.5)
    assert res["counts"].tolist() == [4, 4]
    # one convention (docs/metrics.md): max - min of the rates, so the gap is positive whichever group leads
    res = conditional_parity(1 - pred, 1 - cond, 2)
    np.testing.assert_allclose(res["rates"], [0.25, 0.75])
    assert res["gap"] == 0.5
    # a group never requested: NaN rate, left out of the gap
    res = conditional_parity([0, 1], [0, 0], 3)
    assert res["rates"][0] == 0.5 and np.isnan(res["rates"][1]) and res["gap"] == 0.0


def test_resolve_target_checks():
    np.testing.assert_allclose(resolve_target(None, 4), [0.25] * 4)
    with pytest.raises(ValueError):
        resolve_target([0.5, 0.5], 3)
    with pytest.raises(ValueError):
        resolve_target([0.6, 0.6], 2)


def test_frechet_distance_equals_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6))
    b = rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) * 0.5 + 1.0
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-8)
    assert frechet_distance_from_features(a, b) == pytest.approx(direct, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_hand_value_1d():
    # 1-D: (m1-m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + (2 - 1) ** 2)


def test_precision_recall_hand_case():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    # k=1 radii of real points: 1 each. fake 0.5 and 2.5 lie inside, 10 outside -> precision 2/3
    fake = np.array([[0.5], [2.5], [10.0]])
    p, r = precision_recall(real, fake, k=1)
    assert p == pytest.approx(2 / 3)
    # fake radii (k=1): 0.5->2.0, 2.5->2.0, 10->7.5; all real points lie in some fake ball -> recall 1
    assert r == pytest.approx(1.0)
    p, r = precision_recall(real, real + 100.0, k=1)
    assert p == 0.0 and r == 0.0


@pytest.mark.parametrize("splits", [[500], [1, 499], [250, 250], [3, 7, 90, 400], [499, 1]])
def test_streaming_feature_stats_equal_one_shot(splits):
    rng = np.random.default_rng(1)
    x = rng.normal(loc=1e3, scale=2.0, size=(500, 5))  # large mean: naive sums would lose precision
    st = FeatureStatistics()
    start = 0
    for s in splits:
        st.update(x[start : start + s])
        start += s
    mu, cov = st.compute()
    mu0, cov0 = feature_statistics(x)
    np.testing.assert_allclose(mu, mu0, rtol=1e-12)
    np.testing.assert_allclose(cov, cov0, rtol=1e-9, atol=1e-9)
    # merging two accumulators gives the same answer
    a, b = FeatureStatistics().update(x[:123]), FeatureStatistics().update(x[123:])
    np.testing.assert_allclose(a.merge(b).compute()[1], cov0, rtol=1e-9, atol=1e-9)
    st.reset()
    assert st.count == 0


def test_streaming_histogram_equal_one_shot():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(300, 3))
    h = GroupHistogram(3)
    for s in range(0, 300, 37):
        h.update(logits[s : s + 37])
    res = h.compute()
    np.testing.assert_allclose(res["hard"], group_histogram(logits.argmax(1), 3))
    np.testing.assert_allclose(res["soft"], soft_histogram(logits, from_logits=True))
    assert res["n"] == 300


def _index_resampled_means(x: np.ndarray, n_resamples: int, seed: int, chunk: int) -> np.ndarray:
    """Reference: draw each resample's indices with the same generator and chunks, average the rows directly."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, len(x), size=(min(chunk, n_resamples - start), len(x)))
        out.extend(x[row].mean(axis=0) for row in idx)
    return np.stack(out)


@pytest.mark.parametrize("chunk", [None, 7, 500])
def test_bootstrap_means_match_index_resampling(chunk):
    # a count-matrix resample gives the same means as the explicit index resample with the same draws
    x = np.arange(10, dtype=float)[:, None]  # integer sums: exact in both orders of summation
    m = bootstrap_means(x, 500, seed=3, chunk=chunk)
    assert m.shape == (500, 1)
    ref = _index_resampled_means(x, 500, seed=3, chunk=chunk or 500)
    assert np.array_equal(m, ref)
    assert len(np.unique(m)) > 20  # the resamples differ from each other
    # several columns of non-integer values: equal up to the order of summation
    y = np.random.default_rng(0).normal(size=(37, 3))
    np.testing.assert_allclose(bootstrap_means(y, 64, seed=5, chunk=chunk),
                               _index_resampled_means(y, 64, seed=5, chunk=min(chunk or 64, 64)), rtol=0, atol=1e-12)
    # and the loose moments the bootstrap must have
    assert m.mean() == pytest.approx(4.5, abs=0.1)
    assert m.std() == pytest.approx(x.std() / math.sqrt(10), rel=0.15)


def test_bootstrap_ci_covers_true_share():
    # simulate 200 generated sets with true share 0.3 of group 1; the 95% CI should cover it ~95% of the time
    rng = np.random.default_rng(0)
    covered = 0
    trials = 200
    for t in range(trials):
        preds = (rng.random(400) < 0.3).astype(int)
        onehot = np.eye(2)[preds]
        ci = bootstrap_ci(onehot, lambda m: m[:, 1], n_resamples=400, seed=t)
        covered += ci.low <= 0.3 <= ci.high
    assert 0.90 <= covered / trials <= 0.99
    # vector statistic: FD of the resampled shares
    ci = bootstrap_ci(np.eye(2)[np.array([0] * 80 + [1] * 20)], fairness_discrepancy, n_resamples=1000, seed=0)
    assert ci.low < 0.3 * math.sqrt(2) < ci.high
