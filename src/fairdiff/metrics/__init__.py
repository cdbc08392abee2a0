"""Fairness and quality metrics: pure functions, streaming accumulators, and bootstrap intervals.

This package imports nothing from fairdiff above ``fairdiff.utils`` so it can be reused on its own.
"""

from fairdiff.metrics.bootstrap import (
    ConfidenceInterval,
    bootstrap_ci,
    bootstrap_counts,
    bootstrap_means,
    percentile_interval,
)
from fairdiff.metrics.functional import (
    conditional_parity,
    fairness_discrepancy,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    group_histogram,
    kl_to_target,
    mean_pairwise_gap,
    precision_recall,
    resolve_target,
    soft_histogram,
    softmax,
    statistical_parity_difference,
    uniform_target,
)
from fairdiff.metrics.streaming import FeatureStatistics, GroupHistogram

__all__ = [
    "ConfidenceInterval",
    "FeatureStatistics",
    "GroupHistogram",
    "bootstrap_ci",
    "bootstrap_counts",
    "bootstrap_means",
    "conditional_parity",
    "fairness_discrepancy",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "group_histogram",
    "kl_to_target",
    "mean_pairwise_gap",
    "percentile_interval",
    "precision_recall",
    "resolve_target",
    "soft_histogram",
    "softmax",
    "statistical_parity_difference",
    "uniform_target",
]
