"""One guided-sampling path: ``fairdiff train-heads`` + ``fairdiff sample --guidance`` and a bench guidance cell
fit the same heads and draw the same images for the same seed (both go through ``guide_run``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fairdiff.bench.config import BenchCell, GuidanceSpec
from fairdiff.bench.runner import run_guidance_cell
from fairdiff.cli.main import main
from fairdiff.errors import FairdiffError
from fairdiff.models.heads import load_heads
from fairdiff.sampling.guided import guide_run
from tests.conftest import TINY

OVERRIDES = [*TINY, "train.steps=2", "train.checkpoint_every=2", "sample.steps=3", "sample.batch_size=4",
             "eval.n_samples=4", "sample.seed=5"]


def test_cli_and_bench_guide_the_same_samples(tmp_path, monkeypatch):
    import fairdiff.evaluation

    monkeypatch.setenv("FAIRDIFF_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", *OVERRIDES, "--out", str(run), "-q"]) == 0

    # the CLI: heads for the run's sampling schedule, then guided samples toward the (uniform) default target
    heads = tmp_path / "heads"
    assert main(["train-heads", str(run), "--out", str(heads), "--steps", "3", "--n-per-step", "32", "--seed", "0",
                 "--device", "cpu", "-q"]) == 0
    common = [str(run), "--n", "4", "--steps", "3", "--batch-size", "4", "--seed", "5", "--no-png", "--device",
              "cpu", "-q"]
    assert main(["sample", *common, "--out", str(tmp_path / "cli"), "--guidance", str(heads), "--scale", "100"]) == 0
    assert main(["sample", *common, "--out", str(tmp_path / "plain")]) == 0

    # the bench: a guidance cell of the same run (its evaluation is not what this test is about)
    monkeypatch.setattr(fairdiff.evaluation, "evaluate_samples", lambda *a, **k: {})
    cell = BenchCell("a/guidance-s0", "a", list(OVERRIDES), 0, "guidance", after="a/baseline-s0",
                     guidance=GuidanceSpec(scale=100.0, n_per_step=32))
    run_guidance_cell(None, cell, tmp_path / "cell", run, quiet=True)

    cli_heads = load_heads(heads).state_dict()
    bench_heads = load_heads(tmp_path / "cell" / "heads").state_dict()
    assert cli_heads.keys() == bench_heads.keys()
    assert all(torch.equal(cli_heads[k], bench_heads[k]) for k in cli_heads)
    cli, bench, plain = (np.load(p / "samples.npz") for p in (tmp_path / "cli", tmp_path / "cell" / "samples",
                                                              tmp_path / "plain"))
    assert cli["seeds"].tolist() == bench["seeds"].tolist() == [5, 6, 7, 8]
    assert np.array_equal(cli["images"], bench["images"])
    assert not np.array_equal(cli["images"], plain["images"])  # guidance moved them: the equality is not trivial
    rec_cli = json.loads((tmp_path / "cli" / "meta.json").read_text())["guidance"]
    rec_bench = json.loads((tmp_path / "cell" / "samples" / "meta.json").read_text())["guidance"]
    same = ("target", "scale", "temperature", "loss")
    assert {k: rec_cli[k] for k in same} == {k: rec_bench[k] for k in same} == {
        "target": [0.5, 0.5], "scale": 100.0, "temperature": 8.0, "loss": "chi2"}
    assert rec_bench["model"] == str(run) and rec_bench["n_per_step"] == 32


def test_guide_run_refuses_a_conditional_run_in_one_line(tmp_path, monkeypatch):
    """The guidance preconditions live in one place: a class-conditional run is refused before sampling."""
    monkeypatch.setenv("FAIRDIFF_CACHE", str(tmp_path / "cache"))
    run, cond = tmp_path / "run", tmp_path / "cond"
    assert main(["train", *OVERRIDES, "--out", str(run), "-q"]) == 0
    assert main(["train", *OVERRIDES, "model.conditional=true", "--out", str(cond), "-q"]) == 0
    heads = tmp_path / "h"
    assert main(["train-heads", str(run), "--out", str(heads), "--steps", "3", "--n-per-step", "16", "-q",
                 "--device", "cpu"]) == 0
    with pytest.raises(FairdiffError, match="unconditional model") as e:
        guide_run(cond, heads, 2, scale=1.0, steps=3, out_dir=tmp_path / "s", device="cpu", progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()
