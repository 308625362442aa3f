"""The DDIM paper's Table 1 redone on exact scores, in 2-D and in image-like dimension (notebook 09).

`table1(mixture, …)` samples every (η or σ̂, S) cell from the same x_T and noise on a Gaussian mixture's
exact ε* (`toy.exact_eps`), so the only error left is the sampler's, and scores it against fresh data
with the standardized energy distance (`toy.mmd2_unbiased` with `toy.ENERGY`; why this distance:
notebook 09 §1), its jackknife SE (`mmd2_se`) and the noise floor of two fresh data sets
(`toy.noise_floor`); η = 0 also gets its RMS distance to scipy's ODE solution (`ode_error`; per sample
`ode_sq_errors`). Differences between cells carry their own jackknife SE (`difference`); `beyond` and `ranking` call one resolved
beyond 3 SEs. `format_table` / `plot_table` present it; `main` runs the 2-D and the 1024-D tables
(`ddimlab lab`, `make lab`, the demo). Default steps: `uniform`, so that S = 1000 is DDPM's own chain
(notebook 09 §2). The measured tables and what they show are in notebook 09 and the README.
"""
from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import torch

from . import ode, plotting, samplers, schedule, toy
from .checks import (
    SEED_NOTE,
    a_list,
    as_real,
    check_bool,
    check_distinct,
    check_fits,
    check_int,
    check_per_sample,
    seeded,
)
from .devices import cpu_threads
from .diffusion import check_eta
from .files import atomic_write, interrupts_deferred
from .generate import progress as show_progress
from .samplers import SIGMA_HAT
from .train import refuse_sample_folder

S_LIST = (10, 20, 50, 100, 1000)
TABLE_BYTES = 24       # per n²: a distance's three n × n float64 kernel tables (`toy.mmd2_unbiased`)
# per n·d (and per d) of a table's samples: the image-like table took about 2000 + 220 n bytes per dimension (measured
# at d = 10⁵ with n = 8 and 64, 10⁶ with 8), the 2000 of which build `toy.image_like_mixture`
SAMPLE_BYTES, IMAGE_D_BYTES = 220, 2000
ETAS = (0.0, 0.2, 0.5, 1.0)
SPACINGS = ("uniform", "quad")
ODE_RTOL = 1e-7        # scipy's tolerances (rtol = atol) for the ODE solution η = 0 is measured against (`ode_sq_errors`)
FLOOR_K = 3.0          # a cell is "within the floor" when MMD² < FLOOR_K · floor (as `toy.MMDResult.resolved`)
DATA = "data"


# ------------------------------------------------------------------------------------- the metric

def mmd2_se(x: torch.Tensor, y: torch.Tensor, kernel) -> tuple[float, float]:
    """(MMD², standard error): `toy.mmd2_unbiased(x, y, kernel)` and its delete-one jackknife SE (notebook 09 §1).

    kernel: a Gaussian bandwidth, or toy.ENERGY ("energy") for the energy distance (`toy.gram`).
    x, y: (n, d) with the same n. The SE covers both sample sets' randomness; `tests/test_lab.py` checks
    it against repeats. Near the null (samples ≈ data) the statistic is degenerate and the jackknife
    overstates its spread: conservative; `toy.noise_floor` is the calibrated number there.
    """
    value, loo = jackknife(x, y, kernel)
    return value, jackknife_se(loo)


def jackknife(x: torch.Tensor, y: torch.Tensor, kernel) -> tuple[float, torch.Tensor]:
    """(MMD², the n delete-one values U₋ᵢ) for pairs (x_i, y_i) (notebook 09 §1). Deleting pair i leaves

        U₋ᵢ = (Σ'Kxx − 2rˣᵢ + Σ'Kyy − 2rʸᵢ)/((n−1)(n−2)) − 2(ΣKxy − Kxy[i,:]·1 − 1·Kxy[:,i] + Kxy[i,i])/(n−1)²

    (Σ' sums off the diagonal, rᵢ a row sum off the diagonal); SE² = (n−1)/n Σᵢ (U₋ᵢ − Ū)². Two cells
    of `table1` share x_T, noise and data index by index, so the same formula on the difference of
    their U₋ᵢ gives the standard error of their difference (`difference`).
    """
    x, y = toy.points(x, "x"), toy.points(y, "y")
    if x.shape != y.shape or x.shape[0] < 4:
        raise ValueError(f"x and y must have the same shape (n >= 4, d), got {tuple(x.shape)} and {tuple(y.shape)}")
    toy.check_tables("jackknife", *[(len(x), len(x))] * 3)
    return _jackknife(x, y, kernel, _row_sums(y, kernel))


def _row_sums(y, kernel):
    """Off-diagonal row sums of the kernel matrix of y: the data side of `jackknife`, shared by every cell of a table."""
    k, sign = toy.signed_gram(y, y, kernel)
    return sign * (k.sum(1) - k.diagonal())


def _jackknife(x, y, kernel, ry):
    n = x.shape[0]
    rx = _row_sums(x, kernel)
    kxy, sign = toy.signed_gram(x, y, kernel)           # kernel = sign · kxy: the sums negated, not the table
    sxy = kxy.sum()
    sx, sy = rx.sum(), ry.sum()
    value = float((sx + sy) / (n * (n - 1)) - 2 * (sign * sxy) / n ** 2)
    loo = ((sx - 2 * rx + sy - 2 * ry) / ((n - 1) * (n - 2))
           - 2 * (sign * (sxy - kxy.sum(1) - kxy.sum(0) + kxy.diagonal())) / (n - 1) ** 2)
    return value, loo


def jackknife_se(loo: torch.Tensor) -> float:
    """√((n−1)/n Σᵢ (U₋ᵢ − Ū)²): the jackknife standard error from the delete-one values of `jackknife`
    (notebook 09 §1)."""
    if isinstance(loo, torch.Tensor) and loo.ndim == 1 and len(loo) < 2:   # 0: an SE of no spread at all
        raise ValueError(f"the jackknife needs at least 2 delete-one values, got {len(loo)}")
    (loo,) = check_per_sample("jackknife_se", loo)          # NaN values gave an SE of nan; a list failed in .shape
    n = loo.shape[0]
    return float(((n - 1) / n * (loo - loo.mean()).pow(2).sum()).sqrt())


def error_ratio(e2_a: torch.Tensor, e2_b: torch.Tensor, draws: int = 2000, seed: int = 0) -> dict:
    """Solver a's error over solver b's, from each point's squared error (two solvers run from the same x_T against
    one reference): {"rms": (ratio, SE), "median": (ratio of the median per-point errors, SE)}, the SEs by a bootstrap
    over the points that resamples both together (notebook 08 §7, benchmarks/bench_samplers.py)."""
    e2_a, e2_b = check_per_sample("error_ratio", e2_a, e2_b, squared=True)
    draws = check_int("draws", draws, 2, note=" (bootstrap resamples: one has no spread)")
    if not bool((e2_b > 0).float().mean() > 0.5):        # the median too: more than half of b's errors must be > 0
        raise ValueError("e2_b, the denominator, is 0 at half the points or more (solver b run as its own reference?): "
                         "the ratios would be inf or NaN")
    idx = torch.randint(len(e2_b), (draws, len(e2_b)), generator=seeded(seed))

    def ratios(a, b):
        return (a.mean(-1) / b.mean(-1)).sqrt(), a.sqrt().median(-1).values / b.sqrt().median(-1).values

    (rms, med), (rms_boot, med_boot) = ratios(e2_a, e2_b), ratios(e2_a[idx], e2_b[idx])
    return dict(rms=(float(rms), float(rms_boot.std())), median=(float(med), float(med_boot.std())))


def cross_fitted_best(e2: dict, statistic: str = "rms") -> tuple[torch.Tensor, tuple]:
    """The best of many settings, measured on points it was not picked on: `e2` maps each setting to each point's
    squared error (all from the same x_T); the setting with the lowest RMS (or median per-point error, `statistic`
    "median") on the first half of the points is scored on the second half and vice versa. Returns each point's
    squared error under the setting picked on the other half, and the two picks. The minimum over settings on the
    very points it reports is biased low, the more so the more settings are tried (benchmarks/bench_samplers.py
    picks the best of 410 diffusers settings)."""
    if statistic not in ("rms", "median"):
        raise ValueError(f"statistic must be 'rms' or 'median', got {statistic!r}")
    if not isinstance(e2, dict) or not e2:
        raise ValueError("e2 must map at least one setting to its points' squared errors")
    e2 = dict(zip(e2, check_per_sample("cross_fitted_best", *e2.values(), squared=True)))
    n = len(next(iter(e2.values())))
    first, second = slice(0, n // 2), slice(n // 2, n)
    score = (lambda e: e.mean()) if statistic == "rms" else (lambda e: e.sqrt().median())   # noqa: E731
    on_first, on_second = (min(e2, key=lambda k: float(score(e2[k][part]))) for part in (first, second))
    return torch.cat([e2[on_second][first], e2[on_first][second]]), (on_first, on_second)


def paired_difference(xa: torch.Tensor, xb: torch.Tensor, y: torch.Tensor, kernel) -> tuple[float, float]:
    """(MMD²(xa, y) − MMD²(xb, y), its standard error) when xa[i], xb[i] and y[i] belong together (two samplers
    run from the same x_T and noise, one reference set; notebook 04 §4): the jackknife of the difference,
    deleting index i from all three (`jackknife`)."""
    va, la = jackknife(xa, y, kernel)
    vb, lb = jackknife(xb, y, kernel)
    return va - vb, jackknife_se(la - lb)


def summed_variance(x: torch.Tensor) -> tuple[float, float]:
    """(Σ_j Var x_j over the columns of x (n, d), its standard error) (notebook 09 §3, §5). The sum is the mean of
    q_i = ‖x_i − x̄‖² times n/(n − 1), so its SE is the standard deviation of the q_i times √n/(n − 1), to leading
    order in 1/n. That holds for any tails and for correlated columns; Gaussian theory's Var·√(2/(n − 1)) does not
    (a mixture's strong directions are bimodal; tests/test_lab.py compares both with repeats)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"x must be (n, d) with n >= 3 draws, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")
    n = x.shape[0]
    q = (x - x.mean(0)).pow(2).sum(1)
    value, se = float(q.sum() / (n - 1)), float(q.std() * math.sqrt(n) / (n - 1))
    if not math.isfinite(value + se):       # the squares, or the squares of q in its SE, overflowed: (inf, nan)
        raise ValueError(f"x holds values up to {float(x.abs().max()):.3g}, whose variance or its standard error "
                         f"overflows float64 (did the sampler diverge?)")
    return value, se


def difference(a: dict, b: dict) -> tuple[float, float]:
    """(a − b, its standard error) for two cells of one `table1` (notebook 09 §2). The cells share x_T, the
    noise and the reference data index by index, so the jackknife of the difference (their delete-one
    values subtracted, as in `paired_difference`) is its SE; it accounts for the correlation between the
    cells, which makes it smaller than √(se_a² + se_b²) when the two samplers' outputs stay close.
    Cells from different tables fall back to √(se_a² + se_b²)."""
    for name, cell in (("a", a), ("b", b)):
        if not isinstance(cell, dict) or (missing := [k for k in ("mmd2", "se") if k not in cell]):
            raise ValueError(f"{name} must be a row of lab.table1 (a dict with mmd2 and se), got "
                             + (f"one without {', '.join(missing)}" if isinstance(cell, dict) else type(cell).__name__))
    diff = a["mmd2"] - b["mmd2"]
    la, lb = a.get("loo"), b.get("loo")
    if la is not None and lb is not None and la.shape == lb.shape and a.get("table") == b.get("table"):
        return diff, jackknife_se(la - lb)
    return diff, math.hypot(a["se"], b["se"])


def beyond(worse: dict, better: dict, k: float = 3.0) -> bool:
    """True if the cell `worse` is worse than `better` by more than k standard errors of their
    difference (`difference`; notebook 09 §2)."""
    if not (isinstance(k, (int, float)) and not isinstance(k, bool) and k >= 0):
        raise ValueError(f"k must be a number of standard errors >= 0, got {k!r}")
    diff, se = difference(worse, better)
    return diff > k * se


def _sampler_rows(rows, keys=("mmd2", "se", "floor", "within_floor", "ode_err")) -> list[dict]:
    """The sampler rows of `table1`'s `rows` (all but the exact data's), each checked for `keys`: rows of another table
    (`tables.score_grid`'s, keyed by η) are named as such, not a KeyError of the first key they lack."""
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"rows must be a list of lab.table1's rows (dicts), got {type(rows).__name__}")
    for r in rows:
        if missing := [k for k in ("sampler", "S", *keys) if k not in r]:
            raise ValueError(f"rows must be lab.table1's, and a row lacks {', '.join(missing)} (its keys: "
                             f"{', '.join(map(str, r))}); tables.score_grid's and reproduce's rows are another table's")
    body = [r for r in rows if r["sampler"] != DATA]
    if not body:
        raise ValueError("rows hold no sampler rows; pass the output of table1()")
    return body


def ranking(rows: list[dict], S: int, samplers_=None, k: float = 3.0) -> str:
    """The samplers at S from best to worst, with every pair's verdict (notebook 09 §4). '<' means each sampler
    before it beats each one after it by more than k SEs of their difference (`beyond`), '≈' that some pair across
    it is not resolved; pairs resolved although no '<' separates them follow in brackets.
    E.g. 'η=0 < η=1 ≈ σ̂', or 'η=0 ≈ η=0.5 ≈ η=1 (η=0 < η=1)'."""
    S = check_int("S", S)                             # S=True would pick the rows at S = 1
    body = [r for r in _sampler_rows(rows, ("mmd2", "se")) if r["S"] == S and (samplers_ is None or r["sampler"] in samplers_)]
    if not body:
        raise KeyError(f"no rows at S={S} for samplers {samplers_}")
    body.sort(key=lambda r: r["mmd2"])
    n = len(body)
    won = [[j > i and beyond(body[j], body[i], k) for j in range(n)] for i in range(n)]
    cut = [all(won[i][j] for i in range(c + 1) for j in range(c + 1, n)) for c in range(n - 1)]
    text = label(body[0]["sampler"]) + "".join(
        (" < " if cut[c] else " ≈ ") + label(body[c + 1]["sampler"]) for c in range(n - 1))
    hidden = [f"{label(body[i]['sampler'])} < {label(body[j]['sampler'])}" for i in range(n) for j in range(i + 1, n)
              if won[i][j] and not any(cut[i:j])]
    return text + (f" ({', '.join(hidden)})" if hidden else "")


def label(sampler: str) -> str:
    """'η=0.5' for "eta=0.5", 'σ̂' for SIGMA_HAT: the table's row names (notebook 09 §2)."""
    if sampler != SIGMA_HAT and not (isinstance(sampler, str) and sampler.startswith("eta=")):
        raise ValueError(f"a sampler row is named 'eta=<value>' or {SIGMA_HAT!r}, got {sampler!r}")
    return "σ̂" if sampler == SIGMA_HAT else "η=" + sampler.split("=")[1]


def ode_sq_errors(eps, x_T: torch.Tensor, alpha_bar: torch.Tensor, seq, rtol: float = ODE_RTOL, ref=None) -> torch.Tensor:
    """|DDIM(η=0) − exact ODE solution|² for each sample, from the same x_T at step seq[0] (notebook 05 §3; notebook 09 §2
    compares them paired over x_T, `error_ratio`). ref: that solution (`ode.reference_solution` with rtol = atol = rtol)
    if the caller has it already: `table1` solves it once for all the S whose steps start at the same t."""
    alpha_bar = schedule.validate_alpha_bar(alpha_bar)        # a list or an array too, as the samplers take
    seq = schedule.validate_timesteps(seq, alpha_bar.shape[0])
    x = samplers.ddim_sample(eps, x_T, alpha_bar, seq, eta=0.0)
    if ref is None:
        ref = ode.reference_solution(eps, x_T, alpha_bar, int(seq[0]), rtol=rtol, atol=rtol)
    return (x - ref).pow(2).flatten(1).sum(1)       # each sample's squared distance, any shape


def ode_error(eps, x_T: torch.Tensor, alpha_bar: torch.Tensor, seq, rtol: float = ODE_RTOL) -> float:
    """RMS over samples of |DDIM(η=0) − exact ODE solution| from the same x_T at step seq[0] (notebook 05 §3)."""
    if isinstance(x_T, torch.Tensor) and x_T.ndim and not len(x_T):     # the mean of no samples: NaN, in silence
        raise ValueError(f"x_T is an empty batch {tuple(x_T.shape)}: an RMS over its samples needs at least one")
    return float(ode_sq_errors(eps, x_T, alpha_bar, seq, rtol).mean().sqrt())


# -------------------------------------------------------------------------------------- the table

def _check_args(S_list, etas, spacing, n, n_ode, T, mixture=None, include_sigma_hat: bool = True):
    if mixture is not None:                      # "'str' object has no attribute 'd'"
        toy.check_mixture(mixture)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    T = check_int("T", T)                        # before S's range, which T = 0 made "an integer in 1..0"
    S_list = tuple(check_int("each S in S_list", S, 1, T) for S in a_list(S_list, "S_list", "(10, 20)"))
    etas = tuple(check_eta(e) for e in a_list(etas, "etas", "(0.0, 1.0)", empty_ok=True))
    if not etas and not include_sigma_hat:         # a table of the data row alone, its noise floor computed for nothing
        raise ValueError("etas is empty and include_sigma_hat is False: the table would have no sampler; give an eta, "
                         "or include_sigma_hat=True")
    check_distinct(S_list, "S")
    check_distinct(etas, "eta")
    if len(set(names := [e if isinstance(e, str) else f"{e:g}" for e in etas])) < len(etas):    # the rows' names
        raise ValueError(f"etas {list(etas)} would name their rows {names}: two share a name at 6 significant digits; "
                         f"give etas that differ within those")
    n = check_int("n", n, 8, note=" (samples per cell)")
    n_ode = check_int("n_ode", n_ode, 0, n, " (at most n; 0 skips the ODE reference)")
    return S_list, etas, n, n_ode


def check_sizes(n: int, image_d: int = 0, image_n: int = 0, flags: bool = False) -> None:
    """Before any sampling (`main`, `ddimlab lab`; `table1` for its own n and d): the tables must fit in half of this
    machine's memory (`checks.check_fits`): `lab --n 1000000000` grew until the system killed it, and `--image-d
    100000000` was killed after the 2-D table. n: samples per cell of the 2-D table, image_n of the image-like one in
    image_d dimensions (0: none). flags: name the sizes as `ddimlab lab`'s options (--image-d)."""
    name = (lambda s: "--" + s.replace("_", "-")) if flags else (lambda s: s)
    most = max(n, image_n) if image_d else n
    sizes = f"{name('n')} and {name('image_n')}" if image_d else name("n")
    check_fits(TABLE_BYTES * most * most, f"{most:,} samples per cell (three n x n distance tables)",
               lambda limit: f"give {sizes} at most {math.isqrt(int(limit // TABLE_BYTES)):,}")
    if image_d:
        per_d = IMAGE_D_BYTES + SAMPLE_BYTES * image_n
        check_fits(image_d * per_d, f"the image-like table, {name('image_d')} {image_d} with {name('image_n')} {image_n}",
                   lambda limit: f"give {name('image_d')} at most {int(limit // per_d):,}")


def table1(mixture: toy.GaussianMixture | None = None, S_list=S_LIST, etas=ETAS, include_sigma_hat: bool = True,
           spacing: str = "uniform", n: int = 1000, seed: int = 0, n_ode: int = 64, T: int = 1000,
           schedule_name: str = "linear", repeats: int = 8, kernel=toy.ENERGY,
           standardize: bool = True, progress: bool = False) -> list[dict]:
    """DDIM Table 1 on an exact score: sampler error for each (sampler, S) (notebook 09 §2).

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
    None elsewhere or when n_ode = 0), ode_e2 (those n_ode samples' squared distances, or None), seconds.
    progress: a bar over the sampler steps of all cells (`ddimlab lab` shows it unless --no-progress).
    """
    standardize, include_sigma_hat = check_bool("standardize", standardize), check_bool("include_sigma_hat", include_sigma_hat)
    S_list, etas, n, n_ode = _check_args(S_list, etas, spacing, n, n_ode, T, mixture, include_sigma_hat)
    progress = check_bool("progress", progress)
    seed = check_int("seed", seed, 0, 2 ** 32 - 1, SEED_NOTE)
    mixture = toy.default_mixture() if mixture is None else mixture
    b = SAMPLE_BYTES * mixture.d                  # the largest n of TABLE_BYTES n² + b n <= limit, the quadratic's root
    check_fits(TABLE_BYTES * n * n + b * n, f"table1 with n = {n:,} samples per cell in d = {mixture.d:,}",
               lambda limit: f"give n at most {int((math.sqrt(b * b + 4 * TABLE_BYTES * limit) - b) / (2 * TABLE_BYTES)):,}")
    alpha_bar = schedule.make_alpha_bar(schedule_name, T)
    for S in S_list:                      # every η on every S before the first cell: a bad one found late costs the rest
        seq = schedule.timesteps(S, T, spacing)
        samplers.check_first_step(alpha_bar, seq)      # x_T ~ N(0, I) where the schedule has not reached noise
        for eta in etas:
            samplers.check_eta_steps(alpha_bar, seq, eta)
    eps = toy.exact_eps(mixture, alpha_bar)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(n, mixture.d, generator=g, dtype=torch.float64)
    data = mixture.sample(n, g)
    kernel = toy.bandwidth(mixture) if kernel is None else kernel
    scale = mixture.std() if standardize else torch.ones(mixture.d, dtype=torch.float64)

    floor = toy.noise_floor(mixture, n, g, repeats, kernel, scale)
    fresh = mixture.sample(n, g)
    table = object()                      # identifies the cells that share x_T, noise and data (`difference`)
    # scipy's ODE solution from x_T[:n_ode], once per first step t (quadratic steps start at t = 800 for every S)
    starts = {int(schedule.timesteps(S, T, spacing)[0]) for S in S_list} if n_ode > 0 and 0.0 in etas else set()
    refs = {t: ode.reference_solution(eps, x_T[:n_ode], alpha_bar, t, rtol=ODE_RTOL, atol=ODE_RTOL) for t in sorted(starts)}

    ry = _row_sums(data / scale, kernel)  # the data side of every cell's statistic, computed once

    def row(sampler, eta, S, steps, x0, ode_e2, seconds):
        if not bool(torch.isfinite(x0).all()):
            raise ValueError(f"{sampler}, S={S}: the samples contain NaN or inf")
        v, loo = _jackknife(x0 / scale, data / scale, kernel, ry)
        return dict(sampler=sampler, eta=eta, S=S, steps=steps, mmd2=v, se=jackknife_se(loo), floor=floor,
                    within_floor=v < FLOOR_K * floor, ode_err=None if ode_e2 is None else float(ode_e2.mean().sqrt()),
                    seconds=seconds, kernel=kernel, standardized=standardize, d=mixture.d, loo=loo, table=table, ode_e2=ode_e2)

    rows = [row(DATA, None, None, 0, fresh, None, 0.0)]
    samplers_ = [(f"eta={e:g}", e) for e in etas] + ([(SIGMA_HAT, None)] if include_sigma_hat else [])
    steps = sum(len(schedule.timesteps(S, T, spacing)) for S in S_list)
    bar, callback = show_progress(len(samplers_) * steps, f"table 1, d = {mixture.d}", progress)
    with bar:
        for name, eta in samplers_:
            for S in S_list:
                seq = schedule.timesteps(S, T, spacing)
                noise = torch.Generator().manual_seed(seed + 1)
                t0 = time.perf_counter()
                x0 = samplers.sample_row(eps, x_T, alpha_bar, seq, SIGMA_HAT if eta is None else eta, generator=noise,
                                         callback=callback)
                seconds = time.perf_counter() - t0
                e2 = ode_sq_errors(eps, x_T[:n_ode], alpha_bar, seq, ref=refs[int(seq[0])]) if eta == 0.0 and n_ode > 0 else None
                rows.append(row(name, eta, S, len(seq), x0, e2, seconds))
    return rows


def cell(rows: list[dict], sampler: str, S: int | None = None) -> dict:
    """The row of `rows` for `sampler` ("eta=0", "eta=1", "sigma_hat", "data", …) and S (notebook 09 §2)."""
    for r in rows:
        if r["sampler"] == sampler and r["S"] == S:
            return r
    raise KeyError(f"no row for sampler={sampler!r}, S={S!r}")


# ------------------------------------------------------------------------------------- formatting

def fmt_pm(value: float, se: float, scale: float = 1e3) -> str:
    """'v ± se' with v rounded to the SE's first significant digit (two if it starts with 1), ×scale
    (notebook 09 §2); an SE of 0 or NaN (none) gives v alone."""
    for name, x in (("value", value), ("se", se), ("scale", scale)):
        if as_real(x) is None and not (name == "se" and isinstance(x, float) and math.isnan(x)):
            raise ValueError(f"{name} must be a finite number, got {x!r}")
    if se < 0 or not scale > 0:          # -0.1 was dropped silently: '1e+03' for 1 ± -0.1
        raise ValueError(f"se must be >= 0 (a standard error) and scale > 0, got se = {se!r} and scale = {scale!r}")
    v, s = value * scale, se * scale
    if not (s > 0 and math.isfinite(s)):
        return f"{v:.3g}"
    digits = -int(math.floor(math.log10(s)))
    if round(s * 10 ** digits) < 2:
        digits += 1
    digits = max(digits, 0)
    shown = f"{v:.{digits}f}"
    if float(shown) == 0:                # -0.0002 ± 0.002 is '0±2', not '-0±2'
        shown = shown.lstrip("-")
    return f"{shown}±{s:.{digits}f}"


def metric_name(rows: list[dict]) -> str:
    """What the rows' statistic is, for table heads and axis labels (notebook 09 §2)."""
    r = rows[0]
    name = "energy distance" if r.get("kernel") == toy.ENERGY else "MMD²"
    return name + (", standardized" if r.get("standardized") else "")


def format_table(rows: list[dict]) -> str:
    """Plain-text Table 1: one line per sampler, one column per S; the statistic ×10³ ± SE, '*' within the
    noise floor (notebook 09 §2)."""
    body = _sampler_rows(rows)
    S_list = sorted({r["S"] for r in body})
    names = list(dict.fromkeys(r["sampler"] for r in body))
    floor = rows[0]["floor"]
    by = {(r["sampler"], r["S"]): r for r in body}
    width = 16
    head = f"{'×10³':<12}" + "".join(f"{'S=' + str(S):>{width}}" for S in S_list)
    lines = [f"{metric_name(rows)} to fresh data ×10³ ± SE", head, "-" * len(head)]
    for name in names:
        cells = []
        for S in S_list:
            r = by.get((name, S))
            cells.append("" if r is None else fmt_pm(r["mmd2"], r["se"]) + ("*" if r["within_floor"] else " "))
        lines.append(f"{label(name):<12}" + "".join(f"{c:>{width}}" for c in cells))
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
                     f"noise floor (RMS over pairs of fresh data sets) {float(f'{floor * 1e3:.2g}'):g} ×10⁻³")
    lines.append(f"* within {FLOOR_K:g} noise floors of 0: indistinguishable from exact samples at this n.")
    if any(r is not None and r["ode_err"] is not None for r in ode_rows):
        lines.append("η=0 vs ODE: RMS distance to scipy's probability-flow ODE solution from the same x_T.")
    lines.append("ranking, best first ('<': all before it beat all after it, beyond 3 SE of the difference; "
                 "'≈': not resolved; in brackets: resolved pairs no '<' separates):")
    lines.extend(f"  S={S}: {ranking(rows, S)}" for S in S_list)
    return "\n".join(lines)


def plot_table(rows: list[dict], axes=None):
    """Draw Table 1: the statistic vs S on log axes, one line per η (σ̂ dashed), the noise floor shaded; and,
    when the rows have it, the η = 0 error against the ODE reference with a slope −1 guide (notebook 09 §2).

    axes: one matplotlib axis, or two (the second for the ODE error); created if None. Returns the figure.
    """
    import matplotlib.pyplot as plt

    body = _sampler_rows(rows)
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
        ax.errorbar(S, v, yerr=se, marker="o", ms=4, capsize=2, label=label(name), **style)
    ax.axhspan(0.5 * floor, FLOOR_K * floor, color="0.85", zorder=0, label=f"< {FLOOR_K:g} noise floors")
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_ylim(bottom=0.5 * floor)
    ax.set_xlabel("steps S"); ax.set_ylabel(metric_name(rows) + " to data")
    ax.set_title(f"Table 1 on an exact score, d = {rows[0].get('d', '?')}")
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
    """`plot_table(rows)` saved as a PNG at `path`, atomically (temporary name, then os.replace; notebook 09 §2)."""
    import matplotlib
    import matplotlib.pyplot as plt

    path = plotting.png_path(path)            # PNG bytes under another name (fig.pdf) would belie it
    with matplotlib.rc_context({"figure.dpi": 100}):
        fig = plot_table(rows)
        try:
            atomic_write(path, lambda f: fig.savefig(f, format="png"))
        finally:
            plt.close(fig)
    return path


IMAGE_S_LIST = (10, 20, 50, 100)     # 1024-D: S = 1000 would take ~10 min on 2 CPU cores and shows nothing new
IMAGE_N = 1000                       # samples per cell of the image-like table (`lab --image-n`)
FIGURE_NAME = re.compile(r"table1_d[1-9][0-9]*\.png")     # out/table1_d{image_d}.png, and no other name (not _d0004)


def outputs_in(out) -> list[Path]:
    """The files an earlier `main` left in out: table1.txt, table1.png and its table1_d{image_d}.png figures
    (only those exact names: a user's table1_draft.png is not the lab's)."""
    out = Path(out)
    if not out.is_dir():
        return []
    return [p for p in (out / "table1.txt", out / "table1.png") if p.exists() or p.is_symlink()] + \
        sorted(p for p in out.iterdir() if FIGURE_NAME.fullmatch(p.name))


def main(out="outputs/lab", n: int = 2000, image_d: int = 1024, image_n: int = IMAGE_N, spacing: str = "uniform",
         seed: int = 0, progress: bool = False) -> list[Path]:
    """Print Table 1 on the 2-D ring and on `toy.image_like_mixture(image_d)` (0 skips it) and write
    out/table1.txt, out/table1.png and out/table1_d{image_d}.png (notebook 09; `ddimlab lab`, `make lab`,
    the demo's first part). Returns the paths written. progress: each table's bar (`table1`)."""
    if not isinstance(out, (str, os.PathLike)):         # else pathlib's "expected str, bytes or os.PathLike object"
        raise TypeError(f"out must be a folder's path (a str or pathlib.Path), got {type(out).__name__}")
    if not str(out).strip():                           # pathlib reads "" as the current folder, which the tables filled
        raise ValueError("out is empty; give a folder for table1.txt and the figures")
    out = Path(out)
    if out.exists() and not out.is_dir():              # said now, not after minutes of tables
        raise FileExistsError(f"--out {out} is a file; give a folder for table1.txt and the figures")
    refuse_sample_folder(out)                          # a `reproduce` cell: its PNGs would be scored with table1.png
    n, image_d = check_int("n", n, 8), check_int("image_d", image_d, 0, note=" (0 skips the image-like table)")
    image_n = check_int("image_n", image_n, 8) if image_d else image_n      # the image table's n, checked before the 2-D table
    check_sizes(n, image_d, image_n)
    with cpu_threads(1):                # the lab is many small steps: threads only add overhead
        t0 = time.perf_counter()
        rows = table1(n=n, spacing=spacing, seed=seed, n_ode=min(64, n), progress=progress)
        text = (f"DDIM Table 1 on an exact score: 2-D mixture of 8 Gaussians, linear schedule T=1000, "
                f"{spacing} steps, n={n} samples per cell\n" + format_table(rows))
        print(text, flush=True)
        tables = {"table1.png": rows}
        if image_d > 0:
            img = table1(toy.image_like_mixture(image_d), S_list=IMAGE_S_LIST, n=image_n, spacing=spacing,
                         seed=seed, n_ode=0, progress=progress)
            more = (f"\nThe same on image-like data: toy.image_like_mixture({image_d}) (10 components, "
                    f"spectrum ∝ 1/j), n={image_n}\n" + format_table(img))
            print(more, flush=True)
            text += "\n" + more
            tables[f"table1_d{image_d}.png"] = img
        with interrupts_deferred():     # all files at the end, together: an interrupted run writes none
            written = [make_figure(r, out / name) for name, r in tables.items()]
            written.append(atomic_write(out / "table1.txt", lambda f: f.write(text + "\n"), text=True))
        print(f"wrote {', '.join(str(f) for f in written)} ({time.perf_counter() - t0:.0f} s)")
    return written
