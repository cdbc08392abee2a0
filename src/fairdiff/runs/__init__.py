"""Run folders: their layout, and reading / writing the configs, models and samples they hold.

This layer sits just above :mod:`fairdiff.models` (it loads a latent model's VAE through it) and below methods,
training, sampling, evaluation, bench and the CLI, which all read and write run folders through it.

A run folder (``fairdiff train``)::

    RUN/
      .fairdiff.json     marker: this folder is fairdiff's own run (fairdiff.utils.outputs)
      config.yaml        the RunConfig it was trained with               -> read_run_config
      manifest.json      versions, data fingerprint, timings (training)
      stats.jsonl        one line per logged step (training)
      checkpoint-N/      resumable training state, safetensors + JSON only (fairdiff.training.checkpoint)
      model/             the finished model, a diffusers DDPMPipeline folder -> fairdiff.runs.models
        unet/ scheduler/ model_index.json [vae/] [indicator/ ...]
      samples/           the default samples folder                     -> fairdiff.runs.samples
        samples.npz seedNNNNNN.png grid.png meta.json .fairdiff.json
      metrics.json, report.md, shares.png, samples.png   written by ``fairdiff evaluate``

An ``sd-finetune`` run has ``sd.json`` (base folder, prompts; :func:`is_sd_run`) and its ``model/`` holds the LoRA
weights and objective modules instead of a DDPM pipeline.
"""

from fairdiff.runs.folder import (
    CONFIG_FILE,
    MODEL_DIR,
    SAMPLES_DIR,
    SD_META,
    atomic_dir_replace,
    is_sd_run,
    logged_training_seconds,
    read_run_config,
)
from fairdiff.runs.models import (
    EXPORT_LEGACY,
    export_diffusers,
    load_model_checked,
    load_model_vae,
    load_module_state,
    load_run_model,
    model_dir,
    model_fingerprint,
    num_train_timesteps,
    save_module,
    write_model_folder,
)
from fairdiff.runs.samples import (
    LEGACY_SAMPLES,
    SAMPLES_KIND,
    load_samples,
    prepare_samples_dir,
    read_samples_meta,
    write_samples,
)

__all__ = [
    "CONFIG_FILE", "MODEL_DIR", "SAMPLES_DIR", "SD_META", "atomic_dir_replace", "is_sd_run", "read_run_config",
    "logged_training_seconds",
    "EXPORT_LEGACY", "export_diffusers", "load_model_checked", "load_model_vae", "load_module_state",
    "load_run_model", "model_dir", "model_fingerprint", "num_train_timesteps", "save_module", "write_model_folder",
    "LEGACY_SAMPLES", "SAMPLES_KIND", "load_samples", "prepare_samples_dir", "read_samples_meta", "write_samples",
]
