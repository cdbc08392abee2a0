"""Copying (memorisation) check: are generated images new, or near-copies of the training images?

A model trained on a few hundred images (a reference set alone, faces-mini) can score well on every fairness and
quality metric by reproducing its training set. Two numbers, both in pixel space (L2 between flattened images),
each with the value a model that generalises would get written beside it:

- ``copy_rate``: the share of generated images whose nearest training image is closer than the ``quantile``-th
  quantile of the same distance for *real held-out* images (images of the same distribution the model never saw).
  A fresh real image lands below that line with probability ``quantile`` (0.05) by construction; a model that copies
  lands there far more often.
- ``closer_to_train``: the share of generated images nearer to a training subset than to a held-out subset of the
  same size and the same group counts. A model whose images are as new as fresh real ones gives about 0.5;
  copying pushes it toward 1.

Pure numpy and scikit-learn (the nearest-neighbour search), so the metric can be tested against a hand computation
and reused outside fairdiff.
"""

from __future__ import annotations

import numpy as np

from fairdiff.metrics.functional import nearest_neighbours


def nearest_distance(queries: np.ndarray, pool: np.ndarray, batch: int = 512) -> np.ndarray:
    """L2 distance from every row of ``queries`` ``[N, D]`` to its nearest row of ``pool`` ``[M, D]``.

    ``batch``: unused (scikit-learn chunks the search itself), kept for callers."""
    q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    p = np.asarray(pool, np.float64).reshape(len(pool), -1)
    if len(p) == 0:
        raise ValueError("the pool to search is empty")
    if q.shape[1] != p.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values each, the pool {p.shape[1]}")
    if len(q) == 0:
        return np.empty(0)
    return nearest_neighbours(p, 1).kneighbors(q)[0][:, 0]


def matched_subsets(train_groups: np.ndarray, heldout_groups: np.ndarray,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a training subset and a held-out subset with the same count per group.

    The counts follow the training set's group shares, scaled down until every group fits in both sets, so that a
    biased model is not judged "closer to train" merely because the training set holds more of the majority.
    """
    tg, hg = np.asarray(train_groups).reshape(-1), np.asarray(heldout_groups).reshape(-1)
    groups = np.unique(tg)
    tc = np.array([(tg == g).sum() for g in groups], np.float64)
    hc = np.array([(hg == g).sum() for g in groups], np.float64)
    scale = min(1.0, *(hc[i] / tc[i] for i in range(len(groups))))
    want = np.floor(tc * scale).astype(int)
    rng = np.random.default_rng(seed)
    ti, hi = [], []
    for g, m in zip(groups, want):
        ti.append(rng.permutation(np.flatnonzero(tg == g))[:m])
        hi.append(rng.permutation(np.flatnonzero(hg == g))[:m])
    return np.concatenate(ti).astype(int), np.concatenate(hi).astype(int)


def copy_metrics(
    generated: np.ndarray,
    train: np.ndarray,
    heldout: np.ndarray,
    *,
    train_groups: np.ndarray | None = None,
    heldout_groups: np.ndarray | None = None,
    quantile: float = 0.05,
    seed: int = 0,
) -> dict:
    """The copying check for ``generated`` images against the ``train`` images a model saw and real ``heldout`` ones.

    All three are arrays of images in one scale (any shape ``[N, ...]``). Groups (optional) make the held-out race
    of ``closer_to_train`` fair; without them every image counts as one group. Returns plain floats / ints.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    if len(generated) == 0 or len(train) == 0 or len(heldout) == 0:
        raise ValueError("the copying check needs generated, training and held-out images")
    d_gen = nearest_distance(generated, train)
    d_real = nearest_distance(heldout, train)
    threshold = float(np.quantile(d_real, quantile))
    tg = np.zeros(len(train), int) if train_groups is None else np.asarray(train_groups)
    hg = np.zeros(len(heldout), int) if heldout_groups is None else np.asarray(heldout_groups)
    ti, hi = matched_subsets(tg, hg, seed)
    out = {
        "copy_rate": float((d_gen < threshold).mean()),
        "copy_rate_real": float(quantile),
        "copy_threshold": threshold,
        "nn_train_median": float(np.median(d_gen)),
        "nn_train_median_real": float(np.median(d_real)),
        "closer_to_train": None,
        "race_size": int(len(ti)),
        "n": int(len(generated)),
        "train_n": int(len(train)),
    }
    if len(ti):
        tr_sub = np.asarray(train)[ti]
        he_sub = np.asarray(heldout)[hi]
        nearer = nearest_distance(generated, tr_sub) < nearest_distance(generated, he_sub)
        out["closer_to_train"] = float(nearer.mean())
    return out
