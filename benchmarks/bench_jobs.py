"""Benchmark: ``fairdiff bench --jobs 2`` against ``--jobs 1`` on the same 4-cell config, side by side in one run.

The config is the MNIST-sized pixel cell of the shipped benches made small enough to run in minutes: the embedded
digits (0 vs 1 at 4:1 and 1:4) x (baseline, reweight), one seed, 300 training steps, 500 samples each, evaluated
with the open-set judge. ``--jobs 1`` runs the four cells one after the other with every core's threads;
``--jobs 2`` runs two at a time with cores/2 threads each. The ratio printed is wall(jobs 1) / wall(jobs 2): above
1 means the parallel run finished sooner. Both runs write into fresh temporary folders and share one classifier
cache (trained beforehand, untimed), so only the cells are timed. Check the results agree with ``--check``.

    .venv/bin/python benchmarks/bench_jobs.py [--steps 300] [--samples 500]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import yaml


def _config(path: Path, steps: int, samples: int) -> Path:
    data = {
        "name": "jobs-bench",
        "overrides": {"data.source": "digits", "data.resolution": 16, "data.heldout_per_group": 30,
                      "model.preset": "tiny", "train.steps": steps, "train.batch_size": 32, "train.lr": 1.0e-3,
                      "train.warmup_steps": 25, "train.log_every": 50, "train.checkpoint_every": steps,
                      "sample.steps": 20, "sample.batch_size": 250, "eval.n_samples": samples,
                      "eval.bootstrap": 200},
        "seeds": [0],
        "settings": {"4to1": {"data.groups": [0, 1], "data.shares": [0.8, 0.2]},
                     "1to4": {"data.groups": [0, 1], "data.shares": [0.2, 0.8]}},
        "methods": {"baseline": {"method.name": "baseline"}, "reweight": {"method.name": "reweight"}},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _bench(cfg: Path, out: Path, jobs: int) -> float:
    from fairdiff.cli.main import main

    t0 = time.time()
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        rc = main(["bench", str(cfg), "--out", str(out), "-q", "--jobs", str(jobs)])
    if rc != 0:
        raise SystemExit(f"bench --jobs {jobs} failed:\n{buf.getvalue()}")
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--check", action="store_true", help="also assert both runs give the same metrics")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fairdiff-jobs-"))
    os.environ["FAIRDIFF_CACHE"] = str(tmp / "cache")
    cfg = _config(tmp / "jobs.yaml", args.steps, args.samples)
    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    # warm the classifier cache once (untimed) so both runs time only their cells
    _bench(_config(tmp / "warm.yaml", 2, 16), tmp / "warm", 1)
    t1 = _bench(cfg, tmp / "jobs1", 1)
    t2 = _bench(cfg, tmp / "jobs2", 2)
    print(f"cores: {cores}; torch {torch.__version__}; 4 cells, {args.steps} steps, {args.samples} samples each")
    print(f"--jobs 1 ({cores} threads, cells one by one): {t1:7.1f} s")
    print(f"--jobs 2 ({max(1, cores // 2)} thread(s) each, two cells at once): {t2:7.1f} s")
    print(f"ratio wall(jobs 1) / wall(jobs 2): {t1 / t2:.2f}")
    if args.check:
        for m in sorted((tmp / "jobs1" / "cells").glob("*/*/metrics.json")):
            other = tmp / "jobs2" / m.relative_to(tmp / "jobs1")
            a, b = json.loads(m.read_text()), json.loads(other.read_text())
            print(f"{m.parent.parent.name}/{m.parent.name}: strict FD {a['fd_strict']:.3f} vs {b['fd_strict']:.3f}")


if __name__ == "__main__":
    main()
