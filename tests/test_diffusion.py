"""Forward process, DDPM posterior and the DDIM family q_σ against Monte Carlo and Bayes' rule."""
import math

import pytest
import torch

from ddimlab import diffusion
from ddimlab.diffusion import (
    ddim_sigma,
    ddim_step,
    eps_from_score,
    eps_from_v,
    posterior_mean,
    posterior_variance,
    predict_eps,
    predict_x0,
    q_sample,
    q_sigma_mean,
    q_step,
    score_from_eps,
    v_from,
    x0_from_v,
)
from ddimlab.gaussian import linear_gaussian_marginal, linear_gaussian_posterior
from ddimlab.schedule import alpha_bar_at, beta_schedule, make_alpha_bar

Z = 5.0  # tolerance in standard errors
AB = make_alpha_bar("linear", 1000)
F64 = torch.float64


def assert_gaussian_moments(samples, mean, var):
    """Sample mean and variance per coordinate within Z standard errors of (mean, var)."""
    N = samples.shape[0]
    mean, var = torch.as_tensor(mean, dtype=F64), torch.as_tensor(var, dtype=F64)
    assert bool(((samples.mean(0) - mean).abs() < Z * torch.sqrt(var / N)).all()), (samples.mean(0), mean)
    assert bool(((samples.var(0) - var).abs() < Z * var * math.sqrt(2 / (N - 1))).all()), (samples.var(0), var)


def test_q_sample_equals_markov_chain_marginal():
    gen = torch.Generator().manual_seed(0)
    betas = beta_schedule("linear", 100)
    ab = make_alpha_bar("linear", 100)
    N, x0 = 20_000, torch.tensor([1.0, -0.5], dtype=F64)
    x = x0.expand(N, 2).clone()
    for t in range(100):
        x = q_step(x, float(betas[t]), torch.randn(N, 2, generator=gen, dtype=F64))
        if t in (0, 19, 99):
            a = float(ab[t])
            assert_gaussian_moments(x, math.sqrt(a) * x0, torch.full((2,), 1 - a, dtype=F64))
            # and the one-shot sampler draws from the same law
            direct = q_sample(x0.expand(N, 2), a, torch.randn(N, 2, generator=gen, dtype=F64))
            assert_gaussian_moments(direct, math.sqrt(a) * x0, torch.full((2,), 1 - a, dtype=F64))


def test_x0_eps_v_round_trips():
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, generator=gen, dtype=F64), torch.randn(4, 3, generator=gen, dtype=F64)
    a = torch.tensor([0.999, 0.5, 0.1, 1e-3], dtype=F64)  # per-sample ᾱ
    x_t = q_sample(x0, a, eps)
    torch.testing.assert_close(predict_x0(x_t, eps, a), x0)
    torch.testing.assert_close(predict_eps(x_t, x0, a), eps)
    v = v_from(x0, eps, a)
    torch.testing.assert_close(x0_from_v(x_t, v, a), x0)
    torch.testing.assert_close(eps_from_v(x_t, v, a), eps)
    with pytest.raises(ValueError, match="batch"):
        q_sample(x0, a[:3], eps)
    with pytest.raises(ValueError, match="differs"):
        q_sample(x0, 0.5, eps[:2])


@pytest.mark.parametrize("t,s", [(1, 0), (10, 9), (500, 499), (500, 100), (999, 0), (0, -1)])
def test_posterior_equals_bayes_rule(t, s):
    """q(x_s | x_t, x_0) ∝ q(x_t | x_s) q(x_s | x_0), computed with the generic linear-Gaussian posterior; DDIM's
    q_σ at η = 1 (eqs. 7 and 16) is the same distribution on a jump too (notebook 04 §3)."""
    a_t, a_s = alpha_bar_at(AB, t), alpha_bar_at(AB, s)
    gen = torch.Generator().manual_seed(t)
    x0, x_t = torch.randn(3, generator=gen, dtype=F64), torch.randn(3, generator=gen, dtype=F64)
    I = torch.eye(3, dtype=F64)
    alpha = a_t / a_s
    mean, cov = linear_gaussian_posterior(a_s.sqrt() * x0, (1 - a_s) * I, alpha.sqrt() * I,
                                          torch.zeros(3, dtype=F64), (1 - alpha) * I, x_t)
    torch.testing.assert_close(posterior_mean(x0[None], x_t[None], a_t, a_s)[0], mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(posterior_variance(a_t, a_s) * I, cov, rtol=1e-9, atol=1e-15)
    sigma = ddim_sigma(a_t, a_s, 1.0)
    torch.testing.assert_close(q_sigma_mean(x0[None], x_t[None], a_t, a_s, sigma)[0], mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sigma ** 2 * I, cov, rtol=1e-9, atol=1e-15)


def affine_in_x_t(x0, a_t, a_s, sigma):
    """Read off q_σ's mean as A x_t + b by evaluating the library function (it is affine in x_t)."""
    d = x0.shape[-1]
    b = q_sigma_mean(x0[None], torch.zeros(1, d, dtype=F64), a_t, a_s, sigma)[0]
    A = torch.stack([q_sigma_mean(x0[None], e[None], a_t, a_s, sigma)[0] - b for e in torch.eye(d, dtype=F64)], 1)
    return A, b


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("t,s", [(999, 799), (400, 37), (120, 119), (50, -1)])
def test_q_sigma_marginal_is_forward_marginal(eta, t, s):
    """For every σ: x_t ~ q(x_t|x_0), x_s ~ q_σ(x_s|x_t,x_0) ⇒ x_s ~ N(√ᾱ_s x_0, (1−ᾱ_s) I) (notebook 03 §3)."""
    a_t, a_s = alpha_bar_at(AB, t), alpha_bar_at(AB, s)
    sigma = ddim_sigma(a_t, a_s, eta)
    x0 = torch.tensor([0.8, -1.2, 0.1], dtype=F64)
    I = torch.eye(3, dtype=F64)
    A, b = affine_in_x_t(x0, a_t, a_s, sigma)
    mean, cov = linear_gaussian_marginal(a_t.sqrt() * x0, (1 - a_t) * I, A, b, sigma ** 2 * I)
    torch.testing.assert_close(mean, a_s.sqrt() * x0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cov, (1 - a_s) * I, rtol=1e-10, atol=1e-12)
    # Monte Carlo of the two-stage sampling, through ddim_step with the true ε (DDIM eq. 12 = q_σ draw)
    gen = torch.Generator().manual_seed(int(100 * eta) + t)
    N = 40_000
    eps = torch.randn(N, 3, generator=gen, dtype=F64)
    x_t = q_sample(x0.expand(N, 3), a_t, eps)
    z = torch.randn(N, 3, generator=gen, dtype=F64)
    x_s, x0_hat = ddim_step(x_t, eps, a_t, a_s, eta=eta, noise=z)
    torch.testing.assert_close(x0_hat, x0.expand(N, 3))
    torch.testing.assert_close(x_s, q_sigma_mean(x0.expand(N, 3), x_t, a_t, a_s, sigma) + sigma * z)
    if s == -1:
        torch.testing.assert_close(x_s, x0.expand(N, 3))
    else:
        assert_gaussian_moments(x_s, a_s.sqrt() * x0, (1 - a_s).expand(3))


@pytest.mark.parametrize("t", [1, 20, 700, 999])
def test_eta_one_consecutive_is_ddpm_posterior(t):
    a_t, a_s = alpha_bar_at(AB, t), alpha_bar_at(AB, t - 1)
    sigma = ddim_sigma(a_t, a_s, 1.0)
    beta = 1 - a_t / a_s
    assert float(sigma ** 2) == pytest.approx(float((1 - a_s) / (1 - a_t) * beta), rel=1e-12)  # β̃_t
    gen = torch.Generator().manual_seed(t)
    x0, x_t = torch.randn(5, 2, generator=gen, dtype=F64), torch.randn(5, 2, generator=gen, dtype=F64)
    # DDPM eq. 7 written out: μ̃ = √ᾱ_{t−1}β_t/(1−ᾱ_t) x_0 + √α_t(1−ᾱ_{t−1})/(1−ᾱ_t) x_t
    mu = a_s.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_s) / (1 - a_t) * x_t
    torch.testing.assert_close(q_sigma_mean(x0, x_t, a_t, a_s, sigma), mu, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(posterior_mean(x0, x_t, a_t, a_s), mu, rtol=1e-9, atol=1e-12)


def test_ddpm_small_and_large_variances_differ_only_near_t_0():
    """Notebook 04 §3: on consecutive steps of the linear schedule β̃_t/β_t is 0.45 at t = 1, 0.86 at t = 10 and within 2%
    of 1 from t = 100 on; β̃ from `posterior_variance`, β from the schedule's own betas."""
    betas = beta_schedule("linear", 1000)
    ratio = torch.stack([posterior_variance(AB[t], AB[t - 1]) for t in range(1, 1000)]) / betas[1:]
    assert round(float(ratio[0]), 2) == 0.45 and round(float(ratio[9]), 2) == 0.86
    assert float(ratio[99:].min()) > 0.98 and float(ratio[:99].min()) < 0.98


@pytest.mark.parametrize("t,s", [(100, 0), (50, 0), (20, 10)])
def test_float32_step_with_eta_one_keeps_float32_precision_on_the_last_steps(t, s):
    """x in float32, ᾱ as Python floats (as the samplers pass them): DDIM(η = 1) equals the DDPM posterior mean
    μ̃ + σ z, written out in float64, to float32 rounding. 1 − ᾱ_s − σ² cancels there (8.5e-8 for 100 → 0):
    formed in float32 it is 1.0e-7, its root 9% too large, and the step off by 3e-5 |ε|."""
    a_t, a_s = float(alpha_bar_at(AB, t)), float(alpha_bar_at(AB, s))
    gen = torch.Generator().manual_seed(t)
    x_t, eps, z = (torch.randn(4096, generator=gen, dtype=F64) for _ in range(3))
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    mu = math.sqrt(a_s) * (1 - a_t / a_s) / (1 - a_t) * x0 + math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t) * x_t
    sigma = math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
    x_s, _ = ddim_step(x_t.float(), eps.float(), a_t, a_s, eta=1.0, noise=z.float())
    # float32 rounding of x_t, ε and the few products: a few ulps of |x̂_0| ≈ 4
    assert float((x_s.double() - (mu + sigma * z)).abs().max()) < 3e-6


@pytest.mark.parametrize("t", [1, 2, 10])
def test_float32_posterior_mean_keeps_float32_precision_on_the_last_steps(t):
    """DDPM eq. 7 in float32 (DDPM's sampler, 1000 of these) against the same mean written with the β table in float64:
    μ̃ = √ᾱ_{t−1} β_t/(1−ᾱ_t) x_0 + √(1−β_t) (1−ᾱ_{t−1})/(1−ᾱ_t) x_t. Formed after the cast to float32, 1 − ᾱ_t/ᾱ_{t−1}
    (= β_t ≈ 1e-4) kept 3 digits and the mean was off by 7e-4 at t = 1."""
    beta = beta_schedule("linear", 1000).double()
    a_t, a_s = float(alpha_bar_at(AB, t)), float(alpha_bar_at(AB, t - 1))
    b = float(beta[t])
    gen = torch.Generator().manual_seed(t)
    x0, x_t = torch.randn(4096, generator=gen, dtype=F64).clamp(-1, 1), torch.randn(4096, generator=gen, dtype=F64)
    ref = math.sqrt(a_s) * b / (1 - a_t) * x0 + math.sqrt(1 - b) * (1 - a_s) / (1 - a_t) * x_t
    got = posterior_mean(x0.float(), x_t.float(), a_t, a_s).double()
    assert float(((got - ref).abs() / (ref.abs() + 1)).max()) < 4 * torch.finfo(torch.float32).eps


@pytest.mark.parametrize("t", [0, 1])
def test_float32_noise_conversions_keep_float32_precision_near_clean_data(t):
    """q_sample and predict_x0 in float32 at ᾱ_t ≈ 1 against the formulas in float64, within a few
    float32 ulps of each value: 1 − ᾱ_0 = 1e-4 formed in float32 has a relative error of 3e-4."""
    a = float(alpha_bar_at(AB, t))
    gen = torch.Generator().manual_seed(t)
    x0, eps = torch.randn(4096, generator=gen, dtype=F64), torch.randn(4096, generator=gen, dtype=F64)
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    ulps = 4 * torch.finfo(torch.float32).eps
    for got, ref in [(q_sample(x0.float(), a, eps.float()), x_t),
                     (predict_x0(x_t.float(), eps.float(), a), x0)]:
        assert float(((got.double() - ref).abs() / (ref.abs() + 1)).max()) < ulps


def test_eta_zero_is_deterministic_and_sigma_scales_with_eta():
    a_t, a_s = alpha_bar_at(AB, 500), alpha_bar_at(AB, 300)
    assert float(ddim_sigma(a_t, a_s, 0.0)) == 0.0
    assert float(ddim_sigma(a_t, a_s, 0.5)) == pytest.approx(0.5 * float(ddim_sigma(a_t, a_s, 1.0)))
    x_t, eps = torch.randn(2, 3, dtype=F64), torch.randn(2, 3, dtype=F64)
    x1, _ = ddim_step(x_t, eps, a_t, a_s, eta=0.0)
    x2, _ = ddim_step(x_t, eps, a_t, a_s, eta=0.0, noise=torch.randn(2, 3, dtype=F64))
    torch.testing.assert_close(x1, x2)


def test_ddim_step_errors():
    a_t, a_s = alpha_bar_at(AB, 500), alpha_bar_at(AB, 300)
    x_t = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        ddim_step(x_t, x_t, a_t, a_s, eta=-0.1)
    with pytest.raises(ValueError, match="needs `noise`"):
        ddim_step(x_t, x_t, a_t, a_s, eta=0.5)
    with pytest.raises(ValueError, match="eps shape"):
        ddim_step(x_t, torch.zeros(1, 3, dtype=F64), a_t, a_s)
    with pytest.raises(ValueError, match="noise shape"):
        ddim_step(x_t, x_t, a_t, a_s, eta=1.0, noise=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="sigma"):
        q_sigma_mean(x_t, x_t, a_t, a_s, 2.0)


@pytest.mark.parametrize("call", [
    lambda x: diffusion.predict_x0(x, x, 0.0),                  # division by √ᾱ_t = 0
    lambda x: diffusion.predict_eps(x, x, 1.0),                 # division by √(1−ᾱ_t) = 0
    lambda x: diffusion.q_sample(x, 1.5, x),
    lambda x: diffusion.posterior_variance(0.5, 0.4),           # ᾱ_s < ᾱ_t: s is not the earlier step
    lambda x: diffusion.posterior_mean(x, x, torch.tensor(0.3), torch.tensor(float("nan"))),
    lambda x: diffusion.ddim_step(x, x, 1.2, 1.0),
    lambda x: diffusion.ddim_sigma(0.5, 0.7, float("nan")),
])
def test_out_of_range_alpha_bar_is_a_clear_error(call):
    """Issue #12 case 9: these used to return inf or NaN."""
    with pytest.raises(ValueError, match="must lie in|must be >= a_t|finite number"):
        call(torch.ones(2, 3, dtype=F64))


def test_one_rule_for_sigma_in_ddim_step_and_q_sigma_mean():
    """Issue #12 case 8: σ² > 1 − ᾱ_s is an error in both (ddim_step used to clamp it silently)."""
    a_t, a_s = 0.2, 0.9
    x = torch.ones(2, 3, dtype=F64)
    sigma = diffusion.ddim_sigma(a_t, a_s, 5.0)
    with pytest.raises(ValueError, match="eta <="):
        diffusion.ddim_step(x, x, a_t, a_s, 5.0, noise=x)
    with pytest.raises(ValueError, match="eta <="):
        diffusion.q_sigma_mean(x, x, a_t, a_s, sigma)


# ------------------------------------------------------------------------ prediction types (notebook 02 §9)

def test_v_is_the_velocity_of_x_t_along_the_quarter_circle():
    """Salimans & Ho (2022) §4: with ᾱ = cos²φ, x_t = cos φ x_0 + sin φ ε and v = dx_t/dφ. A finite difference
    of q_sample checks v_from independently of x0_from_v / eps_from_v (their round trip alone would also pass
    for a consistently wrong sign)."""
    gen = torch.Generator().manual_seed(11)
    x0, eps = torch.randn(4, 3, generator=gen, dtype=F64), torch.randn(4, 3, generator=gen, dtype=F64)
    phi = torch.tensor([0.1, 0.7, 1.2, 1.5], dtype=F64)
    h = 1e-6
    dx = (q_sample(x0, torch.cos(phi + h) ** 2, eps) - q_sample(x0, torch.cos(phi - h) ** 2, eps)) / (2 * h)
    torch.testing.assert_close(v_from(x0, eps, torch.cos(phi) ** 2), dx, rtol=1e-7, atol=1e-8)


def test_score_from_eps_is_the_gradient_of_log_q_t():
    """For Gaussian data N(m, s²): E[ε | x_t] by Gaussian conditioning, the score of q_t = N(√ᾱ m, ᾱ s² + 1 − ᾱ)
    by autograd; score_from_eps turns the first into the second (Tweedie), eps_from_score back."""
    m, s = 0.3, 0.5
    x = torch.linspace(-2, 2, 9, dtype=F64)[:, None]
    for a in [0.999, 0.5, 1e-3]:
        # conditioning: (x0, ε) ~ N((m, 0), diag(s², 1)), x_t = [√ᾱ, √(1−ᾱ)] (x0, ε), observed without noise
        mean, _ = linear_gaussian_posterior(torch.tensor([m, 0.0], dtype=F64), torch.diag(torch.tensor([s ** 2, 1.0], dtype=F64)),
                                            torch.tensor([[math.sqrt(a), math.sqrt(1 - a)]], dtype=F64),
                                            torch.zeros(1, dtype=F64), torch.zeros(1, 1, dtype=F64), x)
        e_star = mean[:, 1:]
        xr = x.clone().requires_grad_(True)
        var = a * s ** 2 + 1 - a
        logp = (-(xr - math.sqrt(a) * m) ** 2 / (2 * var)).sum()
        score, = torch.autograd.grad(logp, xr)
        torch.testing.assert_close(score_from_eps(e_star, a), score, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(eps_from_score(score, a), e_star, rtol=1e-9, atol=1e-12)
        # and the minimiser of the x_0 loss is the conversion of the minimiser of the ε loss
        torch.testing.assert_close(predict_x0(x, e_star, a), mean[:, :1], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="a_t must lie in"):
        score_from_eps(x, 1.0)


@pytest.mark.parametrize("t, expected", [(1, 1.354), (500, 9.574), (999, 7.071)])
def test_the_largest_eta_on_a_single_step_is_root_of_one_minus_alpha_bar_over_beta(t, expected):
    """Notebook 04 §3: σ² ≤ 1 − ᾱ_s allows η up to √((1−ᾱ_s)/β̃), on a single step t → t − 1 √((1−ᾱ_t)/β_t) with β_t
    the schedule's own beta (not a ratio of ᾱ's): 1.35 at t = 1, 9.57 at 500, 7.07 at 999, as the notebook prints.
    There the direction term vanishes, x_s = √ᾱ_s x̂_0 + √(1−ᾱ_s) z; ddim_step refuses 1e-6 more, naming the bound."""
    a_t, a_s = float(AB[t]), float(AB[t - 1])
    eta_max = math.sqrt((1 - a_t) / float(beta_schedule("linear", 1000).double()[t]))
    assert eta_max == pytest.approx(expected, abs=1e-3)
    gen = torch.Generator().manual_seed(t)
    x_t, eps, z = (torch.randn(3, 4, generator=gen, dtype=F64) for _ in range(3))
    x_s, x0_hat = ddim_step(x_t, eps, a_t, a_s, eta_max * (1 - 1e-12), noise=z)
    # 1e-12 below the bound leaves √(2e-12) ≈ 1.4e-6 of the direction term's coefficient
    torch.testing.assert_close(x_s, math.sqrt(a_s) * x0_hat + math.sqrt(1 - a_s) * z, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=f"eta <= {eta_max:.6g} on this step"):
        ddim_step(x_t, eps, a_t, a_s, eta_max * (1 + 1e-6), noise=z)


def test_sigma_of_t_grows_like_root_t_plus_one_only_for_the_first_three_steps():
    """Notebook 04 §4: σ(t) = √((1 − ᾱ_t)/ᾱ_t) (σ_ODE(t) there, notebook 05's σ(t)) on DDPM's linear schedule, with ᾱ
    built here by numpy from the betas.
    σ ∝ √(t+1) holds within 10% for t ≤ 2 only (the wrong law ∝ t+1 already misses at t = 1); √(Σ_{s≤t} β_s), an
    arithmetic series, is within 1% up to t = 50; σ grows fastest relative to its size at t = 0."""
    import numpy as np

    from ddimlab.schedule import sigma_of

    betas = np.linspace(1e-4, 0.02, 1000)
    a = np.cumprod(1 - betas)
    sig = np.sqrt((1 - a) / a)
    np.testing.assert_allclose(sigma_of(AB).numpy(), sig, rtol=1e-12)
    t = np.arange(1000)

    def first_miss(law):
        return int(np.argmax(np.abs(sig / (sig[0] * law) - 1) >= 0.10))

    assert first_miss(np.sqrt(t + 1)) == 3 and first_miss(t + 1.0) == 1
    series = np.sqrt((t + 1) * (betas[0] + t * (betas[1] - betas[0]) / 2))
    assert np.abs(sig[:51] / series[:51] - 1).max() < 0.01 < abs(sig[60] / series[60] - 1)
    growth = sig[1:] / sig[:-1] - 1
    assert int(np.argmax(growth)) == 0 and growth[0] > 0.48 and growth[30:].max() < 0.03


def test_a_few_step_ddim_misses_the_spread_by_far_more_than_the_last_step_noise():
    """Notebook 04 §3: adding √β_1 z at the last step moves E‖y‖² by dβ_1 = 2e-4 on the 2-D ring; deterministic DDIM
    on 10 and 100 uniform steps misses the data's E‖x_0‖² (closed form: Σ_k w_k(‖μ_k‖² + tr Σ_k)) by more than ten
    times that, beyond 3 standard errors."""
    from ddimlab import samplers, toy
    from ddimlab.schedule import timesteps

    mix = toy.eight_gaussians()
    eps = toy.exact_eps(mix, AB)
    e_x0 = sum(float(w) * (float(m @ m) + float(torch.trace(c))) for w, m, c in zip(mix.weights, mix.means, mix.covs))
    n, d_beta = 4000, 2 * float(1 - AB[0])
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    for S in (10, 100):
        q = samplers.ddim_sample(eps, x_T, AB, timesteps(S, 1000), eta=0.0).pow(2).sum(1) - e_x0
        assert abs(float(q.mean())) - 3 * float(q.std()) / math.sqrt(n) > 10 * d_beta, (S, float(q.mean()))


def test_implicit_density_l1_ranking_is_resolved_by_an_independent_quadrature():
    """Notebook 03 §9 (d), computed in z instead of x: L1(p_G, p_data) = ∫ |φ(z) − p_data(G(z)) G'(z)| dz over all z
    (G' by central differences; [−6, 6] leaves out 2e-9 of N(0, 1)), on 301 and 601 points. The two grids agree to
    1e-4, the notebook's printed values (x-grid quadrature) lie within its printed error bounds of these, and the
    ranking S = 10 > 50 > 250 has margins far above both."""
    from ddimlab import samplers, toy
    from ddimlab.schedule import timesteps

    mix = toy.GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-0.6], [0.5]]), torch.tensor([[[0.04]], [[0.09]]]))
    eps = toy.exact_eps(mix, AB)

    def l1_on_two_grids(S, sizes=(601, 301), h=1e-4):
        zs = [torch.linspace(-6, 6, n, dtype=F64)[:, None] for n in sizes]
        x_T = torch.cat([z + dz for z in zs for dz in (0.0, h, -h)])       # one sampler run for both grids
        G = samplers.ddim_sample(eps, x_T, AB, timesteps(S, 1000), eta=0.0)[:, 0].split([3 * n for n in sizes])
        out = []
        for z, g in zip(zs, G):
            g0, gp, gm = g.chunk(3)
            p_data = mix.log_prob(g0[:, None]).exp()
            phi = (-z[:, 0] ** 2 / 2).exp() / math.sqrt(2 * math.pi)
            out.append(float(torch.trapezoid((phi - p_data * (gp - gm) / (2 * h)).abs(), z[:, 0])))
        return out

    notebook = {10: (0.32271, 2.8e-3), 50: (0.06163, 9.1e-5), 250: (0.01300, 2.7e-4)}   # printed L1, error bound
    ref = {}
    for S, (value, bound) in notebook.items():
        ref[S], coarse = l1_on_two_grids(S)
        assert abs(coarse - ref[S]) < 1e-4
        assert abs(value - ref[S]) < bound, (S, value, ref[S])
    assert ref[10] - ref[50] > 0.2 and ref[50] - ref[250] > 0.04


def test_round_43_an_integer_or_bool_second_tensor_is_refused_as_the_first_is():
    """Each function of two tensors checked only the one whose dtype the coefficients take (x0 of q_sample, x_t of
    predict_x0): an integer or bool ε, x_t or v beside it was read as numbers, so predict_x0(x_t, ε > 0, ᾱ) returned
    finite x̂_0 with True read as 1. Both are now held to floating point, naming the one that is not."""
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(3, 2, generator=g, dtype=F64) for _ in range(2))
    calls = {"eps": (lambda e: q_sample(x, 0.5, e), lambda e: predict_x0(x, e, 0.5), lambda e: v_from(x, e, 0.5),
                     lambda e: ddim_step(x, e, 0.5, 0.7)[0]),
             "z": (lambda z: q_step(x, 0.02, z),),
             "x0": (lambda x0: predict_eps(x, x0, 0.5), lambda x0: diffusion.q_sigma_forward(x, x0, 0.5, 0.7, 0.1)[0]),
             "x_t": (lambda x_t: posterior_mean(x, x_t, 0.5, 0.7), lambda x_t: q_sigma_mean(x, x_t, 0.5, 0.7, 0.1)),
             "v": (lambda v: x0_from_v(x, v, 0.5), lambda v: eps_from_v(x, v, 0.5)),
             "noise": (lambda z: ddim_step(x, y, 0.5, 0.7, eta=0.5, noise=z)[0],)}
    for name, fs in calls.items():
        for f in fs:
            assert bool(torch.isfinite(f(y)).all())                  # floating: taken
            for bad in (y > 0, y.long(), (y > 0).to(torch.uint8)):
                with pytest.raises(TypeError, match=rf"^{name} must be floating point, got {bad.dtype} \(an integer or "
                                                    r"bool tensor would be read as numbers, True as 1\); convert with "
                                                    r"\.float\(\)$"):
                    f(bad)


def test_round_45_a_per_sample_coefficient_of_the_wrong_length_is_named_for_a_1d_x_too():
    """`bcast` checked a per-sample ᾱ's length against x's batch only for x of two or more dimensions; for a 1-D x (a batch
    of scalars) of 5 samples with 3 ᾱ values, every function that takes ᾱ failed inside torch: "The size of tensor a (3)
    must match the size of tensor b (5) at non-singleton dimension 0". Now the same one-line ValueError as for an image
    batch, naming the length expected. One value per sample is still taken, and gives each sample its own scalar ᾱ's
    answer."""
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(5, generator=g, dtype=F64), torch.randn(5, generator=g, dtype=F64)
    a_t, a_s = torch.linspace(0.2, 0.6, 5, dtype=F64), torch.linspace(0.3, 0.9, 5, dtype=F64)
    calls = {"q_sample": lambda a, b: q_sample(x, a, e), "q_step": lambda a, b: q_step(x, 1 - a, e),
             "predict_x0": lambda a, b: predict_x0(x, e, a), "predict_eps": lambda a, b: predict_eps(x, e, a),
             "v_from": lambda a, b: v_from(x, e, a), "x0_from_v": lambda a, b: x0_from_v(x, e, a),
             "eps_from_v": lambda a, b: eps_from_v(x, e, a), "score_from_eps": lambda a, b: score_from_eps(e, a),
             "eps_from_score": lambda a, b: eps_from_score(e, a),
             "posterior_mean": lambda a, b: posterior_mean(x, e, a, b),
             "q_sigma_mean": lambda a, b: q_sigma_mean(x, e, a, b, 0.1),
             "ddim_step": lambda a, b: ddim_step(x, e, a, b, 0.0)}
    said = (r"^a per-sample coefficient \(alpha_bar-like, shape \(B,\)\) needs x's batch size, 5 values \(x has shape "
            r"\(5,\)\), got 3; or pass a scalar$")
    for name, f in calls.items():
        with pytest.raises(ValueError, match=said):
            f(a_t[:3], a_s[:3])
        def outputs(a, b):                   # ddim_step's (x_s, x0_hat), or the one tensor
            r = f(a, b)
            return r if isinstance(r, tuple) else (r,)
        scalar = [outputs(float(a_t[i]), float(a_s[i])) for i in range(5)]     # each sample with its own scalar ᾱ
        for k, per_sample in enumerate(outputs(a_t, a_s)):
            torch.testing.assert_close(per_sample, torch.stack([r[k][i] for i, r in enumerate(scalar)]), rtol=1e-12,
                                       atol=1e-12, msg=name)
    with pytest.raises(ValueError, match=r"needs x's batch size, 4 values \(x has shape \(4, 3\)\), got 3"):
        q_sample(torch.zeros(4, 3, dtype=F64), a_t[:3], torch.zeros(4, 3, dtype=F64))
