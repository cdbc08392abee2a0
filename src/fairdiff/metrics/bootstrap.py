"""Vectorised bootstrap confidence intervals over generated images.

Every fairness metric fairdiff reports is a function of per-image *means* (hard shares are means of
one-hot predictions, soft shares are means of probabilities, conditional rates are means of hits). So one
bootstrap resample of N images is a vector of counts w (how often each image was drawn) and its statistic
is a function of ``w @ X / N``. Drawing all B count vectors at once and doing one matrix product replaces a
Python loop over resamples: 1,000 resamples of 10,000 images take well under a second.

Two interval methods: ``percentile`` (the default) and ``bca`` (bias-corrected and accelerated, Efron & Tibshirani
1993, 14.3; the same formulas as ``scipy.stats.bootstrap(method='BCa')``, which the tests check it against). The
jackknife that BCa needs is cheap here too: leaving image i out changes the column means to
``(N * mean - x_i) / (N - 1)``, so all N jackknife statistics are one vectorised call.

Why percentile stays the default: the reported statistics are often at a minimum of the statistic along every
direction resampling can move. The demo's DDM cell judged (0.754, 0, 0.246) of its images as (digit 0, digit 1,
outside); no image is digit 1, so no resample has one, and along p_0 + p_out = 1 the strict FD
sqrt((p_0 - 1/2)^2 + 1/4 + p_out^2) has its minimum 0.6124 at p_0 = 0.75. Every resample therefore scores at least
the point estimate: the percentile interval [0.612, 0.614] is one-sided by the geometry, not by a bug (the point
and the resamples use the same function of the same means). BCa reads "all draws above the estimate" as bias
(z0 -> -inf) and collapses to about [0.612, 0.612]; on smooth statistics (a share) the two agree closely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class ConfidenceInterval:
    """A bootstrap interval for one statistic (arrays for vector statistics); ``method``: percentile or bca."""

    low: np.ndarray | float
    high: np.ndarray | float
    confidence: float
    n_resamples: int
    method: str = "percentile"

    def as_list(self) -> list:
        lo, hi = np.asarray(self.low), np.asarray(self.high)
        if lo.ndim == 0:
            return [float(lo), float(hi)]
        return [[float(a), float(b)] for a, b in zip(lo, hi)]


def bootstrap_counts(n: int, n_resamples: int, rng: np.random.Generator, chunk: int = 100):
    """Yield ``[b, n]`` count matrices (each row: how often each of n items is drawn; rows sum to n)."""
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        idx += (np.arange(b) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n)
        done += b


def bootstrap_means(values: np.ndarray, n_resamples: int = 1000, seed: int = 0, chunk: int | None = None) -> np.ndarray:
    """Column means of ``values`` ``[N, D]`` under ``n_resamples`` resamples with replacement -> ``[B, D]``.

    Resamples are drawn as index matrices and turned into counts, so the work is one matrix product per
    chunk. The chunk size keeps the index matrix near 10 M entries whatever N is.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    chunk = chunk or max(1, min(n_resamples, 10_000_000 // max(n, 1)))
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, x.shape[1]))
    row = 0
    for w in bootstrap_counts(n, n_resamples, rng, chunk):
        out[row : row + len(w)] = (w @ x) / n
        row += len(w)
    return out


def paired_bootstrap_means(blocks: dict[str, np.ndarray], n_resamples: int = 1000,
                           seed: int = 0) -> dict[str, np.ndarray]:
    """Bootstrap means of several named per-image blocks under ONE set of resamples (paired across blocks).

    ``blocks`` maps a name to ``[N, D_i]`` values (the same N images in the same order); returns the name ->
    ``[B, D_i]`` resampled column means, exactly the columns :func:`bootstrap_means` gives for the blocks
    side by side (in the order of ``blocks``).
    """
    arrays = [np.asarray(v, np.float64).reshape(len(v), -1) for v in blocks.values()]
    draws = bootstrap_means(np.concatenate(arrays, axis=1), n_resamples, seed)
    out, col = {}, 0
    for name, a in zip(blocks, arrays):
        out[name] = draws[:, col : col + a.shape[1]]
        col += a.shape[1]
    return out


def percentile_interval(draws: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed percentile interval along axis 0 of ``draws`` (NaN draws are ignored)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    a = (1.0 - confidence) / 2.0
    lo, hi = np.nanquantile(np.asarray(draws, np.float64), [a, 1.0 - a], axis=0)
    return lo, hi


def jackknife_means(values: np.ndarray) -> np.ndarray:
    """Column means of ``values`` ``[N, D]`` with each row left out in turn -> ``[N, D]`` (row i: without row i)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    if n < 2:
        raise ValueError("the jackknife needs at least two rows")
    return (x.sum(axis=0, keepdims=True) - x) / (n - 1)


def bca_interval(draws: np.ndarray, point: np.ndarray | float, jackknife: np.ndarray,
                 confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected and accelerated interval along axis 0 of ``draws`` ``[B, ...]``.

    ``point``: the statistic on the whole sample (shape ``draws.shape[1:]``); ``jackknife``: the statistic with each
    observation left out, ``[N, ...]``. z0 = Phi^-1(share of draws below the point, ties counting half); the
    acceleration a = sum(U^3) / (6 sum(U^2)^1.5) with U_i = mean(jackknife) - jackknife_i; the interval is the
    draws' quantiles at Phi(z0 + (z0 + z) / (1 - a (z0 + z))) for z = -+Phi^-1((1 + confidence) / 2). These are
    the formulas of ``scipy.stats.bootstrap(method='BCa')``. Where every draw lies on one side of the point (z0
    infinite) the interval is that side's extreme draw, on both ends.
    """
    from scipy.special import ndtr, ndtri

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    d = np.asarray(draws, np.float64)
    theta = np.asarray(point, np.float64)
    jk = np.asarray(jackknife, np.float64)
    if theta.shape != d.shape[1:] or jk.shape[1:] != d.shape[1:]:
        raise ValueError(f"draws {d.shape}, point {theta.shape} and jackknife {jk.shape} do not match")
    b = np.sum(~np.isnan(d), axis=0)
    below = (np.sum(d < theta, axis=0) + np.sum(d <= theta, axis=0)) / (2.0 * np.maximum(b, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        z0 = ndtri(below)
        u = jk.mean(axis=0) - jk
        acc = np.sum(u**3, axis=0) / (6.0 * np.sum(u**2, axis=0) ** 1.5)
        acc = np.where(np.isfinite(acc), acc, 0.0)  # a constant jackknife: no acceleration
        z = ndtri((1.0 - confidence) / 2.0)
        alphas = [ndtr(z0 + (z0 + zz) / (1.0 - acc * (z0 + zz))) for zz in (z, -z)]
    lo, hi = (_quantile_each(d, np.nan_to_num(a, nan=0.5)) for a in alphas)
    return lo, hi


def _quantile_each(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``nanquantile(d[:, j], q[j])`` for every column j of ``d`` ``[B, ...]`` (linear interpolation)."""
    q = np.clip(np.asarray(q, np.float64), 0.0, 1.0)
    if q.ndim == 0:
        return np.nanquantile(d, float(q), axis=0)
    flat, qs = d.reshape(len(d), -1), q.reshape(-1)
    return np.array([np.nanquantile(flat[:, j], qs[j]) for j in range(flat.shape[1])]).reshape(q.shape)


CI_METHODS = ("percentile", "bca")


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
) -> ConfidenceInterval:
    """Bootstrap CI of ``statistic(column means of values)``, by the ``percentile`` or the ``bca`` method.

    ``values`` is ``[N]`` or ``[N, D]`` per-image data (e.g. one-hot predictions); ``statistic`` maps the
    ``[B, D]`` resampled means to ``[B]`` or ``[B, M]`` (vectorised; identity by default, i.e. a CI for each
    column mean). Use the same ``seed`` for several statistics to get paired resamples. The point estimate is
    the same ``statistic`` of the plain column means (BCa needs it; see the module doc for when BCa misleads).
    """
    if method not in CI_METHODS:
        raise ValueError(f"method must be one of {CI_METHODS}, got {method!r}")
    x = np.asarray(values, np.float64)
    x2 = x[:, None] if x.ndim == 1 else x
    squeeze = x.ndim == 1 and statistic is None

    def stat(means: np.ndarray) -> np.ndarray:
        out = means if statistic is None else np.asarray(statistic(means), np.float64)
        return out[:, 0] if squeeze else out

    draws = stat(bootstrap_means(x2, n_resamples, seed))
    if method == "percentile":
        lo, hi = percentile_interval(draws, confidence)
    else:
        point = stat(x2.mean(axis=0, keepdims=True))[0]
        lo, hi = bca_interval(draws, point, stat(jackknife_means(x2)), confidence)
    return ConfidenceInterval(lo, hi, confidence, n_resamples, method)
