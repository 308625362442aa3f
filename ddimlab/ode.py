"""The probability-flow ODE of DDIM and solvers for it (notebooks 05 and 08).

Divide the DDIM update by √ᾱ_s (DDIM §4.3, eq. 13; notebook 05 §1): with

    σ(t) = √((1−ᾱ_t)/ᾱ_t),   x̄ = x_t / √ᾱ_t      (so x_t = x̄ / √(σ²+1)),

deterministic DDIM reads x̄_s = x̄_t + (σ_s − σ_t) ε(x_t, t): Euler's method on

    dx̄/dσ = ε(x̄ / √(σ²+1), t(σ)).                                              (ODE)

(A common study-note slip writes x̄ = x_t/ᾱ_t; the square root is needed.) σ runs from σ(t_start) down to
σ(−1) = 0, where x̄ = x_0. In λ = log(α/σ_VP) = −log σ the same ODE is dx̄/dλ = D − x̄ with D = x̂_0 = x̄ − σ ε,
whose variation-of-constants solution the exponential integrators approximate (notebook 08 §1–4).

Every solver here has the samplers' signature (eps, x_T, alpha_bar, seq, return_trajectory=False,
callback=None) -> x_0 (some take keyword-only options with defaults), visits the decreasing integer steps
`seq` and then steps to ᾱ_{−1} = 1, exactly like `samplers.ddim_sample`, and is registered by name in
`_REGISTRY` with its number of ε evaluations (NFE) for S = len(seq):

    euler S (≡ DDIM η=0) · heun 2S−1 · dpm_solver_2 2S−1 · dpm_solver_pp_2m S · dpm_solver_pp_3m S ·
    unipc_2 S · unipc_3 S · ipndm S−1 (the analytical first step replaces the first call) · deis_tab S.

`heun_invert` runs the other way, x_0 → x_T over seq increasing, as `samplers.ddim_invert` does (notebook 05 §8); the two
are `INVERSIONS`, whose calls `nfe` counts too (ddim_invert S, heun_invert 2S − 1).

The last step ends at σ = 0 (λ = +∞), where the network is never evaluated. The single-step and λ-solvers
(euler, heun, dpm_solver_2, dpm_solver_pp_2m/3m, unipc) take it as a first-order step, as k-diffusion
(`sample_heun`, `sample_dpm_2`, `sample_dpmpp_2m`), EDM and diffusers (`final_sigmas_type="zero"`) do: the
output is x̂_0 = x̄ − σ ε at the last grid point (the DDIM step, the Tweedie denoiser E[x_0 | x_t]). Near σ = 0
the exact flow is dx̄/dσ ≈ −σ ∇log p_0(x̄), so the ODE lands at x̄ − σ ε/2 while x̂_0 goes twice as far: a
local error ≈ σ_last² |∇log p_0|/2. On grids ending at t = 0 (σ ≈ 0.01 for the linear schedule) this is a
floor (≈ 5e-4 on `toy.random_mixture(3, 4)`); on `trailing` grids the last step is long (σ(99) ≈ 0.34 for
S = 10) and it dominates the error of the second-order solvers (measured order ≈ 1.3 instead of 2). `ipndm`
instead integrates the polynomial through its stored ε's over [σ_last, 0] (notebook 08 §5–6): a step of
the method's order, still without a call at σ = 0. The orders in tests/test_ode.py are measured before the
last step (at t = 0 or t = 100).

Between integer steps t(σ) is defined by interpolating log ᾱ linearly in t (`alpha_bar_cont`,
`t_of_sigma`), so the ε callable receives float steps at intermediate points.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import math

import numpy as np
import torch

from .checks import (
    a_list,
    all_finite,
    as_real,
    check_bool,
    check_distinct,
    check_generator,
    check_int,
    check_numbers,
    is_complex,
    real_array,
)
from .diffusion import dynamic_threshold, predict_eps, predict_x0
from .samplers import (
    NonFiniteError,
    _finite,
    _of_x_shape,
    _warn_if_0_255,
    call_eps,
    check_args,
    check_eps,
    check_first_step,
    check_schedule,
    check_x,
    ddim_invert,
    eval_eps,
    memory_said,
    of_eps_kind,
    of_inner_dtype,
    report,
)
from .schedule import alpha_bar_at, as_steps, step_pairs, validate_alpha_bar, validate_timesteps

# ------------------------------------------------------------------------------- continuous time

def _log_table(alpha_bar: torch.Tensor) -> torch.Tensor:
    """log ᾱ_{j−1} for j = 0..T (index 0 is ᾱ_{−1} = 1)."""
    return torch.cat([alpha_bar.new_zeros(1), alpha_bar.to(torch.float64).log()])


def alpha_bar_cont(alpha_bar: torch.Tensor, t) -> torch.Tensor:
    """ᾱ(t) for t ∈ [−1, T−1]: the table at integer t (ᾱ_{−1} = 1), log ᾱ linear in between (notebook 05 §3).

    t: int, float, or a tensor (integer or floating). Returns float64 of t's shape.
    """
    return _alpha_bar_cont(validate_alpha_bar(alpha_bar), t)    # a β table, increasing, gave a finite wrong ᾱ(t)


def _alpha_bar_cont(alpha_bar: torch.Tensor, t) -> torch.Tensor:
    """`alpha_bar_cont` on a table already validated (`toy.exact_eps`, called at every step)."""
    t = as_steps(t, alpha_bar.device)
    T = alpha_bar.shape[0]
    if t.dtype == torch.bool or t.is_complex():     # alpha_bar_at's "step t must be an integer (use alpha_bar_cont…)"
        raise TypeError(f"continuous step t must be a real number or tensor (an int or a float in [-1, T-1]), got "
                        f"{t.dtype}")
    if not t.dtype.is_floating_point:
        return alpha_bar_at(alpha_bar, t).to(torch.float64)
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()) or bool(((t < -1) | (t > T - 1)).any()):
        raise ValueError(f"continuous step t must lie in [-1, T-1] = [-1, {T - 1}], got {t.tolist()}")
    u = t + 1                                  # position in the padded table
    j = u.floor().clamp(max=T - 1).long()
    frac = u - j
    log_tab = _log_table(alpha_bar)
    out = torch.exp(log_tab[j] + frac * (log_tab[j + 1] - log_tab[j]))
    exact = torch.cat([alpha_bar.new_ones(1), alpha_bar.to(torch.float64)])[j]
    return torch.where(frac == 0, exact, out)


def _one_step(t, x):
    """`t`, or its first entry where t is a (B,) tensor for x's B rows that holds one step B times (what the samplers and
    solvers pass, `samplers.call_eps`), so that an exact ε (`toy.exact_eps`, `thresholded_eps`) looks ᾱ up once and forms
    its coefficients once, not once per row: the same values (tests/test_toy.py compares them bit for bit)."""
    if (isinstance(t, torch.Tensor) and t.ndim == 1 and len(t) > 1 and isinstance(x, torch.Tensor) and x.ndim
            and len(t) == x.shape[0] and bool((t == t[0]).all())):
        return t[:1]
    return t


def sigma_at(alpha_bar: torch.Tensor, t) -> torch.Tensor:
    """σ(t) = √((1−ᾱ(t))/ᾱ(t)) with continuous t (notebook 05 §1)."""
    a = alpha_bar_cont(alpha_bar, t)
    return ((1 - a) / a).sqrt()


def t_of_sigma(alpha_bar: torch.Tensor, sigma) -> torch.Tensor:
    """The continuous step t with σ(t) = sigma: inverts `alpha_bar_cont` (log ᾱ = −log(1+σ²); notebook 05 §1).

    sigma must lie in [0, σ(T−1)]; returns float64 t ∈ [−1, T−1] of sigma's shape.
    """
    return _t_of_sigma(validate_alpha_bar(alpha_bar), sigma)


def _t_of_sigma(alpha_bar: torch.Tensor, sigma) -> torch.Tensor:
    """`t_of_sigma` on a table already validated (the solvers' inner loops)."""
    sigma = check_numbers("sigma", sigma)
    if is_complex(sigma):                                     # the cast to float64 would drop the imaginary part
        raise TypeError(f"sigma must be real, got {getattr(sigma, 'dtype', type(sigma).__name__)}")
    sigma = torch.as_tensor(sigma, dtype=torch.float64, device=alpha_bar.device)
    target = -torch.log1p(sigma ** 2)                          # log ᾱ wanted
    neg = -_log_table(alpha_bar)                                # increasing, from 0
    T = alpha_bar.shape[0]
    tol = 1e-12 * (1 + float(neg[-1]))
    if bool(((-target < -tol) | (-target > neg[-1] + tol) | ~(sigma >= 0)).any()):    # ~(≥ 0): NaN too
        raise ValueError(f"sigma must lie in [0, sigma(T-1)] = [0, {math.sqrt(math.expm1(float(neg[-1]))):.6g}]")
    v = (-target).clamp(0, float(neg[-1]))
    j = (torch.searchsorted(neg, v.reshape(-1), right=True) - 1).clamp(0, T - 1).reshape(v.shape)
    frac = (v - neg[j]) / (neg[j + 1] - neg[j])
    return j.to(torch.float64) - 1 + frac


def _distinct_steps(t: torch.Tensor, t_min: int, t_max: int, T: int) -> torch.Tensor:
    """The S real steps `t` (decreasing) as S distinct integer steps in [t_min, t_max] (notebook 08 §5): each rounded;
    where steps round to the same integer (at low noise, where the σ-based rules crowd their steps), those above are
    raised just enough to be distinct, and lowered again from the top where that overshoots t_max. S steps asked for
    are S steps run; S larger than the number of integers in [t_min, t_max] is an error."""
    S = len(t)
    if S > t_max - t_min + 1:
        raise ValueError(f"{S} distinct steps do not fit between t = {t_min} and {t_max}")
    r = t.round().long().clamp(t_min, t_max).tolist()
    for i in range(S - 2, -1, -1):             # from low noise up: each above the one after it
        r[i] = max(r[i], r[i + 1] + 1)
    top = t_max + 1
    for i in range(S):                         # and back under t_max where the pushing overshot
        r[i] = top = min(r[i], top - 1)
    return validate_timesteps(torch.tensor(r), T)


def _check_span(S, T: int, t_max, t_min) -> tuple[int, int, int]:
    """(S, t_max, t_min) as ints, t_max defaulting to T − 1: 0 <= t_min <= t_max <= T − 1 and 1 <= S <= t_max − t_min + 1
    (so t_min = t_max for one step only; checked before any table of S values is built)."""
    t_max = check_int("t_max", T - 1 if t_max is None else t_max, 0, T - 1, " (T - 1 by default)")
    t_min = check_int("t_min", t_min, 0, T - 1)
    if t_min > t_max:         # said first: S's range below would be "1..1"
        raise ValueError(f"t_min must not exceed t_max (the steps run from t_max down to t_min), got t_min={t_min}, "
                         f"t_max={t_max}")
    S = check_int("number of steps S", S, 1, t_max - t_min + 1, f" (the distinct steps from t_max = {t_max} to t_min = "
                  f"{t_min})")
    return S, t_max, t_min


def lambda_timesteps(S: int, alpha_bar: torch.Tensor, t_max: int | None = None, t_min: int = 0) -> torch.Tensor:
    """Integer steps τ whose λ = −log σ is (nearly) uniform from t_max (default T−1) to t_min (notebook 05 §6).

    DPM-Solver's recommended "logSNR" spacing: σ_k log-uniform between σ(t_max) and σ(t_min), mapped to
    the nearest integer step; steps that round to the same integer (near t = 0 for large S) are moved apart
    (`_distinct_steps`), so the result has exactly S steps (S must fit between t_min and t_max). Decreasing, validated.
    """
    alpha_bar = validate_alpha_bar(alpha_bar)
    T = alpha_bar.shape[0]
    S, t_max, t_min = _check_span(S, T, t_max, t_min)
    if S == 1:
        return validate_timesteps(torch.tensor([t_max]), T)
    log_sig = torch.linspace(math.log(float(sigma_at(alpha_bar, t_max))), math.log(float(sigma_at(alpha_bar, t_min))),
                             S, dtype=torch.float64)
    return _distinct_steps(t_of_sigma(alpha_bar, log_sig.exp()), t_min, t_max, T)


# karras_timesteps: float64 resolves σ^{1/ρ} well beyond it, and its steps are nearly λ-uniform already. ipndm's ρ: on the
# ring's exact ε from one x_T (power3 steps), x_0 moved from ρ = 100's by 8e-5 at ρ = 1e4 and 1e5 on 20 steps, by 4e-4 at
# 1e6, and by 1.5e7 at 1e8 (0.4 on 6 steps): its Lagrange weights in σ^{1/ρ} lose their digits (careless round 35).
MAX_RHO = 1e4


def karras_timesteps(S: int, alpha_bar: torch.Tensor, rho: float = 7.0, t_max: int | None = None,
                     t_min: int = 0) -> torch.Tensor:
    """Integer steps whose σ follow Karras et al. (2022, eq. 5): σ_i^{1/ρ} uniform from σ(t_max) to σ(t_min) (notebook 08 §5).

    ρ = 7 is EDM's choice. ρ = 1 is uniform in σ and ρ → ∞ uniform in log σ (λ-uniform); in between, the steps in
    log σ grow towards low noise (d log σ = ρ dv / v with v = σ^{1/ρ}), so ρ = 7 puts more steps at low noise than
    uniform σ and fewer than λ-uniform; ρ must lie in [1, MAX_RHO = 1e4] (`lambda_timesteps` beyond). Each σ_i is mapped
    to the nearest integer step, repeats moved apart (`_distinct_steps`): exactly S steps (S must fit between t_min and t_max).
    """
    alpha_bar = validate_alpha_bar(alpha_bar)
    T = alpha_bar.shape[0]
    S, t_max, t_min = _check_span(S, T, t_max, t_min)
    if (r := as_real(rho)) is None or r < 1 or r > MAX_RHO:   # 1e6: σ^{1/ρ}, rounded, overshot σ(T−1) ("sigma must lie")
        raise ValueError(f"rho must be a finite number >= 1 and <= {MAX_RHO:g} (for larger rho use lambda_timesteps, the "
                         f"limit rho -> infinity, within a step or two of rho = {MAX_RHO:g}'s steps), got {rho!r}")
    rho = r
    if S == 1:
        return validate_timesteps(torch.tensor([t_max]), T)
    lo, hi = float(sigma_at(alpha_bar, t_min)) ** (1 / rho), float(sigma_at(alpha_bar, t_max)) ** (1 / rho)
    sig = torch.linspace(hi, lo, S, dtype=torch.float64) ** rho
    return _distinct_steps(t_of_sigma(alpha_bar, sig), t_min, t_max, T)


def power_timesteps(S: int, T: int = 1000, kappa: float = 2.0) -> torch.Tensor:
    """Integer steps with t_i + 1 = T (1 − i/S)^κ, i = 0..S−1: uniform in (t+1)^{1/κ} down to t = −1, σ = 0 (notebook 08 §5).

    κ = 1 is uniform in t; κ = 2 is the "time-quadratic" spacing (Zhang & Chen 2023, DEIS: `ts_phase="t"`, order 2 in
    their code); the DDIM code's `quad` is its reverse, from 0 up to 0.8 T. The grid's next point after the last one,
    i = S, is the final step to ᾱ_{−1} = 1 that every solver takes, so the steps shrink smoothly into σ = 0
    (σ ≈ √((t+1)β_0) over the last few steps only: notebooks 04 §4, 08 §5).
    Starts at T − 1; steps that round to the same integer are moved apart (`_distinct_steps`): exactly S steps.
    """
    T = check_int("T", T)
    S = check_int("number of steps S", S, 1, T, " (T, the schedule's length)")
    if (k := as_real(kappa)) is None or k < 1:
        raise ValueError(f"kappa must be a finite number >= 1, got {kappa!r}")
    kappa = k
    u = T * (1 - torch.arange(S, dtype=torch.float64) / S) ** kappa
    return _distinct_steps(u - 1, 0, T - 1, T)


STEP_RULES = ("logsnr", "karras", "power2", "power3")   # the σ-based rules, beside schedule.SPACINGS


def rule_timesteps(rule: str, S: int, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The step rules of notebook 08 §5 by name (`sample --spacing`): logsnr (`lambda_timesteps`), karras
    (`karras_timesteps`, ρ = 7), power2 / power3 (`power_timesteps` with κ = 2, 3; power3 suits `ipndm`)."""
    alpha_bar = validate_alpha_bar(alpha_bar).cpu()     # power2/3 read only T, but a β table is a mistake there too
    if rule == "logsnr":
        return lambda_timesteps(S, alpha_bar)
    if rule == "karras":
        return karras_timesteps(S, alpha_bar)
    if rule in ("power2", "power3"):
        return power_timesteps(S, alpha_bar.shape[0], kappa=float(rule[-1]))
    raise ValueError(f"unknown step rule {rule!r}; choose one of {STEP_RULES} (or schedule.SPACINGS)")


# --------------------------------------------------------------------------------------- helpers

def _sig(alpha_bar, t: int) -> float:
    a = float(alpha_bar_at(alpha_bar, t))
    return math.sqrt((1 - a) / a)


def _x(xbar, sigma):
    """x_t = x̄ / √(σ²+1)."""
    return xbar / math.sqrt(sigma ** 2 + 1)


def _start(eps, x_T, alpha_bar, seq, callback=None, **flags):
    """Checked inputs (`samplers.check_args`, eps's own schedule too): alpha_bar, the (t, s) step pairs, the σ of every
    visited step followed by σ = 0, x̄_T = x_T/√ᾱ_T and the trajectory dict, started at x_T. `flags` (return_trajectory,
    afs, …) must be bools."""
    for name, value in flags.items():
        check_bool(name, value)
    alpha_bar, seq = check_args(x_T, alpha_bar, seq, callback=callback, eps=eps, keeps=int(flags.get("return_trajectory", 0)))
    pairs = step_pairs(seq)
    sig = [_sig(alpha_bar, t) for t, _ in pairs] + [0.0]
    scale = 1 / math.sqrt(float(alpha_bar_at(alpha_bar, int(seq[0]))))
    xbar = x_T * scale
    if not bool(torch.isfinite(xbar).all()):      # float16's 65504, or float32's 3e38 where ᾱ ends near 1e-88: not the model
        wider = "float32 (x_T.float())" if x_T.dtype in (torch.float16, torch.bfloat16) else "float64 (x_T.double())"
        kind = str(x_T.dtype).removeprefix("torch.")
        raise ValueError(f"x_T / sqrt(alpha_bar) = {scale:.3g} x_T overflows {kind} at t = {int(seq[0])}; run the solver "
                         f"in {wider}")
    return alpha_bar, pairs, sig, xbar, {"x": [x_T], "t": [int(seq[0])]}


def _record(traj, callback, i, t, s, xbar, sig_s, x0):
    """Append x_s to the trajectory and call `callback` with the samplers' info dict (samplers module docstring); a
    step that left the dtype's range is a NonFiniteError naming it, as in the samplers (an ε finite on any input
    would otherwise carry an inf x̄ to the end)."""
    x = _finite(_x(xbar, sig_s), t, s)
    traj["x"].append(x); traj["t"].append(s)
    report(callback, i, t, s, x, x0)


def _result(xbar, traj, return_trajectory):
    return (xbar, traj) if return_trajectory else xbar


# ---------------------------------------------------------------------------------------- solvers

def euler(eps, x_T, alpha_bar, seq, return_trajectory: bool = False, callback=None):
    """Euler on (ODE): x̄_s = x̄_t + (σ_s − σ_t) ε(x_t, t). NFE = S (notebook 05 §2).

    Identical to `samplers.ddim_sample(..., eta=0)` (DDIM eq. 12 with σ = 0, divided by √ᾱ_s).
    Trajectory: {"x": [x_t at each visited step, then x_0], "t": [seq…, −1]}.
    """
    alpha_bar, pairs, sig, xbar, traj = _start(eps, x_T, alpha_bar, seq, callback, return_trajectory=return_trajectory)
    for i, (t, s) in enumerate(pairs):
        sig_t, sig_s = sig[i], sig[i + 1]
        d = call_eps(eps, _x(xbar, sig_t), t)
        x0 = xbar - sig_t * d
        xbar = xbar + (sig_s - sig_t) * d
        _record(traj, callback, i, t, s, xbar, sig_s, x0)
    return _result(xbar, traj, return_trajectory)


def heun(eps, x_T, alpha_bar, seq, return_trajectory: bool = False, callback=None):
    """Heun's method (explicit trapezoid, Karras et al. 2022 Alg. 1) on (ODE). NFE = 2S − 1 (notebook 05 §4).

    d = ε(x_t, t), x̄' = x̄ + h d, x̄_s = x̄ + h (d + ε(x'_s, s))/2 with h = σ_s − σ_t; the final step to
    σ = 0 is the Euler (DDIM) step.
    """
    alpha_bar, pairs, sig, xbar, traj = _start(eps, x_T, alpha_bar, seq, callback, return_trajectory=return_trajectory)
    for i, (t, s) in enumerate(pairs):
        xbar, x0 = _heun_step(eps, xbar, t, s, sig[i], sig[i + 1], correct=s >= 0)
        _record(traj, callback, i, t, s, xbar, sig[i + 1], x0)
    return _result(xbar, traj, return_trajectory)


def _heun_step(eps, xbar, t, s, sig_t, sig_s, correct: bool = True):
    """One step of Heun's method on (ODE) from step t to step s, either way: d = ε(x_t, t), x̄' = x̄ + h d,
    x̄_s = x̄ + h (d + ε(x'_s, s))/2 with h = σ_s − σ_t; without `correct` the Euler step x̄'. Returns (x̄_s, x̂_0).
    x̄' is checked to be finite before ε is called on it (`samplers._finite`): towards noise x̄ grows as σ (20 291 at the
    cosine schedule's t = 999), past float16's 65 504, and ε of an inf x was blamed on the model."""
    h = sig_s - sig_t
    d = call_eps(eps, _x(xbar, sig_t), t)
    x_pred = xbar + h * d
    if correct:
        x_pred = _finite(x_pred, t, s)
        return xbar + h * 0.5 * (d + call_eps(eps, _x(x_pred, sig_s), s)), xbar - sig_t * d
    return x_pred, xbar - sig_t * d


def heun_invert(eps, x0, alpha_bar, seq, return_trajectory: bool = False, callback=None):
    """Heun's method run from data to noise, x_0 → x_T, visiting seq increasing like `samplers.ddim_invert`. NFE = 2S − 1
    (notebook 05 §8).

    The first step, out of σ = 0 (t = −1), is ddim_invert's: x̄_{t_1} = x_0 + σ_{t_1} ε(x_0, t_1), ε at x_0 with the
    destination's step, so the network is never called at t = −1 (the mirror of `heun`'s last, Euler, step). Then
    the mirror of `heun` on (ODE), from step t up to the next step t' with h = σ_{t'} − σ_t > 0:

        d = ε(x_t, t),   x̄' = x̄_t + h d,   x̄_{t'} = x̄_t + h (d + ε(x̄'/√(σ_{t'}²+1), t'))/2,

    second order where ddim_invert is first. `heun` on the same seq decodes it: 4S − 2 calls for the round trip.
    Returns x at step seq[0] (the largest); the trajectory is {"x": [x_0, x_{t_1}, …], "t": [−1, t_1, …]}, and
    `callback` gets {"i", "t": from, "s": to (larger), "x", "x0"} after each step, as ddim_invert's.
    """
    return_trajectory = check_bool("return_trajectory", return_trajectory)
    alpha_bar, seq = check_args(x0, alpha_bar, seq, name="x0", callback=callback, inverting=True, eps=eps,
                                keeps=int(return_trajectory))
    _warn_if_0_255(x0, "x0")
    up = [-1] + list(reversed(seq.tolist()))
    sig = [0.0] + [_sig(alpha_bar, t) for t in up[1:]]
    xbar = x0 + sig[1] * call_eps(eps, x0, up[1])
    traj = {"x": [x0], "t": [-1]}
    _record(traj, callback, 0, -1, up[1], xbar, sig[1], x0)
    for i in range(1, len(up) - 1):
        xbar, x0_hat = _heun_step(eps, xbar, up[i], up[i + 1], sig[i], sig[i + 1])
        _record(traj, callback, i, up[i], up[i + 1], xbar, sig[i + 1], x0_hat)
    return _result(traj["x"][-1], traj, return_trajectory)


def dpm_solver_2(eps, x_T, alpha_bar, seq, return_trajectory: bool = False, callback=None):
    """DPM-Solver-2 (Lu et al. 2022, Alg. 1 with r₁ = ½), singlestep second order. NFE = 2S − 1 (notebook 05 §5).

    In λ = log(α/σ_VP) = −log σ it takes a half step to λ_mid = (λ_t + λ_s)/2, i.e. to the geometric
    mean σ_mid = √(σ_t σ_s), and then the full step with the slope found there:

        u = x̄_t + (σ_mid − σ_t) ε(x_t, t),   x̄_s = x̄_t + (σ_s − σ_t) ε(u/√(σ_mid²+1), t(σ_mid)).

    (The paper's exponential-integrator form, rewritten in x̄ = x/α, is exactly this midpoint rule.)
    t(σ_mid) is a float step (`t_of_sigma`). The final step to σ = 0 (λ = ∞) is the Euler (DDIM) step.
    """
    alpha_bar, pairs, sig, xbar, traj = _start(eps, x_T, alpha_bar, seq, callback, return_trajectory=return_trajectory)
    for i, (t, s) in enumerate(pairs):
        sig_t, sig_s = sig[i], sig[i + 1]
        d = call_eps(eps, _x(xbar, sig_t), t)
        x0 = xbar - sig_t * d
        if s >= 0:
            sig_m = math.sqrt(sig_t * sig_s)
            u = xbar + (sig_m - sig_t) * d
            d = call_eps(eps, _x(u, sig_m), float(_t_of_sigma(alpha_bar, sig_m)))
        xbar = xbar + (sig_s - sig_t) * d
        _record(traj, callback, i, t, s, xbar, sig_s, x0)
    return _result(xbar, traj, return_trajectory)


def dpm_solver_pp_2m(eps, x_T, alpha_bar, seq, return_trajectory: bool = False, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), multistep second order with x_0-prediction. NFE = S (notebook 05 §6).

    With D_i = x̂_0 = x̄_i − σ_i ε(x_i, t_i), h_i = λ_s − λ_t = log(σ_t/σ_s) and r = h_{i−1}/h_i:

        x̄_s = (σ_s/σ_t) x̄_t + (1 − σ_s/σ_t) [(1 + 1/(2r)) D_i − 1/(2r) D_{i−1}].

    The first step uses D_i alone (first order, = DDIM); the final step to σ = 0 (h = ∞) returns D_i,
    the current x̂_0 (first order, as k-diffusion's `sample_dpmpp_2m`).
    """
    alpha_bar, pairs, sig, xbar, traj = _start(eps, x_T, alpha_bar, seq, callback, return_trajectory=return_trajectory)
    D_prev = h_prev = None
    for i, (t, s) in enumerate(pairs):
        sig_t, sig_s = sig[i], sig[i + 1]
        D = xbar - sig_t * call_eps(eps, _x(xbar, sig_t), t)
        if s < 0:
            xbar = D
        else:
            h = math.log(sig_t / sig_s)
            D_hat = D if D_prev is None else (1 + h / (2 * h_prev)) * D - h / (2 * h_prev) * D_prev
            xbar = (sig_s / sig_t) * xbar + (1 - sig_s / sig_t) * D_hat
            D_prev, h_prev = D, h
        _record(traj, callback, i, t, s, xbar, sig_s, D)
    return _result(xbar, traj, return_trajectory)


# ------------------------------------------------------------ exponential integrators (notebook 08)

def phi(k: int, h: float) -> float:
    """φ_k(h) of the exponential integrators (notebook 08 §3): φ_0(h) = e^h, φ_{k+1}(h) = (φ_k(h) − 1/k!)/h,
    equivalently φ_k(h) = ∫_0^1 e^{(1−θ)h} θ^{k−1}/(k−1)! dθ = Σ_{j≥0} h^j/(j+k)!  (k ≥ 1).

    So φ_1(h) = (e^h − 1)/h, φ_2(h) = (e^h − 1 − h)/h², φ_3(h) = (e^h − 1 − h − h²/2)/h³. The recursion loses
    digits to cancellation for small |h| (φ_3 at h = 1e-3 keeps only ~7), so |h| < 1 uses the series.
    """
    k = check_int("k", k, 0)
    if (real := as_real(h)) is None or real > 709:           # e^709.8 is float64's largest
        raise ValueError(f"h must be a finite number <= 709 (e^h fits float64; the solvers take phi(k, -h), h > 0), got {h!r}")
    h = real
    if k == 0:
        return math.exp(h)
    if abs(h) < 1:
        total, term, j = 0.0, 1 / math.factorial(k), 0
        while abs(term) > 1e-18 * max(abs(total), 1e-300) or j < 2:
            total += term
            j += 1
            term *= h / (j + k)
        return total
    v = math.exp(h)
    for j in range(k):
        v = (v - 1 / math.factorial(j)) / h
    return v


def _lagrange_basis(v) -> list[np.ndarray]:
    """The Lagrange basis ℓ_j(u) = Π_{m≠j} (u − v_m)/(v_j − v_m) of the nodes v, each in increasing powers of u."""
    out = []
    for j, vj in enumerate(v):
        coef = np.array([1.0])
        for m, vm in enumerate(v):
            if m != j:
                coef = np.convolve(coef, [-vm, 1.0]) / (vj - vm)
        out.append(coef)
    return out


def lagrange_integrals(nodes, a: float, b: float, rho: float = 1.0) -> list[float]:
    """w_j = ∫_a^b ℓ_j(σ^{1/ρ}) dσ for the Lagrange basis ℓ_j of the nodes v_j = σ_j^{1/ρ} (notebook 08 §6).

    ℓ_j(v) = Σ_m c_m v^m is expanded in monomials and integrated termwise, ∫ σ^{m/ρ} dσ = σ^{m/ρ+1}/(m/ρ+1):
    exact for any ρ ≥ 1, including the last step to b = σ = 0. The nodes are distinct finite numbers (the basis divides
    by their differences); with ρ ≠ 1 they and a, b are σ's, ≥ 0 (σ^{1/ρ} of a negative σ is not real).
    """
    if (real := as_real(rho)) is None or real < 1:
        raise ValueError(f"rho must be a finite number >= 1, got {rho!r}")
    given, rho = a_list(nodes, "nodes", "[1.2, 0.5]"), real
    nodes, ends = [as_real(v) for v in given], (as_real(a), as_real(b))
    if any(v is None or (rho != 1 and v < 0) for v in (*nodes, *ends)):
        raise ValueError(f"nodes, a and b must be finite numbers{' >= 0 (sigmas, with rho != 1)' if rho != 1 else ''}, "
                         f"got nodes {given}, a = {a!r}, b = {b!r}")
    check_distinct(nodes, "a node")
    a, b = ends
    basis = _lagrange_basis([s ** (1 / rho) for s in nodes])
    return [float(sum(c * (b ** (m / rho + 1) - a ** (m / rho + 1)) / (m / rho + 1) for m, c in enumerate(coef)))
            for coef in basis]


GAUSS_NODES = 5     # Gauss–Legendre points per unit of t in `_kernel_integrals`: weights to ~1e-15 relative (3 give 1e-8)


def _kernel_integrals(alpha_bar: torch.Tensor, nodes, a: int, b: int) -> list[float]:
    """w_j = ∫_a^b ℓ_j(τ) σ'(τ) dτ = ∫_{σ(a)}^{σ(b)} ℓ_j(t(σ)) dσ for the Lagrange basis ℓ_j in the step t of the integer
    nodes, over integer steps a > b ≥ −1 (tAB-DEIS's C_ij, Zhang & Chen 2023, in x̄; notebook 08 §6).

    σ(τ) is `alpha_bar_cont`'s: log ᾱ linear on each [k, k+1], so t(σ) = k + (log(1+σ²) + log ᾱ_k)/(log ᾱ_k − log ᾱ_{k+1})
    there, smooth in σ (σ'(τ) itself is infinite at τ = −1, where σ = 0). Each unit piece gets GAUSS_NODES Gauss–Legendre
    points in σ; ℓ_j is taken in τ − a, whose powers stay small.
    """
    neg = (-_log_table(alpha_bar)).cpu().numpy()          # −log ᾱ_{k} at index k + 1
    k = np.arange(b, a, dtype=np.float64)[:, None]
    lo, hi = neg[np.arange(b, a) + 1][:, None], neg[np.arange(b, a) + 2][:, None]
    s_lo, s_hi = np.sqrt(np.expm1(lo)), np.sqrt(np.expm1(hi))
    g, gw = np.polynomial.legendre.leggauss(GAUSS_NODES)
    sig = (s_lo + s_hi) / 2 + (s_hi - s_lo) / 2 * g
    tau = k + (np.log1p(sig ** 2) - lo) / (hi - lo)
    dsig = (s_hi - s_lo) / 2 * gw
    basis = _lagrange_basis([float(n) - a for n in nodes])
    return [-float((np.polynomial.polynomial.polyval(tau - a, coef) * dsig).sum()) for coef in basis]


def dpm_solver_pp_3m(eps, x_T, alpha_bar, seq, return_trajectory: bool = False, callback=None, *,
                     published: bool = False, lower_order_final: bool = False):
    """DPM-Solver++(3M): Lu et al. 2022b's multistep data-prediction solver taken to third order, as in the authors'
    code (`multistep_dpm_solver_third_update`, LuChengTHU/dpm-solver) and diffusers. NFE = S (notebook 08 §3).

    In λ = −log σ the data-prediction ODE dx̄/dλ = D − x̄ (D = x̂_0 = x̄ − σ ε) has the exact solution
    x̄_s = e^{−h} x̄_t + ∫_0^h e^{−(h−u)} D(λ_t + u) du, h = λ_s − λ_t. Replacing D by the quadratic p through
    the last three D's (at λ_t and the two previous steps) gives

        x̄_s = e^{−h} x̄_t + h φ_1(−h) D_t + h φ_2(−h) D1 + 2 h φ_3(−h) D2,

    with D1 = h p'(λ_t) and D2 = h² p''(λ_t)/2 the backward differences of the authors' code (r_0 = h_{−1}/h,
    r_1 = h_{−2}/h, D1_0 = (D_t − D_{−1})/r_0, D1_1 = (D_{−1} − D_{−2})/r_1, D1 = D1_0 + r_0 (D1_0 − D1_1)/(r_0 + r_1),
    D2 = (D1_0 − D1_1)/(r_0 + r_1)). The first step is DDIM and the second DPM-Solver++(2M); the final step to
    σ = 0 (h = ∞, where every φ-term but the first diverges) returns D_t, first order (module docstring).

    published=True weights D2 by h φ_3(−h), as the paper's reference code, diffusers' DPMSolverMultistepScheduler
    and k-diffusion do: half the Taylor coefficient, which leaves an O(h³) local error, i.e. a second-order
    method (measured in notebook 08 §3 and tests/test_ode.py).

    lower_order_final=True takes the step before the last as DPM-Solver++(2M), as diffusers' `lower_order_final`
    does by default below 15 steps and the authors' code below 10 (here at any S); notebook 08 §7 measures what it
    changes. Without it the order is kept to the end.
    """
    _, pairs, sig, xbar, traj = _start(eps, x_T, alpha_bar, seq, callback, return_trajectory=return_trajectory,
        published=published, lower_order_final=lower_order_final)
    Ds, lams = [], []
    for i, (t, s) in enumerate(pairs):
        D = xbar - sig[i] * call_eps(eps, _x(xbar, sig[i]), t)
        Ds.append(D); lams.append(-math.log(sig[i]))
        if s < 0:
            xbar = D
        else:
            h = math.log(sig[i] / sig[i + 1])
            upd = h * phi(1, -h) * D
            if len(Ds) >= 2:
                r0 = (lams[-1] - lams[-2]) / h
                D1_0 = (Ds[-1] - Ds[-2]) / r0
                if len(Ds) == 2 or (lower_order_final and i == len(pairs) - 2):     # 2M, as `dpm_solver_pp_2m`
                    upd = upd + 0.5 * h * phi(1, -h) * D1_0
                else:
                    r1 = (lams[-2] - lams[-3]) / h
                    D1_1 = (Ds[-2] - Ds[-3]) / r1
                    D1 = D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1)
                    D2 = (D1_0 - D1_1) / (r0 + r1)
                    upd = upd + h * phi(2, -h) * D1 + (1 if published else 2) * h * phi(3, -h) * D2
            xbar = math.exp(-h) * xbar + upd
            Ds, lams = Ds[-3:], lams[-3:]
        _record(traj, callback, i, t, s, xbar, sig[i + 1], D)
    return _result(xbar, traj, return_trajectory)


UNIPC_VARIANTS = ("bh1", "bh2")     # UniPC's B(h): h or 1 − e^{−h} (`unipc_B`)


def _check_unipc_variant(variant) -> str:
    """`variant` if it is one of UNIPC_VARIANTS, else a one-line ValueError naming the argument and the choices."""
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"variant must be one of {UNIPC_VARIANTS} (UniPC's B(h) = h or 1 - e^-h), got {variant!r}")
    return variant


def _check_h(h) -> float:
    """`h` as a float if it is a finite number > 0 (a step in λ), else a one-line ValueError naming it."""
    if (real := as_real(h)) is None or real <= 0:
        raise ValueError(f"h must be a finite number > 0 (the step in lambda, lambda_s - lambda_t), got {h!r}")
    return real


def unipc_B(h: float, variant: str = "bh2") -> float:
    """UniPC's B(h), any nonzero B(h) = O(h) (Zhao et al. 2023; notebook 08 §4), in x̂_0 form with h = λ_s − λ_t > 0:

        "bh1": B(h) = h,      "bh2": B(h) = 1 − e^{−h} = h φ_1(−h).

    The authors' `uni_pc.py` (`multistep_uni_pc_bh_update`) and diffusers' UniPCMultistepScheduler(solver_type=...)
    write hh = −h for data prediction, B_h = hh or e^{hh} − 1, and subtract α_s B_h Σ ρ_k D1_k: the same B(h) with the
    sign taken out. B(h) cancels wherever the a_k are solved for (B(h) Σ_k a_k r_k^{m−1} = m! h φ_{m+1}(−h) for either):
    the variants differ only where a = ½ is set, the p = 2 predictor and the p = 1 corrector (`unipc_coefficients`).
    """
    h = _check_h(h)         # h <= 0 gave B(h) <= 0, NaN gave NaN, True (read as 1) and a 0-d tensor came back as given
    return h if _check_unipc_variant(variant) == "bh1" else -math.expm1(-h)


def unipc_coefficients(r, h: float, variant: str = "bh2") -> list[float]:
    """UniPC's weights a_k on the scaled differences (D_k − D_t)/r_k (Zhao et al. 2023; notebook 08 §4).

    r: the nodes r_k = (λ_k − λ_t)/h of the previous steps (negative), plus r = 1 (the new point) for the
    corrector. With B(h) of `variant` (`unipc_B`), matching x̄_s's Taylor terms h^{m+1} φ_{m+1}(−h) D^{(m)}, m = 1..p−1
    (predictor) or 1..p (corrector), gives the Vandermonde system Σ_k a_k r_k^{m−1} = m! h φ_{m+1}(−h)/B(h).
    One node is not solved but set to a = ½, as the authors' `uni_pc.py` does: the predictor then is DPM-Solver++(2M) for "bh2"
    (B(h)/2 weights the difference) and the first-order corrector the trapezoid rule.
    """
    _check_unipc_variant(variant)
    if not r:
        raise ValueError("unipc_coefficients needs at least one node r (the previous step's, or 1 for the corrector)")
    if any(as_real(v) is None or v == 0 for v in r):     # r = 0 is the current point itself: (D_k - D_t)/r divides by 0
        raise ValueError(f"the nodes r must be nonzero real numbers (negative for earlier steps, 1 for the new point), "
                         f"got {list(r)}")
    r = [float(v) for v in r]
    h = _check_h(h)
    if not all(math.isfinite(v) for v in r) or len(set(r)) < len(r):
        raise ValueError(f"the nodes r must be finite and distinct (each previous step once), got {r}")
    if len(r) == 1:
        return [0.5]
    B = unipc_B(h, variant)
    b = [math.factorial(m) * h * phi(m + 1, -h) / B for m in range(1, len(r) + 1)]
    R = np.array([[rk ** (m - 1) for rk in r] for m in range(1, len(r) + 1)])
    return np.linalg.solve(R, np.array(b)).tolist()


def unipc(eps, x_T, alpha_bar, seq, return_trajectory: bool = False, callback=None, *, order: int = 2,
          corrector: bool = True, variant: str = "bh2"):
    """UniPC (Zhao et al. 2023, as their `uni_pc.py`): UniP-p predictor and UniC-p corrector in x̂_0. NFE = S
    (notebook 08 §4).

    Each step starts from the DDIM (DPM-Solver-1) step x̄' = e^{−h} x̄_t + (1 − e^{−h}) D_t and adds
    B(h) Σ_k a_k (D_k − D_t)/r_k over the p − 1 previous D's (`unipc_coefficients`). The corrector then
    evaluates D at the predicted point — the evaluation the next step needs anyway — and redoes the step
    with that point included (p nodes): one order more at no extra network call. The corrected x̄_s is kept;
    the next step uses the D evaluated at the predicted point. The order p is lowered while fewer than p
    D's exist and, as diffusers' `lower_order_final`, to the number of steps left; the final step to σ = 0
    (h = ∞) returns D_t and is not corrected (that would need the network at σ = 0).

    variant: B(h) = h ("bh1") or 1 − e^{−h} ("bh2", diffusers' default; `unipc_B`). B(h) cancels from every solved
    a_k, so the two differ only in the steps that set a = ½: the first step's corrector, and the predictors of every
    later step for p = 2, of the second and the second-to-last steps for p = 3 (notebook 08 §7 measures which is closer).
    """
    order = check_int("order", order, 1, 3)
    _check_unipc_variant(variant)
    _, pairs, sig, xbar, traj = _start(eps, x_T, alpha_bar, seq, callback, return_trajectory=return_trajectory,
        corrector=corrector)
    n = len(pairs)
    D = xbar - sig[0] * call_eps(eps, _x(xbar, sig[0]), pairs[0][0])
    Ds, lams = [D], [-math.log(sig[0])]
    for i, (t, s) in enumerate(pairs):
        if s < 0:
            xbar = Ds[-1]
            _record(traj, callback, i, t, s, xbar, 0.0, Ds[-1])
            break
        h = math.log(sig[i] / sig[i + 1])
        p = min(order, len(Ds), n - i)
        r = [(lams[-1 - k] - lams[-1]) / h for k in range(1, p)]
        diffs = [(Ds[-1 - k] - Ds[-1]) / r[k - 1] for k in range(1, p)]
        B = unipc_B(h, variant)
        base = math.exp(-h) * xbar - math.expm1(-h) * Ds[-1]
        x_pred = base
        if p > 1:
            x_pred = base + B * sum(a * d for a, d in zip(unipc_coefficients(r, h, variant), diffs))
        D_new = x_pred - sig[i + 1] * call_eps(eps, _x(x_pred, sig[i + 1]), s)
        if corrector:
            a = unipc_coefficients(r + [1.0], h, variant)
            xbar = base + B * sum(ak * d for ak, d in zip(a, diffs + [D_new - Ds[-1]]))
        else:
            xbar = x_pred
        _record(traj, callback, i, t, s, xbar, sig[i + 1], Ds[-1])
        Ds, lams = (Ds + [D_new])[-3:], (lams + [-math.log(sig[i + 1])])[-3:]
    return _result(xbar, traj, return_trajectory)


def unipc_2(eps, x_T, alpha_bar, seq, return_trajectory: bool = False, callback=None, *, variant: str = "bh2"):
    """`unipc` with p = 2 (UniP-2 + UniC-2, diffusers' UniPCMultistepScheduler(solver_order=2, solver_type=variant)).
    NFE = S (notebook 08 §4)."""
    return unipc(eps, x_T, alpha_bar, seq, return_trajectory, callback, order=2, variant=variant)


def unipc_3(eps, x_T, alpha_bar, seq, return_trajectory: bool = False, callback=None, *, variant: str = "bh2"):
    """`unipc` with p = 3 (UniP-3 + UniC-3, diffusers' UniPCMultistepScheduler(solver_order=3, solver_type=variant)).
    NFE = S (notebook 08 §4)."""
    return unipc(eps, x_T, alpha_bar, seq, return_trajectory, callback, order=3, variant=variant)


def adams_coefficients(k: int, implicit: bool = False) -> list[float]:
    """Equal-step Adams weights (notebook 08 §6): ∫_0^1 ℓ_j(u) du for the Lagrange basis on the nodes u = 0, −1, …, −(k−1)
    (Adams–Bashforth, explicit) or u = 1, 0, …, −(k−2) (Adams–Moulton, with the new point first).

    k = 2: 3/2, −1/2; k = 3: 23/12, −16/12, 5/12; k = 4: 55/24, −59/24, 37/24, −9/24 (Adams–Bashforth), the
    coefficients of iPNDM (Zhang & Chen 2023, DEIS, as in `ipndm`); Adams–Moulton k = 2 is the trapezoid ½, ½.
    """
    implicit = check_bool("implicit", implicit)
    k = check_int("k", k, 1, 6)
    nodes = [float(1 - j) for j in range(k)] if implicit else [float(-j) for j in range(k)]
    return lagrange_integrals(nodes, 0.0, 1.0)


def ipndm(eps, x_T, alpha_bar, seq, return_trajectory: bool = False, callback=None, *, order: int = 3,
          afs: bool = True, rho: float | None = None, corrector: bool = False):
    """iPNDM: Adams–Bashforth on dx̄/dσ = ε (Zhang & Chen 2023, DEIS; `get_sampler_ipndm` in their code, qsh-zh/deis).
    NFE = S − 1 with afs, else S (notebook 08 §6).

    x̄_s = x̄_t + ∫_{σ_t}^{σ_s} P(σ) dσ, with P the polynomial through the last `order` ε's (fewer at the start):

    - rho=None (iPNDM): P as if the steps were equal, x̄_s = x̄_t + (σ_s − σ_t) Σ_j c_j ε_{−j} with the
      `adams_coefficients` (3/2, −1/2; 23/12, −16/12, 5/12; …). On an uneven grid this is Adams–Bashforth in the
      step index with dσ frozen over each step: second order on smooth grids, but the best of these methods at
      very few steps (notebook 08 §6).
    - rho=ρ in [1, MAX_RHO = 1e4]: P is a polynomial in σ^{1/ρ} through the actual nodes and is integrated exactly
      (`lagrange_integrals`): variable-step Adams–Bashforth, of order `order` (ρ = 1: in σ itself). With rho=1.0
      and afs=False this is DEIS's own ρAB-DEIS (Zhang & Chen 2023; `get_sampler_rho_ab` in their code, whose ab_order r is
      order = r + 1), equal to their code to 5e-14 once its Riemann-sum weights are refined (tests/test_ode.py).

    afs (the analytical first step, AFS, of Zhou et al. 2024, the AMED-Solver paper): the first step uses
    ε(x_T) ≈ x_T instead of a network call — exact as ᾱ_T → 0 for zero-mean data; the error is about √ᾱ_T |E x_0| in ε, which the
    flow shrinks by σ_c/σ_1 (σ_c the data scale, σ_1 the next step's σ). It assumes x_T is pure noise at a
    large σ (seq[0] near T − 1); the estimate is kept as the first history point, as in the reference code.

    corrector: after each step, evaluate ε at the new point (the evaluation the next step needs anyway) and
    redo the step with it as an extra node (Adams–Moulton, UniC's idea in σ; notebook 08 §4): one order more
    at no extra network call; the next step continues from the corrected point with that ε.

    The final step to σ = 0 uses the same rule from the stored ε's: it never calls the network at σ = 0,
    and it is not first order like the λ-solvers' last step (`dpm_solver_pp_3m`, `unipc`; notebook 08 §5).
    """
    order = check_int("order", order, 1, 4)
    if rho is not None:
        if (r := as_real(rho)) is None or r < 1 or r > MAX_RHO:   # 1e8: the weights lost their digits, x_0 off by 0.4
            raise ValueError(f"rho must be None (equal-step coefficients) or a finite number >= 1 and <= {MAX_RHO:g} (past "
                             f"it the nodes sigma^(1/rho) crowd at 1 and the weights lose their digits), got {rho!r}")
        rho = r                     # a float: a float32 tensor rho made the weights float32
    alpha_bar, pairs, sig, xbar, traj = _start(eps, x_T, alpha_bar, seq, callback, return_trajectory=return_trajectory,
        afs=afs, corrector=corrector)
    if afs:         # ε(x_T) ≈ x_T, off by about √ᾱ |E x_0|
        if len(pairs) == 1:
            raise ValueError("ipndm with afs=True needs 2 steps or more: on one step the network is never called (its "
                             "first step takes eps(x_T) = x_T); pass afs=False (from the command line: another --sampler), "
                             "or more steps")
        check_first_step(alpha_bar, seq, "ipndm's analytical first step, eps(x_T) = x_T, holds for pure noise only: "
                                         "pass afs=False (SDEdit-like grids; from the command line: another "
                                         "--sampler, or the trailing spacing)")

    def weights(nodes, a, b, implicit):
        if rho is None:
            return [(b - a) * c for c in adams_coefficients(len(nodes), implicit)]
        return lagrange_integrals(nodes, a, b, rho)

    first = x_T.clone() if afs else call_eps(eps, x_T, pairs[0][0])
    return _multistep(eps, pairs, sig, sig, xbar, traj, first, weights, order, corrector, callback, return_trajectory)


def _multistep(eps, pairs, sig, at, xbar, traj, first, weights, order: int, corrector: bool, callback, return_trajectory):
    """The loop of `ipndm` and `deis_tab`: x̄_s = x̄_t + Σ_j w_j ε_{−j} over the last `order` ε's, with
    w = weights(their nodes, at[i], at[i + 1], implicit) in the variable `at` (σ or t) and `first` the ε at x_T."""
    hist, nodes = [first], [at[0]]                  # ε at the current point and before
    for i, (t, s) in enumerate(pairs):
        x0 = xbar - sig[i] * hist[-1]
        w = weights(nodes[-order:][::-1], at[i], at[i + 1], False)
        x_next = xbar + sum(wj * ej for wj, ej in zip(w, hist[-order:][::-1]))
        if s >= 0:
            e = call_eps(eps, _x(x_next, sig[i + 1]), s)
            if corrector:
                cn = [at[i + 1]] + nodes[-order:][::-1]
                w = weights(cn, at[i], at[i + 1], True)
                x_next = xbar + sum(wj * ej for wj, ej in zip(w, [e] + hist[-order:][::-1]))
            hist, nodes = (hist + [e])[-order - 1:], (nodes + [at[i + 1]])[-order - 1:]
        xbar = x_next
        _record(traj, callback, i, t, s, xbar, sig[i + 1], x0)
    return _result(xbar, traj, return_trajectory)


def deis_tab(eps, x_T, alpha_bar, seq, return_trajectory: bool = False, callback=None, *, order: int = 3):
    """tAB-DEIS (Zhang & Chen 2023, DEIS: the exponential integrator with polynomial extrapolation; `get_sampler_t_ab`
    in their code, qsh-zh/deis): Adams–Bashforth with ε a polynomial in the step t, integrated against the exponential
    integrator's kernel. NFE = S (notebook 08 §6).

    In x̄ = x_t/√ᾱ_t the exponential integrator is x̄_s = x̄_t + ∫_t^s σ'(τ) ε(τ) dτ (the ½ Ψ G Gᵀ L⁻ᵀ of their README's
    derivation is √ᾱ_s σ'(τ) for the VP SDE). With P the polynomial in τ through the last `order` ε's (fewer at the
    start), at the visited steps t_j, x̄_s = x̄_t + Σ_j w_j ε_j, w_j = ∫_t^s ℓ_j(τ) σ'(τ) dτ (`_kernel_integrals`,
    Gauss–Legendre in σ).
    `order` counts nodes, as `ipndm`'s does: their code's ab_order r is order = r + 1. The last step to σ = 0 integrates
    the same polynomial over [t_last, −1], with no call there.

    Their code (a30709f) gives the same steps up to its Riemann sums of the weights (10⁴ points: 3e-4 on x_0 with
    S = 11; refined, 1e-8; tests/test_ode.py). ρAB-DEIS is `ipndm(..., rho=1.0, afs=False)` (`ipndm`).
    """
    order = check_int("order", order, 1, 4)
    alpha_bar, pairs, sig, xbar, traj = _start(eps, x_T, alpha_bar, seq, callback, return_trajectory=return_trajectory)
    steps = [t for t, _ in pairs] + [-1]

    def weights(nodes, a, b, implicit):
        return _kernel_integrals(alpha_bar, nodes, a, b)

    first = call_eps(eps, x_T, pairs[0][0])
    return _multistep(eps, pairs, sig, steps, xbar, traj, first, weights, order, False, callback, return_trajectory)


# name -> (solver, NFE on S steps with the solver's options); SOLVERS lists the names (notebook 05 §7)
_REGISTRY = {
    "euler": (euler, lambda S, **_: S),
    "heun": (heun, lambda S, **_: 2 * S - 1),
    "dpm_solver_2": (dpm_solver_2, lambda S, **_: 2 * S - 1),
    "dpm_solver_pp_2m": (dpm_solver_pp_2m, lambda S, **_: S),
    "dpm_solver_pp_3m": (dpm_solver_pp_3m, lambda S, **_: S),
    "unipc_2": (unipc_2, lambda S, **_: S),
    "unipc_3": (unipc_3, lambda S, **_: S),
    "ipndm": (ipndm, lambda S, afs=True, **_: S - 1 if afs else S),
    # variable-step Adams–Bashforth 3 in σ: the least error on notebook 08 §7's exact scores from 80 calls on; on the
    # digits model (§8) closer than ipndm at 20 and 40 calls, and farther than unipc_3
    "ipndm_vs": (functools.partial(ipndm, rho=1.0), lambda S, afs=True, **_: S - 1 if afs else S),
    "deis_tab": (deis_tab, lambda S, **_: S),
}
SOLVERS = tuple(_REGISTRY)
# The step rule each solver runs on when none is asked for (`sample --sampler NAME`): λ-uniform for the λ-solvers (their
# papers' "logSNR" steps, on which notebook 08 and benchmarks/bench_samplers.py measure them), power3 ((t+1)^{1/3}-uniform,
# the benchmark's fixed setting) for iPNDM and tAB-DEIS (on the ring and an 8-D mixture 4 to 25 times closer to scipy's
# solution than on `uniform` steps at 5 to 20 calls; notebook 08 §7 measures it there), and the DDIM code's `uniform`, the
# command's default before, for DDIM and the single-step solvers of notebook 05 (which measures them on `linspace`).
DEFAULT_RULES = {"euler": "uniform", "heun": "uniform", "dpm_solver_2": "uniform", "dpm_solver_pp_2m": "logsnr",
                 "dpm_solver_pp_3m": "logsnr", "unipc_2": "logsnr", "unipc_3": "logsnr", "ipndm": "power3", "ipndm_vs": "power3",
                 "deis_tab": "power3"}


# name -> (inversion x_0 -> x_T over seq increasing, NFE on S steps): the sibling of _REGISTRY the other way (notebook 05 §8),
# each decoded by the solver of its order (ddim_invert by euler = DDIM, heun_invert by heun; `cli invert --sampler`).
# Not solvers for `solve` or `sample --sampler`, which start from noise; `nfe` counts both.
_INVERSIONS = {
    "ddim_invert": (ddim_invert, lambda S, **_: S),
    "heun_invert": (heun_invert, lambda S, **_: 2 * S - 1),
}
INVERSIONS = tuple(_INVERSIONS)


def _lookup(name: str, inversions: bool = False):
    known = {**_REGISTRY, **_INVERSIONS} if inversions else _REGISTRY
    if isinstance(name, str) and name in known:
        return known[name]
    if isinstance(name, str) and name in _INVERSIONS:
        raise ValueError(f"{name} runs from data to noise, not from x_T to x_0: call it directly ({name}(eps, x0, alpha_bar, "
                         f"seq)); solve's solvers are {SOLVERS}")
    raise ValueError(f"unknown ODE solver {name!r}; choose one of {SOLVERS}" + (f" or the inversions {INVERSIONS}" if inversions
                                                                               else ""))


def solve(name: str, eps, x_T, alpha_bar, seq, return_trajectory: bool = False, callback=None, **options):
    """Run the solver called `name` (one of SOLVERS) (notebook 05 §7); `options` are its own keywords, e.g.
    lower_order_final=True for dpm_solver_pp_3m."""
    solver = _lookup(name)[0]
    _check_options(name, solver, options)
    return solver(eps, x_T, alpha_bar, seq, return_trajectory=return_trajectory, callback=callback, **options)


def _check_options(name: str, solver, options) -> None:
    """A keyword `name`'s solver does not take is named with those it does (not Python's "unexpected keyword"); a
    UniPC `variant` not in UNIPC_VARIANTS and ipndm_vs with rho=None (ipndm itself) are refused."""
    own = [k for k in inspect.signature(solver).parameters if k not in ("eps", "x_T", "x0", "alpha_bar", "seq")]
    if unknown := sorted(set(options) - set(own)):
        takes = ", ".join(k for k in own if k not in ("return_trajectory", "callback"))
        raise TypeError(f"{name} takes no option {', '.join(unknown)}"
                        + (f"; its options: {takes}" if takes else " (it has none)"))
    if "variant" in options:                 # refused before any network call, and by `nfe`, which makes none
        _check_unipc_variant(options["variant"])
    if name == "ipndm_vs" and "rho" in options and options["rho"] is None:    # ran plain ipndm, named ipndm_vs
        raise ValueError("ipndm_vs is ipndm with variable-step weights (rho=1.0 by default, any rho >= 1); rho=None, "
                         "equal-step weights, is solve('ipndm', ...)")


def nfe(name: str, S: int, **options) -> int:
    """Number of ε evaluations of solver `name` on S steps with its `options` as `solve` takes them (notebook 05 §7):
    only iPNDM's afs=False changes it (S instead of S − 1). `name` may also be one of INVERSIONS, x_0 → x_T (notebook 05 §8):
    ddim_invert S, heun_invert 2S − 1."""
    solver, count = _lookup(name, inversions=True)
    _check_options(name, solver, options)
    flags = {k: check_bool(k, v) if k in ("afs", "published") else v for k, v in options.items()}
    return count(check_int("number of steps S", S), **flags)


def counted(eps):
    """`eps` with a count of its calls in `.calls`: the network calls a solver really makes, to set beside `nfe`
    (notebook 05 §7)."""
    def wrapped(x, t):
        wrapped.calls += 1
        return eps(x, t)
    wrapped.calls = 0
    if hasattr(eps, "alpha_bar"):                # its schedule, for the samplers' `check_schedule`
        wrapped.alpha_bar = eps.alpha_bar
    return wrapped


def thresholded_eps(eps, alpha_bar, p: float = 0.995, s_max: float = math.inf):
    """ε whose x̂_0 is dynamically thresholded, one ε callable for every sampler and solver (notebook 10 §3):

        ε_thr(x_t, t) = (x_t − √ᾱ_t x̃_0) / √(1−ᾱ_t),   x̃_0 = `diffusion.dynamic_threshold`(x̂_0(x_t, ε(x_t, t)), p, s_max),

    so D = x̄ − σ ε_thr = x̃_0 exactly: DDIM, DPM-Solver++(2M)/(3M) and UniPC integrate the thresholded x̂_0, as
    diffusers' data-prediction schedulers with `thresholding=True` do (`diffusion.ddim_step(clip_x0=True)` is the same
    with the static clip). A solver that combines several ε's (iPNDM, DPM-Solver's ε form) integrates the same ODE but
    its steps' x̂_0 are not thresholded ones (notebook 10 §3). t may be fractional (`alpha_bar_cont`), but not −1 (σ = 0,
    where it divides by 0: `reference_solution` of it stops at t_end = 0). ε's answer is checked as every ε's is
    (`samplers.of_eps_kind`) and ε_thr comes back in its dtype (`samplers.of_inner_dtype`): a float32 ε for float64 x is
    refused by the samplers and held to float32's tolerances by the scipy paths, as the bare ε is.
    """
    check_eps(eps, "thresholded_eps: eps")
    alpha_bar = validate_alpha_bar(alpha_bar)
    check_schedule(eps, alpha_bar, "thresholded_eps: ", "x0 would be formed on another schedule than eps's")
    dynamic_threshold(torch.zeros(1, 1), p, s_max)           # p and s_max checked now, not at the first step

    def eps_thr(x, t):
        one = _one_step(t, x)
        a = _alpha_bar_cont(alpha_bar, one)
        if bool((a >= 1).any()):       # reference_solution's default t_end = -1 (predict_x0: "a_t must lie in [0, 1)")
            raise ValueError("thresholded_eps is undefined at t = -1 (alpha_bar = 1, sigma = 0), where eps = (x - sqrt(a) "
                             "x0_thr)/sqrt(1 - a) divides by 0: stop the ODE at t_end = 0 (the solvers' last step, 0 -> -1, "
                             "calls eps at t = 0 only)")
        if one is not t:               # one step for every row: ᾱ as a number, the same coefficients as per row
            a = float(a[0])
        e = of_eps_kind(eps(x.clone(), t), x, "thresholded_eps: eps", same_dtype=False)
        if not all_finite(e):    # returned as it is: the sampler's NonFiniteError names the step
            return e
        return of_inner_dtype(predict_eps(x, dynamic_threshold(predict_x0(x, e, a), p, s_max), a), e)

    eps_thr.alpha_bar = alpha_bar
    return eps_thr


# ------------------------------------------------------------------------------------- reference

IVP_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")     # scipy's solve_ivp, by name


def _check_ivp(eps, x, name: str, alpha_bar, t_start, t_end, rtol, atol, method, either_way: bool = False):
    """The checks `reference_solution` and `log_likelihood` share: `x` (called `name`) as the samplers check it
    (`check_x`: a finite floating tensor with a batch dimension) and without grad, eps a function, the tolerances > 0
    and within `check_tolerances`' range, steps t_start, t_end in [−1, T−1] with t_end < t_start (t_end ≠ t_start
    if `either_way`), method one of solve_ivp's (a name in IVP_METHODS or an OdeSolver subclass). Returns (alpha_bar,
    t_start, t_end)."""
    from scipy.integrate import OdeSolver

    if not (method in IVP_METHODS if isinstance(method, str) else isinstance(method, type) and issubclass(method, OdeSolver)):
        ours = isinstance(method, str) and method in SOLVERS
        hint = " (ddimlab's own solvers are ode.solve's; these integrate to a tolerance)" if ours else ""
        raise ValueError(f"method must be one of scipy's solve_ivp methods {', '.join(IVP_METHODS)} (or an OdeSolver "
                         f"subclass), got {method!r}{hint}")
    # floating: ε is called in x's dtype, not a rounded state; eps a function (a network: dropout in train mode would
    # make the ODE random) made for this schedule
    alpha_bar = check_x(x, alpha_bar, name, eps=eps)
    if x.requires_grad:                           # torch: "Can't call numpy() on Tensor that requires grad"
        raise ValueError(f"{name} requires grad, but the ODE is integrated with scipy, which autograd cannot follow: "
                         f"pass {name}.detach()")
    check_tolerances(rtol, atol, f"{name}'s {_dtype_name(x.dtype)} can give (eps is computed in it)", x.dtype,
                      f"{name} in float64")
    steps = [as_real(v) for v in (t_start, t_end)]
    if None in steps:
        raise ValueError(f"t_start and t_end must be finite numbers (steps, fractional allowed), got {t_start!r} and {t_end!r}")
    t_start, t_end = steps
    T = alpha_bar.shape[0]
    if not all(-1 <= v <= T - 1 for v in steps):     # else alpha_bar_cont's "continuous step t must lie in", naming neither
        raise ValueError(f"t_start and t_end must lie in [-1, T-1] = [-1, {T - 1}] (steps; -1 is clean data), got {t_start:g} "
                         f"and {t_end:g}")
    if either_way and t_end == t_start:
        raise ValueError(f"t_end must differ from t_start (t_end < t_start runs towards data, t_end > t_start towards "
                         f"noise), got {t_start:g} -> {t_end:g}")
    if not (either_way or t_end < t_start):
        raise ValueError(f"t_end must be smaller than t_start (the ODE runs from noise to data), got {t_start} -> {t_end}")
    return alpha_bar, t_start, t_end


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def rtol_floor(dtype: torch.dtype) -> float:
    """The finest rtol `reference_solution` and `log_likelihood` take with ε computed in `dtype`, its eps / 20 (6e-9 for
    float32): a tolerance far below ε's rounding only shrinks solve_ivp's steps (float32 at rtol 1e-9: 16 times the calls
    of 1e-8, and minutes at 1e-10, reference_solution's default; float16 or bfloat16 at 1e-8 the same). For float64,
    solve_ivp's own floor, 100 times float64's eps (2.2e-14), is the larger: below it scipy warned and used 2.2e-14."""
    return max(torch.finfo(dtype).eps / 20, 100 * torch.finfo(torch.float64).eps)


# The coarsest rtol and atol `reference_solution` and `log_likelihood` take. Past it solve_ivp's step control breaks down:
# from x_T ~ N(0, I) on exact scores (DOP853, atol = rtol; 2-D default_mixture and a 16-D random_mixture, data RMS 0.5 and
# 0.3) the RMS error of x_0 against rtol 1e-10 was 2e-4 to 2e-3 at rtol 1e-3, 3e-3 to 8e-3 at 1e-2, 0.26 at 2e-2 and
# 3 to 3.6, more than the data's own size, at 3e-2 to 0.1 (careless round 29); with rtol 1e-3, 1e-3 to 2e-3 at atol
# 1e-2, 9e-3 to 1.4e-2 at 3e-2 and 0.05 to 0.8 at 0.5 (round 30).
TOL_CEILING = 1e-2


def check_tolerances(rtol, atol, what: str, dtype: torch.dtype, instead: str | None = None, as_option: bool = False) -> None:
    """ε computed in `dtype`: rtol and atol each a finite number > 0, no finer than `rtol_floor(dtype)` and no coarser
    than TOL_CEILING. atol is in the units of x (data in [−1, 1], x_T ~ N(0, I)) and of log p (nats), where a value of
    size 1 is rounded to dtype's eps: the same floor as rtol's (atol = 1e-300 left solve_ivp relative control alone,
    which fails where a coordinate, or the divergence's integral at its start, is 0). `what` completes "rtol = ... is
    finer than" and `instead` "pass rtol >= floor, or" (but for float64, the widest). as_option: named as a command
    line's options ("--rtol 0.02", benchmarks/ode_bits.py), not as Python's arguments ("rtol = 0.02")."""
    for name, given in (("rtol", rtol), ("atol", atol)):
        name = f"--{name}" if as_option else name
        if (tol := as_real(given)) is None or tol <= 0:
            raise ValueError(f"{name} must be a finite number > 0 (solve_ivp's tolerance), got {given!r}")
        said = f"{name} {tol:g}" if as_option else f"{name} = {tol:g}"
        if tol > TOL_CEILING:
            raise ValueError(f"{said} is coarser than {TOL_CEILING:g}, past which solve_ivp's error control breaks down "
                             f"(its solution can be farther off than the data's own size): pass {name} <= {TOL_CEILING:g}")
        if tol < (floor := rtol_floor(dtype)):
            raise ValueError(f"{said} is finer than {what}, and solve_ivp would take ever smaller steps: pass {name} >= "
                             f"{floor:.2g}" + (f", or {instead}" if instead and dtype != torch.float64 else ""))


# how to split a batch too large for ε (`samplers.eval_eps`): each sample's ODE is its own
SPLIT_ODE = "each sample's ODE is its own: call it on parts of the batch, x.split(k)"


def _eps_of_xbar(eps, alpha_bar, xbar: torch.Tensor, sig: float, sig_max: float, dtype, tols) -> torch.Tensor:
    """The right-hand side of (ODE), ε(x̄/√(σ²+1), t(σ)), float64, with ε called in `dtype` (x's) and t as `call_eps`
    passes a fractional step; σ below 0 is read as 0 and, for t only, above sig_max as sig_max (the solver's rounding).
    An ε returned in a coarser dtype than x's (a float32 network behind a lambda) must resolve `tols` = (rtol, atol) too.
    An allocation that fails in ε is said in one line, as in the samplers (`samplers.eval_eps`)."""
    sig = max(sig, 0.0)
    x = (xbar / math.sqrt(sig ** 2 + 1)).to(dtype)
    t = torch.full((x.shape[0],), float(_t_of_sigma(alpha_bar, min(sig, sig_max))), device=x.device,
                   dtype=torch.promote_types(dtype, torch.float32))
    e = of_eps_kind(eval_eps(eps, x, t, SPLIT_ODE), x, same_dtype=False)
    if e.dtype != dtype:
        check_tolerances(*tols, f"the {_dtype_name(e.dtype)} that eps(x, t) returns can give", e.dtype,
                          f"have eps return x's {_dtype_name(dtype)}")
    e = e.to(torch.float64)
    if not all_finite(e):
        raise NonFiniteError(f"eps(x, t) returned NaN or inf at t = {float(t[0]):.6g} (sigma = {sig:.6g})")
    return e


def _check_deterministic(rhs, sig: float, y0: np.ndarray) -> None:
    """The ODE's right-hand side twice at its first point: two answers mean a random eps (a network left in train mode
    behind a lambda, whose dropout `check_eps` cannot see), and a random ODE has no solution to tolerance. Kernels that
    sum in a varying order (some on GPUs) differ far below the 1e-3 allowed; dropout changes ε by several per cent."""
    first, second = rhs(sig, y0), rhs(sig, y0)
    gap, scale = float(np.abs(first - second).max(initial=0.0)), float(np.abs(first).max(initial=0.0))
    if gap > 1e-3 * scale:
        raise ValueError(f"eps(x, t) gave two answers for the same x and t (up to {gap:.2g} apart, of {scale:.2g}): a random "
                         f"eps makes the ODE random; a network in train mode (dropout) needs net.eval() first")


def _check_apart(e: torch.Tensor, xbar: torch.Tensor) -> None:
    """ValueError if the batch's samples interact in eps (batch statistics: a batch norm in train mode), which
    `log_likelihood` cannot see: it reads each sample's divergence from the batch's one graph, which would then hold
    cross terms. Each sample j gets a distinct k-bit code of ⌊k/2⌋ ones (k the fewest with C(k, ⌊k/2⌋) >= B: 4 for
    B <= 6, 10 for B <= 252); for each bit, the gradient of the randomly weighted ε of the samples whose bit is 1 with
    respect to the samples whose bit is 0 must be exactly 0, as it is where no path of the graph joins them. Two
    distinct codes of one weight differ both ways, so every ordered pair (i ≠ j) is looked at: k backward passes, against
    the solve's (1 + d or hutchinson) per call of eps."""
    B = len(e)
    if B < 2:
        return
    k = next(k for k in itertools.count(2) if math.comb(k, k // 2) >= B)
    codes = torch.zeros(B, k, dtype=torch.bool)
    for j, ones in zip(range(B), itertools.combinations(range(k), k // 2)):
        codes[j, list(ones)] = True
    codes = codes.to(e.device)
    w = torch.randn(e.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(e.device, e.dtype)
    for bit in range(k):
        out = codes[:, bit].reshape(-1, *[1] * (e.dim() - 1))
        grad = torch.autograd.grad((e * (w * out)).sum(), xbar, retain_graph=bit < k - 1)[0]
        if bool((grad[~codes[:, bit]] != 0).any()):
            raise ValueError("eps mixes the samples of a batch (one sample's eps changes with another sample, as under a "
                             "batch norm in train mode), and log_likelihood reads each sample's divergence from the batch's "
                             "one graph, so the densities would be wrong: use net.eval(), or call it one sample at a time")


def _solve_ivp(rhs, span, y0: np.ndarray, method, rtol, atol) -> np.ndarray:
    """The state at the end of `span`, by scipy's solve_ivp with the tolerances as floats (a 0-d tensor or numpy scalar
    passed `_check_ivp` but failed inside scipy); a failed solve said with the tolerances it could not meet."""
    from scipy.integrate import solve_ivp

    rtol, atol = as_real(rtol), as_real(atol)
    sol = solve_ivp(rhs, span, y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:                           # e.g. "Required step size is less than spacing between numbers."
        raise ValueError(f"solve_ivp could not meet rtol = {rtol:g} and atol = {atol:g} ({sol.message.rstrip('.')}): "
                         f"loosen them (atol is in the units of x and of log p, nats), or try another method")
    return np.ascontiguousarray(sol.y[:, -1])


def reference_solution(eps, x_T, alpha_bar, t_start, t_end=-1, rtol: float = 1e-10, atol: float = 1e-10,
                       method: str = "DOP853") -> torch.Tensor:
    """Solve (ODE) from x_T at step t_start to step t_end (default −1: x_0) with scipy's solve_ivp (notebook 05 §3).

    Either way: t_end > t_start integrates from data towards noise (σ increasing; t_start = −1 starts at σ = 0, x̄ = x_0),
    the exact inversion that `samplers.ddim_invert` and `heun_invert` approximate (notebook 05 §8).

    The whole batch is one state vector (the ODE is per-sample but scipy's step control then takes the
    worst sample's error). t_start / t_end may be floats (continuous steps); ε is called with float
    steps t(σ), down to t = −1 (ᾱ = 1) when t_end = −1, which the exact lab (`toy.exact_eps`) supports.
    The state is float64; ε is called in x_T's dtype (a float32 network takes float32 x_T, and then rtol, atol ≥ 6e-9: a
    tolerance below `rtol_floor(dtype)`, ε's rounding (scipy's own floor for float64), is refused, as it only shrinks the
    steps; so is one above TOL_CEILING = 0.01, where the step control breaks down). method: solve_ivp's, a name in
    IVP_METHODS or an OdeSolver subclass. Returns x at t_end (= x̄ there times √ᾱ), float64.
    """
    alpha_bar, t_start, t_end = _check_ivp(eps, x_T, "x_T", alpha_bar, t_start, t_end, rtol, atol, method, either_way=True)
    sig0, sig1 = float(sigma_at(alpha_bar, t_start)), float(sigma_at(alpha_bar, t_end))
    shape, dev = x_T.shape, x_T.device

    @torch.no_grad()                              # a network's ε would require grad, and .numpy() refuse it
    def rhs(sig, y):
        xbar = torch.from_numpy(y).reshape(shape).to(dev)
        return _eps_of_xbar(eps, alpha_bar, xbar, sig, max(sig0, sig1), x_T.dtype, (rtol, atol)).reshape(-1).cpu().numpy()

    y0 = (x_T.to(torch.float64) / math.sqrt(float(alpha_bar_cont(alpha_bar, t_start)))).reshape(-1).cpu().numpy()
    _check_deterministic(rhs, sig0, y0)
    xbar = torch.from_numpy(_solve_ivp(rhs, (sig0, sig1), y0, method, rtol, atol)).reshape(shape).to(dev)
    return xbar / math.sqrt(sig1 ** 2 + 1)


PROBES = ("rademacher", "gaussian")     # log_likelihood's Hutchinson probes
EXACT_DIVERGENCE_MAX = 1024             # the most coordinates per sample log_likelihood's exact divergence takes: see there
_BACKWARD = "log_likelihood's backward passes through eps (the divergence's vector-Jacobian products)"
_DIFFERENTIABLE_NET = "pass a network as lambda x, t: net(x, t) with net.eval() (checkpoint.eps_fn runs it without gradients)"


def standard_normal_logpdf(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) per sample (the rows of x, any trailing shape), float64: the default prior of `log_likelihood`
    (notebook 05 §9)."""
    # a bool was read as 0/1 and a complex x without its imaginary part; a 0-d x or a list failed inside torch
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor with a batch dimension (B, ...), got "
                        f"{(x.dtype, tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__}")
    x = x.to(torch.float64).reshape(x.shape[0], math.prod(x.shape[1:]))      # -1 is ambiguous for B = 0
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf, whose log density is undefined")
    return -0.5 * (x.pow(2).sum(1) + x.shape[1] * math.log(2 * math.pi))


def log_likelihood(eps, x_0, alpha_bar, t_start=None, t_end=-1, prior=None, rtol: float = 1e-8, atol: float = 1e-8,
                   hutchinson: int | None = None, probe: str | None = None, generator: torch.Generator | None = None,
                   method: str = "DOP853") -> torch.Tensor:
    """log p(x_0) in nats per sample (float64, shape (B,)) under the probability-flow ODE's push-forward of `prior`
    (notebook 05 §9).

    With x̄ = x/√ᾱ, σ and F(x̄, σ) = ε(x̄/√(σ²+1), t(σ)) as in (ODE), the instantaneous change of variables
    (Chen et al. 2018, Theorem 1) gives d log p̄_σ(x̄(σ))/dσ = −∇_x̄·F, and the density of x = √ᾱ x̄ is that of x̄
    times ᾱ^{−d/2}, so

        log p(x_0) = log prior(x_T) + (d/2) log ᾱ(t_start) + ∫_{σ(t_end)}^{σ(t_start)} ∇_x̄·F dσ − (d/2) log ᾱ(t_end),

    where x_0 sits at step t_end (default −1, ᾱ = 1: the last term vanishes), x_T = √ᾱ(t_start) x̄(σ(t_start)) at
    t_start (default T − 1), and the augmented state [x̄, ∫∇·F] is integrated by scipy's solve_ivp from data to noise.
    It is the data density only if ε is the exact ε* and prior is q(x_T); otherwise it is the density of the ODE's own
    samples (DDIM with η = 0 and S → ∞ from prior draws). With t_end = −1 ε is called at steps in (−1, 0), which a
    network trained on steps 0..T−1 never saw (DDIM's last step, 0 → −1, calls it at t = 0); t_end = 0 gives the
    density of x at step 0 (σ = 0.01 on DDPM's schedule) from steps it knows.

    prior: None for N(0, I) (`standard_normal_logpdf`), or a function x_T (B, ...) float64 -> (B,) log densities.
    hutchinson: None for the exact divergence (d backward passes per ε call), for at most EXACT_DIVERGENCE_MAX = 1,024
    coordinates per sample: a solve calls ε about a thousand times (1,253 for the tests' 8-channel UNet on 8 × 8 images
    at rtol = atol = 1e-3), and on one CPU thread that UNet's exact divergence took 0.46 s per call at d = 64 (the
    digits, the largest ddimlab's benchmarks take it for), 18 s at 32 × 32 and 53 s at 3 × 32 × 32: ten minutes, six
    hours and eighteen per batch, and a network of CIFAR's size costs more per pass; a CIFAR image is refused, naming
    hutchinson=k. k ≥ 1: the Hutchinson–Skilling estimate with k `probe` vectors ξ ("rademacher", the default, or
    "gaussian") per sample,
    E[ξᵀ(∂F/∂x̄)ξ] = ∇·F (notebook 05 §9's ξ), drawn once from `generator` and kept along the whole path, so the result
    is an unbiased estimate of log p. probe and generator without hutchinson are an error: the exact divergence draws nothing.
    eps must be differentiable in x by autograd (a network as `lambda x, t: net(x, t)` in eval mode, not `checkpoint.eps_fn`),
    and the samples must not interact in it (each sample's divergence is read from the batch's one graph; `_check_apart`
    refuses an eps in which any two do). method: solve_ivp's, as in `reference_solution`. An allocation that fails in ε or
    in the backward passes through it is one line saying how to split the batch (`samplers.memory_said`).
    """
    # a network, or checkpoint.eps_fn of one (check_eps's advice): eps_fn runs it without gradients
    if isinstance(eps, torch.nn.Module) or getattr(eps, "network", None) is not None:
        what = (f"a network ({type(eps).__name__})" if isinstance(eps, torch.nn.Module) else
                "checkpoint.eps_fn(net), which runs net without gradients,")
        raise TypeError(f"eps is {what} and log_likelihood differentiates eps in x: {_DIFFERENTIABLE_NET}")
    alpha_bar = validate_alpha_bar(alpha_bar)
    t_start = alpha_bar.shape[0] - 1 if t_start is None else t_start
    alpha_bar, t_start, t_end = _check_ivp(eps, x_0, "x_0", alpha_bar, t_start, t_end, rtol, atol, method)
    if prior is not None and not callable(prior):
        raise TypeError(f"prior must be None (N(0, I)) or a function x_T -> log density per sample, got {type(prior).__name__}")
    if probe is not None and probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    check_generator(generator, "cpu")                  # the probes are drawn on the CPU, then moved to x_0's device
    if hutchinson is None and (probe, generator) != (None, None):     # else silently the exact, d-times dearer, divergence
        raise ValueError("probe and generator are for Hutchinson's estimate: give hutchinson=k (probes per sample) with them, "
                         "or neither for the exact divergence")
    if hutchinson is not None:
        hutchinson = check_int("hutchinson", hutchinson, 1, note=" (the number of probes; None for the exact divergence)")
    shape, dev, B = x_0.shape, x_0.device, x_0.shape[0]
    if B == 0:                                         # an empty batch maps to an empty answer, as in the samplers
        return torch.zeros(0, dtype=torch.float64)
    d = x_0[0].numel()
    if d == 0:                                         # the exact divergence summed no terms: "'int' has no attribute 'detach'"
        raise ValueError(f"x_0 of shape {tuple(shape)} has no coordinates per sample, and a density needs at least one")
    if hutchinson is None and d > EXACT_DIVERGENCE_MAX:     # else hours per batch, with no word (see the docstring)
        raise ValueError(f"the exact divergence (hutchinson=None) takes d = {d:,} backward passes through eps per call, and "
                         f"a solve makes about a thousand calls: hours above d = {EXACT_DIVERGENCE_MAX:,}; pass hutchinson=k "
                         f"(k probes per sample, k passes per call: an unbiased estimate of log p)")
    if hutchinson is not None and hutchinson > d:      # 10**9 asked torch for 48 GB of probes ("DefaultCPUAllocator")
        raise ValueError(f"hutchinson = {hutchinson} probes per sample cost more backward passes than the exact divergence's "
                         f"d = {d}, and add variance: pass hutchinson <= {d}, or None for the exact divergence")
    sig_data, sig_noise = float(sigma_at(alpha_bar, t_end)), float(sigma_at(alpha_bar, t_start))
    if hutchinson is not None:
        xi = torch.randn((hutchinson, *shape), generator=generator, dtype=torch.float64)
        xi = (xi if probe == "gaussian" else xi.sign()).to(dev)   # the sign of a Gaussian is a Rademacher ±1

    def divergence(e, xbar):
        """∇_x̄·F per sample: exact (one backward pass per coordinate) or the Hutchinson mean over the probes."""
        if hutchinson is None:
            rows = e.reshape(B, d)
            return sum(torch.autograd.grad(rows[:, i].sum(), xbar, retain_graph=True)[0].reshape(B, d)[:, i]
                       for i in range(d))
        return sum((torch.autograd.grad((e * xi_k).sum(), xbar, retain_graph=True)[0] * xi_k).reshape(B, d).sum(1)
                   for xi_k in xi) / hutchinson

    def rhs(sig, y):
        with torch.enable_grad():
            xbar = torch.from_numpy(y[:B * d]).reshape(shape).to(dev).requires_grad_()
            e = _eps_of_xbar(eps, alpha_bar, xbar, sig, sig_noise, x_0.dtype, (rtol, atol))
            if not e.requires_grad:                 # torch: "element 0 of tensors does not require grad"
                raise ValueError("eps(x, t) returned a tensor autograd cannot differentiate in x, and log_likelihood needs "
                                 f"its divergence: {_DIFFERENTIABLE_NET}")
            with memory_said(_BACKWARD, x_0, SPLIT_ODE):
                div = divergence(e, xbar)
        return np.concatenate([e.detach().reshape(-1).cpu().numpy(), div.detach().to(torch.float64).cpu().numpy()])

    y0 = np.concatenate([(x_0.to(torch.float64) / math.sqrt(float(alpha_bar_cont(alpha_bar, t_end)))).reshape(-1).cpu().numpy(),
                         np.zeros(B)])
    _check_deterministic(rhs, sig_data, y0)
    with torch.enable_grad():
        xbar = torch.from_numpy(y0[:B * d]).reshape(shape).to(dev).requires_grad_()
        e = _eps_of_xbar(eps, alpha_bar, xbar, sig_data, sig_noise, x_0.dtype, (rtol, atol))
        with memory_said(_BACKWARD, x_0, SPLIT_ODE):
            _check_apart(e, xbar)
    y = torch.from_numpy(_solve_ivp(rhs, (sig_data, sig_noise), y0, method, rtol, atol))
    a_T, a_0 = float(alpha_bar_cont(alpha_bar, t_start)), float(alpha_bar_cont(alpha_bar, t_end))
    x_T = (y[:B * d] * math.sqrt(a_T)).reshape(shape).to(dev)
    log_prior = (standard_normal_logpdf if prior is None else prior)(x_T)
    log_prior = real_array("prior(x_T)", log_prior)    # bools were read as 0/1, complex numbers without their imaginary part
    log_prior = _of_x_shape(torch.from_numpy(log_prior), x_T.reshape(B, -1)[:, 0], "prior(x_T)")
    if n_bad := int((torch.isnan(log_prior) | (log_prior == math.inf)).sum()):       # −inf is a zero density, and allowed
        raise ValueError(f"prior(x_T) returned NaN or +inf for {n_bad} of {B} samples: a log density is a finite number, "
                         f"or -inf where the density is 0")
    return log_prior + 0.5 * d * (math.log(a_T) - math.log(a_0)) + y[B * d:]
