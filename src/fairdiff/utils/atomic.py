"""Build a folder beside its place, then swap it in whole: readers see the old folder or the new one, never half.

``atomic_dir(final)`` is a context manager that yields a fresh hidden folder beside ``final`` (``.NAME.*.tmp``, so
it never meets another folder's name such as ``NAME.tmp``). When the block ends normally the folder replaces
``final``; when it raises, the temp folder is removed and ``final`` is left as it was. ``swap_dir(tmp, final)`` is
the swap alone, for callers that must name the temp folder themselves (several processes writing into it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fresh_dir_beside(final: str | Path, suffix: str = ".tmp") -> Path:
    """A new empty folder with a fresh hidden name beside ``final`` (``.NAME.*<suffix>``), with the permissions a
    plain ``mkdir`` would give it (``mkdtemp`` alone gives 0700)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    return tmp


def swap_dir(tmp: str | Path, final: str | Path) -> None:
    """Move the finished folder ``tmp`` to ``final``. An older ``final`` is first renamed to a fresh hidden name
    (``.NAME.*.old``) and removed only after the swap; if the swap fails it is put back."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
        try:
            os.replace(final, old)  # a folder may be renamed onto an empty folder
        except FileNotFoundError:  # another process moved it away first
            os.rmdir(old)
            old = None
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None and not final.exists():
            os.replace(old, final)
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(final: str | Path, *, keep_other: bool = False) -> Iterator[Path]:
    """Yield a fresh temp folder beside ``final``; on success swap it in, on an exception remove it (``final``
    untouched).

    ``keep_other``: for shared caches. When the swap fails because another process put its own ``final`` in
    place meanwhile, keep that copy and drop this one instead of raising.
    """
    final = Path(final)
    tmp = fresh_dir_beside(final)
    try:
        yield tmp
        try:
            swap_dir(tmp, final)
        except OSError:
            if not (keep_other and final.is_dir()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a swap
