"""Noise schedules, ᾱ_t, σ(t) and timestep sub-sequences.

Conventions (notebook 01 "Notation" and §3, README "Notation"):

- discrete steps t ∈ {0, …, T−1}; the network is called with the integer t;
- ᾱ_t = ∏_{s≤t} (1 − β_s), and ᾱ_{−1} := 1 is clean data;
- the DDIM paper writes α_t for what DDPM calls ᾱ_t. Everything here uses DDPM's ᾱ.

Schedules are computed in float64; cast where used.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .checks import as_real, check_bool, check_fits, check_int, check_numbers, check_values, int_range, is_complex
from .diffusion import _check_range, check_precision, wide

SCHEDULES = ("linear", "cosine", "quadratic")
SPACINGS = ("uniform", "quad", "linspace", "trailing")
# Bytes per step that making a schedule holds at once: the float64 tables β, 1 − β and ᾱ (8 each) and alpha_bar's
# masks (1 each), or the cosine schedule's list of Python floats (32 each) and its tensor.
SCHEDULE_BYTES = 40


def beta_schedule(name: str = "linear", T: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> torch.Tensor:
    """β_t for t = 0..T−1 in float64 (plotted in notebook 01 §3).

    linear: DDPM, β_t rising from 1e-4 to 0.02 (for T = 1000); beta_start > beta_end (swapped) is a ValueError.
    quadratic: √β linear between √beta_start and √beta_end.
    cosine: improved DDPM, ᾱ(t) = cos²(((t/T)+s)/(1+s)·π/2)/f(0) with s = 0.008, β clipped at 0.999; it has no
    beta_start or beta_end (other values are a ValueError, not ignored).
    """
    T = check_int("T", T)
    check_fits(SCHEDULE_BYTES * T, f"a schedule of T = {T:,} steps",     # else torch's allocator, or a long list first
               lambda limit: f"T must be {int_range(1, int(limit // SCHEDULE_BYTES))}")
    if name == "cosine" and (beta_start, beta_end) != (1e-4, 0.02):
        raise ValueError(f"the cosine schedule has no beta_start or beta_end (it is set by its alpha_bar curve), got "
                         f"{beta_start} and {beta_end}; drop them, or use 'linear' or 'quadratic'")
    ends = [as_real(b) for b in (beta_start, beta_end)]
    if None in ends or not all(0 < b < 1 for b in ends):
        raise ValueError(f"beta_start and beta_end must be numbers in (0, 1) (DDPM's: 1e-4 and 0.02), got {beta_start!r} "
                         f"and {beta_end!r}")
    beta_start, beta_end = ends
    if beta_start > beta_end and name in ("linear", "quadratic"):    # swapped ends: ᾱ still decreases (and ends where
        raise ValueError(f"beta_start must not exceed beta_end: beta rises with t, from beta_start at t = 0 to beta_end "
                         f"at t = T - 1 (DDPM §4: 1e-4 to 0.02), got {beta_start:g} and {beta_end:g}; swap them (a "
                         f"falling beta, as a table, goes to schedule.alpha_bar)")     # it would), so nothing else says it
    if name == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if name == "quadratic":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    if name == "cosine":
        s = 0.008
        f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f(t + 1) / f(t), 0.999) for t in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


def alpha_bar(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t}(1 − β_s), float64, shape (T,) (notebook 01 §2); every β_t must be real and lie in (0, 1)."""
    if is_complex(check_numbers("betas", betas)):                 # the cast would drop the imaginary part
        raise TypeError(f"betas must be real numbers, got complex ones ({getattr(betas, 'dtype', 'a list')})")
    b = torch.as_tensor(betas, dtype=torch.float64)
    if b.ndim != 1 or b.numel() < 1:          # cumprod would run along a 2-D table's first axis
        raise ValueError(f"betas must be a non-empty 1-D table (schedule.beta_schedule), got shape {tuple(b.shape)}")
    bad = ~((b > 0) & (b < 1))                                 # NaN too
    if bool(bad.any()):
        raise ValueError(f"every beta must lie in (0, 1) (check beta_start and beta_end), got {b[bad].flatten()[0].item()}")
    return torch.cumprod(1 - b, dim=0)


def make_alpha_bar(name: str = "linear", T: int = 1000) -> torch.Tensor:
    """ᾱ for a named schedule: `alpha_bar(beta_schedule(name, T))` (notebook 01 §3)."""
    return alpha_bar(beta_schedule(name, T))


def validate_alpha_bar(alpha_bar) -> torch.Tensor:
    """Check a ᾱ table once and return its own float64 copy (on its device): 1-D, finite, every value in (0, 1),
    strictly decreasing in t (noise grows with t). What every sampler, solver and bound assumes; a copy, so that the
    caller's later edits of its table change nothing that kept it (`toy.exact_eps`)."""
    if isinstance(alpha_bar, torch.Tensor) and not alpha_bar.dtype.is_floating_point:
        raise ValueError(f"alpha_bar must be a float table (schedule.make_alpha_bar), got {alpha_bar.dtype}")
    check_precision(alpha_bar)                           # else "values must lie in (0, 1), got 1.0"
    try:
        a = torch.as_tensor(alpha_bar, dtype=torch.float64).clone()
    except (TypeError, ValueError, RuntimeError):        # strings, ragged lists: torch's "too many dimensions 'str'"
        raise ValueError(f"alpha_bar must be a 1-D table of numbers (schedule.make_alpha_bar), got "
                         f"{type(alpha_bar).__name__} {str(alpha_bar)[:60]}") from None
    check_values("alpha_bar", a, "give the table itself")
    if a.ndim != 1 or a.numel() < 1:
        raise ValueError(f"alpha_bar must be a non-empty 1-D table (schedule.make_alpha_bar), got shape {tuple(a.shape)}")
    if not bool(torch.isfinite(a).all()) or not bool(((a > 0) & (a < 1)).all()):
        bad = a[~(torch.isfinite(a) & (a > 0) & (a < 1))][0].item()
        raise ValueError(f"alpha_bar values must lie in (0, 1) (1 is clean data, reached only at the implicit "
                         f"step -1; 0 is pure noise), got {bad}")
    if a.numel() > 1 and not bool((a[1:] < a[:-1]).all()):
        t = int((a[1:] >= a[:-1]).nonzero()[0]) + 1
        under = " (float64 runs out below 1e-308: a table this long for its betas underflows; use a smaller T)" \
            if a[t].item() < 1e-300 else ""
        raise ValueError(f"alpha_bar must be strictly decreasing in t (more noise at later steps), but "
                         f"alpha_bar[{t}] = {a[t].item():.6g} >= alpha_bar[{t - 1}] = {a[t - 1].item():.6g}{under}")
    return a


def as_steps(t, device=None) -> torch.Tensor:
    """Steps `t` (an int or float, a sequence, a numpy array of any strides, a tensor) as a tensor on `device`; integer
    ones as int64, so that range checks hold −1 and T − 1 (in uint8, −1 was 255 and every step was refused)."""
    if isinstance(t, (str, bytes)):          # (bool steps go on: each caller refuses them, saying what the step is for)
        check_numbers("steps t", t)
    if not isinstance(t, torch.Tensor):
        given, t = t, np.array(t)            # a copy, so [::-1] views work
        if t.dtype == object:       # None, a set, 2**70: torch's "can't convert np.ndarray of type numpy.object_"
            raise TypeError(f"steps t must be a number or a sequence of numbers (integers within int64), got "
                            f"{type(given).__name__} ({given!r:.60})")
        if t.dtype == np.uint64 and t.size and int(t.max()) > np.iinfo(np.int64).max:      # .long() would wrap it to < 0
            raise ValueError(f"steps t must be integers that fit in int64, got {int(t.max())}")
        t = torch.as_tensor(t)
    t = t.to(device) if device is not None else t
    return t.long() if not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool) else t


def alpha_bar_at(alpha_bar: torch.Tensor, t) -> torch.Tensor:
    """ᾱ_t with ᾱ_{−1} = 1; `t` is an int or an integer tensor in −1..T−1 (notebook 01 "Notation")."""
    if not isinstance(alpha_bar, torch.Tensor):        # a list or an array, as the other table functions take
        alpha_bar = torch.as_tensor(np.asarray(alpha_bar, dtype=np.float64))
    if alpha_bar.ndim != 1:
        raise ValueError(f"alpha_bar must be a 1-D table (schedule.make_alpha_bar), got shape {tuple(alpha_bar.shape)}")
    T = alpha_bar.shape[0]
    if type(t) is int and -1 <= t <= T - 1:      # one step of a sampler's loop: 1 µs instead of the tensor path's 35
        return alpha_bar[t].clone() if t >= 0 else alpha_bar.new_ones(())
    t = as_steps(t, alpha_bar.device)
    if t.dtype != torch.long:
        raise ValueError(f"step t must be an integer (use ode.alpha_bar_cont for fractional steps), got {t.dtype}")
    if bool(((t < -1) | (t > T - 1)).any()):
        raise ValueError(f"step t must lie in -1..T-1 = -1..{T - 1} (-1 is clean data), got {t.tolist()}")
    padded = torch.cat([alpha_bar.new_ones(1), alpha_bar])
    return padded[t + 1]


def _alpha_bar_values(alpha_bar) -> torch.Tensor:
    """ᾱ values of any shape (a number, a list, an array or a tensor, as the other table functions take) as a tensor:
    float64 unless a float tensor (`diffusion.wide`), each in (0, 1] (1 is clean data, step −1), else a ValueError; a
    value outside gave a negative SNR or a NaN σ."""
    a = wide(_check_range(alpha_bar, "alpha_bar", 0.0, 1.0, True, False))
    return a if a.is_floating_point() else a.double()


def snr(alpha_bar) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) (notebook 01 §3); inf at ᾱ = 1 (clean data)."""
    a = _alpha_bar_values(alpha_bar)
    return a / (1 - a)


def sigma_of(alpha_bar) -> torch.Tensor:
    """σ(t) = √((1 − ᾱ_t)/ᾱ_t), the ODE's time variable (DDIM §4.3, notebook 05 §1); 0 at ᾱ = 1 (clean data)."""
    a = _alpha_bar_values(alpha_bar)
    return torch.sqrt((1 - a) / a)


def cosine_t_probs(alpha_bar: torch.Tensor) -> torch.Tensor:
    """P(t) that gives a table's training steps the noise levels of the cosine schedule (notebook 06 §3).

    The cosine schedule without its offset, ᾱ(u) = cos²(uπ/2) for u ~ U(0, 1), has σ(u) = tan(uπ/2), so
    P(σ(u) ≤ σ) = (2/π)·arctan σ. Step t takes the u whose σ(u) lies in (σ_{t−1}, σ_t] (step 0 everything
    below σ_0, step T−1 everything above σ_{T−2}): with the linear table, 21% of draws land on t < 100 and
    2.5% on t ≥ 800, where uniform t puts 10% and 20%. float64, shape (T,), sums to 1.
    """
    u = 2 / math.pi * torch.atan(sigma_of(validate_alpha_bar(alpha_bar)[:-1]))
    return torch.diff(u, prepend=u.new_zeros(1), append=u.new_ones(1))


def timesteps(S: int, T: int = 1000, spacing: str = "uniform") -> torch.Tensor:
    """A decreasing sub-sequence τ of {0, …, T−1} with S distinct steps (notebook 04 §4).

    A sampler visits τ in order and then steps to ᾱ_{−1} = 1 (clean data); see `step_pairs`.

    - uniform:  the official DDIM code's `range(0, T, T // S)`, written as k·(T//S) for k < S so
      that it has exactly S steps (the official range has extra steps when S does not divide T).
      Starts at 0; its largest step is (S−1)·(T//S), e.g. 900 for S = 10.
    - quad:     the official `int(linspace(0, √(0.8 T), S)²)`: largest step 0.8 T. The official
      sequence repeats small steps (for S = 100: 0, 0, 0, 0, 1, 1, …); a repeated step leaves x
      unchanged in DDIM while costing a network call, so ddimlab keeps each step once and the
      sequence can be shorter than S (S = 100 gives 96 distinct steps, S = 1000 gives 688).
    - linspace: round(linspace(0, T−1, S)), diffusers' "linspace"; starts at T−1.
    - trailing: round(arange(T, 0, −T/S)) − 1, diffusers' "trailing"; starts at T−1.
    """
    T = check_int("T", T)
    S = check_int("number of steps S", S, 1, T, " (T, the schedule's length)")
    if spacing == "uniform":
        seq = np.arange(S) * (T // S)
    elif spacing == "quad":
        seq = np.unique((np.linspace(0, math.sqrt(T * 0.8), S) ** 2).astype(np.int64))
    elif spacing == "linspace":
        seq = np.round(np.linspace(0, T - 1, S)).astype(np.int64)
    elif spacing == "trailing":
        seq = np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    seq = torch.as_tensor(np.sort(np.unique(seq))[::-1].copy(), dtype=torch.long)
    return validate_timesteps(seq, T)


def validate_timesteps(seq, T: int = 1000, inverting: bool = False) -> torch.Tensor:
    """Check that τ is a strictly decreasing sequence of integers in 0..T−1 and return it. `inverting`: for an
    inversion (data to noise), which takes τ as the samplers do and visits it in reverse: said so if τ is not."""
    T, inverting = check_int("T", T), check_bool("inverting", inverting)   # T = 1.5 took step 0, "1000" failed in Python
    if seq is None:                     # as_steps would make it a 0-d object array, which torch cannot take
        raise TypeError("timesteps (seq) must be a 1-D sequence of integer steps, e.g. schedule.timesteps(S, T), got None")
    seq = as_steps(seq)
    if seq.ndim != 1 or seq.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {tuple(seq.shape)}")
    if seq.dtype != torch.long:
        raise ValueError(f"timesteps must be integers, got {seq.dtype}")
    if int(seq.min()) < 0 or int(seq.max()) > T - 1:
        raise ValueError(f"timesteps must lie in 0..T-1 = 0..{T - 1}, got {int(seq.min())}..{int(seq.max())}")
    if seq.numel() > 1 and not bool((seq[1:] < seq[:-1]).all()):
        i = int((seq[1:] >= seq[:-1]).nonzero()[0])
        t, s = int(seq[i]), int(seq[i + 1])
        why = ("it increases throughout: pass it reversed (seq.flip(0) for a tensor)" if bool((seq[1:] > seq[:-1]).all())
               else f"t = {t} is listed twice; give each step once" if t == s else f"t = {s} comes after t = {t}")
        order = ("as the samplers take them: an inversion visits them in reverse, from data to noise" if inverting else
                 "sample from noise to data")
        raise ValueError(f"timesteps must be strictly decreasing ({order}), got "
                         f"{seq.tolist() if seq.numel() <= 12 else f'{seq.numel()} steps'}: {why}")
    return seq


def step_pairs(seq: torch.Tensor) -> list[tuple[int, int]]:
    """[(t, s)] pairs a sampler takes along τ, the last one stepping to s = −1 (ᾱ = 1) (notebook 04 §4)."""
    steps = as_steps(seq)
    if steps.dtype != torch.long or steps.ndim != 1 or not bool((steps[1:] < steps[:-1]).all()):
        raise ValueError(f"seq must be a 1-D list of strictly decreasing integer steps (timesteps), got {seq!r}")
    if steps.numel() and int(steps[-1]) < 0:          # the pairs step to s = -1 themselves
        raise ValueError(f"seq's steps must be >= 0 (timesteps 0..T-1), got {steps.tolist()}")
    seq = steps.tolist()
    return list(zip(seq, seq[1:] + [-1]))
