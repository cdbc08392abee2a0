"""benchmarks/finetune_quality.py: the valid rate a model reaches at a target when it keeps each group's failure
rate, and the per-group failure rates read from verdicts, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

@pytest.fixture(scope="module")
def fq():
    from tests.conftest import load_benchmark

    return load_benchmark("finetune_quality")


def test_reachable_valid_is_the_target_weighted_harmonic_mean(fq):
    # groups fail at 4 % and 18 %: at 50/50 valid = 1 / (0.5 / 0.96 + 0.5 / 0.82) = 0.88449...
    assert fq.reachable_valid([0.04, 0.18], [0.5, 0.5]) == pytest.approx(1 / (0.5 / 0.96 + 0.5 / 0.82))
    # check by construction: draw f_g proportional to t_g / (1 - o_g); the valid shares are then t exactly
    o, t = np.array([0.05, 0.1, 0.2]), np.array([0.2, 0.3, 0.5])
    f = t / (1 - o)
    f = f / f.sum()
    valid = float((f * (1 - o)).sum())
    assert (f * (1 - o) / valid) == pytest.approx(t) and fq.reachable_valid(o, t) == pytest.approx(valid)
    assert fq.reachable_valid([0.3, 0.3], [0.9, 0.1]) == pytest.approx(0.7)  # equal failure rates: any mix
    assert fq.reachable_valid([0.1, 1.0], [0.5, 0.5]) == 0.0  # a group never drawn cleanly
    assert fq.reachable_valid([0.1, 1.0], [1.0, 0.0]) == pytest.approx(0.9)  # ... unless the target skips it


def test_group_quality_counts_outside_images_by_their_forced_group(fq):
    from fairdiff.metrics import OUTSIDE

    forced = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    verdicts = np.array([0, 0, OUTSIDE, 0, 1, OUTSIDE, OUTSIDE, 1, 1, 0])
    q = fq.group_quality(verdicts, forced, 2)
    assert q["valid_rate"] == pytest.approx(0.7)
    assert q["shares"] == pytest.approx([4 / 7, 3 / 7])
    assert q["forced_shares"] == pytest.approx([0.5, 0.5])
    assert q["outside_by_group"] == pytest.approx([1 / 5, 2 / 5])


def test_write_row_replaces_the_same_model(fq, tmp_path):
    import csv

    path = tmp_path / "q.csv"
    row = ["s", "base", 8, 0.9, "[1]", "[0]", "[1]", 0.9, "[1]", "", 1.0]
    fq.write_row(path, row)
    fq.write_row(path, ["s", "other", *row[2:]])
    fq.write_row(path, ["s", "base", 8, 0.8, *row[4:]])
    rows = list(csv.DictReader(open(path, newline="")))
    assert [r["model"] for r in rows] == ["other", "base"] and rows[1]["valid_rate"] == "0.8"
    assert list(rows[0]) == fq.FIELDS
