"""Fail fast on what cannot work (issue 28): absurd sizes are refused by the config's ranges or by the memory
estimate of one training batch before anything is loaded (exit 2, one line, in seconds, files byte-identical);
guidance heads carry the model they were fitted on and are refused on another run unless ``--force``; heads
written before the fingerprint still load (with a warning where used); debias probes its judge."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import pytest
import torch

from fairdiff.cli.main import main
from fairdiff.config import load_config

TINY = ["data.source=synthetic", "data.synthetic_size=60", "data.heldout_per_group=4", "data.resolution=16",
        "model.preset=tiny", "train.steps=2", "train.batch_size=4", "train.checkpoint_every=2", "sample.steps=3",
        "sample.batch_size=4", "eval.n_samples=4"]
DATA = Path(__file__).resolve().parents[1] / "data"


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# override -> text of the one error line
SIZES = {
    "train.batch_size=1000000000": "train.batch_size: must be at most",
    "data.resolution=100000": "data.resolution: must be at most",
    "train.seed=-1": "train.seed: must be at least 0",
    "data.seed=99999999999": "data.seed: must be at most",
    "sample.n=10000000000": "sample.n: must be at most",
    "eval.bootstrap=100000000": "eval.bootstrap: must be at most",
    "data.channels=7": "data.channels: must be at most",
    "train.steps=100000000000": "train.steps: must be at most",
    "model.num_train_timesteps=10000000": "model.num_train_timesteps: must be at most",
    "method.disc_batch_size=10000000": "method.disc_batch_size: must be at most",
    "method.indicator_widths=[1024,100000000]": "method.indicator_widths",
    # in range, but one batch is far beyond any machine: the memory estimate refuses it before any work
    "data.resolution=2048 train.batch_size=65536": "one training batch needs about",
    "data.resolution=1024 train.batch_size=4096 model.preset=base": "one training batch needs about",
}


@pytest.mark.parametrize("override", list(SIZES))
def test_absurd_sizes_fail_in_seconds_with_one_line(override, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    before = _snapshot(tmp_path)
    t0 = time.perf_counter()
    code = main(["train", *TINY, *override.split(), "--out", str(out), "-q"])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and SIZES[override] in lines[0], err
    assert seconds < 20, f"refused only after {seconds:.0f} s"
    assert _snapshot(tmp_path) == before


def test_memory_estimate_names_estimate_and_limit():
    from fairdiff.training.memory import BatchTooLargeError, check_training_memory, estimate_training_memory

    cfg = load_config(None, [*TINY, "train.batch_size=64"])
    est = estimate_training_memory(cfg)
    assert 0 < est.activations < 2**30 and est.parameters > 0  # tiny at 16 px: well under a GiB
    check_training_memory(cfg, limit=(64 * 2**30, "available CPU memory"))  # fits
    with pytest.raises(BatchTooLargeError, match=r"needs about .* but 0.0 GiB is available CPU memory"):
        check_training_memory(cfg, limit=(1000, "available CPU memory"))
    bigger = estimate_training_memory(load_config(None, [*TINY, "train.batch_size=128"]))
    assert bigger.activations == pytest.approx(2 * est.activations, rel=1e-6)  # linear in the batch
    wider = estimate_training_memory(load_config(None, [*TINY, "train.batch_size=64", "data.resolution=32"]))
    assert wider.activations == pytest.approx(4 * est.activations, rel=1e-6)  # quadratic in the side
    gc = estimate_training_memory(load_config(None, [*TINY, "train.batch_size=64",
                                                     "train.gradient_checkpointing=true"]))
    assert gc.activations < est.activations


def test_memory_estimate_is_below_what_autograd_keeps():
    """The estimate must not refuse what fits: it stays below the tensors autograd actually saves."""
    from fairdiff.models.unet import build_unet
    from fairdiff.training.memory import estimate_training_memory

    for preset, res in (("tiny", 32), ("small", 32)):
        cfg = load_config(None, [*TINY, f"model.preset={preset}", f"data.resolution={res}", "train.batch_size=2",
                                 "data.channels=3"])
        unet = build_unet(preset, res, 3)
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unet(torch.randn(2, 3, res, res), torch.tensor([1, 2])).sample.sum()
        assert estimate_training_memory(cfg).activations < saved[0]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fingerprint")
    for name, seed in (("a", 0), ("b", 1)):
        assert main(["train", *TINY, f"train.seed={seed}", "--out", str(root / name), "-q"]) == 0
    assert main(["train-heads", str(root / "a"), "--out", str(root / "heads-a"), "--steps", "3", "--n-per-step",
                 "16", "--device", "cpu", "-q"]) == 0
    return {"root": root, "a": root / "a", "b": root / "b", "heads": root / "heads-a"}


def test_heads_record_the_run_they_were_fitted_on(two_runs):
    from fairdiff.models.heads import load_heads, read_heads_record

    unet_file = two_runs["a"] / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    fitted = load_heads(two_runs["heads"]).config.fitted_on
    assert fitted["unet_sha256"] == hashlib.sha256(unet_file.read_bytes()).hexdigest()
    assert fitted["path"] == str(unet_file.parent.resolve())
    assert read_heads_record(two_runs["heads"])["fitted_on"] == fitted


def test_heads_of_another_run_are_refused_unless_forced(two_runs, capsys, caplog):
    root = two_runs["root"]
    common = ["--n", "2", "--steps", "3", "--batch-size", "2", "--no-png", "--device", "cpu", "-q", "--guidance",
              str(two_runs["heads"]), "--scale", "1"]
    before = _snapshot(root)
    assert main(["sample", str(two_runs["b"]), *common, "--out", str(root / "s-b")]) == 2
    err = capsys.readouterr().err
    assert "fitted on another model" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(root) == before
    with caplog.at_level(logging.WARNING):
        assert main(["sample", str(two_runs["b"]), *common, "--out", str(root / "s-b2"), "--force"]) == 0
    assert "used anyway" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["sample", str(two_runs["a"]), *common, "--out", str(root / "s-a")]) == 0
    assert "fitted on" not in caplog.text


def test_debias_guide_refuses_heads_of_another_run(two_runs, capsys):
    root = two_runs["root"]
    before = _snapshot(root)
    assert main(["debias", str(two_runs["b"]), "--target", "0.5,0.5", "--method", "guide", "--heads",
                 str(two_runs["heads"]), "--steps", "3", "--out", str(root / "d-b"), "-q", "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert "fitted on another model" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(root) == before and not (root / "d-b").exists()


def test_heads_without_fingerprint_load_and_warn(two_runs, caplog):
    from fairdiff.models.heads import check_heads_model, load_heads, model_fingerprint

    old = load_heads(DATA / "heads_v1.safetensors")  # written before the fingerprint: still loads
    assert old.config.get("fitted_on") is None and old.spec.fitted_on is None
    fp = model_fingerprint(two_runs["a"] / "model" / "unet")
    with caplog.at_level(logging.WARNING):
        check_heads_model(old, fp, "heads_v1", two_runs["a"])
    assert "do not record the model" in caplog.text
    check_heads_model(old, None, "heads_v1", "a model built in code")  # nothing to compare: no word, no error


def test_debias_probes_its_judge(two_runs, tmp_path, capsys):
    class NaNJudge(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 2), float("nan"))

    judge = tmp_path / "nan.pt"
    torch.jit.script(NaNJudge()).save(str(judge))
    before = _snapshot(two_runs["root"])
    code = main(["debias", str(two_runs["a"]), "--method", "filter", "--target", "0.5,0.5", "--judge", str(judge),
                 "--out", str(tmp_path / "d"), "--n", "4", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite" in err and "Traceback" not in err, err
    assert _snapshot(two_runs["root"]) == before
