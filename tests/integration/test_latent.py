"""Latent diffusion end to end through the CLI: train-vae -> latent DDM -> samples decoded to image shape."""

from __future__ import annotations

import json

import numpy as np

from fairdiff.cli.main import main
from tests.conftest import TINY


def test_latent_ddm_end_to_end(tmp_path, capsys):
    vae_dir, run_dir, out = tmp_path / "vae", tmp_path / "run", tmp_path / "samples"
    assert main(["train-vae", *TINY, "train.steps=3", "train.lr=1e-3", "--out", str(vae_dir), "-q"]) == 0
    metrics = json.loads((vae_dir / "metrics.json").read_text())
    assert metrics["latent_shape"] == [4, 8, 8] and metrics["scaling_factor"] > 0
    assert np.isfinite(metrics["heldout_recon_mse"]) and np.isfinite(metrics["heldout_psnr_db"])
    assert (vae_dir / "vae" / "diffusion_pytorch_model.safetensors").is_file()

    assert main(["train", *TINY, f"model.vae={vae_dir}", "method.name=ddm", "train.steps=2",
                 "--out", str(run_dir), "-q"]) == 0
    model = run_dir / "model"
    assert (model / "vae" / "config.json").is_file()
    unet_cfg = json.loads((model / "unet" / "config.json").read_text())
    assert (unet_cfg["in_channels"], unet_cfg["sample_size"]) == (4, 8)  # the U-Net lives in latent space
    ind = json.loads((model / "indicator" / "config.json").read_text())
    assert ind["in_features"] == 4 * 8 * 8  # the indicator reads the latent eps_hat
    sched = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    assert sched["clip_sample"] is False

    assert main(["sample", str(run_dir), "--n", "3", "--steps", "2", "--out", str(out), "-q"]) == 0
    z = np.load(out / "samples.npz")
    assert z["images"].shape == (3, 1, 16, 16) and z["images"].dtype == np.uint8

    assert main(["export", str(run_dir), str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "vae" / "config.json").is_file()

    capsys.readouterr()
    assert main(["train", *TINY, f"model.vae={tmp_path / 'nothing'}", "train.steps=1",
                 "--out", str(tmp_path / "bad"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no trained VAE" in err[0]
