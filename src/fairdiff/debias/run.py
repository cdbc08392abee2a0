"""``fairdiff debias RUN --method filter``: a debiased output folder made from a trained (base) run.

The output folder is a run folder without weights of its own: ``config.yaml`` (the base's config with
``eval.target`` set to the target and ``model.pretrained`` naming the base), the base's ``manifest.json``,
``samples/`` (the kept images), ``debias.json`` (method, target, what it cost) and, once evaluated by the *test*
judge and the second judge, ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

from fairdiff.errors import FairdiffError

DEBIAS_KIND = "debias"
DEBIAS_FILE = "debias.json"
METHODS = ("filter",)


def _verdict_fn(judge, data_cfg):
    """``images -> verdicts`` for the open-set judge (its own calibration, else the run's held-out images)."""
    from fairdiff.evaluation.openset import calibration_of, judge_images
    from fairdiff.evaluation.samples import reference_uint8

    cal = calibration_of(judge, None, None)
    if cal is None:
        ref, _ = reference_uint8(data_cfg)
        held_logits, held_feats = judge.predict(ref, all_classes=True)
        cal = calibration_of(judge, held_logits, held_feats)

    def verdicts(images: np.ndarray) -> np.ndarray:
        return judge_images(judge, images, cal).verdicts

    return verdicts


def debias_run(
    run_dir: str | Path,
    out_dir: str | Path,
    target,
    *,
    method: str = "filter",
    n: int | None = None,
    judge=None,
    seed: int | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    scheduler: str | None = None,
    max_draws: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    evaluate: bool = True,
    progress: bool = True,
) -> dict:
    """Debias the trained run ``run_dir`` toward ``target`` (shares per group) into ``out_dir``; returns the
    debias record (and ``metrics`` when ``evaluate``). Only ``method='filter'`` (generate-and-filter) for now."""
    from fairdiff.config import save_config
    from fairdiff.evaluation import evaluate_run
    from fairdiff.evaluation.evaluate import check_target
    from fairdiff.evaluation.judges import load_validation_judge
    from fairdiff.models import build_sampling_scheduler
    from fairdiff.runs import is_sd_run, load_model_checked, read_run_config, write_samples
    from fairdiff.sampling import sample
    from fairdiff.sampling.files import check_sampling_args, resolve_device
    from fairdiff.utils.io import write_json
    from fairdiff.utils.outputs import check_output_dir, write_marker

    from .filter import filter_to_target

    if method not in METHODS:
        raise FairdiffError(f"unknown debias method '{method}' (known: {', '.join(METHODS)})")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if is_sd_run(run_dir):
        raise FairdiffError(f"{run_dir} is a text-to-image run; 'debias --method filter' takes pixel or latent runs")
    cfg = read_run_config(run_dir)
    k = len(cfg.data.groups)
    tgt = check_target(target, k)
    n = int(n if n is not None else cfg.eval.n_samples)
    seed = int(cfg.sample.seed if seed is None else seed)
    steps = int(steps or cfg.sample.steps)
    scheduler = scheduler or cfg.sample.scheduler
    batch_size = int(batch_size or cfg.sample.batch_size)
    check_sampling_args(n, steps, cfg.sample.eta, batch_size)
    if max_draws is not None and max_draws < n:
        raise FairdiffError(f"--max-draws must be at least --n ({n}), got {max_draws}")
    state = check_output_dir(out_dir, DEBIAS_KIND, overwrite=overwrite, inputs=[run_dir], whole=True)
    dev = resolve_device(device)
    unet, sched_cfg, vae = load_model_checked(run_dir, dev)
    sched = build_sampling_scheduler(scheduler, sched_cfg)
    clf = load_validation_judge(judge, cfg.data, cfg.eval, progress=progress)
    if clf.num_classes != k:
        raise FairdiffError(f"the judge has {clf.num_classes} groups, the run has {k}")
    verdicts = _verdict_fn(clf, cfg.data)

    def draw(seeds: list[int]) -> np.ndarray:
        from fairdiff.evaluation.samples import to_uint8

        x = sample(unet, sched, seeds, batch_size=len(seeds), num_steps=steps, eta=cfg.sample.eta, device=dev,
                   progress=False, clip_output=vae is None)
        if vae is not None:
            from fairdiff.models.vae import decode

            x = decode(vae, x, batch_size)
        return to_uint8(x)

    t0 = time.perf_counter()
    res = filter_to_target(draw, verdicts, tgt, n, seed=seed, batch_size=batch_size, max_draws=max_draws,
                           progress=progress)
    record = {
        "method": method, "base": str(run_dir.resolve()), "target": tgt.tolist(), "n": n,
        "groups": list(cfg.data.groups), "seed": seed, "steps": steps, "scheduler": scheduler,
        "judge": clf.describe(), "judge_role": "validation (filters); the test judge scores metrics.json",
        **res.summary(), "seconds": round(time.perf_counter() - t0, 2),
    }
    out_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, pretrained=str(run_dir.resolve())),
        eval=dataclasses.replace(cfg.eval, target=tgt.tolist(), n_samples=n))
    # build beside the destination, then move into place: an interrupted debias leaves the old folder intact
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_config(out_cfg, tmp / "config.yaml")
        if (run_dir / "manifest.json").is_file():
            shutil.copy2(run_dir / "manifest.json", tmp / "manifest.json")
        meta = {"run": str(run_dir.resolve()), "n": n, "debias": method, "target": tgt.tolist(), "steps": steps,
                "scheduler": scheduler, "seed": seed}
        write_samples(tmp / "samples", res.images, res.seeds.tolist(), None, meta, png=False)
        write_json(tmp / DEBIAS_FILE, record)
        write_marker(tmp, DEBIAS_KIND)
        if out_dir.exists():
            if state == "new":
                out_dir.rmdir()
            else:  # "replace": fairdiff's own debias folder and --overwrite (checked above)
                shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if evaluate:
        metrics = evaluate_run(out_dir, progress=progress)
        record["metrics"] = metrics
    return record
