"""Pure metric functions over numpy arrays (see ``docs/metrics.md``).

Every function here is stateless and typed: it takes predictions, probabilities, shares or features and
returns numbers. Nothing here knows about models, runs or files, so the same code serves the evaluator,
the streaming classes and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ArrayLike = np.ndarray | Sequence[float] | Sequence[int]


def _as_shares(shares: ArrayLike, tol: float = 1e-4) -> np.ndarray:
    """Share vectors (last axis): finite, non-negative, summing to 1; anything else is a ValueError, never NaN."""
    p = np.asarray(shares, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] < 1:
        raise ValueError("shares need at least one group")
    if not np.all(np.isfinite(p)):
        raise ValueError("shares must be finite numbers")
    if np.any(p < 0) or np.any(np.abs(p.sum(axis=-1) - 1.0) > tol):
        raise ValueError("shares must be non-negative and sum to 1")
    return p


SHARES_TOL = 1e-6  # how far from 1 a typed share vector may sum


def check_shares(values, num_groups: int | None = None, *, positive: bool = False, what: str = "target",
                 groups_word: str = "groups") -> np.ndarray:
    """The one rule for a share vector a user gives (a target, training or reference shares): ``"0.5,0.5"``,
    ``"[0.5, 0.5]"`` or a sequence; finite numbers, ``num_groups`` of them, each >= 0 (> 0 with ``positive``),
    summing to 1 within :data:`SHARES_TOL`. Anything else is one ``ValueError`` line naming ``what``."""
    if isinstance(values, str):
        parts = [v for v in values.replace(" ", "").strip("[]").split(",") if v != ""]
        try:
            vals = [float(v) for v in parts]
        except ValueError:
            raise ValueError(f"{what} '{values}' is not a comma-separated list of numbers like 0.5,0.5") from None
    else:
        try:
            vals = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
        except (TypeError, ValueError):
            raise ValueError(f"{what} {values!r} is not a list of numbers") from None
    if not vals:
        raise ValueError(f"{what} is empty")
    shown = [round(v, 6) for v in vals]
    if num_groups is not None and len(vals) != num_groups:
        raise ValueError(f"{what} {shown} has {len(vals)} values but there are {num_groups} {groups_word}")
    if not all(np.isfinite(v) for v in vals):
        raise ValueError(f"{what} {shown}: shares must be finite numbers that sum to 1")
    if positive and any(v <= 0 for v in vals):
        raise ValueError(f"{what} {shown}: every share must be positive")
    if any(v < 0 for v in vals):
        raise ValueError(f"{what} {shown}: shares must be non-negative and sum to 1")
    if abs(sum(vals) - 1.0) > SHARES_TOL:
        raise ValueError(f"{what} {shown} sums to {sum(vals):.4f}; shares must sum to 1")
    return np.asarray(vals, dtype=np.float64)


def uniform_target(num_classes: int) -> np.ndarray:
    """The default reference distribution: every group equally often."""
    if num_classes < 1:
        raise ValueError("num_classes must be at least 1")
    return np.full(num_classes, 1.0 / num_classes)


def resolve_target(target: ArrayLike | None, num_classes: int, tol: float = SHARES_TOL) -> np.ndarray:
    """Check a user target (:func:`check_shares`) or return the uniform one."""
    if target is None:
        return uniform_target(num_classes)
    return check_shares(target, num_classes)


# ------------------------------------------------------------------------------------------ histograms
def group_histogram(predictions: ArrayLike, num_classes: int) -> np.ndarray:
    """Hard group shares p_hat (length exactly ``num_classes``; absent groups count 0).

    ``predictions`` are integer group indices (e.g. ``logits.argmax(1)``). The fixed length matters: a
    histogram that drops absent groups would make an all-one-group sample look fair.
    """
    y = np.asarray(predictions).reshape(-1)
    if y.size == 0:
        raise ValueError("no predictions to count")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("predictions must be integer group indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"predictions must lie in [0, {num_classes - 1}]")
    return np.bincount(y, minlength=num_classes).astype(np.float64) / y.size


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite numbers")
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def soft_histogram(probs: np.ndarray, from_logits: bool = False) -> np.ndarray:
    """Soft group shares p_bar = mean over images of the classifier's class probabilities."""
    p = softmax(probs) if from_logits else np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError("probabilities must be a non-empty [N, K] array")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(np.abs(p.sum(axis=1) - 1.0) > 1e-4):
        raise ValueError("probabilities must be finite, non-negative and sum to 1 per image")
    return p.mean(axis=0)


# ------------------------------------------------------------------------------------------ fairness
def fairness_discrepancy(shares: ArrayLike, target: ArrayLike | None = None) -> np.ndarray | float:
    """FD = || p - p_ref ||_2 (Choi et al. 2020), uniform ``p_ref`` by default.

    Binary with a uniform target this is sqrt(2) * |p_1 - 0.5|, in [0, 0.7071]. Accepts a batch of share
    vectors ``[B, K]`` (returns ``[B]``) so bootstrap draws are scored in one call.
    """
    p = _as_shares(shares)
    t = resolve_target(target, p.shape[-1])
    d = np.sqrt(((p - t) ** 2).sum(axis=-1))
    return float(d) if d.ndim == 0 else d


def kl_to_target(shares: ArrayLike, target: ArrayLike | None = None, eps: float = 1e-6) -> np.ndarray | float:
    """KL(p || p_ref) in nats; ``eps`` is added to both and they are renormalised so empty groups stay finite."""
    p = _as_shares(shares) + eps
    p = p / p.sum(axis=-1, keepdims=True)
    t = resolve_target(target, p.shape[-1]) + eps
    t = t / t.sum()
    d = (p * (np.log(p) - np.log(t))).sum(axis=-1)
    return float(d) if d.ndim == 0 else d


def statistical_parity_difference(shares: ArrayLike) -> np.ndarray | float:
    """SPD for generation: binary p_0 - p_1 (signed); K > 2: max_c p_c - min_c p_c (the largest gap)."""
    p = _as_shares(shares)
    if p.shape[-1] == 2:
        d = p[..., 0] - p[..., 1]
    else:
        d = p.max(axis=-1) - p.min(axis=-1)
    return float(d) if np.ndim(d) == 0 else d


def mean_pairwise_gap(shares: ArrayLike) -> np.ndarray | float:
    """mean_{i<j} |p_i - p_j| over all group pairs (the bias measure of Shen et al.)."""
    p = _as_shares(shares)
    k = p.shape[-1]
    if k < 2:
        d = np.zeros(p.shape[:-1])
    else:
        i, j = np.triu_indices(k, 1)
        d = np.abs(p[..., i] - p[..., j]).mean(axis=-1)
    return float(d) if np.ndim(d) == 0 else d


def conditional_parity(predictions: ArrayLike, conditions: ArrayLike, num_classes: int) -> dict:
    """Conditional scenario: for each group g, the share of images generated *for* g that are classified as g.

    Returns ``{"rates": [K], "counts": [K], "gap": max - min}`` over groups that were requested at least once
    (a group never requested has rate NaN and is left out of the gap).
    """
    y = np.asarray(predictions).reshape(-1).astype(np.int64)
    c = np.asarray(conditions).reshape(-1).astype(np.int64)
    if y.shape != c.shape:
        raise ValueError("predictions and conditions must have the same length")
    if y.size == 0:
        raise ValueError("no predictions to count")
    if min(y.min(), c.min()) < 0 or max(y.max(), c.max()) >= num_classes:
        raise ValueError(f"predictions and conditions must lie in [0, {num_classes - 1}]")
    counts = np.bincount(c, minlength=num_classes)[:num_classes].astype(np.float64)
    hits = np.bincount(c[y == c], minlength=num_classes)[:num_classes].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    seen = rates[counts > 0]
    gap = float(seen.max() - seen.min()) if seen.size else float("nan")
    return {"rates": rates, "counts": counts.astype(np.int64), "gap": gap}


# ------------------------------------------------------------------------------------------ quality
def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ddof=1) covariance of ``[N, D]`` features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError("need at least two feature vectors [N, D]")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between Gaussians: |mu1-mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}).

    The trace of the matrix square root is taken as sum sqrt(eig(S1^{1/2} S2 S1^{1/2})): that matrix is
    symmetric PSD with the same eigenvalues as S1 S2, so the result is real and stable even for the
    rank-deficient covariances of small reference sets.
    """
    mu1, mu2 = np.asarray(mu1, np.float64).reshape(-1), np.asarray(mu2, np.float64).reshape(-1)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError("mean / covariance shapes do not match")
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt, 0.0))


def frechet_distance_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between the Gaussian fits of two feature sets."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def pairwise_sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a`` and of ``b`` (clipped at 0)."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def nearest_neighbours(pool: np.ndarray, k: int = 1):
    """A fitted ``sklearn.neighbors.NearestNeighbors`` over the rows of ``pool`` (Euclidean, exact brute force).

    Brute force computes the distances the way ``pairwise_sq_dists`` does (in float64), so radii taken from it and
    distances compared against them by hand stay consistent; it is also the fast choice for feature dimensions."""
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(np.asarray(pool, np.float64))


def knn_radii(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Squared distance of each row of ``x`` to its k-th nearest other row (``chunk``: unused, kept for callers)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} feature vectors, got {n}")
    d, _ = nearest_neighbours(x, k).kneighbors()  # without a query each row's neighbours exclude the row itself
    return d[:, k - 1] ** 2


def _coverage(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int) -> float:
    """Share of ``queries`` that fall inside at least one ball (centre, radius)."""
    inside = 0
    for s in range(0, queries.shape[0], chunk):
        d = pairwise_sq_dists(queries[s : s + chunk], centres)
        inside += int(np.any(d <= radii[None, :], axis=1).sum())
    return inside / queries.shape[0]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision / recall (Kynkaanniemi et al. 2019) with k-NN manifolds in feature space.

    Precision: share of generated features inside the real manifold (union of balls reaching each real
    point's k-th nearest real neighbour). Recall: share of real features inside the generated manifold.
    """
    r = np.asarray(real, np.float64)
    f = np.asarray(fake, np.float64)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ValueError("real and fake features must be [N, D] with the same D")
    precision = _coverage(f, r, knn_radii(r, k, chunk), chunk)
    recall = _coverage(r, f, knn_radii(f, k, chunk), chunk)
    return precision, recall
