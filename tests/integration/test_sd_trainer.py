"""``sd-finetune`` runs in the one trainer: it resumes bit-identically (after --stop-after, and after a hard kill)
and trains with every training method, on the tiny random SD stack of ``fairdiff sd-init`` (no downloads)."""

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

pytest.importorskip("peft")
pytest.importorskip("transformers")

from fairdiff.cli.main import main  # noqa: E402
from tests.conftest import TINY  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = [o for o in TINY if not o.startswith(("data.resolution", "train.batch_size"))] + [
    "data.resolution=16", "train.batch_size=2", "train.warmup_steps=1", "train.lr=1e-2", "train.log_every=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sd") / "base"
    assert main(["sd-init", str(out), "--resolution", "16"]) == 0
    return out


def _finetune(base: Path, run: Path, *args: str) -> int:
    return main(["sd-finetune", "--sd", str(base), "--out", str(run), "--prompt", "a face", "-q", *DATA, *args])


def _equal_files(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def _steps(run: Path) -> list[int]:
    f = run / "stats.jsonl"
    return [json.loads(line)["step"] for line in f.read_text().splitlines()] if f.exists() else []


def test_stop_and_resume_gives_identical_lora(base, tmp_path):
    common = ["method.name=ddm", "method.indicator_widths=[8]", "train.steps=4", "train.grad_accum=2",
              "model.lora_text_encoder=true", "train.ema_decay=0.9"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _finetune(base, straight, *common) == 0
    assert _finetune(base, resumed, *common, "--stop-after", "2") == 0
    assert (resumed / "checkpoint-2").is_dir() and not (resumed / "model").exists()
    # a checkpoint holds the LoRA (and the indicator), not the frozen base model
    held = load_file(str(resumed / "checkpoint-2" / "model.safetensors"))
    assert held and all("lora_" in k for k in held)
    assert (resumed / "checkpoint-2" / "ema.safetensors").is_file()
    assert _finetune(base, resumed, *common, "--resume", "latest") == 0
    _equal_files(straight / "model" / "pytorch_lora_weights.safetensors",
                 resumed / "model" / "pytorch_lora_weights.safetensors")
    _equal_files(straight / "model" / "indicator" / "model.safetensors",
                 resumed / "model" / "indicator" / "model.safetensors")
    assert _steps(resumed) == [1, 2, 3, 4]


def test_resume_refuses_other_prompts(base, tmp_path, capsys):
    run = tmp_path / "r"
    assert _finetune(base, run, "train.steps=3", "--stop-after", "1") == 0
    capsys.readouterr()
    rc = main(["sd-finetune", "--sd", str(base), "--out", str(run), "--prompt", "a dog", "-q", *DATA,
               "train.steps=3", "--resume", "latest"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot resume" in err[0], err
    rc = _finetune(base, run, "train.steps=3")  # neither --resume nor --overwrite: the run is kept
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--resume latest or --overwrite" in err[0], err
    assert (run / "checkpoint-1").is_dir()


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def test_resume_after_a_hard_kill_is_bit_identical(base, tmp_path):
    common = ["method.name=ddm", "method.indicator_widths=[8]", "train.steps=5000", "train.checkpoint_every=2",
              "train.checkpoint_total_limit=5"]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "fairdiff", "sd-finetune", "--sd", str(base), "--out", str(run), "--prompt",
           "a face", "-q", *DATA, *common]
    proc = subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(_steps(run)) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.kill()  # SIGKILL: no handler runs, no checkpoint is written at the kill
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
    assert done and done[-1] >= 2
    n = done[-1] + 2
    assert _finetune(base, run, *common, "--resume", "latest", "--stop-after", str(n)) == 0
    assert _steps(run) == list(range(1, n + 1))  # rows logged after the checkpoint, before the kill, are dropped
    straight = tmp_path / "straight"
    assert _finetune(base, straight, *common, "--stop-after", str(n)) == 0
    for name in ("model.safetensors", "module-indicator.safetensors", "ema.safetensors", "optimizer.safetensors"):
        _equal_files(run / f"checkpoint-{n}" / name, straight / f"checkpoint-{n}" / name)


REF = ["data.synthetic_size=300", "data.size=100", "data.reference=0.2", "method.disc_steps=4",
       "method.disc_batch_size=4", "method.disc_width=8"]
METHODS = {
    "baseline": [],
    "ddm": ["method.indicator_widths=[8]"],
    "reweight": [],
    "tiw": REF,
    "iw": REF,
    "align": ["method.align_steps=2", "method.align_classifier_steps=3"],
}


@pytest.fixture(scope="module")
def baseline_run(base, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sd-baseline") / "baseline"
    assert _finetune(base, run, "method.name=baseline", "train.steps=2") == 0
    return run


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


def test_reweight_weights_the_baseline_loss(base, baseline_run, tmp_path):
    """Reweighting sees the baseline's batches and noise (same seed: its unweighted denoising loss at step 1 equals
    the baseline's loss) and weights each image by target / data share: 0.5 / 0.8 = 0.625 for the majority and
    0.5 / 0.2 = 2.5 for the minority, so its loss is the per-image losses' weighted mean, between 0.625 and 2.5 times
    their plain mean and not equal to it; the LoRA it trains differs from the baseline's."""
    from fairdiff.methods.reweight import group_weights

    assert group_weights([80, 20]).tolist() == pytest.approx([0.625, 2.5])
    run = tmp_path / "reweight"
    assert _finetune(base, run, "method.name=reweight", "train.steps=2") == 0
    rw, bl = _rows(run), _rows(baseline_run)
    assert rw[0]["denoise"] == pytest.approx(bl[0]["loss"], rel=1e-5)
    for r in rw:
        assert r["loss"] == pytest.approx(r["weighted"], rel=1e-6)
        assert 0.625 - 1e-6 <= r["weighted"] / r["denoise"] <= 2.5 + 1e-6
    assert any(abs(r["weighted"] / r["denoise"] - 1.0) > 1e-3 for r in rw)  # a fallback to weight 1 would not
    a = load_file(str(run / "model" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(baseline_run / "model" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains(base, tmp_path, method):
    run = tmp_path / method
    assert _finetune(base, run, f"method.name={method}", "train.steps=2", *METHODS[method]) == 0
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    saved = load_file(str(run / "model" / "pytorch_lora_weights.safetensors"))
    ups = [v for k, v in saved.items() if "lora_B" in k]  # LoRA B starts at zero: nonzero = trained
    assert ups and all(float(v.abs().sum()) > 0 for v in ups)
    modules = {p.name for p in (run / "model").iterdir() if p.is_dir()}
    assert modules == {"ddm": {"indicator"}, "tiw": {"discriminator"}, "iw": {"discriminator"}}.get(method, set())
    if method in ("tiw", "iw", "align"):  # what prepare / the discriminator fit found is logged
        assert json.loads((run / "method.json").read_text())
    if method == "align":
        assert {"align_ce", "preserve"} <= set(rows[-1])
    assert f"**{method}**" in (run / "report.md").read_text()
