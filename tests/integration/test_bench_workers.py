"""``fairdiff bench --jobs 2``: its cell processes die with it. kill -9 of the bench leaves no process of it alive
(each cell saves a checkpoint and stops, its run folder's lock is free), Ctrl-C prints exactly one line and exits
130, and running the same command again continues the unfinished cells."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_bench_yaml

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

CELLS = ("baseline-s0", "reweight-s0")


def _config(tmp_path: Path) -> Path:
    data = yaml.safe_load(tiny_bench_yaml(12))
    data["overrides"].update({"train.checkpoint_every": 12, "eval.n_samples": 16, "eval.classifier_steps": 20})
    data["methods"] = {"baseline": {"method.name": "baseline"}, "reweight": {"method.name": "reweight"}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _sigint_default() -> None:
    # a job started with `&` by a non-interactive shell (`nohup make test &`, some CI runners) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler: give the bench what a terminal would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(cfg: Path, out: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "FAIRDIFF_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    # its own session, as a shell gives a foreground job: a Ctrl-C at the terminal signals the whole group
    return subprocess.Popen([sys.executable, "-m", "fairdiff", "bench", str(cfg), "--out", str(out), "-q",
                             "--jobs", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_sigint_default)


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended (its new parent may never reap it)


def _wait_training(proc: subprocess.Popen, out: Path, min_rows: int = 1) -> list[int]:
    """Wait until both cells have logged training steps; return the bench's child processes."""
    stats = [out / "cells" / "a" / c / "stats.jsonl" for c in CELLS]
    deadline = time.time() + 240
    while not all(p.exists() and len(p.read_text().splitlines()) >= min_rows for p in stats):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    kids = _children(proc.pid)
    assert len(kids) >= 2, kids
    return kids


def _locks_free(out: Path) -> None:  # (fcntl.flock: a dead holder's lock is dropped by the kernel)
    for c in CELLS:
        with open(out / "cells" / "a" / c / ".fairdiff.lock", "a+") as f:  # raises if a process still holds it
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.time() + seconds
    while time.time() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.slow  # two benches in subprocesses (about 50 s on a loaded 2-core machine)
def test_kill_9_of_the_bench_takes_its_workers_and_the_rerun_continues(tmp_path):
    cfg, out, cache = _config(tmp_path), tmp_path / "out", tmp_path / "cache"
    proc = _start(cfg, out, cache)
    try:
        kids = _wait_training(proc, out)
        t0 = time.time()
        proc.kill()
        proc.wait(30)
        left = _wait_gone(kids, 10.0)
        assert not left, f"still alive {time.time() - t0:.1f} s after kill -9 of the bench: {left}"
    finally:
        for p in _children(proc.pid):  # (only if the test failed: never leave them running)
            os.kill(p, signal.SIGKILL)
        proc.communicate()
    _locks_free(out)
    for c in CELLS:  # each cell saved its step when its bench died (SIGTERM from the kernel)
        assert list((out / "cells" / "a" / c).glob("checkpoint-*")), f"{c}: no checkpoint"
    # the same command again: no cell is refused as locked, both resume and finish
    proc = _start(cfg, out, cache)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    lines = [x for x in stdout.splitlines() if x.startswith("[")]
    assert len(lines) == 2 and all(": done in" in x for x in lines), stdout
    for c in CELLS:
        assert (out / "cells" / "a" / c / "metrics.json").is_file()


def _cell_processes(pid: int) -> list[int]:
    return [k for k in _children(pid) if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text(errors="replace")]


def test_ctrl_c_prints_one_line_exits_130_and_stops_every_worker(tmp_path):
    """Ctrl-C while the cell processes start up (the moment a worker used to print a KeyboardInterrupt traceback
    of its own); Ctrl-C during training is the SIGTERM path of test_bench_jobs plus the same one line."""
    cfg, out, cache = _config(tmp_path), tmp_path / "out", tmp_path / "cache"
    proc = _start(cfg, out, cache)
    try:
        deadline = time.time() + 120
        while len(_cell_processes(proc.pid)) < 2:
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        kids = _children(proc.pid)
        time.sleep(1.0)  # (inside their imports)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal does: the whole foreground group
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "bench interrupted" in stderr and "run the same command again" in stderr
    assert not _wait_gone(kids, 2.0)
