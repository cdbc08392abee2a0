"""The entry of the bench's worker processes: it ignores Ctrl-C and leaves the parent's process group before the
real target's module (torch) is imported, and it imports nothing heavy itself; and the bench's first worker starts
with SIGINT / SIGTERM blocked although starting multiprocessing's resource tracker unblocks them."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys

import pytest

from fairdiff.utils.workers import worker_entry


def _report(conn) -> None:  # the "real target": what the worker saw when its code ran
    conn.send((signal.getsignal(signal.SIGINT) == signal.SIG_IGN, os.getpgid(0), os.getpid(),
               sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))))
    conn.close()


def test_importing_the_entry_loads_no_torch_and_starts_no_thread():
    code = ("import sys, threading, fairdiff.utils.workers; "
            "assert 'torch' not in sys.modules, 'torch'; assert threading.active_count() == 1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")
def test_worker_entry_ignores_sigint_leaves_the_group_and_unblocks_before_the_target():
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # as the bench starts it
    try:
        proc = ctx.Process(target=worker_entry, args=(f"{__name__}:_report", theirs))
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    theirs.close()
    ignored, pgid, pid, blocked = mine.recv()
    proc.join(60)
    assert proc.exitcode == 0
    assert ignored
    assert pgid == pid != os.getpgid(0)
    assert int(signal.SIGINT) not in blocked and int(signal.SIGTERM) not in blocked


_MASK_SCRIPT = """
import json
import multiprocessing as mp
import signal

from fairdiff.bench.runner import _sigint_blocked


def report(conn):
    conn.send(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    conn.close()


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    with _sigint_blocked():
        proc = ctx.Process(target=report, args=(theirs,))
        proc.start()  # the first spawn of this process: it starts multiprocessing's resource tracker
        inside = sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    print(json.dumps([mine.recv(), inside]))
    proc.join()
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")
def test_the_first_worker_starts_with_both_signals_blocked(tmp_path):
    """Launching the resource tracker unblocks SIGINT / SIGTERM in the launching thread; the bench starts it before
    it blocks them, so the first worker, too, inherits both blocked."""
    script = tmp_path / "first_spawn.py"
    script.write_text(_MASK_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    child, inside = json.loads(proc.stdout.strip().splitlines()[-1])
    want = {int(signal.SIGINT), int(signal.SIGTERM)}
    assert want <= set(child), child
    assert want <= set(inside), inside
