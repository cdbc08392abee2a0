"""Evaluate generated images: fairness of the group shares (with bootstrap CIs) and quality vs real images.

``evaluate_images`` is the pure core (arrays in, metrics dict out); ``evaluate_samples`` and ``evaluate_run``
add loading, the cached domain classifier, the run's balanced held-out real images, and the files
(``metrics.json``, ``report.md``, charts). Every key of the returned dict is documented in ``docs/metrics.md``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.evaluation.openset import open_set_metrics
from fairdiff.metrics import (
    FeatureStatistics,
    conditional_parity,
    fairness_discrepancy,
    group_histogram,
    kl_to_target,
    mean_pairwise_gap,
    paired_bootstrap_means,
    percentile_interval,
    precision_recall,
    resolve_target,
    soft_histogram,
    softmax,
    statistical_parity_difference,
)

METRICS_VERSION = 2  # 2: open-set judging (fd_strict, valid rate, corrected shares, judge2)


def _jsonable(x: Any) -> Any:
    """numpy -> Python, NaN/inf -> None (strict JSON)."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def check_target(target, num_classes: int) -> np.ndarray:
    """A target distribution of length K summing to 1, or the uniform one; user mistakes -> FairdiffError."""
    try:
        return resolve_target(target, num_classes)
    except ValueError as e:
        raise FairdiffError(f"target: {e}") from None


def check_class_count(clf, data_cfg) -> None:
    """A judge of another number of classes than the data's groups would silently change the groups: refuse."""
    groups = len(data_cfg.groups)
    if clf.num_classes != groups:
        raise FairdiffError(f"classifier '{clf.name}' has {clf.num_classes} classes but the data has {groups} groups "
                            f"({list(data_cfg.groups)}); use a judge with {groups} classes")


def _ci(draws: np.ndarray, confidence: float) -> list:
    lo, hi = percentile_interval(draws, confidence)
    if np.ndim(lo) == 0:
        return [float(lo), float(hi)]
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def evaluate_images(
    images: np.ndarray,
    classifier,
    *,
    reference_images: np.ndarray | None = None,
    target=None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    class_labels: np.ndarray | None = None,
    features=None,
    pr_k: int = 3,
    batch_size: int = 500,
    progress: bool = False,
    reference_groups: np.ndarray | None = None,
    second_judge=None,
    replicates: int = 1,
) -> dict:
    """All metrics for uint8 ``images`` ``[N, C, H, W]`` judged by ``classifier`` (a :class:`Classifier`).

    ``reference_images`` (real, balanced, never trained on) give domain FID and precision / recall in the
    classifier's penultimate features (or in ``features``, a FeatureExtractor, when given).
    ``class_labels`` (the condition of each image) add the conditional-scenario rates.
    Bootstrap CIs resample images (percentile method, ``n_bootstrap`` resamples, paired across metrics).

    Open-set judging (``docs/metrics.md``): images the judge calls another class, is not confident about, or
    finds off the real-image manifold are *outside*; ``fd_strict`` (the headline) counts them as deviation.
    ``reference_groups`` (the true group of each reference image) give the judge's confusion matrix and the
    corrected shares; ``second_judge`` (a :class:`Classifier`) is reported beside the first;
    ``replicates`` > 1 splits the images into that many parts for mean +- std.
    """
    t0 = time.perf_counter()
    k = classifier.num_classes
    tgt = check_target(target, k)
    if not 0.0 < confidence < 1.0:
        raise FairdiffError(f"confidence must lie in (0, 1), got {confidence}")
    if not 1 <= int(replicates) <= len(images):
        raise FairdiffError(f"--replicates must lie in [1, {len(images)}] (the number of images), got {replicates}")
    all_logits, feats = classifier.predict(images, batch_size=batch_size, progress=progress, all_classes=True)
    logits = all_logits[:, :k]
    n = len(logits)
    held_logits = held_feats = None
    ref_ok = reference_images is not None and len(reference_images) > 0 and (
        classifier.input_shape[1] is None or tuple(reference_images.shape[1:]) == tuple(images.shape[1:]))
    if ref_ok:
        held_logits, held_feats = classifier.predict(reference_images, batch_size=batch_size, all_classes=True)
    probs = softmax(logits)
    preds = logits.argmax(1)
    shares = group_histogram(preds, k)
    soft = soft_histogram(probs)
    out: dict[str, Any] = {
        "n": n,
        "num_classes": k,
        "target": tgt.tolist(),
        "classifier": classifier.describe(),
        "shares": shares.tolist(),
        "soft_shares": soft.tolist(),
        "fd_hard": fairness_discrepancy(shares, tgt),
        "fd_soft": fairness_discrepancy(soft, tgt),
        "kl": kl_to_target(shares, tgt),
        "kl_soft": kl_to_target(soft, tgt),
        "spd": statistical_parity_difference(shares),
        "mean_pairwise_gap": mean_pairwise_gap(shares),
        "fd_scale": "l2",
        "fd_hard_abs_scale": abs(float(shares[1]) - 0.5) if k == 2 else None,
    }

    # ---- bootstrap (one paired set of resamples for every metric; see metrics.bootstrap)
    blocks = {"hard": np.eye(k)[preds], "soft": probs}
    cond = None
    if class_labels is not None:
        cond = np.asarray(class_labels, np.int64).reshape(-1)[:n]
        if len(cond) != n:
            raise FairdiffError(f"{len(cond)} class labels for {n} images")
        if cond.min() < 0 or cond.max() >= k:
            raise FairdiffError(f"class labels must lie in [0, {k - 1}] (the classifier has {k} classes)")
        cond_1h = np.eye(k)[cond]
        blocks.update(cond=cond_1h, hit=cond_1h * (preds == cond)[:, None])
    if n_bootstrap > 0:
        draws = paired_bootstrap_means(blocks, n_bootstrap, seed)
        hard_b, soft_b = draws["hard"], draws["soft"]
        out.update(
            shares_ci=_ci(hard_b, confidence),
            soft_shares_ci=_ci(soft_b, confidence),
            fd_hard_ci=_ci(fairness_discrepancy(hard_b, tgt), confidence),
            fd_soft_ci=_ci(fairness_discrepancy(soft_b, tgt), confidence),
            kl_ci=_ci(kl_to_target(hard_b, tgt), confidence),
            spd_ci=_ci(statistical_parity_difference(hard_b), confidence),
            mean_pairwise_gap_ci=_ci(mean_pairwise_gap(hard_b), confidence),
        )
    out["bootstrap"] = {"resamples": int(n_bootstrap), "confidence": confidence, "method": "percentile",
                        "unit": "generated image", "seed": seed}

    if cond is not None:
        cp = conditional_parity(preds, cond, k)
        out["conditional_rates"] = cp["rates"].tolist()
        out["conditional_counts"] = cp["counts"].tolist()
        out["conditional_spd"] = cp["gap"]
        if n_bootstrap > 0:
            c_b, h_b = draws["cond"], draws["hit"]
            with np.errstate(invalid="ignore", divide="ignore"):
                rate_b = np.where(c_b > 0, h_b / c_b, np.nan)
            seen = cp["counts"] > 0
            gap_b = np.nanmax(rate_b[:, seen], 1) - np.nanmin(rate_b[:, seen], 1) if seen.any() else np.full(
                len(rate_b), np.nan)
            out["conditional_rates_ci"] = _ci(rate_b, confidence)
            out["conditional_spd_ci"] = _ci(gap_b, confidence)

    # ---- open-set judging: valid rate, strict FD, corrected shares, replicates, a second judge
    out.update(open_set_metrics(classifier, images, all_logits, feats, held_logits, held_feats, reference_groups, tgt,
                         n_bootstrap, confidence, seed, replicates, second_judge,
                         reference_images if ref_ok else None, batch_size))

    # ---- quality against real held-out images
    out.update(domain_fid=None, precision=None, recall=None, quality_features=None, reference_n=None)
    if reference_images is not None and len(reference_images) > 0:
        if features is not None:
            fake_f = features(images)
            real_f = features(reference_images)
            out["quality_features"] = features.name
        elif feats is not None and held_feats is not None:
            real_f = held_feats
            fake_f = feats
            out["quality_features"] = f"{classifier.name}:penultimate"
            out["reference_shares"] = group_histogram(held_logits[:, :k].argmax(1), k).tolist()
        else:
            real_f = fake_f = None
        if real_f is not None:
            out["reference_n"] = len(real_f)
            fid_name = "domain_fid" if features is None else "fid"
            real_st, fake_st = FeatureStatistics(), FeatureStatistics()
            for s in range(0, len(fake_f), 4096):
                fake_st.update(fake_f[s : s + 4096])
            real_st.update(real_f)
            if real_st.count >= 2 and fake_st.count >= 2:
                out[fid_name] = real_st.frechet_distance(fake_st)
            kk = min(pr_k, len(real_f) - 1, len(fake_f) - 1)
            if kk >= 1:
                out["precision"], out["recall"] = precision_recall(real_f, fake_f, k=kk)
                out["pr_k"] = kk
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return {**{key: out[key] for key in HEADLINE if key in out}, **out}  # the headline leads metrics.json


HEADLINE = ("n", "num_classes", "target", "fd_strict", "fd_strict_ci", "shortfall", "shortfall_ci", "valid_rate",
            "valid_rate_ci", "valid_shares", "valid_shares_ci", "corrected_shares", "corrected_shares_ci",
            "fd_valid", "fd_valid_ci", "fd_forced", "fd_forced_ci")


def eval_cfg_with(eval_cfg, target, bootstrap, seed):
    """A copy of ``eval_cfg`` with the command-line target, bootstrap count and seed applied (checked)."""
    ec = replace(eval_cfg)
    if target is not None:
        ec.target = list(target)
    if bootstrap is not None:
        if bootstrap < 0:
            raise FairdiffError(f"--bootstrap must be >= 0, got {bootstrap}")
        ec.bootstrap = int(bootstrap)
    if seed is not None:
        if seed < 0:
            raise FairdiffError(f"--seed must be at least 0, got {seed}")
        ec.seed = int(seed)
    return ec


def evaluate_samples(
    samples_path: str | Path,
    data_cfg,
    eval_cfg,
    *,
    n: int | None = None,
    classifier=None,
    target=None,
    bootstrap: int | None = None,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    progress: bool = True,
    write: bool = True,
    extra: dict | None = None,
    replicates: int = 1,
    judge2: bool = True,
) -> dict:
    """Evaluate a plain samples folder (``samples.npz`` or image files) against ``data_cfg``'s held-out images.

    ``classifier``: None (``eval_cfg.classifier``), 'auto', a model path, or a Classifier object.
    ``judge2``: with the ``auto`` judge, also judge with the source's second, independent judge.
    ``replicates``: split the images into that many parts and report mean +- std beside the bootstrap CI.
    Writes ``metrics.json`` and ``report.md`` (+ charts) into ``out_dir`` (default: the samples folder).
    """
    from fairdiff.evaluation.judges import inception_features, load_classifier, second_judge
    from fairdiff.evaluation.report import write_report
    from fairdiff.evaluation.samples import grid_next_to, load_images, reference_uint8

    ec = eval_cfg_with(eval_cfg, target, bootstrap, seed)
    data = load_images(samples_path)
    images = data["images"]
    if n is not None:
        if n < 1:
            raise FairdiffError(f"--n must be at least 1, got {n}")
        images = images[:n]
    if len(images) < 2:  # one image: every bootstrap resample is that image, a zero-width interval
        raise FairdiffError(f"{data['path']}: {len(images)} image(s) to evaluate; the metrics and their bootstrap "
                            f"confidence intervals need at least 2")
    labels = data.get("class_labels")
    if labels is not None:
        labels = labels[: len(images)]
    clf = load_classifier(classifier if classifier is not None else ec.classifier, data_cfg, ec, progress=progress)
    check_class_count(clf, data_cfg)
    check_target(ec.target, clf.num_classes)  # fail before any slow work
    clf.check_judge(images)
    feats = inception_features(ec.fid_features) if ec.fid_features else None
    reference, reference_groups = reference_uint8(data_cfg)
    if reference.shape[1:] != images.shape[1:] and feats is None and clf.has_features:
        reference = reference_groups = None  # real images at another size cannot go through this classifier
    second = None
    if judge2 and (classifier if classifier is not None else ec.classifier) in (None, "auto"):
        second = second_judge(data_cfg)
    metrics = evaluate_images(
        images, clf, reference_images=reference, target=ec.target, n_bootstrap=ec.bootstrap,
        confidence=ec.confidence, seed=ec.seed, class_labels=labels, features=feats, pr_k=ec.pr_k,
        batch_size=ec.batch_size, progress=progress, reference_groups=reference_groups, second_judge=second,
        replicates=replicates,
    )
    seeds = data.get("seeds")
    seed_range = None
    if seeds is not None and len(seeds):
        seed_range = [int(seeds[0]), int(seeds[min(len(images), len(seeds)) - 1])]
    metrics["samples"] = {"path": data["path"], "available": len(data["images"]), "seeds": seed_range}
    metrics["data"] = {"source": data_cfg.source, "attribute": data_cfg.attribute, "groups": list(data_cfg.groups),
                       "resolution": data_cfg.resolution, "heldout_per_group": data_cfg.heldout_per_group}
    metrics["version"] = METRICS_VERSION
    if extra:
        metrics.update(extra)
    metrics = _jsonable(metrics)
    if write:
        src = Path(data["path"])
        out = Path(out_dir) if out_dir else (src.parent if src.is_file() else src)
        metrics["out_dir"] = str(out)
        write_report(metrics, out, images, grid_source=grid_next_to(src))
    return metrics


def evaluate_run(
    run_dir: str | Path,
    *,
    n: int | None = None,
    classifier=None,
    target=None,
    bootstrap: int | None = None,
    out_dir: str | Path | None = None,
    seed: int | None = None,
    progress: bool = True,
    replicates: int = 1,
) -> dict:
    """Evaluate a trained run: sample it first if ``RUN/samples`` is missing (or holds fewer than ``n``),
    judge the samples with the cached domain classifier for the run's data, and write ``metrics.json`` +
    ``report.md`` into ``out_dir`` (default: the run folder). Returns the metrics dict."""
    from fairdiff.evaluation.copying import run_copy_check
    from fairdiff.evaluation.samples import load_images, sample_count
    from fairdiff.sampling import sample_run
    from fairdiff.runs import read_run_config

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if classifier not in (None, "auto"):  # a judge file: loaded and its class count checked before sampling
        from fairdiff.evaluation.judges import load_classifier

        classifier = load_classifier(classifier, cfg.data, cfg.eval, progress=progress)
        check_class_count(classifier, cfg.data)
    want = n or cfg.eval.n_samples
    have = sample_count(run_dir / "samples" / "samples.npz")
    if have == 0 or (n is not None and have < n):
        # keep_different: samples made another way (e.g. guided) are never silently replaced by unguided ones
        sample_run(run_dir, want, seed=cfg.sample.seed, steps=cfg.sample.steps, batch_size=cfg.sample.batch_size,
                   scheduler=cfg.sample.scheduler, eta=cfg.sample.eta, progress=progress, keep_different=True)
    extra: dict = {}
    old = Path(out_dir or run_dir) / "metrics.json"
    if old.exists():  # re-evaluating a run keeps what the bench measured about it (train / sample seconds)
        try:
            timing = json.loads(old.read_text(encoding="utf-8")).get("timing")
        except (OSError, ValueError, AttributeError):
            timing = None
        if isinstance(timing, dict):
            extra["timing"] = timing
    extra |= {
        "run": {"dir": str(run_dir), "name": cfg.name, "method": cfg.method.name,
                "conditional": cfg.model.conditional, "train_shares": list(cfg.data.shares),
                "train_steps": cfg.train.steps, "train_seed": cfg.train.seed, "sample_seed": cfg.sample.seed,
                "sample_steps": cfg.sample.steps},
    }
    copying = run_copy_check(load_images(run_dir / "samples")["images"][: n or None], cfg.data, cfg.eval.copy_check,
                             seed=cfg.eval.seed)
    if copying is not None:
        extra["copying"] = copying
    return evaluate_samples(run_dir / "samples", cfg.data, cfg.eval, n=n, classifier=classifier, target=target,
                            bootstrap=bootstrap, out_dir=out_dir or run_dir, seed=seed, progress=progress,
                            extra=extra, replicates=replicates)
