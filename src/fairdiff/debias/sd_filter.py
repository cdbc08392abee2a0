"""``fairdiff debias --sd FOLDER --prompt P --method filter``: generate-and-filter for one prompt of a text-to-image
model (a local diffusers Stable Diffusion folder, or an SD LoRA run).

The same :func:`~fairdiff.debias.filter.filter_to_target` as for pixel and latent runs; only the draw differs (the
one SD denoising loop, :func:`fairdiff.sampling.sd.generate_sd`, image i from seed i). The judge is the audit's
(:func:`~fairdiff.evaluation.audit_inputs.make_judge`: an .onnx / TorchScript file, or ``auto`` with a data
config): it gives each image a group or *outside* (calibrated on the data's held-out real images where a data
config is given, else on the judge's own calibration, else by its arg-max alone), and the kept images are scored
as an audit scores a prompt. An SD folder has no validation / test judge pair: the judge that keeps also scores,
so the scored shares meet the target by construction; the second judge (with ``--judge auto`` and a data config)
and the valid rate are the independent checks, and ``debias.json`` says so.

The folder: ``samples/`` (the kept images and their seeds), ``debias.json`` (prompt, target, what it cost),
``metrics.json`` and ``report.md``; it is built beside its place and moved in whole.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fairdiff.errors import FairdiffError

from .run import DEBIAS_FILE, DEBIAS_KIND, staged_folder


def _verdicts_fn(jd):
    """``images -> verdicts`` of the audit judge ``jd``, calibrated as :func:`judge_prompt` calibrates it."""
    from fairdiff.evaluation.openset import calibration_of, judge_images

    clf = jd.classifier
    cal = calibration_of(clf, None, None)
    if cal is None and jd.reference is not None and len(jd.reference):
        held_logits, held_feats = clf.predict(jd.reference, all_classes=True)
        cal = calibration_of(clf, held_logits, held_feats)

    def verdicts(images: np.ndarray) -> np.ndarray:
        return judge_images(clf, images, cal).verdicts

    return verdicts, None if cal is None else cal.source


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
    from fairdiff.evaluation.audit_inputs import judge_prompt, make_judge
    from fairdiff.evaluation.evaluate import check_target
    from fairdiff.runs import write_samples
    from fairdiff.sampling.files import check_sampling_args
    from fairdiff.sampling.sd import generate_sd, load_sd_any, sd_image_size
    from fairdiff.utils.io import write_json
    from fairdiff.utils.outputs import check_output_dir

    from .filter import filter_to_target

    sd, out_dir = Path(sd), Path(out_dir)
    if not sd.is_dir():
        raise FairdiffError(f"--sd {sd}: no such folder")
    if not prompt or not prompt.strip():
        raise FairdiffError("debias --sd needs one --prompt (the prompt whose images are kept to the target)")
    check_sampling_args(int(n), int(steps), 0.0, int(batch_size))
    if not (cfg_scale >= 0 and np.isfinite(cfg_scale)):
        raise FairdiffError(f"--cfg-scale must be a finite number >= 0, got {cfg_scale}")
    if max_draws is not None and max_draws < n:
        raise FairdiffError(f"--max-draws must be at least --n ({n}), got {max_draws}")
    jd = make_judge(judge, data_cfg, eval_cfg, target=target, progress=progress)
    tgt = check_target(jd.eval_cfg.target if target is None else target, jd.classifier.num_classes)
    state = check_output_dir(out_dir, DEBIAS_KIND, overwrite=overwrite, inputs=[sd], whole=True)
    pipe = load_sd_any(sd, device=device)
    size = sd_image_size(pipe)
    jd.classifier.check_judge(np.zeros((2, 3, size, size), np.uint8))  # before any image is drawn
    verdicts, cal_source = _verdicts_fn(jd)

    def draw(seeds: list[int]) -> np.ndarray:
        return generate_sd(pipe, prompt, seeds, size=size, steps=steps, guidance_scale=cfg_scale,
                           batch_size=batch_size)

    t0 = time.perf_counter()
    res = filter_to_target(draw, verdicts, tgt, int(n), seed=seed, batch_size=max(batch_size, 8) * 4,
                           max_draws=max_draws, progress=progress)
    record = {
        "method": "filter", "sd": str(sd.resolve()), "prompt": prompt, "target": tgt.tolist(), "n": int(n),
        "seed": seed, "steps": steps, "cfg_scale": cfg_scale, "image_size": size, "judge": jd.settings["judge"],
        "judge_calibration": cal_source,
        "judge_role": "the same judge keeps and scores (an SD folder has no validation / test judge pair): the "
                      "scored shares meet the target by construction; valid rate and the second judge are the "
                      "independent checks",
        **res.summary(), "seconds": round(time.perf_counter() - t0, 2),
    }
    metrics = judge_prompt(jd, res.images, {"prompt": prompt, "n": int(n), "debias": "filter"}) if evaluate else None
    with staged_folder(out_dir, state) as tmp:
        write_samples(tmp / "samples", res.images, [int(s) for s in res.seeds], None,
                      {"sd": str(sd.resolve()), "prompt": prompt, "n": int(n), "target": tgt.tolist(),
                       "steps": steps, "cfg_scale": cfg_scale, "debias": "filter"}, png=False)
        write_json(tmp / DEBIAS_FILE, record)
        if metrics is not None:
            write_json(tmp / "metrics.json", metrics)
        (tmp / "report.md").write_text(_report(record, metrics), encoding="utf-8")
    if metrics is not None:
        record["metrics"] = metrics
    return record


def _report(rec: dict, m: dict | None) -> str:
    lines = [f"# Generate-and-filter: '{rec['prompt']}'", "",
             f"SD model: `{rec['sd']}`; target {rec['target']}; {rec['kept']} images kept of {rec['drawn']} drawn "
             f"({rec['drawn_per_kept']:.2f} drawn per kept image, {rec['seconds_per_kept_image'] * 1000:.0f} ms per "
             f"kept image); {rec['steps']} steps, classifier-free guidance {rec['cfg_scale']:g}.", "",
             f"Shares of the drawn images by the judge: {rec['drawn_shares']}; outside every group: "
             f"{rec['drawn_outside_rate']:.3f}.", "", f"Note: {rec['judge_role']}.", ""]
    if m is not None:
        lines += ["| metric | value |", "|---|---|"]
        for key in ("valid_rate", "valid_shares", "fd_strict"):
            if key in m:
                lines.append(f"| {key.replace('_', ' ')} | {m[key]} |")
        if m.get("judge2"):
            lines.append(f"| second judge: valid rate / shares | {m['judge2'].get('valid_rate')} / "
                         f"{m['judge2'].get('valid_shares')} |")
    return "\n".join(lines) + "\n"
