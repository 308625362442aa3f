"""The exact-score lab: Gaussian-mixture data with a closed-form ε*(x_t, t) (notebook 04 §5).

If the data are a Gaussian mixture p(x_0) = Σ_k w_k N(μ_k, Σ_k), the forward marginal
x_t = √ᾱ x_0 + √(1−ᾱ) ε is again a mixture (the linear-Gaussian marginal identity, notebook 03 §1):

    p_t(x) = Σ_k w_k N(x; √ᾱ μ_k, ᾱ Σ_k + (1−ᾱ) I),

so the optimal noise prediction ε*(x_t, t) = −√(1−ᾱ_t) ∇ log p_t(x_t) (Tweedie, notebook 04 §5) is
known exactly: a responsibility-weighted sum of the per-component scores. With it, sampler error
is measured with no model error at all: deterministic samplers against the exact ODE solution
(`ode.reference_solution`), stochastic ones against the data distribution (`mmd`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import ode


def _f64(x, name):
    x = torch.as_tensor(x)
    if not (x.dtype.is_floating_point or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a real tensor, got {x.dtype}")
    return x.to(torch.float64)


class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, Σ_k) in d dimensions, float64 (notebook 04 §5).

    weights (K,) positive (normalised here), means (K, d), covs (K, d, d) symmetric positive definite.
    Each Σ_k is stored by its eigendecomposition U_k diag(λ_k) U_kᵀ, so the noisy marginal
    ᾱΣ_k + (1−ᾱ)I = U_k diag(ᾱλ_k + 1−ᾱ) U_kᵀ costs nothing for any ᾱ, including one ᾱ per sample.
    """

    def __init__(self, weights, means, covs):
        w, mu, cov = _f64(weights, "weights"), _f64(means, "means"), _f64(covs, "covs")
        if mu.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(mu.shape)}")
        K, d = mu.shape
        if w.shape != (K,):
            raise ValueError(f"weights must have shape (K,) = ({K},), got {tuple(w.shape)}")
        if cov.shape != (K, d, d):
            raise ValueError(f"covs must have shape (K, d, d) = ({K}, {d}, {d}), got {tuple(cov.shape)}")
        if not bool(torch.isfinite(w).all() & (w > 0).all()):
            raise ValueError("weights must be finite and positive")
        if not bool(torch.allclose(cov, cov.transpose(-1, -2), atol=1e-12)):
            raise ValueError("covs must be symmetric")
        lam, U = torch.linalg.eigh(cov)
        if not bool((lam > 0).all()):
            raise ValueError("covs must be positive definite (all eigenvalues > 0)")
        self.weights, self.means, self.covs = w / w.sum(), mu, cov
        self.eigvals, self.eigvecs = lam, U
        self.K, self.d = K, d

    def __repr__(self):
        return f"GaussianMixture(K={self.K}, d={self.d})"

    def marginal(self, a) -> "GaussianMixture":
        """p_t for ᾱ = a: means √a μ_k, covariances aΣ_k + (1−a)I (notebook 04 §5)."""
        a = float(a)
        if not 0 < a <= 1:
            raise ValueError(f"alpha_bar must lie in (0, 1], got {a}")
        eye = torch.eye(self.d, dtype=torch.float64)
        return GaussianMixture(self.weights, math.sqrt(a) * self.means, a * self.covs + (1 - a) * eye)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws, shape (n, d): pick k ~ w, then μ_k + U_k √λ_k z."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return self.means[k] + torch.einsum("nij,nj->ni", self.eigvecs[k], self.eigvals[k].sqrt() * z)

    def _components(self, x: torch.Tensor, a):
        """log w_k + log N(x; √a μ_k, aΣ_k+(1−a)I) (B, K) and component scores (B, K, d)."""
        x = self._check_x(x)
        a = torch.as_tensor(a, dtype=torch.float64)
        if a.ndim == 0:
            a = a.expand(x.shape[0])
        if a.shape != (x.shape[0],):
            raise ValueError(f"alpha_bar must be a scalar or shape (B,) = ({x.shape[0]},), got {tuple(a.shape)}")
        a = a[:, None, None]                                   # (B, 1, 1)
        var = a * self.eigvals + (1 - a)                        # (B, K, d) eigenvalues of the covariance
        y = torch.einsum("kji,bkj->bki", self.eigvecs, x[:, None, :] - a.sqrt() * self.means)
        log_n = -0.5 * ((y ** 2 / var).sum(-1) + var.log().sum(-1) + self.d * math.log(2 * math.pi))
        scores = -torch.einsum("kij,bkj->bki", self.eigvecs, y / var)
        return self.weights.log() + log_n, scores

    def _check_x(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must have shape (B, d) = (B, {self.d}), got {tuple(x.shape)}")
        return x.to(torch.float64)

    def log_prob(self, x: torch.Tensor, a=1.0) -> torch.Tensor:
        """log p_t(x) for ᾱ = a (a = 1: the data density), shape (B,)."""
        return torch.logsumexp(self._components(x, a)[0], dim=1)

    def score(self, x: torch.Tensor, a=1.0) -> torch.Tensor:
        """∇_x log p_t(x) = Σ_k r_k(x) ∇ log N_k(x), with responsibilities r = softmax(log w_k N_k) (notebook 05 §3)."""
        logits, scores = self._components(x, a)
        r = torch.softmax(logits, dim=1)
        return torch.einsum("bk,bki->bi", r, scores)

    def eps(self, x: torch.Tensor, a) -> torch.Tensor:
        """ε*(x_t) = −√(1−ᾱ) ∇ log p_t(x_t), the exact minimiser of L_simple (notebook 04 §5).

        `a` is ᾱ: a float or a (B,) tensor; a = 1 gives 0 (clean data has no noise to predict).
        Returned in x's dtype.
        """
        a64 = torch.as_tensor(a, dtype=torch.float64)
        s = (1 - a64).clamp_min(0).sqrt()
        s = s[:, None] if s.ndim == 1 else s
        return (-s * self.score(x, a64)).to(x.dtype)


def exact_eps(mixture: GaussianMixture, alpha_bar: torch.Tensor):
    """The exact ε*(x, t) of `mixture` under the schedule `alpha_bar`, as a sampler-ready callable (notebook 04 §5).

    t may be an int, a (B,) integer tensor (table look-up, ᾱ_{−1} = 1), or a float / float tensor
    (continuous t ∈ [−1, T−1]: log ᾱ interpolated linearly between integer steps, `ode.alpha_bar_cont`),
    which the higher-order ODE solvers need between grid points.
    """
    alpha_bar = alpha_bar.to(torch.float64)

    def eps(x: torch.Tensor, t) -> torch.Tensor:
        a = ode.alpha_bar_cont(alpha_bar, t)
        if a.ndim == 1 and a.shape[0] == 1 and x.shape[0] != 1:
            a = a[0]
        return mixture.eps(x, a)

    eps.mixture, eps.alpha_bar = mixture, alpha_bar
    return eps


# ---------------------------------------------------------------------------------- named mixtures

def eight_gaussians(radius: float = 0.7, std_tangent: float = 0.15, std_radial: float = 0.05) -> GaussianMixture:
    """2-D: 8 equal-weight Gaussians on a ring of `radius`, elongated along the ring (for plots; notebook 04 §5).

    The data lie roughly in [−1, 1]², like DDPM's image range.
    """
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    radial = torch.stack([ang.cos(), ang.sin()], 1)
    tangent = torch.stack([-ang.sin(), ang.cos()], 1)
    covs = (std_radial ** 2 * radial[:, :, None] * radial[:, None, :]
            + std_tangent ** 2 * tangent[:, :, None] * tangent[:, None, :])
    return GaussianMixture(torch.ones(8), radius * radial, covs)


def random_mixture(d: int = 8, K: int = 4, scale: float = 0.5, std_range=(0.1, 0.3),
                   seed: int = 0) -> GaussianMixture:
    """d-dimensional mixture of K Gaussians with random means (± `scale`), random rotations and
    per-axis standard deviations in `std_range`; deterministic given `seed`."""
    g = torch.Generator().manual_seed(seed)
    w = 0.5 + torch.rand(K, generator=g, dtype=torch.float64)
    mu = scale * (2 * torch.rand(K, d, generator=g, dtype=torch.float64) - 1)
    Q, _ = torch.linalg.qr(torch.randn(K, d, d, generator=g, dtype=torch.float64))
    lo, hi = std_range
    std = lo + (hi - lo) * torch.rand(K, d, generator=g, dtype=torch.float64)
    covs = Q @ torch.diag_embed(std ** 2) @ Q.transpose(-1, -2)
    return GaussianMixture(w, mu, 0.5 * (covs + covs.transpose(-1, -2)))


def default_mixture(d: int = 2) -> GaussianMixture:
    """The lab's standard data: `eight_gaussians()` for d = 2, else `random_mixture(d, K=4, seed=0)`."""
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    return eight_gaussians() if d == 2 else random_mixture(d=d, K=4, seed=0)


# ------------------------------------------------------------------------------ distribution metric

class MMDResult(NamedTuple):
    """mmd2: unbiased MMD² between the samples and fresh data; floor: its standard deviation when the
    samples are themselves exact data (the metric's noise floor). Differences smaller than a few
    floors are not resolved by the metric at this sample size."""
    mmd2: float
    floor: float

    def resolved(self, k: float = 3.0) -> bool:
        """True if mmd2 exceeds k noise floors: the samples are measurably not from the data."""
        return self.mmd2 > k * self.floor


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD² with the Gaussian kernel k(u, v) = exp(−|u−v|²/(2 h²)) (Gretton et al. 2012; notebook 04 §5)."""
    def k(u, v):
        return torch.exp(-torch.cdist(u, v).pow(2) / (2 * bandwidth ** 2))
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                 + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())


def mmd(samples: torch.Tensor, mixture: GaussianMixture, generator: torch.Generator | None = None,
        repeats: int = 8, bandwidth: float | None = None) -> MMDResult:
    """Distance of `samples` (n, d) to the data distribution, with its own noise floor (notebook 04 §5).

    mmd2 is the unbiased MMD² to n fresh data draws; floor is the standard deviation (RMS, the null
    mean being 0) of the same statistic between two independent sets of n data draws, over `repeats`
    repetitions. The kernel
    bandwidth defaults to the components' typical standard deviation (weighted mean of
    √(mean eigenvalue of Σ_k)), so the kernel sees the shape of each mode; it is a fixed property of
    the mixture, so numbers are comparable across samplers.
    """
    samples = torch.as_tensor(samples, dtype=torch.float64)
    if samples.ndim != 2 or samples.shape[1] != mixture.d or samples.shape[0] < 2:
        raise ValueError(f"samples must have shape (n >= 2, d = {mixture.d}), got {tuple(samples.shape)}")
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("samples contain NaN or inf")
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 to estimate a standard deviation, got {repeats}")
    if bandwidth is None:
        bandwidth = float(mixture.weights @ mixture.eigvals.mean(1).sqrt())
    n = samples.shape[0]
    value = mmd2_unbiased(samples, mixture.sample(n, generator), bandwidth)
    null = torch.tensor([mmd2_unbiased(mixture.sample(n, generator), mixture.sample(n, generator), bandwidth)
                         for _ in range(repeats)])
    return MMDResult(value, float(null.pow(2).mean().sqrt()))  # the null has mean 0: RMS = std
