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


def _by_hand(run_dir, buckets: int, n: int, seed: int) -> list[dict]:
    """The probe's rows recomputed here: the same draws (one generator, in the probe's order), the noising and the
    cross-entropies written out, and the push along the majority direction as a central finite difference of the
    summed cross-entropy in float64 (no autograd)."""
    from diffusers import DDPMScheduler

    from fairdiff.data import prepare_data
    from fairdiff.runs import load_run_model, read_run_config

    data = prepare_data(read_run_config(run_dir).data)
    unet, sched_cfg = load_run_model(run_dir)
    unet.eval()
    ns = DDPMScheduler.from_config(sched_cfg)
    ind, icfg = load_indicator(run_dir)
    assert icfg.get("input", "eps") == "eps"
    ind64 = load_indicator(run_dir)[0].double()
    tg = data.train_groups
    counts = [int((tg == 0).sum()), int((tg == 1).sum())]
    major = 0 if counts[0] >= counts[1] else 1
    share = [c / sum(counts) for c in counts]
    d = (data.train_images[tg == major].mean(0) - data.train_images[tg != major].mean(0)).double()
    d = d / d.norm()
    abar_all = ns.alphas_cumprod.double()
    gen = torch.Generator().manual_seed(seed)
    T = ns.config.num_train_timesteps
    rows = []

    def noised(x0, lo, hi):
        t = torch.randint(lo, hi, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar_all[t].float().view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t

    def ce_sum(eps64, g):  # summed cross-entropy -log softmax(logits)[g], in float64
        z = ind64(eps64)
        return float(-(z.gather(1, g[:, None]) - torch.logsumexp(z, 1, keepdim=True)).sum())

    for b in range(buckets):
        lo, hi = round(b * T / buckets), round((b + 1) * T / buckets)
        idx = torch.randint(0, len(data.train_images), (n,), generator=gen)
        x0, g = data.train_images[idx], tg[idx]
        xt, t = noised(x0, lo, hi)
        with torch.no_grad():
            eps = unet(xt, t).sample
            logits = ind(eps.float())
            hxt, ht = noised(data.heldout_images, lo, hi)
            acc_bal = float((ind(unet(hxt, ht).sample.float()).argmax(1) == data.heldout_groups).float().mean())
            p = torch.softmax(logits.double(), 1)
            c = ((1 - abar_all[t]).sqrt() / abar_all[t].sqrt()).view(-1, 1, 1, 1)
            e64, h = eps.double(), 1e-6
            along = {}
            for name, mask in (("all", torch.ones(n, dtype=torch.bool)), ("major", g == major), ("minor", g != major)):
                step = h * c * d * mask.view(-1, 1, 1, 1)
                fd = (ce_sum(e64 + step, g) - ce_sum(e64 - step, g)) / (2 * h)
                along[name] = fd / int(mask.sum()) if mask.any() else math.nan
        rows.append({"t_lo": lo, "t_hi": hi, "n_major": int((g == major).sum()),
                     "acc_train": float((logits.argmax(1) == g).double().mean()), "acc_balanced": acc_bal,
                     "ce_train": float(-torch.log(p[torch.arange(n), g]).mean()),
                     "ce_prior": -sum(math.log(share[int(k)]) for k in g) / n,
                     "push_along": along["all"], "push_along_major": along["major"],
                     "push_along_minor": along["minor"]})
    return rows


def test_probe_rows_equal_a_hand_computation(ddm_run):
    rows = probe_ddm(ddm_run, buckets=2, n=24, seed=0)
    assert [(r["t_lo"], r["t_hi"]) for r in rows] == [(0, 500), (500, 1000)]
    hand = _by_hand(ddm_run, buckets=2, n=24, seed=0)
    for r, w in zip(rows, hand):
        # synthetic TINY data is 4:1: the prior's cross-entropy is -(m log 0.8 + (n - m) log 0.2) / n for the m
        # majority images drawn
        m = w["n_major"]
        assert r["ce_prior"] == pytest.approx(-(m * math.log(0.8) + (24 - m) * math.log(0.2)) / 24, rel=1e-6)
        assert r["ce_prior"] == pytest.approx(w["ce_prior"], rel=1e-6)
        assert r["acc_train"] == w["acc_train"] and r["acc_balanced"] == w["acc_balanced"]
        assert r["ce_train"] == pytest.approx(w["ce_train"], rel=1e-5)
        for key in ("push_along", "push_along_major", "push_along_minor"):
            assert r[key] == pytest.approx(w[key], rel=1e-4, abs=1e-9), key
        assert abs(r["push_cos"]) <= 1.0 + 1e-6
        assert r["push_norm"] >= abs(r["push_along"]) - 1e-6  # a component is never longer than the vector
    assert rows[0]["push_along"] != rows[1]["push_along"]  # the buckets are measured apart
    ind, cfg = load_indicator(ddm_run)
    assert cfg["ce"] == "balanced" and cfg["alpha"] == 0.2
    assert isinstance(ind(torch.zeros(1, 1, 16, 16)), torch.Tensor)


def test_probe_refuses_a_run_without_indicator(tmp_path):
    from tests.conftest import TINY

    out = tmp_path / "base"
    assert main(["train", *TINY, "train.steps=2", "--out", str(out), "--quiet"]) == 0
    with pytest.raises(RunDirError, match="no indicator"):
        probe_ddm(out, buckets=2, n=8)
