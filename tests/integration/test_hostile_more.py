"""Issue 28: inputs that gave silent wrong results or tracebacks. Each must end in exit code 2 with one line on
stderr (or a correct result)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fairdiff.cli.main import main
from fairdiff.config import load_config, save_config
from tests.conftest import TINY


class ThreeClassJudge(torch.nn.Module):
    """A three-class judge (the run has two groups)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, -m, m * 0], 1)


class NanJudge(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 2), float("nan"))


class FlatJudge(torch.nn.Module):
    """Takes exactly 1x16x16 images (a linear layer on the flattened pixels)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(256, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _judge(tmp: Path, module: torch.nn.Module, name: str) -> Path:
    path = tmp / f"{name}.pt"
    torch.jit.script(module).save(str(path))
    return path


def _samples(tmp: Path, size: int = 16, n: int = 4) -> tuple[Path, Path]:
    cfg = tmp / "c.yaml"
    save_config(load_config(None, list(TINY)), cfg)
    folder = tmp / "s"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez_compressed(folder / "samples.npz", images=rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8),
                        seeds=np.arange(n))
    return folder, cfg


def _refused(argv: list[str], capfd, *needles: str) -> None:
    assert main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_evaluate_refuses_a_judge_with_another_number_of_classes(tmp_path, capfd):
    samples, cfg = _samples(tmp_path)
    judge = _judge(tmp_path, ThreeClassJudge(), "three")
    _refused(["evaluate", str(samples), "--config", str(cfg), "--classifier", str(judge), "-q"], capfd,
             "3 classes", "2 groups")
    assert not (samples / "metrics.json").exists()


@pytest.mark.parametrize("judge_cls, size, needle", [(NanJudge, 16, "non-finite"), (FlatJudge, 20, "failed on")])
def test_evaluate_refuses_a_judge_that_does_not_work_on_the_images(tmp_path, capfd, judge_cls, size, needle):
    samples, cfg = _samples(tmp_path, size=size)
    judge = _judge(tmp_path, judge_cls(), judge_cls.__name__)
    _refused(["evaluate", str(samples), "--config", str(cfg), "--classifier", str(judge), "-q"], capfd, needle)
    assert not (samples / "metrics.json").exists()


def test_predict_refuses_non_finite_logits_in_a_later_batch():
    from fairdiff.errors import FairdiffError
    from fairdiff.evaluation.judges import from_callable

    def fn(images):
        out = np.zeros((len(images), 2))
        out[images[:, 0, 0, 0] == 7] = np.nan
        return out

    clf = from_callable(fn, "half-nan", 2)
    images = np.zeros((6, 1, 4, 4), np.uint8)
    images[5, 0, 0, 0] = 7
    clf.check_judge(images)  # the first rows are fine
    with pytest.raises(FairdiffError, match="non-finite"):
        clf.predict(images, batch_size=2)


@pytest.mark.parametrize("override, needle", [("method.name=reweight", "--reweight"), ("method.alpha=0.3", "--alphas"),
                                              ("train.seed=4", "--seeds")])
def test_sweep_refuses_overrides_of_what_it_sweeps(tmp_path, capfd, override, needle):
    out = tmp_path / "sw"
    _refused(["sweep", "--alphas", "0", "--seeds", "0", "--out", str(out), *TINY, "train.steps=2", override, "-q"],
             capfd, needle)
    assert not out.exists()


def test_sweep_cells_keep_ddm():
    from fairdiff.bench.matrix import sweep_cells

    cells = sweep_cells([0.0, 0.1], [0], ["method.name=ddm"], include_reweight=True)
    assert [c.name for c in cells] == ["ddm-a0-s0", "ddm-a0.1-s0", "reweight-s0"]


CKPT_ARGS = [*TINY, "train.steps=6", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("forged") / "stopped"
    assert main(["train", *CKPT_ARGS, "--out", str(run), "--stop-after", "4", "--quiet"]) == 0
    assert (run / "checkpoint-4").is_dir()
    return run


@pytest.mark.parametrize("step, needle", [(-5, "outside [0, 6]"), (999999, "outside [0, 6]"), (2, "checkpoint-4")])
@pytest.mark.parametrize("how", ["latest", "path"])
def test_resume_refuses_a_forged_checkpoint_step(stopped_run, tmp_path, capfd, step, needle, how):
    """trainer_state.json rewritten with another step, and files.json re-hashed to match it."""
    import json
    import shutil

    from fairdiff.training.checkpoint import check_checkpoint, write_file_list

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    ck = run / "checkpoint-4"
    (ck / "trainer_state.json").write_text(json.dumps({"step": step}))
    write_file_list(ck, step)
    assert check_checkpoint(ck) is None  # the hashes match: only the step gives the forgery away
    before = sorted(p.name for p in run.iterdir())
    resume = "latest" if how == "latest" else str(ck)
    capfd.readouterr()
    _refused(["train", *CKPT_ARGS, "--out", str(run), "--resume", resume, "--quiet"], capfd, needle)
    assert sorted(p.name for p in run.iterdir()) == before
    assert not (run / "model").exists()


def test_resume_of_an_honest_checkpoint_still_works(stopped_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    assert main(["train", *CKPT_ARGS, "--out", str(run), "--resume", "latest", "--quiet"]) == 0
    assert (run / "checkpoint-6").is_dir()


def test_evaluate_run_refuses_a_three_class_judge_before_sampling(stopped_run, tmp_path, capfd):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    shutil.rmtree(run / "samples", ignore_errors=True)
    judge = _judge(tmp_path, ThreeClassJudge(), "three")
    _refused(["evaluate", str(run), "--classifier", str(judge), "-q"], capfd, "3 classes", "2 groups")
    assert not (run / "samples").exists() and not (run / "metrics.json").exists()
