"""A text-to-image bench: cells whose config names a Stable Diffusion folder (``text.sd``) train LoRA in the one
trainer and are evaluated like any other cell, from a bench config alone (no CLI flags)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")
pytest.importorskip("transformers")

from fairdiff.cli.main import main  # noqa: E402
from fairdiff.config import load_config  # noqa: E402


def test_a_bench_config_runs_text_to_image_cells(tmp_path):
    sd = tmp_path / "sd"
    assert main(["data", "tiny-sd", str(sd), "--resolution", "16"]) == 0
    bench = tmp_path / "bench.yaml"
    bench.write_text(f"""name: t2i
seeds: [0]
overrides:
  data.source: synthetic
  data.resolution: 16
  data.channels: 3
  data.synthetic_size: 240
  data.heldout_per_group: 20
  train.batch_size: 2
  train.steps: 2
  train.log_every: 1
  train.warmup_steps: 1
  sample.steps: 3
  sample.batch_size: 8
  eval.n_samples: 8
  eval.bootstrap: 50
  text.sd: {sd}
  text.prompt: a photo of a face
settings:
  a: {{data.shares: [0.75, 0.25]}}
methods:
  baseline: {{}}
  reweight: {{}}
""")
    out = tmp_path / "out"
    assert main(["bench", str(bench), "--out", str(out), "-q"]) == 0
    loras = {}
    for m in ("baseline", "reweight"):
        cell = out / "cells" / "a" / f"{m}-s0"
        cfg = load_config(cell / "config.yaml")
        assert cfg.text.sd == str(sd) and cfg.model.pretrained == str(sd) and cfg.method.name == m
        meta = json.loads((cell / "sd.json").read_text())
        assert meta["prompts"] == ["a photo of a face"]
        loras[m] = load_file(str(cell / "model" / "pytorch_lora_weights.safetensors"))
        metrics = json.loads((cell / "metrics.json").read_text())
        assert metrics["n"] == 8
        with open(cell / "samples" / "samples.npz", "rb") as f:
            import numpy as np

            assert np.load(f)["images"].shape == (8, 3, 16, 16)
    # the two methods trained different LoRAs from the same seed (reweight is not the baseline in disguise)
    assert loras["baseline"].keys() == loras["reweight"].keys()
    assert any(not torch.equal(loras["baseline"][k], loras["reweight"][k]) for k in loras["baseline"])
    assert "a/reweight-s0" in (out / "results.md").read_text()
