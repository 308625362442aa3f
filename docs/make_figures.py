"""Make the README's figures in docs/figures/ (run from the repository root).

    python docs/make_figures.py                 # all figures; trains the digits preset once if not cached
    python docs/make_figures.py --only lab ode  # just the exact-lab figures (seconds)

Figures (PNG, each well under 150 KB):

- samples_eta_steps.png  DDIM samples of the `digits` model for η ∈ {0, 0.5, 1, σ̂} × S ∈ {10, 20, 50, 100},
                         the same latents in every cell (notebook 07 §5);
- consistency.png        one row of latents decoded with S = 10, 20, 50, 100, 1000 (notebook 07 §1);
- interpolation.png      linear against spherical interpolation of x_T, and the norms (notebook 07 §2);
- lab_table1.png         DDIM Table 1 redone on an exact score: sampler error against S (`lab.table1`);
- ode_solvers.png        error against the number of network calls for the ODE solvers, on an exact
                         score, against scipy's solution (`ddimlab.ode`, notebook 05).

The digits model is the demo's (`pretrained.digits_model()`: the `digits`
preset, cached in $DDIMLAB_CACHE/models); every figure is seeded, so a rerun on the same machine gives the same images.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddimlab import checkpoint, demo, generate, lab, ode, plotting, pretrained, samplers, schedule, toy  # noqa: E402
from ddimlab.cli import USER_ERRORS, Distinct, Formatter, int_in  # noqa: E402
from ddimlab.files import atomic_write, check_can_write, check_out_folder  # noqa: E402

FIGURES = ("samples", "consistency", "interpolation", "lab", "ode")
DPI = 80


def savefig(fig, path: Path) -> Path:
    """Save a matplotlib figure as PNG atomically (`files.atomic_write`) and close it."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.05,
                                                 metadata={"Software": None}))  # no version string: same bytes
    finally:
        plt.close(fig)
    print(f"  {path} ({path.stat().st_size / 1024:.0f} KB)", flush=True)
    return path


def _grid_axis(ax, x, nrow, title=None, ylabel=None):
    x = demo.as_scored(x)   # 8×8 digits shown at 16×16, as the demo scores them
    ax.imshow(plotting.image_grid(x, nrow), interpolation="nearest")
    ax.set_xticks([]); ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    if ylabel:
        ax.set_ylabel(ylabel, rotation=0, ha="right", va="center", fontsize=10)


def fig_samples(model, config, out: Path) -> Path:
    """η × S grid of DDIM samples from the same 16 latents (`generate.sample_indices`)."""
    S_list, etas = (10, 20, 50, 100), (0.0, 0.5, 1.0, samplers.SIGMA_HAT)
    ab, R = schedule.make_alpha_bar(config.schedule, config.T), config.resolution
    fig, axes = plt.subplots(len(etas), len(S_list), figsize=(1.9 * len(S_list) + 0.6, 1.9 * len(etas) + 0.3))
    for i, eta in enumerate(etas):
        for j, S in enumerate(S_list):
            x = generate.sample_indices(model, range(16), (1, R, R), ab, schedule.timesteps(S, config.T, "uniform"),
                                        eta=eta, seed=0)
            _grid_axis(axes[i, j], x, 4, title=f"S = {S}" if i == 0 else None,
                       ylabel=(r"$\hat\sigma$ (DDPM)" if eta == samplers.SIGMA_HAT else f"η = {eta:g}") if j == 0 else None)
    fig.suptitle("DDIM samples of the digits model: same latents, η × steps", fontsize=11)
    fig.tight_layout()
    return savefig(fig, out / "samples_eta_steps.png")


def fig_consistency(model, config, out: Path) -> Path:
    """Twelve latents, each decoded with S = 10, 20, 50, 100, 1000 (η = 0)."""
    S_list = (10, 20, 50, 100, 1000)
    ab, R, eps = schedule.make_alpha_bar(config.schedule, config.T), config.resolution, checkpoint.eps_fn(model)
    x_T = torch.randn(12, 1, R, R, generator=torch.Generator().manual_seed(1))
    fig, axes = plt.subplots(len(S_list), 1, figsize=(7, 0.62 * len(S_list) + 0.4))
    for ax, S in zip(axes, S_list):
        x = samplers.ddim_sample(eps, x_T, ab, schedule.timesteps(S, config.T, "uniform"))
        _grid_axis(ax, x, 12, ylabel=f"S = {S}")
    axes[0].set_title("consistency: the same x_T decoded by DDIM (η = 0) with S steps", fontsize=10)
    fig.tight_layout()
    return savefig(fig, out / "consistency.png")


def fig_interpolation(model, config, out: Path) -> Path:
    """Linear vs slerp paths between two latents, decoded with S = 50; and the norm of the latents."""
    ab, R, eps = schedule.make_alpha_bar(config.schedule, config.T), config.resolution, checkpoint.eps_fn(model)
    g = torch.Generator().manual_seed(3)
    lam = torch.linspace(0, 1, 9)
    seq = schedule.timesteps(50, config.T, "uniform")
    pairs = torch.randn(3, 2, 1, R, R, generator=g)
    lin = torch.cat([(1 - lam)[:, None, None, None] * a + lam[:, None, None, None] * b for a, b in pairs])
    sph = torch.cat([samplers.slerp(a[None], b[None], lam) for a, b in pairs])
    fig = plt.figure(figsize=(11, 3.8))
    gs = fig.add_gridspec(2, 2, width_ratios=(2.6, 1))
    _grid_axis(fig.add_subplot(gs[0, 0]), samplers.ddim_sample(eps, lin, ab, seq), 9, title="linear (1−λ) z₀ + λ z₁")
    _grid_axis(fig.add_subplot(gs[1, 0]), samplers.ddim_sample(eps, sph, ab, seq), 9, title="slerp(z₀, z₁; λ)")
    ax = fig.add_subplot(gs[:, 1])
    d = R * R
    z0, z1 = torch.randn(2, 2000, d, generator=g)
    lam11 = torch.linspace(0, 1, 11)
    lin_n = torch.stack([((1 - l) * z0 + l * z1).norm(dim=1) for l in lam11]) / d ** 0.5
    sph_n = torch.stack([samplers.slerp(z0, z1, float(l)).norm(dim=1) for l in lam11]) / d ** 0.5
    ax.plot(lam11, ((1 - lam11) ** 2 + lam11 ** 2).sqrt(), "k--", label="√((1−λ)²+λ²)")
    ax.plot(lam11, lin_n.mean(1), "o", label="linear")
    ax.plot(lam11, sph_n.mean(1), "s", label="slerp")
    ax.set_xlabel("λ"); ax.set_ylabel("‖z‖ / √d"); ax.set_ylim(0.6, 1.1); ax.legend(fontsize=8)
    ax.set_title("norm of the latent (2000 pairs)", fontsize=10)
    fig.tight_layout()
    return savefig(fig, out / "interpolation.png")


def fig_lab(out: Path, n: int = 2000) -> Path:
    """`lab.table1` (exact score, 2-D mixture): the distance against S per η, and η = 0's error against the ODE; at
    `ddimlab lab`'s n, so that the figure is the README's table (the same cells, noise floor and stars)."""
    rows = lab.table1(n=n)
    fig = lab.plot_table(rows)
    fig.set_size_inches(9, 3.4)
    fig.tight_layout()
    return savefig(fig, out / "lab_table1.png")


def fig_ode(out: Path) -> Path:
    """RMS error against scipy's ODE solution vs NFE, for each solver of `ddimlab.ode`, on an exact score."""
    mixture = toy.random_mixture(8, 4, seed=0)
    ab = schedule.make_alpha_bar("linear", 1000)
    eps = toy.exact_eps(mixture, ab)
    x_T = torch.randn(64, mixture.means.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = ode.reference_solution(eps, x_T, ab, 999)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name in ode.SOLVERS:
        nfes, errs = [], []
        for S in (5, 10, 20, 50, 100, 200):
            x = ode.solve(name, eps, x_T, ab, schedule.timesteps(S, 1000, "linspace"))
            nfes.append(ode.nfe(name, S))
            errs.append(float((x - ref).pow(2).sum(1).mean().sqrt()))
        label = "euler (= DDIM η=0)" if name == "euler" else name
        ax.loglog(nfes, errs, "o-", ms=4, label=label)
    ax.set_xlabel("network evaluations (NFE)"); ax.set_ylabel("RMS error vs scipy")
    ax.set_title("probability-flow ODE solvers on an exact score", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return savefig(fig, out / "ode_solvers.png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=Formatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "figures"), help="folder for the PNGs")
    p.add_argument("--only", nargs="+", action=Distinct, choices=FIGURES, default=list(FIGURES), help="the figures to make")
    p.add_argument("--steps", type=int_in(1), default=None, help="digits training steps (default: the preset's)")
    p.add_argument("--threads", type=int_in(1), default=2, help="CPU threads")
    args = p.parse_args(argv)
    try:
        check_out_folder(Path(args.out), "a folder for the figures")   # said now, not after training the digits model
        check_can_write(args.out)
        make(args)
    except KeyboardInterrupt:        # each PNG is written whole or not at all (savefig): nothing half-written to say
        print(f"{p.prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


def make(args) -> None:
    """The figures `main`'s arguments ask for, in args.out (the caller's thread count and grad mode restored after)."""
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with torch.no_grad():
            make_each(args)
    finally:
        torch.set_num_threads(saved_threads)


def make_each(args) -> None:
    out = Path(args.out)
    t0 = time.perf_counter()
    model = config = None
    if {"samples", "consistency", "interpolation"} & set(args.only):
        print("digits model (trains the preset once, then loads it from the cache) ...", flush=True)
        model, config = pretrained.digits_model(steps=args.steps, progress=True)
    for name in args.only:
        print(name, flush=True)
        if name == "samples":
            fig_samples(model, config, out)
        elif name == "consistency":
            fig_consistency(model, config, out)
        elif name == "interpolation":
            fig_interpolation(model, config, out)
        elif name == "lab":
            fig_lab(out)
        elif name == "ode":
            fig_ode(out)
    print(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
