"""No code runs from a checkpoint: pickle payloads planted anywhere in a checkpoint are never unpickled.

Each case copies a run stopped at step 2 (one checkpoint), plants a payload that would create a marker folder
if it were ever unpickled, and resumes through the CLI: the resume is refused with one line (exit 2) and the
marker never appears.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil

import pytest
import torch

from fairdiff.cli.main import main
from tests.conftest import TINY

ARGS = [*TINY, "train.steps=4", "train.checkpoint_every=100", "method.name=ddm", "method.indicator_widths=[16]"]


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _pickle_bytes(marker, style: str) -> bytes:
    obj = {"state": Payload(str(marker))}
    if style == "torch":  # the zip layout torch.save / accelerate write
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()
    return pickle.dumps(obj)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("pk") / "run"
    assert main(["train", *ARGS, "--out", str(run), "--stop-after", "2", "--quiet"]) == 0
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    names = {p.name for p in (run / "checkpoint-2").iterdir()}
    assert names and all(n.endswith((".safetensors", ".json")) for n in names), names
    return run


def _forge_file_list(ck) -> None:
    """Rewrite files.json so that every planted file looks intact (an attacker can do this too)."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in ck.iterdir() if p.name != "files.json"}
    (ck / "files.json").write_text(json.dumps({"format": 1, "step": 2, "files": files}))


EXTRA_NAMES = ["optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl",
               "pytorch_model.bin", "model.pt", "ema.pth", "data.pkl", "model.ckpt", "scaler.pt", "state.npy"]
REPLACED = ["model.safetensors", "module-indicator.safetensors", "optimizer.safetensors", "ema.safetensors",
            "rng-0.safetensors", "optimizer.json", "scheduler.json", "ema.json", "rng-0.json", "trainer_state.json",
            "files.json"]
CASES = ([("add", n, False) for n in EXTRA_NAMES] + [("add", n, True) for n in ("optimizer.bin", "data.pkl")]
         + [("replace", n, False) for n in REPLACED] + [("replace", n, True) for n in REPLACED if n != "files.json"]
         + [("subdir", "sub/data.pkl", False)])


@pytest.mark.parametrize("how, name, forge", CASES, ids=[f"{h}-{n}{'-forged' if f else ''}" for h, n, f in CASES])
@pytest.mark.parametrize("style", ["pickle", "torch"])
def test_planted_pickle_never_runs(stopped_run, tmp_path, capsys, how, name, forge, style, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    ck = run / "checkpoint-2"
    marker = tmp_path / "PWNED"
    target = ck / name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(_pickle_bytes(marker, style))
    if forge:
        _forge_file_list(ck)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    rc = main(["train", *ARGS, "--out", str(run), "--resume", "latest", "--quiet"])
    err = capsys.readouterr().err
    assert not marker.exists(), "a pickle payload in the checkpoint was executed"
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not (run / "model").exists()  # nothing was trained from the tampered checkpoint


def test_explicit_checkpoint_path_is_checked_too(stopped_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    marker = tmp_path / "PWNED"
    (run / "checkpoint-2" / "random_states_0.pkl").write_bytes(_pickle_bytes(marker, "torch"))
    rc = main(["train", *ARGS, "--out", str(run), "--resume", str(run / "checkpoint-2"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists()
    assert "random_states_0.pkl" in err and "Traceback" not in err


def test_payload_is_live(tmp_path):
    """The payload does run when unpickled (so the tests above would see it)."""
    for style, load in (("pickle", pickle.loads), ("torch", lambda b: torch.load(io.BytesIO(b), weights_only=False))):
        marker = tmp_path / f"live-{style}"
        load(_pickle_bytes(marker, style))
        assert marker.is_dir()


def test_pretrained_model_reads_safetensors_only(tmp_path, capsys):
    """model.pretrained pointing at a model folder whose U-Net weights are a pickled .bin: refused, never read."""
    from fairdiff.models import build_unet

    md = tmp_path / "evil"
    unet = build_unet("tiny", 16, 1, None)
    unet.save_pretrained(str(md / "unet"), safe_serialization=False)  # diffusion_pytorch_model.bin
    marker = tmp_path / "PWNED"
    (md / "unet" / "diffusion_pytorch_model.bin").write_bytes(_pickle_bytes(marker, "torch"))
    from fairdiff.models import build_noise_scheduler

    build_noise_scheduler(1000, "linear").save_pretrained(str(md / "scheduler"))
    rc = main(["train", *TINY, "train.steps=2", "model.pretrained=" + str(md), "--out", str(tmp_path / "ft"),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists(), err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1 and "Traceback" not in err
    assert "cannot load the model" in err
