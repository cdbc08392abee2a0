"""The k-NN searches run on scikit-learn's NearestNeighbors: the same numbers as the hand-written numpy
versions they replaced (kept here as the reference), on random features and on integer images."""

from __future__ import annotations

import numpy as np
import pytest

from fairdiff.metrics import knn_radii, knn_ratio, manifold_scale, precision_recall
from fairdiff.metrics.copying import copy_metrics, nearest_distance


def _old_pairwise_sq(a, b):
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _old_knn_radii(x, k, chunk=1024):  # the numpy implementation before scikit-learn
    out = np.empty(len(x))
    for s in range(0, len(x), chunk):
        out[s : s + chunk] = np.partition(_old_pairwise_sq(x[s : s + chunk], x), k, axis=1)[:, k]
    return out


def _old_nearest_distance(q, p, batch=512):
    q = np.asarray(q, np.float64).reshape(len(q), -1)
    p = np.asarray(p, np.float64).reshape(len(p), -1)
    p2 = (p * p).sum(1)
    out = np.empty(len(q))
    for s in range(0, len(q), batch):
        b = q[s : s + batch]
        out[s : s + batch] = np.sqrt(np.maximum(((b * b).sum(1)[:, None] + p2[None, :] - 2.0 * b @ p.T).min(1), 0.0))
    return out


def _old_precision_recall(real, fake, k):
    def cov(q, c, rad):
        return float(np.any(_old_pairwise_sq(q, c) <= rad[None, :], axis=1).mean())

    return cov(fake, real, _old_knn_radii(real, k)), cov(real, fake, _old_knn_radii(fake, k))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_knn_radii_and_precision_recall_equal_the_numpy_version(seed, k):
    rng = np.random.default_rng(seed)
    real = rng.normal(size=(300, 16))
    fake = rng.normal(0.3, 1.1, size=(250, 16))
    np.testing.assert_allclose(knn_radii(real, k), _old_knn_radii(real, k), rtol=1e-10, atol=1e-12)
    assert precision_recall(real, fake, k=k) == _old_precision_recall(real, fake, k)
    pr = precision_recall(real, fake, k=k)
    assert 0.2 < pr[0] < 1.0 and 0.2 < pr[1] < 1.0  # a non-trivial case: some points in, some out


def test_knn_radii_with_duplicate_rows():
    """A row's neighbours exclude the row itself, not its duplicates: a twin is a neighbour at distance 0."""
    x = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    np.testing.assert_allclose(knn_radii(x, 1), [0.0, 0.0, 9.0, 16.0])
    np.testing.assert_allclose(knn_radii(x, 2), [9.0, 9.0, 9.0, 16.0])
    np.testing.assert_allclose(knn_radii(x, 2), _old_knn_radii(x, 2))


def test_nearest_distance_and_copy_metrics_equal_the_numpy_version():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (120, 1, 8, 8)).astype(np.uint8)
    held = rng.integers(0, 256, (60, 1, 8, 8)).astype(np.uint8)
    gen = np.concatenate([train[:20], rng.integers(0, 256, (40, 1, 8, 8)).astype(np.uint8)])
    d = nearest_distance(gen, train)
    assert np.array_equal(d, _old_nearest_distance(gen, train))  # integer images: exact in both
    assert (d[:20] == 0).all() and (d[20:] > 0).all()
    a, b = rng.normal(size=(70, 5)), rng.normal(size=(90, 5))
    np.testing.assert_allclose(nearest_distance(a, b), _old_nearest_distance(a, b), rtol=1e-10)
    m = copy_metrics(gen, train, held, seed=0)
    thr = np.quantile(_old_nearest_distance(held, train), 0.05)
    assert m["copy_threshold"] == thr and m["copy_rate"] == float((_old_nearest_distance(gen, train) < thr).mean())
    assert m["copy_rate"] >= 20 / 60  # the 20 copies, and the fresh images below the 5 % line of real ones


def test_knn_ratio_and_manifold_scale_use_the_same_radii():
    rng = np.random.default_rng(3)
    ref, cal, q = rng.normal(size=(200, 8)), rng.normal(size=(80, 8)), rng.normal(size=(50, 8))
    rad = np.maximum(_old_knn_radii(ref, 3), 1e-12)
    want = (_old_pairwise_sq(q, ref) / rad[None, :]).min(1)
    np.testing.assert_allclose(knn_ratio(ref, q, 3), want, rtol=1e-10)
    ratio_cal = (_old_pairwise_sq(cal, ref) / rad[None, :]).min(1)
    assert manifold_scale(ref, cal, 3) == pytest.approx(max(1.0, np.quantile(ratio_cal, 0.99)), rel=1e-10)
