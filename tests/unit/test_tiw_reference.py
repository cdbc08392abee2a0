"""Reference sets (data.reference / reference_dir / train_on) and that no group label reaches tiw / iw."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fairdiff.config import load_config
from fairdiff.data import prepare_data
from fairdiff.errors import ConfigError, DataError
from fairdiff.methods import DataInfo, build_objective
from fairdiff.models import build_noise_scheduler

BASE = ["data.source=synthetic", "data.resolution=16", "data.synthetic_size=300", "data.heldout_per_group=20",
        "data.size=100"]


def _cfg(*extra: str):
    return load_config(None, BASE + list(extra))


def test_reference_drawn_balanced_from_unused_images():
    d = prepare_data(_cfg("data.reference=0.2").data)
    assert d.reference_images.shape == (20, 1, 16, 16)
    assert d.reference_groups.tolist().count(0) == 10 and d.reference_groups.tolist().count(1) == 10
    info = d.manifest["reference"]
    assert info["counts"] == [10, 10] and info["count"] == 20
    used = set(d.split.train_indices.tolist()) | set(d.split.heldout_indices.tolist())
    assert not used & set(info["indices"])
    assert len(set(info["indices"])) == 20
    assert d.train_images.shape[0] == 100  # the training set is unchanged by drawing a reference


def test_reference_count_shares_and_seed():
    d = prepare_data(_cfg("data.reference=15", "data.reference_shares=[0.2,0.8]").data)
    assert d.manifest["reference"]["counts"] == [3, 12]
    again = prepare_data(_cfg("data.reference=15", "data.reference_shares=[0.2,0.8]").data)
    assert torch.equal(d.reference_images, again.reference_images)
    other = prepare_data(_cfg("data.reference=15", "data.reference_shares=[0.2,0.8]", "data.seed=1").data)
    assert d.manifest["reference"]["indices"] != other.manifest["reference"]["indices"]


@pytest.mark.parametrize("extra,msg", [
    (["data.reference=500"], "neither training nor held-out"),
    (["data.reference=0"], "at least 1"),
    (["data.reference=1.5"], "fraction"),
    (["data.reference=10", "data.reference_shares=[0.5,0.3]"], "sum to 1"),
    (["data.train_on=reference"], "needs a reference set"),
    (["data.reference_shares=[0.5,0.5]"], "data.reference is not"),
])
def test_reference_mistakes_are_one_line_errors(extra, msg):
    with pytest.raises(DataError, match=msg):
        prepare_data(_cfg(*extra).data)


def test_reference_dir_and_train_on_reference(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(tmp_path / f"r{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    d = prepare_data(_cfg(f"data.reference_dir={tmp_path}").data)
    assert d.reference_images.shape == (7, 1, 16, 16) and d.reference_groups is None
    assert d.reference_images.min() >= -1 and d.reference_images.max() <= 1
    with pytest.raises(DataError, match="set one of"):
        prepare_data(_cfg(f"data.reference_dir={tmp_path}", "data.reference=5").data)
    with pytest.raises(DataError, match="holds no images"):
        empty = tmp_path / "empty"
        empty.mkdir()
        prepare_data(_cfg(f"data.reference_dir={empty}").data)
    r = prepare_data(_cfg("data.reference=12", "data.train_on=reference").data)
    assert r.train_images.shape[0] == 12 and torch.equal(r.train_images, r.reference_images)
    assert r.manifest["train_counts"] == [6, 6] and r.manifest["train_counts_biased"] == [80, 20]


def test_train_on_both_joins_training_and_reference_with_their_groups(tmp_path):
    """data.train_on=both: the training set then the reference set, with both groups; a folder's groups come from
    its groups.csv, and without one (or with a wrong one) it is a one-line error."""
    from PIL import Image

    from fairdiff.methods.reweight import group_weights

    d = prepare_data(_cfg("data.reference=12", "data.train_on=both").data)
    plain = prepare_data(_cfg("data.reference=12").data)
    assert d.train_images.shape[0] == 112
    assert torch.equal(d.train_images[:100], plain.train_images)
    assert torch.equal(d.train_images[100:], plain.reference_images)
    assert d.train_groups.tolist() == plain.train_groups.tolist() + plain.reference_groups.tolist()
    assert d.manifest["train_counts"] == [86, 26] and d.manifest["train_counts_biased"] == [80, 20]
    # reweighting the joined set toward 50/50 gives each group half the weight
    w = group_weights(d.manifest["train_counts"], [0.5, 0.5])
    assert w[0] * 86 == pytest.approx(w[1] * 26)

    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / f"r{i}.png")
    with pytest.raises(DataError, match="groups.csv"):
        prepare_data(_cfg(f"data.reference_dir={tmp_path}", "data.train_on=both").data)
    (tmp_path / "groups.csv").write_text("file,group\nr0.png,1\nr1.png,0\nr2.png,1\nr3.png,1\nr4.png,0\n")
    f = prepare_data(_cfg(f"data.reference_dir={tmp_path}", "data.train_on=both").data)
    assert f.train_groups[100:].tolist() == [1, 0, 1, 1, 0] and f.reference_groups.tolist() == [1, 0, 1, 1, 0]
    assert f.manifest["reference"]["counts"] == [2, 3] and f.manifest["train_counts"] == [82, 23]
    for bad, msg in [("file,group\nr0.png,1\n", "not listed"), ("file,group\nr0.png,x\n", "integer group"),
                     ("file,group\n" + "".join(f"r{i}.png,2\n" for i in range(5)), "groups must lie in 0..1")]:
        (tmp_path / "groups.csv").write_text(bad)
        with pytest.raises(DataError, match=msg):
            prepare_data(_cfg(f"data.reference_dir={tmp_path}", "data.train_on=both").data)
    with pytest.raises(DataError, match="needs a reference set"):
        prepare_data(_cfg("data.train_on=both").data)


def test_method_without_reference_is_a_config_error(tmp_path):
    from fairdiff.training import train

    cfg = _cfg("method.name=tiw", "train.steps=1", "train.batch_size=4")
    with pytest.raises(ConfigError, match="needs a reference set"):
        train(cfg, tmp_path / "run", quiet=True)


@pytest.mark.parametrize("name", ["tiw", "iw"])
def test_no_group_label_reaches_the_method(name):
    """Fitting and loss are identical with the true groups, constant groups, or no groups at all."""
    from fairdiff.training.discriminator import fit_for_objective

    cfg = _cfg("data.reference=0.2", f"method.name={name}", "method.disc_steps=5", "method.disc_batch_size=8",
               "method.disc_width=8")
    data = prepare_data(cfg.data)
    sched = build_noise_scheduler(1000, "linear")
    blind = dataclasses.replace(data, train_groups=torch.zeros_like(data.train_groups),
                                reference_groups=None, heldout_groups=torch.zeros_like(data.heldout_groups))
    results = []
    for dd in (data, blind):
        obj = build_objective(cfg.method)
        torch.manual_seed(0)
        obj.setup(DataInfo(2, [80, 20], (1, 16, 16)))
        facts = fit_for_objective(obj, cfg, dd, dd.train_images, sched)
        results.append((obj, facts))
    (a, fa), (b, fb) = results
    sa, sb = a.discriminator.state_dict(), b.discriminator.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert fa["calibration"] == fb["calibration"]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, t, class_labels=None):
            return type("O", (), {"sample": self.c(x)})()

    net = Net()
    x = data.train_images[:8]
    losses = []
    for groups in (data.train_groups[:8], torch.zeros(8, dtype=torch.long), None):
        batch = {"pixel_values": x} if groups is None else {"pixel_values": x, "group": groups}
        out = a.loss(net, batch, sched, torch.Generator().manual_seed(3))
        losses.append(out.total.item())
    assert losses[0] == losses[1] == losses[2]
    assert np.isfinite(losses[0]) and losses[0] > 0
