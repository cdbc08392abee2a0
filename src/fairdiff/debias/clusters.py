"""Label-free groups for debiasing: k-means clusters of the base's own images (no label, no judge).

``fit_cluster_judge`` draws features from a pilot set of the base's images (PCA of the pixels, fitted on those
images only) and clusters them with k-means. Clusters are numbered by their share of the pilot set, largest
first, so on a biased base cluster 0 is the majority mode: a target over clusters reads like a target over groups
whose majority comes first. A new image gets its nearest centroid, or *outside* when it lies farther from it than
``outside_quantile`` of the pilot images lie from theirs (a label-free stand-in for the judge's manifold check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fairdiff.metrics import OUTSIDE


@dataclass
class ClusterJudge:
    mean: np.ndarray
    components: np.ndarray  # [D, P]
    centroids: np.ndarray  # [K, D], ordered by pilot share (largest first)
    radius: np.ndarray  # [K]: the outside_quantile of pilot distances to each centroid
    pilot_shares: list[float]
    seed: int

    @property
    def num_classes(self) -> int:
        return len(self.centroids)

    def features(self, images: np.ndarray) -> np.ndarray:
        x = images.reshape(len(images), -1).astype(np.float64) / 255.0
        return (x - self.mean) @ self.components.T

    def verdicts(self, images: np.ndarray) -> np.ndarray:
        f = self.features(images)
        d = np.linalg.norm(f[:, None, :] - self.centroids[None], axis=2)
        near = d.argmin(1)
        far = d[np.arange(len(f)), near] > self.radius[near]
        return np.where(far, OUTSIDE, near).astype(np.int64)

    def describe(self) -> dict:
        return {"name": f"kmeans-pca-k{self.num_classes}", "kind": "clusters (label-free)",
                "pilot_shares": [round(s, 4) for s in self.pilot_shares], "seed": self.seed,
                "components": int(self.components.shape[0])}


def fit_cluster_judge(images: np.ndarray, k: int, *, seed: int = 0, n_components: int = 32,
                      outside_quantile: float = 0.99) -> ClusterJudge:
    """k-means (k clusters) on a PCA of the uint8 ``images``; see the module docstring."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    nc = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    pca = PCA(n_components=nc, random_state=seed).fit(x)
    f = pca.transform(x)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(f)
    counts = np.bincount(km.labels_, minlength=k)
    order = np.argsort(-counts, kind="stable")
    centroids = km.cluster_centers_[order]
    relabel = np.empty(k, np.int64)
    relabel[order] = np.arange(k)
    lab = relabel[km.labels_]
    d = np.linalg.norm(f - centroids[lab], axis=1)
    radius = np.array([np.quantile(d[lab == c], outside_quantile) if (lab == c).any() else np.inf
                       for c in range(k)])
    return ClusterJudge(pca.mean_, pca.components_, centroids, radius, (counts[order] / len(lab)).tolist(), seed)


CLUSTER_FIELDS = ("mean", "components", "centroids", "radius")


def save_cluster_judge(cj: ClusterJudge, path) -> None:
    """The clusters as plain arrays (``.npz``, no pickle), so that a label-free classifier carries the groups it
    was fitted on."""
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f: getattr(cj, f) for f in CLUSTER_FIELDS}, pilot_shares=np.asarray(cj.pilot_shares),
             seed=np.asarray(cj.seed))


def load_cluster_judge(path) -> ClusterJudge:
    with np.load(path, allow_pickle=False) as z:
        return ClusterJudge(*(z[f] for f in CLUSTER_FIELDS), z["pilot_shares"].tolist(), int(z["seed"]))
