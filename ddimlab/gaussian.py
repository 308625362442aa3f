"""Gaussian algebra: log-densities, KL divergences, the linear-Gaussian identities, DDPM's L_0 decoder.

Everything the ELBO (notebook 02) and the DDIM marginal identity (notebook 03) need, as small
functions of tensors. Diagonal functions (`log_normal`, `kl_normal`,
`discretized_gaussian_log_likelihood`) work elementwise and broadcast, like the official DDPM code;
sum over the event dimensions yourself (`elbo.py` does). The full-covariance functions
(`log_mvn`, `kl_mvn`, `linear_gaussian_marginal`, `linear_gaussian_posterior`) take vectors of
shape (..., n) and matrices of shape (..., n, n), so a batch of small problems is one call.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .checks import SYMMETRY_TOL, check_bool, check_numbers, check_symmetric, check_values

LOG_2PI = math.log(2 * math.pi)
LINEAR = ("mu", "Lambda_inv", "A", "b", "L_inv")    # the linear-Gaussian model's arguments, in order


def _t(x, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    check_numbers(name, x)              # True read as 1 (a variance of 1); a string failed in torch's new()
    check_values(name, x, "a density or KL needs the values")     # else "Tensor.item() cannot be called on meta tensors"
    if not isinstance(x, torch.Tensor):
        dtype = like.dtype if like is not None and like.dtype.is_floating_point else torch.float64
        x = torch.as_tensor(x, dtype=None if np.iscomplexobj(x) else dtype, device=like.device if like is not None else None)
    if x.is_complex():         # a density of real numbers: the imaginary part would be dropped, or give a complex "log"
        raise TypeError(f"{name}: the Gaussian densities take real numbers, got {x.dtype}")
    if not x.is_floating_point():                         # an integer literal [[2, 1], [1, 2]]
        x = x.to(like.dtype if like is not None else torch.float64)
    # in float32 or wider: a variance of 1e-8 is 0 in float16, and torch has no half-precision log_ndtr
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _common(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors in their common (promoted) dtype: float32 and float64 arguments meet in float64, not in an error."""
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in xs))
    return tuple(x.to(dtype) for x in xs)


def _finite(**named: torch.Tensor) -> None:
    """A NaN or inf mean (or x) is a ValueError naming it, not a NaN density; on the CPU only (on a GPU it would
    synchronise every call)."""
    for name, v in named.items():
        if v.device.type == "cpu" and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} must be finite (it has NaN or inf)")


def _positive(name: str, v: torch.Tensor) -> None:
    """A variance: finite and > 0 (an infinite one gave a log-density of −inf and a KL of NaN)."""
    if not bool((torch.isfinite(v) & (v > 0)).all()):
        bad = v[~(torch.isfinite(v) & (v > 0))].flatten()[0].item() if v.ndim else v.item()
        raise ValueError(f"{name} must be > 0 and finite everywhere (a variance), got {bad:.3g}")


def log_normal(x, mean, var) -> torch.Tensor:
    """Elementwise log N(x; mean, var) = −½(log 2πσ² + (x − μ)²/σ²) (notebook 02 §2).

    `var` is a variance (not a standard deviation, not a log): a scalar for the isotropic case or a
    tensor broadcasting against x for a diagonal covariance. Sum over event dimensions for the
    log-density of a vector.
    """
    x = _t(x, "x")
    mean, var = _t(mean, "mean", x), _t(var, "var", x)
    _finite(x=x, mean=mean)
    _positive("var", var)
    return -0.5 * (LOG_2PI + torch.log(var) + (x - mean) ** 2 / var)


def kl_normal(mean1, var1, mean2, var2) -> torch.Tensor:
    """Elementwise KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) = ½(log σ₂²/σ₁² + (σ₁² + (μ₁−μ₂)²)/σ₂² − 1) (notebook 02 §3).

    Diagonal Gaussians: sum over event dimensions for the KL of vectors. Arguments broadcast.
    """
    mean1 = _t(mean1, "mean1")
    mean2, var1, var2 = _t(mean2, "mean2", mean1), _t(var1, "var1", mean1), _t(var2, "var2", mean1)
    _finite(mean1=mean1, mean2=mean2)
    _positive("var1", var1)
    _positive("var2", var2)
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def _check_mvn(mean: torch.Tensor, cov: torch.Tensor, what: str) -> None:
    n = mean.shape[-1] if mean.ndim else 0
    if mean.ndim < 1 or cov.ndim < 2 or cov.shape[-2:] != (n, n):
        raise ValueError(f"{what}: mean must have shape (..., n) and cov (..., n, n); "
                         f"got {tuple(mean.shape)} and {tuple(cov.shape)}")
    check_symmetric(cov, f"{what}: cov")


def _cholesky(cov: torch.Tensor, what: str) -> torch.Tensor:
    try:
        return torch.linalg.cholesky(cov)
    except torch.linalg.LinAlgError:
        raise ValueError(f"{what}: cov must be positive definite (it has an eigenvalue <= 0)") from None


def log_mvn(x, mean, cov) -> torch.Tensor:
    """log N(x; μ, Σ) for full covariance Σ (..., n, n); returns shape (...) (notebook 03 §1)."""
    x = _t(x, "x")
    x, mean, cov = _common(x, _t(mean, "mean", x), _t(cov, "cov", x))
    _check_mvn(mean, cov, "log_mvn")
    _finite(x=x, mean=mean)
    n = mean.shape[-1]
    if x.ndim < 1 or x.shape[-1] != n:
        raise ValueError(f"log_mvn: x must have shape (..., n) = (..., {n}) as the mean, got {tuple(x.shape)}")
    L = _cholesky(cov, "log_mvn")
    diff = (x - mean).unsqueeze(-1)
    batch = torch.broadcast_shapes(diff.shape[:-2], L.shape[:-2])
    z = torch.linalg.solve_triangular(L.expand(*batch, n, n), diff.expand(*batch, n, 1), upper=False)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (n * LOG_2PI + logdet + (z ** 2).sum((-2, -1)))


def kl_mvn(mean1, cov1, mean2, cov2) -> torch.Tensor:
    """KL(N(μ₁, Σ₁) ‖ N(μ₂, Σ₂)) = ½(tr Σ₂⁻¹Σ₁ + (μ₂−μ₁)ᵀΣ₂⁻¹(μ₂−μ₁) − n + log|Σ₂|/|Σ₁|)."""
    mean1 = _t(mean1, "mean1")
    mean1, cov1, mean2, cov2 = _common(mean1, _t(cov1, "cov1", mean1), _t(mean2, "mean2", mean1), _t(cov2, "cov2", mean1))
    _check_mvn(mean1, cov1, "kl_mvn (first)")
    _check_mvn(mean2, cov2, "kl_mvn (second)")
    _finite(mean1=mean1, mean2=mean2)
    n = mean1.shape[-1]
    if mean2.shape[-1] != n:
        raise ValueError(f"kl_mvn: the two Gaussians must have one dimension n, got {n} and {mean2.shape[-1]}")
    L1, L2 = _cholesky(cov1, "kl_mvn (first)"), _cholesky(cov2, "kl_mvn (second)")
    M = torch.cholesky_solve(cov1, L2)
    d = (mean2 - mean1).unsqueeze(-1)
    quad = (d * torch.cholesky_solve(d, L2)).sum((-2, -1))
    logdet = lambda L: 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # noqa: E731
    return 0.5 * (torch.diagonal(M, dim1=-2, dim2=-1).sum(-1) + quad - n + logdet(L2) - logdet(L1))


def _check_linear(mu, Lambda_inv, A, b, L_inv):
    n = mu.shape[-1] if mu.ndim else -1
    m = A.shape[-2] if A.ndim >= 2 else -1
    if (mu.ndim < 1 or Lambda_inv.shape[-2:] != (n, n) or A.ndim < 2 or A.shape[-1] != n
            or b.shape[-1:] != (m,) or L_inv.shape[-2:] != (m, m)):
        raise ValueError(
            "linear-Gaussian model p(x) = N(mu, Lambda_inv), p(y|x) = N(A x + b, L_inv) needs shapes "
            "mu (..., n), Lambda_inv (..., n, n), A (..., m, n), b (..., m), L_inv (..., m, m); got "
            f"{tuple(mu.shape)}, {tuple(Lambda_inv.shape)}, {tuple(A.shape)}, {tuple(b.shape)}, "
            f"{tuple(L_inv.shape)}")
    for name, v in (("mu", mu), ("A", A), ("b", b)):
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} must be finite (it has NaN or inf)")
    for name, cov in (("Lambda_inv", Lambda_inv), ("L_inv", L_inv)):
        _check_psd(cov, f"{name} (a covariance)")


def _check_psd(cov: torch.Tensor, what: str) -> None:
    """Finite, symmetric (`check_symmetric`) and positive semi-definite up to the same relative tolerance; zero is
    allowed (L_inv = 0: y = Ax + b exactly, DDIM's σ = 0)."""
    check_symmetric(cov, what)
    if cov.numel() and float(torch.linalg.eigvalsh(cov).min()) < -SYMMETRY_TOL * float(cov.abs().max()):
        raise ValueError(f"{what} must be positive semi-definite (it has a negative eigenvalue)")


def linear_gaussian_marginal(mu, Lambda_inv, A, b, L_inv):
    """Marginal of y for p(x) = N(μ, Λ⁻¹), p(y | x) = N(Ax + b, L⁻¹) (Bishop 2006, §2.3.3; notebook 03 §1–2).

        p(y) = N(y; Aμ + b, L⁻¹ + AΛ⁻¹Aᵀ)

    because y = Ax + b + ε with ε ~ N(0, L⁻¹) independent of x, and Cov(Ax) = AΛ⁻¹Aᵀ.
    This is the identity behind DDIM's q_σ: with x = x_t ~ q(x_t | x_0) and y = x_s drawn from
    q_σ(x_s | x_t, x_0), the marginal is N(√ᾱ_s x_0, (1−ᾱ_s) I) for every σ.
    Λ⁻¹ and L⁻¹ are covariances (not precisions). Returns (mean (..., m), cov (..., m, m)).
    """
    mu = _t(mu, "mu")
    mu, Lambda_inv, A, b, L_inv = _common(mu, *(_t(v, n, mu) for v, n in zip((Lambda_inv, A, b, L_inv), LINEAR[1:])))
    _check_linear(mu, Lambda_inv, A, b, L_inv)
    mean = (A @ mu.unsqueeze(-1)).squeeze(-1) + b
    cov = L_inv + A @ Lambda_inv @ A.transpose(-1, -2)
    return mean, cov


def linear_gaussian_posterior(mu, Lambda_inv, A, b, L_inv, y):
    """Posterior p(x | y) ∝ p(y | x) p(x) for the model of `linear_gaussian_marginal` (notebook 03 §2).

    Bayes' rule for linear Gaussians, in the "gain" form that needs only the marginal covariance
    S = L⁻¹ + AΛ⁻¹Aᵀ (stable when the noise L⁻¹ is tiny):

        K = Λ⁻¹AᵀS⁻¹,  mean = μ + K(y − Aμ − b),  cov = Λ⁻¹ − KAΛ⁻¹,

    equal to Bishop's (2.116) Σ = (Λ + AᵀLA)⁻¹, mean = Σ(AᵀL(y − b) + Λμ).
    With x = x_s ~ q(x_s | x_0) and y = x_t this gives DDPM's posterior q(x_s | x_t, x_0).
    Returns (mean (..., n), cov (..., n, n)).
    """
    mu = _t(mu, "mu")
    mu, Lambda_inv, A, b, L_inv, y = _common(mu, *(_t(v, n, mu) for v, n in zip((Lambda_inv, A, b, L_inv, y),
                                                                                 LINEAR[1:] + ("y",))))
    _check_linear(mu, Lambda_inv, A, b, L_inv)
    if y.shape[-1:] != b.shape[-1:]:
        raise ValueError(f"y must have shape (..., m) = (..., {b.shape[-1]}), got {tuple(y.shape)}")
    m_y, S = linear_gaussian_marginal(mu, Lambda_inv, A, b, L_inv)
    PAt = Lambda_inv @ A.transpose(-1, -2)                      # Λ⁻¹Aᵀ, (..., n, m)
    try:
        K = torch.linalg.solve(S, PAt.transpose(-1, -2)).transpose(-1, -2)   # S symmetric
    except torch.linalg.LinAlgError:
        raise ValueError("the marginal covariance S = L_inv + A Lambda_inv A^T is singular: some direction of y has no "
                         "randomness at all, and p(x | y) is not a density there") from None
    mean = mu + (K @ (y - m_y).unsqueeze(-1)).squeeze(-1)
    cov = Lambda_inv - K @ A @ Lambda_inv
    return mean, 0.5 * (cov + cov.transpose(-1, -2))


def _log_ndtr_diff(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """log(Φ(hi) − Φ(lo)) for hi > lo without cancellation in either tail."""
    # work on the side of 0 where the CDF values are small: Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi)
    flip = (hi + lo) > 0
    a = torch.where(flip, -lo, hi)
    c = torch.where(flip, -hi, lo)
    la, lc = torch.special.log_ndtr(a), torch.special.log_ndtr(c)
    return la + torch.log1p(-torch.exp(lc - la).clamp(max=1.0))


def _approx_ndtr(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of Φ used by the official DDPM code."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, mean, log_scale, approx: bool = False) -> torch.Tensor:
    """Elementwise log P(x) of DDPM's discretized Gaussian decoder for L_0 (DDPM §3.3, notebook 02 §5).

    Data are 8-bit values scaled to [−1, 1]: 256 bins of width 2/255 centred on x. With
    σ = exp(log_scale),

        P(x) = Φ((x + 1/255 − μ)/σ) − Φ((x − 1/255 − μ)/σ),

    and the edge bins extend to ±∞ (x = −1 takes Φ(·) from −∞, x = +1 takes 1 − Φ(·) up to +∞), so
    the 256 probabilities sum to 1. `approx=False` uses the exact Φ in log space (accurate in the
    tails); `approx=True` reproduces the official code (tanh approximation of Φ, probabilities
    clamped at 1e-12).
    """
    x = _t(x, "x")
    mean, log_scale = _t(mean, "mean", x), _t(log_scale, "log_scale", x)
    _finite(x=x, mean=mean, log_scale=log_scale)
    if bool((x.abs() > 1 + 1e-6).any()):
        raise ValueError(f"x must be data scaled to [-1, 1] (8-bit values / 127.5 - 1), got range "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")
    inv_std = torch.exp(-log_scale)
    hi = (x - mean + 1 / 255) * inv_std
    lo = (x - mean - 1 / 255) * inv_std
    if check_bool("approx", approx):
        cdf_hi, cdf_lo = _approx_ndtr(hi), _approx_ndtr(lo)
        log_cdf_hi = torch.log(cdf_hi.clamp(min=1e-12))
        log_sf_lo = torch.log((1 - cdf_lo).clamp(min=1e-12))
        log_mid = torch.log((cdf_hi - cdf_lo).clamp(min=1e-12))
    else:
        log_cdf_hi = torch.special.log_ndtr(hi)
        log_sf_lo = torch.special.log_ndtr(-lo)
        log_mid = _log_ndtr_diff(hi, lo)
    return torch.where(x < -0.999, log_cdf_hi, torch.where(x > 0.999, log_sf_lo, log_mid))
