"""Alignment on prompts for a prompt-conditioned latent model (``sd-finetune --prompt-targets``), end to end.

A toy with a planted bias: the tiny random SD stack built here, judged by mean brightness (group 1 = bright).
The threshold is set so that about 3 in 4 of the starting model's images of "a face" are bright; alignment
toward 20 % bright on "a face" must move that share toward 0.2 while "an apple" (``preserve``) keeps its share and its
images stay closer to the starting model's than those of the aligned prompt.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from fairdiff.cli.main import main
from tests.conftest import Brightness, brightness
from tests.integration.test_sd_lora import DATA, _one_line_error, build_sd_folder

N = 64
STEPS = 4  # the alignment chain and the sampling chain have the same length


def _draw(pipe, prompt: str) -> np.ndarray:
    from fairdiff.sampling.sd import generate_sd

    return generate_sd(pipe, prompt, list(range(500, 500 + N)), size=16, steps=STEPS, guidance_scale=1.0,
                       batch_size=N)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    from fairdiff.sampling.sd import load_sd_folder

    root = tmp_path_factory.mktemp("sdalign")
    build_sd_folder(root / "base")
    base = load_sd_folder(root / "base", device="cpu")
    before = {p: _draw(base, p) for p in ("a face", "an apple")}
    m = brightness(before["a face"])
    threshold = float(np.quantile(m, 0.25))  # ~3 in 4 images of "a face" bright
    judge = root / "bright.pt"  # sure of most images (logit 5 at one standard deviation from the threshold)
    torch.jit.script(Brightness(threshold, 5.0 / float(m.std()))).save(str(judge))
    spec = root / "targets.yaml"
    spec.write_text("a face: [0.8, 0.2]\nan apple: preserve\n")
    run = root / "run"
    assert main(["sd-finetune", "--sd", str(root / "base"), "--out", str(run), "--prompt-targets", str(spec), *DATA,
                 "method.name=align", f"method.align_steps={STEPS}", f"method.align_classifier={judge}",
                 "method.preserve_weight=0", "method.preserve_prompt_weight=300", "train.batch_size=16",
                 "train.steps=30", "train.ema=false", "model.lora_targets=[to_k,to_v]", "model.lora_text_encoder=true",
                 "-q"]) == 0
    from fairdiff.sampling.sd import load_sd_pipeline

    tuned, _ = load_sd_pipeline(run, lora=True, device="cpu")
    after = {p: _draw(tuned, p) for p in ("a face", "an apple")}
    return root, run, threshold, before, after


def test_alignment_moves_the_target_prompt_and_keeps_the_preserved_one(aligned):
    _, run, thr, before, after = aligned
    share = {k: {p: float((brightness(v[p]) > thr).mean()) for p in v} for k, v in (("before", before),
                                                                                      ("after", after))}
    b, a = share["before"]["a face"], share["after"]["a face"]
    assert b >= 0.7  # the planted bias
    assert abs(a - 0.2) < abs(b - 0.2) - 0.2, share
    # the preserved prompt: its bright share stays within the 95% CI of the starting model's
    p0 = share["before"]["an apple"]
    half = 1.96 * math.sqrt(max(p0 * (1 - p0), 0.05) / N)
    assert abs(share["after"]["an apple"] - p0) <= half, share
    # and its images moved less than the aligned prompt's
    moved = {p: float(np.abs(after[p].astype(float) - before[p].astype(float)).mean()) for p in before}
    assert moved["an apple"] < moved["a face"], moved
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert {"align_ce", "preserve_prompts", "gen_share_0_1"} <= set(rows[-1])
    assert all(math.isfinite(r["loss"]) for r in rows)
    meta = json.loads((run / "sd.json").read_text())
    assert meta["prompts"] == ["a face", "an apple"]
    method = json.loads((run / "method.json").read_text())
    assert method["prompt_targets"] == {"a face": [0.8, 0.2], "an apple": "preserve"}


def test_bad_prompt_targets_are_one_line(aligned, tmp_path, capsys):
    root, _, _, _, _ = aligned
    common = ["sd-finetune", "--sd", str(root / "base"), "--out", str(tmp_path / "r"), *DATA, "train.steps=1",
              "-q", "method.name=align", f"method.align_classifier={root / 'bright.pt'}"]
    cases = {
        "a face: [0.7, 0.7]\n": "sum to 1",
        "a face: [1.0]\n": "2 groups",
        "a face: preserve\n": "every prompt is 'preserve'",
        "a face: maybe\n": "give target shares",
        "- a face\n": "expected a mapping",
    }
    for text, needle in cases.items():
        f = tmp_path / "t.yaml"
        f.write_text(text)
        assert needle in _one_line_error(capsys, [*common, "--prompt-targets", str(f)])
    f.write_text("a face: uniform\n")
    line = _one_line_error(capsys, [*common[:-2], "method.name=baseline", "--prompt-targets", str(f)])
    assert "is for method.name=align" in line
    line = _one_line_error(capsys, [*common, "method.target=[0.5,0.5]", "--prompt-targets", str(f)])
    assert "remove method.target" in line
    assert "no such file" in _one_line_error(capsys, [*common, "--prompt-targets", str(tmp_path / "nope.yaml")])
