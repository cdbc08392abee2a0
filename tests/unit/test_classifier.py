"""Evaluation classifiers: accuracy on digits (fast), caching, held-out exclusion, wrappers, input checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fairdiff.config import DataConfig, EvalConfig
from fairdiff.errors import FairdiffError
from fairdiff.evaluation.judges import (
    Classifier,
    DomainClassifierConfig,
    domain_classifier,
    from_callable,
    load_classifier,
    torchscript_classifier,
)
from fairdiff.evaluation.judges.domain import _judge_split, classifier_key

MNIST = Path.home() / ".cache" / "fairdiff" / "mnist" / "mnist.pkl.gz"


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRDIFF_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


FAST = EvalConfig(classifier_steps=120)  # x5 for the ten classes the judge learns; seconds on one core


def _digits(groups, resolution=16):
    return DataConfig(source="digits", groups=groups, shares=[1 / len(groups)] * len(groups), resolution=resolution)


def test_digits_binary_accuracy_and_cache():
    d = _digits([0, 1])
    clf = domain_classifier(d, FAST)
    assert clf.accuracy >= 0.95
    assert clf.extra_classes == 8 and clf.info["other_classes"] == list(range(2, 10))
    assert clf.calibration["reference_features"].shape[1] == 128 and 0 < clf.calibration["confidence_threshold"] < 1
    assert clf.manifold_feats(np.zeros((3, 1, 16, 16), np.uint8)).shape == (3, 128)  # pooled conv features
    assert clf.info["heldout_n"] == 60 and clf.input_shape == (1, 16, 16)
    folder = Path(clf.info["cache"])
    assert (folder / "model" / "diffusion_pytorch_model.safetensors").exists() and (folder / "classifier.json").exists()
    assert (folder / "model" / "config.json").exists() and (folder / "calibration.safetensors").exists()
    again = domain_classifier(d, FAST)  # loaded from the cache: same weights, same numbers
    x = np.random.default_rng(0).integers(0, 256, (5, 1, 16, 16), dtype=np.uint8)
    np.testing.assert_allclose(clf(x), again(x), rtol=1e-5, atol=1e-5)
    assert again.accuracy == clf.accuracy
    logits, feats = clf.predict(x, batch_size=2)
    assert logits.shape == (5, 2) and feats.shape == (5, 64)
    assert clf.predict(x, all_classes=True)[0].shape == (5, 10)
    np.testing.assert_allclose(again.calibration["reference_features"], clf.calibration["reference_features"],
                               rtol=1e-5, atol=1e-5)
    # training shares do not change the classifier (the same judge for every run of a domain)
    d2 = _digits([0, 1])
    d2.shares = [0.8, 0.2]
    assert classifier_key(d, DomainClassifierConfig()) == classifier_key(d2, DomainClassifierConfig())
    d2.resolution = 8
    assert classifier_key(d, DomainClassifierConfig()) != classifier_key(d2, DomainClassifierConfig())


@pytest.mark.parametrize("pair", [[3, 8], [4, 9]])
def test_digits_harder_pair_accuracy(pair):
    clf = domain_classifier(_digits(pair), FAST)
    assert clf.accuracy >= 0.93  # open set: calling a held-out 3 any other digit counts as an error


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FAIRDIFF_SLOW"), reason="slow (~25 s); set FAIRDIFF_SLOW=1")
def test_digits_ten_class_accuracy():
    clf = domain_classifier(_digits(list(range(10))), EvalConfig())
    assert clf.num_classes == 10
    assert clf.accuracy >= 0.95


@pytest.mark.skipif(not MNIST.exists(), reason="MNIST not fetched (fairdiff data fetch mnist)")
def test_mnist_binary_accuracy():
    d = DataConfig(source="mnist", path=str(MNIST), groups=[0, 1], shares=[0.5, 0.5], resolution=16,
                   heldout_per_group=500)
    clf = domain_classifier(d, EvalConfig())
    assert clf.accuracy >= 0.97


def test_training_indices_exclude_heldout_and_are_balanced():
    attr = np.array([0] * 10 + [1] * 6 + [2] * 4)
    held = np.array([0, 1, 10])
    idx, lab, cal, cal_lab = _judge_split(attr, [0, 1, 2], held, None, 100, 0.25, np.random.default_rng(0))
    assert not set(held.tolist()) & set(idx.tolist()) and not set(held.tolist()) & set(cal.tolist())
    assert not set(idx.tolist()) & set(cal.tolist())  # calibration images are never trained on
    # per class: pools 8 / 5 / 4, calibration 2 / 1 / 1, training min(6, 4, 3) = 3 each
    assert np.bincount(lab).tolist() == [2, 2, 2] and np.bincount(cal_lab).tolist() == [2, 2, 2]
    assert set(attr[idx].tolist()) == {0, 1, 2}  # every class of the source, not only the groups
    assert (attr[cal] == np.array([0, 1, 2])[cal_lab]).all()
    is_test = np.zeros(20, bool)
    is_test[2:6] = True
    idx, _, cal, _ = _judge_split(attr, [0, 1, 2], held, is_test, 100, 0.25, np.random.default_rng(0))
    assert not set(range(2, 6)) & (set(idx.tolist()) | set(cal.tolist()))


def test_check_images_rejects_wrong_size():
    clf = from_callable(lambda x: np.zeros((len(x), 2)), "zeros", 2, accuracy=0.5, input_shape=(1, 16, 16))
    with pytest.raises(FairdiffError, match="takes images 1x16x16"):
        clf.check_images(np.zeros((3, 1, 28, 28), np.uint8))
    with pytest.raises(FairdiffError):
        clf.check_images(np.zeros((0, 1, 16, 16), np.uint8))
    logits, feats = clf.predict(np.zeros((3, 1, 16, 16), np.uint8))
    assert logits.shape == (3, 2) and feats is None


def test_from_callable_any_logits_function():
    def fn(x):
        return torch.stack([torch.zeros(len(x)), torch.from_numpy(x.reshape(len(x), -1).mean(1) / 255.0)], 1)

    clf = from_callable(fn, "bright", 2)
    assert isinstance(clf, Classifier)
    assert clf.predict(np.full((4, 1, 8, 8), 255, np.uint8))[0].argmax(1).tolist() == [1] * 4


def test_torchscript_classifier(tmp_path):
    class Tiny(torch.nn.Module):
        def forward(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.stack([-m, m], 1)

    path = tmp_path / "tiny.pt"
    torch.jit.script(Tiny()).save(str(path))
    clf = load_classifier(str(path), None)
    assert clf.num_classes == 2
    assert clf(np.full((2, 1, 8, 8), 255, np.uint8)).argmax(1).tolist() == [1, 1]
    with pytest.raises(FairdiffError):
        torchscript_classifier(tmp_path / "missing.pt")
    with pytest.raises(FairdiffError):
        load_classifier(str(tmp_path / "model.xyz"), None)


def test_onnx_bad_file_or_missing_runtime_is_a_clear_error(tmp_path):
    f = tmp_path / "gender-v1.onnx"
    f.write_bytes(b"not a model")
    # without onnxruntime: "install the faces extra"; with it: "cannot load ONNX model" (one line either way)
    with pytest.raises(FairdiffError, match="faces|cannot load ONNX"):
        load_classifier(str(f), None)
    with pytest.raises(FairdiffError, match="not found"):
        load_classifier(str(tmp_path / "missing.onnx"), None)


GENDER = os.environ.get("FAIRDIFF_GENDER_ONNX")


@pytest.mark.skipif(not GENDER, reason="set FAIRDIFF_GENDER_ONNX to a local gender-v1.onnx")
def test_gender_onnx_runs():
    pytest.importorskip("onnxruntime")
    clf = load_classifier(GENDER, None)
    assert clf.num_classes == 2 and clf.info["class_names"] == ["female", "male"]
    logits = clf(np.random.default_rng(0).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8))
    np.testing.assert_allclose(np.exp(logits).sum(1), 1.0, atol=1e-3)  # log-probabilities


@pytest.mark.parametrize("channels", [3, 1])
def test_torchscript_judge_with_fixed_channels_loads(tmp_path, channels):
    """A judge whose first layer is a convolution over RGB (or grayscale) images loads without being told its
    input shape (the probe once tried grayscale only and refused every RGB judge)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    path = tmp_path / "conv.pt"
    torch.jit.trace(net.eval(), torch.zeros(1, channels, 16, 16)).save(str(path))
    clf = load_classifier(str(path), None)
    assert clf.num_classes == 2
    assert clf(np.zeros((2, channels, 16, 16), np.uint8)).shape == (2, 2)
    bad = tmp_path / "bad.pt"
    torch.jit.trace(torch.nn.Sequential(torch.nn.Conv2d(5, 2, 3)).eval(), torch.zeros(1, 5, 8, 8)).save(str(bad))
    with pytest.raises(FairdiffError, match=r"failed on input \(1, 3, 16, 16\) or \(1, 1, 16, 16\)"):
        load_classifier(str(bad), None)
