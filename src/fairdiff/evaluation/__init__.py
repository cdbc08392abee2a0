"""Evaluation: judge generated images (fairness with CIs, quality vs real held-out images), write reports."""

from fairdiff.evaluation.compare import compare_runs
from fairdiff.evaluation.evaluate import evaluate_images, evaluate_run, evaluate_samples
from fairdiff.evaluation.report import write_report
from fairdiff.evaluation.samples import load_images

__all__ = ["compare_runs", "evaluate_images", "evaluate_run", "evaluate_samples", "load_images", "write_report"]
