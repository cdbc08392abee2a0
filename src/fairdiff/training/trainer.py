"""The trainer: one loop for every method and every model, reading top to bottom.

    for each optimizer step:
        for each micro-batch (gradient accumulation):
            loss = objective.loss(model, batch, noise_scheduler, generator) / accum
            backward
        clip, optimizer step, LR schedule step, EMA update
        log / sample grid / checkpoint

The model comes from an adapter (training/adapters.py): a pixel or latent U-Net (the default), or a
prompt-conditioned Stable-Diffusion U-Net with LoRA (training/sd_lora.py), so checkpoints, resume, EMA, logging,
``stop_after`` and the speed options are written once, here.

Everything random in a step comes from generators derived from (seed, step, rank) and the data order is a
function of (seed, position), so a resumed run continues exactly where it stopped.

The run folder is locked while training (one writer). Checkpoints hold safetensors and JSON only
(training/state.py). SIGINT / SIGTERM finish the step, save a checkpoint and stop; a loss or weights that turn
inf / nan stop the run with one line before anything non-finite is logged or saved.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fairdiff.config import RunConfig, save_config
from fairdiff.data import PreparedData, prepare_data
from fairdiff.data.clusters import cluster_agreement, cluster_groups
from fairdiff.errors import ConfigError
from fairdiff.methods.registry import uses_clusters, uses_reference
from fairdiff.methods import DataInfo, Objective, build_objective
from fairdiff.training.adapters import ModelAdapter, UNetAdapter
from fairdiff.training.batches import DeviceBatches, batch_indices, drawn_indices
from fairdiff.training.checkpoint import checkpoint_step, prepare_run_dir, resolve_resume
from fairdiff.training.memory import check_training_memory
from fairdiff.training.loop import (
    Health,
    StopOnSignal,
    TrainingDiverged,
    TrainingStopped,
    nullcontext,
    save_checkpoint,
    tracker,
    trim_stats,
)
from fairdiff.training.state import load_training_state
from fairdiff.training.steps import optimizer_step, record_parts, window_means
from fairdiff.utils.io import append_jsonl, write_json
from fairdiff.utils.seed import derive_seed, make_generator, seed_everything

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "train", "batch_indices", "DeviceBatches", "TrainingStopped", "TrainingDiverged"]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    seconds: float


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    data: PreparedData | None = None,
    stop_after: int | None = None,
    adapter: ModelAdapter | None = None,
) -> TrainResult:
    """Train the denoiser of ``cfg`` with its method's objective into ``run_dir``.

    ``resume='latest'`` continues from the newest ``checkpoint-N`` (or starts fresh if there is none);
    ``overwrite`` removes an existing run first. ``data`` may be passed to reuse a prepared split.
    ``stop_after`` ends this invocation after that many optimizer steps (with a checkpoint), as if interrupted;
    the run then continues with ``resume='latest'``. ``adapter``: the model (default :class:`UNetAdapter`, or for a
    config with ``text.sd`` the Stable Diffusion LoRA adapter).
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if adapter is None and cfg.text.sd:  # a text-to-image run: the SD folder's U-Net with LoRA under prompts
        from fairdiff.training.sd_lora import SDLoraAdapter, text_config

        cfg = text_config(cfg, cfg.text.sd)
        adapter = SDLoraAdapter.from_config(cfg)
    adapter = adapter or UNetAdapter()
    adapter.check(cfg)  # a config built in code gets the same checks as one read from YAML
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after: must be at least 1, got {stop_after}")
    check_mixed_precision(cfg.train.mixed_precision)
    check_training_memory(cfg, getattr(adapter, "sd_path", None))  # a batch that cannot fit: one line, now
    run_dir = Path(run_dir)
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        log_with=tracker(),
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    # the folder is checked before any work and locked (one writer) until this function returns
    lock = None
    if accelerator.is_main_process:
        lock = prepare_run_dir(run_dir, cfg, resume, overwrite, kind=adapter.kind, legacy=adapter.legacy,
                               inputs=adapter.inputs())
    try:
        adapter.open(cfg)
        if resume is not None:
            adapter.check_resume(run_dir)
        return _train(cfg, run_dir, accelerator, adapter, resume=resume, quiet=quiet, data=data,
                      stop_after=stop_after)
    finally:
        if lock is not None:
            lock.release()


def check_mixed_precision(mixed_precision: str) -> None:
    """fp16 needs a GPU: on the CPU accelerate would silently train in fp32 while config.yaml says fp16.

    Checked before the Accelerator is made (accelerate fixes the precision once per process)."""
    if mixed_precision != "fp16":
        return
    from accelerate.utils import parse_flag_from_env

    mps = getattr(torch.backends, "mps", None)
    gpu = torch.cuda.is_available() or bool(mps and mps.is_available())
    if not gpu or parse_flag_from_env("ACCELERATE_USE_CPU"):
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU and none is available here (training would run "
                          "in fp32); use train.mixed_precision=no or bf16 on the CPU")


def _train(cfg: RunConfig, run_dir: Path, accelerator, adapter: ModelAdapter, *, resume: str | None, quiet: bool,
           data: PreparedData | None, stop_after: int | None) -> TrainResult:
    """The body of :func:`train`, run while the run folder is locked."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    tc, main = cfg.train, accelerator.is_main_process
    accelerator.wait_for_everyone()
    ckpt = resolve_resume(run_dir, resume, warn=main)
    if ckpt is not None:
        checkpoint_step(ckpt, tc.steps)  # a forged or mislabelled step is refused before any work
    seed_everything(derive_seed(tc.seed, "init"))

    # ---- data
    data = data or prepare_data(cfg.data)
    groups = data.train_groups.clone()
    num_groups = data.num_groups
    manifest = dict(data.manifest)
    if uses_clusters(cfg.method):
        k = cfg.method.num_clusters or data.num_groups
        how = cfg.method.clustering
        clusters = cluster_groups(data.train_images, k, seed=tc.seed, method=how)
        manifest["clusters"] = {
            "k": k, "method": how,
            "counts": np.bincount(clusters, minlength=k).tolist(),
            "nmi_with_attribute": cluster_agreement(clusters, data.train_groups.numpy()),
        }
        groups, num_groups = torch.from_numpy(clusters), k

    # ---- the training tensor (pixels, or latents of a frozen VAE), model, objective, optimizer
    images = adapter.training_tensor(cfg, data, accelerator.device)
    unet = adapter.build(cfg, images, data.num_groups if cfg.model.conditional else None)
    noise_scheduler = adapter.noise_scheduler(cfg)
    objective: Objective = adapter.wrap_objective(build_objective(cfg.method), cfg)
    objective.setup(DataInfo(num_groups, np.bincount(groups.numpy(), minlength=num_groups).tolist(),
                             tuple(images.shape[1:])))
    ref_facts = {}
    if uses_reference(cfg.method):  # tiw / iw: fit d(x_t, t) on data.reference first (no labels)
        from fairdiff.training.discriminator import fit_for_objective

        ref_facts = fit_for_objective(objective, cfg, data, images, noise_scheduler, accelerator.device,
                                      encode=adapter.encode)
    facts = {**ref_facts, **objective.prepare(unet, images, groups)}
    if main:  # written once data, model and objective are known to fit (a failed start leaves the folder free)
        save_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / "manifest.json", manifest)
        for name, content in adapter.run_files(cfg, images).items():
            write_json(run_dir / name, content)
        if facts:
            write_json(run_dir / "method.json", facts)
    unet = adapter.finish(unet, cfg, accelerator.device)  # gradient checkpointing, LoRA, precision
    extra = objective.modules()
    # ---- performance options (docs/performance.md); each is off by default
    if tc.channels_last:  # NHWC weights: cuDNN's fastest convolution layout; checkpoints still load either way
        unet.to(memory_format=torch.channels_last)
    fused = tc.fused_optimizer and accelerator.device.type == "cuda"
    if tc.fused_optimizer and not fused:
        log.warning("train.fused_optimizer: ignored on %s (fused AdamW / foreach EMA are used on CUDA only)",
                    accelerator.device.type)
    if fused:  # fused AdamW wants its parameters on the GPU when it is built
        unet.to(accelerator.device)
        for m in extra.values():
            m.to(accelerator.device)
    params = [p for p in unet.parameters() if p.requires_grad] + [p for m in extra.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(
        params, lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2), weight_decay=tc.weight_decay,
        **({"fused": True} if fused else {}),
    )
    lr_sched = get_scheduler(
        tc.lr_schedule, optimizer, num_warmup_steps=tc.warmup_steps, num_training_steps=tc.steps
    )
    # foreach: one kernel per group of tensors instead of a Python loop over every parameter
    ema = EMAModel(adapter.ema_parameters(unet), decay=tc.ema_decay,
                   **({"foreach": True} if fused else {})) if tc.ema else None
    names = list(extra)
    prepared = accelerator.prepare(unet, optimizer, lr_sched, *extra.values())
    unet, optimizer, lr_sched = prepared[:3]
    extra = dict(zip(names, prepared[3:]))
    objective.bind_modules(extra)
    inner = accelerator.unwrap_model(unet)
    # the objective calls ``denoiser``; accelerate keeps (and checkpoints) the uncompiled ``unet``, which shares
    # its parameters, so checkpoints and the saved model never carry torch.compile's ``_orig_mod.`` prefix
    denoiser = torch.compile(unet, mode=tc.compile_mode) if tc.compile else unet
    cudagraphs = tc.compile and tc.compile_mode in ("reduce-overhead", "max-autotune")
    if ema is not None:
        ema.to(accelerator.device)
    # what a checkpoint holds (training/state.py: safetensors and JSON only)
    state = dict(modules={"model": adapter.checkpoint_module(inner),
                          **{f"module-{k}": accelerator.unwrap_model(m) for k, m in extra.items()}},
                 optimizer=optimizer, lr_sched=lr_sched, ema=ema, scaler=accelerator.scaler,
                 rank=accelerator.process_index)

    # ---- resume
    start = 0
    if ckpt is not None:
        start = load_training_state(ckpt, **state)
        if ema is not None:  # the shadow parameters are read onto the CPU: back to the device
            ema.to(accelerator.device)
        if main:
            trim_stats(run_dir, start)
    if accelerator.trackers == [] and tracker() and main:
        accelerator.init_trackers("train")

    # ---- loop
    world, rank = accelerator.num_processes, accelerator.process_index
    global_bs = tc.batch_size * world
    n = len(images)
    conds = data.train_groups
    device = accelerator.device
    batches = None
    draw_p = objective.draw_probabilities(groups)
    if tc.data_on_device:  # the whole training tensor and its labels live on the accelerator; batches index there
        images, groups, conds = images.to(device), groups.to(device), conds.to(device)
        batches = DeviceBatches(n, tc.seed, device)
    t0 = time.time()
    window: dict[str, list] = {}  # detached loss tensors (or floats) since the last log row
    last_loss = math.nan
    bar = None
    if main and not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc=f"{adapter.progress} {cfg.method.name}", unit="step")
    unet.train()
    for m in extra.values():
        m.train()
    end = tc.steps if stop_after is None else min(tc.steps, stop_after)
    health = Health(accelerator, params)
    with StopOnSignal() as stop:
        for step in range(start, end):
            for micro in range(tc.grad_accum):
                pos = step * tc.grad_accum + micro
                mine = slice(rank * tc.batch_size, (rank + 1) * tc.batch_size)
                if draw_p is not None:  # the objective draws its batches (reweight with balance=resample)
                    idx_t = torch.from_numpy(drawn_indices(draw_p, global_bs, pos, tc.seed)[mine]).to(groups.device)
                elif batches is not None:
                    idx_t = batches(global_bs, pos)[mine]
                else:
                    idx_t = torch.from_numpy(batch_indices(n, global_bs, pos, tc.seed)[mine])
                pixels = images[idx_t].to(device)
                if tc.channels_last:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                batch = {"pixel_values": pixels, "group": groups[idx_t].to(device)}
                if cfg.model.conditional:
                    batch["class_labels"] = conds[idx_t].to(device)
                adapter.on_batch(inner, idx_t)
                gen = make_generator(tc.seed, "noise", pos, rank)
                last = micro == tc.grad_accum - 1
                ctx = accelerator.no_sync(unet) if (not last and world > 1) else nullcontext()
                if cudagraphs:  # a new iteration: CUDA-graph outputs of the previous one may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                with ctx:
                    out = objective.loss(denoiser, batch, noise_scheduler, gen)
                    accelerator.backward(out.total / tc.grad_accum)
                record_parts(window, out, sync=False)  # floats once per log interval, not a host sync per step
                health.record(out.total, step + 1)
            optimizer_step(accelerator, params, optimizer, lr_sched, tc)
            if ema is not None:
                ema.step(adapter.ema_parameters(inner))
            done = step + 1
            if bar is not None:
                bar.update(1)
            stopping = stop.requested(accelerator)  # SIGINT / SIGTERM: this step is done; save it and stop
            log_now = done % tc.log_every == 0 or done == tc.steps
            sample_now = bool(tc.sample_every) and done % tc.sample_every == 0
            save_now = (tc.checkpoint_every and done % tc.checkpoint_every == 0) or done in (tc.steps, end) or stopping
            if log_now or sample_now or save_now:  # nothing non-finite is ever logged or saved
                health.check(done, run_dir, weights=bool(save_now))
            if log_now:
                row = window_means(window)
                if device.type == "cuda":  # elapsed_s then counts the work queued so far (throughput from the log)
                    torch.cuda.synchronize(device)
                last_loss = row.get("loss", math.nan)
                row.update(step=done, lr=lr_sched.get_last_lr()[0], elapsed_s=round(time.time() - t0, 3))
                window = {}
                if main:
                    append_jsonl(run_dir / "stats.jsonl", [row])
                    if accelerator.trackers:
                        accelerator.log({k: v for k, v in row.items() if k != "step"}, step=done)
                    if bar is not None:
                        bar.set_postfix(loss=f"{last_loss:.4f}")
            if sample_now and main:
                adapter.sample_grid(cfg, inner, ema, noise_scheduler, run_dir / "grids" / f"step-{done:07d}.png")
            if save_now:
                save_checkpoint(accelerator, run_dir, done, tc.checkpoint_total_limit, state)
            if stopping:
                if bar is not None:
                    bar.close()
                accelerator.end_training()
                raise TrainingStopped(done, stop.signum)
    if bar is not None:
        bar.close()
    if end < tc.steps:  # stopped early on purpose: the checkpoint is the result
        accelerator.end_training()
        return TrainResult(run_dir, end, last_loss, time.time() - t0)

    # ---- final model (EMA weights)
    accelerator.wait_for_everyone()
    if main:
        mods = {k: (accelerator.unwrap_model(m), objective.module_configs.get(k, {}))
                for k, m in extra.items()}
        adapter.save(run_dir, cfg, inner, ema, noise_scheduler, mods)
        adapter.report(cfg, run_dir, manifest)
    accelerator.end_training()
    return TrainResult(run_dir, tc.steps, last_loss, time.time() - t0)


def finetune_sd_lora(
    cfg: RunConfig,
    sd_path: str | Path,
    run_dir: str | Path,
    *,
    prompt: str = "a photo",
    prompts_file: str | None = None,
    prompt_groups: str | None = None,
    prompt_targets: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    data=None,
    resume: str | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Fine-tune LoRA adapters of the SD folder ``sd_path`` on ``cfg.data`` with ``cfg.method``'s objective.

    The one trainer runs it (:func:`fairdiff.training.trainer.train` with :class:`SDLoraAdapter`), so ``resume``
    and ``stop_after`` mean what they mean for ``fairdiff train``. The SD folder is the run's pretrained model:
    it is recorded as ``model.pretrained`` (what methods that fine-tune a trained model, e.g. align, ask for).
    ``prompt_groups``: a spec file giving each subset of ``data.groups`` its own prompt (data/prompt_groups.py);
    ``prompt_targets``: alignment (method align) toward a target per prompt (training/sd_align.py).
    """
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, sd=str(sd_path), prompt=prompt,
                                                            prompts_file=prompts_file, prompt_groups=prompt_groups,
                                                            prompt_targets=prompt_targets))
    from fairdiff.training.sd_lora import text_config

    return train(text_config(cfg, sd_path), run_dir, resume=resume, overwrite=overwrite, quiet=quiet, data=data,
                 stop_after=stop_after)
