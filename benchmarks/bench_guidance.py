"""Guided vs unguided sampling throughput for the same model, batch and schedule (goal: guided <= 1.5x slower).

Guidance adds, per step, one linear head on h and its gradient with respect to h (not through the U-Net), so the
expected overhead is small. Runs on CPU or GPU; the model is a freshly initialised preset (weights do not change
the cost) or a trained run (``--run``)::

    python benchmarks/bench_guidance.py --preset tiny --resolution 16 --batch 64 --steps 20 --device cpu
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained run folder (default: a fresh --preset model)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--scale", type=float, default=1e-3,
                    help="guidance scale; the work per step does not depend on it, but a large one changes the "
                    "values (on CPU, denormals change speed)")
    ap.add_argument("--flush-denormal", action="store_true", help="torch.set_flush_denormal(True) (CPU)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.flush_denormal:
        torch.set_flush_denormal(True)

    from fairdiff.methods.guidance import DistributionGuidance, GuidanceHeads, HeadsConfig, schedule_timesteps
    from fairdiff.models import build_noise_scheduler, build_sampling_scheduler
    from fairdiff.models.hspace import capture_h
    from fairdiff.models.unet import build_unet
    from fairdiff.sampling.sampler import sample

    if a.run:
        from fairdiff.runs import load_run_model

        unet, sched_cfg = load_run_model(a.run, a.device)
    else:
        torch.manual_seed(0)
        unet = build_unet(a.preset, a.resolution, a.channels).to(a.device)
        sched_cfg = build_noise_scheduler().config
    unet.eval()
    cfg = unet.config
    with capture_h(unet) as seen, torch.no_grad():
        unet(torch.zeros(1, cfg.in_channels, cfg.sample_size, cfg.sample_size, device=a.device),
             torch.tensor([1], device=a.device))
    hc = HeadsConfig(attributes={"group": 2}, num_steps=a.steps, scheduler=a.scheduler,
                     timesteps=schedule_timesteps(a.scheduler, sched_cfg, a.steps), h_shape=list(seen[0].shape[1:]))
    heads = GuidanceHeads.from_spec(hc)
    with torch.no_grad():
        heads.banks["group"].weight.normal_(0, 0.01)
    heads = heads.to(a.device).eval().requires_grad_(False)
    guidance = DistributionGuidance(heads, [0.5, 0.5], a.scale, unet=unet)
    seeds = list(range(a.batch))

    def once(g) -> float:
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        sample(unet, build_sampling_scheduler(a.scheduler, sched_cfg), seeds, batch_size=a.batch,
               num_steps=a.steps, guidance=g, device=a.device, progress=False)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    once(None), once(guidance)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "guided": []}
    for _ in range(a.repeats):  # interleaved, so load from other processes hits both alike; best of each
        times["plain"].append(once(None))
        times["guided"].append(once(guidance))
    plain, guided = min(times["plain"]), min(times["guided"])
    res = {
        "device": (torch.cuda.get_device_name() if a.device.startswith("cuda")
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "model": a.run or f"{a.preset} {a.resolution}x{a.resolution}", "batch": a.batch, "steps": a.steps,
        "scale": a.scale,
        "unguided_img_per_s": round(a.batch / plain, 2), "guided_img_per_s": round(a.batch / guided, 2),
        "slowdown": round(guided / plain, 3),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
