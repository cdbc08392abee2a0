"""Label-free groups for debiasing: clusters of the base's own images (no label, no judge).

``fit_cluster_judge`` takes a pilot set of the base's images, computes features (PCA of the pixels, fitted on those
images only) and clusters them. Two ways:

- ``spectral`` (the default, ``--judge clusters``): spectral clustering of the pilot's 10-nearest-neighbour graph.
  A new image takes the cluster most of its 10 nearest pilot images are in, and is *outside* when their mean
  distance exceeds ``outside_quantile`` of the pilot images' own (leave-one-out) mean distances in that cluster.
  Chosen on the pilots of the MNIST bases, scored by the validation judge (``benchmarks/cluster_study.py``,
  docs/debias.md): a graph follows a mode of any shape and size, so a 4:1 base's minority is one cluster.
- ``kmeans`` (``--judge clusters-kmeans``): k-means, a new image takes its nearest centroid and is outside beyond
  ``outside_quantile`` of its cluster's pilot distances. k-means prefers clusters of similar size, so on a 4:1
  base it often splits the majority mode (the first label-free rows of docs/debias.md).

Clusters are numbered by their share of the pilot set, largest first, so on a biased base cluster 0 is the majority
mode: a target over clusters reads like a target over groups whose majority comes first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fairdiff.data.clusters import NEIGHBORS
from fairdiff.metrics import OUTSIDE

CLUSTER_JUDGES = {"clusters": "spectral", "clusters-kmeans": "kmeans"}  # --judge value -> clustering


def cluster_method(judge) -> str | None:
    """The clustering a ``--judge`` value asks for (``'spectral'`` / ``'kmeans'``), None for a labelled judge."""
    return CLUSTER_JUDGES.get(judge) if isinstance(judge, str) else None


@dataclass
class ClusterJudge:
    mean: np.ndarray
    components: np.ndarray  # [D, P]
    centroids: np.ndarray  # [K, D], ordered by pilot share (largest first)
    radius: np.ndarray  # [K]: outside beyond it (kmeans: centroid distance; spectral: mean distance to neighbours)
    pilot_shares: list[float]
    seed: int
    method: str = "kmeans"
    pilot_features: np.ndarray | None = None  # spectral: [N, D] the pilot's features and their clusters
    pilot_labels: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return len(self.centroids)

    def features(self, images: np.ndarray) -> np.ndarray:
        x = images.reshape(len(images), -1).astype(np.float64) / 255.0
        return (x - self.mean) @ self.components.T

    def _neighbours(self, f: np.ndarray, exclude_self: bool = False):
        """Indices and distances of each row's ``NEIGHBORS`` nearest pilot images (in chunks of 512 rows)."""
        nn = min(NEIGHBORS, len(self.pilot_features) - int(exclude_self))
        idx, dist = [], []
        p2 = (self.pilot_features ** 2).sum(1)
        for s in range(0, len(f), 512):
            c = f[s:s + 512]
            d = np.sqrt(np.maximum((c ** 2).sum(1)[:, None] + p2[None] - 2 * c @ self.pilot_features.T, 0.0))
            if exclude_self:
                d[np.arange(len(c)), np.arange(s, s + len(c))] = np.inf
            i = np.argpartition(d, nn - 1, axis=1)[:, :nn]
            idx.append(i)
            dist.append(np.take_along_axis(d, i, 1))
        return np.concatenate(idx), np.concatenate(dist)

    def _vote(self, idx: np.ndarray) -> np.ndarray:
        k = self.num_classes
        counts = np.zeros((len(idx), k), np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(idx)), idx.shape[1]), self.pilot_labels[idx].ravel()), 1)
        return counts.argmax(1)

    def verdicts(self, images: np.ndarray) -> np.ndarray:
        f = self.features(images)
        if self.method == "spectral":
            idx, dist = self._neighbours(f)
            near = self._vote(idx)
            far = dist.mean(1) > self.radius[near]
        else:
            d = np.linalg.norm(f[:, None, :] - self.centroids[None], axis=2)
            near = d.argmin(1)
            far = d[np.arange(len(f)), near] > self.radius[near]
        return np.where(far, OUTSIDE, near).astype(np.int64)

    def arrays(self) -> dict:
        """Every array that decides the verdicts (saved, and hashed by the pilot cache)."""
        out = {"mean": self.mean, "components": self.components, "centroids": self.centroids, "radius": self.radius}
        if self.method == "spectral":
            out.update(pilot_features=self.pilot_features, pilot_labels=self.pilot_labels)
        return out

    def describe(self) -> dict:
        return {"name": f"{self.method}-pca-k{self.num_classes}", "kind": "clusters (label-free)",
                "pilot_shares": [round(s, 4) for s in self.pilot_shares], "seed": self.seed,
                "components": int(self.components.shape[0])}


def fit_cluster_judge(images: np.ndarray, k: int, *, seed: int = 0, n_components: int = 32,
                      outside_quantile: float = 0.99, method: str = "spectral") -> ClusterJudge:
    """Clusters (``method``: spectral or kmeans) on a PCA of the uint8 ``images``; see the module docstring."""
    from fairdiff.data.clusters import cluster_labels, largest_first, pca_features

    pca, f = pca_features(images.reshape(len(images), -1).astype(np.float64) / 255.0, n_components, seed)
    if method == "kmeans":  # the centroids k-means found (a new image takes the nearest)
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(f)
        raw = km.labels_
    else:
        raw = cluster_labels(f, k, method, seed)
    counts = np.bincount(raw, minlength=k)
    order, lab = largest_first(raw, k)
    if method == "kmeans":
        centroids = km.cluster_centers_[order]
    else:  # the clusters' means (described, not used for verdicts)
        centroids = np.stack([f[lab == c].mean(0) if (lab == c).any() else np.full(f.shape[1], np.inf)
                              for c in range(k)])
    shares = (counts[order] / len(lab)).tolist()
    if method == "spectral":
        cj = ClusterJudge(pca.mean_, pca.components_, centroids, np.zeros(k), shares, seed, "spectral", f, lab)
        _, dist = cj._neighbours(f, exclude_self=True)
        score = dist.mean(1)
    else:
        cj = ClusterJudge(pca.mean_, pca.components_, centroids, np.zeros(k), shares, seed, "kmeans")
        score = np.linalg.norm(f - centroids[lab], axis=1)
    cj.radius = np.array([np.quantile(score[lab == c], outside_quantile) if (lab == c).any() else np.inf
                          for c in range(k)])
    return cj


def save_cluster_judge(cj: ClusterJudge, path) -> None:
    """The clusters as plain arrays (``.npz``, no pickle), so that a label-free classifier carries the groups it
    was fitted on."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **cj.arrays(), pilot_shares=np.asarray(cj.pilot_shares), seed=np.asarray(cj.seed),
             method=np.asarray(cj.method))


def load_cluster_judge(path) -> ClusterJudge:
    with np.load(path, allow_pickle=False) as z:
        method = str(z["method"]) if "method" in z else "kmeans"  # files written before spectral clusters
        extra = (z["pilot_features"], z["pilot_labels"]) if method == "spectral" else (None, None)
        return ClusterJudge(z["mean"], z["components"], z["centroids"], z["radius"], z["pilot_shares"].tolist(),
                            int(z["seed"]), method, *extra)
