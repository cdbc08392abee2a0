"""Attribute-free groups: clusters (k-means or spectral) of image features, so debiasing needs no annotation.

Features are a PCA of the pixels, fitted on the training images only; this encoder shares nothing with the
evaluation classifier, so a method trained against clusters is not trained against the judge.
"""

from __future__ import annotations

import numpy as np
import torch


CLUSTERINGS = ("kmeans", "spectral")
NEIGHBORS = 10  # spectral: the nearest-neighbour graph's degree


def cluster_labels(feats: np.ndarray, k: int, method: str = "kmeans", seed: int = 0) -> np.ndarray:
    """``k`` clusters of the rows of ``feats``: k-means, or spectral clustering of their ``NEIGHBORS``-nearest-
    neighbour graph (follows a mode of any shape and size; k-means prefers clusters of similar size). int64 ``[N]``."""
    import warnings

    from sklearn.cluster import KMeans, SpectralClustering

    if method not in CLUSTERINGS:
        raise ValueError(f"unknown clustering {method!r}: one of {', '.join(CLUSTERINGS)}")
    if method == "kmeans":
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(feats).labels_.astype(np.int64)
    with warnings.catch_warnings():  # a graph in several pieces is still clustered; sklearn warns about it
        warnings.simplefilter("ignore")
        sc = SpectralClustering(n_clusters=k, affinity="nearest_neighbors", n_neighbors=min(NEIGHBORS, len(feats) - 1),
                                assign_labels="cluster_qr", random_state=seed)
        return sc.fit(feats).labels_.astype(np.int64)


def pca_features(x: np.ndarray, n_components: int = 32, seed: int = 0):
    """A PCA fitted on the rows of ``x`` ``[N, D]`` (at most ``n_components``, fewer for small N or D) and the rows'
    features under it."""
    from sklearn.decomposition import PCA

    nc = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    pca = PCA(n_components=nc, random_state=seed).fit(x)
    return pca, pca.transform(x)


def cluster_groups(images: torch.Tensor, k: int, seed: int = 0, n_components: int = 32,
                   method: str = "kmeans") -> np.ndarray:
    """Assign each image one of ``k`` groups by :func:`cluster_labels` on PCA features; int64 labels ``[N]``.
    Spectral clusters are numbered largest first (as the label-free judge of ``debias --judge clusters`` numbers
    them), so that a target's first share goes to the largest cluster; k-means clusters keep k-means' own numbering
    (that of every run made with them before)."""
    _, feats = pca_features(images.reshape(len(images), -1).double().numpy(), n_components, seed)
    labels = cluster_labels(feats, k, method, seed)
    return largest_first(labels, k)[1] if method == "spectral" else labels


def largest_first(labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber ``k`` clusters by size, largest first (ties in their old order): the old number of each new cluster
    (``order``) and the renumbered labels."""
    order = np.argsort(-np.bincount(labels, minlength=k), kind="stable")
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    return order, rank[labels]


def cluster_agreement(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Normalised mutual information between clusters and true groups (1 = the same partition)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(labels, clusters))
