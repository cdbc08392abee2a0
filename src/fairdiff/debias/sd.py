"""``fairdiff debias --sd FOLDER --prompt P``: debiasing one prompt of a text-to-image model (a local diffusers
Stable Diffusion folder, or an SD LoRA run) toward a target, with the same pieces as for pixel and latent runs.

``--method filter`` (:func:`filter_sd_prompt`): :func:`~fairdiff.debias.filter.filter_to_target` with the one SD
denoising loop as its draw (:func:`fairdiff.sampling.sd_guided.sd_generate`, image i from seed i).
``--method guide`` (:func:`guide_sd_prompt`): distribution guidance with heads from ``fairdiff heads fit --sd``,
its scale found by the same controller (:func:`~fairdiff.debias.guide.find_scale`) on judged pilot batches, and
optionally kept to quota afterwards (``then_filter``).

The judge is the audit's (:func:`~fairdiff.evaluation.audit_inputs.make_judge`: an .onnx / TorchScript file, or
``auto`` with a data config): it gives each image a group or *outside* (calibrated on the data's held-out real
images where a data config is given, else on the judge's own calibration, else by its arg-max alone), and the
images are scored as an audit scores a prompt. With ``--judge auto`` and a data config the judges form a pair as
for trained runs: the validation domain CNN (seed ``eval.seed + 1``) keeps the images and steers the controller,
the test domain CNN (``eval.seed``, the audit's) scores them, and the second judge is the independent check. A
judge file has no such pair: the judge that keeps (or steers) also scores, and ``debias.json`` says so.

The folder: ``samples/`` (the images and their seeds), ``debias.json`` (prompt, target, what it cost),
``metrics.json`` and ``report.md``; it is built beside its place and moved in whole.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fairdiff.errors import FairdiffError

from .run import DEBIAS_FILE, DEBIAS_KIND, PILOT_SEED, _verdict_fn, partial_file, staged_folder

ROLE = ("the same judge {what} and scores (a judge file has no validation / test pair): the scored shares "
        "are the ones it {aimed}; valid rate and the second judge are the independent checks")
PAIR_ROLE = ("validation domain CNN (seed eval.seed + 1) {what}; the test domain CNN (eval.seed) scores; the second "
             "judge is the independent check")


SD_DRAW_CHUNK = 32  # guided SD images between two saves of the final draw (rounded up to whole batches)


def _role(s, what: str, aimed: str) -> str:
    return PAIR_ROLE.format(what=what) if s.validation is not None else ROLE.format(what=what, aimed=aimed)


@dataclass
class _Setup:
    jd: object
    tgt: np.ndarray
    state: str
    pipe: object
    size: int
    verdicts: object
    calibration: str | None
    validation: dict | None = None  # the validation judge's description where it is not the scoring judge


def _setup(sd: Path, out_dir: Path, target, *, prompt: str, n: int, steps: int, batch_size: int, judge, data_cfg,
           eval_cfg, max_draws, overwrite: bool, device, progress: bool, inputs=()) -> _Setup:
    """Everything checked before any image is drawn (one line each), then the judge and the pipeline."""
    from fairdiff.evaluation.audit_inputs import make_judge
    from fairdiff.evaluation.evaluate import check_target
    from fairdiff.sampling.files import check_sampling_args
    from fairdiff.sampling.sd import load_sd_any, sd_image_size
    from fairdiff.utils.outputs import check_output_dir

    if not sd.is_dir():
        raise FairdiffError(f"--sd {sd}: no such folder")
    if not prompt or not prompt.strip():
        raise FairdiffError("debias --sd needs one --prompt (the prompt whose images are debiased)")
    check_sampling_args(int(n), int(steps), 0.0, int(batch_size))
    if max_draws is not None and max_draws < n:
        raise FairdiffError(f"--max-draws must be at least --n ({n}), got {max_draws}")
    jd = make_judge(judge, data_cfg, eval_cfg, target=target, progress=progress)
    tgt = check_target(jd.eval_cfg.target if target is None else target, jd.classifier.num_classes)
    state = check_output_dir(out_dir, DEBIAS_KIND, overwrite=overwrite, inputs=[sd, *inputs], whole=True)
    pipe = load_sd_any(sd, device=device)
    size = sd_image_size(pipe)
    jd.classifier.check_judge(np.zeros((2, 3, size, size), np.uint8))
    chooser, validation = jd.classifier, None
    if judge in ("auto", None) and data_cfg is not None:  # the pair: the validation CNN chooses, the test CNN scores
        from fairdiff.evaluation.judges import load_validation_judge

        chooser = load_validation_judge("auto", data_cfg, jd.eval_cfg, progress=progress)
        chooser.check_judge(np.zeros((2, 3, size, size), np.uint8))
        validation = chooser.describe()
    verdicts = _verdict_fn(chooser, reference=jd.reference)  # calibrated as the audit's judge_prompt is
    cal = verdicts.calibration
    return _Setup(jd, tgt, state, pipe, size, verdicts, None if cal is None else cal.source, validation)


def _state_key(s: _Setup, prompt: str, steps: int, cfg_scale: float, **more) -> dict:
    """What decides a filter's draws and verdicts on an SD model (the key of its saved state, debias/filter.py)."""
    from fairdiff.utils.io import sha256_arrays

    return {"unet": sha256_arrays(s.pipe.unet.state_dict().items()), "prompt": prompt, "steps": int(steps),
            "cfg_scale": float(cfg_scale), "size": s.size, "judge": s.jd.classifier.describe(),
            "validation": s.validation, "calibration": s.calibration, **more}


def _finish(s: _Setup, out_dir: Path, record: dict, images, seeds, meta: dict, evaluate: bool) -> dict:
    from fairdiff.evaluation.audit_inputs import judge_prompt
    from fairdiff.runs import write_samples
    from fairdiff.utils.io import write_json

    metrics = judge_prompt(s.jd, images, {"prompt": record["prompt"], "n": record["n"],
                                          "debias": record["method"]}) if evaluate else None
    with staged_folder(out_dir, s.state) as tmp:
        write_samples(tmp / "samples", images, [int(x) for x in seeds], None,
                      {"sd": record["sd"], "prompt": record["prompt"], "n": record["n"],
                       "target": record["target"], **meta}, png=False)
        write_json(tmp / DEBIAS_FILE, record)
        if metrics is not None:
            write_json(tmp / "metrics.json", metrics)
        (tmp / "report.md").write_text(_report(record, metrics), encoding="utf-8")
    partial_file(out_dir).unlink(missing_ok=True)  # the kept set is written
    if metrics is not None:
        record["metrics"] = metrics
    return record


def filter_sd_prompt(
    sd: str | Path,
    out_dir: str | Path,
    target,
    *,
    prompt: str,
    n: int = 100,
    judge=None,
    data_cfg=None,
    eval_cfg=None,
    seed: int = 0,
    steps: int = 25,
    cfg_scale: float = 7.5,
    batch_size: int = 8,
    max_draws: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    evaluate: bool = True,
    progress: bool = True,
) -> dict:
    """Draw images of ``prompt`` from the SD folder or SD run ``sd`` (image i from seed ``seed + i``), keep ``n`` whose
    judged groups follow ``target``, write them with their record to ``out_dir``; returns the record (and
    ``metrics`` when ``evaluate``)."""
    from fairdiff.sampling.sd import generate_sd

    from .filter import filter_to_target

    sd, out_dir = Path(sd), Path(out_dir)
    if not (cfg_scale >= 0 and math.isfinite(cfg_scale)):
        raise FairdiffError(f"--cfg-scale must be a finite number >= 0, got {cfg_scale}")
    s = _setup(sd, out_dir, target, prompt=prompt, n=n, steps=steps, batch_size=batch_size, judge=judge,
               data_cfg=data_cfg, eval_cfg=eval_cfg, max_draws=max_draws, overwrite=overwrite, device=device,
               progress=progress)

    def draw(seeds: list[int]) -> np.ndarray:
        return generate_sd(s.pipe, prompt, seeds, size=s.size, steps=steps, guidance_scale=cfg_scale,
                           batch_size=batch_size)

    t0 = time.perf_counter()
    res = filter_to_target(draw, s.verdicts, s.tgt, int(n), seed=seed, batch_size=max(batch_size, 8) * 4,
                           max_draws=max_draws, progress=progress, state_file=partial_file(out_dir),
                           state_key=_state_key(s, prompt, steps, cfg_scale, batch=batch_size))
    record = {
        "method": "filter", "sd": str(sd.resolve()), "prompt": prompt, "target": s.tgt.tolist(), "n": int(n),
        "seed": seed, "steps": steps, "cfg_scale": cfg_scale, "image_size": s.size, "judge": s.jd.settings["judge"],
        "judge_calibration": s.calibration, "judge_role": _role(s, "keeps", "kept to quota"),
        "validation_judge": s.validation,
        **res.summary(), "seconds": round(time.perf_counter() - t0, 2),
    }
    return _finish(s, out_dir, record, res.images, res.seeds,
                   {"steps": steps, "cfg_scale": cfg_scale, "debias": "filter"}, evaluate)


def guide_sd_prompt(
    sd: str | Path,
    out_dir: str | Path,
    target,
    *,
    prompt: str,
    heads: str | Path,
    n: int = 100,
    judge=None,
    data_cfg=None,
    eval_cfg=None,
    seed: int = 0,
    cfg_scale: float | None = None,
    batch_size: int = 8,
    pilot_n: int = 400,
    max_pilots: int = 8,
    s0: float = 10.0,
    valid_drop: float = 0.02,
    tol: float = 0.01,
    then_filter: bool = False,
    max_draws: int | None = None,
    force: bool = False,
    device: str | None = None,
    overwrite: bool = False,
    evaluate: bool = True,
    progress: bool = True,
) -> dict:
    """Distribution guidance of ``prompt`` toward ``target`` with ``heads`` (from ``fairdiff heads fit --sd``; its
    DDIM steps and, unless ``cfg_scale`` is given, its CFG scale), the scale found by the controller on pilot
    batches of ``pilot_n`` images (seeds from ``PILOT_SEED``, guided over batches of ``batch_size`` as the final
    images are; first guided scale ``s0``, guidance on x_t as ``sample --sd`` does). Then ``n`` images (seeds
    ``seed ..``) at that scale, or, with ``then_filter``, guided images kept to the target's quotas by the judge."""
    from fairdiff.metrics import OUTSIDE
    from fairdiff.models.heads import check_heads_model, load_heads, read_heads_record
    from fairdiff.sampling.sd import sd_weights_fingerprint
    from fairdiff.sampling.sd_guided import sd_generate, sd_guidance

    from .filter import filter_to_target
    from .guide import Pilot, find_scale

    sd, out_dir = Path(sd), Path(out_dir)
    if heads is None or not Path(heads).is_dir():
        raise FairdiffError(f"--heads {heads}: no such folder (fit heads with 'fairdiff heads fit --sd')"
                            if heads is not None else "debias --sd --method guide needs --heads (from 'fairdiff "
                            "heads fit --sd')")
    if not (math.isfinite(s0) and s0 > 0):
        raise FairdiffError("guide: --s0 must be a finite number above 0")
    if pilot_n < 8 or max_pilots < 2:
        raise FairdiffError("guide: --pilot-n >= 8 and --max-pilots >= 2 are needed")
    if cfg_scale is not None and not (cfg_scale >= 0 and math.isfinite(cfg_scale)):
        raise FairdiffError(f"--cfg-scale must be a finite number >= 0, got {cfg_scale}")
    if max_draws is not None and not then_filter:
        raise FairdiffError("--max-draws belongs to --then-filter")
    h = load_heads(heads)
    check_heads_model(h, sd_weights_fingerprint(sd) if sd.is_dir() else None, heads, sd, force=force)
    hc = h.config
    if len(hc.attributes) != 1:
        raise FairdiffError(f"--heads {heads}: SD guidance steers one attribute, these heads predict "
                            f"{', '.join(hc.attributes)}")
    steps = int(hc.num_steps)
    cfg = float(read_heads_record(heads).get("guidance_scale", 7.5)) if cfg_scale is None else float(cfg_scale)
    s = _setup(sd, out_dir, target, prompt=prompt, n=n, steps=steps, batch_size=batch_size, judge=judge,
               data_cfg=data_cfg, eval_cfg=eval_cfg, max_draws=max_draws, overwrite=overwrite, device=device,
               progress=progress, inputs=[Path(heads)])
    k = len(s.tgt)
    if next(iter(hc.attributes.values())) != k:
        raise FairdiffError(f"--heads {heads} predict {next(iter(hc.attributes.values()))} groups, the judge and "
                            f"target have {k}")
    if (s.tgt <= 0).any():
        raise FairdiffError("guide: every target share must be above 0 (guidance divides by it); use filter")
    h = h.to(s.pipe.device)
    timing: dict[float, float] = {}

    def draw(seeds: list[int], scale: float) -> np.ndarray:
        t = time.perf_counter()
        g = sd_guidance(s.pipe, h, s.tgt.tolist(), scale) if scale else None
        images = sd_generate(s.pipe, prompt, seeds, size=s.size, steps=steps, cfg_scale=cfg, guidance=g,
                             batch_size=batch_size).images
        timing[scale] = (time.perf_counter() - t) / len(seeds)
        return images

    pilot_seeds = list(range(PILOT_SEED, PILOT_SEED + pilot_n))

    def pilot(scale: float) -> Pilot:
        v = s.verdicts(draw(pilot_seeds, scale))
        valid = v != OUTSIDE
        shares = (np.bincount(v[valid], minlength=k) / max(int(valid.sum()), 1)).tolist()
        if progress:
            print(f"  pilot scale {scale:g}: shares among valid {[round(x, 3) for x in shares]}, "
                  f"valid rate {valid.mean():.3f}", flush=True)
        return Pilot(float(scale), shares, float(valid.mean()), pilot_n)

    t0 = time.perf_counter()
    search = find_scale(pilot, s.tgt, valid_drop=valid_drop, s0=s0, max_pilots=max_pilots, tol=tol)
    pilot_s = time.perf_counter() - t0
    base_per_image = timing.get(0.0)
    t1 = time.perf_counter()
    if then_filter:
        from fairdiff.utils.io import sha256_arrays

        key = _state_key(s, prompt, steps, cfg, batch=batch_size, scale=search.scale,
                         heads=sha256_arrays(h.state_dict().items()))
        res = filter_to_target(lambda sd_seeds: draw(sd_seeds, search.scale), s.verdicts, s.tgt, int(n), seed=seed,
                               batch_size=max(batch_size, 8) * 4, max_draws=max_draws, progress=progress,
                               state_file=partial_file(out_dir), state_key=key)
        images, kept_seeds, cost = res.images, res.seeds, {**res.summary(), "then_filter": True}
    else:
        from fairdiff.utils.io import sha256_arrays
        from fairdiff.utils.partial import draw_in_chunks, partial_key

        key = partial_key(**_state_key(s, prompt, steps, cfg, batch=batch_size, scale=search.scale, n=int(n),
                                       seed=int(seed), heads=sha256_arrays(h.state_dict().items())))
        images, seconds = draw_in_chunks(lambda a, b: draw(list(range(seed + a, seed + b)), search.scale), int(n),
                                         batch_size, SD_DRAW_CHUNK, partial_file(out_dir), key)
        timing[search.scale] = seconds / max(int(n), 1)
        kept_seeds = np.arange(seed, seed + n)
        cost = {"kept": int(n), "drawn": int(n), "drawn_per_kept": 1.0}
    record = {
        "method": "guide", "sd": str(sd.resolve()), "prompt": prompt, "target": s.tgt.tolist(), "n": int(n),
        "seed": seed, "steps": steps, "cfg_scale": cfg, "image_size": s.size, "heads": str(Path(heads).resolve()),
        "space": "x", "judge": s.jd.settings["judge"], "judge_calibration": s.calibration,
        "judge_role": _role(s, "steers the controller" + (", keeps" if then_filter else ""), "aimed at"),
        "validation_judge": s.validation,
        "controller": {**search.record(), "pilot_n": pilot_n, "pilot_seed": PILOT_SEED, "tol": tol,
                       "valid_drop": valid_drop, "s0": s0},
        "pilot_seconds": round(pilot_s, 2), "seconds_per_image": round(timing.get(search.scale, math.nan), 5),
        "base_seconds_per_image": round(base_per_image or math.nan, 5), **cost,
        "seconds_per_kept_image": round((time.perf_counter() - t1) / n, 5),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return _finish(s, out_dir, record, images, kept_seeds,
                   {"steps": steps, "cfg_scale": cfg, "debias": "guide", "scale": search.scale,
                    "then_filter": then_filter}, evaluate)


def _fmt_cell(v):
    """A report cell: floats to 3 decimals, lists of floats likewise, anything else as it is."""
    return f"{v:.3f}" if isinstance(v, float) else str([round(x, 3) for x in v]) if isinstance(v, list) else v


def _report(rec: dict, m: dict | None) -> str:
    what = {"filter": "Generate-and-filter", "guide": "Distribution guidance to a target"}[rec["method"]]
    lines = [f"# {what}: '{rec['prompt']}'", "",
             f"SD model: `{rec['sd']}`; target {rec['target']}; {rec['kept']} images kept of {rec['drawn']} drawn "
             f"({rec['drawn_per_kept']:.2f} drawn per kept image, {rec['seconds_per_kept_image'] * 1000:.0f} ms per "
             f"kept image); {rec['steps']} steps, classifier-free guidance {rec['cfg_scale']:g}.", ""]
    if rec["method"] == "guide":
        c = rec["controller"]
        lines += [f"Guidance scale {c['scale']:g} after {len(c['pilots'])} pilots of {c['pilot_n']} images: "
                  f"{c['reason']}.", "", "| pilot scale | shares among valid | valid rate |", "|---|---|---|"]
        lines += [f"| {p['scale']:g} | {[round(x, 3) for x in p['shares']]} | {p['valid_rate']:.3f} |"
                  for p in c["pilots"]]
        lines.append("")
    if "drawn_shares" in rec:
        lines += [f"Shares of the drawn images by the judge: {rec['drawn_shares']}; outside every group: "
                  f"{rec['drawn_outside_rate']:.3f}.", ""]
    lines += [f"Note: {rec['judge_role']}.", ""]
    if m is not None:
        lines += ["| metric | value |", "|---|---|"]
        fmt = _fmt_cell
        for key in ("valid_rate", "valid_shares", "fd_strict"):
            if key in m:
                lines.append(f"| {key.replace('_', ' ')} | {fmt(m[key])} |")
        if m.get("judge2"):
            lines.append(f"| second judge: valid rate / shares | {fmt(m['judge2'].get('valid_rate'))} / "
                         f"{fmt(m['judge2'].get('valid_shares'))} |")
    return "\n".join(lines) + "\n"
