"""``fairdiff sd-guide``: distribution guidance on the tiny random SD stack (``sd-init``) with a brightness judge
(group 1 = mean brightness above the median of the model's own plain samples), so the judged share is known.

Checked: scale 0 is the diffusers pipeline's classifier-free guidance bit for bit; heads fitted on the judge's
pseudo-labels of the model's own generations beat chance on held-out generations; guidance moves the judged share
toward the target on the same seeds, in both directions; the output folder is audited by ``fairdiff audit
--images``; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from fairdiff.cli.main import main  # noqa: E402
from fairdiff.evaluation.audit_inputs import prompt_slug  # noqa: E402
from fairdiff.models.heads import GuidanceHeads, HeadsConfig, load_heads, save_heads  # noqa: E402
from fairdiff.sampling.sd import generate_sd, load_sd_folder, sd_image_size  # noqa: E402
from fairdiff.sampling.sd_guided import schedule_of, sd_generate, sd_guidance  # noqa: E402
from tests.conftest import Brightness, brightness  # noqa: E402

STEPS, CFG, PROMPT = 6, 3.0, "a photo"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sdguide")
    assert main(["sd-init", str(root / "sd"), "--resolution", "16"]) == 0
    pipe = load_sd_folder(root / "sd", device="cpu")
    size = sd_image_size(pipe)
    plain = sd_generate(pipe, PROMPT, list(range(10_000, 10_064)), size=size, steps=STEPS, cfg_scale=CFG,
                        batch_size=64)
    threshold = float(np.median(brightness(plain.images)))
    torch.jit.script(Brightness(threshold)).save(str(root / "bright.pt"))
    assert main(["sd-guide", "fit-heads", "--sd", str(root / "sd"), "--prompt", PROMPT, "--judge",
                 str(root / "bright.pt"), "--out", str(root / "heads"), "--n", "128", "--steps", str(STEPS),
                 "--guidance-scale", str(CFG), "--batch-size", "64", "-q"]) == 0
    return {"root": root, "sd": root / "sd", "judge": root / "bright.pt", "heads": root / "heads",
            "threshold": threshold, "pipe": pipe, "size": size}


def pipeline_images(pipe, prompt: str, seeds: list[int], *, size: int, steps: int, guidance_scale: float,
                    batch_size: int) -> np.ndarray:
    """The independent reference: diffusers' own ``StableDiffusionPipeline.__call__``, one CPU generator per
    image, converted to uint8 as fairdiff stores images."""
    from fairdiff.utils.images import to_uint8

    out = []
    for i in range(0, len(seeds), batch_size):
        bs = seeds[i : i + batch_size]
        res = pipe([prompt] * len(bs), height=size, width=size, num_inference_steps=steps,
                   guidance_scale=guidance_scale, generator=[torch.Generator("cpu").manual_seed(s) for s in bs],
                   output_type="pt")
        out.append(res.images.float().cpu() * 2 - 1)
    return to_uint8(torch.cat(out))


def _share1(folder: Path, threshold: float) -> float:
    with np.load(folder / "samples.npz") as z:
        return float(np.mean(brightness(z["images"]) > threshold))


def test_scale_zero_is_the_pipelines_cfg_bit_for_bit(world):
    pipe, size = world["pipe"], world["size"]
    seeds = [3, 4, 5, 6, 7]
    ref = pipeline_images(pipe, PROMPT, seeds, size=size, steps=STEPS, guidance_scale=CFG, batch_size=5)
    assert np.array_equal(generate_sd(pipe, PROMPT, seeds, size=size, steps=STEPS, guidance_scale=CFG,
                                      batch_size=5), ref)
    heads = load_heads(world["heads"])
    zero = sd_generate(pipe, PROMPT, seeds, size=size, steps=STEPS, cfg_scale=CFG, batch_size=5,
                       guidance=sd_guidance(pipe, heads, "0.2,0.8", 0.0))
    assert zero.images.dtype == np.uint8 and np.array_equal(zero.images, ref)
    plain = sd_generate(pipe, PROMPT, seeds, size=size, steps=STEPS, cfg_scale=CFG, batch_size=5)
    assert np.array_equal(plain.images, ref)
    moved = sd_generate(pipe, PROMPT, seeds, size=size, steps=STEPS, cfg_scale=CFG, batch_size=5,
                        guidance=sd_guidance(pipe, heads, "0.2,0.8", 10.0))
    assert not np.array_equal(moved.images, ref)  # the comparison above could fail
    # without classifier-free guidance (scale 1: one U-Net pass) the loop is still the pipeline's
    one = sd_generate(pipe, PROMPT, seeds[:2], size=size, steps=STEPS, cfg_scale=1.0, batch_size=2)
    assert np.array_equal(one.images, pipeline_images(pipe, PROMPT, seeds[:2], size=size, steps=STEPS,
                                                      guidance_scale=1.0, batch_size=2))
    # the batch size does not change an image (each has its own generator)
    assert np.array_equal(sd_generate(pipe, PROMPT, seeds, size=size, steps=STEPS, cfg_scale=CFG,
                                      batch_size=2).images, ref)


def test_heads_fitted_on_pseudo_labels_beat_chance(world):
    rec = json.loads((world["heads"] / "record.json").read_text())
    assert rec["mode"] == "generated" and rec["num_steps"] == STEPS and rec["n_heldout"] == 32
    assert rec["timesteps"] == schedule_of(world["pipe"], STEPS) and rec["h_shape"] == [64, 4, 4]
    assert rec["label_shares"][PROMPT] == [0.5, 0.5]  # the judge's threshold is the median of such samples
    acc = rec["heldout_accuracy"]
    assert len(acc) == STEPS and min(acc[-2:]) > 0.7  # low noise: the final image is nearly decided
    heads = load_heads(world["heads"])
    assert isinstance(heads, GuidanceHeads) and heads.config.pool == "mean"


def test_guidance_moves_the_judged_share_toward_the_target(world, tmp_path):
    common = ["sd-guide", "sample", "--sd", str(world["sd"]), "--heads", str(world["heads"]), "--n", "32",
              "--batch-size", "16", "--seed", "500", "-q"]
    (tmp_path / "prompts.txt").write_text(f"{PROMPT} | 0.2,0.8\n")
    shares = {}
    for name, extra in {"plain": ["--prompt", PROMPT, "--scale", "0"],
                        "up": ["--prompts", str(tmp_path / "prompts.txt"), "--scale", "10"],
                        "down": ["--prompt", PROMPT, "--target", "0.8,0.2", "--scale", "10"]}.items():
        assert main([*common, *extra, "--out", str(tmp_path / name)]) == 0
        sub = tmp_path / name / prompt_slug(PROMPT)
        shares[name] = _share1(sub, world["threshold"])
        meta = json.loads((sub / "meta.json").read_text())
        assert meta["seeds"] == list(range(500, 532)) and meta["guidance_scale"] == CFG
    assert shares["up"] > shares["plain"] + 0.1 and shares["down"] < shares["plain"] - 0.1, shares
    assert abs(shares["up"] - 0.8) < abs(shares["plain"] - 0.8)
    assert abs(shares["down"] - 0.2) < abs(shares["plain"] - 0.2)
    # the folder is an audit input: the audit's judged share is the one computed here
    out = tmp_path / "audit"
    assert main(["audit", "--images", str(tmp_path / "up"), "--judge", str(world["judge"]), "--out", str(out),
                 "--bootstrap", "20", "-q"]) == 0
    res = json.loads((out / "audit.json").read_text())
    assert [p["prompt"] for p in res["prompts"]] == [PROMPT]
    assert res["prompts"][0]["strict_shares"][1] == pytest.approx(shares["up"], abs=1e-12)


def test_bad_inputs_are_one_line(world, tmp_path, capsys):
    sd, heads = str(world["sd"]), str(world["heads"])
    sample = ["sd-guide", "sample", "--sd", sd, "--heads", heads, "--prompt", PROMPT, "--n", "2",
              "--out", str(tmp_path / "o")]
    bad_prompts = tmp_path / "p.txt"
    bad_prompts.write_text(f"{PROMPT} | 0.5,0.2\n")
    other = GuidanceHeads.from_spec(HeadsConfig({"group": 2}, STEPS, "ddim", schedule_of(world["pipe"], STEPS),
                                                "mean", [32, 4, 4], "generated"))
    save_heads(other, tmp_path / "other")
    torch.jit.script(Brightness(10.0)).save(str(tmp_path / "dark.pt"))  # every image in group 0
    cases = {
        "every group needs images": ["sd-guide", "fit-heads", "--sd", sd, "--prompt", PROMPT, "--judge",
                                     str(tmp_path / "dark.pt"), "--n", "4", "--steps", "2", "--out",
                                     str(tmp_path / "h0"), "-q"],
        "no such folder": ["sd-guide", "sample", "--sd", str(tmp_path / "nope"), "--heads", heads, "--prompt",
                           PROMPT, "--n", "2", "--out", str(tmp_path / "o")],
        "--heads": [*sample[:5], str(tmp_path / "no-heads"), *sample[6:]],
        "has 3 values": [*sample, "--target", "0.2,0.3,0.5"],
        "sums to 0.7000": [*sample, "--target", "0.5,0.2"],
        "sums to 0.7": [*sample[:6], "--prompts", str(bad_prompts), *sample[8:]],
        "--steps 4": [*sample, "--steps", "4"],
        "h-space [32, 4, 4]": [*sample[:5], str(tmp_path / "other"), *sample[6:], "--scale", "1"],
        "--judge": ["sd-guide", "fit-heads", "--sd", sd, "--prompt", PROMPT, "--judge", str(tmp_path / "j.pt"),
                    "--out", str(tmp_path / "h")],
        "--scale": [*sample, "--scale", "-1"],
        "give an action": ["sd-guide"],
    }
    for needle, argv in cases.items():
        assert main(argv) == 2, needle
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and needle in err, (needle, err)
