"""The saved state of an interrupted long draw (sampling, filtering): named arrays in one ``.npz`` under a key that
names everything that decides them, so that the same command run again continues and a run with other inputs
starts afresh. Written through :func:`fairdiff.utils.io.atomic_output` (never half a file)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np


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
