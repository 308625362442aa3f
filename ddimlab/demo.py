"""The main job (`make demo`, `python -m ddimlab demo`).

1. The DDIM paper's Table 1 redone on an exact score (`lab.main`): seconds.
2. The `digits` preset trained on the CPU (about 10 minutes, once: `pretrained.digits_model` caches
   it), then DDPM with 1000 steps beside DDIM with 10, 20 and 50 steps from the same x_T: wall
   time, the CPU quality score (`quality`), and a grid of samples per sampler.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from . import lab, plotting, pretrained, quality, samplers, schedule, train


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--skip-train", action="store_true", help="only the exact-score lab table and figure")
    p.add_argument("--train-steps", type=int, default=None, help="override the digits preset's training steps")
    p.add_argument("--n", type=int, default=200, help="samples per sampler for the quality score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


SAMPLERS = (("DDPM, 1000 steps", "ddpm", 1000), ("DDIM, 10 steps", "ddim", 10),
            ("DDIM, 20 steps", "ddim", 20), ("DDIM, 50 steps", "ddim", 50))


@torch.no_grad()
def compare_samplers(model, config, n: int, seed: int = 0):
    """Sample n images with each of SAMPLERS from the same x_T; rows of (name, NFE, seconds, score, x)."""
    eps = train.eps_fn(model)
    ab = schedule.make_alpha_bar(config.schedule, config.T)
    g = torch.Generator().manual_seed(seed)  # DDPM's noise uses seed + 1: its first z must not repeat x_T
    x_T = torch.randn(n, model.config["in_ch"], config.resolution, config.resolution, generator=g)
    rows = []
    for name, kind, S in SAMPLERS:
        start = time.perf_counter()
        if kind == "ddpm":
            x = samplers.ddpm_sample(eps, x_T, ab, variance="small", generator=torch.Generator().manual_seed(seed + 1))
        else:
            x = samplers.ddim_sample(eps, x_T, ab, schedule.timesteps(S, config.T, "uniform"))
        seconds = time.perf_counter() - start
        rows.append((name, S, seconds, quality.score_digits(x), x))
    return rows


def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("== 1. DDIM Table 1 on an exact score (no model error: only the sampler's) ==", flush=True)
    lab.main(out=out)
    if args.skip_train:
        return

    print("\n== 2. DDPM UNet trained on the scikit-learn digits (offline), CPU ==", flush=True)
    start = time.perf_counter()
    model, config = pretrained.digits_model(args.train_steps, seed=args.seed, progress=not args.no_progress)
    print(f"{config.steps} training steps ready in {time.perf_counter() - start:.0f} s "
          f"(cached, shared with notebooks 06-07): {config.out}")
    rows = compare_samplers(model, config, args.n, args.seed)
    floor = quality.real_fd_floor(args.n, config.resolution)
    print(f"\nquality of {args.n} samples per sampler (same x_T); digits classifier features; "
          f"FD of {args.n} real digits = {floor:.2f}")
    print(f"{'sampler':18s} {'NFE':>5s} {'wall s':>7s} {'FD':>7s} {'conf>=0.9':>10s} {'digits':>7s}")
    for name, nfe, seconds, s, _ in rows:
        print(f"{name:18s} {nfe:5d} {seconds:7.2f} {s['fd']:7.2f} {s['confident']:10.2f} {s['classes_covered']:7d}")
    k = min(32, args.n)
    panels = torch.cat([x[:k] for *_, x in rows])
    path = plotting.save_image_grid(panels, out / "digits_samplers.png", nrow=k // 2 if k >= 16 else k, scale=3)
    print(f"sample grid ({', '.join(r[0] for r in rows)}; {k} each, top to bottom): {path}")
