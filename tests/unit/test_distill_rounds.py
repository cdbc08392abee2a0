"""The target each distill round distils toward (``next_round_target``), against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from fairdiff.debias.run import SLOPE_RANGE, next_round_target


def test_second_round_repeats_the_first_miss():
    # 2 t - s1 = [0.6 - 0.38, 1.4 - 0.62] = [0.22, 0.78], already summing to 1
    assert next_round_target([0.3, 0.7], [([0.3, 0.7], [0.38, 0.62])]) == pytest.approx([0.22, 0.78])


def test_second_round_clips_and_renormalises():
    # 2 t - s1 = [-0.1, 1.1] -> clipped [0.01, 0.99] -> sums to 1 already; three groups renormalise
    assert next_round_target([0.5, 0.5], [([0.5, 0.5], [1.1, -0.1])]) == pytest.approx([0.01, 0.99])
    t3 = next_round_target([1 / 3] * 3, [([1 / 3] * 3, [0.7, 0.2, 0.1])])
    raw = np.clip(2 / 3 - np.array([0.7, 0.2, 0.1]), 0.01, 0.99)
    assert t3 == pytest.approx(raw / raw.sum()) and t3.sum() == pytest.approx(1.0)


def test_third_round_is_the_secant_through_the_last_two_points():
    # group 0: points (0.3, 0.385) and (0.2148, 0.2704): slope 0.1146 / 0.0852 = 1.34507...; the step from the
    # second point is (0.3 - 0.2704) / slope = 0.022006...; group 1 mirrors it (two groups sum to one)
    pts = [([0.3, 0.7], [0.385, 0.615]), ([0.2148, 0.7852], [0.2704, 0.7296])]
    slope = (0.385 - 0.2704) / (0.3 - 0.2148)
    want0 = 0.2148 + (0.3 - 0.2704) / slope
    assert next_round_target([0.3, 0.7], pts) == pytest.approx([want0, 1 - want0])
    assert want0 == pytest.approx(0.23681, abs=1e-5)


def test_secant_slope_is_clipped_and_falls_back_to_one():
    lo, hi = SLOPE_RANGE
    # a flat secant (the share barely moved): slope clipped up to lo, a step of miss / lo
    pts = [([0.5, 0.5], [0.58, 0.42]), ([0.42, 0.58], [0.575, 0.425])]
    got = next_round_target([0.5, 0.5], pts)
    assert got[0] == pytest.approx(0.42 + (0.5 - 0.575) / lo)
    # a steep one: clipped down to hi
    pts = [([0.5, 0.5], [0.58, 0.42]), ([0.42, 0.58], [0.30, 0.70])]
    assert next_round_target([0.5, 0.5], pts)[0] == pytest.approx(0.42 + (0.5 - 0.30) / hi)
    # a negative secant (noise decides its sign) and a target that moved < 0.02: slope 1
    pts = [([0.5, 0.5], [0.58, 0.42]), ([0.42, 0.58], [0.60, 0.40])]
    assert next_round_target([0.5, 0.5], pts)[0] == pytest.approx(0.42 + (0.5 - 0.60))
    pts = [([0.5, 0.5], [0.52, 0.48]), ([0.49, 0.51], [0.53, 0.47])]
    assert next_round_target([0.5, 0.5], pts)[0] == pytest.approx(0.49 + (0.5 - 0.53))


def test_three_groups_take_their_own_slopes():
    t = np.array([0.3333, 0.3333, 0.3334])
    p1 = (t, np.array([0.4097, 0.3493, 0.2410]))
    p2 = (np.array([0.2569, 0.3173, 0.4258]), np.array([0.3497, 0.3381, 0.3122]))
    slope = np.ones(3)
    dt = p2[0] - p1[0]
    for g in (0, 2):  # group 1's target moved 0.016 < 0.02: slope 1
        slope[g] = np.clip((p2[1][g] - p1[1][g]) / dt[g], *SLOPE_RANGE)
    raw = np.clip(p2[0] + (t - p2[1]) / slope, 0.01, 0.99)
    assert abs(dt[1]) < 0.02
    assert next_round_target(t, [p1, p2]) == pytest.approx(raw / raw.sum())
