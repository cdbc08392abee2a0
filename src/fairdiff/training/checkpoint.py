"""Training checkpoints and the run folder's writer lock.

A run folder (layout: :mod:`fairdiff.runs`) holds ``checkpoint-N/`` folders while it trains: model, objective
modules, optimizer, LR schedule, EMA, RNG states and the step, as safetensors and JSON only (see
:mod:`fairdiff.training.state`); ``files.json`` lists each file's size and SHA-256. This module lists, checks,
resumes and prunes them, and prepares and locks the run folder before training.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from fairdiff.config import RunConfig, dump_config, load_config
from fairdiff.errors import RunDirError
from fairdiff.training.state import ALLOWED, FILE_LIST, STATE_FILE
from fairdiff.utils.io import disk_full_as_error, sha256_file, write_json

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Every ``checkpoint-N`` folder of the run, oldest first (intact or not: see :func:`check_checkpoint`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    out = []
    for p in run_dir.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    cks = list_checkpoints(run_dir)
    return cks[-1][1] if cks else None


def write_file_list(folder: Path, step: int) -> None:
    """Record the size and SHA-256 of every file of a finished checkpoint in ``files.json`` (written last)."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.iterdir()) if p.name != FILE_LIST}
    with disk_full_as_error(f"checkpoint {folder}"):
        write_json(folder / FILE_LIST, {"format": 1, "step": step, "files": files})


UNFINISHED_RE = re.compile(r"^(checkpoint-\d+\.tmp|\.checkpoint-\d+\..*\.(tmp|old))$")


def remove_unfinished_checkpoints(run_dir: Path) -> list[str]:
    """Remove the checkpoint folders that a save never finished (``checkpoint-N.tmp``, left by a process killed
    or a disk that filled up while saving; ``.checkpoint-N.*.old`` left by a swap): they are never resumed from,
    and they hold disk space. Call it only while holding the run's :class:`RunLock`. Returns the names removed."""
    gone = []
    for p in sorted(Path(run_dir).iterdir()):
        if UNFINISHED_RE.match(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    return gone


def check_checkpoint(folder: Path) -> str | None:
    """Why ``folder`` is not an intact checkpoint (None when it is).

    A file that a checkpoint never holds (a pickle, a folder, any other name) raises :class:`RunDirError`: it is
    never read, and a checkpoint that carries one is not used.
    """
    foreign = sorted(p.name for p in folder.iterdir() if not (p.is_file() and ALLOWED.match(p.name)))
    if foreign:
        raise RunDirError(
            f"checkpoint {folder} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which fairdiff "
            "never loads (checkpoints hold only safetensors and JSON); remove that file or the checkpoint")
    try:
        listed = json.loads((folder / FILE_LIST).read_text(encoding="utf-8"))["files"]
        assert isinstance(listed, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"{FILE_LIST} is missing or unreadable"
    present = {p.name for p in folder.iterdir()} - {FILE_LIST}
    if present != set(listed):
        return f"its files differ from {FILE_LIST} ({', '.join(sorted(present ^ set(listed))[:3])})"
    for name, facts in listed.items():
        p = folder / name
        try:
            if p.stat().st_size != facts["bytes"]:
                return f"{name} has {p.stat().st_size} bytes, not {facts['bytes']}"
            if sha256_file(p) != facts["sha256"]:
                return f"{name} does not match its SHA-256"
        except (OSError, KeyError, TypeError):
            return f"{name} cannot be checked"
    return None


def resolve_resume(run_dir: Path, resume: str | None, warn: bool = True) -> Path | None:
    """``latest`` -> the newest intact checkpoint (None if there is none yet); a path -> that checkpoint.

    A damaged newest checkpoint is skipped with a warning naming it; if checkpoints exist but none is intact,
    or a checkpoint holds a file that checkpoints never hold, one :class:`RunDirError`.
    """
    if resume is None:
        return None
    if resume == "latest":
        cks = list_checkpoints(run_dir)
        for _, p in reversed(cks):
            why = check_checkpoint(p)
            if why is None:
                return p
            if warn:
                log.warning("skipping damaged checkpoint %s: %s", p, why)
        if cks:
            raise RunDirError(f"no intact checkpoint in {run_dir} to resume from (the newest, {cks[-1][1].name}, "
                              "is damaged); start again with --overwrite")
        return None
    p = Path(resume)
    if not p.is_dir() or not (p / STATE_FILE).exists():
        raise RunDirError(f"--resume {resume}: not a checkpoint folder")
    why = check_checkpoint(p)
    if why is not None:
        raise RunDirError(f"--resume {resume}: the checkpoint is damaged ({why})")
    return p


def checkpoint_step(folder: Path, total_steps: int) -> int:
    """The step a checkpoint resumes at, checked against the run's own record: an integer in
    ``[0, total_steps]`` (``train.steps``), equal to the number of a ``checkpoint-N`` folder and to the step of its
    ``files.json``; anything else is one :class:`RunDirError` (a forged or mislabelled checkpoint)."""
    folder = Path(folder)
    try:
        step = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))["step"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RunDirError(f"cannot resume from {folder}: {STATE_FILE} is missing or unreadable") from None
    if isinstance(step, bool) or not isinstance(step, int):
        raise RunDirError(f"cannot resume from {folder}: {STATE_FILE} names step {step!r}, not an integer")
    if not 0 <= step <= total_steps:
        raise RunDirError(f"cannot resume from {folder}: its step {step} lies outside [0, {total_steps}] "
                          f"(train.steps); the checkpoint is not this run's")
    m = CKPT_RE.match(folder.name)
    if m and int(m.group(1)) != step:
        raise RunDirError(f"cannot resume from {folder}: {STATE_FILE} says step {step} but the folder is "
                          f"{folder.name}; the checkpoint is mislabelled or forged")
    try:
        listed = json.loads((folder / FILE_LIST).read_text(encoding="utf-8")).get("step", step)
    except (OSError, ValueError, AttributeError):
        listed = step
    if listed != step:
        raise RunDirError(f"cannot resume from {folder}: {STATE_FILE} says step {step} but {FILE_LIST} says "
                          f"{listed!r}; the checkpoint is mislabelled or forged")
    return step


RUN_LEGACY = {"run": ["config.yaml", "manifest.json"]}  # run folders written before the .fairdiff.json marker
LOCK_FILE = ".fairdiff.lock"


class RunLock:
    """One writer per run folder: an exclusive ``fcntl.flock`` on ``RUN/.fairdiff.lock``, held while training.

    The lock goes with the process: a killed run (or a bench worker that died with its bench) leaves no stale
    lock behind, since the kernel drops a dead process's flock; the file itself is never written.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._file = None

    def acquire(self) -> "RunLock":
        f = open(self.path, "a+")
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - no flock on this platform: no lock
            pass
        except OSError:
            f.close()
            raise RunDirError(f"{self.path.parent} is being written by another fairdiff process (it holds "
                              f"{LOCK_FILE}); wait for it to finish or choose another --out") from None
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def prepare_run_dir(run_dir: Path, cfg: RunConfig, resume: str | None, overwrite: bool, *, kind: str = "run",
                    legacy: dict | None = None, inputs: list | tuple = ()) -> RunLock:
    """Check the run folder before any work and lock it; return the held :class:`RunLock`.

    A folder is used when it is new or empty; a fairdiff run folder (one with the marker) needs --resume (same
    config) or --overwrite, which removes only a run folder that fairdiff wrote and that holds nothing else (see
    :func:`fairdiff.utils.outputs.foreign_entries`), never the current folder, one of its parents, or an input of
    this run (``model.pretrained``, ``model.vae``, ``data.path``, the --resume checkpoint, ``inputs``).
    ``kind``: the folder kind that the marker names (``sd-run`` for ``sd-finetune``); ``legacy``: the files of a
    run folder written before markers, which is refused with a hint rather than resumed or replaced.
    """
    from fairdiff.utils.outputs import MARKER, OutputDirError, check_output_dir, read_marker, refuse_foreign, \
        write_marker

    legacy = RUN_LEGACY if legacy is None else legacy
    inputs = [p for p in (cfg.model.pretrained, cfg.model.vae, cfg.data.path, *inputs) if p]
    if resume not in (None, "latest"):
        inputs.append(resume)
    marker = read_marker(run_dir) if run_dir.is_dir() else None
    is_run = marker is not None and marker["kind"] == kind
    if is_run and {p.name for p in run_dir.iterdir()} <= {MARKER, LOCK_FILE}:  # a start that failed before work
        action = "new"
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise OutputDirError(f"output {run_dir} is not writable (permission denied)")
    elif is_run and resume is not None and not overwrite:
        action = "reuse"
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise OutputDirError(f"output {run_dir} is not writable (permission denied)")
        old = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else None
        if old is not None and dump_config(old) != dump_config(cfg):
            diff = _first_difference(json.loads(json.dumps(_flat(old))), _flat(cfg))
            raise RunDirError(f"cannot resume {run_dir}: its config differs ({diff}); use --overwrite")
    elif is_run and not overwrite:
        raise RunDirError(f"output folder {run_dir} already holds a run; use --resume latest or --overwrite")
    else:
        action = check_output_dir(run_dir, kind, overwrite=overwrite, inputs=inputs, legacy_files=legacy)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire()  # before anything is removed: a running writer keeps its folder
    try:
        if action == "replace":
            refuse_foreign(run_dir, kind)  # (again, now that the folder is ours alone)
            for p in run_dir.iterdir():
                if p.name != LOCK_FILE:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        elif action == "reuse":
            gone = remove_unfinished_checkpoints(run_dir)  # a save cut short (killed, disk full): never resumed
            if gone:
                log.info("removed unfinished checkpoint folders: %s", ", ".join(gone))
        write_marker(run_dir, kind)
    except BaseException:
        lock.release()
        raise
    return lock


def _flat(cfg: RunConfig) -> dict:
    import dataclasses

    out = {}
    for sec, vals in dataclasses.asdict(cfg).items():
        if isinstance(vals, dict):
            for k, v in vals.items():
                out[f"{sec}.{k}"] = v
        else:
            out[sec] = vals
    return out


def _first_difference(a: dict, b: dict) -> str:
    for k in b:
        if a.get(k) != b[k]:
            return f"{k}: {a.get(k)!r} -> {b[k]!r}"
    return "?"


def prune_checkpoints(run_dir: Path, limit: int) -> None:
    cks = list_checkpoints(run_dir)
    for _, p in cks[: max(0, len(cks) - limit)]:
        shutil.rmtree(p, ignore_errors=True)
