"""File helpers: every file fairdiff writes is written atomically (temp file, then rename).

A full disk (``ENOSPC``, or ``EDQUOT``: a quota) while writing is a :class:`DiskFullError`: one line on the CLI,
and since every write goes to a temporary name first, nothing that was there before has changed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from fairdiff.errors import FairdiffError

DISK_FULL_ERRNOS = frozenset(e for e in (getattr(errno, "ENOSPC", None), getattr(errno, "EDQUOT", None)) if e)


class DiskFullError(FairdiffError):
    """The disk (or the user's quota) filled up while fairdiff wrote an output; what was there before is kept."""

    def __init__(self, message: str, errno_: int = errno.ENOSPC) -> None:
        super().__init__(message)
        self.errno = errno_


_OS_ERROR = re.compile(r"\(os error (\d+)\)|code: (\d+),")


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is an ``OSError`` for a full disk or an exceeded quota, or safetensors' error for one (not an
    ``OSError``: ``Error while serializing: I/O error: No space left on device (os error 28)``)."""
    if isinstance(e, OSError):
        return e.errno in DISK_FULL_ERRNOS
    if type(e).__name__ != "SafetensorError":
        return False
    return any(int(a or b) in DISK_FULL_ERRNOS for a, b in _OS_ERROR.findall(str(e)))


def disk_full_message(what: str | os.PathLike | None, e: BaseException | None = None, *, kept: bool = True) -> str:
    """The one line for a full disk while writing ``what`` (``kept``: the write was atomic, so nothing that was
    there before has changed). The CLI adds how to continue."""
    edquot = getattr(errno, "EDQUOT", None)
    reason = "quota exceeded" if edquot is not None and getattr(e, "errno", None) == edquot else "disk full"
    where = f" while writing {what}" if what else ""
    return f"{reason}{where}" + (": nothing that was there before was changed" if kept else "")


@contextmanager
def disk_full_as_error(what: str | os.PathLike) -> Iterator[None]:
    """Turn a full-disk ``OSError`` raised inside the block into a :class:`DiskFullError` naming ``what`` (an inner
    :class:`DiskFullError`, about one file of ``what``, is named after ``what`` too)."""
    try:
        yield
    except DiskFullError as e:
        raise DiskFullError(disk_full_message(what, e), e.errno) from None
    except Exception as e:
        if is_disk_full(e):
            raise DiskFullError(disk_full_message(what, e), getattr(e, "errno", None) or errno.ENOSPC) from None
        raise


def _remove_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers never see a half-written file; a full disk leaves the old file
    as it was (and no temporary file) and raises :class:`DiskFullError`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename (see :func:`atomic_write_text`)."""
    path = Path(path)
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            _remove_quietly(tmp)
            raise


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that pick a format by it still work); when
    the block ends normally it is renamed onto ``path``, when it raises it is removed and ``path`` is left as it
    was. For writers that take a file name (``savefig``, ``np.savez``, PIL, safetensors)::

        with atomic_output(out / "shares.png") as tmp:
            fig.savefig(tmp)

    A full disk inside the block raises :class:`DiskFullError` naming ``path``."""
    path = Path(path)
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # a fresh name, not a file: the writer creates it with the permissions it would give ``path``
        tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        except BaseException:
            _remove_quietly(tmp)
            raise


def _default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_json_checked(path: str | os.PathLike, what: str = "file") -> Any:
    """``read_json`` for files a user may have damaged: unreadable, truncated or non-UTF-8 JSON raises
    :class:`fairdiff.errors.FairdiffError` naming the file (one line on the CLI)."""
    from fairdiff.errors import FairdiffError

    try:
        return read_json(path)
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = e.strerror if isinstance(e, OSError) and e.strerror else " ".join(str(e).split())[:120]
        raise FairdiffError(f"cannot read {what} {path} (truncated or not JSON?): {reason}") from None


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append ``rows`` as JSON lines, all or none: when the write fails (a full disk), the file is cut back to
    its old length, so it never ends in half a line."""
    data = "".join(json.dumps(row, default=_default) + "\n" for row in rows).encode("utf-8")
    with disk_full_as_error(path), open(path, "ab") as f:
        start = f.seek(0, os.SEEK_END)
        try:
            f.write(data)
            f.flush()
        except BaseException:
            try:
                f.truncate(start)
            except OSError:
                pass
            raise


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_arrays(named: Iterable[tuple[str, Any]]) -> str:
    """The SHA-256 (hex) of named arrays, in the order given: each name, dtype, shape and bytes. Torch tensors
    (``module.state_dict().items()``) and numpy arrays alike; two models hash equal only when every weight is."""
    h = hashlib.sha256()
    for name, a in named:
        if hasattr(a, "detach"):  # a torch tensor, read without importing torch here
            a = a.detach().cpu()
            a = (a.float() if str(a.dtype) == "torch.bfloat16" else a).numpy()
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()
