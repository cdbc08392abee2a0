"""The test suite never reads or writes the user's cache (~/.cache/fairdiff), not even from module fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fairdiff.data.sources import cache_dir


@pytest.fixture(scope="module")
def seen_by_module_fixture() -> Path:
    return cache_dir()


def test_module_fixtures_see_the_temporary_cache(seen_by_module_fixture, tmp_path_factory):
    base = tmp_path_factory.getbasetemp().resolve()
    assert seen_by_module_fixture.resolve().is_relative_to(base), seen_by_module_fixture
    assert cache_dir().resolve().is_relative_to(base)
    assert not cache_dir().resolve().is_relative_to((Path.home() / ".cache").resolve())


def test_monkeypatched_cache_is_restored(monkeypatch, tmp_path):
    before = os.environ["FAIRDIFF_CACHE"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRDIFF_CACHE", str(tmp_path / "elsewhere"))
        assert cache_dir() == tmp_path / "elsewhere"
    assert os.environ["FAIRDIFF_CACHE"] == before
