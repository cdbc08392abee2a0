"""Guidance heads on disk: a diffusers model folder written atomically, and heads files of the earlier
single-file format (``tests/data/heads_v1.safetensors``, written by fairdiff before the heads became a diffusers
model) still load with the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fairdiff.errors import FairdiffError
from fairdiff.models.heads import GuidanceHeads, HeadsConfig, load_heads, read_heads_record, save_heads

DATA = Path(__file__).resolve().parents[1] / "data"
V1_SPEC = HeadsConfig(attributes={"group": 2, "age": 3}, num_steps=2, scheduler="ddim", timesteps=[500, 0],
                      pool="flatten", h_shape=[2, 1, 1], mode="invert")


def _filled(spec: HeadsConfig) -> GuidanceHeads:
    """Heads whose parameters are N(0, 1) draws of a seed-0 generator, in parameter order (as the fixture was)."""
    heads = GuidanceHeads.from_spec(spec)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return heads


def test_earlier_single_file_heads_still_load():
    back = load_heads(DATA / "heads_v1.safetensors")
    want = _filled(V1_SPEC)
    assert back.spec == V1_SPEC and not back.training
    assert back.state_dict().keys() == want.state_dict().keys()
    assert all(torch.equal(back.state_dict()[k], want.state_dict()[k]) for k in want.state_dict())
    assert read_heads_record(DATA / "heads_v1.safetensors")["seconds"] == 1.5
    h = torch.randn(4, 2, 1, 1)
    assert torch.equal(back.logits(h, 1)["age"], want.logits(h, 1)["age"])


def test_heads_folder_round_trip_and_replacement(tmp_path):
    heads = _filled(V1_SPEC)
    out = save_heads(heads, tmp_path / "heads", {"run": "r", "seconds": 2.0})
    assert {p.name for p in out.iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors", "record.json",
                                               ".fairdiff.json"}
    assert json.loads((out / "config.json").read_text())["_class_name"] == "GuidanceHeads"
    assert GuidanceHeads.from_pretrained(out).spec == V1_SPEC  # a plain diffusers folder
    back = load_heads(out)
    assert back.spec == V1_SPEC
    assert all(torch.equal(back.state_dict()[k], v) for k, v in heads.state_dict().items())
    record = read_heads_record(out)
    assert record["seconds"] == 2.0 and record["num_steps"] == 2 and record["attributes"] == {"group": 2, "age": 3}
    # fairdiff's own heads folder is replaced whole; nothing is left beside it
    save_heads(GuidanceHeads.from_spec(V1_SPEC), out, {"seconds": 3.0})
    assert read_heads_record(out)["seconds"] == 3.0 and "run" not in read_heads_record(out)
    assert torch.count_nonzero(load_heads(out).banks["age"].weight) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads"]


def test_foreign_folders_and_broken_heads_are_one_line(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"not fairdiff's")
    with pytest.raises(FairdiffError, match="not written by fairdiff"):
        save_heads(GuidanceHeads.from_spec(V1_SPEC), mine)
    assert [p.name for p in mine.iterdir()] == ["photo.jpg"]
    out = save_heads(_filled(V1_SPEC), tmp_path / "heads")
    w = out / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:40])
    for bad, needle in ((out, "cannot load the guidance heads"), (tmp_path / "nope", "no guidance heads"),
                        (mine, "no guidance heads")):
        with pytest.raises(FairdiffError, match=needle) as e:
            load_heads(bad)
        assert "\n" not in str(e.value)
