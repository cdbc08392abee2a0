"""``fairdiff debias --method reweight | iw``: fine-tune the base toward the target with a training-time method.

Both fine-tune the base's U-Net with one budget (the protocol of docs/results.md section 0: 400 steps, batch 64,
lr 2e-4, full fine-tuning, EMA 0.99) and write an ordinary run folder that samples at the target with no
overhead:

- ``reweight``: each training image's loss is weighted by target share / training share of its group (the group
  labels of the training data; or, with ``groups="clusters"``, no label: each training image's spectral cluster,
  numbered largest first, ``method.labels=clusters method.clustering=spectral``; ``"clusters-kmeans"``: k-means);
- ``iw``: label-free: the weight is a density ratio reference / training, read by a discriminator fitted on an
  unlabeled *reference* folder of images drawn at the target (methods/tiw.py, docs/tiw.md), so the training data
  needs no labels, only a few hundred curated images.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from fairdiff.errors import FairdiffError
from fairdiff.method_options import BALANCES

FINETUNE_DEFAULTS = {"steps": 400, "lr": 2e-4, "batch_size": 64}
METHODS = ("reweight", "iw")  # the training methods `debias` offers as fine-tunes of a base (methods/registry.py)


def finetune_run(
    run_dir: str | Path,
    out_dir: str | Path,
    target,
    *,
    method: str,
    reference: str | Path | None = None,
    groups: str | None = None,
    balance: str = "weights",
    train_steps: int | None = None,
    lr: float | None = None,
    n: int | None = None,
    seed: int | None = None,
    overwrite: bool = False,
    evaluate: bool = True,
    progress: bool = True,
) -> dict:
    """Fine-tune the base at ``run_dir`` with ``method`` (``reweight`` or ``iw``) toward ``target`` into
    ``out_dir`` (a run folder; resumes an interrupted fine-tune). ``reference``: iw's folder of unlabeled images
    at the target. ``groups``: reweight's groups: None (the training labels), ``"clusters"`` (spectral clusters of
    the training images, largest first) or ``"clusters-kmeans"``. ``balance``: reweight's ``"weights"`` (each
    image's loss weighted) or ``"resample"`` (batches drawn at the target, the loss plain). ``n``: images the
    fine-tuned model is evaluated on (default ``eval.n_samples``); ``seed``: its first sampling seed (default the
    base's ``sample.seed``)."""
    from fairdiff.config import load_config
    from fairdiff.evaluation import evaluate_run
    from fairdiff.evaluation.evaluate import check_target
    from fairdiff.runs import read_run_config
    from fairdiff.training import train
    from fairdiff.utils.io import write_json
    from fairdiff.utils.outputs import check_output_dir

    from fairdiff.methods.registry import get_method

    from .clusters import CLUSTER_JUDGES, cluster_method
    from .run import DEBIAS_FILE

    if method not in METHODS:
        raise FairdiffError(f"fine-tune method must be one of {', '.join(METHODS)}, got '{method}'")
    entry = get_method(method)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    base_cfg = read_run_config(run_dir)
    tgt = check_target(target, len(base_cfg.data.groups)).tolist()
    steps = int(train_steps or FINETUNE_DEFAULTS["steps"])
    lr = float(lr or FINETUNE_DEFAULTS["lr"])
    if steps < 1 or not lr > 0:
        raise FairdiffError("fine-tune: --train-steps >= 1 and --lr > 0 are needed")
    if entry.uses_reference:
        if reference is None:
            raise FairdiffError("--method iw needs --reference DIR: a folder of unlabeled images drawn at the target "
                                "(a few hundred; docs/tiw.md)")
        if not Path(reference).is_dir():
            raise FairdiffError(f"--reference {reference}: no such folder")
    elif reference is not None:
        raise FairdiffError(f"--reference is an option of --method iw ({method} uses the training labels)")
    if balance not in BALANCES:
        raise FairdiffError(f"--balance must be one of {', '.join(BALANCES)}, got '{balance}'")
    if balance != "weights" and entry.uses_reference:
        raise FairdiffError("--balance resample is an option of reweight (iw weights by its discriminator)")
    clustering = cluster_method(groups)
    if groups not in (None, "auto") and clustering is None:
        raise FairdiffError(f"--method {method}: the groups come from the training labels or from "
                            f"{' / '.join(CLUSTER_JUDGES)} (--judge), not '{groups}'")
    if clustering and entry.uses_reference:
        raise FairdiffError("--method iw needs no groups: --judge clusters is an option of reweight")
    if clustering == "kmeans" and max(tgt) - min(tgt) > 1e-6:
        raise FairdiffError("k-means clusters have no order, so a non-uniform target cannot say which cluster gets "
                            "which share: use --judge clusters (spectral, numbered largest first)")
    tstr = ",".join(str(t) for t in tgt)
    method_keys = ([f"data.reference_dir={Path(reference).resolve()}", "data.reference=null",
                    "data.reference_shares=null"] if entry.uses_reference else [f"method.target=[{tstr}]"])
    if balance != "weights":
        method_keys.append(f"method.balance={balance}")
    if clustering:
        method_keys += ["method.labels=clusters", "method.num_clusters=null", f"method.clustering={clustering}"]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", out_dir.name).strip(".") or method
    cfg = load_config(run_dir / "config.yaml", [
        f"model.pretrained={run_dir.resolve()}", f"method.name={method}", *method_keys, "data.train_on=train",
        f"train.steps={steps}", f"train.lr={lr}", f"train.batch_size={FINETUNE_DEFAULTS['batch_size']}",
        f"train.warmup_steps={min(25, steps)}", "train.ema_decay=0.99", f"train.checkpoint_every={max(steps // 2, 1)}",
        "train.checkpoint_total_limit=1", f"eval.target=[{tstr}]",
        f"eval.n_samples={int(n or base_cfg.eval.n_samples)}", f"name={name}",
        *([f"sample.seed={int(seed)}"] if seed is not None else [])])
    check_output_dir(out_dir, "run", overwrite=overwrite, inputs=[run_dir], whole=True)
    resume = "latest" if (out_dir / "config.yaml").is_file() and not overwrite else None
    t0 = time.perf_counter()
    train(cfg, out_dir, resume=resume, overwrite=overwrite, quiet=not progress)
    record = {"method": method, "base": str(run_dir.resolve()), "target": tgt, "train_steps": steps, "lr": lr,
              "batch_size": FINETUNE_DEFAULTS["batch_size"],
              "reference": None if reference is None else str(Path(reference).resolve()),
              "groups": clustering or "labels", **({"balance": balance} if balance != "weights" else {}),
              "finetune_seconds": round(time.perf_counter() - t0, 2)}
    write_json(out_dir / DEBIAS_FILE, record)
    if evaluate:
        record["metrics"] = evaluate_run(out_dir, progress=progress)
    return record
