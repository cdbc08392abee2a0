"""Property-based tests: the dotted-override parser and the metric functions on arbitrary input.

Overrides: a value written by the parser's own YAML reading round-trips, unknown keys are always refused, and no
text whatsoever gives anything but a config or a one-line :class:`FairdiffError` (never a traceback).
Metrics: arbitrary share vectors, targets and labels give a correct, finite value or a clear ``ValueError``;
never a NaN returned silently.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fairdiff.config import ConfigError, dump_config, load_config, to_dict
from fairdiff.errors import FairdiffError
from fairdiff.metrics import (
    conditional_parity,
    fairness_discrepancy,
    group_histogram,
    kl_to_target,
    mean_pairwise_gap,
    resolve_target,
    soft_histogram,
    softmax,
    statistical_parity_difference,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _known_keys() -> set[str]:
    out = set()

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                walk(v, prefix + k + ".")

    walk(to_dict(load_config()), "")
    return out


KNOWN = _known_keys()
KEY_PART = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)


# ------------------------------------------------------------------------------------------------ overrides
@FAST
@given(steps=st.integers(min_value=1, max_value=10**9), seed=st.integers(min_value=0, max_value=2**31 - 1),
       lr=st.floats(min_value=1e-12, max_value=10.0, allow_nan=False, allow_infinity=False))
def test_numeric_overrides_round_trip(steps, seed, lr):
    cfg = load_config(None, [f"train.steps={steps}", f"train.seed={seed}", f"train.lr={lr!r}"])
    assert (cfg.train.steps, cfg.train.seed, cfg.train.lr) == (steps, seed, lr)
    # every leaf of the resolved config, written back as an override, gives the same config
    assert dump_config(load_config(None, _as_overrides(cfg))) == dump_config(cfg)


def _as_overrides(cfg) -> list[str]:
    out = []

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, prefix + k + ".")
            else:
                text = yaml.safe_dump(v, default_flow_style=True, width=10**6).strip()
                out.append(f"{prefix}{k}={text.removesuffix('...').strip()}")

    walk(to_dict(cfg), "")
    return out


@FAST
@given(name=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1,
                    max_size=30))
def test_string_override_round_trips_when_quoted(name):
    """Any quoted string reaches the config intact: a plain folder name is kept as given, anything else (path
    separators, '..', spaces, punctuation) is refused with a ConfigError naming the key, never altered."""
    import re

    text = "name=" + yaml.safe_dump(name, default_style='"', width=10**6).strip().removesuffix("...").strip()
    if re.fullmatch(r"[\w.-]+", name) and name not in (".", ".."):
        assert load_config(None, [text]).name == name
    else:
        with pytest.raises(ConfigError, match="name"):
            load_config(None, [text])


@FAST
@given(parts=st.lists(KEY_PART, min_size=1, max_size=4), value=st.integers())
def test_unknown_keys_are_always_refused(parts, value):
    key = ".".join(parts)
    assume(key not in KNOWN)
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, [f"{key}={value}"])


@FAST
@given(text=st.text(max_size=60))
def test_arbitrary_override_text_is_a_config_or_one_clear_error(text):
    try:
        cfg = load_config(None, [text])
    except FairdiffError as e:  # a user mistake: the CLI prints it as one line (see the next test)
        assert str(e).strip()
    else:
        assert "=" in text and dump_config(cfg)
        key = text.split("=", 1)[0].strip()
        assert key in KNOWN, f"unknown key {key!r} accepted"


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40))
def test_cli_never_tracebacks_on_an_arbitrary_override(text):
    from fairdiff.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["train", "--dry-run", "--", text]) if text.startswith("-") else main(["train", "--dry-run",
                                                                                                 text])
        except SystemExit as e:
            rc = e.code
    assert rc in (0, 2)
    if rc == 2:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in err.getvalue()


# ------------------------------------------------------------------------------------------------ metrics
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _shares(k_min=1, k_max=6):
    """Valid share vectors: non-negative weights normalised to sum 1."""
    return st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=k_min, max_size=k_max) \
        .filter(lambda w: sum(w) > 1e-9).map(lambda w: np.asarray(w, np.float64) / np.sum(w))


@FAST
@given(p=_shares(2, 6))
def test_valid_shares_give_correct_finite_metrics(p):
    k = len(p)
    t = np.full(k, 1.0 / k)
    fd = fairness_discrepancy(p)
    assert math.isfinite(fd) and abs(fd - math.sqrt(((p - t) ** 2).sum())) < 1e-12
    assert 0.0 <= fd <= math.sqrt(2.0) + 1e-12
    kl = kl_to_target(p)
    assert math.isfinite(kl) and kl >= -1e-12
    spd = statistical_parity_difference(p)
    assert math.isfinite(spd) and -1.0 - 1e-12 <= spd <= 1.0 + 1e-12
    assert spd == pytest.approx(p[0] - p[1] if k == 2 else p.max() - p.min(), abs=1e-12)  # binary: signed
    gap = mean_pairwise_gap(p)
    assert math.isfinite(gap) and 0.0 <= gap <= 1.0 + 1e-12
    pairs = [abs(p[i] - p[j]) for i in range(k) for j in range(i + 1, k)]
    assert gap == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)


@FAST
@given(v=st.lists(ANY_FLOAT, min_size=0, max_size=6), t=st.one_of(st.none(), st.lists(ANY_FLOAT, min_size=0,
                                                                                        max_size=6)))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warning when summing huge values
def test_arbitrary_share_vectors_never_give_nan_silently(v, t):
    for fn in (lambda: fairness_discrepancy(v, t), lambda: kl_to_target(v, t),
               lambda: statistical_parity_difference(v), lambda: mean_pairwise_gap(v)):
        try:
            out = fn()
        except ValueError as e:
            assert str(e)
            continue
        assert np.all(np.isfinite(out)), (v, t, out)


@FAST
@given(t=st.lists(ANY_FLOAT, min_size=0, max_size=6), k=st.integers(min_value=1, max_value=6))
def test_target_is_valid_or_refused(t, k):
    try:
        r = resolve_target(t, k)
    except ValueError:
        return
    assert len(r) == k and np.all(np.isfinite(r)) and np.all(r >= 0) and abs(r.sum() - 1) < 1e-6


@FAST
@given(labels=st.lists(st.one_of(st.integers(min_value=-3, max_value=8), ANY_FLOAT), max_size=20),
       k=st.integers(min_value=1, max_value=6))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's cast warnings on inf / huge labels
def test_group_histogram_on_arbitrary_labels(labels, k):
    try:
        h = group_histogram(np.asarray(labels, dtype=object if labels else np.float64).astype(np.float64), k)
    except (ValueError, OverflowError):
        return
    assert len(h) == k and np.all(np.isfinite(h)) and abs(h.sum() - 1) < 1e-12
    ints = [int(x) for x in labels]
    np.testing.assert_allclose(h, np.bincount(ints, minlength=k) / len(ints))


@FAST
@given(y=st.lists(st.integers(min_value=-2, max_value=7), min_size=0, max_size=20),
       c=st.lists(st.integers(min_value=-2, max_value=7), min_size=0, max_size=20),
       k=st.integers(min_value=1, max_value=5))
def test_conditional_parity_on_arbitrary_labels(y, c, k):
    try:
        cp = conditional_parity(y, c, k)
    except ValueError:
        return
    seen = cp["counts"] > 0
    assert cp["counts"].sum() == len(c) == len(y) > 0
    assert math.isfinite(cp["gap"]) and 0.0 <= cp["gap"] <= 1.0
    assert np.all(np.isfinite(cp["rates"][seen])) and np.all(np.isnan(cp["rates"][~seen]))
    # counted by hand: rate g = share of the images asked for g that came out as g; gap = max - min over those asked
    rates = {g: sum(1 for a, b in zip(y, c) if b == g and a == g) / c.count(g) for g in set(c)}
    assert cp["counts"].tolist() == [c.count(g) for g in range(k)]
    assert all(cp["rates"][g] == r for g, r in rates.items())
    assert cp["gap"] == max(rates.values()) - min(rates.values())


@FAST
@given(rows=st.lists(st.lists(ANY_FLOAT, min_size=2, max_size=2), min_size=0, max_size=6),
       from_logits=st.booleans())
def test_soft_histogram_never_nan(rows, from_logits):
    arr = np.asarray(rows, np.float64).reshape(-1, 2)
    try:
        h = soft_histogram(arr, from_logits=from_logits)
    except ValueError:
        return
    assert np.all(np.isfinite(h)) and abs(h.sum() - 1) < 1e-6


@FAST
@given(rows=st.lists(st.lists(st.floats(min_value=-1e3, max_value=1e3), min_size=3, max_size=3), min_size=1,
                     max_size=5))
def test_softmax_of_finite_logits_is_a_distribution(rows):
    p = softmax(np.asarray(rows))
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(1), 1.0)
