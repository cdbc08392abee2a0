"""What a bench cell was made from (``cell.json``), and whether its work can be reused for a config.

A finished cell records the resolved config it ran with. Running the bench again compares that record with the
config now: equal, the cell is kept; different in a key that changes the trained model, the cell is refused with
one line (never silently reused or deleted); different only in how the model is sampled and judged (``sample.*``,
``eval.*``), the trained model is kept and the cell is re-sampled and re-evaluated, its earlier results moved to
``CELL/previous/N`` (``prepare_reevaluation``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from fairdiff.config import RunConfig, load_config, save_config
from fairdiff.utils.io import read_json, write_json

CELL_RECORD = "cell.json"  # written with metrics.json: the hash of the resolved config the cell finished with


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cell_record(cfg: RunConfig, extra: dict | None = None) -> dict:
    """What a finished cell was made from: its resolved config (+ ``extra``, e.g. guidance options) and a hash."""
    from fairdiff.config import to_dict

    body = {"config": to_dict(cfg), "extra": extra or {}}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"config_hash": digest, **body}


def write_cell_record(cell_dir: Path, cfg: RunConfig, extra: dict | None = None) -> None:
    write_json(cell_dir / CELL_RECORD, cell_record(cfg, extra))


def stale_reason(cell_dir: Path, cfg: RunConfig, extra: dict | None = None) -> str | None:
    """Why the work already in ``cell_dir`` (finished or not) was made from another config than ``cfg``; None
    when it matches or there is no work. Cells finished before records existed are compared by their
    ``config.yaml``."""
    rec_path = cell_dir / CELL_RECORD
    if rec_path.is_file():
        try:
            read_json(rec_path)
        except (OSError, ValueError):
            return f"its {CELL_RECORD} is unreadable"
        diff = diff_values(cell_dir, cfg, extra)
        if not diff:
            return None
        k, (was, now) = next(iter(diff.items()))
        return f"{k} {was!r} -> {now!r}"
    if (cell_dir / "config.yaml").is_file():
        from fairdiff.config import dump_config
        from fairdiff.errors import FairdiffError

        try:
            old = load_config(cell_dir / "config.yaml")
        except FairdiffError:
            return "its config.yaml cannot be read"
        if dump_config(old) != dump_config(cfg):
            from fairdiff.config import to_dict

            return _first_difference(_flat(to_dict(old)), _flat(to_dict(cfg)))
        return None
    if (cell_dir / "metrics.json").exists():
        return "it has results but no record of its config"
    return None


def diff_values(cell_dir: Path, cfg: RunConfig, extra: dict | None = None) -> dict[str, tuple]:
    """``{flat key: (recorded value, value now)}`` for every key where the cell's record and ``cfg`` differ
    (guidance options as ``guidance.*``); empty when they match or the cell has no readable record.

    An option added to fairdiff after the cell ran is not a difference as long as the bench leaves it at its
    default (the cell was made with that behaviour)."""
    from fairdiff.config import to_dict

    try:
        have = read_json(cell_dir / CELL_RECORD)
    except (OSError, ValueError):
        return {}
    want = cell_record(cfg, extra)
    if have.get("config_hash") == want["config_hash"]:
        return {}
    old = {**_flat(have.get("config") or {}), **_flat({"guidance": have.get("extra") or {}})}
    new = {**_flat(want["config"]), **_flat({"guidance": want["extra"]})}
    defaults = _flat(to_dict(RunConfig()))
    for k in set(new) - set(old):
        if k in defaults and new[k] == defaults[k]:
            old[k] = new[k]
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _first_difference(old: dict, new: dict) -> str:
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            return f"{k} {old.get(k)!r} -> {new.get(k)!r}"
    return "the config changed"


def refuse_stale(cells: list, reasons: dict[str, str], out_dir: Path) -> None:
    """One line naming the cells whose earlier work was made from another config; nothing is reused or removed."""
    from fairdiff.errors import FairdiffError

    if not reasons:
        return
    first = next(iter(reasons))
    more = f" and {len(reasons) - 1} more" if len(reasons) > 1 else ""
    raise FairdiffError(f"{len(reasons)} cell(s) in {out_dir} were run with another config ({first}: "
                        f"{reasons[first]}{more}); their results are kept, not reused: use a new --out, or delete "
                        f"{out_dir / 'cells' / first} (and the others) to rerun them")


SAMPLING_KEYS = ("sample.",)
EVAL_KEYS = ("eval.",)


def reevaluable(cell_dir: Path, cfg: RunConfig, extra: dict | None = None, *, guided: bool = False) -> list[str]:
    """The keys that changed when ``cell_dir``'s trained model can be kept: every difference from its record lies
    in ``eval.*`` or (for a cell that trains; a guidance cell's heads depend on the sampler) ``sample.*``, and the
    trained model (or, for a guidance cell, its record) is there. Empty when the cell cannot be re-evaluated."""
    if not (cell_dir / CELL_RECORD).is_file():
        return []
    keys = list(diff_values(cell_dir, cfg, extra))
    allowed = EVAL_KEYS if guided else EVAL_KEYS + SAMPLING_KEYS
    if not keys or not all(k.startswith(allowed) for k in keys):
        return []
    if not guided and not (cell_dir / "model").is_dir():
        return []
    return keys


def prepare_reevaluation(cell_dir: Path, cfg: RunConfig, keys: list[str], extra: dict | None = None) -> Path:
    """Make ``cell_dir`` ready to be sampled and evaluated again under ``cfg`` without retraining.

    Moves its results (``metrics.json``, charts, and the samples when the sampler or their number changed) into
    ``cell_dir/previous/N`` (nothing is deleted), writes ``cfg`` into the run's ``config.yaml`` when the cell trained
    one (its model sections are unchanged, so the model still matches) and records ``cfg`` as what the cell is now
    made from, so that an interruption resumes instead of moving the new samples away. Returns the folder the
    earlier results went to."""
    prev = cell_dir / "previous"
    n = 0
    while (prev / str(n)).exists():
        n += 1
    dest = prev / str(n)
    dest.mkdir(parents=True)
    resample = any(k.startswith(SAMPLING_KEYS) for k in keys) or "eval.n_samples" in keys
    names = ["metrics.json", "shares.png", CELL_RECORD] + (["samples", "samples.png"] if resample else [])
    for name in names:
        if (cell_dir / name).exists():
            shutil.move(str(cell_dir / name), str(dest / name))
    if (cell_dir / "model").is_dir():
        shutil.copyfile(cell_dir / "config.yaml", dest / "config.yaml")
        save_config(cfg, cell_dir / "config.yaml")
    write_cell_record(cell_dir, cfg, extra)
    return dest
