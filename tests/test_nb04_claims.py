"""The σ̂ claim of notebook 04 §3, on other jumps and draws: one step of DDPM's large-variance sampler
(`ddpm_sample(..., "large")`, the DDIM paper's σ̂ row) from x_t ~ q(x_t | x_0) leaves x_s with variance
Cov(x_s, x_t)²/Var(x_t) + β per coordinate (the law of total variance: DDPM's mean keeps the part of x_s that x_t
explains, and the step adds β = 1 − ᾱ_t/ᾱ_s), which exceeds the marginal's 1 − ᾱ_s. The same Monte Carlo test must
reject the small variance β̃ (η = 1's step, which keeps the marginal) and a σ̂ step whose variance is 1 − ᾱ_t, a
plausible slip for 1 − ᾱ_t/ᾱ_s: failing the marginal test alone would not tell σ̂ from either of those.

And §3's last step: DDPM's sampler adds no noise on its step into ᾱ = 1 (DDPM Alg. 2's z = 0), for either variance,
and neither does DDIM (σ = 0 there for every η). On Gaussian data that step's output is then exactly E[x_0 | x_1], known
by Gaussian conditioning; noise there would miss it by about √β_1 (a mutation sweep found this claim checked only by the
notebook's own Monte Carlo).

And §4's price of a long step: one step of eq. 12 with the exact ε* from x_t ~ q(x_t | x_0) drops the variance
κ² Cov[x_0 | x_t] of not knowing x_0, κ = √ᾱ_s − √(1 − ᾱ_s − σ²) √(ᾱ_t/(1 − ᾱ_t)) the coefficient of x_0 in eq. 12. Paired
with the same step taken with the true x_0 (a draw from q(x_s | x_0)) and the same noise, E|y|² − E|x_s|² is
−κ² tr Cov[x_0 | x_t] per x_t, the covariance from the exact posterior (Gaussian conditioning, not ε*); κ for κ², and
no price at all, must fail. Paired, η = 1 drops more than η = 0 on a long jump, by (κ_1² − κ_0²) tr Cov (§4, §6)."""
import math

import pytest
import torch

from ddimlab import diffusion, samplers, schedule, toy

AB = schedule.make_alpha_bar("linear", 1000)
N = 100_000


def _one_step(x0, t, s, variance, seed, step=None):
    """x_s after one step t -> s of ddpm_sample with ε = the true noise (so x̂_0 = x_0), or of `step` (x_t, noise, z)."""
    g = torch.Generator().manual_seed(seed)
    noise, z = (torch.randn(N, 2, generator=g, dtype=torch.float64) for _ in range(2))
    x_t = diffusion.q_sample(x0, float(AB[t]), noise)
    if step is not None:
        return step(x_t, noise, z)
    return samplers.ddpm_sample(lambda x, t_: noise, x_t, AB, variance, seq=torch.tensor([t, s]),
                                noise_sampler=lambda *_: z, return_trajectory=True)[1]["x"][1]


def _variance_z(x_s, a_t, a_s):
    """The largest |sample variance − Cov(x_s, x_t)²/(1 − ᾱ_t) − β| per coordinate, in standard errors."""
    predicted = (math.sqrt(a_t / a_s) * (1 - a_s)) ** 2 / (1 - a_t) + (1 - a_t / a_s)
    return float(((x_s.var(0) - predicted).abs() / (predicted * math.sqrt(2 / (N - 1)))).max())


@pytest.mark.parametrize("t,s,seed", [(600, 400, 1), (300, 100, 2), (500, 200, 3)])
def test_sigma_hat_step_has_the_law_of_total_variance_and_wrong_variances_fail(t, s, seed):
    a_t, a_s = float(AB[t]), float(AB[s])
    x0 = torch.tensor([[0.3, -0.5]], dtype=torch.float64).expand(N, 2)
    right = _one_step(x0, t, s, "large", seed)
    assert _variance_z(right, a_t, a_s) < 4
    assert float(right.var(0).min()) > (1 - a_s) * (1 + 0.05)      # more than the marginal has
    assert _variance_z(_one_step(x0, t, s, "small", seed), a_t, a_s) > 8
    slip = lambda x_t, noise, z: diffusion.posterior_mean(x0, x_t, a_t, a_s) + math.sqrt(1 - a_t) * z   # noqa: E731
    assert _variance_z(_one_step(x0, t, s, None, seed, slip), a_t, a_s) > 8


@pytest.mark.parametrize("run", ["large", "small", "eta=1", "eta=0.5"])
def test_the_last_step_returns_the_posterior_mean_without_noise(run):
    m, sd = torch.tensor([0.3, -0.6], dtype=torch.float64), torch.tensor([0.02, 0.5], dtype=torch.float64)
    data = toy.GaussianMixture(torch.ones(1), m[None], torch.diag(sd ** 2)[None])
    a1 = float(AB[0])
    g = torch.Generator().manual_seed(5)
    x1 = diffusion.q_sample(data.sample(2000, g), a1, torch.randn(2000, 2, generator=g, dtype=torch.float64))
    v = 1 / (1 / sd ** 2 + a1 / (1 - a1))                                   # Var[x_0 | x_1] per coordinate
    posterior_mean = v * (m / sd ** 2 + math.sqrt(a1) * x1 / (1 - a1))
    eps, seq, gen = toy.exact_eps(data, AB), torch.tensor([0]), torch.Generator().manual_seed(6)
    if run.startswith("eta"):
        y = samplers.ddim_sample(eps, x1, AB, seq, eta=float(run[4:]), generator=gen)
    else:
        y = samplers.ddpm_sample(eps, x1, AB, run, seq=seq, generator=gen)
    assert float((y - posterior_mean).abs().max()) < 1e-10


def _price(mix, t, s, etas, seed):
    """One step t -> s of eq. 12 with the exact ε*, against the same step with the true x_0 (a draw from q(x_s | x_0))
    and the same noise, from the same draws for every η: per η, E|y|² − E|x_s|² per x_t, κ and σ; and tr Cov[x_0 | x_t]
    per x_t from the exact posterior (Gaussian conditioning, not ε*)."""
    d = mix.means.shape[1]
    eps = toy.exact_eps(mix, AB)
    a_t, a_s = float(AB[t]), float(AB[s])
    g = torch.Generator().manual_seed(seed)
    x0 = mix.sample(N, g)
    noise, z = (torch.randn(N, d, generator=g, dtype=torch.float64) for _ in range(2))
    x_t = diffusion.q_sample(x0, a_t, noise)
    log_r, means, v = mix.reverse_kernel(x_t, a_t, 1.0)
    r = log_r.exp()
    centre = (r[:, :, None] * means).sum(1)
    tr_cov = (r * v.sum(1)).sum(1) + (r * (means - centre[:, None]).pow(2).sum(2)).sum(1)
    out = {}
    for eta in etas:
        sigma = float(diffusion.ddim_sigma(a_t, a_s, eta))
        kappa = math.sqrt(a_s) - math.sqrt(1 - a_s - sigma ** 2) * math.sqrt(a_t / (1 - a_t))
        y, _ = diffusion.ddim_step(x_t, eps(x_t, torch.full((N,), t)), a_t, a_s, eta, noise=z)
        x_s = diffusion.q_sigma_mean(x0, x_t, a_t, a_s, sigma) + sigma * z
        out[eta] = (y.pow(2).sum(1) - x_s.pow(2).sum(1), kappa, sigma)
    return out, tr_cov


def _off(diff, pred):
    """|mean of diff − pred| in standard errors."""
    d = diff - pred
    return float(d.mean().abs() / (d.std() / math.sqrt(N)))


@pytest.mark.parametrize("t,s,eta,seed", [(700, 450, 0.0, 1), (400, 250, 1.0, 2), (400, 250, 0.5, 3)])
def test_a_long_step_with_the_exact_eps_drops_kappa_squared_times_the_posterior_covariance(t, s, eta, seed):
    mix = toy.random_mixture(d=3, K=4, seed=5)                 # not the notebook's ring: another mixture, other jumps
    out, tr_cov = _price(mix, t, s, (eta,), seed)
    diff, kappa, _ = out[eta]
    assert _off(diff, -kappa ** 2 * tr_cov) < 4
    assert _off(diff, -kappa * tr_cov) > 10                    # κ in place of κ²
    assert _off(diff, torch.zeros(N, dtype=torch.float64)) > 10   # "the exact eps* makes the step exact"


@pytest.mark.parametrize("t,s,seed", [(700, 600, 4), (400, 300, 5), (500, 400, 6)])
def test_on_a_long_jump_eta_1_drops_more_than_eta_0_by_the_difference_of_the_kappas_squared(t, s, seed):
    """Notebook 04 §4 and §6: paired over the same draws, η = 1 drops more of E|x_s|² than η = 0 on a jump of S = 10
    uniform steps, by (κ_1² − κ_0²) tr Cov[x_0 | x_t] (κ grows with σ); κ_1 − κ_0 in place of κ_1² − κ_0² must fail."""
    mix = toy.random_mixture(d=3, K=4, seed=5)
    out, tr_cov = _price(mix, t, s, (0.0, 1.0), seed)
    (d0, k0, _), (d1, k1, _) = out[0.0], out[1.0]
    d = d1 - d0
    assert float(d.mean()) < -5 * float(d.std()) / math.sqrt(N)
    assert _off(d, -(k1 ** 2 - k0 ** 2) * tr_cov) < 4
    assert _off(d, -(k1 - k0) * tr_cov) > 10
