"""Stable-Diffusion LoRA with DDM on tiny random SD components built here (no downloads).

The test writes its own tokenizer vocabulary, builds a small VAE / conditional U-Net / CLIP text encoder, saves them
as a diffusers StableDiffusionPipeline folder, fine-tunes U-Net + text-encoder LoRA with DDM for a few optimizer
steps, and checks that the saved LoRA is read back by ``load_lora_weights`` in full (text-encoder part included)
and changes what the pipeline generates.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from fairdiff.cli.main import main
from tests.conftest import TINY

DATA = [o for o in TINY if not o.startswith(("data.resolution", "train.batch_size"))] + [
    "data.resolution=16", "train.batch_size=2", "train.warmup_steps=0", "train.lr=1e-2", "train.log_every=1"]


def build_sd_folder(folder) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tok_dir = folder.parent / "tok"
    tok_dir.mkdir()
    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: i + 2 for i, c in enumerate(letters)})
    vocab.update({c + "</w>": i + 2 + len(letters) for i, c in enumerate(letters)})
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2,
                                                max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False
                            ).save_pretrained(str(folder), safe_serialization=True)


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    build_sd_folder(root / "base")
    run = root / "run"
    rc = main(["sd-finetune", "--sd", str(root / "base"), "--out", str(run), "--prompt", "a face", *DATA,
               "method.name=ddm", "method.alpha=0.05", "train.steps=2", "train.grad_accum=2",
               "model.lora_text_encoder=true", "-q"])
    assert rc == 0
    return root / "base", run


def test_ddm_lora_trains(sd_run):
    _, run = sd_run
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # optimizer steps, not micro-batches
    assert all(np.isfinite(r["loss"]) and "indicator" in r for r in rows)
    meta = json.loads((run / "sd.json").read_text())
    assert meta["unet_lora_targets"] == ["to_q", "to_v"]  # query/value do not exist in this U-Net: dropped
    assert meta["text_encoder_lora_targets"] == ["q_proj", "v_proj"]
    assert (run / "model" / "indicator" / "model.safetensors").is_file()


def test_lora_round_trip_changes_output(sd_run):
    from safetensors.torch import load_file

    from fairdiff.sampling.sd import load_sd_pipeline

    _, run = sd_run
    saved = load_file(str(run / "model" / "pytorch_lora_weights.safetensors"))
    te_keys = [k for k in saved if k.startswith("text_encoder.")]
    assert te_keys and any(k.startswith("unet.") for k in saved)

    base, _ = load_sd_pipeline(run, lora=False, device="cpu")
    tuned, _ = load_sd_pipeline(run, lora=True, device="cpu")
    # both parts really loaded: LoRA layers in the U-Net and in the text encoder, with alpha / r = 32 / 8
    te_lora = {n: p for n, p in tuned.text_encoder.named_parameters() if "lora_" in n}
    assert len(te_lora) == len(te_keys) and any("lora_" in n for n, _ in tuned.unet.named_parameters())
    scalings = {s for m in tuned.text_encoder.modules() for s in getattr(m, "scaling", {}).values()}
    assert scalings == {4.0}
    # the loaded text-encoder LoRA holds the trained values (B is zero at init, so it must be nonzero)
    assert all(float(p.abs().sum()) > 0 for n, p in te_lora.items() if "lora_B" in n)
    with torch.no_grad():
        ids = tuned.tokenizer(["a face"], padding="max_length", max_length=8, return_tensors="pt").input_ids
        assert not torch.allclose(base.text_encoder(ids)[0], tuned.text_encoder(ids)[0])

    def draw(pipe):
        return pipe("a face", height=16, width=16, num_inference_steps=2, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(0), output_type="np").images

    a, b = draw(base), draw(tuned)
    assert a.shape == b.shape == (1, 16, 16, 3)
    assert np.abs(a - b).max() > 1e-4


def test_sd_sample_command(sd_run, tmp_path):
    _, run = sd_run
    out = tmp_path / "s"
    assert main(["sd-sample", str(run), "--n", "2", "--steps", "2", "--out", str(out), "--device", "cpu"]) == 0
    z = np.load(out / "samples.npz")
    assert z["images"].shape == (2, 3, 16, 16) and z["images"].dtype == np.uint8
    # the generic `fairdiff sample` goes through the same pipeline for such a run; image 1 is seed 1's
    out2 = tmp_path / "s2"
    assert main(["sample", str(run), "--n", "1", "--seed", "1", "--steps", "2", "--out", str(out2), "-q",
                 "--device", "cpu"]) == 0
    np.testing.assert_array_equal(np.load(out2 / "samples.npz")["images"][0], z["images"][1])


def _one_line_error(capsys, args) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_sd_path_and_lora_target(sd_run, tmp_path, capsys):
    import shutil

    base, _ = sd_run
    common = ["--out", str(tmp_path / "r"), "-q", *DATA, "train.steps=1"]
    assert "no such folder" in _one_line_error(capsys, ["sd-finetune", "--sd", str(tmp_path / "nope"), *common])
    (tmp_path / "empty").mkdir()
    assert "not a diffusers Stable Diffusion folder" in _one_line_error(
        capsys, ["sd-finetune", "--sd", str(tmp_path / "empty"), *common])
    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    shutil.rmtree(broken / "unet")
    assert "missing component 'unet'" in _one_line_error(capsys, ["sd-finetune", "--sd", str(broken), *common])
    line = _one_line_error(capsys, ["sd-finetune", "--sd", str(base), *common, "model.lora_targets=[to_q,nope]"])
    assert "nope" in line and "not found in the U-Net" in line


def test_prompts_file_checkpointing_and_baseline(sd_run, tmp_path):
    base, _ = sd_run
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a face\n\na smiling face\n")
    run = tmp_path / "r"
    assert main(["sd-finetune", "--sd", str(base), "--out", str(run), "--prompts-file", str(prompts), "-q", *DATA,
                 "method.name=baseline", "train.steps=1", "train.gradient_checkpointing=true"]) == 0
    meta = json.loads((run / "sd.json").read_text())
    assert meta["prompts"] == ["a face", "a smiling face"] and meta["text_encoder_lora_targets"] == []
    assert not (run / "model" / "indicator").exists()


def test_sd_init_builds_a_loadable_folder(tmp_path, capsys):
    from fairdiff.models.sd import load_sd

    out = tmp_path / "tiny-sd"
    assert main(["sd-init", str(out), "--resolution", "16"]) == 0
    sd = load_sd(out)
    assert sd.unet.config.cross_attention_dim == sd.text_encoder.config.hidden_size
    ids = sd.tokenizer(["a face"], padding="max_length", max_length=sd.tokenizer.model_max_length).input_ids[0]
    assert ids[0] == 0 and 1 in ids and len(set(ids)) > 3  # bos, characters, eos / padding
    assert "already holds a fairdiff sd folder; use --overwrite" in _one_line_error(capsys, ["sd-init", str(out)])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"mine")
    assert "not written by fairdiff" in _one_line_error(capsys, ["sd-init", str(tmp_path / "mine"), "--overwrite"])
    assert (tmp_path / "mine" / "photo.jpg").read_bytes() == b"mine"
