"""The claims of notebook 02 that its own checks cannot resolve, computed again by other routes.

§7: `l_simple` draws its steps t uniformly from 0..T−1 (DDPM Algorithm 1, with ddimlab's 0-based steps). The notebook's
check of L_simple's value at ε* averages over t, and one step left out moves that average by (C_0 − E_t C_t)/(T − 1),
under one standard error at 200 000 draws: a draw from 1..T−1 passed it. Here the steps are read off the model's calls
on other data (a 2-D Gaussian, another seed), and their counts tested against uniform with scipy's chi-square test and
at both ends; the same test on the off-by-one draws themselves fails. And the x_t that `l_simple` passes to the model
is noised to that same step's level: tests/test_elbo.py's closed-form check of the loss cannot see x_t drawn one step
late (0.0 SE), the moments of x_t at a fixed small step can."""
import math

import torch
from scipy.stats import chisquare

from ddimlab.elbo import l_simple
from ddimlab.schedule import make_alpha_bar

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
