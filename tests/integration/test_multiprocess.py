"""Scale-out: ``accelerate launch`` with two CPU processes (gloo) trains and writes one run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fairdiff.training.trainer import batch_indices


def test_global_batches_are_split_across_ranks():
    n, bs, world = 50, 4, 2
    for pos in range(30):
        glob = batch_indices(n, bs * world, pos, seed=0)
        parts = [glob[r * bs:(r + 1) * bs] for r in range(world)]
        assert not set(parts[0]) & set(parts[1])
    # every example is seen once per epoch
    seen = np.concatenate([batch_indices(n, 10, p, seed=1) for p in range(5)])
    assert sorted(seen.tolist()) == list(range(50))


TRAIN = ["train", "data.source=synthetic", "data.synthetic_size=120", "data.heldout_per_group=10", "train.steps=2",
         "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=1", "train.checkpoint_total_limit=2",
         "method.name=ddm", "method.indicator_widths=[16]", "-q"]


def test_accelerate_launch_cpu_is_one_process(tmp_path):
    """Smoke test of the launch path. ``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate
    has no multi-CPU launcher without an MPI config), so this run has one rank: one RNG state in its checkpoint.
    Two real ranks are tested below with torchrun."""
    accelerate = Path(sys.executable).with_name("accelerate")
    out = tmp_path / "mp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fairdiff", *TRAIN, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
    assert sorted(p.name for p in (out / "checkpoint-2").glob("rng-*.safetensors")) == ["rng-0.safetensors"]


SPY = """
import hashlib, json, sys
from pathlib import Path

import fairdiff.training.trainer as trainer

save = trainer.save_checkpoint


def digest(module):
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.removeprefix("module.").encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def spy(accelerator, run_dir, step, limit, state):  # each rank writes a digest of the weights it holds
    out = Path(__file__).parent / f"rank{accelerator.process_index}-step{step}.json"
    out.write_text(json.dumps({n: digest(m) for n, m in state["modules"].items()}))
    return save(accelerator, run_dir, step, limit, state)


trainer.save_checkpoint = spy
from fairdiff.cli.main import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("method", ["baseline", "ddm"])
def test_two_ranks_hold_the_same_weights(tmp_path, method):
    """Two real ranks (torchrun; ACCELERATE_USE_CPU=1 makes accelerate set up gloo, without it each process trains
    alone as rank 0) train one model: at every checkpoint both hold the same weights (digests written by each
    rank), equal to what rank 0 saved; each rank saves its RNG state; the log has one row per step."""
    import hashlib

    from safetensors.torch import load_file

    out = tmp_path / "mp"
    script = tmp_path / "spy.py"
    script.write_text(SPY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    train = [a for a in TRAIN if not a.startswith("method.")] + [f"method.name={method}"]
    train += ["method.indicator_widths=[16]"] if method == "ddm" else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           *train, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    digests = {(r, s): json.loads((tmp_path / f"rank{r}-step{s}.json").read_text()) for r in (0, 1) for s in (1, 2)}
    for s in (1, 2):
        assert digests[0, s] == digests[1, s]
        assert set(digests[0, s]) == ({"model", "module-indicator"} if method == "ddm" else {"model"})
    assert digests[0, 1] != digests[0, 2]  # the weights moved between the checkpoints

    def file_digest(path):
        h = hashlib.sha256()
        for k, v in sorted(load_file(str(path)).items()):
            h.update(k.removeprefix("module.").encode() + v.contiguous().numpy().tobytes())
        return h.hexdigest()

    for name in digests[1, 2]:
        assert file_digest(out / "checkpoint-2" / f"{name}.safetensors") == digests[1, 2][name]
    # each rank saved its own random state (the single-process launch above saves one)
    assert sorted(p.name for p in (out / "checkpoint-2").glob("rng-*.safetensors")) == [
        "rng-0.safetensors", "rng-1.safetensors"]
