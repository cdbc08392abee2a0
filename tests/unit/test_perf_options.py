"""The GPU speed options (docs/performance.md) on the CPU: they must not change what is learned or sampled.

channels_last, data_on_device (and fused_optimizer, ignored off CUDA) train to the same losses and weights as the
defaults; a channels_last run resumes exactly; the sampler gives the same images in channels_last; and the
throughput benchmark's --quick mode runs and writes its table.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fairdiff.config import load_config
from fairdiff.errors import ConfigError
from fairdiff.training import train
from fairdiff.training.trainer import DeviceBatches, batch_indices

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4


def _cfg(tiny: list[str], *extra: str):
    return load_config(None, [*tiny, f"train.steps={STEPS}", "train.log_every=1", "train.checkpoint_every=100",
                              "method.name=ddm", "method.indicator_widths=[16]", *extra])


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "stats.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny DDM runs, trained once for the tests below: defaults, and each option on its own."""
    from tests.conftest import TINY

    base = tmp_path_factory.mktemp("perf")
    out = {}
    for name, extra in {"default": [], "channels_last": ["train.channels_last=true"],
                        "on_device": ["train.data_on_device=true", "train.fused_optimizer=true"]}.items():
        out[name] = base / name
        train(_cfg(TINY, *extra), out[name], quiet=True)
    return out


def test_device_batches_match_batch_indices():
    """The device-side batcher serves exactly the host-side data order, across epoch boundaries too."""
    for n, bs in ((10, 3), (10, 7), (5, 12)):  # 5 / 12: one batch spans more than two epochs
        db = DeviceBatches(n, seed=3, device=torch.device("cpu"))
        for pos in range(9):
            assert db(bs, pos).tolist() == batch_indices(n, bs, pos, 3).tolist(), (n, bs, pos)
    assert len(db._perms) <= 2  # only the newest epochs are kept


def test_data_on_device_gives_identical_training(runs):
    """On the CPU, indexing on 'the device' is the same arithmetic: losses and weights are bit-identical."""
    assert len(_losses(runs["default"])) == STEPS
    assert _losses(runs["on_device"]) == _losses(runs["default"])
    a, b = _weights(runs["default"]), _weights(runs["on_device"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_channels_last_gives_the_same_losses_and_weights(runs):
    la, lb = _losses(runs["default"]), _losses(runs["channels_last"])
    np.testing.assert_allclose(lb, la, rtol=1e-4, atol=1e-6)
    a, b = _weights(runs["default"]), _weights(runs["channels_last"])
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].is_contiguous(), k  # the saved model is in the default layout
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)
    cfg = (runs["channels_last"] / "config.yaml").read_text()
    assert "channels_last: true" in cfg


def test_fused_optimizer_is_ignored_with_a_note_off_cuda(tmp_path, tiny_overrides, caplog):
    cfg = load_config(None, [*tiny_overrides, "train.steps=1", "train.fused_optimizer=true"])
    with caplog.at_level(logging.WARNING, logger="fairdiff.training.trainer"):
        train(cfg, tmp_path / "run", quiet=True, stop_after=1)
    assert any("fused_optimizer: ignored on cpu" in r.getMessage() for r in caplog.records)


def test_channels_last_run_resumes_exactly(runs, tmp_path, monkeypatch):
    """Stop after 2 steps, resume: the same weights as the uninterrupted channels_last run."""
    from tests.conftest import TINY

    import fairdiff.methods.base as base

    seen, real_predict = [], base.predict_noise

    def spy(unet, noisy, t, batch):  # the layout the U-Net really runs in
        seen.append(unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
                    and batch["pixel_values"].is_contiguous(memory_format=torch.channels_last))
        return real_predict(unet, noisy, t, batch)

    monkeypatch.setattr(base, "predict_noise", spy)
    cfg = _cfg(TINY, "train.channels_last=true")
    run = tmp_path / "resumed"
    r = train(cfg, run, quiet=True, stop_after=2)
    assert r.steps == 2 and (run / "checkpoint-2").is_dir()
    train(cfg, run, quiet=True, resume="latest")
    a, b = _weights(runs["channels_last"]), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(run) == _losses(runs["channels_last"])
    assert len(seen) == STEPS and all(seen)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate fixes the mixed precision once per process; start and leave the state fresh around a change."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_mixed_precision_trains_the_unet(tmp_path, tiny_overrides, fresh_accelerate_state):
    """train.mixed_precision=bf16 runs the U-Net under autocast: finite losses close to (not equal to) fp32."""
    from accelerate.state import AcceleratorState

    small = [*tiny_overrides, "train.steps=2", "train.log_every=1", "train.batch_size=4"]  # bf16 is slow on CPUs
    train(load_config(None, small), tmp_path / "fp32", quiet=True, stop_after=1)
    AcceleratorState._reset_state(reset_partial_state=True)
    train(load_config(None, [*small, "train.mixed_precision=bf16"]), tmp_path / "bf16", quiet=True, stop_after=1)
    a, b = _losses(tmp_path / "fp32"), _losses(tmp_path / "bf16")
    assert len(b) == 1 and all(np.isfinite(b))
    np.testing.assert_allclose(b, a, rtol=1e-2)
    assert a != b  # bf16 really was used


def _tiny_unet():
    from fairdiff.models import build_noise_scheduler, build_sampling_scheduler
    from fairdiff.models.unet import build_unet

    torch.manual_seed(0)
    unet = build_unet("tiny", 16, 1).eval()
    return unet, build_sampling_scheduler("ddim", build_noise_scheduler().config)


def test_sampler_channels_last_and_bf16():
    from fairdiff.sampling import sample

    unet, sched = _tiny_unet()
    ref = sample(unet, sched, [5, 6, 7], batch_size=2, num_steps=4, progress=False)
    cl = sample(unet, sched, [5, 6, 7], batch_size=3, num_steps=4, progress=False, channels_last=True)
    assert next(p for p in unet.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)
    bf = sample(unet, sched, [5, 6, 7], batch_size=3, num_steps=4, progress=False, precision="bf16")
    assert bf.dtype == torch.float32 and not torch.equal(bf, ref)
    assert (bf - ref).abs().mean() < 0.05
    with pytest.raises(ValueError, match="precision"):
        sample(unet, sched, [0], num_steps=1, progress=False, precision="fp8")


def test_sample_run_takes_speed_options_from_the_run_config(tmp_path):
    from fairdiff.config import save_config
    from fairdiff.sampling.files import _speed_options

    assert _speed_options(tmp_path, precision=None, channels_last=None, compile=None, compile_mode=None) == {
        "precision": "fp32", "channels_last": False, "compile": False, "compile_mode": "default"}
    save_config(load_config(None, ["sample.precision=bf16", "sample.channels_last=true"]), tmp_path / "config.yaml")
    got = _speed_options(tmp_path, precision=None, channels_last=None, compile=False, compile_mode=None)
    assert got == {"precision": "bf16", "channels_last": True, "compile": False, "compile_mode": "default"}
    assert _speed_options(tmp_path, precision="fp32", channels_last=False, compile=None,
                          compile_mode=None)["precision"] == "fp32"  # given values win


def test_perf_config_fields_are_checked():
    cfg = load_config(None, ["train.compile=true", "train.compile_mode=reduce-overhead", "sample.precision=bf16"])
    assert cfg.train.compile and cfg.train.compile_mode == "reduce-overhead" and cfg.sample.precision == "bf16"
    d = load_config(None)
    assert not (d.train.channels_last or d.train.compile or d.train.fused_optimizer or d.train.data_on_device)
    assert d.sample.precision == "fp32" and not (d.sample.channels_last or d.sample.compile)
    with pytest.raises(ConfigError, match="train.compile_mode"):
        load_config(None, ["train.compile_mode=fast"])
    with pytest.raises(ConfigError, match="sample.precision"):
        load_config(None, ["sample.precision=fp16"])


def test_benchmark_quick_runs_and_writes_its_table(tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu_throughput.py"), "--quick",
                        "--device", "cpu", "--out", str(out)], capture_output=True, text=True, timeout=240, env=env,
                       cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    md = (out / "results.md").read_text()
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] and "bench_gpu_throughput.py --quick --device cpu" in res["command"]
    r = res["results"]
    for name in ("plain-fp32", "plain-bf16", "fd-fp32", "fd-bf16", "fd-bf16-cl", "fd-fast", "ddm-fp32", "ddm-fast",
                 "plain-sample-fp32", "fd-sample-fp32", "fd-sample-bf16-cl"):
        assert r[name]["status"] == "ok", (name, r[name])
        assert r[name]["img_per_s"] > 0
        assert f"| {name} |" in md
    assert r["fd-fast-compile"]["status"].startswith("skipped")  # compile is off on the CPU by default
    assert r["ddm-fast"]["ddm_step_ratio"] > 0 and r["fd-fast"]["loss_rel_diff"] < 0.01
    assert "## Summary" in md and "command: python benchmarks/bench_gpu_throughput.py" in p.stdout


def test_compiled_training_checkpoints_the_plain_module(runs, tmp_path, monkeypatch):
    """train.compile: the objective calls the compiled U-Net, checkpoints and the model keep plain keys, resume works.

    torch.compile runs with dynamo's ``eager`` backend here (the same graph capture, no C++ code generation), so the
    test stays fast on a CPU; the numbers must match the uncompiled run.
    """
    from tests.conftest import TINY

    real, calls = torch.compile, []

    def eager_compile(model, mode=None, **kw):
        calls.append(mode)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    cfg = _cfg(TINY, "train.compile=true")
    run = tmp_path / "compiled"
    train(cfg, run, quiet=True, stop_after=2)
    keys = load_file(str(run / "checkpoint-2" / "model.safetensors")).keys()
    assert keys and not any("_orig_mod" in k for k in keys)
    train(cfg, run, quiet=True, resume="latest")
    assert calls == ["default", "default"]
    np.testing.assert_allclose(_losses(run), _losses(runs["default"]), rtol=1e-5)
    a, b = _weights(runs["default"]), _weights(run)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
