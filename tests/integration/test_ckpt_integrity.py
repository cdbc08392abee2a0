"""Checkpoints carry the size and SHA-256 of their files; --resume latest skips a damaged newest checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from fairdiff.cli.main import main
from fairdiff.training.checkpoint import check_checkpoint
from tests.conftest import TINY

ARGS = [*TINY, "train.steps=6", "train.checkpoint_every=2", "train.checkpoint_total_limit=2", "method.name=ddm",
        "method.indicator_widths=[16]"]


def _unet(run):
    return load_file(str(run / "model" / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("integrity")
    straight, stopped = base / "straight", base / "stopped"
    assert main(["train", *ARGS, "--out", str(straight), "--quiet"]) == 0
    assert main(["train", *ARGS, "--out", str(stopped), "--stop-after", "4", "--quiet"]) == 0
    assert sorted(p.name for p in stopped.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    return straight, stopped


def test_file_list_names_every_file_with_size_and_hash(runs):
    ck = runs[1] / "checkpoint-4"
    listed = json.loads((ck / "files.json").read_text())
    assert listed["step"] == 4
    assert set(listed["files"]) == {p.name for p in ck.iterdir()} - {"files.json"}
    for name, facts in listed["files"].items():
        assert facts["bytes"] == (ck / name).stat().st_size and len(facts["sha256"]) == 64
    assert check_checkpoint(ck) is None


@pytest.mark.parametrize("damage", ["truncate-model", "flip-optimizer", "delete-ema", "drop-file-list"])
def test_damaged_newest_is_skipped(runs, tmp_path, capsys, caplog, damage):
    straight, stopped = runs
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    ck = run / "checkpoint-4"
    if damage == "truncate-model":
        data = (ck / "model.safetensors").read_bytes()
        (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "flip-optimizer":
        data = bytearray((ck / "optimizer.safetensors").read_bytes())
        data[-5] ^= 0xFF  # same size, different bytes
        (ck / "optimizer.safetensors").write_bytes(bytes(data))
    elif damage == "delete-ema":
        (ck / "ema.safetensors").unlink()
    else:
        (ck / "files.json").unlink()
    assert check_checkpoint(ck) is not None
    capsys.readouterr()
    assert main(["train", *ARGS, "--out", str(run), "--resume", "latest", "--quiet"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("skipping damaged checkpoint" in w and "checkpoint-4" in w for w in warned), warned
    # resumed from checkpoint-2: the result is the uninterrupted run's, bit for bit
    a, b = _unet(straight), _unet(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines()]
    assert rows == [2, 4, 6]
    assert check_checkpoint(run / "checkpoint-6") is None


def test_no_intact_checkpoint_is_one_line(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    for ck in run.glob("checkpoint-*"):
        (ck / "model.safetensors").write_bytes(b"")
    capsys.readouterr()
    assert main(["train", *ARGS, "--out", str(run), "--resume", "latest", "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "no intact checkpoint" in lines[0] and "Traceback" not in err
    assert not (run / "model").exists()


def test_explicit_damaged_checkpoint_is_refused(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    (run / "checkpoint-2" / "scheduler.json").write_text("{}")
    capsys.readouterr()
    rc = main(["train", *ARGS, "--out", str(run), "--resume", str(run / "checkpoint-2"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "damaged" in err and "scheduler.json" in err and "Traceback" not in err


@pytest.mark.parametrize("other", [["method.name=baseline"], ["method.indicator_widths=[32]"], ["train.ema=false"],
                                   ["model.preset=small"]])
def test_checkpoint_of_another_model_is_one_line(runs, tmp_path, capsys, other):
    """--resume with a checkpoint of a different architecture / method: refused with one line, nothing trained."""
    out = tmp_path / "new"
    capsys.readouterr()
    rc = main(["train", *ARGS, *other, "--out", str(out), "--resume", str(runs[1] / "checkpoint-2"), "--quiet"])
    err = capsys.readouterr().err
    if other == ["train.ema=false"]:  # the EMA part is simply not used: the resume works
        assert rc == 0, err
        return
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "does not fit this run" in lines[0] and "Traceback" not in err, err
    assert not (out / "model").exists()
