"""Open-set judging: images outside every group, strict FD, judge-error correction, replicates (pure numpy).

A judge may say "neither": an image it assigns to a class that is no group, that it is not confident about,
or that lies off the real-image manifold is *outside*. The functions here turn per-image verdicts into the
numbers fairdiff reports (see ``docs/metrics.md``); nothing here knows about models or files.
"""

from __future__ import annotations

import numpy as np

from fairdiff.metrics.functional import knn_radii, pairwise_sq_dists

OUTSIDE = -1  # the verdict of an image that is no member of any group


def strict_shares(verdicts: np.ndarray, num_groups: int) -> np.ndarray:
    """Shares over all images of (group 0, ..., group K-1, outside): length K + 1, sums to 1.

    ``verdicts`` are group indices in [0, K-1] or ``OUTSIDE`` (-1).
    """
    v = np.asarray(verdicts, np.int64).reshape(-1)
    if v.size == 0:
        raise ValueError("no verdicts to count")
    if v.min() < OUTSIDE or v.max() >= num_groups:
        raise ValueError(f"verdicts must lie in [-1, {num_groups - 1}]")
    col = np.where(v == OUTSIDE, num_groups, v)
    return np.bincount(col, minlength=num_groups + 1).astype(np.float64) / v.size


def strict_fairness_discrepancy(shares_with_outside: np.ndarray, target: np.ndarray) -> np.ndarray | float:
    """FD_strict = || (p_1..p_K, p_out) - (t_1..t_K, 0) ||_2, with p over ALL images (batch ``[B, K+1]`` ok).

    The outside mass counts as deviation, so producing images the judge cannot place never lowers it.
    Binary uniform target: range [0, sqrt(1/2 + ...)]; all-outside gives sqrt(sum t^2 + 1).
    """
    p = np.asarray(shares_with_outside, np.float64)
    t = np.append(np.asarray(target, np.float64).reshape(-1), 0.0)
    if p.shape[-1] != t.shape[0]:
        raise ValueError(f"shares have {p.shape[-1]} entries, expected K + 1 = {t.shape[0]}")
    d = np.sqrt(((p - t) ** 2).sum(axis=-1))
    return float(d) if d.ndim == 0 else d


def strict_shortfall(shares_with_outside: np.ndarray, target: np.ndarray) -> np.ndarray | float:
    """Total shortfall of the groups over all images: sum_k max(t_k - p_k, 0) = (1/2) || (p, p_out) - (t, 0) ||_1
    (total variation). Replacing any image by one outside never lowers it, whereas the L2 strict FD drops when
    outside images replace an over-represented group's excess (e.g. (1, 0, 0) -> (0.75, 0, 0.25): 0.707 -> 0.612).
    """
    p = np.asarray(shares_with_outside, np.float64)
    t = np.asarray(target, np.float64).reshape(-1)
    if p.shape[-1] != t.shape[0] + 1:
        raise ValueError(f"shares have {p.shape[-1]} entries, expected K + 1 = {t.shape[0] + 1}")
    d = np.clip(t - p[..., :-1], 0.0, None).sum(axis=-1)
    return float(d) if d.ndim == 0 else d


def valid_shares(shares_with_outside: np.ndarray) -> np.ndarray:
    """Group shares among valid images: p_k / (1 - p_out) (NaN where no image is valid)."""
    p = np.asarray(shares_with_outside, np.float64)
    v = p[..., :-1].sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(v > 0, p[..., :-1] / np.where(v > 0, v, 1.0), np.nan)


def confidence_threshold(real_confidence: np.ndarray, quantile: float = 0.01) -> float:
    """The top-class probability below which only ``quantile`` of real images fall (calibrated on real images)."""
    c = np.asarray(real_confidence, np.float64).reshape(-1)
    if c.size == 0:
        raise ValueError("no real confidences to calibrate on")
    if not 0.0 <= quantile < 1.0:
        raise ValueError("quantile must lie in [0, 1)")
    return float(np.quantile(c, quantile))


def knn_ratio(reference: np.ndarray, queries: np.ndarray, k: int = 3, chunk: int = 1024,
              radii: np.ndarray | None = None) -> np.ndarray:
    """Per query: min over reference points j of d(q, r_j)^2 / radius_j^2, where radius_j reaches r_j's k-th
    nearest reference neighbour. A query lies on the k-NN manifold of improved precision (Kynkaanniemi et
    al. 2019) when this is <= 1."""
    r = np.asarray(reference, np.float64)
    q = np.asarray(queries, np.float64)
    if r.ndim != 2 or q.ndim != 2 or r.shape[1] != q.shape[1]:
        raise ValueError("reference and query features must be [N, D] with the same D")
    rad = knn_radii(r, k, chunk) if radii is None else np.asarray(radii, np.float64)
    rad = np.maximum(rad, 1e-12)
    out = np.empty(q.shape[0])
    for s in range(0, q.shape[0], chunk):
        out[s : s + chunk] = (pairwise_sq_dists(q[s : s + chunk], r) / rad[None, :]).min(axis=1)
    return out


def knn_membership(reference: np.ndarray, queries: np.ndarray, k: int = 3, scale: float = 1.0,
                   chunk: int = 1024, radii: np.ndarray | None = None) -> np.ndarray:
    """Per query: inside the k-NN ball of some reference point (radii squared times ``scale``)? Bool array."""
    return knn_ratio(reference, queries, k, chunk, radii) <= scale


def manifold_scale(reference: np.ndarray, calibration: np.ndarray, k: int = 3, quantile: float = 0.01) -> float:
    """The factor on the squared k-NN radii that keeps all but ``quantile`` of real calibration images (never
    part of ``reference``) on the manifold; at least 1 (plain improved-precision balls)."""
    ratio = knn_ratio(reference, calibration, k)
    return float(max(1.0, np.quantile(ratio, 1.0 - quantile)))


# ------------------------------------------------------------------------------------------ judge error
def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of ``v`` (``[..., K]``) onto the probability simplex."""
    x = np.asarray(v, np.float64)
    k = x.shape[-1]
    u = -np.sort(-x, axis=-1)
    css = np.cumsum(u, axis=-1) - 1.0
    ind = np.arange(1, k + 1)
    cond = u - css / ind > 0
    rho = k - 1 - np.argmax(cond[..., ::-1], axis=-1)  # last index where cond holds
    theta = np.take_along_axis(css, rho[..., None], axis=-1) / (rho[..., None] + 1.0)
    return np.maximum(x - theta, 0.0)


def confusion_matrix(true_groups: np.ndarray, verdicts: np.ndarray, num_groups: int) -> np.ndarray:
    """C[i, j] = P(judge says j | true group i), j over the K groups and outside (last column): ``[K, K+1]``.

    A group without held-out images gets the identity row (no correction possible for it).
    """
    y = np.asarray(true_groups, np.int64).reshape(-1)
    v = np.asarray(verdicts, np.int64).reshape(-1)
    if y.shape != v.shape:
        raise ValueError("true groups and verdicts must have the same length")
    col = np.where(v == OUTSIDE, num_groups, v)
    c = np.zeros((num_groups, num_groups + 1))
    np.add.at(c, (y, col), 1.0)
    n = c.sum(1, keepdims=True)
    eye = np.eye(num_groups, num_groups + 1)
    return np.where(n > 0, c / np.where(n > 0, n, 1.0), eye)


def corrected_strict_shares(observed: np.ndarray, confusion: np.ndarray) -> np.ndarray:
    """Shares (K groups + outside) corrected for judge error (the CLEAM idea, Teo et al. 2023).

    Model: true classes are the K groups plus "garbage", which the judge always calls outside; with the
    measured ``confusion`` ``[..., K, K+1]`` the observed strict shares are q = M^T p. p is the least-squares
    solution (pseudo-inverse) projected to the simplex. Batched over leading axes of both arguments.
    """
    q = np.asarray(observed, np.float64)
    c = np.asarray(confusion, np.float64)
    k = c.shape[-2]
    garbage = np.zeros(c.shape[:-2] + (1, k + 1))
    garbage[..., 0, k] = 1.0
    m = np.concatenate([c, garbage], axis=-2)  # [..., K+1, K+1], rows = true class
    p = (np.linalg.pinv(np.swapaxes(m, -1, -2)) @ q[..., None])[..., 0]
    return project_simplex(p)


def bootstrap_confusions(true_groups: np.ndarray, verdicts: np.ndarray, num_groups: int, n_resamples: int,
                         seed: int = 0) -> np.ndarray:
    """``[B, K, K+1]`` confusion matrices from resampling the held-out images within each true group."""
    rng = np.random.default_rng(seed)
    y = np.asarray(true_groups, np.int64).reshape(-1)
    col = np.where(np.asarray(verdicts).reshape(-1) == OUTSIDE, num_groups, np.asarray(verdicts).reshape(-1))
    out = np.tile(np.eye(num_groups, num_groups + 1), (n_resamples, 1, 1))
    for g in range(num_groups):
        cols = col[y == g]
        if cols.size == 0:
            continue
        draws = cols[rng.integers(0, cols.size, size=(n_resamples, cols.size))]
        counts = np.stack([(draws == j).sum(1) for j in range(num_groups + 1)], axis=1)
        out[:, g, :] = counts / cols.size
    return out


# ------------------------------------------------------------------------------------------ replicates, CIs
def replicate_slices(n: int, replicates: int) -> list[slice]:
    """Split n images into ``replicates`` contiguous, near-equal parts."""
    if replicates < 1 or replicates > n:
        raise ValueError(f"replicates must lie in [1, {n}], got {replicates}")
    edges = np.linspace(0, n, replicates + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def intervals_disjoint(a: list | np.ndarray, b: list | np.ndarray) -> bool:
    """True when two [low, high] intervals do not overlap."""
    return bool(a[1] < b[0] or b[1] < a[0])
