"""``fairdiff bench`` end to end on a tiny synthetic matrix: cells, resumption, guidance, results, dry run."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import yaml

import fairdiff.training as training_mod
from fairdiff.bench.config import expand_cells, load_bench_config
from fairdiff.cli.main import main
from fairdiff.config import load_config
from fairdiff.errors import ConfigError
from tests.conftest import TINY

FAST = {**{k: yaml.safe_load(v) for k, v in (t.split("=", 1) for t in TINY)},
        "train.steps": 4, "train.checkpoint_every": 2, "eval.n_samples": 16, "eval.classifier_steps": 40}


def _bench_yaml(path, methods, settings=None, seeds=(0, 1), name="tiny"):
    data = {"name": name, "overrides": FAST, "seeds": list(seeds),
            "settings": settings or {"a": {"data.shares": [0.75, 0.25]}, "b": {"data.shares": [0.25, 0.75]}},
            "methods": methods}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Run a 2 settings x (baseline, guidance) x 2 seeds bench once; a/baseline-s1 was interrupted at step 2."""
    root = tmp_path_factory.mktemp("bench")
    cfg_path = _bench_yaml(root / "tiny.yaml", {"baseline": {"method.name": "baseline"},
                                                "guidance": {"guidance": {"n_per_step": 32}, "after": "baseline"}})
    out = root / "out"
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "fairdiff-cache"))
        cell = {c.name: c for c in expand_cells(load_bench_config(cfg_path), out)}["a/baseline-s1"]
        out.mkdir(parents=True)
        (out / ".fairdiff.json").write_text('{"kind": "bench"}')  # as `fairdiff bench` marks it before any cell
        training_mod.train(load_config(None, cell.overrides), out / "cells" / cell.name, quiet=True, stop_after=2)
        real = training_mod.train

        def counting(cfg, run_dir, **kw):
            calls.append((f"{run_dir.parent.name}/{run_dir.name}", kw.get("resume")))
            return real(cfg, run_dir, **kw)

        mp.setattr(training_mod, "train", counting)
        rc, stdout, stderr = _main(["bench", str(cfg_path), "--out", str(out), "-q"])
    return {"cfg": cfg_path, "out": out, "rc": rc, "stdout": stdout, "stderr": stderr, "calls": calls}


def test_bench_runs_every_cell_and_resumes_the_interrupted_one(bench):
    assert bench["rc"] == 0, bench["stderr"]
    # guidance cells train nothing; the interrupted cell continues from its checkpoint
    assert bench["calls"] == [("a/baseline-s0", None), ("a/baseline-s1", "latest"), ("b/baseline-s0", None),
                              ("b/baseline-s1", None)]
    stats = [json.loads(x) for x in (bench["out"] / "cells/a/baseline-s1/stats.jsonl").read_text().splitlines()]
    assert stats[-1]["step"] == 4
    assert "[8/8] b/guidance-s1: done" in bench["stdout"]
    # a trained cell's train_s is the wall time of its train() call: positive, at least the trainer's own clock
    # (the last elapsed_s in stats.jsonl), within the cell's train + sample time
    for name in ("a/baseline-s0", "a/baseline-s1", "b/baseline-s0", "b/baseline-s1"):
        cell = bench["out"] / "cells" / name
        timing = json.loads((cell / "metrics.json").read_text())["timing"]
        last = json.loads((cell / "stats.jsonl").read_text().splitlines()[-1])
        assert last["step"] == 4 and last["elapsed_s"] > 0
        assert timing["train_s"] > 0 and timing["train_s"] >= round(last["elapsed_s"], 1) - 0.05, (name, timing)
        assert timing["train_and_sample_s"] >= timing["train_s"], (name, timing)
    for name in ("a/baseline-s0", "a/guidance-s1", "b/baseline-s1", "b/guidance-s0"):
        m = json.loads((bench["out"] / "cells" / name / "metrics.json").read_text())
        assert 0 <= m["fd_hard"] <= 0.7072 and m["n"] == 16
        assert m["fd_hard"] == pytest.approx(math.sqrt(2) * abs(m["shares"][1] - 0.5), abs=1e-12)


def test_results_tables_and_plots(bench):
    out = bench["out"]
    md = (out / "results.md").read_text()
    assert md.index("### a") < md.index("### b")
    for setting in ("a", "b"):
        section = md[md.index(f"### {setting}"):]
        assert "| baseline | 2 |" in section and "| guidance | 2 |" in section
        assert f"| {setting}/guidance-s1 |" in section
    assert "training share of g0 0.75" in md and "training share of g0 0.25" in md
    with open(out / "results.csv") as f:
        summary = list(csv.DictReader(f))
    assert [(r["setting"], r["method"], r["seeds"]) for r in summary] == [
        ("a", "baseline", "2"), ("a", "guidance", "2"), ("b", "baseline", "2"), ("b", "guidance", "2")]
    # the share of group 0 among valid images; undefined (NaN) only where no image of the cell was valid
    for r in summary:
        share, valid = float(r["share_0"]), float(r["valid_rate"])
        assert (0 <= share <= 1) or (math.isnan(share) and valid == 0.0), (share, valid)
        assert "fd_hard_std" in r and 0.0 <= float(r["fd_strict"]) <= 2 ** 0.5
    with open(out / "runs.csv") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 8 and {r["cell"] for r in runs} == {f"{s}/{m}-s{i}" for s in "ab"
                                                            for m in ("baseline", "guidance") for i in (0, 1)}
    # each summary row is the mean over its seeds' rows (NaN shares ignored), and each run row is its metrics.json
    for r in summary:
        rs = [x for x in runs if (x["setting"], x["method"]) == (r["setting"], r["method"])]
        assert len(rs) == 2
        for key in ("share_0", "fd_strict", "valid_rate"):
            vals = [float(x[key]) for x in rs if x[key] not in ("", "nan")]  # '' : None in metrics.json
            want = sum(vals) / len(vals) if vals else math.nan
            assert float(r[key]) == pytest.approx(want, rel=1e-9, nan_ok=True), (r["setting"], r["method"], key)
    for x in runs:
        m = json.loads((out / "cells" / x["cell"] / "metrics.json").read_text())
        assert float(x["fd_strict"]) == pytest.approx(m["fd_strict"], rel=1e-12)
        assert float(x["valid_rate"]) == pytest.approx(m["valid_rate"], rel=1e-12)
        share = (m.get("valid_shares") or [None])[0]
        assert x["share_0"] == "" if share is None else float(x["share_0"]) == pytest.approx(share, rel=1e-12)
    page = (out / "report.html").read_text()
    assert page.count("<table>") >= 3 and "guidance" in page and "data:image/png;base64," in page
    for png in ("fd_vs_fid.png", "shares.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_guidance_cell_guides_the_baseline_model(bench):
    cell = bench["out"] / "cells" / "a" / "guidance-s0"
    base = bench["out"] / "cells" / "a" / "baseline-s0"
    assert (cell / "heads" / "config.json").exists() and not (cell / "model").exists()
    heads = json.loads((cell / "heads" / "record.json").read_text())
    assert heads["num_steps"] == 5 and heads["run"] == str(base)
    meta = json.loads((cell / "samples" / "meta.json").read_text())["guidance"]
    assert meta["target"] == [0.5, 0.5] and meta["temperature"] == 8.0 and meta["scale"] == 3000.0
    m = json.loads((cell / "metrics.json").read_text())
    assert m["run"]["method"] == "guidance" and m["run"]["model"] == str(base)
    # a sampling-time method's "train" time is the fitting of its heads, as the heads record says
    assert m["timing"]["train_s"] == m["timing"]["heads_s"] == round(heads["seconds"], 1) > 0
    assert m["timing"]["sample_and_eval_s"] > 0
    # same model and seeds as the baseline cell's samples: only guidance can make them differ
    with np.load(cell / "samples" / "samples.npz") as g, np.load(base / "samples" / "samples.npz") as b:
        assert np.array_equal(g["seeds"], b["seeds"]) and not np.array_equal(g["images"], b["images"])


def test_second_run_keeps_finished_cells(bench, monkeypatch):
    out = bench["out"]
    metrics = sorted(out.glob("cells/*/*/metrics.json"))
    assert len(metrics) == 8
    before = {p: p.stat().st_mtime_ns for p in metrics}

    def no_train(*a, **kw):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(training_mod, "train", no_train)
    rc, stdout, stderr = _main(["bench", str(bench["cfg"]), "--out", str(out), "-q"])
    assert rc == 0, stderr
    assert {p: p.stat().st_mtime_ns for p in metrics} == before
    assert stdout.count("finished earlier, kept") == 8


def test_more_samples_reuse_the_trained_models(bench, monkeypatch, tmp_path):
    """eval.n_samples changed: no cell trains again, every cell is sampled and judged anew at the new count, the
    earlier results move to CELL/previous/0; a change of a training key is still refused."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(bench["out"], out)
    data = yaml.safe_load(bench["cfg"].read_text())
    data["overrides"]["eval.n_samples"] = 24
    cfg = tmp_path / "more.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))

    def no_train(*a, **kw):
        raise AssertionError("a trained cell was trained again")

    monkeypatch.setattr(training_mod, "train", no_train)
    rc, stdout, _ = _main(["bench", str(cfg), "--out", str(out), "--dry-run"])
    assert rc == 0 and stdout.count("[keeps its model, samples / evaluates again: eval.n_samples changed]") == 8
    assert not (out / "cells/a/baseline-s0/previous").exists()  # a dry run moves nothing
    rc, stdout, stderr = _main(["bench", str(cfg), "--out", str(out), "-q"])
    assert rc == 0, stderr
    assert stdout.count("keeps its trained model") == 8 and "finished earlier" not in stdout
    for cell in sorted(out.glob("cells/*/*-s*")):
        m = json.loads((cell / "metrics.json").read_text())
        old = json.loads((cell / "previous/0/metrics.json").read_text())
        assert m["n"] == 24 and old["n"] == 16, cell
        assert len(np.load(cell / "samples/samples.npz")["images"]) == 24
        assert len(np.load(cell / "previous/0/samples/samples.npz")["images"]) == 16
    assert load_config(out / "cells/a/baseline-s0/config.yaml").eval.n_samples == 24
    # a third run keeps everything; a training key is still a stale cell, refused with one line
    rc, stdout, _ = _main(["bench", str(cfg), "--out", str(out), "-q"])
    assert rc == 0 and stdout.count("finished earlier, kept") == 8
    data["overrides"]["train.steps"] = 5
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    rc, _, stderr = _main(["bench", str(cfg), "--out", str(out), "-q"])
    assert rc == 2 and "train.steps" in stderr


def test_dry_run_lists_cells(tmp_path):
    cfg = _bench_yaml(tmp_path / "b.yaml", {"baseline": {"method.name": "baseline"},
                                            "ddm": {"method.name": "ddm", "method.alpha": 0.1},
                                            "guidance": {"guidance": True, "after": "baseline"}})
    rc, stdout, _ = _main(["bench", str(cfg), "--out", str(tmp_path / "o"), "--dry-run", "--seeds", "3"])
    assert rc == 0 and not (tmp_path / "o").exists()
    names = [line.split()[0] for line in stdout.splitlines() if line and not line.startswith((" ", "bench"))]
    assert names == ["a/baseline-s3", "a/ddm-s3", "a/guidance-s3", "b/baseline-s3", "b/ddm-s3", "b/guidance-s3"]
    assert "method.alpha=0.1" in stdout and "train.seed=3" in stdout and "guidance of a/baseline-s3" in stdout
    rc, stdout, _ = _main(["bench", str(cfg), "--out", str(tmp_path / "o"), "--dry-run", "--only", "b/guidance*"])
    assert rc == 0 and "4 of 12 cells" in stdout and "b/baseline-s0" in stdout and "a/" not in stdout


def test_default_out_dir_uses_the_name(tmp_path, monkeypatch):
    cfg = _bench_yaml(tmp_path / "b.yaml", ["baseline"], name="nm", seeds=[0])
    monkeypatch.chdir(tmp_path)
    rc, stdout, _ = _main(["bench", str(cfg), "--dry-run"])
    assert rc == 0 and "2 of 2 cells into runs/bench/nm " in stdout


@pytest.mark.parametrize("methods, extra, needle", [
    ({"baseline": {"method.nme": "x"}}, [], "cell a/baseline-s0: unknown config key 'method.nme'"),
    ({"g": {"guidance": True, "after": "nosuch"}}, [], "no method named 'nosuch'"),
    (["baseline"], ["--seeds", "a,b"], "comma-separated integers"),
    (["baseline"], ["--only", "zzz"], "matches no cell"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, methods, extra, needle):
    cfg = _bench_yaml(tmp_path / "b.yaml", methods)
    rc, _, stderr = _main(["bench", str(cfg), "--out", str(tmp_path / "o"), *extra])
    assert rc == 2 and needle in stderr and stderr.count("\n") == 1 and "Traceback" not in stderr


def test_align_cell_fine_tunes_the_baseline_cell(tmp_path, monkeypatch):
    """Only the plumbing: the align cell gets method.name=align and model.pretrained = its baseline cell, after
    that cell has a model. The align objective itself (methods/align.py) is stood in for by a plain fine-tune."""
    cfg = _bench_yaml(tmp_path / "b.yaml", {
        "baseline": {"method.name": "baseline"},
        "align": {"method.name": "align", "after": "baseline", "overrides": {"train.steps": 2, "train.ema": False}},
    }, settings={"a": {"data.shares": [0.75, 0.25]}}, seeds=[0])
    out = tmp_path / "o"
    seen = []
    real = training_mod.train

    def fake(c, run_dir, **kw):
        seen.append((run_dir.name, c.method.name, c.model.pretrained, c.train.steps))
        if c.method.name == "align":
            assert (out / "cells" / "a" / "baseline-s0" / "model").is_dir()
            c = dataclasses.replace(c, method=dataclasses.replace(c.method, name="baseline"))
        return real(c, run_dir, **kw)

    monkeypatch.setattr(training_mod, "train", fake)
    rc, _, stderr = _main(["bench", str(cfg), "--out", str(out), "-q"])
    assert rc == 0, stderr
    assert seen == [("baseline-s0", "baseline", None, 4),
                    ("align-s0", "align", str(out / "cells" / "a" / "baseline-s0"), 2)]
    assert (out / "cells" / "a" / "align-s0" / "metrics.json").exists()
    assert "| align | 1 |" in (out / "results.md").read_text()


def test_failed_cell_skips_its_dependants_and_exits_2(tmp_path, monkeypatch):
    cfg = _bench_yaml(tmp_path / "b.yaml", {
        "baseline": {"method.name": "baseline"},
        "align": {"method.name": "align", "after": "baseline"},
        "guidance": {"guidance": True, "after": "align"},
    }, settings={"a": {"data.shares": [0.75, 0.25]}}, seeds=[0])
    real = training_mod.train

    def fake(c, run_dir, **kw):
        if c.method.name == "align":
            raise ConfigError("align is broken today")
        return real(c, run_dir, **kw)

    monkeypatch.setattr(training_mod, "train", fake)
    out = tmp_path / "o"
    rc, stdout, stderr = _main(["bench", str(cfg), "--out", str(out), "-q"])
    assert rc == 2 and "2 of 3 cells failed" in stderr and stderr.count("\n") == 1
    assert "a/align-s0: FAILED: align is broken today" in stdout
    assert "a/guidance-s0: skipped (needs a/align-s0, which failed)" in stdout
    md = (out / "results.md").read_text()
    assert "| baseline | 1 |" in md and "1 of 3 cells have finished" in md
