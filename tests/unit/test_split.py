import numpy as np
import pytest

from fairdiff.config import load_config
from fairdiff.data import build_split, prepare_data
from fairdiff.data.sources import ImageSet, make_synthetic, read_mnist_pickle
from fairdiff.errors import DataError


def _set(counts):
    labels = np.concatenate([np.full(c, g) for g, c in enumerate(counts)])
    imgs = np.zeros((len(labels), 1, 8, 8), np.uint8)
    return ImageSet("toy", imgs, {"label": labels})


def test_biased_counts_exact_and_deterministic():
    s = _set([200, 200, 50])
    a = build_split(s, "label", [0, 1], [0.8, 0.2], seed=3, heldout_per_group=20)
    assert a.counts() == [180, 45]  # 180 left of group 0 after 20 held out; 180 / 0.8 = 225 -> 180 + 45
    b = build_split(s, "label", [0, 1], [0.8, 0.2], seed=3, heldout_per_group=20)
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    c = build_split(s, "label", [0, 1], [0.8, 0.2], seed=4, heldout_per_group=20)
    assert not np.array_equal(a.train_indices, c.train_indices)
    # held-out images are balanced and never used for training
    assert np.bincount(a.heldout_groups).tolist() == [20, 20]
    assert not set(a.train_indices) & set(a.heldout_indices)
    # group indices match the attribute
    labels = s.attributes["label"]
    assert (labels[a.train_indices] == np.asarray([0, 1])[a.train_groups]).all()


def test_size_and_reversed_shares():
    s = _set([200, 200])
    a = build_split(s, "label", [0, 1], [0.2, 0.8], seed=0, size=100, heldout_per_group=10)
    assert a.counts() == [20, 80]
    with pytest.raises(DataError, match="only"):
        build_split(s, "label", [0, 1], [0.5, 0.5], seed=0, size=1000, heldout_per_group=10)


def test_zero_image_group_and_missing_attribute():
    s = _set([50, 50])
    with pytest.raises(DataError, match="zero images"):
        build_split(s, "label", [0, 7], [0.5, 0.5], seed=0)
    with pytest.raises(DataError, match="attribute"):
        build_split(s, "label_x", [0, 1], [0.5, 0.5], seed=0)


def test_manifest_and_prepare_digits():
    cfg = load_config(None, ["data.resolution=16"])
    d = prepare_data(cfg.data)
    m = d.manifest
    assert m["train_counts"][0] == 4 * m["train_counts"][1]
    assert d.train_images.shape[1:] == (1, 16, 16)
    assert float(d.train_images.min()) >= -1 and float(d.train_images.max()) <= 1
    assert len(m["train_indices"]) == sum(m["train_counts"])


def test_synthetic_attribute_is_drawn():
    s = make_synthetic(40, 3, size=16, seed=1)
    assert s.images.shape == (40, 1, 16, 16)
    assert set(np.unique(s.attributes["label"])) <= {0, 1, 2}
    assert s.images.max() > 0


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    import gzip
    import pickle

    p = tmp_path / "evil.pkl.gz"
    with gzip.open(p, "wb") as f:
        pickle.dump(((np.zeros((1, 784), np.float32), np.zeros(1, np.int64)), print), f)
    with pytest.raises(DataError, match="refusing"):
        read_mnist_pickle(p)


def test_mnist_pickle_roundtrip(tmp_path):
    import gzip
    import pickle

    rng = np.random.default_rng(0)
    parts = tuple((rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)) for n in (30, 10, 10))
    p = tmp_path / "mnist.pkl.gz"
    with gzip.open(p, "wb") as f:
        pickle.dump(parts, f)
    s = read_mnist_pickle(p)
    assert s.images.shape == (50, 1, 28, 28) and s.is_test.sum() == 10
