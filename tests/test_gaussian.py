"""Gaussian algebra against independent computations: scipy, numerical integration, Monte Carlo,
and the joint-covariance (completing-the-square) derivation of the linear-Gaussian identities."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ddimlab.gaussian import (
    discretized_gaussian_log_likelihood,
    kl_mvn,
    kl_normal,
    linear_gaussian_marginal,
    linear_gaussian_posterior,
    log_mvn,
    log_normal,
)

Z = 5.0  # Monte Carlo tolerance in standard errors


def random_spd(n, gen, scale=1.0):
    M = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return scale * (M @ M.T / n + 0.5 * torch.eye(n, dtype=torch.float64))


def test_log_normal_matches_scipy():
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    for mean, var in [(0.0, 1.0), (0.7, 0.05), (-2.0, 4.0)]:
        expected = stats.norm(mean, math.sqrt(var)).logpdf(x.numpy())
        np.testing.assert_allclose(log_normal(x, mean, var).numpy(), expected, rtol=1e-12)


def test_log_mvn_matches_scipy():
    gen = torch.Generator().manual_seed(0)
    cov, mean = random_spd(3, gen), torch.randn(3, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    expected = stats.multivariate_normal(mean.numpy(), cov.numpy()).logpdf(x.numpy())
    np.testing.assert_allclose(log_mvn(x, mean, cov).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("m1,v1,m2,v2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.4, 2.0), (1.0, 0.01, 0.9, 0.02)])
def test_kl_normal_1d_matches_quadrature(m1, v1, m2, v2):
    p, q = stats.norm(m1, math.sqrt(v1)), stats.norm(m2, math.sqrt(v2))
    sd = math.sqrt(v1)
    expected, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), m1 - 12 * sd, m1 + 12 * sd,
                                 epsabs=1e-13, epsrel=1e-11, limit=200)
    assert float(kl_normal(m1, v1, m2, v2)) == pytest.approx(expected, abs=1e-9)


def test_kl_normal_diagonal_matches_monte_carlo():
    gen = torch.Generator().manual_seed(1)
    d, n = 4, 200_000
    m1, m2 = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    v1, v2 = torch.rand(d, generator=gen, dtype=torch.float64) + 0.3, torch.rand(d, generator=gen, dtype=torch.float64) + 0.3
    x = m1 + v1.sqrt() * torch.randn(n, d, generator=gen, dtype=torch.float64)
    samples = (log_normal(x, m1, v1) - log_normal(x, m2, v2)).sum(1)
    se = samples.std() / math.sqrt(n)
    assert abs(float(samples.mean() - kl_normal(m1, v1, m2, v2).sum())) < Z * se


def test_kl_mvn_matches_monte_carlo_and_diagonal_case():
    gen = torch.Generator().manual_seed(2)
    n, N = 3, 200_000
    S1, S2 = random_spd(n, gen), random_spd(n, gen, 2.0)
    m1, m2 = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
    x = m1 + torch.randn(N, n, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(S1).T
    samples = log_mvn(x, m1, S1) - log_mvn(x, m2, S2)
    assert abs(float(samples.mean() - kl_mvn(m1, S1, m2, S2))) < Z * samples.std() / math.sqrt(N)
    v1, v2 = torch.diagonal(S1), torch.diagonal(S2)
    assert float(kl_mvn(m1, torch.diag(v1), m2, torch.diag(v2))) == pytest.approx(
        float(kl_normal(m1, v1, m2, v2).sum()), rel=1e-12)


def _kl_mvn_miss(kl_fn) -> float:
    """Largest |kl_fn − torch.distributions.kl_divergence| over a batch of random pairs in n = 1, 3, 5 (torch's own
    closed form, a separate implementation: batched, through its scale_tril)."""
    from torch.distributions import MultivariateNormal, kl_divergence
    gen, worst = torch.Generator().manual_seed(12), 0.0
    for n in (1, 3, 5):
        S1 = torch.stack([random_spd(n, gen) for _ in range(4)])
        S2 = torch.stack([random_spd(n, gen, 2.0) for _ in range(4)])
        m1, m2 = torch.randn(4, n, generator=gen, dtype=torch.float64), torch.randn(4, n, generator=gen, dtype=torch.float64)
        ref = kl_divergence(MultivariateNormal(m1, S1), MultivariateNormal(m2, S2))
        worst = max(worst, float((kl_fn(m1, S1, m2, S2) - ref).abs().max()))
    return worst


def test_kl_mvn_matches_torch_distributions():
    assert _kl_mvn_miss(kl_mvn) < 1e-10


def _kl_mvn_trace_inverted(m1, S1, m2, S2):
    """tr Σ₁⁻¹Σ₂ where tr Σ₂⁻¹Σ₁ belongs (the other terms right)."""
    return kl_mvn(m1, S1, m2, S2) + 0.5 * (torch.linalg.solve(S1, S2) - torch.linalg.solve(S2, S1)).diagonal(
        dim1=-2, dim2=-1).sum(-1)


@pytest.mark.parametrize("wrong", [lambda m1, S1, m2, S2: kl_mvn(m2, S2, m1, S1),          # KL(q ‖ p)
                                   _kl_mvn_trace_inverted,
                                   lambda m1, S1, m2, S2: kl_mvn(m1, S1, m2, S2) + 0.5 * (   # log|Σ₂|/|Σ₁| without the ½
                                       torch.logdet(S2) - torch.logdet(S1))])
def test_kl_mvn_check_fails_for_wrong_formulas(wrong):
    assert _kl_mvn_miss(wrong) > 1e-3


def linear_model(gen, n=3, m=2):
    mu = torch.randn(n, generator=gen, dtype=torch.float64)
    Lambda_inv, L_inv = random_spd(n, gen), random_spd(m, gen, 0.5)
    A = torch.randn(m, n, generator=gen, dtype=torch.float64)
    b = torch.randn(m, generator=gen, dtype=torch.float64)
    return mu, Lambda_inv, A, b, L_inv


def test_linear_gaussian_marginal_matches_monte_carlo():
    gen = torch.Generator().manual_seed(3)
    mu, Lambda_inv, A, b, L_inv = linear_model(gen)
    N = 200_000
    x = mu + torch.randn(N, 3, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(Lambda_inv).T
    y = x @ A.T + b + torch.randn(N, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(L_inv).T
    mean, cov = linear_gaussian_marginal(mu, Lambda_inv, A, b, L_inv)
    se_mean = torch.sqrt(torch.diagonal(cov) / N)
    assert bool(((y.mean(0) - mean).abs() < Z * se_mean).all())
    emp = torch.cov(y.T)
    # SE of a sample covariance entry: sqrt((S_ii S_jj + S_ij²) / N) for Gaussian data
    d = torch.diagonal(cov)
    se_cov = torch.sqrt((d[:, None] * d[None, :] + cov ** 2) / N)
    assert bool(((emp - cov).abs() < Z * se_cov).all())


def joint_from_precision(mu, Lambda_inv, A, b, L_inv):
    """Completing the square: log p(x) + log p(y|x) is a quadratic in z = (x, y) with precision
    R = [[Λ + AᵀLA, −AᵀL], [−LA, L]] and mean (μ, Aμ + b) (Bishop §2.3.3)."""
    Lam, L = torch.linalg.inv(Lambda_inv), torch.linalg.inv(L_inv)
    R = torch.cat([torch.cat([Lam + A.T @ L @ A, -A.T @ L], 1), torch.cat([-L @ A, L], 1)], 0)
    # linear term of the quadratic: R z* = (Λμ − AᵀLb, Lb)
    rhs = torch.cat([Lam @ mu - A.T @ L @ b, L @ b])
    return torch.linalg.solve(R, rhs), torch.linalg.inv(R)


def test_linear_gaussian_marginal_matches_joint_covariance():
    gen = torch.Generator().manual_seed(4)
    for n, m in [(3, 2), (2, 4), (1, 1)]:
        mu, Lambda_inv, A, b, L_inv = linear_model(gen, n, m)
        zmean, zcov = joint_from_precision(mu, Lambda_inv, A, b, L_inv)
        mean, cov = linear_gaussian_marginal(mu, Lambda_inv, A, b, L_inv)
        torch.testing.assert_close(mean, zmean[n:], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(cov, zcov[n:, n:], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(zmean[:n], mu, rtol=1e-10, atol=1e-10)


def test_linear_gaussian_posterior_matches_conditioning_and_bishop():
    gen = torch.Generator().manual_seed(5)
    mu, Lambda_inv, A, b, L_inv = linear_model(gen)
    y = torch.randn(2, generator=gen, dtype=torch.float64)
    mean, cov = linear_gaussian_posterior(mu, Lambda_inv, A, b, L_inv, y)
    # conditioning the joint: Σ_xx − Σ_xy Σ_yy⁻¹ Σ_yx
    zmean, zcov = joint_from_precision(mu, Lambda_inv, A, b, L_inv)
    Sxy, Syy = zcov[:3, 3:], zcov[3:, 3:]
    torch.testing.assert_close(mean, zmean[:3] + Sxy @ torch.linalg.solve(Syy, y - zmean[3:]), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(cov, zcov[:3, :3] - Sxy @ torch.linalg.solve(Syy, Sxy.T), rtol=1e-9, atol=1e-10)
    # Bishop (2.116–2.117): Σ = (Λ + AᵀLA)⁻¹, mean = Σ(AᵀL(y − b) + Λμ)
    Lam, L = torch.linalg.inv(Lambda_inv), torch.linalg.inv(L_inv)
    Sig = torch.linalg.inv(Lam + A.T @ L @ A)
    torch.testing.assert_close(cov, Sig, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(mean, Sig @ (A.T @ L @ (y - b) + Lam @ mu), rtol=1e-9, atol=1e-10)


def test_linear_gaussian_batched_and_errors():
    gen = torch.Generator().manual_seed(6)
    models = [linear_model(gen) for _ in range(4)]
    stacked = [torch.stack(parts) for parts in zip(*models)]
    mean, cov = linear_gaussian_marginal(*stacked)
    for k, model in enumerate(models):
        m1, c1 = linear_gaussian_marginal(*model)
        torch.testing.assert_close(mean[k], m1)
        torch.testing.assert_close(cov[k], c1)
    mu, Lambda_inv, A, b, L_inv = models[0]
    with pytest.raises(ValueError, match="shapes"):
        linear_gaussian_marginal(mu, Lambda_inv, A.T, b, L_inv)
    with pytest.raises(ValueError, match="shapes"):
        linear_gaussian_marginal(mu, Lambda_inv, A, b, torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="y must have shape"):
        linear_gaussian_posterior(mu, Lambda_inv, A, b, L_inv, torch.zeros(3, dtype=torch.float64))


def test_variance_must_be_positive():
    with pytest.raises(ValueError, match="var must be > 0"):
        log_normal(0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="var2 must be > 0"):
        kl_normal(0.0, 1.0, 0.0, -1.0)


BINS = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 8-bit values scaled to [-1, 1]


@pytest.mark.parametrize("approx", [False, True])
def test_discretized_likelihood_sums_to_one(approx):
    for mean, scale in [(0.0, 0.1), (0.93, 0.01), (-1.2, 0.3), (0.5, 1e-3), (0.0, 3.0)]:
        logp = discretized_gaussian_log_likelihood(BINS, mean, math.log(scale), approx=approx)
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-9 if not approx else 1e-6)


def _log_bin_mass(lo, hi):
    """log ∫_lo^hi N(z; 0, 1) dz by quadrature, scaled so that far-tail bins do not underflow."""
    c = min(abs(lo), abs(hi)) if lo * hi > 0 else 0.0
    val, _ = integrate.quad(lambda z: math.exp(-(z * z - c * c) / 2), lo, hi, epsabs=0, epsrel=1e-12)
    return math.log(val) - c * c / 2 - 0.5 * math.log(2 * math.pi)


def test_discretized_likelihood_matches_quadrature_including_tails():
    for x, mean, scale in [(0.0, 0.0, 0.05), (-0.2, 0.5, 0.02), (0.6, -0.4, 0.03), (0.5, 0.49, 1e-3)]:
        lo, hi = (x - 1 / 255 - mean) / scale, (x + 1 / 255 - mean) / scale
        got = float(discretized_gaussian_log_likelihood(torch.tensor(x, dtype=torch.float64), mean, math.log(scale)))
        assert got == pytest.approx(_log_bin_mass(lo, hi), rel=1e-8)
    # edge bins integrate to ±∞
    got = float(discretized_gaussian_log_likelihood(torch.tensor(1.0, dtype=torch.float64), 0.2, math.log(0.1)))
    assert got == pytest.approx(stats.norm.logsf((1 - 1 / 255 - 0.2) / 0.1), rel=1e-10)
    got = float(discretized_gaussian_log_likelihood(torch.tensor(-1.0, dtype=torch.float64), 0.2, math.log(0.1)))
    assert got == pytest.approx(stats.norm.logcdf((-1 + 1 / 255 - 0.2) / 0.1), rel=1e-10)


def test_discretized_approx_is_close_to_exact():
    mean, log_scale = 0.1, math.log(0.05)
    exact = discretized_gaussian_log_likelihood(BINS, mean, log_scale)
    approx = discretized_gaussian_log_likelihood(BINS, mean, log_scale, approx=True)
    # the tanh approximation of Φ is off by < 2e-4, so each bin's probability by < 4e-4
    assert float((exact.exp() - approx.exp()).abs().max()) < 4e-4


def test_discretized_likelihood_rejects_bad_data():
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        discretized_gaussian_log_likelihood(torch.tensor([0.0, 1.5]), 0.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        discretized_gaussian_log_likelihood(torch.tensor([0.0, float("nan")]), 0.0, 0.0)


def _marginal_miss(marginal_fn) -> tuple[float, float]:
    """The checks of notebook 03 §1 as functions of the formula under test: the largest miss of marginal_fn's (mean, cov)
    of y = Ax + b + ε against the y-part of the numerically inverted joint precision (relative to the largest entry), and
    against 200 000 Monte Carlo draws of y (in standard errors), over three shapes of (x, y)."""
    gen = torch.Generator().manual_seed(6)
    joint, mc = 0.0, 0.0
    for n, m in [(3, 2), (2, 4), (1, 1)]:
        mu, Lambda_inv, A, b, L_inv = linear_model(gen, n, m)
        mean, cov = marginal_fn(mu, Lambda_inv, A, b, L_inv)
        zmean, zcov = joint_from_precision(mu, Lambda_inv, A, b, L_inv)
        scale = float(zcov[n:, n:].abs().max())
        joint = max(joint, float((mean - zmean[n:]).abs().max()) / scale ** 0.5, float((cov - zcov[n:, n:]).abs().max()) / scale)
        N = 200_000
        x = mu + torch.randn(N, n, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(Lambda_inv).T
        y = x @ A.T + b + torch.randn(N, m, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(L_inv).T
        d = torch.diagonal(cov).clamp_min(1e-12)
        mc = max(mc, float(((y.mean(0) - mean).abs() / (d / N).sqrt()).max()),
                 float(((torch.cov(y.T).reshape(m, m) - cov).abs() / ((d[:, None] * d[None, :] + cov ** 2) / N).sqrt()).max()))
    return joint, mc


def _precisions_as_covariances(mu, Lambda_inv, A, b, L_inv):
    """L + AΛAᵀ: the precisions put where L⁻¹ + AΛ⁻¹Aᵀ has covariances (notebook 03 §1's study-note mistake)."""
    return A @ mu + b, torch.linalg.inv(L_inv) + A @ torch.linalg.inv(Lambda_inv) @ A.T


MARGINAL_MUTANTS = {
    "precisions as covariances": _precisions_as_covariances,
    "noise term left out": lambda mu, Lambda_inv, A, b, L_inv: (A @ mu + b, A @ Lambda_inv @ A.T),
    "noise precision L in place of L^-1": lambda mu, Lambda_inv, A, b, L_inv: (
        A @ mu + b, torch.linalg.inv(L_inv) + A @ Lambda_inv @ A.T),
    "mean without b": lambda mu, Lambda_inv, A, b, L_inv: (A @ mu, L_inv + A @ Lambda_inv @ A.T),
}


def test_marginal_checks_pass_for_the_library():
    joint, mc = _marginal_miss(linear_gaussian_marginal)
    assert joint < 1e-10 and mc <= Z


@pytest.mark.parametrize("name", MARGINAL_MUTANTS)
def test_marginal_checks_reject_wrong_formulas(name):
    joint, mc = _marginal_miss(MARGINAL_MUTANTS[name])
    assert joint > 1e-3 and mc > Z
