"""An interrupted ``fairdiff sample`` (and the sampling inside ``evaluate``) continues from the chunks it saved
beside the folder and ends with the images an uninterrupted run draws."""

from __future__ import annotations

import numpy as np
import pytest

import fairdiff.sampling.files as files
from fairdiff.cli.main import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("runs") / "base"
    assert main(["train", *TINY, "train.steps=2", "train.checkpoint_every=0", "--out", str(out), "--quiet"]) == 0
    return out


ARGS = ["--n", "20", "--batch-size", "4", "--steps", "2", "--no-png", "-q"]


def _stopping_at(call: int, calls: list):
    """files.sample that records each chunk's seeds and raises (as Ctrl-C would) on its call number ``call``."""
    real = files.sample

    def sample(*a, **k):
        calls.append(list(a[2]))
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*a, **k)

    return sample


def test_interrupted_sampling_draws_on_from_its_last_saved_chunk(run, tmp_path, monkeypatch, capsys):
    whole = tmp_path / "whole"
    assert main(["sample", str(run), *ARGS, "--out", str(whole)]) == 0
    real, calls = files.sample, []
    monkeypatch.setattr(files, "PARTIAL_CHUNK", 8)
    monkeypatch.setattr(files, "sample", _stopping_at(3, calls))
    out = tmp_path / "resumed"
    assert main(["sample", str(run), *ARGS, "--out", str(out)]) == 130
    assert "run the same command again to continue" in capsys.readouterr().err
    partial = tmp_path / ".resumed.partial.npz"
    assert np.load(partial)["images"].shape[0] == 16  # two whole chunks of 8 saved
    calls.clear()
    monkeypatch.setattr(files, "sample", lambda *a, **k: (calls.append(list(a[2])), real(*a, **k))[1])
    assert main(["sample", str(run), *ARGS, "--out", str(out)]) == 0
    assert calls == [list(range(16, 20))]  # only the chunk that was lost is drawn
    a, b = np.load(whole / "samples.npz"), np.load(out / "samples.npz")
    np.testing.assert_array_equal(a["seeds"], b["seeds"])
    np.testing.assert_array_equal(a["images"], b["images"])
    assert not partial.exists()


def test_a_partial_of_other_settings_is_not_used(run, tmp_path, monkeypatch):
    real, calls = files.sample, []
    monkeypatch.setattr(files, "PARTIAL_CHUNK", 8)
    monkeypatch.setattr(files, "sample", _stopping_at(2, calls))
    out = tmp_path / "s"
    assert main(["sample", str(run), *ARGS, "--out", str(out)]) == 130
    calls.clear()
    monkeypatch.setattr(files, "sample", lambda *a, **k: (calls.append(list(a[2])), real(*a, **k))[1])
    other = ["--n", "20", "--batch-size", "4", "--steps", "3", "--no-png", "-q"]  # another step count
    assert main(["sample", str(run), *other, "--out", str(out)]) == 0
    assert calls[0][0] == 0  # drawn from the first seed
    assert not (tmp_path / ".s.partial.npz").exists()
