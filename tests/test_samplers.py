"""Samplers on the exact-score lab (notebook 04)."""
import math
import warnings

import numpy as np
import pytest
import torch

from ddimlab import samplers, schedule, toy

AB = schedule.make_alpha_bar("linear", 1000)
MIX = toy.eight_gaussians()
EPS = toy.exact_eps(MIX, AB)


def _xT(n=8, seed=0, d=2):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ddim_eta1_on_all_steps_is_ddpm_small_variance():
    """DDIM eq. 12 with η = 1 on consecutive steps is DDPM's ancestral step with β̃ (DDIM §4.1)."""
    x_T = _xT(6, seed=1)
    full = torch.arange(999, -1, -1)
    a = samplers.ddim_sample(EPS, x_T, AB, full, eta=1.0, generator=torch.Generator().manual_seed(2))
    b = samplers.ddpm_sample(EPS, x_T, AB, "small", generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    assert float((a - samplers.ddim_sample(EPS, x_T, AB, full)).abs().max()) > 1e-2   # the noise mattered


def test_trajectory_and_final_step():
    x_T = _xT()
    seq = schedule.timesteps(10, 1000, "uniform")
    x0, tr = samplers.ddim_sample(EPS, x_T, AB, seq, return_trajectory=True)
    assert len(tr["x"]) == len(tr["t"]) == 11 and len(tr["x0"]) == 10
    assert tr["t"][0] == 900 and tr["t"][-1] == -1 and torch.equal(tr["x"][0], x_T)
    torch.testing.assert_close(tr["x"][-1], x0)
    torch.testing.assert_close(x0, tr["x0"][-1], rtol=0, atol=0)    # the step to ᾱ = 1 returns x̂_0
    far = 5 * x_T                                                      # x̂_0 far outside [-1, 1] early on
    _, tr = samplers.ddim_sample(EPS, far, AB, seq, clip_x0=True, return_trajectory=True)
    assert all(float(x.abs().max()) <= 1 for x in tr["x0"])


def test_eta_zero_is_deterministic_and_ignores_generator():
    x_T, seq = _xT(), schedule.timesteps(20, 1000, "quad")
    g = torch.Generator().manual_seed(3)
    a = samplers.ddim_sample(EPS, x_T, AB, seq, generator=g)
    assert torch.equal(a, samplers.ddim_sample(EPS, x_T, AB, seq))
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(3).get_state())


def test_inversion_round_trip_error_shrinks_with_S():
    x0 = MIX.sample(16, torch.Generator().manual_seed(4))
    errs = []
    for S in (10, 50, 250):
        seq = schedule.timesteps(S, 1000, "uniform")
        errs.append(float((samplers.reconstruct(EPS, x0, AB, seq) - x0).abs().max()))
    assert errs[0] > errs[1] > errs[2], errs
    # first order: 25× more steps should buy more than a 5× smaller error
    assert errs[2] < errs[0] / 5, errs
    x_T, tr = samplers.ddim_invert(EPS, x0, AB, schedule.timesteps(50, 1000), return_trajectory=True)
    assert tr["t"][0] == -1 and tr["t"][-1] == 980 and torch.equal(tr["x"][-1], x_T)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_reaches_data_distribution(variance):
    """With all T steps DDPM samples the data distribution up to the metric's noise floor."""
    g = torch.Generator().manual_seed(5)
    x = samplers.ddpm_sample(EPS, _xT(800, seed=6), AB, variance, generator=g)
    res = toy.mmd(x, MIX, g)
    assert not res.resolved(4), res


def test_ddim_eta1_many_steps_reaches_data_but_sigma_hat_few_steps_does_not():
    g = torch.Generator().manual_seed(7)
    good = samplers.ddim_sample(EPS, _xT(800, seed=8), AB, schedule.timesteps(200, 1000), eta=1.0, generator=g)
    assert not toy.mmd(good, MIX, g).resolved(4)
    # DDIM Table 1: σ̂ with S = 10 is the worst sampler by far; the metric must see it
    bad = samplers.ddpm_sample(EPS, _xT(800, seed=8), AB, "large", seq=schedule.timesteps(10, 1000), generator=g)
    assert toy.mmd(bad, MIX, g).resolved(10)


def test_slerp():
    d = 4096
    g = torch.Generator().manual_seed(9)
    z0, z1 = torch.randn(3, d, generator=g, dtype=torch.float64), torch.randn(3, d, generator=g, dtype=torch.float64)
    assert torch.equal(samplers.slerp(z0, z1, 0.0), z0) and torch.equal(samplers.slerp(z0, z1, 1.0), z1)
    mid = samplers.slerp(z0, z1, 0.5)
    # Gaussian latents are almost orthogonal, so the path keeps |z| ≈ √d; the straight line does not
    assert float((mid.norm(dim=1) / math.sqrt(d) - 1).abs().max()) < 0.05
    assert float((0.5 * (z0 + z1)).norm(dim=1).max() / math.sqrt(d)) < 0.75
    lam = torch.linspace(0, 1, 5, dtype=torch.float64)
    path = samplers.slerp(z0[:1], z1[:1], lam)                         # one pair, 5 points
    assert path.shape == (5, d)
    torch.testing.assert_close(path[2], mid[0])
    per = samplers.slerp(z0, z1, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))   # one λ per sample
    assert torch.equal(per[0], z0[0]) and torch.equal(per[2], z1[2])
    img = samplers.slerp(z0.reshape(3, 4, 32, 32), z1.reshape(3, 4, 32, 32), 0.5)
    torch.testing.assert_close(img.reshape(3, d), mid)
    single = samplers.slerp(z0[0], z0[0], 0.3)                          # parallel: falls back to lerp
    torch.testing.assert_close(single, z0[0])


def _slerp_miss(slerp_fn) -> float:
    """Largest miss of slerp_fn against the geometry of the great circle, in numpy (independent of the weights'
    formula): for z0, z1 of equal norm and angle θ, the point at λ lies in their plane, keeps their norm, and is at
    angle λθ from z0 and (1 − λ)θ from z1 (constant angular speed, Shoemake 1985); for orthonormal e1, e2 it is
    (cos λπ/2, sin λπ/2)."""
    g = torch.Generator().manual_seed(10)
    worst = 0.0

    def angle(u, v):
        return np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1, 1))

    for _ in range(5):
        z0, z1 = torch.randn(2, 6, generator=g, dtype=torch.float64)
        z1 = z1 * z0.norm() / z1.norm()
        a, b = z0.numpy(), z1.numpy()
        theta = angle(a, b)
        basis, _ = np.linalg.qr(np.stack([a, b], 1))
        for lam in (0.1, 0.25, 0.5, 0.8):
            out = slerp_fn(z0[None], z1[None], lam)[0].numpy()
            worst = max(worst, np.linalg.norm(out - basis @ (basis.T @ out)) / np.linalg.norm(a),
                        abs(np.linalg.norm(out) / np.linalg.norm(a) - 1),
                        abs(angle(a, out) - lam * theta), abs(angle(out, b) - (1 - lam) * theta))
    e = torch.eye(2, dtype=torch.float64)
    for lam in (0.3, 0.5, 0.9):
        out = slerp_fn(e[:1], e[1:], lam)[0].numpy()
        worst = max(worst, float(np.abs(out - [math.cos(lam * math.pi / 2), math.sin(lam * math.pi / 2)]).max()))
    return worst


def _nlerp(z0, z1, lam):
    """Normalised linear interpolation at the endpoints' norm: on the circle, but not at constant angular speed."""
    mid = (1 - lam) * z0 + lam * z1
    return mid / mid.norm(dim=1, keepdim=True) * z0.norm(dim=1, keepdim=True)


def _slerp_weights_swapped(z0, z1, lam):
    theta = torch.arccos((z0 * z1).sum(1, keepdim=True) / (z0.norm(dim=1, keepdim=True) * z1.norm(dim=1, keepdim=True)))
    return (torch.sin(lam * theta) * z0 + torch.sin((1 - lam) * theta) * z1) / torch.sin(theta)


def test_slerp_follows_the_great_circle():
    assert _slerp_miss(samplers.slerp) < 1e-12


@pytest.mark.parametrize("wrong", [_nlerp, _slerp_weights_swapped,
                                   lambda z0, z1, lam: (1 - lam) * z0 + lam * z1])     # plain lerp
def test_slerp_check_fails_for_wrong_formulas(wrong):
    assert _slerp_miss(wrong) > 1e-3


def test_sample_convenience():
    x = samplers.sample(EPS, (7, 2), AB, S=20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert x.shape == (7, 2) and x.dtype == torch.float64 and bool(torch.isfinite(x).all())
    # what it runs: DDIM from x_T ~ N(0, I) drawn first from the generator, on the uniform grid of S steps
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(7, 2, generator=g, dtype=torch.float64)
    assert torch.equal(x, samplers.ddim_sample(EPS, x_T, AB, schedule.timesteps(20, 1000, "uniform")))
    y = samplers.sample(EPS, (7, 2), AB, S=20, eta=0.5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(7, 2, generator=g, dtype=torch.float64)
    assert torch.equal(y, samplers.ddim_sample(EPS, x_T, AB, schedule.timesteps(20, 1000), eta=0.5, generator=g))


def test_sample_warns_when_its_first_step_is_not_pure_noise():
    """One uniform step is t = 0 (ᾱ ≈ 1): the run from x_T ~ N(0, I) returned x_T, nearly unchanged, without a word
    (the CLI warned; `samplers.sample` did not)."""
    g = torch.Generator().manual_seed(0)
    with pytest.warns(samplers.OutOfRangeWarning, match=r"the only step is t = 0 \(alpha_bar = 1\)"):
        x = samplers.sample(EPS, (500, 2), AB, S=1, dtype=torch.float64, generator=g)
    x_T = torch.randn((500, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float((x - x_T).abs().max()) < 0.05                  # why it warns: the output is x_T
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samplers.sample(EPS, (2, 2), AB, S=1, spacing="trailing")   # starts at T − 1
        samplers.sample(EPS, (2, 2), AB, S=10)


def test_errors():
    x_T, seq = _xT(), schedule.timesteps(10, 1000)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        samplers.ddim_sample(EPS, x_T, AB, seq, eta=-0.1)
    with pytest.raises(ValueError, match="0..T-1"):
        samplers.ddim_sample(EPS, x_T, AB, [1000, 10])
    with pytest.raises(ValueError, match="strictly decreasing"):
        samplers.ddim_sample(EPS, x_T, AB, [10, 20])
    with pytest.raises(ValueError, match="NaN or inf"):
        samplers.ddim_sample(EPS, x_T * float("nan"), AB, seq)
    with pytest.raises(TypeError, match="floating point"):
        samplers.ddim_sample(EPS, torch.zeros(2, 2, dtype=torch.long), AB, seq)
    with pytest.raises(ValueError, match="dtype"):
        samplers.ddim_sample(lambda x, t: EPS(x, t).double(), x_T.float(), AB, seq)
    with pytest.raises(ValueError, match="x's shape"):
        samplers.ddim_sample(lambda x, t: x[:, :1], x_T, AB, seq)
    with pytest.raises(ValueError, match="'small'"):
        samplers.ddpm_sample(EPS, x_T, AB, "medium")
    with pytest.raises(ValueError, match="alpha_bar"):
        samplers.ddim_sample(EPS, x_T, AB * 2, seq)
    with pytest.raises(ValueError, match="same shape"):
        samplers.slerp(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match="lam has 3 values"):
        samplers.slerp(torch.ones(2, 3), torch.ones(2, 3), torch.zeros(3))


@pytest.mark.parametrize("eta", [float("nan"), float("inf"), -1.0, True])
def test_non_finite_or_negative_eta_is_refused(eta):
    """Issue #12 case 6: `--eta nan` used to return all-NaN samples and exit 0."""
    with pytest.raises(ValueError, match="finite number >= 0"):
        samplers.ddim_sample(EPS, _xT(), AB, schedule.timesteps(10, 1000), eta=eta)


def test_nan_from_the_network_names_the_step():
    def eps(x, t):
        e = EPS(x, t)
        return e * float("nan") if int(t[0]) < 500 else e
    with pytest.raises(samplers.NonFiniteError, match="step t = 400"):
        samplers.ddim_sample(eps, _xT(), AB, schedule.timesteps(10, 1000))


@pytest.mark.parametrize("bad,match", [
    (torch.flip(AB, [0]), "strictly decreasing"),                 # increasing: used to give finite wrong x_0
    (torch.cat([torch.ones(1, dtype=torch.float64), AB[1:]]), r"\(0, 1\)"),   # ᾱ[0] = 1 used to give NaN
    (torch.where(torch.arange(1000) == 500, AB[499], AB), "strictly decreasing"),   # a flat step
    (AB.clone().index_fill_(0, torch.tensor([3]), float("nan")), r"\(0, 1\)"),
])
def test_alpha_bar_is_validated_once_for_every_sampler_and_solver(bad, match):
    """Issue #12 case 7: ᾱ must be finite, in (0, 1) and strictly decreasing; checked in `check_args`."""
    from ddimlab import ode
    x_T, seq = _xT(), schedule.timesteps(10, 1000)
    for run in (lambda: samplers.ddim_sample(EPS, x_T, bad, seq), lambda: samplers.ddpm_sample(EPS, x_T, bad),
                lambda: samplers.ddim_invert(EPS, x_T, bad, seq),
                *(lambda n=n: ode.solve(n, EPS, x_T, bad, seq) for n in ode.SOLVERS)):
        with pytest.raises(ValueError, match=match):
            run()


def test_eta_above_what_a_step_allows_is_an_error_before_any_network_call():
    """Issue #12 case 8: σ² > 1 − ᾱ_s used to be clamped silently in ddim_step but refused by q_sigma_mean."""
    calls = []

    def eps(x, t):
        calls.append(int(t[0]))
        return EPS(x, t)
    with pytest.raises(ValueError, match=r"eta <= \d"):
        samplers.ddim_sample(eps, _xT(), AB, schedule.timesteps(10, 1000), eta=5.0, generator=torch.Generator())
    assert calls == []
    # the rule is σ² ≤ 1 − ᾱ_s, not η ≤ 1: η = 1.05 is valid on these long steps (they allow η ≤ 1.08)
    samplers.ddim_sample(EPS, _xT(), AB, torch.tensor([999, 900, 800]), eta=1.05, generator=torch.Generator())


@pytest.mark.parametrize("eta", [1.05, 1.3, 3.0])
def test_the_eta_check_names_the_first_step_that_breaks_the_rule(eta):
    """`check_eta_steps` checks the whole grid at once and then names the first step t -> s where σ² > 1 − ᾱ_s,
    found here step by step in numpy from the DDIM paper's σ (eq. 16) and ᾱ_{−1} = 1."""
    seq = schedule.timesteps(50, 1000)
    ab = np.append(AB.numpy(), 1.0)                                     # ab[-1] is ᾱ_{−1} = 1
    ts = seq.tolist()
    first = next((t, s) for t, s in zip(ts, ts[1:] + [-1])
                 if eta ** 2 * (1 - ab[s]) / (1 - ab[t]) * (1 - ab[t] / ab[s]) > 1 - ab[s])
    with pytest.raises(ValueError, match=rf"^step {first[0]} -> {first[1]}: sigma\^2 = "):
        samplers.check_eta_steps(AB, seq, eta)
    pairs, a = samplers.check_eta_steps(AB, seq, 1.0)                  # η = 1 passes, and the ᾱ pairs are the table's
    assert pairs == list(zip(ts, ts[1:] + [-1])) and a == [(float(ab[t]), float(ab[s])) for t, s in pairs]


def test_the_eta_check_passes_eta_1_on_every_grid_and_an_empty_one():
    """Mutation audit: η = 1 (σ² = 1 − ᾱ_s − (1 − ᾱ_t) ᾱ_s/ᾱ_t ... at most 1 − ᾱ_s) passes on every step; the whole-grid
    check is in float64 (in float32 the cosine schedule's 2-step linspace grid failed at η = 1 by rounding, with no step
    to name). An empty grid has no pairs."""
    for name in ("linear", "cosine"):
        ab = schedule.make_alpha_bar(name, 1000)
        for S in (2, 10, 100, 1000):
            for spacing in ("uniform", "linspace", "trailing"):
                samplers.check_eta_steps(ab, schedule.timesteps(S, 1000, spacing), 1.0)
    assert samplers.check_eta_steps(AB, torch.tensor([], dtype=torch.long), 1.0) == ([], [])


def test_noise_sampler_replaces_the_generator_and_callback_sees_every_step():
    x_T, seq = _xT(5), schedule.timesteps(10, 1000)
    g = torch.Generator().manual_seed(9)
    a = samplers.ddim_sample(EPS, x_T, AB, seq, eta=0.5, generator=g)
    g2 = torch.Generator().manual_seed(9)
    seen = []
    b = samplers.ddim_sample(EPS, x_T, AB, seq, eta=0.5,
                             noise_sampler=lambda t, s: torch.randn(x_T.shape, generator=g2, dtype=x_T.dtype),
                             callback=lambda info: seen.append((info["i"], info["t"], info["s"])))
    assert torch.equal(a, b)
    assert seen == [(i, t, s) for i, (t, s) in enumerate(schedule.step_pairs(seq))]
    for run in (lambda cb: samplers.ddpm_sample(EPS, x_T, AB, seq=seq, generator=torch.Generator(), callback=cb),
                lambda cb: samplers.ddim_invert(EPS, x_T, AB, seq, callback=cb)):
        n = []
        run(lambda info: n.append(info["x"].shape))
        assert len(n) == len(seq)
    with pytest.raises(ValueError, match="noise_sampler"):
        samplers.ddim_sample(EPS, x_T, AB, seq, eta=1.0, noise_sampler=lambda t, s: torch.zeros(3))


def test_sample_row_is_ddim_or_sigma_hat():
    x_T, seq = _xT(4), schedule.timesteps(10, 1000)
    for eta, ref in ((0.5, lambda g: samplers.ddim_sample(EPS, x_T, AB, seq, eta=0.5, generator=g)),
                     (samplers.SIGMA_HAT, lambda g: samplers.ddpm_sample(EPS, x_T, AB, "large", seq=seq, generator=g))):
        got = samplers.sample_row(EPS, x_T, AB, seq, eta, generator=torch.Generator().manual_seed(1))
        assert torch.equal(got, ref(torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="sigma_hat"):
        samplers.sample_row(EPS, x_T, AB, seq, "large")


def test_slerp_of_a_zero_latent_is_an_error():
    """Issue #12 case 9: used to return NaN."""
    with pytest.raises(ValueError, match="non-zero"):
        samplers.slerp(torch.zeros(1, 4), torch.ones(1, 4), 0.5)


def test_slerp_of_opposite_latents_is_an_error():
    """A hostile round: `interpolate` between z and −z exited 0 with an all-zero latent in the middle of the path."""
    z = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="opposite directions"):
        samplers.slerp(z, -z, 0.5)
    assert torch.allclose(samplers.slerp(z, 2 * z, 0.5), 1.5 * z)          # the same direction is still fine


def test_slerp_of_huge_finite_latents_is_finite():
    """A hostile round: float32 latents near 1e38 overflowed in the norm and came back as NaN."""
    z0, z1 = torch.full((1, 8), 1e37), torch.full((1, 8), 1e37)
    z1[0, 0] = -1e37
    mid = samplers.slerp(z0, z1, 0.5)
    assert mid.dtype == torch.float32 and bool(torch.isfinite(mid).all())


def _first_x0_hat(x_T, predict_x0=None):
    """x̂_0 at the first of 20 uniform DDIM steps (t = 950), as ddim_sample's trajectory records it."""
    seq = schedule.timesteps(20, 1000, "uniform")
    if predict_x0 is None:
        return samplers.ddim_sample(EPS, x_T, AB, seq, return_trajectory=True)[1]["x0"][0]
    t = int(seq[0])
    return predict_x0(x_T, EPS(x_T, torch.full((len(x_T),), t)), float(AB[t]))


def test_first_x0_hat_is_the_data_mean_to_first_order_and_a_wrong_x0_hat_is_not():
    """Notebook 04 §7: at the first step (t = 950) x̂_0 = E[x_0 | x_t] is within 0.01 of the ring's mean 0 for every
    |x_T| < 3.5. Independently of ε*: to first order in √ᾱ_t, E[x_0 | x_t] = mean + √ᾱ_t Cov(x_0) (x_t − √ᾱ_t mean), with
    Cov(x_0) from the mixture's parameters; the library's x̂_0 is that to 0.1% (measured 1.1e-4: the next order is relative
    O(ᾱ_t |x_t|²)), and x̂_0 with ᾱ_t in place of √ᾱ_t misses it by a factor of about 1/√ᾱ_t ≈ 97."""
    x_T = _xT(200, seed=4)
    x_T = x_T[x_T.norm(dim=1) < 3.5]
    w, mu, cov = MIX.weights, MIX.means, MIX.covs
    mean = w @ mu
    cov_x0 = torch.einsum("k,kij->ij", w, cov + mu[:, :, None] * mu[:, None, :]) - torch.outer(mean, mean)
    a = float(AB[950])
    linear = mean + math.sqrt(a) * (x_T - math.sqrt(a) * mean) @ cov_x0.T
    x0_hat = _first_x0_hat(x_T)
    assert float(mean.norm()) < 1e-12 and float(x0_hat.norm(dim=1).max()) < 0.01
    assert float(((x0_hat - linear).norm(dim=1) / linear.norm(dim=1)).max()) < 1e-3
    wrong = _first_x0_hat(x_T, lambda x, e, a_t: (x - math.sqrt(1 - a_t) * e) / a_t)
    assert float(((wrong - linear).norm(dim=1) / linear.norm(dim=1)).min()) > 1


def _power_law_gaussian(d: int):
    """(λ, the zero-mean Gaussian with variance λ_j = 2 j^-0.8 in direction j) for notebook 09 §7's tests."""
    lam = 2.0 / torch.arange(1, d + 1, dtype=torch.float64) ** 0.8
    return lam, toy.SharedBasisMixture(torch.ones(1), torch.zeros(1, d, dtype=torch.float64), lam[None])


def test_few_step_ddim_keeps_prod_rho_squared_of_the_flows_variance_on_gaussian_data():
    """Notebook 09 §7: on Gaussian data of variance λ per direction, each DDIM step from σ_t to σ_s multiplies x̄ by
    ρ = (λ + σ_tσ_s)/√((λ + σ_t²)(λ + σ_s²)) ≤ 1 times the flow's own factor √((λ + σ_s²)/(λ + σ_t²)), so DDIM maps x_T to
    x_T · √(λ/(ᾱ_Tλ + 1 − ᾱ_T) · ∏ρ²), ᾱ_T at the first step (variance λ/(ᾱ_Tλ + 1 − ᾱ_T) · ∏ρ² from x_T ~ N(0, I)); on quad
    and uniform steps.
    'No loss', ∏ρ in place of ∏ρ², the flow's variance taken as λ and ∏ρ² without the final step (t = 0 to the data,
    σ_0 = 0.01) miss by far more than rounding; the last two are the small errors a variance check from 1000 draws
    cannot see."""
    d, T = 256, 1000
    alpha_bar = schedule.make_alpha_bar("linear", T)
    lam, gauss = _power_law_gaussian(d)
    x_T = torch.randn(64, d, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for S, spacing in ((4, "quad"), (7, "uniform")):
        seq = schedule.timesteps(S, T, spacing)
        a_T = float(alpha_bar[int(seq[0])])                    # x_T enters at the first step (t = 852 for 7 uniform steps)
        flow = lam / (a_T * lam + 1 - a_T)
        x0 = samplers.ddim_sample(toy.exact_eps(gauss, alpha_bar), x_T, alpha_bar, seq)
        sig = [math.sqrt(1 / float(alpha_bar[int(t)]) - 1) for t in seq] + [0.0]
        rho2 = torch.ones_like(lam)
        for s_t, s_s in zip(sig, sig[1:]):
            rho2 = rho2 * (lam + s_t * s_s) ** 2 / ((lam + s_t ** 2) * (lam + s_s ** 2))
        torch.testing.assert_close(x0, x_T * (rho2 * flow).sqrt(), rtol=1e-10, atol=0)
        for wrong in (flow, rho2.sqrt() * flow):
            assert float((x0 / (x_T * wrong.sqrt()) - 1).abs().max()) > 0.1
        last = lam / (lam + sig[-2] ** 2)                         # ρ² of the final step, from σ_0 = 0.01 to 0
        for wrong in (rho2 * lam, rho2 / last * flow):
            assert float((x0 / (x_T * wrong.sqrt()) - 1).abs().max()) > 1e-5
        assert bool((rho2 <= 1).all()) and float(rho2[-1]) < float(rho2[0])      # the weakest direction loses most


def _ddim_eta_map(lam, a_t, a_s, eta):
    """Notebook 09 §7: one DDIM(η) step on Gaussian data of variance λ is x_s = c x_t + σ z; returns (c, σ², v_t)."""
    s2 = eta ** 2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    v_t = a_t * lam + 1 - a_t
    return (math.sqrt(a_t * a_s) * lam + math.sqrt((1 - a_s - s2) * (1 - a_t))) / v_t, s2, v_t


def test_ddim_eta_step_on_gaussian_data_is_c_x_plus_sigma_z_and_keeps_less_than_the_marginal():
    """Notebook 09 §7: on Gaussian data each DDIM(η) step is x_s = c x_t + σ z with c = a·b/|a|², a = (√(ᾱ_tλ), √(1−ᾱ_t)),
    b = (√(ᾱ_sλ), √(1−ᾱ_s−σ²)), to rounding (η = 0's c and σ̂'s noise miss it); the variance recursion
    Var x_s = c² Var x_t + σ² matches a Monte Carlo run from x_T ~ N(0, I) (dropping σ² fails); from the exact marginal
    v_t one step keeps less than v_s (Cauchy–Schwarz), short by the Lagrange gap, on a grid of λ, steps and η."""
    d, T, n = 64, 1000, 4000
    alpha_bar = schedule.make_alpha_bar("linear", T)
    ab = lambda t: float(schedule.alpha_bar_at(alpha_bar, int(t)))        # noqa: E731
    lam, gauss = _power_law_gaussian(d)
    g = torch.Generator().manual_seed(9)
    seq = schedule.timesteps(7, T, "quad")
    for eta in (0.3, 1.0):
        zs = []
        noise = lambda t, s: zs.append(torch.randn(n, d, generator=g, dtype=torch.float64)) or zs[-1]     # noqa: E731
        x_T = torch.randn(n, d, generator=g, dtype=torch.float64)
        x0, traj = samplers.ddim_sample(toy.exact_eps(gauss, alpha_bar), x_T, alpha_bar, seq, eta=eta,
                                        noise_sampler=noise, return_trajectory=True)
        V, V_wrong, misses = torch.ones_like(lam), torch.ones_like(lam), []
        for (t, s), x_t, x_s, z in zip(schedule.step_pairs(seq), traj["x"], traj["x"][1:], zs):
            c, s2, v_t = _ddim_eta_map(lam, ab(t), ab(s), eta)
            torch.testing.assert_close(x_s, c * x_t + math.sqrt(s2) * z, rtol=0, atol=1e-10)
            c0 = (math.sqrt(ab(t) * ab(s)) * lam + math.sqrt((1 - ab(s)) * (1 - ab(t)))) / v_t   # η = 0's c
            misses.append((float((x_s - c0 * x_t - math.sqrt(s2) * z).abs().max()),
                           float((x_s - c * x_t - math.sqrt(1 - ab(t) / ab(s)) * z).abs().max())))   # σ̂'s noise
            V, V_wrong = c ** 2 * V + s2, c ** 2 * V_wrong
        assert min(max(m) for m in zip(*misses)) > 1e-2, misses
        z2 = lambda pred: float(((x0.var(0) - pred) / (pred * math.sqrt(2 / (n - 1)))).pow(2).mean())  # noqa: E731
        tol = 5 * math.sqrt(2 / d)
        assert abs(z2(V) - 1) < tol and abs(z2(V_wrong) - 1) > tol and abs(z2(lam) - 1) > tol, (z2(V), z2(V_wrong), z2(lam))
    lam_grid = torch.logspace(-4, 3, 71, dtype=torch.float64)
    for S in (2, 5, 20, 1000):
        for t, s in schedule.step_pairs(schedule.timesteps(S, T, "uniform")):
            for eta in (0.05, 0.5, 1.0):
                c, s2, v_t = _ddim_eta_map(lam_grid, ab(t), ab(s), eta)
                v_s = ab(s) * lam_grid + 1 - ab(s)
                gap = lam_grid * (math.sqrt(ab(t) * (1 - ab(s) - s2)) - math.sqrt(ab(s) * (1 - ab(t)))) ** 2 / v_t
                kept = c ** 2 * v_t + s2
                assert bool((kept < v_s).all())
                torch.testing.assert_close(v_s - kept, gap, rtol=1e-9, atol=1e-12 * float(v_s.max()))


def test_a_trajectory_past_half_the_memory_is_refused_before_the_first_step(monkeypatch):
    """return_trajectory=True keeps every step's x (and x̂_0) in memory: a run whose trajectory outgrows the memory failed
    at its end, in torch's allocator, with all its steps lost. It is now refused before the first ε call, saying the
    largest batch that fits; a shorter run, or one without the trajectory, goes ahead."""
    from ddimlab import checks, ode

    monkeypatch.setattr(checks, "memory_limit", lambda: 64 * 2 ** 20)          # a 128 MiB machine
    x_T, full = _xT(8192), schedule.timesteps(1000, 1000)                       # 128 KiB per state
    calls = ode.counted(EPS)
    for run, states in ((lambda: samplers.ddim_sample(calls, x_T, AB, full, return_trajectory=True), 2001),
                        (lambda: samplers.ddpm_sample(calls, x_T, AB, return_trajectory=True), 2001),
                        (lambda: ode.heun(calls, x_T, AB, full, return_trajectory=True), 1001),
                        (lambda: samplers.ddim_invert(calls, 0.1 * x_T, AB, full, return_trajectory=True), 1001)):
        with pytest.raises(ValueError, match=rf"^return_trajectory=True keeps {states} tensors of x(_T|0)'s shape \(8192, 2\): "
                                             r"about 0\.\d+ GiB, more than half of this machine's 0\.12 GiB; give at most "
                                             rf"{64 * 2 ** 20 // (states * 16):,} samples per run"):
            run()
    assert calls.calls == 0
    x0, traj = samplers.ddim_sample(calls, x_T, AB, schedule.timesteps(10, 1000), return_trajectory=True)
    assert len(traj["x"]) == 11 and calls.calls == 10


def test_round_43_a_noise_of_the_wrong_kind_is_told_any_floating_dtype_is_taken():
    """A noise_sampler's draw of any floating dtype is cast to x's (`samplers._draw`), but one of the wrong kind was told
    "(x's dtype, torch.float64)", as if a float32 draw for float64 x were refused too. The message now says what the noise
    may be (any floating dtype, as for the ε of the scipy paths, which take one too); and a float32 draw is still taken,
    giving the float64 run's x_0 to float32's rounding."""
    x_T, seq = _xT(4), schedule.timesteps(5, 1000, "trailing")
    draws = torch.randn(len(seq), *x_T.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    steps = {int(t): i for i, t in enumerate(seq)}
    for bad in (torch.bool, torch.int64, torch.complex128):
        with pytest.raises(ValueError, match=r"^noise_sampler\(t, s\) must return floating-point noise \(any floating "
                                             rf"dtype\), got {bad}$"):
            samplers.ddim_sample(EPS, x_T, AB, seq, eta=1.0, noise_sampler=lambda t, s, d=bad: draws[steps[t]].to(d))
    wide = samplers.ddim_sample(EPS, x_T, AB, seq, eta=1.0, noise_sampler=lambda t, s: draws[steps[t]])
    narrow = samplers.ddim_sample(EPS, x_T, AB, seq, eta=1.0, noise_sampler=lambda t, s: draws[steps[t]].float())
    assert narrow.dtype == torch.float64 and 0 < float((narrow - wide).abs().max()) < 1e-5
