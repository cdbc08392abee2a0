"""``fairdiff train-heads`` and ``fairdiff sample --guidance`` end to end on a few-step synthetic run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fairdiff.cli.main import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gcli") / "run"
    rc = main(["train", "data.source=synthetic", "data.synthetic_size=200", "data.resolution=16",
               "model.preset=tiny", "train.steps=2", "train.batch_size=8", "train.checkpoint_every=1000",
               "--out", str(out), "-q"])
    assert rc == 0
    return out


def test_train_heads_then_guided_sample(run_dir, tmp_path, capsys):
    heads = tmp_path / "heads"
    rc = main(["train-heads", str(run_dir), "--out", str(heads), "--steps", "3", "--n-per-step", "32",
               "--batch-size", "32", "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "step   0" in out and "held-out" in out
    info = json.loads((heads / "record.json").read_text())
    assert info["num_steps"] == 3 and len(info["heldout_accuracy"]["group"]) == 3

    common = [str(run_dir), "--n", "4", "--steps", "3", "--no-png", "--device", "cpu", "-q"]
    assert main(["sample", *common, "--out", str(tmp_path / "plain")]) == 0
    assert main(["sample", *common, "--out", str(tmp_path / "zero"), "--guidance", str(heads), "--target",
                 "0.5,0.5", "--scale", "0"]) == 0
    assert main(["sample", *common, "--out", str(tmp_path / "g"), "--guidance", str(heads), "--target",
                 "0.75,0.25", "--scale", "100"]) == 0
    plain, zero, g = (np.load(tmp_path / d / "samples.npz")["images"] for d in ("plain", "zero", "g"))
    assert np.array_equal(plain, zero) and not np.array_equal(plain, g)
    meta = json.loads((tmp_path / "g" / "meta.json").read_text())
    assert meta["guidance"]["target"] == [0.75, 0.25] and meta["guidance"]["scale"] == 100


def _one_line_error(capsys, needle: str) -> None:
    """The mistake is reported as exactly one ``error: ...`` line on stderr holding ``needle``, no traceback."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert needle in err and "Traceback" not in err, err


@pytest.mark.parametrize("extra, needle", [
    (["--target", "0.5,0.6", "--scale", "1"], "error: target [0.5, 0.6] sums to 1.1000; shares must sum to 1"),
    (["--target", "0.5,0.3,0.2", "--scale", "1"],
     "error: target [0.5, 0.3, 0.2] has 3 values but there are 2 classes the heads predict"),
    (["--target", "0.5,0.5"], "error: --guidance needs --scale S"),
    (["--steps", "4", "--target", "0.5,0.5", "--scale", "1"], "were trained for --steps 3 --scheduler ddim; sample"),
])
def test_guided_sample_user_mistakes_exit_2(run_dir, tmp_path, capsys, extra, needle):
    heads = tmp_path / "h"
    assert main(["train-heads", str(run_dir), "--out", str(heads), "--steps", "3", "--n-per-step", "16", "-q",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    args = ["sample", str(run_dir), "--n", "2", "--no-png", "--device", "cpu", "-q", "--guidance", str(heads),
            "--out", str(tmp_path / "s")]
    if "--steps" not in extra:
        args += ["--steps", "3"]
    assert main(args + extra) == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "s" / "samples.npz").exists()  # refused before any sampling


def test_missing_heads_and_target_without_guidance(run_dir, tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    assert main(["sample", str(run_dir), "--n", "1", "--steps", "2", "--guidance", str(missing),
                 "--scale", "1", "-q", "--device", "cpu"]) == 2
    _one_line_error(capsys, f"error: no guidance heads at {missing} (fit them with 'fairdiff heads fit')")
    assert main(["sample", str(run_dir), "--n", "1", "--steps", "2", "--scale", "1", "-q"]) == 2
    _one_line_error(capsys, "error: --target and --scale need --guidance HEADS")
