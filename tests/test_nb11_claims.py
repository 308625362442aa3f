"""Claims of notebook 11 (editing) added in its learner's question on `strength` as a noise level, checked again on other
data, each with the wrong formula that must fail: eta = 1 edits keep of the input what posterior draws keep (their mean
distance to it against the folded normal's mean averaged over the posterior by quadrature; a fresh draw of p(x), the input
forgotten, must miss while the input still counts), and strength's t0 is a different SNR on the cosine schedule (its ᾱ
against diffusers' `squaredcos_cap_v2`; "strength as a share of the noise", ᾱ = 1 − strength, misses the linear schedule's)."""
import math

import numpy as np
import pytest
import torch
from mixture_support import posterior_components
from scipy import integrate, stats

from ddimlab import samplers, schedule, toy

AB = schedule.make_alpha_bar("linear", 1000)
# other data than the notebook's mixture, and another input
W, MU, SD = np.array([0.4, 0.3, 0.3]), np.array([-0.8, 0.6, 1.7]), np.array([0.25, 0.15, 0.3])
X_IN = 1.0


def _folded(mu, s):              # E|N(mu, s²)|
    return s * math.sqrt(2 / math.pi) * np.exp(-mu ** 2 / (2 * s ** 2)) + mu * (1 - 2 * stats.norm.cdf(-mu / s))


def _posterior_distance(a):
    """E|x_0 − X_IN| for x_0 ~ p(x_0 | x_t), x_t = √a X_IN + √(1−a) z, averaged over z by quadrature (scipy only)."""
    def f(z):
        r, m, s = posterior_components(math.sqrt(a) * X_IN + math.sqrt(1 - a) * z, a, W, MU, SD)
        return stats.norm.pdf(z) * float(np.sum(r * _folded(m - X_IN, s)))
    return integrate.quad(f, -9, 9, limit=200)[0]


def test_eta1_edits_keep_of_the_input_what_posterior_draws_keep():
    """notebook 11 §1, strength as a noise level: at t0 = 150 and 350 the eta = 1 edits' mean distance to the input is the
    posterior's (within 3 SE); a fresh draw of p(x) misses it by more than 5 SE; at t0 = 800 the input is forgotten
    (the fresh draw's within 3 SE)."""
    eps = toy.exact_eps(toy.GaussianMixture(torch.tensor(W), torch.tensor(MU)[:, None], torch.tensor(SD ** 2)[:, None, None]), AB)
    fresh = float(np.sum(W * _folded(MU - X_IN, SD)))
    for t0, seed in ((150, 21), (350, 22), (800, 23)):
        x0 = samplers.sdedit(eps, torch.full((60_000, 1), X_IN, dtype=torch.float64), AB, torch.arange(t0, -1, -1), eta=1.0,
                             generator=torch.Generator().manual_seed(seed))[:, 0].numpy()
        d = np.abs(x0 - X_IN)
        se = d.std(ddof=1) / math.sqrt(len(d))
        exact = _posterior_distance(float(AB[t0]))
        assert abs(d.mean() - exact) < 3 * se, (t0, d.mean(), exact, se)
        if t0 < 800:
            assert abs(d.mean() - fresh) > 5 * se, (t0, d.mean(), fresh, se)      # the wrong formula must fail
        else:
            assert abs(d.mean() - fresh) < 3 * se, (t0, d.mean(), fresh, se)


def test_strength_is_a_different_snr_on_the_cosine_schedule():
    """notebook 11 §1: with 50 'linspace' steps strength 0.3, 0.5 and 0.75 start at t0 = 285, 489 and 734, where the cosine
    schedule's ᾱ (ddimlab's, equal to diffusers' squaredcos_cap_v2 to float32's precision) gives an SNR over 5 times the
    linear schedule's; ᾱ = 1 − strength, the reading 'a share of the noise', is off on the linear schedule by more than
    0.2 (on the cosine schedule, nearly linear in ᾱ mid-way, it is off by 0.01 to 0.1 only)."""
    diffusers = pytest.importorskip("diffusers")
    cos = schedule.make_alpha_bar("cosine", 1000)
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    snr = lambda a: a / (1 - a)                                              # noqa: E731
    for strength, t0 in ((0.3, 285), (0.5, 489), (0.75, 734)):
        seq = schedule.timesteps(50, 1000, "linspace")[50 - int(50 * strength):]
        assert int(seq[0]) == t0
        assert abs(float(cos[t0]) - float(ref[t0])) < 1e-6 * max(1.0, float(ref[t0])) + 1e-7
        assert snr(float(cos[t0])) > 5 * snr(float(AB[t0])), (strength, float(cos[t0]), float(AB[t0]))
        assert abs(float(AB[t0]) - (1 - strength)) > 0.2                 # the wrong reading, on the linear schedule
