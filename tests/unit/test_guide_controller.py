"""The guidance-scale controller (fairdiff.debias.guide.find_scale) on response curves whose answer is known."""

from __future__ import annotations

import math

import pytest

from fairdiff.debias.guide import Pilot, find_scale
from fairdiff.errors import FairdiffError


def curve(base_share1=0.2, s_half=1000.0, break_at=math.inf, base_valid=0.95):
    """Share of group 1 rises smoothly with the scale: 0.2 at 0, 0.5 at s_half (a logistic in log scale);
    the valid rate collapses beyond ``break_at``."""
    calls = []

    def pilot(s: float) -> Pilot:
        calls.append(s)
        if s == 0:
            p1 = base_share1
        else:
            z = math.log(s / s_half)
            p1 = base_share1 + (0.8 - base_share1) / (1 + math.exp(-2 * z)) * (0.5 - base_share1) / 0.3
            p1 = min(p1, 0.99)
        valid = base_valid if s < break_at else 0.5
        return Pilot(s, [1 - p1, p1], valid, 256)

    return pilot, calls


def test_finds_the_scale_of_the_target_share():
    pilot, calls = curve()
    res = find_scale(pilot, [0.5, 0.5], tol=0.01, max_pilots=14)
    assert res.focus_group == 1 and res.reached and res.reason == "reached"
    got = pilot(res.scale).shares[1]
    assert abs(got - 0.5) <= 0.01
    assert calls[0] == 0.0 and len(calls) - 1 <= 14  # the base first, within the budget


def test_non_uniform_target_picks_its_own_focus_group():
    pilot, _ = curve()
    res = find_scale(pilot, [0.3, 0.7], tol=0.01, max_pilots=16)
    assert res.focus_group == 1 and res.reached
    assert abs(pilot(res.scale).shares[1] - 0.7) <= 0.01


def test_stops_before_the_images_break():
    pilot, _ = curve(break_at=300.0)  # the target needs ~1000, but the images break from 300 on
    res = find_scale(pilot, [0.5, 0.5], max_pilots=10)
    assert not res.reached and res.scale < 300.0
    assert all(p.valid_rate >= 0.93 for p in res.pilots if p.scale == res.scale)


def test_base_at_target_needs_no_guidance():
    pilot, calls = curve(base_share1=0.5)
    res = find_scale(pilot, [0.5, 0.5])
    assert res.scale == 0.0 and res.reached and calls == [0.0]


def test_bad_settings_are_one_line_errors():
    pilot, _ = curve()
    with pytest.raises(FairdiffError):
        find_scale(pilot, [0.5, 0.5], grow=1.0)


def test_a_share_that_turns_back_is_searched_for_its_peak():
    """Measured on the MNIST 0 vs 1 base: the minority's share rose to 0.29 at scale ~1600 and fell at larger
    scales. The controller must stop growing, refine around the peak and say the target is out of reach."""
    calls = []

    def pilot(s: float) -> Pilot:
        calls.append(s)
        z = math.log10(max(s, 1.0))
        p1 = 0.16 + 0.14 * math.exp(-((z - 3.3) ** 2) / 0.5)  # peak 0.30 at 10**3.3 ~ 2000
        return Pilot(s, [1 - p1, p1], 0.96, 256)

    res = find_scale(pilot, [0.5, 0.5], max_pilots=10)
    assert not res.reached and "peaks below the target" in res.reason
    assert 1000 <= res.scale <= 4000  # near the peak
    assert max(calls) <= 25600  # it stopped growing soon after the share turned back
    assert isinstance(res.reached, bool)


def test_a_first_pilot_that_moves_the_wrong_way_is_searched_below_it():
    """Measured on the MNIST 0 vs 1 base with --space x: scale 1 (the first guided pilot) pushed the minority
    from 0.16 down to 0.04. The peak then lies between 0 and that scale; the search looks there (it used to
    take the log of 0) and, where small scales help a little, picks one of them."""
    calls = []

    def pilot(s: float) -> Pilot:
        calls.append(s)
        p1 = 0.16 + 0.3 * s - 0.42 * s * s / 1.0 if s > 0 else 0.16  # up for small s, 0.04 at s = 1
        return Pilot(s, [1 - p1, p1], 0.96, 256)

    res = find_scale(pilot, [0.5, 0.5], s0=1.0, max_pilots=6)
    assert not res.reached and "peaks below the target" in res.reason
    assert all(0 <= c <= 1.0 for c in calls) and len(calls) == 6
    assert 0 < res.scale < 1.0  # a small scale that raised the share, not the base and not the wrong-way one


def test_a_guidance_that_only_hurts_falls_back_to_the_base():
    def pilot(s: float) -> Pilot:
        return Pilot(s, [0.84 + 0.1 * min(s, 1) ** 0.5, 0.16 - 0.1 * min(s, 1) ** 0.5], 0.96, 256)

    res = find_scale(pilot, [0.5, 0.5], s0=1.0, max_pilots=5)
    assert res.scale == 0.0 and not res.reached


def test_the_floor_can_come_from_a_reference_sampler():
    """The guided sampler may draw cleaner images than the base's own (eta 1 against 0): the floor is then the
    base as its user samples it, so a scale that is fine against that reference is not refused."""
    pilot, _ = curve(break_at=300.0, base_valid=0.99)  # breaking means valid 0.5
    strict = find_scale(pilot, [0.5, 0.5], max_pilots=30)
    loose = find_scale(curve(base_valid=0.99)[0], [0.5, 0.5], max_pilots=30, reference_valid=0.95)
    assert strict.floor == pytest.approx(0.97) and loose.floor == pytest.approx(0.93)
    assert loose.reached and loose.record()["valid_floor"] == pytest.approx(0.93)


def test_valid_rate_ceiling_ends_the_search_early():
    pilot, calls = curve(break_at=300.0)
    res = find_scale(pilot, [0.5, 0.5], max_pilots=30)
    assert res.reason == "the valid-rate floor stops the scale below the target"
    assert len(calls) < 30 and res.scale < 300.0


def test_pilot_cache_serves_a_pilot_judged_before_and_keys_on_everything(tmp_path):
    from fairdiff.debias.guide import PilotCache

    pilot, calls = curve()
    key = {"unet": "abc", "target": [0.5, 0.5], "eta": 1.0}
    first = find_scale(PilotCache(tmp_path, key).wrap(pilot), [0.5, 0.5])
    n_first = len(calls)
    again = PilotCache(tmp_path, dict(key))
    second = find_scale(again.wrap(pilot), [0.5, 0.5])
    assert len(calls) == n_first and again.hits == len(first.pilots)  # nothing drawn the second time
    assert second.scale == first.scale and [vars(p) for p in second.pilots] == [vars(p) for p in first.pilots]
    other = PilotCache(tmp_path, {**key, "eta": 0.0})  # another sampler: another file, every pilot drawn
    assert other.key != again.key
    find_scale(other.wrap(pilot), [0.5, 0.5])
    assert len(calls) == 2 * n_first and other.hits == 0
    # extra arguments are part of a pilot's name; a damaged file is ignored, then rewritten
    c = PilotCache(tmp_path, key)
    assert c.wrap(lambda s, eta: pilot(s))(0.0, 1.0).scale == 0.0 and c.hits == 0
    c.path.write_text("{not json")
    d = PilotCache(tmp_path, key)
    assert d.pilots == {} and d.wrap(pilot)(0.0).scale == 0.0 and PilotCache(tmp_path, key).pilots
    assert PilotCache(None, key).wrap(pilot)(0.0).scale == 0.0  # no folder: nothing kept


def test_sha256_arrays_tells_weights_apart():
    import numpy as np
    import torch

    from fairdiff.utils.io import sha256_arrays

    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert sha256_arrays(a.state_dict().items()) == sha256_arrays(b.state_dict().items())
    with torch.no_grad():
        b.bias[0] += 1e-5
    assert sha256_arrays(a.state_dict().items()) != sha256_arrays(b.state_dict().items())
    x = np.arange(6, dtype=np.float32)
    assert sha256_arrays([("x", x)]) == sha256_arrays([("x", torch.from_numpy(x))])
    assert sha256_arrays([("x", x)]) != sha256_arrays([("x", x.reshape(2, 3))])
    assert sha256_arrays([("x", x)]) != sha256_arrays([("y", x)])
