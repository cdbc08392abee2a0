"""benchmarks/protocol.py on a tiny base: a fine-tune row, and the same model sampled again at more images with
``--reuse`` (no second fine-tune; the first images are the earlier run's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fairdiff.cli.main import main


@pytest.fixture(scope="module")
def protocol():
    from tests.conftest import load_benchmark

    return load_benchmark("protocol")


def test_reuse_samples_a_fine_tuned_model_again_at_more_images(protocol, tmp_path, monkeypatch):
    from tests.conftest import TINY

    base = tmp_path / "base"
    assert main(["train", *TINY, "train.steps=4", "train.checkpoint_every=0", "--out", str(base), "--quiet"]) == 0
    monkeypatch.setattr(protocol, "FINETUNE", ["train.steps=2", "train.batch_size=8", "train.warmup_steps=1",
                                               "train.checkpoint_every=0"])
    first = protocol.run_one(base, "reweight", [0.5, 0.5], 0, 8, tmp_path / "p")
    folder = tmp_path / "p" / "reweight-t0.5-0.5-s0"
    assert first["n"] == 8 and (folder / "model").is_dir() and first["timing"]["train_s"] > 0
    scored = np.load(folder / "samples" / "samples.npz")["images"]
    again = protocol.run_one(base, "reweight", [0.5, 0.5], 0, 12, tmp_path / "p12", reuse=tmp_path / "p")
    new = tmp_path / "p12" / "reweight-t0.5-0.5-s0"
    assert again["n"] == 12 and again["timing"]["reused"] == str(folder)
    assert again["timing"]["train_s"] == first["timing"]["train_s"]  # the fine-tune's cost, not run again
    assert not (new / "model").exists() and (new / "metrics.json").is_file()
    assert json.loads((folder / "metrics.json").read_text())["n"] == 8  # the earlier row's metrics stay
    imgs = np.load(folder / "samples" / "samples.npz")["images"]
    assert len(imgs) == 12  # the same seeds, extended: the first 8 images are the ones the 8-image row scored
    np.testing.assert_array_equal(imgs[:8], scored)
    row = protocol.run_one(base, "reweight", [0.5, 0.5], 0, 12, tmp_path / "p12", reuse=tmp_path / "p")
    assert row["n"] == 12  # resumed from its metrics.json


def test_reuse_refuses_before_any_work_when_a_fine_tuned_model_is_missing(protocol, tmp_path, monkeypatch, capsys):
    reuse, out = tmp_path / "earlier", tmp_path / "p"
    (reuse / "reweight-t0.5-0.5-s0" / "model").mkdir(parents=True)
    (out / "distill2-mix-t0.5-0.5-s1").mkdir(parents=True)
    (out / "distill2-mix-t0.5-0.5-s1" / "metrics.json").write_text("{}")  # finished here: needs nothing reused
    methods = ["base", "filter", "reweight", "distill2-mix"]
    assert protocol.missing_reused(methods, [[0.5, 0.5]], [0, 1], out, reuse) == [
        "distill2-mix-t0.5-0.5-s0", "reweight-t0.5-0.5-s1"]
    assert protocol.missing_reused(["base", "reweight"], [[0.5, 0.5]], [0], out, reuse) == []
    called = []
    monkeypatch.setattr(protocol, "run_one", lambda *a, **k: called.append(a))
    monkeypatch.setattr("sys.argv", ["protocol.py", str(tmp_path / "base"), "--setting", "s", "--targets", "0.5,0.5",
                                     "--seeds", "0,1", "--methods", ",".join(methods), "--out", str(out),
                                     "--reuse", str(reuse), "--results", str(tmp_path / "r.csv")])
    with pytest.raises(SystemExit) as e:
        protocol.main()
    assert e.value.code == 2 and not called
    err = capsys.readouterr().err
    assert "distill2-mix-t0.5-0.5-s0" in err and "reweight-t0.5-0.5-s1" in err and "--train-missing" in err


def test_step_suffix_draws_a_sampling_time_method_with_that_many_steps(protocol, tmp_path):
    from tests.conftest import TINY

    assert protocol.split_steps("guide-clf-filter-st50") == ("guide-clf-filter", 50)
    assert protocol.split_steps("base-eta1") == ("base-eta1", None)
    for bad in ("reweight-st50", "distill2-mix-st50", "base-st0"):
        with pytest.raises(SystemExit, match="sampling-time"):
            protocol.split_steps(bad)
    base = tmp_path / "base"
    assert main(["train", *TINY, "train.steps=2", "train.checkpoint_every=0", "--out", str(base), "--quiet"]) == 0
    m = protocol.run_one(base, "base-st3", [0.5, 0.5], 0, 8, tmp_path / "p")
    folder = tmp_path / "p" / "base-st3-t0.5-0.5-s0"
    assert m["n"] == 8 and (folder / "metrics.json").is_file()
    assert json.loads((folder / "samples" / "meta.json").read_text())["steps"] == 3


def test_finetune_control_trains_the_plain_loss_on_the_training_data(protocol, tmp_path, monkeypatch):
    from fairdiff.runs import read_run_config
    from tests.conftest import TINY

    base = tmp_path / "base"
    assert main(["train", *TINY, "train.steps=2", "train.checkpoint_every=0", "--out", str(base), "--quiet"]) == 0
    monkeypatch.setattr(protocol, "FINETUNE", ["train.steps=2", "train.batch_size=8", "train.warmup_steps=1",
                                               "train.ema_decay=0.99", "train.checkpoint_every=0"])
    assert protocol._fine_tuned("finetune")
    with pytest.raises(SystemExit, match="sampling-time"):
        protocol.split_steps("finetune-st50")
    m = protocol.run_one(base, "finetune", [0.5, 0.5], 1, 8, tmp_path / "p")
    folder = tmp_path / "p" / "finetune-t0.5-0.5-s1"
    cfg = read_run_config(folder)
    assert m["n"] == 8 and (folder / "model").is_dir() and m["timing"]["train_s"] > 0
    assert cfg.method.name == "baseline" and cfg.train.seed == 1 and cfg.model.pretrained == str(base.resolve())
    assert (cfg.train.steps, cfg.train.lr, cfg.train.ema_decay) == (2, 2e-4, 0.99)
    # a recipe suffix changes the fine-tune's steps, learning rate and EMA decay, and only those
    protocol.run_one(base, "finetune-ft3-lr1e-4-ema0.9", [0.5, 0.5], 1, 8, tmp_path / "p")
    cfg = read_run_config(tmp_path / "p" / "finetune-ft3-lr1e-4-ema0.9-t0.5-0.5-s1")
    assert (cfg.train.steps, cfg.train.lr, cfg.train.ema_decay, cfg.train.batch_size) == (3, 1e-4, 0.9, 8)
    assert cfg.method.name == "baseline"


def test_recipe_suffix_is_parsed_and_refused_where_it_means_nothing(protocol):
    assert protocol.split_recipe("reweight-ft1200-lr1e-4") == ("reweight", {"steps": 1200, "lr": 1e-4})
    assert protocol.split_recipe("distill2-mix-lf-lr5e-5") == ("distill2-mix-lf", {"lr": 5e-5})
    assert protocol.split_recipe("ddm-ema0.995") == ("ddm", {"ema": 0.995})
    assert protocol.split_recipe("distill-n8000") == ("distill-n8000", {})
    for bad, why in (("filter-lr1e-4", "fine-tuned"), ("base-ft100", "fine-tuned"), ("align-ft10", "fine-tuned"),
                     ("reweight-ft0", "fine-tuned"), ("distill2-mix-ema0.999", "EMA 0.99")):
        with pytest.raises(SystemExit, match=why):
            protocol.split_recipe(bad)


@pytest.mark.parametrize("method, expected", [
    ("guide-filter", {"mode": "batch", "then_filter": True}),
    ("guide-x0-filter-st30", {"mode": "batch", "then_filter": True, "reader": "x0", "steps": 30}),
    ("guide-x0-sample", {"mode": "sample", "then_filter": False, "reader": "x0"}),
    ("guide-clf-sample", {"mode": "sample", "then_filter": False, "reader": "classifier"}),
])
def test_guide_forms_reach_the_controller_with_their_options(protocol, tmp_path, monkeypatch, method, expected):
    seen = {}

    def fake(base, folder, target, **kw):
        seen.update(kw)
        raise KeyboardInterrupt  # stop before any sampling

    monkeypatch.setattr("fairdiff.debias.run.guide_run_to_target", fake)
    monkeypatch.setattr("fairdiff.runs.read_run_config", lambda base: None)
    with pytest.raises(KeyboardInterrupt):
        protocol.run_one(tmp_path / "base", method, [0.5, 0.5], 1, 8, tmp_path / "p")
    assert {k: seen.get(k, "heads" if k == "reader" else None) for k in expected} == expected
    assert seen["seed"] == protocol.SEED_STRIDE and seen["n"] == 8
    if "reader" not in expected:
        assert "reader" not in seen  # heads: the controller's default reader


@pytest.mark.parametrize("fitted, expected", [(True, 12.5), (False, None)])
def test_heads_guidance_counts_the_heads_fit_as_its_training_cost(protocol, tmp_path, monkeypatch, fitted, expected):
    def fake(base, folder, target, **kw):
        Path(folder).mkdir(parents=True, exist_ok=True)
        return {"metrics": {"n": 8}, "reader": "heads", "heads": {"fitted": fitted}, "heads_seconds": 12.5}

    monkeypatch.setattr("fairdiff.debias.run.guide_run_to_target", fake)
    monkeypatch.setattr("fairdiff.runs.read_run_config", lambda base: None)
    m = protocol.run_one(tmp_path / "base", "guide", [0.5, 0.5], 1, 8, tmp_path / "p")
    assert m["timing"].get("train_s") == expected
    assert json.loads(next((tmp_path / "p").glob("guide-*/metrics.json")).read_text())["timing"].get("train_s") \
        == expected
