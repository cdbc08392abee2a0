"""The saved state of an interrupted long draw (sampling, filtering): named arrays in one ``.npz`` under a key that
names everything that decides them, so that the same command run again continues and a run with other inputs
starts afresh. Written through :func:`fairdiff.utils.io.atomic_output` (never half a file)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np


def partial_path(out: str | Path) -> Path:
    """Where a long draw toward the folder ``out`` keeps what it has drawn so far: beside it, hidden."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial.npz")


def draw_in_chunks(draw, n: int, batch: int, chunk_images: int, path: str | Path, key: str,
                   on_chunk=None) -> tuple[np.ndarray, float]:
    """``draw(a, b)`` (images a..b-1) in chunks of whole batches of ``batch`` (about ``chunk_images`` images; the
    same batches, so the same images, as one call), each chunk but the last saved at ``path`` under ``key``: a
    draw stopped between chunks continues from the last one saved. ``on_chunk(k)``: called with each chunk's
    size (and first with the size restored). Returns the images and the seconds spent drawing them (an earlier,
    interrupted draw's included)."""
    import time

    saved = load_partial(path, key)
    parts = [] if saved is None else [saved["images"]]
    seconds = 0.0 if saved is None else float(saved["seconds"])
    done = sum(len(p) for p in parts)
    if on_chunk is not None and done:
        on_chunk(done)
    chunk = batch * max(1, -(-chunk_images // batch))
    for a in range(done, n, chunk):
        b = min(a + chunk, n)
        t = time.perf_counter()
        parts.append(draw(a, b))
        seconds += time.perf_counter() - t
        if on_chunk is not None:
            on_chunk(b - a)
        if b < n:
            save_partial(path, key, images=np.concatenate(parts), seconds=seconds)
    return np.concatenate(parts), seconds


def partial_key(**what) -> str:
    """The key of a saved state: ``what`` as sorted JSON (objects JSON does not know by their ``str``)."""
    return json.dumps(what, sort_keys=True, default=str)


def save_partial(path: str | Path, key: str, **arrays) -> None:
    from fairdiff.utils.io import atomic_output

    with atomic_output(path) as tmp:
        np.savez(tmp, key=np.array(key), **arrays)


def load_partial(path: str | Path, key: str) -> dict | None:
    """The arrays saved at ``path`` under ``key``; None when there is no file, it was saved under another key, or
    it cannot be read (a damaged file is then replaced by the next save)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return {name: z[name] for name in z.files if name != "key"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
