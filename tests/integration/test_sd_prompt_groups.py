"""A prompt per subset (``sd-finetune --prompt-groups``) and ``sd-export`` (a run with its LoRA merged in).

Tiny random SD stack built here, synthetic 4-class data: classes 0, 1 under one prompt, 2, 3 under another.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from fairdiff.cli.main import main
from tests.integration.test_sd_lora import DATA, _one_line_error, build_sd_folder

FOUR = [*DATA, "data.synthetic_classes=4", "data.groups=[0,1,2,3]", "data.shares=[0.4,0.1,0.25,0.25]",
        "data.heldout_per_group=5"]


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdpg")
    build_sd_folder(root / "base")
    spec = root / "spec.yaml"
    spec.write_text("a face: [0, 1]\nan apple: [2, 3]\n")
    run = root / "run"
    assert main(["sd-finetune", "--sd", str(root / "base"), "--out", str(run), "--prompt-groups", str(spec), *FOUR,
                 "method.name=baseline", "train.steps=2", "model.lora_targets=[to_q,to_k,to_v,proj_in,conv1]",
                 "model.lora_rank=16", "-q"]) == 0
    return root, spec, run


def test_each_image_gets_its_subsets_prompt(grouped_run):
    from fairdiff.config import load_config
    from fairdiff.data import prepare_data
    from fairdiff.training.sd_lora import SDLoraAdapter

    root, spec, run = grouped_run
    meta = json.loads((run / "sd.json").read_text())
    assert meta["prompts"] == ["a face", "an apple"]
    assert meta["prompt_groups"] == {"a face": [0, 1], "an apple": [2, 3]}
    cfg = load_config(None, FOUR)
    adapter = SDLoraAdapter(root / "base", prompt_groups=str(spec))
    adapter.open(cfg)
    data = prepare_data(cfg.data)
    adapter.training_tensor(cfg, data, torch.device("cpu"))
    expected = (data.train_groups >= 2).long()  # group indices 2, 3 -> the second prompt
    assert torch.equal(adapter.prompt_of, expected)
    counts = np.bincount(data.train_groups.numpy(), minlength=4)
    assert counts[0] == 4 * counts[1] and counts[2] == counts[3]  # the 4:1 and 1:1 subsets


def test_bad_prompt_groups_are_one_line(grouped_run, tmp_path, capsys):
    root, spec, _ = grouped_run
    bad = tmp_path / "bad.yaml"
    bad.write_text("a face: [0, 1]\n")
    common = ["sd-finetune", "--sd", str(root / "base"), "--out", str(tmp_path / "r"), *FOUR, "train.steps=1", "-q"]
    assert "under no prompt" in _one_line_error(capsys, [*common, "--prompt-groups", str(bad)])
    prompts = tmp_path / "p.txt"
    prompts.write_text("a face\n")
    assert "not both" in _one_line_error(capsys, [*common, "--prompt-groups", str(spec), "--prompts-file",
                                                  str(prompts)])
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_sd_export_merges_the_lora(grouped_run, tmp_path, capsys):
    from fairdiff.models.sd import load_sd
    from fairdiff.sampling.sd import generate_sd, load_sd_folder, load_sd_pipeline

    _, _, run = grouped_run
    out = tmp_path / "merged"
    assert main(["sd-export", str(run), str(out)]) == 0
    sd = load_sd(out)  # a plain SD folder: no LoRA layers left
    assert not any("lora_" in n for n, _ in sd.unet.named_parameters())
    tuned, _ = load_sd_pipeline(run, lora=True, device="cpu")
    # a LoRA on attention and convolutions loads in full (one key naming for both kinds of layer)
    loaded = {n.split(".lora_")[0] for n, _ in tuned.unet.named_parameters() if ".lora_A." in n}
    assert any(n.endswith("attn2.to_v") for n in loaded) and any(n.endswith("conv1") for n in loaded)
    leaves = ("to_q", "to_k", "to_v", "proj_in", "conv1")
    targets = [n for n, _ in sd.unet.named_modules() if n.rsplit(".", 1)[-1] in leaves]
    assert sorted(loaded) == sorted(targets)
    base, _ = load_sd_pipeline(run, lora=False, device="cpu")
    merged = load_sd_folder(out, device="cpu")
    kw = dict(size=16, steps=3, guidance_scale=1.0)
    a, b, c = (generate_sd(p, "an apple", [0, 1], **kw).astype(int) for p in (tuned, merged, base))
    assert np.abs(a - b).max() <= 2  # the same model (up to rounding of the fused weights)
    assert np.abs(a - c).max() > 2  # and not the base
    assert "already holds" in _one_line_error(capsys, ["sd-export", str(run), str(out)])
    line = _one_line_error(capsys, ["sd-export", str(tmp_path), str(tmp_path / "o")])
    assert "not a finished Stable Diffusion LoRA run" in line
