"""The lock file and pyproject agree, and the lock is what is installed (a fresh `make` installs from it)."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _lock() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        assert version, f"lock line without an exact version: {line!r}"
        out[canonicalize_name(name)] = Version(version)
    return out


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("dev", "sd", "faces"):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def test_every_requirement_is_locked_within_its_range():
    lock = _lock()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is in pyproject.toml but not in requirements.lock (run `make lock`)"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={lock[name]}, outside pyproject's {req.specifier}"
        )


def test_lock_is_what_is_installed():
    if not (ROOT / ".venv").exists() or not str(Path(metadata.distribution("torch").locate_file(""))).startswith(
        str(ROOT / ".venv")
    ):
        pytest.skip("not running from the project's .venv")
    mismatched = []
    for name, version in _lock().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            mismatched.append(f"{name} (not installed)")
            continue
        if Version(installed.public) != version:
            mismatched.append(f"{name} {installed} != {version}")
    assert not mismatched, "installed packages differ from requirements.lock: " + ", ".join(mismatched)
