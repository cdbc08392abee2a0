"""``fairdiff debias --sd FOLDER --prompt P --method filter``: generate-and-filter of one prompt of the tiny random
SD stack (``sd-init``), judged by a brightness judge whose answer is known: the kept images are the pipeline's
own images of their recorded seeds, their judged groups meet the quotas, and bad input is one line."""

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
    return {"root": root, "sd": root / "sd", "judge": root / "bright.pt", "thr": thr, "pipe": pipe}


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
    ({"--method": "guide"}, "--sd takes --method filter"),
    ({"--prompt": " "}, "needs one --prompt"),
    ({"--then-filter": None}, "not an option of 'debias --sd'"),
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


def test_run_and_sd_are_exclusive(world, tmp_path):
    assert main(["debias", str(world["sd"]), "--sd", str(world["sd"]), "--prompt", PROMPT, "--target", "0.5,0.5",
                 "--out", str(tmp_path / "x"), "-q"]) == 2
    assert main(["debias", "--target", "0.5,0.5", "--out", str(tmp_path / "y"), "-q"]) == 2
