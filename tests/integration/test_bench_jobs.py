"""``fairdiff bench --jobs N`` and ``--shard I/N``: cells in parallel processes give the same results as one by
one, a cell waits for the cell it starts from, and shards cover every cell exactly once."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
import yaml

from fairdiff.bench.config import BenchCell, expand_cells, load_bench_config
from fairdiff.bench.runner import shard_cells
from fairdiff.cli.main import main
from fairdiff.errors import FairdiffError
from tests.conftest import TINY

FAST = {**{k: yaml.safe_load(v) for k, v in (t.split("=", 1) for t in TINY)},
        "train.steps": 4, "train.checkpoint_every": 2, "eval.n_samples": 16, "eval.classifier_steps": 40}


def _main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _write(path, cache):
    data = {"name": "jobs", "overrides": FAST, "seeds": [0],
            "settings": {"a": {"data.shares": [0.75, 0.25]}, "b": {"data.shares": [0.25, 0.75]}},
            "methods": {"baseline": {"method.name": "baseline"}, "reweight": {"method.name": "reweight"},
                        "guidance": {"guidance": {"n_per_step": 32}, "after": "baseline"}}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_jobs_two_equals_one_by_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRDIFF_CACHE", str(tmp_path / "cache"))
    cfg = _write(tmp_path / "jobs.yaml", tmp_path / "cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of two workers gets on a 2-core machine; results may depend on it
    try:
        rc1, _, err1 = _main(["bench", str(cfg), "--out", str(tmp_path / "seq"), "-q"])
    finally:
        torch.set_num_threads(threads)
    assert rc1 == 0, err1
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # one thread per worker in the children, whatever the machine
    rc2, out2, err2 = _main(["bench", str(cfg), "--out", str(tmp_path / "par"), "-q", "--jobs", "2"])
    assert rc2 == 0, err2
    lines = [x for x in out2.splitlines() if x.startswith("[")]
    assert len(lines) == 6 and all(": done in" in x for x in lines), out2
    # a guidance cell is only started once its baseline finished
    order = [x.split("]")[1].split(":")[0].strip() for x in lines]
    for s in "ab":
        assert order.index(f"{s}/baseline-s0") < order.index(f"{s}/guidance-s0")
    for name in ("a/baseline-s0", "a/reweight-s0", "a/guidance-s0", "b/baseline-s0", "b/reweight-s0",
                 "b/guidance-s0"):
        m1 = json.loads((tmp_path / "seq" / "cells" / name / "metrics.json").read_text())
        m2 = json.loads((tmp_path / "par" / "cells" / name / "metrics.json").read_text())
        for key in ("fd_strict", "fd_hard", "valid_rate", "shares"):
            assert m1[key] == m2[key], (name, key, m1[key], m2[key])
    assert "| guidance | 1 |" in (tmp_path / "par" / "results.md").read_text()
    # a second parallel run keeps every finished cell
    rc3, out3, _ = _main(["bench", str(cfg), "--out", str(tmp_path / "par"), "-q", "--jobs", "2"])
    assert rc3 == 0 and out3.count("finished earlier, kept") == 6


def test_shards_partition_the_cells_and_keep_dependencies_together(tmp_path):
    cfg_path = _write(tmp_path / "jobs.yaml", None)
    data = yaml.safe_load(cfg_path.read_text())
    data["seeds"] = [0, 1, 2]
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    cells = expand_cells(load_bench_config(cfg_path), tmp_path / "out")
    assert len(cells) == 18
    shards = [shard_cells(cells, i, 4) for i in range(4)]
    names = [c.name for s in shards for c in s]
    assert sorted(names) == sorted(c.name for c in cells)  # every cell exactly once
    assert all(len(s) > 0 for s in shards)
    for s in shards:
        here = {c.name for c in s}
        assert all(c.after is None or c.after in here for c in s)
    with pytest.raises(FairdiffError):
        shard_cells(cells, 4, 4)
    assert isinstance(cells[0], BenchCell)


@pytest.mark.parametrize("args, needle", [(["--jobs", "0"], "--jobs"), (["--jobs", "two"], "--jobs"),
                                          (["--shard", "2/2"], "--shard"), (["--shard", "x"], "--shard")])
def test_bad_jobs_and_shard_values_are_one_line_errors(tmp_path, args, needle):
    cfg = _write(tmp_path / "jobs.yaml", None)
    rc, _, err = _main(["bench", str(cfg), "--out", str(tmp_path / "o"), *args])
    assert rc == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_sigterm_stops_the_workers_and_the_cells_resume(tmp_path):
    """SIGTERM to ``bench --jobs 2``: the training workers save a checkpoint and stop, none outlives the bench
    (every run folder's lock is free), and running the command again finishes the matrix."""
    import fcntl
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg = tmp_path / "long.yaml"
    data = {"name": "long", "overrides": {**FAST, "train.steps": 4000, "train.checkpoint_every": 4000},
            "seeds": [0], "settings": {"a": {"data.shares": [0.75, 0.25]}},
            "methods": {"baseline": {"method.name": "baseline"}, "reweight": {"method.name": "reweight"}}}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"
    env = {**os.environ, "FAIRDIFF_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fairdiff", "bench", str(cfg), "--out", str(out), "-q",
                             "--jobs", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stats = [out / "cells" / "a" / m / "stats.jsonl" for m in ("baseline-s0", "reweight-s0")]
    deadline = time.time() + 300
    while not all(p.exists() and p.stat().st_size > 0 for p in stats):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, err
    for m in ("baseline-s0", "reweight-s0"):
        run = out / "cells" / "a" / m
        assert list(run.glob("checkpoint-*")), f"{m}: no checkpoint saved on SIGTERM"
        with open(run / ".fairdiff.lock", "a+") as f:  # raises if a worker still holds the run folder
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
