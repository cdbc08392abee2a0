"""Output folders: fairdiff never removes what it did not write, nor the current folder or an input."""

from __future__ import annotations

import pytest

from fairdiff.utils.outputs import (
    OWN_FILES,
    OutputDirError,
    check_output_dir,
    foreign_entries,
    replace_output_dir,
    write_marker,
)


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


def test_legacy_folder_recognised_by_its_files_is_refused_with_a_hint(tmp_path):
    """Files that look like fairdiff's do not make a folder fairdiff's: without the marker it is refused (a hint
    says how to mark it), for --overwrite and for continuing alike; once marked it may be replaced."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("x")
    (run / "manifest.json").write_text("{}")
    legacy = {"run": ["config.yaml", "manifest.json"]}
    for kw in ({"overwrite": True}, {"reuse": True}):
        with pytest.raises(OutputDirError, match='has no .fairdiff.json marker.*"kind": "run"') as e:
            check_output_dir(run, "run", legacy_files=legacy, **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(OutputDirError, match="no .fairdiff.json marker"):
        replace_output_dir(run, "run", legacy_files=legacy)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "manifest.json"]
    write_marker(run, "run")  # what the hint says to do when fairdiff wrote it
    assert check_output_dir(run, "run", overwrite=True, legacy_files=legacy) == "replace"


def test_overwrite_refuses_a_marked_folder_holding_a_file_fairdiff_did_not_write(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    write_marker(run, "run")
    for f in ("config.yaml", "manifest.json", "stats.jsonl", "report.md", "train_grid.png", ".fairdiff.lock"):
        (run / f).write_text("fairdiff's")
    assert check_output_dir(run, "run", overwrite=True) == "replace"
    (run / "my_notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="holds my_notes.txt, which fairdiff did not write"):
        check_output_dir(run, "run", overwrite=True)
    with pytest.raises(OutputDirError, match="my_notes.txt"):
        replace_output_dir(run, "run")
    assert (run / "my_notes.txt").read_text() == "mine"
    assert check_output_dir(run, "run", reuse=True) == "reuse"  # continuing removes nothing


def test_a_marked_sub_folder_is_checked_against_its_own_kind(tmp_path):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    write_marker(run, "run")
    write_marker(run / "samples", "samples")
    (run / "samples" / "samples.npz").write_bytes(b"npz")
    (run / "samples" / "seed000000.png").write_bytes(b"png")
    assert foreign_entries(run, "run") == []
    (run / "samples" / "paper_figure.pdf").write_bytes(b"mine")
    assert foreign_entries(run, "run") == ["samples/paper_figure.pdf"]
    with pytest.raises(OutputDirError, match="samples/paper_figure.pdf"):
        check_output_dir(run, "run", overwrite=True)
    # a folder under a name a run never uses is the user's, even a copy of a fairdiff folder (a backup)
    (run / "samples" / "paper_figure.pdf").unlink()
    (run / "data").mkdir()
    (run / "backup").mkdir()
    write_marker(run / "backup", "samples")
    assert foreign_entries(run, "run") == ["backup", "data"]
    # a guided-sampling folder holds one samples folder per prompt, under the prompt's name
    guided = tmp_path / "guided"
    (guided / "a_photo_of_a_doctor").mkdir(parents=True)
    write_marker(guided, "sd-guided")
    write_marker(guided / "a_photo_of_a_doctor", "samples")
    (guided / "prompts.json").write_text("{}")
    assert foreign_entries(guided, "sd-guided") == []
    (guided / "a_photo_of_a_doctor" / "mine.txt").write_text("x")
    assert foreign_entries(guided, "sd-guided") == ["a_photo_of_a_doctor/mine.txt"]


def test_every_kind_replaced_by_a_command_lists_its_files():
    for kind in ("run", "sd-run", "samples", "export", "vae", "sd", "heads", "sd-guided", "debias", "demo", "bench",
                 "sweep", "compare", "eval"):
        assert OWN_FILES[kind], kind


def test_whole_folder_outputs_refuse_an_empty_current_directory(tmp_path, monkeypatch):
    empty = tmp_path / "here"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert check_output_dir(".", "samples") == "new"  # files written into it: fine
    with pytest.raises(OutputDirError, match="current directory"):
        check_output_dir(".", "samples", whole=True)  # replaced as a whole: never the current folder
