"""Output folders that never destroy what fairdiff did not write.

Every folder fairdiff creates as an output carries a marker file, ``.fairdiff.json``, naming its kind
(``run``, ``samples``, ``export``, ``eval``, ``compare``, ``bench``, ``sweep``, ``vae``, ``sd``...). An output folder
is accepted when it does not exist, is empty, or is fairdiff's own folder of the same kind; ``overwrite`` only ever
removes a folder that fairdiff wrote, and never the working directory, one of its ancestors, or an input of the
command. Folders written before markers existed are recognised by their files (``legacy_files``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from fairdiff.errors import RunDirError

MARKER = ".fairdiff.json"


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
    """The kind of fairdiff folder ``folder`` is, from its marker or (legacy) from the files it holds."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is not None:
        return marker["kind"]
    for kind, files in (legacy_files or {}).items():
        files = list(files)
        if files and all((folder / f).exists() for f in files):
            return kind
    return None


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
    caller continues or adds to it) or ``"replace"`` (fairdiff's own folder of ``kind`` and ``overwrite`` is set:
    call :func:`replace_output_dir` when the work starts). Also checks that the folder can be created/written.
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
    found = folder_kind(folder, legacy_files)
    if found is None:
        raise OutputDirError(
            f"output folder {folder} is not empty and was not written by fairdiff; choose a new or empty folder"
        )
    if found != kind:
        raise OutputDirError(f"output folder {folder} holds a fairdiff {found} folder, not {kind}; choose another")
    _check_writable(folder)
    if reuse:
        return "reuse"
    if overwrite:
        return "replace"
    raise OutputDirError(f"output folder {folder} already holds a fairdiff {kind} folder; use --overwrite")


def replace_output_dir(folder: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = (),
                       legacy_files: dict[str, Iterable[str]] | None = None) -> None:
    """Remove ``folder`` only if it is fairdiff's own folder of ``kind`` and not protected; then recreate it."""
    folder = Path(folder)
    if folder.exists():
        reason = _is_protected(folder, inputs)
        if reason:
            raise OutputDirError(f"refusing to remove {folder}: {reason}")
        if any(folder.iterdir()) and folder_kind(folder, legacy_files) != kind:
            raise OutputDirError(f"refusing to remove {folder}: it is not a fairdiff {kind} folder")
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
