"""``fairdiff audit`` user mistakes: exit code 2, exactly one line on stderr, no traceback, and nothing written
(no output folder appears, an existing one is left as it was)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from fairdiff.cli.main import main  # noqa: E402


class Dark(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], 1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("audit-bad")
    assert main(["sd-init", str(root / "sd"), "--resolution", "16"]) == 0
    torch.jit.script(Dark()).save(str(root / "judge.pt"))
    (root / "prompts.txt").write_text("a nurse\na doctor\n")
    (root / "empty.txt").write_text("\n# only a comment\n   \n")
    (root / "twice.txt").write_text("a nurse\na nurse\n")
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (root / "notsd").mkdir()
    (root / "notsd" / "readme.txt").write_text("not a pipeline")
    for name in ("imgs", "imgs-nosub", "imgs-emptysub", "imgs-badmap", "imgs-dupmap"):
        (root / name).mkdir()
    for name in ("imgs", "imgs-badmap", "imgs-dupmap"):
        for sub in ("a", "b"):
            (root / name / sub).mkdir()
            Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(root / name / sub / "x.png")
    (root / "imgs-emptysub" / "a").mkdir()
    (root / "imgs-emptysub" / "a" / "notes.txt").write_text("no images")
    (root / "imgs-badmap" / "prompts.json").write_text(json.dumps({"zzz": "a prompt"}))
    (root / "imgs-dupmap" / "prompts.json").write_text(json.dumps({"a": "b"}))
    (root / "foreign").mkdir()
    (root / "foreign" / "mine.txt").write_text("user data")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _w(world: Path, text: str) -> str:
    return text.replace("W/", str(world) + "/")


CASES = {
    "missing SD folder": ("audit W/nosuch --prompt x --n 2 --out W/o --judge W/judge.pt", "no such folder"),
    "not a diffusers folder": ("audit W/notsd --prompt x --n 2 --out W/o --judge W/judge.pt", "model_index.json"),
    "no prompts at all": ("audit W/sd --n 2 --out W/o --judge W/judge.pt", "no prompts"),
    "missing prompts file": ("audit W/sd --prompts W/nosuch.txt --n 2 --out W/o --judge W/judge.pt",
                             "no such file"),
    "empty prompts file": ("audit W/sd --prompts W/empty.txt --n 2 --out W/o --judge W/judge.pt", "no prompts"),
    "prompt twice": ("audit W/sd --prompts W/twice.txt --n 2 --out W/o --judge W/judge.pt", "given twice"),
    "prompts file not UTF-8": ("audit W/sd --prompts W/latin1.txt --n 2 --out W/o --judge W/judge.pt", "UTF-8"),
    "n < 1": ("audit W/sd --prompts W/prompts.txt --n 0 --out W/o --judge W/judge.pt", "--n must be"),
    "n missing": ("audit W/sd --prompts W/prompts.txt --out W/o --judge W/judge.pt", "--n must be"),
    "steps 0": ("audit W/sd --prompts W/prompts.txt --n 2 --steps 0 --out W/o --judge W/judge.pt", "--steps"),
    "too many steps": ("audit W/sd --prompts W/prompts.txt --n 2 --steps 5000 --out W/o --judge W/judge.pt",
                       "1000 timesteps"),
    "negative seed": ("audit W/sd --prompts W/prompts.txt --n 2 --seed -1 --out W/o --judge W/judge.pt",
                      "--seed"),
    "guidance nan": ("audit W/sd --prompts W/prompts.txt --n 2 --guidance-scale nan --out W/o --judge W/judge.pt",
                     "--guidance-scale"),
    "out is the SD folder": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/sd --judge W/judge.pt", "input"),
    "out inside the SD folder": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/sd/audit --judge W/judge.pt",
                                 "inside the input"),
    "out is the current folder": ("audit W/sd --prompts W/prompts.txt --n 2 --out . --judge W/judge.pt",
                                  "current directory"),
    "out not written by fairdiff": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/foreign --judge W/judge.pt",
                                    "not written by fairdiff"),
    "out is a file": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/prompts.txt --judge W/judge.pt",
                      "not a folder"),
    "missing judge file": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/o --judge W/nosuch.pt", "no such file"),
    "auto judge without data": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/o --judge auto", "--config"),
    "missing config": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/o --config W/nosuch.yaml", "no such file"),
    "bad target": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/o --judge W/judge.pt --target 0.9,0.3",
                   "--target"),
    "SD folder and --images": ("audit W/sd --images W/imgs --out W/o --judge W/judge.pt", "not both"),
    "neither SD folder nor --images": ("audit --prompt x --n 2 --out W/o --judge W/judge.pt", "Stable Diffusion"),
    "--images missing": ("audit --images W/nosuch --out W/o --judge W/judge.pt", "no such folder"),
    "--images without subfolders": ("audit --images W/imgs-nosub --out W/o --judge W/judge.pt", "no subfolders"),
    "--images subfolder without images": ("audit --images W/imgs-emptysub --out W/o --judge W/judge.pt",
                                          "holds no images"),
    "--images map names no subfolder": ("audit --images W/imgs-badmap --out W/o --judge W/judge.pt", "'zzz'"),
    "--images two subfolders one prompt": ("audit --images W/imgs-dupmap --out W/o --judge W/judge.pt",
                                           "two subfolders"),
    "--images with --prompt": ("audit --images W/imgs --prompt x --out W/o --judge W/judge.pt", "subfolders"),
    "--images n < 1": ("audit --images W/imgs --n 0 --out W/o --judge W/judge.pt", "--n must be"),
    "--images more n than images": ("audit --images W/imgs --n 5 --out W/o5 --judge W/judge.pt", "only 1 images"),
    "unknown device": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/o --judge W/judge.pt --device tpu",
                       "--device"),
    "judge takes another image size": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/o --judge auto "
                                       "data.source=synthetic data.resolution=16 data.synthetic_size=120 "
                                       "data.heldout_per_group=10 eval.classifier_steps=5 -q", "takes images 1x16x16"),
    "fp16 on the CPU": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/o --judge W/judge.pt --precision fp16 "
                        "--device cpu", "fp16 needs a GPU"),
    "unknown precision": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/o --precision fp8", "--precision"),
    "unknown option": ("audit W/sd --prompts W/prompts.txt --n 2 --out W/o --colour red", "unrecognized"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(world, case, capsys, monkeypatch):
    argv, needle = CASES[case]
    monkeypatch.chdir(world)
    before = _snapshot(world)
    try:
        rc = main(_w(world, argv).split())
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, case
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert not (world / "o").exists()
    assert _snapshot(world) == before
