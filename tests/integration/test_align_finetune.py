"""Alignment fine-tuning end to end on a toy model: LoRA fine-tune moves the generated share to the target."""

from __future__ import annotations

import json

import torch

from fairdiff.config import load_config
from fairdiff.data import prepare_data
from fairdiff.methods.align import train_alignment_classifier
from fairdiff.models import build_sampling_scheduler
from fairdiff.sampling import sample
from fairdiff.training import train
from fairdiff.runs import load_run_model


def _share_of_group1(run, clf) -> float:
    unet, sched = load_run_model(run)
    x = sample(unet, build_sampling_scheduler("ddim", sched), range(1000, 1096), batch_size=96, num_steps=8,
               progress=False)
    with torch.no_grad():
        return clf(x).argmax(1).float().mean().item()


def test_align_lora_moves_share_toward_target(tmp_path, tiny_overrides):
    common = tiny_overrides + ["train.batch_size=16", "train.ema=false", "data.shares=[0.8,0.2]"]
    base_cfg = load_config(None, common + ["train.steps=150", "train.lr=2e-3"])
    train(base_cfg, tmp_path / "base", quiet=True)
    align_cfg = load_config(None, common + [
        "train.steps=25", "train.lr=1e-3", "train.warmup_steps=0", "method.name=align", "method.align_steps=5",
        f"model.pretrained={tmp_path / 'base'}", "model.lora=true",
    ])
    train(align_cfg, tmp_path / "align", quiet=True)

    # an independent judge: another seed's classifier, trained on the same (biased) images
    data = prepare_data(base_cfg.data)
    judge, facts = train_alignment_classifier(data.train_images, data.train_groups, 2, 300, seed=7)
    assert min(facts["train_accuracy_per_group"]) > 0.9
    before = _share_of_group1(tmp_path / "base", judge)
    after = _share_of_group1(tmp_path / "align", judge)
    assert before < 0.35  # the 4:1 model under-generates group 1
    assert abs(after - 0.5) < abs(before - 0.5) - 0.1, (before, after)

    method = json.loads((tmp_path / "align" / "method.json").read_text())
    assert method["kind"] == "align-cnn"
    rows = [json.loads(line) for line in (tmp_path / "align" / "stats.jsonl").read_text().splitlines()]
    assert {"align_ce", "preserve", "gen_share_1"} <= set(rows[-1])
    # the saved U-Net is a plain diffusers model (adapters merged)
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(tmp_path / "align" / "model" / "unet")
    assert not any("lora" in k for k in unet.state_dict())
