"""The trainer: one loop for every method, reading top to bottom.

    for each optimizer step:
        for each micro-batch (gradient accumulation):
            loss = objective.loss(unet, batch, noise_scheduler, generator) / accum
            backward
        clip, optimizer step, LR schedule step, EMA update
        log / sample grid / checkpoint

Everything random in a step comes from generators derived from (seed, step, rank) and the data order is a
function of (seed, position), so a resumed run continues exactly where it stopped.

The run folder is locked while training (one writer). Checkpoints hold safetensors and JSON only
(training/state.py). SIGINT / SIGTERM finish the step, save a checkpoint and stop; a loss or weights that turn
inf / nan stop the run with one line before anything non-finite is logged or saved.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fairdiff.training.steps import optimizer_step, record_parts, window_means
from fairdiff.config import RunConfig, save_config, validate
from fairdiff.data import PreparedData, prepare_data
from fairdiff.errors import ConfigError, FairdiffError
from fairdiff.data.clusters import cluster_agreement, cluster_groups
from fairdiff.methods import DataInfo, Objective, build_objective
from fairdiff.methods.registry import describe as describe_method, uses_clusters
from fairdiff.models import build_noise_scheduler, build_sampling_scheduler, build_unet
from fairdiff.models.lora import add_unet_lora, merge_lora
from fairdiff.training.checkpoint import (
    atomic_dir_replace,
    latest_checkpoint,
    load_run_model,
    prepare_run_dir,
    prune_checkpoints,
    resolve_resume,
    write_file_list,
    write_model_folder,
)
from fairdiff.training.state import load_training_state, save_training_state
from fairdiff.utils.io import append_jsonl, atomic_write_text, read_json, read_jsonl, write_json
from fairdiff.utils.seed import derive_seed, make_generator, seed_everything

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    seconds: float


def batch_indices(n: int, batch_size: int, position: int, seed: int) -> np.ndarray:
    """Indices of the ``batch_size`` examples at ``position`` in an endless stream of seeded epochs."""
    out = []
    start = position * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start, n)
        perm = np.random.default_rng(derive_seed(seed, "epoch", epoch)).permutation(n)
        take = perm[offset : offset + batch_size - len(out)]
        out.extend(take.tolist())
        start += len(take)
    return np.asarray(out, dtype=np.int64)


class DeviceBatches:
    """:func:`batch_indices` served from the accelerator (``train.data_on_device``).

    Each epoch's permutation (the same one ``batch_indices`` draws) is copied to ``device`` once, so picking a
    batch is a slice there, with no host work or host->device copy per step. Only the newest epochs are kept.
    """

    def __init__(self, n: int, seed: int, device: torch.device) -> None:
        self.n, self.seed, self.device = n, seed, device
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                del self._perms[min(self._perms)]
            perm = np.random.default_rng(derive_seed(self.seed, "epoch", epoch)).permutation(self.n)
            self._perms[epoch] = torch.from_numpy(perm).to(self.device)
        return self._perms[epoch]

    def __call__(self, batch_size: int, position: int) -> torch.Tensor:
        """The indices ``batch_indices(n, batch_size, position, seed)`` gives, as a tensor on ``device``."""
        parts, start, need = [], position * batch_size, batch_size
        while need:
            epoch, offset = divmod(start, self.n)
            take = min(need, self.n - offset)
            parts.append(self._perm(epoch)[offset : offset + take])
            start, need = start + take, need - take
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def _tracker() -> str | None:
    try:
        import tensorboard  # noqa: F401

        return "tensorboard"
    except ImportError:
        return None


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    data: PreparedData | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train the denoiser of ``cfg`` with its method's objective into ``run_dir``.

    ``resume='latest'`` continues from the newest ``checkpoint-N`` (or starts fresh if there is none);
    ``overwrite`` removes an existing run first. ``data`` may be passed to reuse a prepared split.
    ``stop_after`` ends this invocation after that many optimizer steps (with a checkpoint), as if interrupted;
    the run then continues with ``resume='latest'``.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    validate(cfg)  # a config built in code gets the same checks as one read from YAML
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"--stop-after: must be at least 1, got {stop_after}")
    run_dir = Path(run_dir)
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        log_with=_tracker(),
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    # the folder is checked before any work and locked (one writer) until this function returns
    lock = prepare_run_dir(run_dir, cfg, resume, overwrite) if accelerator.is_main_process else None
    try:
        return _train(cfg, run_dir, accelerator, resume=resume, quiet=quiet, data=data, stop_after=stop_after)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: RunConfig, run_dir: Path, accelerator, *, resume: str | None, quiet: bool,
           data: PreparedData | None, stop_after: int | None) -> TrainResult:
    """The body of :func:`train`, run while the run folder is locked."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    tc, main = cfg.train, accelerator.is_main_process
    accelerator.wait_for_everyone()
    ckpt = resolve_resume(run_dir, resume, warn=main)
    seed_everything(derive_seed(tc.seed, "init"))

    # ---- data
    data = data or prepare_data(cfg.data)
    groups = data.train_groups.clone()
    num_groups = data.num_groups
    manifest = dict(data.manifest)
    if uses_clusters(cfg.method):
        k = cfg.method.num_clusters or data.num_groups
        clusters = cluster_groups(data.train_images, k, seed=tc.seed)
        manifest["clusters"] = {
            "k": k,
            "counts": np.bincount(clusters, minlength=k).tolist(),
            "nmi_with_attribute": cluster_agreement(clusters, data.train_groups.numpy()),
        }
        groups, num_groups = torch.from_numpy(clusters), k

    # ---- latent space (model.vae, see training/latent.py): train on frozen-VAE latents instead of pixels
    images, vae = data.train_images, None
    if cfg.model.vae:
        from fairdiff.training.latent import encode_dataset

        vae, images = encode_dataset(cfg.model.vae, data.train_images, accelerator.device)
    # ---- model, objective, optimizer
    c, h, _ = images.shape[1:]
    n_cls = data.num_groups if cfg.model.conditional else None
    if cfg.model.pretrained:
        unet, _ = load_run_model(cfg.model.pretrained)
        if unet.config.sample_size != h or unet.config.in_channels != c:
            raise ConfigError(
                f"model.pretrained: {cfg.model.pretrained} is {unet.config.in_channels}x{unet.config.sample_size}"
                f" but the data is {c}x{h}"
            )
    else:
        unet = build_unet(cfg.model.preset, h, c, n_cls)
    noise_scheduler = build_noise_scheduler(cfg.model.num_train_timesteps, cfg.model.beta_schedule,
                                            clip_sample=vae is None)  # latents are not bounded to [-1, 1]
    objective: Objective = build_objective(cfg.method)
    objective.setup(DataInfo(num_groups, np.bincount(groups.numpy(), minlength=num_groups).tolist(), (c, h, h)))
    ref_facts = {}
    if getattr(objective, "uses_reference", False):  # tiw / iw: fit d(x_t, t) on data.reference first (no labels)
        from fairdiff.training.discriminator import fit_for_objective

        ref_facts = fit_for_objective(objective, cfg, data, images, noise_scheduler, accelerator.device)
    facts = {**ref_facts, **objective.prepare(unet, images, groups)}
    if main:  # written once data, model and objective are known to fit (a failed start leaves the folder free)
        save_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / "manifest.json", manifest)
        if facts:
            write_json(run_dir / "method.json", facts)
    if tc.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if cfg.model.lora:  # fine-tune low-rank adapters only; merged into the U-Net when the model is saved
        unet = add_unet_lora(unet, cfg.model.unet_lora_targets, cfg.model.lora_rank, cfg.model.lora_alpha)
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
    ema = EMAModel(unet.parameters(), decay=tc.ema_decay, **({"foreach": True} if fused else {})) if tc.ema else None
    names = list(extra)
    prepared = accelerator.prepare(unet, optimizer, lr_sched, *extra.values())
    unet, optimizer, lr_sched = prepared[:3]
    extra = dict(zip(names, prepared[3:]))
    objective.bind_modules(extra)
    # the objective calls ``denoiser``; accelerate keeps (and checkpoints) the uncompiled ``unet``, which shares
    # its parameters, so checkpoints and the saved model never carry torch.compile's ``_orig_mod.`` prefix
    denoiser = torch.compile(unet, mode=tc.compile_mode) if tc.compile else unet
    cudagraphs = tc.compile and tc.compile_mode in ("reduce-overhead", "max-autotune")
    if ema is not None:
        ema.to(accelerator.device)
    # what a checkpoint holds (training/state.py: safetensors and JSON only)
    state = dict(modules={"model": accelerator.unwrap_model(unet),
                          **{f"module-{k}": accelerator.unwrap_model(m) for k, m in extra.items()}},
                 optimizer=optimizer, lr_sched=lr_sched, ema=ema, scaler=accelerator.scaler,
                 rank=accelerator.process_index)

    # ---- resume
    start = 0
    if ckpt is not None:
        start = load_training_state(ckpt, **state)
        if ema is not None:  # the shadow parameters are read onto the CPU: back to the device
            ema.to(accelerator.device)
        if main and (run_dir / "stats.jsonl").exists():  # drop log rows written after the checkpoint
            rows = [r for r in read_jsonl(run_dir / "stats.jsonl") if r.get("step", 0) <= start]
            atomic_write_text(run_dir / "stats.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    if accelerator.trackers == [] and _tracker() and main:
        accelerator.init_trackers("train")

    # ---- loop
    world, rank = accelerator.num_processes, accelerator.process_index
    global_bs = tc.batch_size * world
    n = len(images)
    conds = data.train_groups
    device = accelerator.device
    batches = None
    if tc.data_on_device:  # the whole training tensor and its labels live on the accelerator; batches index there
        images, groups, conds = images.to(device), groups.to(device), conds.to(device)
        batches = DeviceBatches(n, tc.seed, device)
    t0 = time.time()
    window: dict[str, list] = {}  # detached loss tensors (or floats) since the last log row
    last_loss = math.nan
    bar = None
    if main and not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc=f"train {cfg.method.name}", unit="step")
    unet.train()
    for m in extra.values():
        m.train()
    end = tc.steps if stop_after is None else min(tc.steps, stop_after)
    health = _Health(accelerator, params)
    with _StopOnSignal() as stop:
        for step in range(start, end):
            for micro in range(tc.grad_accum):
                pos = step * tc.grad_accum + micro
                mine = slice(rank * tc.batch_size, (rank + 1) * tc.batch_size)
                if batches is not None:
                    idx_t = batches(global_bs, pos)[mine]
                else:
                    idx_t = torch.from_numpy(batch_indices(n, global_bs, pos, tc.seed)[mine])
                pixels = images[idx_t].to(device)
                if tc.channels_last:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                batch = {"pixel_values": pixels, "group": groups[idx_t].to(device)}
                if cfg.model.conditional:
                    batch["class_labels"] = conds[idx_t].to(device)
                gen = make_generator(tc.seed, "noise", pos, rank)
                last = micro == tc.grad_accum - 1
                ctx = accelerator.no_sync(unet) if (not last and world > 1) else _nullcontext()
                if cudagraphs:  # a new iteration: CUDA-graph outputs of the previous one may be overwritten
                    torch.compiler.cudagraph_mark_step_begin()
                with ctx:
                    out = objective.loss(denoiser, batch, noise_scheduler, gen)
                    accelerator.backward(out.total / tc.grad_accum)
                record_parts(window, out, sync=False)  # floats once per log interval, not a host sync per step
                health.record(out.total, step + 1)
            optimizer_step(accelerator, params, optimizer, lr_sched, tc)
            if ema is not None:
                ema.step(accelerator.unwrap_model(unet).parameters())
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
                _sample_grid(cfg, _ema_copy(accelerator.unwrap_model(unet), ema), noise_scheduler,
                             run_dir / "grids" / f"step-{done:07d}.png", vae=vae)
            if save_now:
                _save_checkpoint(accelerator, run_dir, done, tc.checkpoint_total_limit, state)
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

    # ---- final model (EMA weights) in diffusers format
    accelerator.wait_for_everyone()
    if main:
        final = merge_lora(_ema_copy(accelerator.unwrap_model(unet), ema))
        mods = {k: (accelerator.unwrap_model(m), getattr(objective, "module_configs", {}).get(k, {}))
                for k, m in extra.items()}
        write_model_folder(run_dir / "model", final, noise_scheduler, mods, vae=vae)
        _sample_grid(cfg, final, noise_scheduler, run_dir / "train_grid.png", vae=vae)
        _write_train_report(cfg, run_dir, manifest)
    accelerator.end_training()
    return TrainResult(run_dir, tc.steps, last_loss, time.time() - t0)


class TrainingStopped(KeyboardInterrupt):
    """Training ended by SIGINT / SIGTERM after saving a checkpoint at ``step``; the message says so."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"stopped at step {step}; checkpoint saved; continue with --resume latest")
        self.step, self.signum = step, signum


class TrainingDiverged(FairdiffError):
    """The training loss (or the weights) became inf / nan; nothing after the last good checkpoint is saved."""


class _StopOnSignal:
    """While the loop runs, SIGINT / SIGTERM only set a flag: the step finishes, a checkpoint is saved, then the
    run stops. A second signal acts at once (the previous handlers are back after the first)."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict = {}

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for sig, old in self._old.items():
            if old is not None:
                signal.signal(sig, old)
        self._old = {}

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False

    def requested(self, accelerator) -> bool:
        """Whether any process was signalled (all processes agree, so they stop at the same step)."""
        if accelerator.num_processes == 1:
            return bool(self.signum)
        flag = torch.tensor([float(bool(self.signum))], device=accelerator.device)
        return bool(accelerator.gather(flag).max().item())


class _Health:
    """Notes the first step whose loss is inf / nan without a host sync per step; :meth:`check` runs before
    anything is logged or saved, so a diverged run stops with one line and keeps its last good checkpoint."""

    def __init__(self, accelerator, params: list) -> None:
        self.accelerator, self.params = accelerator, params
        self.first_bad = torch.zeros((), dtype=torch.long, device=accelerator.device)  # 0 = none yet

    def record(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach().float())
        self.first_bad = self.first_bad + ((self.first_bad == 0) & bad).long() * step

    def check(self, step: int, run_dir: Path, weights: bool) -> None:
        found = self.accelerator.gather(self.first_bad.reshape(1))
        found = found[found > 0]
        what = None
        if len(found):
            what = f"the training loss became inf/nan at step {int(found.min())}"
        elif weights and not bool(torch.stack([torch.isfinite(p.detach()).all() for p in self.params]).all()):
            what = f"the weights became inf/nan by step {step}"
        if what:
            ck = latest_checkpoint(run_dir)
            kept = f"the last good checkpoint, {ck.name}, is kept" if ck else "no checkpoint was saved"
            raise TrainingDiverged(f"{what}; {kept}; lower train.lr or check the data")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _ema_copy(unet, ema):
    """A CPU fp32 copy with the EMA weights, in the default memory layout (what is saved and sampled)."""
    model = copy.deepcopy(unet).to("cpu").float().to(memory_format=torch.contiguous_format)
    if ema is not None:
        ema.copy_to(model.parameters())
    return model.eval()


def _sample_grid(cfg: RunConfig, unet, noise_scheduler, path: Path, n: int = 16, vae=None) -> None:
    from fairdiff.sampling import sample, save_grid, to_uint8

    sched = build_sampling_scheduler("ddim", noise_scheduler.config)
    labels = [i % len(cfg.data.groups) for i in range(n)] if cfg.model.conditional else None
    dev = next(unet.parameters()).device
    imgs = sample(unet, sched, range(n), batch_size=n, num_steps=min(cfg.sample.steps, 25),
                  class_labels=labels, device=dev, progress=False, clip_output=vae is None)
    if vae is not None:  # latent model: decode through the VAE
        from fairdiff.models.vae import decode

        imgs = decode(vae, imgs)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(to_uint8(imgs), path, nrow=8)


def _save_checkpoint(accelerator, run_dir: Path, step: int, limit: int, state: dict) -> None:
    """The training state into ``checkpoint-N.tmp``, its file list last, then an atomic rename; old ones pruned."""
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f"checkpoint-{step}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed while saving
    accelerator.wait_for_everyone()
    save_training_state(tmp, step=step, main=accelerator.is_main_process, **state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_file_list(tmp, step)
        atomic_dir_replace(tmp, final)
        prune_checkpoints(run_dir, max(1, limit))
    accelerator.wait_for_everyone()


def _write_train_report(cfg: RunConfig, run_dir: Path, manifest: dict) -> None:
    rows = read_jsonl(run_dir / "stats.jsonl") if (run_dir / "stats.jsonl").exists() else []
    last = rows[-1] if rows else {}
    lines = [
        f"# Training run `{cfg.name}`",
        "",
        f"- method: {describe_method(cfg.method, bold=True)}",
        f"- data: {cfg.data.source}, attribute `{manifest['attribute']}`, groups {manifest['groups']}, "
        f"training counts {manifest['train_counts']} (shares {manifest['shares']}), "
        f"held-out counts {manifest['heldout_counts']}, seed {manifest['seed']}",
        f"- model: preset `{cfg.model.preset}`, {cfg.data.resolution}x{cfg.data.resolution}"
        + (", conditional on the group" if cfg.model.conditional else "")
        + (f", in the latent space of the VAE `{cfg.model.vae}`" if cfg.model.vae else ""),
        f"- optimizer steps: {last.get('step', 0)} (batch {cfg.train.batch_size} x accumulation "
        f"{cfg.train.grad_accum}), final loss {last.get('loss', float('nan')):.4f}, "
        f"time {last.get('elapsed_s', 0):.1f} s",
    ]
    if "clusters" in manifest:
        cl = manifest["clusters"]
        lines.append(f"- groups from k-means clusters (k={cl['k']}, counts {cl['counts']}); "
                     f"NMI with the true attribute {cl['nmi_with_attribute']:.3f}")
    if (run_dir / "method.json").exists():  # tiw / iw: the discriminator's calibration per timestep bucket
        from fairdiff.training.discriminator import report_lines

        lines += report_lines(read_json(run_dir / "method.json"))
    lines += ["", "Samples (EMA weights, DDIM 25 steps):", "", "![samples](train_grid.png)", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))
