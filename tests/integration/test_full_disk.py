"""A disk that fills up during ``sample``, ``train``, ``evaluate`` or ``bench`` (issue 28): one line on stderr (no
PIL / torch / safetensors traceback), every file that was there before byte-identical, no half-written file or
temporary folder left behind, and the same command afterwards resumes and finishes.

The full disk is simulated: every file opened for writing under a folder goes through a byte budget; the write
that crosses it stores what still fits and raises ``OSError(ENOSPC)``, as a real full disk does. safetensors
writes outside Python, so its ``save_file`` is wrapped to leave half a file and raise safetensors' own error.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from fairdiff.cli.main import main
from fairdiff.utils.io import DiskFullError, append_jsonl, atomic_output, atomic_write_text, is_disk_full
from tests.conftest import TINY, tiny_bench_yaml

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names open files by /proc/self/fd")

FAST = [*TINY, "eval.classifier_steps=20", "eval.n_samples=16"]


class DiskBudget:
    """Files opened for writing under ``root`` may take ``budget`` bytes in all; then the disk is full."""

    def __init__(self, root: Path, budget: int) -> None:
        self.root, self.left, self.hit = Path(root).resolve(), budget, False

    def covers(self, file) -> bool:
        try:
            name = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.fspath(file)
            name = os.fsdecode(name)
        except (OSError, TypeError):
            return False
        return Path(os.path.abspath(name)).resolve().is_relative_to(self.root)

    def charge(self, f, data):
        size = len(data.encode("utf-8")) if isinstance(data, str) else memoryview(data).nbytes
        if size <= self.left:
            self.left -= size
            return f.write(data)
        if self.left > 0:  # what still fits is written, as on a real disk
            part = data[: self.left] if isinstance(data, str) else bytes(memoryview(data).cast("B")[: self.left])
            f.write(part)
        self.left, self.hit = 0, True
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _Budgeted:
    def __init__(self, f, budget: DiskBudget) -> None:
        self._f, self._budget = f, budget

    def write(self, data):
        return self._budget.charge(self._f, data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False


@contextlib.contextmanager
def full_disk(root: Path, budget: int = 0):
    """Within the block, writes under ``root`` fail with ENOSPC once ``budget`` bytes were written there."""
    b = DiskBudget(root, budget)
    real = io.open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        return _Budgeted(f, b) if any(c in mode for c in "wax+") and b.covers(file) else f

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(io, "open", fake_open)
        mp.setattr(builtins, "open", fake_open)
        yield b


@contextlib.contextmanager
def safetensors_full_after(n_ok: int):
    """safetensors' ``save_file`` in the trainer: ``n_ok`` files are written, the next one is cut in half and
    raises the error safetensors gives for a full disk."""
    from safetensors import SafetensorError

    import fairdiff.training.state as state

    real, calls = state.save_file, {"n": 0}

    def fake(tensors, filename, *args, **kwargs):
        calls["n"] += 1
        real(tensors, filename, *args, **kwargs)
        if calls["n"] > n_ok:
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(state, "save_file", fake)
        yield calls


def _tree(root: Path) -> dict[str, str | None]:
    """Every entry under ``root`` (hidden ones too): a file's SHA-256, None for a folder."""
    out: dict[str, str | None] = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in files:
            p = Path(dirpath) / f
            out[os.path.relpath(p, root)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "link"
    return out


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def _one_line_disk_full(rc: int, err: str, hint: str = "run the same command again") -> None:
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error: disk full") and "free space and" in lines[0] and hint in lines[0], err


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained and evaluated run (samples, metrics, report), shared by the read-only checks."""
    root = tmp_path_factory.mktemp("full-disk")
    run = root / "run"
    assert main(["train", *FAST, "train.steps=2", "--out", str(run), "-q"]) == 0
    assert main(["evaluate", str(run), "-q"]) == 0
    assert {"metrics.json", "report.md", "shares.png", "samples"} <= {p.name for p in run.iterdir()}
    return {"root": root, "run": run}


# ------------------------------------------------------------------------------------------------ the helpers
def test_atomic_writes_keep_the_old_file_on_a_full_disk(tmp_path):
    p = tmp_path / "notes.md"
    atomic_write_text(p, "old\n")
    for budget in (0, 3):
        with full_disk(tmp_path, budget), pytest.raises(DiskFullError, match="disk full while writing .*notes.md"):
            atomic_write_text(p, "a much longer new text\n")
        assert p.read_text() == "old\n" and sorted(x.name for x in tmp_path.iterdir()) == ["notes.md"]
    # a file-name writer through atomic_output: the same
    with full_disk(tmp_path, 2), pytest.raises(DiskFullError):
        with atomic_output(p) as tmp:
            tmp.write_bytes(b"new bytes that do not fit")
    assert p.read_text() == "old\n" and sorted(x.name for x in tmp_path.iterdir()) == ["notes.md"]


def test_a_log_append_is_all_or_nothing(tmp_path):
    log = tmp_path / "stats.jsonl"
    append_jsonl(log, [{"step": 1}])
    before = log.read_bytes()
    with full_disk(tmp_path, 5), pytest.raises(DiskFullError):
        append_jsonl(log, [{"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.25}])
    assert log.read_bytes() == before  # never half a line, which would make the log unreadable on resume
    append_jsonl(log, [{"step": 2}])
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]


def test_safetensors_full_disk_is_recognised():
    from safetensors import SafetensorError

    assert is_disk_full(OSError(errno.ENOSPC, "x")) and is_disk_full(OSError(errno.EDQUOT, "x"))
    assert is_disk_full(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not is_disk_full(SafetensorError("Error while serializing: I/O error: File too large (os error 27)"))
    assert not is_disk_full(OSError(errno.EACCES, "x"))


# ------------------------------------------------------------------------------------------------ commands
@pytest.mark.parametrize("budget", [0, 3000])  # the first PNG; a few images in
def test_sample_on_a_full_disk(world, budget, capsys):
    run = world["run"]
    before = _tree(run)
    with full_disk(run, budget) as disk:
        rc, err = _cli(["sample", str(run), "--n", "16", "--steps", "3", "--seed", "7", "-q"], capsys)
    assert disk.hit
    _one_line_disk_full(rc, err)
    assert "nothing that was there before was changed" in err
    assert _tree(run) == before  # the earlier samples whole, no temp folder left


def test_sample_resumes_after_a_full_disk(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    with full_disk(run, 3000):
        rc, _ = _cli(["sample", str(run), "--n", "16", "--steps", "3", "--seed", "7", "-q"], capsys)
    assert rc == 2
    rc, err = _cli(["sample", str(run), "--n", "16", "--steps", "3", "--seed", "7", "-q"], capsys)
    assert rc == 0, err
    import numpy as np

    with np.load(run / "samples" / "samples.npz") as z:
        assert list(z["seeds"]) == list(range(7, 23))


def test_evaluate_on_a_full_disk(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    before = _tree(run)
    with full_disk(run, 0) as disk:
        rc, err = _cli(["evaluate", str(run), "--seed", "5", "-q"], capsys)
    assert disk.hit
    _one_line_disk_full(rc, err)
    assert _tree(run) == before
    rc, err = _cli(["evaluate", str(run), "--seed", "5", "-q"], capsys)  # space again: it finishes
    assert rc == 0, err
    assert json.loads((run / "metrics.json").read_text())["bootstrap"]["seed"] == 5


def test_evaluate_on_a_disk_that_fills_up_after_the_metrics(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    before = _tree(run)
    with full_disk(run, (run / "metrics.json").stat().st_size + 200):
        rc, err = _cli(["evaluate", str(run), "--seed", "6", "-q"], capsys)
    _one_line_disk_full(rc, err)
    assert _tree(run) == before


def test_train_on_a_full_disk_keeps_its_checkpoints_and_resumes(tmp_path, capsys):
    run = tmp_path / "t"
    args = ["train", *FAST, "train.steps=8", "train.checkpoint_every=4", "train.log_every=2", "--out", str(run), "-q"]
    assert main([*args, "--stop-after", "4"]) == 0
    before = _tree(run)
    stats = (run / "stats.jsonl").read_bytes()
    # the disk is full from the start: nothing at all changes
    with full_disk(run, 0):
        rc, err = _cli([*args, "--resume", "latest"], capsys)
    _one_line_disk_full(rc, err, "continue with --resume latest")
    assert _tree(run) == before
    # the disk fills up while the next checkpoint is saved (safetensors' own error)
    with safetensors_full_after(1) as calls:
        rc, err = _cli([*args, "--resume", "latest"], capsys)
    assert calls["n"] == 2
    _one_line_disk_full(rc, err, "continue with --resume latest")
    after = _tree(run)
    kept = {k: v for k, v in before.items() if k != "stats.jsonl"}
    assert {k: after.get(k) for k in kept} == kept  # checkpoint-4, config, marker: byte-identical
    assert (run / "stats.jsonl").read_bytes().startswith(stats)  # (it only grew, by whole lines)
    assert not (run / "checkpoint-8").exists()
    # space again: the run resumes from checkpoint-4 and finishes; the unfinished save is gone
    rc, err = _cli([*args, "--resume", "latest"], capsys)
    assert rc == 0, err
    assert (run / "model").is_dir() and not list(run.glob("checkpoint-*.tmp"))
    assert [json.loads(x)["step"] for x in (run / "stats.jsonl").read_text().splitlines()] == [2, 4, 6, 8]


def _bench(tmp_path: Path, steps: int) -> Path:
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(tiny_bench_yaml(steps).replace("  eval.n_samples: 32\n", "  eval.n_samples: 16\n"
                                                  "  eval.classifier_steps: 20\n"), encoding="utf-8")
    return cfg


@pytest.mark.parametrize("budget", [0, 1500, 40000])  # results.md; the CSVs; the plots / the page
def test_bench_results_on_a_full_disk(tmp_path, budget, capsys):
    cfg, out = _bench(tmp_path, 2), tmp_path / "b"
    rc, err = _cli(["bench", str(cfg), "--out", str(out), "-q"], capsys)
    assert rc == 0, err
    before = _tree(out)
    with full_disk(out, budget) as disk:
        rc, err = _cli(["bench", str(cfg), "--out", str(out), "-q"], capsys)
    assert disk.hit
    _one_line_disk_full(rc, err, "run the same command again to continue")
    assert _tree(out) == before  # the earlier results whole; no staging folder or temp file left


def test_bench_cell_on_a_full_disk_resumes(tmp_path, capsys):
    cfg, out = _bench(tmp_path, 4).read_text(), tmp_path / "b"
    path = tmp_path / "bench4.yaml"
    path.write_text(cfg.replace("settings:", "  train.checkpoint_every: 2\nsettings:"), encoding="utf-8")
    with safetensors_full_after(1):  # the cell's first checkpoint
        rc, err = _cli(["bench", str(path), "--out", str(out), "-q"], capsys)
    _one_line_disk_full(rc, err, "run the same command again to continue")
    cell = out / "cells" / "a" / "baseline-s0"
    assert not list(cell.glob("checkpoint-[0-9]")) and not (cell / "metrics.json").exists()
    rc, err = _cli(["bench", str(path), "--out", str(out), "-q"], capsys)
    assert rc == 0, err
    assert (cell / "metrics.json").is_file() and "1 of 1" not in (out / "results.md").read_text()
