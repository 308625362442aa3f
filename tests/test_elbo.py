"""The DDPM bound on Gaussian data, where everything is known in closed form.

Data x_0 ~ N(m, s² I). Then q(x_t) = N(√ᾱ_t m, (ᾱ_t s² + 1 − ᾱ_t) I), the optimal
ε*(x_t, t) = √(1−ᾱ_t)(x_t − √ᾱ_t m)/(ᾱ_t s² + 1 − ᾱ_t), and for any eps model that is affine in x_t
the reverse model p_θ is a linear-Gaussian chain, so log p_θ(x_0) and the model's posterior over the
whole path are Gaussian. The tests check the library's Monte Carlo ELBO against
  (1) the exact identity ELBO(x_0) = log p_θ(x_0) − KL(q(x_{0:T−1} | x_0) ‖ p_θ(x_{0:T−1} | x_0)),
      both sides from joint covariance matrices built here;
  (2) E_q[log q(x_0) − ELBO] = KL(q(x_{T−1}) ‖ N(0, I)) + Σ_t E KL(q(x_{t−1} | x_t) ‖ p_θ(x_{t−1} | x_t)),
      the sum of KLs between the TRUE reverse conditionals and the model;
  (3) L_{t−1} = γ_t ‖ε − ε_θ‖² + C_t.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from ddimlab.elbo import _posterior_kl, decoder_nll, elbo_terms, gamma_t, l_simple, model_variance, posterior_kl, prior_kl
from ddimlab.gaussian import kl_normal, linear_gaussian_posterior, log_normal
from ddimlab.schedule import beta_schedule, make_alpha_bar

Z = 5.0
F64 = torch.float64


def affine_eps(ab, m, s, scale=1.0, shift=0.0):
    """ε(x, t) = scale · ε*(x, t) + shift for data N(m, s² I); t an int or a (B,) tensor."""
    m = torch.as_tensor(m, dtype=F64)

    def eps(x, t):
        a = ab[t]
        if a.ndim == 1:
            a = a[:, None]
        return scale * (1 - a).sqrt() * (x - a.sqrt() * m) / (a * s ** 2 + 1 - a) + shift
    return eps


def coefficients(ab, m, s, variance, scale=1.0, shift=0.0):
    """Per step t (0-based, data at ᾱ_{−1} = 1): p_θ(x_{t−1} | x_t) = N(g_t x_t + h_t, σ_t²), for one dimension.

    Written out from DDPM eq. 7/11 rather than with the library: μ_θ = k0 x̂_0 + k1 x_t with
    k0 = √ᾱ_{t−1} β_t/(1−ᾱ_t), k1 = √α_t (1−ᾱ_{t−1})/(1−ᾱ_t), x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t."""
    ab = ab.numpy()
    prev = np.concatenate([[1.0], ab[:-1]])
    beta = 1 - ab / prev
    v = ab * s ** 2 + 1 - ab
    c1 = scale * np.sqrt(1 - ab) / v                        # ε = c1 x + c0
    c0 = -scale * np.sqrt(1 - ab) * np.sqrt(ab) * m / v + shift
    k0 = np.sqrt(prev) * beta / (1 - ab)
    k1 = np.sqrt(1 - beta) * (1 - prev) / (1 - ab)
    g = k0 * (1 - np.sqrt(1 - ab) * c1) / np.sqrt(ab) + k1
    h = -k0 * np.sqrt(1 - ab) * c0 / np.sqrt(ab)
    tilde = (1 - prev) / (1 - ab) * beta
    tilde[0] = tilde[1]
    sigma2 = tilde if variance == "small" else beta
    return g, h, sigma2


def exact_elbo_1d(ab, x0, m, s, variance, scale, shift):
    """log p_θ(x0) and KL(q(x_{0:T−1}|x0) ‖ p_θ(x_{0:T−1}|x0)) for one coordinate, from joint covariances."""
    T = len(ab)
    g, h, sigma2 = coefficients(ab, m, s, variance, scale, shift)
    mean, C = np.zeros(T + 1), np.zeros((T + 1, T + 1))    # index 0: data, index t+1: x_t
    C[T, T] = 1.0
    for t in range(T - 1, -1, -1):                          # x_{t−1} = g_t x_t + h_t + σ_t z
        i = t + 1
        mean[i - 1] = g[t] * mean[i] + h[t]
        C[i - 1, i:] = g[t] * C[i, i:]
        C[i:, i - 1] = C[i - 1, i:]
        C[i - 1, i - 1] = g[t] ** 2 * C[i, i] + sigma2[t]
    log_p = stats.norm(mean[0], math.sqrt(C[0, 0])).logpdf(x0)
    mp = mean[1:] + C[1:, 0] / C[0, 0] * (x0 - mean[0])
    P = C[1:, 1:] - np.outer(C[1:, 0], C[0, 1:]) / C[0, 0]
    abn = ab.numpy()
    mq = np.sqrt(abn) * x0
    lo, hi = np.minimum.outer(np.arange(T), np.arange(T)), np.maximum.outer(np.arange(T), np.arange(T))
    Q = np.sqrt(abn[hi] / abn[lo]) * (1 - abn[lo])          # Cov(x_t, x_u) = √(ᾱ_u/ᾱ_t)(1 − ᾱ_t), u ≥ t
    Pinv = np.linalg.inv(P)
    kl = 0.5 * (np.trace(Pinv @ Q) + (mp - mq) @ Pinv @ (mp - mq) - T
                + np.linalg.slogdet(P)[1] - np.linalg.slogdet(Q)[1])
    return log_p, kl


SHORT_AB = torch.cumprod(1 - torch.linspace(0.02, 0.4, 8, dtype=F64), 0)   # short schedule: exact matrices
SHORT_M, SHORT_S, SHORT_X0 = np.array([0.3, -0.2, 0.0]), 0.5, torch.tensor([0.9, -0.1, -1.4], dtype=F64)


def exact_elbo(variance, scale, shift):
    """(log p_θ(x0), KL(q(x_{0:T−1}|x0) ‖ p_θ(x_{0:T−1}|x0))) for SHORT_X0, summed over its coordinates."""
    log_p, kl = zip(*[exact_elbo_1d(SHORT_AB, float(SHORT_X0[j]), SHORT_M[j], SHORT_S, variance, scale, shift)
                      for j in range(3)])
    return sum(log_p), sum(kl)


def elbo_identity_miss(variance, scale, shift, N=20_000):
    """|Monte Carlo ELBO − (log p_θ(x0) − KL)| in standard errors, and (estimate, se)."""
    log_p, kl = exact_elbo(variance, scale, shift)
    out = elbo_terms(affine_eps(SHORT_AB, SHORT_M, SHORT_S, scale, shift), SHORT_X0.expand(N, 3), SHORT_AB,
                     variance=variance, decoder="gaussian", generator=torch.Generator().manual_seed(0))
    est, se = out["elbo"].mean().item(), out["elbo"].std().item() / math.sqrt(N)
    return abs(est - (log_p - kl)) / se, est, se


@pytest.mark.parametrize("variance,scale,shift", [("small", 1.0, 0.0), ("large", 1.0, 0.0), ("small", 0.8, 0.1)])
def test_elbo_equals_log_likelihood_minus_path_posterior_kl(variance, scale, shift):
    ab, m, s, x0 = SHORT_AB, SHORT_M, SHORT_S, SHORT_X0
    log_p, kl = exact_elbo(variance, scale, shift)
    assert kl > 0
    miss, est, se = elbo_identity_miss(variance, scale, shift)
    assert miss < Z, (est, log_p - kl, se)
    assert est < log_p + Z * se                              # ELBO ≤ log p_θ(x0)
    gen = torch.Generator().manual_seed(0)
    # n_mc averages draws inside: same expectation, smaller spread per row
    out2 = elbo_terms(affine_eps(ab, m, s, scale, shift), x0.expand(200, 3), ab, variance=variance,
                      decoder="gaussian", n_mc=50, generator=gen)
    assert abs(out2["elbo"].mean().item() - (log_p - kl)) < Z * out2["elbo"].std().item() / math.sqrt(200)


def _kl_reversed(x0, x_t, eps_pred, alpha_bar, t, var_p):
    """L_{t−1} as KL(p_θ ‖ q) instead of KL(q ‖ p_θ) (equal for σ² = β̃, where both variances are β̃)."""
    from ddimlab.diffusion import posterior_mean, posterior_variance, predict_x0
    a_t, a_s = float(alpha_bar[t]), float(alpha_bar[t - 1])
    mean_q, mean_p = posterior_mean(x0, x_t, a_t, a_s), posterior_mean(predict_x0(x_t, eps_pred, a_t), x_t, a_t, a_s)
    return kl_normal(mean_p, var_p, mean_q, float(posterior_variance(a_t, a_s))).sum(1)


def _decoder_with_step_1_variance(x0, x_t, eps_pred, alpha_bar, var, decoder):
    """L_0 with σ_1² ("large": β_1) where σ_0² belongs (the same for "small", whose σ_0² is β̃_1 by convention)."""
    from ddimlab.diffusion import predict_x0
    return -log_normal(x0, predict_x0(x_t, eps_pred, float(alpha_bar[0])), float(model_variance(alpha_bar, "large")[1])).sum(1)


def _kl_of_the_step_before(x0, x_t, e, ab, t, var_p):
    """L_{t−2} (its means and σ², "small") where L_{t−1} belongs."""
    s = max(t - 1, 1)
    return _posterior_kl(x0, x_t, e, ab, s, float(model_variance(ab, "small")[s]))


# elbo_terms' terms, past its checks: (x0, x_t, ε̂, ᾱ, t, σ_t²) and (x0, x_1, ε̂, ᾱ, σ_0², decoder)
ELBO_MUTANTS = {
    "L_{t-1} as KL(p_theta || q)": ("_posterior_kl", _kl_reversed, "large"),
    "L_{t-1} of step t-1 at step t": ("_posterior_kl", _kl_of_the_step_before, "small"),
    "decoder with the variance of step 1": ("_decoder_nll", _decoder_with_step_1_variance, "large"),
}


@pytest.mark.parametrize("name", ELBO_MUTANTS)
def test_elbo_identity_check_fails_for_mutant(name):
    """The identity check above, with one term of `elbo_terms` replaced by a wrong formula."""
    from unittest import mock

    from ddimlab import elbo
    attr, wrong, variance = ELBO_MUTANTS[name]
    with mock.patch.object(elbo, attr, wrong):
        assert elbo_identity_miss(variance, 1.0, 0.0)[0] > 10 * Z


def test_prior_kl_matches_torch_distributions():
    """L_T = KL(N(√ᾱ_{T−1} x0, (1−ᾱ_{T−1}) I) ‖ N(0, I)) against torch.distributions on the short schedule, where
    ᾱ_{T−1} = 0.14 makes L_T large (the identity check above cannot resolve an error in it: the term is exact while the
    others carry the Monte Carlo noise, and on DDPM's schedule, ᾱ_{T−1} = 4e-5, it is 1e-4 nats per unit of x0²);
    and the same comparison fails for wrong formulas."""
    from torch.distributions import Normal, kl_divergence
    x0 = torch.tensor([[0.9, -0.1, -1.4], [2.0, 0.0, -0.5]], dtype=F64)
    a = float(SHORT_AB[-1])
    ref = kl_divergence(Normal(math.sqrt(a) * x0, math.sqrt(1 - a)), Normal(0.0, 1.0)).sum(1)
    assert float((prior_kl(x0, SHORT_AB) - ref).abs().max()) < 1e-12
    b = float(SHORT_AB[-2])
    for wrong in (kl_normal(math.sqrt(a) * x0, math.sqrt(1 - a), 0.0, 1.0).sum(1),    # standard deviation for variance
                  kl_normal(math.sqrt(b) * x0, 1 - b, 0.0, 1.0).sum(1),                # ᾱ_{T−2}, one step short
                  kl_normal(0.0, 1.0, math.sqrt(a) * x0, 1 - a).sum(1)):               # KL(N(0, I) ‖ q)
        assert float((wrong - ref).abs().max()) > 1e-2


def true_reverse_gap(ab, m, s, variance):
    """KL(q(x_{T−1}) ‖ N(0,1)) + Σ_t E_{q(x_t)} KL(q(x_{t−1} | x_t) ‖ p_θ(x_{t−1} | x_t)) for one coordinate,
    with q(x_{t−1} | x_t) from Bayes' rule on the data-marginal q(x_{t−1}) (batched over t)."""
    abn = ab.numpy()
    prev = np.concatenate([[1.0], abn[:-1]])
    beta = 1 - abn / prev
    T = len(abn)
    one = torch.ones(T, 1, 1, dtype=F64)
    post = lambda y: linear_gaussian_posterior(  # noqa: E731
        torch.tensor(np.sqrt(prev) * m, dtype=F64)[:, None], torch.tensor(prev * s ** 2 + 1 - prev, dtype=F64)[:, None, None],
        torch.tensor(np.sqrt(1 - beta), dtype=F64)[:, None, None], torch.zeros(T, 1, dtype=F64),
        torch.tensor(beta, dtype=F64)[:, None, None], y * one[:, :, 0])
    (m0, V), (m1, _) = post(0.0), post(1.0)
    B, A, V = m0[:, 0].numpy(), (m1 - m0)[:, 0].numpy(), V[:, 0, 0].numpy()
    g, h, sigma2 = coefficients(ab, m, s, variance)
    np.testing.assert_allclose(g, A, rtol=1e-8)              # ε* makes the model's mean the true reverse mean
    np.testing.assert_allclose(h, B, atol=1e-8)
    mu_t, v_t = np.sqrt(abn) * m, abn * s ** 2 + 1 - abn      # q(x_t)
    e_sq = (A - g) ** 2 * v_t + ((A - g) * mu_t + B - h) ** 2
    kls = 0.5 * (np.log(sigma2 / V) + (V + e_sq) / sigma2 - 1)
    a = abn[-1]
    prior = 0.5 * (a * s ** 2 + 1 - a + a * m ** 2 - 1 - np.log(a * s ** 2 + 1 - a))
    return prior + kls.sum()


# σ² = β is (nearly) optimal for broad data and β̃ for nearly deterministic data (DDPM §3.2), so each is
# tested where its gap is large enough to resolve
@pytest.mark.parametrize("variance,s", [("small", 0.5), ("large", 0.01)])
def test_expected_gap_is_sum_of_true_reverse_kls(variance, s):
    ab = make_alpha_bar("linear", 1000)
    m, N = np.array([0.3, -0.2]), 2000
    theory = sum(true_reverse_gap(ab, m[j], s, variance) for j in range(2))
    gen = torch.Generator().manual_seed(1)
    x0 = torch.tensor(m, dtype=F64) + s * torch.randn(N, 2, generator=gen, dtype=F64)
    out = elbo_terms(affine_eps(ab, m, s), x0, ab, variance=variance, decoder="gaussian", generator=gen)
    log_q = torch.tensor(stats.norm(m, s).logpdf(x0.numpy()).sum(1))
    diff = log_q - out["elbo"]
    est, se = diff.mean().item(), diff.std().item() / math.sqrt(N)
    assert theory > 10 * se                                   # the gap is resolved, not noise
    assert abs(est - theory) < Z * se, (est, theory, se)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_l_t_minus_1_is_gamma_weighted_eps_loss(variance):
    ab = make_alpha_bar("linear", 1000)
    betas = beta_schedule("linear", 1000)
    gamma = gamma_t(ab, variance)
    gen = torch.Generator().manual_seed(2)
    N, d = 4000, 3
    x0 = torch.randn(N, d, generator=gen, dtype=F64)
    for t in [1, 10, 300, 999]:
        eps = torch.randn(N, d, generator=gen, dtype=F64)
        x_t = ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * eps
        eps_pred = 0.7 * eps + 0.3 * torch.randn(N, d, generator=gen, dtype=F64)   # any model
        kl = posterior_kl(x0, x_t, eps_pred, ab, t, variance)
        tilde = (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]
        sigma2 = tilde if variance == "small" else betas[t]
        r = tilde / sigma2
        const = d / 2 * (r - 1 - torch.log(r))
        torch.testing.assert_close(kl, gamma[t] * ((eps - eps_pred) ** 2).sum(1) + const, rtol=1e-7, atol=1e-9)
        # and in expectation (the form used in DDIM eq. 5): E ‖ε − ε_θ‖² = 0.09·2·d here
        se = kl.std().item() / math.sqrt(N)
        assert abs(kl.mean().item() - (gamma[t] * 0.18 * d + const).item()) < Z * se
    # the continuous decoder obeys the same weighting at t = 0
    eps = torch.randn(N, d, generator=gen, dtype=F64)
    x_t = ab[0].sqrt() * x0 + (1 - ab[0]).sqrt() * eps
    eps_pred = torch.randn(N, d, generator=gen, dtype=F64)
    s0 = model_variance(ab, variance)[0]
    torch.testing.assert_close(decoder_nll(x0, x_t, eps_pred, ab, variance, "gaussian"),
                               gamma[0] * ((eps - eps_pred) ** 2).sum(1) + d / 2 * torch.log(2 * math.pi * s0))


def test_gamma_simplified_forms():
    """With σ² = β̃_t: γ_t = β_t / (2 α_t (1 − ᾱ_{t−1})); with σ² = β_t: γ_t = β_t / (2 α_t (1 − ᾱ_t))."""
    ab, betas = make_alpha_bar("linear", 1000), beta_schedule("linear", 1000)
    alpha = 1 - betas
    torch.testing.assert_close(gamma_t(ab, "small")[1:], betas[1:] / (2 * alpha[1:] * (1 - ab[:-1])), rtol=1e-9, atol=0)
    torch.testing.assert_close(gamma_t(ab, "large"), betas / (2 * alpha * (1 - ab)), rtol=1e-9, atol=0)
    # so the bound weights early steps ~60x more than late ones; L_simple sets γ ≡ 1 (DDPM §3.4)
    g = gamma_t(ab, "small")
    assert float(g[1]) > 30 * float(g[999])


def test_l_simple_matches_closed_form_on_gaussian_data():
    ab = make_alpha_bar("linear", 1000)
    m, s, N = np.array([0.3, -0.2]), 0.5, 20_000
    gen = torch.Generator().manual_seed(3)
    x0 = torch.tensor(m, dtype=F64) + s * torch.randn(N, 2, generator=gen, dtype=F64)
    losses = l_simple(affine_eps(ab, m, s), x0, ab, generator=gen, reduction="none")
    # E‖ε − ε*‖²/d = ᾱ s² / (ᾱ s² + 1 − ᾱ), averaged over uniform t
    expected = (ab * s ** 2 / (ab * s ** 2 + 1 - ab)).mean().item()
    assert abs(losses.mean().item() - expected) < Z * losses.std().item() / math.sqrt(N)
    t = torch.full((N,), 50)
    losses = l_simple(affine_eps(ab, m, s), x0, ab, generator=gen, t=t, reduction="none")
    a = ab[50].item()
    assert abs(losses.mean().item() - a * s ** 2 / (a * s ** 2 + 1 - a)) < Z * losses.std().item() / math.sqrt(N)
    assert l_simple(affine_eps(ab, m, s), x0[:10], ab, generator=gen).ndim == 0


def test_l_simple_of_the_exact_eps_for_data_at_one_point_is_zero_at_every_step():
    """Data at one point c: x_t = √ᾱ_t c + √(1−ᾱ_t) ε gives back ε = (x_t − √ᾱ_t c)/√(1−ᾱ_t) exactly, so this predictor's
    L_simple is 0 up to float64 round-off at each t = 0..998 (one sample per t). Where the Monte Carlo check above cannot
    tell neighbouring steps apart, this one can: the same predictor called with t + 1 (x_t drawn one step off) misses
    by more than 1e-12 at every t; √(1−ᾱ_t) written 1−ᾱ_t, or x_0 as the target, miss too."""
    ab = make_alpha_bar("linear", 1000)
    c = torch.tensor([0.7, -0.4], dtype=F64)
    t = torch.arange(999)
    x0 = c.expand(len(t), 2).clone()

    def exact(step):
        return lambda x, t_: (x - ab[t_ + step].sqrt()[:, None] * c) / (1 - ab[t_ + step]).sqrt()[:, None]

    gen = torch.Generator().manual_seed(6)
    assert float(l_simple(exact(0), x0, ab, generator=gen, t=t, reduction="none").max()) < 1e-20
    assert float(l_simple(exact(1), x0, ab, generator=gen, t=t, reduction="none").min()) > 1e-12


def test_discretized_decoder_and_bits_per_dim_on_images():
    ab = make_alpha_bar("linear", 20)
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, 256, (3, 1, 4, 4), generator=gen).to(F64) / 127.5 - 1
    x_t = ab[0].sqrt() * x0 + (1 - ab[0]).sqrt() * torch.randn(x0.shape, generator=gen, dtype=F64)
    eps_pred = torch.randn(x0.shape, generator=gen, dtype=F64)
    nll = decoder_nll(x0, x_t, eps_pred, ab)
    mean = ((x_t - (1 - ab[0]).sqrt() * eps_pred) / ab[0].sqrt()).numpy()
    sd = math.sqrt(float(model_variance(ab)[0]))
    x = x0.numpy()
    hi = np.where(x > 0.999, np.inf, x + 1 / 255)
    lo = np.where(x < -0.999, -np.inf, x - 1 / 255)
    zh, zl = (hi - mean) / sd, (lo - mean) / sd
    # difference on the side of 0 where the tail masses are small (no cancellation)
    p = np.where(zh + zl > 0, stats.norm.sf(zl) - stats.norm.sf(zh), stats.norm.cdf(zh) - stats.norm.cdf(zl))
    np.testing.assert_allclose(nll.numpy(), -np.log(p).reshape(3, -1).sum(1), rtol=1e-6)

    out = elbo_terms(lambda x, t: torch.zeros_like(x), x0, ab, generator=gen)
    assert out["terms"].shape == (3, 20) and out["prior"].shape == (3,)
    torch.testing.assert_close(out["prior"], prior_kl(x0, ab))
    torch.testing.assert_close(out["total"], out["prior"] + out["terms"].sum(1))
    torch.testing.assert_close(out["bpd"], out["total"] / (16 * math.log(2)))
    assert bool((out["terms"] >= 0).all())        # KLs and −log of probabilities ≤ 1


def test_bits_per_dim_of_a_point_mass_with_its_exact_eps():
    """A case with a known answer (notebook 06 §4's bits per pixel): one 8-bit image as a point mass, and its exact
    ε*(x_t, t) = (x_t − √ᾱ_t x_0)/√(1−ᾱ_t). Then x̂_0 = x_0 at every step, so every KL term is 0 (σ_t² = β̃_t is q's own
    variance), and the bound is the prior's KL plus the decoder's −log of the mass that N(x_0, β̃_1) puts on x_0's bin
    (DDPM §3.3): 2Φ(h/σ) − 1 inside, Φ(h/σ) in the open edge bins, h = 1/255 half a bin. A probability of one of 256
    levels, so no Jacobian of the [−1, 1] scaling enters; bits per dimension divide by D ln 2. Φ from scipy, β̃_1 and
    the prior's KL written out here."""
    ab = make_alpha_bar("linear", 1000)
    k = torch.tensor([0, 1, 17, 128, 254, 255, 255, 3])                # the edge levels and inside ones
    x0 = (k.to(F64) / 127.5 - 1).reshape(1, 2, 2, 2)                   # one image, D = 8
    exact = lambda x, t: (x - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()  # noqa: E731
    out = elbo_terms(exact, x0, ab, variance="small", generator=torch.Generator().manual_seed(0))

    a0, a1, a_last = (float(ab[i]) for i in (0, 1, -1))
    sd = math.sqrt((1 - a0) / (1 - a1) * (1 - a1 / a0))               # β̃ of step 1: 0.0074, wider than h
    h = 1 / 255
    x = x0.flatten().numpy()
    bin_mass = np.where(np.abs(x) == 1, stats.norm.cdf(h / sd), 2 * stats.norm.cdf(h / sd) - 1)
    prior = 0.5 * (a_last * x ** 2 + (1 - a_last) - 1 - math.log(1 - a_last))   # KL(N(√ᾱ x, 1 − ᾱ) ‖ N(0, 1))
    bits = (prior.sum() - np.log(bin_mass).sum()) / (8 * math.log(2))
    assert abs(float(out["terms"][0, 1:].abs().max())) < 1e-12
    assert float(out["bpd"][0]) == pytest.approx(bits, rel=1e-9)
    assert bits == pytest.approx((3 * 0.5098 + 5 * 1.3054) / 8, abs=1e-3)       # 0.51 bits at an edge, 1.31 inside


def test_bad_inputs_raise():
    ab = make_alpha_bar("linear", 10)
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"t must be an integer in 1\.\.9 "):
        posterior_kl(x, x, x, ab, 0)
    with pytest.raises(ValueError, match=r"t must be an integer in 1\.\.9 "):
        posterior_kl(x, x, x, ab, 10)
    with pytest.raises(ValueError, match="eps_pred shape"):
        posterior_kl(x, x, x[:1], ab, 3)
    with pytest.raises(ValueError, match="finite"):
        prior_kl(torch.tensor([[float("inf")]]), ab)
    with pytest.raises(ValueError, match="unknown variance"):
        gamma_t(ab, "medium")
    with pytest.raises(ValueError, match="unknown decoder"):
        elbo_terms(lambda x, t: x, x, ab, decoder="logistic")
    with pytest.raises(ValueError, match="n_mc"):
        elbo_terms(lambda x, t: x, x, ab, n_mc=0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        gamma_t(ab.flip(0))
    with pytest.raises(ValueError, match="0..T-1"):
        l_simple(lambda x, t: x, x, ab, t=torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        decoder_nll(x + 2, x, x, ab)


def test_small_variance_bound_in_snr_terms():
    """VDM §4: for σ_t² = β̃_t, L_{t−1} = ½(SNR(t−1) − SNR(t)) ‖x_0 − x̂_0‖² and γ_t = ½(SNR(t−1)/SNR(t) − 1)
    (notebook 02 §8); x̂_0 is written out here, not taken from the library."""
    ab = make_alpha_bar("linear", 1000)
    snr = ab / (1 - ab)
    torch.testing.assert_close(gamma_t(ab, "small")[1:], 0.5 * (snr[:-1] / snr[1:] - 1), rtol=1e-9, atol=0)
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randn(6, 3, generator=gen, dtype=F64)
    for t in [1, 2, 50, 700, 999]:
        x_t = ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * torch.randn(6, 3, generator=gen, dtype=F64)
        eps_pred = torch.randn(6, 3, generator=gen, dtype=F64)
        x0_hat = (x_t - (1 - ab[t]).sqrt() * eps_pred) / ab[t].sqrt()
        torch.testing.assert_close(posterior_kl(x0, x_t, eps_pred, ab, t, "small"),
                                   0.5 * (snr[t - 1] - snr[t]) * ((x0 - x0_hat) ** 2).sum(1), rtol=1e-8, atol=1e-12)


def test_small_decoder_variance_is_beta_tilde_of_the_second_step():
    """β̃ at step 0 is exactly 0 (ᾱ_{−1} = 1); the "small" decoder uses β̃ of step 1 instead, like DDPM's
    posterior_log_variance_clipped (notebook 02 §5); "large" uses β of step 0."""
    ab = make_alpha_bar("linear", 1000)
    betas = beta_schedule("linear", 1000)
    tilde = (1 - torch.cat([torch.ones(1, dtype=F64), ab[:-1]])) / (1 - ab) * betas
    assert float(tilde[0]) == 0.0
    small, large = model_variance(ab, "small"), model_variance(ab, "large")
    assert float(small[0]) == pytest.approx(float(tilde[1]), rel=1e-12)
    torch.testing.assert_close(small[1:], tilde[1:], rtol=1e-12, atol=0)
    assert float(large[0]) == pytest.approx(float(betas[0]), rel=1e-9)


def test_bits_per_dim_is_the_exact_discrete_codelength_on_gaussian_data():
    """Notebook 02 §7 "Bits per dimension": for data with independent N(m, s²) coordinates and the exact ε*, the chain is
    linear-Gaussian, so the model's continuous x_0 is N(μ, ω²) (marginalised here with `coefficients`, written out from
    DDPM eq. 7/11) and the discretised decoder's P_θ(bin) is a difference of scipy's normal cdfs (binning commutes with
    the integral over x_1). With σ_t² = β_t the bound's gap is ~1e-3 nats, far below the Monte Carlo SE, so bits_per_dim
    must match −log₂ P_θ(x_0)/D; nats reported as bits, or bits not divided by D, miss by far more. With σ_t² = β̃_t the
    bound lies above it (§7's gap)."""
    ab, m, s, N = make_alpha_bar("linear", 1000), 0.3, 0.5, 4000
    pix = ((torch.tensor([[0.9, -0.2, 0.4]], dtype=F64) + 1) * 127.5).round() / 127.5 - 1
    x = pix.numpy()
    for variance in ("large", "small"):
        g, h, sigma2 = coefficients(ab, m, s, variance)
        mu, w2 = 0.0, 1.0
        for t in range(len(g) - 1, -1, -1):                    # x_{t−1} = g_t x_t + h_t + σ_t z, from x_T ~ N(0, 1)
            mu, w2 = g[t] * mu + h[t], g[t] ** 2 * w2 + sigma2[t]
        exact_bits = float(-np.log2(stats.norm.cdf(x + 1 / 255, mu, math.sqrt(w2))
                                    - stats.norm.cdf(x - 1 / 255, mu, math.sqrt(w2))).mean())
        bpd = elbo_terms(affine_eps(ab, m, s), pix.repeat(N, 1), ab, variance=variance, decoder="discretized",
                         generator=torch.Generator().manual_seed(0))["bpd"]
        est, se = bpd.mean().item(), bpd.std().item() / math.sqrt(N)
        if variance == "large":
            assert abs(est - exact_bits) < Z * se
            assert abs(est * math.log(2) - exact_bits) > 10 * Z * se and abs(3 * est - exact_bits) > 10 * Z * se
        else:
            assert est - exact_bits > Z * se                       # 0.8 bits/dim above, about 35 SE


def _t_and_noise(x0, ab, gen):
    """t uniform on 0..T−1 and ε ~ N(0, I), drawn in l_simple's order, with ᾱ_t as a column."""
    t = torch.randint(0, ab.numel(), (x0.shape[0],), generator=gen)
    return t, torch.randn(x0.shape, generator=gen, dtype=x0.dtype), ab[t][:, None]


def _l_simple_variance_for_sd(eps_model, x0, ab, gen):
    """L_simple with x_t = √ᾱ_t x_0 + (1 − ᾱ_t) ε: the variance where the standard deviation belongs."""
    t, noise, a = _t_and_noise(x0, ab, gen)
    return ((noise - eps_model(a.sqrt() * x0 + (1 - a) * noise, t)) ** 2).mean(1)


def _l_simple_summed_over_pixels(eps_model, x0, ab, gen):
    """L_simple summed over the pixels instead of averaged (DDPM's mean_flat)."""
    t, noise, a = _t_and_noise(x0, ab, gen)
    return ((noise - eps_model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t)) ** 2).sum(1)


L_SIMPLE_MUTANTS = {"x_t with 1 - alpha_bar for its square root": _l_simple_variance_for_sd,
                    "squared error summed over pixels": _l_simple_summed_over_pixels}


def l_simple_miss(loss_fn, scale, N=20_000):
    """|Monte Carlo L_simple of scale·ε* − its closed form| in SE, on data N(m, s² I) in 2-D (notebook 02 §7 (c)).

    Per coordinate F_ε,t = Var(ε | x_t) = ᾱ_t s²/(ᾱ_t s² + 1 − ᾱ_t); ε − ε* is uncorrelated with every function of x_t
    and E ε*² = 1 − F_ε,t, so E‖ε − c ε*‖²/d = F_ε,t + (1 − c)² (1 − F_ε,t), averaged over uniform t. At 20 000 draws the
    check resolves about 1% of the loss: it cannot see the network called one step late (t + 1 for x_t's t), 0.0 SE."""
    ab, m, s = make_alpha_bar("linear", 1000), torch.tensor([0.3, -0.2], dtype=F64), 0.5
    gen = torch.Generator().manual_seed(3)
    x0 = m + s * torch.randn(N, 2, generator=gen, dtype=F64)
    per = loss_fn(affine_eps(ab, m.numpy(), s, scale), x0, ab, gen)
    F_eps = ab * s ** 2 / (ab * s ** 2 + 1 - ab)
    closed = float((F_eps + (1 - scale) ** 2 * (1 - F_eps)).mean())
    return abs(per.mean().item() - closed) / (per.std().item() / math.sqrt(N))


@pytest.mark.parametrize("scale", [1.0, 0.8])
def test_l_simple_check_passes_for_the_library(scale):
    assert l_simple_miss(lambda e, x0, ab, gen: l_simple(e, x0, ab, generator=gen, reduction="none"), scale) < Z


@pytest.mark.parametrize("name", L_SIMPLE_MUTANTS)
def test_l_simple_check_fails_for_mutant(name):
    """The same closed-form check on a wrong L_simple: 18 and 29 SE off at ε*."""
    assert min(l_simple_miss(L_SIMPLE_MUTANTS[name], scale) for scale in (1.0, 0.8)) > 2 * Z


def test_density_times_bin_width_rule_at_four_decoder_means():
    """Notebook 02 §5, computed with scipy alone: P(bin) = Φ(upper edge) − Φ(lower edge) (the end bins to ±∞) against
    N(x; μ, σ²)·(2/255). Away from the ends (μ = 0.1, a bin edge 0, a level 1/255) the rule is within 1e-3 nats
    bin by bin at σ = 0.2, over 100 times worse at DDPM's σ_1 = √β_1 and √β̃_2, and within 0.003 nats on average
    under the decoder; at the end level μ = −1 the average is off by over 0.3 nats."""
    ab = make_alpha_bar("linear", 1000)
    levels = np.arange(256) / 127.5 - 1
    edges = np.concatenate([[-np.inf], levels[:-1] + 1 / 255, [np.inf]])
    sigmas = (0.2, math.sqrt(1 - float(ab[0])), math.sqrt(float(model_variance(ab, "small")[0])))
    worst, mean_err = {}, {}
    for mu in (0.1, 0.0, 1 / 255, -1.0):
        for sd in sigmas:
            lo, hi = (edges[:-1] - mu) / sd, (edges[1:] - mu) / sd
            # log P(bin), on the side of μ where the tail masses are small (no cancellation, no underflow); the
            # branch np.where discards may divide by zero
            with np.errstate(divide="ignore", invalid="ignore"):
                upper = stats.norm.logsf(lo) + np.log1p(-np.exp(stats.norm.logsf(hi) - stats.norm.logsf(lo)))
                lower = stats.norm.logcdf(hi) + np.log1p(-np.exp(stats.norm.logcdf(lo) - stats.norm.logcdf(hi)))
            log_p = np.where(lo > 0, upper, lower)
            err = stats.norm.logpdf(levels, mu, sd) + math.log(2 / 255) - log_p
            assert np.isfinite(err).all()
            worst[mu, sd] = np.abs(err[np.abs(levels - mu) < 3 * sd]).max()
            mean_err[mu, sd] = float((np.exp(log_p) * err).sum())
    for mu in (0.1, 0.0, 1 / 255):
        assert worst[mu, 0.2] < 1e-3 and min(worst[mu, sigmas[1]], worst[mu, sigmas[2]]) > 100 * worst[mu, 0.2]
        assert max(abs(mean_err[mu, sd]) for sd in sigmas) < 3e-3
    assert min(abs(mean_err[-1.0, sd]) for sd in sigmas) > 0.3


def test_n_mc_averages_each_samples_own_draws():
    """n_mc = 2 on a batch [a, b] draws x_t for x0 repeated, [a, b, a, b], so it equals n_mc = 1 on the batch [a, b, a, b]
    from the same generator state, each sample's terms the mean of its two rows (rows i and i + B, averaged here by
    hand). Every other test of n_mc had samples alike or a deterministic model; averaging the first two rows (a's and
    b's first draws, `reshape(B, n_mc).mean(1)`) passed them and fails here."""
    ab = make_alpha_bar("linear", 20)
    x0 = torch.tensor([[0.9, -0.7, 0.2], [-0.4, 0.1, 3.0]], dtype=F64)
    model = lambda x, t: 0.5 * x.tanh()      # noqa: E731  (depends on x_t, so every draw gives other terms)
    two = elbo_terms(model, x0, ab, decoder="gaussian", n_mc=2, generator=torch.Generator().manual_seed(7))
    four = elbo_terms(model, x0.repeat(2, 1), ab, decoder="gaussian", n_mc=1, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(two["terms"], (four["terms"][:2] + four["terms"][2:]) / 2, rtol=1e-12, atol=0)
    assert float((two["total"] - four["total"][:2]).abs().max()) > 1e-3      # the two draws differ: the mean matters


def test_l_simple_draws_t_uniformly_over_every_step_including_0():
    """DDPM's Algorithm 1 draws t ~ Uniform{1, …, T}, ddimlab's 0..T−1: the steps l_simple hands the model, counted over
    4000 samples on T = 4, pass scipy's chi-square test of equal frequencies (p = 0.79 here) and include step 0; t drawn
    from 1..T−1 (never training the last denoising step) passed every other test."""
    ab = make_alpha_bar("linear", 4)
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)
    l_simple(model, torch.zeros(4000, 2, dtype=F64), ab, generator=torch.Generator().manual_seed(3))
    counts = np.bincount(torch.cat(seen).numpy(), minlength=4)
    assert len(counts) == 4 and counts.min() > 0
    assert stats.chisquare(counts).pvalue > 1e-3, counts
