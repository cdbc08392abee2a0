"""Attribute-free groups: k-means clusters of image features, so debiasing needs no annotation.

Features are a PCA of the pixels, fitted on the training images only; this encoder shares nothing with the
evaluation classifier, so a method trained against clusters is not trained against the judge.
"""

from __future__ import annotations

import numpy as np
import torch


def cluster_groups(images: torch.Tensor, k: int, seed: int = 0, n_components: int = 32) -> np.ndarray:
    """Assign each image one of ``k`` groups by k-means on PCA features; returns int64 labels ``[N]``."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = images.reshape(len(images), -1).double().numpy()
    nc = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    feats = PCA(n_components=nc, random_state=seed).fit_transform(x)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(feats)
    return km.labels_.astype(np.int64)


def cluster_agreement(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Normalised mutual information between clusters and true groups (1 = the same partition)."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(labels, clusters))
