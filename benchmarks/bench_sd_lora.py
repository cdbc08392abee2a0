"""Step time and peak memory of a DDM-LoRA step versus a plain LoRA step on an SD-shaped U-Net.

Both variants run in the same process on the same randomly initialised UNet2DConditionModel with the same peft
LoRA (rank 8, alpha 32, to_q/to_v), the same batch and the same fixed prompt embedding; the only difference is the
objective: ``BaselineObjective`` (noise MSE) or ``DDMObjective`` (noise MSE + indicator MLP on eps_hat). Timed
rounds alternate between the two so that drift on a shared machine hits both alike; the median step time of each
and their ratio are printed. On CUDA the peak memory of each variant is ``torch.cuda.max_memory_allocated``; on
the CPU no allocator statistics exist, so only the indicator's extra parameter + Adam state bytes are reported.

    python benchmarks/bench_sd_lora.py                      # CPU-sized model (a few minutes on 2 cores)
    python benchmarks/bench_sd_lora.py --preset sd15 --batch 4 --precision fp16   # SD 1.5 U-Net shape, GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

PRESETS = {
    # a small SD-shaped U-Net for CPU runs: 3 levels, cross-attention in the first two, latents 4x16x16
    "cpu": {"widths": (32, 64, 64), "cross": 64, "latent": 16, "heads": 8},
    # the Stable Diffusion 1.5 U-Net shape (860 M parameters), latents 4x64x64 (512 px images)
    "sd15": {"widths": (320, 640, 1280, 1280), "cross": 768, "latent": 64, "heads": 8},
}


class _FixedText(nn.Module):
    """Stands in for a frozen text encoder: the same embedding for every prompt id."""

    def __init__(self, length: int, width: int) -> None:
        super().__init__()
        self.register_buffer("emb", torch.randn(1, length, width))

    def forward(self, ids: torch.Tensor):
        return (self.emb.expand(len(ids), -1, -1),)


def build(preset: str, device: torch.device):
    from diffusers import UNet2DConditionModel

    p = PRESETS[preset]
    n = len(p["widths"])
    unet = UNet2DConditionModel(
        sample_size=p["latent"], in_channels=4, out_channels=4, block_out_channels=p["widths"], layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=p["cross"], attention_head_dim=p["heads"],
        norm_num_groups=32 if p["widths"][0] >= 64 else 8,
    )
    return unet.to(device), _FixedText(77 if preset == "sd15" else 16, p["cross"]).to(device), p


def run(args) -> dict:
    from diffusers import DDPMScheduler

    from fairdiff.methods import BaselineObjective, DataInfo
    from fairdiff.methods.ddm import DDMObjective
    from fairdiff.training.sd_lora import PromptConditionedUNet, add_lora
    from fairdiff.utils.seed import make_generator

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    unet, text, p = build(args.preset, dev)
    add_lora(unet, ["to_q", "to_v"], 8, 32.0)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    wdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    if wdtype != torch.float32:  # frozen weights in half precision, LoRA weights in fp32 (as sd-finetune does)
        from diffusers.training_utils import cast_training_params

        unet.to(dtype=wdtype)
        cast_training_params(unet, dtype=torch.float32)
    model = PromptConditionedUNet(unet, text, torch.zeros(1, 1, dtype=torch.long, device=dev)).train()
    shape = (4, p["latent"], p["latent"])
    info = DataInfo(2, [4, 1], shape)
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    lora_params = [q for q in model.parameters() if q.requires_grad]
    variants = {}
    for name, obj in (("lora", BaselineObjective()), ("ddm_lora", DDMObjective(alpha=0.05))):
        obj.setup(info)
        mods = {k: m.to(dev) for k, m in obj.modules().items()}
        obj.bind_modules(mods)
        params = lora_params + [q for m in mods.values() for q in m.parameters()]
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-2)
        variants[name] = (obj, opt, params)
    batch = {"pixel_values": torch.randn(args.batch, *shape, device=dev),
             "group": torch.randint(0, 2, (args.batch,), device=dev)}
    autocast = torch.autocast(dev.type, dtype=wdtype) if wdtype != torch.float32 else torch.autocast(
        dev.type, enabled=False)

    def step(name: str, i: int) -> None:
        obj, opt, params = variants[name]
        with autocast:
            out = obj.loss(model, batch, sched, make_generator(0, "bench", i))
        out.total.backward()
        torch.nn.utils.clip_grad_value_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    peak = {}
    for name in variants:  # warm-up (and the peak memory of each variant, measured separately)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for i in range(args.warmup):
            step(name, i)
        sync()
        if cuda:
            peak[name] = torch.cuda.max_memory_allocated()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            sync()
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(name, 1000 + r * args.steps + i)
            sync()
            times[name].append((time.perf_counter() - t0) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    ind = variants["ddm_lora"][0].indicator
    ind_bytes = sum(q.numel() * q.element_size() for q in ind.parameters()) * 3  # weights + Adam m and v
    res = {
        "device": torch.cuda.get_device_name(dev) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "preset": args.preset, "batch": args.batch, "precision": args.precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "unet_params_M": round(sum(q.numel() for q in unet.parameters()) / 1e6, 2),
        "lora_params_M": round(sum(q.numel() for q in lora_params) / 1e6, 3),
        "indicator_params_M": round(sum(q.numel() for q in ind.parameters()) / 1e6, 3),
        "step_s": {k: round(v, 4) for k, v in med.items()},
        "step_time_ratio_ddm_over_lora": round(med["ddm_lora"] / med["lora"], 4),
        "rounds": args.rounds, "steps_per_round": args.steps,
        "indicator_state_MiB": round(ind_bytes / 2**20, 2),
    }
    if cuda:
        res["peak_MiB"] = {k: round(v / 2**20, 1) for k, v in peak.items()}
        res["peak_memory_ratio_ddm_over_lora"] = round(peak["ddm_lora"] / peak["lora"], 4)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed round")
    ap.add_argument("--device")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    res = run(args)
    print(json.dumps(res, indent=2))
    print(f"DDM-LoRA / LoRA step time: {res['step_time_ratio_ddm_over_lora']:.3f}"
          + (f"; peak memory: {res['peak_memory_ratio_ddm_over_lora']:.3f}" if "peak_MiB" in res else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
