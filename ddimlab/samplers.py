"""Samplers: DDIM with any η, DDPM ancestral, DDIM inversion, reconstruction and slerp (notebook 04); classifier-free
guidance and Langevin correction (notebook 10), and SDEdit-style editing (notebook 11).

Every sampler takes any callable `eps(x, t) -> tensor` (a network wrapped by `checkpoint.eps_fn`, or the
exact ε* of `toy.exact_eps`; a bare network is refused, `check_eps`) and calls it with t as a (B,) long tensor of
integer steps. A sampler visits the decreasing steps `seq` (see `schedule.timesteps`) and then takes a last step to
ᾱ_{−1} = 1, i.e. to x_0. The DDIM paper's α_t is DDPM's ᾱ_t.

One signature for every sampler and ODE solver (k-diffusion's convention): (eps, x_T, alpha_bar, seq, …,
callback=None). Stochastic samplers draw one N(0, I) of x's shape per step from `generator`, or take it
from `noise_sampler(t, s)` when given (not both: a ValueError; resumable or per-image generation draws its own noise, as
k-diffusion's `noise_sampler` and diffusers' `variance_noise`); `callback(info)` is called after every
step with info = {"i": step number, "t": from, "s": to, "x": x_s, "x0": x̂_0}, copies (progress bars, previews;
`report`). Arguments are checked once per call (`check_args`), ε is called on a copy of x and checked to be finite
at every call (`call_eps`), and so is each step's x_s (`_finite`: float16 overflows), so a sampler never returns NaN silently;
an allocation that fails in ε is one line saying how to split the batch (`eval_eps`), not torch's page.
An empty batch, x_T of shape (0, …), returns an empty x_0 from every sampler and solver alike (eps is called on the
empty x at each step), as torch's and numpy's functions map empty to empty: the last chunk of a batch split by a caller
may be empty. What reduces over the batch (`elbo.l_simple`, a FID, a mean and its standard error) refuses one instead,
since its mean would be NaN.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import torch

from . import devices, schedule
from .checks import (
    all_finite,
    as_real,
    check_bool,
    check_fits,
    check_generator,
    check_int,
    check_numbers,
    check_untracked,
    check_values,
    out_of_memory,
)
from .diffusion import (
    VARIANCES,
    bcast,
    check_eta,
    check_sigma,
    ddim_coefficients,
    ddim_sigma,
    ddim_update,
    per_step,
    posterior_mean,
    posterior_variance,
    predict_x0,
    q_sample,
)
from .schedule import alpha_bar_at, step_pairs

SIGMA_HAT = "sigma_hat"   # the DDIM paper's σ̂ row (Table 1): DDPM's large variance on τ, `ddpm_sample(variance="large")`


class OutOfRangeWarning(UserWarning):
    """Samples far outside the data's range [−1, 1], or a start x_T ~ N(0, I) that is not the model's x_t."""


NOT_ITS_X_T = "x_T ~ N(0, I) is not the model's x_t: the output stays close to x_T"    # a caller's own advice may follow
FROM_NOISE = f"{NOT_ITS_X_T}; use more steps or the trailing spacing (which starts at t = T - 1)"
TO_NOISE = ("the inversion ends, not at noise: x_T still holds x_0, so the round trip is close whatever the model; use "
            "more steps or the trailing spacing (which ends at t = T - 1)")


NOISE_ALPHA_BAR = 0.1    # above it, x_t = √ᾱ x_0 + √(1−ᾱ) ε is far from pure noise (x_T ~ N(0, I) is not x_t)


def check_first_step(alpha_bar, seq, why: str = FROM_NOISE) -> None:
    """Warn (`OutOfRangeWarning`, saying `why` it matters) when a run that assumes pure noise at its first step starts
    where ᾱ > NOISE_ALPHA_BAR (0.1): there x_t = √ᾱ x_0 + √(1−ᾱ) ε is far from it. From x_T ~ N(0, I) the output then
    stays close to x_T. A uniform grid of one step is t = 0 (ᾱ ≈ 1); the trailing spacing always starts at T − 1, and a
    grid that starts there on a table that does not reach noise is told so, not to take more steps."""
    a_first, T = float(alpha_bar_at(alpha_bar, int(seq[0]))), len(alpha_bar)
    if a_first > NOISE_ALPHA_BAR:
        if int(seq[0]) == T - 1:                 # more steps or another spacing cannot start later
            why = ("the schedule ends: it does not reach noise, so x_T ~ N(0, I) is not its x_T (nor does an inversion "
                   "end at noise) whatever the steps; use a schedule that ends near alpha_bar = 0 (a longer T, or a "
                   "larger beta_end)")
        which = "the only step" if len(seq) == 1 else f"the noisiest of the {len(seq)} steps"
        warnings.warn(f"{which} is t = {int(seq[0])} (alpha_bar = {a_first:.2g}), where {why}",
                      OutOfRangeWarning, stacklevel=3)


class NonFiniteError(FloatingPointError):
    """The network returned NaN or inf during sampling."""


def check_args(x, alpha_bar, seq, name: str = "x_T", callback=None, inverting: bool = False, eps=None, keeps: int = 0):
    """Validate a sampler's or solver's inputs once; returns (alpha_bar as float64, seq as a long tensor).

    x, alpha_bar, callback, eps: `check_x`; seq: `schedule.validate_timesteps` (strictly decreasing integers in 0..T−1;
    for an inversion too, `inverting`); keeps: the tensors of x's size return_trajectory keeps per step (0: none), which
    must fit in half of the memory of x's device (`checks.check_fits`: the machine's for a CPU x, the GPU's free memory
    for a CUDA one; not checked elsewhere): else the run failed at its end, in torch's allocator, with its work lost.
    """
    alpha_bar = check_x(x, alpha_bar, name, callback, eps)
    seq = schedule.validate_timesteps(seq, alpha_bar.shape[0], inverting)
    if keeps and x.device.type in ("cpu", "cuda"):
        states, size = keeps * len(seq) + 1, x.element_size() * max(math.prod(x.shape[1:]), 1)
        check_fits(states * size * len(x), f"return_trajectory=True keeps {states} tensors of {name}'s shape "
                   f"{tuple(x.shape)}", lambda limit: f"give at most {int(limit // (states * size)):,} samples per run, "
                   f"fewer steps, or return_trajectory=False", None if x.device.type == "cpu" else x.device)
    return alpha_bar, seq


def check_x(x, alpha_bar, name: str = "x_T", callback=None, eps=None) -> torch.Tensor:
    """`check_args` for a function without a step sequence; returns alpha_bar as float64.

    x: a finite floating-point tensor with a batch dimension; alpha_bar: `schedule.validate_alpha_bar`;
    callback: None or callable (else found only after the first network call); eps, if given: `check_eps`, and
    `check_schedule` against alpha_bar.
    """
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function of the step's info dict, or None; got {type(callback).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension (B, ...), got a 0-d tensor")
    check_values(name, x, "sampling needs the values")
    if not all_finite(x):
        raise ValueError(f"{name} contains NaN or inf")
    alpha_bar = schedule.validate_alpha_bar(alpha_bar)
    if eps is not None:
        check_eps(eps)
        check_weights(eps)
        check_schedule(eps, alpha_bar)
    return alpha_bar


def check_eps(eps, name: str = "eps") -> None:
    """TypeError naming `name` unless eps is a function eps(x, t): what is not callable fails in Python ("'int' object is
    not callable"), and a network (torch.nn.Module) called as it is runs in its own mode (dropout on in train mode, so
    η = 0 is not deterministic) and records an autograd graph through every step (memory growing with the steps).
    `checkpoint.eps_fn` is the one adapter from a network: no gradients, eval mode, diffusers' `.sample`."""
    if isinstance(eps, torch.nn.Module):
        raise TypeError(f"{name} is a network ({type(eps).__name__}): pass checkpoint.eps_fn(net), which calls it without "
                        f"gradients and with dropout off (as it is, it would keep an autograd graph of every step)")
    if not callable(eps):
        raise TypeError(f"{name} must be a function eps(x, t) -> tensor of x's shape (a network through "
                        f"checkpoint.eps_fn, or toy.exact_eps), got {type(eps).__name__}")


def check_weights(eps, name: str = "eps") -> None:
    """ValueError where eps is `checkpoint.eps_fn` of a network with a weight on the meta device (built under
    torch.device("meta") and never given values): torch said only "Tensor on device meta is not on the expected device
    cpu!" from inside the network, at the first step. Checked once, at a sampler's entry (`check_x`), not at each call."""
    net = getattr(eps, "network", None)
    if isinstance(net, torch.nn.Module) and any(w.is_meta for w in (*net.parameters(), *net.buffers())):
        raise ValueError(f"{name}'s network ({type(net).__name__}) has weights on the meta device, which hold shapes but no "
                         f"values: load its weights (net.load_state_dict(state, assign=True)) or build it on cpu or cuda")


# Two tables are one schedule within this relative tolerance: the same table computed in float32 (diffusers'
# alphas_cumprod, a cumulative product in float32) is 1.3e-5 off for the cosine schedule, 3.6e-7 for the linear one at
# T = 1000; another schedule differs by far more somewhere (a step later: 2% for the linear one, 99.9% for the cosine
# one; beta_end 0.0201 for 0.02: 4.9%).
SCHEDULE_RTOL = 1e-4


def check_schedule(eps, alpha_bar: torch.Tensor, who: str = "",
                   why: str = "the sampler would read eps's noise at the wrong levels") -> None:
    """ValueError unless `alpha_bar` (validated, float64) is the schedule eps was made for, where eps carries it as
    `eps.alpha_bar` (`toy.exact_eps`, `ode.thresholded_eps`, `guided_eps` of such ε's, `checkpoint.eps_fn` of a network
    from `checkpoint.load_model`, `train.load_trained`, `train.train` or `pretrained.digits_model`): ε(x, t) is the noise
    at ᾱ_t of eps's own table, so a sampler on another table reads it at the wrong noise level and returns finite, wrong
    samples (a mixture's exact ε* made on the linear schedule and sampled on the cosine one). Tables agree to
    `SCHEDULE_RTOL`. An ε without `alpha_bar` (a lambda, a network built by hand) is not checked."""
    own = getattr(eps, "alpha_bar", None)
    if not isinstance(own, torch.Tensor):
        return
    own, given = own.detach().to("cpu", torch.float64), alpha_bar.detach().cpu()
    if own.shape == given.shape and bool(torch.allclose(own, given, rtol=SCHEDULE_RTOL, atol=0)):
        return
    where = ""
    if own.shape == given.shape:
        t = int((~torch.isclose(own, given, rtol=SCHEDULE_RTOL, atol=0)).nonzero()[0])
        where = f", first at t = {t}: {float(given[t]):.6g} against eps's {float(own[t]):.6g}"
    fix = "the table the network was trained on (eps.alpha_bar; checkpoint.load_model returns it beside the network)" \
        if getattr(eps, "network", None) is not None else "eps.alpha_bar"
    raise ValueError(f"{who}alpha_bar (T = {len(given)}) is not the schedule eps was made for (eps.alpha_bar, T = "
                     f"{len(own)}{where}): {why}; pass {fix}")


def call_eps(eps, x, t):
    """ε(x, t) with t broadcast to shape (B,) (long for an integer step; for a fractional one inside the ODE solvers
    x.dtype, at least float32: bfloat16 would round t = 944.19 to 944); checks that the answer is a finite tensor of
    x's shape and dtype. eps gets a copy of x, so an eps that edits its input in place (`x.clamp_()`, a first
    ReLU(inplace=True)) changes neither the caller's tensor nor the run, in every sampler and solver alike (a copy of x
    costs under 1% of the cheapest eps, `toy.exact_eps`; the samplers reuse x after the call, the solvers do not).
    An allocation that fails in it is said in one line (`eval_eps`)."""
    check_eps(eps)
    if isinstance(t, int):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    else:
        tt = torch.full((x.shape[0],), float(t), dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    e = of_eps_kind(eval_eps(eps, x.clone(), tt), x)
    if not all_finite(e):
        where = "its input x was already non-finite" if not all_finite(x) else "from a finite input"
        raise NonFiniteError(f"eps(x, t) returned NaN or inf at step t = {t} ({where}); "
                             f"check the model (weights, dtype, mixed precision) and the schedule")
    return e


SPLIT_SAMPLES = "generate.generate_samples splits a run into batch_size ones"


def eval_eps(eps, x, t, split: str = SPLIT_SAMPLES):
    """eps(x, t) as it is, but an allocation that fails in it (a batch too large for the network: torch's message is a
    page on its allocator) is one line (`memory_said`, `split` saying how to split the batch); any other error passes
    unchanged. The one place every sampler and solver (`call_eps`) and the ODE's scipy paths (`ode.reference_solution`,
    `ode.log_likelihood`) call ε."""
    with memory_said("eps(x, t)", x, split):
        return eps(x, t)


@contextlib.contextmanager
def memory_said(what: str, x: torch.Tensor, split: str = SPLIT_SAMPLES):
    """Runs its block as it is, but an allocation that fails in it (`checks.out_of_memory`: torch's message is a page on
    its allocator) is raised again, of its own type, as one line: "{what} ran out of memory (it asked for N bytes) on a
    batch of B samples of shape … on {device}: pass fewer samples per call ({split})", torch's error chained as its
    cause (`checks.out_of_memory` still reads the line, with the size asked for). Any other error passes unchanged, and
    a block that fits pays nothing. What ε (`eval_eps`) and `ode.log_likelihood`'s backward passes through ε say; a
    sampler's own step is not wrapped: its temporaries are a few of x's size, far less than the network's call that
    fitted just before it."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if (size := out_of_memory(err)) is None:
            raise
        kind = next(k for k in (torch.OutOfMemoryError, MemoryError, RuntimeError) if isinstance(err, k))
        raise kind(f"{what} ran out of memory{size} on a batch of {len(x):,} samples of shape {tuple(x.shape[1:])} "
                   f"on {x.device}: pass fewer samples per call ({split})") from err


def of_eps_kind(e, x: torch.Tensor, what: str = "eps(x, t)", same_dtype: bool = True, noun: str = "eps") -> torch.Tensor:
    """`e`, what ε returned for x, if it is a tensor of x's shape (`_of_x_shape`), on x's device, and of x's dtype (or,
    without `same_dtype`, of any floating dtype: the ODE's scipy paths take a float32 network's ε for float64 x), else
    a ValueError naming `what`. Another device stopped the step deep inside torch ("Expected all tensors to be on the
    same device"); a bool or integer ε was read as numbers (True as 1), a complex one lost its imaginary part.
    The dtype rule is the caller's: the samplers and solvers (`call_eps`) want x's dtype, the scipy paths and the ELBO
    (`elbo.elbo_terms`, `elbo.l_simple`) any floating one; an ε wrapper (`guided_eps`, `ode.thresholded_eps`) checks its
    inner ε without `same_dtype` and hands its dtype on (`of_inner_dtype`), so that its caller applies the rule to the
    inner ε. The samplers' noise is checked by the same rule (`_draw`, noun "noise", any floating dtype, which it casts to
    x's): the message names what the caller allows, x's dtype or any floating one."""
    e = _of_x_shape(e, x, what)
    if e.device != x.device:
        raise ValueError(f"{what} must return {noun} on x's device, {x.device}, got it on {e.device}")
    if not e.dtype.is_floating_point:
        allowed = f"x's dtype, {x.dtype}" if same_dtype else "any floating dtype"
        raise ValueError(f"{what} must return floating-point {noun} ({allowed}), got {e.dtype}")
    if same_dtype and e.dtype != x.dtype:
        raise ValueError(f"{what} returned dtype {e.dtype} but x is {x.dtype}; cast one of them")
    return e


def of_inner_dtype(e: torch.Tensor, *inner: torch.Tensor) -> torch.Tensor:
    """`e`, what an ε wrapper (`guided_eps`, `ode.thresholded_eps`) computed from its inner ε's answers `inner`, in their
    dtype (the coarsest, largest eps, where two differ): computed with float64 x, a float32 network's ε came back as
    float64, which the samplers then took (they refuse the bare ε: `of_eps_kind`) and the scipy paths held to float64's
    tolerances."""
    return e.to(max((i.dtype for i in inner), key=lambda d: torch.finfo(d).eps))


def _of_x_shape(e, x: torch.Tensor, what: str) -> torch.Tensor:
    """`e` if it is a tensor of x's shape, else a ValueError naming `what` (broadcasting would hide a wrong shape)."""
    if not isinstance(e, torch.Tensor) or e.shape != x.shape:
        raise ValueError(f"{what} must return a tensor of x's shape {tuple(x.shape)}, got "
                         f"{tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__}")
    return e


def noise_from(generator: torch.Generator | None, x: torch.Tensor):
    """The default `noise_sampler`: one N(0, I) draw of x's shape, dtype and device per call from `generator`."""
    check_generator(generator, x.device)
    return lambda t, s: torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _noise(noise_sampler, generator, x: torch.Tensor):
    """`noise_sampler` if it is callable, else `noise_from(generator, x)` when it is None; anything else a TypeError
    before the first network call (it was "'int' object is not callable" after it). Both given is a ValueError: the
    generator would be ignored, and a caller who seeded it would not get the draws they asked for."""
    if noise_sampler is None:
        return noise_from(generator, x)
    if not callable(noise_sampler):
        raise TypeError(f"noise_sampler must be a function (t, s) -> noise of x's shape, or None; got "
                        f"{type(noise_sampler).__name__}")
    if generator is not None:
        raise ValueError("give generator or noise_sampler, not both: the noise_sampler makes every draw, so the "
                         "generator would be ignored (draw from it inside the noise_sampler instead)")
    return noise_sampler


def report(callback, i: int, t: int, s: int, x: torch.Tensor, x0: torch.Tensor) -> None:
    """callback(info) with copies of x_s and x̂_0 (module docstring): what a callback does to them changes neither
    the run nor its trajectory, in every sampler and solver alike. A callback that returns a tensor or a dict (as
    diffusers' `callback_on_step_end` returns the latents to go on with) is a TypeError: the returned x was ignored
    without a word. Any other value (a progress bar's update()) is ignored."""
    if callback is not None:
        out = callback({"i": i, "t": t, "s": s, "x": x.clone(), "x0": x0.clone()})
        if isinstance(out, (torch.Tensor, dict)):
            raise TypeError(f"callback returned a {type(out).__name__}, but a callback only watches the run (it gets copies "
                            f"of x and x0, and what it returns is not used); to change the steps, wrap eps instead "
                            f"(e.g. samplers.guided_eps, ode.thresholded_eps)")


def _finite(x: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """x_s, or a NonFiniteError naming the step where the sampler's own arithmetic left x's dtype (ε was finite:
    `call_eps`); in float16, x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t passes 65504 where ᾱ_t is small (the cosine schedule's)."""
    if not all_finite(x):
        raise NonFiniteError(f"step {t} -> {s} gave NaN or inf in {x.dtype} from a finite eps; run in float32 "
                             f"(x_T.float(), or x0.float() for an inversion)" if x.dtype in (torch.float16, torch.bfloat16) else
                             f"step {t} -> {s} gave NaN or inf from a finite eps and finite x (values near the "
                             f"limit of {x.dtype}?)")
    return x


def _draw(noise_sampler, t, s, x):
    """noise_sampler(t, s), checked as ε is (`of_eps_kind`: x's shape, x's device, floating point, ValueError) and finite
    (on the CPU), cast to x's dtype: another device stopped the step with torch's "Expected all tensors to be on the same
    device", and .to(x.dtype) read a bool draw's True as 1 and dropped a complex one's imaginary part."""
    z = of_eps_kind(noise_sampler(t, s), x, "noise_sampler(t, s)", same_dtype=False, noun="noise")
    if z.device.type == "cpu" and not all_finite(z):     # on a GPU: not at every step
        raise ValueError(f"noise_sampler(t, s) returned NaN or inf at step {t} -> {s}")
    return z.to(x.dtype)


def _coefficients(a, eta: float, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """DDIM eq. 12's coefficients (`diffusion.ddim_coefficients`, σ = `ddim_sigma`) for each step (ᾱ_t, ᾱ_s) of a run
    whose steps `check_eta_steps` checked, formed once for the run and cast to x's dtype and device."""
    if not a:
        return []
    a_t, a_s = (torch.tensor(v, dtype=torch.float64) for v in zip(*a))
    return per_step(ddim_coefficients(a_t, a_s, ddim_sigma(a_t, a_s, eta)), x)


def ddim_sample(eps, x_T, alpha_bar, seq, eta: float = 0.0, generator: torch.Generator | None = None,
                clip_x0: bool = False, return_trajectory: bool = False, noise_sampler=None, callback=None):
    """Generalized DDIM sampling along τ = seq (DDIM eq. 12, notebook 04 §3):

        x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε_θ(x_t, t) + σ z,   x̂_0 = (x_t − √(1−ᾱ_t) ε_θ)/√ᾱ_t,
        σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s).

    η = 0: deterministic DDIM (Euler on the probability-flow ODE, `ode.euler`); η = 1 on all T steps:
    DDPM ancestral sampling with β̃ (`ddpm_sample(variance="small")`). η must keep σ² ≤ 1 − ᾱ_s on every
    step (always true for η ≤ 1); a larger η is a ValueError before any network call. x̂_0 is not clipped
    unless clip_x0 (the DDIM paper does not clip). Returns x_0, or (x_0, {"x": [x_T, …, x_0],
    "x0": [x̂_0 per step], "t": [seq…, −1]}) — "t"[i] is the step of "x"[i].
    """
    eta = check_eta(eta)
    clip_x0, return_trajectory = check_bool("clip_x0", clip_x0), check_bool("return_trajectory", return_trajectory)
    alpha_bar, seq = check_args(x_T, alpha_bar, seq, callback=callback, eps=eps, keeps=2 * return_trajectory)
    pairs, a = check_eta_steps(alpha_bar, seq, eta)
    noise_sampler = _noise(noise_sampler, generator, x_T)
    x = x_T
    traj = {"x": [x], "x0": [], "t": [int(seq[0])]}
    for i, ((t, s), c) in enumerate(zip(pairs, _coefficients(a, eta, x))):
        e = call_eps(eps, x, t)
        z = _draw(noise_sampler, t, s, x) if eta > 0 else None
        x, x0 = ddim_update(x, e, c, z, clip_x0)                  # DDIM eq. 12
        x = _finite(x, t, s)
        traj["x"].append(x); traj["x0"].append(x0); traj["t"].append(s)
        report(callback, i, t, s, x, x0)
    return (x, traj) if return_trajectory else x


def check_eta_steps(alpha_bar: torch.Tensor, seq: torch.Tensor, eta: float):
    """η on the steps of seq: σ(η)² ≤ 1 − ᾱ_s on each (`check_sigma`), a ValueError naming the first step where not,
    before any network call (`ddim_sample`; `lab.table1` and `reproduce table1` check their whole grid with it).
    Returns the (t, s) pairs and their (ᾱ_t, ᾱ_s)."""
    pairs = step_pairs(seq)
    ab = alpha_bar_at(alpha_bar, [t for t, _ in pairs] + [-1]).tolist()       # one look-up for the whole grid
    a = list(zip(ab[:-1], ab[1:]))
    if eta > 0 and a:        # η = 0: σ = 0 passes on every step
        try:
            a_t, a_s = torch.tensor(a, dtype=torch.float64).unbind(1)
            check_sigma(a_t, a_s, ddim_sigma(a_t, a_s, eta))      # every step at once
        except ValueError as whole:
            for (t, s), (a_t, a_s) in zip(pairs, a):               # the first step where not, for the message
                try:
                    check_sigma(a_t, a_s, ddim_sigma(a_t, a_s, eta))
                except ValueError as e:
                    raise ValueError(f"step {t} -> {s}: {e}") from None
            raise whole
    return pairs, a


def ddpm_sample(eps, x_T, alpha_bar, variance: str = "small", seq=None, generator: torch.Generator | None = None,
                clip_x0: bool = False, return_trajectory: bool = False, noise_sampler=None, callback=None):
    """DDPM ancestral sampling (DDPM Alg. 2, notebook 04 §1): x_s = μ̃(x̂_0, x_t) + σ z with

        μ̃ = √ᾱ_s (1−ᾱ_t/ᾱ_s)/(1−ᾱ_t) x̂_0 + √(ᾱ_t/ᾱ_s) (1−ᾱ_s)/(1−ᾱ_t) x_t    (DDPM eq. 7)

    and σ² = β̃_{t→s} = (1−ᾱ_s)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_s) ("small", the posterior variance) or
    σ² = β_{t→s} = 1 − ᾱ_t/ᾱ_s ("large", DDPM's other choice and the DDIM paper's σ̂ sampler).

    seq defaults to all T steps (T−1, …, 0); on a shorter sub-sequence the "large" variant is the DDIM
    paper's σ̂ (the official code's `ddpm_steps`). The final step to ᾱ_{−1} = 1 adds no noise and
    returns μ̃ (the official code masks the noise at t = 0, its last step); for "small" β̃ is 0 there
    anyway. A noise draw is made at every step, including the last, so the random stream matches
    `ddim_sample(eta > 0)` step for step.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose 'small' (beta tilde) or 'large' (beta, sigma hat)")
    clip_x0, return_trajectory = check_bool("clip_x0", clip_x0), check_bool("return_trajectory", return_trajectory)
    alpha_bar = schedule.validate_alpha_bar(alpha_bar)
    if seq is None:
        seq = torch.arange(alpha_bar.shape[0] - 1, -1, -1)
    alpha_bar, seq = check_args(x_T, alpha_bar, seq, callback=callback, eps=eps, keeps=2 * return_trajectory)
    noise_sampler = _noise(noise_sampler, generator, x_T)
    x = x_T
    traj = {"x": [x], "x0": [], "t": [int(seq[0])]}
    for i, (t, s) in enumerate(step_pairs(seq)):
        a_t, a_s = float(alpha_bar_at(alpha_bar, t)), float(alpha_bar_at(alpha_bar, s))
        x0 = predict_x0(x, call_eps(eps, x, t), a_t)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        var = posterior_variance(a_t, a_s) if variance == "small" else torch.tensor(1 - a_t / a_s, dtype=torch.float64)
        z = _draw(noise_sampler, t, s, x)
        x = posterior_mean(x0, x, a_t, a_s)
        if s >= 0:
            x = x + bcast(var.sqrt(), x) * z
        x = _finite(x, t, s)
        traj["x"].append(x); traj["x0"].append(x0); traj["t"].append(s)
        report(callback, i, t, s, x, x0)
    return (x, traj) if return_trajectory else x


ROW_KWARGS = ("generator", "noise_sampler", "callback", "return_trajectory")   # what sample_row passes on


def sample_row(eps, x_T, alpha_bar, seq, eta, clip_x0: bool = False, **kwargs):
    """One row of the DDIM paper's Table 1 on τ = seq: η ≥ 0 is `ddim_sample`, η = SIGMA_HAT is σ̂,
    `ddpm_sample(variance="large")` (notebook 04 §3). kwargs: generator, noise_sampler, callback,
    return_trajectory. The one place the lab, `generate` (the CLI, `reproduce`) and the notebooks turn a
    Table 1 row into a sampler. seq is required on every row (ddpm_sample's seq=None, all T steps, is
    schedule.timesteps(T, T) here)."""
    if extra := [k for k in kwargs if k not in ROW_KWARGS]:       # else named as ddim_sample's or ddpm_sample's
        raise TypeError(f"sample_row() got an unexpected keyword argument {extra[0]!r}; it takes clip_x0, "
                        f"{', '.join(ROW_KWARGS)}")
    if seq is None:                  # ddpm_sample (the σ̂ row) would run all T steps, ddim_sample refuse it
        raise TypeError("sample_row: seq must be a 1-D sequence of integer steps on every row, e.g. "
                        "schedule.timesteps(S, T) (all T steps: schedule.timesteps(T, T)), got None")
    if eta == SIGMA_HAT:
        return ddpm_sample(eps, x_T, alpha_bar, "large", seq=seq, clip_x0=clip_x0, **kwargs)
    if isinstance(eta, str):
        raise ValueError(f"eta must be a number >= 0 or {SIGMA_HAT!r} (DDPM's large variance), got {eta!r}")
    return ddim_sample(eps, x_T, alpha_bar, seq, eta=eta, clip_x0=clip_x0, **kwargs)


def ddim_invert(eps, x0, alpha_bar, seq, return_trajectory: bool = False, callback=None):
    """Deterministic DDIM encoding x_0 → x_T: the η = 0 step run backwards, visiting seq increasing (notebook 05 §8).

        x_t = √ᾱ_t x̂_0 + √(1−ᾱ_t) ε,   x̂_0 = (x_s − √(1−ᾱ_s) ε)/√ᾱ_s,   ε = ε_θ(x_s, t),

    i.e. Euler forward in σ, x̄_t = x̄_s + (σ_t − σ_s) ε. The exact inverse would need ε at the unknown
    x_t; like diffusers' DDIMInverseScheduler and null-text inversion we evaluate ε at the current
    point x_s with the destination step t, which never calls the network at t = −1. The error is
    first order: `reconstruct` returns x_0 up to O(1/S). Returns x at step seq[0] (the largest).
    `callback` gets {"i", "t": from, "s": to (larger), "x", "x0"} after each step.
    """
    return_trajectory = check_bool("return_trajectory", return_trajectory)
    alpha_bar, seq = check_args(x0, alpha_bar, seq, name="x0", callback=callback, inverting=True, eps=eps,
                                keeps=int(return_trajectory))
    _warn_if_0_255(x0, "x0")
    x, s = x0, -1
    traj = {"x": [x], "t": [-1]}
    steps = [-1] + list(reversed(seq.tolist()))
    ab = torch.tensor(alpha_bar_at(alpha_bar, steps).tolist(), dtype=torch.float64)
    up = per_step(ddim_coefficients(ab[:-1], ab[1:], torch.zeros(len(ab) - 1, dtype=torch.float64)), x)
    for i, (t, c) in enumerate(zip(steps[1:], up)):
        e = call_eps(eps, x, t)
        x, x0_hat = ddim_update(x, e, c)           # eq. 12 with σ = 0 read upwards: x̂_0 at ᾱ_s, then q_sample to ᾱ_t
        x = _finite(x, s, t)
        traj["x"].append(x); traj["t"].append(t)
        report(callback, i, s, t, x, x0_hat)
        s = t
    return (x, traj) if return_trajectory else x


def reconstruct(eps, x0, alpha_bar, seq, callback=None) -> torch.Tensor:
    """x_0 → x_T → x_0: `ddim_sample(eps, ddim_invert(eps, x0, …), …)` with η = 0 (notebook 05 §8)."""
    return ddim_sample(eps, ddim_invert(eps, x0, alpha_bar, seq, callback=callback), alpha_bar, seq,
                       callback=callback)


def guided_eps(eps_null, eps_cond, w: float):
    """Classifier-free guidance as one ε callable (notebook 10 §1):

        ε̃(x, t) = ε_∅(x, t) + w (ε_c(x, t) − ε_∅(x, t)),

    w = 0 is unconditional, w = 1 conditional, w > 1 extrapolates (diffusers' `guidance_scale`; Ho & Salimans
    write (1 + w′) ε_c − w′ ε_∅, so w = 1 + w′). Since ε = −√(1−ᾱ_t) ∇ log p_t, ε̃ is the ε of the tilted marginal
    p_t(x)^{1−w} p_t(x | c)^w at every t, which is not the noised tilted data density: notebook 10 §1.
    Each inner ε's answer is checked as every ε's is (`of_eps_kind`: shape, device, a floating dtype) and ε̃ comes back
    in their dtype (`of_inner_dtype`), so a sampler refuses a float32 one for float64 x as it refuses the bare ε.
    """
    weight = as_real(check_untracked("w", w))
    if weight is None:
        raise ValueError(f"guidance weight w must be a finite number, got {w!r}")
    for name, f in (("eps_null", eps_null), ("eps_cond", eps_cond)):      # else found at the first step only
        check_eps(f, f"guided_eps: {name}")
        check_weights(f, f"guided_eps: {name}")
    own, other = (getattr(f, "alpha_bar", None) for f in (eps_null, eps_cond))     # exact ε's carry their schedule
    if isinstance(own, torch.Tensor) and isinstance(other, torch.Tensor):
        try:
            check_schedule(eps_cond, schedule.validate_alpha_bar(own))
        except ValueError:
            raise ValueError("guided_eps: eps_null and eps_cond were made for different schedules (their alpha_bar "
                             "differ): at one t they would mix the noise of two levels; make both on one schedule") from None

    def eps(x, t):
        e_null = of_eps_kind(eps_null(x.clone(), t), x, "guided_eps: eps_null", same_dtype=False)   # eps_cond's x, as call_eps
        e_cond = of_eps_kind(eps_cond(x, t), x, "guided_eps: eps_cond", same_dtype=False)
        return of_inner_dtype(e_null + weight * (e_cond - e_null), e_null, e_cond)

    carried = own if isinstance(own, torch.Tensor) else other
    if isinstance(carried, torch.Tensor):            # for the samplers' check_schedule
        eps.alpha_bar = carried
    return eps


def _warn_if_0_255(x, name, stacklevel: int = 3):
    """Images (B, C, H, W) to encode or edit that look like 0..255 ones (`data.looks_0_255`): a model trained on [−1, 1]
    data sees far-out inputs, and the result is silently wrong. A warning: other data may have any scale. stacklevel:
    as warnings.warn's, counted from here (3: the caller of the function that calls this)."""
    from .data import looks_0_255

    if x.ndim == 4 and looks_0_255(x):
        warnings.warn(f"{name} looks like images in 0..255 (values {float(x.min()):.3g} to {float(x.max()):.3g}); "
                      f"models trained on images take them in [-1, 1]: data.to_model_range(uint8 images)",
                      stacklevel=stacklevel)


def sdedit(eps, x_in, alpha_bar, seq, eta: float = 1.0, generator: torch.Generator | None = None, callback=None):
    """Edit x_in as SDEdit (Meng et al. 2022) and diffusers' img2img do (notebook 11 §1): noise it to the first
    step t_0 = seq[0] with q(x_{t_0} | x_0), x_{t_0} = √ᾱ_{t_0} x_in + √(1−ᾱ_{t_0}) z, then run `ddim_sample` over seq.

    With η = 1 on every step from t_0 and the exact ε this draws x_0 from p(x_0 | x_{t_0}) (up to DDPM's Gaussian
    steps); η = 0 maps each noised input to one point. diffusers' `strength` on S steps keeps the last
    int(S · strength) steps of its grid: seq = schedule.timesteps(S, T, spacing)[S − int(S · strength):].
    """
    alpha_bar, seq = check_args(x_in, alpha_bar, seq, name="x_in", callback=callback, eps=eps)
    _warn_if_0_255(x_in, "x_in")
    z = noise_from(generator, x_in)(None, None)
    x_t0 = q_sample(x_in, float(alpha_bar_at(alpha_bar, int(seq[0]))), z)
    return ddim_sample(eps, x_t0, alpha_bar, seq, eta=eta, generator=generator, callback=callback)


def sdedit_law(eps, x_in, alpha_bar, seq, eta: float = 1.0, h: float = 0.004, n_z: int = 10, span: float = 6.0):
    """The cdf of `sdedit`'s edits of one 1-D point x_in, computed, not sampled (notebook 11 §2, "D(t₀), computed").

    Each step of DDIM eq. 12 sends x_t to x_s = m(x_t) + σ z, m(x) = √ᾱ_s x̂_0(x) + √(1−ᾱ_s−σ²) ε(x, t), σ = `ddim_sigma`;
    with an exact ε, m increases with x (notebook 11 §2), so from F_{t_0}(x) = Φ((x − √ᾱ_{t_0} x_in)/√(1−ᾱ_{t_0}))

        F_s(y) = E_z F_t(m⁻¹(y − σ z)),

    down to the last step, to ᾱ_{−1} = 1 (σ = 0, m = x̂_0). On a grid of spacing h on [−span, span]: m⁻¹ by a cubic spline
    through (m(x), F_t(x)), E_z by n_z-node Gauss–Hermite. eps is called as the samplers call it, on the grid as (N, 1)
    float64. Returns the cdf as a function of y (numpy, linear between grid points). A step whose m does not increase
    (a network's ε need not give one that does) is a ValueError: the formula holds only where it does."""
    import numpy as np
    from scipy import interpolate, stats

    eta = check_eta(eta)
    x0_in, dh, width = as_real(x_in), as_real(h), as_real(span)
    if x0_in is None or width is None or width <= abs(x0_in):
        got = f"shape {tuple(x_in.shape)}" if getattr(x_in, "ndim", 0) else repr(x_in)     # not a whole tensor printed
        raise ValueError(f"x_in must be one finite number (the law follows one 1-D point) inside (-span, span) and span "
                         f"a finite number > 0, got x_in = {got}, span = {span!r}")
    if dh is None or not 0 < dh < width:
        raise ValueError(f"h must be a number in (0, span) (the grid spacing), got {h!r}")
    n_z = check_int("n_z", n_z, 1)
    xq = torch.arange(-width, width + dh / 2, dh, dtype=torch.float64)
    alpha_bar, seq = check_args(xq[:, None], alpha_bar, seq, name="the grid", eps=eps)
    pairs, a = check_eta_steps(alpha_bar, seq, eta)
    z, wz = np.polynomial.hermite_e.hermegauss(n_z)
    x, wz = xq.numpy(), wz / wz.sum()
    F = stats.norm.cdf(x, math.sqrt(a[0][0]) * x0_in, math.sqrt(1 - a[0][0]))
    for (t, s), c in zip(pairs, _coefficients(a, eta, xq[:, None])):
        sig = float(c[4])                                                      # σ = ddim_sigma, float64 as xq
        e = call_eps(eps, xq[:, None], t)
        m = ddim_update(xq[:, None], e, c)[0][:, 0].numpy()                    # the step's mean: no σ z
        if not bool(np.all(np.diff(m) > 0)):
            raise ValueError(f"step {t} -> {s}: the step's mean map m(x) = sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma^2) eps "
                             f"does not increase with x on the grid, which the law needs (an exact eps gives one that does)")
        spline = interpolate.CubicSpline(m, F)
        F_m = lambda y, m=m, spline=spline: np.clip(spline(np.clip(y, m[0], m[-1])), 0, 1)   # noqa: E731  cdf of m(x_t)
        F = F_m(x[:, None] - sig * z) @ wz if sig > 0 else F_m(x)
    return lambda y: np.interp(y, x, F)


def langevin(eps, x, alpha_bar, t: int, step: float, n_steps: int, generator: torch.Generator | None = None,
             noise_sampler=None, callback=None):
    """Unadjusted Langevin at one noise level t, n_steps times with step size δ = step (notebook 10 §1):

        x ← x + δ ∇log p_t(x) + √(2δ) z,   ∇log p_t(x) = −ε(x, t)/√(1−ᾱ_t),

    Langevin dynamics (Song & Ermon 2019, §2.2, whose step ε is 2δ), the corrector of Song et al. (2021, §4.2)'s
    predictor–corrector samplers. Its target is the density whose score ε gives at t: p_t for a model's ε, and at
    t = 0 the tilted density p(x)^(1−w) p(x|c)^w for a guided ε, which guided DDIM and DDPM do not sample (notebook 10
    §1). Between modes far apart the chain can take impractically long to get there (Song & Ermon 2019, §3.2).
    Without a Metropolis test the chain is biased by O(δ): on a Gaussian of variance v its stationary variance is
    v/(1 − δ/(2v)) (tests/test_guidance.py). noise_sampler(t, t) and callback (s = t, x̂_0 of the point before the
    step) as in the module docstring. Returns x after the last step."""
    alpha_bar = check_x(x, alpha_bar, name="x", callback=callback, eps=eps)
    t = check_int("t", t, 0, alpha_bar.shape[0] - 1)
    if (delta := as_real(step)) is None or delta <= 0:
        raise ValueError(f"step must be a finite number > 0 (the Langevin step size), got {step!r}")
    n_steps = check_int("n_steps", n_steps, 0)
    noise_sampler = _noise(noise_sampler, generator, x)
    a_t = float(alpha_bar_at(alpha_bar, t))
    for i in range(n_steps):
        e = call_eps(eps, x, t)
        x0 = predict_x0(x, e, a_t) if callback is not None else None      # for the callback only
        x = _finite(x - delta / math.sqrt(1 - a_t) * e + math.sqrt(2 * delta) * _draw(noise_sampler, t, t, x), t, t)
        report(callback, i, t, t, x, x0)
    return x


def slerp(z0: torch.Tensor, z1: torch.Tensor, lam) -> torch.Tensor:
    """Spherical interpolation sin((1−λ)θ)/sin θ · z0 + sin(λθ)/sin θ · z1, cos θ = z0·z1/(|z0||z1|)
    (DDIM §5.3 and App. D.5, after Shoemake 1985; notebook 04 §8).

    z0, z1: (B, …) latents (or one latent of shape (d,)); θ is per sample, over all non-batch dims.
    lam: a scalar, or a 1-D tensor of length L broadcast against the batch (B = 1 with L values gives
    an (L, …) interpolation path; B = L gives one λ per sample); each λ in [0, 1], else a ValueError (the formula
    would go on round the circle through z0 and z1: λ = 2 is no latent between them, λ = 50 wraps it many times over,
    where a percentage or an index was meant). Endpoints are returned exactly; when
    z0 and z1 point the same way (sin θ ≈ 0) it falls back to linear interpolation; opposite ways is a ValueError.
    For Gaussian latents in high dimension the norm stays ≈ √d along the path, whereas linear interpolation
    shrinks it in the middle.
    """
    if not isinstance(z0, torch.Tensor) or not isinstance(z1, torch.Tensor):
        raise TypeError("z0 and z1 must be torch.Tensors")
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.ndim == 0 or not z0.dtype.is_floating_point or not z1.dtype.is_floating_point:
        raise ValueError("z0 and z1 must be floating-point tensors with at least one dimension")
    for name, z in (("z0", z0), ("z1", z1)):           # else "Tensor.item() cannot be called on meta tensors"
        check_values(name, z, "slerp needs the values")
    if not isinstance(lam, str):        # a bool: True would be read as 1 (a string is the ValueError below)
        check_numbers("lam", lam)
    single = z0.ndim == 1
    common = torch.promote_types(z0.dtype, z1.dtype)     # float32 with float64 meets in float64, as torch's arithmetic
    z0, z1 = z0.to(common), z1.to(common)
    if single:
        z0, z1 = z0[None], z1[None]
    work = torch.promote_types(z0.dtype, torch.float32)    # θ and the weights: π in float16 is 3.1406, sin π 1e-3
    try:
        lam = torch.as_tensor(lam, dtype=work, device=z0.device)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"lam must be a number or a 1-D sequence of numbers, got {lam!r}") from None
    if lam.ndim > 1 or lam.numel() == 0:
        raise ValueError(f"lam must be a scalar or a non-empty 1-D sequence, got shape {tuple(lam.shape)}")
    if lam.device.type == "cpu" and not bool(torch.isfinite(lam).all()):
        raise ValueError("lam must be finite")
    if lam.device.type == "cpu" and bool(((lam < 0) | (lam > 1)).any()):   # past 1: on round the circle
        raise ValueError(f"lam must lie in [0, 1] (0 gives z0, 1 gives z1: slerp interpolates between them, as DDIM "
                         f"§5.3; a percentage or an index is not a weight), got {lam[(lam < 0) | (lam > 1)][0].item():g}")
    if lam.ndim == 1 and z0.shape[0] not in (1, lam.shape[0]):
        raise ValueError(f"lam has {lam.shape[0]} values but the batch has {z0.shape[0]}; use batch 1 or matching sizes")
    view = (-1,) + (1,) * (z0.ndim - 1)
    a, b = z0.flatten(1), z1.flatten(1)
    if not bool(torch.isfinite(a).all() & torch.isfinite(b).all()):
        raise ValueError("slerp got NaN or inf in z0 or z1")
    if bool(((a == 0).all(1) | (b == 0).all(1)).any()):
        raise ValueError("slerp needs non-zero latents: the angle to a zero vector is undefined")
    a, b = (v.double() / v.double().abs().amax(1, keepdim=True) for v in (a, b))   # no overflow near 1e200, no underflow
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1)).to(work).reshape(view)
    lam_b = lam.reshape(view) if lam.ndim == 1 else lam
    sin = torch.sin(theta)
    parallel = sin.abs() < 1e-7
    if bool((parallel & (theta > 1)).any()):       # θ = π: every great circle through z0 and z1 is as short
        raise ValueError("slerp: z0 and z1 point in opposite directions, so the path between them is not defined "
                         "(linear interpolation would pass through 0); pick latents that are not negatives of each other")
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    w0 = torch.where(parallel, 1 - lam_b, torch.sin((1 - lam_b) * theta) / safe)
    w1 = torch.where(parallel, lam_b, torch.sin(lam_b * theta) / safe)
    out = (w0 * z0 + w1 * z1).to(z0.dtype)
    return out[0] if single and lam.ndim == 0 else out


def sample(eps, shape, alpha_bar, S: int = 50, spacing: str = "uniform", eta: float = 0.0,
           generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32, device=None,
           return_trajectory: bool = False, callback=None):
    """Draw x_T ~ N(0, I) of `shape` and run `ddim_sample` on `schedule.timesteps(S, T, spacing)` (notebook 04 §4)."""
    alpha_bar = schedule.validate_alpha_bar(alpha_bar)
    seq = schedule.timesteps(S, alpha_bar.shape[0], spacing)
    check_first_step(alpha_bar, seq)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, e.g. torch.float32, got {dtype!r}")
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"shape must be a sequence of sizes (B, ...), e.g. (16, 1, 8, 8), got {shape!r}")
    shape = tuple(check_int("an entry of shape", s, 0) for s in shape)     # torch: "negative dimension", randn's dump
    device = None if device is None else devices.resolve(device)           # "cuda:0": torch's "not compiled with CUDA"
    x_T = torch.randn(shape, generator=check_generator(generator, device), dtype=dtype, device=device)
    return ddim_sample(eps, x_T, alpha_bar, seq, eta=eta, generator=generator, return_trajectory=return_trajectory,
                       callback=callback)
