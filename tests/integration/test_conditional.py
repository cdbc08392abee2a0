"""Conditional scenario: the group is the U-Net's condition; the evaluator reports per-group success rates."""

from __future__ import annotations

import numpy as np

from fairdiff.config import load_config
from fairdiff.evaluation import evaluate_run
from fairdiff.training import train


def test_conditional_ddm_reports_conditional_spd(tmp_path, tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "train.steps=3", "model.conditional=true", "method.name=ddm",
                             "method.indicator_widths=[16]", "eval.n_samples=16"])
    run = tmp_path / "cond"
    train(cfg, run, quiet=True)
    m = evaluate_run(run, progress=False)
    labels = np.load(run / "samples" / "samples.npz")["class_labels"]
    assert np.bincount(labels).tolist() == [8, 8]  # conditions cycle over the groups
    rates = m["conditional_rates"]
    assert len(rates) == 2 and all(0.0 <= r <= 1.0 for r in rates)
    assert abs(m["conditional_spd"] - (rates[0] - rates[1])) < 1e-9 or abs(
        abs(m["conditional_spd"]) - abs(rates[0] - rates[1])) < 1e-9
