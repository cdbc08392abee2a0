"""Pieces of the training loop that are not the step itself: stop on a signal, stop on inf / nan, save a
checkpoint atomically, trim the log on resume, and the optional tracker."""

from __future__ import annotations

import json
import shutil
import signal
import threading
from pathlib import Path

import torch

from fairdiff.errors import FairdiffError
from fairdiff.utils.atomic import swap_dir
from fairdiff.training.checkpoint import latest_checkpoint, prune_checkpoints, write_file_list
from fairdiff.training.state import save_training_state
from fairdiff.utils.io import atomic_write_text, read_jsonl


class TrainingStopped(KeyboardInterrupt):
    """Training ended by SIGINT / SIGTERM after saving a checkpoint at ``step``; the message says so."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"stopped at step {step}; checkpoint saved; continue with --resume latest")
        self.step, self.signum = step, signum


class TrainingDiverged(FairdiffError):
    """The training loss (or the weights) became inf / nan; nothing after the last good checkpoint is saved."""


class StopOnSignal:
    """While the loop runs, SIGINT / SIGTERM only set a flag: the step finishes, a checkpoint is saved, then the
    run stops. A second signal acts at once (the previous handlers are back after the first)."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for sig, old in self._old.items():
            if old is not None:
                signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False

    def requested(self, accelerator) -> bool:
        """Whether any process was signalled (all processes agree, so they stop at the same step)."""
        if accelerator.num_processes == 1:
            return bool(self.signum)
        flag = torch.tensor([float(bool(self.signum))], device=accelerator.device)
        return bool(accelerator.gather(flag).max().item())


class Health:
    """Notes the first step whose loss is inf / nan without a host sync per step; :meth:`check` runs before
    anything is logged or saved, so a diverged run stops with one line and keeps its last good checkpoint."""

    def __init__(self, accelerator, params: list) -> None:
        self.accelerator, self.params = accelerator, params
        self.first_bad = torch.zeros((), dtype=torch.long, device=accelerator.device)  # 0 = none yet

    def record(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach().float())
        self.first_bad = self.first_bad + ((self.first_bad == 0) & bad).long() * step

    def check(self, step: int, run_dir: Path, weights: bool) -> None:
        """Raise :class:`TrainingDiverged` if a loss so far (or, with ``weights``, a trained weight) is inf / nan."""
        found = self.accelerator.gather(self.first_bad.reshape(1))
        found = found[found > 0]
        what = None
        if len(found):
            what = f"the training loss became inf/nan at step {int(found.min())}"
        elif weights and not bool(torch.stack([torch.isfinite(p.detach()).all() for p in self.params]).all()):
            what = f"the weights became inf/nan by step {step}"
        if what:
            ck = latest_checkpoint(run_dir)
            kept = f"the last good checkpoint, {ck.name}, is kept" if ck else "no checkpoint was saved"
            raise TrainingDiverged(f"{what}; {kept}; lower train.lr or check the data")


class nullcontext:
    """A context that does nothing (gradient accumulation without ``no_sync``)."""

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def tracker() -> str | None:
    """``tensorboard`` when it is installed (accelerate then logs there too), else None."""
    try:
        import tensorboard  # noqa: F401

        return "tensorboard"
    except ImportError:
        return None


def save_checkpoint(accelerator, run_dir: Path, step: int, limit: int, state: dict) -> None:
    """The training state into ``checkpoint-N.tmp``, its file list last, then an atomic rename; old ones pruned."""
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f"checkpoint-{step}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed while saving
    accelerator.wait_for_everyone()
    save_training_state(tmp, step=step, main=accelerator.is_main_process, **state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_file_list(tmp, step)
        swap_dir(tmp, final)
        prune_checkpoints(run_dir, max(1, limit))
    accelerator.wait_for_everyone()


def trim_stats(run_dir: Path, step: int) -> None:
    """Drop the log rows written after the checkpoint a run resumes from."""
    if (run_dir / "stats.jsonl").exists():
        rows = [r for r in read_jsonl(run_dir / "stats.jsonl") if r.get("step", 0) <= step]
        atomic_write_text(run_dir / "stats.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
