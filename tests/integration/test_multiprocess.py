"""Scale-out: ``accelerate launch`` with two CPU processes (gloo) trains and writes one run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

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


def test_accelerate_launch_two_processes(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    out = tmp_path / "mp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fairdiff", "train",
           "data.source=synthetic", "data.synthetic_size=120", "data.heldout_per_group=10", "train.steps=2",
           "train.batch_size=4", "train.log_every=1", "method.name=ddm", "method.indicator_widths=[16]",
           "--out", str(out), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (out / "checkpoint-2" / "trainer_state.json").exists()
