"""The forward process, DDPM's posterior and the DDIM family q_σ.

All functions take ᾱ values (`a_t`, `a_s`: Python floats, 0-d tensors, or per-sample tensors of
shape (B,)) rather than step indices, so the same algebra serves any schedule and any
sub-sequence. Use `schedule.alpha_bar_at(alpha_bar, t)` to look them up (ᾱ_{−1} = 1). Values are
range-checked (a ValueError instead of inf or NaN) when they are Python numbers or CPU tensors; tensors
on an accelerator are not, since a check would synchronise it at every call.
Coefficients such as √(1−ᾱ_t) and 1 − ᾱ_t/ᾱ_s are formed from ᾱ given as numbers in float64 (`wide`) and cast to
x's dtype only then: formed in float32, DDPM's posterior mean at t = 1 was off by 7e-4 (1 − ᾱ_1/ᾱ_0 = β_1 ≈ 1.2e-4
kept three digits).
The DDIM paper's α_t is DDPM's ᾱ_t.
"""
from __future__ import annotations

import math

import torch

from .checks import all_finite, as_real, check_bool, check_numbers, check_untracked, check_values

VARIANCES = ("small", "large")   # DDPM's two reverse variances: β̃ (posterior) and β (notebook 02 §1)


def check_precision(a) -> None:
    """A float16 or bfloat16 ᾱ (a tensor, or a numpy float16 array) is a TypeError: it rounds ᾱ near 1 to 1 (ᾱ_0 =
    0.9999 is 1.0; bfloat16: ᾱ_5 = 0.9985 too), which silently removes the noise there, and no later cast brings the
    digits back. Said as such, not as the value 1 it became."""
    dtype = getattr(a, "dtype", None)
    if dtype in (torch.float16, torch.bfloat16) or str(dtype) == "float16":
        raise TypeError(f"alpha_bar values in {dtype} round the steps near t = 0 to 1 (no noise); pass them in "
                        f"float32 or float64 (schedule tables are float64), and cast only x")


def wide(a) -> torch.Tensor:
    """ᾱ-like `a` as a tensor to form coefficients in: float64 for Python numbers (the samplers pass ᾱ so); a tensor
    keeps its dtype, since a float32 ᾱ has been rounded already (training's table: its steps stay bitwise the same).
    A float16 or bfloat16 ᾱ is a TypeError (`check_precision`)."""
    check_precision(a)
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=torch.float64)


def _check_range(a, name: str, low: float, high: float, low_open: bool, high_open: bool):
    """Raise a ValueError naming `name` unless every value of `a` is finite and in the interval."""
    if isinstance(a, float) and math.isfinite(a) and (a > low if low_open else a >= low) and (
            a < high if high_open else a <= high):
        return a   # the samplers' common case, without building a tensor
    v = wide(check_numbers(name, a))
    if v.is_complex():                       # torch's "lt_cpu not implemented for 'ComplexFloat'"
        raise TypeError(f"{name} must be real, got {v.dtype}")
    if v.device.type != "cpu":
        return a   # checking would synchronise the accelerator at every call (training, sampling)
    bad = ~torch.isfinite(v) | ((v <= low) if low_open else (v < low)) | ((v >= high) if high_open else (v > high))
    if bool(bad.any()):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        shown = v[bad].flatten()[0].item() if v.ndim else v.item()
        raise ValueError(f"{name} must lie in {interval}, got {shown} (alpha_bar values: 1 is clean data, "
                         f"0 pure noise; look them up with schedule.alpha_bar_at)")
    return a


def _check_pair(a_t, a_s, a_t_zero: bool = False):
    """ᾱ_t of the noisier step t and ᾱ_s of the earlier step s < t: 0 < ᾱ_t < 1 (a_t_zero: 0 ≤ ᾱ_t), ᾱ_t ≤ ᾱ_s ≤ 1."""
    _check_range(a_t, "a_t", 0.0, 1.0, not a_t_zero, True)
    _check_range(a_s, "a_s", 0.0, 1.0, True, False)
    if isinstance(a_t, float) and isinstance(a_s, float) and a_s >= a_t:
        return
    at, as_ = wide(a_t), wide(a_s)
    if at.device.type == "cpu" and as_.device.type == "cpu" and bool((as_ < at).any()):
        raise ValueError("a_s must be >= a_t: s is the earlier, less noisy step of the pair t -> s")


def roots(a, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ, √(1−ᾱ)) formed in `wide`'s precision, each broadcast against x and cast to its dtype (`bcast`)."""
    a = wide(a)
    return bcast(a.sqrt(), x), bcast((1 - a).sqrt(), x)


def bcast(a, x: torch.Tensor) -> torch.Tensor:
    """ᾱ-like `a` (scalar or shape (B,)) as a tensor of x's dtype that broadcasts against x of shape (B, …)."""
    if not x.dtype.is_floating_point:     # the coefficients, cast to an integer dtype, would be 0 or 1
        raise TypeError(f"the tensors must be floating point (data in [-1, 1]), got {x.dtype}; convert with .float()")
    if isinstance(a, torch.Tensor):
        if a.is_meta and not x.is_meta:      # else torch's "Cannot copy out of meta tensor; no data!"
            check_values("an alpha_bar value", a, f"x is on {x.device}; pass ᾱ as numbers or a tensor there")
        a = a.to(x.dtype).to(x.device)   # the cast first: a float64 tensor cannot move to MPS
    else:  # a Python float goes straight to x's dtype (no float32 detour for float64 work)
        a = torch.as_tensor(a, device=x.device, dtype=x.dtype)
    if a.ndim == 1 and x.ndim >= 1:        # a 1-D x too: (3,) against (5,) was torch's "size of tensor a (3) must match"
        if a.shape[0] != x.shape[0]:
            raise ValueError(f"a per-sample coefficient (alpha_bar-like, shape (B,)) needs x's batch size, {x.shape[0]} "
                             f"values (x has shape {tuple(x.shape)}), got {a.shape[0]}; or pass a scalar")
        a = a.reshape(-1, *([1] * (x.ndim - 1)))
    elif a.ndim > 1:
        raise ValueError(f"coefficient must be a scalar or shape (B,), got shape {tuple(a.shape)}")
    return a.to(x.dtype)


def _same_shape(a, b, names: str) -> None:
    """Two real floating-point tensors of one shape: broadcasting one noise or prediction over a batch would correlate
    its samples, and an integer or bool one would be read as numbers (a mask passed as ε: True as 1). Both are checked,
    not only the first, whose dtype the coefficients take (`bcast`); and on one device (else torch's "Tensor on device
    cpu is not on the expected device meta!")."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"{names} must be torch tensors, got {type(a).__name__} and {type(b).__name__} "
                        f"(torch.from_numpy for an array)")
    first, second = names.split(" and ")
    for name, v in ((first, a), (second, b)):
        if not v.dtype.is_floating_point:
            raise TypeError(f"{name} must be floating point, got {v.dtype} (an integer or bool tensor would be read as "
                            f"numbers, True as 1); convert with .float()")
    if a.shape != b.shape:
        raise ValueError(f"{second} shape {tuple(b.shape)} differs from {first} shape {tuple(a.shape)}")
    if a.device != b.device:
        raise ValueError(f"{first} is on {a.device} and {second} on {b.device}: put both on one device, e.g. "
                         f"{second}.to({first}.device)" + (" (a meta tensor holds shapes but no values)" if
                                                            a.is_meta or b.is_meta else ""))


def q_sample(x0: torch.Tensor, a_t, eps: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, a draw from q(x_t | x_0) (notebook 01 §2)."""
    _same_shape(x0, eps, "x0 and eps")
    a, s = roots(_check_range(a_t, "a_t", 0.0, 1.0, False, False), x0)
    return a * x0 + s * eps


def q_step(x_prev: torch.Tensor, beta_t, z: torch.Tensor) -> torch.Tensor:
    """One Markov forward step x_t = √(1−β_t) x_{t−1} + √β_t z (notebook 01 §1)."""
    _same_shape(x_prev, z, "x_prev and z")
    b, c = roots(_check_range(beta_t, "beta_t", 0.0, 1.0, False, False), x_prev)
    return c * x_prev + b * z


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t) -> torch.Tensor:
    """x̂_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t, the "predicted x_0" of DDIM eq. 9 (notebook 04 §2); needs ᾱ_t > 0."""
    _same_shape(x_t, eps, "x_t and eps")
    a, s = roots(_check_range(a_t, "a_t", 0.0, 1.0, True, False), x_t)
    return (x_t - s * eps) / a


def predict_eps(x_t: torch.Tensor, x0: torch.Tensor, a_t) -> torch.Tensor:
    """ε = (x_t − √ᾱ_t x_0) / √(1−ᾱ_t); needs ᾱ_t < 1."""
    _same_shape(x_t, x0, "x_t and x0")
    a, s = roots(_check_range(a_t, "a_t", 0.0, 1.0, False, True), x_t)
    return (x_t - a * x0) / s


def dynamic_threshold(x0: torch.Tensor, p: float = 0.995, s_max: float = math.inf) -> torch.Tensor:
    """Imagen's dynamic thresholding of x̂_0 (Saharia et al. 2022, §2.3; notebook 10 §3), per sample:

        s = clamp(p-th quantile of |x̂_0|, 1, s_max),   x̂_0 ← clamp(x̂_0, −s, s) / s,

    so the result lies in [−1, 1]. Where the interpolated quantile is at most 1, s = 1 and it is the static clip (on large
    images: where fewer than about a share 1 − p of the pixels leave [−1, 1]; on few pixels the count differs, notebook
    10 §3). diffusers' `_threshold_sample` (`dynamic_thresholding_ratio` = p, `sample_max_value` = s_max, whose
    default 1.0 makes it the static clip) is the same rule; Imagen has no s_max. The quantile interpolates linearly
    (numpy's default). x̂_0 of shape (B, …), each sample over all its other axes.
    """
    if (q := as_real(p)) is None or not 0 < q <= 1:
        raise ValueError(f"p must lie in (0, 1] (a quantile of |x0|: 0.995, not 99.5), got {p!r}")
    if (top := as_real(s_max, inf_ok=True)) is None or top < 1:      # inf as a float, numpy or torch scalar alike
        raise ValueError(f"s_max must be a number >= 1 (or inf: Imagen's rule, no upper bound), got {s_max!r}")
    if not isinstance(x0, torch.Tensor) or x0.ndim < 2 or not x0.dtype.is_floating_point:
        raise TypeError(f"x0 must be a floating-point tensor of shape (B, ...), got {getattr(x0, 'shape', type(x0).__name__)}")
    flat = x0.flatten(1)
    if flat.shape[1] == 0:                         # no pixels: nothing to threshold (torch.quantile: "must be non-empty")
        return x0.clone()
    finite = torch.isfinite(flat)                  # NaN or inf made every value of its row NaN (inf / inf, lerp)
    if not finite.is_meta and not bool(finite.all()):      # (a meta x0, shapes only, passes as before)
        row = int((~finite).any(1).nonzero()[0])
        raise ValueError(f"x0 must be finite: sample {row} holds NaN or inf, whose quantile and clip are undefined (the "
                         f"network or the sampler diverged before this step)")
    s = _row_quantile(flat.abs(), q)
    s = s.clamp(1.0, min(top, torch.finfo(s.dtype).max))     # s_max = 1e308 would overflow a float32 clamp
    return (flat.clamp(-s[:, None], s[:, None]) / s[:, None]).to(x0.dtype).reshape(x0.shape)


def _row_quantile(a: torch.Tensor, q: float) -> torch.Tensor:
    """Each row's q-quantile, interpolated linearly (numpy's default) between its order statistics k + 1 and k + 2,
    k = ⌊q (n − 1)⌋, found by selection, in a's dtype widened to float32 at least (rounded as torch.quantile rounds):
    torch.quantile refuses float16 and bfloat16 (a half-precision network's x̂_0), and more than 2**24 values in all
    (86 images of 3×256×256)."""
    wide, n = torch.promote_types(a.dtype, torch.float32), a.shape[1]
    pos = torch.tensor(q, dtype=wide) * (n - 1)
    k = min(int(pos), n - 1)
    lo, hi = (a.kthvalue(j, dim=1).values.to(wide) for j in (k + 1, min(k + 2, n)))
    return lo.lerp(hi, pos - k)


def v_from(x0: torch.Tensor, eps: torch.Tensor, a_t) -> torch.Tensor:
    """Velocity v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho, 2022)."""
    _same_shape(x0, eps, "x0 and eps")
    a, s = roots(_check_range(a_t, "a_t", 0.0, 1.0, False, False), x0)
    return a * eps - s * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, a_t) -> torch.Tensor:
    """x_0 = √ᾱ_t x_t − √(1−ᾱ_t) v."""
    _same_shape(x_t, v, "x_t and v")
    a, s = roots(_check_range(a_t, "a_t", 0.0, 1.0, False, False), x_t)
    return a * x_t - s * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, a_t) -> torch.Tensor:
    """ε = √(1−ᾱ_t) x_t + √ᾱ_t v."""
    _same_shape(x_t, v, "x_t and v")
    a, s = roots(_check_range(a_t, "a_t", 0.0, 1.0, False, False), x_t)
    return s * x_t + a * v


def posterior_variance(a_t, a_s):
    """β̃ = (1−ᾱ_s)/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_s), the variance of q(x_s | x_t, x_0) (notebook 02 §4).

    For consecutive steps s = t−1 this is DDPM's β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) β_t.
    """
    _check_pair(a_t, a_s)
    a_t, a_s = wide(a_t), wide(a_s)
    return (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)


def posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, a_t, a_s) -> torch.Tensor:
    """μ̃ = √ᾱ_s (1 − ᾱ_t/ᾱ_s)/(1−ᾱ_t) x_0 + √(ᾱ_t/ᾱ_s) (1−ᾱ_s)/(1−ᾱ_t) x_t (notebook 02 §4).

    With s = t−1 and α_t = ᾱ_t/ᾱ_{t−1} = 1 − β_t this is DDPM eq. 7.
    """
    _same_shape(x0, x_t, "x0 and x_t")
    _check_pair(a_t, a_s)
    at, as_ = wide(a_t), wide(a_s)
    alpha = at / as_
    return (bcast(as_.sqrt() * (1 - alpha) / (1 - at), x_t) * x0
            + bcast(alpha.sqrt() * (1 - as_) / (1 - at), x_t) * x_t)


def ddim_sigma(a_t, a_s, eta: float = 1.0):
    """σ_{t→s}(η) = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s) (DDIM eq. 16, notebook 04 §3).

    η = 1 gives the DDPM posterior's standard deviation, η = 0 the deterministic DDIM (notebook 03 §4).
    """
    return check_eta(eta) * posterior_variance(a_t, a_s).sqrt()


def check_eta(eta) -> float:
    """η as a float; a ValueError unless it is a finite number ≥ 0 (`checks.as_real`) that no gradient is wanted for
    (`checks.check_untracked`)."""
    e = as_real(check_untracked("eta", eta))
    if e is None or e < 0:
        raise ValueError(f"eta must be a finite number >= 0 (0 = deterministic DDIM, 1 = DDPM's posterior "
                         f"variance), got {eta!r}")
    return e + 0.0          # -0.0 as 0.0 (a table row named "-0")


def check_sigma(a_t, a_s, sigma) -> None:
    """The one rule for σ (DDIM eq. 7): σ² ≤ 1 − ᾱ_s, else √(1−ᾱ_s−σ²) is undefined; a ValueError naming the
    largest η the step t → s allows (η ≤ 1 always does, notebook 04 §3)."""
    if isinstance(a_s, float) and (isinstance(sigma, float) or (isinstance(sigma, torch.Tensor) and sigma.ndim == 0)):
        if float(sigma) * float(sigma) <= (1 - a_s) * (1 + 1e-9) + 1e-15:   # not **: 1e200 ** 2 raises
            return
    at = torch.as_tensor(a_t, dtype=torch.float64)
    as_ = torch.as_tensor(a_s, dtype=torch.float64)
    sg = torch.as_tensor(check_numbers("sigma", sigma), dtype=torch.float64)      # "0.1": torch's "invalid data type"
    if sg.device.type == "cpu" and bool(torch.isnan(sg).any()):
        raise ValueError(f"sigma must be a number, got {sigma}")
    sg2 = sg ** 2
    over = sg2 > (1 - as_) * (1 + 1e-9) + 1e-15
    if not over.is_meta and bool(over.any()):     # meta: shapes only, no values to check
        at_b, as_b = torch.broadcast_tensors(at, as_)
        i = over.nonzero()[0].tolist() if over.ndim else []
        a1, a2 = float(at_b[tuple(i)]), float(as_b[tuple(i)])
        eta_max = math.sqrt((1 - a1) / (1 - a1 / a2))
        raise ValueError(f"sigma^2 = {float(sg2[tuple(i)] if sg2.ndim else sg2):.4g} exceeds 1 - alpha_bar_s = "
                         f"{1 - a2:.4g} on the step alpha_bar {a1:.4g} -> {a2:.4g}: the DDIM family needs "
                         f"sigma^2 <= 1 - alpha_bar_s, i.e. eta <= {eta_max:.6g} on this step (eta <= 1 is always valid)")


def q_sigma_mean(x0: torch.Tensor, x_t: torch.Tensor, a_t, a_s, sigma) -> torch.Tensor:
    """Mean of q_σ(x_s | x_t, x_0) = √ᾱ_s x_0 + √(1−ᾱ_s−σ²) (x_t − √ᾱ_t x_0)/√(1−ᾱ_t) (DDIM eq. 7).

    With this mean q_σ(x_s | x_0) = N(√ᾱ_s x_0, (1−ᾱ_s) I) for every σ (derived in notebook 03 §3–§5).
    """
    _same_shape(x0, x_t, "x0 and x_t")
    _check_pair(a_t, a_s, a_t_zero=True)
    check_sigma(a_t, a_s, sigma)
    at, as_, sg = wide(a_t), wide(a_s), wide(sigma)
    k = (1 - as_ - sg ** 2).clamp_min(0).sqrt() / (1 - at).sqrt()
    return bcast(as_.sqrt(), x_t) * x0 + bcast(k, x_t) * (x_t - bcast(at.sqrt(), x_t) * x0)


def q_sigma_forward(x_s: torch.Tensor, x0: torch.Tensor, a_t, a_s, sigma):
    """DDIM's non-Markovian forward step q_σ(x_t | x_s, x_0) (DDIM eq. 8, derived in notebook 03 §6).

    Bayes' rule q_σ(x_t | x_s, x_0) = q_σ(x_s | x_t, x_0) q(x_t | x_0) / q(x_s | x_0) gives, for s < t,

        mean = √ᾱ_t x_0 + √(1−ᾱ_s−σ²) √(1−ᾱ_t)/(1−ᾱ_s) · (x_s − √ᾱ_s x_0),   var = σ² (1−ᾱ_t)/(1−ᾱ_s).

    It depends on x_0 unless σ² = β̃ (η = 1), where it is the Markov kernel N(√(ᾱ_t/ᾱ_s) x_s, 1−ᾱ_t/ᾱ_s).
    Returns (mean, var); `var` broadcasts against x_s.
    """
    _same_shape(x_s, x0, "x_s and x0")
    _check_pair(a_t, a_s, a_t_zero=True)
    check_sigma(a_t, a_s, sigma)
    at, as_, sg = wide(a_t), wide(a_s), wide(sigma)
    if bool((as_ >= 1).any()):
        raise ValueError("q_sigma_forward needs a_s < 1 (x_s must be noisy; the first step is q(x_t | x_0))")
    k = (1 - as_ - sg ** 2).clamp_min(0).sqrt() * (1 - at).sqrt() / (1 - as_)
    mean = bcast(at.sqrt(), x_s) * x0 + bcast(k, x_s) * (x_s - bcast(as_.sqrt(), x_s) * x0)
    return mean, bcast(sg ** 2 * (1 - at) / (1 - as_), x_s)


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, a_t, a_s, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip_x0: bool = False):
    """One generalized DDIM step x_t → x_s (DDIM eq. 12, notebook 04 §3).

    x_s = √ᾱ_s x̂_0 + √(1−ᾱ_s−σ²) ε + σ z, with x̂_0 = `predict_x0(x_t, eps, a_t)` and σ = `ddim_sigma`.
    Returns (x_s, x̂_0), both of x_t's dtype: `noise` is z, required when η > 0, and it and ε are cast to x_t's dtype
    (as `ddim_sample` casts its draws, and refuses an ε of another dtype): a float64 ε or z does not widen a float32
    x_s. σ² > 1 − ᾱ_s (η > 1 on some steps) is a ValueError (`check_sigma`), as in `q_sigma_mean`.
    """
    _same_shape(x_t, eps, "x_t and eps")             # floating point: an integer ε is no prediction of N(0, I) noise
    eps = eps.to(x_t.dtype)
    if noise is not None:
        _same_shape(x_t, noise, "x_t and noise")     # True read as 1; an integer draw is no N(0, I)
        if noise.device.type == "cpu" and not all_finite(noise):   # σ·NaN made every x_s NaN
            raise ValueError("noise contains NaN or inf")
    _check_range(a_t, "a_t", 0.0, 1.0, True, False)   # predict_x0's rule, said first
    clip_x0 = check_bool("clip_x0", clip_x0)
    sigma = ddim_sigma(a_t, a_s, eta)
    check_sigma(a_t, a_s, sigma)
    if eta > 0 and noise is None:
        raise ValueError("ddim_step with eta > 0 needs `noise`")
    coefs = [bcast(c, x_t) for c in ddim_coefficients(a_t, a_s, sigma)]
    return ddim_update(x_t, eps, coefs, noise.to(x_t.dtype) if eta > 0 else None, clip_x0)


def ddim_coefficients(a_t, a_s, sigma):
    """The coefficients of DDIM eq. 12 for the step ᾱ_t → ᾱ_s with noise σ (notebook 04 §3): (√ᾱ_t, √(1−ᾱ_t), √ᾱ_s,
    √(1−ᾱ_s−σ²), σ), for `ddim_update`. Floats or tensors of any one shape (a whole run's steps at once, `per_step`).
    √ᾱ_t and √(1−ᾱ_t) in `wide`'s precision, as `predict_x0` forms them; the direction's weight in float64, whatever the
    dtype of ᾱ_s and σ, since 1 − ᾱ_s − σ² cancels on the last steps when η > 0 (8.5e-8 on DDPM's t = 100 → 0 with
    η = 1, where float32 gives 1.0e-7), clamped at 0 (η = 1 rounds it below). Unchecked: `ddim_step` checks its step,
    a sampler its run once."""
    at = wide(a_t)
    a_s64, sg64 = (torch.as_tensor(a, dtype=torch.float64) for a in (a_s, sigma))
    return at.sqrt(), (1 - at).sqrt(), a_s64.sqrt(), (1 - a_s64 - sg64 ** 2).clamp_min(0).sqrt(), sigma


def per_step(coefs, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """A run's coefficients, each a tensor of shape (S,), as S tuples of 0-d tensors of x's dtype and device: `bcast`'s
    cast, done once for the run instead of at every step."""
    return list(zip(*(torch.as_tensor(c).to(x.dtype).to(x.device).unbind() for c in coefs)))


def ddim_update(x_t: torch.Tensor, eps: torch.Tensor, coefs, noise: torch.Tensor | None = None,
                clip_x0: bool = False):
    """One DDIM eq. 12 step, x_s = √ᾱ_s x̂_0 + √(1−ᾱ_s−σ²) ε + σ z with x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t, on the
    coefficients of `ddim_coefficients` (broadcast against x_t) and without checks: `ddim_step` checks its step, a
    sampler its run once. noise z (x's dtype) is added only when given (η > 0). Returns (x_s, x̂_0)."""
    r_t, q_t, r_s, direction, sigma = coefs
    x0 = (x_t - q_t * eps) / r_t
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - r_t * x0) / q_t
    x_s = r_s * x0 + direction * eps
    if noise is not None:
        x_s = x_s + sigma * noise
    return x_s, x0


# ----------------------------------------------------------------------------------------------------------
# The score parametrisation (notebook 02 §9). With `predict_x0`, `predict_eps`, `v_from`, `x0_from_v` and
# `eps_from_v` above, every one of the four prediction types (ε, x̂_0, v, score) converts to every other.

def score_from_eps(eps: torch.Tensor, a_t) -> torch.Tensor:
    """s = −ε/√(1−ᾱ_t), the score ∇_{x_t} log q(x_t | x_0) written with the noise ε (notebook 02 §9).

    Applied to ε_θ(x_t, t) it gives the model's score s_θ(x_t, t); at the minimiser ε* = E[ε | x_t] of
    L_simple it is the score ∇ log q_t(x_t) of the noisy marginal (Tweedie's formula; denoising score
    matching, Song et al. 2021 eq. 7 with λ(t) = 1 − ᾱ_t). Undefined at ᾱ_t = 1 (clean data).
    """
    _check_range(a_t, "a_t", 0.0, 1.0, False, True)     # at ᾱ_t = 1 there is no noise, hence no score
    return -eps / bcast((1 - wide(a_t)).sqrt(), eps)


def eps_from_score(score: torch.Tensor, a_t) -> torch.Tensor:
    """ε = −√(1−ᾱ_t) s, the inverse of `score_from_eps` (notebook 02 §9)."""
    _check_range(a_t, "a_t", 0.0, 1.0, False, True)
    return -roots(a_t, score)[1] * score
