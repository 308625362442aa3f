"""Mutation tests: each central identity has one independent check, written once as a function of the formula
under test. The check must pass for the library and fail for deliberately wrong formulas (an off-by-one
index, a missing square root, the wrong variance): a check that passes on a wrong formula is a defect.

- DDPM's posterior q(x_s | x_t, x_0)   brute-force Bayes on a grid           (notebook 02 §4)
- the Gaussian KL                      numerical integration (scipy.quad)   (notebook 02 §3)
- the q_σ marginal (DDIM Lemma 1)       Monte Carlo, 5 standard errors       (notebook 03 §3, §5)
- deterministic DDIM = Euler           `ode.euler` on the ODE of DDIM §4.3  (notebook 05 §2)
- DDIM with η = 1 = DDPM ancestral      `samplers.ddpm_sample`, same noise   (notebook 03 §4, 04 §3)
- DDIM Theorem 1, J_σ = L_γ + C         Monte Carlo of the log-ratio, 5 SE  (notebook 03 §7)
"""
import math
from unittest import mock

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ddimlab import diffusion, ode, samplers, toy
from ddimlab.diffusion import posterior_variance
from ddimlab.gaussian import kl_normal
from ddimlab.schedule import alpha_bar, alpha_bar_at, beta_schedule, make_alpha_bar, timesteps

F64 = torch.float64
AB = make_alpha_bar("linear", 1000)
Z = 5.0


def _ab(t):
    return float(alpha_bar_at(AB, t))


# ------------------------------------------------------------------ DDPM's posterior: brute-force Bayes

def posterior_grid_error(mean_fn, var_fn) -> float:
    """Largest disagreement between (mean_fn, var_fn) and q(x_s | x_t, x_0) ∝ q(x_t | x_s) q(x_s | x_0)
    normalised numerically on a grid of x_s (scipy densities; the grid is placed by the two factors, not by the formula).
    Errors are in units of the numerical posterior sd (mean) and relative (variance)."""
    x0, xt = 0.8, -0.4
    worst = 0.0
    for t, s in [(1, 0), (9, 8), (99, 98), (999, 998), (499, 99), (999, 0)]:     # 0-based steps, s < t
        a_t, a_s = _ab(t), _ab(s)
        # the posterior mean lies between the centres of the two factors (as functions of x_s) and its sd is below
        # the smaller of their sds, so this grid covers it by ±12 posterior sd whatever the formula under test says
        alpha = a_t / a_s
        c = sorted([math.sqrt(a_s) * x0, xt / math.sqrt(alpha)])
        sd = min(math.sqrt(1 - a_s), math.sqrt((1 - alpha) / alpha))
        xs = np.linspace(c[0] - 12 * sd, c[1] + 12 * sd, 200_001)
        logw = (stats.norm.logpdf(xt, math.sqrt(a_t / a_s) * xs, math.sqrt(1 - a_t / a_s))
                + stats.norm.logpdf(xs, math.sqrt(a_s) * x0, math.sqrt(1 - a_s)))
        w = np.exp(logw - logw.max())
        w /= np.trapezoid(w, xs)
        m_num = np.trapezoid(w * xs, xs)
        v_num = np.trapezoid(w * (xs - m_num) ** 2, xs)
        m = float(mean_fn(torch.tensor([[x0]], dtype=F64), torch.tensor([[xt]], dtype=F64), a_t, a_s))
        v = float(var_fn(torch.tensor(a_t, dtype=F64), torch.tensor(a_s, dtype=F64)))
        worst = max(worst, abs(m - m_num) / math.sqrt(v_num), abs(v - v_num) / v_num)
    return worst


def _mean_missing_sqrt(x0, x_t, a_t, a_s):
    """μ̃ with α_t in place of √α_t on x_t."""
    alpha = a_t / a_s
    return math.sqrt(a_s) * (1 - alpha) / (1 - a_t) * x0 + alpha * (1 - a_s) / (1 - a_t) * x_t


def _mean_off_by_one(x0, x_t, a_t, a_s):
    """μ̃ with √ᾱ_t in place of √ᾱ_{t−1} on x_0."""
    alpha = a_t / a_s
    return math.sqrt(a_t) * (1 - alpha) / (1 - a_t) * x0 + math.sqrt(alpha) * (1 - a_s) / (1 - a_t) * x_t


POSTERIOR_MUTANTS = {
    "variance beta_t instead of beta_tilde_t": (diffusion.posterior_mean, lambda a_t, a_s: 1 - a_t / a_s),
    "variance with (1 - abar_s)/(1 - abar_t) inverted": (diffusion.posterior_mean,
                                                          lambda a_t, a_s: (1 - a_t) / (1 - a_s) * (1 - a_t / a_s)),
    "mean: alpha_t instead of sqrt(alpha_t)": (_mean_missing_sqrt, diffusion.posterior_variance),
    "mean: sqrt(abar_t) instead of sqrt(abar_t-1)": (_mean_off_by_one, diffusion.posterior_variance),
}


def test_posterior_check_passes_for_the_library():
    assert posterior_grid_error(diffusion.posterior_mean, diffusion.posterior_variance) < 1e-6


@pytest.mark.parametrize("name", POSTERIOR_MUTANTS)
def test_posterior_check_fails_for_mutant(name):
    assert posterior_grid_error(*POSTERIOR_MUTANTS[name]) > 1e-3


# ----------------------------------------------------------------------------- Gaussian KL: quadrature

KL_CASES = [(0.3, 0.5, -1.0, 2.0), (2.0, 0.1, 0.0, 1.0), (-1.0, 3.0, 1.0, 0.7), (0.0, 1e-2, 0.05, 1.2e-2), (0.0, 1.0, 0.0, 1.0)]


def kl_quadrature_error(kl_fn) -> float:
    """Largest |kl_fn(μ₁, σ₁², μ₂, σ₂²) − ∫ p log(p/q)| over KL_CASES, the integral by scipy.integrate.quad."""
    worst = 0.0
    for m1, v1, m2, v2 in KL_CASES:
        p, q = stats.norm(m1, math.sqrt(v1)), stats.norm(m2, math.sqrt(v2))
        sd = math.sqrt(v1)
        ref, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), m1 - 40 * sd, m1 + 40 * sd,
                                epsabs=1e-13, epsrel=1e-12, limit=200)
        worst = max(worst, abs(float(kl_fn(m1, v1, m2, v2)) - ref))
    return worst


KL_MUTANTS = {
    "ratio upside down, KL(q || p)": lambda m1, v1, m2, v2: kl_normal(m2, v2, m1, v1),
    "log-variance ratio without the 1/2": lambda m1, v1, m2, v2: math.log(v2 / v1) + 0.5 * ((v1 + (m1 - m2) ** 2) / v2 - 1),
    "sigma_1^2 missing from the quadratic term": lambda m1, v1, m2, v2: 0.5 * (math.log(v2 / v1) + (m1 - m2) ** 2 / v2 - 1),
    "standard deviations where variances belong": lambda m1, v1, m2, v2: kl_normal(m1, math.sqrt(v1), m2, math.sqrt(v2)),
}


def test_kl_check_passes_for_the_library():
    assert kl_quadrature_error(kl_normal) < 1e-8


@pytest.mark.parametrize("name", KL_MUTANTS)
def test_kl_check_fails_for_mutant(name):
    assert kl_quadrature_error(KL_MUTANTS[name]) > 1e-3


# ------------------------------------------------------------- the q_σ marginal: Monte Carlo, 5 SE

def q_sigma_marginal_ok(mean_fn, N: int = 40_000) -> bool:
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, then x_s = mean_fn(x_0, x_t, ᾱ_t, ᾱ_s, σ) + σ z: are the sample mean and
    variance of x_s within 5 standard errors of √ᾱ_s x_0 and 1 − ᾱ_s (DDIM Lemma 1), for several (t, s, η)?"""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.8, -1.2, 0.1], dtype=F64)
    for t, s in [(999, 799), (400, 37), (120, 119), (60, 10)]:
        a_t, a_s = _ab(t), _ab(s)
        for eta in [0.0, 0.5, 1.0]:
            sigma = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
            eps, z = torch.randn(N, 3, generator=gen, dtype=F64), torch.randn(N, 3, generator=gen, dtype=F64)
            x_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
            x_s = mean_fn(x0.expand(N, 3), x_t, a_t, a_s, sigma) + sigma * z
            v = 1 - a_s
            if not bool(((x_s.mean(0) - math.sqrt(a_s) * x0).abs() <= Z * math.sqrt(v / N)).all()):
                return False
            if not bool(((x_s.var(0) - v).abs() <= Z * v * math.sqrt(2 / (N - 1))).all()):
                return False
    return True


def _q_sigma_mean_variant(coef_x0, coef_eps):
    def mean(x0, x_t, a_t, a_s, sigma):
        return coef_x0(a_t, a_s) * x0 + coef_eps(a_s, sigma) * (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    return mean


Q_SIGMA_MUTANTS = {
    "sqrt(1 - abar_s) without the - sigma^2": _q_sigma_mean_variant(lambda a_t, a_s: math.sqrt(a_s),
                                                                   lambda a_s, sg: math.sqrt(1 - a_s)),
    "sigma not squared under the root": _q_sigma_mean_variant(lambda a_t, a_s: math.sqrt(a_s),
                                                             lambda a_s, sg: math.sqrt(max(1 - a_s - sg, 0.0))),
    "x_0 term with sqrt(abar_t) instead of sqrt(abar_s)": _q_sigma_mean_variant(lambda a_t, a_s: math.sqrt(a_t),
                                                                              lambda a_s, sg: math.sqrt(1 - a_s - sg ** 2)),
}


def test_q_sigma_check_passes_for_the_library():
    assert q_sigma_marginal_ok(diffusion.q_sigma_mean)


@pytest.mark.parametrize("name", Q_SIGMA_MUTANTS)
def test_q_sigma_check_fails_for_mutant(name):
    assert not q_sigma_marginal_ok(Q_SIGMA_MUTANTS[name])


# --------------------------------------------------------------- deterministic DDIM = Euler on the ODE

MIX = toy.default_mixture(2)
EPS_STAR = toy.exact_eps(MIX, AB)


def ddim_matches_euler(coefficients) -> bool:
    """`samplers.ddim_sample(η = 0)` with the coefficients of its step (DDIM eq. 12: √ᾱ_t, √(1−ᾱ_t), √ᾱ_s,
    √(1−ᾱ_s−σ²), σ, `diffusion.ddim_coefficients`) formed by `coefficients`, against `ode.euler`
    (x̄_s = x̄_t + (σ_s − σ_t) ε, DDIM §4.3) on the exact score, 10 uniform steps: equal to float64 rounding?"""
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    seq = timesteps(10, 1000)
    with mock.patch.object(samplers, "ddim_coefficients", coefficients):
        x_ddim = samplers.ddim_sample(EPS_STAR, x_T, AB, seq, eta=0.0)
    x_euler = ode.euler(EPS_STAR, x_T, AB, seq)
    return bool(torch.isfinite(x_ddim).all()) and float((x_ddim - x_euler).abs().max()) < 1e-9


def _coefficients_variant(noise_coef, direction_coef):
    def coefficients(a_t, a_s, sigma):
        at, as_ = (torch.as_tensor(a, dtype=F64) for a in (a_t, a_s))
        return at.sqrt(), noise_coef(at), as_.sqrt(), direction_coef(at, as_), sigma
    return coefficients


_noise_right = lambda a: (1 - a).sqrt()  # noqa: E731   x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t
DDIM_STEP_MUTANTS = {
    "direction sqrt(1 - abar_t) instead of sqrt(1 - abar_s)":
        _coefficients_variant(_noise_right, lambda at, as_: (1 - at).sqrt()),
    "direction (1 - abar_s) without the square root": _coefficients_variant(_noise_right, lambda at, as_: 1 - as_),
    "x0_hat with (1 - abar_t) eps, no square root": _coefficients_variant(lambda a: 1 - a, lambda at, as_: (1 - as_).sqrt()),
}


def test_ddim_euler_check_passes_for_the_library():
    assert ddim_matches_euler(diffusion.ddim_coefficients)


@pytest.mark.parametrize("name", DDIM_STEP_MUTANTS)
def test_ddim_euler_check_fails_for_mutant(name):
    assert not ddim_matches_euler(DDIM_STEP_MUTANTS[name])


# ------------------------------------------------------------------ DDIM with η = 1 = DDPM ancestral

AB100 = make_alpha_bar("linear", 100)
EPS100 = toy.exact_eps(MIX, AB100)


def ddim_eta1_matches_ddpm(sigma_fn) -> bool:
    """`samplers.ddim_sample(η = 1)` on all T = 100 steps, with σ(η) replaced by sigma_fn, against
    `samplers.ddpm_sample(variance="small")` (DDPM eq. 7 mean, β̃ variance) driven by the same noise."""
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    seq = torch.arange(99, -1, -1)
    with mock.patch.object(samplers, "ddim_sigma", sigma_fn):         # the σ that ddim_sample checks and steps with
        try:
            x_ddim = samplers.ddim_sample(EPS100, x_T, AB100, seq, eta=1.0, generator=torch.Generator().manual_seed(5))
        except ValueError:   # a σ with σ² > 1 − ᾱ_s is refused (check_eta_steps): the wrong formula is caught either way
            return False
    x_ddpm = samplers.ddpm_sample(EPS100, x_T, AB100, "small", generator=torch.Generator().manual_seed(5))
    return float((x_ddim - x_ddpm).abs().max()) < 1e-9


SIGMA_MUTANTS = {
    "sigma^2 = beta (DDPM's large variance) instead of beta_tilde":
        lambda a_t, a_s, eta=1.0: eta * (1 - torch.as_tensor(a_t, dtype=F64) / a_s).sqrt(),
    "sigma = beta_tilde, square root missing": lambda a_t, a_s, eta=1.0: eta * posterior_variance(a_t, a_s),
    "(1 - abar_t)/(1 - abar_s) instead of (1 - abar_s)/(1 - abar_t)":
        lambda a_t, a_s, eta=1.0: eta * ((1 - torch.as_tensor(a_t, dtype=F64)) / (1 - torch.as_tensor(a_s, dtype=F64))
                                         * (1 - torch.as_tensor(a_t, dtype=F64) / a_s)).sqrt(),
}


def test_ddpm_check_passes_for_the_library():
    assert ddim_eta1_matches_ddpm(diffusion.ddim_sigma)


@pytest.mark.parametrize("name", SIGMA_MUTANTS)
def test_ddpm_check_fails_for_mutant(name):
    assert not ddim_eta1_matches_ddpm(SIGMA_MUTANTS[name])


# ------------------------------------------- DDIM Theorem 1: J_σ = Σ_t γ_t E‖ε − ε_θ^(t)‖² + C, Monte Carlo

T1_AB = alpha_bar(beta_schedule("linear", 10, beta_start=0.05, beta_end=0.6))   # T1_AB[t-1] = paper's ᾱ_t
T1_M, T1_S, T1_D = 0.3, 0.5, 2


def theorem1_miss(gamma_fn, with_decoder: bool = True, N: int = 40_000) -> float:
    """|J_σ − (Σ_t γ_t E‖ε − ε_θ^(t)‖² + C)| in standard errors (notebook 03 §7), J_σ by Monte Carlo of the
    undecomposed log-ratio log q_σ(x_1:T | x_0) − log p_θ(x_0:T) over whole q_σ chains, the right-hand side exact
    (Gauss–Hermite). T = 10, η = 0.5, DDIM's decoder with σ_1² = β_1; data N(0.3, 0.5²) in d = 2 independent
    coordinates; the model 0.8 ε* + 0.1, so that no term vanishes. gamma_fn(c, σ², ᾱ_t, d) is the weight under
    test, c the x_0-coefficient of the step's mean (q_σ's for t ≥ 2, 1 for the decoder)."""
    A = lambda t: float(T1_AB[t - 1])                                                 # noqa: E731
    gen = torch.Generator().manual_seed(6)
    data = toy.GaussianMixture(torch.ones(1), torch.full((1, T1_D), T1_M, dtype=F64),
                               T1_S ** 2 * torch.eye(T1_D, dtype=F64)[None])
    eps_star = toy.exact_eps(data, T1_AB)
    model = lambda x, k: 0.8 * eps_star(x, k) + 0.1                                  # noqa: E731  k = t − 1
    var = {t: float(diffusion.ddim_sigma(A(t), A(t - 1), 0.5)) ** 2 for t in range(2, 11)}
    var[1] = 1 - A(1)                                                                 # β_1
    coef = {t: math.sqrt(A(t - 1)) - math.sqrt(1 - A(t - 1) - var[t]) * math.sqrt(A(t) / (1 - A(t))) for t in range(2, 11)}
    coef[1] = 1.0

    def log_n(x, mean, v):
        return (-0.5 * (math.log(2 * math.pi * v) + (x - mean) ** 2 / v)).sum(1)

    x0 = data.sample(N, generator=gen)
    x = diffusion.q_sample(x0, A(10), torch.randn(N, T1_D, generator=gen, dtype=F64))
    ratio = log_n(x, math.sqrt(A(10)) * x0, 1 - A(10)) - log_n(x, 0.0, 1.0)
    for t in range(10, 1, -1):
        mean_q = diffusion.q_sigma_mean(x0, x, A(t), A(t - 1), math.sqrt(var[t]))
        mean_p = diffusion.q_sigma_mean(diffusion.predict_x0(x, model(x, t - 1), A(t)), x, A(t), A(t - 1), math.sqrt(var[t]))
        x_new = mean_q + math.sqrt(var[t]) * torch.randn(N, T1_D, generator=gen, dtype=F64)
        ratio += log_n(x_new, mean_q, var[t]) - log_n(x_new, mean_p, var[t])
        x = x_new
    ratio -= log_n(x0, diffusion.predict_x0(x, model(x, 0), A(1)), var[1])
    mc, se = float(ratio.mean()), float(ratio.std() / math.sqrt(N))

    z, w = (torch.tensor(v, dtype=F64) for v in np.polynomial.hermite_e.hermegauss(8))
    w = w / math.sqrt(2 * math.pi)
    x0n = (T1_M + T1_S * z).repeat_interleave(8)[:, None].expand(-1, T1_D)            # the same node in every coordinate:
    en, wn = z.repeat(8)[:, None].expand(-1, T1_D), torch.outer(w, w).flatten()      # E over d iid coordinates, exactly
    steps = range(1, 11) if with_decoder else range(2, 11)
    rhs = sum(gamma_fn(coef[t], var[t], A(t), T1_D)
              * float((wn * ((en - model(diffusion.q_sample(x0n, A(t), en), t - 1)) ** 2).sum(1)).sum()) for t in steps)
    rhs += T1_D * 0.5 * (A(10) * (T1_M ** 2 + T1_S ** 2) - A(10) - math.log(1 - A(10)))   # E KL(q(x_T | x_0) ‖ N(0, I))
    if with_decoder:
        rhs += T1_D * 0.5 * math.log(2 * math.pi * var[1])
    return abs(mc - rhs) / se


def _gamma(c, var, a, d):
    """γ_t = c²(1 − ᾱ_t)/(2σ_t² ᾱ_t) (notebook 03 §4, §7)."""
    return c ** 2 * (1 - a) / (2 * var * a)


THEOREM1_MUTANTS = {
    "DDIM App. B's gamma_t = 1/(2 d sigma_t^2 alpha_t)": (lambda c, var, a, d: 1 / (2 * d * var * a), True),
    "the x0-coefficient c_t^2 left out": (lambda c, var, a, d: (1 - a) / (2 * var * a), True),
    "a factor 1/d on the right weights": (lambda c, var, a, d: _gamma(c, var, a, d) / d, True),
    "the t = 1 decoder term left out": (_gamma, False),
}


def test_theorem1_check_passes_for_the_weights_of_notebook_03():
    assert theorem1_miss(_gamma) < Z


@pytest.mark.parametrize("name", THEOREM1_MUTANTS)
def test_theorem1_check_fails_for_mutant(name):
    assert theorem1_miss(*THEOREM1_MUTANTS[name]) > Z
