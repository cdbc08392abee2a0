"""Stop means save: SIGINT / SIGTERM during training save a checkpoint at the current step, and a resumed run
continues from exactly there (bit-identical to an uninterrupted run). A non-finite loss stops with one line."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fairdiff.cli.main import main
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
ARGS = [*TINY, "train.steps=5000", "train.checkpoint_every=1000", "train.log_every=1", "train.warmup_steps=2"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fairdiff", "train", *ARGS, *args, "--quiet"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _logged_steps(run: Path) -> list[int]:
    f = run / "stats.jsonl"
    return [json.loads(line)["step"] for line in f.read_text().splitlines()] if f.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_current_step_and_resume_continues(tmp_path, sig):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli("--out", str(run)), env=_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while len(_logged_steps(run)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    cks = sorted(run.glob("checkpoint-*"))
    assert len(cks) == 1, cks
    n = int(cks[0].name.split("-")[1])
    assert n >= 3 and _logged_steps(run)[-1] == n  # the step in progress was finished and saved
    assert f"stopped at step {n}; checkpoint saved; continue with --resume latest" in err
    assert "Traceback" not in err
    assert json.loads((cks[0] / "trainer_state.json").read_text())["step"] == n
    if sig != signal.SIGINT:
        return
    # resume two more steps (in this process), and compare with a run that went straight to n + 2
    assert main(["train", *ARGS, "--out", str(run), "--resume", "latest", "--stop-after", str(n + 2), "--quiet"]) == 0
    assert _logged_steps(run) == list(range(1, n + 3))
    straight = tmp_path / "straight"
    assert main(["train", *ARGS, "--out", str(straight), "--stop-after", str(n + 2), "--quiet"]) == 0
    a = load_file(str(run / f"checkpoint-{n + 2}" / "model.safetensors"))
    b = load_file(str(straight / f"checkpoint-{n + 2}" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_with_one_line_and_keeps_the_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", *TINY, "train.lr=10", "train.warmup_steps=0", "train.steps=30", "train.log_every=1",
               "train.checkpoint_every=1", "train.checkpoint_total_limit=100", "--out", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "inf/nan at step" in lines[0] and "Traceback" not in err, err
    assert not (run / "model").exists()
    cks = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    bad = int(lines[0].split("step ")[1].split(";")[0].split()[0])
    assert all(int(p.name.split("-")[1]) < bad for p in cks)  # nothing saved from the diverged step on
    for ck in cks:  # every checkpoint that was kept holds finite weights
        w = load_file(str(ck / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in w.values()), ck
    if cks:
        assert cks[-1].name in lines[0]
    assert all(math.isfinite(json.loads(line)["loss"]) for line in (run / "stats.jsonl").read_text().splitlines())
