"""Reports and bench plots with the open-set keys: headline table, disagreement flag, a CI that misses its point."""

from __future__ import annotations

import math

from fairdiff.bench.plots import plot_fd_vs_fid
from fairdiff.evaluation.report import headline_table


def test_fd_vs_fid_plot_accepts_a_point_outside_its_percentile_interval(tmp_path):
    rows = [{"setting": "s", "method": "m", "cell": "c", "fd_strict": 0.612, "fd_strict_lo": 0.6124,
             "fd_strict_hi": 0.614, "domain_fid": 10.0},
            {"setting": "s", "method": "m", "cell": "d", "fd_strict": math.nan, "fd_strict_lo": math.nan,
             "fd_strict_hi": math.nan, "domain_fid": 5.0}]
    plot_fd_vs_fid(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_headline_table_shows_both_judges_and_flags_disagreement():
    j = {"fd_strict": 0.44, "fd_strict_ci": [0.41, 0.48], "valid_rate": 0.64, "valid_rate_ci": [0.61, 0.67],
         "valid_shares": [0.56, 0.44], "valid_shares_ci": [[0.52, 0.60], [0.40, 0.48]], "fd_valid": 0.08,
         "fd_forced": 0.03, "classifier": {"name": "cnn", "accuracy": 0.98}, "outside_rates": {}}
    j2 = {**j, "valid_shares": [0.44, 0.56], "valid_shares_ci": [[0.39, 0.48], [0.52, 0.61]],
          "classifier": {"name": "pca", "accuracy": 0.93}}
    text = headline_table({**j, "judge2": j2, "judges_agreement": {"disagree": True, "groups": [0, 1]}})
    assert "`cnn`" in text and "`pca`" in text and "0.4400" in text
    assert "disagree beyond their CIs" in text and "[0, 1]" in text
    agree = headline_table({**j, "judge2": j, "judges_agreement": {"disagree": False, "groups": []}})
    assert "agree within their CIs" in agree
