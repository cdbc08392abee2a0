"""Run a bench matrix (``fairdiff bench``): every cell trained, sampled and evaluated once, then tables and plots.

Training cells go through :func:`fairdiff.bench.matrix.run_cell` (a finished cell, i.e. one with ``metrics.json``,
is kept; an interrupted one continues from its latest checkpoint). Guidance cells train nothing: they fit the
per-step attribute heads on the model of their ``after`` cell, sample toward the evaluation target and evaluate.
A cell that fails with a user error is reported and skipped with the cells that depend on it, so one bad method
does not throw away a night of the others; the run then ends with a :class:`BenchError`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
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
from fairdiff.utils.io import atomic_write_text, read_json_checked, write_json


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
    from fairdiff.sampling.guided import guide_run, load_guidable
    from fairdiff.training.heads import train_heads

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
        res = train_heads(unet, sched_cfg, data.train_images, data.train_groups, cfg.sample.steps,
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


def _worker_init(threads: int, devices) -> None:
    """A ``--jobs`` worker: ``threads`` torch threads on CPU; on GPUs, one device of ``devices`` each."""
    import os

    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _worker_cell(base, cell: BenchCell, cells_dir: Path) -> tuple[str, object, float]:
    """Run one cell in a worker process; a user error comes back as text (exceptions may not pickle)."""
    t0 = time.time()
    try:
        return "ok", _run_one(base, cell, cells_dir, True), time.time() - t0
    except FairdiffError as e:
        return "error", str(e), time.time() - t0


def _run_parallel(cfg: BenchConfig, cells: list[BenchCell], cells_dir: Path, jobs: int, log,
                  failed: dict[str, str]) -> None:
    """Run ``cells`` in ``jobs`` worker processes; a cell starts once the cell it starts from has finished."""
    import multiprocessing as mp
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked torch thread pools
    devices = None
    ngpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if ngpu:
        jobs = min(jobs, ngpu)
        devices = ctx.Queue()
        for d in range(jobs):
            devices.put(d)
        threads = max(1, (os.cpu_count() or 1) // jobs)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    names = {c.name for c in cells}
    pending = list(cells)
    running: dict = {}
    finished: set[str] = set()
    n = len(cells)
    ex = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads, devices))
    with _TermAsInterrupt():
        try:
            while pending or running:
                for cell in list(pending):
                    if len(running) >= jobs:
                        break
                    if cell.after in failed:
                        failed[cell.name] = f"needs {cell.after}, which failed"
                        log(f"[{n - len(pending) - len(running) + 1}/{n}] {cell.name}: skipped "
                            f"({failed[cell.name]})")
                        pending.remove(cell)
                        continue
                    if cell.after is None or cell.after not in names or cell.after in finished:
                        done = (cells_dir / cell.name / "metrics.json").exists()
                        running[ex.submit(_worker_cell, cfg.base, cell, cells_dir)] = (cell, done)
                        pending.remove(cell)
                if not running:
                    continue
                complete, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in complete:
                    cell, done = running.pop(fut)
                    status, value, secs = fut.result()
                    head = f"[{len(finished) + len(failed) + 1}/{n}] {cell.name}"
                    if status == "error":
                        failed[cell.name] = str(value)
                        log(f"{head}: FAILED: {value}")
                        continue
                    finished.add(cell.name)
                    state = "finished earlier, kept" if done else f"done in {secs:.0f} s"
                    log(f"{head}: {state}; {_cell_line(value)}")
        except BaseException:
            _stop_workers(ex)
            raise
    ex.shutdown(wait=True)


class _TermAsInterrupt:
    """In the bench's own process, SIGTERM is handled like Ctrl-C, so that the workers are stopped cleanly."""

    def __enter__(self):
        import signal
        import threading

        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> bool:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False


def _stop_workers(ex, grace_s: float = 60.0) -> None:
    """SIGTERM every worker (a training cell saves a checkpoint at its current step and stops), wait up to
    ``grace_s``, then kill what is left: no worker outlives the bench and keeps a run folder locked."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.time() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.time()))
        if p.is_alive():
            p.kill()
            p.join(5)
    ex.shutdown(wait=False, cancel_futures=True)


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
    per run), ``fd_vs_fid.png``, ``shares.png`` and ``report.html`` (all of it in one self-contained page)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown_tables(rows, title, per="setting") if rows else f"## {title}\n\nNo cell has finished yet.\n"
    if expected is not None and len(rows) < expected:
        md += f"\n{len(rows)} of {expected} cells have finished; run the bench again to continue.\n"
    md += "\n![FD vs domain FID](fd_vs_fid.png)\n\n![generated share of group 0](shares.png)\n" if rows else ""
    atomic_write_text(out_dir / "results.md", md)
    if not rows:
        return
    write_csv(summarise(rows, by=("setting", "method")), out_dir / "results.csv")
    write_csv(rows, out_dir / "runs.csv")
    plot_fd_vs_fid(rows, out_dir / "fd_vs_fid.png", panel="setting", color="method")
    plot_shares(rows, out_dir / "shares.png")
    write_html_report(out_dir, title)
