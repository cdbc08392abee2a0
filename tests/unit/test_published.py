"""Published tables (fairdiff.bench.published): rows from metrics, rendering, and the docs in sync with the CSVs."""

from __future__ import annotations

from pathlib import Path

import pytest

from fairdiff.bench.published import add_rows, read_rows, render, row_from_metrics, sync

ROOT = Path(__file__).resolve().parents[2]


def _metrics(valid=0.9, share0=0.8, n=100):
    return {"n": n, "target": [0.5, 0.5], "fd_strict": 0.4, "fd_strict_ci": [0.35, 0.45], "valid_rate": valid,
            "valid_shares": [share0, 1 - share0], "valid_shares_ci": [[share0 - 0.05, share0 + 0.05], [0.1, 0.3]],
            "precision": 0.91, "recall": 0.88, "domain_fid": 12.34, "judge2": {"valid_rate": 0.85,
                                                                              "valid_shares": [0.7, 0.3]},
            "debias": {"drawn_per_kept": 2.5, "seconds_per_kept_image": 0.01}}


def test_rows_render_and_replace(tmp_path):
    csv = tmp_path / "r.csv"
    add_rows(csv, [row_from_metrics(_metrics(), "s", "filter", 0), row_from_metrics(_metrics(), "s", "base", 0)])
    add_rows(csv, [row_from_metrics(_metrics(valid=0.95), "s", "filter", 0)])  # same key: replaced
    rows = read_rows(csv)
    assert [(r["method"], r["valid_rate"]) for r in rows] == [("base", "0.9"), ("filter", "0.95")]
    assert rows[1]["drawn_per_kept"] == "2.5" and rows[1]["share_0_lo"] == "0.75" and rows[1]["share_0_j2"] == "0.7"
    md = render(rows, ["method", "valid_rate", "share_0_ci", "domain_fid"])
    assert md.splitlines()[2] == "| base | 0.900 | 0.800 [0.750, 0.850] | 12.3 |"


def test_sync_rewrites_only_table_blocks(tmp_path):
    (tmp_path / "results").mkdir()
    add_rows(tmp_path / "results" / "r.csv", [row_from_metrics(_metrics(), "a", "m1", 0),
                                              row_from_metrics(_metrics(), "b", "m2", 0)])
    doc = tmp_path / "d.md"
    doc.write_text("intro\n<!-- table: r.csv setting=a cols=method,valid_rate -->\nold\n<!-- /table -->\nend\n")
    assert sync([doc], tmp_path / "results", write=False) == [f"{doc}: r.csv setting=a cols=method,valid_rate"]
    assert "old" in doc.read_text()
    sync([doc], tmp_path / "results")
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("<!-- /table -->\nend\n") and "| m1 | 0.900 |" in text
    assert "m2" not in text and sync([doc], tmp_path / "results", write=False) == []


def test_summary_by_method_counts_the_seeds_that_meet_the_bar(tmp_path):
    """``by=method``: one row per method, averaged; ``bar`` checks each seed against the base row of that seed
    (share within 0.03 of the target, valid rate >= base - 0.02, precision / recall >= base - 0.03)."""
    from fairdiff.bench.published import meets_bar, render_block

    rows = []
    for seed in (0, 1):
        rows.append(row_from_metrics(_metrics(valid=0.95, share0=0.82), "s", "base", seed))
    rows.append(row_from_metrics(_metrics(valid=0.94, share0=0.52), "s", "good", 0))  # meets it
    rows.append(row_from_metrics(_metrics(valid=0.92, share0=0.50), "s", "good", 1))  # valid 0.03 under the base
    rows.append(row_from_metrics(_metrics(valid=0.96, share0=0.54), "s", "far", 0))  # 0.04 off the target
    add_rows(tmp_path / "r.csv", rows)
    assert meets_bar(rows[2], rows[0]) is True and meets_bar(rows[3], rows[1]) is False
    assert meets_bar(rows[4], rows[0]) is False and meets_bar(rows[4], None) is None
    md = render_block("r.csv by=method cols=method,seeds,valid_rate,share_0_range,bar", tmp_path).splitlines()
    assert md[2] == "| base | 0,1 | 0.950 | 0.820-0.820 | — |"
    assert md[3] == "| good | 0,1 | 0.930 | 0.500-0.520 | 1/2 |"
    assert md[4] == "| far | 0 | 0.960 | 0.540-0.540 | 0/1 |"
    # the same seed at more images: compared with the base row of its own image count, never the other one
    add_rows(tmp_path / "r.csv", [row_from_metrics(_metrics(valid=0.97, share0=0.82, n=1000), "s", "base", 0),
                                  row_from_metrics(_metrics(valid=0.94, share0=0.52, n=1000), "s", "good", 0)])
    md = render_block("r.csv by=method cols=method,seeds,bar", tmp_path).splitlines()
    assert md[3] == "| good | 0,0,1 | 1/3 |"  # seeds in order; seed 0 at 100 images still meets it against its own base
    md = render_block("r.csv n=1000 by=method cols=method,seeds,valid_rate,bar", tmp_path).splitlines()
    assert md[2:] == ["| base | 0 | 0.970 | — |", "| good | 0 | 0.940 | 0/1 |"]
    # by=a+b: one row per combination (here setting and method: another setting is its own row)
    add_rows(tmp_path / "r.csv", [row_from_metrics(_metrics(valid=0.9, share0=0.7), "t x", "good", 0)])
    md = render_block("r.csv n=100 by=setting+method cols=setting,method,seeds,valid_rate", tmp_path).splitlines()
    assert md[2:] == ["| s | base | 0,1 | 0.950 |", "| s | good | 0,1 | 0.930 |", "| s | far | 0 | 0.960 |",
                      "| t x | good | 0 | 0.900 |"]


def test_the_bar_by_the_second_judge_uses_its_share_and_valid_rate(tmp_path):
    """``bar_j2``: the same bar with the second judge's share among valid images and valid rate (against the base
    row's second-judge valid rate); precision and recall are shared."""
    from fairdiff.bench.published import meets_bar, render_block

    def m(share0, j2_share0, j2_valid):
        out = _metrics(valid=0.95, share0=share0)
        out["judge2"] = {"valid_rate": j2_valid, "valid_shares": [j2_share0, 1 - j2_share0]}
        return out

    rows = [row_from_metrics(m(0.82, 0.80, 0.90), "s", "base", 0),
            row_from_metrics(m(0.50, 0.51, 0.89), "s", "both", 0),  # both judges within the bar
            row_from_metrics(m(0.50, 0.56, 0.89), "s", "j1only", 0),  # judge 2 sees 0.56: 0.06 off
            row_from_metrics(m(0.50, 0.50, 0.87), "s", "j2invalid", 0)]  # judge 2 valid 0.03 under its base
    add_rows(tmp_path / "r.csv", rows)
    assert [meets_bar(r, rows[0]) for r in rows[1:]] == [True, True, True]
    assert [meets_bar(r, rows[0], "_j2") for r in rows[1:]] == [True, False, False]
    rows[0]["seconds_per_image"], rows[1]["seconds_per_image"] = 0.04, 0.12  # 3x the base's cost per image
    add_rows(tmp_path / "r.csv", rows[:2])
    md = render_block("r.csv by=method cols=method,cost_x_base", tmp_path).splitlines()
    assert sorted(md[2:]) == ["| base | 1.00 |", "| both | 3.00 |", "| j1only | 0.25 |", "| j2invalid | 0.25 |"]
    md = render_block("r.csv by=method cols=method,bar,bar_j2", tmp_path).splitlines()
    assert md[0] == "| method | meets the bar (seeds) | judge 2: meets the bar |"
    assert sorted(md[2:]) == ["| base | — | — |", "| both | 1/1 | 1/1 |", "| j1only | 1/1 | 0/1 |",
                              "| j2invalid | 1/1 | 0/1 |"]


def test_repository_docs_match_their_results_files():
    from fairdiff.bench.published import doc_paths

    stale = sync(doc_paths(ROOT), ROOT / "docs" / "results", write=False)
    assert stale == [], f"regenerate with 'python -m fairdiff.bench.published': {stale}"


def test_target_figure_plots_each_methods_mean_and_seed_range(tmp_path):
    """The figure's points are each method's mean over its seeds, its bars the lowest and highest seed; rows with
    a missing value leave that value out (here: filter's recall of seed 1)."""
    from fairdiff.bench.plots import plot_target_vs_quality
    from fairdiff.bench.published import BAR

    rows = [{"method": "base", "seed": s, "share_0": str(x), "recall": "0.9", "valid_rate": "0.95"}
            for s, x in enumerate((0.80, 0.82, 0.84))]
    rows += [{"method": "filter", "seed": "0", "share_0": "0.50", "recall": "0.88", "valid_rate": "0.97"},
             {"method": "filter", "seed": "1", "share_0": "0.53", "recall": "", "valid_rate": "0.99"}]
    pts = plot_target_vs_quality(rows, tmp_path / "fig.png", target=0.5, bar=BAR)
    assert (tmp_path / "fig.png").stat().st_size > 1000
    assert pts["base"]["share_0"] == pytest.approx((0.82, 0.80, 0.84))
    assert pts["filter"]["share_0"] == pytest.approx((0.515, 0.50, 0.53))
    assert pts["filter"]["recall"] == pytest.approx((0.88, 0.88, 0.88))
    assert pts["filter"]["valid_rate"] == pytest.approx((0.98, 0.97, 0.99))
    assert list(pts) == ["base", "filter"]


def test_the_bar_for_three_groups_checks_every_share_of_a_uniform_target(tmp_path):
    """K = 3 (``share_2`` set): every group's share within 0.03 of 1/3, with the same quality bar; no verdict for a
    non-uniform three-group target or for the second judge (the file has its group-0 share alone)."""
    from fairdiff.bench.published import meets_bar

    def m(shares, valid=0.95, target=(0.3333, 0.3333, 0.3334)):
        out = _metrics(valid=valid)
        out.update(target=list(target), valid_shares=list(shares),
                   valid_shares_ci=[[x - 0.02, x + 0.02] for x in shares])
        return out

    base = row_from_metrics(m([0.61, 0.30, 0.09]), "k3", "base", 0)
    assert base["share_2"] not in ("", None) and float(base["target_0"]) == pytest.approx(1 / 3, abs=1e-3)
    near = row_from_metrics(m([0.355, 0.342, 0.303]), "k3", "a", 0)  # every share within 0.03 (0.0303 off: not)
    far = row_from_metrics(m([0.370, 0.321, 0.309]), "k3", "b", 0)  # group 0 0.037 off
    low = row_from_metrics(m([0.34, 0.33, 0.33], valid=0.92), "k3", "c", 0)  # valid 0.03 under the base
    assert meets_bar(near, base) is False  # 0.303 is 0.0303 from 1/3
    assert meets_bar(row_from_metrics(m([0.355, 0.340, 0.305]), "k3", "a", 0), base) is True
    assert meets_bar(far, base) is False and meets_bar(low, base) is False
    assert meets_bar(near, base, "_j2") is None
    skewed = row_from_metrics(m([0.6, 0.3, 0.1], target=(0.6, 0.3, 0.1)), "k3", "d", 0)
    assert meets_bar(skewed, base) is None
