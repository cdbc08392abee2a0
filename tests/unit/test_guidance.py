"""Distribution guidance: h-space hooks, per-step heads, exactness at scale 0, step indexing, and its effect."""

from __future__ import annotations

import pytest
import torch

from fairdiff.errors import FairdiffError
from fairdiff.methods.guidance import (
    DistributionGuidance,
    GuidanceHeads,
    HeadsConfig,
    distribution_loss,
    load_heads,
    parse_target,
    read_heads_record,
    save_heads,
    schedule_timesteps,
)
from fairdiff.models import build_noise_scheduler, build_sampling_scheduler
from fairdiff.models.hspace import capture_h, edit_h
from fairdiff.models.unet import build_unet
from fairdiff.sampling.sampler import sample
from fairdiff.training.heads import train_heads


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    unet = build_unet("tiny", 16, 1).eval()
    return unet, build_noise_scheduler().config


def _random_heads(unet, sched_cfg, num_steps: int, kind: str, attributes=None, seed: int = 0) -> GuidanceHeads:
    with capture_h(unet) as seen, torch.no_grad():
        unet(torch.zeros(1, 1, 16, 16), torch.tensor([10]))
    cfg = HeadsConfig(attributes=attributes or {"group": 2}, num_steps=num_steps, scheduler=kind,
                      timesteps=schedule_timesteps(kind, sched_cfg, num_steps), h_shape=list(seen[0].shape[1:]))
    heads = GuidanceHeads.from_spec(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bank in heads.banks.values():
            bank.weight.copy_(torch.randn(bank.weight.shape, generator=g) * 0.05)
    return heads.eval().requires_grad_(False)


def test_hooks_capture_and_edit_mid_block(tiny):
    unet, _ = tiny
    x, t = torch.randn(3, 1, 16, 16), torch.full((3,), 500)
    with torch.no_grad():
        base = unet(x, t).sample
        with capture_h(unet) as seen:
            unet(x, t)
        assert len(seen) == 1 and seen[0].shape == (3, 64, 4, 4)
        with edit_h(lambda h: h, unet):
            same = unet(x, t).sample
        with edit_h(lambda h: h + 5.0):  # no U-Net given: the global hook finds the middle block
            moved = unet(x, t).sample
        after = unet(x, t).sample
    assert torch.equal(base, same) and torch.equal(base, after)  # identity edit is exact; hooks are removed
    assert not torch.allclose(base, moved)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_scale_zero_is_exactly_unguided(tiny, kind):
    unet, sc = tiny
    heads = _random_heads(unet, sc, 4, kind)
    seeds = [3, 1, 4, 1, 5]
    plain = sample(unet, build_sampling_scheduler(kind, sc), seeds, batch_size=5, num_steps=4, progress=False)
    g = DistributionGuidance(heads, [0.5, 0.5], 0.0, unet=unet)
    guided = sample(unet, build_sampling_scheduler(kind, sc), seeds, batch_size=5, num_steps=4, guidance=g,
                    progress=False)
    assert torch.equal(plain, guided)
    g = DistributionGuidance(heads, [0.5, 0.5], 50.0, unet=unet)
    moved = sample(unet, build_sampling_scheduler(kind, sc), seeds, batch_size=5, num_steps=4, guidance=g,
                   progress=False)
    assert not torch.equal(plain, moved)


@pytest.mark.parametrize("kind,steps", [("ddim", 3), ("ddim", 7), ("ddpm", 4), ("ddpm", 9)])
def test_step_indexing_by_position(tiny, kind, steps):
    unet, sc = tiny
    heads = _random_heads(unet, sc, steps, kind)
    assert heads.banks["group"].weight.shape[0] == steps == heads.num_steps
    g = DistributionGuidance(heads, [0.5, 0.5], 1.0, unet=unet)
    sample(unet, build_sampling_scheduler(kind, sc), [0, 1], batch_size=2, num_steps=steps, guidance=g,
           progress=False)
    assert [r["step"] for r in g.history] == list(range(1, steps))  # every step but the first, by position
    # heads made for another schedule refuse to guide instead of using the wrong head
    other = "ddpm" if kind == "ddim" else "ddim"
    for k, n in ((kind, steps + 1), (other, 50)):
        g = DistributionGuidance(heads, [0.5, 0.5], 1.0, unet=unet)
        with pytest.raises(FairdiffError):
            sample(unet, build_sampling_scheduler(k, sc), [0], batch_size=1, num_steps=n, guidance=g,
                   progress=False)


def test_gradient_step_does_not_depend_on_batch_size(tiny):
    unet, sc = tiny
    heads = _random_heads(unet, sc, 5, "ddim")
    h = torch.randn(4, 64, 4, 4)
    g = DistributionGuidance(heads, [0.75, 0.25], 10.0)
    one = g._edit(h, 2) - h
    two = g._edit(torch.cat([h, h]), 2) - torch.cat([h, h])  # same images twice: same batch share
    assert torch.allclose(torch.cat([one, one]), two, atol=1e-5)
    # under classifier-free guidance only the conditional branch (the last rows) is read and edited
    h_uncond = torch.randn(4, 64, 4, 4)
    both = g._edit(torch.cat([h_uncond, h]), 2, rows=4)
    assert torch.equal(both[:4], h_uncond)
    assert torch.allclose(both[4:] - h, one, atol=1e-5)


def test_several_attributes_and_targets(tiny, tmp_path):
    unet, sc = tiny
    heads = _random_heads(unet, sc, 3, "ddim", attributes={"a": 2, "b": 3})
    path = save_heads(heads, tmp_path / "heads", {"note": 1})
    back = load_heads(path)
    assert back.spec == heads.spec
    assert torch.equal(back.banks["b"].weight, heads.banks["b"].weight)
    assert read_heads_record(path)["note"] == 1
    g = DistributionGuidance(back, {"a": [0.75, 0.25], "b": "0.2,0.3,0.5"}, 5.0)
    h = torch.randn(6, 64, 4, 4)
    assert not torch.equal(g._edit(h, 1), h)
    assert set(g.history[-1]["shares"]) == {"a", "b"}
    with pytest.raises(FairdiffError):
        DistributionGuidance(back, [0.5, 0.5], 1.0)  # several attributes need a target each
    with pytest.raises(FairdiffError):
        DistributionGuidance(back, {"c": [0.5, 0.5]}, 1.0)


def test_parse_target_and_losses():
    assert parse_target("0.75,0.25", 2) == [0.75, 0.25]
    for bad, k in (("0.5,0.6", 2), ("0.5,0.5", 3), ("1,0", 2), ("a,b", 2)):
        with pytest.raises(FairdiffError):
            parse_target(bad, k)
    p = torch.tensor([0.5, 0.5])
    assert distribution_loss(p, p).item() == 0 and distribution_loss(p, p, "kl").abs().item() < 1e-7
    assert distribution_loss(torch.tensor([0.8, 0.2]), p).item() == pytest.approx(0.36)


def test_train_heads_shapes_and_accuracy(tiny):
    unet, sc = tiny
    g = torch.Generator().manual_seed(0)
    # two trivially separable "groups": dark and bright images
    labels = torch.arange(40) % 2
    images = (labels.float() * 1.6 - 0.8).view(-1, 1, 1, 1) + 0.1 * torch.randn(40, 1, 16, 16, generator=g)
    # held-out: other images (own noise, group order reversed) that the heads never see while fitting
    held_labels = 1 - torch.arange(24) % 2
    held = (held_labels.float() * 1.6 - 0.8).view(-1, 1, 1, 1) + 0.1 * torch.randn(24, 1, 16, 16, generator=g)
    assert not any(torch.equal(a, b) for a in held for b in images)
    for mode in ("noise", "invert"):
        res = train_heads(unet, sc, images, labels, 4, "ddpm", heldout_images=held, heldout_labels=held_labels,
                          n_per_step=None, mode=mode, batch_size=16)
        assert res.heads.num_steps == 4 and res.heads.config.timesteps == schedule_timesteps("ddpm", sc, 4)
        acc = res.heldout_accuracy["group"]
        assert len(acc) == 4 and acc[-1] > 0.9  # the least noisy step separates them


# ------------------------------------------------------------------------------------------ the effect
@pytest.fixture(scope="module")
def biased_run(tmp_path_factory):
    """A tiny model trained on 4:1 discs vs crosses (synthetic, 16x16, about a minute on one CPU thread)."""
    from fairdiff.config import load_config
    from fairdiff.data import prepare_data
    from fairdiff.training import train

    cfg = load_config(None, [
        "data.source=synthetic", "data.synthetic_classes=3", "data.groups=[0,2]", "data.shares=[0.8,0.2]",
        "data.synthetic_size=900", "data.resolution=16", "model.preset=tiny", "train.steps=300",
        "train.batch_size=16", "train.lr=1e-3", "train.warmup_steps=20", "train.ema=false",
        "train.checkpoint_every=100000",
    ])
    run = tmp_path_factory.mktemp("guidance") / "run"
    train(cfg, run, quiet=True)
    return run, prepare_data(cfg.data)


def _shape_classifier(data) -> torch.nn.Module:
    """A small CNN fitted on real (balanced, freshly drawn) discs and crosses: the judge of generated shares."""
    from fairdiff.data.sources import make_synthetic

    syn = make_synthetic(3000, 3, 16, 1, seed=123)
    keep = torch.from_numpy(syn.attributes["label"] != 1)
    x = torch.from_numpy(syn.images).float()[keep] / 127.5 - 1
    y = (torch.from_numpy(syn.attributes["label"])[keep] == 2).long()
    torch.manual_seed(0)
    nn = torch.nn
    clf = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 2))
    opt = torch.optim.Adam(clf.parameters(), 3e-3)
    for _ in range(3):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            j = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(clf(x[j]), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    clf.eval()
    with torch.no_grad():
        acc = (clf(data.heldout_images).argmax(1) == data.heldout_groups).float().mean().item()
    assert acc > 0.95, f"shape classifier too weak ({acc:.2f}) to judge the test"
    return clf


def test_guidance_moves_shares_toward_target(biased_run):
    from fairdiff.metrics import fairness_discrepancy, group_histogram
    from fairdiff.runs import load_run_model

    run, data = biased_run
    unet, sc = load_run_model(run)
    res = train_heads(unet, sc, data.train_images, data.train_groups, 10, "ddim", heldout_images=data.heldout_images,
                      heldout_labels=data.heldout_groups, n_per_step=256)
    assert min(res.heldout_accuracy["group"]) > 0.8
    clf = _shape_classifier(data)
    seeds = list(range(128))
    shares = {}
    for scale in (0.0, 3000.0):
        g = DistributionGuidance(res.heads, [0.5, 0.5], scale, unet=unet)
        x = sample(unet, build_sampling_scheduler("ddim", sc), seeds, batch_size=64, num_steps=10, guidance=g,
                   progress=False)
        with torch.no_grad():
            shares[scale] = group_histogram(clf(x).argmax(1).numpy(), 2)
    fd_plain, fd_guided = fairness_discrepancy(shares[0.0]), fairness_discrepancy(shares[3000.0])
    print(f"shares unguided {shares[0.0]}, guided {shares[3000.0]}; FD {fd_plain:.3f} -> {fd_guided:.3f}")
    assert shares[0.0][0] > 0.7  # the model learned the 4:1 bias
    assert fd_guided < fd_plain - 0.05, (shares, fd_plain, fd_guided)


def test_assigned_guidance_moves_each_image_toward_its_group(tiny):
    from fairdiff.methods.guidance import AssignedGuidance

    unet, sc = tiny
    heads = _random_heads(unet, sc, 5, "ddim")
    h = torch.randn(6, 64, 4, 4)
    assign = torch.tensor([0, 1, 0, 1, 1, 0])
    g = AssignedGuidance(heads, assign, 5.0)
    edited = g._edit(h, 2)
    before = torch.log_softmax(heads.logits(h, 2)["group"], 1)
    after = torch.log_softmax(heads.logits(edited, 2)["group"], 1)
    rows = torch.arange(6)
    assert (after[rows, assign] > before[rows, assign]).all()  # every image's own group gains
    # the edit of one image does not depend on the others (per-sample, not batch-level)
    alone = AssignedGuidance(heads, assign[:1], 5.0)._edit(h[:1], 2)
    assert torch.allclose(alone, edited[:1], atol=1e-5)
    # scale 0 is exactly unguided; wrong assignments are refused
    seeds = [1, 2, 3]
    plain = sample(unet, build_sampling_scheduler("ddim", sc), seeds, batch_size=3, num_steps=5, progress=False)
    zero = sample(unet, build_sampling_scheduler("ddim", sc), seeds, batch_size=3, num_steps=5, progress=False,
                  guidance=AssignedGuidance(heads, [0, 1, 0], 0.0, unet=unet))
    assert torch.equal(plain, zero)
    with pytest.raises(FairdiffError):
        AssignedGuidance(heads, [0, 2], 1.0)
