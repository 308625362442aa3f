"""The claims of notebook 03 §7 (b) and its learner's question, computed again without its Gauss–Hermite nodes or its
unit-input reading of `ddim_sample`: a linear ε_θ(x) = w x + b fitted by the exact normal equations of each weighting
(moments of x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε in closed form), and the law of x_0 under DDIM or DDPM propagated as a
Gaussian step by step (DDIM eq. 12 is affine in x_t and z when ε_θ is linear). And §9 (e): the total variation
distance of the implicit model's density to the data, by events in z, is half the L¹ distance between the densities."""
import math

import numpy as np
import torch

from ddimlab import samplers
from ddimlab.diffusion import ddim_sigma
from ddimlab.schedule import alpha_bar, beta_schedule

T10 = 10
AB10 = alpha_bar(beta_schedule("linear", T10, beta_start=0.05, beta_end=0.6))     # AB10[t-1] = paper's ᾱ_t
M, S = 0.3, 0.5                                                                      # data N(M, S²)


def _ab(t):                                   # paper's ᾱ_t, t = 0..T (ᾱ_0 = 1)
    return 1.0 if t == 0 else float(AB10[t - 1])


def _weights(eta):
    """γ_t of J_σ (notebook 03 §7): c_t²(1−ᾱ_t)/(2σ_t²ᾱ_t) for t ≥ 2 with σ_t = σ(η), and the decoder's
    (1−ᾱ_1)/(2σ_1²ᾱ_1) with σ_1² = β_1; None is L_simple (γ_t = 1)."""
    if eta is None:
        return [1.0] * T10
    gam = [(1 - _ab(1)) / (2 * (1 - _ab(1)) * _ab(1))]
    for t in range(2, T10 + 1):
        a_t, a_s = _ab(t), _ab(t - 1)
        sg = float(ddim_sigma(a_t, a_s, eta))
        c = math.sqrt(a_s) - math.sqrt(1 - a_s - sg ** 2) * math.sqrt(a_t) / math.sqrt(1 - a_t)
        gam.append(c ** 2 * (1 - a_t) / (2 * sg ** 2 * a_t))
    return gam


def _shared_fit(gam):
    """argmin over (w, b) of Σ_t γ_t E(ε − w x_t − b)², from E x_t = √ᾱ_t M, E x_t² = ᾱ_t(M²+S²) + 1−ᾱ_t, E ε x_t = √(1−ᾱ_t)."""
    lhs, rhs = np.zeros((2, 2)), np.zeros(2)
    for t, g in zip(range(1, T10 + 1), gam):
        a = _ab(t)
        ex, ex2 = math.sqrt(a) * M, a * (M ** 2 + S ** 2) + 1 - a
        lhs += g * np.array([[ex2, ex], [ex, 1.0]])
        rhs += g * np.array([math.sqrt(1 - a), 0.0])
    return [tuple(np.linalg.solve(lhs, rhs))] * T10


def _per_step():
    """ε*(x_t) = w*_t (x_t − √ᾱ_t M) for Gaussian data: the per-step minimiser under any weighting."""
    out = []
    for t in range(1, T10 + 1):
        a = _ab(t)
        w = math.sqrt(1 - a) / (a * S ** 2 + 1 - a)
        out.append((w, -w * math.sqrt(a) * M))
    return out


def _step(wb, eta, t):
    """(A, B, σ) of eq. 12's step t → t−1 with ε_θ^(t)(x) = w_t x + b_t: x_{t−1} = A x_t + B + σ z, σ = η √β̃_t (eq. 16)."""
    a_t, a_s = _ab(t), _ab(t - 1)
    w, b = wb[t - 1]
    sg = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
    k = math.sqrt(max(1 - a_s - sg ** 2, 0.0))
    A = math.sqrt(a_s) * (1 - math.sqrt(1 - a_t) * w) / math.sqrt(a_t) + k * w
    B = (k - math.sqrt(a_s) * math.sqrt(1 - a_t) / math.sqrt(a_t)) * b
    return A, B, sg


def _law(wb, eta):
    """(mean, sd) of x_0 from x_T ~ N(0, 1) through all 10 steps, eq. 12 with ε_θ^(t)(x) = w_t x + b_t."""
    mean, var = 0.0, 1.0
    for t in range(T10, 0, -1):
        A, B, sg = _step(wb, eta, t)
        mean, var = A * mean + B, A ** 2 * var + sg ** 2
    return mean, math.sqrt(var)


def _w2(p, q):
    return math.hypot(p[0] - q[0], p[1] - q[1])


def test_the_moment_recursion_is_what_ddim_sample_does():
    """The recursion against the library's sampler on x_T = 0 and 1 (DDIM is affine in x_T)."""
    wb = _shared_fit(_weights(None))
    x_T = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    out = samplers.ddim_sample(lambda x, t: wb[0][0] * x + wb[0][1], x_T, AB10, torch.arange(T10 - 1, -1, -1))[:, 0]
    mean, sd = _law(wb, 0.0)
    assert abs(float(out[0]) - mean) < 1e-12 and abs(float(out[1] - out[0]) - sd) < 1e-12


def test_the_step_recursion_is_what_ddim_sample_does_with_noise():
    """The same recursion with η = 1 (DDPM) and η = 0.5, driven by the noise the sampler draws, against `ddim_sample`
    step by step: notebook 03 reads the law of DDPM's samples off the sampler itself (unit inputs, checked against its
    own Monte Carlo), so a wrong noise term there (σ² z for σ z) passed; here the noise enters through eq. 12 written out."""
    gen = torch.Generator().manual_seed(7)
    z = {t: torch.randn(4, 1, generator=gen, dtype=torch.float64) for t in range(T10)}      # library step t = paper's t + 1
    x_T = torch.randn(4, 1, generator=gen, dtype=torch.float64)
    for eta in (0.5, 1.0):
        wb = _shared_fit(_weights(eta))
        out = samplers.ddim_sample(lambda x, t: wb[0][0] * x + wb[0][1], x_T, AB10, torch.arange(T10 - 1, -1, -1), eta=eta,
                                   noise_sampler=lambda t, s: z[t])
        x = x_T.clone()
        for t in range(T10, 0, -1):
            A, B, sg = _step(wb, eta, t)
            x = A * x + B + sg * z[t - 1]
        assert float((out - x).abs().max()) < 1e-12


def test_nb03_weighting_claims():
    """Notebook 03 §7 (b) and the learner's question: per-step parameters reach ε* under every weighting (exactly, by
    construction here); one shared (w, b) moves with the weights; DDPM's own weighting (J_σ at η = 1) gives the shared
    fit whose samples lie nearest the data under both DDIM and DDPM, and under DDIM nearer than ε*'s own; the weightings'
    samples differ by less than the 10 steps cost with ε*, and under DDPM by less than any shared fit differs from ε*."""
    fits = {name: _shared_fit(_weights(eta)) for name, eta in (("L_simple", None), ("eta 0.5", 0.5), ("eta 1", 1.0))}
    assert max(abs(fits[a][0][0] - fits[b][0][0]) for a in fits for b in fits) > 1e-3
    for eta in (0.0, 1.0):
        star = _law(_per_step(), eta)
        laws = {k: _law(v, eta) for k, v in fits.items()}
        to_data = {k: _w2(p, (M, S)) for k, p in laws.items()}
        spread = max(_w2(p, q) for p in laws.values() for q in laws.values())
        assert min(to_data, key=to_data.get) == "eta 1"
        assert 1e-3 < spread < _w2(star, (M, S))
        if eta == 0.0:
            assert to_data["eta 1"] < _w2(star, (M, S))
        else:
            assert spread < min(_w2(p, star) for p in laws.values())


def test_without_x0_the_q_sigma_process_is_not_markov_unless_eta_is_1():
    """Notebook 03 §6: the x_t alone (x_0 integrated out) are not a Markov chain for η < 1. On other data than the
    notebook's (x_0 = ±1) and other steps: chains x_20 → x_19 → x_18 drawn with the library's q_σ mean, and the
    partial correlation of x_20 and x_18 given x_19 (0 for a Markov chain) against its exact value, which depends only
    on second moments: the covariance of (x_20, x_19, x_18) written out here from DDIM eq. 7 (x_s = c x_0 + k x_t + σ z,
    k = √(1−ᾱ_s−σ²)/√(1−ᾱ_t), c = √ᾱ_s − k √ᾱ_t). η = 0, 0.3, 0.7 give −1, −0.19, −0.03 (each > 5 SE from 0), η = 1 0."""
    from ddimlab.diffusion import q_sample, q_sigma_mean
    from ddimlab.schedule import make_alpha_bar
    ab, n = make_alpha_bar("linear", 1000), 100_000
    g = torch.Generator().manual_seed(41)

    def partial(c):                            # of entries 0 and 2 given 1, from a covariance (singular at η = 0 too)
        r = c[0, 2] - c[0, 1] * c[1, 2] / c[1, 1]
        return r / math.sqrt((c[0, 0] - c[0, 1] ** 2 / c[1, 1]) * (c[2, 2] - c[1, 2] ** 2 / c[1, 1]))

    for eta in (0.0, 0.3, 0.7, 1.0):
        x0 = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
        xs = [q_sample(x0, float(ab[20]), torch.randn(n, generator=g, dtype=torch.float64))]
        rows = [np.array([math.sqrt(float(ab[20])), math.sqrt(1 - float(ab[20])), 0.0, 0.0])]   # on x_0, ε, z_1, z_2
        for i, t in enumerate((20, 19)):
            a_t, a_s = float(ab[t]), float(ab[t - 1])
            sg = float(ddim_sigma(a_t, a_s, eta))
            xs.append(q_sigma_mean(x0, xs[-1], a_t, a_s, sg) + sg * torch.randn(n, generator=g, dtype=torch.float64))
            k = math.sqrt(1 - a_s - sg ** 2) / math.sqrt(1 - a_t)
            row = k * rows[-1]
            row[0] += math.sqrt(a_s) - k * math.sqrt(a_t)
            row[2 + i] += sg
            rows.append(row)
        exact = partial(np.array(rows) @ np.array(rows).T)          # x_0 (variance 1), ε, z_1, z_2 uncorrelated
        mc = partial(np.cov(torch.stack(xs).numpy()))
        se = (1 - exact ** 2) / math.sqrt(n - 3)
        assert abs(mc - exact) <= 4 * se + 1e-6, (eta, mc, exact, se)
        if eta == 1.0:
            assert abs(exact) < 1e-9, exact
        else:
            assert abs(exact) > 5 * se and abs(mc) > 5 * se, (eta, exact, mc, se)


def test_implicit_model_total_variation_is_half_the_l1_distance_by_events_in_z():
    """Notebook 03 §9 (e), computed in z instead of x: the total variation distance between p_G (DDIM, η = 0, as an
    implicit model x_0 = G(z)) and the data is sup_A P_G(A) − P_data(A), reached at A = {p_G > p_data}. In z, A is
    {h > 0} with h(z) = φ(z) − p_data(G(z)) G'(z) (same sign, G' > 0; G' by central differences); its intervals' ends
    come from a grid of 1201 z in [−6, 6] by linear interpolation, then P_G(A) is Φ at the ends (exact) and P_data(A)
    the data's cdf at G of the ends (the sampler run at the ends, no interpolated G⁻¹). Scheffé's identity: this equals
    half the L¹ distance ∫|p_G − p_data| over the whole line (∫|h| dz plus the data's mass beyond G(±6)); the notebook's
    printed P_G(A) − P_data(A) lies within its printed tolerance of it. Two wrong readings of "L¹" must miss it by more
    than 5 tolerances: the L¹ itself (no ½) and the L¹ between the cdfs, ∫|F_G − F_data| dx (Wasserstein-1)."""
    from scipy.stats import norm

    from ddimlab import toy
    from ddimlab.schedule import make_alpha_bar, timesteps

    ab = make_alpha_bar("linear", 1000)
    mix = toy.GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-0.6], [0.5]]), torch.tensor([[[0.04]], [[0.09]]]))
    eps = toy.exact_eps(mix, ab)
    comps = [(float(w), float(m[0]), math.sqrt(float(c[0, 0]))) for w, m, c in zip(mix.weights, mix.means, mix.covs)]
    pdf = lambda x: sum(w * norm.pdf(x, m, s) for w, m, s in comps)          # noqa: E731
    cdf = lambda x: sum(w * norm.cdf(x, m, s) for w, m, s in comps)          # noqa: E731
    notebook = {10: (0.16275, 1.39e-3), 50: (0.03082, 9.48e-5), 250: (0.00652, 2.91e-4)}   # printed TV by events, tolerance
    z, dz = np.linspace(-6, 6, 1201), 1e-4
    for S, (printed, tol) in notebook.items():
        G = lambda zz: samplers.ddim_sample(eps, torch.tensor(zz, dtype=torch.float64)[:, None], ab,   # noqa: E731
                                            timesteps(S, 1000), eta=0.0)[:, 0].numpy()
        g0, gp, gm = np.split(G(np.concatenate([z, z + dz, z - dz])), 3)
        g1 = (gp - gm) / (2 * dz)
        h = norm.pdf(z) - pdf(g0) * g1
        i = np.flatnonzero(np.diff(np.sign(h)) != 0)
        ends = np.concatenate([z[:1] if h[0] > 0 else [], z[i] - h[i] * (z[i + 1] - z[i]) / (h[i + 1] - h[i]),
                               z[-1:] if h[-1] > 0 else []])
        G_ends = G(ends)
        tv = float((norm.cdf(ends[1::2]) - norm.cdf(ends[0::2])).sum() - (cdf(G_ends[1::2]) - cdf(G_ends[0::2])).sum())
        l1 = float(np.trapezoid(np.abs(h), z)) + cdf(g0[0]) + 1 - cdf(g0[-1])     # the data beyond G(±6): p_G < 1e-8 there
        w1 = float(np.trapezoid(np.abs(norm.cdf(z) - cdf(g0)) * g1, z))
        assert abs(tv - l1 / 2) < 2e-5, (S, tv, l1)
        assert abs(printed - tv) <= tol, (S, printed, tv)
        assert abs(l1 - tv) > 5 * tol and abs(w1 - tv) > 5 * tol, (S, l1, w1, tv)
