"""DDPM's variational bound: L_T, L_{t−1}, L_0, the total in nats and bits/dim, and L_simple.

Derivation: notebook 02. DDPM writes the negative ELBO as (DDPM eq. 5, notebook 02 §2–3)

    L = L_T + Σ_{t>1} L_{t−1} + L_0,
    L_T     = KL(q(x_T | x_0) ‖ N(0, I)),
    L_{t−1} = E_q KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),
    L_0     = −E_q log p_θ(x_0 | x_1),

with p_θ(x_{t−1} | x_t) = N(μ_θ(x_t, t), σ_t² I), μ_θ the posterior mean μ̃ evaluated at the predicted
x̂_0 = (x_t − √(1−ᾱ_t) ε_θ)/√ᾱ_t, and a fixed σ_t² (β̃_t "small" or β_t "large").

Index convention (README "Notation"): ddimlab's steps are 0-based, t ∈ {0, …, T−1}, and the clean
data sit at ᾱ_{−1} = 1. DDPM's step t is ddimlab's t − 1. So here `prior` is KL(q(x_{T−1} | x_0) ‖ N(0, I)),
column t ≥ 1 of `terms` is the KL for the step x_t → x_{t−1}, and column 0 is the decoder term
−log p_θ(x_0 | x at step 0). `x0` always means the clean data.

All eps models are callables `eps(x, t)`; the ELBO calls them with a Python int t, `l_simple` with a
(B,) integer tensor (as in training).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .checks import all_finite, check_bool, check_generator, check_int, check_untracked
from .diffusion import VARIANCES, posterior_mean, posterior_variance, predict_x0, q_sample
from .gaussian import discretized_gaussian_log_likelihood, kl_normal, log_normal
from .samplers import NonFiniteError, _warn_if_0_255, check_schedule, eval_eps, of_eps_kind
from .schedule import validate_alpha_bar

DECODERS = ("discretized", "gaussian")
# What an allocation that fails in elbo_terms's call of eps_model says to do (`samplers.eval_eps`): its batch is x0
# repeated n_mc times.
SPLIT_BOUND = "elbo_terms calls eps_model on x0 repeated n_mc times: call it on parts of x0, x0.split(k), or lower n_mc"


def _check_alpha_bar(alpha_bar) -> torch.Tensor:
    alpha_bar = validate_alpha_bar(alpha_bar)
    if alpha_bar.numel() < 2:
        raise ValueError(f"alpha_bar must be a 1-D schedule with T >= 2 entries, got shape {tuple(alpha_bar.shape)}")
    return alpha_bar


def _check_x0(x0: torch.Tensor) -> None:
    """x0 is a finite float batch (B >= 1); images (B, C, H, W) that look like 0..255 ones warn (`_warn_if_0_255`), in
    every function of this module that takes x0: each term is finite and silently wrong for them."""
    if not isinstance(x0, torch.Tensor) or x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a batch tensor of shape (B, ...) with B >= 1, got "
                         f"{tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__}")
    if not x0.dtype.is_floating_point:
        raise TypeError(f"x0 must be floating point (data in [-1, 1]), got {x0.dtype}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 must be finite")
    _warn_if_0_255(x0, "x0", stacklevel=4)


def _check_same(name: str, a: torch.Tensor, x0: torch.Tensor) -> None:
    if a.shape != x0.shape:
        raise ValueError(f"{name} shape {tuple(a.shape)} must equal x0 shape {tuple(x0.shape)}")
    if not a.dtype.is_floating_point or (name == "noise" and a.dtype != x0.dtype):   # integer noise was trained on;
        raise TypeError(f"{name} is {a.dtype} but x0 is {x0.dtype}; pass {name}.to(x0.dtype)")  # float64 failed naming x
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _check_8bit(x0: torch.Tensor) -> None:
    """The discretized decoder's bins are those of 8-bit data scaled to [−1, 1], x0 = k/127.5 − 1 (k = 0..255): other
    data (images in [0, 1], real-valued toy data) would get plausible but meaningless bits/dim. A quarter of a level
    leaves room for float16, which holds the levels to 0.03 of one (bfloat16, to half of one, cannot tell them apart)."""
    k = (x0.double() + 1) * 127.5
    if bool((k < -0.25).any() or (k > 255.25).any() or ((k - k.round()).abs() > 0.25).any()):
        raise ValueError("decoder='discretized' is for 8-bit data scaled to [-1, 1] (x0 = k/127.5 - 1, k = 0..255), and "
                         "these values are not on that grid: scale 0..255 images with data.to_model_range, or pass "
                         "decoder='gaussian' for real-valued data")


def _sum_flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def betas_from(alpha_bar: torch.Tensor) -> torch.Tensor:
    """β_t = 1 − ᾱ_t/ᾱ_{t−1} with ᾱ_{−1} = 1, recovered from any ᾱ schedule (float64) (notebook 02 §6)."""
    alpha_bar = _check_alpha_bar(alpha_bar)
    prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1 - alpha_bar / prev


def model_variance(alpha_bar, variance="small") -> torch.Tensor:
    """The fixed reverse variances σ_t², shape (T,), float64 (DDPM §3.2, notebook 02 §4).

    - "small": β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) β_t, the posterior variance. β̃ is 0 at step 0, so the
      decoder uses β̃ of step 1 there, as the official code does ("posterior_log_variance_clipped";
      notebook 02 §5, whose §7 measures what this costs in the bound).
    - "large": β_t (DDPM's other choice; the DDIM paper's σ̂ sampler).
    - a (T,) tensor of positive variances, used as given (e.g. a learned variance, notebook 02 §7).
    """
    alpha_bar = _check_alpha_bar(alpha_bar)
    if not isinstance(variance, str):                    # a tensor, or an array or list of numbers
        v = torch.as_tensor(np.asarray(variance) if not isinstance(variance, torch.Tensor) else variance)
        if v.is_complex() or v.dtype == torch.bool or v.shape != alpha_bar.shape \
                or not bool((torch.isfinite(v) & (v > 0)).all()):
            raise ValueError(f"a variance table must hold finite positive numbers with shape {tuple(alpha_bar.shape)}, "
                             f"or be one of {VARIANCES}")
        return v.to(torch.float64)
    if variance == "large":
        return betas_from(alpha_bar)
    if variance == "small":
        prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        v = posterior_variance(alpha_bar, prev)
        v[0] = v[1]
        return v
    raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES} or pass a (T,) tensor")


def _read_variance(alpha_bar, variance) -> torch.Tensor:
    """`model_variance` for the terms of the bound, which read each σ_t² as a number: a variance table that requires grad
    (a learned variance) would get no gradient from them (`checks.check_untracked`), where `gamma_t` passes it on."""
    return model_variance(alpha_bar, check_untracked("variance", variance))


def gamma_t(alpha_bar, variance="small") -> torch.Tensor:
    """DDPM's weights γ_t = β_t² / (2 σ_t² α_t (1 − ᾱ_t)), shape (T,) (notebook 02 §6; DDPM eq. 12, the
    weights of DDIM eq. 5's L_γ that make it DDPM's bound).

    For t ≥ 1: L_{t−1} = γ_t E‖ε − ε_θ(x_t, t)‖² + C_t, because μ̃ − μ_θ = β_t/(√α_t √(1−ᾱ_t)) (ε_θ − ε);
    C_t = (d/2)(β̃_t/σ_t² − 1 − log(β̃_t/σ_t²)) vanishes for σ_t² = β̃_t. At t = 0 the same γ_0 weights the
    continuous decoder: −log N(x_0; x̂_0, σ_0²) = γ_0‖ε − ε_θ‖² + (d/2) log 2πσ_0².
    L_simple sets every γ_t to 1. For σ_t² = β̃_t, γ_t = ½(SNR(t−1)/SNR(t) − 1) and, in x_0 terms,
    L_{t−1} = ½(SNR(t−1) − SNR(t)) ‖x_0 − x̂_0‖² (Kingma et al. 2021, notebook 02 §8).
    """
    alpha_bar = _check_alpha_bar(alpha_bar)
    beta = betas_from(alpha_bar)
    return beta ** 2 / (2 * model_variance(alpha_bar, variance) * (1 - beta) * (1 - alpha_bar))


def _check_t(t, T: int, low: int) -> int:
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError("t must be a single integer step")
        t = t.item()
    return check_int("t", t, low, T - 1, " (a step of the schedule)")


def prior_kl(x0: torch.Tensor, alpha_bar) -> torch.Tensor:
    """L_T = KL(q(x_{T−1} | x_0) ‖ N(0, I)) per sample, in nats, shape (B,) (notebook 02 §3).

    q(x_{T−1} | x_0) = N(√ᾱ_{T−1} x_0, (1 − ᾱ_{T−1}) I); no parameters, so no gradient to θ. Images (B, C, H, W)
    that look like 0..255 ones (`data.looks_0_255`) give a warning, as in `samplers.ddim_invert`: their KL is
    about 127.5² times that of the same images in [−1, 1], finite and silently wrong (other data may have any scale).
    """
    _check_x0(x0)
    return _prior_kl(x0, _check_alpha_bar(alpha_bar))


def _prior_kl(x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a = float(alpha_bar[-1])
    return _sum_flat(kl_normal(math.sqrt(a) * x0, 1 - a, 0.0, 1.0))


def posterior_kl(x0: torch.Tensor, x_t: torch.Tensor, eps_pred: torch.Tensor, alpha_bar, t: int,
                 variance="small") -> torch.Tensor:
    """L_{t−1} for one draw of x_t: KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)), shape (B,) (notebook 02 §4).

    q(x_{t−1} | x_t, x_0) = N(μ̃(x_0, x_t), β̃_t I) (`diffusion.posterior_mean`, `posterior_variance`);
    p_θ(x_{t−1} | x_t) = N(μ̃(x̂_0, x_t), σ_t² I) with x̂_0 = `predict_x0(x_t, eps_pred, ᾱ_t)`, which is
    DDPM's μ_θ = (x_t − β_t/√(1−ᾱ_t) ε_θ)/√α_t. Needs 1 ≤ t ≤ T−1 (t = 0 is `decoder_nll`).
    """
    alpha_bar = _check_alpha_bar(alpha_bar)
    t = _check_t(t, alpha_bar.numel(), 1)
    _check_x0(x0)
    _check_same("x_t", x_t, x0)
    _check_same("eps_pred", eps_pred, x0)
    return _posterior_kl(x0, x_t, eps_pred, alpha_bar, t, float(_read_variance(alpha_bar, variance)[t]))


def _posterior_kl(x0, x_t, eps_pred, alpha_bar, t: int, var_p: float) -> torch.Tensor:
    a_t, a_s = float(alpha_bar[t]), float(alpha_bar[t - 1])
    mean_q = posterior_mean(x0, x_t, a_t, a_s)
    mean_p = posterior_mean(predict_x0(x_t, eps_pred, a_t), x_t, a_t, a_s)
    return _sum_flat(kl_normal(mean_q, float(posterior_variance(a_t, a_s)), mean_p, var_p))


def decoder_nll(x0: torch.Tensor, x_t: torch.Tensor, eps_pred: torch.Tensor, alpha_bar, variance="small",
                decoder: str = "discretized") -> torch.Tensor:
    """L_0 = −log p_θ(x_0 | x at step 0) per sample, in nats, shape (B,) (notebook 02 §5).

    The decoder's mean is μ_θ at the first step, which equals x̂_0 = `predict_x0(x_t, eps_pred, ᾱ_0)`, and
    its variance σ_0² is `model_variance(...)[0]`.
    - "discretized": DDPM's 256-bin decoder for 8-bit data scaled to [−1, 1]
      (`gaussian.discretized_gaussian_log_likelihood`); −log of a probability, so bits/dim are comparable
      with published numbers.
    - "gaussian": the continuous density N(x_0; x̂_0, σ_0² I), for real-valued (e.g. toy) data.
    """
    alpha_bar = _check_alpha_bar(alpha_bar)
    _check_x0(x0)
    _check_same("x_t", x_t, x0)
    _check_same("eps_pred", eps_pred, x0)
    _check_decoder(decoder, x0)
    return _decoder_nll(x0, x_t, eps_pred, alpha_bar, float(_read_variance(alpha_bar, variance)[0]), decoder)


def _check_decoder(decoder: str, x0: torch.Tensor) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
    if decoder == "discretized":
        _check_8bit(x0)


def _decoder_nll(x0, x_t, eps_pred, alpha_bar, var: float, decoder: str) -> torch.Tensor:
    mean = predict_x0(x_t, eps_pred, float(alpha_bar[0]))
    if decoder == "discretized":
        return -_sum_flat(discretized_gaussian_log_likelihood(x0, mean, 0.5 * math.log(var)))
    return -_sum_flat(log_normal(x0, mean, var))


def elbo_terms(eps_model, x0: torch.Tensor, alpha_bar, variance="small", decoder: str = "discretized",
               n_mc: int = 1, generator: torch.Generator | None = None) -> dict:
    """Every term of the negative ELBO for a batch x0, each averaged over `n_mc` draws of x_t (notebook 02 §3, §7).

    For every step t (all T of them) draws x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (`q_sample`), calls
    `eps_model(x_t, t)` with an int t, and evaluates the term in closed form given x_t. Returns a dict of
    float64-or-x0-dtype tensors:

    - "prior": L_T, shape (B,); "terms": shape (B, T), column 0 = L_0 (decoder), column t = L_{t−1};
    - "total": L = L_T + Σ terms, the negative ELBO in nats, shape (B,);
    - "elbo": −total, the lower bound on log p_θ(x_0);
    - "bpd": total / (D ln 2), bits per dimension (D = numel of one sample).

    Before the first network call: 0..255 images warn (as in every function here that takes x0), and
    decoder="discretized" refuses x0 off the 8-bit grid.

    Costs T · n_mc network calls per batch; wrap in `torch.no_grad()` for evaluation.
    """
    alpha_bar = _check_alpha_bar(alpha_bar)
    check_schedule(eps_model, alpha_bar, "elbo_terms: ", "each term would compare eps_model's noise with another step's")
    _check_x0(x0)
    check_generator(generator, x0.device)
    n_mc = check_int("n_mc", n_mc)
    _check_decoder(decoder, x0)
    var = _read_variance(alpha_bar, variance)
    B, T = x0.shape[0], alpha_bar.numel()
    xr = x0.repeat(n_mc, *([1] * (x0.ndim - 1)))
    terms = []
    wide = torch.promote_types(x0.dtype, torch.float32)   # the terms in float32 or wider (no log_ndtr in float16)
    for t in range(T):
        eps = torch.randn(xr.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = q_sample(xr, float(alpha_bar[t]), eps)
        # eps_model gets a copy of x_t, which is used below; any floating dtype (the terms are computed in `wide`)
        pred = of_eps_kind(eval_eps(eps_model, x_t.clone(), t, SPLIT_BOUND), x_t, "eps_model(x_t, t)", same_dtype=False)
        if not all_finite(pred):
            raise NonFiniteError(f"eps_model(x_t, t) returned NaN or inf at step t = {t}; the bound would be NaN")
        args = (xr.to(wide), x_t.to(wide), pred.to(wide), alpha_bar)     # checked above: once, not at every step
        term = _decoder_nll(*args, float(var[0]), decoder) if t == 0 else _posterior_kl(*args, t, float(var[t]))
        if not bool(torch.isfinite(term).all()):     # a finite but huge ε (1e30) squared past float32: the bound was NaN
            raise NonFiniteError(f"the bound's term at step t = {t} overflowed {wide} (eps_model returned values up to "
                                 f"{float(pred.abs().max()):.3g})" + ("; compute it in float64 (x0.double())"
                                                                      if wide != torch.float64 else ""))
        terms.append(term.reshape(n_mc, B).mean(0))
    terms = torch.stack(terms, dim=1)
    prior = _prior_kl(x0, alpha_bar)
    total = prior + terms.sum(1)
    D = x0[0].numel()
    return {"prior": prior, "terms": terms, "total": total, "elbo": -total, "bpd": total / (D * math.log(2))}


def elbo(eps_model, x0: torch.Tensor, alpha_bar, **kwargs) -> torch.Tensor:
    """The ELBO (a lower bound on log p_θ(x_0), nats), shape (B,): `elbo_terms(...)["elbo"]`."""
    return elbo_terms(eps_model, x0, alpha_bar, **kwargs)["elbo"]


def bits_per_dim(eps_model, x0: torch.Tensor, alpha_bar, **kwargs) -> torch.Tensor:
    """Negative ELBO in bits per dimension, shape (B,) (DDPM Table 1's NLL column): `elbo_terms(...)["bpd"]`."""
    return elbo_terms(eps_model, x0, alpha_bar, **kwargs)["bpd"]


def l_simple(eps_model, x0: torch.Tensor, alpha_bar, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, reduction: str = "mean", noise: torch.Tensor | None = None,
             validate: bool = True) -> torch.Tensor:
    """DDPM's training loss L_simple = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖² (DDPM eq. 14, notebook 02 §6).

    Averaged over pixels (as DDPM's `mean_flat`), with t uniform on {0, …, T−1} per sample unless `t`
    (a (B,) integer tensor) is given, and ε ~ N(0, I) from `generator` unless `noise` is given (the
    trainer draws both itself). `eps_model` is called once with a (B,) LongTensor t; its output is
    compared in float32 or wider (bf16 autocast). reduction "mean" returns a scalar, "none" the (B,)
    per-sample losses. Images that look like 0..255 ones warn, as in `prior_kl`. validate=False skips the argument
    checks, which would synchronise a GPU at every training step (the trainer checks its data once).
    """
    validate = check_bool("validate", validate)
    if validate:
        alpha_bar = _check_alpha_bar(alpha_bar)
        check_schedule(eps_model, alpha_bar, "l_simple: ", "x_t would be drawn at another noise level than eps_model's t")
        _check_x0(x0)
        check_generator(generator, x0.device)
    B, T = x0.shape[0], alpha_bar.numel()
    if t is None:
        t = torch.randint(0, T, (B,), generator=generator, device=x0.device)
    elif validate:
        t = torch.as_tensor(t, device=x0.device)
        if t.shape != (B,) or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise ValueError(f"t must be a ({B},) integer tensor, got {tuple(t.shape)} {t.dtype}")
        if int(t.min()) < 0 or int(t.max()) > T - 1:
            raise ValueError(f"t must lie in 0..T-1 = 0..{T - 1}")
        t = t.long()
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif validate:
        _check_same("noise", noise, x0)
    # ᾱ at float32 or wider: bfloat16 rounds ᾱ_0 = 0.9999 to 1, and x_t = x_0 would carry no noise at all
    x_t = q_sample(x0, alpha_bar.to(x0.device, torch.promote_types(x0.dtype, torch.float32))[t], noise)
    pred = of_eps_kind(eps_model(x_t, t), x_t, "eps_model(x_t, t)", same_dtype=False)   # bf16 under autocast
    loss = ((noise - pred.to(torch.promote_types(pred.dtype, torch.float32))) ** 2).reshape(B, -1).mean(1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}; choose 'mean' or 'none'")
