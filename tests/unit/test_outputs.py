"""Output folders: fairdiff never removes what it did not write, nor the current folder or an input."""

from __future__ import annotations

import pytest

from fairdiff.utils.outputs import OutputDirError, check_output_dir, replace_output_dir, write_marker


def test_new_and_empty_folders_are_accepted(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b", "samples") == "new"
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", "samples") == "new"


def test_foreign_folder_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "me.jpg").write_bytes(b"x")
    with pytest.raises(OutputDirError, match="not written by fairdiff"):
        check_output_dir(tmp_path / "photos", "samples", overwrite=True)
    with pytest.raises(OutputDirError):
        replace_output_dir(tmp_path / "photos", "samples")
    assert (tmp_path / "photos" / "me.jpg").read_bytes() == b"x"


def test_own_folder_needs_overwrite_and_same_kind(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    write_marker(out, "samples")
    (out / "0.png").write_bytes(b"p")
    with pytest.raises(OutputDirError, match="--overwrite"):
        check_output_dir(out, "samples")
    with pytest.raises(OutputDirError, match="holds a fairdiff samples folder"):
        check_output_dir(out, "export", overwrite=True)
    assert check_output_dir(out, "samples", overwrite=True) == "replace"
    replace_output_dir(out, "samples")
    assert not (out / "0.png").exists() and (out / ".fairdiff.json").exists()


def test_input_and_cwd_are_protected(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    write_marker(run, "samples")
    (run / "model").mkdir()
    with pytest.raises(OutputDirError, match="input"):
        check_output_dir(run, "samples", overwrite=True, inputs=[run / "model"])
    monkeypatch.chdir(run / "model")
    with pytest.raises(OutputDirError, match="current directory"):
        replace_output_dir(run, "samples")
    assert (run / "model").is_dir()


def test_legacy_folder_recognised_by_its_files(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("x")
    (run / "manifest.json").write_text("{}")
    legacy = {"run": ["config.yaml", "manifest.json"]}
    assert check_output_dir(run, "run", overwrite=True, legacy_files=legacy) == "replace"


def test_whole_folder_outputs_refuse_an_empty_current_directory(tmp_path, monkeypatch):
    empty = tmp_path / "here"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert check_output_dir(".", "samples") == "new"  # files written into it: fine
    with pytest.raises(OutputDirError, match="current directory"):
        check_output_dir(".", "samples", whole=True)  # replaced as a whole: never the current folder
