"""Streaming statistics with ``update / compute / reset``, so large sample sets never sit in memory at once.

Results do not depend on how the data were split into batches (up to float64 rounding): feature moments are
merged with the pairwise (Chan et al.) update, which stays accurate when the mean is large compared with
the spread, unlike accumulating raw sums of squares.
"""

from __future__ import annotations

import numpy as np

from fairdiff.metrics.functional import frechet_distance, softmax


class FeatureStatistics:
    """Running mean and covariance of ``[B, D]`` feature batches (float64)."""

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None  # sum of outer products of deviations from the mean

    def update(self, features: np.ndarray) -> FeatureStatistics:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError("features must be [B, D]")
        if x.shape[0] == 0:
            return self
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"feature dimension {x.shape[1]} != {self.dim}")
        nb = x.shape[0]
        mb = x.mean(axis=0)
        xc = x - mb
        m2b = xc.T @ xc
        if self.count == 0:
            self.count, self.mean, self.m2 = nb, mb, m2b
            return self
        n = self.count + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + np.outer(delta, delta) * (self.count * nb / n)
        self.count = n
        return self

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """Fold another accumulator into this one (e.g. from another process)."""
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.m2, self.dim = other.count, other.mean.copy(), other.m2.copy(), other.dim
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
        self.count = n
        return self

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean ``[D]``, unbiased covariance ``[D, D]``), the same as ``np.cov(X, rowvar=False)``."""
        if self.count < 2:
            raise ValueError("need at least two feature vectors")
        return self.mean.copy(), self.m2 / (self.count - 1)

    def frechet_distance(self, other: FeatureStatistics) -> float:
        return frechet_distance(*self.compute(), *other.compute())


class GroupHistogram:
    """Running hard and soft group histograms from classifier logits or probabilities (fixed length K)."""

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be at least 1")
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.hard = np.zeros(self.num_classes, np.int64)
        self.soft = np.zeros(self.num_classes, np.float64)

    def update(self, scores: np.ndarray, from_logits: bool = True) -> GroupHistogram:
        s = np.asarray(scores, np.float64)
        if s.ndim != 2 or s.shape[1] != self.num_classes:
            raise ValueError(f"scores must be [B, {self.num_classes}]")
        if s.shape[0] == 0:
            return self
        p = softmax(s) if from_logits else s
        self.hard += np.bincount(s.argmax(1), minlength=self.num_classes)
        self.soft += p.sum(0)
        self.count += s.shape[0]
        return self

    def update_predictions(self, predictions: np.ndarray) -> GroupHistogram:
        """Add hard predictions only (integer group indices); soft shares then cover only scored batches."""
        y = np.asarray(predictions, np.int64).reshape(-1)
        self.hard += np.bincount(y, minlength=self.num_classes)[: self.num_classes]
        self.count += y.size
        return self

    def compute(self) -> dict:
        """``{"hard": p_hat, "soft": p_bar, "n": count}``."""
        if self.count == 0:
            raise ValueError("no images counted")
        return {"hard": self.hard / self.count, "soft": self.soft / self.count, "n": self.count}
