"""Library functions added for the derivation notebooks (01–03): diffusion.q_sigma_forward."""
import math

import pytest
import torch

from ddimlab.diffusion import ddim_sigma, q_sample, q_sigma_forward, q_sigma_mean
from ddimlab.gaussian import linear_gaussian_posterior
from ddimlab.schedule import make_alpha_bar

AB = make_alpha_bar("linear", 1000)
f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


@pytest.mark.parametrize("t,s,eta", [(10, 9, 0.5), (500, 100, 1.0), (999, 0, 0.3), (300, 299, 0.0)])
def test_q_sigma_forward_is_bayes_of_the_reverse_kernel(t, s, eta):
    # q_σ(x_t | x_s, x0) ∝ q_σ(x_s | x_t, x0) q(x_t | x0): the linear-Gaussian posterior, computed independently
    a_t, a_s = float(AB[t]), float(AB[s])
    sigma = float(ddim_sigma(a_t, a_s, eta))
    x0, xs = 0.7, torch.tensor([[-1.2], [0.3], [2.0]], dtype=torch.float64)
    k = math.sqrt(1 - a_s - sigma ** 2) / math.sqrt(1 - a_t)
    m, v = linear_gaussian_posterior(f64([math.sqrt(a_t) * x0]), f64([[1 - a_t]]), f64([[k]]),
                                     f64([math.sqrt(a_s) * x0 - k * math.sqrt(a_t) * x0]), f64([[sigma ** 2]]), xs)
    mean, var = q_sigma_forward(xs, torch.full_like(xs, x0), a_t, a_s, sigma)
    assert torch.allclose(mean, m, rtol=1e-9, atol=1e-10)
    assert torch.allclose(torch.as_tensor(var).expand_as(mean), v[0, 0].expand_as(mean), rtol=1e-9, atol=1e-14)


def test_q_sigma_forward_ddpm_case_is_the_markov_kernel():
    # η = 1 consecutive steps: mean √(1−β) x_s regardless of x0, var β
    for t in [1, 50, 999]:
        a_t, a_s = float(AB[t]), float(AB[t - 1])
        xs = torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None]
        for x0 in [-3.0, 0.0, 1.0]:
            mean, var = q_sigma_forward(xs, torch.full_like(xs, x0), a_t, a_s, ddim_sigma(a_t, a_s, 1.0))
            assert torch.allclose(mean, math.sqrt(a_t / a_s) * xs, rtol=1e-9, atol=1e-12)
            assert abs(float(var) - (1 - a_t / a_s)) < 1e-12


def test_q_sigma_forward_chain_has_the_forward_marginals():
    # sample x_s ~ q(x_s|x0), then x_t ~ q_σ(x_t|x_s,x0): x_t must be N(√ᾱ_t x0, 1−ᾱ_t) (within 5 SE)
    g = torch.Generator().manual_seed(0)
    N, x0 = 100_000, 1.3
    for eta in [0.0, 0.4, 1.0]:
        a_t, a_s = float(AB[600]), float(AB[200])
        sigma = ddim_sigma(a_t, a_s, eta)
        xs = q_sample(torch.full((N, 1), x0, dtype=torch.float64), a_s, torch.randn(N, 1, generator=g, dtype=torch.float64))
        mean, var = q_sigma_forward(xs, torch.full_like(xs, x0), a_t, a_s, sigma)
        xt = mean + torch.as_tensor(var).sqrt() * torch.randn(N, 1, generator=g, dtype=torch.float64)
        v = 1 - a_t
        assert abs(float(xt.mean()) - math.sqrt(a_t) * x0) < 5 * math.sqrt(v / N)
        assert abs(float(xt.var()) - v) < 5 * v * math.sqrt(2 / (N - 1))


def test_q_sigma_forward_inverts_q_sigma_mean_when_deterministic():
    # σ = 0: the forward step is the inverse map of the deterministic reverse step
    a_t, a_s = float(AB[700]), float(AB[300])
    x0 = torch.tensor([[0.4], [-1.0]], dtype=torch.float64)
    xt = torch.tensor([[1.1], [0.2]], dtype=torch.float64)
    xs = q_sigma_mean(x0, xt, a_t, a_s, 0.0)
    mean, var = q_sigma_forward(xs, x0, a_t, a_s, 0.0)
    assert torch.allclose(mean, xt, rtol=1e-10, atol=1e-12) and float(var) == 0.0


def test_q_sigma_forward_rejects_bad_input():
    x = torch.zeros(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma"):
        q_sigma_forward(x, x, 0.5, 0.9, 0.5)          # σ² = 0.25 > 1 − ᾱ_s = 0.1
    with pytest.raises(ValueError, match="a_s < 1"):
        q_sigma_forward(x, x, 0.5, 1.0, 0.0)
