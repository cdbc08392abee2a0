"""Pretrained bases (fairdiff.bench.bases): recipe keys, cache, ship / install round trip, first-loss replay."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from fairdiff.bench import bases
from fairdiff.cli.main import main
from fairdiff.config import load_config
from fairdiff.errors import FairdiffError
from tests.conftest import TINY

RECIPE = [*TINY, "train.steps=4", "train.checkpoint_every=2", "train.checkpoint_total_limit=5", "name=tinybase"]


def test_recipe_key_tracks_what_changes_the_weights():
    k = bases.recipe_key(load_config(None, RECIPE))
    assert k == bases.recipe_key(load_config(None, [*RECIPE, "train.log_every=7", "train.checkpoint_every=3",
                                                    "name=other", "eval.n_samples=999", "sample.steps=9"]))
    for change in ("train.steps=5", "train.seed=1", "data.shares=[0.5,0.5]", "method.name=reweight", "train.lr=1e-3",
                   "method.clustering=spectral"):
        assert bases.recipe_key(load_config(None, [*RECIPE, change])) != k, change


def test_an_option_added_later_keeps_the_keys_of_earlier_bases_at_its_default():
    """method.clustering came after bases were shipped: at its default it is not part of the recipe (so every
    earlier base keeps its key), any other value is."""
    cfg = load_config(None, RECIPE)
    assert cfg.method.clustering == "kmeans" and "clustering" not in bases.recipe(cfg)["method"]
    assert "num_clusters" in bases.recipe(cfg)["method"]  # older options stay in
    spectral = load_config(None, [*RECIPE, "method.clustering=spectral"])
    assert bases.recipe(spectral)["method"]["clustering"] == "spectral"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("bases") / "made"
    folder = bases.make_base(None, RECIPE, out=out, evaluate=False, use_shipped=False, quiet=True)
    return folder


def test_make_base_records_recipe_and_is_cached(made, monkeypatch):
    rec = json.loads((made / bases.BASE_FILE).read_text())
    assert rec["key"] == bases.recipe_key(load_config(None, RECIPE)) and rec["steps"] == 4
    assert [s for s, _ in rec["first_losses"]] == [2, 4] and all(np.isfinite(v) for _, v in rec["first_losses"])
    assert rec["manifest_sha256"] == bases.sha256_file(made / "manifest.json")

    def no_training(*a, **k):
        raise AssertionError("a cached base was trained again")

    monkeypatch.setattr("fairdiff.training.train", no_training)
    assert bases.make_base(None, RECIPE, out=made, evaluate=False, quiet=True) == made


def test_checkpoint_model_is_the_ema_of_that_step(made, tmp_path):
    # the last checkpoint's EMA weights are the final model's weights
    out = bases.checkpoint_model(made, 4, tmp_path / "step4")
    a = load_file(str(out / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(made / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    c = load_file(str(bases.checkpoint_model(made, 2, tmp_path / "step2") / "model" / "unet" /
                      "diffusion_pytorch_model.safetensors"))
    assert any(not (c[k] == b[k]).all() for k in c)
    with pytest.raises(FairdiffError):
        bases.checkpoint_model(made, 3, tmp_path / "step3")


def test_ship_install_round_trip_and_damage(made, tmp_path, monkeypatch):
    shipped = bases.ship_base(made, "tinybase", tmp_path / "shipped" / "tinybase")
    meta = json.loads((shipped / bases.BASE_FILE).read_text())
    w = load_file(str(shipped / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(str(v.dtype) == "torch.float16" for v in w.values())
    assert set(meta["files"]) >= {"model/unet/diffusion_pytorch_model.safetensors", "config.yaml", "manifest.json"}
    # make_base finds the shipped base by its recipe key and installs it (fp32 weights within fp16 rounding)
    monkeypatch.setattr(bases, "shipped_root", lambda: tmp_path / "shipped")
    assert [b["name"] for b in bases.list_shipped()] == ["tinybase"]
    got = bases.make_base(None, RECIPE, out=tmp_path / "installed", evaluate=False, quiet=True)
    a = load_file(str(got / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(made / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(str(v.dtype) == "torch.float32" for v in a.values())
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-2
    assert all(np.allclose(a[k].numpy(), b[k].numpy(), rtol=1e-3, atol=1e-4) for k in a)
    assert json.loads((got / bases.BASE_FILE).read_text())["installed_from"] == str(shipped)
    # the installed base is a run: it samples
    assert main(["sample", str(got), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s"), "-q"]) == 0
    # a damaged shipped file is refused with one line, and nothing is installed
    p = shipped / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    p.write_bytes(p.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(FairdiffError, match="damaged"):
        bases.install_shipped(shipped, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_first_losses_replay(made, tmp_path):
    shipped = bases.ship_base(made, "tinybase", tmp_path / "tinybase")
    out = bases.verify_first_losses(shipped, tmp_path / "replay", points=2)
    assert [s for s, _, _ in out] == [2, 4]
    meta = json.loads((shipped / bases.BASE_FILE).read_text())
    meta["first_losses"][0][1] *= 1.5  # a recorded loss the recipe does not give
    (shipped / bases.BASE_FILE).write_text(json.dumps(meta))
    with pytest.raises(FairdiffError, match="differ"):
        bases.verify_first_losses(shipped, tmp_path / "replay2", points=2)


def test_truncated_run_is_the_shorter_recipe(made, tmp_path):
    """The 2-step truncation of the 4-step run equals a 2-step training of the same recipe (constant LR)."""
    short = bases.truncate_run(made, 2, tmp_path / "t2")
    cfg = load_config(short / "config.yaml")
    assert cfg.train.steps == 2
    trained = bases.make_base(None, [*RECIPE, "train.steps=2"], out=tmp_path / "s2", evaluate=False,
                              use_shipped=False, quiet=True)
    a = load_file(str(short / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(trained / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(np.allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6) for k in a)
    rec = json.loads((short / bases.BASE_FILE).read_text())
    assert rec["key"] == bases.recipe_key(cfg) and [s for s, _ in rec["first_losses"]] == [2]


def test_make_base_never_writes_into_a_users_folder(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    with pytest.raises(FairdiffError):
        bases.make_base(None, RECIPE, out=user, evaluate=False, use_shipped=False, quiet=True)
    assert [p.name for p in user.iterdir()] == ["notes.txt"] and (user / "notes.txt").read_text() == "keep"
    assert main(["base", "make", "-c", "nosuch.yaml", "--out", str(user)]) == 2
