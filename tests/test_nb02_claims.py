"""The claims of notebook 02 that its own checks cannot resolve, computed again by other routes.

§7: `l_simple` draws its steps t uniformly from 0..T−1 (DDPM Algorithm 1, with ddimlab's 0-based steps). The notebook's
check of L_simple's value at ε* averages over t, and one step left out moves that average by (F_ε,0 − E_t F_ε,t)/(T − 1),
under one standard error at 200 000 draws: a draw from 1..T−1 passed it. Here the steps are read off the model's calls
on other data (a 2-D Gaussian, another seed), and their counts tested against uniform with scipy's chi-square test and
at both ends; the same test on the off-by-one draws themselves fails. And the x_t that `l_simple` passes to the model
is noised to that same step's level: tests/test_elbo.py's closed-form check of the loss cannot see x_t drawn one step
late (0.0 SE), the moments of x_t at a fixed small step can.

§7 (a): the negative ELBO as the library decomposes it, L_T + Σ L_{t−1} + L_0, against the undecomposed expectation
E_q[log q(x_{1:T} | x_0) − log p_θ(x_{0:T})] of the forward chain, computed exactly from the chain's Gaussian moments given
x_0 (no KL, no telescoping), on other data, another x_0, both variances and an imperfect model; and `elbo_terms`' Monte
Carlo mean against it. The notebook compared `elbo_terms` with the Gauss–Hermite mean of the library's own terms."""
import math

import pytest
import torch
from numpy.polynomial.hermite_e import hermegauss
from scipy.stats import chisquare

from ddimlab.diffusion import posterior_mean, predict_x0, q_sample
from ddimlab.elbo import betas_from, decoder_nll, elbo_terms, l_simple, model_variance, posterior_kl, prior_kl
from ddimlab.schedule import alpha_bar_at, make_alpha_bar
from ddimlab.toy import GaussianMixture, exact_eps

T = 1000
AB = make_alpha_bar("linear", T)


def _uniform_steps_z(steps: torch.Tensor) -> tuple[float, float]:
    """(chi-square p-value of the counts of `steps` against uniform on 0..T−1, the larger miss of the counts at t = 0 and
    t = T−1 in binomial standard errors)."""
    counts, n_per = torch.bincount(steps, minlength=T).double(), steps.numel() / T
    sd = math.sqrt(n_per * (1 - 1 / T))
    return chisquare(counts.numpy()).pvalue, max(abs(float(counts[k]) - n_per) / sd for k in (0, T - 1))


def test_l_simple_draws_every_step_uniformly():
    gen = torch.Generator().manual_seed(21)
    x0 = torch.tensor([0.3, -0.2], dtype=torch.float64) + 0.5 * torch.randn(100_000, 2, generator=gen, dtype=torch.float64)
    seen = {}

    def model(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    loss = l_simple(model, x0, AB, generator=gen, reduction="none")
    assert seen["t"].shape == (len(x0),) and loss.shape == (len(x0),)
    p, z_ends = _uniform_steps_z(seen["t"])
    assert p > 1e-3 and z_ends < 5


def test_the_same_test_rejects_steps_drawn_one_short_at_either_end():
    gen = torch.Generator().manual_seed(22)
    for low, high in ((1, T), (0, T - 1)):
        p, z_ends = _uniform_steps_z(torch.randint(low, high, (100_000,), generator=gen))
        assert z_ends > 5


def test_l_simple_noises_x0_to_the_level_of_the_step_it_passes():
    """With t fixed at 0, 10 and 500 and x_0 = 0.8, the x_t the model receives has mean √ᾱ_t x_0 and variance 1 − ᾱ_t
    (q(x_t | x_0), within 5 SE); at t = 0 and 10 the variance rejects 1 − ᾱ_{t+1}, x_t drawn one step late (at t = 500
    the two differ by 0.1%, below what 100 000 draws resolve)."""
    n, gen = 100_000, torch.Generator().manual_seed(23)
    x0 = torch.full((n, 1), 0.8, dtype=torch.float64)
    for k in (0, 10, 500):
        seen = {}

        def model(x, t):
            seen["x"] = x.clone()
            return torch.zeros_like(x)

        l_simple(model, x0, AB, generator=gen, t=torch.full((n,), k))
        x, a = seen["x"][:, 0], float(AB[k])
        z_mean = abs(float(x.mean()) - math.sqrt(a) * 0.8) / math.sqrt((1 - a) / n)

        def z_var(v):
            return abs(float(x.var()) - v) / (v * math.sqrt(2 / (n - 1)))

        assert z_mean < 5 and z_var(1 - a) < 5
        if k < 500:
            assert z_var(1 - float(AB[k + 1])) > 5


def _chain_neg_elbo(eps_model, x0: float, ab, variance) -> float:
    """E_q[log q(x_1:T | x0) − log p_θ(x_0:T)] for 1-D data and a model whose reverse mean is linear in x_t (exact ε* of
    Gaussian data, or a multiple of it): the forward chain given x0 has x_t ~ N(√ᾱ_t x0, 1 − ᾱ_t) and
    Cov(x_{t−1}, x_t) = √(1 − β_t)(1 − ᾱ_{t−1}); p_θ's step is N(A x_t + b, σ_t²), A and b read off the model at x_t = 0, 1."""
    T_ = ab.numel()
    k = torch.arange(T_).repeat_interleave(2)
    x = torch.tensor([0.0, 1.0], dtype=torch.float64).repeat(T_)[:, None]
    mu = posterior_mean(predict_x0(x, eps_model(x, k), ab[k]), x, ab[k], alpha_bar_at(ab, k - 1)).reshape(-1, 2)
    A, b = mu[:, 1] - mu[:, 0], mu[:, 0]
    m_t, v_t, b_t = ab.sqrt() * x0, 1 - ab, betas_from(ab)
    m_prev = torch.cat([torch.tensor([x0], dtype=torch.float64), m_t[:-1]])
    v_prev = torch.cat([torch.zeros(1, dtype=torch.float64), v_t[:-1]])
    sq = v_prev + A ** 2 * v_t - 2 * A * (1 - b_t).sqrt() * v_prev + (m_prev - A * m_t - b) ** 2
    s2 = model_variance(ab, variance)
    log_q = -0.5 * torch.log(2 * math.pi * math.e * b_t).sum()
    log_p = -0.5 * (math.log(2 * math.pi) + m_t[-1] ** 2 + v_t[-1]) - (0.5 * torch.log(2 * math.pi * s2) + sq / (2 * s2)).sum()
    return float(log_q - log_p)


def _kl_sum(eps_model, x0: float, ab, variance) -> tuple[float, float]:
    """(L_T + Σ L_{t−1} + L_0, L_0) from the library's terms, each expectation over x_t by Gauss–Hermite (exact: the
    terms are quadratic in ε for a linear model)."""
    z, w = (torch.tensor(v, dtype=torch.float64) for v in hermegauss(6))
    w = w / math.sqrt(2 * math.pi)
    xr = torch.full((len(z), 1), x0, dtype=torch.float64)
    terms = []
    for k in range(ab.numel()):
        x_t = q_sample(xr, float(ab[k]), z[:, None])
        term = (decoder_nll(xr, x_t, eps_model(x_t, k), ab, variance, decoder="gaussian") if k == 0
                else posterior_kl(xr, x_t, eps_model(x_t, k), ab, k, variance))
        terms.append(float((term * w).sum()))
    return float(prior_kl(xr[:1], ab)) + sum(terms), terms[0]


@pytest.mark.parametrize("variance, rho", [("small", 1.0), ("large", 1.0), ("small", 0.9)])
def test_the_kl_sum_and_elbo_terms_equal_the_undecomposed_chain_expectation(variance, rho):
    data = GaussianMixture(torch.ones(1), torch.tensor([[-0.2]]), torch.tensor([[[0.64]]]))
    e_star = exact_eps(data, AB)

    def model(x, t):
        return rho * e_star(x, t)

    x0 = -0.4
    chain = _chain_neg_elbo(model, x0, AB, variance)
    kl_sum, L0 = _kl_sum(model, x0, AB, variance)
    assert abs(kl_sum - chain) < 1e-9 * abs(chain)
    assert abs(kl_sum - L0 - chain) > 1e-3 * abs(chain)           # the decomposition without its decoder term fails
    mc = elbo_terms(model, torch.full((3000, 1), x0, dtype=torch.float64), AB, variance=variance, decoder="gaussian",
                    generator=torch.Generator().manual_seed(24))["total"]
    assert abs(float(mc.mean()) - chain) < 5 * float(mc.std()) / math.sqrt(mc.numel())


def test_reverse_kernel_is_gaussian_to_order_h_cubed():
    """§10: KL(q(x_s | x_t) ‖ its moment-matched Gaussian) ≈ (ψ''')² h³/12 for a short step, h = ᾱ_s/ᾱ_t − 1 the variance of
    the likelihood q(x_t | x_s) in x_s and ψ = log q(x_s). Here on other data (½N(±0.7, 0.3²)) and another step, t = 500:
    the KL of a 10-step kernel over that of a 1-step kernel (mean over 300 x_t ~ p_t, trapezoid rule on ±12 sd) grows as
    the ratio of their h cubed, to 0.05 in log10; the square and the fourth power of that ratio are rejected."""
    import numpy as np
    from scipy.stats import norm

    mix = GaussianMixture(torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([[-0.7], [0.7]], dtype=torch.float64),
                          torch.full((2, 1, 1), 0.09, dtype=torch.float64))
    a = lambda k: float(alpha_bar_at(AB, k))                                           # noqa: E731
    t = 500
    x_t = mix.marginal(a(t)).sample(300, generator=torch.Generator().manual_seed(31))

    def mean_kl(s):
        log_r, m, v = mix.reverse_kernel(x_t, a(t), a(s))
        r, m, v = log_r.exp().numpy(), m[..., 0].numpy(), v[:, 0].numpy()
        mu = (r * m).sum(1)
        var = (r * (v + m * m)).sum(1) - mu ** 2
        x = mu[:, None] + np.sqrt(var)[:, None] * np.linspace(-12, 12, 4001)[None]
        p = (r[:, None, :] * norm.pdf(x[..., None], m[:, None, :], np.sqrt(v))).sum(-1)
        kl = np.trapezoid(p * (np.log(np.maximum(p, 1e-300)) - norm.logpdf(x, mu[:, None], np.sqrt(var)[:, None])), x, axis=1)
        return kl.mean()

    power = math.log10(mean_kl(t - 10) / mean_kl(t - 1))
    h_ratio = math.log10((a(t - 10) / a(t) - 1) / (a(t - 1) / a(t) - 1))
    assert abs(power - 3 * h_ratio) < 0.05
    assert min(abs(power - 2 * h_ratio), abs(power - 4 * h_ratio)) > 0.5
