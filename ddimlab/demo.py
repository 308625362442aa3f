"""The main job (`make demo`, `python -m ddimlab demo`).

1. The DDIM paper's Table 1 redone on an exact score (`lab.main`): the 2-D ring and the image-like
   mixture, so only the sampler's error shows.
2. The `digits` preset trained on the CPU (once: `pretrained.digits_model` caches it), then DDPM with
   1000 steps beside DDIM with 10, 20 and 50 steps from the same x_T: wall time, the CPU quality
   score (`quality`, with the FD's bootstrap standard error), each DDIM's differences from DDPM with standard errors
   paired over the shared x_T (`quality.paired_difference`), and a grid of samples per sampler.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import data, devices, lab, plotting, pretrained, quality, samplers, schedule
from .checkpoint import eps_fn
from .checks import check_int
from .generate import progress

SAMPLERS = (("DDPM, 1000 steps", "ddpm", 1000), ("DDIM, 10 steps", "ddim", 10),
            ("DDIM, 20 steps", "ddim", 20), ("DDIM, 50 steps", "ddim", 50))
SCORE_RESOLUTION = 16
LAB = dict(n=2000, image_d=1024, image_n=200)
N_SAMPLES = 200        # per sampler, for the quality scores
# Below it the paired differences get no 'resolved' verdict. Two disjoint sets of n real digits (no true difference)
# were called resolved beyond 3 SE of the FD in 27/100 pairs at n = 2, 9/100 at 3, 5/150 at 4, 3/300 at 6, 1/250 at 8,
# 0/100 at 15 (quality.paired_difference); the confident share's SE, a mean of 0, ±1 differences, is 0 in 5% of them at
# n = 20 and 14% at 15 (any nonzero difference then reads as resolved), and for normal differences |t_{n-1}| > 3 has
# probability 1.5% at n = 10, under 1% from n = 15 (3 SE's 0.27% needs n of hundreds).
MIN_VERDICT_N = 15
GRID = "digits_samplers.png"


def outputs_in(out) -> list[Path]:
    """The files an earlier demo left in out (`lab.outputs_in` and the sample grid)."""
    return lab.outputs_in(out) + [p for p in [Path(out) / GRID] if p.exists() or p.is_symlink()]


def as_scored(x: torch.Tensor) -> torch.Tensor:
    """Samples clamped to [−1, 1] (uint8 ones read as 0..255) and resized to 16×16 (`data.resize`, as
    `data.load_digits` makes the 16×16 set from scikit-learn's 8×8 originals): how the demo scores and shows the 8×8
    digits. Unlike `quality.score_digits` it clamps any overshoot: a sampler that diverged is shown and scored, not
    refused."""
    x = data.to_model_range(x) if isinstance(x, torch.Tensor) and x.dtype == torch.uint8 else x
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel() and float(x.min()) >= 0 and \
            float(x.max()) > 1.5 and bool((x == x.round()).all()):     # not a diverged sampler's overshoot: pixel values
        raise ValueError(f"x holds whole numbers from {float(x.min()):g} to {float(x.max()):g}, images in 0..255 as floats "
                         f"(clamped, they would score as all white); pass them as uint8, or scaled to [-1, 1]")
    return data.resize(x.clamp(-1, 1), SCORE_RESOLUTION)


def score(x: torch.Tensor) -> dict:
    """`quality.score_digits` of `as_scored(x)` plus `fd_se`: the 16×16 classifier is the sharper judge (it
    labels 93% of real digits with confidence ≥ 0.9, the 8×8 one 68%), and real 8×8 digits resized this
    way score as the 16×16 digits do (tests/test_cli.py; notebook 06 §5)."""
    x = as_scored(x)
    return dict(quality.score_digits(x), fd_se=quality.digits_fd_se(x))


@torch.no_grad()
def compare_samplers(model, config, n: int, seed: int = 0, show_progress: bool = False):
    """Sample n images with each of SAMPLERS from the same x_T; rows of (name, NFE, seconds, `score`, x)."""
    n = check_int("n", n, 2, note=" (the scores' statistics need two samples or more)")     # before DDPM's 1000 steps
    eps = eps_fn(model)
    ab = schedule.make_alpha_bar(config.schedule, config.T)
    g = torch.Generator().manual_seed(seed)  # DDPM's noise uses seed + 1: its first z must not repeat x_T
    x_T = torch.randn(n, model.config["in_ch"], config.resolution, config.resolution, generator=g)
    rows = []
    for name, kind, S in SAMPLERS:
        bar, callback = progress(S, name, show_progress and kind == "ddpm")
        start = time.perf_counter()
        with bar:
            if kind == "ddpm":
                x = samplers.ddpm_sample(eps, x_T, ab, variance="small", callback=callback,
                                         generator=torch.Generator().manual_seed(seed + 1))
            else:
                x = samplers.ddim_sample(eps, x_T, ab, schedule.timesteps(S, config.T, "uniform"))
        rows.append((name, S, time.perf_counter() - start, score(x), x))
    return rows


def _verdict(diff: float, se: float, digits: int, n: int) -> str:
    """"diff ± se (resolved)" beyond 3 SE, "(not resolved)" within; "(too few samples to tell)" below MIN_VERDICT_N."""
    said = ("too few samples to tell" if n < MIN_VERDICT_N else "resolved" if abs(diff) > 3 * se else "not resolved")
    return f"{diff:+.{digits}f} ± {se:.{digits}f} ({said})"


def shown(n: int) -> tuple[int, int]:
    """(k, nrow): the grid shows each sampler's first k of n samples in rows of nrow, each sampler from a new row."""
    k = min(32, check_int("n", n))
    return (k - k % 2, k // 2) if k >= 16 else (k, k)


def check_n(n) -> int:
    """`demo --n`: samples per sampler, at least 2 (a mean and a covariance) and at most the number of real digits, of
    which the FD floor (`quality.real_fd_floor`) draws n without replacement."""
    real = len(data.load_digits(8)[0])
    return check_int("--n", n, 2, real, note=f" (the FD of --n real digits, drawn from scikit-learn's {real}, is the "
                                             f"floor the samplers are scored against)")


def main(args) -> list[Path]:
    """`args`: out, skip_train, train_steps, n (None: N_SAMPLES), seed, no_progress (the `demo` subcommand's
    options). Returns the paths written."""
    out, n = Path(args.out), args.n or N_SAMPLES
    if not args.skip_train:          # an --n or a cache that cannot be used is said now, not after part 1
        check_n(n)
        pretrained.check_cache(args.train_steps, args.seed)
    t0 = time.perf_counter()
    print("== 1. DDIM Table 1 on an exact score (no model error: only the sampler's) ==", flush=True)
    written = lab.main(out=out, seed=args.seed, progress=not args.no_progress, **LAB)
    if args.skip_train:
        return written

    # the kernels change the last digits of every score (README, "Determinism"): say which ran
    print(f"\n== 2. DDPM UNet trained on the scikit-learn digits (offline), CPU, {devices.cpu_kernels()} kernels ==",
          flush=True)
    start = time.perf_counter()
    model, config = pretrained.digits_model(args.train_steps, seed=args.seed, progress=not args.no_progress)
    print(f"{config.steps} training steps ready in {time.perf_counter() - start:.0f} s "
          f"(cached for the next run): {config.out}", flush=True)
    rows = compare_samplers(model, config, n, args.seed, show_progress=not args.no_progress)
    floor = quality.real_fd_floor(n, SCORE_RESOLUTION)
    print(f"\nquality of {n} samples per sampler (same x_T), scored at {SCORE_RESOLUTION}x{SCORE_RESOLUTION} "
          f"in digits-classifier features; FD of {n} real digits = {floor:.2f}")
    print(f"{'sampler':18s} {'NFE':>5s} {'wall s':>7s} {'FD':>7s} {'± SE':>6s} {'conf>=0.9':>10s} {'digits':>7s}")
    for name, nfe, seconds, s, _ in rows:
        print(f"{name:18s} {nfe:5d} {seconds:7.2f} {s['fd']:7.2f} {s['fd_se']:6.2f} {s['confident']:10.2f} "
              f"{s['classes_covered']:7d}")
    first, x_first = rows[0][0], as_scored(rows[0][4])
    print(f"each DDIM against {first}, from the same x_T (difference ± SE, paired over the samples; "
          f"'resolved': beyond 3 SE" + (f"; below --n {MIN_VERDICT_N} the SEs are too rough to tell: no verdict"
                                         if n < MIN_VERDICT_N else "") + "):")
    for name, *_, x in rows[1:]:
        d = quality.paired_difference(as_scored(x), x_first)
        print(f"  {name:16s} FD {_verdict(*d['fd'], 2, n)}   confident share {_verdict(*d['confident'], 3, n)}")
    k, nrow = shown(n)
    panels = torch.cat([as_scored(x[:k]) for *_, x in rows])
    path = plotting.save_image_grid(panels, out / GRID, nrow=nrow, scale=3)
    print(f"sample grid ({', '.join(r[0] for r in rows)}; {k} each, top to bottom): {path}")
    print(f"demo done in {time.perf_counter() - t0:.0f} s")
    return written + [path]
