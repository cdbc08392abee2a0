"""What a prompt audit starts from: the prompts, images made elsewhere, the judge, the settings of an existing
output folder (see :mod:`fairdiff.evaluation.audit`)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from fairdiff.errors import FairdiffError
from fairdiff.utils.outputs import OutputDirError, check_output_dir, write_marker

AUDIT_KIND = "audit"
SETTINGS_FILE = "audit_settings.json"
PROMPTS_DIR = "prompts"
PROMPT_MAP = "prompts.json"  # images mode: {"subfolder": "prompt text"}; a subfolder not named there is its prompt


def read_prompts(prompts_file: str | Path | None = None, prompts: list[str] | None = None) -> list[str]:
    """The prompts of a file (one a line; blank lines and lines starting with ``#`` skipped) and/or a list."""
    out = [p.strip() for p in (prompts or [])]
    if prompts_file is not None:
        f = Path(prompts_file)
        if not f.is_file():
            raise FairdiffError(f"--prompts {f}: no such file (one prompt per line)")
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise FairdiffError(f"--prompts {f}: not a UTF-8 text file (one prompt per line)") from None
        out += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not out:
            raise FairdiffError(f"--prompts {f}: no prompts in the file (one prompt per line)")
    if not out:
        raise FairdiffError("no prompts: give --prompts FILE or --prompt TEXT")
    if any(not p for p in out):
        raise FairdiffError("--prompt: an empty prompt")
    seen = set()
    for p in out:
        if p in seen:
            raise FairdiffError(f"prompt '{p}' is given twice")
        seen.add(p)
    return out


def prompt_slug(prompt: str) -> str:
    """A stable folder name for a prompt: its words (at most 40 characters) and 8 hex digits of its hash."""
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].strip("-") or "prompt"
    return f"{words}-{hashlib.sha1(prompt.encode('utf-8')).hexdigest()[:8]}"


def image_groups(images_dir: str | Path) -> list[tuple[str, Path]]:
    """Images mode: ``(prompt, subfolder)`` for each subfolder of ``images_dir`` (sorted by name). The prompt is
    the subfolder's name, or its entry in ``images_dir/prompts.json`` (``{"subfolder": "prompt text"}``)."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FairdiffError(f"--images {root}: no such folder (one subfolder of images per prompt)")
    names: dict = {}
    if (root / PROMPT_MAP).is_file():
        try:
            names = json.loads((root / PROMPT_MAP).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise FairdiffError(f"--images: {root / PROMPT_MAP} is not valid JSON") from None
        if not isinstance(names, dict) or not all(isinstance(v, str) and v.strip() for v in names.values()):
            raise FairdiffError(f"--images: {root / PROMPT_MAP} must map subfolder names to prompt texts")
        missing = [k for k in names if not (root / k).is_dir()]
        if missing:
            raise FairdiffError(f"--images: {PROMPT_MAP} names '{missing[0]}', which is no subfolder of {root}")
    subs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subs:
        raise FairdiffError(f"--images {root}: no subfolders (put the images of each prompt in one subfolder)")
    from fairdiff.data.sources import IMAGE_EXTS

    for d in subs:
        if not (d / "samples.npz").is_file() and not any(f.suffix.lower() in IMAGE_EXTS for f in d.iterdir()):
            raise FairdiffError(f"--images: subfolder {d} holds no images (.png, .jpg, ... or samples.npz)")
    groups = [(str(names.get(d.name, d.name)).strip(), d) for d in subs]
    texts = [g[0] for g in groups]
    dup = next((t for t in texts if texts.count(t) > 1), None)
    if dup is not None:
        raise FairdiffError(f"--images: two subfolders have the prompt '{dup}'")
    return groups


@dataclass
class AuditJudge:
    """The judge of an audit and what it is calibrated with (``reference``: real images with known groups)."""

    classifier: object
    eval_cfg: object
    data_cfg: object | None = None
    reference: np.ndarray | None = None
    reference_groups: np.ndarray | None = None
    second: object | None = None
    settings: dict = field(default_factory=dict)


def make_judge(spec, data_cfg=None, eval_cfg=None, *, target=None, bootstrap: int | None = None,
               progress: bool = False) -> AuditJudge:
    """Load the judge: ``auto`` (the domain CNN of ``data_cfg``, which is then required), an ``.onnx`` or
    TorchScript file, or a :class:`~fairdiff.evaluation.judges.Classifier`. With ``data_cfg`` its held-out real
    images calibrate the judge (valid rate) and give the corrected shares."""
    from dataclasses import asdict

    from fairdiff.config import EvalConfig
    from fairdiff.evaluation.evaluate import check_target, eval_cfg_with
    from fairdiff.evaluation.judges import Classifier, load_classifier, second_judge

    ec = eval_cfg_with(eval_cfg if eval_cfg is not None else EvalConfig(), target, bootstrap, None)
    spec = ec.classifier if spec is None else spec
    if isinstance(spec, Classifier):
        judge_id = {"name": spec.name, "num_classes": spec.num_classes}
    elif spec in ("auto", None):
        if data_cfg is None:
            raise FairdiffError("--judge auto is trained on a data source: pass --config with its data section "
                                "(or give an .onnx / TorchScript .pt judge)")
        judge_id = "auto"
    else:
        p = Path(spec)
        if not p.is_file():
            raise FairdiffError(f"--judge {spec}: no such file (use 'auto', an .onnx or a TorchScript .pt file)")
        judge_id = {"path": str(p.resolve()), "bytes": p.stat().st_size}
    clf = load_classifier(spec, data_cfg, ec, progress=progress)
    check_target(ec.target, clf.num_classes)
    judge = AuditJudge(clf, ec, data_cfg)
    if data_cfg is not None:
        from fairdiff.evaluation.samples import reference_uint8

        judge.reference, judge.reference_groups = reference_uint8(data_cfg)
        if spec in ("auto", None):
            judge.second = second_judge(data_cfg)
    judge.settings = {"judge": judge_id, "target": ec.target, "bootstrap": ec.bootstrap, "confidence": ec.confidence,
                      "eval_seed": ec.seed, "data": None if data_cfg is None else asdict(data_cfg)}
    return judge


def judge_prompt(judge: AuditJudge, images: np.ndarray, extra: dict) -> dict:
    """The evaluator's metrics of one prompt's uint8 images (plus ``extra``), JSON-ready."""
    from fairdiff.evaluation.evaluate import METRICS_VERSION, _jsonable, evaluate_images

    ec, clf = judge.eval_cfg, judge.classifier
    clf.check_judge(images)
    ref, groups = judge.reference, judge.reference_groups
    if ref is not None and clf.input_shape[1] is not None and ref.shape[1:] != images.shape[1:]:
        ref = groups = None  # real images at another size cannot go through this judge
    m = evaluate_images(images, clf, reference_images=ref, target=ec.target, n_bootstrap=ec.bootstrap,
                        confidence=ec.confidence, seed=ec.seed, pr_k=ec.pr_k, batch_size=ec.batch_size,
                        reference_groups=groups, second_judge=judge.second)
    m["version"] = METRICS_VERSION
    if judge.data_cfg is not None:
        d = judge.data_cfg
        m["data"] = {"source": d.source, "attribute": d.attribute, "groups": list(d.groups),
                     "resolution": d.resolution, "heldout_per_group": d.heldout_per_group}
    return _jsonable({**m, **extra})


def sd_fingerprint(sd: Path) -> dict:
    """The SD folder as the settings record it: its path and the size of every weight/config file."""
    files = sorted(f for f in sd.rglob("*") if f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(sd).parts))  # no caches, markers
    return {"path": str(sd.resolve()), "files": {str(f.relative_to(sd)): f.stat().st_size for f in files}}


def check_settings(out: Path, settings: dict) -> None:
    """Refuse (one line) when ``out`` holds an audit made with other settings; otherwise record them."""
    from fairdiff.utils.io import read_json, write_json

    f = out / SETTINGS_FILE
    if f.is_file():
        try:
            old = read_json(f)
        except (OSError, ValueError):
            raise OutputDirError(f"{f} is unreadable; use a new --out") from None
        for key in sorted(set(old) | set(settings)):
            a, b = old.get(key), json.loads(json.dumps(settings.get(key)))
            if a != b:
                what = "the SD folder's files" if key == "sd" and isinstance(a, dict) and isinstance(b, dict) \
                    and a.get("path") == b.get("path") else key
                raise OutputDirError(f"{out} holds an audit made with other settings ({what}: {_short(a)} -> "
                                     f"{_short(b)}); its results are kept: use a new --out, or the same settings "
                                     f"to continue")
        return
    write_json(f, settings)


def _short(v) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 60 else text[:57] + "..."


def check_out(out: str | Path, inputs: list[Path]) -> Path:
    """Check the output folder before any work: new, empty or an audit folder; never an input, inside an input,
    the current folder or one of its parents."""
    out = Path(out)
    check_output_dir(out, AUDIT_KIND, reuse=True, inputs=inputs, whole=True)
    o = out.resolve()
    for inp in inputs:
        if Path(inp).resolve() in o.parents:
            raise OutputDirError(f"output folder {out} lies inside the input {inp}; choose a folder outside it")
    return out


def open_out(out: Path, settings: dict) -> None:
    """Create and mark the output folder, refusing one whose audit was made with other settings."""
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings)
    write_marker(out, AUDIT_KIND)
