"""Run a bench matrix (``fairdiff bench``): every cell trained, sampled and evaluated once, then tables and plots.

Training cells go through :func:`fairdiff.bench.matrix.run_cell` (a finished cell, i.e. one with ``metrics.json``,
is kept; an interrupted one continues from its latest checkpoint). Guidance cells train nothing: they fit the
per-step attribute heads on the model of their ``after`` cell, sample toward the evaluation target and evaluate.
A cell that fails with a user error is reported and skipped with the cells that depend on it, so one bad method
does not throw away a night of the others; the run then ends with a :class:`BenchError`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fairdiff.bench.config import BenchCell, BenchConfig, GuidanceSpec
from fairdiff.bench.matrix import (
    markdown_tables,
    metrics_row,
    refuse_stale,
    run_cell,
    stale_reason,
    summarise,
    write_cell_record,
    write_csv,
)
from fairdiff.bench.html import write_html_report
from fairdiff.bench.records import prepare_reevaluation, reevaluable
from fairdiff.bench.plots import plot_fd_vs_fid, plot_shares
from fairdiff.config import load_config, save_config
from fairdiff.errors import FairdiffError
from fairdiff.utils.io import DiskFullError, atomic_write_text, disk_full_as_error, read_json_checked, write_json
from fairdiff.utils.workers import worker_entry


class BenchError(FairdiffError):
    """Some cells of a bench failed (each was reported as it failed)."""


def guidance_target(cfg) -> list[float]:
    """The evaluation target (``eval.target``, uniform when unset): what a guidance cell steers toward."""
    k = len(cfg.data.groups)
    return list(cfg.eval.target) if cfg.eval.target is not None else [1.0 / k] * k


def run_guidance_cell(base: str | Path | None, cell: BenchCell, cell_dir: Path, model_dir: Path, *,
                      quiet: bool = False) -> dict:
    """Distribution Guidance on the trained model in ``model_dir``: fit heads (the ``heads`` folder), draw
    ``eval.n_samples`` guided images toward the evaluation target and evaluate them into ``cell_dir``.

    Each step is skipped when its output exists, so an interrupted cell resumes. Returns the metrics."""
    from fairdiff.data import prepare_data
    from fairdiff.evaluation import evaluate_samples, load_images
    from fairdiff.evaluation.copying import run_copy_check
    from fairdiff.models.heads import read_heads_record, save_heads
    from fairdiff.sampling.files import resolve_device
    from fairdiff.methods.registry import get_method
    from fairdiff.sampling.guided import guide_run, load_guidable

    fit_heads = get_method("guidance").hook("fit")  # the registry names how a guidance method fits its heads
    if (cell_dir / "metrics.json").exists():
        return read_json_checked(cell_dir / "metrics.json", "cell metrics")
    spec = cell.guidance or GuidanceSpec()
    cfg = load_config(base, cell.overrides)
    cell_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, cell_dir / "config.yaml")  # the data / sample / eval settings used; the model is model_dir's
    write_cell_record(cell_dir, cfg, asdict(spec))  # the guidance options too: heads and samples depend on them
    dev = resolve_device(None)
    heads_path = cell_dir / "heads"
    if (cell_dir / "heads.safetensors").is_file():  # fitted by an earlier version, in the single-file format
        heads_path = cell_dir / "heads.safetensors"
    if not heads_path.exists():
        unet, sched_cfg = load_guidable(model_dir, dev)
        data = prepare_data(cfg.data)
        res = fit_heads(unet, sched_cfg, data.train_images, data.train_groups, cfg.sample.steps,
                        cfg.sample.scheduler, heldout_images=data.heldout_images,
                        heldout_labels=data.heldout_groups, num_classes=data.num_groups,
                        n_per_step=spec.n_per_step, mode=spec.mode, seed=cell.seed, progress=False)
        save_heads(res.heads, heads_path, {"run": str(model_dir), "heldout_accuracy": res.heldout_accuracy,
                                           "seconds": round(res.seconds, 1)})
        del unet
    heads_s = float(read_heads_record(heads_path).get("seconds", np.nan))
    target = guidance_target(cfg)
    uniform = np.allclose(target, target[0])
    temperature = spec.temperature if spec.temperature is not None else (8.0 if uniform else 1.0)
    info = {"heads": str(heads_path), "model": str(model_dir), "target": target, "scale": spec.scale,
            "temperature": temperature, "loss": spec.loss, "mode": spec.mode, "n_per_step": spec.n_per_step}
    t0 = time.time()
    npz = cell_dir / "samples" / "samples.npz"
    have = 0
    if npz.exists():
        with np.load(npz) as z:
            have = len(z["seeds"])
    if have != cfg.eval.n_samples:
        guide_run(model_dir, heads_path, cfg.eval.n_samples, scale=spec.scale, target=target, temperature=temperature,
                  loss=spec.loss, out_dir=cell_dir / "samples", seed=cfg.sample.seed,
                  batch_size=cfg.sample.batch_size, steps=cfg.sample.steps, scheduler=cfg.sample.scheduler,
                  eta=cfg.sample.eta, device=dev, png=False, progress=not quiet,
                  info={k: info[k] for k in ("model", "mode", "n_per_step")})
    extra = {"run": {"dir": str(cell_dir), "name": cfg.name, "method": "guidance", "model": str(model_dir),
                     "train_shares": list(cfg.data.shares), "train_seed": cell.seed, "sample_seed": cfg.sample.seed,
                     "sample_steps": cfg.sample.steps},
             "guidance": info}
    copying = run_copy_check(load_images(cell_dir / "samples")["images"], cfg.data, cfg.eval.copy_check,
                             seed=cfg.eval.seed)  # the guided model was trained on this cell's data
    if copying is not None:
        extra["copying"] = copying
    metrics = evaluate_samples(cell_dir / "samples", cfg.data, cfg.eval, out_dir=cell_dir, progress=not quiet,
                               extra=extra)
    # "train" time of a sampling-time method: fitting its heads
    metrics["timing"] = {"train_s": round(heads_s, 1), "heads_s": round(heads_s, 1),
                         "sample_and_eval_s": round(time.time() - t0, 1)}
    write_json(cell_dir / "metrics.json", metrics)
    return metrics


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _run_one(base, cell: BenchCell, cells_dir: Path, quiet: bool) -> dict:
    if cell.guidance is not None:
        return run_guidance_cell(base, cell, cells_dir / cell.name, cells_dir / cell.after, quiet=quiet)
    return run_cell(base, cell, cells_dir / cell.name, quiet=quiet)


def cell_extra(cell: BenchCell) -> dict | None:
    """The options besides the config that a cell's results depend on (a guidance cell's guidance spec)."""
    return asdict(cell.guidance or GuidanceSpec()) if cell.guidance is not None else None


def check_cells_fresh(base, cells: list[BenchCell], out_dir: str | Path, log=None) -> None:
    """Before any work: every cell's config resolves, and no cell's earlier work was made from another config
    (such a cell is refused with one line, never reused). A finished cell whose config differs only in how its
    model is sampled and judged (``eval.*``; ``sample.*`` for cells that train) keeps its trained model and is
    re-sampled / re-evaluated: its earlier results move to ``CELL/previous/N`` (``log`` gets one line each).
    Nothing is moved unless every cell passes."""
    out_dir = Path(out_dir)
    reasons, again = {}, []
    for c in cells:
        cfg, extra = load_config(base, c.overrides), cell_extra(c)
        r = stale_reason(out_dir / "cells" / c.name, cfg, extra)
        if r:
            keys = reevaluable(out_dir / "cells" / c.name, cfg, extra, guided=c.guidance is not None)
            if keys:
                again.append((c, cfg, extra, keys))
            else:
                reasons[c.name] = r
    refuse_stale(cells, reasons, out_dir)
    for c, cfg, extra, keys in again:
        dest = prepare_reevaluation(out_dir / "cells" / c.name, cfg, keys, extra)
        if log is not None:
            log(f"{c.name}: keeps its trained model, sampled / evaluated again ({', '.join(keys)} changed); "
                f"earlier results in {dest}")


def _cell_line(m: dict) -> str:
    return (f"strict FD {_num(m.get('fd_strict')):.3f}, valid {_num(m.get('valid_rate')):.3f}, "
            f"forced-choice FD {_num(m.get('fd_hard')):.3f}, domain FID {_num(m.get('domain_fid')):.2f}")


def shard_cells(cells: list[BenchCell], index: int, count: int) -> list[BenchCell]:
    """The cells of shard ``index`` of ``count`` (``--shard i/n``, for array jobs of any scheduler).

    Cells are dealt out by (setting, seed) so that a cell and the cell it starts from (``after``: same setting and
    seed) land in the same shard; the shards together hold every cell exactly once."""
    if count < 1 or not 0 <= index < count:
        raise FairdiffError(f"--shard {index}/{count}: expected i/n with 0 <= i < n")
    keys: list[tuple] = []
    for c in cells:
        k = (c.setting, c.seed)
        if k not in keys:
            keys.append(k)
    mine = {k for j, k in enumerate(keys) if j % count == index}
    return [c for c in cells if (c.setting, c.seed) in mine]


# How long the bench waits, after Ctrl-C or SIGTERM, for its cell processes to save a checkpoint and stop before it
# kills them; and how long a cell process whose bench died (even by kill -9) may take to do the same.
STOP_GRACE_S = 60.0
ORPHAN_GRACE_S = 5.0


class BenchInterrupted(KeyboardInterrupt):
    """The bench was stopped by a signal (``signum``: SIGINT for Ctrl-C, SIGTERM); its cells were stopped first."""

    def __init__(self, signum: int = 2) -> None:
        super().__init__()
        self.signum = signum


@dataclass
class _Worker:
    proc: object  # multiprocessing.Process
    conn: object  # its end of a duplex pipe: cells go out, results come back
    device: int | None
    cell: BenchCell | None = None  # the cell it runs now (None: idle)
    done: bool = False  # that cell had finished in an earlier run (kept)


def _die_with_parent(parent_pid: int) -> None:
    """In a cell process: end when the bench that started it ends, however it ends (kill -9 included).

    On Linux the kernel sends SIGTERM when the parent dies (``prctl(PR_SET_PDEATHSIG)``): a training cell saves a
    checkpoint at its current step and stops, anything else stops at once. A watchdog thread backs this up (and
    stands in for it elsewhere): once the parent is gone it allows :data:`ORPHAN_GRACE_S`, then exits."""
    import os
    import signal
    import sys
    import threading

    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # the bench died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid, armed), name="fairdiff-bench-watch",
                     daemon=True).start()


def _watch_parent(parent_pid: int, signalled: bool) -> None:
    import os
    import signal

    while os.getppid() == parent_pid:
        time.sleep(0.5)
    if not signalled:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def _worker_main(conn, parent_pid: int, threads: int, device: int | None) -> None:
    """A ``--jobs`` worker process: runs the cells it is sent on ``conn``, one at a time, and sends back each
    result as a plain tuple (exceptions may not pickle); ``None`` ends it.

    It runs in its own process group with SIGINT ignored, both set before this module is imported
    (:func:`fairdiff.utils.workers.worker_entry`), so a Ctrl-C at the terminal reaches only the bench, which then
    sends each worker one SIGTERM: a training cell saves a checkpoint and the worker ends after reporting it; an
    idle one, or one sampling or evaluating, ends at once (every output is written atomically). It also ends when
    the bench dies, however it dies (see :func:`_die_with_parent`)."""
    import os

    _die_with_parent(parent_pid)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the bench is gone
            return
        if job is None:
            return
        msg = _worker_cell(*job)
        try:
            conn.send(msg)
        except (OSError, ValueError):  # the bench is gone
            return
        if msg[0] == "stopped":
            return


def _worker_cell(base, cell: BenchCell, cells_dir: Path) -> tuple[str, object, float]:
    """Run one cell in a worker process: (status, metrics or message, seconds)."""
    import traceback

    from fairdiff.utils.io import disk_full_message, is_disk_full

    t0 = time.time()
    try:
        msg: tuple = ("ok", _run_one(base, cell, cells_dir, True))
    except DiskFullError as e:
        msg = ("disk-full", str(e))
    except FairdiffError as e:
        msg = ("error", str(e))
    except KeyboardInterrupt as e:  # SIGTERM while training: a checkpoint was saved
        msg = ("stopped", str(e))
    except BaseException as e:  # noqa: BLE001 - sent back whole; the bench re-raises it
        msg = ("disk-full", disk_full_message(cells_dir / cell.name, e, kept=False)) if is_disk_full(e) else (
            "bug", traceback.format_exc())
    return (*msg, time.time() - t0)


@contextmanager
def _sigint_blocked():
    """Block SIGINT and SIGTERM while a worker process starts and is recorded: it inherits the mask until
    :func:`~fairdiff.utils.workers.worker_entry` ignores SIGINT (before any heavy import), and a signal meanwhile
    reaches the bench once the block ends, when the new process is known and is stopped with the others.

    multiprocessing's resource tracker is started first: the first ``spawn`` start launches it, and launching it
    unblocks both signals in the calling thread, so a worker forked right after would inherit them unblocked."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # (a no-op once it runs)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _run_parallel(cfg: BenchConfig, cells: list[BenchCell], cells_dir: Path, jobs: int, log,
                  failed: dict[str, str]) -> None:
    """Run ``cells`` in up to ``jobs`` worker processes; a cell starts once the cell it starts from has finished.
    Ctrl-C / SIGTERM stop every worker (one SIGTERM each; see :func:`_worker_main`) before
    :class:`BenchInterrupted` is raised; a full disk stops the bench with one :class:`DiskFullError`."""
    import multiprocessing as mp
    import os
    from multiprocessing.connection import wait

    import torch

    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked torch thread pools
    ngpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    free_devices: list[int] | None = None
    if ngpu:
        jobs = min(jobs, ngpu)
        free_devices = list(range(jobs))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    names = {c.name for c in cells}
    pending = list(cells)
    workers: list[_Worker] = []
    finished: set[str] = set()
    n = len(cells)

    def idle_worker() -> _Worker | None:
        for w in workers:
            if w.cell is None:
                return w
        if len(workers) >= jobs:
            return None
        device = free_devices.pop(0) if free_devices is not None else None
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=worker_entry, name="fairdiff-bench-worker",
                           args=("fairdiff.bench.runner:_worker_main", theirs, os.getpid(), threads, device))
        with _sigint_blocked():
            proc.start()
            theirs.close()
            workers.append(_Worker(proc, mine, device))
        return workers[-1]

    def retire(w: _Worker) -> None:
        w.proc.join(STOP_GRACE_S)
        if w.proc.is_alive():  # pragma: no cover - it said it was done but does not end
            w.proc.kill()
            w.proc.join(5)
        w.conn.close()
        workers.remove(w)
        if w.device is not None:
            free_devices.append(w.device)

    with _TermAsInterrupt():
        try:
            while pending or any(w.cell is not None for w in workers):
                for cell in list(pending):
                    if cell.after in failed:
                        failed[cell.name] = f"needs {cell.after}, which failed"
                        log(f"[{len(finished) + len(failed)}/{n}] {cell.name}: skipped ({failed[cell.name]})")
                        pending.remove(cell)
                        continue
                    if cell.after is None or cell.after not in names or cell.after in finished:
                        w = idle_worker()
                        if w is None:
                            break
                        pending.remove(cell)
                        w.cell, w.done = cell, (cells_dir / cell.name / "metrics.json").exists()
                        try:
                            w.conn.send((cfg.base, cell, cells_dir))
                        except OSError:  # it died while idle: seen below as a cell without a result
                            pass
                if not any(w.cell is not None for w in workers):
                    if pending:  # pragma: no cover - every cell waits for one that never runs
                        raise FairdiffError(f"bench cells wait for each other: {', '.join(c.name for c in pending)}")
                    continue
                ready = wait([w.conn for w in workers] + [w.proc.sentinel for w in workers])
                for w in [w for w in workers if w.conn in ready or w.proc.sentinel in ready]:
                    msg = None
                    try:
                        if w.conn.poll():
                            msg = w.conn.recv()
                    except (EOFError, OSError):
                        msg = None
                    cell, done = w.cell, w.done
                    if msg is None:
                        if w.proc.is_alive():
                            continue
                        retire(w)  # it died (killed from outside, out of memory): the next cell gets a new one
                        if cell is None:
                            continue
                        code = w.proc.exitcode
                        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        msg = ("error", f"its process ended without a result ({why}); run the bench again to "
                                        "continue it", 0.0)
                    else:
                        w.cell = None
                        if msg[0] == "stopped":
                            retire(w)
                    head = f"[{len(finished) + len(failed) + 1}/{n}] {cell.name}"
                    status, value, secs = msg
                    if status == "ok":
                        finished.add(cell.name)
                        state = "finished earlier, kept" if done else f"done in {secs:.0f} s"
                        log(f"{head}: {state}; {_cell_line(value)}")
                    elif status == "disk-full":
                        raise DiskFullError(value)
                    elif status == "bug":
                        raise RuntimeError(f"bench cell {cell.name} failed in its worker process:\n{value}")
                    else:
                        if status == "stopped":  # someone else's SIGTERM to this worker alone
                            value = "stopped by a signal; its checkpoint was saved: run the bench again to continue"
                        failed[cell.name] = str(value)
                        log(f"{head}: FAILED: {value}")
        except BaseException:
            _stop_workers(workers)
            raise
    for w in workers:  # all idle: let them end
        try:
            w.conn.send(None)
        except OSError:
            pass
    for w in list(workers):
        retire(w)


class _TermAsInterrupt:
    """In the bench's own process, SIGTERM is handled like Ctrl-C, so that the cells are stopped cleanly."""

    def __enter__(self):
        import signal
        import threading

        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise BenchInterrupted(signum)

    def __exit__(self, *exc) -> bool:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False


def _stop_workers(workers: list[_Worker], grace_s: float = STOP_GRACE_S) -> None:
    """One SIGTERM to every worker process (a training cell saves a checkpoint at its current step and stops),
    wait up to ``grace_s``, then kill what is left: no worker outlives the bench and keeps a run folder locked.
    A second Ctrl-C while waiting kills them at once."""
    import os
    import signal

    for w in workers:
        if w.proc.is_alive():
            try:
                os.kill(w.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + grace_s
    try:
        for w in workers:
            w.proc.join(max(0.0, deadline - time.time()))
    finally:
        for w in workers:
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(5)
            w.conn.close()


def run_bench(cfg: BenchConfig, cells: list[BenchCell], out_dir: str | Path, *,
              all_cells: list[BenchCell] | None = None, quiet: bool = False, log=print, jobs: int = 1) -> list[dict]:
    """Run ``cells`` under ``out_dir/cells/<setting>/<method>-s<seed>``, then write the results.

    ``jobs`` > 1 runs that many cells at once, each in its own process (on CPU with ``cpu_count // jobs`` torch
    threads each, on GPUs one GPU each); a cell that starts from another (``after``) waits for it. Results cover
    every cell of ``all_cells`` (default: ``cells``) that has finished, in this run or an earlier one, so running a
    matrix piece by piece with ``--only`` or ``--shard`` fills one table. ``log`` gets one line per cell.
    Raises :class:`BenchError` after writing the results when some cells failed."""
    out_dir = Path(out_dir)
    cells_dir = out_dir / "cells"
    check_cells_fresh(cfg.base, cells, out_dir, log)
    cells_dir.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    if jobs > 1 and len(cells) > 1:
        _run_parallel(cfg, cells, cells_dir, jobs, log, failed)
    else:
        for i, cell in enumerate(cells):
            head = f"[{i + 1}/{len(cells)}] {cell.name}"
            if cell.after in failed:
                failed[cell.name] = f"needs {cell.after}, which failed"
                log(f"{head}: skipped ({failed[cell.name]})")
                continue
            done = (cells_dir / cell.name / "metrics.json").exists()
            t0 = time.time()
            try:
                m = _run_one(cfg.base, cell, cells_dir, quiet)
            except DiskFullError:  # every other cell would fail the same way: stop, one line
                raise
            except FairdiffError as e:
                failed[cell.name] = str(e)
                log(f"{head}: FAILED: {e}")
                continue
            state = "finished earlier, kept" if done else f"done in {time.time() - t0:.0f} s"
            log(f"{head}: {state}; {_cell_line(m)}")
    rows = collect_rows(all_cells or cells, out_dir)
    write_results(rows, out_dir, f"{cfg.name}", expected=len(all_cells or cells))
    if failed:
        raise BenchError(f"{len(failed)} of {len(cells)} cells failed ({', '.join(failed)}); results so far in "
                         f"{out_dir / 'results.md'}")
    return rows


def collect_rows(cells: list[BenchCell], out_dir: str | Path) -> list[dict]:
    """Table rows of the cells that have a ``metrics.json`` under ``out_dir/cells``."""
    out = []
    for c in cells:
        p = Path(out_dir) / "cells" / c.name / "metrics.json"
        if p.exists():
            out.append(metrics_row(c, read_json_checked(p, "cell metrics")))
    return out


def write_results(rows: list[dict], out_dir: str | Path, title: str, expected: int | None = None) -> None:
    """``results.md`` (a table per setting), ``results.csv`` (mean/std per setting x method), ``runs.csv`` (one row
    per run), ``fd_vs_fid.png``, ``shares.png`` and ``report.html`` (all of it in one self-contained page).

    They are written into a hidden folder beside them first and moved into place only when all are complete: a
    full disk (:class:`DiskFullError`) leaves the earlier results as they were, with no half-written file."""
    import os
    import shutil
    import tempfile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown_tables(rows, title, per="setting") if rows else f"## {title}\n\nNo cell has finished yet.\n"
    if expected is not None and len(rows) < expected:
        md += f"\n{len(rows)} of {expected} cells have finished; run the bench again to continue.\n"
    md += "\n![FD vs domain FID](fd_vs_fid.png)\n\n![generated share of group 0](shares.png)\n" if rows else ""
    with disk_full_as_error(out_dir / "results.md" if not rows else f"the results in {out_dir}"):
        stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=".results.", suffix=".tmp"))
        try:
            atomic_write_text(stage / "results.md", md)
            if rows:
                write_csv(summarise(rows, by=("setting", "method")), stage / "results.csv")
                write_csv(rows, stage / "runs.csv")
                plot_fd_vs_fid(rows, stage / "fd_vs_fid.png", panel="setting", color="method")
                plot_shares(rows, stage / "shares.png")
                if (out_dir / "cells").is_dir():  # (the page shows each cell's sample grid)
                    try:
                        os.symlink(os.path.join("..", "cells"), stage / "cells", target_is_directory=True)
                    except OSError:  # pragma: no cover - no symlinks here: the page goes without the grids
                        pass
                write_html_report(stage, title)
            for name in ("results.md", "results.csv", "runs.csv", "fd_vs_fid.png", "shares.png", "report.html"):
                if (stage / name).is_file():
                    os.replace(stage / name, out_dir / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
