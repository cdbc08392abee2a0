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
    # the same judge (cached by evaluate_run) classifies the same images; rates counted here by hand
    from fairdiff.evaluation.judges import load_classifier

    images = np.load(run / "samples" / "samples.npz")["images"][: m["n"]]
    clf = load_classifier(cfg.eval.classifier, cfg.data, cfg.eval)
    logits = clf.predict(images, all_classes=True)[0][:, : clf.num_classes]
    preds = logits.argmax(1)
    hits = [sum(1 for p, c in zip(preds, labels) if c == g and p == g) for g in (0, 1)]
    rates = m["conditional_rates"]
    assert m["conditional_counts"] == [8, 8]
    assert rates == [hits[0] / 8, hits[1] / 8]
    # one convention (docs/metrics.md): conditional SPD = max - min of the rates, never signed
    assert m["conditional_spd"] == max(rates) - min(rates) == abs(rates[0] - rates[1])
    print(f"hits {hits} of [8, 8], conditional SPD {m['conditional_spd']}")
