"""The sweep/matrix runner keeps finished cells and continues unfinished ones."""

from __future__ import annotations

import json

import fairdiff.training as training_mod
from fairdiff.bench.matrix import Cell, markdown_tables, run_matrix, summarise, sweep_cells
from fairdiff.config import load_config
from fairdiff.training import train


def test_sweep_cells_grid():
    cells = sweep_cells([0, 0.05], [0, 1], ["train.steps=2"], include_reweight=True)
    assert [c.name for c in cells] == ["ddm-a0-s0", "ddm-a0-s1", "ddm-a0.05-s0", "ddm-a0.05-s1",
                                       "reweight-s0", "reweight-s1"]
    assert "method.alpha=0.05" in cells[2].overrides and "train.seed=1" in cells[3].overrides


def test_matrix_resumes(tmp_path, tiny_overrides, monkeypatch):
    ov = [*tiny_overrides, "train.steps=4", "train.checkpoint_every=2", "eval.n_samples=16",
          "method.indicator_widths=[16]"]
    cells = [Cell("a", "ddm", [*ov, "method.name=ddm"], 0), Cell("b", "reweight", [*ov, "method.name=reweight"], 0)]
    out = tmp_path / "sweep"
    # cell "b" was interrupted after 2 of 4 steps
    cfg_b = load_config(None, cells[1].overrides)
    train(cfg_b, out / "cells" / "b", quiet=True, stop_after=2)

    calls = []
    real_train = training_mod.train

    def counting_train(cfg, run_dir, **kw):
        calls.append((run_dir.name, kw.get("resume")))
        return real_train(cfg, run_dir, **kw)

    monkeypatch.setattr(training_mod, "train", counting_train)
    rows = run_matrix(None, cells, out, quiet=True)
    assert calls == [("a", None), ("b", "latest")]
    assert len(rows) == 2 and all(0 <= r["fd_hard"] <= 0.7072 for r in rows)
    stats_b = [json.loads(x) for x in (out / "cells" / "b" / "stats.jsonl").read_text().splitlines()]
    assert stats_b[-1]["step"] == 4
    for name in ("table.md", "table.csv", "fd_vs_fid.png", "summary.json"):
        assert (out / name).exists()

    # second invocation: everything finished, nothing retrained
    calls.clear()
    rows2 = run_matrix(None, cells, out, quiet=True)
    assert calls == [] and [r["fd_hard"] for r in rows2] == [r["fd_hard"] for r in rows]


def test_summary_mean_and_std():
    rows = [{"setting": "x", "fd_hard": v, "fd_forced": v, "fd_strict": v + 0.2, "fd_soft": v, "kl": 0.0,
             "spd": 0.0, "domain_fid": 1.0, "precision": 1.0, "recall": 1.0, "share_0": 0.5,
             "conditional_spd": float("nan"), "cell": f"c{i}", "seed": i, "fd_hard_lo": v, "fd_hard_hi": v, "n": 10,
             "train_s": 1.0}
            for i, v in enumerate([0.1, 0.3])]
    s = summarise(rows)[0]
    assert abs(s["fd_hard"] - 0.2) < 1e-12 and abs(s["fd_hard_std"] - 0.1414213562) < 1e-9
    table = markdown_tables(rows)
    assert "0.400 ± 0.141" in table  # strict FD, the headline
    assert "0.200 ± 0.141" in table  # forced-choice FD beside it
