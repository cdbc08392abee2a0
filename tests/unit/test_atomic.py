"""utils.atomic: a folder is swapped in whole, or not at all; the old one survives a failed build."""

from __future__ import annotations

import os

import pytest

from fairdiff.utils.atomic import atomic_dir, swap_dir


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_swaps_in_a_new_folder_and_replaces_an_old_one(tmp_path):
    final = tmp_path / "out" / "P"
    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".P.") and tmp.name.endswith(".tmp")
        assert not final.exists()  # nothing visible while building
        (tmp / "a.txt").write_text("1")
    assert (final / "a.txt").read_text() == "1" and _names(final.parent) == ["P"]
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("2")
        assert (final / "a.txt").exists()  # the old folder stays readable until the swap
    assert _names(final) == ["b.txt"] and _names(final.parent) == ["P"]  # no .old / .tmp left behind
    mask = os.umask(0)
    os.umask(mask)
    assert final.stat().st_mode & 0o777 == 0o777 & ~mask  # the permissions of a plain mkdir, not mkdtemp's 0700


def test_a_failed_build_leaves_the_old_folder_untouched(tmp_path):
    final = tmp_path / "P"
    final.mkdir()
    (final / "keep.txt").write_text("old")
    for sib in ("P.tmp", "P.old", ".P.tmp"):  # other folders with look-alike names are never touched
        (tmp_path / sib).mkdir()
        (tmp_path / sib / "x").write_text(sib)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert _names(final) == ["keep.txt"] and (final / "keep.txt").read_text() == "old"
    assert _names(tmp_path) == [".P.tmp", "P", "P.old", "P.tmp"]
    assert all((tmp_path / s / "x").read_text() == s for s in ("P.tmp", "P.old", ".P.tmp"))


def test_swap_failure_puts_the_old_folder_back(tmp_path, monkeypatch):
    final, tmp = tmp_path / "P", tmp_path / "T"
    final.mkdir()
    (final / "keep.txt").write_text("old")
    tmp.mkdir()
    real = os.replace

    def failing(a, b):
        if str(a) == str(tmp):
            raise OSError("disk says no")
        return real(a, b)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk says no"):
        swap_dir(tmp, final)
    assert (final / "keep.txt").read_text() == "old" and sorted(_names(tmp_path)) == ["P", "T"]


def test_keep_other_keeps_a_copy_another_process_published(tmp_path, monkeypatch):
    """A shared cache: another process publishes while this one is swapping; its copy stays, ours is dropped."""
    final = tmp_path / "cache"
    real = os.replace

    def racing(a, b):
        if str(b) == str(final) and not final.exists():
            final.mkdir()
            (final / "theirs").write_text("t")
            raise OSError("Directory not empty")
        return real(a, b)

    monkeypatch.setattr(os, "replace", racing)
    with atomic_dir(final, keep_other=True) as tmp:
        (tmp / "ours").write_text("o")
    assert _names(final) == ["theirs"] and _names(tmp_path) == ["cache"]
    final2 = tmp_path / "plain"
    final = final2
    with pytest.raises(OSError):
        with atomic_dir(final2) as tmp:
            (tmp / "ours").write_text("o")
