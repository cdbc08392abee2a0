"""The protocol a user faces: a pretrained biased base, then debias it toward a target. One row per model and seed
goes into a results CSV (docs/results/debias.csv); the docs' tables are generated from it.

Methods (each toward each target, each seed):
  base      the base unchanged (its own images, sampling seeds seed*1e6 ..)
  base-eta1 the base unchanged, sampled with DDIM eta 1 (the sampler guide-clf uses) instead of its config's
  -stN      (after base, base-eta1, filter or a guide form, e.g. guide-clf-filter-st50) drawn with N denoising steps
            instead of the config's sample.steps (20)
  -ftN -lrX -emaD  (after a fine-tuned method, in that order, e.g. reweight-ft1200-lr1e-4) its fine-tune with N
            steps, learning rate X, EMA decay D instead of the budget below (distill forms: -ftN, -lrX)
  filter    generate-and-filter (fairdiff debias --method filter): validation judge keeps images to quota
  guide     distribution guidance with the scale found by the controller (fairdiff debias --method guide)
  guide-sample  the same with per-sample group assignment (--mode sample)
  guide-clf, guide-clf-sample  the same two with a noise-aware group classifier on x_t instead of h-space heads
            (--reader classifier); the classifier is fitted once per base (OUT/classifier) and reused
  guide-x0, guide-x0-sample, guide-x0-filter  the same with a clean-image domain CNN (seed eval.seed + 2: neither
            judge) reading the denoiser's predicted clean image (--reader x0; nothing fitted)
  guide-clf-filter  guide-clf, then images kept to quota by the validation judge (--then-filter): the target
            exactly where the valid-rate floor stops guidance short; guide-filter, guide-x0-filter: the same after
            heads guidance or the x0 reader
  distill   the base fine-tuned on 2000 of its own filtered images (fairdiff debias --method distill)
  distill-nN  distill on N filtered images instead of 2000 (e.g. distill-n8000; the same 400 x 64 budget)
  distill-mix  distill on the 2000 filtered images and the real training images together, reweighted toward the
            target by group (--mix-real; the same budget); distill2-mix: the same in two rounds; distill-mix-lf,
            distill2-mix-lf: the label-free forms (--judge clusters; the real images take their clusters)
  distill2  the same in two rounds (--rounds 2): the first round's shares on a 4096-image pilot (validation
            judge) correct the second round's target to 2 t - s1; the second round starts from the base again;
            distill-mix-rs, distill2-mix-rs, ...: batches drawn at the target instead of weighted losses
            (--balance resample); reweight-rs: reweight the same way
            distill3 / distill4 (and -mix, -lf): three or four rounds (a secant through the last two rounds'
            pilots), starting from a finished run of one round fewer when there is one
  filter-lf, guide-lf, guide-clf-lf, distill-lf  the label-free forms: groups are spectral clusters of the
            base's own images (--judge clusters; guide-lf fits its heads on those clusters, guide-clf-lf its
            classifier, once per base at OUT/classifier-lf, distill-lf fine-tunes on the cluster-filtered images),
            no label or judge anywhere; each with -kmeans (e.g. filter-lf-kmeans): k-means clusters instead
            (--judge clusters-kmeans; the classifier at OUT/classifier-lf-kmeans)
  finetune  the control: the base fine-tuned on its own training data with the plain loss (no reweighting, no
            target), the same budget: what the fine-tune recipe alone does to quality
  ddm       published DDM, alpha 0.05, fine-tuned from the base (fairdiff train model.pretrained=BASE)
  ddm-reverse  DDM with gradient reversal through the indicator, alpha 0.1 (docs/ddm-analysis.md), fine-tuned
  reweight  group reweighting toward the target, fine-tuned from the base
  reweight-lf  the same with no label: each training image's group is its spectral cluster (method.labels=clusters,
            method.clustering=spectral; PCA 32 of the pixels); reweight-lf-kmeans: k-means clusters
  tiw, iw   label-free reference-set reweighting (docs/tiw.md), fine-tuned from the base: an unlabeled reference
            of 10 % of the training set drawn at the target's shares; the training set is cut to 5000 images
            (data.size) so that enough digits of every group lie outside it for that reference
  ref-only  the base fine-tuned on that reference set alone (data.train_on=reference; no labels)
  align     distributional alignment fine-tuning (docs/align.md) from the base: its own budget, as in
            configs/align-mnist.yaml (LoRA rank 8 on the ResNet convolutions, 150 steps at batch 16 through a
            10-step DDIM chain with gradient, lr 1e-4, preservation weight 1, no EMA): a step costs ~10 forward
            and backward passes, so the 400 x 64 budget would be ~25 times the others'
Fine-tunes use one budget: 400 steps, batch 64, lr 2e-4, full fine-tuning of the U-Net, EMA 0.99 (align: above).
Every model is scored by the test judge (eval.seed's domain CNN) and the second judge on --n images.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/protocol.py BASE --setting mnist-01 --targets 0.5,0.5 \
        --seeds 0 --methods base,filter,guide --n 2000 --out runs/protocol/mnist-01
Resumable: a model whose metrics.json exists is kept.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

FINETUNE = ["train.steps=400", "train.batch_size=64", "train.lr=2e-4", "train.warmup_steps=25",
            "train.ema_decay=0.99", "train.checkpoint_every=200", "train.checkpoint_total_limit=1"]
SEED_STRIDE = 1_000_000
DISTILL = r"distill([234])?(-n\d+)?(-mix)?(-rs)?(-lf(-kmeans)?)?"  # every distill form (rounds, data, balance, lf)
FINETUNED = ("distill", "ddm", "ddm-reverse", "reweight", "tiw", "iw", "ref-only", "align", "distill2",
             "reweight-lf", "reweight-lf-kmeans", "reweight-rs", "finetune")
ALIGN = ["method.name=align", "method.align_steps=10", "method.preserve_weight=1.0", "model.lora=true",
         "model.lora_rank=8", "model.lora_alpha=16", "train.steps=150", "train.batch_size=16", "train.lr=1e-4",
         "train.warmup_steps=10", "train.ema=false", "train.checkpoint_every=50"]  # configs/align-mnist.yaml
REFERENCE = ["data.size=5000", "data.reference=0.1", "method.disc_steps=500", "method.disc_batch_size=64",
             "method.disc_holdout=0.2", "method.weight_clip=20.0"]  # the reference-set methods (docs/tiw.md)


def _fine_tuned(method: str) -> bool:
    """Whether ``method`` fine-tunes the base (its model can be reused from an earlier run with ``--reuse``)."""
    return method in FINETUNED or re.fullmatch(DISTILL, method) is not None


def split_steps(method: str) -> tuple[str, int | None]:
    """``method`` without its ``-stN`` suffix, and N (None without one): a sampling-time method (base, base-eta1,
    filter, a guide form) drawn with N denoising steps. A fine-tuned method with the suffix is refused."""
    st = re.search(r"-st(\d+)$", method)
    if st is None:
        return method, None
    core, steps = method[:st.start()], int(st.group(1))
    if _fine_tuned(core) or steps < 1:
        raise SystemExit(f"{method}: only the sampling-time methods (base, filter, guide) take -stN, N >= 1")
    return core, steps


RECIPE = r"(-ft(?P<steps>\d+))?(-lr(?P<lr>\d+(?:\.\d+)?(?:e-?\d+)?))?(-ema(?P<ema>0\.\d+))?$"


def split_recipe(method: str) -> tuple[str, dict]:
    """``method`` without its fine-tune recipe suffix, and the recipe it asks for: ``-ftN`` (N fine-tuning steps
    instead of 400), ``-lrX`` (learning rate X instead of 2e-4), ``-emaD`` (EMA decay D instead of 0.99), in that
    order, e.g. ``reweight-ft1200-lr1e-4``. Only a fine-tuned method takes one (distill forms: -ftN and -lrX; align
    keeps its own budget)."""
    r = re.search(RECIPE, method)
    if r is None or not r.group(0):
        return method, {}
    core = method[:r.start()]
    recipe = {k: v for k, v in (("steps", r["steps"] and int(r["steps"])), ("lr", r["lr"] and float(r["lr"])),
                                ("ema", r["ema"] and float(r["ema"]))) if v is not None}
    if not _fine_tuned(core) or core == "align" or recipe.get("steps") == 0 or recipe.get("lr") == 0:
        raise SystemExit(f"{method}: only a fine-tuned method takes -ftN / -lrX / -emaD (N, X > 0)")
    if "ema" in recipe and re.fullmatch(DISTILL, core):
        raise SystemExit(f"{method}: distill fine-tunes with EMA 0.99; -emaD is for the other fine-tuned methods")
    return core, recipe


def _recipe_overrides(recipe: dict) -> list[str]:
    """FINETUNE's overrides changed by a recipe suffix (split_recipe)."""
    out = list(FINETUNE)
    for key, name in (("steps", "train.steps"), ("lr", "train.lr"), ("ema", "train.ema_decay")):
        if key in recipe:
            out = [o for o in out if not o.startswith(name + "=")] + [f"{name}={recipe[key]}"]
    if "steps" in recipe:  # a checkpoint halfway, as in the default recipe
        out = [o for o in out if not o.startswith("train.checkpoint_every=")]
        out.append(f"train.checkpoint_every={max(recipe['steps'] // 2, 1)}")
    return out


def _tname(target: list[float]) -> str:
    return "t" + "-".join(f"{x:g}" for x in target)


def run_one(base: Path, method: str, target: list[float], seed: int, n: int, out: Path,
            reuse: Path | None = None) -> dict:
    from fairdiff.config import load_config
    from fairdiff.debias import debias_run, distill_run
    from fairdiff.debias.run import guide_run_to_target
    from fairdiff.evaluation import evaluate_run, evaluate_samples
    from fairdiff.runs import read_run_config
    from fairdiff.sampling import sample_run
    from fairdiff.training import train

    folder = out / f"{method}-{_tname(target)}-s{seed}"
    named = method  # with its suffixes: the name an earlier round's folder carries too
    method, steps = split_steps(method)
    method, recipe = split_recipe(method)
    if (folder / "metrics.json").exists():
        m = json.loads((folder / "metrics.json").read_text())
        if "debias" in m or method in ("base", "base-eta1", *FINETUNED[1:]):
            return m
        # a debias folder evaluated but not yet annotated (an interrupted protocol): its record is in debias.json
        m["debias"] = json.loads((folder / "debias.json").read_text())
        (folder / "metrics.json").write_text(json.dumps(m, default=_plain))
        return m
    sseed = seed * SEED_STRIDE
    cfg = read_run_config(base)
    t0 = time.time()
    timing: dict = {}
    lf = re.search(r"-lf(-kmeans)?$", method)  # a label-free form: spectral clusters, or k-means with -kmeans
    trained = None if reuse is None else reuse / folder.name
    fine_tuned = _fine_tuned(method)
    if fine_tuned and trained is not None and (trained / "model").is_dir():
        # a model fine-tuned by an earlier protocol run (same method, target, seed) sampled again at n images: the
        # first images are the earlier run's (the same seeds), its metrics stay in its own folder
        m = evaluate_run(trained, n=n, out_dir=folder, progress=False)
        earlier = json.loads((trained / "metrics.json").read_text())
        timing["train_s"] = earlier.get("timing", {}).get("train_s")
        m["debias"] = earlier.get("debias")
        if m["debias"] is None:
            m.pop("debias")
        timing["reused"] = str(trained)
    elif method in ("base", "base-eta1"):
        sample_run(base, n, out_dir=folder / "samples", seed=sseed, steps=steps or cfg.sample.steps,
                   eta=1.0 if method == "base-eta1" else cfg.sample.eta,
                   batch_size=cfg.sample.batch_size, png=False, progress=False)
        timing["seconds_per_image"] = round((time.time() - t0) / n, 5)
        ec = load_config(base / "config.yaml", [f"eval.target=[{','.join(map(str, target))}]"]).eval
        m = evaluate_samples(folder / "samples", cfg.data, ec, out_dir=folder, progress=False)
    elif method in ("filter", "guide", "guide-sample", "guide-filter", "guide-clf", "guide-clf-sample",
                    "guide-clf-filter", "guide-x0", "guide-x0-sample", "guide-x0-filter") or (
            lf and lf.string[:lf.start()] in ("filter", "guide", "guide-clf")):
        fn = debias_run if method.startswith("filter") else guide_run_to_target
        kw = {"method": "filter"} if method.startswith("filter") else {
            "mode": "sample" if method.endswith("-sample") else "batch", "then_filter": method.endswith("-filter")}
        shared = out / (f"classifier{lf.group(0)}" if lf else "classifier")
        if method.startswith("guide-clf"):
            kw["reader"] = "classifier"
            if not shared.is_dir() and reuse is not None and (reuse / shared.name).is_dir():
                shared = reuse / shared.name  # the classifier an earlier protocol run fitted for this base
            if shared.is_dir():
                kw["classifier"] = shared
        if method.startswith("guide-x0"):
            kw["reader"] = "x0"
        if lf:
            kw["judge"] = "clusters-kmeans" if lf.group(1) else "clusters"
        if steps:
            kw["steps"] = steps
        rec = fn(base, folder, target, n=n, seed=sseed, overwrite=folder.exists(), progress=False, **kw)
        m = rec.pop("metrics")
        m["debias"] = {k: v for k, v in rec.items() if k != "judge"}
        if method.startswith("guide-clf"):  # the one-time fit of the classifier (later runs reuse it)
            fitted = rec["classifier"] if rec["classifier"]["fitted"] else json.loads(
                (Path(rec["classifier"]["path"]) / "record.json").read_text())
            timing["train_s"] = fitted.get("seconds")
        elif fn is guide_run_to_target and (rec.get("heads") or {}).get("fitted"):  # h-space heads fitted here
            timing["train_s"] = rec["heads_seconds"]
        if method.startswith("guide-clf") and not shared.is_dir():
            import shutil

            shutil.copytree(folder / "classifier", shared)  # fitted once per base, then reused
    elif dm := re.fullmatch(DISTILL, method):
        rounds = int(dm.group(1) or 1)
        if rounds > 1 and not folder.with_name(f"{folder.name}-round{rounds - 1}").exists():
            prev = named.replace(f"distill{rounds}", "distill" if rounds == 2 else f"distill{rounds - 1}")
            earlier = [d / f"{prev}-{_tname(target)}-s{seed}" for d in (out, reuse) if d is not None]
            earlier = [d for d in earlier if (d / "model").is_dir() and (d / "debias.json").is_file()]
            if earlier:
                _seed_rounds(earlier[0], folder)
        if rounds > 1 and folder.exists():  # an interrupted run: its last round starts again, its finished
            import shutil  # rounds (and that round's filtered images) are reused, not trained again

            shutil.rmtree(folder)
        rec = distill_run(base, folder, target, n=n, seed=sseed, overwrite=folder.exists(), evaluate=False,
                          progress=False, rounds=rounds,
                          train_n=int(re.search(r"-n(\d+)", method).group(1)) if "-n" in method else None,
                          mix_real="-mix" in method, balance="resample" if "-rs" in method else "weights",
                          train_steps=recipe.get("steps"), lr=recipe.get("lr"),
                          **({"judge": "clusters-kmeans" if lf.group(1) else "clusters"} if lf else {}))
        m = _eval_trained(folder, n)
        m["debias"] = {k: v for k, v in rec.items() if k != "judge"}
        timing["train_s"] = rec["finetune_seconds"] + rec["filter_seconds"]
    elif method in FINETUNED[1:]:
        tstr = ",".join(map(str, target))
        extra = {"ddm": ["method.name=ddm", "method.alpha=0.05"],
                 "ddm-reverse": ["method.name=ddm", "method.alpha=0.1", "method.indicator_grad=reverse"],
                 "reweight": ["method.name=reweight", f"method.target=[{tstr}]"],
                 "reweight-rs": ["method.name=reweight", f"method.target=[{tstr}]", "method.balance=resample"],
                 "reweight-lf": ["method.name=reweight", f"method.target=[{tstr}]", "method.labels=clusters",
                                 "method.clustering=spectral"],
                 "reweight-lf-kmeans": ["method.name=reweight", f"method.target=[{tstr}]", "method.labels=clusters"],
                 "align": [*ALIGN, f"method.target=[{tstr}]"],
                 "finetune": ["method.name=baseline"],
                 "ref-only": ["method.name=baseline", "data.train_on=reference", *REFERENCE[:2],
                              f"data.reference_shares=[{tstr}]"]}.get(method) or [
            f"method.name={method}", *REFERENCE, f"data.reference_shares=[{tstr}]"]
        ft = load_config(base / "config.yaml", [*_recipe_overrides(recipe), *extra,
                                                f"model.pretrained={base.resolve()}", f"train.seed={seed}",
                                                f"sample.seed={sseed}", f"eval.n_samples={n}",
                                                f"eval.target=[{','.join(map(str, target))}]"])
        train(ft, folder, resume="latest" if (folder / "config.yaml").exists() else None, quiet=True)
        timing["train_s"] = round(time.time() - t0, 1)
        m = _eval_trained(folder, n)
    else:
        raise SystemExit(f"unknown method {method}")
    m.setdefault("timing", {}).update(timing)
    (folder / "metrics.json").write_text(json.dumps(m, default=_plain))
    return m


def _seed_rounds(earlier: Path, folder: Path) -> None:
    """A finished distill run of one round fewer (same method, target and seed) is this run's first rounds: its
    rounds are copied into ``folder``'s round folders (with their recorded pilots) and its final model becomes the
    last of them; distill_run reuses each round whose recipe and target match and trains again those that do not."""
    import shutil

    from fairdiff.debias.run import PILOT_FILE, write_pilot

    rec = json.loads((earlier / "debias.json").read_text())
    n_prev = int(rec.get("rounds", 1))
    skip = shutil.ignore_patterns("samples", "checkpoint-*", "*.png")
    for r in range(1, n_prev + 1):
        src = earlier if r == n_prev else earlier.with_name(f"{earlier.name}-round{r}")
        dst = folder.with_name(f"{folder.name}-round{r}")
        shutil.copytree(src, dst, ignore=skip)
        if r < n_prev and "pilot_shares" in rec.get(f"round{r}", {}):
            rr = rec[f"round{r}"]
            if not (dst / PILOT_FILE).is_file():  # a pilot recorded only in the run's debias.json
                write_pilot(dst, rr["pilot_n"], rr["pilot_shares"], rr["pilot_valid_rate"], rr.get("pilot_seconds"))
        if r == 1:  # a label-free first round's clusters judge the later rounds' pilots
            clusters = src.with_name(src.name + "-data") / "clusters.npz"
            if clusters.is_file():
                (dst.with_name(dst.name + "-data")).mkdir(exist_ok=True)
                shutil.copy2(clusters, dst.with_name(dst.name + "-data") / "clusters.npz")


def _plain(o):
    """numpy scalars (and anything else json does not know) as plain Python values."""
    return o.item() if hasattr(o, "item") else str(o)


def _eval_trained(folder: Path, n: int) -> dict:
    """Sample the trained model at the seed's range (its config's sample.seed) and score it."""
    from fairdiff.evaluation import evaluate_run

    t = time.time()
    m = evaluate_run(folder, n=n, progress=False)
    m.setdefault("timing", {})["eval_s"] = round(time.time() - t, 1)
    return m


def missing_reused(methods: list[str], targets: list[list[float]], seeds: list[int], out: Path,
                   reuse: Path) -> list[str]:
    """The fine-tuned runs that ``--reuse`` cannot supply (REUSE has no model of that method, target and seed) and
    OUT has not finished: they would be fine-tuned anew, which takes hours where a user expected minutes."""
    missing = []
    for target in targets:
        for seed in seeds:
            for method in methods:
                if not _fine_tuned(re.sub(RECIPE, "", method)):
                    continue
                name = f"{method}-{_tname(target)}-s{seed}"
                if not (out / name / "metrics.json").exists() and not (reuse / name / "model").is_dir():
                    missing.append(name)
    return missing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("--setting", required=True)
    ap.add_argument("--targets", nargs="+", required=True, help="e.g. 0.5,0.5 0.3,0.7")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--methods", default="base,filter,guide,distill,ddm,reweight")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--results", type=Path, default=Path("docs/results/debias.csv"))
    ap.add_argument("--reuse", type=Path, help="an earlier --out of the same base: its fine-tuned models (every "
                    "distill form, ddm, reweight, tiw, iw) and classifiers are sampled again at --n instead of trained "
                    "anew")
    ap.add_argument("--train-missing", action="store_true", help="with --reuse: fine-tune the runs REUSE has no "
                    "model for (without it such a run is refused before any work)")
    args = ap.parse_args()
    from fairdiff.bench.published import add_rows, row_from_metrics

    targets = [[float(x) for x in t.split(",")] for t in args.targets]
    seeds, methods = [int(s) for s in args.seeds.split(",")], args.methods.split(",")
    for method in methods:
        split_recipe(split_steps(method)[0])  # a step count on a fine-tuned method (a recipe on a sampling-time
        # one) is refused before any work
    if args.reuse is not None and not args.train_missing:
        missing = missing_reused(methods, targets, seeds, args.out, args.reuse)
        if missing:
            ap.error(f"--reuse {args.reuse} has no fine-tuned model for {', '.join(missing)}: they would be "
                     "fine-tuned anew; pass --train-missing to do that, or reuse the folder that holds them")
    for t, target in zip(args.targets, targets):
        for seed in seeds:
            for method in methods:
                t0 = time.time()
                m = run_one(args.base, method, target, seed, args.n, args.out, args.reuse)
                row = row_from_metrics(m, args.setting, method, seed)
                add_rows(args.results, [row])
                print(f"{args.setting} {method} target {t} seed {seed}: valid {row['valid_rate']:.3f} share0 "
                      f"{row['share_0']:.3f} strictFD {row['fd_strict']:.3f} P {row['precision']:.3f} "
                      f"R {row['recall']:.3f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
