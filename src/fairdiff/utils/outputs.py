"""Output folders that never destroy what fairdiff did not write.

Every folder fairdiff creates as an output carries a marker file, ``.fairdiff.json``, naming its kind
(``run``, ``samples``, ``export``, ``eval``, ``compare``, ``bench``, ``sweep``, ``vae``, ``sd``...). An output folder
is accepted when it does not exist, is empty, or is fairdiff's own folder of the same kind (it carries the marker);
``overwrite`` only ever removes a marked folder that holds nothing but what fairdiff writes for its kind
(:data:`OWN_FILES`), and never the working directory, one of its ancestors, or an input of the command.

A folder without the marker is never taken for fairdiff's own, not even when it holds the files fairdiff writes
(``legacy_files``: folders written before markers existed look like that, and so may a user's own folder): it is
refused with a hint, and whoever knows it is fairdiff's can add the marker (:func:`legacy_hint`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from fairdiff.errors import RunDirError

MARKER = ".fairdiff.json"
LOCK_FILE = ".fairdiff.lock"  # a run folder's writer lock (fairdiff.training.checkpoint.RunLock)

# What fairdiff writes at the top level of an output folder of each kind (fnmatch patterns). ``overwrite``
# replaces a marked folder only when everything in it matches its kind's list; a listed sub-folder with a marker of
# its own (a run's ``samples/``) is checked against its own kind's list. Anything else is someone else's: the
# command refuses and names it. A kind not listed here is replaced on its marker alone.
_ALWAYS = (MARKER, LOCK_FILE, ".*.tmp", ".*.tmp.*", ".*.old")  # + atomic writes and folders built beside their place
_EVAL = ("metrics.json", "report.md", "shares.png", "samples.png")  # fairdiff evaluate
_RUN = ("config.yaml", "manifest.json", "stats.jsonl", "method.json", "sd.json", "base.json", "debias.json",
        "cell.json", "checkpoint-*", "model", "model.tmp", "model.old", "samples", "grids", "logs", "train_grid.png",
        "heads", "heads.safetensors", "heads.json", "curve", "curve.csv", "curve.json", "step-*", "*.png",
        "report.html", *_EVAL)
_MATRIX = ("cells", "table.md", "table.csv", "summary.json", "results.md", "results.csv", "runs.csv", "report.md",
           "report.html", "*.png", "*.csv.tmp")
OWN_FILES: dict[str, tuple[str, ...]] = {
    "run": _RUN,
    "sd-run": _RUN,
    "samples": ("samples.npz", "meta.json", "grid.png", "*.png", *_EVAL),
    "export": ("model_index.json", "unet", "scheduler", "vae"),
    "vae": ("config.yaml", "vae", "vae.tmp", "stats.jsonl", "metrics.json", "recon.png", "logs"),
    "sd": ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor",
           "safety_checker", "image_encoder"),
    "heads": ("config.json", "*.safetensors", "record.json"),
    "sd-guided": ("prompts.json",),
    "debias": ("config.yaml", "manifest.json", "samples", "debias.json", "verdicts.csv", "clusters.npz", "heads",
               "images", "mixed", "cell.json", *_EVAL),
    "demo": _MATRIX,
    "bench": _MATRIX,
    "sweep": _MATRIX,
    "compare": ("compare.md", "compare.csv", "compare.png"),
    "eval": _EVAL,
}
# sub-folders under names of their own (not in OWN_FILES) that a kind holds: the marker kinds they must carry
OWN_SUBFOLDERS: dict[str, tuple[str, ...]] = {"sd-guided": ("samples",)}  # one samples folder per prompt


class OutputDirError(RunDirError):
    """An output folder that may not be used; the CLI prints the message as one line (exit 2)."""


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The folder's marker (``{"kind": ...}``), or None when it has none or it is unreadable."""
    p = Path(folder) / MARKER
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def write_marker(folder: str | os.PathLike, kind: str, **facts) -> None:
    """Mark ``folder`` as fairdiff's own output of ``kind`` (atomic write)."""
    from fairdiff.utils.io import write_json

    write_json(Path(folder) / MARKER, {"kind": kind, **facts})


def folder_kind(folder: str | os.PathLike, legacy_files: dict[str, Iterable[str]] | None = None) -> str | None:
    """The kind of fairdiff folder ``folder`` is, from its marker or (legacy) from the files it holds.

    Only the marker makes a folder fairdiff's own: the legacy answer is for messages (:func:`legacy_hint`)."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is not None:
        return marker["kind"]
    for kind, files in (legacy_files or {}).items():
        files = list(files)
        if files and all((folder / f).exists() for f in files):
            return kind
    return None


def legacy_hint(folder: str | os.PathLike, kind: str) -> str:
    """One line for a folder that looks like fairdiff's ``kind`` folder but carries no marker."""
    return (f"output folder {folder} looks like a fairdiff {kind} folder but has no {MARKER} marker (written by an "
            f"older fairdiff, or not by fairdiff), so fairdiff will not write into it or remove it: choose a new or "
            f"empty folder, or, if fairdiff wrote everything in it, add {Path(folder) / MARKER} containing "
            f'{{"kind": "{kind}"}}')


def foreign_entries(folder: str | os.PathLike, kind: str) -> list[str]:
    """What ``folder`` (fairdiff's own folder of ``kind``) holds that fairdiff does not write there (paths relative
    to ``folder``, sorted); ``[]`` for a kind without a list in :data:`OWN_FILES`."""
    if kind not in OWN_FILES:
        return []
    folder = Path(folder)
    patterns = (*_ALWAYS, *OWN_FILES[kind])
    out = []
    for p in sorted(folder.iterdir()):
        sub = read_marker(p) if p.is_dir() and not p.is_symlink() else None
        listed = any(fnmatch.fnmatchcase(p.name, pat) for pat in patterns)
        if sub is not None and (listed or sub["kind"] in OWN_SUBFOLDERS.get(kind, ())):
            out += [f"{p.name}/{f}" for f in foreign_entries(p, sub["kind"])]  # checked against its own kind
        elif not listed:
            out.append(p.name)
    return out


def refuse_foreign(folder: str | os.PathLike, kind: str) -> None:
    """Raise one line naming what in ``folder`` fairdiff did not write, before ``folder`` is replaced."""
    foreign = foreign_entries(folder, kind)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OutputDirError(f"output folder {folder} holds {foreign[0]}{more}, which fairdiff did not write, so it "
                             f"will not replace the folder: move that out first or choose another folder")


def _not_ours(folder: Path, kind: str, legacy_files: dict[str, Iterable[str]] | None) -> OutputDirError:
    """The error for a non-empty folder without a marker."""
    legacy = folder_kind(folder, {k: v for k, v in (legacy_files or {}).items() if k == kind})
    if legacy is not None:
        return OutputDirError(legacy_hint(folder, legacy))
    return OutputDirError(
        f"output folder {folder} is not empty and was not written by fairdiff; choose a new or empty folder")


def _is_protected(folder: Path, inputs: Iterable[str | os.PathLike]) -> str | None:
    """Why ``folder`` may never be removed, or None."""
    target = folder.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        return "it is the current directory or one of its parents"
    if target == Path(target.anchor) or target == Path.home().resolve():
        return "it is a root or home folder"
    for inp in inputs:
        ip = Path(inp).resolve()
        if target == ip or target in ip.parents:
            return f"it is (or holds) the input {inp}"
    return None


def check_output_dir(
    folder: str | os.PathLike,
    kind: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    legacy_files: dict[str, Iterable[str]] | None = None,
    reuse: bool = False,
    whole: bool = False,
) -> str:
    """Decide, before any work, what may happen to ``folder``; raise :class:`OutputDirError` when nothing may.

    Returns ``"new"`` (absent or empty), ``"reuse"`` (fairdiff's own folder of ``kind`` and ``reuse`` is set: the
    caller continues or adds to it) or ``"replace"`` (fairdiff's own folder of ``kind`` that holds nothing else
    and ``overwrite`` is set: call :func:`replace_output_dir` when the work starts). "Own" means marked: a folder
    without the marker is refused even when its files look like fairdiff's (``legacy_files``: the hint says how
    to mark it). Also checks that the folder can be created/written.
    ``whole``: the command creates or replaces the folder as a whole, so the current directory, its parents and
    the inputs are refused even when empty.
    """
    folder = Path(folder)
    inputs = list(inputs)
    if folder.exists() and not folder.is_dir():
        raise OutputDirError(f"output {folder} exists and is not a folder")
    if folder.exists():
        reason = _is_protected(folder, inputs)
        if reason and (whole or any(folder.iterdir())):
            raise OutputDirError(f"output folder {folder} cannot be used: {reason}")
    if not folder.exists() or not any(folder.iterdir()):
        _check_writable(folder)
        return "new"
    marker = read_marker(folder)
    if marker is None:
        raise _not_ours(folder, kind, legacy_files)
    found = marker["kind"]
    if found != kind:
        raise OutputDirError(f"output folder {folder} holds a fairdiff {found} folder, not {kind}; choose another")
    _check_writable(folder)
    if reuse:
        return "reuse"
    if overwrite:
        refuse_foreign(folder, kind)
        return "replace"
    raise OutputDirError(f"output folder {folder} already holds a fairdiff {kind} folder; use --overwrite")


def replace_output_dir(folder: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = (),
                       legacy_files: dict[str, Iterable[str]] | None = None) -> None:
    """Remove ``folder`` only if it is fairdiff's own (marked) folder of ``kind``, holds nothing fairdiff did not
    write and is not protected; then recreate it."""
    folder = Path(folder)
    if folder.exists():
        reason = _is_protected(folder, inputs)
        if reason:
            raise OutputDirError(f"refusing to remove {folder}: {reason}")
        if any(folder.iterdir()):
            marker = read_marker(folder)
            if marker is None:
                raise _not_ours(folder, kind, legacy_files)
            if marker["kind"] != kind:
                raise OutputDirError(f"refusing to remove {folder}: it is not a fairdiff {kind} folder")
            refuse_foreign(folder, kind)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, kind)


def _check_writable(folder: Path) -> None:
    """Raise one line when ``folder`` (or the nearest existing ancestor it would be created in) is not writable."""
    p = folder
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"output {folder} cannot be created: {p} is a file")
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputDirError(f"output {folder} is not writable ({p}: permission denied)")
