"""Checked weight files: one line for a missing, truncated, corrupt or pickled file, before a loader reads it.

fairdiff reads weights as safetensors only (a pickle can run code when it is read). A loader of a model folder
(an SD component, a VAE, a LoRA) first calls :func:`check_weights_folder` / :func:`check_safetensors_file`, which
read only the file's header: the 8-byte header length, the JSON header, and the data size the header promises
against the file's size. A pickled file (``torch.save``: a zip or a raw pickle) is named as such and never read.
Errors are :class:`WeightsError` (a :class:`~fairdiff.errors.FairdiffError`: one line, naming the file).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from fairdiff.errors import FairdiffError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class WeightsError(FairdiffError):
    """A weights file that is missing, truncated, corrupt or not safetensors."""


def _looks_pickled(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "a torch.save (zip/pickle) file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    return None


def check_safetensors_file(path: str | Path, what: str = "weights") -> Path:
    """``path`` if it is a complete safetensors file, else one :class:`WeightsError` naming it and why."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{what}: {p} is missing")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            pickled = _looks_pickled(head)
            if pickled:
                raise WeightsError(f"{what}: {p} is {pickled}, not safetensors; fairdiff never loads pickled "
                                   f"weights (convert it to safetensors)")
            if len(head) < 8:
                raise WeightsError(f"{what}: {p} is empty or truncated ({size} bytes; not a safetensors file)")
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > _MAX_HEADER or n > size - 8:
                raise WeightsError(f"{what}: {p} is truncated or not a safetensors file (header length {n}, file "
                                   f"{size} bytes)")
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
        raise WeightsError(f"{what}: cannot read {p}: {e.strerror or type(e).__name__}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsError(f"{what}: {p} is corrupt (its safetensors header is not JSON)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{what}: {p} is corrupt (its safetensors header is not a mapping)")
    end = 0
    try:
        for key, info in header.items():
            if key == "__metadata__":
                continue
            lo, hi = info["data_offsets"]
            if not 0 <= int(lo) <= int(hi):
                raise ValueError
            end = max(end, int(hi))
    except (TypeError, KeyError, ValueError):
        raise WeightsError(f"{what}: {p} is corrupt (bad tensor entries in its safetensors header)") from None
    if 8 + n + end != size:
        raise WeightsError(f"{what}: {p} is truncated or corrupt ({size} bytes, its header promises {8 + n + end})")
    return p


def check_weights_folder(folder: str | Path, what: str, names: tuple[str, ...] | None = None) -> list[Path]:
    """The safetensors files of a model folder (``config.json`` + weights), each checked.

    ``names``: the file names a loader reads (e.g. ``diffusion_pytorch_model.safetensors``); when given, at least
    one must be there (or a sharded ``*.safetensors.index.json``). A folder holding only pickled weights is named as
    such."""
    d = Path(folder)
    if not d.is_dir():
        raise WeightsError(f"{what}: {d} is missing")
    files = sorted(f for f in d.glob("*.safetensors") if f.is_file())
    wanted = [f for f in files if names is None or f.name in names or "-of-" in f.name]
    if not wanted:
        pickles = sorted(f.name for f in d.iterdir() if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise WeightsError(f"{what}: {d} holds only pickled weights ({', '.join(pickles[:3])}), which fairdiff "
                               f"never loads; convert them to safetensors")
        if names and files:
            raise WeightsError(f"{what}: {d} holds no {names[0]} (found {', '.join(f.name for f in files[:3])})")
        expected = f" (expected {names[0]})" if names else ""
        raise WeightsError(f"{what}: {d} holds no safetensors weights file{expected}")
    for f in wanted:
        check_safetensors_file(f, what)
    return wanted


def first_line(e: BaseException, limit: int = 200) -> str:
    """A loader exception as a short single line (for wrapping into a :class:`WeightsError`)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:limit]


def loader_errors() -> tuple[type[BaseException], ...]:
    """What a diffusers / transformers / peft loader raises on a damaged or foreign file (wrapped into one line)."""
    errors: list[type[BaseException]] = [OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError,
                                         json.JSONDecodeError, UnicodeDecodeError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def quiet_loading() -> None:
    """No per-file loading bars or logged load errors on stderr (a load error is raised and reported once, as one
    line, by the caller)."""
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
        dlog.disable_progress_bar()
        dlog.set_verbosity(dlog.CRITICAL)
    except ImportError:  # pragma: no cover
        pass
