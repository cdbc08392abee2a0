"""Config values that used to give a silently wrong run: duplicate YAML keys, a run name that is a path,
fp16 on a machine without a GPU, negative seeds."""

from __future__ import annotations

import pytest
import torch

from fairdiff.cli.main import main
from fairdiff.config import RunConfig, load_config, validate
from fairdiff.errors import ConfigError
from fairdiff.utils.typed_config import read_yaml_file


@pytest.mark.parametrize("text, key", [
    ("train:\n  steps: 2\nname: a\ntrain:\n  lr: 0.1\n", "'train' twice (lines 1 and 4)"),
    ("train:\n  steps: 2\n  lr: 0.1\n  steps: 3\n", "'train.steps' twice (lines 2 and 4)"),
    ("data:\n  groups: [0, 1]\nname: a\nname: b\n", "'name' twice"),
    ("x:\n  - {a: 1, a: 2}\n", "'x[0].a' twice"),
])
def test_duplicate_yaml_keys_are_refused(tmp_path, text, key):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_yaml_file(p)
    msg = str(e.value)
    assert key in msg and str(p) in msg and "\n" not in msg


def test_yaml_without_duplicates_reads_as_before(tmp_path):
    """A merge key followed by an override is not a duplicate; 1 and '1' are two keys; empty is None."""
    p = tmp_path / "c.yaml"
    p.write_text("base: &b {steps: 1, lr: 2}\ntrain:\n  <<: *b\n  steps: 3\nother: *b\n1: a\n'1': b\n")
    assert read_yaml_file(p) == {"base": {"steps": 1, "lr": 2}, "train": {"steps": 3, "lr": 2},
                                 "other": {"steps": 1, "lr": 2}, 1: "a", "1": "b"}
    p.write_text("")
    assert read_yaml_file(p) is None


def test_duplicate_key_in_a_run_config_is_one_line(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("sample:\n  steps: 5\n  steps: 50\n")
    assert main(["train", "--config", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'sample.steps' twice" in err and str(p) in err


@pytest.mark.parametrize("name", ["../../escaped", "..", ".", "", "a/b", "/abs", "a\\b", "a b", "run\n", "c:x"])
def test_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ConfigError, match="^name: "):
        validate(RunConfig(name=name))


def test_run_name_override_that_escapes_is_refused():
    with pytest.raises(ConfigError, match="^name: '../../escaped' is not a plain folder name"):
        load_config(None, ["name=../../escaped"])


@pytest.mark.parametrize("name", ["run", "my-run_2.v1", "base-digits-01", ".hidden", "caf\u00e9"])
def test_plain_run_names_are_accepted(name):
    assert load_config(None, [f"name={name}"]).name == name


@pytest.mark.parametrize("key", ["sample.seed", "eval.seed"])
def test_negative_seeds_in_the_config_are_refused(key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [f"{key}=-1"])


def _no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)


def test_fp16_without_a_gpu_is_refused_before_anything_is_written(tmp_path, tiny_overrides, capsys, monkeypatch):
    """accelerate would train in fp32 on the CPU while config.yaml says fp16."""
    _no_gpu(monkeypatch)
    out = tmp_path / "r"
    assert main(["train", *tiny_overrides, "train.steps=1", "train.mixed_precision=fp16", "--out", str(out),
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fp16" in err and "bf16" in err and "no" in err
    assert not out.exists()


def test_bf16_and_no_pass_the_precision_check_on_the_cpu(monkeypatch):
    from fairdiff.training.trainer import check_mixed_precision

    _no_gpu(monkeypatch)
    check_mixed_precision("no")
    check_mixed_precision("bf16")
    with pytest.raises(ConfigError, match="train.mixed_precision=fp16"):
        check_mixed_precision("fp16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_mixed_precision("fp16")  # a GPU: accelerate really uses fp16
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    with pytest.raises(ConfigError):
        check_mixed_precision("fp16")
