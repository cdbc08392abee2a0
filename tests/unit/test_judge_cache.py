"""The domain judge's cache folder: a diffusers model folder beside its calibration, loaded bit-identically, and
rebuilt over a folder of an older layout."""

from __future__ import annotations

import numpy as np
import pytest

from fairdiff.config import DataConfig
from fairdiff.evaluation.judges.domain import DomainClassifierConfig, classifier_key, domain_classifier

SMALL = DomainClassifierConfig(steps=20, batch_size=32, max_per_group=60)  # seconds: the cache is under test


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRDIFF_CACHE", str(tmp_path))
    return tmp_path


def _data() -> DataConfig:
    return DataConfig(source="digits", groups=[0, 1], shares=[0.5, 0.5], resolution=8)


def test_cached_judge_loads_identically(cache):
    d = _data()
    first = domain_classifier(d, clf_cfg=SMALL)
    folder = cache / "classifiers" / classifier_key(d, SMALL)
    assert first.info["cache"] == str(folder)
    assert (folder / "model" / "config.json").exists()
    assert (folder / "model" / "diffusion_pytorch_model.safetensors").exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    again = domain_classifier(d, clf_cfg=SMALL)
    x = np.random.default_rng(0).integers(0, 256, (7, 1, 8, 8), dtype=np.uint8)
    (la, fa), (lb, fb) = first.forward(x), again.forward(x)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(first.manifold_feats(x), again.manifold_feats(x))
    assert again.calibration["confidence_threshold"] == first.calibration["confidence_threshold"]


def test_older_layout_is_rebuilt(cache):
    d = _data()
    folder = cache / "classifiers" / classifier_key(d, SMALL)
    folder.mkdir(parents=True)
    (folder / "classifier.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"old layout")
    clf = domain_classifier(d, clf_cfg=SMALL)
    assert not (folder / "model.safetensors").exists()
    assert (folder / "model" / "diffusion_pytorch_model.safetensors").exists()
    again = domain_classifier(d, clf_cfg=SMALL)  # now read from the rebuilt folder
    x = np.random.default_rng(1).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(clf(x), again(x))
    assert again.accuracy == clf.accuracy
