"""The claims of notebook 01 computed again by other routes: §3's ᾱ_t → 0 iff Σβ = ∞ on two infinite products known in
closed form (exact central binomials here, where the notebook uses lgamma), §3's schedule table from NumPy's own
products, and the data-scale identity of §5 on random data run through the chain step by step (the notebook uses
q_sample on the digits). Each closed form is also shown rejecting the plausible wrong one the notebook names."""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import special, stats

from ddimlab.diffusion import q_step
from ddimlab.schedule import alpha_bar, beta_schedule, snr

F64 = torch.float64
N_STEPS = 10 ** 6
S = torch.arange(1, N_STEPS + 1, dtype=F64)


def _reaches(a_t: float, limit: float) -> bool:
    """ᾱ_t − ᾱ_∞ ∈ [0, ᾱ_t / t]: the factors after t lie in [exp(−Σ_{s>t} β/(1−β)), 1] and that sum is below 1/t."""
    return 0 <= a_t - limit <= a_t / N_STEPS


def test_summable_beta_keeps_eulers_product_of_the_signal_and_not_exp_minus_sum_beta():
    """β_s = 1/(2s²): ∏(1 − x²/s²) = sin(πx)/(πx) at x = 1/√2 is 0.358; exp(−Σβ) = exp(−π²/12) = 0.439 is rejected."""
    a_end = float(alpha_bar(1 / (2 * S ** 2))[-1])
    x = 1 / math.sqrt(2)
    assert _reaches(a_end, math.sin(math.pi * x) / (math.pi * x))
    assert not _reaches(a_end, math.exp(-math.pi ** 2 / 12))


def test_divergent_beta_is_the_central_binomial_and_goes_to_zero():
    """β_s = 1/(2s): ∏_{s≤t}(2s−1)/(2s) = C(2t, t)/4^t exactly (to 1e-8 at t = 10^6, from scipy's gammaln); the product
    one factor short, C(2t−2, t−1)/4^(t−1) = ᾱ_{t−1}, misses by the factor 1 − 1/(2t), which rtol 1e-8 still sees."""
    a = alpha_bar(1 / (2 * S))

    def central(t):
        if t <= 1000:
            return float(Fraction(math.comb(2 * t, t), 4 ** t))
        return math.exp(special.gammaln(2 * t + 1) - 2 * special.gammaln(t + 1) - t * math.log(4))

    for t in (1, 10, 1000, N_STEPS):
        assert float(a[t - 1]) == pytest.approx(central(t), rel=1e-8)
        assert float(a[t - 1]) != pytest.approx(central(t - 1) if t > 1 else 1.0, rel=1e-8)
    assert float(a[-1]) < 1e-3 and float(a[-1]) == pytest.approx(1 / math.sqrt(math.pi * N_STEPS), rel=1e-6)


def _schedules_np(T=1000):
    """ᾱ_t for t = 1..T from the papers' definitions in NumPy: linear and quadratic (√β linear) between 1e-4 and 0.02,
    cosine f(t)/f(0) with s = 0.008 (its last step clipped at β = 0.999 is outside t = 201..800)."""
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    return {"linear": np.cumprod(1 - np.linspace(1e-4, 0.02, T)),
            "quadratic": np.cumprod(1 - np.linspace(1e-2, math.sqrt(0.02), T) ** 2),
            "cosine": f[1:] / f[0]}


def test_cosine_alpha_bar_is_nearly_straight_in_the_middle_and_log_snr_of_all_three_is():
    """Notebook 01 §3: over t = 201..800 the cosine ᾱ_t stays within 0.05 of its least-squares line (linear and quadratic
    do not: more than 0.1), and log SNR(t) of all three within 6% of its fall there."""
    t = np.arange(201, 801)

    def off_line(y):
        y = y[200:800]
        return np.abs(y - np.polyval(np.polyfit(t, y, 1), t)).max(), y.max() - y.min()

    abars = _schedules_np()
    dev = {n: off_line(a)[0] for n, a in abars.items()}
    assert dev["cosine"] < 0.05 and min(dev["linear"], dev["quadratic"]) > 0.1
    for a in abars.values():
        d, fall = off_line(np.log(a / (1 - a)))
        assert d < 0.06 * fall


@pytest.mark.parametrize("c, t", [(255.0, 1000), (0.5, 259), (0.18215, 100)])
def test_data_times_c_is_the_same_data_at_snr_times_c_squared(c, t):
    """Notebook 01 §5: x_t of data c·y, divided by s_t = √(c²ᾱ_t + 1 − ᾱ_t), is y noised at ᾱ' with
    ᾱ'/(1−ᾱ') = c² SNR(t). Random y in [0, 1], run through the chain with q_step; standardised with that ᾱ', the values
    pass a KS test against scipy's N(0, 1); with SNR' = c·SNR(t), or the SNR left as it is, they fail it."""
    gen = torch.Generator().manual_seed(3)
    betas = beta_schedule("linear", 1000)
    a_t = float(alpha_bar(betas)[t - 1])
    y = torch.rand(500, 64, generator=gen, dtype=F64)
    x = c * y
    for k in range(t):
        x = q_step(x, betas[k], torch.randn(x.shape, generator=gen, dtype=F64))
    x = x / math.sqrt(c ** 2 * a_t + 1 - a_t)

    def p_value(snr_new):
        a_new = snr_new / (1 + snr_new)
        return stats.kstest(((x - math.sqrt(a_new) * y) / math.sqrt(1 - a_new)).flatten().numpy(), stats.norm.cdf).pvalue

    snr_t = float(snr(a_t))
    assert p_value(c ** 2 * snr_t) > 1e-3
    assert max(p_value(c * snr_t), p_value(snr_t)) < 1e-6


def test_prior_term_of_ddpm_schedule_is_about_1e_5_bits_per_dimension_on_8_bit_pixels():
    """Notebook 01 §3 (DDPM §4: L_T = KL(q(x_T | x_0) ‖ N(0, I)) ≈ 1e-5 bits per dimension for data in [−1, 1]). Here on the
    256 levels of an 8-bit pixel scaled to [−1, 1], weighted equally (the notebook uses the digits' own levels and weights):
    `elbo.prior_kl` at each level against scipy's quad_vec of q log(q/p) with scipy's normal log-densities, and the
    average within a factor 3 of 1e-5 bits (9.8e-6). L_T with the mean ᾱ_T x_0 in place of √ᾱ_T x_0 fails both."""
    from scipy.integrate import quad_vec

    from ddimlab.elbo import prior_kl

    ab = alpha_bar(beta_schedule("linear", 1000))
    a_T = float(ab[-1])
    levels = torch.arange(256, dtype=F64) / 127.5 - 1

    def numeric(mean_coef):
        m = mean_coef * levels.numpy()

        def integrand(x):
            log_q = stats.norm.logpdf(x, m, math.sqrt(1 - a_T))
            return np.exp(log_q) * (log_q - stats.norm.logpdf(x))
        return quad_vec(integrand, -12, 12, epsabs=0, epsrel=1e-11)[0]

    L_lib, L_num = prior_kl(levels[:, None], ab).numpy(), numeric(math.sqrt(a_T))
    np.testing.assert_allclose(L_lib, L_num, rtol=1e-6)
    bits = float(L_lib.mean()) / math.log(2)
    assert 1e-5 / 3 < bits < 3e-5
    L_wrong = 0.5 * (a_T ** 2 * levels.numpy() ** 2 - a_T - math.log1p(-a_T))     # the mean a_T x0, no square root
    assert not np.allclose(L_wrong, L_num, rtol=1e-6)
    assert not 1e-5 / 3 < float(L_wrong.mean()) / math.log(2) < 3e-5
    np.testing.assert_allclose(numeric(a_T), L_wrong, rtol=1e-6)        # the integral itself tells the two means apart
