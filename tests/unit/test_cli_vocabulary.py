"""Issue 27's one command vocabulary: ``fairdiff --help`` lists about a dozen commands, none of the old ``sd-*``
names; every old spelling (command or flag) still parses, does what it did and names the new spelling in one stderr
line (joined to the error line when it fails); every new spelling reaches the same library call with the same
arguments as the old one."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from fairdiff.cli import aliases
from fairdiff.cli.main import build_parser, main
from fairdiff.errors import FairdiffError

OLD_NAMES = {"sd-sample", "sd-guide", "sd-init", "sd-export", "sd-finetune", "train-heads", "train-vae"}
NEW_NAMES = {"train", "sample", "export", "data", "debias", "base", "evaluate", "compare", "heads", "bench",
             "audit", "demo", "sweep"}


def _listed(parser: argparse.ArgumentParser) -> list[str]:
    sub = parser.get_default("_subparsers")
    return [a.dest for a in sub._choices_actions]


def test_help_lists_one_vocabulary(capsys):
    parser = build_parser()
    listed = _listed(parser)
    assert len(listed) <= 14 and len(listed) == len(set(listed)), listed
    assert set(listed) == NEW_NAMES, listed
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert not any(f"    {name} " in text or f" {name}\n" in text for name in OLD_NAMES), text
    assert "sd-" not in text.split("options:")[0]
    # the old spellings are there, only hidden
    assert OLD_NAMES <= set(parser.get_default("_subparsers").choices)


def _note(old: str, new: str) -> str:
    return f"note: '{old}' is now '{new}'; the old spelling still works"


def _fails_with_note(argv: list[str], capfd, needle: str, old: str, new: str) -> str:
    capfd.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own exit
        rc = e.code
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert needle in lines[0], (needle, err)
    assert " (note: " in lines[0] and _note(old, new) in lines[0], err
    return lines[0]


def _fake_sd_run(root: Path) -> Path:
    """A folder ``is_sd_run`` takes for an SD LoRA run (its base is missing: loaders are monkeypatched)."""
    run = root / "sdrun"
    run.mkdir(parents=True)
    (run / "sd.json").write_text(json.dumps({"sd": str(root / "no-base"), "prompts": ["a photo"]}))
    return run


# ------------------------------------------------------------------------- old spellings: parse, note, same error

def test_old_commands_fail_with_the_note(tmp_path, capfd):
    t = str(tmp_path)
    judge = tmp_path / "judge.pt"
    judge.write_bytes(b"not a judge")
    cases = [
        (["sd-sample", f"{t}/nosuch"], "not an sd-finetune run", "fairdiff sd-sample", "fairdiff sample"),
        (["sd-sample", f"{t}/nosuch", "--guidance-scale", "nan"], "--guidance-scale", "fairdiff sd-sample",
         "fairdiff sample"),
        (["sd-init", f"{t}/sd", "--resolution", "12"], "multiple of 8", "fairdiff sd-init", "fairdiff data tiny-sd"),
        (["sd-export", f"{t}/nosuch", f"{t}/o"], "", "fairdiff sd-export", "fairdiff export"),
        (["sd-finetune", "train.nosuch=1", "--sd", f"{t}/nosd", "--out", f"{t}/r"], "train.nosuch",
         "fairdiff sd-finetune", "fairdiff train --sd"),
        (["train-vae", "train.nosuch=1", "--out", f"{t}/v"], "train.nosuch", "fairdiff train-vae",
         "fairdiff train --vae"),
        (["train-heads", f"{t}/nosuch", "--out", f"{t}/h", "--steps", "0"], "--steps", "fairdiff train-heads",
         "fairdiff heads fit"),
        (["sd-guide", "sample", "--sd", f"{t}/nope", "--heads", f"{t}/h", "--prompt", "x", "--n", "2", "--out",
          f"{t}/o"], "no such folder", "fairdiff sd-guide sample", "fairdiff sample --sd"),
        (["sd-guide", "fit-heads", "--sd", f"{t}/nope", "--prompt", "x", "--judge", str(judge), "--out", f"{t}/h",
          "--n", "0"], "--n", "fairdiff sd-guide fit-heads", "fairdiff heads fit --sd"),
        # a parse error of an old spelling carries the note too
        (["sd-sample"], "required", "fairdiff sd-sample", "fairdiff sample"),
    ]
    for argv, needle, old, new in cases:
        _fails_with_note(argv, capfd, needle, old, new)
    line = _fails_with_note(["sd-guide"], capfd, "give an action", "fairdiff sd-guide",
                            "fairdiff heads fit --sd' / 'fairdiff sample --sd")
    assert "heads fit --sd" in line


def test_old_flags_fail_with_the_note(tmp_path, capfd):
    t = str(tmp_path)
    cases = [
        (["sample", f"{t}/nosuch", "--n", "1", "--guidance", f"{t}/h"], "--guidance needs --scale",
         "fairdiff sample --guidance", "fairdiff sample --heads"),
        (["evaluate", f"{t}/nosuch", "--classifier", f"{t}/c.pt", "-q"], "no such run",
         "fairdiff evaluate --classifier", "fairdiff evaluate --judge"),
        (["audit", "--images", f"{t}/imgs", "--out", f"{t}/a", "--guidance-scale", "nan"],
         "--guidance-scale must be a finite number", "fairdiff audit --guidance-scale", "fairdiff audit --cfg-scale"),
        (["sample", "--sd", f"{t}/nope", "--heads", f"{t}/h", "--out", f"{t}/o", "--loss", "kl",
          "--guidance-scale", "-1"], "--guidance-scale must be", "fairdiff sample --loss",
         "fairdiff sample --guidance-loss"),
        (["heads", "fit", "--sd", f"{t}/nope", "--judge", f"{t}/j.pt", "--out", f"{t}/h", "--prompt", "x",
          "--guidance-scale", "nan"], "--guidance-scale must be", "fairdiff heads fit --guidance-scale",
         "fairdiff heads fit --cfg-scale"),
        (["train", "train.nosuch=1", "--sd", f"{t}/nosd", "--prompts-file", f"{t}/p.txt"], "train.nosuch",
         "fairdiff train --prompts-file", "fairdiff train --prompts"),
    ]
    for argv, needle, old, new in cases:
        _fails_with_note(argv, capfd, needle, old, new)


def test_old_spelling_that_succeeds_prints_the_note_after(tmp_path, capfd):
    """After success the note is an OldSpelling warning (a FutureWarning: shown by default, one plain line; this
    suite's filterwarnings hides FutureWarning, so it is switched on here)."""
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("default", aliases.OldSpelling)
        assert main(["sd-finetune", "--sd", str(tmp_path / "sd"), "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    out, err = capfd.readouterr()
    assert "pretrained:" in out and str(tmp_path / "sd") in out
    assert err.strip().splitlines() == [_note("fairdiff sd-finetune", "fairdiff train --sd")]
    # the new spelling: the same config, no note
    with warnings.catch_warnings():
        warnings.simplefilter("default", aliases.OldSpelling)
        assert main(["train", "--sd", str(tmp_path / "sd"), "--out", str(tmp_path / "r"), "--dry-run"]) == 0
    out2, err2 = capfd.readouterr()
    assert out2 == out and err2 == ""
    # a command line (python -m fairdiff) shows it by default
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "fairdiff", "sd-finetune", "--sd", str(tmp_path / "sd"), "--out",
                          str(tmp_path / "r"), "--dry-run"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": ""})
    assert res.returncode == 0 and res.stdout == out, res.stderr
    assert res.stderr == _note("fairdiff sd-finetune", "fairdiff train --sd") + "\n"


def test_every_old_spelling_is_in_the_table():
    assert set(aliases.OLD_COMMANDS) == {
        "fairdiff sd-sample", "fairdiff sd-guide sample", "fairdiff sd-guide fit-heads", "fairdiff train-heads",
        "fairdiff sd-export", "fairdiff sd-init", "fairdiff sd-finetune", "fairdiff train-vae"}
    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    for old, new in {**aliases.OLD_COMMANDS, **aliases.OLD_FLAGS}.items():
        assert f"`{old}`" in doc and f"`{new}`" in doc, (old, new)


# ----------------------------------------------------------------- new spellings reach the same call as the old ones

class _Stop(FairdiffError):
    pass


def _record(monkeypatch, target: str, result=None):
    """Replace ``module.attr`` by a recorder; it raises :class:`_Stop` unless ``result`` is given."""
    calls: list[tuple[tuple, dict]] = []

    def fake(*a, **k):
        calls.append((a, k))
        if result is None:
            raise _Stop("stopped by the test")
        return result(*a, **k) if callable(result) else result

    module, attr = target.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), attr, fake)
    return calls


def _both(argv_old, argv_new, calls, capfd, rc=2):
    capfd.readouterr()
    assert main(argv_old) == rc
    assert main(argv_new) == rc
    err = capfd.readouterr().err
    assert len(calls) == 2, err
    return calls


def test_sample_sd_run_reaches_sample_sd_run(tmp_path, monkeypatch, capfd):
    run = _fake_sd_run(tmp_path)
    calls = _record(monkeypatch, "fairdiff.sampling.sd.sample_sd_run", result=lambda *a, **k: k["out_dir"])
    common = [str(run), "--n", "2", "--steps", "3", "--prompt", "a dog", "--seed", "4", "--no-lora",
              "--device", "cpu"]
    _both(["sd-sample", *common, "--guidance-scale", "2.5", "--out", str(tmp_path / "a")],
          ["sample", *common, "--cfg-scale", "2.5", "--out", str(tmp_path / "b"), "--batch-size", "16"], calls, capfd,
          rc=0)
    (a_args, a), (b_args, b) = calls
    assert a_args == b_args == (run, 2)
    assert a.pop("out_dir") == str(tmp_path / "a") and b.pop("out_dir") == str(tmp_path / "b")
    assert a == b == {"prompt": "a dog", "seed": 4, "steps": 3, "guidance_scale": 2.5, "lora": False,
                      "device": "cpu", "batch_size": 16}
    # left out: the prompt is the run's, CFG 1, the LoRA on
    calls.clear()
    assert main(["sample", str(run), "--n", "1", "--steps", "2", "--out", str(tmp_path / "c"), "--device",
                 "cpu"]) == 0
    assert calls[0][1]["prompt"] is None and calls[0][1]["guidance_scale"] == 1.0 and calls[0][1]["lora"] is True


def test_sample_sd_run_refuses_pixel_options(tmp_path, capfd):
    run = _fake_sd_run(tmp_path)
    for extra, needle in [(["--scheduler", "ddpm"], "--scheduler"), (["--no-png"], "--no-png"),
                          (["--heads", "h"], "--heads"), (["--prompt", "a", "--prompt", "b"], "one --prompt")]:
        capfd.readouterr()
        assert main(["sample", str(run), "--n", "1", *extra]) == 2
        err = capfd.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and needle in err, err


def test_sample_sd_guided_is_sd_guide_sample(tmp_path, monkeypatch, capfd):
    from fairdiff.cli import sd_guide_cmds

    common = ["--sd", str(tmp_path / "sd"), "--heads", str(tmp_path / "h"), "--prompt", "a doctor", "--prompt",
              "a nurse", "--target", "0.3,0.7", "--n", "4", "--out", str(tmp_path / "o"), "--seed", "2"]
    # the old spelling: parsed by its own (hidden) parser, its function bound at registration
    old = build_parser().parse_args(["sd-guide", "sample", *common])
    assert old.func.__wrapped__ is sd_guide_cmds.cmd_sample
    seen = []
    monkeypatch.setattr(sd_guide_cmds, "cmd_sample", lambda a: seen.append(a) or 0)
    assert main(["sample", *common]) == 0
    new = seen[0]
    keys = ["sd", "heads", "prompt", "prompts", "target", "n", "out", "seed", "scale", "mode", "temperature", "loss",
            "steps", "batch_size", "device", "quiet", "force", "cfg_scale"]
    assert {k: getattr(new, k) for k in keys} == {k: getattr(old, k) for k in keys}
    # the pixel-only options are refused with --sd
    capfd.readouterr()
    assert main(["sample", *common, "--class-label", "1"]) == 2
    assert "--class-label" in capfd.readouterr().err


def test_sample_heads_is_sample_guidance(tmp_path, monkeypatch, capfd):
    calls = _record(monkeypatch, "fairdiff.sampling.guided.guide_run")
    common = [str(tmp_path / "run"), "--n", "3", "--steps", "5", "--batch-size", "2", "--scheduler", "ddim",
              "--eta", "0", "--scale", "2", "--target", "0.4,0.6", "--device", "cpu", "-q"]
    _both(["sample", *common, "--guidance", str(tmp_path / "h")], ["sample", *common, "--heads", str(tmp_path / "h")],
          calls, capfd)
    assert calls[0] == calls[1]
    assert calls[0][1]["temperature"] == 8.0  # the pixel heads' default


def test_heads_fit_run_is_train_heads(tmp_path, monkeypatch):
    from fairdiff.cli import method_cmds

    seen = []
    monkeypatch.setattr(method_cmds, "cmd_train_heads", lambda a: seen.append(a) or 0)
    assert main(["heads", "fit", str(tmp_path / "run"), "--out", str(tmp_path / "h")]) == 0
    old = build_parser().parse_args(["train-heads", str(tmp_path / "run"), "--out", str(tmp_path / "h")])
    keys = ["run", "out", "steps", "scheduler", "n_per_step", "mode", "pool", "batch_size", "seed", "device", "quiet"]
    assert {k: getattr(seen[0], k) for k in keys} == {k: getattr(old, k) for k in keys}


def test_heads_fit_sd_is_sd_guide_fit_heads(tmp_path, monkeypatch, capfd):
    from fairdiff.cli import sd_guide_cmds

    seen = []
    monkeypatch.setattr(sd_guide_cmds, "cmd_fit_heads", lambda a: seen.append(a) or 0)
    common = ["--sd", str(tmp_path / "sd"), "--prompt", "a face", "--judge", str(tmp_path / "j.pt"), "--out",
              str(tmp_path / "h")]
    assert main(["heads", "fit", *common, "--cfg-scale", "3"]) == 0
    old = build_parser().parse_args(["sd-guide", "fit-heads", *common, "--guidance-scale", "3"])
    keys = ["sd", "prompt", "prompts", "judge", "out", "n", "steps", "pool", "heldout", "cfg_scale", "seed",
            "batch_size", "device", "quiet"]
    assert {k: getattr(seen[0], k) for k in keys} == {k: getattr(old, k) for k in keys}
    # options of the other kind of heads are refused, naming them
    for argv, needle in [(["heads", "fit", *common, "--n-per-step", "3"], "--n-per-step"),
                         (["heads", "fit", str(tmp_path / "run"), "--out", str(tmp_path / "h"), "--judge", "j.pt"],
                          "--judge"),
                         (["heads", "fit", "--out", str(tmp_path / "h")], "run folder is required"),
                         (["heads"], "give an action")]:
        capfd.readouterr()
        assert main(argv) == 2
        err = capfd.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and needle in err, err


def test_export_sd_run_is_sd_export(tmp_path, monkeypatch, capfd):
    run = _fake_sd_run(tmp_path)
    calls = _record(monkeypatch, "fairdiff.sampling.sd.export_sd_run", result=lambda run, out, **k: Path(out))
    _both(["sd-export", str(run), str(tmp_path / "o")], ["export", str(run), str(tmp_path / "o"), "--overwrite"],
          calls, capfd, rc=0)
    assert calls[0][0] == calls[1][0] == (str(run), str(tmp_path / "o"))


def test_data_tiny_sd_is_sd_init(tmp_path, monkeypatch, capfd):
    calls = _record(monkeypatch, "fairdiff.models.sd.build_tiny_sd", result=lambda out, **k: Path(out))
    _both(["sd-init", str(tmp_path / "a"), "--resolution", "16", "--seed", "3"],
          ["data", "tiny-sd", str(tmp_path / "a"), "--resolution", "16", "--seed", "3"], calls, capfd, rc=0)
    assert calls[0] == calls[1]


def test_train_sd_is_sd_finetune(tmp_path, monkeypatch, capfd):
    res = SimpleNamespace(steps=1, seconds=0.0, final_loss=0.0)
    calls = _record(monkeypatch, "fairdiff.training.trainer.finetune_sd_lora", result=res)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a face\n")
    common = ["--sd", str(tmp_path / "sd"), "--out", str(tmp_path / "r"), "train.steps=2", "-q"]
    _both(["sd-finetune", *common, "--prompts-file", str(prompts)], ["train", *common, "--prompts", str(prompts)],
          calls, capfd, rc=0)
    (a_args, a), (b_args, b) = calls
    assert a_args == b_args and a == b and a["prompt"] == "a photo" and a["prompts_file"] == str(prompts)
    capfd.readouterr()
    assert main(["train", "--prompt", "x", "--dry-run"]) == 2  # an SD option without --sd
    assert "--prompt" in capfd.readouterr().err


def test_train_vae_is_train_train_vae(tmp_path, monkeypatch, capfd):
    res = SimpleNamespace(steps=1, seconds=0.0, recon_mse=0.0, psnr=0.0, scaling_factor=1.0)
    calls = _record(monkeypatch, "fairdiff.training.vae.train_vae", result=res)
    common = ["train.steps=2", "--out", str(tmp_path / "v"), "-q", "--device", "cpu"]
    _both(["train-vae", *common], ["train", "--vae", *common], calls, capfd, rc=0)
    assert calls[0][0][1:] == calls[1][0][1:] and calls[0][1] == calls[1][1]
    assert calls[0][0][0] == calls[1][0][0]  # the same config
    for extra in (["--resume", "latest"], ["--stop-after", "1"], ["--sd", "x"]):
        capfd.readouterr()
        assert main(["train", "--vae", *common, *extra]) == 2
        assert extra[0] in capfd.readouterr().err


def test_evaluate_judge_is_classifier(tmp_path, monkeypatch, capfd):
    from fairdiff.config import dump_config, load_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(None)))
    calls = _record(monkeypatch, "fairdiff.evaluation.evaluate_run")
    judge = tmp_path / "j.pt"
    judge.write_bytes(b"x")
    _both(["evaluate", str(run), "--classifier", str(judge), "-q"], ["evaluate", str(run), "--judge", str(judge),
                                                                     "-q"], calls, capfd)
    assert calls[0] == calls[1] and calls[0][1]["classifier"] == str(judge)


def test_audit_cfg_scale_is_guidance_scale(tmp_path, monkeypatch, capfd):
    calls = _record(monkeypatch, "fairdiff.evaluation.audit.run_audit")
    common = ["--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "a")]
    _both(["audit", *common, "--guidance-scale", "3"], ["audit", *common, "--cfg-scale", "3"], calls, capfd)
    assert calls[0] == calls[1] and calls[0][1]["guidance_scale"] == 3.0
