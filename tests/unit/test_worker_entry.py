"""The entry of the bench's worker processes: it ignores Ctrl-C and leaves the parent's process group before the
real target's module (torch) is imported, and it imports nothing heavy itself."""

from __future__ import annotations

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

