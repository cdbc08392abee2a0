"""The bases shipped inside the package: intact files, recipes that match their configs, and first losses that a
re-run of the recipe reproduces (MNIST and faces-mini bases only where their data is fetched on this machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fairdiff.bench import bases
from fairdiff.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = bases.list_shipped()


MNIST = Path.home() / ".cache" / "fairdiff" / "mnist" / "mnist.pkl.gz"  # read only, never written by tests
FACES = Path.home() / ".cache" / "fairdiff" / "faces-mini"  # likewise (fairdiff data fetch faces-mini)


def test_the_demo_base_is_shipped():
    from fairdiff.bench.demo import demo_config_path

    key = bases.recipe_key(load_config(demo_config_path()))
    assert bases.find_shipped(key) is not None, "the demo would train its base for minutes: ship digits-01"


@pytest.mark.parametrize("meta", SHIPPED, ids=[m["name"] for m in SHIPPED])
def test_shipped_base_is_intact_and_matches_its_config(meta, tmp_path):
    src = Path(meta["dir"])
    folder = bases.install_shipped(src, tmp_path / "b")  # checks every file's SHA-256
    cfg = load_config(src / "config.yaml")
    assert bases.recipe_key(cfg) == meta["key"]
    repo_cfg = ROOT / "configs" / "bases" / f"{meta['name']}.yaml"
    if repo_cfg.is_file():  # the config a user runs makes the same recipe
        assert bases.recipe_key(load_config(repo_cfg)) == meta["key"]
    size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert size < 8 * 2**20, f"{meta['name']} is {size / 2**20:.1f} MB"
    m = meta.get("metrics") or {}
    assert m.get("valid_rate") is not None, "ship with its evaluation (fairdiff base ship, without --no-eval)"
    assert (folder / "model" / "unet" / "config.json").is_file()


@pytest.mark.parametrize("meta", SHIPPED, ids=[m["name"] for m in SHIPPED])
def test_recipe_reproduces_the_first_losses(meta, tmp_path):
    cfg = json.loads((Path(meta["dir"]) / bases.BASE_FILE).read_text())
    overrides, points = [], 2
    if cfg["recipe"]["data"]["source"] == "mnist":  # one logged point (50 steps at batch 64) keeps it short
        points = 1
        if not MNIST.is_file():
            pytest.skip("MNIST is not fetched on this machine (fairdiff data fetch mnist)")
        overrides = [f"data.path={MNIST}"]
    elif cfg["recipe"]["data"]["source"] == "faces-mini":  # one point too: 50 steps of 32x32 RGB
        points = 1
        if not (FACES / "faces.npz").is_file():
            pytest.skip("faces-mini is not fetched on this machine (fairdiff data fetch faces-mini)")
        overrides = [f"data.path={FACES}"]
    out = bases.verify_first_losses(Path(meta["dir"]), tmp_path / "replay", points=points, overrides=overrides)
    assert len(out) == points
