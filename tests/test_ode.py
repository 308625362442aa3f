"""Probability-flow ODE solvers against DDIM, closed forms and scipy (notebook 05)."""
import math

import numpy as np
import pytest
import torch

from ddimlab import ode, samplers, schedule, toy

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
    """For data N(μ, Σ): x̄(σ) − μ = (Σ + σ²I)^{1/2} (Σ + σ₀²I)^{−1/2} (x̄(σ₀) − μ) (notebook 05 §3)."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 3, generator=g, dtype=torch.float64)
    cov, mu = 0.05 * A @ A.T + 0.01 * torch.eye(3, dtype=torch.float64), torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64)
    gauss = toy.GaussianMixture(torch.ones(1), mu, cov[None])
    eps = toy.exact_eps(gauss, AB)
    lam, U = torch.linalg.eigh(cov)

    def flow(xbar, s0, s1):
        scale = U @ torch.diag(((lam + s1 ** 2) / (lam + s0 ** 2)).sqrt()) @ U.T
        return mu + (xbar - mu) @ scale.T

    for t0, t1 in [(999, -1), (600, 20)]:
        s0, s1 = float(ode.sigma_at(AB, t0)), float(ode.sigma_at(AB, t1))
        exact = flow(X_T / math.sqrt(float(AB[t0])), s0, s1) / math.sqrt(1 + s1 ** 2)
        ref = ode.reference_solution(eps, X_T, AB, t0, t1)
        torch.testing.assert_close(ref, exact, rtol=0, atol=1e-8)


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


def test_final_denoising_step_goes_twice_as_far_as_the_flow():
    """Near σ = 0, dx̄/dσ ≈ −σ ∇log p_0: the flow moves x̄ by σε/2, x̂_0 = x̄ − σε by σε (module docstring)."""
    x = MIX.marginal(float(AB[0])).sample(8, torch.Generator().manual_seed(3))
    xbar = x / math.sqrt(float(AB[0]))
    ref = ode.reference_solution(EPS, x, AB, 0, -1)
    x0_hat = ode.euler(EPS, x, AB, [0])                      # one DDIM step t = 0 → −1
    torch.testing.assert_close(x0_hat - xbar, 2 * (ref - xbar), rtol=0.05, atol=1e-6)


def test_lambda_timesteps():
    seq = ode.lambda_timesteps(10, AB)
    assert len(seq) == 10 and int(seq[0]) == 999 and int(seq[-1]) == 0
    lam = -ode.sigma_at(AB, seq).log()
    steps = lam[1:] - lam[:-1]
    assert float(steps.max() / steps.min()) < 1.5          # uniform in λ up to rounding t to integers
    assert len(ode.lambda_timesteps(200, AB)) < 200         # repeats near t = 0 are kept once
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

        x0, tr = ode.solve(name, eps, X_T, AB, seq, return_trajectory=True)
        assert len(calls) == ode.nfe(name, 6)
        assert len(tr["x"]) == 7 and tr["t"][-1] == -1 and torch.equal(tr["x"][-1], x0)
        integer = [t for t in calls if not t.dtype.is_floating_point]
        assert {int(t[0]) for t in integer} <= set(seq.tolist())
        if name == "dpm_solver_2":                       # midpoints at σ_mid = √(σ_t σ_s): float steps
            mids = [float(t[0]) for t in calls if t.dtype.is_floating_point]
            assert len(mids) == 5
            s_t, s_s = float(ode.sigma_at(AB, int(seq[0]))), float(ode.sigma_at(AB, int(seq[1])))
            assert math.isclose(float(ode.sigma_at(AB, mids[0])), math.sqrt(s_t * s_s), rel_tol=1e-10)


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
    with pytest.raises(ValueError, match="t_end must be smaller"):
        ode.reference_solution(EPS, X_T, AB, 10, 20)
    with pytest.raises(ValueError, match="sigma must lie"):
        ode.t_of_sigma(AB, 1e4)
    with pytest.raises(ValueError, match=r"\[-1, T-1\]"):
        ode.alpha_bar_cont(AB, 999.5)
    with pytest.raises(ValueError, match="x's shape"):
        ode.dpm_solver_pp_2m(lambda x, t: x[:1], X_T, AB, seq)
