"""Distribution guidance that finds its own scale: a controller on pilot batches judged during sampling.

The scale of distribution guidance is not a constant that carries from one model to another (docs/guidance.md:
useful values run from hundreds to thousands, and a fixed default undershoots one model and breaks another). The
controller treats the judged share of the most under-represented group as a monotone function of the scale and
finds the scale that puts it at the target:

1. a pilot batch at scale 0 (the base) gives the base's shares and valid rate;
2. the scale grows geometrically from ``s0`` until the judged share reaches the target (a bracket), or until the
   valid rate falls more than ``valid_drop`` below the base's (the images break: that scale is a ceiling);
3. geometric bisection inside the bracket until the share is within ``tol`` of the target or the pilot budget
   is spent; the scale whose pilot was closest to the target with an acceptable valid rate is chosen.

Every pilot uses the same seeds (common random numbers), so the response to the scale is smooth; the pilot seeds
are disjoint from the seeds of the images that are finally drawn and scored. Pilots are judged by the validation
judge, never the test judge.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.utils.io import write_json


@dataclass
class Pilot:
    scale: float
    shares: list[float]  # shares among valid images, per group
    valid_rate: float
    n: int


@dataclass
class ScaleSearch:
    scale: float
    focus_group: int
    reached: bool  # the chosen pilot's focus share is within tol of the target
    reason: str
    pilots: list[Pilot] = field(default_factory=list)

    floor: float | None = None

    def record(self) -> dict:
        return {"scale": self.scale, "focus_group": self.focus_group, "reached": self.reached, "reason": self.reason,
                "valid_floor": self.floor, "pilots": [vars(p) for p in self.pilots]}


class PilotCache:
    """Pilots judged before, kept on disk so that a second run with the same model, reader, judge, target and
    sampler does not draw them again. The controller's pilots are common random numbers (fixed seeds), so the
    pilot at a scale is the same image batch in every such run; ``key`` names everything that decides it (weight
    digests, target, eta, steps, pilot seeds, judge), and a change to any of it is a new file. One JSON file per
    key in ``folder`` (``None``: nothing is kept); a damaged file is ignored and rewritten."""

    def __init__(self, folder: str | Path | None, key: dict):
        self.key = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.path = None if folder is None else Path(folder) / f"{self.key}.json"
        self.pilots: dict[str, Pilot] = {}
        self.hits = 0
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                self.pilots = {k: Pilot(**p) for k, p in data["pilots"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                self.pilots = {}

    def wrap(self, pilot: Callable[..., Pilot]) -> Callable[..., Pilot]:
        """``pilot(scale, *args)`` served from the cache when that call was judged before."""

        def cached(scale: float, *args) -> Pilot:
            name = json.dumps([float(scale), *args])
            if name in self.pilots:
                self.hits += 1
                return self.pilots[name]
            p = pilot(scale, *args)
            self.pilots[name] = p
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_json(self.path, {"pilots": {k: vars(v) for k, v in self.pilots.items()}})
            return p

        return cached

    def record(self) -> dict:
        return {"key": self.key, "path": None if self.path is None else str(self.path), "hits": self.hits}


def find_scale(
    pilot: Callable[[float], Pilot],
    target,
    *,
    valid_drop: float = 0.02,
    s0: float = 100.0,
    grow: float = 4.0,
    max_pilots: int = 10,
    tol: float = 0.01,
    reference_valid: float | None = None,
) -> ScaleSearch:
    """The guidance scale whose pilot puts the most under-represented group's share (among valid images) at its
    target, without the valid rate falling more than ``valid_drop`` below the unguided pilot's (or below
    ``reference_valid``, when the guided sampler differs from the base's own: the base as its user samples it)."""
    t = np.asarray(target, float)
    if s0 <= 0 or grow <= 1 or max_pilots < 2 or tol <= 0:
        raise FairdiffError("find_scale: s0 > 0, grow > 1, max_pilots >= 2 and tol > 0 are needed")
    base = pilot(0.0)
    pilots = [base]
    g = int(np.argmax(t - np.asarray(base.shares)))
    floor = (base.valid_rate if reference_valid is None else float(reference_valid)) - valid_drop

    def gap(p: Pilot) -> float:
        return p.shares[g] - t[g] if math.isfinite(p.shares[g]) else -math.inf

    def ok(p: Pilot) -> bool:
        return p.valid_rate >= floor

    def choose(reason: str) -> ScaleSearch:
        good = [p for p in pilots if ok(p)] or [base]
        best = min(good, key=lambda p: abs(gap(p)))
        return ScaleSearch(float(best.scale), g, bool(abs(gap(best)) <= tol), reason, pilots, floor)

    if abs(gap(base)) <= tol:
        return choose("the base is at the target")
    lo, hi = 0.0, None  # lo: below the target with valid images; hi: at/over the target, or breaking the images
    s = s0
    prev = base
    while hi is None:
        if len(pilots) >= max_pilots:
            return choose("pilot budget spent while growing the scale (the target was not reached)")
        p = pilot(s)
        pilots.append(p)
        if not ok(p) or gap(p) >= 0:
            hi = s
        elif gap(p) < gap(prev) - tol:  # the share turned back: guidance peaks below the target
            return _refine_peak(pilot, pilots, choose, gap, ok, max_pilots, tol)
        else:
            lo = s
            prev = p
            s *= grow
    while len(pilots) < max_pilots:
        best = min((p for p in pilots if ok(p)), key=lambda p: abs(gap(p)), default=None)
        if best is not None and abs(gap(best)) <= tol:
            return choose("reached")
        hi_pilot = next(p for p in pilots if p.scale == hi)
        if lo > 0 and hi / lo < 1.15 and not ok(hi_pilot):
            return choose("the valid-rate floor stops the scale below the target")
        s = math.sqrt(lo * hi) if lo > 0 else hi / grow
        p = pilot(s)
        pilots.append(p)
        if not ok(p) or gap(p) >= 0:
            hi = s
        else:
            lo = s
    return choose("pilot budget spent")


def _refine_peak(pilot, pilots, choose, gap, ok, max_pilots, tol) -> ScaleSearch:
    """The judged share rose and then fell with the scale (not monotone): search the peak on the log scale
    (the best pilot's neighbours, halved in log distance each round) and report that the target is out of reach
    when the peak stays below it."""
    while len(pilots) < max_pilots:
        scales = sorted(p.scale for p in pilots)
        best = max((p for p in pilots if ok(p)), key=gap)
        if abs(gap(best)) <= tol:
            return choose("reached")
        i = scales.index(best.scale)
        cands = []
        if best.scale == 0:  # every guided pilot is worse than none: look closer to 0
            cands.append(scales[1] / 4)
        elif i > 0:
            left = scales[i - 1]
            cands.append(math.sqrt(max(left, best.scale / 16) * best.scale) if left > 0 else best.scale / 2)
        if best.scale > 0 and i + 1 < len(scales):
            cands.append(math.sqrt(scales[i + 1] * best.scale))
        cands = [c for c in cands if all(abs(math.log(c / q.scale)) > 0.05 for q in pilots if q.scale > 0)]
        if not cands:
            break
        for c in cands[: max_pilots - len(pilots)]:
            pilots.append(pilot(c))
    res = choose("the judged share peaks below the target (guidance cannot reach it on this model)")
    return res

