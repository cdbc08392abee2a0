"""fairdiff training and DDIM sampling throughput against a plain diffusers loop, on the same model and batch.

One run measures (issue 8; docs/performance.md):

* training images/s of the plain diffusers loop (``UNet2DModel``, ``DDPMScheduler.add_noise``, ``F.mse_loss``,
  AdamW lr 1e-4, gradient clipping 1.0, ``loss.item()`` each step, as diffusers' unconditional example) in fp32
  and under bf16 autocast, and of fairdiff's own trainer (``fairdiff.training.train``, what users run, with its
  EMA, logging and checkpointing) in fp32 and with each speed option added in turn;
* the step cost of DDM against the baseline objective in fairdiff, with the same options;
* DDIM sampling images/s of the plain diffusers loop (``DDIMScheduler``, ``set_timesteps``, ``unet(x, t).sample``,
  ``scheduler.step``) against fairdiff's sampler (``fairdiff.sampling.sample``) with its options;
* loss-curve agreement: the mean loss over the last K steps of each fairdiff variant against fairdiff fp32 from the
  same seed (same data order, noise and timesteps), as a relative difference.

Every variant runs in its own ``try`` (and, by default on CUDA, its own process), so one failing option (say
torch.compile) is reported in the table, not fatal; results are rewritten to ``--out`` after each variant, so a run
cut short still leaves a table. Data: the plain loop trains on uniform random tensors in [-1, 1] kept on the
device; fairdiff trains on its procedurally drawn ``synthetic`` shapes. Image content does not change the cost.

    python benchmarks/bench_gpu_throughput.py --device cuda --out runs/bench-gpu     # the GPU run (< 10 min)
    python benchmarks/bench_gpu_throughput.py --quick --device cpu --out runs/bench-quick   # CI / CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

RESULT_TAG = "BENCH-RESULT:"
CG_MODE = "reduce-overhead"  # torch.compile mode with CUDA graphs


@dataclass
class Variant:
    """One measured configuration: ``kind`` picks the worker, ``opts`` its settings."""

    name: str
    kind: str  # plain-train | fd-train | plain-sample | fd-sample
    what: str
    opts: dict = field(default_factory=dict)
    compiles: bool = False
    ref: str | None = None  # the variant this one is compared with (loss / images / DDM step ratio)


FAST = {"mixed_precision": "bf16", "channels_last": True, "fused_optimizer": True, "data_on_device": True}


def variants() -> list[Variant]:
    """All variants, most important first (a time budget cuts from the end)."""
    bf16 = {"mixed_precision": "bf16"}
    cl = {**bf16, "channels_last": True}
    fused = {**cl, "fused_optimizer": True}
    comp = {**FAST, "compile": True}
    cg = {**comp, "compile_mode": CG_MODE}
    return [
        Variant("plain-fp32", "plain-train", "diffusers loop, fp32", {"precision": "fp32"}),
        Variant("plain-bf16", "plain-train", "diffusers loop, bf16 autocast", {"precision": "bf16"}),
        Variant("fd-fp32", "fd-train", "fairdiff train(), defaults (fp32)", {"train": {}}),
        Variant("fd-bf16", "fd-train", "+ bf16 autocast (train.mixed_precision=bf16)", {"train": bf16},
                ref="fd-fp32"),
        Variant("fd-bf16-cl", "fd-train", "+ channels_last", {"train": cl}, ref="fd-fp32"),
        Variant("fd-bf16-cl-fused", "fd-train", "+ fused_optimizer", {"train": fused}, ref="fd-fp32"),
        Variant("fd-fast", "fd-train", "+ data_on_device", {"train": FAST}, ref="fd-fp32"),
        Variant("ddm-fp32", "fd-train", "DDM, fp32", {"train": {}, "method": "ddm"}, ref="fd-fp32"),
        Variant("ddm-fast", "fd-train", "DDM, as fd-fast", {"train": FAST, "method": "ddm"}, ref="fd-fast"),
        Variant("plain-sample-fp32", "plain-sample", "diffusers DDIM loop, fp32", {}),
        Variant("fd-sample-fp32", "fd-sample", "fairdiff sample(), fp32", {}),
        Variant("fd-sample-bf16", "fd-sample", "+ sample.precision=bf16", {"precision": "bf16"},
                ref="fd-sample-fp32"),
        Variant("fd-sample-bf16-cl", "fd-sample", "+ channels_last", {"precision": "bf16", "channels_last": True},
                ref="fd-sample-fp32"),
        Variant("fd-fast-compile", "fd-train", "fd-fast + compile", {"train": comp}, compiles=True, ref="fd-fp32"),
        Variant("ddm-fast-compile", "fd-train", "DDM, as fd-fast-compile", {"train": comp, "method": "ddm"},
                compiles=True, ref="fd-fast-compile"),
        Variant("fd-sample-bf16-cl-compile", "fd-sample", "+ compile",
                {"precision": "bf16", "channels_last": True, "compile": True}, compiles=True, ref="fd-sample-fp32"),
        Variant("fd-fast-compile-cg", "fd-train", f"fd-fast + compile {CG_MODE} (CUDA graphs)", {"train": cg},
                compiles=True, ref="fd-fp32"),
        Variant("fd-sample-bf16-cl-compile-cg", "fd-sample", f"+ compile {CG_MODE} (CUDA graphs)",
                {"precision": "bf16", "channels_last": True, "compile": True, "compile_mode": CG_MODE},
                compiles=True, ref="fd-sample-fp32"),
    ]


# --------------------------------------------------------------------------------------------------- workers
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_mib(dev: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None


def _last_k(rows: list[tuple[int, float]], last_step: int, k: int) -> float:
    """Mean of the logged losses whose window lies in the last ``k`` steps."""
    vals = [v for s, v in rows if s > last_step - k]
    return float(statistics.mean(vals)) if vals else math.nan


def plain_train(a, opts: dict) -> dict:
    """The plain diffusers-style training loop (no EMA), data already on the device; images/s over N steps."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from fairdiff.models.unet import build_unet

    dev = torch.device(a.device)
    torch.manual_seed(0)
    unet = build_unet(a.preset, a.resolution, a.channels).to(dev).train()  # a plain diffusers UNet2DModel
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    data = torch.rand(a.data_size, a.channels, a.resolution, a.resolution, device=dev) * 2 - 1
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=opts["precision"] == "bf16")
    losses: list[float] = []

    def step() -> None:
        clean = data[torch.randint(0, len(data), (a.batch,), device=dev)]
        noise = torch.randn_like(clean)
        t = torch.randint(0, sched.config.num_train_timesteps, (a.batch,), device=dev)
        noisy = sched.add_noise(clean, noise, t)
        with autocast:
            pred = unet(noisy, t).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())  # the example logs the loss every step

    for _ in range(a.warmup):
        step()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    _sync(dev)
    dt = time.perf_counter() - t0
    rows = list(enumerate(losses, 1))
    return {"img_per_s": a.steps * a.batch / dt, "step_ms": 1000 * dt / a.steps,
            "loss_last_k": _last_k(rows, a.warmup + a.steps, a.loss_window),
            "params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 3)}


def fd_train(a, opts: dict, work: Path) -> dict:
    """fairdiff's ``train()``: W warm-up steps, then N timed ones; images/s from the run's own log (elapsed_s)."""
    from fairdiff.config import load_config
    from fairdiff.training import train
    from fairdiff.utils.io import read_jsonl

    dev = torch.device(a.device)
    total = a.warmup + a.steps
    overrides = [
        "data.source=synthetic", f"data.resolution={a.resolution}", f"data.channels={a.channels}",
        f"data.synthetic_size={a.data_size}", "data.synthetic_classes=2", "data.groups=[0,1]",
        "data.shares=[0.5,0.5]", "data.heldout_per_group=8", f"model.preset={a.preset}",
        f"method.name={opts.get('method', 'baseline')}", f"train.batch_size={a.batch}", "train.lr=1e-4",
        f"train.steps={total + 1}", f"train.log_every={a.warmup}", "train.checkpoint_every=0", "train.seed=0",
    ] + [f"train.{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in opts["train"].items()]
    cfg = load_config(None, overrides)
    run = work / "run"
    # stop_after ends with a checkpoint and skips the final model / sample grid, which are not throughput
    train(cfg, run, quiet=True, overwrite=True, stop_after=total)
    rows = [r for r in read_jsonl(run / "stats.jsonl") if "elapsed_s" in r]
    at = {int(r["step"]): r for r in rows}
    dt = at[total]["elapsed_s"] - at[a.warmup]["elapsed_s"]
    loss_rows = [(int(r["step"]), float(r["loss"])) for r in rows]
    denoise_rows = [(int(r["step"]), float(r.get("denoise", r["loss"]))) for r in rows]
    return {"img_per_s": a.steps * a.batch / dt, "step_ms": 1000 * dt / a.steps,
            "loss_last_k": _last_k(loss_rows, total, a.loss_window),
            "denoise_last_k": _last_k(denoise_rows, total, a.loss_window),
            "loss_curve": loss_rows, "peak_MiB": _peak_mib(dev)}


def _sample_model(a, dev: torch.device):
    from fairdiff.models import build_noise_scheduler
    from fairdiff.models.unet import build_unet

    torch.manual_seed(0)
    unet = build_unet(a.preset, a.resolution, a.channels).to(dev).eval()
    return unet, build_noise_scheduler().config  # the schedule fairdiff trains with (linear betas, 1000 steps)


def _time_sampling(a, dev: torch.device, once) -> dict:
    once(a.sample_warmup_steps)  # same shapes as the timed runs: compiles / captures graphs here
    _sync(dev)
    times = []
    for _ in range(a.sample_repeats):
        t0 = time.perf_counter()
        once(a.sample_steps)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    return {"img_per_s": a.sample_batch / dt, "batch_s": dt}


def plain_sample(a, opts: dict) -> dict:
    """diffusers' DDIMPipeline loop: noise on the device, ``set_timesteps``, ``unet(x, t).sample``, ``step``."""
    from diffusers import DDIMScheduler

    dev = torch.device(a.device)
    unet, sched_cfg = _sample_model(a, dev)
    sched = DDIMScheduler.from_config(sched_cfg)
    shape = (a.sample_batch, a.channels, a.resolution, a.resolution)

    @torch.no_grad()
    def once(steps: int) -> torch.Tensor:
        x = torch.randn(shape, generator=torch.Generator(device=dev).manual_seed(0), device=dev)
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
        return x

    return {**_time_sampling(a, dev, once), "peak_MiB": _peak_mib(dev)}


def fd_sample(a, opts: dict, work: Path) -> dict:
    """fairdiff's ``sample()`` (per-image seeded noise) with the variant's speed options."""
    from fairdiff.models import build_sampling_scheduler
    from fairdiff.sampling import sample

    dev = torch.device(a.device)
    unet, sched_cfg = _sample_model(a, dev)
    sched = build_sampling_scheduler("ddim", sched_cfg)
    seeds = range(a.sample_batch)
    kept: dict[str, torch.Tensor] = {}

    def once(steps: int) -> None:
        imgs = sample(unet, sched, seeds, batch_size=a.sample_batch, num_steps=steps, device=dev, progress=False,
                      **opts)
        kept["imgs"] = imgs[:64]

    res = _time_sampling(a, dev, once)
    torch.save(kept["imgs"], work / "images.pt")  # the first 64 images, to compare variants
    return {**res, "peak_MiB": _peak_mib(dev)}


def run_worker(a, v: Variant, work: Path) -> dict:
    """Run one variant in this process; returns its measurements."""
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    work.mkdir(parents=True, exist_ok=True)
    if v.kind == "plain-train":
        res = plain_train(a, v.opts)
        res["peak_MiB"] = _peak_mib(dev)
    elif v.kind == "fd-train":
        res = fd_train(a, v.opts, work)
    elif v.kind == "plain-sample":
        res = plain_sample(a, v.opts)
    elif v.kind == "fd-sample":
        res = fd_sample(a, v.opts, work)
    else:
        raise ValueError(f"unknown variant kind {v.kind}")
    return res


def _reset_in_process() -> None:
    """Between in-process variants: a fresh accelerate state (mixed precision is fixed per state) and dynamo."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    except Exception:  # an accelerate without these hooks: the next Accelerator may refuse a new precision
        pass
    try:
        torch._dynamo.reset()
    except Exception:
        pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------- driver
def _spawn(a, v: Variant, work: Path, timeout: float) -> dict:
    """Run one variant in a child process (crash and memory isolation); its result is the tagged last line."""
    spec = json.dumps({"args": vars(a), "variant": asdict(v), "work": str(work)})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec], capture_output=True,
                           text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    err = [ln for ln in (p.stderr or "").splitlines() if ln.strip()]
    return {"status": f"failed (exit {p.returncode}): {err[-1][:300] if err else 'no output'}"}


def _failure(e: BaseException) -> str:
    first = str(e).splitlines()[0][:300] if str(e) else ""
    return f"failed: {type(e).__name__}: {first}"


def _worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    a = argparse.Namespace(**spec["args"])
    v = Variant(**spec["variant"])
    try:
        res = {"status": "ok", **run_worker(a, v, Path(spec["work"]))}
    except Exception as e:  # reported in the table
        traceback.print_exc()
        res = {"status": _failure(e)}
    print(RESULT_TAG + json.dumps(res), flush=True)


def _env(a) -> dict:
    import accelerate
    import diffusers

    dev = torch.device(a.device)
    info = {"torch": torch.__version__, "diffusers": diffusers.__version__, "accelerate": accelerate.__version__,
            "python": sys.version.split()[0]}
    if dev.type == "cuda":
        info.update(device=torch.cuda.get_device_name(dev), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
        try:  # TF32 decides what "fp32" convolutions / matmuls really run in
            info.update(matmul_tf32=torch.backends.cuda.matmul.allow_tf32, cudnn_tf32=torch.backends.cudnn.allow_tf32)
        except Exception:
            pass
    else:
        info.update(device=f"cpu ({torch.get_num_threads()} threads)")
    return info


def _fmt(x, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{nd}f}" if isinstance(x, float) else str(x)


def _derive(results: dict[str, dict], vs: list[Variant]) -> None:
    """Ratios against the plain fp32 loops, loss / image agreement and the DDM step-cost ratio."""
    by = {v.name: v for v in vs}
    ok = {k: r for k, r in results.items() if r.get("status") == "ok"}
    base_train = ok.get("plain-fp32", {}).get("img_per_s")
    base_sample = ok.get("plain-sample-fp32", {}).get("img_per_s")
    for name, r in ok.items():
        v = by[name]
        base = base_train if v.kind.endswith("train") else base_sample
        r["x_plain_fp32"] = r["img_per_s"] / base if base else None
        ref = ok.get(v.ref or "")
        if v.kind == "fd-train" and ref is not None:
            if name.startswith("ddm"):  # against the baseline objective with the same options
                r["ddm_step_ratio"] = ref["img_per_s"] / r["img_per_s"]  # DDM step time / baseline step time
            elif ref.get("loss_last_k"):
                r["loss_rel_diff"] = abs(r["loss_last_k"] - ref["loss_last_k"]) / ref["loss_last_k"]
                pairs = dict(ref.get("loss_curve", []))
                diffs = [abs(lv - pairs[s]) / pairs[s] for s, lv in r.get("loss_curve", []) if pairs.get(s)]
                r["loss_curve_max_rel_diff"] = max(diffs) if diffs else None
    # DDM variants compared with fairdiff's own fp32 DDM for the loss
    for name in ("ddm-fast", "ddm-fast-compile"):
        if name in ok and "ddm-fp32" in ok and ok["ddm-fp32"].get("loss_last_k"):
            ref = ok["ddm-fp32"]["loss_last_k"]
            ok[name]["loss_rel_diff"] = abs(ok[name]["loss_last_k"] - ref) / ref


def _image_agreement(results: dict[str, dict], vs: list[Variant], work: Path) -> None:
    ref_file = work / "fd-sample-fp32" / "images.pt"
    if not ref_file.is_file():
        return
    ref = torch.load(ref_file)
    for v in vs:
        f = work / v.name / "images.pt"
        if v.kind == "fd-sample" and v.name != "fd-sample-fp32" and f.is_file() and results.get(v.name):
            d = (torch.load(f) - ref).abs()
            results[v.name].update(mean_abs_diff_vs_fp32=float(d.mean()), max_abs_diff_vs_fp32=float(d.max()))


def render(a, results: dict[str, dict], vs: list[Variant], env: dict, command: str, done: bool) -> str:
    """The markdown report: training, DDM step cost, sampling, summary."""
    lines = [f"# fairdiff GPU throughput ({'complete' if done else 'in progress / cut short'})", "",
             f"- command: `{command}`",
             f"- device: {env.get('device')}; torch {env.get('torch')}, diffusers {env.get('diffusers')}, "
             f"accelerate {env.get('accelerate')}",
             f"- model: preset `{a.preset}` U-Net, {a.channels}x{a.resolution}x{a.resolution}; training batch "
             f"{a.batch}, {a.steps} timed steps after {a.warmup} warm-up; sampling DDIM {a.sample_steps} steps, batch "
             f"{a.sample_batch}, median of {a.sample_repeats}",
             "- data: the plain loop trains on uniform random tensors kept on the device; fairdiff on its synthetic "
             "shapes (content does not change the cost)",
             f"- loss: mean over the last {a.loss_window} steps; Δloss = relative difference to the fp32 run of the "
             "same method and seed", ""]

    def row(v: Variant, cols) -> str:
        return "| " + " | ".join(str(c) for c in cols) + " |"

    lines += ["## Training", "", "| variant | what | img/s | × plain fp32 | peak MiB | loss (last K) | Δloss vs fp32 "
              "| status |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for v in vs:
        if v.kind.endswith("train"):
            r = results.get(v.name, {"status": "not run"})
            lines.append(row(v, [v.name, v.what, _fmt(r.get("img_per_s")), _fmt(r.get("x_plain_fp32"), 2),
                                 _fmt(r.get("peak_MiB")), _fmt(r.get("loss_last_k"), 4),
                                 _fmt(100 * r["loss_rel_diff"], 2) + " %" if r.get("loss_rel_diff") is not None
                                 else "–", r.get("status")]))
    lines += ["", "## DDM step cost against the baseline objective (goal: at most 1.05)", "",
              "| DDM variant | baseline variant | baseline img/s | DDM img/s | DDM step / baseline step |",
              "|---|---|---:|---:|---:|"]
    for v in vs:
        r = results.get(v.name, {})
        if v.name.startswith("ddm") and r.get("ddm_step_ratio"):
            lines.append(row(v, [v.name, v.ref, _fmt(results[v.ref]["img_per_s"]), _fmt(r["img_per_s"]),
                                 _fmt(r["ddm_step_ratio"], 3)]))
    lines += ["", "## Sampling", "", "| variant | what | img/s | × plain fp32 | peak MiB | mean / max abs Δ vs "
              "fairdiff fp32 | status |", "|---|---|---:|---:|---:|---:|---|"]
    for v in vs:
        if v.kind.endswith("sample"):
            r = results.get(v.name, {"status": "not run"})
            lines.append(row(v, [v.name, v.what, _fmt(r.get("img_per_s")), _fmt(r.get("x_plain_fp32"), 2),
                                 _fmt(r.get("peak_MiB")), _diff(r), r.get("status")]))
    lines += ["", "## Summary", ""] + summary(results, vs, gpu=a.device.startswith("cuda")) + [""]
    return "\n".join(lines)


def _diff(r: dict) -> str:
    if r.get("max_abs_diff_vs_fp32") is None:
        return "–"
    return f"{r['mean_abs_diff_vs_fp32']:.4f} / {r['max_abs_diff_vs_fp32']:.3f}"


def summary(results: dict[str, dict], vs: list[Variant], gpu: bool = True) -> list[str]:
    """One line per goal of issue 8 (the goals are judged on a GPU only: CPU numbers are a smoke test)."""

    def verdict(goal: str, met: bool) -> str:
        return f" (goal {goal}: {'met' if met else 'not met'})" if gpu else " (CPU: goals are judged on a GPU)"

    ok = {v.name: results[v.name] for v in vs if results.get(v.name, {}).get("status") == "ok"}
    out = []
    for label, kind in (("training", "fd-train"), ("sampling", "fd-sample")):
        cands = [(r["img_per_s"], n) for n, r in ok.items()
                 if n.startswith("fd-") and next(v for v in vs if v.name == n).kind == kind]
        if cands:
            ips, n = max(cands)
            x = ok[n].get("x_plain_fp32")
            extra = ""
            if kind == "fd-train" and ok[n].get("loss_rel_diff") is not None:
                extra = f", loss within {100 * ok[n]['loss_rel_diff']:.2f} % of fp32"
            goal = verdict("≥ 2×", x >= 2) if x else ""
            out.append(f"- fastest fairdiff {label}: `{n}` {ips:,.1f} img/s = "
                       f"{_fmt(x, 2)}× the plain fp32 loop{goal}{extra}")
    for n, r in ok.items():
        if r.get("ddm_step_ratio"):
            out.append(f"- DDM step / baseline step (`{n}`): {r['ddm_step_ratio']:.3f}"
                       + verdict("≤ 1.05", r["ddm_step_ratio"] <= 1.05))
    return out or ["- no variant finished"]


def parse_args(argv=None) -> argparse.Namespace:
    """Flags, with the GPU defaults (or the --quick ones) filled in for whatever was not given."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, help="timed training steps (default 100; quick 2); rounded up to a "
                    "multiple of --warmup")
    ap.add_argument("--warmup", type=int, help="untimed training steps first (default 20; quick 1)")
    ap.add_argument("--batch", type=int, help="training batch (default 256; quick 8)")
    ap.add_argument("--sample-batch", type=int, help="sampling batch (default 1024; quick 8)")
    ap.add_argument("--sample-steps", type=int, help="DDIM steps (default 50; quick 5)")
    ap.add_argument("--sample-repeats", type=int, help="timed sampling batches, median (default 2; quick 1)")
    ap.add_argument("--sample-warmup-steps", type=int, help="DDIM steps of the untimed warm-up batch (default 5)")
    ap.add_argument("--preset", help="U-Net preset (default small; quick tiny)")
    ap.add_argument("--resolution", type=int, help="image size (default 32; quick 16)")
    ap.add_argument("--channels", type=int, help="image channels (default 3; quick 1)")
    ap.add_argument("--data-size", type=int, help="training images (default 8192; quick 128)")
    ap.add_argument("--loss-window", type=int, help="K: the loss is averaged over the last K steps (default half "
                    "the timed steps, a multiple of --warmup)")
    ap.add_argument("--quick", action="store_true", help="tiny model and few steps: a CPU / CI smoke run (< 60 s)")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="include the torch.compile variants (auto: on CUDA only)")
    ap.add_argument("--only", help="comma-separated variant names to run (default all)")
    ap.add_argument("--isolate", choices=["auto", "process", "none"], default="auto",
                    help="one process per variant (auto: on CUDA; none: all in this process)")
    ap.add_argument("--budget-s", type=float, default=540.0,
                    help="stop starting variants after this many seconds (the rest are reported as skipped)")
    ap.add_argument("--variant-timeout-s", type=float, default=300.0,
                    help="with --isolate process: stop a variant (say a stuck compile) after this many seconds")
    ap.add_argument("--out", default="runs/bench-gpu", help="folder for results.md and results.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    defaults = dict(steps=100, warmup=20, batch=256, sample_batch=1024, sample_steps=50, sample_repeats=2,
                    sample_warmup_steps=5, preset="small", resolution=32, channels=3, data_size=8192)
    if a.quick:
        defaults.update(steps=2, warmup=1, batch=8, sample_batch=8, sample_steps=5, sample_repeats=1,
                        sample_warmup_steps=2, preset="tiny", resolution=16, channels=1, data_size=128)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.warmup = max(1, a.warmup)
    a.steps = max(a.warmup, math.ceil(a.steps / a.warmup) * a.warmup)  # fairdiff logs every `warmup` steps
    if a.loss_window is None:
        a.loss_window = max(a.warmup, (a.steps // 2) // a.warmup * a.warmup)
    return a


def main(argv=None) -> int:
    """Run the variants in priority order within the time budget, rewriting the report after each one."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker_main(argv[1])
        return 0
    a = parse_args(argv)
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: this torch sees no CUDA device", file=sys.stderr)
        return 2
    command = "python benchmarks/bench_gpu_throughput.py " + shlex.join(argv)
    isolate = a.isolate if a.isolate != "auto" else ("process" if dev.type == "cuda" else "none")
    use_compile = a.compile == "on" or (a.compile == "auto" and dev.type == "cuda")
    vs = variants()
    if a.only:
        names = {s.strip() for s in a.only.split(",") if s.strip()}
        unknown = names - {v.name for v in vs}
        if unknown:
            print(f"--only: unknown variants {sorted(unknown)}; known: {[v.name for v in vs]}", file=sys.stderr)
            return 2
        vs = [v for v in vs if v.name in names]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = _env(a)
    results: dict[str, dict] = {}
    t_start = time.time()
    where = "each in its own process" if isolate == "process" else "in this process"
    print(f"command: {command}\ndevice: {env['device']}; variants run {where}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)

        def write(done: bool) -> str:
            _derive(results, vs)
            _image_agreement(results, vs, work)
            md = render(a, results, vs, env, command, done)
            (out / "results.md").write_text(md, encoding="utf-8")
            payload = {"command": command, "env": env, "args": {k: v for k, v in vars(a).items() if k != "worker"},
                       "complete": done, "variants": [asdict(v) for v in vs], "results": results,
                       "summary": summary(results, vs, gpu=dev.type == "cuda")}
            (out / "results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
            return md

        for v in vs:
            left = a.budget_s - (time.time() - t_start)
            if v.compiles and not use_compile:
                results[v.name] = {"status": "skipped (compile off: --compile on to include)"}
            elif left < 15:
                results[v.name] = {"status": "skipped (time budget)"}
            else:
                t0 = time.time()
                if isolate == "process":
                    res = _spawn(a, v, work / v.name, min(left, a.variant_timeout_s))
                else:
                    try:
                        res = {"status": "ok", **run_worker(a, v, work / v.name)}
                    except Exception as e:  # one failing option is a table row, not the end of the run
                        traceback.print_exc()
                        res = {"status": _failure(e)}
                    _reset_in_process()
                res["wall_s"] = round(time.time() - t0, 1)
                results[v.name] = res
                shown = f"{res['img_per_s']:,.1f} img/s" if "img_per_s" in res else res.get("status")
                print(f"[{time.time() - t_start:6.1f} s] {v.name}: {shown}", flush=True)
            write(False)
        md = write(True)
    print()
    print(md)
    print(f"written: {out / 'results.md'} and {out / 'results.json'}")
    print(f"command: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
