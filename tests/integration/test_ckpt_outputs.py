"""Run and export folders: one writer per run (a lock), and --overwrite never removes what fairdiff did not write,
the current folder, one of its parents, or an input."""

from __future__ import annotations

import json
import shutil

import pytest

from fairdiff.cli.main import main
from fairdiff.training.checkpoint import RunLock
from tests.conftest import TINY

ARGS = [*TINY, "train.steps=2", "train.checkpoint_every=100"]


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else None) for p in folder.rglob("*")}


def _one_error(capsys, needle: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("out") / "run"
    assert main(["train", *ARGS, "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture
def run(done_run, tmp_path):
    r = tmp_path / "run"
    shutil.copytree(done_run, r)
    return r


def test_run_and_export_folders_are_marked(run, tmp_path):
    assert json.loads((run / ".fairdiff.json").read_text())["kind"] == "run"
    assert main(["export", str(run), str(tmp_path / "exp")]) == 0
    assert json.loads((tmp_path / "exp" / ".fairdiff.json").read_text())["kind"] == "export"
    assert (tmp_path / "exp" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.parametrize("extra", [["--resume", "latest"], ["--overwrite"], []])
def test_a_locked_run_refuses_a_second_writer(run, capsys, extra):
    before = _snapshot(run)
    lock = RunLock(run).acquire()  # as a running `fairdiff train` holds it
    try:
        capsys.readouterr()
        assert main(["train", *ARGS, "--out", str(run), *extra, "--quiet"]) == 2
    finally:
        lock.release()
    if extra:
        _one_error(capsys, "another fairdiff process")
    else:
        _one_error(capsys, "already holds a run")
    assert _snapshot(run) == before
    # released: the folder can be written again
    assert main(["train", *ARGS, "--out", str(run), "--overwrite", "--quiet"]) == 0


def test_overwrite_refuses_a_folder_fairdiff_did_not_write(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not fairdiff's")
    monkeypatch.chdir(mine)
    assert main(["train", *ARGS, "--out", ".", "--overwrite", "--quiet"]) == 2
    _one_error(capsys, "current directory")
    monkeypatch.chdir(tmp_path)
    assert main(["train", *ARGS, "--out", str(mine), "--overwrite", "--quiet"]) == 2
    _one_error(capsys, "not written by fairdiff")
    assert (mine / "holiday.jpg").read_bytes() == b"not fairdiff's" and len(list(mine.iterdir())) == 1


def test_overwrite_never_removes_cwd_or_a_parent(run, capsys, monkeypatch):
    before = _snapshot(run)
    monkeypatch.chdir(run)
    assert main(["train", *ARGS, "--out", ".", "--overwrite", "--quiet"]) == 2
    _one_error(capsys, "current directory")
    (run / "grids").mkdir(exist_ok=True)
    monkeypatch.chdir(run / "grids")
    before = _snapshot(run)
    assert main(["train", *ARGS, "--out", "..", "--overwrite", "--quiet"]) == 2
    _one_error(capsys, "current directory")
    assert _snapshot(run) == before


def test_overwrite_never_removes_the_pretrained_run(run, capsys):
    before = _snapshot(run)
    assert main(["train", *ARGS, f"model.pretrained={run}", "--out", str(run), "--overwrite", "--quiet"]) == 2
    _one_error(capsys, "input")
    assert _snapshot(run) == before


def test_overwrite_removes_only_what_fairdiff_wrote(run, capsys):
    """A run folder without the marker (written before markers, or a user's folder that looks like one) is refused
    with a hint, not guessed at; a marked run holding a file fairdiff did not write is refused, naming it; once
    the folder is marked and holds only fairdiff's files, --overwrite replaces it."""
    (run / ".fairdiff.json").unlink()  # config.yaml + manifest.json look like a run, but do not make it one
    (run / "old-note.txt").write_text("from the old run")
    before = _snapshot(run)
    capsys.readouterr()
    assert main(["train", *ARGS, "--out", str(run), "--overwrite", "--quiet"]) == 2
    _one_error(capsys, "has no .fairdiff.json marker")
    assert _snapshot(run) == before and (run / "old-note.txt").read_text() == "from the old run"
    (run / ".fairdiff.json").write_text('{"kind": "run"}')  # what the hint says to do when fairdiff wrote it
    before = _snapshot(run)
    assert main(["train", *ARGS, "--out", str(run), "--overwrite", "--quiet"]) == 2
    _one_error(capsys, "holds old-note.txt, which fairdiff did not write")
    assert _snapshot(run) == before and (run / "old-note.txt").read_text() == "from the old run"
    (run / "old-note.txt").unlink()
    assert main(["train", *ARGS, "--out", str(run), "--overwrite", "--quiet"]) == 0
    assert (run / ".fairdiff.json").is_file() and (run / "model" / "unet").is_dir()


def test_export_never_replaces_its_own_run(run, capsys, tmp_path):
    before = _snapshot(run)
    for out in (run, run / "model", run / "model" / "unet", tmp_path):
        assert main(["export", str(run), str(out), "--overwrite"]) == 2
        _one_error(capsys, f"error: export folder {out} overlaps the model it exports ({run}); choose another")
    assert _snapshot(run) == before


def test_export_overwrite_only_replaces_an_export(run, capsys, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["export", str(run), str(other), "--overwrite"]) == 2
    _one_error(capsys, "not written by fairdiff")
    assert (other / "keep.txt").read_text() == "mine"
    exp = tmp_path / "exp"
    assert main(["export", str(run), str(exp)]) == 0
    assert main(["export", str(run), str(exp)]) == 2
    _one_error(capsys, "--overwrite")
    assert main(["export", str(run), str(exp), "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["train", *ARGS, "--out", str(exp), "--overwrite", "--quiet"]) == 2  # an export is not a run
    _one_error(capsys, "export")
    assert (exp / "unet").is_dir()


@pytest.mark.parametrize("bad, needle", [
    (["--stop-after", "-5"], "error: --stop-after must be at least 1, got -5"),
    (["--stop-after", "0"], "error: --stop-after must be at least 1, got 0"),
    (["train.lr=.nan"], "error: train.lr: must be a finite number, got nan"),
    (["train.ema_decay=5"], "error: train.ema_decay: must lie in [0, 1), got 5"),
])
def test_bad_train_inputs_refused_before_any_work(tmp_path, capsys, bad, needle):
    out = tmp_path / "never"
    assert main(["train", *ARGS, *bad, "--out", str(out), "--quiet"]) == 2
    _one_error(capsys, needle)
    assert not out.exists()


@pytest.mark.parametrize("cmd", [["train-vae", *TINY, "train.steps=1"],
                                 ["sd-finetune", *TINY, "train.steps=1", "--sd", "no-such-sd"]])
def test_vae_and_sd_runs_never_overwrite_foreign_folders(tmp_path, capsys, monkeypatch, cmd):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    monkeypatch.chdir(mine)
    assert main([*cmd, "--out", ".", "--overwrite", "--quiet"]) == 2
    _one_error(capsys, "current directory")
    monkeypatch.chdir(tmp_path)
    assert main([*cmd, "--out", str(mine), "--overwrite", "--quiet"]) == 2
    _one_error(capsys, "not written by fairdiff")
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1


def test_train_vae_overwrite_replaces_its_own_folder(tmp_path, capsys):
    out = tmp_path / "vae"
    args = ["train-vae", *TINY, "train.steps=1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert json.loads((out / ".fairdiff.json").read_text())["kind"] == "vae"
    assert main(args) == 2
    _one_error(capsys, "--overwrite")
    assert main([*args, "--overwrite"]) == 0 and (out / "vae").is_dir()


def test_a_start_that_failed_before_any_work_does_not_block_the_folder(tmp_path, capsys):
    out = tmp_path / "run"
    # model.pretrained of the wrong shape fails after the folder was claimed, before any training
    bad = ["model.pretrained=" + str(tmp_path / "missing")]
    assert main(["train", *ARGS, *bad, "--out", str(out), "--quiet"]) == 2
    _one_error(capsys, f"error: {tmp_path / 'missing'} holds no trained model")
    assert {p.name for p in out.iterdir()} <= {".fairdiff.json", ".fairdiff.lock"}
    assert main(["train", *ARGS, "--out", str(out), "--quiet"]) == 0
