"""Exact-score lab: closed forms against autograd, scipy and Monte Carlo (notebook 04 §5)."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from ddimlab import schedule, toy
from ddimlab.diffusion import q_sample

AB = schedule.make_alpha_bar("linear", 1000)


@pytest.fixture(scope="module")
def mix():
    return toy.random_mixture(d=3, K=4, seed=1)


def test_log_prob_matches_scipy(mix):
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = np.log(sum(float(w) * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
                     for w, m, c in zip(mix.weights, mix.means, mix.covs)))
    np.testing.assert_allclose(mix.log_prob(x).numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("a", [0.999, 0.5, 0.01])
def test_eps_is_autograd_score_of_marginal(mix, a):
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_()
    pt = mix.marginal(a)                       # a separate mixture object with the covariances aΣ+(1−a)I
    (grad,) = torch.autograd.grad(pt.log_prob(x).sum(), x)
    torch.testing.assert_close(mix.eps(x.detach(), a), -math.sqrt(1 - a) * grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mix.score(x.detach(), a), grad, rtol=1e-10, atol=1e-12)


def test_per_sample_alpha_bar_matches_scalar(mix):
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = torch.tensor([0.9, 0.5, 0.1, 0.99, 1.0], dtype=torch.float64)
    rows = torch.cat([mix.eps(x[i:i + 1], float(a[i])) for i in range(5)])
    torch.testing.assert_close(mix.eps(x, a), rows, rtol=1e-12, atol=1e-14)
    assert bool((mix.eps(x, 1.0) == 0).all())        # clean data: nothing to predict


def _moments_close(x, mean, cov, n_se=5.0):
    n = x.shape[0]
    se_mean = (cov.diagonal() / n).sqrt()
    assert bool(((x.mean(0) - mean).abs() < n_se * se_mean).all()), (x.mean(0), mean)
    xc = x - mean
    emp = xc.T @ xc / n
    var_cov = ((xc[:, :, None] * xc[:, None, :] - cov) ** 2).mean(0) / n   # SE² of each covariance entry
    assert bool(((emp - cov).abs() < n_se * var_cov.sqrt()).all()), (emp, cov)


def _mixture_moments(m):
    mean = m.weights @ m.means
    second = (m.weights[:, None, None] * (m.covs + m.means[:, :, None] * m.means[:, None, :])).sum(0)
    return mean, second - torch.outer(mean, mean)


def test_sample_moments(mix):
    x = mix.sample(40000, torch.Generator().manual_seed(3))
    _moments_close(x, *_mixture_moments(mix))


@pytest.mark.parametrize("t", [50, 400, 900])
def test_marginal_matches_q_sample(mix, t):
    g = torch.Generator().manual_seed(4 + t)
    x0 = mix.sample(40000, g)
    a = float(AB[t])
    xt = q_sample(x0, a, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    _moments_close(xt, *_mixture_moments(mix.marginal(a)))


@pytest.mark.parametrize("t", [30, 300, 800])
def test_eps_is_conditional_mean_of_the_noise(mix, t):
    """ε*(x_t) = E[ε | x_t]: the residual ε − ε* is uncorrelated with every function of x_t, which is
    why denoising and explicit score matching differ by a constant (notebook 04 §5)."""
    g = torch.Generator().manual_seed(10 + t)
    n, a = 100_000, float(AB[t])
    eps = torch.randn(n, 3, generator=g, dtype=torch.float64)
    xt = q_sample(mix.sample(n, g), a, eps)
    e_star = mix.eps(xt, a)
    for h in (xt, e_star, torch.sin(3 * xt), torch.ones_like(xt)):
        d = ((eps - e_star) * h).sum(1)
        assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(n)
    # a wrong predictor fails the same test: the residual of 0.9 ε* correlates with ε*
    d = ((eps - 0.9 * e_star) * e_star).sum(1)
    assert abs(float(d.mean())) > 4 * float(d.std()) / math.sqrt(n)


def test_exact_eps_time_arguments(mix):
    eps = toy.exact_eps(mix, AB)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = mix.eps(x, float(AB[300]))
    for t in (300, torch.full((4,), 300), torch.full((4,), 300.0, dtype=torch.float64), 300.0):
        torch.testing.assert_close(eps(x, t), ref, rtol=0, atol=0)
    assert bool((eps(x, -1) == 0).all())
    # continuous t: log ᾱ linear between integer steps, so ᾱ(300.5) is the geometric mean
    a_mid = math.sqrt(float(AB[300]) * float(AB[301]))
    torch.testing.assert_close(eps(x, 300.5), mix.eps(x, a_mid), rtol=1e-12, atol=1e-14)
    assert eps(x.float(), 300).dtype == torch.float32


def test_named_mixtures():
    m2 = toy.eight_gaussians()
    assert (m2.K, m2.d) == (8, 2)
    x = m2.sample(2000, torch.Generator().manual_seed(6))
    assert float(x.abs().max()) < 1.5                       # roughly DDPM's [-1, 1] range
    md = toy.random_mixture(d=8, K=5, seed=3)
    assert (md.K, md.d) == (5, 8)
    torch.testing.assert_close(md.means, toy.random_mixture(d=8, K=5, seed=3).means)   # deterministic
    assert toy.default_mixture(2).K == 8 and toy.default_mixture(5).d == 5


def test_mmd_floor_and_resolution():
    m = toy.eight_gaussians()
    g = torch.Generator().manual_seed(7)
    exact = toy.mmd(m.sample(800, g), m, g)
    assert exact.floor > 0 and abs(exact.mmd2) < 4 * exact.floor and not exact.resolved(4)
    # a wrong distribution (components 73% wider) must stand far above the floor
    wide = toy.GaussianMixture(m.weights, m.means, 3.0 * m.covs)
    bad = toy.mmd(wide.sample(800, g), m, g)
    assert bad.resolved(5), bad


def test_errors():
    with pytest.raises(ValueError, match="shape \\(K,\\)"):
        toy.GaussianMixture(torch.ones(3), torch.zeros(2, 2), torch.eye(2).repeat(2, 1, 1))
    with pytest.raises(ValueError, match="positive definite"):
        toy.GaussianMixture(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None])
    with pytest.raises(ValueError, match="positive"):
        toy.GaussianMixture(-torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    m = toy.eight_gaussians()
    with pytest.raises(ValueError, match="shape \\(B, d\\)"):
        m.log_prob(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="\\(0, 1\\]"):
        m.marginal(0.0)
    with pytest.raises(ValueError, match="-1..T-1"):
        toy.exact_eps(m, AB)(torch.zeros(2, 2, dtype=torch.float64), 1000)
    with pytest.raises(ValueError, match="samples must have shape"):
        toy.mmd(torch.zeros(10, 3), m)
