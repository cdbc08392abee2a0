"""``fairdiff debias RUN --method filter``: a debiased output folder made from a trained (base) run.

The output folder is a run folder without weights of its own: ``config.yaml`` (the base's config with
``eval.target`` set to the target and ``model.pretrained`` naming the base), the base's ``manifest.json``,
``samples/`` (the kept images), ``debias.json`` (method, target, what it cost) and, once evaluated by the *test*
judge and the second judge, ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.utils.partial import partial_key

from .clusters import cluster_method

DEBIAS_KIND = "debias"
DEBIAS_FILE = "debias.json"
METHODS = ("filter", "guide", "distill")
S0 = {"h": 100.0, "x": 1.0}  # the guidance controller's first non-zero scale per space (docs/debias.md)
CLASSIFIER_STEPS = 4000  # guide --reader classifier: fitting steps of the noise-aware group classifier
# images per pilot batch: the classifier's pilots decide the final scale to within a few hundredths of a share, so
# they are larger (with 256 the pilot set's own share of the minority, 0.21 at scale 0 against 0.15 in 2000 images
# of the MNIST 0 vs 1 base at eta 1, moved the chosen scale by 0.04 of share)
PILOT_N = {"heads": 256, "classifier": 1024, "x0": 1024, "distill": 4096}
GUIDE_JUDGE_SEED_OFFSET = 2  # guide --reader x0: a domain CNN of seed eval.seed + 2 reads the predicted clean image
# (the test judge is eval.seed, the validation judge, which chooses the scale, eval.seed + 1)
PILOT_SEED = 10_000_000  # pilot batches (guidance controller, clusters) draw seeds from here (never scored)
CLUSTER_PILOT = 2000  # the base's images the label-free clusters are fitted on
# the fine-tuning budget of ``distill`` (full fine-tuning of the base's U-Net on its own filtered images)
DISTILL_DEFAULTS = {"train_n": 2000, "steps": 400, "lr": 2e-4}


def _load_checked_judge(judge, cfg, k: int, progress: bool):
    """The validation judge, checked before any sampling as evaluate checks its judge: its number of groups
    against the run's, then one small batch of the run's held-out real images through it (it must run, give
    logits of the right shape, and only finite ones; else one line)."""
    from fairdiff.evaluation.judges import load_validation_judge
    from fairdiff.evaluation.samples import reference_uint8

    clf = load_validation_judge(judge, cfg.data, cfg.eval, progress=progress)
    if clf.num_classes != k:
        raise FairdiffError(f"the judge has {clf.num_classes} groups, the run has {k}")
    ref, _ = reference_uint8(cfg.data)
    if len(ref):
        clf.check_judge(ref)
    return clf


def _verdict_fn(judge, data_cfg=None, *, reference: np.ndarray | None = None):
    """``images -> verdicts`` for the open-set judge: its own calibration, else one from held-out real images
    (``reference``, or those of ``data_cfg``; with neither, the arg-max alone). The function's ``calibration``
    attribute is the :class:`Calibration` used (None for the arg-max)."""
    from fairdiff.evaluation.openset import calibration_of, judge_images
    from fairdiff.evaluation.samples import reference_uint8

    cal = calibration_of(judge, None, None)
    if cal is None:
        ref = reference if reference is not None or data_cfg is None else reference_uint8(data_cfg)[0]
        if ref is not None and len(ref):
            held_logits, held_feats = judge.predict(ref, all_classes=True)
            cal = calibration_of(judge, held_logits, held_feats)

    def verdicts(images: np.ndarray) -> np.ndarray:
        return judge_images(judge, images, cal).verdicts

    verdicts.calibration = cal
    return verdicts


def _drawer(unet, sched, vae, *, steps: int, eta: float, batch_size: int, device):
    """``seeds -> uint8 images`` of a pixel or latent run (decoded through ``vae``): one seed per image."""
    from fairdiff.evaluation.samples import to_uint8
    from fairdiff.sampling import sample

    def draw(seeds: list[int]) -> np.ndarray:
        x = sample(unet, sched, seeds, batch_size=min(len(seeds), batch_size), num_steps=steps, eta=eta,
                   device=device, progress=False, clip_output=vae is None)
        if vae is not None:
            from fairdiff.models.vae import decode

            x = decode(vae, x, batch_size)
        return to_uint8(x)

    return draw


def partial_file(out_dir: Path) -> Path:
    """Where a debias toward ``out_dir`` keeps what it has drawn so far (a filter's kept images after every batch,
    guidance's images after every chunk), so that the same command run again after an interruption continues."""
    from fairdiff.utils.partial import partial_path

    return partial_path(out_dir)


DRAW_CHUNK = 1024  # guided images between two saves of the final draw (rounded up to whole pilot batches)


def _draw_in_chunks(draw, n: int, batch: int, assign, path: Path, key: str) -> tuple[np.ndarray, float]:
    """``draw(a, b, assign)`` (images a..b-1 of the final draw; ``assign``: their group assignments, per-sample
    mode) by :func:`fairdiff.utils.partial.draw_in_chunks`: each chunk saved, an interrupted draw continued."""
    from fairdiff.utils.partial import draw_in_chunks

    return draw_in_chunks(lambda a, b: draw(a, b, None if assign is None else assign[a:b]), n, batch, DRAW_CHUNK,
                          path, key)


VERDICTS_FILE = "verdicts.csv"  # a filtered folder's kept images: seed,group (the keeping judge's verdict)
CLUSTERS_FILE = "clusters.npz"  # a label-free filtered folder's cluster judge (debias/clusters.py)


def _write_debias_folder(out_dir: Path, state: str, run_dir: Path, cfg, tgt, n: int, images, seeds, record: dict,
                         meta: dict, extra_dirs: dict | None = None, groups=None, clusters=None) -> None:
    """Build the debias folder beside its place and move it in: an interrupted debias leaves the old one intact.
    ``groups``: the kept images' verdicts (written to ``verdicts.csv`` beside the samples); ``clusters``: the
    label-free cluster judge that gave them (``clusters.npz``)."""
    from fairdiff.config import save_config
    from fairdiff.runs import write_samples
    from fairdiff.utils.io import write_json

    out_cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, pretrained=str(run_dir.resolve())),
        eval=dataclasses.replace(cfg.eval, target=[float(x) for x in tgt], n_samples=n))
    with staged_folder(out_dir, state) as tmp:
        save_config(out_cfg, tmp / "config.yaml")
        if (run_dir / "manifest.json").is_file():
            shutil.copy2(run_dir / "manifest.json", tmp / "manifest.json")
        write_samples(tmp / "samples", images, [int(x) for x in seeds], None,
                      {"run": str(run_dir.resolve()), "n": n, "target": [float(x) for x in tgt], **meta}, png=False)
        for name, src in (extra_dirs or {}).items():
            shutil.copytree(src, tmp / name)
        if groups is not None:
            rows = "".join(f"{int(s)},{int(g)}\n" for s, g in zip(seeds, groups))
            (tmp / VERDICTS_FILE).write_text("seed,group\n" + rows, encoding="utf-8")
        if clusters is not None:
            from .clusters import save_cluster_judge

            save_cluster_judge(clusters, tmp / CLUSTERS_FILE)
        write_json(tmp / DEBIAS_FILE, record)


@contextlib.contextmanager
def staged_folder(out_dir: Path, state: str):
    """A debias folder built beside its place (``.NAME.tmp``), marked and moved in whole when the block ends: an
    interrupted debias leaves the old folder (``state`` from ``check_output_dir``) intact and no half folder."""
    from fairdiff.utils.outputs import write_marker

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        write_marker(tmp, DEBIAS_KIND)
        if out_dir.exists():
            if state == "new":
                out_dir.rmdir()
            else:  # "replace": fairdiff's own debias folder and --overwrite (checked before any work)
                shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    debias record (and ``metrics`` when ``evaluate``).

    ``filter``: generate-and-filter; ``out_dir`` holds the kept images. ``distill``: see :func:`distill_run`.
    """
    from fairdiff.evaluation import evaluate_run
    from fairdiff.evaluation.evaluate import check_target
    from fairdiff.models import build_sampling_scheduler
    from fairdiff.runs import is_sd_run, load_model_checked, read_run_config
    from fairdiff.sampling.files import check_sampling_args, resolve_device
    from fairdiff.utils.io import sha256_arrays
    from fairdiff.utils.outputs import check_output_dir

    from .filter import filter_to_target

    if method not in METHODS:
        raise FairdiffError(f"unknown debias method '{method}' (known: {', '.join(METHODS)})")
    if method == "guide":
        return guide_run_to_target(run_dir, out_dir, target, n=n, judge=judge, seed=seed, steps=steps,
                                   device=device, overwrite=overwrite, evaluate=evaluate, progress=progress)
    if method == "distill":
        return distill_run(run_dir, out_dir, target, n=n, judge=judge, seed=seed, batch_size=batch_size,
                           steps=steps, scheduler=scheduler, max_draws=max_draws, device=device, overwrite=overwrite,
                           evaluate=evaluate, progress=progress)
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

    draw = _drawer(unet, sched, vae, steps=steps, eta=cfg.sample.eta, batch_size=batch_size, device=dev)

    clustering = cluster_method(judge)
    if clustering:  # label-free: clusters of the base's own pilot images, largest first
        from .clusters import fit_cluster_judge

        t_pilot = time.perf_counter()
        cj = fit_cluster_judge(draw(list(range(PILOT_SEED, PILOT_SEED + CLUSTER_PILOT))), k, seed=seed,
                               method=clustering)
        clf, verdicts = cj, cj.verdicts
        cluster_pilot_s = time.perf_counter() - t_pilot
    else:
        clf = _load_checked_judge(judge, cfg, k, progress)
        verdicts = _verdict_fn(clf, cfg.data)
        cluster_pilot_s = 0.0

    t0 = time.perf_counter()
    state_file = partial_file(out_dir)
    res = filter_to_target(draw, verdicts, tgt, n, seed=seed, batch_size=batch_size, max_draws=max_draws,
                           progress=progress, state_file=state_file, state_key={
                               "unet": sha256_arrays(unet.state_dict().items()), "judge": _judge_digest(clf),
                               "steps": steps, "scheduler": scheduler, "eta": cfg.sample.eta,
                               "vae": None if vae is None else sha256_arrays(vae.state_dict().items())})
    record = {
        "method": method, "base": str(run_dir.resolve()), "target": tgt.tolist(), "n": n,
        "groups": list(cfg.data.groups), "seed": seed, "steps": steps, "scheduler": scheduler,
        "judge": clf.describe(), "judge_role": "validation (filters); the test judge scores metrics.json",
        **res.summary(), "seconds": round(time.perf_counter() - t0, 2),
    }
    if clustering:
        record.update(judge_role="label-free clusters (filter); the test judge scores metrics.json",
                      cluster_pilot_n=CLUSTER_PILOT, cluster_pilot_seconds=round(cluster_pilot_s, 2))
    _write_debias_folder(out_dir, state, run_dir, cfg, tgt, n, res.images, res.seeds, record,
                         {"debias": method, "steps": steps, "scheduler": scheduler, "seed": seed}, groups=res.groups,
                         clusters=clf if clustering else None)
    state_file.unlink(missing_ok=True)  # the kept set is written: an interrupted run's state has served
    if evaluate:
        metrics = evaluate_run(out_dir, progress=progress)
        record["metrics"] = metrics
    return record


def distill_run(
    run_dir: str | Path,
    out_dir: str | Path,
    target,
    *,
    train_n: int | None = None,
    train_steps: int | None = None,
    lr: float | None = None,
    n: int | None = None,
    rounds: int = 1,
    pilot_n: int | None = None,
    mix_real: bool = False,
    balance: str = "weights",
    overwrite: bool = False,
    evaluate: bool = True,
    progress: bool = True,
    eval_target=None,
    **filter_args,
) -> dict:
    """Distil the target into the weights: fine-tune the base on its own generate-and-filter output.

    ``OUT-data/`` (a debias folder) gets ``train_n`` filtered images at the target (PNG files in ``images/``);
    ``OUT/`` is an ordinary run: the base's U-Net fine-tuned on them for ``train_steps`` steps (full fine-tuning,
    plain denoising loss, ``data.train_on=reference``), which samples at the target with no overhead. ``n`` is
    the number of images the distilled model is evaluated on (default ``eval.n_samples``).

    ``rounds=2`` corrects the first round's miss (the fine-tuned model keeps some of the base's lean): the first
    round is distilled into ``OUT-round1/``, a pilot of ``pilot_n`` of its images (default
    ``PILOT_N['distill']``; seeds from ``PILOT_SEED``, judged by the validation judge) gives its shares ``s1``, and
    the second round distils the base again, from the base, toward ``2 t - s1`` (clipped to [0.01, 0.99] per group
    and renormalised), evaluated against the requested ``t``. The pilot's noise passes one to one into the second
    round's share, hence its size: 4096 images put its standard error near 0.008 for a 50/50 target (1024 images
    once read 0.576 where the same model's 10,000 evaluation images read 0.536). A finished ``OUT-round1/`` of
    the same recipe (base, target, seed, ``train_n``, ``train_steps``, ``lr``) is reused, not trained again (an
    interrupted two-round run resumes there). ``eval_target`` (internal): the target ``OUT/`` is evaluated against.

    ``rounds`` up to ``MAX_ROUNDS``: round r < rounds is distilled into ``OUT-round<r>/`` and piloted (its
    ``pilot.json``); each round distils the base again, toward :func:`next_round_target` of the earlier rounds'
    points (from the third round on, a secant per group); the last round is ``OUT/``. A finished round whose model
    was distilled toward the target this run computes for it is reused, with its recorded pilot.

    ``mix_real``: fine-tune on the filtered images *and* the base's real training images together
    (``data.train_on=both``), each image's loss reweighted toward the target by its group (the real images' labels,
    the filtered images' verdicts in ``OUT-data/verdicts.csv``), instead of on the filtered images alone.
    ``balance="resample"`` (with ``mix_real``): batches drawn at the target instead of weighted losses
    (``method.balance``, methods/reweight.py).
    """
    from fairdiff.method_options import BALANCES

    if balance not in BALANCES:
        raise FairdiffError(f"--balance must be one of {', '.join(BALANCES)}, got '{balance}'")
    if balance != "weights" and not mix_real:
        raise FairdiffError("distill: --balance resample goes with --mix-real (the filtered images alone are at the "
                            "target already)")
    if not 1 <= rounds <= MAX_ROUNDS:
        raise FairdiffError(f"distill --rounds must be 1 to {MAX_ROUNDS}, got {rounds}")
    if pilot_n is not None and (rounds == 1 or pilot_n < 1):
        raise FairdiffError("distill: --pilot-n (a positive number of images) goes with --rounds 2 or more")
    if rounds > 1:
        return _distill_rounds(run_dir, out_dir, target, rounds=rounds, train_n=train_n, train_steps=train_steps,
                               lr=lr, n=n, pilot_n=pilot_n, mix_real=mix_real, balance=balance, overwrite=overwrite,
                               evaluate=evaluate, progress=progress, **filter_args)
    from fairdiff.config import load_config
    from fairdiff.data.reference import GROUPS_FILE
    from fairdiff.evaluation import evaluate_run
    from fairdiff.runs import read_run_config
    from fairdiff.training import train
    from fairdiff.utils.images import save_png
    from fairdiff.utils.io import write_json
    from fairdiff.utils.outputs import check_output_dir

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    train_n = int(train_n or DISTILL_DEFAULTS["train_n"])
    train_steps = int(train_steps or DISTILL_DEFAULTS["steps"])
    lr = float(lr or DISTILL_DEFAULTS["lr"])
    if train_n < 2 or train_steps < 1 or not lr > 0:
        raise FairdiffError("distill: --train-n >= 2, --train-steps >= 1 and --lr > 0 are needed")
    base_cfg = read_run_config(run_dir)
    data_dir = out_dir.with_name(out_dir.name + "-data")
    check_output_dir(out_dir, "run", overwrite=overwrite, inputs=[run_dir], whole=True)
    t0 = time.perf_counter()
    if not (data_dir / DEBIAS_FILE).is_file() or overwrite:
        filtered = debias_run(run_dir, data_dir, target, method="filter", n=train_n, overwrite=overwrite,
                              evaluate=False, progress=progress, **filter_args)
        images = np.load(data_dir / "samples" / "samples.npz")
        (data_dir / "images").mkdir(exist_ok=True)
        for img, s in zip(images["images"], images["seeds"]):
            save_png(img, data_dir / "images" / f"seed{int(s):07d}.png")
    else:  # an interrupted distill: the filtered set is kept and reused
        import json

        filtered = json.loads((data_dir / DEBIAS_FILE).read_text())
    _image_groups(data_dir)
    if mix_real and not (data_dir / "images" / GROUPS_FILE).is_file():
        raise FairdiffError(f"{data_dir} was filtered before the kept images' verdicts were recorded; --mix-real "
                            "needs them: run again with --overwrite")
    train_dir, mixed = data_dir / "images", None
    if mix_real and cluster_method(filter_args.get("judge")):  # label-free: the real images take their clusters
        mixed = _mix_by_clusters(data_dir, base_cfg)
        train_dir = data_dir / "mixed"
    filter_s = time.perf_counter() - t0
    tgt = filtered["target"]
    run_name = re.sub(r"[^A-Za-z0-9_.-]", "_", out_dir.name).strip(".") or "distill"
    cfg = load_config(run_dir / "config.yaml", [
        f"model.pretrained={run_dir.resolve()}", f"data.reference_dir={train_dir.resolve()}",
        *([f"data.train_on={'reference' if mixed else 'both'}", "method.name=reweight",
           f"method.target=[{','.join(str(float(t)) for t in tgt)}]",
          *([f"method.balance={balance}"] if balance != "weights" else [])]
          if mix_real else ["data.train_on=reference", "method.name=baseline"]), f"train.steps={train_steps}",
        f"train.lr={lr}", f"train.warmup_steps={min(25, train_steps)}", "train.ema_decay=0.99",
        f"train.checkpoint_every={max(train_steps // 2, 1)}",
        f"eval.target=[{','.join(str(float(t)) for t in (tgt if eval_target is None else eval_target))}]",
        f"eval.n_samples={int(n or base_cfg.eval.n_samples)}", f"name={run_name}",
        *([f"sample.seed={int(filter_args['seed'])}"] if filter_args.get("seed") is not None else [])])
    resume = "latest" if (out_dir / "config.yaml").is_file() and not overwrite else None
    t1 = time.perf_counter()
    train(cfg, out_dir, resume=resume, overwrite=overwrite, quiet=not progress)
    record = {"method": "distill", "base": str(run_dir.resolve()), "target": tgt, "train_n": train_n,
              "train_steps": train_steps, "lr": lr, "mix_real": mix_real, **({"mixed": mixed} if mixed else {}),
              **({"balance": balance} if balance != "weights" else {}),
              "filtered": {k: v for k, v in filtered.items() if k != "metrics"},
              "data_dir": str(data_dir), "filter_seconds": round(filter_s, 2),
              "finetune_seconds": round(time.perf_counter() - t1, 2)}
    write_json(out_dir / DEBIAS_FILE, record)
    if evaluate:
        record["metrics"] = evaluate_run(out_dir, progress=progress)
    return record


def _judged_by(description: dict | None) -> str:
    """'judge' for a labelled judge's description, else the clustering of a label-free one ('spectral' / 'kmeans')."""
    d = description or {}
    return d.get("name", "").split("-pca")[0] if d.get("kind") == "clusters (label-free)" else "judge"


def _mix_by_clusters(data_dir: Path, base_cfg) -> dict:
    """``OUT-data/mixed/``: the filtered images and the base's real training images, every one with its group in
    ``groups.csv``: the filtered images' verdicts, the real images' clusters under the filter's own cluster judge
    (``clusters.npz``; real images outside every cluster are left out). No label enters: the training images'
    attribute is never read. Returns counts for the record; a finished folder is reused."""
    import json

    from fairdiff.data import prepare_data
    from fairdiff.data.reference import GROUPS_FILE
    from fairdiff.evaluation.samples import to_uint8
    from fairdiff.metrics import OUTSIDE
    from fairdiff.utils.images import save_png

    from .clusters import load_cluster_judge

    out, info_file = data_dir / "mixed", data_dir / "mixed" / "mixed.json"
    if info_file.is_file() and (out / GROUPS_FILE).is_file():
        return json.loads(info_file.read_text())
    if not (data_dir / CLUSTERS_FILE).is_file():
        raise FairdiffError(f"{data_dir} was filtered before its clusters were recorded; --mix-real with --judge "
                            "clusters needs them: run again with --overwrite")
    cj = load_cluster_judge(data_dir / CLUSTERS_FILE)
    real = to_uint8(prepare_data(base_cfg.data).train_images)
    v = cj.verdicts(real)
    tmp = data_dir / ".mixed.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(data_dir / "images", tmp)
    rows = []
    for i in np.flatnonzero(v != OUTSIDE):
        save_png(real[i], tmp / f"real{int(i):06d}.png")
        rows.append(f"real{int(i):06d}.png,{int(v[i])}\n")
    with open(tmp / GROUPS_FILE, "a", encoding="utf-8") as f:  # the filtered images' rows are there already
        f.writelines(rows)
    k = cj.num_classes
    info = {"real": len(real), "real_outside": int((v == OUTSIDE).sum()),
            "real_clusters": np.bincount(v[v != OUTSIDE], minlength=k).tolist(), "clusters": cj.describe()}
    (tmp / "mixed.json").write_text(json.dumps(info), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return info


def _image_groups(data_dir: Path) -> None:
    """``OUT-data/images/groups.csv`` (file,group) from the filter's ``verdicts.csv``, so that the filtered images
    can be trained on beside labelled ones (``data.train_on=both``); nothing when the verdicts were not recorded."""
    from fairdiff.data.reference import GROUPS_FILE

    verdicts, table = data_dir / VERDICTS_FILE, data_dir / "images" / GROUPS_FILE
    if table.is_file() or not verdicts.is_file():
        return
    rows = verdicts.read_text(encoding="utf-8").splitlines()[1:]
    body = "".join(f"seed{int(seed):07d}.png,{int(g)}\n" for seed, g in (r.split(",") for r in rows if r))
    tmp = table.with_name(table.name + ".tmp")
    tmp.write_text("file,group\n" + body, encoding="utf-8")
    tmp.replace(table)


def _finished_round(folder: Path, run_dir: Path, tgt, kw: dict, default_seed: int) -> dict | None:
    """The record of a finished distill in ``folder`` whose model was distilled toward ``tgt`` by the same recipe
    (base, seed, train_n, train_steps, lr, mix_real, judge), else None. The last round of a finished multi-round
    run counts too (its model was distilled toward its ``corrected_target``)."""
    import json

    try:
        rec = json.loads((folder / DEBIAS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not (folder / "model").is_dir() or rec.get("method") != "distill":
        return None
    toward = rec.get("corrected_target", rec.get("target", []))  # what its model was distilled toward
    same = (rec.get("base") == str(Path(run_dir).resolve())
            and len(toward) == len(tgt) and np.allclose(toward, tgt)
            and rec.get("train_n") == int(kw.get("train_n") or DISTILL_DEFAULTS["train_n"])
            and rec.get("train_steps") == int(kw.get("train_steps") or DISTILL_DEFAULTS["steps"])
            and rec.get("lr") == float(kw.get("lr") or DISTILL_DEFAULTS["lr"])
            and bool(rec.get("mix_real", False)) == bool(kw.get("mix_real", False))
            and rec.get("balance", "weights") == kw.get("balance", "weights")
            and _judged_by(rec.get("filtered", {}).get("judge")) == (cluster_method(kw.get("judge")) or "judge")
            and rec.get("filtered", {}).get("seed") == int(default_seed if kw.get("seed") is None else kw["seed"]))
    return rec if same else None


MAX_ROUNDS = 4  # distill --rounds at most
SLOPE_RANGE = (0.5, 2.0)  # the secant's slope d(share)/d(distilled target), clipped to this range
SLOPE_MIN_STEP = 0.02  # a group whose distilled target moved less than this between two rounds keeps slope 1


def next_round_target(target, points) -> np.ndarray:
    """The target the next distill round distils the base toward, from the earlier rounds' ``points``
    ``[(t_r, s_r), ...]`` (the target round r was distilled toward, its pilot shares; ``t_1`` = ``target``).

    Per group, ``t_next = t_r + (target - s_r) / slope``: after one round the slope is 1 (``2 target - s_1``: the
    miss assumed to repeat); after two or more it is the secant through the last two points, ``(s_r - s_{r-1}) /
    (t_r - t_{r-1})``, clipped to ``SLOPE_RANGE``, and 1 where the group's target moved less than
    ``SLOPE_MIN_STEP`` or the secant is not positive (the pilot's noise would decide it). Clipped to [0.01, 0.99]
    per group and renormalised."""
    tgt = np.asarray(target, dtype=float)
    t_r, s_r = (np.asarray(x, dtype=float) for x in points[-1])
    slope = np.ones_like(tgt)
    if len(points) > 1:
        t_p, s_p = (np.asarray(x, dtype=float) for x in points[-2])
        dt = t_r - t_p
        moved = np.abs(dt) >= SLOPE_MIN_STEP
        secant = np.divide(s_r - s_p, dt, out=np.zeros_like(tgt), where=moved)
        ok = moved & (secant > 0)
        slope[ok] = np.clip(secant[ok], *SLOPE_RANGE)
    nxt = np.clip(t_r + (tgt - s_r) / slope, 0.01, 0.99)
    return nxt / nxt.sum()


PILOT_FILE = "pilot.json"  # a distill round's pilot: its shares on the validation judge (or the clusters)


def draw_pilot(folder: str | Path, n: int, *, cfg=None, device=None, scheduler=None, steps=None, batch_size=None,
               **_ignored) -> np.ndarray:
    """``n`` uint8 images of the model in run folder ``folder``, seeds ``PILOT_SEED`` .. (never scored), with the
    run's sampler unless ``scheduler`` / ``steps`` / ``batch_size`` say otherwise (debias options pass through)."""
    from fairdiff.models import build_sampling_scheduler
    from fairdiff.runs import load_model_checked, read_run_config
    from fairdiff.sampling.files import resolve_device

    cfg = cfg or read_run_config(folder)
    dev = resolve_device(device)
    unet, sched_cfg, vae = load_model_checked(Path(folder), dev)
    draw = _drawer(unet, build_sampling_scheduler(scheduler or cfg.sample.scheduler, sched_cfg), vae,
                   steps=int(steps or cfg.sample.steps), eta=cfg.sample.eta,
                   batch_size=int(batch_size or cfg.sample.batch_size), device=dev)
    return draw(list(range(PILOT_SEED, PILOT_SEED + n)))


def _round_pilot(folder: Path, verdicts, pilot_n: int, kw: dict, cfg) -> dict:
    """The pilot of the model in ``folder`` (``pilot_n`` images, seeds from ``PILOT_SEED``), recorded in its
    ``pilot.json``; a recorded pilot of the same size is reused (an interrupted run does not draw it again)."""
    import json

    from fairdiff.metrics import OUTSIDE

    try:
        rec = json.loads((folder / PILOT_FILE).read_text())
        if rec.get("n") == pilot_n and rec.get("seed") == PILOT_SEED:
            return {**rec, "reused": True}
    except (OSError, ValueError):
        pass
    tp = time.perf_counter()
    v = verdicts(draw_pilot(folder, pilot_n, cfg=cfg, **kw))
    valid = v != OUTSIDE
    k = len(cfg.data.groups)
    rec = write_pilot(folder, pilot_n, (np.bincount(v[valid], minlength=k) / max(int(valid.sum()), 1)).tolist(),
                      float(valid.mean()), round(time.perf_counter() - tp, 2))
    return {**rec, "reused": False}


def write_pilot(folder: Path, n: int, shares: list, valid_rate: float, seconds: float | None) -> dict:
    """A round's ``pilot.json``: ``n`` images from ``PILOT_SEED``, their shares among valid images, the valid rate."""
    from fairdiff.utils.io import write_json

    rec = {"n": n, "seed": PILOT_SEED, "shares": shares, "valid_rate": valid_rate, "seconds": seconds}
    write_json(Path(folder) / PILOT_FILE, rec)
    return rec


def _distill_rounds(run_dir, out_dir, target, *, rounds: int, n, overwrite: bool, evaluate: bool, progress: bool,
                    pilot_n: int | None = None, **kw) -> dict:
    """:func:`distill_run` with ``rounds`` >= 2 (see there)."""
    from fairdiff.evaluation.evaluate import check_target
    from fairdiff.runs import read_run_config
    from fairdiff.utils.io import write_json
    from fairdiff.utils.outputs import check_output_dir

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = read_run_config(run_dir)
    tgt = check_target(target, len(cfg.data.groups))
    dirs = [out_dir.with_name(f"{out_dir.name}-round{r}") for r in range(1, rounds)]
    first = None if overwrite else _finished_round(dirs[0], run_dir, tgt, kw, cfg.sample.seed)
    for d in (out_dir, *(() if first else (dirs[0],))):  # refused (one line) before the first round's minutes
        check_output_dir(d, "run", overwrite=overwrite, inputs=[run_dir], whole=True)
    t0 = time.perf_counter()
    if cluster_method(kw.get("judge")):  # label-free: every pilot judged by the first round's clusters of the base
        from .clusters import load_cluster_judge

        clusters_file = dirs[0].with_name(dirs[0].name + "-data") / CLUSTERS_FILE

        def verdicts(images):
            if not clusters_file.is_file():
                raise FairdiffError(f"{clusters_file.parent} was filtered before its clusters were recorded; run "
                                    "again with --overwrite")
            return load_cluster_judge(clusters_file).verdicts(images)
    else:
        verdicts = _verdict_fn(_load_checked_judge(kw.get("judge"), cfg, len(tgt), progress), cfg.data)
    pilot_n = int(pilot_n or PILOT_N["distill"])
    points, done, t_r = [], [], tgt
    for r, folder in enumerate(dirs, start=1):
        rec = first if r == 1 else (None if overwrite else _finished_round(folder, run_dir, t_r, kw,
                                                                          cfg.sample.seed))
        reused = rec is not None
        if rec is None:
            (folder / PILOT_FILE).unlink(missing_ok=True)
            rec = distill_run(run_dir, folder, t_r.tolist(), n=n, overwrite=overwrite, evaluate=False,
                              progress=progress, **kw)
        elif progress:
            print(f"distill round {r}: reusing the finished round in {folder}", flush=True)
        pilot = _round_pilot(folder, verdicts, pilot_n, kw, cfg)
        points.append((t_r, np.asarray(pilot["shares"])))
        t_r = next_round_target(tgt, points)
        if progress:
            print(f"distill round {r}: shares {np.round(pilot['shares'], 3).tolist()} at target {tgt.tolist()}; "
                  f"round {r + 1} toward {t_r.round(4).tolist()}", flush=True)
        done.append({"dir": str(folder), "target": points[-1][0].tolist(), "pilot_shares": pilot["shares"],
                     "pilot_valid_rate": pilot["valid_rate"], "pilot_n": pilot_n, "pilot_seconds": pilot["seconds"],
                     "pilot_reused": pilot["reused"], "reused": reused,
                     "filter_seconds": rec.get("filter_seconds", 0.0),
                     "finetune_seconds": rec.get("finetune_seconds", 0.0)})
    last = distill_run(run_dir, out_dir, t_r.tolist(), n=n, overwrite=overwrite, evaluate=False, progress=progress,
                       eval_target=tgt.tolist(), **kw)
    record = {**last, "target": tgt.tolist(), "rounds": rounds, "corrected_target": t_r.tolist(),
              **{f"round{r}": d for r, d in enumerate(done, start=1)},
              "filter_seconds": round(sum(d["filter_seconds"] for d in done) + last["filter_seconds"], 2),
              "finetune_seconds": round(sum(d["finetune_seconds"] for d in done) + last["finetune_seconds"], 2),
              "seconds": round(time.perf_counter() - t0, 2)}
    write_json(out_dir / DEBIAS_FILE, record)
    if evaluate:
        from fairdiff.evaluation import evaluate_run

        record["metrics"] = evaluate_run(out_dir, progress=progress)
    return record


def cluster_pilot(unet, sched_cfg, k: int, steps: int, *, seed: int, device, guidance=None,
                  method: str = "spectral"):
    """``CLUSTER_PILOT`` images of the base (seeds from ``PILOT_SEED``, DDIM with ``steps``; ``guidance`` may
    record along the way) and their clusters (:func:`fit_cluster_judge` with ``method``): the cluster judge, the uint8
    images and each image's cluster (``OUTSIDE`` beyond every cluster's radius)."""
    from fairdiff.evaluation.samples import to_uint8
    from fairdiff.models import build_sampling_scheduler
    from fairdiff.sampling import sample

    from .clusters import fit_cluster_judge

    x = sample(unet, build_sampling_scheduler("ddim", sched_cfg), range(PILOT_SEED, PILOT_SEED + CLUSTER_PILOT),
               batch_size=250, num_steps=steps, guidance=guidance, device=device, progress=False)
    images = to_uint8(x)
    cj = fit_cluster_judge(images, k, seed=seed, method=method)
    return cj, images, cj.verdicts(images)


def cluster_heads(unet, sched_cfg, k: int, steps: int, *, seed: int, device, heldout: float = 0.25,
                  pool: str = "flatten", method: str = "spectral"):
    """Label-free heads (the SelfDebias-style twin of distribution guidance): the base's :func:`cluster_pilot`
    images are drawn while h is recorded at every DDIM step; their clusters label them (images outside every
    cluster are dropped); the one heads fitter fits a head per step on the recorded h. Returns the cluster judge
    and a :class:`HeadsTrainResult` (a seeded ``heldout`` share of the images scores each step's head)."""
    import torch

    from fairdiff.metrics import OUTSIDE
    from fairdiff.models.heads import HeadsConfig, model_fingerprint, schedule_timesteps
    from fairdiff.sampling.denoisers import RecordH
    from fairdiff.training.heads import HeadsTrainResult, fit_step_heads, split_heldout

    t0 = time.perf_counter()
    rec = RecordH(pool, unet=unet)
    cj, _, verdicts = cluster_pilot(unet, sched_cfg, k, steps, seed=seed, device=device, guidance=rec,
                                    method=method)
    labels = torch.from_numpy(verdicts)
    keep = torch.nonzero(labels != OUTSIDE).flatten()
    train, held = split_heldout(keep, heldout, seed)
    n_held = len(held)
    feats = rec.feats()
    cfg = HeadsConfig(attributes={"group": k}, num_steps=steps, scheduler="ddim",
                      timesteps=schedule_timesteps("ddim", sched_cfg, steps), pool=pool, h_shape=rec.h_shape,
                      mode="generated", fitted_on=model_fingerprint(unet))
    heads, tr, he = fit_step_heads(cfg, feats[:, train], {"group": labels[train]},
                                   heldout_feats=feats[:, held] if n_held else None,
                                   heldout_labels={"group": labels[held]} if n_held else None)
    return cj, HeadsTrainResult(heads, {a: v for a, v in he.items() if v}, tr, time.perf_counter() - t0)


def _group_classifier(cfg, sched_cfg, path, save_to: Path, steps: int, dev, progress: bool, *, in_shape,
                      images=None, groups=None, heldout=None, seed: int = 0):
    """The noise-aware group classifier of ``guide --reader classifier``: read from ``path`` (with the group
    shares its record says it was fitted on) or fitted (group-balanced batches) and saved to ``save_to``; returns
    it, the group shares of the images it was fitted on (the base's, which the guidance divides out) and a record
    (held-out balanced accuracy per noise level). Fitted on the run's training images and their labels, or,
    label-free, on ``images`` (float, [-1, 1]) with ``groups`` (the base's own images and their clusters;
    ``heldout``: images and groups that score it)."""
    import torch
    from diffusers import DDPMScheduler

    from fairdiff.models.discriminator import NoiseAwareDiscriminator, load_discriminator, save_discriminator
    from fairdiff.training.discriminator import fit_group_classifier, group_accuracy
    from fairdiff.utils.io import read_json_checked, write_json

    k = len(cfg.data.groups)
    noise = DDPMScheduler.from_config(sched_cfg)  # the base's own forward process
    t0 = time.perf_counter()
    if path is not None:
        try:
            clf = load_discriminator(path, dev)
        except FileNotFoundError as e:
            raise FairdiffError(f"--classifier {path}: {e.strerror or e} (a folder written by guide --reader "
                                "classifier)") from None
        except Exception as e:  # a truncated or foreign file: one line, never a traceback
            raise FairdiffError(f"--classifier {path}: cannot read it ({type(e).__name__}: {e})") from None
        if getattr(clf, "out_dim", 1) != k or list(clf.config["in_shape"]) != list(in_shape):
            raise FairdiffError(f"--classifier {path} reads {clf.config['in_shape']} images into "
                                f"{getattr(clf, 'out_dim', 1)} groups; this run has {list(in_shape)} images in {k} "
                                "groups")
        rho = read_json_checked(Path(path) / "record.json", "classifier record").get("train_shares")
        if not isinstance(rho, list) or len(rho) != k:
            raise FairdiffError(f"--classifier {path}: its record.json lacks the {k} group shares it was fitted on")
        info = {"fitted": False, "path": str(path)}
    else:
        if images is None:
            from fairdiff.data import prepare_data

            data = prepare_data(cfg.data)
            images = torch.as_tensor(np.asarray(data.train_images)).float()
            groups = np.asarray(data.train_groups)
            if len(data.heldout_images):
                heldout = (torch.as_tensor(np.asarray(data.heldout_images)).float(), np.asarray(data.heldout_groups))
            labels = "the run's training images and their group labels"
        else:
            labels = "the base's own images and their clusters (no label)"
        groups = torch.as_tensor(np.asarray(groups), dtype=torch.long)
        rho = (torch.bincount(groups, minlength=k).double() / len(groups)).tolist()
        clf = NoiseAwareDiscriminator(images.shape[1:], width=64, num_train_timesteps=noise.config.num_train_timesteps,
                                      out_dim=k)
        fit = fit_group_classifier(clf, images, groups, noise, steps=steps, batch_size=64,
                                   seed=cfg.train.seed + seed, device=dev, progress=progress)
        info = {"fitted": True, "labels": labels, **fit}
        if heldout is not None and len(heldout[0]):
            info["heldout"] = group_accuracy(clf, heldout[0], np.asarray(heldout[1]), noise, seed=cfg.train.seed,
                                             device=dev)
        info["seconds"] = round(time.perf_counter() - t0, 1)
        save_discriminator(clf, save_to)
        write_json(save_to / "record.json", {**info, "train_shares": rho, "groups": list(cfg.data.groups)})
    for p in clf.parameters():  # loaded classifiers too (the fit freezes its own)
        p.requires_grad_(False)
    info.setdefault("seconds", round(time.perf_counter() - t0, 1))
    return clf.to(dev).eval(), rho, info


def _in_shape(unet) -> list[int]:
    """The shape of one sample of the U-Net (channels, height, width): what a classifier on x_t reads."""
    c = unet.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    return [int(c.in_channels), int(size), int(size)]


def _label_free_classifier(cfg, unet, sched_cfg, path, save_to: Path, k: int, steps: int, classifier_steps: int,
                           dev, progress: bool, seed: int, method: str = "spectral"):
    """The label-free classifier of ``guide --judge clusters --reader classifier``: the base's own
    :func:`cluster_pilot` images labelled by their clusters (``method``; outside images dropped; a seeded quarter held
    out), a noise-aware classifier fitted on them, the clusters saved beside it (``clusters.npz``) so that a
    later run reads both back. Returns the cluster judge, the classifier, the base's shares over the clusters and
    a record."""
    import torch

    from fairdiff.metrics import OUTSIDE
    from fairdiff.training.heads import split_heldout
    from fairdiff.utils.io import write_json

    from .clusters import load_cluster_judge, save_cluster_judge

    t0 = time.perf_counter()
    if path is not None:
        f = Path(path) / "clusters.npz"
        if not f.is_file():
            raise FairdiffError(f"--classifier {path} has no clusters.npz: it was fitted on labels; with --judge "
                                "clusters give a classifier folder written by a label-free guide run")
        cj = load_cluster_judge(f)
        if cj.num_classes != k:
            raise FairdiffError(f"--classifier {path}: its clusters are {cj.num_classes} groups, this run has {k}")
        clf, rho, info = _group_classifier(cfg, sched_cfg, path, save_to, classifier_steps, dev, progress,
                                           in_shape=_in_shape(unet))
        return cj, clf, rho, info
    cj, images, verdicts = cluster_pilot(unet, sched_cfg, k, steps, seed=seed, device=dev, method=method)
    pilot_s = time.perf_counter() - t0
    labels = torch.from_numpy(verdicts)
    keep = torch.nonzero(labels != OUTSIDE).flatten()
    train, held = split_heldout(keep, 0.25, seed)
    x = torch.from_numpy(images).float() / 127.5 - 1.0  # the quantised images, as the training images are
    clf, rho, info = _group_classifier(cfg, sched_cfg, None, save_to, classifier_steps, dev, progress,
                                       in_shape=_in_shape(unet), images=x[train], groups=labels[train],
                                       heldout=(x[held], labels[held]), seed=seed)
    save_cluster_judge(cj, save_to / "clusters.npz")
    info.update(cluster_pilot_n=CLUSTER_PILOT, cluster_pilot_seconds=round(pilot_s, 2),
                outside=int((labels == OUTSIDE).sum()), seconds=round(time.perf_counter() - t0, 1))
    # the saved record counts the whole one-time cost (cluster pilot + fit), as a later run that reads it reports it
    write_json(save_to / "record.json", {**info, "train_shares": rho, "groups": list(cfg.data.groups)})
    return cj, clf, rho, info


def _clean_judge(cfg, dev, progress: bool):
    """The clean-image classifier of ``guide --reader x0``: the domain CNN of the run's groups trained with seed
    ``eval.seed + GUIDE_JUDGE_SEED_OFFSET`` (cached as every domain CNN; neither the validation nor the test judge),
    frozen; the group shares of the base's training images (which the guidance divides out) and a record."""
    import torch

    from fairdiff.data import prepare_data
    from fairdiff.evaluation.judges.domain import DomainClassifierConfig, domain_classifier
    from fairdiff.models.classifier import DomainCNN

    t0 = time.perf_counter()
    cc = DomainClassifierConfig()
    cc.steps, cc.seed = cfg.eval.classifier_steps, cfg.eval.seed + GUIDE_JUDGE_SEED_OFFSET
    judge = domain_classifier(cfg.data, cfg.eval, clf_cfg=cc, progress=progress)
    model = DomainCNN.from_pretrained(Path(judge.info["cache"]) / "model").to(dev).eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    k = len(cfg.data.groups)
    groups = torch.as_tensor(np.asarray(prepare_data(cfg.data).train_groups), dtype=torch.long)
    rho = (torch.bincount(groups, minlength=k).double() / len(groups)).tolist()
    info = {"fitted": False, "judge": judge.name, "seed": cc.seed, "heldout_accuracy": judge.accuracy,
            "reads": "the denoiser's predicted clean image", "seconds": round(time.perf_counter() - t0, 1)}
    return model, rho, info


def _judge_digest(judge) -> dict:
    """What decides a judge's verdicts, for the pilot cache: its description, and its centroids when it is a
    label-free cluster judge (whose description alone does not pin them)."""
    from fairdiff.utils.io import sha256_arrays

    d = dict(judge.describe())
    if hasattr(judge, "centroids"):
        d["arrays"] = sha256_arrays(list(judge.arrays().items()))
    return d


def guide_run_to_target(
    run_dir: str | Path,
    out_dir: str | Path,
    target,
    *,
    heads: str | Path | None = None,
    n: int | None = None,
    judge=None,
    seed: int | None = None,
    steps: int | None = None,
    temperature: float = 1.0,
    pilot_n: int | None = None,
    max_pilots: int = 10,
    valid_drop: float = 0.02,
    tol: float = 0.01,
    s0: float | None = None,
    mode: str = "batch",
    space: str = "h",
    reader: str = "heads",
    classifier: str | Path | None = None,
    classifier_steps: int = CLASSIFIER_STEPS,
    eta: float | None = None,
    device: str | None = None,
    overwrite: bool = False,
    evaluate: bool = True,
    progress: bool = True,
    force: bool = False,
    pilot_cache: bool = True,
    then_filter: bool = False,
    max_draws: int | None = None,
    min_t: int = 0,
) -> dict:
    """Distribution guidance whose scale a controller finds (:func:`fairdiff.debias.guide.find_scale`).

    Heads are fitted on the run's training images for its sampling schedule (or read from ``heads``); pilot
    batches of ``pilot_n`` images (default 256 with heads, 1024 with the classifier; seeds from ``PILOT_SEED``,
    judged by the validation judge) choose the scale;
    then ``n`` images (seeds ``seed ..``) are drawn at that scale into ``out_dir`` (a debias folder with the heads
    in ``heads/``) and scored by the test judge. ``mode``: ``batch`` (the batch's share is pushed toward the
    target) or ``sample`` (each image is assigned a group in the target's proportions and guided toward it).
    ``space``: where the loss gradient acts: ``h`` (the middle block's output is edited, Balancing Act) or ``x``
    (the gradient w.r.t. x_t through the heads and the down path is added to the model output, as classifier
    guidance does). ``reader``: what reads the group from the sample: ``heads`` (linear heads on h-space),
    ``classifier`` (a noise-aware group classifier on x_t, fitted here on the run's training images for
    ``classifier_steps`` steps or read from ``classifier``; :class:`~fairdiff.methods.classifier_guidance.
    ClassifierGuidance`, whose scale 1 is exact for an exact classifier) or ``x0`` (a classifier of clean images,
    the domain CNN of seed ``eval.seed + 2``, neither the validation nor the test judge, reads the denoiser's
    predicted clean image and its gradient flows back through the denoiser: :class:`~fairdiff.methods.
    classifier_guidance.CleanClassifierGuidance`; nothing is fitted on noisy images). ``s0``: the controller's first
    non-zero scale (default 100 for heads in ``h``, 1 for ``x`` and for the classifiers). ``eta``: DDIM's noise (0
    deterministic, 1 ancestral); default 1 with the classifiers (classifier guidance corrects a stochastic sampler;
    docs/debias.md measures deterministic DDIM stopping short of the target), 0 with heads. Every image keeps its
    own noise seed, so pilots stay common random numbers.
    ``force``: use ``heads`` fitted on another model's weights (a warning instead of an error).
    ``pilot_cache``: keep judged pilots in ``$FAIRDIFF_CACHE/pilots`` (:class:`~fairdiff.debias.guide.PilotCache`,
    keyed by the weights of the model and the reader, the judge, target and sampler): a second seed, or a rerun,
    of the same guidance skips the pilots it has judged before (the record counts the hits).
    ``then_filter``: where guidance alone stops short (the valid-rate floor holds the scale below the target), draw
    at the scale found and keep images to the target's quotas with the validation judge, as ``filter`` does
    (images no group's member are never kept; ``max_draws`` as there): the target exactly, at fewer images drawn
    per kept one than filtering the unguided base.
    ``min_t`` (classifier and x0 only): guide only the steps at timesteps >= ``min_t``; below it the base denoises alone
    (the group is decided early, and late classifier gradients edit strokes; docs/debias.md measures both).
    """
    import tempfile

    import torch

    from fairdiff.data import prepare_data
    from fairdiff.evaluation import evaluate_run
    from fairdiff.evaluation.evaluate import check_target
    from fairdiff.evaluation.samples import to_uint8
    from fairdiff.methods.classifier_guidance import ClassifierGuidance, CleanClassifierGuidance
    from fairdiff.methods.guidance import AssignedGuidance, DistributionGuidance
    from fairdiff.metrics import OUTSIDE
    from fairdiff.models import build_sampling_scheduler
    from fairdiff.models.heads import load_heads, save_heads
    from fairdiff.runs import read_run_config
    from fairdiff.sampling import sample
    from fairdiff.sampling.files import check_sampling_args, resolve_device
    from fairdiff.sampling.guided import check_heads_fit, load_guidable
    from fairdiff.training.heads import train_heads
    from fairdiff.utils.outputs import check_output_dir

    from fairdiff.data.sources import cache_dir
    from fairdiff.utils.io import sha256_arrays

    from .guide import Pilot, PilotCache, find_scale

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    cfg = read_run_config(run_dir)
    k = len(cfg.data.groups)
    tgt = check_target(target, k)
    if (tgt <= 0).any():
        raise FairdiffError("guide: every target share must be above 0 (guidance divides by it); use filter")
    n = int(n if n is not None else cfg.eval.n_samples)
    seed = int(cfg.sample.seed if seed is None else seed)
    steps = int(steps or cfg.sample.steps)
    if mode not in ("batch", "sample"):
        raise FairdiffError(f"guide mode must be 'batch' or 'sample', got '{mode}'")
    if space not in ("h", "x"):
        raise FairdiffError(f"guide space must be 'h' or 'x', got '{space}'")
    if reader not in ("heads", "classifier", "x0"):
        raise FairdiffError(f"guide reader must be 'heads', 'classifier' or 'x0', got '{reader}'")
    if reader != "heads" and (heads is not None or space != "h"):
        raise FairdiffError(f"--heads and --space belong to --reader heads; --reader {reader} guides in x_t")
    if reader != "classifier" and classifier is not None:
        raise FairdiffError("--classifier belongs to --reader classifier")
    if not 1 <= int(classifier_steps) <= 1_000_000:
        raise FairdiffError(f"--classifier-steps must lie in [1, 1000000], got {classifier_steps}")
    s0 = float((S0[space] if reader == "heads" else 1.0) if s0 is None else s0)
    eta = float((0.0 if reader == "heads" else 1.0) if eta is None else eta)
    pilot_n = int(PILOT_N[reader] if pilot_n is None else pilot_n)
    if not math.isfinite(s0) or s0 <= 0:
        raise FairdiffError("guide: --s0 must be a finite number above 0")
    if pilot_n < 16 or max_pilots < 2:
        raise FairdiffError("guide: --pilot-n >= 16 and --max-pilots >= 2 are needed")
    check_sampling_args(n, steps, eta, pilot_n)
    if min_t and (reader == "heads" or not int(min_t) > 0 or int(min_t) != min_t):
        raise FairdiffError("guide: --min-t (a positive timestep) goes with --reader classifier or x0")
    min_t = int(min_t or 0)
    if max_draws is not None and (not then_filter or max_draws < n):
        raise FairdiffError("--max-draws belongs to --then-filter" if not then_filter
                            else f"--max-draws must be at least --n ({n}), got {max_draws}")
    state = check_output_dir(out_dir, DEBIAS_KIND, overwrite=overwrite, inputs=[run_dir], whole=True)
    dev = resolve_device(device)
    unet, sched_cfg = load_guidable(run_dir, dev)
    clustering = cluster_method(judge)
    label_free = clustering is not None
    if label_free and reader == "x0":
        raise FairdiffError("guide --reader x0 reads the groups with a judge trained on labels; with --judge "
                            f"{judge} use --reader classifier or heads")
    if label_free and heads is not None:
        raise FairdiffError("guide --judge clusters fits its heads on the clusters of the base's own images; "
                            "leave out --heads")
    clf = None if label_free else _load_checked_judge(judge, cfg, k, progress)  # one line before heads are fitted
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fairdiff-guide-"))
    try:
        clf_model = rho = None
        if reader == "classifier" and label_free:  # no label anywhere: the classifier learns the base's clusters
            cj, clf_model, rho, heads_info = _label_free_classifier(cfg, unet, sched_cfg, classifier,
                                                                    work / "classifier", k, steps, classifier_steps,
                                                                    dev, progress, seed, method=clustering)
            clf, verdicts = cj, cj.verdicts
        elif reader == "x0":
            clf_model, rho, heads_info = _clean_judge(cfg, dev, progress)
            unet.requires_grad_(False)  # the gradient flows through the denoiser to x_t, never to its weights
        elif reader == "classifier":
            clf_model, rho, heads_info = _group_classifier(cfg, sched_cfg, classifier, work / "classifier",
                                                           classifier_steps, dev, progress, in_shape=_in_shape(unet))
        elif label_free:  # no label anywhere: clusters of the base's own images label its recorded h
            cj, fit = cluster_heads(unet, sched_cfg, k, steps, seed=seed, device=dev, method=clustering)
            clf, verdicts = cj, cj.verdicts
            save_heads(fit.heads, work / "heads", {"run": str(run_dir), "labels": f"{clustering} clusters of the "
                                                   "base's own images", "heldout_accuracy": fit.heldout_accuracy,
                                                   "seconds": round(fit.seconds, 1)})
            heads_obj = fit.heads.to(dev).eval()
            held = fit.heldout_accuracy.get("group", [])
            heads_info = {"fitted": True, "labels": "clusters", "cluster_pilot_n": CLUSTER_PILOT,
                          "heldout_accuracy_mean": float(np.mean(held)) if held else None}
        elif heads is None:
            data = prepare_data(cfg.data)
            fit = train_heads(unet, sched_cfg, data.train_images, data.train_groups, steps, "ddim",
                              heldout_images=data.heldout_images, heldout_labels=data.heldout_groups,
                              num_classes=k, progress=progress)
            held = fit.heldout_accuracy.get("group", [])
            save_heads(fit.heads, work / "heads", {"run": str(run_dir), "heldout_accuracy": fit.heldout_accuracy,
                                                   "seconds": round(fit.seconds, 1)})
            heads_obj = fit.heads.to(dev).eval()
            heads_info = {"fitted": True, "heldout_accuracy_mean": float(np.mean(held)) if held else None}
        else:
            heads_obj = load_heads(heads, dev)
            check_heads_fit(heads_obj, unet, sched_cfg, heads, run_dir, force=force)
            if heads_obj.config.num_steps != steps or heads_obj.config.scheduler != "ddim":
                raise FairdiffError(f"heads {heads} are for --steps {heads_obj.config.num_steps} --scheduler "
                                    f"{heads_obj.config.scheduler}; guide samples with DDIM and --steps {steps}")
            heads_info = {"fitted": False, "path": str(heads)}
        for prm in (heads_obj.parameters() if reader == "heads" else ()):
            prm.requires_grad_(False)
        heads_s = time.perf_counter() - t0
        sched = build_sampling_scheduler("ddim", sched_cfg)
        if min_t >= len(sched.alphas_cumprod):
            raise FairdiffError(f"guide: --min-t must be below the model's {len(sched.alphas_cumprod)} timesteps")
        how = {"mode": space, "alphas_cumprod": sched.alphas_cumprod if space == "x" else None,
               "temperature": temperature}
        if not label_free:
            verdicts = _verdict_fn(clf, cfg.data)
        timing: dict[float, float] = {}

        from .filter import quotas

        def assignments(count: int, rng_seed: int) -> np.ndarray:
            a = np.repeat(np.arange(k), quotas(tgt, count))
            return np.random.default_rng(rng_seed).permutation(a)

        def guidance(scale: float, assign=None):
            if reader == "classifier":
                return ClassifierGuidance(clf_model, tgt.tolist(), rho, scale, alphas_cumprod=sched.alphas_cumprod,
                                          assignments=assign, min_t=min_t)
            if reader == "x0":
                return CleanClassifierGuidance(clf_model, tgt.tolist(), rho, scale, num_groups=k,
                                               alphas_cumprod=sched.alphas_cumprod, assignments=assign, min_t=min_t)
            if assign is None:
                return DistributionGuidance(heads_obj, tgt.tolist(), scale, **how)
            return AssignedGuidance(heads_obj, assign, scale, **how)

        def draw(seeds: list[int], scale: float, eta_: float | None = None, assign=None) -> np.ndarray:
            t = time.perf_counter()
            if mode == "batch" or scale == 0:
                g = guidance(scale) if scale else None
                x = sample(unet, sched, seeds, batch_size=pilot_n, num_steps=steps, guidance=g, device=dev,
                           eta=eta if eta_ is None else eta_, progress=False)
                if eta_ is not None:
                    return to_uint8(x)
            else:  # each batch gets its own guidance with the assignments of its images
                assign = assignments(len(seeds), seeds[0]) if assign is None else assign
                parts = []
                for b in range(0, len(seeds), pilot_n):
                    g = guidance(scale, assign[b : b + pilot_n])
                    parts.append(sample(unet, sched, seeds[b : b + pilot_n], batch_size=pilot_n, num_steps=steps,
                                        guidance=g, device=dev, eta=eta, progress=False))
                x = torch.cat(parts)
            timing[scale] = (time.perf_counter() - t) / len(seeds)
            return to_uint8(x)

        pilot_seeds = list(range(PILOT_SEED, PILOT_SEED + pilot_n))
        cache = PilotCache(cache_dir() / "pilots" if pilot_cache else None, {
            "version": 1, "unet": sha256_arrays(unet.state_dict().items()),
            "reader_weights": sha256_arrays((heads_obj if reader == "heads" else clf_model).state_dict().items()),
            "rho": rho, "judge": _judge_digest(clf), "target": tgt.tolist(), "eta": eta, "steps": steps,
            "pilot_n": pilot_n, "pilot_seed": PILOT_SEED, "mode": mode, "reader": reader, "space": space,
            "temperature": temperature, **({"min_t": min_t} if min_t else {})})

        @cache.wrap
        def pilot(scale: float, eta_: float | None = None) -> Pilot:
            v = verdicts(draw(pilot_seeds, scale, eta_))
            valid = v != OUTSIDE
            shares = (np.bincount(v[valid], minlength=k) / max(int(valid.sum()), 1)).tolist()
            if progress:
                print(f"  pilot scale {scale:g}: shares among valid {[round(x, 3) for x in shares]}, "
                      f"valid rate {valid.mean():.3f}", flush=True)
            return Pilot(float(scale), shares, float(valid.mean()), pilot_n)

        t1 = time.perf_counter()
        reference = None  # guided with another eta than the base's own: the floor is the base as its user samples it
        if eta != float(cfg.sample.eta):
            if progress:
                print(f"  the base as sampled by its config (eta {cfg.sample.eta:g}):", flush=True)
            reference = pilot(0.0, float(cfg.sample.eta))
        search = find_scale(pilot, tgt, valid_drop=valid_drop, s0=s0, max_pilots=max_pilots, tol=tol,
                            reference_valid=None if reference is None else reference.valid_rate)
        pilot_s = time.perf_counter() - t1
        base_per_image = timing.get(0.0)
        kept_cost = {"kept": n, "drawn": n, "drawn_per_kept": 1.0}
        if then_filter:  # the rest of the way by keeping to quota (never an image outside every group)
            from .filter import filter_to_target

            res = filter_to_target(lambda s: draw(s, search.scale), verdicts, tgt, n, seed=seed, batch_size=pilot_n,
                                   max_draws=max_draws, progress=progress, state_file=partial_file(out_dir),
                                   state_key={"pilots": cache.key, "scale": search.scale})
            images, kept_seeds = res.images, res.seeds
            per_image = res.sample_seconds / max(res.drawn, 1)
            per_kept = (res.sample_seconds + res.judge_seconds) / n  # an interrupted run's batches included
            kept_cost = {**res.summary(), "then_filter": True}
        else:
            images, drawn_s = _draw_in_chunks(
                lambda a, b, assign: draw(list(range(seed + a, seed + b)), search.scale, assign=assign), n, pilot_n,
                assignments(n, seed) if mode == "sample" and search.scale else None, partial_file(out_dir),
                partial_key(pilots=cache.key, scale=search.scale, n=n, seed=seed, mode=mode))
            kept_seeds = np.arange(seed, seed + n)
            per_image = per_kept = drawn_s / n
        record = {
            "method": "guide", "base": str(run_dir.resolve()), "target": tgt.tolist(), "n": n,
            "groups": list(cfg.data.groups), "seed": seed, "steps": steps, "scheduler": "ddim", "eta": eta,
            "mode": mode, "reader": reader, "space": space if reader == "heads" else "x", "min_t": min_t,
            "temperature": temperature if reader == "heads" else None, reader: heads_info, "judge": clf.describe(),
            "judge_role": (f"label-free clusters ({reader}'s labels and pilots)" if label_free
                           else "validation (pilots)") + "; the test judge scores metrics.json",
            "controller": {**search.record(), "reference_pilot": None if reference is None else vars(reference),
                           "pilot_n": pilot_n, "pilot_seed": PILOT_SEED, "tol": tol,
                           "valid_drop": valid_drop, "s0": s0, "cache": cache.record()},
            "heads_seconds": round(heads_s, 2), "pilot_seconds": round(pilot_s, 2),
            "seconds_per_image": round(per_image, 5), "base_seconds_per_image": round(base_per_image or math.nan, 5),
            **kept_cost, "seconds_per_kept_image": round(per_kept, 5), "seconds": round(time.perf_counter() - t0, 2),
        }
        _write_debias_folder(out_dir, state, run_dir, cfg, tgt, n, images, kept_seeds, record,
                             {"debias": "guide", "mode": mode, "reader": reader, "space": space,
                              "scale": search.scale, "steps": steps, "eta": eta, "seed": seed,
                              "then_filter": then_filter},
                             {reader: work / reader} if (work / reader).is_dir() else None)
        partial_file(out_dir).unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if evaluate:
        record["metrics"] = evaluate_run(out_dir, progress=progress)
    return record
