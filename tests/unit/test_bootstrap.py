"""Bootstrap intervals: percentile and BCa against hand computations, against scipy.stats.bootstrap (same
resamples), coverage on a binomial share, and the demo's one-sided strict-FD interval explained."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fairdiff.metrics import (
    bca_interval,
    bootstrap_ci,
    jackknife_means,
    percentile_interval,
    strict_fairness_discrepancy,
)


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _phi_inv(p: float) -> float:  # bisection on the erf-based CDF: independent of scipy.special
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _phi(mid) < p else (lo, mid)
    return (lo + hi) / 2


def test_percentile_interval_by_hand():
    draws = np.arange(101, dtype=float)  # quantile q of 0..100 (linear) is 100 q
    lo, hi = percentile_interval(draws, 0.9)
    assert (lo, hi) == pytest.approx((5.0, 95.0))


def test_bca_interval_by_hand():
    draws = np.arange(100, dtype=float)
    point = 24.5  # 25 draws below -> z0 = Phi^-1(0.25)
    jack = np.array([0.0, 0.0, 0.0, 3.0])  # U = mean - jk = (.75, .75, .75, -2.25)
    u = np.array([0.75, 0.75, 0.75, -2.25])
    a = (u**3).sum() / (6 * (u**2).sum() ** 1.5)
    assert a == pytest.approx(-10.125 / (6 * 6.75**1.5))
    z0, z = _phi_inv(0.25), _phi_inv(0.025)
    want = [99 * _phi(z0 + (z0 + zz) / (1 - a * (z0 + zz))) for zz in (z, -z)]
    lo, hi = bca_interval(draws, point, jack, 0.95)
    assert (lo, hi) == pytest.approx(want, rel=1e-9)
    # no bias, no acceleration: BCa is the percentile interval
    lo, hi = bca_interval(draws, 49.5, np.array([1.0, 2.0, 3.0]), 0.95)
    assert (lo, hi) == pytest.approx(percentile_interval(draws, 0.95), rel=1e-12)
    # vector statistics: each column on its own
    d2 = np.stack([draws, 2 * draws], 1)
    lo2, hi2 = bca_interval(d2, np.array([point, 2 * point]), np.stack([jack, 2 * jack], 1), 0.95)
    assert lo2 == pytest.approx([want[0], 2 * want[0]], rel=1e-9) and hi2 == pytest.approx([want[1], 2 * want[1]])


def test_jackknife_means_by_hand():
    x = np.array([[1.0, 0.0], [2.0, 1.0], [6.0, 1.0]])
    np.testing.assert_allclose(jackknife_means(x), [[4.0, 1.0], [3.5, 0.5], [1.5, 0.5]])


@pytest.mark.parametrize("method,scipy_method", [("percentile", "percentile"), ("bca", "BCa")])
@pytest.mark.parametrize("nonlinear", [False, True])
def test_equals_scipy_bootstrap_on_the_same_resamples(method, scipy_method, nonlinear):
    """scipy draws rng.integers(0, n, (B, n)) in one go, as bootstrap_means does for small n: same resamples."""
    x = (np.random.default_rng(1).random(60) < 0.25).astype(float)  # a skewed binomial share
    f = (lambda m: np.log(m)) if nonlinear else None

    def scipy_stat(s, axis):
        m = np.mean(s, axis=axis)
        return np.log(m) if nonlinear else m

    ref = stats.bootstrap((x,), scipy_stat, n_resamples=999, method=scipy_method, confidence_level=0.9,
                          rng=np.random.default_rng(7), vectorized=True).confidence_interval
    ours = bootstrap_ci(x if f is None else x[:, None], None if f is None else (lambda m: f(m)[:, 0]),
                        n_resamples=999, confidence=0.9, seed=7, method=method)
    assert ours.method == method
    assert float(ours.low) == pytest.approx(ref.low, rel=1e-10)
    assert float(ours.high) == pytest.approx(ref.high, rel=1e-10)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_coverage_of_a_binomial_share(method):
    """200 simulated datasets of 200 images, true share 0.3: the 95 % interval covers it in ~95 % of them."""
    rng = np.random.default_rng(0)
    covered = 0
    for t in range(200):
        x = (rng.random(200) < 0.3).astype(float)
        ci = bootstrap_ci(x, n_resamples=500, seed=t, method=method)
        covered += ci.low <= 0.3 <= ci.high
    assert 0.90 <= covered / 200 <= 0.99, covered


def test_the_demo_ddm_interval_is_one_sided_by_geometry():
    """The demo's DDM cell: 754 images of digit 0, none of digit 1, 246 outside (docs/results.md: 0.612 [0.612,
    0.614]). Along p_0 + p_out = 1 the strict FD has its minimum sqrt(3/8) = 0.6124 at p_0 = 0.75, so no resample
    scores below it: the percentile interval starts at the minimum; BCa (z0 far below 0) collapses onto it."""
    x = np.eye(3)[np.array([0] * 754 + [2] * 246)]
    target = np.array([0.5, 0.5])

    def fd(m):
        return strict_fairness_discrepancy(m, target)

    point = fd(x.mean(0))
    assert point == pytest.approx(0.6124, abs=1e-4) and point - math.sqrt(3 / 8) < 1e-4
    pct = bootstrap_ci(x, fd, n_resamples=1000, seed=0)
    assert float(pct.low) == pytest.approx(math.sqrt(3 / 8), abs=1e-6)  # every draw >= the minimum ...
    assert round(float(pct.low), 3) == 0.612 and round(float(pct.high), 3) == 0.614  # ... the published interval
    bca = bootstrap_ci(x, fd, n_resamples=1000, seed=0, method="bca")
    assert float(bca.high) - float(bca.low) < 0.25 * (float(pct.high) - float(pct.low))
    # a smooth statistic of the same images (the outside share): the two methods agree to the third decimal
    p_out = bootstrap_ci(x[:, 2], n_resamples=2000, seed=0)
    b_out = bootstrap_ci(x[:, 2], n_resamples=2000, seed=0, method="bca")
    assert float(p_out.low) == pytest.approx(float(b_out.low), abs=3e-3)
    assert float(p_out.high) == pytest.approx(float(b_out.high), abs=3e-3)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(np.ones(5), method="basic")
