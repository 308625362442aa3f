"""The DDIM paper's Table 1 redone on an exact score (notebook 04 §6).

DDIM Table 1 reports CIFAR-10 FID for S ∈ {10, 20, 50, 100, 1000} steps and η ∈ {0, 0.2, 0.5, 1},
plus DDPM's large-variance sampler σ̂. There the error mixes three things: the sampler, the
trained network and the FID estimate. Here the network is replaced by the exact ε* of a Gaussian
mixture (`toy.exact_eps`), so the only error left is the sampler's, and it is measured with a
statistic whose noise is measured too:

- every cell: the unbiased MMD² (`toy.mmd2_unbiased`, the kernel bandwidth of `toy.mmd`) between
  n sampler outputs and n fresh data draws, ± its jackknife standard error (`mmd2_se`);
- the noise floor: the same statistic between two fresh data sets (`toy.mmd`), i.e. what an exact
  sampler scores at this n. Cells below 3 floors are marked: they are indistinguishable from
  exact samples, and the table prints each value rounded to its own standard error, so it never
  shows a difference smaller than its error bars;
- for η = 0 also the deterministic error: RMS distance to scipy's solution of the probability-flow
  ODE from the same x_T (`ode.reference_solution`, notebook 05 §3).

Spacing. The default is `uniform` (`schedule.timesteps`, the official code's `range(0, T, T//S)`),
the DDIM paper's choice for every data set but CIFAR-10, because (1) its largest step grows to T−1
as S grows, so S = 1000 is exactly DDPM's chain and the η = 1 / σ̂ cells at S = 1000 are DDPM's own
two samplers, the paper's reference; `quad` stops at t = 800 and keeps 688 distinct steps; (2) on
this 2-D mixture `quad` puts its steps where the data's fine structure is (small t) and is several
times more accurate at S = 10, so accurate that every η falls within a few error bars of the others
at a CPU-sized n. Pass spacing="quad" to see it (notebook 04 §4 plots both).

Run `python -m ddimlab.lab --out DIR` (or `lab.main()`): prints the table, writes DIR/table1.png
and DIR/table1.txt, in seconds on a CPU.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from . import ode, samplers, schedule, toy
from .files import atomic_write
from .samplers import SIGMA_HAT

S_LIST = (10, 20, 50, 100, 1000)
ETAS = (0.0, 0.2, 0.5, 1.0)
SPACINGS = ("uniform", "quad")
FLOOR_K = 3.0          # a cell is "within the floor" when MMD² < FLOOR_K · floor (as `toy.MMDResult.resolved`)
DATA = "data"


# ------------------------------------------------------------------------------------- the metric

def bandwidth(mixture: toy.GaussianMixture) -> float:
    """The kernel bandwidth `toy.mmd` uses by default: the components' typical standard deviation (notebook 04 §5)."""
    return float(mixture.weights @ mixture.eigvals.mean(1).sqrt())


def mmd2_se(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> tuple[float, float]:
    """(MMD², standard error): `toy.mmd2_unbiased(x, y, bandwidth)` and its delete-one jackknife SE.

    x, y: (n, d) with the same n. Deleting the pair (x_i, y_i) leaves
    U₋ᵢ = (Σ'Kxx − 2rˣᵢ + Σ'Kyy − 2rʸᵢ)/((n−1)(n−2)) − 2(ΣKxy − Kxy[i,:]·1 − 1·Kxy[:,i] + Kxy[i,i])/(n−1)²
    (Σ' sums off the diagonal, rᵢ a row sum off the diagonal), and SE² = (n−1)/n Σᵢ (U₋ᵢ − Ū)².
    The SE covers both sample sets' randomness; `tests/test_lab.py` checks it against repeats
    (notebook 04 §5). Near the null (samples ≈ data) the statistic is degenerate and the jackknife
    overstates its spread (about 1.5× here): conservative; `noise_floor` is the calibrated number there.
    """
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    if x.ndim != 2 or x.shape != y.shape or x.shape[0] < 4:
        raise ValueError(f"x and y must have the same shape (n >= 4, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
        raise ValueError("samples contain NaN or inf")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    n = x.shape[0]

    def k(u, v):
        return torch.exp(-torch.cdist(u, v).pow(2) / (2 * bandwidth ** 2))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    rx = kxx.sum(1) - kxx.diagonal()
    ry = kyy.sum(1) - kyy.diagonal()
    sx, sy, sxy = rx.sum(), ry.sum(), kxy.sum()
    value = float((sx + sy) / (n * (n - 1)) - 2 * sxy / n ** 2)
    loo = ((sx - 2 * rx + sy - 2 * ry) / ((n - 1) * (n - 2))
           - 2 * (sxy - kxy.sum(1) - kxy.sum(0) + kxy.diagonal()) / (n - 1) ** 2)
    se = float(((n - 1) / n * (loo - loo.mean()).pow(2).sum()).sqrt())
    return value, se


def noise_floor(mixture: toy.GaussianMixture, n: int, generator: torch.Generator | None = None,
                repeats: int = 8) -> toy.MMDResult:
    """The metric between exact data sets: `toy.mmd` of n fresh data draws (notebook 04 §5).

    Returns MMDResult(mmd2 = one null value, floor = RMS of the statistic between two fresh data sets
    of size n over `repeats` repetitions): what a perfect sampler scores at this n.
    """
    return toy.mmd(mixture.sample(n, generator), mixture, generator, repeats=repeats,
                   bandwidth=bandwidth(mixture))


def ode_error(eps, x_T: torch.Tensor, alpha_bar: torch.Tensor, seq, rtol: float = 1e-7) -> float:
    """RMS over samples of |DDIM(η=0) − exact ODE solution| from the same x_T at step seq[0] (notebook 05 §3)."""
    seq = schedule.validate_timesteps(seq, alpha_bar.shape[0])
    x = samplers.ddim_sample(eps, x_T, alpha_bar, seq, eta=0.0)
    ref = ode.reference_solution(eps, x_T, alpha_bar, int(seq[0]), rtol=rtol, atol=rtol)
    return float((x - ref).pow(2).sum(1).mean().sqrt())


# -------------------------------------------------------------------------------------- the table

def _check_args(S_list, etas, spacing, n, n_ode, T):
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    S_list = tuple(S_list)
    if not S_list or any(not isinstance(S, int) or not 1 <= S <= T for S in S_list):
        raise ValueError(f"S_list must be non-empty integers in 1..T={T}, got {S_list}")
    etas = tuple(float(e) for e in etas)
    if any(not (e >= 0 and math.isfinite(e)) for e in etas):
        raise ValueError(f"etas must be finite and >= 0 (0 = DDIM, 1 = DDPM posterior), got {etas}")
    if not isinstance(n, int) or n < 8:
        raise ValueError(f"n must be an integer >= 8 (samples per cell), got {n!r}")
    if not isinstance(n_ode, int) or not 0 <= n_ode <= n:
        raise ValueError(f"n_ode must be an integer in 0..n (0 skips the ODE reference), got {n_ode!r}")
    return S_list, etas


def table1(mixture: toy.GaussianMixture | None = None, S_list=S_LIST, etas=ETAS, include_sigma_hat: bool = True,
           spacing: str = "uniform", n: int = 1000, seed: int = 0, n_ode: int = 64, T: int = 1000,
           schedule_name: str = "linear", repeats: int = 8) -> list[dict]:
    """DDIM Table 1 on an exact score: sampler error for each (sampler, S) (notebook 04 §6).

    mixture: data distribution (default `toy.default_mixture()`, 8 Gaussians on a ring); samplers run on its exact ε*
    under the `schedule_name` schedule with T steps, on `schedule.timesteps(S, T, spacing)`
    (see the module docstring for the choice of `uniform`). Every cell starts from the same n
    draws x_T ~ N(0, I), uses the same noise stream and is compared with the same n fresh data
    draws (common random numbers: differences between cells are less noisy than the cells).

    Returns a list of dicts, first the noise-floor row (sampler "data": two fresh data sets), then
    one row per sampler ("eta=…" for `samplers.ddim_sample`, "sigma_hat" for
    `samplers.ddpm_sample(variance="large")`) and S, with keys
    sampler, eta, S, steps (distinct steps = ε evaluations), mmd2, se, floor, within_floor,
    ode_err (η = 0 only, RMS distance to `ode.reference_solution` over the first n_ode samples;
    None elsewhere or when n_ode = 0), seconds.
    """
    S_list, etas = _check_args(S_list, etas, spacing, n, n_ode, T)
    mixture = toy.default_mixture() if mixture is None else mixture
    alpha_bar = schedule.make_alpha_bar(schedule_name, T)
    eps = toy.exact_eps(mixture, alpha_bar)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, mixture.d, generator=g, dtype=torch.float64)
    data = mixture.sample(n, g)
    h = bandwidth(mixture)

    null = noise_floor(mixture, n, g, repeats)
    fresh = mixture.sample(n, g)
    v, se = mmd2_se(fresh, data, h)
    rows = [dict(sampler=DATA, eta=None, S=None, steps=0, mmd2=v, se=se, floor=null.floor,
                 within_floor=v < FLOOR_K * null.floor, ode_err=None, seconds=0.0)]
    samplers_ = [(f"eta={e:g}", e) for e in etas] + ([(SIGMA_HAT, None)] if include_sigma_hat else [])
    for name, eta in samplers_:
        for S in S_list:
            seq = schedule.timesteps(S, T, spacing)
            noise = torch.Generator().manual_seed(seed + 1)
            t0 = time.perf_counter()
            x0 = samplers.sample_row(eps, x_T, alpha_bar, seq, SIGMA_HAT if eta is None else eta, generator=noise)
            seconds = time.perf_counter() - t0
            v, se = mmd2_se(x0, data, h)
            err = None
            if eta == 0.0 and n_ode > 0:
                err = ode_error(eps, x_T[:n_ode], alpha_bar, seq)
            rows.append(dict(sampler=name, eta=eta, S=S, steps=len(seq), mmd2=v, se=se, floor=null.floor,
                             within_floor=v < FLOOR_K * null.floor, ode_err=err, seconds=seconds))
    return rows


def cell(rows: list[dict], sampler: str, S: int | None = None) -> dict:
    """The row of `rows` for `sampler` ("eta=0", "eta=1", "sigma_hat", "data", …) and S (notebook 04 §6)."""
    for r in rows:
        if r["sampler"] == sampler and r["S"] == S:
            return r
    raise KeyError(f"no row for sampler={sampler!r}, S={S!r}")


# ------------------------------------------------------------------------------------- formatting

def fmt_pm(value: float, se: float, scale: float = 1e3) -> str:
    """'v ± se' with v rounded to the SE's first significant digit (two if it starts with 1), ×scale
    (notebook 04 §6)."""
    v, s = value * scale, se * scale
    if not (s > 0 and math.isfinite(s)):
        return f"{v:.3g}"
    digits = -int(math.floor(math.log10(s)))
    if round(s * 10 ** digits) < 2:
        digits += 1
    digits = max(digits, 0)
    return f"{v:.{digits}f}±{s:.{digits}f}"


def format_table(rows: list[dict]) -> str:
    """Plain-text Table 1: one line per sampler, one column per S; MMD² ×10³ ± SE, '*' within floor (notebook 04 §6)."""
    body = [r for r in rows if r["sampler"] != DATA]
    if not body:
        raise ValueError("rows hold no sampler rows; pass the output of table1()")
    S_list = sorted({r["S"] for r in body})
    names = list(dict.fromkeys(r["sampler"] for r in body))
    floor = rows[0]["floor"]
    by = {(r["sampler"], r["S"]): r for r in body}
    width = 16
    head = f"{'MMD² ×10³':<12}" + "".join(f"{'S=' + str(S):>{width}}" for S in S_list)
    lines = [head, "-" * len(head)]
    for name in names:
        label = "σ̂ (DDPM β)" if name == SIGMA_HAT else "η=" + name.split("=")[1]
        cells = []
        for S in S_list:
            r = by.get((name, S))
            cells.append("" if r is None else fmt_pm(r["mmd2"], r["se"]) + ("*" if r["within_floor"] else " "))
        lines.append(f"{label:<12}" + "".join(f"{c:>{width}}" for c in cells))
    ode_rows = [by.get(("eta=0", S)) for S in S_list]
    if any(r is not None and r["ode_err"] is not None for r in ode_rows):
        lines.append("-" * len(head))
        lines.append(f"{'η=0 vs ODE':<12}" + "".join(
            f"{'' if r is None or r['ode_err'] is None else format(r['ode_err'], '.2e'):>{width - 1}} "
            for r in ode_rows))
    data = [r for r in rows if r["sampler"] == DATA]
    lines.append("-" * len(head))
    if data:
        d = data[0]
        lines.append(f"exact data vs fresh data: {fmt_pm(d['mmd2'], d['se'])} ×10⁻³; "
                     f"noise floor (RMS over pairs of fresh data sets) {floor * 1e3:.2g} ×10⁻³")
    lines.append(f"* within {FLOOR_K:g} noise floors of 0: indistinguishable from exact samples at this n.")
    lines.append("η=0 vs ODE: RMS distance to scipy's probability-flow ODE solution from the same x_T.")
    return "\n".join(lines)


def plot_table(rows: list[dict], axes=None):
    """Draw Table 1: MMD² vs S on log axes, one line per η (σ̂ dashed), the noise floor shaded; and,
    when the rows have it, the η = 0 error against the ODE reference with a slope −1 guide (notebook 04 §6).

    axes: one matplotlib axis, or two (the second for the ODE error); created if None. Returns the figure.
    """
    import matplotlib.pyplot as plt

    body = [r for r in rows if r["sampler"] != DATA]
    if not body:
        raise ValueError("rows hold no sampler rows; pass the output of table1()")
    floor = rows[0]["floor"]
    names = list(dict.fromkeys(r["sampler"] for r in body))
    has_ode = any(r["ode_err"] is not None for r in body)
    if axes is None:
        _, axes = plt.subplots(1, 2 if has_ode else 1, figsize=(10 if has_ode else 5.5, 4), squeeze=False)
        axes = axes[0]
    axes = list(axes) if isinstance(axes, (list, tuple)) or hasattr(axes, "__len__") else [axes]
    ax = axes[0]
    for name in names:
        rs = sorted((r for r in body if r["sampler"] == name), key=lambda r: r["S"])
        S = [r["S"] for r in rs]
        v = [max(r["mmd2"], floor) for r in rs]          # log axis: values under the floor sit on it
        se = [r["se"] for r in rs]
        style = dict(ls="--", color="k") if name == SIGMA_HAT else dict(ls="-")
        label = "σ̂ (DDPM, β)" if name == SIGMA_HAT else "η = " + name.split("=")[1]
        ax.errorbar(S, v, yerr=se, marker="o", ms=4, capsize=2, label=label, **style)
    ax.axhspan(0.5 * floor, FLOOR_K * floor, color="0.85", zorder=0, label=f"< {FLOOR_K:g} noise floors")
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_ylim(bottom=0.5 * floor)
    ax.set_xlabel("steps S"); ax.set_ylabel("MMD² to data")
    ax.set_title("Table 1 on an exact score")
    ax.legend(fontsize=8)
    if has_ode and len(axes) > 1:
        ax = axes[1]
        rs = sorted((r for r in body if r["ode_err"] is not None), key=lambda r: r["S"])
        S = [r["S"] for r in rs]
        e = [r["ode_err"] for r in rs]
        ax.loglog(S, e, "o-", label="DDIM η=0")
        ax.loglog(S, [e[0] * S[0] / s for s in S], "k:", label="slope −1")
        ax.set_xlabel("steps S"); ax.set_ylabel("RMS error vs scipy ODE")
        ax.set_title("deterministic error")
        ax.legend(fontsize=8)
    fig = ax.figure
    fig.tight_layout()
    return fig


def make_figure(rows: list[dict], path) -> Path:
    """`plot_table(rows)` saved as a PNG at `path`, atomically (temporary name, then os.replace; notebook 04 §6)."""
    import matplotlib
    import matplotlib.pyplot as plt

    path = Path(path)
    with matplotlib.rc_context({"figure.dpi": 100}):
        fig = plot_table(rows)
        try:
            atomic_write(path, lambda f: fig.savefig(f, format="png"))
        finally:
            plt.close(fig)
    return path


def main(argv: list[str] | None = None, *, out=None) -> int:
    """`python -m ddimlab.lab [--out DIR] [--n N] [--spacing uniform|quad] [--seed K]`: print Table 1, write the figure.

    Writes DIR/table1.txt and DIR/table1.png (default DIR: outputs/lab); `out` (keyword) overrides --out,
    for callers such as `demo.main`. argv None means no arguments (not sys.argv: a caller's own command
    line is not ours). Returns 0.
    """
    p = argparse.ArgumentParser(prog="python -m ddimlab.lab", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/lab", help="folder for table1.png and table1.txt")
    p.add_argument("--n", type=int, default=1000, help="samples per cell (the error bars shrink like 1/n)")
    p.add_argument("--spacing", default="uniform", choices=SPACINGS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args([] if argv is None else list(argv))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # the lab is many small steps: threads only add overhead
    try:
        t0 = time.perf_counter()
        rows = table1(n=args.n, spacing=args.spacing, seed=args.seed, n_ode=min(64, args.n))
        text = (f"DDIM Table 1 on an exact score: 2-D mixture of 8 Gaussians, linear schedule T=1000, "
                f"{args.spacing} steps, n={args.n} samples per cell\n" + format_table(rows))
        print(text)
        out = Path(args.out if out is None else out)
        atomic_write(out / "table1.txt", lambda f: f.write(text + "\n"), text=True)
        fig = make_figure(rows, out / "table1.png")
        print(f"wrote {fig} and {out / 'table1.txt'} ({time.perf_counter() - t0:.1f} s)")
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
