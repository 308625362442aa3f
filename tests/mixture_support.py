"""A test-side reference for 1-D Gaussian mixtures, written with scipy only (never the library): the posterior
p(x_0 | x_t) of Σ_k W_k N(MU_k, SD_k²) noised to ᾱ = a (notebook 11 §1's edits, tests/test_guidance.py and
tests/test_nb11_claims.py)."""
import math

import numpy as np
from scipy import stats


def posterior_components(x: float, a: float, W, MU, SD):
    """p(x_0 | x_t = x) as a mixture: each component's weight (its prior weight times its noised density
    N(x; √a MU_k, a SD_k² + 1 − a), normalised), mean and standard deviation by Gaussian conditioning."""
    v = a * SD ** 2 + 1 - a
    lik = W * stats.norm.pdf(x, math.sqrt(a) * MU, np.sqrt(v))
    return lik / lik.sum(), MU + math.sqrt(a) * SD ** 2 * (x - math.sqrt(a) * MU) / v, np.sqrt(SD ** 2 * (1 - a) / v)
