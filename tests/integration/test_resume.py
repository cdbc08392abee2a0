"""Resume equivalence: N steps straight equal N/2 steps, stop, --resume latest, N/2 more (CPU, bitwise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fairdiff.config import load_config
from fairdiff.training import train


def _weights(run):
    return load_file(str(run / "model" / "unet" / "diffusion_pytorch_model.safetensors"))


def test_resume_gives_identical_weights(tmp_path, tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "train.steps=6", "train.checkpoint_every=100", "method.name=ddm",
                             "method.indicator_widths=[32]", "train.lr_schedule=cosine"])
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(cfg, straight, quiet=True)
    r = train(cfg, resumed, quiet=True, stop_after=3)
    assert r.steps == 3 and (resumed / "checkpoint-3").is_dir() and not (resumed / "model").exists()
    train(cfg, resumed, quiet=True, resume="latest")
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ia = load_file(str(straight / "model" / "indicator" / "model.safetensors"))
    ib = load_file(str(resumed / "model" / "indicator" / "model.safetensors"))
    assert all(torch.equal(ia[k], ib[k]) for k in ia)
    # the log has one row per logged step, no duplicates from the interrupted part
    steps = [line for line in (resumed / "stats.jsonl").read_text().splitlines()]
    assert len(steps) == 3


def test_clusters_mode_needs_no_labels(tmp_path, tiny_overrides):
    import json

    from fairdiff.data import prepare_data
    from fairdiff.data.clusters import cluster_agreement, cluster_groups

    cfg = load_config(None, [*tiny_overrides, "train.steps=2", "method.name=ddm", "method.labels=clusters",
                             "method.num_clusters=3", "method.indicator_widths=[16]"])
    train(cfg, tmp_path / "cl", quiet=True)
    m = json.loads((tmp_path / "cl" / "manifest.json").read_text())
    assert m["clusters"]["k"] == 3 and sum(m["clusters"]["counts"]) == sum(m["train_counts"])
    # the manifest describes the clusters of the run's own training images, recomputed here independently
    data = prepare_data(cfg.data)
    clusters = cluster_groups(data.train_images, 3, seed=cfg.train.seed)
    assert m["clusters"]["counts"] == np.bincount(clusters, minlength=3).tolist()
    assert min(m["clusters"]["counts"]) > 0
    assert m["clusters"]["nmi_with_attribute"] == pytest.approx(
        cluster_agreement(clusters, data.train_groups.numpy()), abs=1e-12)
    ind = json.loads((tmp_path / "cl" / "model" / "indicator" / "config.json").read_text())
    assert ind["num_classes"] == 3


def test_clusters_mode_recovers_separable_groups(tmp_path, tiny_overrides):
    """On digits 0 vs 1 (separable in pixel space) the clusters the run trains against are the digits."""
    import json

    cfg = load_config(None, [*tiny_overrides, "data.source=digits", "data.groups=[0,1]", "data.shares=[0.5,0.5]",
                             "train.steps=2", "method.name=ddm", "method.labels=clusters", "method.num_clusters=2",
                             "method.indicator_widths=[16]"])
    train(cfg, tmp_path / "cl", quiet=True)
    m = json.loads((tmp_path / "cl" / "manifest.json").read_text())
    assert m["clusters"]["k"] == 2
    assert m["clusters"]["nmi_with_attribute"] > 0.85  # measured 0.945 (316 training digits)


def test_clusters_mode_spectral_follows_an_unequal_split(tmp_path, tiny_overrides):
    """method.clustering=spectral: on digits 0 vs 1 at 4:1 the spectral clusters are the digits (NMI 1.0 measured;
    k-means 0.945), the manifest names the clustering and its counts are the independent clustering's."""
    import json

    from fairdiff.data import prepare_data
    from fairdiff.data.clusters import cluster_agreement, cluster_groups

    cfg = load_config(None, [*tiny_overrides, "data.source=digits", "data.groups=[0,1]", "data.shares=[0.8,0.2]",
                             "train.steps=2", "method.name=reweight", "method.labels=clusters",
                             "method.clustering=spectral"])
    train(cfg, tmp_path / "sp", quiet=True)
    m = json.loads((tmp_path / "sp" / "manifest.json").read_text())["clusters"]
    data = prepare_data(cfg.data)
    spectral = cluster_groups(data.train_images, 2, seed=cfg.train.seed, method="spectral")
    kmeans = cluster_groups(data.train_images, 2, seed=cfg.train.seed)
    assert m["method"] == "spectral" and m["counts"] == np.bincount(spectral, minlength=2).tolist()
    assert m["nmi_with_attribute"] > 0.99
    assert m["nmi_with_attribute"] > cluster_agreement(kmeans, data.train_groups.numpy())
    with pytest.raises(Exception, match="clustering"):
        load_config(None, [*tiny_overrides, "method.clustering=dbscan"])


def test_reweight_resample_draws_batches_at_the_target_and_resumes(tmp_path, tiny_overrides, monkeypatch):
    """``method.balance=resample``: the trainer draws each batch with the objective's probabilities (a 4:1
    training set gives batches near 50/50 at a uniform target, where weighting keeps them near 4:1), and a
    stopped run resumed gives the same weights as one run straight through."""
    from fairdiff.methods.reweight import ReweightObjective

    seen: list[torch.Tensor] = []
    plain_loss = ReweightObjective.loss

    def spy(self, unet, batch, noise_scheduler, generator):
        seen.append(batch["group"].clone())
        return plain_loss(self, unet, batch, noise_scheduler, generator)

    monkeypatch.setattr(ReweightObjective, "loss", spy)
    common = [*tiny_overrides, "data.shares=[0.8,0.2]", "train.steps=6", "train.batch_size=32",
              "train.checkpoint_every=100", "method.name=reweight"]
    train(load_config(None, [*common, "method.balance=resample"]), tmp_path / "rs", quiet=True)
    drawn = torch.cat(seen).float().mean().item()
    seen.clear()
    train(load_config(None, common), tmp_path / "rw", quiet=True)
    epochs = torch.cat(seen).float().mean().item()
    # 192 draws each: resampled minority share 0.5 (sd 0.036), epochs' share 0.2 (at most one epoch boundary)
    assert abs(drawn - 0.5) < 0.15 and abs(epochs - 0.2) < 0.08, (drawn, epochs)
    cfg = load_config(None, [*common, "method.balance=resample"])
    r = train(cfg, tmp_path / "rs2", quiet=True, stop_after=3)
    assert r.steps == 3
    train(cfg, tmp_path / "rs2", quiet=True, resume="latest")
    a, b = _weights(tmp_path / "rs"), _weights(tmp_path / "rs2")
    assert all(torch.equal(a[k], b[k]) for k in a)
