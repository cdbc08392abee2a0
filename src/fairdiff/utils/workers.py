"""The first code a spawned worker process runs: it ignores Ctrl-C before anything heavy is imported.

A Ctrl-C at a terminal signals the whole foreground process group. A worker started with ``spawn`` is a fresh
interpreter that imports its target's module (torch and the rest) before the target runs; a Ctrl-C during those
imports raises KeyboardInterrupt in the middle of one, and the worker prints a traceback of its own on the user's
terminal. The bench starts its workers with SIGINT and SIGTERM blocked (they inherit the mask), and the process's
target is :func:`worker_entry`, which lives in this light module (importing it loads no torch and starts no
thread): it sets SIGINT to ignored (a pending one is dropped), leaves the parent's process group, unblocks the
signals, and only then imports and calls the real target, named as ``"module:function"``. Either guard alone
closes the window; the mask alone once failed (multiprocessing's resource tracker, started by the first spawn,
unblocks both signals in the starting thread: see ``fairdiff.bench.runner._sigint_blocked``).
"""

from __future__ import annotations

import importlib
import os
import signal


def worker_entry(target: str, *args) -> object:
    """Ignore SIGINT, move to a process group of its own, then run ``target`` (``"package.module:function"``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)
    except (AttributeError, OSError):  # pragma: no cover - not POSIX
        pass
    if hasattr(signal, "pthread_sigmask"):  # (started with both blocked by its parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(*args)
