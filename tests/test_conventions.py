"""ddimlab's step conventions against diffusers' DDIMScheduler itself (notebook 04 §4): timestep spacings,
steps_offset, the t − T//S previous step, set_alpha_to_one, the schedules, and zero terminal SNR.
Skipped where diffusers is not installed (it is in the `test` extra)."""
import math

import pytest
import torch

from ddimlab import diffusion, samplers, schedule, toy

diffusers = pytest.importorskip("diffusers")

T = 1000
LINEAR = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False)
SD = dict(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
          clip_sample=False, steps_offset=1)
OURS = {"leading": "uniform", "linspace": "linspace", "trailing": "trailing"}


def run_scheduler(scheduler, eps, x_T, S, eta=0.0, noise=None):
    """diffusers' loop; `noise` (one tensor per step) is passed as variance_noise when eta > 0."""
    scheduler.set_timesteps(S)
    x = x_T
    for i, t in enumerate(scheduler.timesteps):
        kw = {} if noise is None else {"variance_noise": noise[i]}
        x = scheduler.step(eps(x, int(t)), t, x, eta=eta, **kw).prev_sample
    return x


@pytest.fixture(scope="module")
def lab_setup():
    ab = diffusers.DDIMScheduler(**LINEAR).alphas_cumprod.double()     # the same float32 table on both sides
    mix = toy.eight_gaussians()
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return ab, toy.exact_eps(mix, ab), x_T


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("S", [1, 7, 10, 13, 50, 100, 999, 1000])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_are_diffusers(spacing, S, offset):
    """leading = uniform (+ steps_offset), linspace = linspace, trailing = trailing; steps_offset shifts only leading."""
    sch = diffusers.DDIMScheduler(**LINEAR, timestep_spacing=spacing, steps_offset=offset)
    sch.set_timesteps(S)
    expected = schedule.timesteps(S, T, OURS[spacing]) + (offset if spacing == "leading" else 0)
    if spacing == "leading" and offset == 1 and S == 1000:
        pytest.skip("leading + steps_offset=1 with S = T asks for step 1000, outside 0..T-1 (diffusers #10003)")
    assert sch.timesteps.tolist() == expected.tolist()


@pytest.mark.parametrize("spacing, S", [("leading", 10), ("leading", 13), ("trailing", 10), ("trailing", 50)])
def test_deterministic_ddim_equals_diffusers(lab_setup, spacing, S):
    """Where t − T//S is the next step of τ (leading; trailing with S | T) DDIMScheduler is ddimlab's DDIM."""
    ab, eps, x_T = lab_setup
    x_d = run_scheduler(diffusers.DDIMScheduler(**LINEAR, timestep_spacing=spacing), eps, x_T, S)
    x_o = samplers.ddim_sample(eps, x_T, ab, schedule.timesteps(S, T, OURS[spacing]))
    torch.testing.assert_close(x_d, x_o, rtol=0, atol=1e-6)          # diffusers keeps float32 coefficients


def _previous_step_rule(eps, x_T, ab, seq, S, eta=0.0, noise=None):
    """DDIM eq. 12 on the pairs (t, t − T//S) that DDIMScheduler.step() takes (ᾱ = 1 below step 0)."""
    x = x_T
    for i, t in enumerate(seq.tolist()):
        s = t - T // S
        x, _ = diffusion.ddim_step(x, eps(x, t), float(ab[t]), float(ab[s]) if s >= 0 else 1.0, eta,
                                   None if noise is None else noise[i])
    return x


@pytest.mark.parametrize("spacing, S", [("linspace", 10), ("linspace", 30), ("trailing", 13), ("trailing", 30)])
def test_previous_step_formula_is_not_the_next_timestep(lab_setup, spacing, S):
    """diffusers #12633 / #9261: for linspace, and trailing with S ∤ T, step() goes to t − T//S, not to the next
    element of τ: its samples equal DDIM on those pairs and differ from ddimlab's on τ."""
    ab, eps, x_T = lab_setup
    seq = schedule.timesteps(S, T, OURS[spacing])
    pairs = schedule.step_pairs(seq)
    assert any(max(t - T // S, -1) != s for t, s in pairs)
    x_d = run_scheduler(diffusers.DDIMScheduler(**LINEAR, timestep_spacing=spacing), eps, x_T, S)
    torch.testing.assert_close(x_d, _previous_step_rule(eps, x_T, ab, seq, S), rtol=0, atol=1e-6)
    assert float((x_d - samplers.ddim_sample(eps, x_T, ab, seq)).abs().max()) > 1e-3


def test_stochastic_step_equals_diffusers(lab_setup):
    """DDIM eq. 16's σ(η) and the noise term: DDIMScheduler.step(eta, variance_noise=z) is ddimlab's step with z."""
    ab, eps, x_T = lab_setup
    S = 10
    g = torch.Generator().manual_seed(3)
    noise = [torch.randn(x_T.shape, generator=g, dtype=torch.float64) for _ in range(S)]
    for eta in (0.5, 1.0):
        x_d = run_scheduler(diffusers.DDIMScheduler(**LINEAR, timestep_spacing="leading"), eps, x_T, S, eta, noise)
        x_o = samplers.ddim_sample(eps, x_T, ab, schedule.timesteps(S, T, "uniform"), eta=eta,
                                   noise_sampler=lambda t, s, it=iter(noise): next(it))
        torch.testing.assert_close(x_d, x_o, rtol=0, atol=1e-6)


def test_final_alpha_cumprod_leaves_noise(lab_setup):
    """set_alpha_to_one=True is ddimlab's last step to ᾱ_{−1} = 1; False ends at ᾱ_0 and returns
    q_sample(x̂_0, ᾱ_0, ε): √(1 − ᾱ_0) ≈ 0.029 of the predicted noise stays for Stable Diffusion's schedule."""
    _, _, x_T = lab_setup
    s_false, s_true = (diffusers.DDIMScheduler(**SD, set_alpha_to_one=b) for b in (False, True))
    ab = s_false.alphas_cumprod.double()
    eps = toy.exact_eps(toy.eight_gaussians(), ab)
    x_false, x_true = run_scheduler(s_false, eps, x_T, 10), run_scheduler(s_true, eps, x_T, 10)
    x_o, traj = samplers.ddim_sample(eps, x_T, ab, schedule.timesteps(10, T, "uniform") + 1, return_trajectory=True)
    torch.testing.assert_close(x_true, x_o, rtol=0, atol=1e-6)
    e_last = eps(traj["x"][-2], 1)
    torch.testing.assert_close(x_false, diffusion.q_sample(traj["x0"][-1], float(ab[0]), e_last), rtol=0, atol=1e-6)
    assert math.sqrt(1 - float(ab[0])) == pytest.approx(0.0292, abs=5e-4)


@pytest.mark.parametrize("name, kw, ours", [
    ("linear", dict(beta_start=1e-4, beta_end=0.02), lambda: schedule.make_alpha_bar("linear", T)),
    ("scaled_linear", dict(beta_start=0.00085, beta_end=0.012),
     lambda: schedule.alpha_bar(schedule.beta_schedule("quadratic", T, 0.00085, 0.012))),
    ("squaredcos_cap_v2", {}, lambda: schedule.make_alpha_bar("cosine", T)),
])
def test_schedules_are_diffusers(name, kw, ours):
    """diffusers' scaled_linear (Stable Diffusion) is ddimlab's quadratic schedule with its ends; cosine is
    squaredcos_cap_v2. Terminal √ᾱ_{T−1}: 0.0064 (linear), 0.068 (scaled_linear)."""
    theirs = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule=name, **kw).alphas_cumprod.double()
    torch.testing.assert_close(theirs, ours(), rtol=2e-5, atol=1e-7)
    terminal = {"linear": 0.00635, "scaled_linear": 0.0683}
    if name in terminal:
        assert math.sqrt(float(ours()[-1])) == pytest.approx(terminal[name], rel=2e-3)


def test_zero_terminal_snr_schedule_is_refused():
    """Lin et al. 2024 §3.1 (diffusers' rescale_betas_zero_snr): ᾱ_{T−1} = 0 exactly, which ε-prediction cannot
    use; ddimlab's samplers require ᾱ in (0, 1) and say so."""
    ab = diffusers.DDIMScheduler(**SD, rescale_betas_zero_snr=True).alphas_cumprod.double()
    assert float(ab[-1]) == 0.0 and float(ab[0]) == pytest.approx(1 - 0.00085, rel=1e-6)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        schedule.validate_alpha_bar(ab)
