"""benchmarks/bench_debias_cost.py: each method name reaches the library with its options, and the cost ratio is
taken against the base at its config's steps (timed first and last)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench():
    from tests.conftest import load_benchmark

    return load_benchmark("bench_debias_cost")


@pytest.mark.parametrize("method, fn, expected", [
    ("filter", "debias_run", {"method": "filter"}),
    ("filter-st50", "debias_run", {"method": "filter", "steps": 50}),
    ("guide", "guide_run_to_target", {"then_filter": False}),
    ("guide-filter", "guide_run_to_target", {"then_filter": True}),
    ("guide-clf-filter-st50", "guide_run_to_target", {"then_filter": True, "reader": "classifier", "steps": 50,
                                                      "classifier": Path("clf")}),
])
def test_methods_reach_the_library_with_their_options(bench, tmp_path, monkeypatch, method, fn, expected):
    seen = {}

    def faking(name):
        def fake(base, folder, target, **kw):
            seen.update(kw, fn=name)
            return {"steps": kw.get("steps", 20), "seconds_per_kept_image": 0.3, "drawn_per_kept": 2.0,
                    "reader": kw.get("reader", "heads"), "heads": {"fitted": True}, "heads_seconds": 9.0,
                    "pilot_seconds": 4.0}
        return fake

    for name in ("debias_run", "guide_run_to_target"):
        monkeypatch.setattr(f"fairdiff.debias.run.{name}", faking(name))
    v = bench.run_method(tmp_path / "base", method, [0.5, 0.5], 8, tmp_path / "out", Path("clf"))
    assert seen["fn"] == fn and {k: seen.get(k) for k in expected} == expected
    assert seen["n"] == 8 and seen["seed"] == bench.SEED and seen["evaluate"] is False
    assert v["seconds_per_kept_image"] == 0.3 and v["drawn_per_kept"] == 2.0
    assert v["seconds_per_drawn_image"] == 0.3  # a record without it (guidance alone): every drawn image is kept
    assert v["fit_s"] == (9.0 if method in ("guide", "guide-filter") else 0.0)  # heads fitted here; clf reused


def test_unknown_method_is_refused(bench, tmp_path):
    with pytest.raises(SystemExit, match="unknown method"):
        bench.run_method(tmp_path, "distill", [0.5, 0.5], 8, tmp_path, None)


def test_cost_is_relative_to_the_base_at_its_own_steps(bench, tmp_path, monkeypatch):
    times = iter([0.10, 0.30, 0.14, 0.30])  # first: st20 st50, last: st20 st50 (sorted steps)
    monkeypatch.setattr(bench, "_base_seconds", lambda base, out, n, steps: next(times))
    monkeypatch.setattr(bench, "run_method", lambda *a: {"steps": 50, "seconds_per_kept_image": 0.6,
                                                          "drawn_per_kept": 1.5, "seconds_per_drawn_image": 0.36,
                                                          "fit_s": 0.0, "pilot_s": 0.0})
    monkeypatch.setattr("fairdiff.runs.read_run_config",
                        lambda base: type("C", (), {"sample": type("S", (), {"steps": 20})})())
    out = tmp_path / "cost.csv"
    monkeypatch.setattr("sys.argv", ["bench", str(tmp_path / "base"), "--setting", "s", "--target", "0.5,0.5",
                                     "--methods", "guide-clf-filter-st50", "--out", str(tmp_path), "--results",
                                     str(out)])
    bench.main()
    rows = {r["method"]: r for r in csv.DictReader(out.open())}
    assert float(rows["base"]["cost_x_base"]) == 1.0 and float(rows["base"]["seconds_per_kept_image"]) == 0.12
    assert float(rows["base-st50"]["cost_x_base"]) == 2.5
    assert float(rows["guide-clf-filter-st50"]["cost_x_base"]) == 5.0  # 0.6 / mean(0.10, 0.14)
    assert float(rows["guide-clf-filter-st50"]["drawn_cost_x_base"]) == 3.0  # 0.36 / 0.12
