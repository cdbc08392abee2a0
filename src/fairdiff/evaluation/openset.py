"""Open-set judging of generated images: per-image verdicts (a group, or *outside*) and the numbers built on them.

An image is *outside* when the judge assigns it to a class of the source that is no group, when its top
probability lies below the judge's calibrated confidence threshold, or when its features lie off the k-NN
manifold of real images (see ``docs/metrics.md``). From the verdicts: the valid rate, shares and FD over valid
images, the strict FD over all images, shares corrected for judge error (confusion matrix on the run's
held-out real images), replicate statistics and the agreement of two judges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.metrics import (
    OUTSIDE,
    bootstrap_confusions,
    bootstrap_means,
    confidence_threshold,
    confusion_matrix,
    corrected_strict_shares,
    fairness_discrepancy,
    group_histogram,
    intervals_disjoint,
    knn_membership,
    percentile_interval,
    replicate_slices,
    softmax,
    strict_fairness_discrepancy,
    strict_shares,
    strict_shortfall,
    valid_shares,
)


@dataclass
class Verdicts:
    """What a judge says about each image."""

    verdicts: np.ndarray  # group index, or OUTSIDE (-1)
    forced: np.ndarray  # argmax over the group columns only (the forced choice)
    group_logits: np.ndarray  # [N, K]
    features: np.ndarray | None  # the features of the manifold test
    other_class: np.ndarray
    low_confidence: np.ndarray
    off_manifold: np.ndarray | None  # None when the judge has no features / no reference

    def rates(self) -> dict:
        return {"other_class": float(self.other_class.mean()), "low_confidence": float(self.low_confidence.mean()),
                "off_manifold": None if self.off_manifold is None else float(self.off_manifold.mean())}


@dataclass
class Calibration:
    """Threshold and manifold of a judge (its own, or taken from the run's held-out images as a fallback)."""

    threshold: float
    reference: np.ndarray | None
    k: int
    scale: float
    source: str


def calibration_of(clf, held_logits: np.ndarray | None, held_features: np.ndarray | None,
                   quantile: float = 0.01, k: int = 3) -> Calibration | None:
    """The judge's own calibration, or one from the run's held-out real images (then the held-out valid rate
    and confusion matrix are optimistic: the same images calibrate and are measured)."""
    cal = getattr(clf, "calibration", None)
    if cal is not None:
        return Calibration(float(cal["confidence_threshold"]), cal.get("reference_features"),
                           int(cal.get("manifold_k", k)), float(cal.get("manifold_scale", 1.0)),
                           cal.get("source", "judge"))
    if held_logits is None or len(held_logits) == 0:
        return None
    thr = confidence_threshold(softmax(held_logits).max(1), quantile)
    ref = held_features if held_features is not None and len(held_features) > k else None
    return Calibration(thr, ref, k, 1.0, "run held-out images (the judge has no calibration set)")


def judge_images(clf, images: np.ndarray, cal: Calibration | None, *, logits: np.ndarray | None = None,
                 features: np.ndarray | None = None, batch_size: int = 500, progress: bool = False) -> Verdicts:
    """Verdicts of ``clf`` on uint8 ``images`` (or on precomputed all-class ``logits`` / ``features``)."""
    if logits is None:
        logits, features = clf.predict(images, batch_size=batch_size, progress=progress, all_classes=True)
    own = clf.manifold_feats(images) if getattr(clf, "manifold_features", None) is not None else None
    if own is not None:
        features = own  # the judge's own manifold space (e.g. the CNN's pooled conv features)
    k = clf.num_classes
    probs = softmax(logits)
    top = probs.argmax(1)
    other = top >= k
    low = probs.max(1) < cal.threshold if cal is not None else np.zeros(len(top), bool)
    off = None
    if cal is not None and cal.reference is not None and features is not None:
        off = ~knn_membership(cal.reference, features, cal.k, cal.scale)
    outside = other | low | (off if off is not None else False)
    verdicts = np.where(outside, OUTSIDE, top).astype(np.int64)
    return Verdicts(verdicts, logits[:, :k].argmax(1), logits[:, :k], features, other, low, off)


def _fd_rows(shares: np.ndarray, target: np.ndarray) -> np.ndarray:
    """FD of each row of ``shares``; NaN for rows without a valid image (NaN shares), ignored by :func:`_ci`."""
    ok = np.isfinite(shares).all(axis=-1)
    out = np.full(len(shares), np.nan)
    if ok.any():
        out[ok] = fairness_discrepancy(shares[ok], target)
    return out


def _ci(draws: np.ndarray, confidence: float) -> list:
    import warnings

    with warnings.catch_warnings():  # resamples without a valid image give NaN shares; they are ignored
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = percentile_interval(draws, confidence)
    if np.ndim(lo) == 0:
        return [float(lo), float(hi)]
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def open_metrics(v: Verdicts, k: int, target: np.ndarray, *, n_bootstrap: int, confidence: float, seed: int,
                 held: Verdicts | None = None, held_groups: np.ndarray | None = None) -> dict:
    """Valid rate, strict / valid / forced FD, corrected shares (with CIs) from one judge's verdicts."""
    strict = strict_shares(v.verdicts, k)
    valid = valid_shares(strict)
    forced = group_histogram(v.forced, k)
    out: dict = {
        "valid_rate": float(1.0 - strict[k]),
        "outside_rate": float(strict[k]),
        "outside_rates": v.rates(),
        "strict_shares": strict.tolist(),
        "fd_strict": strict_fairness_discrepancy(strict, target),
        "shortfall": strict_shortfall(strict, target),
        "valid_shares": valid.tolist(),
        "fd_valid": fairness_discrepancy(valid, target) if np.isfinite(valid).all() else None,
        "fd_forced": fairness_discrepancy(forced, target),
        "forced_shares": forced.tolist(),
    }
    b = None
    if n_bootstrap > 0:
        x = np.concatenate([np.eye(k + 1)[np.where(v.verdicts == OUTSIDE, k, v.verdicts)], np.eye(k)[v.forced]], 1)
        d = bootstrap_means(x, n_bootstrap, seed)
        b, fb = d[:, : k + 1], d[:, k + 1 :]
        vb = valid_shares(b)
        out.update(
            valid_rate_ci=_ci(1.0 - b[:, k], confidence),
            strict_shares_ci=_ci(b, confidence),
            fd_strict_ci=_ci(strict_fairness_discrepancy(b, target), confidence),
            shortfall_ci=_ci(strict_shortfall(b, target), confidence),
            valid_shares_ci=_ci(vb, confidence),
            fd_valid_ci=_ci(_fd_rows(vb, target), confidence),
            fd_forced_ci=_ci(fairness_discrepancy(fb, target), confidence),
        )
    if held is not None and held_groups is not None and len(held_groups):
        hg = np.asarray(held_groups, np.int64)
        conf = confusion_matrix(hg, held.verdicts, k)
        p = corrected_strict_shares(strict, conf)
        out.update(
            reference_valid_rate=float((held.verdicts != OUTSIDE).mean()),
            reference_accuracy=float((held.verdicts == hg).mean()),
            confusion=conf.tolist(), confusion_n=int(len(hg)),
            corrected_valid_rate=float(1.0 - p[k]),
            corrected_shares=valid_shares(p).tolist(),
            fd_strict_corrected=strict_fairness_discrepancy(p, target),
        )
        if b is not None:
            cb = bootstrap_confusions(hg, held.verdicts, k, n_bootstrap, seed + 1)
            pb = corrected_strict_shares(b, cb)
            out.update(
                corrected_valid_rate_ci=_ci(1.0 - pb[:, k], confidence),
                corrected_shares_ci=_ci(valid_shares(pb), confidence),
                fd_strict_corrected_ci=_ci(strict_fairness_discrepancy(pb, target), confidence),
            )
    return out


def replicate_metrics(v: Verdicts, k: int, target: np.ndarray, replicates: int) -> dict:
    """Split the images into ``replicates`` contiguous parts; mean and std (ddof 1) of the main numbers."""
    rows = []
    for sl in replicate_slices(len(v.verdicts), replicates):
        strict = strict_shares(v.verdicts[sl], k)
        valid = valid_shares(strict)
        rows.append({"fd_strict": strict_fairness_discrepancy(strict, target), "valid_rate": 1.0 - strict[k],
                     "shortfall": strict_shortfall(strict, target),
                     "fd_valid": fairness_discrepancy(valid, target) if np.isfinite(valid).all() else np.nan,
                     "fd_forced": fairness_discrepancy(group_histogram(v.forced[sl], k), target),
                     "valid_share_0": valid[0]})
    out: dict = {"replicates": replicates, "n_each": int(len(v.verdicts) // replicates)}
    for key in rows[0]:
        vals = np.array([r[key] for r in rows], float)
        fin = vals[np.isfinite(vals)]  # a replicate without valid images has no valid share
        out[key] = {"mean": float(fin.mean()) if len(fin) else None,
                    "std": float(fin.std(ddof=1)) if len(fin) > 1 else None, "values": vals.tolist()}
    return out


def judges_agreement(a: dict, b: dict) -> dict:
    """Groups whose valid-share CIs of two judges do not overlap (a disagreement beyond their CIs)."""
    ca, cb = a.get("valid_shares_ci"), b.get("valid_shares_ci")
    if not ca or not cb:
        return {"disagree": None, "groups": []}
    groups = [i for i, (x, y) in enumerate(zip(ca, cb))
              if None not in (*x, *y) and np.isfinite([*x, *y]).all() and intervals_disjoint(x, y)]
    return {"disagree": bool(groups), "groups": groups,
            "valid_rate_disagree": bool(a.get("valid_rate_ci") and b.get("valid_rate_ci")
                                        and intervals_disjoint(a["valid_rate_ci"], b["valid_rate_ci"]))}


def open_set_metrics(clf, images: np.ndarray, all_logits: np.ndarray, feats: np.ndarray | None,
                     held_logits: np.ndarray | None, held_feats: np.ndarray | None, held_groups: np.ndarray | None,
                     tgt: np.ndarray, n_bootstrap: int, confidence: float, seed: int, replicates: int, second,
                     reference_images: np.ndarray | None, batch_size: int) -> dict:
    """The open-set keys of metrics.json for the judge ``clf`` (and the ``second`` judge, under ``judge2``).

    ``all_logits`` / ``feats``: the judge's outputs on ``images``; ``held_*``: on the real ``reference_images``
    (None when there are none), whose true groups are ``held_groups``.
    """
    k = clf.num_classes

    def judged(judge, logits, features, ref_logits, ref_features):
        """Verdicts of ``judge`` on the samples, calibrated on the held-out real images, and their metrics."""
        cal = calibration_of(judge, ref_logits, ref_features)
        v = judge_images(judge, images, cal, logits=logits, features=features)
        held = judge_images(judge, reference_images, cal, logits=ref_logits, features=ref_features) \
            if ref_logits is not None else None
        return cal, v, open_metrics(v, k, tgt, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed,
                                    held=held, held_groups=held_groups)

    cal, v, out = judged(clf, all_logits, feats, held_logits, held_feats)
    out["open_set"] = {"calibration": cal.source if cal else None,
                       "confidence_threshold": cal.threshold if cal else None,
                       "manifold_k": cal.k if cal else None, "manifold_scale": cal.scale if cal else None,
                       "manifold": bool(cal is not None and cal.reference is not None and feats is not None)}
    if replicates > 1:
        out["replicates"] = replicate_metrics(v, k, tgt, int(replicates))
    if second is not None:
        try:
            second.check_images(images)
        except FairdiffError as e:
            out["judge2"] = {"name": second.name, "skipped": str(e)}
            return out
        s_logits, s_feats = second.predict(images, batch_size=max(batch_size, 2000), all_classes=True)
        sh_logits = sh_feats = None
        if reference_images is not None:
            sh_logits, sh_feats = second.predict(reference_images, batch_size=2000, all_classes=True)
        _, _, j2 = judged(second, s_logits, s_feats, sh_logits, sh_feats)
        j2["classifier"] = second.describe()
        out["judge2"] = j2
        out["judges_agreement"] = judges_agreement(out, j2)
    return out
