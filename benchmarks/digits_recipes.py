"""Training recipes for the demo's digits model, compared on one measure (README, "The digits model").

Each recipe is the `digits` preset with some fields changed. It is trained once per seed through
`pretrained.digits_model` (cached as the demo's model is: `preset` with the demo's thread count *is* the demo's
model), then sampled with DDIM-S (η = 0, the demo's `uniform` grid) from fixed x_T, `--n` samples for each of
`--x-seeds`, and scored as the demo scores (`demo.as_scored`): the share the digits classifier labels with
confidence ≥ 0.9, with its binomial standard error, and the digits FD and digits drawn of each x_T set.

Each recipe is compared with the first, in confident share (over the samples) and in mean FD (over the x_T
sets, whose spread gives its standard error): paired when both draw the same x_T (same resolution and seeds),
otherwise as independent samples (`quality.mean_difference`).

    python benchmarks/digits_recipes.py        # the preset against the former 16×16 preset (about 30 min once)
    python benchmarks/digits_recipes.py --seeds 0 1        # the README's run (about an hour once)
    python benchmarks/digits_recipes.py --recipes preset uniform-t 2000-steps --seeds 0 1
"""
from __future__ import annotations

import argparse
import math

import torch

from ddimlab import demo, devices, pretrained, quality, samplers, schedule
from ddimlab.checkpoint import eps_fn
from ddimlab.checks import check_fits
from ddimlab.cli import Distinct, Formatter, folder, int_in, one_line_errors
from ddimlab.files import check_can_write

RECIPES = {
    "preset": {},
    "uniform-t": dict(t_sampling="uniform"),          # DDPM's uniform training steps
    "2000-steps": dict(steps=2000),
    "ddpm-init": dict(init="ddpm"),                   # the official code's initialisation (the cifar10 preset's)
    # The preset before this one (until December 2026), whose README table set the bar for a faster recipe.
    "former-16x16": dict(resolution=16, ch_mult=(1, 2, 2), attn_resolutions=(8,), batch_size=64, lr=2e-3,
                         lr_decay="none", t_sampling="uniform", steps=3000),
}

# evaluate's peak memory per sample and per pixel of its images, a lower bound: 1.58 kB measured for the preset (8 x 8;
# n = 1000 -> 8000: 412 -> 1089 MiB at its end) and 1.51 kB for former-16x16 (an untrained network; n = 500 -> 3000:
# 580 -> 1526 MiB), one thread on CPU (ru_maxrss)
SAMPLE_PIXEL_BYTES = 1500


def check_n_fits(n: int, recipes) -> None:
    """`--n` samples of the largest recipe's images, sampled and scored at once (`evaluate`), must fit in half of this
    machine's memory (`checks.check_fits`, as `lab --n`): --n 1000000000 allocated for minutes before failing."""
    res = max(pretrained.digits_config(overrides=RECIPES[name]).resolution for name in recipes)
    per = SAMPLE_PIXEL_BYTES * res * res
    check_fits(n * per, f"--n {n:,} samples of {res} x {res} digits, sampled and scored at once",
               lambda limit: f"give --n at most {int(limit // per):,}")


@torch.no_grad()
def evaluate(model, config, S: int, n: int, x_seeds, fd_se: bool = False):
    """(1.0 where the classifier's confidence is ≥ 0.9, else 0.0, for every sample; the FD of each x_T set; the
    digits drawn with confidence ≥ 0.9 in each x_T set, as the demo's table counts them; with `fd_se`, the bootstrap
    SE of each set's FD, `quality.digits_fd_se`, else an empty list)."""
    eps, ab = eps_fn(model), schedule.make_alpha_bar(config.schedule, config.T)
    confident, fds, drawn, ses = [], [], [], []
    for s in x_seeds:
        x_T = torch.randn(n, model.config["in_ch"], config.resolution, config.resolution,
                          generator=torch.Generator().manual_seed(s))
        x = demo.as_scored(samplers.ddim_sample(eps, x_T, ab, schedule.timesteps(S, config.T, "uniform")))
        score = quality.score_digits(x)                          # what the demo's table prints
        fds.append(score["fd"])
        drawn.append(score["classes_covered"])
        confident.append((quality.classify(x)[1] >= 0.9).double())  # per sample, to pair recipes
        if fd_se:
            ses.append(quality.digits_fd_se(x))
    return torch.cat(confident), fds, drawn, ses


def verdict(d: float, se: float) -> str:
    """How a difference d reads against its standard error: beyond 3 SE, unresolved (2 to 3 SE) or not told apart."""
    z = abs(d) / se if se > 0 else (math.inf if d else 0.0)
    return "beyond 3 SE" if z > 3 else "not told apart" if z < 2 else "unresolved (2 to 3 SE)"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    seed = int_in(0, 2 ** 32 - 1)            # torch's CPU generator keeps a seed's low 32 bits
    p.add_argument("--recipes", nargs="+", action=Distinct, choices=list(RECIPES), default=["preset", "former-16x16"],
                   help="recipes to compare; the first is the baseline")
    p.add_argument("--seeds", nargs="+", action=Distinct, type=seed, default=[0], help="training seeds")
    p.add_argument("--S", nargs="+", action=Distinct, type=int_in(1, pretrained.digits_config().T), default=[10, 20],
                   help="DDIM step counts")
    p.add_argument("--n", type=int_in(2), default=1000, help="samples per x_T set, at least 2 (the FD's covariance)")
    p.add_argument("--x-seeds", nargs="+", action=Distinct, type=seed, default=[10, 11, 12], help="x_T seeds")
    p.add_argument("--threads", type=int_in(1, devices.most_threads()), default=pretrained.THREADS,
                   help="training threads (part of each model's cache key; the demo trains with this many)")
    p.add_argument("--steps", type=int_in(1), default=None, help="train every recipe this many steps (default: its own)")
    p.add_argument("--cache", type=folder, default=None, help="model cache folder (default: $DDIMLAB_CACHE, as the demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while a model trains (minutes, once)")
    p.add_argument("--fd-se", action="store_true",
                   help="also the mean of the x_T sets' bootstrap SEs of the FD, against the FD's spread over the sets")
    args = p.parse_args(argv)
    if args.steps is not None:      # a recipe that changes only the steps is then the other's model, compared with itself
        made = {}
        for name in args.recipes:
            other = made.setdefault(tuple(sorted((k, v) for k, v in RECIPES[name].items() if k != "steps")), name)
            if other != name:
                p.error(f"--steps {args.steps} trains {name} as {other} (it changes only the steps): one cached model, "
                        f"compared with itself; drop --steps or one of the two")
    if len(args.recipes) > 1 and len(args.seeds) * len(args.x_seeds) < 2:     # else mean_difference's error, after training
        p.error("the mean FD's standard error is its spread over the x_T sets (and training seeds): give at least two "
                "--x-seeds (or two --seeds) to compare recipes")
    with one_line_errors(p.prog):    # e.g. a --cache that cannot be written; after Ctrl-C a half-trained model is retrained
        check_n_fits(args.n, args.recipes)
        check_can_write(pretrained.models_dir(args.cache), hint="choose another --cache")   # before the first training
        config = pretrained.digits_config()      # every recipe keeps the preset's schedule and T (so does --S's bound)
        for S in args.S:      # S = 1 on the uniform grid is t = 0 alone: its "samples" are x_T, as `sample` warns
            samplers.check_first_step(schedule.make_alpha_bar(config.schedule, config.T),    # the advice: this script's
                                      schedule.timesteps(S, config.T, "uniform"),            # options (no --spacing)
                                      f"{samplers.NOT_ITS_X_T}; give --S 2 or more")
        return compare(args)


def compare(args) -> dict:
    """Train (or load) each recipe per seed, score it, and compare it with the first (`main`'s arguments)."""
    results, resolution = {}, {}
    for name in args.recipes:
        overrides = dict(RECIPES[name])
        own_steps = overrides.pop("steps", None)                # None: the preset's
        steps = args.steps or own_steps
        for seed in args.seeds:
            print(f"{name}, seed {seed}: training or loading from the cache", flush=True)
            model, config = pretrained.digits_model(steps, seed=seed, cache_dir=args.cache, overrides=overrides,
                                                    threads=args.threads, progress=not args.no_progress)
            resolution[name] = config.resolution
            torch.set_num_threads(args.threads)
            for S in args.S:
                results[name, seed, S] = evaluate(model, config, S, args.n, args.x_seeds, args.fd_se)
                conf, fds, drawn, ses = results[name, seed, S]
                print(f"  DDIM-{S}: confident {conf.mean():.3f} ± {conf.std() / math.sqrt(len(conf)):.3f} "
                      f"(n = {len(conf)}); each x_T set's FD {', '.join(f'{f:.2f}' for f in fds)} and digits drawn "
                      f"{', '.join(map(str, drawn))}", flush=True)
                if len(ses) > 1:      # the SD of k draws is itself known to about ± SD / sqrt(2 (k - 1))
                    sd, mean_se = float(torch.tensor(fds).std()), sum(ses) / len(ses)
                    sd_se = sd / math.sqrt(2 * (len(fds) - 1))
                    print(f"    the FD's spread over the {len(fds)} x_T sets: SD {sd:.2f} ± {sd_se:.2f}; mean bootstrap SE "
                          f"{mean_se:.2f}, {mean_se - sd:+.2f} ± {sd_se:.2f} ({verdict(mean_se - sd, sd_se)})", flush=True)

    base, diffs = args.recipes[0], {}
    if len(args.recipes) > 1:           # one recipe alone has nothing to be compared with: no heading over nothing
        print(f"\neach recipe minus {base}, training seeds {args.seeds} pooled: the confident share (over the samples) "
              f"and the mean FD (over the x_T sets)")
    for name in args.recipes[1:]:
        paired = resolution[name] == resolution[base]
        how = "paired" if paired else "independent"
        for S in args.S:
            for i, measure in ((0, "confident"), (1, "FD")):
                a, b = (torch.cat([torch.as_tensor(results[r, s, S][i], dtype=torch.float64) for s in args.seeds])
                        for r in (name, base))
                diffs[name, S, measure] = d, se = quality.mean_difference(a, b, paired)
                digits = 3 if i == 0 else 2
                print(f"  DDIM-{S} {measure}: {name} {a.mean():.{digits}f} - {base} {b.mean():.{digits}f} = "
                      f"{d:+.{digits}f} ± {se:.{digits}f} ({how}; {verdict(d, se)})")
    return dict(results=results, differences=diffs)


if __name__ == "__main__":
    main()
