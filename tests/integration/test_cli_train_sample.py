"""End to end through the CLI on synthetic data: train -> sample -> export, and the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fairdiff.cli.main import main


def run(args: list[str]) -> int:
    return main(args)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("runs") / "syn"
    rc = run(["train", *TINY, "train.steps=4", "train.checkpoint_every=2", "train.checkpoint_total_limit=1",
              "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_train_writes_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "manifest.json", "stats.jsonl", "model", "report.md", "train_grid.png"} <= names
    # total limit 1 keeps only the newest checkpoint
    assert sorted(n for n in names if n.startswith("checkpoint-")) == ["checkpoint-4"]
    rows = [json.loads(line) for line in (trained_run / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and all(np.isfinite(r["loss"]) for r in rows)
    manifest = json.loads((trained_run / "manifest.json").read_text())
    assert manifest["train_counts"][0] == 4 * manifest["train_counts"][1]


def test_sample_and_export(trained_run, tmp_path):
    from diffusers import DDPMPipeline

    out = tmp_path / "s"
    assert run(["sample", str(trained_run), "--n", "5", "--steps", "3", "--out", str(out), "--quiet"]) == 0
    pngs = sorted(p.name for p in out.glob("seed*.png"))
    assert pngs == [f"seed{i:06d}.png" for i in range(5)]
    z = np.load(out / "samples.npz")
    assert z["images"].shape == (5, 1, 16, 16) and z["images"].dtype == np.uint8
    assert (out / "grid.png").exists()
    # per-image seeds: image 3 is the same when drawn alone with seed 3
    out2 = tmp_path / "s2"
    assert run(["sample", str(trained_run), "--n", "1", "--seed", "3", "--steps", "3", "--out", str(out2), "-q"]) == 0
    np.testing.assert_array_equal(np.load(out2 / "samples.npz")["images"][0], z["images"][3])

    exp = tmp_path / "exported"
    assert run(["export", str(trained_run), str(exp)]) == 0
    pipe = DDPMPipeline.from_pretrained(str(exp))
    img = pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert img.images.shape == (1, 16, 16, 1)


def test_dry_run_prints_resolved_config(capsys):
    assert run(["train", "--dry-run", "train.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "train.nosuch=1", "--dry-run"], "train.nosuch"),
        (["train", "data.shares=[0.9,0.2]", "--dry-run"], "sum to 1"),
        (["train", "model.preset=giant", "--dry-run"], "model.preset"),
        (["train", "data.source=folder", "train.steps=1"], "data.path"),
        (["train", "data.groups=[0,42]", "train.steps=1"], "zero images"),
        (["train", "--config", "/no/such.yaml"], "not found"),
        (["sample", "/no/such/run"], "no trained model"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args, needle, capsys, tmp_path):
    if "--dry-run" not in args and args[0] == "train":
        args = [*args, "--out", str(tmp_path / "r")]
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_bad_data_folder_and_corrupt_image(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["train", "data.source=folder", f"data.path={empty}", "--out", str(tmp_path / "r1")]) == 2
    assert "labels" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not an image")
    (bad / "labels.csv").write_text("file,label\na.png,0\n")
    assert run(["train", "data.source=folder", f"data.path={bad}", "--out", str(tmp_path / "r2")]) == 2
    assert "cannot read image" in capsys.readouterr().err


def test_refuses_to_mix_runs(trained_run, capsys):
    from tests.conftest import TINY

    assert run(["train", *TINY, "train.steps=4", "train.lr=1e-3", "--out", str(trained_run), "-q"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert run(["train", *TINY, "train.steps=4", "train.lr=1e-3", "--out", str(trained_run), "--resume", "latest",
                "-q"]) == 2
    assert "differs" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["dpmpp", "unipc"])
def test_sample_with_multistep_schedulers(trained_run, tmp_path, kind):
    out = tmp_path / kind
    assert run(["sample", str(trained_run), "--n", "3", "--steps", "4", "--scheduler", kind, "--out", str(out),
                "-q"]) == 0
    z = np.load(out / "samples.npz")
    assert z["images"].shape == (3, 1, 16, 16)
    assert json.loads((out / "meta.json").read_text())["scheduler"] == kind
