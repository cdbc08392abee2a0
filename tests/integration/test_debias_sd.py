"""``fairdiff debias --sd FOLDER --prompt P``: generate-and-filter (and guidance to the target with its controller)
of one prompt of the tiny random SD stack (``data tiny-sd``), judged by a brightness judge whose answer is known:
the kept images are the pipeline's own images of their recorded seeds, their judged groups meet the quotas, the
controller's unguided pilot is the pipeline's own, and bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from fairdiff.cli.main import main  # noqa: E402
from tests.conftest import Brightness, brightness  # noqa: E402

PROMPT = "a photo of a doctor"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from fairdiff.sampling.sd import generate_sd, load_sd_any

    root = tmp_path_factory.mktemp("sdfilter")
    assert main(["data", "tiny-sd", str(root / "sd"), "--resolution", "16"]) == 0
    pipe = load_sd_any(root / "sd", device="cpu")
    first = generate_sd(pipe, PROMPT, list(range(24)), size=16, steps=2, guidance_scale=2.0, batch_size=8)
    thr = float(np.median(brightness(first)))  # half the images on each side: both groups are drawn
    torch.jit.script(Brightness(threshold=thr)).save(str(root / "bright.pt"))
    assert main(["heads", "fit", "--sd", str(root / "sd"), "--prompt", PROMPT, "--judge", str(root / "bright.pt"),
                 "--out", str(root / "heads"), "--n", "64", "--steps", "2", "--cfg-scale", "2.0", "--batch-size",
                 "32", "-q"]) == 0
    return {"root": root, "sd": root / "sd", "judge": root / "bright.pt", "thr": thr, "pipe": pipe,
            "heads": root / "heads"}


def test_sd_filter_keeps_the_pipelines_images_to_quota(world, tmp_path):
    from fairdiff.sampling.sd import generate_sd

    out = tmp_path / "kept"
    assert main(["debias", "--sd", str(world["sd"]), "--prompt", PROMPT, "--target", "0.25,0.75", "--n", "8",
                 "--steps", "2", "--cfg-scale", "2.0", "--judge", str(world["judge"]), "--out", str(out),
                 "-q"]) == 0
    rec = json.loads((out / "debias.json").read_text())
    z = np.load(out / "samples" / "samples.npz")
    images, seeds = z["images"], z["seeds"].tolist()
    assert images.shape == (8, 3, 16, 16) and rec["kept"] == 8 and rec["drawn"] >= 8
    groups = (brightness(images) > world["thr"]).astype(int)
    assert np.bincount(groups, minlength=2).tolist() == [2, 6]
    # the kept images are the pipeline's own images of those seeds (no other draw path)
    again = generate_sd(world["pipe"], PROMPT, seeds, size=16, steps=2, guidance_scale=2.0, batch_size=8)
    assert np.array_equal(again, images)
    m = json.loads((out / "metrics.json").read_text())
    assert m["valid_shares"] == pytest.approx([0.25, 0.75]) and m["prompt"] == PROMPT
    assert "same judge keeps and scores" in rec["judge_role"] and (out / "report.md").is_file()


@pytest.mark.parametrize("change, says", [
    ({"--method": "distill"}, "--sd takes --method filter or guide"),
    ({"--heads": "h"}, "not an option of 'debias --sd --method filter'"),
    ({"--prompt": " "}, "needs one --prompt"),
    ({"--then-filter": None}, "not an option of 'debias --sd --method filter'"),
    ({"--judge": "clusters"}, "--judge clusters is for trained runs"),
    ({"--max-draws": "3"}, "--max-draws must be at least --n"),
    ({"--config": "none.yaml"}, "no such file"),
    ({"--judge": "auto"}, "--judge auto is trained on a data source"),
])
def test_sd_filter_bad_input_is_one_line(world, tmp_path, capsys, change, says):
    opts = {"--prompt": PROMPT, "--target": "0.5,0.5", "--n": "4", "--steps": "2", "--judge": str(world["judge"]),
            "--out": str(tmp_path / "bad"), **change}
    args = ["debias", "--sd", str(world["sd"]), "-q"]
    for k, v in opts.items():
        args += [k] if v is None else [k, v]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "bad").exists()


def test_sd_guide_controller_and_then_filter(world, tmp_path):
    """``--method guide``: pilots at scale 0, then ``--s0``; the unguided pilot's shares are the judge's on the
    pipeline's own images of the pilot seeds; ``--then-filter`` keeps guided images to quota."""
    from fairdiff.debias.run import PILOT_SEED
    from fairdiff.sampling.sd import generate_sd

    out = tmp_path / "guided"
    args = ["debias", "--sd", str(world["sd"]), "--method", "guide", "--heads", str(world["heads"]), "--prompt",
            PROMPT, "--target", "0.2,0.8", "--n", "8", "--pilot-n", "16", "--max-pilots", "3", "--s0", "5",
            "--judge", str(world["judge"]), "-q"]
    assert main([*args, "--out", str(out)]) == 0
    rec = json.loads((out / "debias.json").read_text())
    c = rec["controller"]
    assert [p["scale"] for p in c["pilots"]][:2] == [0.0, 5.0] and len(c["pilots"]) <= 3
    assert rec["steps"] == 2 and rec["cfg_scale"] == 2.0  # the heads' own
    plain = generate_sd(world["pipe"], PROMPT, list(range(PILOT_SEED, PILOT_SEED + 16)), size=16, steps=2,
                        guidance_scale=2.0, batch_size=8)
    assert c["pilots"][0]["shares"][1] == pytest.approx((brightness(plain) > world["thr"]).mean())
    assert np.load(out / "samples" / "samples.npz")["images"].shape == (8, 3, 16, 16)
    kept = tmp_path / "guided-kept"
    assert main([*args, "--then-filter", "--out", str(kept)]) == 0
    rec2 = json.loads((kept / "debias.json").read_text())
    z = np.load(kept / "samples" / "samples.npz")
    assert rec2["then_filter"] and rec2["controller"]["scale"] == c["scale"]
    assert np.bincount((brightness(z["images"]) > world["thr"]).astype(int), minlength=2).tolist() == [2, 6]
    for bad in (["--steps", "3"], ["--mode", "sample"], ["--reader", "classifier"]):
        assert main([*args, *bad, "--out", str(tmp_path / "bad")]) == 2
    assert main([a for a in args if a != str(world["heads"]) and a != "--heads"] + ["--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "bad").exists() and not (tmp_path / "b").exists()


def test_run_and_sd_are_exclusive(world, tmp_path):
    assert main(["debias", str(world["sd"]), "--sd", str(world["sd"]), "--prompt", PROMPT, "--target", "0.5,0.5",
                 "--out", str(tmp_path / "x"), "-q"]) == 2
    assert main(["debias", "--target", "0.5,0.5", "--out", str(tmp_path / "y"), "-q"]) == 2
