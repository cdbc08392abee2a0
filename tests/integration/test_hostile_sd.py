"""The text-to-image path as hard as the pixel path (issue 28): every loader behind ``audit``, ``sd-guide``,
``sd-sample`` and a VAE gives one line (exit 2, no traceback) for a missing, truncated, corrupt or pickled weights
file, names the file, and leaves every file that was there byte-identical. Heads fitted on one SD model are refused
on another unless ``--force`` (then a warning).

Table-driven: each row is a command (``W/`` is the world folder) and a text the error line must hold."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from fairdiff.cli.main import main  # noqa: E402
from tests.conftest import CornerJudge  # noqa: E402

WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors"}


class Dark(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], 1)


def _damage(f: Path, kind: str) -> None:
    data = f.read_bytes()
    if kind == "missing":
        f.unlink()
    elif kind == "truncated":  # cut inside the tensor data: the header still reads
        f.write_bytes(data[: len(data) - 100])
    elif kind == "garbage":
        f.write_bytes(b"\x07not weights at all" * 20)
    elif kind == "pickle":  # the weights as a pickle beside nothing else
        f.unlink()
        torch.save({"w": torch.zeros(2)}, f.with_suffix(".bin"))
    elif kind == "pickle-named":  # a torch.save file under the safetensors name
        torch.save({"w": torch.zeros(2)}, f)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("hostile-sd")
    assert main(["sd-init", str(root / "sd"), "--resolution", "16"]) == 0
    torch.jit.script(Dark()).save(str(root / "judge.pt"))
    for comp, name in WEIGHTS.items():
        for kind in ("missing", "truncated", "garbage", "pickle", "pickle-named"):
            d = root / f"sd-{comp}-{kind}"
            shutil.copytree(root / "sd", d)
            _damage(d / comp / name, kind)
    # an sd-finetune run (its record and LoRA) whose LoRA is damaged in each way
    for kind in ("pickle", "pickle-named", "garbage", "foreign"):
        run = root / f"run-{kind}"
        (run / "model").mkdir(parents=True)
        (run / "sd.json").write_text(json.dumps({"sd": str(root / "sd"), "prompts": ["a photo"],
                                                 "latent_shape": [4, 8, 8]}))
        lora = run / "model" / "pytorch_lora_weights.safetensors"
        if kind == "foreign":  # a valid safetensors file that is no LoRA
            save_file({"foo.weight": torch.zeros(2, 2)}, str(lora))
        else:
            lora.write_bytes(b"placeholder" * 10)
            _damage(lora, kind)
    # VAEs: pickled weights, and a truncated safetensors file
    for kind in ("pickle", "truncated"):
        v = root / f"vae-{kind}" / "vae"
        shutil.copytree(root / "sd" / "vae", v)
        _damage(v / WEIGHTS["vae"], kind)
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


AUDIT = "audit W/{sd} --prompt x --n 2 --steps 2 --out W/out-audit --judge W/judge.pt"
FIT = "sd-guide fit-heads --sd W/{sd} --prompt x --judge W/judge.pt --out W/out-heads --n 2 --steps 2 -q"
NEEDLE = {"missing": "no safetensors weights", "truncated": "truncated", "garbage": "not a safetensors",
          "pickle": "pickled", "pickle-named": "pickle"}

CASES: dict[str, tuple[str, str]] = {}
for _comp in WEIGHTS:
    for _kind, _needle in NEEDLE.items():
        CASES[f"audit {_comp} {_kind}"] = (AUDIT.format(sd=f"sd-{_comp}-{_kind}"), _needle)
        CASES[f"fit-heads {_comp} {_kind}"] = (FIT.format(sd=f"sd-{_comp}-{_kind}"), _needle)
CASES.update({
    "sd-sample pickled LoRA (.bin)": ("sd-sample W/run-pickle --n 1 --steps 2 --out W/out-s", "pickled"),
    "sd-sample pickle named .safetensors": ("sd-sample W/run-pickle-named --n 1 --steps 2 --out W/out-s",
                                            "pickle"),
    "sd-sample corrupt LoRA": ("sd-sample W/run-garbage --n 1 --steps 2 --out W/out-s", "not a safetensors"),
    "sd-sample foreign safetensors as LoRA": ("sd-sample W/run-foreign --n 1 --steps 2 --out W/out-s",
                                              "cannot apply the LoRA"),
    "sd-init with a pickled VAE": ("sd-init W/out-sd --vae W/vae-pickle", "pickled"),
    "sd-init with a truncated VAE": ("sd-init W/out-sd --vae W/vae-truncated", "truncated"),
    "train on a pickled VAE": ("train data.source=synthetic data.synthetic_size=40 data.heldout_per_group=2 "
                               "data.resolution=16 data.channels=3 train.steps=1 model.vae=W/vae-pickle "
                               "--out W/out-train -q", "pickled"),
})


@pytest.mark.parametrize("name", list(CASES))
def test_one_line_and_nothing_changed(world, name, capsys):
    cmd, needle = CASES[name]
    before = _snapshot(world)
    capsys.readouterr()
    code = main(cmd.replace("W/", str(world) + "/").split())
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert "Traceback" not in err and len(errors) == 1, err
    assert needle in errors[0], errors[0]
    after = _snapshot(world)
    assert {k: v for k, v in after.items() if k in before} == before  # every earlier file byte-identical
    assert not [k for k in after if k not in before and not k.startswith("out-")], "a file appeared beside"
    for out in world.glob("out-*"):
        shutil.rmtree(out)


def test_damaged_files_are_named(world, capsys):
    main(AUDIT.replace("W/", str(world) + "/").format(sd="sd-unet-truncated").split())
    err = capsys.readouterr().err
    assert str(world / "sd-unet-truncated" / "unet" / WEIGHTS["unet"]) in err


def test_heads_of_another_sd_model_are_refused_unless_forced(world, tmp_path, capsys, caplog):
    from fairdiff.models.heads import load_heads

    other = tmp_path / "sd-other"
    assert main(["sd-init", str(other), "--resolution", "16", "--seed", "1"]) == 0
    heads = tmp_path / "heads"
    w = str(world)
    torch.jit.script(CornerJudge()).save(str(tmp_path / "corner.pt"))  # both groups among a few random images
    assert main(["sd-guide", "fit-heads", "--sd", f"{w}/sd", "--prompt", "x", "--judge", str(tmp_path / "corner.pt"),
                 "--out", str(heads), "--n", "12", "--steps", "2", "--heldout", "0", "--batch-size", "12",
                 "-q"]) == 0
    fitted = load_heads(heads).config.fitted_on
    assert fitted["unet_sha256"] == hashlib.sha256((world / "sd" / "unet" / WEIGHTS["unet"]).read_bytes()).hexdigest()
    common = ["--prompt", "x", "--heads", str(heads), "--n", "2", "--steps", "2", "--batch-size", "2", "-q"]
    capsys.readouterr()
    assert main(["sd-guide", "sample", "--sd", str(other), *common, "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "fitted on another model" in err and "--force" in err and not (tmp_path / "o1").exists()
    with caplog.at_level(logging.WARNING):
        assert main(["sd-guide", "sample", "--sd", str(other), *common, "--out", str(tmp_path / "o2"),
                     "--force"]) == 0
    assert "fitted on another model" in caplog.text and "used anyway" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the model they were fitted on: no word
        assert main(["sd-guide", "sample", "--sd", f"{w}/sd", *common, "--out", str(tmp_path / "o3")]) == 0
    assert "fitted on" not in caplog.text
