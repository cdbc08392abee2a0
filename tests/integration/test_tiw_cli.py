"""tiw / iw end to end through the CLI on synthetic data: the discriminator is fitted, saved and calibrated."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fairdiff.cli.main import main

REF = ["data.synthetic_size=300", "data.size=100", "data.reference=0.2", "method.disc_steps=6",
       "method.disc_batch_size=8", "method.disc_width=8", "train.steps=3"]


@pytest.fixture(scope="module")
def tiw_run(tmp_path_factory):
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("runs") / "tiw"
    assert main(["train", *TINY, "method.name=tiw", *REF, "--out", str(out), "--quiet"]) == 0
    return out


def test_tiw_trains_saves_discriminator_and_calibration(tiw_run):
    from fairdiff.models.discriminator import load_discriminator

    folder = tiw_run / "model" / "discriminator"
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["kind"] == "conv" and cfg["in_shape"] == [1, 16, 16] and cfg["method"] == "tiw"
    disc = load_discriminator(folder)
    logit = disc(torch.zeros(2, 1, 16, 16), torch.tensor([0, 500]))
    assert logit.shape == (2,) and torch.isfinite(logit).all()

    facts = json.loads((tiw_run / "method.json").read_text())
    assert facts["method"] == "tiw" and facts["reference_images"] == 20
    d = facts["discriminator"]
    assert d["steps"] == 6 and d["heldout_reference"] == 4 and d["fit_reference"] == 16
    assert d["heldout_biased"] == 20 and d["fit_biased"] == 80
    buckets = facts["calibration"]["buckets"]
    assert [b["t"] for b in buckets] == [[0, 249], [250, 499], [500, 749], [750, 999]]
    for b in buckets:
        assert 0.0 <= b["accuracy"] <= 1.0 and b["bce"] > 0 and 0.0 <= b["ece"] <= 1.0
        n = 2 * facts["calibration"]["n_per_class"]
        assert sum(r["count"] for r in b["reliability"]) == n
        # accuracy and ECE follow from the reliability table (its entries are rounded to 4 decimals)
        for r in b["reliability"]:
            assert r["bin"][0] - 1e-4 <= r["mean_d"] <= r["bin"][1] + 1e-4, r
        ece = sum(r["count"] / n * abs(r["mean_d"] - r["frac_reference"]) for r in b["reliability"])
        assert b["ece"] == pytest.approx(ece, abs=2e-4)
        right = sum(r["count"] * (r["frac_reference"] if r["bin"][0] >= 0.5 else 1 - r["frac_reference"])
                    for r in b["reliability"])
        assert b["accuracy"] == pytest.approx(right / n, abs=2e-4)
    report = (tiw_run / "report.md").read_text()
    assert "Discriminator d(x_t, t)" in report and "| 750-999 |" in report

    manifest = json.loads((tiw_run / "manifest.json").read_text())
    assert manifest["reference"]["counts"] == [10, 10] and manifest["train_counts"] == [80, 20]
    rows = [json.loads(line) for line in (tiw_run / "stats.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)
    assert "w_max" in rows[-1] and "log_w_mean" in rows[-1]


def test_discriminator_is_frozen_during_training(tiw_run, tmp_path):
    """The saved discriminator equals a fresh fit with the same seed: the denoiser's steps never moved it."""
    from tests.conftest import TINY

    from fairdiff.config import load_config
    from fairdiff.data import prepare_data
    from fairdiff.methods import DataInfo, build_objective
    from fairdiff.models import build_noise_scheduler
    from fairdiff.models.discriminator import load_discriminator
    from fairdiff.training.discriminator import fit_for_objective
    from fairdiff.utils.seed import derive_seed, seed_everything

    cfg = load_config(None, [*TINY, "method.name=tiw", *REF])
    data = prepare_data(cfg.data)
    seed_everything(derive_seed(cfg.train.seed, "init"))
    from fairdiff.models import build_unet

    build_unet(cfg.model.preset, 16, 1, None)  # the trainer builds the U-Net first (same random stream)
    obj = build_objective(cfg.method)
    obj.setup(DataInfo(2, [80, 20], (1, 16, 16)))
    fit_for_objective(obj, cfg, data, data.train_images, build_noise_scheduler(1000, "linear"))
    saved = load_discriminator(tiw_run / "model" / "discriminator").state_dict()
    fresh = obj.discriminator.state_dict()
    assert all(torch.allclose(saved[k], fresh[k]) for k in saved)


def test_iw_and_reference_only_train(tmp_path):
    from tests.conftest import TINY

    out = tmp_path / "iw"
    assert main(["train", *TINY, "method.name=iw", *REF, "--out", str(out), "--quiet"]) == 0
    assert (out / "model" / "discriminator" / "model.safetensors").is_file()
    assert json.loads((out / "method.json").read_text())["method"] == "iw"
    ref = tmp_path / "refonly"
    assert main(["train", *TINY, *REF, "data.train_on=reference", "--out", str(ref), "--quiet"]) == 0
    m = json.loads((ref / "manifest.json").read_text())
    assert m["train_counts"] == [10, 10] and m["reference"]["train_on"] == "reference"


def test_tiw_user_mistakes_are_one_line(tmp_path, capsys):
    from tests.conftest import TINY

    rc = main(["train", *TINY, "method.name=tiw", "train.steps=1", "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "needs a reference set" in err[0]
    rc = main(["train", *TINY, "method.name=tiw", *REF, "method.weight_clip=0.5", "--out", str(tmp_path / "y"),
              "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "weight_clip" in err[0]
