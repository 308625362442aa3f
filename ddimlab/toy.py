"""The exact-score lab: Gaussian-mixture data with a closed-form ε*(x_t, t) (notebook 04 §5).

If the data are a Gaussian mixture p(x_0) = Σ_k w_k N(μ_k, Σ_k), the forward marginal
x_t = √ᾱ x_0 + √(1−ᾱ) ε is again a mixture (the linear-Gaussian marginal identity, notebook 03 §1):

    p_t(x) = Σ_k w_k N(x; √ᾱ μ_k, ᾱ Σ_k + (1−ᾱ) I),

so the optimal noise prediction ε*(x_t, t) = −√(1−ᾱ_t) ∇ log p_t(x_t) (Tweedie, notebook 04 §5) is
known exactly: a responsibility-weighted sum of the per-component scores. With it, sampler error
is measured with no model error at all: deterministic samplers against the exact ODE solution
(`ode.reference_solution`), stochastic ones against the data distribution (`mmd`, notebook 09 §1).

`GaussianMixture` holds any mixture (one eigenbasis per component, O(B·K·d²) per ε* call);
`SharedBasisMixture` holds mixtures whose components share one eigenbasis, O(B·K·d) per call, which
is what makes the image-like data of `image_like_mixture` (d = 1024) affordable (notebook 09 §3).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from . import ode, schedule
from .checks import (
    all_finite,
    as_real,
    check_fits,
    check_generator,
    check_int,
    check_numbers,
    check_symmetric,
    is_complex,
    seeded,
    value_range,
)


def _f64(x, name):
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.array(x))    # a list of floats as float64, not float32
    if not (x.dtype.is_floating_point or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a real tensor, got {x.dtype}")
    return x.to(torch.float64, copy=True)    # a copy: a caller editing its tensor later must not change the mixture


def _responsibilities(logits, dim, log=False):
    """softmax(logits) (or log_softmax) along the components' axis `dim`. A row whose density underflows to 0 in every
    component (entries past about 1e150, whose squares overflow float64) has none: an error, where softmax gives NaN.
    Such a row is looked for only where the answer is not finite (one pass over it, `all_finite`, at every ε* call)."""
    r = (torch.log_softmax if log else torch.softmax)(logits, dim=dim)
    if not all_finite(r):
        lost = torch.isneginf(logits).all(dim)
        if bool(lost.any()):
            raise ValueError(f"x is too far from the data for float64 densities: row {int(lost.nonzero()[0])} has density "
                             "0 under every component (entries past about 1e150 overflow when squared)")
    return r


def _weights_and_means(weights, means):
    """Checked float64 weights (K,) (finite, positive) and means (K, d) (finite, K ≥ 1, d ≥ 1)."""
    w, mu = _f64(weights, "weights"), _f64(means, "means")
    if mu.ndim != 2 or 0 in mu.shape:
        raise ValueError(f"means must have shape (K, d) with K, d >= 1, got {tuple(mu.shape)}")
    if not bool(torch.isfinite(mu).all()):
        raise ValueError("means must be finite")
    if w.shape != (mu.shape[0],):
        raise ValueError(f"weights must have shape (K,) = ({mu.shape[0]},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all() & (w > 0).all()):
        raise ValueError("weights must be finite and positive")
    return w, mu


def _alpha_bar_value(a, name: str = "alpha_bar", one: bool = True) -> float:
    """One ᾱ as a float in (0, 1] ((0, 1) unless `one`): a number, not a bool (True would be read as 1) nor a string."""
    v = as_real(a)
    if v is None:
        raise TypeError(f"{name} must be a real number, got {a!r}")
    if not (0 < v <= 1 if one else 0 < v < 1):
        raise ValueError(f"{name} must lie in (0, 1{']' if one else ')'}, got {v}")
    return v


def _alpha_bar_tensor(a) -> torch.Tensor:
    """ᾱ (a number or a (B,) tensor) as float64, if real: the cast would read True as 1.0 and drop a complex tensor's
    imaginary part without a word (a Python complex was torch's "must be real number, not complex")."""
    if is_complex(check_numbers("alpha_bar", a)):
        raise TypeError(f"alpha_bar must be real, got {getattr(a, 'dtype', type(a).__name__)}")
    return torch.as_tensor(a, dtype=torch.float64)


class GaussianMixture:
    """p(x) = Σ_k w_k N(x; μ_k, Σ_k) in d dimensions, float64 (notebook 04 §5).

    weights (K,) positive (normalised here), means (K, d), covs (K, d, d) symmetric positive definite.
    Each Σ_k is stored by its eigendecomposition U_k diag(λ_k) U_kᵀ, so the noisy marginal
    ᾱΣ_k + (1−ᾱ)I = U_k diag(ᾱλ_k + 1−ᾱ) U_kᵀ costs nothing for any ᾱ, including one ᾱ per sample.
    """

    def __init__(self, weights, means, covs):
        w, mu = _weights_and_means(weights, means)
        (K, d), cov = mu.shape, _f64(covs, "covs")
        if cov.shape != (K, d, d):
            raise ValueError(f"covs must have shape (K, d, d) = ({K}, {d}, {d}), got {tuple(cov.shape)}")
        check_symmetric(cov, "covs")
        lam, U = torch.linalg.eigh(cov)
        if not bool((lam > 0).all()):
            raise ValueError("covs must be positive definite (all eigenvalues > 0)")
        self.weights, self.means, self.covs = w / w.sum(), mu, cov
        self.eigvals, self.eigvecs = lam, U
        self.K, self.d = K, d
        self._means_eig = torch.einsum("kji,kj->ki", U, mu)     # U_kᵀ μ_k, (K, d)

    def __repr__(self):
        return f"GaussianMixture(K={self.K}, d={self.d})"

    def marginal(self, a) -> "GaussianMixture":
        """p_t for ᾱ = a: means √a μ_k, covariances aΣ_k + (1−a)I (notebook 04 §5)."""
        a = _alpha_bar_value(a)
        eye = torch.eye(self.d, dtype=torch.float64)
        return GaussianMixture(self.weights, math.sqrt(a) * self.means, a * self.covs + (1 - a) * eye)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws, shape (n, d): pick k ~ w, then μ_k + U_k √λ_k z."""
        n, generator = check_int("n", n), check_generator(generator, "cpu")
        per = self._bytes_per_draw()
        check_fits(n * per, f"{n:,} draws of {self!r}", lambda limit: f"draw at most {int(limit // per):,} at a time")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return self.means[k] + self._from_eigen_k(self.eigvals[k].sqrt() * z, k)

    def _bytes_per_draw(self) -> int:
        """Peak memory of one draw of `sample`: each row's U_k (d × d) and a few (n, d) tables, float64 (the peak
        measured, VmHWM: 0.74 to 0.91 of this at d = 16 with n = 10⁵ and 4·10⁵; 0.5 on the ring)."""
        return 8 * self.d * (self.d + 6)

    # The rotations into and out of each component's eigenbasis: Σ_k = U_k diag(λ_k) U_kᵀ.
    def std(self) -> torch.Tensor:
        """The data's standard deviation along each coordinate, (d,): Var x_j = Σ_k w_k (Σ_k,jj + μ_kj²) − (Σ_k w_k μ_kj)²
        (notebook 09 §1)."""
        mean = self.weights @ self.means
        return (self.weights @ (self._cov_diag() + self.means ** 2) - mean ** 2).sqrt()

    def _cov_diag(self) -> torch.Tensor:
        """Σ_k,jj = Σ_i U_k,ji² λ_k,i, (K, d)."""
        return (self.eigvecs ** 2 * self.eigvals[:, None, :]).sum(-1)

    def _from_eigen_k(self, y, k):
        """U_{k_n} y_n for y of shape (n, d) and one component index k_n per row."""
        return torch.einsum("nij,nj->ni", self.eigvecs[k], y)

    def _components(self, x: torch.Tensor, a):
        """Per component k, in its eigenbasis: log w_k + log N(x; √a μ_k, aΣ_k+(1−a)I) (K, B), the coordinates
        y = U_kᵀx − √a U_kᵀμ_k (K, d, B), the covariance's eigenvalues aλ_k + 1 − a (K, d, B) and a (1, 1, B); the last
        two with 1 instead of B where every row has the same ᾱ (what the samplers pass). The batch is the last axis:
        K and d are small (the ring: K = 8, d = 2), and torch vectorises along the contiguous last axis: ε* at B = 2048
        took 2.4 (ring) and 3.4 (8-D) times less on one thread than with (B, K, d) tensors. Valid for a ∈ [0, 1]: at a = 0
        every component is N(0, I)."""
        x = self._check_x(x)
        a = self._one_alpha_bar(x, a)[None, None, :]             # (1, 1, B), or (1, 1, 1): one ᾱ
        var = a * self.eigvals[:, :, None] + (1 - a)            # eigenvalues of the covariance
        # the formulas' operations in their order, in place where a temporary of the batch's size would be made (a fresh
        # one per call: at B·K·d·8 bytes past 128 kB each is a new mapping whose pages fault in), the same values
        y = self._rotate(self.eigvecs.mT, x.T).sub_(a.sqrt() * self._means_eig[:, :, None])
        log_n = (y * y).div_(var).sum(1).add_(var.log().sum(1)).add_(self.d * math.log(2 * math.pi)).mul_(-0.5)
        return log_n.add_(self.weights.log()[:, None]), y, var, a

    def _rotate(self, U, v):
        """U @ v for the components' rotations U (K, d, d) and v (d, B) or (K, d, B); for d = 1 the elementwise product,
        which is the same number (a 1 × 1 product has no sum to round) without a batched matrix product's overhead."""
        return U * v if self.d == 1 else U @ v

    @classmethod
    def _one_alpha_bar(cls, x, a) -> torch.Tensor:
        """ᾱ as (1,) where every row of x has the same one, else `_alpha_bar_rows` (B,). One ᾱ given as a number or a 0-d
        tensor (what `exact_eps` passes for the samplers' steps) is checked once, not once per row (x with rows)."""
        a = _alpha_bar_tensor(a)
        if a.ndim == 0 and x.shape[0]:
            return cls._alpha_bar_rows(x[:1], a)
        a = cls._alpha_bar_rows(x, a)
        return a[:1] if len(a) and bool((a == a[0]).all()) else a

    @staticmethod
    def _alpha_bar_rows(x, a) -> torch.Tensor:
        """ᾱ for each row of x, (B,) float64, from a float or a (B,) tensor; each in [0, 1]."""
        a = _alpha_bar_tensor(a)
        if a.ndim == 0:
            a = a.expand(x.shape[0])
        if a.shape != (x.shape[0],):
            raise ValueError(f"alpha_bar must be a scalar or shape (B,) = ({x.shape[0]},), got {tuple(a.shape)}")
        bad = ~((a >= 0) & (a <= 1))                           # NaN too
        if bool(bad.any()):
            raise ValueError(f"alpha_bar must lie in [0, 1], got {a[bad][0].item()}")
        return a

    def _check_x(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.dtype.is_floating_point:          # the answer is cast back to x's dtype: an integer one truncates it
            raise TypeError(f"x must be floating point, got {x.dtype}")
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"x must have shape (B, d) = (B, {self.d}), got {tuple(x.shape)}")
        if not all_finite(x):                              # log_prob, score and eps were NaN there
            raise ValueError("x contains NaN or inf")
        return x.to(torch.float64)

    def log_prob(self, x: torch.Tensor, a=1.0) -> torch.Tensor:
        """log p_t(x) for ᾱ = a (a = 1: the data density), shape (B,)."""
        return torch.logsumexp(self._components(x, a)[0], dim=0)

    def _mix(self, logits, per_component):
        """Σ_k r_k(x) f_k(x), (B, d): per_component (K, d, B) weighted by the responsibilities r = softmax(logits) (K, B)."""
        return (_responsibilities(logits, 0)[:, None, :] * per_component).sum(0).T.contiguous()

    def score(self, x: torch.Tensor, a=1.0) -> torch.Tensor:
        """∇_x log p_t(x) = Σ_k r_k(x) ∇ log N_k(x), with responsibilities r = softmax(log w_k N_k) (notebook 05 §3)."""
        logits, y, var, _ = self._components(x, a)
        return self._mix(logits, -self._rotate(self.eigvecs, y / var))

    def x0_mean(self, x: torch.Tensor, a) -> torch.Tensor:
        """E[x_0 | x_t = x] for ᾱ = a, by Gaussian conditioning in each component (notebook 04 §4):

            Σ_k r_k(x) (μ_k + √a Σ_k (aΣ_k + (1−a)I)⁻¹ (x − √a μ_k)).

        Finite for every a ∈ [0, 1]: at a = 0 (SNR = 0) it is the data mean Σ_k w_k μ_k. It equals
        `diffusion.predict_x0(x, eps(x, a), a)` (Tweedie) wherever that is defined (a > 0)."""
        logits, y, var, a = self._components(x, a)
        return self._mix(logits, self.means[:, :, None] + self.eigvecs @ (a.sqrt() * self.eigvals[:, :, None] * y / var))

    def v(self, x: torch.Tensor, a) -> torch.Tensor:
        """v*(x_t) = E[v | x_t] with v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022; notebook 04 §4):
        √a ε*(x) − √(1−a) E[x_0 | x_t = x]; at a = 0 it is −(data mean). `a` is a float or a (B,) tensor, as for `eps`."""
        eps, x0_mean = self.eps(x, a), self.x0_mean(x, a)        # these check x and a
        a = self._alpha_bar_rows(x, a)[:, None]
        return a.sqrt() * eps - (1 - a).sqrt() * x0_mean

    def reverse_kernel(self, x_t: torch.Tensor, a_t: float, a_s: float):
        """The exact reverse kernel q(x_s | x_t) of the forward process started at this mixture, s < t (notebook 02 §10).

        By Bayes q(x_s | x_t) ∝ N(x_t; c x_s, (1 − c²) I) p_s(x_s), c = √(ᾱ_t/ᾱ_s): again a mixture, with the
        weights r_k(x_t) of p_t's components and, per component, the Gaussian product. In Σ_k's eigenbasis the
        variances are v = 1/(1/(a_s λ_k + 1 − a_s) + c²/(1 − c²)) and the means v (√a_s U_kᵀμ_k/(a_s λ_k + 1 − a_s)
        + c U_kᵀx_t/(1 − c²)). Its mean is DDPM's posterior mean at the exact x̂_0, μ̃(E[x_0 | x_t], x_t).
        Returns (log r_k (B, K), means (B, K, d) in x's coordinates, v (K, d) in each component's eigenbasis);
        a_s = 1 (s = −1) gives the posterior p(x_0 | x_t).
        """
        a_t, a_s = _alpha_bar_value(a_t, name="a_t"), _alpha_bar_value(a_s, name="a_s")
        if not a_t < a_s:
            raise ValueError(f"need 0 < a_t < a_s <= 1 (s before t), got a_t = {a_t}, a_s = {a_s}")
        logits, _, _, _ = self._components(x_t, a_t)
        c2 = a_t / a_s
        var_s = a_s * self.eigvals + 1 - a_s                                   # (K, d)
        v = 1 / (1 / var_s + c2 / (1 - c2))
        xt_eig = self.eigvecs.mT @ self._check_x(x_t).T                        # U_kᵀx_t, (K, d, B)
        mean_eig = v[..., None] * (math.sqrt(a_s) * (self._means_eig / var_s)[..., None] + math.sqrt(c2) * xt_eig / (1 - c2))
        mean = self.eigvecs @ mean_eig
        return _responsibilities(logits, 0, log=True).T.contiguous(), mean.permute(2, 0, 1).contiguous(), v

    def reverse_sample(self, x_t: torch.Tensor, a_t: float, a_s: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw of x_s ~ q(x_s | x_t) per row (`reverse_kernel`; notebook 02 §10): pick k ~ r(x_t), then the k-th Gaussian."""
        log_r, mean, v = self.reverse_kernel(x_t, a_t, a_s)
        k = torch.multinomial(log_r.exp(), 1, generator=check_generator(generator, "cpu"))[:, 0]
        z = torch.randn(x_t.shape[0], self.d, generator=generator, dtype=torch.float64)
        rows = torch.arange(x_t.shape[0])
        return mean[rows, k] + self._from_eigen_k(v[k].sqrt() * z, k)

    def eps(self, x: torch.Tensor, a) -> torch.Tensor:
        """ε*(x_t) = −√(1−ᾱ) ∇ log p_t(x_t), the exact minimiser of L_simple (notebook 04 §5).

        `a` is ᾱ: a float or a (B,) tensor; a = 1 gives 0 (clean data has no noise to predict).
        Returned in x's dtype.
        """
        a64 = _alpha_bar_tensor(a)
        s = (1 - a64).clamp_min(0).sqrt()
        s = s[:, None] if s.ndim == 1 else s
        return (-s * self.score(x, a64)).to(x.dtype)


class SharedBasisMixture(GaussianMixture):
    """A Gaussian mixture whose components share one eigenbasis U: Σ_k = U diag(λ_k) Uᵀ (notebook 09 §3).

    weights (K,) positive, means (K, d), eigvals (K, d) positive (the λ_k), basis (d, d) orthogonal or
    None for the standard basis (Σ_k diagonal). The interface is `GaussianMixture`'s (`sample`,
    `log_prob`, `score`, `eps`, `x0_mean`, `v`, `marginal`, `toy.exact_eps`), but nothing is stored per
    component beyond λ_k: with basis=None one ε* call costs O(B·K·d), so d = 1024 with B = 1000 takes
    tens of milliseconds. The forward noise N(0, I) and every sampler commute with rotations, so the
    mixture in its eigenbasis (basis=None) samples exactly like the rotated one (tests/test_toy.py);
    `image_like_mixture` builds the lab's image-like data this way.
    """

    def __init__(self, weights, means, eigvals, basis=None):
        w, mu = _weights_and_means(weights, means)
        (K, d), lam = mu.shape, _f64(eigvals, "eigvals")
        if lam.shape != (K, d):
            raise ValueError(f"eigvals must have shape (K, d) = ({K}, {d}), got {tuple(lam.shape)}")
        if not bool(torch.isfinite(lam).all() & (lam >= torch.finfo(torch.float64).tiny).all()):   # 1/λ must fit: 1e-309
            raise ValueError("eigvals must be finite and positive (covariances positive definite), and at least 2.2e-308 "
                             "(float64's smallest normal number), whose inverse float64 holds")      # gave NaN scores
        if basis is not None:
            basis = _f64(basis, "basis")
            if basis.shape != (d, d) or not bool(torch.allclose(basis.T @ basis, torch.eye(d, dtype=torch.float64),
                                                                  atol=1e-10)):
                raise ValueError(f"basis must be an orthogonal (d, d) = ({d}, {d}) matrix or None (U^T U = I to 1e-10: "
                                 f"one computed in float32 is orthogonal to 1e-7 only; build it in float64)")
        self.weights, self.means, self.eigvals, self.basis = w / w.sum(), mu, lam, basis
        self.K, self.d = K, d
        self._means_eig = self._to_eigen(mu)                  # μ_k in the eigenbasis, (K, d)

    def __repr__(self):
        return f"SharedBasisMixture(K={self.K}, d={self.d})"

    @property
    def eigvecs(self) -> torch.Tensor:
        """U repeated for each component, (K, d, d): for small d only (tests, `GaussianMixture` comparisons)."""
        U = torch.eye(self.d, dtype=torch.float64) if self.basis is None else self.basis
        return U.expand(self.K, self.d, self.d)

    @property
    def covs(self) -> torch.Tensor:
        """Σ_k = U diag(λ_k) Uᵀ, (K, d, d): for small d only."""
        U = self.eigvecs
        return U @ torch.diag_embed(self.eigvals) @ U.transpose(-1, -2)

    def _cov_diag(self) -> torch.Tensor:
        return self.eigvals if self.basis is None else self.eigvals @ (self.basis ** 2).T

    def marginal(self, a) -> "SharedBasisMixture":
        """p_t for ᾱ = a: means √a μ_k, eigenvalues aλ_k + 1 − a in the same basis (notebook 09 §3)."""
        a = _alpha_bar_value(a)
        return SharedBasisMixture(self.weights, math.sqrt(a) * self.means, a * self.eigvals + (1 - a), self.basis)

    def _to_eigen(self, v):
        return v if self.basis is None else v @ self.basis

    def _from_eigen(self, y):
        return y if self.basis is None else y @ self.basis.T

    def _from_eigen_k(self, y, k):
        return self._from_eigen(y)

    def _bytes_per_draw(self) -> int:
        """A few (n, d) float64 tables (the peak measured, VmHWM: 4 of them at d = 1000, K = 4)."""
        return 8 * 6 * self.d

    # For one ᾱ the quadratic forms of all K components are matrix products with (K, d) tables, O(B·K·d) with no
    # (B, K, d) tensor. A per-sample ᾱ (a training loss's t) runs that once per distinct value (notebook 06 §4).
    def _per_alpha_bar(self, one, x, a):
        """one(rows of x, ᾱ as a float) for each distinct ᾱ in a (a float or a (B,) tensor), put back in x's row order."""
        x = self._check_x(x)
        if _alpha_bar_tensor(a).ndim == 0 and x.shape[0]:     # one ᾱ given (`exact_eps` at a sampler's step): no sort
            return one(x, float(self._alpha_bar_rows(x[:1], a)[0]))
        values, group, counts = torch.unique(self._alpha_bar_rows(x, a), return_inverse=True, return_counts=True)
        if len(values) <= 1:                                  # one ᾱ for every row (or no rows: any ᾱ will do)
            return one(x, float(values[0]) if len(values) else 1.0)
        order = group.argsort(stable=True)                    # the rows grouped by ᾱ, in the order of `values`
        parts = torch.cat([one(rows, v) for rows, v in zip(x[order].split(counts.tolist()), values.tolist())])
        out = torch.empty_like(parts)
        out[order] = parts
        return out

    def _fast(self, x, a: float):
        """(x in the eigenbasis (B, d), logits (B, K), 1/(aλ_k + 1 − a) (K, d))."""
        xe = self._to_eigen(x)
        m, inv = self._means_eig, 1 / (a * self.eigvals + (1 - a))
        quad = (xe ** 2) @ inv.T - 2 * math.sqrt(a) * xe @ (m * inv).T + a * (m ** 2 * inv).sum(1)
        logits = self.weights.log() - 0.5 * (quad - inv.log().sum(1) + self.d * math.log(2 * math.pi))
        return xe, logits, inv

    def _log_prob_one(self, x, a):
        return torch.logsumexp(self._fast(x, a)[1], dim=1)

    def _score_one(self, x, a):
        xe, logits, inv = self._fast(x, a)
        r = _responsibilities(logits, 1)
        return self._from_eigen(-xe * (r @ inv) + math.sqrt(a) * r @ (self._means_eig * inv))

    def _x0_mean_one(self, x, a):
        xe, logits, inv = self._fast(x, a)
        r, m, lam_inv = _responsibilities(logits, 1), self._means_eig, self.eigvals * inv
        return self._from_eigen(r @ m + math.sqrt(a) * xe * (r @ lam_inv) - a * r @ (lam_inv * m))

    def log_prob(self, x: torch.Tensor, a=1.0) -> torch.Tensor:
        return self._per_alpha_bar(self._log_prob_one, x, a)

    def score(self, x: torch.Tensor, a=1.0) -> torch.Tensor:
        return self._per_alpha_bar(self._score_one, x, a)

    def x0_mean(self, x: torch.Tensor, a) -> torch.Tensor:
        return self._per_alpha_bar(self._x0_mean_one, x, a)


def _at_most(name: str, most: float, other: str, other_most: float) -> str:
    """check_fits' advice for two sizes: the largest `name` at the other's value, or, where even `name` = 1 does not fit
    (K = 10**9 components), the largest `other`."""
    return f"give {name} at most {int(most):,}" if most >= 1 else f"give {other} at most {int(other_most):,}"


# peak memory (VmHWM) measured: image_like_mixture (K = 10) 53 and 55 bytes per K·d at d = 10⁶ and 3·10⁶ (82 at 10⁵,
# where torch's first calls weigh); random_mixture (K = 4) 48 to 74 bytes per K·d² at d = 800 to 1500
IMAGE_LIKE_BYTES = 64
RANDOM_MIXTURE_BYTES = 96


def image_like_mixture(d: int = 1024, K: int = 10, slope: float = 1.0, pixel_std: float = 0.5,
                       between: float = 0.5, seed: int = 0) -> SharedBasisMixture:
    """Image-like data for the exact-score lab: K components in d dimensions sharing one eigenbasis,
    with a power-law spectrum λ_j ∝ j^(−slope) (notebook 09 §3).

    Natural images have power spectra ∝ 1/f² (Field 1987; van der Schaaf & van Hateren 1996), which over
    the ~f² frequencies below f is λ_j ∝ 1/j at rank j: slope = 1. The spectrum is scaled so that the
    total variance is d·pixel_std² (pixels of standard deviation 0.5, as images scaled to [−1, 1]).
    A fraction `between` of each direction's variance separates the components (means
    μ_kj ~ N(0, between·λ_j)); the rest is within components, each with its own random factor in
    [0.5, 2] per direction (λ_kj = (1 − between)·λ_j·u_kj). The coordinates are the eigenbasis (the
    image's Fourier-like basis): basis=None, so ε* costs O(B·K·d). Deterministic given `seed`.
    """
    d, K = check_int("d", d), check_int("K", K)
    check_fits(IMAGE_LIKE_BYTES * K * d, f"toy.image_like_mixture(d={d}, K={K})",
               lambda limit: _at_most("d", limit // (IMAGE_LIKE_BYTES * K), "K", limit // (IMAGE_LIKE_BYTES * d)))
    if (share := as_real(between)) is None or not 0 <= share < 1:     # "0.5" and [0.5] were Python's TypeError
        raise ValueError(f"between must be a number in [0, 1) (the share of the variance between components), got "
                         f"{between!r}")
    if (power := as_real(slope)) is None:             # "1" and True were read as 1, NaN named `means`, inf `eigvals`
        raise ValueError(f"slope must be a finite number (lambda_j ~ j^-slope; 1 for natural images), got {slope!r}")
    if (std := as_real(pixel_std)) is None or std <= 0:      # -0.5 would square to 0.5's mixture
        raise ValueError(f"pixel_std must be a finite number > 0 (a standard deviation), got {pixel_std!r}")
    between, slope, pixel_std = share, power, std
    g = seeded(seed)
    j = torch.arange(1, d + 1, dtype=torch.float64)
    lam = j ** -slope
    lam = lam * (d * pixel_std * pixel_std / lam.sum())     # not ** 2: Python's OverflowError past 1e154
    if not bool((torch.isfinite(lam) & (lam > 0)).all()):
        raise ValueError(f"slope = {slope:g} and pixel_std = {pixel_std:g} put the spectrum's eigenvalues (spanning a factor "
                         f"d^|slope| = {d:g}^{abs(slope):g}) outside float64's range: use a smaller |slope| or a pixel_std "
                         f"nearer 1")
    mu = (between * lam).sqrt() * torch.randn(K, d, generator=g, dtype=torch.float64)
    u = 2.0 ** (2 * torch.rand(K, d, generator=g, dtype=torch.float64) - 1)       # log-uniform in [0.5, 2]
    return SharedBasisMixture(torch.ones(K), mu, (1 - between) * lam * u)


def exact_eps(mixture: GaussianMixture, alpha_bar: torch.Tensor):
    """The exact ε*(x, t) of `mixture` under the schedule `alpha_bar`, as a sampler-ready callable (notebook 04 §5).

    mixture: a `GaussianMixture` or `SharedBasisMixture` (anything with `eps(x, alpha_bar)`).

    t may be an int, a (B,) integer tensor (table look-up, ᾱ_{−1} = 1), or a float / float tensor
    (continuous t ∈ [−1, T−1]: log ᾱ interpolated linearly between integer steps, `ode.alpha_bar_cont`),
    which the higher-order ODE solvers need between grid points.
    """
    alpha_bar = schedule.validate_alpha_bar(alpha_bar)      # a β table gave a finite, wrong ε*

    def eps(x: torch.Tensor, t) -> torch.Tensor:
        a = ode._alpha_bar_cont(alpha_bar, ode._one_step(t, x))   # validated once, above
        if a.ndim == 1 and a.shape[0] == 1 and x.shape[0] != 1:
            a = a[0]
        return mixture.eps(x, a)

    eps.mixture, eps.alpha_bar = mixture, alpha_bar
    return eps


def kl_to_normal(mixture: GaussianMixture, a: float, n: int = 4000,
                 generator: torch.Generator | None = None) -> tuple[float, float]:
    """(KL(p_t ‖ N(0, I)), its Monte Carlo standard error) for ᾱ = a, in nats (notebook 04 §4).

    p_t is the noisy marginal at ᾱ = a; the estimate averages log p_t(x) − log N(x; 0, I) over n draws
    x = √a x_0 + √(1−a) ε. It is the price of starting a sampler from N(0, I) at a step whose marginal
    still holds a fraction √a of the data.
    """
    a = _alpha_bar_value(a, one=False)
    n = check_int("n", n, 2, note=" (a standard error needs two draws)")      # mixture.sample checks the generator
    x = math.sqrt(a) * mixture.sample(n, generator) + math.sqrt(1 - a) * torch.randn(
        n, mixture.d, generator=generator, dtype=torch.float64)
    log_ratio = mixture.log_prob(x, a) + 0.5 * (x.pow(2).sum(1) + mixture.d * math.log(2 * math.pi))
    return float(log_ratio.mean()), float(log_ratio.std() / math.sqrt(n))


# ---------------------------------------------------------------------------------- named mixtures

def eight_gaussians(radius: float = 0.7, std_tangent: float = 0.15, std_radial: float = 0.05) -> GaussianMixture:
    """2-D: 8 equal-weight Gaussians on a ring of `radius`, elongated along the ring (for plots; notebook 04 §5).

    The data lie roughly in [−1, 1]², like DDPM's image range.
    """
    for name, v in (("radius", radius), ("std_tangent", std_tangent), ("std_radial", std_radial)):
        if (r := as_real(v)) is None or r <= 0:          # a negative std would square to the positive one's mixture
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
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
    d, K = check_int("d", d), check_int("K", K)            # else torch's argument dump, or "negative dimension"
    check_fits(RANDOM_MIXTURE_BYTES * K * d * d, f"toy.random_mixture(d={d}, K={K}) (K covariances of d x d)",
               lambda limit: _at_most("d", math.isqrt(int(limit // (RANDOM_MIXTURE_BYTES * K))), "K",
                                      limit // (RANDOM_MIXTURE_BYTES * d * d)))
    lo, hi = (as_real(v) for v in std_range) if len(std_range) == 2 else (None, None)
    if lo is None or hi is None or not 0 < lo <= hi:     # negative ones would square to positive ones' mixture
        raise ValueError(f"std_range must be (low, high) with 0 < low <= high, got {std_range!r}")
    g = seeded(seed)
    w = 0.5 + torch.rand(K, generator=g, dtype=torch.float64)
    mu = scale * (2 * torch.rand(K, d, generator=g, dtype=torch.float64) - 1)
    Q, _ = torch.linalg.qr(torch.randn(K, d, d, generator=g, dtype=torch.float64))
    std = lo + (hi - lo) * torch.rand(K, d, generator=g, dtype=torch.float64)
    covs = Q @ torch.diag_embed(std ** 2) @ Q.transpose(-1, -2)
    return GaussianMixture(w, mu, 0.5 * (covs + covs.transpose(-1, -2)))


def default_mixture(d: int = 2) -> GaussianMixture:
    """The lab's standard data: `eight_gaussians()` for d = 2, else `random_mixture(d, K=4, seed=0)`."""
    d = check_int("d", d)
    return eight_gaussians() if d == 2 else random_mixture(d=d, K=4, seed=0)


# ------------------------------------------------------------------------------ distribution metric

ENERGY = "energy"      # the kernel k(u, v) = −|u − v|: MMD² with it is the energy distance (notebook 09 §1)


class MMDResult(NamedTuple):
    """mmd2: the unbiased statistic between the samples and fresh data; floor: its RMS when the samples
    are themselves exact data (the metric's noise floor; the null has mean 0, so RMS = standard deviation).
    Differences smaller than a few floors are not resolved by the metric at this sample size."""
    mmd2: float
    floor: float

    def resolved(self, k: float = 3.0) -> bool:
        """True if mmd2 exceeds k noise floors: the samples are measurably not from the data."""
        return self.mmd2 > k * self.floor


def bandwidth(mixture: GaussianMixture) -> float:
    """The Gaussian kernel's default bandwidth: the components' typical standard deviation, the weighted mean
    of √(mean eigenvalue of Σ_k) (notebook 09 §1). A fixed property of the mixture, so numbers are
    comparable across samplers."""
    return float(check_mixture(mixture).weights @ mixture.eigvals.mean(1).sqrt())


def check_mixture(mixture) -> GaussianMixture:
    """`mixture` if it is a `GaussianMixture` (a `SharedBasisMixture` too), else a TypeError naming it: a name ("ring") or
    an ε function failed as "'str' object has no attribute 'weights'" (or 'd', 'sample')."""
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a toy.GaussianMixture, got {type(mixture).__name__}")
    return mixture


def gram(u: torch.Tensor, v: torch.Tensor, kernel) -> torch.Tensor:
    """Kernel matrix k(u_i, v_j) (notebook 09 §1). kernel: a bandwidth h > 0 for the Gaussian kernel
    exp(−|u−v|²/(2h²)), or ENERGY ("energy") for k = −|u − v|, whose MMD² is the energy distance
    2E|X−Y| − E|X−X'| − E|Y−Y'| (Székely & Rizzo 2013; Sejdinovic et al. 2013)."""
    table, sign = signed_gram(u, v, kernel)
    return table.neg_() if sign < 0 else table


def signed_gram(u: torch.Tensor, v: torch.Tensor, kernel) -> tuple[torch.Tensor, float]:
    """(table, sign) with `gram(u, v, kernel)` = sign · table (notebook 09 §1): the energy kernel's table is |u − v|
    itself, sign −1, so that what only sums it (`mmd2_unbiased`, `lab.jackknife`) negates its sums instead of the n × m
    table, one pass fewer over each; the same numbers, since negation commutes with rounding. Gaussian kernel: sign 1."""
    u, v = points(u, "u"), points(v, "v")             # float64: a float32 set against a float64 one, lists
    if u.shape[1] != v.shape[1]:
        raise ValueError(f"u and v must be points of one dimension d, got shapes {tuple(u.shape)} and {tuple(v.shape)}")
    check_tables("gram", (len(u), len(v)))
    if isinstance(kernel, str) and kernel == ENERGY:         # (an array would compare elementwise)
        return torch.cdist(u, v), -1.0
    # not a bool (True read as 1), a string, an array; nor a bandwidth whose 1/h² overflows (1e-300: Python's "float
    # division by zero"; 1e-160: -inf · 0 = NaN on the diagonal)
    if (h := as_real(kernel)) is None or not (h > 0 and h * h >= torch.finfo(torch.float64).tiny):
        raise ValueError(f"kernel must be a finite bandwidth >= 1.5e-154 (Gaussian: 1/h² must fit float64) or {ENERGY!r}, "
                         f"got {kernel!r}")
    kernel = h
    # |u−v|² = |u|² + |v|² − 2u·v, one matrix product and in-place passes: 14 ms against cdist(u, v).pow(2)'s 28 to 34 ms
    # on the lab's 2000 × 2000 tables (two threads); the clamp sets to 0 what rounding leaves below it where u_i ≈ v_j
    d2 = torch.addmm((u * u).sum(1)[:, None], u, v.T, alpha=-2).add_((v * v).sum(1)).clamp_(min=0)
    h2 = float(kernel) ** 2 if float(kernel) < 1e150 else math.inf     # ** raises OverflowError past 1e154
    return d2.mul_(-0.5 / h2).exp_(), 1.0


def points(x, name: str) -> torch.Tensor:
    """`x` as float64 points (n, d), d ≥ 1, finite and within ±√(max/(4d)) (max: float64's largest), where the squared
    distance of two such points, at most d (2 max|x|)², still fits float64: what the sample distances (`mmd2_unbiased`,
    `mmd`, `lab.jackknife`) take. Past it (samples near 1e154 from a diverging sampler) the kernels overflowed and the
    MMD² was NaN, read by `MMDResult.resolved` as 'not resolved'."""
    x = _f64(x, name)                                  # a list of floats read as float64, not float32
    if x.ndim != 2 or x.shape[1] == 0:                 # d = 0: every distance 0, an MMD² of 0 ± 0
        raise ValueError(f"{name} must be points of shape (n, d) with d >= 1, got shape {tuple(x.shape)}")
    lo, hi = value_range(x)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contain NaN or inf")
    limit = math.sqrt(torch.finfo(torch.float64).max / (4 * x.shape[1]))
    if (top := max(-lo, hi)) > limit:                  # max |x|
        raise ValueError(f"{name} hold values up to {top:.3g}, beyond {limit:.3g}, where the squared distances of "
                         f"{x.shape[1]}-D points overflow float64 (did the sampler diverge?)")
    return x


def check_tables(what: str, *sizes) -> None:
    """`checks.check_fits` for float64 n × m kernel tables held at once, `sizes` their (n, m): the sample distances
    (`gram`, `mmd2_unbiased`, `lab.jackknife`) of 10⁶ points asked torch's allocator for 8 TB (and past the memory but
    within the swap's reach, grew until the system killed the process)."""
    need = 8 * sum(n * m for n, m in sizes)
    n, m = max(n for n, _ in sizes), max(m for _, m in sizes)
    check_fits(need, f"{what}'s {len(sizes)} kernel table{'s' * (len(sizes) > 1)} of up to {n:,} x {m:,} points",
               lambda limit: f"give at most {math.isqrt(int(limit // (8 * len(sizes)))):,} points per set")


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, kernel) -> float:
    """Unbiased MMD² = mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) − 2 mean_{i,j} k(x_i, y_j)
    (Gretton et al. 2012; notebook 09 §1). kernel: a Gaussian bandwidth, or ENERGY for the energy
    distance (`gram`)."""
    x, y = points(x, "x"), points(y, "y")               # float32 samples against float64 data draws meet in float64
    n, m = x.shape[0], y.shape[0]
    if min(n, m) < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 points in each set, got {n} and {m}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be points of one dimension d, got {tuple(x.shape)} and {tuple(y.shape)}")
    check_tables("mmd2_unbiased", (n, n), (m, m), (n, m))
    (kxx, sign), (kyy, _), (kxy, _) = (signed_gram(a, b, kernel) for a, b in ((x, x), (y, y), (x, y)))
    return sign * float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))      # negation is exact: the same
                        + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())   # bits as on gram's tables


def mmd(samples: torch.Tensor, mixture: GaussianMixture, generator: torch.Generator | None = None,
        repeats: int = 8, kernel=None, scale=None) -> MMDResult:
    """Distance of `samples` (n, d) to the data distribution, with its own noise floor (notebook 09 §1).

    mmd2 is `mmd2_unbiased` to n fresh data draws; floor is the RMS of the same statistic between two
    independent sets of n data draws, over `repeats` repetitions (`noise_floor`). kernel: None for the Gaussian kernel
    with `bandwidth(mixture)`, a bandwidth, or ENERGY for the energy distance. scale: None, or a (d,)
    tensor every point is divided by first (`mixture.std()`: each coordinate on its own scale).
    """
    samples, mixture = points(samples, "samples"), check_mixture(mixture)
    if samples.shape[1] != mixture.d or samples.shape[0] < 2:
        raise ValueError(f"samples must have shape (n >= 2, d = {mixture.d}), got {tuple(samples.shape)}")
    repeats, kernel, scale = _mmd_options(mixture, repeats, kernel, scale)
    n = samples.shape[0]
    value = mmd2_unbiased(samples / scale, mixture.sample(n, generator) / scale, kernel)
    return MMDResult(value, _null_rms(mixture, n, generator, repeats, kernel, scale))


def noise_floor(mixture: GaussianMixture, n: int, generator: torch.Generator | None = None,
                repeats: int = 8, kernel=None, scale=None) -> float:
    """The metric's noise floor at n (notebook 09 §1): the RMS of `mmd2_unbiased` between two fresh data sets of n
    points over `repeats` pairs, what a perfect sampler scores at this n; `mmd`'s floor. kernel and scale as in `mmd`.
    The two sets of n draws a sampler's data set and `mmd`'s value would take are drawn first (not used), so that the
    floor is `mmd`'s for n fresh samples from the same generator and seeded tables keep their numbers."""
    mixture = check_mixture(mixture)
    n = check_int("n", n, 2, note=" (the unbiased statistic needs 2 points per set)")
    options = _mmd_options(mixture, repeats, kernel, scale)
    for _ in range(2):
        mixture.sample(n, generator)
    return _null_rms(mixture, n, generator, *options)


def _mmd_options(mixture: GaussianMixture, repeats, kernel, scale):
    """`mmd`'s repeats, kernel (None: `bandwidth(mixture)`) and scale (None: ones), checked."""
    repeats = check_int("repeats", repeats, 2, note=" (to estimate a standard deviation)")
    kernel = bandwidth(mixture) if kernel is None else kernel
    scale = torch.ones(mixture.d, dtype=torch.float64) if scale is None else torch.as_tensor(scale, dtype=torch.float64)
    if scale.shape != (mixture.d,) or not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise ValueError(f"scale must be None or a ({mixture.d},) tensor of finite values > 0 (e.g. mixture.std()), "
                         f"got shape {tuple(scale.shape)}")
    return repeats, kernel, scale


def _null_rms(mixture, n, generator, repeats, kernel, scale) -> float:
    null = torch.tensor([mmd2_unbiased(mixture.sample(n, generator) / scale, mixture.sample(n, generator) / scale,
                                       kernel) for _ in range(repeats)])
    return float(null.pow(2).mean().sqrt())     # the null has mean 0: RMS = std
