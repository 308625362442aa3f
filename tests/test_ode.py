"""Probability-flow ODE solvers against DDIM, closed forms and scipy (notebook 05)."""
import inspect
import itertools
import math
import textwrap
from unittest import mock

import numpy as np
import pytest
import torch

from ddimlab import checkpoint, diffusion, ode, samplers, schedule, toy

AB = schedule.make_alpha_bar("linear", 1000)
MIX = toy.random_mixture(d=3, K=4, seed=0)
EPS = toy.exact_eps(MIX, AB)
X_T = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
# grids 999, 999−Δ, …, 0 with Δ | 999: exactly uniform in t, S = 28, 38, 112, 334 steps
GRIDS = {S: torch.arange(999, -1, -(999 // (S - 1))) for S in (28, 38, 112, 334)}


@pytest.mark.parametrize("S,spacing", [(20, "uniform"), (50, "quad"), (7, "trailing"), (1000, "uniform")])
def test_euler_is_ddim_eta0(S, spacing):
    seq = schedule.timesteps(S, 1000, spacing)
    x_T = X_T * 0.7
    a = ode.euler(EPS, x_T, AB, seq)
    b = samplers.ddim_sample(EPS, x_T, AB, seq, eta=0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_reference_solution_matches_gaussian_closed_form():
    """For data N(μ, Σ): x̄(σ) − μ = (Σ + σ²I)^{1/2} (Σ + σ₀²I)^{−1/2} (x̄(σ₀) − μ) (notebook 05 §3), either way: from
    data up to noise too (t_end > t_start, from t = −1, σ = 0, as the inversions of notebook 05 §8 run)."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 3, generator=g, dtype=torch.float64)
    cov, mu = 0.05 * A @ A.T + 0.01 * torch.eye(3, dtype=torch.float64), torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64)
    gauss = toy.GaussianMixture(torch.ones(1), mu, cov[None])
    eps = toy.exact_eps(gauss, AB)
    lam, U = torch.linalg.eigh(cov)

    def flow(xbar, s0, s1):
        scale = U @ torch.diag(((lam + s1 ** 2) / (lam + s0 ** 2)).sqrt()) @ U.T
        return mu + (xbar - mu) @ scale.T

    for t0, t1 in [(999, -1), (600, 20), (-1, 999), (20, 600)]:
        s0, s1 = float(ode.sigma_at(AB, t0)), float(ode.sigma_at(AB, t1))
        exact = flow(X_T / math.sqrt(float(ode.alpha_bar_cont(AB, t0))), s0, s1) / math.sqrt(1 + s1 ** 2)
        ref = ode.reference_solution(eps, X_T, AB, t0, t1)
        torch.testing.assert_close(ref, exact, rtol=0, atol=1e-8)


def test_reference_solution_round_trip_noise_data_noise():
    """The flow is a bijection: x_T → x_0 → back up to step 999 returns x_T (notebook 05 §8), on the 4-component mixture,
    whose flow has no closed form; 1e-7 is a hundred times the two solves' tolerance of 1e-10 amplified by the
    map's contraction (x_0 is found to ~1e-9)."""
    x_0 = ode.reference_solution(EPS, X_T, AB, 999)
    back = ode.reference_solution(EPS, x_0, AB, -1, 999)
    torch.testing.assert_close(back, X_T, rtol=0, atol=1e-7)


@pytest.fixture(scope="module")
def errors_at_t0():
    """max |x_0 − x_0^ref| at t = 0 (before the final step to σ = 0, see the module docstring)."""
    ref = ode.reference_solution(EPS, X_T, AB, 999, 0, rtol=1e-11, atol=1e-11)
    out = {}
    for name in ode.SOLVERS:
        out[name] = {S: float((ode.solve(name, EPS, X_T, AB, seq, return_trajectory=True)[1]["x"][-2] - ref).abs().max())
                     for S, seq in GRIDS.items()}
    return out


def _slope(errs, Ss):
    return -np.polyfit(np.log(Ss), np.log([errs[S] for S in Ss]), 1)[0]


@pytest.mark.parametrize("name,order,Ss", [("euler", 1, (28, 38, 112, 334)), ("heun", 2, (28, 38, 112, 334)),
                                           ("dpm_solver_2", 2, (28, 38, 112, 334)),
                                           ("dpm_solver_pp_2m", 2, (112, 334))])
def test_convergence_order(errors_at_t0, name, order, Ss):
    slope = _slope(errors_at_t0[name], Ss)
    assert abs(slope - order) < 0.3, (name, slope, errors_at_t0[name])


def test_second_order_solvers_beat_euler(errors_at_t0):
    # DPM-Solver++(2M) extrapolates x̂_0 linearly in λ; on a grid uniform in t its last steps are long
    # in λ (h ≈ 1.5 near t = 0), hence the larger constant. It shines on λ-uniform grids.
    for name, gain in (("heun", 10), ("dpm_solver_2", 10), ("dpm_solver_pp_2m", 3)):
        assert errors_at_t0[name][334] < errors_at_t0["euler"][334] / gain


def _corrector_ignored(eps):
    """ε whose corrector calls in `ode.heun_invert` (its 3rd, 5th, … calls) return the predictor's ε just before: the
    mutation that weights Heun's average 1:0 (Euler's step)."""
    out = []

    def wrapped(x, t):
        out.append(eps(x, t) if len(out) % 2 or not out else out[-1])
        return out[-1]
    return wrapped


def test_heun_invert_is_second_order_upwards_and_a_1_0_corrector_is_not():
    """notebook 05 §8: heun_invert against `reference_solution` run from data to noise, from its first point (t = 0,
    after the ddim_invert step out of σ = 0 that every grid shares) to t = 999: the fitted order over S = 28 … 334 is
    2 within 0.3, and with the corrector's average weighted 1:0 it is not (order 1)."""
    x0 = MIX.sample(8, torch.Generator().manual_seed(3))
    ref = ode.reference_solution(EPS, ode.heun_invert(EPS, x0, AB, [0]), AB, 0, 999, rtol=1e-11, atol=1e-11)
    errs = {"heun_invert": {}, "1:0": {}}
    for S, seq in GRIDS.items():
        for kind, eps in (("heun_invert", EPS), ("1:0", _corrector_ignored(EPS))):
            errs[kind][S] = float((ode.heun_invert(eps, x0, AB, seq) - ref).abs().max())
    slopes = {kind: _slope(e, list(GRIDS)) for kind, e in errs.items()}
    assert abs(slopes["heun_invert"] - 2) < 0.3 and abs(slopes["1:0"] - 2) > 0.3, (slopes, errs)


def test_heun_invert_and_heun_follow_the_straight_paths_of_point_mass_data():
    """For data at one point c, the flow's paths are straight, x̄(σ) = c + σ k (notebook 05 §6): after the first step
    (ddim_invert's, checked against `samplers.ddim_invert` on one step) heun_invert lands on the path through that
    point at every step of a coarse grid with 2S − 1 calls, and `heun` decodes every latent to c."""
    c = torch.tensor([0.4, -1.1, 0.2], dtype=torch.float64)

    def eps_point(x, t):
        a = ode.alpha_bar_cont(AB, t[0])
        return (x - a.sqrt() * c) / (1 - a).sqrt()

    seq = [999, 300, 50, 5]
    x0 = torch.randn(8, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    counted = ode.counted(eps_point)
    steps = []
    x_T, traj = ode.heun_invert(counted, x0, AB, seq, return_trajectory=True,
                                callback=lambda info: steps.append((info["i"], info["t"], info["s"])))
    assert counted.calls == 2 * len(seq) - 1 and traj["t"] == [-1, 5, 50, 300, 999]
    assert steps == [(0, -1, 5), (1, 5, 50), (2, 50, 300), (3, 300, 999)]          # from, to (larger), as ddim_invert's
    x_1 = samplers.ddim_invert(eps_point, x0, AB, [5])
    sig = [float(ode.sigma_at(AB, t)) for t in traj["t"][1:]]
    k = (x_1 * math.sqrt(sig[0] ** 2 + 1) - c) / sig[0]
    exact = [(c + s * k) / math.sqrt(s ** 2 + 1) for s in sig]
    assert max(float((a - b).abs().max()) for a, b in zip(traj["x"][1:], exact)) < 1e-10
    torch.testing.assert_close(ode.heun(eps_point, x_T, AB, seq), c.expand(8, 3), rtol=0, atol=1e-10)


def test_final_denoising_step_goes_twice_as_far_as_the_flow():
    """Near σ = 0, dx̄/dσ ≈ −σ ∇log p_0: the flow moves x̄ by σε/2, x̂_0 = x̄ − σε by σε (module docstring)."""
    x = MIX.marginal(float(AB[0])).sample(8, torch.Generator().manual_seed(3))
    xbar = x / math.sqrt(float(AB[0]))
    ref = ode.reference_solution(EPS, x, AB, 0, -1)
    x0_hat = ode.euler(EPS, x, AB, [0])                      # one DDIM step t = 0 → −1
    torch.testing.assert_close(x0_hat - xbar, 2 * (ref - xbar), rtol=0.05, atol=1e-6)


def test_heun_overshoots_the_flow_at_every_step_on_gaussian_data():
    """Notebook 09 §7: on Gaussian data of variance λ a Heun step from σ_t to σ_s multiplies x̄ by
    H = N/(2(λ+σ_t²)(λ+σ_s²)), N = 2λ² + λσ_t² + 3λσ_s² + 2σ_tσ_s³, and N² − 4(λ+σ_t²)(λ+σ_s²)³ =
    λ(σ_t−σ_s)³(λ(σ_t+3σ_s) + 4σ_s³) > 0, so H exceeds the flow's √((λ+σ_s²)/(λ+σ_t²)) for all λ > 0, σ_t > σ_s ≥ 0.
    `ode.heun` is x_T ∏H · λ/(λ+σ_0²)/√ᾱ_T (the last step Euler's) to rounding; a Heun last step and the flow miss it.
    A whole run keeps more than the flow in every direction at S = 5 to 50 on uniform steps, and less in some at
    S = 1000, where the Euler step from σ_0 outweighs the Heun steps' gains."""
    d = 128
    lam = 2.0 / torch.arange(1, d + 1, dtype=torch.float64) ** 0.8 + 0.01
    gauss = toy.SharedBasisMixture(torch.ones(1), torch.zeros(1, d, dtype=torch.float64), lam[None])
    H = lambda lam, s_t, s_s: ((2 * lam ** 2 + lam * s_t ** 2 + 3 * lam * s_s ** 2 + 2 * s_t * s_s ** 3)   # noqa: E731
                               / (2 * (lam + s_t ** 2) * (lam + s_s ** 2)))
    x_T = torch.randn(3, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    below = {}
    for S, spacing in ((5, "uniform"), (9, "quad"), (50, "uniform"), (1000, "uniform")):
        seq = schedule.timesteps(S, 1000, spacing)
        sig = [math.sqrt(1 / float(AB[int(t)]) - 1) for t in seq] + [0.0]
        prod_h = torch.stack([H(lam, a, b) for a, b in zip(sig[:-2], sig[1:-1])]).prod(0)
        scale = 1 / math.sqrt(float(AB[int(seq[0])]))                  # x̄_T = x_T/√ᾱ_T
        flow = (lam / (lam + sig[0] ** 2)).sqrt() * scale
        right = prod_h * lam / (lam + sig[-2] ** 2) * scale
        if S < 1000:
            x0 = ode.heun(toy.exact_eps(gauss, AB), x_T, AB, seq)
            torch.testing.assert_close(x0, x_T * right, rtol=1e-10, atol=0)
            for wrong in (flow, prod_h * H(lam, sig[-2], 0.0) * scale):      # the flow; a Heun last step
                assert float((x0 / (x_T * wrong) - 1).abs().max()) > 1e-4
        below[S] = int(((right / flow) ** 2 < 1).sum())
    assert below[5] == below[50] == 0 and below[1000] > 0, below   # at S = 1000 the final Euler step wins in some directions
    g = torch.Generator().manual_seed(5)
    L_, s_s = torch.rand(20000, generator=g, dtype=torch.float64) * 20, torch.rand(20000, generator=g, dtype=torch.float64)
    s_t = s_s + torch.rand(20000, generator=g, dtype=torch.float64) * 10
    a, b = L_ + s_t ** 2, L_ + s_s ** 2
    N = 2 * a * b * H(L_, s_t, s_s)
    torch.testing.assert_close(N ** 2 - 4 * a * b ** 3, L_ * (s_t - s_s) ** 3 * (L_ * (s_t + 3 * s_s) + 4 * s_s ** 3),
                               rtol=1e-9, atol=1e-12 * float((4 * a * b ** 3).max()))
    assert bool((H(L_, s_t, s_s) > (b / a).sqrt()).all())
    wrong = L_ * (s_t - s_s) ** 3 * (L_ * (s_t + s_s) + 4 * s_s ** 3)        # σ_t + σ_s in place of σ_t + 3σ_s
    assert float(((N ** 2 - 4 * a * b ** 3) - wrong).abs().max()) > 1.0


def test_dpm_solver_pp_3m_falls_short_of_the_flow_in_the_long_step_into_t0_on_gaussian_data():
    """Notebook 09 §7: on Gaussian data, uniform steps at S = 100, 3M keeps less than the flow's variance in every
    direction, made in the step t = 10 → 0 (h = ½ log(σ_10²/σ_0²) ≈ 1.55 in ℓ = −log σ, after 0.53): within 1% before it.
    Along the flow (x̄ = √(λ + σ²)) D = x̂_0 = λ/√(λ + σ²) has third derivative in ℓ 2λσ²(2λ² − 5λσ² + σ⁴/2)/(λ + σ²)^{7/2},
    > 0 for σ² < (5 − √21)λ, so past the nodes the quadratic through D at t = 30, 20, 10 lies below D (the interpolation
    remainder) and one step from the flow's own history lands short (quadrature), the line through two above. λ-uniform
    steps or lower_order_final remove the shortfall, published=True does not; 2M rises above the flow in the same step."""
    d = 128
    lam = 2.0 / torch.arange(1, d + 1, dtype=torch.float64) ** 0.8 + 0.01
    gauss = toy.SharedBasisMixture(torch.ones(1), torch.zeros(1, d, dtype=torch.float64), lam[None])
    sig2 = lambda t: 1 / float(AB[t]) - 1 if t >= 0 else 0.0                   # noqa: E731

    def kept(solver, seq, **options):
        """Var over the flow's from the same x_T at each visited step, then at σ = 0 (the map is linear: x_T = 1 is exact)."""
        _, tr = solver(toy.exact_eps(gauss, AB), torch.ones(1, d, dtype=torch.float64), AB, seq, return_trajectory=True,
                       **options)
        s_T = sig2(int(seq[0]))
        return torch.stack([x[0] ** 2 * (1 + sig2(t)) / (1 + s_T) * (lam + s_T) / (lam + sig2(t))
                            for x, t in zip(tr["x"], tr["t"])])

    seq = schedule.timesteps(100, 1000, "uniform")
    r = kept(ode.dpm_solver_pp_3m, seq)
    assert float((r[:-2] - 1).abs().max()) < 0.01                    # within 1% at every step before t = 0, then below
    assert float(r[-2].max()) < 1 and float(r[-2].min()) < 0.9 and float(r[-1].max()) < 1
    for options, steps in (({"lower_order_final": True}, seq), ({}, ode.lambda_timesteps(100, AB))):
        assert float(kept(ode.dpm_solver_pp_3m, steps, **options)[-2].min()) > 0.999, options
    assert float(kept(ode.dpm_solver_pp_3m, seq, published=True)[-2].max()) < 1
    r2 = kept(ode.dpm_solver_pp_2m, seq)
    assert float((r2[:-2] - 1).abs().max()) < 0.03 and float(r2[-2].min()) > 1 and float(r2[-2].max()) > 1.05

    ell = [-0.5 * math.log(sig2(t)) for t in (30, 20, 10, 0)]
    assert ell[3] - ell[2] > 2.5 * (ell[2] - ell[1]) and sig2(30) < (5 - math.sqrt(21)) * float(lam.min())
    D = lambda l: lam / (lam + math.exp(-2 * l)).sqrt()                        # noqa: E731
    u, wq = np.polynomial.legendre.leggauss(30)
    u, wq = ell[2] + (ell[3] - ell[2]) * (u + 1) / 2, (ell[3] - ell[2]) * wq / 2

    def one_step(fit):
        """x̄ at t = 0 from the flow's x̄ at t = 10, e^{−h} x̄ + ∫ e^{−(ℓ_0 − ℓ)} fit(ℓ) dℓ, over the flow's, squared."""
        integral = sum(w * math.exp(uk - ell[3]) * fit(uk) for uk, w in zip(u, wq))
        x_s = math.exp(ell[2] - ell[3]) * (lam + sig2(10)).sqrt() + integral
        return x_s ** 2 / (lam + sig2(0))

    def through(nodes):
        coef = np.polyfit(nodes, torch.stack([D(a) for a in nodes]).numpy(), len(nodes) - 1)
        return lambda l: torch.from_numpy(np.polyval(coef, l))

    quadratic, line = through(ell[:3]), through(ell[1:3])
    torch.testing.assert_close(one_step(D), torch.ones(d, dtype=torch.float64), rtol=0, atol=1e-12)   # the flow's own step
    assert all(bool((quadratic(uk) < D(uk)).all() and (line(uk) > D(uk)).all()) for uk in u)
    assert float(one_step(quadratic).max()) < 1 < float(one_step(line).min())

    L_, l_, e = lam[::8], torch.linspace(-1, 5, 61, dtype=torch.float64)[:, None], 1e-3
    Dl = lambda l: L_ / (L_ + (-2 * l).exp()).sqrt()                          # noqa: E731
    y = (-2 * l_).exp()
    fd3 = (Dl(l_ + 2 * e) - 2 * Dl(l_ + e) + 2 * Dl(l_ - e) - Dl(l_ - 2 * e)) / (2 * e ** 3)
    d3 = lambda c: 2 * L_ * y * (2 * L_ ** 2 - c * L_ * y + y ** 2 / 2) / (L_ + y) ** 3.5     # noqa: E731
    assert float((d3(5) - fd3).abs().max()) < 1e-5 * float(fd3.abs().max()) < float((d3(4) - fd3).abs().max())   # 4: wrong
    assert bool(((d3(5) > 0) == ((y / L_ < 5 - math.sqrt(21)) | (y / L_ > 5 + math.sqrt(21)))).all())


def test_lambda_timesteps():
    seq = ode.lambda_timesteps(10, AB)
    assert len(seq) == 10 and int(seq[0]) == 999 and int(seq[-1]) == 0
    lam = -ode.sigma_at(AB, seq).log()
    steps = lam[1:] - lam[:-1]
    assert float(steps.max() / steps.min()) < 1.5          # uniform in λ up to rounding t to integers
    # the point of λ spacing: DPM-Solver++(2M) at 10 NFE beats DDIM at 10 NFE on the usual grid
    ref = ode.reference_solution(EPS, X_T, AB, 999, -1, rtol=1e-9, atol=1e-9)
    err_pp = float((ode.dpm_solver_pp_2m(EPS, X_T, AB, seq) - ref).abs().max())
    err_ddim = float((ode.euler(EPS, X_T, AB, schedule.timesteps(10, 1000, "linspace")) - ref).abs().max())
    assert err_pp < err_ddim / 3, (err_pp, err_ddim)


def test_nfe_and_time_arguments():
    seq = schedule.timesteps(6, 1000, "uniform")
    for name in ode.SOLVERS:
        calls = []

        def eps(x, t):
            calls.append(t)
            assert t.shape == (x.shape[0],)
            return EPS(x, t)

        counted = ode.counted(eps)
        x0, tr = ode.solve(name, counted, X_T, AB, seq, return_trajectory=True)
        assert len(calls) == ode.nfe(name, 6) == counted.calls
        assert len(tr["x"]) == 7 and tr["t"][-1] == -1 and torch.equal(tr["x"][-1], x0)
        integer = [t for t in calls if not t.dtype.is_floating_point]
        assert {int(t[0]) for t in integer} <= set(seq.tolist())
        if name == "dpm_solver_2":                       # midpoints at σ_mid = √(σ_t σ_s): float steps
            mids = [float(t[0]) for t in calls if t.dtype.is_floating_point]
            assert len(mids) == 5
            s_t, s_s = float(ode.sigma_at(AB, int(seq[0]))), float(ode.sigma_at(AB, int(seq[1])))
            assert math.isclose(float(ode.sigma_at(AB, mids[0])), math.sqrt(s_t * s_s), rel_tol=1e-10)


def test_nfe_counts_the_inversions_as_they_call():
    """notebook 05 §8: `nfe` answers for the inversions x_0 → x_T too, with the calls a counted ε sees (heun_invert 2S − 1,
    ddim_invert S; `nfe("heun_invert", S)` was an "unknown ODE solver"); `solve`, which starts from noise, refuses them."""
    for S in (1, 2, 6):
        seq = schedule.timesteps(S, 1000, "uniform")
        for name, invert in (("heun_invert", ode.heun_invert), ("ddim_invert", samplers.ddim_invert)):
            counted = ode.counted(EPS)
            invert(counted, X_T, AB, seq)
            assert ode.nfe(name, S) == counted.calls == (2 * S - 1 if name == "heun_invert" else S), (name, S)
    assert ode.INVERSIONS == ("ddim_invert", "heun_invert") and not set(ode.INVERSIONS) & set(ode.SOLVERS)
    with pytest.raises(ValueError, match="runs from data to noise"):
        ode.solve("heun_invert", EPS, X_T, AB, schedule.timesteps(4, 1000))
    with pytest.raises(TypeError, match="heun_invert takes no option afs"):
        ode.nfe("heun_invert", 4, afs=False)


def test_continuous_time():
    t_int = torch.arange(-1, 1000)
    torch.testing.assert_close(ode.alpha_bar_cont(AB, t_int)[1:], AB, rtol=0, atol=0)
    assert float(ode.alpha_bar_cont(AB, -1)) == 1.0 and float(ode.alpha_bar_cont(AB, -1.0)) == 1.0
    t = torch.tensor([-1.0, -0.5, 0.0, 3.25, 500.5, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(ode.t_of_sigma(AB, ode.sigma_at(AB, t)), t, rtol=0, atol=1e-9)
    fine = ode.alpha_bar_cont(AB, torch.linspace(-1, 999, 4001, dtype=torch.float64))
    assert bool((fine[1:] < fine[:-1]).all())                      # ᾱ(t) strictly decreasing


def test_errors():
    seq = schedule.timesteps(5, 1000)
    with pytest.raises(ValueError, match="unknown ODE solver"):
        ode.solve("rk4", EPS, X_T, AB, seq)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ode.heun(EPS, X_T, AB, [3, 5])
    with pytest.raises(ValueError, match="NaN or inf"):
        ode.euler(EPS, X_T * float("inf"), AB, seq)
    with pytest.raises(ValueError, match=r"^t_end must differ from t_start \(t_end < t_start runs towards data, "):
        ode.reference_solution(EPS, X_T, AB, 10, 10.0)
    with pytest.raises(ValueError, match="sigma must lie"):
        ode.t_of_sigma(AB, 1e4)
    with pytest.raises(ValueError, match=r"\[-1, T-1\]"):
        ode.alpha_bar_cont(AB, 999.5)
    with pytest.raises(ValueError, match="x's shape"):
        ode.dpm_solver_pp_2m(lambda x, t: x[:1], X_T, AB, seq)


# ------------------------------------------------------------------ fast solvers (notebook 08)

def test_phi_against_quadrature():
    """φ_k(h) = ∫_0^1 e^{(1−θ)h} θ^{k−1}/(k−1)! dθ, by scipy's quad, including |h| ≪ 1 where the recursion cancels."""
    from scipy.integrate import quad
    for k in (1, 2, 3, 4):
        for h in (-20.0, -3.0, -0.5, -1e-4, 1e-7, 0.5, 3.0):
            exact = quad(lambda th: math.exp((1 - th) * h) * th ** (k - 1) / math.factorial(k - 1), 0, 1,
                         epsabs=0, epsrel=1e-13)[0]
            assert math.isclose(ode.phi(k, h), exact, rel_tol=1e-11), (k, h)
    assert ode.phi(0, 0.3) == math.exp(0.3)
    # the recursion alone at h = 1e-5 loses most digits of φ_3 (why phi uses the series for |h| < 1)
    naive = ((math.exp(1e-5) - 1) / 1e-5 - 1) / 1e-5
    naive = (naive - 0.5) / 1e-5
    assert abs(naive - ode.phi(3, 1e-5)) > 1e-4


def test_adams_coefficients_integrate_polynomials():
    """Σ_j c_j p(u_j) = ∫_0^1 p(u) du for every polynomial of degree < k (the defining property), and the
    published Adams–Bashforth 4 / Adams–Moulton 3 tables."""
    for k in (1, 2, 3, 4, 5):
        for implicit in (False, True):
            c = ode.adams_coefficients(k, implicit)
            nodes = [1 - j for j in range(k)] if implicit else [-j for j in range(k)]
            for deg in range(k):
                assert math.isclose(sum(cj * u ** deg for cj, u in zip(c, nodes)), 1 / (deg + 1), abs_tol=1e-13)
    np.testing.assert_allclose(ode.adams_coefficients(4), [55 / 24, -59 / 24, 37 / 24, -9 / 24], atol=1e-14)
    np.testing.assert_allclose(ode.adams_coefficients(4, implicit=True), [9 / 24, 19 / 24, -5 / 24, 1 / 24], atol=1e-14)


def testlagrange_integrals_against_quadrature():
    from scipy.integrate import quad
    from scipy.interpolate import lagrange
    nodes = [3.0, 1.2, 0.5, 0.2]
    for rho, (a, b) in ((1.0, (0.5, 0.0)), (3.0, (0.5, 0.0)), (5.0, (1.2, 0.5))):
        w = ode.lagrange_integrals(nodes, a, b, rho)
        v = [s ** (1 / rho) for s in nodes]
        for j in range(len(nodes)):
            ell = lagrange(v, np.eye(len(nodes))[j])
            exact = quad(lambda s: ell(s ** (1 / rho)), b, a, epsabs=1e-13)[0]
            assert math.isclose(-w[j], exact, rel_tol=1e-9, abs_tol=1e-11), (rho, j)


SEQ5 = torch.tensor([999, 700, 400, 250, 120])      # h = 2.57, 1.77, 0.76, 0.84 in λ: r = h_{i−1}/h_i = 1.45, 2.35, 0.90
_2M_STEPS, _LOF = {1: "line", 2: "line", 3: "line"}, dict(lower_order_final=True)


def data_prediction_step_misses(solver, steps: dict, **kw) -> list[float]:
    """Each data-prediction step i → i+1 of `solver` on SEQ5 (x̄ and x̂_0 = D = x̄ − σ ε at its own visited points) against
    e^{−h} x̄_i + ∫_0^h e^{−(h−u)} p(λ_i + u) du by 40-point Gauss–Legendre quadrature (notebook 08 §3), p by numpy's polyfit
    through the D's: steps[i] = "quadratic" (through the last three D's, 3M) or "line" (the line through the last two D's,
    held at its value at the step's midpoint λ_i + h/2: Lu et al. 2022b's Alg. 2 coefficients (1 + 1/(2r)) D_i − D_{i−1}/(2r)
    are exactly that value, r entering nowhere here; UniP-2 with B(h) = 1 − e^{−h} is that step too, and UniP-3's solved
    a_k make it the quadratic's, notebook 08 §4). Returns the largest miss of each step, in the order of `steps`."""
    _, tr = solver(EPS, X_T, AB, SEQ5, return_trajectory=True, **kw)
    sig = [float(ode.sigma_at(AB, t)) for t in SEQ5]
    xbar = [x * math.sqrt(s ** 2 + 1) for x, s in zip(tr["x"], sig)]
    D = [np.asarray(xb - s * EPS(x, torch.full((8,), int(t)))).reshape(-1) for xb, x, s, t in zip(xbar, tr["x"], sig, SEQ5)]
    lam = [-math.log(s) for s in sig]
    u, wq = np.polynomial.legendre.leggauss(40)
    misses = []
    for i, kind in steps.items():
        h = lam[i + 1] - lam[i]
        if kind == "quadratic":
            coef = np.polyfit(lam[i - 2:i + 1], np.stack(D[i - 2:i + 1]), 2)
            p = lambda v, coef=coef: np.polyval(coef, v)                                  # noqa: E731
        else:
            held = np.polyval(np.polyfit(lam[i - 1:i + 1], np.stack(D[i - 1:i + 1]), 1), lam[i] + h / 2)
            p = lambda v, held=held: held                                                 # noqa: E731
        integral = sum(w * math.exp(-(h - uk)) * p(lam[i] + uk) for uk, w in zip(h / 2 * (u + 1), h / 2 * wq))
        expected = math.exp(-h) * xbar[i] + torch.from_numpy(integral.reshape(8, 3))
        misses.append(float((xbar[i + 1] - expected).abs().max()))
    return misses


def test_data_prediction_steps_are_the_integrals_of_their_polynomials():
    """Every step of DPM-Solver++(2M) after the first, 3M's 2M step (its second) and third-order steps, and with
    lower_order_final its step before the last as 2M, land where the quadrature of `data_prediction_step_misses` says
    (1e-11); so do UniP-3's (predictor only, "bh2"): 2M's step, then the quadratic's, then, its order lowered to the steps
    left, 2M's again. With "bh1" only the solved (quadratic) step does; the published 3M coefficient misses (notebook 08
    §3, §4)."""
    assert max(data_prediction_step_misses(ode.dpm_solver_pp_2m, _2M_STEPS)) < 1e-11
    assert max(data_prediction_step_misses(ode.dpm_solver_pp_3m, {1: "line", 2: "quadratic", 3: "quadratic"})) < 1e-11
    assert max(data_prediction_step_misses(ode.dpm_solver_pp_3m, {1: "line", 2: "quadratic", 3: "line"}, **_LOF)) < 1e-11
    assert data_prediction_step_misses(ode.dpm_solver_pp_3m, {3: "quadratic"}, published=True)[0] > 1e-6          # 2e-3
    unip3 = {1: "line", 2: "quadratic", 3: "line"}
    assert max(data_prediction_step_misses(ode.unipc, unip3, order=3, corrector=False)) < 1e-11
    bh1 = data_prediction_step_misses(ode.unipc, unip3, order=3, corrector=False, variant="bh1")
    assert bh1[1] < 1e-11 and min(bh1[0], bh1[2]) > 1e-6, bh1                                      # 3e-3 and 1e-2


DPM_PP_STEP_MUTANTS = {       # name: (solver, the steps its check looks at, the solver's options, the mutation in its source)
    "2M with r inverted (r/2 for 1/(2r))": (ode.dpm_solver_pp_2m, _2M_STEPS, {}, ("h / (2 * h_prev)", "h_prev / (2 * h)")),
    "2M with r = 1 (λ-uniform steps assumed)": (ode.dpm_solver_pp_2m, _2M_STEPS, {}, ("h / (2 * h_prev)", "1 / 2")),
    "3M's 2M step with 1 for 1/2": (ode.dpm_solver_pp_3m, {1: "line"}, {}, ("upd + 0.5 * h", "upd + 1.0 * h")),
    "3M's 2M step with r inverted": (ode.dpm_solver_pp_3m, {1: "line"}, {}, ("phi(1, -h) * D1_0", "phi(1, -h) * D1_0 * r0 ** 2")),
    "3M's third-order step with D2 over r0 alone": (ode.dpm_solver_pp_3m, {2: "quadratic", 3: "quadratic"}, {},
                                                    ("D2 = (D1_0 - D1_1) / (r0 + r1)", "D2 = (D1_0 - D1_1) / r0")),
    "lower_order_final lowering the step two before the last": (ode.dpm_solver_pp_3m, {2: "quadratic", 3: "line"}, _LOF,
                                                                 ("i == len(pairs) - 2)", "i == len(pairs) - 3)")),
    "UniP-3's order not lowered to the steps left": (ode.unipc, {3: "line"}, dict(order=3, corrector=False),
                                                      ("p = min(order, len(Ds), n - i)", "p = min(order, len(Ds))")),
}


@pytest.mark.parametrize("name", DPM_PP_STEP_MUTANTS)
def test_dpm_solver_pp_step_check_fails_for_mutant(name):
    """From the mutation sweep of notebook 08's solvers: with diffusers absent (test_multistep_solvers_equal_diffusers
    skipped) 3M's 2M step with 1 for 1/2 was caught by one statistical test of tests/test_nb08_claims.py only, UniPC without
    the lowering only by another mutant's check failing by chance; 2M with r wrong by tests whose grids happen to have
    r ≠ 1 (test_convergence_order's uniform-t grids, notebook 09's Gaussian runs)."""
    solver, steps, options, (old, new) = DPM_PP_STEP_MUTANTS[name]
    assert max(data_prediction_step_misses(mutant(solver, old, new), steps, **options)) > 1e-6      # 1e-3 to 0.03 measured


def test_unipc_coefficients_match_the_taylor_terms():
    """B(h) Σ_k a_k r_k^{m−1} h^m/m! = ∫_0^h e^{−(h−u)} u^m/m! du for m = 1..p (corrector, r_p = 1), by quadrature."""
    from scipy.integrate import quad
    h, r = 0.7, [-0.8, -1.9]
    B = -math.expm1(-h)
    for nodes in (r, r + [1.0]):
        a = ode.unipc_coefficients(nodes, h)
        for m in range(1, len(nodes) + 1):
            exact = quad(lambda u: math.exp(-(h - u)) * u ** m / math.factorial(m), 0, h, epsrel=1e-13)[0]
            got = B * sum(ak * rk ** (m - 1) for ak, rk in zip(a, nodes)) * h ** m / math.factorial(m)
            assert math.isclose(got, exact, rel_tol=1e-10), (len(nodes), m)
    assert ode.unipc_coefficients([-1.3], h) == [0.5]           # the paper's simplified p = 2 predictor (= 2M)


# The authors' uni_pc.py (wl-zhao/UniPC, `multistep_uni_pc_bh_update`, data prediction, float64), run once outside this
# repository on nodes λ_t + r_k h with h = 0.7: B_h (its sign flipped: it writes hh = -h) and its ρ's for the predictor
# (nodes -0.8, -1.9), the order-3 corrector (-0.8, -1.9, 1) and the order-2 corrector (-0.8, 1)
UNIPC_REFERENCE = {
    "bh1": (0.7, [0.9496099826656657, -0.5484154851321767],
            [0.14620713141098846, -0.04975164642237719, 0.30473901254487756], [0.0660517010638253, 0.33514279646966355]),
    "bh2": (0.5034146962085905, [1.3204361987686895, -0.7625737637056548],
            [0.20330155785774912, -0.0691798486574849, 0.42374072586277056], [0.0918451350206902, 0.4660173000423446])}


@pytest.mark.parametrize("variant", ode.UNIPC_VARIANTS)
def test_unipc_coefficients_equal_the_reference_implementation(variant):
    B, predictor, corrector_3, corrector_2 = UNIPC_REFERENCE[variant]
    h, r = 0.7, [-0.8, -1.9]
    assert math.isclose(ode.unipc_B(h, variant), B, rel_tol=1e-15)
    for nodes, theirs in ((r, predictor), (r + [1.0], corrector_3), ([-0.8, 1.0], corrector_2)):
        np.testing.assert_allclose(ode.unipc_coefficients(nodes, h, variant), theirs, rtol=1e-12)


def unipc_first_step_misses() -> dict:
    """UniPC's first step on SEQ5 (999 → 700) against the trapezoid rule of uni_pc.py's UniC-1 (a = ½) written out from
    its parts: the DDIM step `ode.euler` gives the predicted point, D' = x̄' − σ_s ε(x', s) there, and the corrected
    x̄_s = e^{−h} x̄_t + (1 − e^{−h}) D_t + B(h)(D' − D_t)/2, B(h) = 1 − e^{−h} ("bh2": D held at the mean of D_t and D')
    or h ("bh1") (notebook 08 §4). The largest miss for each (variant, order)."""
    s_t, s_s = (float(ode.sigma_at(AB, int(t))) for t in SEQ5[:2])
    h = math.log(s_t / s_s)
    xb_t = X_T * math.sqrt(s_t ** 2 + 1)
    D_t = xb_t - s_t * EPS(X_T, torch.full((8,), int(SEQ5[0])))
    x_pred = ode.euler(EPS, X_T, AB, SEQ5[:2], return_trajectory=True)[1]["x"][1]
    D_pred = x_pred * math.sqrt(s_s ** 2 + 1) - s_s * EPS(x_pred, torch.full((8,), int(SEQ5[1])))
    misses = {}
    for variant, B in (("bh2", -math.expm1(-h)), ("bh1", h)):
        expected = math.exp(-h) * xb_t + (1 - math.exp(-h)) * D_t + B / 2 * (D_pred - D_t)
        for order in (2, 3):
            x_s = ode.unipc(EPS, X_T, AB, SEQ5, return_trajectory=True, order=order, variant=variant)[1]["x"][1]
            misses[(variant, order)] = float((x_s * math.sqrt(s_s ** 2 + 1) - expected).abs().max())
    return misses


def test_unipc_first_corrector_is_the_trapezoid_rule_and_a_solved_one_is_not():
    """The library's first step is the trapezoid corrector (3e-14); with the one-node corrector solved from the Vandermonde
    system instead of set to a = ½ (a slip the mutation sweep found caught by the diffusers comparison alone, skipped
    without diffusers: one step of a higher-order run, so no order moves) it misses by 2e-3 ("bh2") and 7e-3 ("bh1")."""
    assert max(unipc_first_step_misses().values()) < 1e-12
    solved = mutant(ode.unipc_coefficients, "    if len(r) == 1:\n", "    if len(r) == 1 and r[0] < 0:\n")
    with mock.patch.object(ode, "unipc_coefficients", solved):
        assert min(unipc_first_step_misses().values()) > 1e-4


def test_unipc_refuses_an_unknown_variant_before_calling_the_network():
    """One line naming the argument and the choices, from the solver, `solve`, `nfe` and `unipc_coefficients`."""
    def eps(x, t):
        raise AssertionError("the network was called")
    seq = ode.lambda_timesteps(5, AB)
    for call in (lambda: ode.unipc(eps, X_T, AB, seq, variant="bh3"), lambda: ode.unipc_3(eps, X_T, AB, seq, variant="BH1"),
                 lambda: ode.solve("unipc_2", eps, X_T, AB, seq, variant=None), lambda: ode.nfe("unipc_3", 5, variant=2),
                 lambda: ode.unipc_coefficients([-1.0], 0.5, "bh")):
        with pytest.raises(ValueError, match=r"^variant must be one of \('bh1', 'bh2'\) \(UniPC's B\(h\) = h or 1 - e\^-h\), "
                                             r"got [^\n]*$"):
            call()
    assert ode.nfe("unipc_2", 5, variant="bh1") == 5


def test_multistep_solvers_equal_diffusers():
    """DPM-Solver++(2M), DPM-Solver++(3M) with the published coefficient and UniPC (both B(h), diffusers' solver_type)
    equal diffusers' schedulers step for step (float32 coefficients: 1e-6); the Taylor 3M differs."""
    diffusers = pytest.importorskip("diffusers")
    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  timestep_spacing="trailing")

    def run(sch, S):
        sch.set_timesteps(S)
        x = X_T
        for t in sch.timesteps:
            x = sch.step(EPS(x, torch.full((8,), int(t))), t, x).prev_sample
        return x.double()

    for S in (4, 12):
        seq = schedule.timesteps(S, 1000, "trailing")
        theirs = run(diffusers.DPMSolverMultistepScheduler(**common, solver_order=3, lower_order_final=False), S)
        torch.testing.assert_close(ode.dpm_solver_pp_3m(EPS, X_T, AB, seq, published=True), theirs, rtol=0, atol=2e-6)
        assert float((ode.dpm_solver_pp_3m(EPS, X_T, AB, seq) - theirs).abs().max()) > 1e-5
        theirs_lof = run(diffusers.DPMSolverMultistepScheduler(**common, solver_order=3, lower_order_final=True), S)
        torch.testing.assert_close(ode.dpm_solver_pp_3m(EPS, X_T, AB, seq, published=True, lower_order_final=True),
                                   theirs_lof, rtol=0, atol=2e-6)
        assert float((theirs_lof - theirs).abs().max()) > 1e-4       # the option changes the result
        for (order, ours), variant in itertools.product(((2, ode.unipc_2), (3, ode.unipc_3)), ode.UNIPC_VARIANTS):
            sch = diffusers.UniPCMultistepScheduler(**common, solver_order=order, solver_type=variant)
            theirs = run(sch, S)
            x0, tr = ours(EPS, X_T, AB, seq, return_trajectory=True, variant=variant)
            torch.testing.assert_close(tr["x"][-2], sch.last_sample.double(), rtol=0, atol=2e-6)    # corrected, at seq[-1]
            if variant == "bh2":      # diffusers' bh1 step to sigma = 0 is NaN: B_h = hh = -inf times a correction of 0
                torch.testing.assert_close(x0, theirs, rtol=0, atol=2e-6)
        # DPM-Solver++(2M) (diffusers' default "midpoint" form): trailing steps are unequal in λ, so r = h_{i−1}/h_i ≠ 1
        theirs = run(diffusers.DPMSolverMultistepScheduler(**common, solver_order=2, lower_order_final=False), S)
        torch.testing.assert_close(ode.dpm_solver_pp_2m(EPS, X_T, AB, seq), theirs, rtol=0, atol=2e-6)


@pytest.fixture(scope="module")
def ref_100():
    """scipy's solution of the ODE from X_T at t = 999 to t = 100."""
    return ode.reference_solution(EPS, X_T, AB, 999, 100, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def errors_at_t100(ref_100):
    """RMS error at t = 100 (before the final step) on λ-uniform grids 999 → 100, for the notebook 08 solvers."""
    Ss = (40, 56, 80, 113, 160)
    ref = ref_100
    runs = {"dpm_solver_pp_3m": (ode.dpm_solver_pp_3m, {}), "3m_published": (ode.dpm_solver_pp_3m, dict(published=True)),
            "unipc_2": (ode.unipc, dict(order=2)), "unipc_3": (ode.unipc, dict(order=3)),
            "unip_2": (ode.unipc, dict(order=2, corrector=False)), "unip_3": (ode.unipc, dict(order=3, corrector=False)),
            "unipc_2_bh1": (ode.unipc, dict(order=2, variant="bh1")), "unipc_3_bh1": (ode.unipc, dict(order=3, variant="bh1")),
            "unip_2_bh1": (ode.unipc, dict(order=2, corrector=False, variant="bh1")),
            "unip_3_bh1": (ode.unipc, dict(order=3, corrector=False, variant="bh1")),
            "ab3_sigma": (ode.ipndm, dict(order=3, afs=False, rho=1.0)),
            "ab4_rho3": (ode.ipndm, dict(order=4, afs=False, rho=3.0)),
            "ab2_pc": (ode.ipndm, dict(order=2, afs=False, rho=1.0, corrector=True)),
            "ab3_pc": (ode.ipndm, dict(order=3, afs=False, rho=1.0, corrector=True)),
            "tab2": (ode.deis_tab, dict(order=2)), "tab3": (ode.deis_tab, dict(order=3)), "tab4": (ode.deis_tab, dict(order=4))}
    out = {}
    for name, (f, kw) in runs.items():
        errs = [float((f(EPS, X_T, AB, ode.lambda_timesteps(S, AB, t_min=100), return_trajectory=True, **kw)[1]["x"][-2]
                       - ref).pow(2).mean().sqrt()) for S in Ss]
        p, cov = np.polyfit(np.log(Ss), np.log(errs), 1, cov=True)
        out[name] = (-p[0], math.sqrt(cov[0, 0]))
    return out


@pytest.mark.parametrize("name,order", [("dpm_solver_pp_3m", 3), ("3m_published", 2), ("unipc_2", 3), ("unipc_3", 4),
                                        ("unip_2", 2), ("unip_3", 3), ("unipc_2_bh1", 3), ("unipc_3_bh1", 4),
                                        ("unip_2_bh1", 2), ("unip_3_bh1", 3), ("ab3_sigma", 3), ("ab4_rho3", 4),
                                        ("ab2_pc", 3), ("ab3_pc", 4), ("tab2", 2), ("tab3", 3), ("tab4", 4)])
def test_fast_solver_orders(errors_at_t100, name, order):
    """Fitted log-log slope within 3 standard errors + 0.2 (the pre-asymptotic bias measured at these S) of the
    order; the corrector adds one order at no extra call; the published 3M coefficient is second order."""
    slope, se = errors_at_t100[name]
    assert abs(slope - order) < 0.2 + 3 * se, (name, slope, se)


def test_published_3m_is_not_third_order(errors_at_t100):
    slope, se = errors_at_t100["3m_published"]
    slope3, se3 = errors_at_t100["dpm_solver_pp_3m"]
    assert slope3 - slope > 0.5 + 3 * math.hypot(se, se3)


# ------------------------------------------- a wrong coefficient fails the same check (orders against scipy's solution)

def has_order(solver, ref, claimed: int, **kw) -> bool:
    """The check each solver formula must pass and each mutant of it fail: the fitted log-log slope of the RMS error at
    t = 100 against scipy's solution (`ref_100`), on Karras ρ = 7 grids 999 → 100 (steps unequal in λ and in σ), is
    within 0.2 + 3 standard errors of the `claimed` order."""
    Ss = (40, 56, 80, 113, 160)
    errs = [float((solver(EPS, X_T, AB, ode.karras_timesteps(S, AB, t_min=100), return_trajectory=True, **kw)[1]["x"][-2]
                   - ref).pow(2).mean().sqrt()) for S in Ss]
    p, cov = np.polyfit(np.log(Ss), np.log(errs), 1, cov=True)
    return abs(-p[0] - claimed) < 0.2 + 3 * math.sqrt(cov[0, 0])


def mutant(fn, old: str, new: str):
    """fn compiled from its own source with `old` replaced by `new` (every occurrence), in fn's module."""
    src = textwrap.dedent(inspect.getsource(fn))
    assert old in src, (fn.__name__, old)
    namespace = {}
    exec(compile(src.replace(old, new), f"<mutant of {fn.__name__}>", "exec"), fn.__globals__, namespace)
    return namespace[fn.__name__]


SOLVER_MUTANTS = {       # name: (solver, its claimed order, the mutation in its source)
    "DPM-Solver-2, the half step taken as a whole step": (
        ode.dpm_solver_2, 2, ("u = xbar + (sig_m - sig_t) * d", "u = xbar + (sig_s - sig_t) * d")),
    "DPM-Solver-2, r1 = 3/4 in lambda with r1 = 1/2's weights": (
        ode.dpm_solver_2, 2, ("sig_m = math.sqrt(sig_t * sig_s)", "sig_m = sig_t ** 0.25 * sig_s ** 0.75")),
    "DPM-Solver++(2M), 1 instead of 1/2 in front of the difference": (ode.dpm_solver_pp_2m, 2, ("(2 * h_prev)", "h_prev")),
}
UNIPC_RUNS = [(2, True, 3), (3, True, 4), (3, False, 3)]       # (order, corrector, claimed order): UniPC-2, UniPC-3, UniP-3


@pytest.mark.parametrize("solver,claimed", [(ode.dpm_solver_2, 2), (ode.dpm_solver_pp_2m, 2)])
def test_solver_order_check_passes_for_the_library(ref_100, solver, claimed):
    assert has_order(solver, ref_100, claimed)


@pytest.mark.parametrize("name", SOLVER_MUTANTS)
def test_solver_order_check_fails_for_mutant(ref_100, name):
    solver, claimed, (old, new) = SOLVER_MUTANTS[name]
    assert not has_order(mutant(solver, old, new), ref_100, claimed)


@pytest.mark.parametrize("variant", ode.UNIPC_VARIANTS)
@pytest.mark.parametrize("order,corrector,claimed", UNIPC_RUNS)
def test_unipc_order_check_passes_for_the_library(ref_100, order, corrector, claimed, variant):
    assert has_order(ode.unipc, ref_100, claimed, order=order, corrector=corrector, variant=variant)


@pytest.mark.parametrize("order,corrector,claimed", UNIPC_RUNS)
def test_unipc_order_check_fails_with_bh1_of_the_wrong_sign(ref_100, order, corrector, claimed):
    """B(h) = −h, uni_pc.py's hh for data prediction taken without the sign its update subtracts: it cancels from the
    solved a_k but not from the a = ½ of the p = 2 predictor and the first corrector."""
    wrong_sign = mutant(ode.unipc_B, 'return h if _check_unipc_variant(variant) == "bh1"',
                        'return -h if _check_unipc_variant(variant) == "bh1"')
    with mock.patch.object(ode, "unipc_B", wrong_sign):
        assert not has_order(ode.unipc, ref_100, claimed, order=order, corrector=corrector, variant="bh1")


@pytest.mark.parametrize("order,corrector,claimed", UNIPC_RUNS)
def test_unipc_order_check_fails_without_the_factorial(ref_100, order, corrector, claimed):
    """UniPC's a_k from the Vandermonde system with the m! of its right-hand side dropped (right for m = 1 only)."""
    without_factorial = mutant(ode.unipc_coefficients, "math.factorial(m) * h * phi", "h * phi")
    with mock.patch.object(ode, "unipc_coefficients", without_factorial):
        assert not has_order(ode.unipc, ref_100, claimed, order=order, corrector=corrector)


SIG_LINEAR = 0.05 * torch.arange(1, 201, dtype=torch.float64)           # σ_t = 0.05 (t+1), t = 0..199
AB_SIG_LINEAR = 1 / (1 + SIG_LINEAR ** 2)
EPS_SIG_LINEAR = toy.exact_eps(MIX, AB_SIG_LINEAR)


def ipndm_is_adams_bashforth_in_sigma_on_an_even_grid() -> bool:
    """With σ(t) linear in t (a schedule made for the test), integer grids with a fixed stride are uniform in σ down to
    σ = 0: there iPNDM's equal-step coefficients must give exactly variable-step Adams–Bashforth in σ (the polynomial
    through the actual nodes, integrated exactly: `ode.lagrange_integrals`, checked against scipy's lagrange and quad
    above, and of order k against scipy's solution in test_fast_solver_orders), for k = 2, 3, 4; with the corrector
    (notebook 08 §4) the equal-step Adams–Moulton weights must give the variable-step corrector likewise (ab2_pc, ab3_pc
    measure only the latter, so a corrector run with explicit weights on its implicit nodes went unseen)."""
    x = X_T * math.sqrt(float(AB_SIG_LINEAR[-1]))
    seq = torch.arange(199, -1, -10)                                  # σ-steps of 0.5, the last one to σ = 0 too
    return all(float((ode.ipndm(EPS_SIG_LINEAR, x, AB_SIG_LINEAR, seq, order=k, afs=False, corrector=c)
                      - ode.ipndm(EPS_SIG_LINEAR, x, AB_SIG_LINEAR, seq, order=k, afs=False, rho=1.0, corrector=c)).abs().max())
               < 1e-10 for k in (2, 3, 4) for c in (False, True))     # rounding: 8e-13 at k = 4 with the corrector


_adams = ode.adams_coefficients
ADAMS_MUTANTS = {
    "Adams-Moulton weights in Adams-Bashforth's place": lambda k, implicit=False: _adams(k, not implicit),
    "the weights of one step fewer": lambda k, implicit=False: _adams(max(k - 1, 1), implicit),
    "the last weight's sign flipped (+1/2 in 3/2, -1/2; -5/12 in 23/12, -16/12, 5/12; ...)":
        lambda k, implicit=False: [*_adams(k, implicit)[:-1], -_adams(k, implicit)[-1]] if k > 1 else _adams(k, implicit),
}


@pytest.mark.parametrize("name", ADAMS_MUTANTS)
def test_ipndm_check_fails_for_mutant_coefficients(name):
    with mock.patch.object(ode, "adams_coefficients", ADAMS_MUTANTS[name]):
        assert not ipndm_is_adams_bashforth_in_sigma_on_an_even_grid()


def test_ipndm_check_fails_for_a_corrector_with_explicit_weights():
    """The corrector's step with the Adams–Bashforth weights of its k + 1 nodes (the implicit flag dropped), which only
    rho=None reads: the check's x_0 then moves by 0.020, 0.022 and 0.025 at k = 2, 3, 4."""
    explicit = mutant(ode._multistep, "w = weights(cn, at[i], at[i + 1], True)", "w = weights(cn, at[i], at[i + 1], False)")
    with mock.patch.object(ode, "_multistep", explicit):
        assert not ipndm_is_adams_bashforth_in_sigma_on_an_even_grid()


def test_ipndm_equal_step_coefficients_on_an_evenly_spaced_sigma_grid():
    """iPNDM's equal-step coefficients are variable-step Adams–Bashforth in σ on an even σ grid, and on an uneven grid
    they are not (notebook 08 §6)."""
    assert ipndm_is_adams_bashforth_in_sigma_on_an_even_grid()
    eps, ab, x = EPS_SIG_LINEAR, AB_SIG_LINEAR, X_T * math.sqrt(float(AB_SIG_LINEAR[-1]))
    uneven = torch.tensor([199, 150, 120, 60, 40, 9])
    equal_step, variable_step = ode.ipndm(eps, x, ab, uneven, afs=False), ode.ipndm(eps, x, ab, uneven, afs=False, rho=1.0)
    assert float((equal_step - variable_step).abs().max()) > 1e-4


def test_ipndm_equal_step_coefficients_are_second_order_on_a_smooth_grid():
    """The order count of notebook 08 §6: equal-step weights with dσ frozen over each step are second order on a smooth
    uneven grid (variable-step Adams–Bashforth 3 is third), and rounding to integer steps spoils even that. The smooth
    grid: the same λ-uniform steps on the linear schedule with 100 times finer steps (β/100), where rounding is < 1%.
    On the ring; on the 3-D mixture MIX the equal-step slope is still rising at these S (1.4 to 1.8; 1.9 at S = 640)."""
    fine = schedule.alpha_bar(schedule.beta_schedule("linear", 100 * 999 + 1, 1e-6, 2e-4))
    Ss, ring = (80, 113, 160, 226, 320), toy.eight_gaussians()
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def error(eps, ab, t_min, ref, S, **kw):
        return float((ode.ipndm(eps, x_T, ab, ode.lambda_timesteps(S, ab, t_min=t_min), return_trajectory=True, order=3,
                                afs=False, **kw)[1]["x"][-2] - ref).pow(2).mean().sqrt())

    def order(eps, ab, t_min, ref, **kw):
        errs = [error(eps, ab, t_min, ref, S, **kw) for S in Ss]
        p, cov = np.polyfit(np.log(Ss), np.log(errs), 1, cov=True)
        return -p[0], math.sqrt(cov[0, 0]), errs[-1]

    eps_fine, eps = toy.exact_eps(ring, fine), toy.exact_eps(ring, AB)
    ref_fine = ode.reference_solution(eps_fine, x_T, fine, len(fine) - 1, 10_000, rtol=1e-10, atol=1e-10)
    p_eq, se_eq, last_eq = order(eps_fine, fine, 10_000, ref_fine)
    p_ab, se_ab, last_ab = order(eps_fine, fine, 10_000, ref_fine, rho=1.0)
    assert abs(p_eq - 2) < 0.2 + 3 * se_eq and 3 - p_eq > 0.5, (p_eq, se_eq)
    assert abs(p_ab - 3) < 0.2 + 3 * se_ab, (p_ab, se_ab)
    ref = ode.reference_solution(eps, x_T, AB, 999, 100, rtol=1e-10, atol=1e-10)
    # integer steps, at the largest S as last_eq and last_ab (only that S: the fits of these grids are not checked)
    assert error(eps, AB, 100, ref, Ss[-1]) > 3 * last_eq             # the equal-step error grows
    assert abs(error(eps, AB, 100, ref, Ss[-1], rho=1.0) / last_ab - 1) < 0.1


def test_solvers_that_end_with_x0_equal_d_stop_at_the_last_jumps_error():
    """Notebook 08 §7, past 40 calls every grid ends with the integer steps 3, 2, 1, 0 and each solver stops at its last
    steps' error: DPM-Solver++(2M) and UniPC-3 on λ-uniform steps end with the first-order jump x0 = D from σ(0) = 0.01,
    so their error stays near that jump's own error (from scipy's exact state at t = 0); iPNDM's equal-step weights stop
    too; with variable-step weights (rho=1) its last step is of higher order and it falls far lower."""
    ring = toy.eight_gaussians()
    eps, x_T = toy.exact_eps(ring, AB), torch.randn(256, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = ode.reference_solution(eps, x_T, AB, 999, rtol=1e-10, atol=1e-10)
    x_t0 = ode.reference_solution(eps, x_T, AB, 999, 0, rtol=1e-10, atol=1e-10)
    jump = diffusion.predict_x0(x_t0, eps(x_t0, torch.zeros(256, dtype=torch.long)), float(AB[0]))
    floor = float((jump - ode.reference_solution(eps, x_t0, AB, 0, rtol=1e-10, atol=1e-10)).pow(2).mean().sqrt())
    rms = {}
    for S in (80, 320):
        lam, power = ode.lambda_timesteps(S, AB), ode.power_timesteps(S + 1, 1000, 3.0)
        for name, x0 in (("2m", ode.dpm_solver_pp_2m(eps, x_T, AB, lam)), ("unipc", ode.unipc_3(eps, x_T, AB, lam)),
                         ("ipndm", ode.ipndm(eps, x_T, AB, power)), ("ab3", ode.ipndm(eps, x_T, AB, power, rho=1.0))):
            rms[(name, S)] = float((x0 - ref).pow(2).mean().sqrt())
    for name in ("2m", "unipc"):
        assert 0.5 < rms[(name, 320)] / floor < 2 and rms[(name, 80)] / rms[(name, 320)] < 2, (name, rms, floor)
    assert rms[("ipndm", 80)] / rms[("ipndm", 320)] < 2 and rms[("ab3", 80)] / rms[("ab3", 320)] > 3, rms
    assert rms[("ab3", 320)] < min(floor, rms[("ipndm", 320)]) / 5, (rms, floor)


def test_analytical_first_step():
    """AFS uses x_T as ε(x_T, T−1): off by about √(ᾱ/(1−ᾱ))·E[x_0|x_T] ≈ √ᾱ_T μ for data of mean μ (Zhou et al.
    2024, the AMED-Solver paper; notebook 08 §6), and it saves exactly the first call."""
    a = float(AB[999])
    e = EPS(X_T, torch.full((8,), 999))
    mu = MIX.weights @ MIX.means
    torch.testing.assert_close(X_T - e, math.sqrt(a / (1 - a)) * mu.expand(8, 3), rtol=0.1, atol=2e-4)
    calls = []
    ode.ipndm(lambda x, t: calls.append(int(t[0])) or EPS(x, t), X_T, AB, torch.tensor([999, 500, 100]))
    assert calls == [500, 100]


def test_every_solver_runs_a_unet_with_a_callback():
    """ode.solve drives each registered solver with a float32 UNet (float steps where a solver needs them),
    one callback per step, and never calls the network at σ = 0 (t = −1)."""
    from ddimlab import train
    from ddimlab.unet import UNet
    torch.manual_seed(0)
    net = UNet(in_ch=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
               resolution=8, num_groups=4).eval()
    eps_net = train.eps_fn(net)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    seq = schedule.timesteps(4, 1000, "trailing")
    for name in ode.SOLVERS:
        infos, ts = [], []

        def eps(x, t):
            ts.append(float(t[0]))
            return eps_net(x, t)

        x0 = ode.solve(name, eps, x_T, AB, seq, callback=infos.append)
        assert x0.dtype == torch.float32 and bool(torch.isfinite(x0).all()), name
        assert [i["i"] for i in infos] == [0, 1, 2, 3] and infos[-1]["s"] == -1, name
        assert len(ts) == ode.nfe(name, 4) and min(ts) >= 0, (name, ts)


@pytest.mark.parametrize("rule", ["logsnr", "karras", "power2", "power3"])
def test_step_rules_give_as_many_steps_as_asked(rule):
    """The σ-based rules crowd their steps at low noise, where several round to one integer step: power3 gave 20
    steps for S = 21 (so 'iPNDM with 20 calls' made 19) and 46 for S = 50. Now S distinct steps, each where it
    rounds to unless that integer is taken (then raised just enough); where nothing collides the rules' own
    points are unchanged (test_lambda_timesteps, test_karras_and_power_timesteps)."""
    for S in (10, 21, 50, 200, 1000):
        seq = ode.rule_timesteps(rule, S, AB)
        assert len(seq) == S and bool((seq[1:] < seq[:-1]).all()) and int(seq[0]) == 999 and int(seq[-1]) >= 0, (S, seq)
    assert ode.rule_timesteps("power3", 21, AB).tolist()[-5:] == [12, 6, 2, 1, 0]     # 1000 (2/21)³ − 1 rounds to 0
    assert ode.lambda_timesteps(30, AB, t_min=100).tolist()[-1] == 100
    with pytest.raises(ValueError, match=r"in 1\.\.900 \(the distinct steps from t_max = 999 to t_min = 100"):
        ode.lambda_timesteps(950, AB, t_min=100)


def test_karras_and_power_timesteps():
    seq = ode.karras_timesteps(10, AB)
    sig = ode.sigma_at(AB, seq)
    assert int(seq[0]) == 999 and int(seq[-1]) == 0 and len(seq) == 10
    spread = lambda sig: float(((d := sig[:-1] ** (1 / 7) - sig[1:] ** (1 / 7)).std() / d.mean()))   # noqa: E731
    assert spread(sig) < 0.02                  # ≈ uniform in σ^{1/7} up to rounding to integer steps (0.004 here)
    for wrong_rho in (5.0, 10.0):              # the same check sees a grid made for another ρ (0.16, 0.12)
        assert spread(ode.sigma_at(AB, ode.karras_timesteps(10, AB, rho=wrong_rho))) > 0.1
    q = ode.power_timesteps(6, 1000, kappa=2.0)
    assert q.tolist() == [999, 693, 443, 249, 110, 27]                      # t + 1 = 1000 (1 − i/6)²
    assert ode.power_timesteps(10, 1000, kappa=1.0).tolist() == schedule.timesteps(10, 1000, "trailing").tolist()
    with pytest.raises(ValueError, match="kappa"):
        ode.power_timesteps(5, 1000, kappa=0.5)
    with pytest.raises(ValueError, match="rho"):
        ode.karras_timesteps(5, AB, rho=0.5)


def test_ipndm_vs_is_variable_step_ipndm_by_name():
    """`--sampler ipndm_vs` (ode.solve) runs iPNDM with variable-step weights in σ (rho = 1), which notebook 08 §7 finds
    lowest from 80 calls on; on a grid of unequal steps it differs from plain iPNDM."""
    mix = toy.eight_gaussians()
    ab = schedule.make_alpha_bar("linear", 1000)
    eps = toy.exact_eps(mix, ab)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seq = ode.power_timesteps(12, 1000, 3.0)
    named = ode.solve("ipndm_vs", eps, x_T, ab, seq)
    assert torch.equal(named, ode.ipndm(eps, x_T, ab, seq, rho=1.0))
    assert not torch.allclose(named, ode.ipndm(eps, x_T, ab, seq), atol=1e-6)
    assert ode.nfe("ipndm_vs", 12) == 11 and ode.DEFAULT_RULES["ipndm_vs"] == "power3"


# ------------------------------------------------------------- DEIS (Zhang & Chen 2023): tAB and ρAB (notebook 08 §6)

_STEPS_NP, _LOG_AB_NP = np.arange(-1, 1000), np.concatenate([[0.0], np.log(AB.numpy())])       # t = −1, 0, …, 999


def _sigma_np(t) -> float:
    """σ(τ) of AB with log ᾱ interpolated linearly by numpy (ᾱ_{−1} = 1), for the quadratures below."""
    return math.sqrt(math.expm1(-np.interp(t, _STEPS_NP, _LOG_AB_NP)))


def _integral_dsigma(f, df, a: int, b: int) -> float:
    """∫_a^b f(τ) dσ(τ) over integer steps a > b ≥ −1, integrated by parts, f(b)σ(b) − f(a)σ(a) + ∫_b^a σ(τ) f'(τ) dτ, by
    scipy's quad over each unit of τ (σ'(τ) is infinite at τ = −1, where σ = 0; σ itself is not)."""
    from scipy.integrate import quad
    inner = sum(quad(lambda u: _sigma_np(u) * df(u), k, k + 1, epsabs=1e-15, epsrel=1e-13)[0] for k in range(b, a))
    return f(b) * _sigma_np(b) - f(a) * _sigma_np(a) + inner


def kernel_integrals_match_quadrature() -> bool:
    """`ode._kernel_integrals` (tAB-DEIS's weights, Gauss–Legendre in σ) equal ∫_a^b ℓ_j(τ) dσ(τ) integrated by parts
    (`_integral_dsigma`), with σ(τ) from log ᾱ interpolated linearly by numpy and ℓ_j by scipy's lagrange, to 1e-12
    relative; one case ends at σ(−1) = 0, where σ'(τ) is infinite."""
    from scipy.interpolate import lagrange
    for nodes, a, b in (([400, 600, 800], 400, 250), ([30, 60, 120], 30, -1)):
        w = ode._kernel_integrals(AB, nodes, a, b)
        for j in range(len(nodes)):
            ell = lagrange(np.array(nodes, float) - a, np.eye(len(nodes))[j])
            exact = _integral_dsigma(lambda u: ell(u - a), lambda u: ell.deriv()(u - a), a, b)
            if not math.isclose(w[j], exact, rel_tol=1e-12):
                return False
    return True


def test_deis_tab_weights_against_quadrature():
    assert kernel_integrals_match_quadrature()


@pytest.mark.parametrize("wrong", ["3 Gauss nodes a unit", "t(sigma) through log(1 + sigma)"])
def test_deis_tab_weight_check_fails_for_wrong_weights(wrong):
    """The check above can fail: 3 Gauss–Legendre nodes per unit of t leave weights off by ~1e-8; a wrong map σ → t more."""
    if wrong == "3 Gauss nodes a unit":
        patch = mock.patch.object(ode, "GAUSS_NODES", 3)
    else:
        patch = mock.patch.object(ode, "_kernel_integrals", mutant(ode._kernel_integrals, "np.log1p(sig ** 2)", "np.log1p(sig)"))
    with patch:
        assert not kernel_integrals_match_quadrature()


# qsh-zh/deis at a30709f434ddddefaf2201d014ce4158e62c2a33 (th_deis, jax 0.4.30, float64), on this module's AB, EPS and X_T,
# with ddimlab's time (VPSDE with t2alpha = exp of log ᾱ interpolated linearly, ᾱ_{−1} = 1) and their rev_ts set to SEQ_DEIS;
# their Riemann sums (num_item = 10⁴ by default) replaced by Richardson's 2 S_{2N} − S_N (N = 2·10⁵ for the samplers, a
# multiple of the step's length for the weights). With their default 10⁴ items they differ from these by 5e-6 (ρAB) and
# 3e-4 (tAB).
SEQ_DEIS = torch.tensor([999, 825, 668, 528, 404, 297, 206, 131, 73, 32, 7])
DEIS_RHO_AB2_X0 = [-0.5388237518371103, -0.07857153527954837, -0.42470888269081236]    # get_sampler_rho_ab, ab_order=2: x[0]
DEIS_T_AB2_X0 = [-0.5453912093969384, -0.08030885022044458, -0.4274677475058266]       # get_sampler_t_ab, ab_order=2: x[0]
# get_one_coef_per_step_fn(sde)(120, 60, [120, 250, 400, 600], j, N) / √ᾱ_60, N = 60·4000 and 60·8000, Richardson
DEIS_T_WEIGHTS = [-0.296708480071254, 0.146778839180276, -0.063377885425124, 0.00976132459125368]


def test_deis_matches_the_authors_code():
    """ρAB-DEIS with ab_order = k − 1 (the polynomial in DEIS's ρ, our σ, through k points, integrated exactly) is
    `ipndm(rho=1.0, afs=False, order=k)`, i.e. `ipndm_vs` with a first call (agreeing to rounding); tAB-DEIS is
    `deis_tab(order=k)` (to 3e-8 on the sampler, the authors' Riemann sums' residue, and 1e-10 on the weights)."""
    rho_ab = ode.ipndm(EPS, X_T, AB, SEQ_DEIS, return_trajectory=True, rho=1.0, afs=False)[1]["x"][-2]   # at t = 7
    np.testing.assert_allclose(rho_ab[0].numpy(), DEIS_RHO_AB2_X0, rtol=0, atol=1e-12)
    named = ode.solve("ipndm_vs", EPS, X_T, AB, SEQ_DEIS, return_trajectory=True, afs=False)[1]["x"][-2]
    assert torch.equal(named, rho_ab)
    t_ab = ode.deis_tab(EPS, X_T, AB, SEQ_DEIS, return_trajectory=True)[1]["x"][-2]
    np.testing.assert_allclose(t_ab[0].numpy(), DEIS_T_AB2_X0, rtol=0, atol=3e-8)
    np.testing.assert_allclose(ode._kernel_integrals(AB, [120, 250, 400, 600], 120, 60), DEIS_T_WEIGHTS, rtol=1e-10)
    assert float((t_ab - rho_ab).abs().max()) > 1e-3           # tAB and ρAB are different methods


DEIS_MUTANTS = {       # name: (the function, the mutation in its source)
    "each weight paired with another step's eps": (ode.deis_tab, ("nodes, a, b)", "nodes[::-1], a, b)")),
    "the basis evaluated at tau - b instead of tau - a (the polynomial shifted by one step)": (
        ode._kernel_integrals, ("polyval(tau - a", "polyval(tau - b")),
}


def deis_tab_steps_are_exact_for_an_eps_quadratic_in_t() -> bool:
    """ε(x, t) = p(t), a quadratic in t alone (every coordinate the same): once tAB-DEIS of order 3 holds three ε's, its
    polynomial is p itself, so each step from the third on moves x̄ by ∫_t^s p(τ) dσ(τ) exactly (`_integral_dsigma`),
    whatever the earlier steps missed (ε does not read x) — the last step, SEQ_DEIS's 7 → −1 to σ = 0, too (notebook 08 §6),
    which the orders above, measured at t = 100, and the authors' code, compared at t = 7, do not reach. 1e-9 relative."""
    P = np.polynomial.Polynomial
    p = P([0.3, -0.8, 0.5])(P([1e-3, 1e-3]))                  # 0.3 − 0.8 u + 0.5 u², u = (t + 1)/1000 ∈ [0, 1]
    dp = p.deriv()
    _, tr = ode.deis_tab(lambda x, t: torch.full_like(x, float(p(float(t[0])))), X_T, AB, SEQ_DEIS, return_trajectory=True)
    ab = [float(AB[t]) if t >= 0 else 1.0 for t in tr["t"]]
    xbar = [x / math.sqrt(a) for x, a in zip(tr["x"], ab)]
    for i in range(2, len(xbar) - 1):
        step, exact = xbar[i + 1] - xbar[i], _integral_dsigma(p, dp, tr["t"][i], tr["t"][i + 1])
        if not float((step - exact).abs().max()) < 1e-9 * abs(exact):
            return False
    return True


def test_deis_tab_is_exact_for_an_eps_quadratic_in_t_and_its_mutants_are_not():
    """The check above passes for the library, and fails for each DEIS_MUTANTS entry and for a last step integrated to
    t = 0 (σ = 0.01) instead of t = −1 (σ = 0), a slip that moves x_0 by 8e-4 to 0.016 on 7 to 12 steps and that no
    other test here saw."""
    assert deis_tab_steps_are_exact_for_an_eps_quadratic_in_t()
    wrong = {**DEIS_MUTANTS, "the last step integrated to t = 0": (ode.deis_tab, ("for t, _ in pairs] + [-1]",
                                                                                  "for t, _ in pairs] + [0]"))}
    for name, (fn, (old, new)) in wrong.items():
        with mock.patch.object(ode, fn.__name__, mutant(fn, old, new)):
            assert not deis_tab_steps_are_exact_for_an_eps_quadratic_in_t(), name


def test_deis_tab_order_check_passes_for_the_library(ref_100):
    assert has_order(ode.deis_tab, ref_100, 2, order=2)


@pytest.mark.parametrize("name", DEIS_MUTANTS)
def test_deis_tab_order_check_fails_for_mutant(ref_100, name):
    fn, (old, new) = DEIS_MUTANTS[name]
    with mock.patch.object(ode, fn.__name__, mutant(fn, old, new)):
        assert not has_order(ode.deis_tab, ref_100, 2, order=2)


# ------------------------------------------------------------------------- log_likelihood (notebook 05 §9)

def _gaussian_lab(mu, s, t_prior=999):
    """Data N(μ, s²I): its exact ε*(x, t) = √(1−ᾱ)(x − √ᾱμ)/(ᾱs² + 1 − ᾱ), typed from the marginal q(x_t), and the exact
    prior q(x_T) = N(√ᾱ_T μ, (ᾱ_T s² + 1 − ᾱ_T) I) by scipy, ᾱ_T = ᾱ(t_prior)."""
    from scipy import stats

    def eps(x, t):
        a = ode.alpha_bar_cont(AB, t)[:, None]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s ** 2 + 1 - a)

    a_T = float(ode.alpha_bar_cont(AB, t_prior))
    q_T = stats.multivariate_normal(math.sqrt(a_T) * mu.numpy(), (a_T * s ** 2 + 1 - a_T) * np.eye(len(mu)))
    return eps, lambda x: torch.from_numpy(np.atleast_1d(q_T.logpdf(x.numpy())))


def test_log_likelihood_of_gaussian_data_is_scipys_logpdf():
    """Exact ε* and exact prior: the ODE's log p(x_0) is the data's log density (scipy) to 1e-6 nats. The two constants of
    the derivation are both needed: with the divergence's sign flipped, or the x ↦ x̄ Jacobian (d/2) log ᾱ_T dropped, the
    answer is off by tens of nats (the divergence integral, here also in closed form, (d/2) log((s² + σ_T²)/s²))."""
    from scipy import stats
    mu, s, d = torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64), 0.4, 3
    eps, prior = _gaussian_lab(mu, s)
    x0 = mu + s * torch.randn(6, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ll = ode.log_likelihood(eps, x0, AB, prior=prior)
    truth = torch.from_numpy(stats.multivariate_normal(mu.numpy(), s ** 2 * np.eye(d)).logpdf(x0.numpy()))
    torch.testing.assert_close(ll, truth, rtol=0, atol=1e-6)
    a_T = float(AB[-1])
    sig_T2 = (1 - a_T) / a_T
    x_T = math.sqrt(a_T) * (mu + math.sqrt((s ** 2 + sig_T2) / s ** 2) * (x0 - mu))      # the flow of x̄ in closed form
    div_integral = 0.5 * d * math.log((s ** 2 + sig_T2) / s ** 2)
    jacobian = 0.5 * d * math.log(a_T)
    torch.testing.assert_close(ll, prior(x_T) + jacobian + div_integral, rtol=0, atol=1e-6)
    for wrong in (prior(x_T) + jacobian - div_integral, prior(x_T) + div_integral):
        assert float((wrong - truth).abs().min()) > 10


def test_log_likelihood_between_inner_steps_is_the_noisy_marginals_log_density():
    """From t_start to t_end ≠ −1 (fractional too) the answer is log q(x_{t_end}), scipy's N(√ᾱμ, (ᾱs² + 1 − ᾱ)I), to 1e-6
    nats: both Jacobian terms (d/2) log ᾱ are needed, the one at t_end (−0.16 nats at t_end = 100.5) as well as t_start's."""
    from scipy import stats
    mu, s, d = torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64), 0.4, 3
    for t_start, t_end in ((700.25, 100.5), (999, 0)):
        eps, prior = _gaussian_lab(mu, s, t_prior=t_start)
        a = float(ode.alpha_bar_cont(AB, t_end))
        q_end = stats.multivariate_normal(math.sqrt(a) * mu.numpy(), (a * s ** 2 + 1 - a) * np.eye(d))
        x = torch.from_numpy(q_end.rvs(5, random_state=9))
        ll = ode.log_likelihood(eps, x, AB, t_start=t_start, t_end=t_end, prior=prior)
        torch.testing.assert_close(ll, torch.from_numpy(q_end.logpdf(x.numpy())), rtol=0, atol=1e-6)
    assert 0.5 * d * abs(math.log(float(ode.alpha_bar_cont(AB, 100.5)))) > 0.1


def test_log_likelihood_of_a_mixture_is_its_log_density():
    """2-D mixture with `toy.exact_eps` and the exact q(x_T): log p(x_0) equals logsumexp_k(log w_k + log N(x; μ_k, Σ_k)),
    each Gaussian by scipy (not the mixture's own log_prob); the N(0, I) prior instead misses by about KL-sized amounts."""
    from scipy import special, stats

    def log_density(m, a, x):
        comps = [math.log(float(w)) + stats.multivariate_normal(math.sqrt(a) * mu.numpy(), a * c.numpy() + (1 - a) * np.eye(2))
                 .logpdf(x.numpy()) for w, mu, c in zip(m.weights, m.means, m.covs)]
        return torch.from_numpy(special.logsumexp(np.stack(comps), axis=0))

    mix = toy.random_mixture(d=2, K=3, seed=1)
    x0 = mix.sample(12, torch.Generator().manual_seed(4))
    a_T = float(AB[-1])
    ll = ode.log_likelihood(toy.exact_eps(mix, AB), x0, AB, prior=lambda x: log_density(mix, a_T, x))
    torch.testing.assert_close(ll, log_density(mix, 1.0, x0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("probe", ode.PROBES)
def test_hutchinson_log_likelihood_is_unbiased(probe):
    """k = 1 probe per row, fixed along the path, on 40 copies of each of 5 points: the mean difference from the exact
    divergence's answer is within 4 SE (SE from the spread over the probes); its variance is 2‖M‖_F² for Gaussian probes
    and 2(‖M‖_F² − Σ M_ii²) for Rademacher ones, M the symmetrised ∫∂F/∂x̄ dσ, so both are seen to be nonzero."""
    mix = toy.random_mixture(d=3, K=3, seed=2)
    eps = toy.exact_eps(mix, AB)
    x0 = mix.sample(5, torch.Generator().manual_seed(5))
    exact = ode.log_likelihood(eps, x0, AB, rtol=1e-7, atol=1e-7)
    est = ode.log_likelihood(eps, x0.repeat(40, 1), AB, rtol=1e-7, atol=1e-7, hutchinson=1, probe=probe,
                             generator=torch.Generator().manual_seed(6))
    diff = est - exact.repeat(40)
    se = float(diff.std() / math.sqrt(len(diff)))
    assert se > 1e-3 and abs(float(diff.mean())) < 4 * se


def test_hutchinson_spread_is_the_quadratic_form_of_the_path_integrated_jacobian():
    """With the probe z fixed along the path the estimate's error is zᵀMz − tr M, M = ∫∂F/∂x̄ dσ (notebook 05 §9). M is
    integrated here with the full 2×2 Jacobian by torch.autograd.functional.jacobian and scipy; then in d = 2 every
    Rademacher estimate misses by exactly ±2 M₁₂ (both signs seen), and Gaussian ones have variance 2‖(M + Mᵀ)/2‖_F²
    (within 4 SE). Probes drawn afresh at every call would give neither."""
    from scipy.integrate import solve_ivp
    mix = toy.random_mixture(d=2, K=3, seed=2)
    eps = toy.exact_eps(mix, AB)
    x0 = mix.sample(1, torch.Generator().manual_seed(7))
    sig_T = float(ode.sigma_at(AB, 999))

    def rhs(sig, y):                                    # [x̄, vec J] along the path
        t = ode.t_of_sigma(AB, min(sig, sig_T)).reshape(1)
        F = lambda xbar: eps(xbar[None] / math.sqrt(sig ** 2 + 1), t)[0]     # noqa: E731
        xbar = torch.from_numpy(y[:2].copy())
        return np.concatenate([F(xbar).numpy(), torch.autograd.functional.jacobian(F, xbar).numpy().reshape(-1)])

    sol = solve_ivp(rhs, (0, sig_T), np.concatenate([x0[0].numpy(), np.zeros(4)]), method="DOP853", rtol=1e-9, atol=1e-9)
    M = sol.y[2:, -1].reshape(2, 2)
    exact = ode.log_likelihood(eps, x0, AB)
    miss = {probe: (ode.log_likelihood(eps, x0.repeat(n, 1), AB, hutchinson=1, probe=probe,
                                       generator=torch.Generator().manual_seed(8)) - exact).numpy()
            for probe, n in (("rademacher", 16), ("gaussian", 300))}
    np.testing.assert_allclose(np.abs(miss["rademacher"]), abs(M[0, 1] + M[1, 0]), rtol=0, atol=1e-5)
    assert miss["rademacher"].min() < 0 < miss["rademacher"].max() and abs(M[0, 1] + M[1, 0]) > 0.05
    sq = miss["gaussian"] ** 2
    var_theory = 2 * np.sum(((M + M.T) / 2) ** 2)
    assert abs(sq.mean() - var_theory) < 4 * sq.std() / math.sqrt(len(sq))


def test_log_likelihood_refuses_bad_input_in_one_line():
    """The checks `reference_solution` makes, with its messages (shared: ode._check_ivp), and log_likelihood's own."""
    mix = toy.random_mixture(d=2, K=2, seed=0)
    eps, x0 = toy.exact_eps(mix, AB), mix.sample(3, torch.Generator().manual_seed(0))
    bad = [({"x_0": x0 * float("nan")}, ValueError, "x_0 contains NaN or inf"),
           ({"x_0": x0[0, 0]}, ValueError, r"x_0 must have a batch dimension \(B, ...\), got a 0-d tensor"),
           ({"x_0": x0.long()}, TypeError, "x_0 must be floating point"),
           ({"x_0": x0.clone().requires_grad_()}, ValueError, "x_0 requires grad"),
           ({"hutchinson": 0}, ValueError, "hutchinson"),
           ({"hutchinson": 1.5}, ValueError, "hutchinson must be a positive integer"),
           ({"probe": "normal"}, ValueError, "probe must be one of"),
           ({"prior": 3.0}, TypeError, "prior must be None"),
           ({"prior": lambda x: x}, ValueError, r"prior\(x_T\) must return a tensor of x's shape \(3,\)"),
           ({"prior": lambda x: torch.tensor([0.0, float("nan"), -math.inf])}, ValueError,
            r"prior\(x_T\) returned NaN or \+inf for 1 of 3 samples"),
           ({"generator": 0}, TypeError, "generator must be a torch.Generator"),
           ({"probe": "gaussian"}, ValueError, r"probe and generator are for Hutchinson's estimate: give hutchinson=k"),
           ({"generator": torch.Generator()}, ValueError, "probe and generator are for Hutchinson's estimate"),
           ({"rtol": 0}, ValueError, "rtol must be a finite number > 0"),
           ({"x_0": x0.half()}, ValueError, r"rtol = 1e-08 is finer than x_0's float16 can give .* 4.9e-05, or x_0 in float64"),
           ({"x_0": x0.float(), "rtol": 1e-9}, ValueError, r"finer than x_0's float32 can give .* rtol >= 6e-09"),
           ({"t_start": 10, "t_end": 20}, ValueError, "t_end must be smaller than t_start"),
           ({"t_start": 1000}, ValueError, r"t_start and t_end must lie in \[-1, T-1\] = \[-1, 999\] .*got 1000 and -1"),
           ({"t_end": -2}, ValueError, r"t_start and t_end must lie in \[-1, T-1\].*got 999 and -2"),
           ({"eps": lambda x, t: torch.zeros_like(x)}, ValueError, "autograd cannot differentiate in x"),
           ({"eps": checkpoint.eps_fn(lambda x, t: x)}, TypeError, r"eps is checkpoint.eps_fn\(net\), which runs net without"),
           ({"eps": torch.nn.Linear(2, 2)}, TypeError, r"eps is a network \(Linear\).*lambda x, t: net\(x, t\) with net.eval"),
           # scipy's own words were "`method` must be one of {'RK23': <class 'scipy.integrate._ivp.rk.RK23'>, ..."
           ({"method": "rk45"}, ValueError, r"method must be one of scipy's solve_ivp methods RK45, .*LSODA .*got 'rk45'$"),
           ({"method": "heun"}, ValueError, r"got 'heun' \(ddimlab's own solvers are ode.solve's"),
           ({"method": None}, ValueError, "method must be one of scipy's solve_ivp methods")]
    for kwargs, kind, needle in bad:
        args = {"eps": eps, "x_0": x0, **kwargs}
        with pytest.raises(kind, match=needle) as err:
            ode.log_likelihood(args.pop("eps"), args.pop("x_0"), AB, **args)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="x_T contains NaN or inf"):   # reference_solution's, from the same check
        ode.reference_solution(eps, x0 * float("nan"), AB, 999)
    with pytest.raises(ValueError, match="x_T must have a batch dimension"):
        ode.reference_solution(eps, x0[0, 0], AB, 999)
    with pytest.raises(ValueError, match="rtol = 1e-10 is finer than x_T's float32 can give"):     # its default rtol
        ode.reference_solution(eps, x0.float(), AB, 999)
    # careless round 27: x in float64 but eps returning float32 (a float32 network behind a lambda) took minutes at the
    # default rtol 1e-10, the guard seeing only x's dtype; the first call now says so (float16 at log_likelihood's 1e-8)
    f32 = lambda x, t: eps(x, t).float()          # noqa: E731
    with pytest.raises(ValueError, match=r"^rtol = 1e-10 is finer than the float32 that eps\(x, t\) returns can give, .* "
                                         r"pass rtol >= 6e-09, or have eps return x's float64$"):
        ode.reference_solution(f32, x0, AB, 999)
    with pytest.raises(ValueError, match=r"finer than the float16 that eps\(x, t\) returns can give, .* rtol >= 4.9e-05"):
        ode.log_likelihood(lambda x, t: eps(x, t).half(), x0, AB)
    np.testing.assert_allclose(ode.reference_solution(f32, x0, AB, 20, rtol=1e-7, atol=1e-7),      # a tolerance it resolves
                               ode.reference_solution(eps, x0, AB, 20), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="method must be one of scipy's solve_ivp methods"):
        ode.reference_solution(eps, x0, AB, 999, method="dopri5")
    from scipy.integrate import RK45  # a solver class, as solve_ivp allows
    np.testing.assert_allclose(ode.reference_solution(eps, x0, AB, 20, method=RK45, rtol=1e-9, atol=1e-9),
                               ode.reference_solution(eps, x0, AB, 20), rtol=0, atol=1e-6)
    empty = ode.log_likelihood(eps, x0[:0], AB)          # an empty batch (the last chunk of a split) maps to empty
    assert empty.shape == (0,) and empty.dtype == torch.float64


def test_a_network_in_train_mode_behind_a_lambda_is_refused():
    """Careless round 27: check_eps sees a network passed as itself, not one behind `lambda x, t: net(x)`; in train mode
    its dropout made each call random, and both integrators returned numbers without a word (on the old code this test
    took 97 s: solve_ivp shrinking its steps against the noise)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.SiLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 2)).double()
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for run in (lambda: ode.reference_solution(lambda x, t: net(x), x, AB, 50, rtol=1e-6, atol=1e-6),
                lambda: ode.log_likelihood(lambda x, t: net(x), x, AB, t_start=50, rtol=1e-6, atol=1e-6)):
        with pytest.raises(ValueError, match=r"^eps\(x, t\) gave two answers for the same x and t .*net.eval\(\) first$"):
            run()
    net.eval()                                    # the same network, deterministic: both run, as before
    assert torch.isfinite(ode.reference_solution(lambda x, t: net(x), x, AB, 50, rtol=1e-6, atol=1e-6)).all()
    assert torch.isfinite(ode.log_likelihood(lambda x, t: net(x), x, AB, t_start=50, rtol=1e-6, atol=1e-6)).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # diffusers 0.42.1 on numpy 2: ~960 lines of "__array__"
def test_diffusers_deis_is_a_polynomial_in_lambda_integrated_against_e_to_the_minus_lambda():
    """Notebook 08 §7's reading of diffusers' DEISMultistepScheduler (solver_type="logrho", its only one): ε̂ extrapolated
    by the polynomial P in λ = −log σ through its last `solver_order` values, and x̄_s = x̄_t − ∫_{λ_t}^{λ_s} e^{−λ} P(λ) dλ,
    the weights by scipy's quad (not the closed forms diffusers codes). Step for step to float32 rounding (measured 1e-6 to
    1e-5) at orders 2 and 3; the same extrapolation in σ (ρAB-DEIS, `ipndm_vs`) instead of λ misses by 7e-3 to 2e-2."""
    diffusers = pytest.importorskip("diffusers")
    from scipy.integrate import quad

    def lagrange_weights(nodes, a, b, kernel):
        return [quad(lambda u, j=j: kernel(u) * math.prod((u - m) / (nodes[j] - m) for k, m in enumerate(nodes) if k != j),
                     a, b, epsabs=1e-13, epsrel=1e-13)[0] for j in range(len(nodes))]

    for order, S in ((2, 6), (3, 6), (3, 12)):
        sch = diffusers.DEISMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                               beta_end=0.02, solver_order=order, lower_order_final=False,
                                               timestep_spacing="trailing")
        sch.set_timesteps(S)
        ts = [int(t) for t in sch.timesteps]
        sig = [ode.sigma_at(AB, t).item() for t in ts]
        x, theirs = X_T, []
        for t in ts[:-1]:                        # the last step, to sigma = 0 or sigma_min, is diffusers' own convention
            x = sch.step(EPS(x, torch.full((8,), t)), t, x).prev_sample
            theirs.append(x.double())
        # in λ: x̄_s − x̄_t = ∫ ε dσ = −∫ ε e^{−λ} dλ; in σ: ∫ P(σ) dσ
        lam = [-math.log(v) for v in sig]
        for u, kernel, should_match in ((lam, lambda v: -math.exp(-v), True), (sig, lambda v: 1.0, False)):
            xbar, hist, worst = X_T * math.sqrt(1 + sig[0] ** 2), [], 0.0
            for i in range(S - 1):
                hist = (hist + [EPS(xbar / math.sqrt(1 + sig[i] ** 2), torch.full((8,), ts[i]))])[-order:]
                w = lagrange_weights(u[max(0, i + 1 - order):i + 1], u[i], u[i + 1], kernel)
                xbar = xbar + sum(wj * e for wj, e in zip(w, hist))
                worst = max(worst, float((xbar / math.sqrt(1 + sig[i + 1] ** 2) - theirs[i]).abs().max()))
            assert (worst < 3e-5) == should_match, (order, S, should_match, worst)


def _straight_path_velocity(mix, x, zeta):
    """v(x, ζ) = E[ε − x_0 | x_ζ = x] on the straight path x_ζ = (1 − ζ) x_0 + ζ ε of rectified flow, by Bayes' rule over
    the mixture's components (x_ζ | k ~ N((1 − ζ) μ_k, (1 − ζ)² Σ_k + ζ² I)): independent of toy's ε*."""
    C = (1 - zeta) ** 2 * mix.covs + zeta ** 2 * torch.eye(mix.d, dtype=torch.float64)
    diff = x[:, None, :] - (1 - zeta) * mix.means
    sol = torch.linalg.solve(C, diff.unsqueeze(-1)).squeeze(-1)
    post = (mix.weights.log() - 0.5 * (diff * sol).sum(-1) - 0.5 * torch.logdet(C)).softmax(1)
    e = zeta * (post[..., None] * sol).sum(1)
    return e - (x - zeta * e) / (1 - zeta)


def test_ddim_is_euler_on_the_straight_path_of_flow_matching():
    """Notebook 05 §3: Euler on rectified flow's ODE dx/dζ = v, on ζ(ᾱ) = √(1−ᾱ)/(√ᾱ + √(1−ᾱ)) of DDIM's steps and from
    x_T/(√ᾱ_T + √(1−ᾱ_T)), is DDIM (eq. 12, η = 0) to rounding, on a 3-D mixture with full covariances and quad steps;
    the velocity converts to ε* by ε = x_ζ + (1 − ζ) v (not ε = x_ζ + v) and to E[x_0 | x_t] (toy's Gaussian conditioning)
    by x̂_0 = x_ζ − ζ v. Other ζ grids are other steps of the same ODE."""
    g = torch.Generator().manual_seed(5)
    A = torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    mix = toy.GaussianMixture(torch.tensor([0.2, 0.5, 0.3]), torch.randn(3, 3, generator=g, dtype=torch.float64),
                              0.05 * A @ A.transpose(1, 2) + 0.01 * torch.eye(3, dtype=torch.float64))
    alpha_bar = schedule.make_alpha_bar("linear", 1000)
    eps = toy.exact_eps(mix, alpha_bar)
    x_T = torch.randn(64, 3, generator=g, dtype=torch.float64)
    for t in (900, 300, 20):                                        # the conversion, pointwise
        a = float(alpha_bar[t])
        scale, zeta = math.sqrt(a) + math.sqrt(1 - a), math.sqrt(1 - a) / (math.sqrt(a) + math.sqrt(1 - a))
        x_zeta = x_T / scale
        v = _straight_path_velocity(mix, x_zeta, zeta)
        torch.testing.assert_close(x_zeta + (1 - zeta) * v, eps(x_T, t), rtol=0, atol=1e-12)
        assert float((x_zeta + v - eps(x_T, t)).abs().max()) > 1e-2
        torch.testing.assert_close(x_zeta - zeta * v, mix.x0_mean(x_T, a), rtol=0, atol=1e-12)     # x̂_0 = x_ζ − ζ v
        assert float((x_zeta - (1 - zeta) * v - mix.x0_mean(x_T, a)).abs().max()) > 1e-2
    seq = schedule.timesteps(7, 1000, "quad")
    steps = [int(s) for s in seq] + [-1]
    a_steps = [float(schedule.alpha_bar_at(alpha_bar, s)) for s in steps]
    ddim_x0 = samplers.ddim_sample(eps, x_T, alpha_bar, seq)
    for clock, same in ((lambda a: math.sqrt(1 - a) / (math.sqrt(a) + math.sqrt(1 - a)), True),
                        (lambda a: math.sqrt(1 - a), False), (lambda a: 1 - math.sqrt(a), False)):
        zetas = [clock(a) for a in a_steps]
        x = x_T / (math.sqrt(a_steps[0]) + math.sqrt(1 - a_steps[0]))
        for zeta, zeta_next in zip(zetas, zetas[1:]):
            x = x + (zeta_next - zeta) * _straight_path_velocity(mix, x, zeta)
        gap = float((x - ddim_x0).abs().max())
        assert gap < 1e-12 if same else gap > 1e-3, gap


def test_the_flow_timestep_shift_multiplies_sigma_and_is_a_ddim_grid():
    """Notebook 05 §3: diffusers' FlowMatchEulerDiscreteScheduler(shift=s) moves ζ to sζ/(1 + (s − 1)ζ), which multiplies
    σ = ζ/(1 − ζ) by s (against diffusers' own shifted sigmas); its step with the straight path's velocity as model_output
    is Euler on dx/dζ = v over those sigmas, and scale_noise is x_ζ = (1 − ζ) x_0 + ζ ε (diffusers' "sigmas" are ζ);
    and Euler on the straight path on shifted ζ's is DDIM on the table ᾱ' = 1/(1 + s²σ²) of the unshifted σ's
    (Bayes' rule velocity against the library's DDIM on that table)."""
    diffusers = pytest.importorskip("diffusers")
    s, base = 2.5, [float(t) for t in torch.linspace(0.98, 0.02, 9)]
    zeta = {}
    for shift in (1.0, s):
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
        scheduler.set_timesteps(sigmas=base)
        zeta[shift] = scheduler.sigmas.double()[:-1]
    ratio = (zeta[s] / (1 - zeta[s])) / (zeta[1.0] / (1 - zeta[1.0]))
    torch.testing.assert_close(ratio, torch.full_like(ratio, s), rtol=1e-4, atol=0)      # float32 ζ near 1: 1 − ζ ~ 0.01
    mix = toy.eight_gaussians()
    g = torch.Generator().manual_seed(3)
    x0, noise = mix.sample(16, g).float(), torch.randn(16, 2, generator=g)
    scheduler.set_timesteps(sigmas=base)
    first = float(scheduler.sigmas[0])
    torch.testing.assert_close(scheduler.scale_noise(x0, scheduler.timesteps[:1], noise), (1 - first) * x0 + first * noise)
    x_diffusers, zetas_diffusers = noise, scheduler.sigmas.double().tolist()
    for step, t in zip(scheduler.timesteps, zetas_diffusers):
        v = _straight_path_velocity(mix, x_diffusers.double(), t).float()
        x_diffusers = scheduler.step(v, step, x_diffusers).prev_sample
    x = noise.double()
    for t, t_next in zip(zetas_diffusers, zetas_diffusers[1:]):
        x = x + (t_next - t) * _straight_path_velocity(mix, x, t)
    torch.testing.assert_close(x_diffusers.double(), x, rtol=0, atol=1e-6)             # float32 steps: 4e-8 seen
    zetas = [s * t / (1 + (s - 1) * t) for t in base] + [0.0]
    torch.testing.assert_close(torch.tensor(zetas[:-1], dtype=torch.float64), zeta[s], rtol=1e-6, atol=0)
    table = torch.tensor([1 / (1 + s ** 2 * (t / (1 - t)) ** 2) for t in reversed(base)], dtype=torch.float64)  # ᾱ' by step
    x_zeta = torch.randn(32, 2, generator=g, dtype=torch.float64)
    x = x_zeta
    for t, t_next in zip(zetas, zetas[1:]):
        x = x + (t_next - t) * _straight_path_velocity(mix, x, t)
    a_T = float(table[-1])
    ddim_x0 = samplers.ddim_sample(toy.exact_eps(mix, table), x_zeta * (math.sqrt(a_T) + math.sqrt(1 - a_T)), table,
                                   torch.arange(len(table) - 1, -1, -1))
    torch.testing.assert_close(x, ddim_x0, rtol=0, atol=1e-12)


def test_heun_on_the_straight_path_is_not_heun_in_sigma():
    """Notebook 05 §3: one Heun step on dx/dζ = v (the trapezoid rule in ζ, as diffusers' FlowMatchHeunDiscreteScheduler)
    is, in x̄, the DDIM predictor plus (1 − ζ)/(1 − ζ') times `ode.heun`'s correction: not the same step (factor 1 fails)."""
    g = torch.Generator().manual_seed(8)
    mix = toy.GaussianMixture(torch.tensor([0.4, 0.6]), torch.randn(2, 3, generator=g, dtype=torch.float64),
                              0.1 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    alpha_bar = schedule.make_alpha_bar("linear", 1000)
    eps = toy.exact_eps(mix, alpha_bar)
    x_t = torch.randn(32, 3, generator=g, dtype=torch.float64)
    for t, s in ((800, 500), (200, 50)):
        k = {u: math.sqrt(float(alpha_bar[u])) + math.sqrt(1 - float(alpha_bar[u])) for u in (t, s)}    # x_ζ = x_t / k
        zeta = {u: math.sqrt(1 - float(alpha_bar[u])) / k[u] for u in (t, s)}
        v = _straight_path_velocity(mix, x_t / k[t], zeta[t])
        x_pred = x_t / k[t] + (zeta[s] - zeta[t]) * v
        heun_zeta = k[s] * (x_t / k[t] + (zeta[s] - zeta[t]) / 2 * (v + _straight_path_velocity(mix, x_pred, zeta[s])))
        heun_sigma = ode.heun(eps, x_t, alpha_bar, torch.tensor([t, s]), return_trajectory=True)[1]["x"][1]
        ddim = samplers.ddim_sample(eps, x_t, alpha_bar, torch.tensor([t, s]), return_trajectory=True)[1]["x"][1]
        torch.testing.assert_close(heun_zeta - ddim, (1 - zeta[t]) / (1 - zeta[s]) * (heun_sigma - ddim), rtol=0, atol=1e-12)
        assert float((heun_zeta - heun_sigma).abs().max()) > 1e-2


def _heun_on_the_straight_path(mix, x_zeta, zetas, weight=lambda zeta, zeta_next: 1.0):
    """Heun (the trapezoid rule) on dx/dζ = v along zetas, its correction times weight(ζ, ζ'), the step into ζ = 0
    Euler's as in `ode.heun` (weight (1 − ζ')/(1 − ζ) is `ode.heun` itself, notebook 05 §3)."""
    for zeta, zeta_next in zip(zetas, zetas[1:]):
        v, d_zeta = _straight_path_velocity(mix, x_zeta, zeta), zeta_next - zeta
        x_next = x_zeta + d_zeta * v
        if zeta_next > 0:
            x_next = x_next + weight(zeta, zeta_next) * d_zeta / 2 * (_straight_path_velocity(mix, x_next, zeta_next) - v)
        x_zeta = x_next
    return x_zeta


def test_heun_in_zeta_local_error_on_gaussian_data():
    """Notebook 05 §3: on data N(0, λI), ε* = σx̄/(λ + σ²) and x̄ ∝ √(λ + σ²). One step h = σ' − σ < 0 from the exact x̄
    misses it by c h³ x̄ with c = −λσ/(2(λ + σ²)³) for `ode.heun` and, the factor (1 − ζ)/(1 − ζ') = 1 + h/(1 + σ) adding
    h/(1 + σ) times the correction h(ε' − ε)/2 ≈ h² x̄''/2, x̄'' = λx̄/(λ + σ²)², c = λ(λ − σ)/(2(1 + σ)(λ + σ²)³) for Heun
    on dx/dζ = v: |σ − λ|/(σ(1 + σ)) times ode.heun's, less above σ* = √(1 + λ) − 1 and more below. Measured on one
    DDPM step (h/σ ≤ 2.3%) against the closed form, within 5%; the ζ step's error follows neither ode.heun's c (the factor
    left out) nor the c of the factor inverted (the added term's sign flipped)."""
    lam = 1.0
    gauss = toy.GaussianMixture(torch.ones(1), torch.zeros(1, 2, dtype=torch.float64),
                                lam * torch.eye(2, dtype=torch.float64)[None])
    eps = toy.exact_eps(gauss, AB)
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sig_star = math.sqrt(1 + lam) - 1
    for t in (700, 400, 200, 100, 40):                        # σ = 12, 2.0, 0.72 above σ* = 0.41; 0.34, 0.14 below
        sig, sig_next = float(ode.sigma_at(AB, t)), float(ode.sigma_at(AB, t - 1))
        h, xbar = sig_next - sig, x_t * math.sqrt(sig ** 2 + 1)
        exact = xbar * math.sqrt((lam + sig_next ** 2) / (lam + sig ** 2))
        x_s = ode.heun(eps, x_t, AB, torch.tensor([t, t - 1]), return_trajectory=True)[1]["x"][1]
        heun_sigma = x_s * math.sqrt(sig_next ** 2 + 1)
        zeta, zeta_next = sig / (1 + sig), sig_next / (1 + sig_next)
        heun_zeta = _heun_on_the_straight_path(gauss, (1 - zeta) * xbar, [zeta, zeta_next]) / (1 - zeta_next)
        c_sigma = -lam * sig / (2 * (lam + sig ** 2) ** 3)
        added = lam / (2 * (1 + sig) * (lam + sig ** 2) ** 2)
        c_sig, c_zeta = ((heun_sigma - exact) / (h ** 3 * xbar)), ((heun_zeta - exact) / (h ** 3 * xbar))
        torch.testing.assert_close(c_sig, torch.full_like(c_sig, c_sigma), rtol=0.05, atol=0)
        torch.testing.assert_close(c_zeta, torch.full_like(c_zeta, c_sigma + added), rtol=0.05, atol=0)
        for wrong in (c_sigma, c_sigma - added):
            assert float((c_zeta / wrong - 1).abs().min()) > 0.5
        assert bool(((heun_zeta - exact).abs() < (heun_sigma - exact).abs()).all()) == (sig > sig_star)


def test_heun_in_zeta_beats_ode_heun_on_notebook_05s_mixture():
    """Notebook 05 §3: on `toy.eight_gaussians` with the exact flow, linspace steps S = 5, 10, 20 and their ζ(ᾱ), both
    ending with the same Euler step (2S − 1 calls each), Heun on dx/dζ = v has a smaller mean squared error at x_0 than
    `ode.heun` (weight (1 − ζ')/(1 − ζ) reproduces it, to 1e-12), beyond 3 SE paired over 64 x_T; the factor inverted
    (weight ((1 − ζ')/(1 − ζ))²) has a larger one."""
    mix = toy.eight_gaussians()
    eps = toy.exact_eps(mix, AB)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref = ode.reference_solution(eps, x_T, AB, 999)
    sq = lambda x: (x - ref).pow(2).sum(1)                   # noqa: E731
    paired = lambda d: (float(d.mean()), float(d.std() / math.sqrt(len(d))))   # noqa: E731
    for S in (5, 10, 20):
        seq = schedule.timesteps(S, 1000, "linspace")
        a = [float(schedule.alpha_bar_at(AB, t)) for t in seq.tolist() + [-1]]
        zetas = [math.sqrt(1 - ab) / (math.sqrt(ab) + math.sqrt(1 - ab)) for ab in a]
        x_zeta = x_T / (math.sqrt(a[0]) + math.sqrt(1 - a[0]))
        heun_sigma = ode.heun(eps, x_T, AB, seq)
        as_sigma = _heun_on_the_straight_path(mix, x_zeta, zetas, lambda u, w: (1 - w) / (1 - u))
        torch.testing.assert_close(as_sigma, heun_sigma, rtol=0, atol=1e-12)
        gain, se = paired(sq(_heun_on_the_straight_path(mix, x_zeta, zetas)) - sq(heun_sigma))
        assert gain + 3 * se < 0, (S, gain, se)
        inverted = _heun_on_the_straight_path(mix, x_zeta, zetas, lambda u, w: ((1 - w) / (1 - u)) ** 2)
        loss, se = paired(sq(inverted) - sq(heun_sigma))
        assert loss - 3 * se > 0, (S, loss, se)


def test_dpm_solver_pp_2m_lands_above_the_flow_where_its_constant_passes_x0_at_sigma_0():
    """Notebook 09 §7 (d): 2M's step x̄_s = e^{−h} x̄_t + (1 − e^{−h})(D_t + h m/2), m = (D_t − D_{−1})/h_{−1}, holds D at
    one constant; the flow's step weighs (also by 1 − e^{−h} in all) a D that stays below its value at σ = 0, λ x̄_t/√(λ(λ + σ_t²))
    for the flow through x̄_t. So where D_t + h m/2 passes that value 2M's step lands above the flow from the same x̄_t:
    on Gaussian data, uniform steps at S = 20, 50, 100 in every direction, from the run's own D's; on λ-uniform steps the
    condition fails (h is short: (e^{2h_{−1}} − 1) h/(2h_{−1}) ≈ 0.5 < 1). All that is for c = x̄_t/√(λ + σ_t²) > 0, i.e.
    x_T > 0 (the run's x̄_t keeps x_T's sign: x̄_t/x_T > 0 at every step); from x_T = −1 (c < 0) every inequality flips, so
    the condition as written fails in every direction while the ratio (h/2) m/(D_∞ − D_t) ≥ 1 and |x̄_s| > |flow's| still hold."""
    d = 128
    lam = 2.0 / torch.arange(1, d + 1, dtype=torch.float64) ** 0.8 + 0.01
    gauss = toy.SharedBasisMixture(torch.ones(1), torch.zeros(1, d, dtype=torch.float64), lam[None])
    ell = lambda t: -0.5 * math.log(1 / float(AB[t]) - 1)                      # noqa: E731  ℓ = −log σ
    for (seq, passes), sign in itertools.product([(schedule.timesteps(S, 1000, "uniform"), True) for S in (20, 50, 100)] + [
            (ode.lambda_timesteps(100, AB), False)], (1, -1)):
        t2, t1, t0 = (int(t) for t in seq[-3:])
        seen = {}
        ode.dpm_solver_pp_2m(toy.exact_eps(gauss, AB), sign * torch.ones(1, d, dtype=torch.float64), AB, seq,
                             callback=lambda st: seen.__setitem__(int(st["t"]), (st["x0"][0], st["x"][0])))
        assert all(bool((sign * x > 0).all()) for _, x in seen.values())    # x̄ keeps x_T's sign: c has it too
        (D_p, x_t), (D_t, x_s) = seen[t2], seen[t1]
        xb_t, xb_s = x_t / math.sqrt(float(AB[t1])), x_s / math.sqrt(float(AB[t0]))
        h, h_p = ell(t0) - ell(t1), ell(t1) - ell(t2)
        constant = D_t + h / 2 * (D_t - D_p) / h_p
        torch.testing.assert_close(xb_s, math.exp(-h) * xb_t + (1 - math.exp(-h)) * constant, rtol=1e-12, atol=0)
        sig2 = 1 / float(AB[t1]) - 1
        limit = xb_t * (lam / (lam + sig2)).sqrt()                           # D at σ = 0 on the flow through x̄_t
        flow_s = xb_t * ((lam + 1 / float(AB[t0]) - 1) / (lam + sig2)).sqrt()   # the flow's x̄ at t0 from x̄_t
        flipped = passes != (sign > 0)                                         # as written, the condition needs c > 0
        assert bool((constant > limit).all()) != flipped and bool((constant < limit).all()) == flipped
        assert bool(((constant - D_t) / (limit - D_t) > 1).all()) == passes    # the ratio does not
        if passes:
            assert bool((xb_s.abs() > flow_s.abs()).all()) and bool((sign * (xb_s - flow_s) > 0).all())



def test_dpm_solver_pp_2m_bound_leading_order_is_the_strong_direction_limit():
    """Notebook 09 §7 (d): on the flow, D = λ/√(λ + σ²) (x̄_T scaled out) and D_∞ = √λ; the ratio (h/2) m/(D_∞ − D_t), with
    m = (D_t − D_{−1})/h_{−1}, tends for σ² ≪ λ to (e^{2h_{−1}} − 1) h/(2h_{−1}), as D_∞ − D ≈ σ²/(2√λ) falls like e^{−2ℓ}: at
    λ = 10⁶ within 1e-4 on uniform steps (S = 20, 50, 100) and λ-uniform ones; with e^{h_{−1}} (D_∞ − D falling like σ)
    it misses by over 30%. At λ = 0.05 (σ² not ≪ λ) the ratio is below the leading order and not within 1e-4 of it."""
    ell = lambda t: -0.5 * math.log(1 / float(AB[t]) - 1)                      # noqa: E731  ℓ = −log σ
    for seq in [schedule.timesteps(S, 1000, "uniform") for S in (20, 50, 100)] + [ode.lambda_timesteps(100, AB)]:
        t2, t1, t0 = (int(t) for t in seq[-3:])
        h, h_p = ell(t0) - ell(t1), ell(t1) - ell(t2)
        leading = (math.exp(2 * h_p) - 1) * h / (2 * h_p)
        slip = (math.exp(h_p) - 1) * h / (2 * h_p)
        for lam, close in ((1e6, True), (0.05, False)):
            D_p, D_t = (lam / math.sqrt(lam + math.exp(-2 * ell(t))) for t in (t2, t1))
            ratio = h / 2 * (D_t - D_p) / h_p / (math.sqrt(lam) - D_t)
            assert (abs(ratio / leading - 1) < 1e-4) == close, (seq[-3:], lam, ratio, leading)
            if close:
                assert abs(slip / ratio - 1) > 0.3
            else:
                assert ratio < leading


def _ratio_to_flow(solver, lam, seq):
    """x̄ over the flow's from x_T = 1 at each visited step, then at σ = 0 (Gaussian data of variance λ: the map is linear)."""
    gauss = toy.SharedBasisMixture(torch.ones(1), torch.zeros(1, len(lam), dtype=torch.float64), lam[None])
    _, tr = solver(toy.exact_eps(gauss, AB), torch.ones(1, len(lam), dtype=torch.float64), AB, seq, return_trajectory=True)
    sig2 = lambda t: 1 / float(AB[t]) - 1 if t >= 0 else 0.0                   # noqa: E731
    s_T = sig2(int(seq[0]))
    return torch.stack([x[0] * ((1 + sig2(t)) / (1 + s_T) * (lam + s_T) / (lam + sig2(t))).sqrt()
                        for x, t in zip(tr["x"], tr["t"])])


def _three_m_last_step(lam, ts):
    """Notebook 09 §7 (e): Φ, 3M's step t_1 → t_0 from the flow's own x̄ = √(λ + σ²) and D = λ/√(λ + σ²) at t_3, t_2, t_1,
    minus the flow's √(λ + σ_0²) − e^{−h} √(λ + σ_1²), over √(λ + σ_0²); the quadratic's weights b_j = ∫_0^h e^{−(h−u)} L_j(u) du
    from its monomials, ∫_0^h e^{−(h−u)} u^k du = k! h^{k+1} φ_{k+1}(−h). Returns Φ, the b_j and the nodes u_j = ℓ_j − ℓ_1."""
    s2 = [1 / float(AB[t]) - 1 for t in ts]
    ell = [-0.5 * math.log(v) for v in s2]
    h, u = ell[3] - ell[2], [v - ell[2] for v in ell[:3]]
    moments = [math.factorial(k) * h ** (k + 1) * ode.phi(k + 1, -h) for k in range(3)]
    b = [float(np.polynomial.polynomial.polyfit(u, np.eye(3)[j], 2) @ moments) for j in range(3)]
    x_s = (lam + s2[3]).sqrt()
    phi_ = (sum(bj * lam / (lam + v).sqrt() for bj, v in zip(b, s2)) - x_s + math.exp(-h) * (lam + s2[2]).sqrt()) / x_s
    return phi_, b, u, h


def _peano(lam, b, u, h, s2_first, n=3001):
    """Notebook 09 §7 (e): Peano's kernel of 3M's last step on [ℓ_{−2}, ℓ_s] (u = ℓ − ℓ_1 from u_0 to h), K(ξ) = the exact
    ∫_0^h e^{−(h−v)} (v − ξ)_+²/2 dv minus the step's Σ b_j (u_j − ξ)_+²/2, on n points ξ; the flow's D''' (c = 1) there, one
    column per λ; and trapezoid weights. Then Φ x̄_s = −Σ K D''' w."""
    xi = np.linspace(u[0], h, n)
    g, gw = np.polynomial.legendre.leggauss(60)

    def K(x):
        lo = max(x, 0.0)
        v, w = lo + (h - lo) * (g + 1) / 2, (h - lo) * gw / 2
        nodes = sum(bj * max(uj - x, 0) ** 2 / 2 for bj, uj in zip(b, u))
        return float((w * np.exp(-(h - v)) * (v - x) ** 2 / 2).sum()) - nodes

    k = torch.tensor([K(x) for x in xi], dtype=torch.float64)[:, None]
    y = torch.from_numpy(np.exp(-2 * (xi - xi[0] + (-0.5 * math.log(s2_first)))))[:, None]     # σ² at ℓ = ℓ_1 + ξ
    L_ = lam[None]
    d3 = 2 * L_ * y * (2 * L_ ** 2 - 5 * L_ * y + y ** 2 / 2) / (L_ + y) ** 3.5
    wq = torch.full((n, 1), xi[1] - xi[0], dtype=torch.float64)
    wq[0] = wq[-1] = (xi[1] - xi[0]) / 2
    return k, d3, wq


def test_dpm_solver_pp_3m_last_step_lands_where_the_closed_form_says_for_any_variance():
    """Notebook 09 §7 (e): 3M's step into t = 0 from the flow's own state lands above the flow iff Φ > 0 (closed form). The
    library's run's own last step (over the flow through its x̄_t) is Φ plus what its D's carry in, Σ b_j D_j (r_j/r_1 − 1)/x̄_s,
    to rounding; Φ is also −∫K D''' dξ/x̄_s with Peano's kernel K ≥ 0 (by how much the step's integral of (ℓ − ξ)_+²/2 falls
    short of the exact one), by quadrature, on every grid notebook 09 uses (uniform S = 20 to 200, λ-uniform S = 100): Φ's
    sign is opposite to a K-weighted mean of D'''. On λ from 3e-5 to 10 on uniform steps (S = 20 to 200) Φ changes sign
    twice (below the flow above λ_2, above between λ_1 and λ_2), the upper root λ_2 at σ_1²/λ_2 ≈ 0.3, and the run's own
    sign is Φ's except just above λ_2 (within 25%), where Φ is small; at S = 100 the D''' test (below iff
    σ_30² < (5 − √21)λ) is sufficient and misses some directions."""
    lam = torch.logspace(-4.5, 1, 120, dtype=torch.float64)
    grids = [(schedule.timesteps(S, 1000, "uniform"), S) for S in (20, 50, 100, 200)] + [(ode.lambda_timesteps(100, AB), None)]
    for seq, S in grids:
        ts = [int(t) for t in seq[-4:]]
        phi_, b, u, h = _three_m_last_step(lam, ts)
        s2 = [1 / float(AB[t]) - 1 for t in ts]
        # Peano: Φ x̄_s = −∫ K(ξ) D'''(ξ) dξ with K ≥ 0, on each grid
        k, d3, wq = _peano(lam, b, u, h, s2[0])
        assert float(k.min()) > -1e-12 * float(k.max()) and float(k.max()) > 0, S
        peano = -(k * d3 * wq).sum(0) / (lam + s2[3]).sqrt()
        assert float((peano - phi_).abs().max()) < 1e-6 * float(phi_.abs().max()), S
        assert float((peano + phi_).abs().max()) > 1e-3 * float(phi_.abs().max()), S   # K taken with the wrong sign fails
        if S is None:
            continue                                   # λ-uniform: its λ_1 (2.7e-5 in notebook 09) is at this range's edge
        r = _ratio_to_flow(ode.dpm_solver_pp_3m, lam, seq)
        own = r[-2] / r[-3] - 1                                              # the run's last step over the flow through x̄_t
        carried = sum(bj * lam / (lam + v).sqrt() * (rj / r[-3] - 1) for bj, v, rj in zip(b, s2, r[-5:-2])) / (lam + s2[3]).sqrt()
        torch.testing.assert_close(phi_ + carried, own, rtol=0, atol=1e-11)
        assert float((phi_ - own).abs().max()) > 1e-6                      # the carried part is not nothing
        flips = lam[1:][torch.sign(phi_[1:]) != torch.sign(phi_[:-1])]        # λ_1 < λ_2: below, above, below
        assert len(flips) == 2 and 0.25 < s2[2] / float(flips[1]) < 0.4, (S, flips)
        assert bool((phi_[lam >= flips[1]] < 0).all() and (phi_[(lam >= flips[0]) & (lam < flips[1])] > 0).all()), S
        off = lam[torch.sign(phi_) != torch.sign(own)]                        # the carried part decides only just above λ_2
        assert bool(((off >= flips[1]) & (off < 1.25 * flips[1])).all()), (S, off, flips)
        if S == 100:
            d3_below = s2[0] < (5 - math.sqrt(21)) * lam
            assert bool((d3_below != (own < 0)).any()) and bool((own[d3_below] < 0).all())   # sufficient, not necessary
            weak = ~d3_below & (lam >= 0.02)       # as notebook 09's weakest: D''' < 0 near the first node, where K is small
            neg, pos = ((k * d3.clamp(**kw) * wq).sum(0).abs() for kw in ({"max": 0}, {"min": 0}))
            assert bool(weak.any()) and float((neg / pos)[weak].max()) < 0.01


def _two_m_leading_misses(lam, seq, lag=True, curvature=True, sigma2=None):
    """Notebook 09 §7 (e): the sum over 2M's steps of each one's leading-order miss from the flow's state, over its x̄:
    −(h³ D'/12 + (h² h_{−1}/4 + h³/6) D'')/x̄, D'/x̄ = z/(1+z)², D''/x̄ = −z(2−z)/(1+z)³, z = σ_t²/λ; the first step
    (DDIM's) −h² D'/(2x̄). lag=False drops the h² h_{−1}/4 term, curvature=False the whole D'' term; sigma2 (a list of σ²)
    takes those steps instead of seq's."""
    s2 = [1 / float(AB[int(t)]) - 1 for t in seq] if sigma2 is None else sigma2
    ell = [-0.5 * math.log(v) for v in s2]
    total = torch.zeros_like(lam)
    for i in range(len(ell) - 1):
        h, z = ell[i + 1] - ell[i], s2[i] / lam
        d1, d2 = z / (1 + z) ** 2, -z * (2 - z) / (1 + z) ** 3
        d2 = d2 * curvature
        total -= h ** 2 / 2 * d1 if i == 0 else h ** 3 / 12 * d1 + (h ** 2 * (ell[i] - ell[i - 1]) / 4 * lag + h ** 3 / 6) * d2
    return total, (ell[-1] - ell[0]) / (len(ell) - 1)


def test_dpm_solver_pp_2m_surplus_on_lambda_uniform_steps_is_its_slopes_lag():
    """Notebook 09 §7 (e): on λ-uniform steps 2M's surplus at t = 0 is the sum of its steps' leading-order misses from the
    flow's state (the flow carries a relative miss unchanged): within 0.4h of the surplus at S = 50, 100, 200 (the next order;
    at S = 100 within the notebook's 3%),
    where taking m as the slope at t (no lag) misses it by more than half in every direction. On exactly uniform steps the sum
    tends to (h²/8) ∫ (3 − 2z)/(1 + z)³ dz = h²/16 for σ_0² ≪ λ ≪ σ_T², all of it the lag's: without it the D' term
    (−h²/24) and the step's own curvature term (+h²/24) cancel. Checked by summing the misses on an exactly uniform grid
    in ℓ (σ from 1e3 to 1e-3, λ = 1), and the strongest direction here is within 3% of h²/16."""
    lam = torch.logspace(-2, 1.5, 64, dtype=torch.float64)
    for S in (50, 100, 200):
        seq = ode.lambda_timesteps(S, AB)
        surplus = _ratio_to_flow(ode.dpm_solver_pp_2m, lam, seq)[-2] - 1
        pred, h = _two_m_leading_misses(lam, seq)
        assert bool((surplus > 0).all()) and float(((pred - surplus) / surplus).abs().max()) < 0.4 * h, S     # next order: O(h)
        assert S != 100 or float(((pred - surplus) / surplus).abs().max()) < 0.03          # the notebook's "within 3%" (2.6%)
        assert float(((_two_m_leading_misses(lam, seq, lag=False)[0] - surplus) / surplus).abs().min()) > 0.5
        assert abs(float(surplus[-1]) / (h ** 2 / 16) - 1) < 0.03, (S, float(surplus[-1]), h)
    sig2 = [math.exp(-2 * v) for v in np.linspace(-math.log(1e3), math.log(1e3), 1383)]        # h = 0.01 in ℓ, λ = 1
    h = (math.log(1e3) * 2) / 1382
    sums = {k: float(_two_m_leading_misses(torch.ones(1, dtype=torch.float64), None, sigma2=sig2, **kw)[0][0]) / h ** 2
            for k, kw in (("all", {}), ("no lag", {"lag": False}), ("D' only", {"curvature": False}))}
    assert abs(sums["all"] * 16 - 1) < 0.01 and abs(sums["no lag"] * 16) < 0.01 and abs(sums["D' only"] * 24 + 1) < 0.01, sums


def test_step_rules_by_name_are_the_rules_rebuilt_in_numpy():
    """`rule_timesteps` (what `sample --spacing` runs) against each rule rebuilt here in numpy from its definition: σ
    on a grid (log-uniform for logsnr, σ^{1/7} uniform for karras, Karras et al. 2022 eq. 5 with ρ = 7) mapped to the
    continuous step where log ᾱ, linear between the table's entries (ᾱ_{−1} = 1), equals −log(1 + σ²) (np.interp),
    rounded; power κ: t + 1 = T (1 − i/S)^κ rounded. At S = 10 no two steps round to one integer, so nothing is moved
    apart. Every other test in this file passed with rule_timesteps running karras at ρ = 5."""
    ab = AB.numpy()
    log_tab = np.concatenate([[0.0], np.log(ab)])                       # at steps -1, 0, ..., T-1
    sig_table = np.sqrt((1 - ab) / ab)

    def step_of(sig):
        return np.interp(np.log1p(sig ** 2), -log_tab, np.arange(-1, len(ab)))

    S, T = 10, len(ab)
    hi, lo = sig_table[-1], sig_table[0]
    grids = {"logsnr": np.exp(np.linspace(np.log(hi), np.log(lo), S)),
             "karras": np.linspace(hi ** (1 / 7), lo ** (1 / 7), S) ** 7}
    expected = {rule: np.round(step_of(sig)).astype(int).tolist() for rule, sig in grids.items()}
    for k in (2, 3):
        expected[f"power{k}"] = np.round(T * (1 - np.arange(S) / S) ** k - 1).astype(int).tolist()
    for rule in ode.STEP_RULES:
        assert ode.rule_timesteps(rule, S, AB).tolist() == expected[rule], rule
    assert len({tuple(v) for v in expected.values()}) == 4
