"""Generate-and-filter to a target: the reference every debiasing method is compared with.

Draw images from the base model in batches (the one denoising loop, :func:`fairdiff.sampling.sample`), let a judge
give each image a verdict (a group, or *outside*: another class, low confidence, off the real-image manifold), and
keep an image only while its group's quota of the target is unfilled. Outside images are never kept. The kept set
hits any target exactly (under the filtering judge) at the base's own quality; what it costs is the number of
images drawn per image kept, reported beside it.

The filtering judge is the *validation* judge (:func:`validation_judge`): the domain CNN trained with another seed
than the test judge that ``fairdiff evaluate`` uses, so a filtered set is never scored by the judge that chose it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.metrics import OUTSIDE
from fairdiff.utils.partial import load_partial, partial_key, save_partial

STATE_VERSION = 1  # of the state file filter_to_target saves after every batch


def quotas(target, n: int) -> np.ndarray:
    """Images per group for ``n`` kept images at ``target`` (largest-remainder rounding; sums to ``n``)."""
    t = np.asarray(target, dtype=np.float64)
    if n < 1:
        raise FairdiffError(f"--n must be at least 1, got {n}")
    if t.ndim != 1 or len(t) < 2 or (t < 0).any() or not math.isclose(float(t.sum()), 1.0, abs_tol=1e-6):
        raise FairdiffError(f"target must be >= 2 non-negative shares summing to 1, got {list(t)}")
    raw = t * n
    q = np.floor(raw).astype(np.int64)
    rest = n - int(q.sum())
    order = np.argsort(-(raw - q), kind="stable")
    q[order[:rest]] += 1
    return q


@dataclass
class FilterResult:
    """The kept images (in the order they were drawn), their seeds and groups, and what it cost."""

    images: np.ndarray
    seeds: np.ndarray
    groups: np.ndarray
    quotas: np.ndarray
    drawn: int
    drawn_per_group: np.ndarray  # verdicts of every drawn image, per group
    drawn_outside: int
    sample_seconds: float = 0.0
    judge_seconds: float = 0.0
    batches: int = 0
    log: list = field(default_factory=list)

    @property
    def kept(self) -> int:
        return len(self.seeds)

    def summary(self) -> dict:
        kept = max(self.kept, 1)
        return {
            "kept": self.kept, "quotas": self.quotas.tolist(), "drawn": self.drawn,
            "drawn_per_kept": round(self.drawn / kept, 4),
            "drawn_shares": (self.drawn_per_group / max(self.drawn, 1)).round(4).tolist(),
            "drawn_outside_rate": round(self.drawn_outside / max(self.drawn, 1), 4),
            "sample_seconds": round(self.sample_seconds, 2), "judge_seconds": round(self.judge_seconds, 2),
            "seconds_per_kept_image": round((self.sample_seconds + self.judge_seconds) / kept, 5),
            "seconds_per_drawn_image": round(self.sample_seconds / max(self.drawn, 1), 5),
            "batches": self.batches,
        }


def filter_to_target(
    draw: Callable[[list[int]], np.ndarray],
    judge: Callable[[np.ndarray], np.ndarray],
    target,
    n: int,
    *,
    seed: int = 0,
    batch_size: int = 500,
    max_draws: int | None = None,
    progress: bool = False,
    state_file: str | Path | None = None,
    state_key: dict | None = None,
) -> FilterResult:
    """Keep ``n`` images whose judged groups follow ``target``.

    ``draw(seeds)`` returns one uint8 image per seed; ``judge(images)`` returns one verdict per image (a group
    index in ``[0, K)`` or ``OUTSIDE``). Seeds run ``seed, seed + 1, ...``; each batch is sized to what is still
    missing (at the drawn rate of the scarcest unfilled group), at most ``batch_size``. Raises a one-line error
    when ``max_draws`` (default ``100 * n``) images did not fill the quotas, naming the group that ran short.

    ``state_file``: after every batch the kept images and the counts are saved there (one atomic replace), and a
    later call with the same ``state_key`` (what makes the draws and verdicts the same: model, judge, sampler,
    seed, target, n, batch size) continues from it, so an interrupted filter loses at most one batch and ends with
    the images an uninterrupted one keeps. A state of another key is ignored (and replaced). The caller removes
    the file once the kept set is written.
    """
    from tqdm.auto import tqdm

    q = quotas(target, n)
    k = len(q)
    max_draws = int(max_draws if max_draws is not None else 100 * n)
    if batch_size < 1:
        raise FairdiffError(f"batch size must be at least 1, got {batch_size}")
    kept_img: list[np.ndarray] = []
    kept_seed: list[np.ndarray] = []
    kept_grp: list[np.ndarray] = []
    have = np.zeros(k, np.int64)
    per_group = np.zeros(k, np.int64)
    outside = 0
    drawn = 0
    res = FilterResult(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), q, 0, per_group, 0)
    key = None
    if state_file is not None:
        key = partial_key(**{"version": STATE_VERSION, "quotas": q.tolist(), "seed": int(seed),
                             "batch_size": int(batch_size), **(state_key or {})})
        saved = load_partial(state_file, key)
        if saved is not None:
            if len(saved["seeds"]):
                kept_img.append(saved["images"])
                kept_seed.append(saved["seeds"])
                kept_grp.append(saved["groups"])
            have[:] = saved["have"]
            per_group[:] = saved["per_group"]
            outside, drawn = int(saved["outside"]), int(saved["drawn"])
            res.sample_seconds, res.judge_seconds = float(saved["sample_seconds"]), float(saved["judge_seconds"])
            res.batches = int(saved["batches"])
            res.log = [{"drawn": int(d), "kept": [int(x) for x in kk]}
                       for d, kk in zip(saved["log_drawn"], saved["log_kept"])]
            if progress:
                print(f"filter: continuing an interrupted run from {state_file} ({int(have.sum())} of {n} kept, "
                      f"{drawn} drawn)", flush=True)
    bar = tqdm(total=n, initial=int(have.sum()), desc="filter", unit="img", disable=not progress, leave=False)
    try:
        while (have < q).any():
            if drawn >= max_draws:
                short = [(g, int(q[g] - have[g])) for g in range(k) if have[g] < q[g]]
                rates = per_group / max(drawn, 1)
                why = ", ".join(f"group {g}: {m} missing (drawn share {rates[g]:.4f})" for g, m in short)
                raise FairdiffError(f"filter: {drawn} images drawn (max_draws) and the quotas are not filled ({why});"
                                    f" raise --max-draws or choose a target the model can reach")
            need = q - have
            with np.errstate(divide="ignore"):
                rate = per_group / drawn if drawn else np.full(k, 1.0 / k)
            est = max(int(math.ceil(need[g] / max(rate[g], 1e-3) * 1.1)) for g in range(k) if need[g] > 0)
            b = int(min(batch_size, max(est, 8), max_draws - drawn))
            seeds = list(range(seed + drawn, seed + drawn + b))
            t0 = time.perf_counter()
            images = np.asarray(draw(seeds))
            t1 = time.perf_counter()
            verdicts = np.asarray(judge(images)).reshape(-1)
            t2 = time.perf_counter()
            if len(images) != b or len(verdicts) != b:
                raise FairdiffError(f"filter: {b} seeds gave {len(images)} images and {len(verdicts)} verdicts")
            if ((verdicts != OUTSIDE) & ((verdicts < 0) | (verdicts >= k))).any():
                raise FairdiffError(f"filter: the judge gave a verdict outside [0, {k}) for a {k}-group target")
            res.sample_seconds += t1 - t0
            res.judge_seconds += t2 - t1
            res.batches += 1
            drawn += b
            outside += int((verdicts == OUTSIDE).sum())
            for g in range(k):
                idx = np.flatnonzero(verdicts == g)
                per_group[g] += len(idx)
                take = idx[: max(int(q[g] - have[g]), 0)]
                if len(take):
                    kept_img.append(images[take])
                    kept_seed.append(np.asarray(seeds, np.int64)[take])
                    kept_grp.append(np.full(len(take), g, np.int64))
                    have[g] += len(take)
                    bar.update(len(take))
            res.log.append({"drawn": drawn, "kept": have.tolist()})
            if key is not None:
                _save_filter_state(state_file, key, kept_img, kept_seed, kept_grp, have, per_group, outside, drawn,
                                   res)
    finally:
        bar.close()
    seeds_all = np.concatenate(kept_seed)
    order = np.argsort(seeds_all, kind="stable")  # the kept images in the order they were drawn
    res.images = np.concatenate(kept_img)[order]
    res.seeds = seeds_all[order]
    res.groups = np.concatenate(kept_grp)[order]
    res.drawn, res.drawn_outside = drawn, outside
    return res


def _save_filter_state(path, key: str, kept_img, kept_seed, kept_grp, have, per_group, outside: int, drawn: int,
                       res: FilterResult) -> None:
    """The filter's state after a whole batch (:func:`fairdiff.utils.partial.save_partial`)."""
    k = len(have)
    save_partial(path, key, images=np.concatenate(kept_img) if kept_img else np.zeros((0,), np.uint8),
                 seeds=np.concatenate(kept_seed) if kept_seed else np.zeros(0, np.int64),
                 groups=np.concatenate(kept_grp) if kept_grp else np.zeros(0, np.int64),
                 have=have, per_group=per_group, outside=outside, drawn=drawn, batches=res.batches,
                 sample_seconds=res.sample_seconds, judge_seconds=res.judge_seconds,
                 log_drawn=np.array([e["drawn"] for e in res.log], np.int64),
                 log_kept=np.array([e["kept"] for e in res.log], np.int64).reshape(-1, k))
