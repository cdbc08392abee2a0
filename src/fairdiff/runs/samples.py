"""A samples folder (``RUN/samples/`` by default): checked before any sampling, written atomically, read back.

It holds one ``seedNNNNNN.png`` per image (optional), ``samples.npz`` (``images`` uint8 ``[N, C, H, W]``, ``seeds``,
``class_labels`` of a conditional model), ``grid.png`` (the first 64), ``meta.json`` (how they were made) and the
``.fairdiff.json`` marker of kind ``samples``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from fairdiff.errors import RunDirError
from fairdiff.runs.folder import SAMPLES_DIR
from fairdiff.utils.images import save_grid, save_png
from fairdiff.utils.outputs import OutputDirError, check_output_dir, write_marker

SAMPLES_KIND = "samples"
LEGACY_SAMPLES = {SAMPLES_KIND: ["samples.npz"]}  # samples folders written before markers existed
SAMPLES_FILE = "samples.npz"
META_FILE = "meta.json"


def prepare_samples_dir(out_dir: str | Path, inputs: list[str | Path] = ()) -> Path:
    """Check, before any sampling, that ``out_dir`` may receive samples: absent, empty, or fairdiff's own (marked)
    samples folder holding nothing else (it is then replaced), never an input, the current folder or one of its
    parents; writable. A ``samples.npz`` folder without the marker is refused with a hint, never replaced."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, SAMPLES_KIND, overwrite=True, inputs=inputs, legacy_files=LEGACY_SAMPLES, whole=True)
    parent = out_dir.resolve().parent  # the new folder is built beside it, then renamed into place
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"output {out_dir} cannot be written: {parent} is not writable (permission denied)")
    return out_dir


def write_samples(out_dir: Path, images: np.ndarray, seeds: list[int], class_labels=None, meta: dict | None = None,
                  png: bool = True, inputs: list[str | Path] = ()) -> Path:
    """Write uint8 images to ``out_dir`` atomically (a temp folder, then a rename), with ``meta.json`` (how they
    were made) and the ``.fairdiff.json`` marker. An existing ``out_dir`` is replaced only when it is empty or
    fairdiff's own samples folder (see :func:`prepare_samples_dir`). A full disk raises
    :class:`fairdiff.utils.io.DiskFullError`; the half-written temp folder is removed and ``out_dir`` is as it was."""
    from fairdiff.utils.io import disk_full_as_error

    out_dir = prepare_samples_dir(out_dir, inputs)
    with disk_full_as_error(out_dir):
        return _write_samples(out_dir, images, seeds, class_labels, meta, png)


def _write_samples(out_dir: Path, images: np.ndarray, seeds: list[int], class_labels, meta: dict | None,
                   png: bool) -> Path:
    from fairdiff.utils.io import write_json

    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out_dir.resolve().name}.", suffix=".tmp"))
    old = None
    try:
        if png:
            for img, s in zip(images, seeds):
                save_png(img, tmp / f"seed{s:06d}.png")
        arrays = {"images": images, "seeds": np.asarray(seeds, np.int64)}
        if class_labels is not None:
            arrays["class_labels"] = np.asarray(class_labels, np.int64)
        np.savez_compressed(tmp / SAMPLES_FILE, **arrays)
        save_grid(images[:64], tmp / "grid.png", nrow=8)
        if meta is not None:
            write_json(tmp / META_FILE, meta)
        write_marker(tmp, SAMPLES_KIND)
        if out_dir.exists():
            if any(out_dir.iterdir()):
                old = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
                out_dir.rename(old)
            else:
                out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        if old is not None and not out_dir.exists():
            old.rename(out_dir)  # (the swap itself failed: the earlier samples go back)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def read_samples_meta(folder: str | Path) -> dict | None:
    """The ``meta.json`` a samples folder was written with (how its images were made), or None."""
    p = Path(folder) / META_FILE
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_samples(path: str | Path) -> dict:
    """Read a samples folder (``samples.npz``) or a run folder (``samples/samples.npz``)."""
    p = Path(path)
    for cand in (p, p / SAMPLES_FILE, p / SAMPLES_DIR / SAMPLES_FILE):
        if cand.is_file():
            try:
                with np.load(cand) as z:
                    return {k: z[k] for k in z.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise RunDirError(f"cannot read {cand} (truncated or not a samples file): {e}") from None
    raise RunDirError(f"no samples found at {p} (expected samples.npz; run 'fairdiff sample' first)")
