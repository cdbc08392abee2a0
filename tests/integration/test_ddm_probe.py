"""The DDM probe on a tiny trained DDM run: per-bucket rows that agree with hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from fairdiff.bench.ddm_probe import load_indicator, probe_ddm
from fairdiff.cli.main import main
from fairdiff.errors import RunDirError


@pytest.fixture(scope="module")
def ddm_run(tmp_path_factory):
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("runs") / "ddm"
    rc = main(["train", *TINY, "train.steps=4", "method.name=ddm", "method.alpha=0.2", "method.indicator_widths=[16]",
               "method.indicator_ce=balanced", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_probe_rows(ddm_run):
    rows = probe_ddm(ddm_run, buckets=2, n=24, seed=0)
    assert [(r["t_lo"], r["t_hi"]) for r in rows] == [(0, 500), (500, 1000)]
    # synthetic TINY data is 4:1: predicting the shares costs -mean log share over the drawn groups, which lies
    # between -log 0.8 and -log 0.2
    for r in rows:
        assert -math.log(0.8) - 1e-6 <= r["ce_prior"] <= -math.log(0.2) + 1e-6
        assert all(math.isfinite(v) for v in r.values())
        assert 0.0 <= r["acc_train"] <= 1.0 and abs(r["push_cos"]) <= 1.0 + 1e-6
        assert r["push_norm"] >= abs(r["push_along"]) - 1e-6  # a component is never longer than the vector
    ind, cfg = load_indicator(ddm_run)
    assert cfg["ce"] == "balanced" and cfg["alpha"] == 0.2
    assert isinstance(ind(torch.zeros(1, 1, 16, 16)), torch.Tensor)


def test_probe_refuses_a_run_without_indicator(tmp_path):
    from tests.conftest import TINY

    out = tmp_path / "base"
    assert main(["train", *TINY, "train.steps=2", "--out", str(out), "--quiet"]) == 0
    with pytest.raises(RunDirError, match="no indicator"):
        probe_ddm(out, buckets=2, n=8)
