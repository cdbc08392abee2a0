"""Pretrained biased bases: trained once to a quality bar, cached by their recipe, shipped small, reused.

A *base* is an ordinary run folder (``config.yaml``, ``manifest.json``, ``model/``) plus ``base.json``: its recipe
(the resolved config's key, seed, steps, wall time, the data manifest's SHA-256) and the losses of its first
logged steps. ``make_base`` returns the cached folder for a config, installing a shipped base whose recipe key
matches, or training one (resumable) when none is shipped. Debiasing methods start from a base: training-time
methods fine-tune it (``model.pretrained``), sampling-time methods and ``fairdiff debias`` use it unchanged.

Shipped bases live in the package (``fairdiff/shipped_bases/<name>/``): the EMA U-Net in fp16 safetensors (a few
MB), its diffusers configs, the run's config and data manifest, and ``base.json`` with every file's SHA-256, the
recipe and the first losses. Installing one checks every hash and writes an fp32 diffusers model folder into the
cache, so the installed base is a normal run folder. ``verify_first_losses`` re-runs the recipe's first steps and
compares their losses with the shipped ones (what a test checks).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from importlib import resources
from pathlib import Path

from fairdiff.config import RunConfig, load_config, save_config
from fairdiff.errors import FairdiffError
from fairdiff.utils.atomic import atomic_dir
from fairdiff.utils.io import sha256_file, write_json

BASE_FILE = "base.json"
BASES_VERSION = 1
# train.* keys that do not change the trained weights (how often to log / checkpoint / preview)
_NOT_RECIPE = ("log_every", "sample_every", "checkpoint_every", "checkpoint_total_limit")
# options added after bases were shipped: left out of the recipe while at their default (which is what every
# earlier base was trained with), so that adding an option does not change every base's key
_ADDED_LATER = {("method", "clustering"): "kmeans", ("method", "balance"): "weights"}
FIRST_LOSSES = 4  # logged losses kept in base.json for the reproduction check


def shipped_root() -> Path:
    return Path(str(resources.files("fairdiff") / "shipped_bases"))


def recipe(cfg: RunConfig) -> dict:
    """What determines a base's weights: the data, model, method and training sections (not logging, sampling
    or evaluation settings, nor the run's name)."""
    from fairdiff.utils.typed_config import to_dict

    d = to_dict(cfg)
    train = {k: v for k, v in d["train"].items() if k not in _NOT_RECIPE}
    out = {"v": BASES_VERSION, "data": d["data"], "model": d["model"], "method": d["method"], "train": train}
    for (section, key), default in _ADDED_LATER.items():
        if out[section].get(key) == default:
            del out[section][key]
    if d["text"]["sd"]:  # a text-to-image base: its SD folder and prompts are part of the recipe
        out["text"] = d["text"]
    return out


def recipe_key(cfg: RunConfig) -> str:
    blob = json.dumps(recipe(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def base_folder(cfg: RunConfig) -> Path:
    from fairdiff.data import cache_dir

    return cache_dir() / "bases" / f"{cfg.name}-{recipe_key(cfg)}"


def _first_losses(stats: Path, k: int = FIRST_LOSSES) -> list[list[float]]:
    rows = []
    if stats.is_file():
        for line in stats.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "loss" in r and "step" in r:
                rows.append([int(r["step"]), float(r["loss"])])
            if len(rows) >= k:
                break
    return rows


def list_shipped() -> list[dict]:
    """``base.json`` of every shipped base (with its ``dir``)."""
    root = shipped_root()
    out = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if (p / BASE_FILE).is_file():
                out.append({**json.loads((p / BASE_FILE).read_text()), "dir": str(p)})
    return out


def find_shipped(key: str) -> Path | None:
    for b in list_shipped():
        if b.get("key") == key:
            return Path(b["dir"])
    return None


def install_shipped(src: str | Path, folder: str | Path) -> Path:
    """Check a shipped base's hashes and write it as an fp32 run folder at ``folder`` (atomically)."""
    import torch
    from safetensors.torch import load_file, save_file

    from fairdiff.utils.outputs import write_marker

    src, folder = Path(src), Path(folder)
    meta = json.loads((src / BASE_FILE).read_text())
    for rel, sha in meta["files"].items():
        p = src / rel
        if not p.is_file() or sha256_file(p) != sha:
            raise FairdiffError(f"shipped base {src.name}: {rel} is missing or damaged (SHA-256 mismatch)")
    if folder.exists():
        from fairdiff.utils.outputs import folder_kind

        if any(folder.iterdir()) and folder_kind(folder) != "run":
            raise FairdiffError(f"{folder} is not empty and not a fairdiff run folder; the base is not installed there")
    with atomic_dir(folder) as tmp:
        shutil.copytree(src / "model", tmp / "model", ignore=shutil.ignore_patterns("*.safetensors"))
        for w in (src / "model").rglob("*.safetensors"):
            rel = w.relative_to(src / "model")
            sd = {k: v.to(torch.float32) for k, v in load_file(str(w)).items()}
            (tmp / "model" / rel).parent.mkdir(parents=True, exist_ok=True)
            save_file(sd, str(tmp / "model" / rel))
        for f in ("config.yaml", "manifest.json"):
            shutil.copy2(src / f, tmp / f)
        write_json(tmp / BASE_FILE, {**meta, "installed_from": str(src),
                                     "weights": "fp16 shipped copy, loaded as fp32"})
        write_marker(tmp, "run")
    return folder


def make_base(config: str | Path | RunConfig | None, overrides: list[str] | None = None, *,
              out: str | Path | None = None, evaluate: bool = True, use_shipped: bool = True,
              quiet: bool = False) -> Path:
    """The base for ``config`` + ``overrides``: cached, else installed from a shipped base with the same recipe,
    else trained (resuming an interrupted training). Returns the run folder."""
    from fairdiff.training import train

    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    key = recipe_key(cfg)
    folder = Path(out) if out else base_folder(cfg)
    done = (folder / "model" / "unet").is_dir() and (folder / BASE_FILE).is_file()
    if not done:
        from fairdiff.utils.outputs import check_output_dir

        check_output_dir(folder, "run", reuse=True)  # new, empty, or fairdiff's own run (continued); else refused
        shipped = find_shipped(key) if use_shipped else None
        if shipped is not None and not (folder / "config.yaml").exists():
            if not quiet:
                print(f"base {cfg.name}: installing the shipped base {shipped.name} (recipe {key})", flush=True)
            install_shipped(shipped, folder)
        else:
            resume = "latest" if (folder / "config.yaml").exists() else None
            t0 = time.time()
            train(cfg, folder, resume=resume, quiet=quiet)
            write_json(folder / BASE_FILE, base_record(folder, cfg, time.time() - t0))
    if evaluate and not (folder / "metrics.json").exists():
        from fairdiff.evaluation import evaluate_run

        evaluate_run(folder, progress=not quiet)
    return folder


def base_record(run_dir: Path, cfg: RunConfig, seconds: float | None = None) -> dict:
    """``base.json`` of a trained run: recipe key, seed, steps, wall time, data manifest hash, first losses."""
    from fairdiff.runs import logged_training_seconds

    wall = logged_training_seconds(run_dir / "stats.jsonl")
    return {
        "name": cfg.name, "key": recipe_key(cfg), "recipe": recipe(cfg), "seed": cfg.train.seed,
        "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
        "train_seconds": round(wall if math.isfinite(wall) else (seconds or math.nan), 1),
        "manifest_sha256": sha256_file(run_dir / "manifest.json") if (run_dir / "manifest.json").is_file() else None,
        "first_losses": _first_losses(run_dir / "stats.jsonl"),
        "log_every": cfg.train.log_every,
    }


def truncate_run(run_dir: str | Path, step: int, out: str | Path) -> Path:
    """The run ``run_dir`` as if it had been trained for ``step`` steps: the EMA weights of its checkpoint at that
    step, its config with ``train.steps = step``, its log up to that step and its ``base.json``. Exact only where
    the learning-rate schedule does not depend on the total steps (constant, constant with warm-up)."""
    import dataclasses

    from fairdiff.runs import read_run_config

    run_dir, out = Path(run_dir), Path(out)
    cfg = read_run_config(run_dir)
    if cfg.train.lr_schedule not in ("constant", "constant_with_warmup"):
        raise FairdiffError(f"train.lr_schedule={cfg.train.lr_schedule} depends on the total steps: a checkpoint "
                            f"at step {step} is not what a {step}-step recipe trains")
    checkpoint_model(run_dir, step, out)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=step))
    save_config(cfg, out / "config.yaml")
    lines = [ln for ln in (run_dir / "stats.jsonl").read_text().splitlines()
             if ln.strip() and json.loads(ln).get("step", 0) <= step]
    (out / "stats.jsonl").write_text("\n".join(lines) + "\n")
    write_json(out / BASE_FILE, {**base_record(out, cfg), "truncated_from": {"run": str(run_dir),
                                                                            "steps": int(read_run_config(
                                                                                run_dir).train.steps)}})
    return out


def ship_base(run_dir: str | Path, name: str, dest: str | Path | None = None) -> Path:
    """Write the trained run ``run_dir`` as a shipped base ``name`` (fp16 weights, hashes, recipe)."""
    import torch
    from safetensors.torch import load_file, save_file

    from fairdiff.runs import read_run_config

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if not (run_dir / "model" / "unet").is_dir():
        raise FairdiffError(f"{run_dir} holds no trained model to ship")
    dest = Path(dest) if dest else shipped_root() / name
    with atomic_dir(dest) as tmp:
        shutil.copytree(run_dir / "model", tmp / "model",
                        ignore=shutil.ignore_patterns("*.safetensors", ".fairdiff.json"))
        for w in (run_dir / "model").rglob("*.safetensors"):
            rel = w.relative_to(run_dir / "model")
            sd = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(w)).items()}
            save_file(sd, str(tmp / "model" / rel))
        save_config(cfg, tmp / "config.yaml")
        shutil.copy2(run_dir / "manifest.json", tmp / "manifest.json")
        rec = json.loads((run_dir / BASE_FILE).read_text()) if (run_dir / BASE_FILE).is_file() else base_record(
            run_dir, cfg)
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json(tmp / BASE_FILE, {**rec, "name": name, "files": files})
    return dest


HEADLINE_KEYS = ("n", "valid_rate", "valid_shares", "fd_strict", "fd_strict_ci", "domain_fid", "precision", "recall")


def headline(m: dict) -> dict:
    """The numbers of a base kept in its ``base.json`` (from an evaluation's metrics)."""
    j2 = m.get("judge2") or {}
    return {**{k: m.get(k) for k in HEADLINE_KEYS}, "valid_rate_j2": j2.get("valid_rate"),
            "fd_strict_j2": j2.get("fd_strict"), "copy_rate": (m.get("copying") or {}).get("copy_rate"),
            "judge": (m.get("classifier") or {}).get("name")}


def evaluate_shipped(shipped: str | Path, work: str | Path, quiet: bool = True) -> dict:
    """Install the shipped base into ``work``, evaluate it (test judge, second judge) and record the headline in
    its ``base.json`` (the numbers are those of the fp16 weights as a user gets them)."""
    from fairdiff.evaluation import evaluate_run

    shipped = Path(shipped)
    folder = install_shipped(shipped, Path(work) / shipped.name)
    m = evaluate_run(folder, progress=not quiet)
    meta = json.loads((shipped / BASE_FILE).read_text())
    meta["metrics"] = headline(m)
    write_json(shipped / BASE_FILE, meta)
    return meta["metrics"]


def verify_first_losses(shipped: str | Path, work: str | Path, *, points: int = 2, rtol: float = 1e-3,
                        overrides: list[str] | None = None) -> list:
    """Re-run a shipped base's recipe for its first ``points`` logged steps into ``work``; returns
    ``[(step, shipped loss, new loss)]`` and raises when any pair differs by more than ``rtol`` (relative).
    ``overrides`` may say where the data is (``data.path=...``); they must not change the recipe otherwise."""
    from fairdiff.training import train

    shipped = Path(shipped)
    meta = json.loads((shipped / BASE_FILE).read_text())
    want = meta["first_losses"][:points]
    if not want:
        raise FairdiffError(f"shipped base {shipped.name} records no first losses")
    cfg = load_config(shipped / "config.yaml", [f"train.steps={want[-1][0]}", "train.checkpoint_every=0",
                                                 f"train.log_every={meta['log_every']}", *(overrides or [])])
    train(cfg, Path(work), quiet=True)
    got = dict((s, loss) for s, loss in _first_losses(Path(work) / "stats.jsonl", len(want)))
    out = [(s, loss, got.get(s, math.nan)) for s, loss in want]
    bad = [(s, a, b) for s, a, b in out if not abs(a - b) <= rtol * abs(a)]
    if bad:
        raise FairdiffError(f"shipped base {shipped.name}: first losses differ from the recipe's re-run: {bad}")
    return out


def checkpoint_model(run_dir: str | Path, step: int, out: str | Path) -> Path:
    """The EMA weights of ``run_dir/checkpoint-<step>`` as a run folder at ``out`` (for a learning curve)."""
    from safetensors.torch import load_file

    from fairdiff.models import build_noise_scheduler, build_unet
    from fairdiff.runs import read_run_config, write_model_folder

    run_dir, out = Path(run_dir), Path(out)
    cfg = read_run_config(run_dir)
    ck = run_dir / f"checkpoint-{step}"
    if not (ck / "ema.safetensors").is_file():
        raise FairdiffError(f"{ck} holds no EMA weights")
    shadow = load_file(str(ck / "ema.safetensors"))
    channels = int(shadow["0"].shape[1])  # the first parameter is conv_in's weight [out, in, 3, 3]
    unet = build_unet(cfg.model.preset, cfg.data.resolution, channels)
    params = list(unet.parameters())
    if len(shadow) != len(params):
        raise FairdiffError(f"{ck}: {len(shadow)} EMA tensors for {len(params)} U-Net parameters")
    for i, p in enumerate(params):
        p.data.copy_(shadow[str(i)])
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    shutil.copy2(run_dir / "manifest.json", out / "manifest.json")
    sched = build_noise_scheduler(cfg.model.num_train_timesteps, cfg.model.beta_schedule, clip_sample=True)
    write_model_folder(out / "model", unet, sched)
    return out


def learning_curve(run_dir: str | Path, out: str | Path, *, n: int | None = None, quiet: bool = False) -> list[dict]:
    """Evaluate the EMA weights of every checkpoint of ``run_dir`` (and its final model): one row per step with
    valid rate, shares, strict FD, domain FID, precision and recall; writes ``curve.csv`` / ``curve.json`` /
    ``curve.png`` into ``out``."""
    from fairdiff.bench.matrix import write_csv
    from fairdiff.evaluation import evaluate_run
    from fairdiff.runs import read_run_config
    from fairdiff.training.checkpoint import list_checkpoints

    run_dir, out = Path(run_dir), Path(out)
    cfg = read_run_config(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for step, _ in list_checkpoints(run_dir):
        folder = out / f"step-{step}"
        if not (folder / "metrics.json").exists():
            checkpoint_model(run_dir, step, folder)
            evaluate_run(folder, n=n or cfg.eval.n_samples, progress=not quiet)
        m = json.loads((folder / "metrics.json").read_text())
        j2 = m.get("judge2") or {}
        rows.append({"step": step, "valid_rate": m.get("valid_rate"), "share_0": (m.get("valid_shares") or [None])[0],
                     "fd_strict": m.get("fd_strict"), "domain_fid": m.get("domain_fid"),
                     "precision": m.get("precision"), "recall": m.get("recall"),
                     "valid_rate_j2": j2.get("valid_rate"), "n": m.get("n")})
        if not quiet:
            print(json.dumps(rows[-1]), flush=True)
    write_csv(rows, out / "curve.csv")
    write_json(out / "curve.json", rows)
    _plot_curve(rows, out / "curve.png", cfg.name)
    return rows


def _plot_curve(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, label in (("valid_rate", "valid rate (judge 1)"), ("valid_rate_j2", "valid rate (judge 2)"),
                       ("precision", "precision"), ("recall", "recall")):
        axes[0].plot(steps, [r[key] if r[key] is not None else float("nan") for r in rows], marker="o", label=label)
    axes[0].axhline(0.95, color="grey", lw=0.8, ls="--")
    axes[0].set_xlabel("training step")
    axes[0].legend(fontsize=7)
    axes[1].plot(steps, [r["domain_fid"] if r["domain_fid"] is not None else float("nan") for r in rows],
                 marker="o", color="C4")
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel("domain FID")
    fig.suptitle(f"learning curve: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
