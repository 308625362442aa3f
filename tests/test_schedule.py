"""Schedules and timestep sub-sequences against closed forms and the official rules, re-written here."""
import math

import numpy as np
import pytest
import torch

from ddimlab import schedule
from ddimlab.schedule import (
    alpha_bar,
    alpha_bar_at,
    beta_schedule,
    make_alpha_bar,
    sigma_of,
    snr,
    step_pairs,
    timesteps,
    validate_timesteps,
)


def test_linear_schedule_endpoints_and_dtype():
    betas = beta_schedule("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert float(betas[0]) == pytest.approx(1e-4, rel=1e-12)
    assert float(betas[-1]) == pytest.approx(0.02, rel=1e-12)
    assert bool((betas[1:] > betas[:-1]).all())
    ab = make_alpha_bar("linear", 1000)
    # ᾱ_{T-1} = ∏(1 − β_t) ≈ 4.04e-5 for DDPM's schedule
    assert float(ab[-1]) == pytest.approx(float(np.prod(1 - np.linspace(1e-4, 0.02, 1000))), rel=1e-12)
    assert 3e-5 < float(ab[-1]) < 5e-5


def test_quadratic_schedule_is_square_of_linear_sqrt():
    betas = beta_schedule("quadratic", 50)
    assert float(betas[0]) == pytest.approx(1e-4) and float(betas[-1]) == pytest.approx(0.02)
    d = torch.diff(betas.sqrt())
    torch.testing.assert_close(d, torch.full_like(d, d[0].item()))


def test_alpha_bar_lookup_minus_one_is_clean_data():
    ab = make_alpha_bar("linear", 100)
    assert float(alpha_bar_at(ab, -1)) == 1.0
    assert float(alpha_bar_at(ab, 0)) == pytest.approx(1 - 1e-4)
    torch.testing.assert_close(alpha_bar_at(ab, torch.tensor([-1, 0, 99])),
                               torch.stack([torch.tensor(1.0, dtype=torch.float64), ab[0], ab[99]]))


@pytest.mark.parametrize("betas, what", [("0.1", "a string"), (torch.tensor([True, False]), "a bool"),
                                         (np.array([0.5, 0.5]) > 0, "a bool")])
def test_alpha_bar_names_betas_that_are_not_numbers(betas, what):
    """A string was torch's "too many dimensions 'str'", and booleans were read as 1.0 and 0.0 ("every beta must lie in
    (0, 1) ... got 1.0", which does not say that a mask was passed)."""
    with pytest.raises(TypeError, match=f"betas must be a number or a tensor of numbers, got {what}"):
        alpha_bar(betas)
    assert torch.allclose(alpha_bar([0.5, 0.5]), torch.tensor([0.5, 0.25], dtype=torch.float64))


def test_cosine_alpha_bar_matches_closed_form():
    T, s = 1000, 0.008
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    ab = make_alpha_bar("cosine", T)
    expected = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    # the last β is clipped at 0.999 (ᾱ would reach 0), so compare all but the last step
    torch.testing.assert_close(ab[:-1], expected[:-1], rtol=1e-10, atol=1e-13)
    assert float(beta_schedule("cosine", T)[-1]) == pytest.approx(0.999)


def _snr_sigma_miss(snr_fn, sigma_fn) -> float:
    """Largest relative miss of snr_fn and sigma_fn against their definitions read off the forward process itself
    (`diffusion.q_sample`, checked by Monte Carlo in test_diffusion), not the formulas: x_t = c_x x_0 + c_ε ε, so
    SNR = (c_x / c_ε)² (signal over noise variance, VDM §2), and x̄ = x_t/c_x = x_0 + σ ε (DDIM §4.3), so σ = c_ε / c_x."""
    from ddimlab.diffusion import q_sample
    ab = make_alpha_bar("linear", 1000)[[0, 10, 300, 999]]
    one, zero = torch.ones(4, 1, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64)
    c_x, c_eps = q_sample(one, ab, zero)[:, 0], q_sample(zero, ab, one)[:, 0]
    return max(float(((snr_fn(ab) - (c_x / c_eps) ** 2) / (c_x / c_eps) ** 2).abs().max()),
               float(((sigma_fn(ab) - c_eps / c_x) / (c_eps / c_x)).abs().max()))


def test_snr_and_sigma_are_read_off_the_forward_process():
    assert _snr_sigma_miss(snr, sigma_of) < 1e-12
    torch.testing.assert_close(alpha_bar(beta_schedule("linear", 10)), make_alpha_bar("linear", 10))


@pytest.mark.parametrize("wrong", [
    (lambda a: (1 - a) / a, sigma_of),                          # SNR upside down
    (snr, lambda a: (1 - a) / a),                               # σ without its square root
    (snr, lambda a: torch.sqrt(a / (1 - a))),                   # σ upside down (√SNR)
    (snr, lambda a: torch.sqrt(1 - a)),                         # σ as the noise coefficient of x_t, not of x̄
])
def test_snr_and_sigma_check_fails_for_wrong_formulas(wrong):
    assert _snr_sigma_miss(*wrong) > 1e-3


def official_uniform(S, T):
    return list(range(0, T, T // S))


def official_quad(S, T):
    return [int(s) for s in list(np.linspace(0, np.sqrt(T * 0.8), S) ** 2)]


def diffusers_linspace(S, T):
    return np.linspace(0, T - 1, S).round()[::-1].astype(np.int64).tolist()


def diffusers_trailing(S, T):
    return (np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1).tolist()


@pytest.mark.parametrize("S", [1, 10, 20, 50, 100, 250, 1000])
def test_spacings_match_reference_rules(S):
    T = 1000
    if T % S == 0:
        assert timesteps(S, T, "uniform").tolist() == official_uniform(S, T)[::-1]
    assert timesteps(S, T, "quad").tolist() == sorted(set(official_quad(S, T)), reverse=True)
    assert timesteps(S, T, "linspace").tolist() == diffusers_linspace(S, T)
    assert timesteps(S, T, "trailing").tolist() == diffusers_trailing(S, T)


def test_uniform_when_S_does_not_divide_T_has_S_steps():
    seq = timesteps(30, 1000, "uniform")
    assert seq.tolist() == official_uniform(30, 1000)[:30][::-1]
    assert len(official_uniform(30, 1000)) == 31  # the official range would take one extra step


# diffusers 0.x `DDIMScheduler(num_train_timesteps=1000, timestep_spacing=...).set_timesteps(S).timesteps`, printed once
# and pasted here ("leading" with steps_offset 0 is the official DDIM `range(0, T, T // S)`, cut to S steps).
DIFFUSERS_1000 = {
    ("leading", 6): [830, 664, 498, 332, 166, 0],
    ("leading", 7): [852, 710, 568, 426, 284, 142, 0],
    ("trailing", 6): [999, 832, 666, 499, 332, 166],
    ("trailing", 7): [999, 856, 713, 570, 428, 285, 142],
    ("linspace", 7): [999, 832, 666, 500, 333, 166, 0],
}


@pytest.mark.parametrize("spacing, S", sorted(DIFFUSERS_1000))
def test_spacings_where_S_does_not_divide_T_match_pasted_diffusers_steps(spacing, S):
    """S = 6, 7 do not divide T = 1000 (the reference-rule test's S mostly do), and T/S has a fractional part above one
    half: k * round(T/S) for the uniform spacing (steps 143 apart for S = 7, not 142) and floor in place of trailing's
    round (427, not 428) each fail here and nowhere else in this file."""
    assert timesteps(S, 1000, "uniform" if spacing == "leading" else spacing).tolist() == DIFFUSERS_1000[spacing, S]


def test_quad_documented_facts():
    assert int(timesteps(10, 1000, "quad")[0]) == 800
    assert len(timesteps(100, 1000, "quad")) == 96
    assert len(timesteps(1000, 1000, "quad")) == 688


@pytest.mark.parametrize("spacing", ["uniform", "quad", "linspace", "trailing"])
@pytest.mark.parametrize("S,T", [(1, 10), (7, 10), (10, 10), (13, 1000), (99, 1000)])
def test_every_sequence_is_valid_and_ends_at_clean_data(spacing, S, T):
    seq = timesteps(S, T, spacing)
    assert seq.dtype == torch.long and len(seq) <= S
    assert bool((seq[1:] < seq[:-1]).all()) and 0 <= int(seq.min()) and int(seq.max()) <= T - 1
    pairs = step_pairs(seq)
    assert pairs[-1][1] == -1 and [t for t, _ in pairs] == seq.tolist()
    assert all(s < t for t, s in pairs)
    if spacing != "quad":
        assert len(seq) == S


@pytest.mark.parametrize("S", [0, -1, 1001, 2.0, "10"])
def test_steps_outside_range_are_rejected(S):
    with pytest.raises(ValueError, match=r"S must be an integer in 1\.\.1000 "):
        timesteps(S, 1000)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="choose one of"):
        timesteps(10, 1000, "leading-ish")
    with pytest.raises(ValueError, match="choose one of"):
        beta_schedule("sigmoid", 100)
    with pytest.raises(ValueError, match="positive integer"):
        beta_schedule("linear", 0)


@pytest.mark.parametrize("seq,msg", [
    ([5, 5, 1], "strictly decreasing"),
    ([1, 5], "strictly decreasing"),
    ([10, 3], "0..T-1"),
    ([3, -1], "0..T-1"),
    ([3.0, 1.0], "integers"),
    ([[3, 1]], "1-D"),
    ([], "1-D"),
])
def test_validate_timesteps_errors(seq, msg):
    with pytest.raises(ValueError, match=msg):
        validate_timesteps(torch.tensor(seq), T=10)
    assert validate_timesteps([9, 4, 0], T=10).tolist() == [9, 4, 0]


def test_alpha_bar_at_of_one_int_step_is_a_copy_of_the_table_entry():
    """An int step (the samplers' loops) takes a fast path: the same value, dtype and device as the tensor path, ᾱ_{−1}
    = 1, and a copy, so writing into the result leaves the table alone."""
    ab = schedule.make_alpha_bar("linear", 1000)
    for t in (-1, 0, 1, 500, 999):
        one = schedule.alpha_bar_at(ab, t)
        assert one.shape == () and one.dtype == ab.dtype and float(one) == (1.0 if t < 0 else float(ab.numpy()[t]))
        assert torch.equal(one, schedule.alpha_bar_at(ab, torch.tensor(t)))
    schedule.alpha_bar_at(ab, 3).fill_(0.5)
    assert float(ab[3]) != 0.5
    for t in (-2, 1000, True):
        with pytest.raises(ValueError):
            schedule.alpha_bar_at(ab, t)


def test_alpha_bar_at_of_an_int_step_does_not_take_the_tensor_path(monkeypatch):
    """Mutation audit: the int fast path is taken (the tensor path, `as_steps`, is not called for an int in -1..T-1),
    and only for those: a step outside, a bool or a tensor still goes through the tensor path's checks."""
    ab = schedule.make_alpha_bar("linear", 10)
    real, calls = schedule.as_steps, []
    monkeypatch.setattr(schedule, "as_steps", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    assert [float(schedule.alpha_bar_at(ab, t)) for t in (-1, 0, 9)] == [1.0, float(ab[0]), float(ab[9])] and not calls
    for t in (10, True):
        with pytest.raises(ValueError):
            schedule.alpha_bar_at(ab, t)
    schedule.alpha_bar_at(ab, torch.tensor(3))
    assert len(calls) == 3


def test_alpha_bar_at_refuses_steps_outside_the_table():
    """Issue #12 case 9: alpha_bar_at(ab, -2) used to return a value from the wrong end of the table."""
    ab = schedule.make_alpha_bar("linear", 10)
    for t in (-2, 10, torch.tensor([0, 11])):
        with pytest.raises(ValueError, match=r"-1\.\.T-1"):
            schedule.alpha_bar_at(ab, t)
    with pytest.raises(ValueError, match="integer"):
        schedule.alpha_bar_at(ab, 2.5)
    assert float(schedule.alpha_bar_at(ab, -1)) == 1.0 and schedule.alpha_bar_at(ab, 9) == ab[9]


def test_timesteps_refuses_a_boolean_step_count():
    with pytest.raises(ValueError, match="number of steps"):
        schedule.timesteps(True, 1000)


def test_validate_alpha_bar():
    ab = schedule.make_alpha_bar("cosine", 1000)
    assert schedule.validate_alpha_bar(ab.float()).dtype == torch.float64
    for bad in (ab.flip(0), torch.tensor([0.9, 0.0]), torch.tensor([[0.5]]), torch.tensor([1, 0]),
                torch.tensor([0.9, float("inf")])):
        with pytest.raises(ValueError, match="alpha_bar"):
            schedule.validate_alpha_bar(bad)


def _draws_at_cosine_levels(table: torch.Tensor, n: int) -> torch.Tensor:
    """Monte Carlo, independent of the arctan formula: u ~ U(0, 1), ᾱ = cos²(uπ/2), and the step whose cell
    [ᾱ_t, ᾱ_{t−1}) holds that ᾱ (the count of table entries above it, the last step taking the rest)."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ab = torch.cos(u * math.pi / 2) ** 2
    above = table.numel() - torch.searchsorted(table.flip(0), ab, right=True)
    return above.clamp(max=table.numel() - 1)


def test_cosine_t_probs_give_the_cosine_schedules_noise_levels():
    """Frequencies of 2·10⁵ draws in 20 blocks of 50 steps and at steps 0, 1 and T−1, each within 5 binomial
    standard errors; the same check fails on a wrong distribution function (arctan σ² for arctan σ) and on
    levels rounded down to the next cleaner step instead of up (the blocks alone would not see that)."""
    table, n = make_alpha_bar("linear", 1000), 200_000
    pick = lambda p: torch.cat([p.reshape(20, 50).sum(1), p[[0, 1, -1]]])  # noqa: E731
    freq = pick(_draws_at_cosine_levels(table, n).bincount(minlength=1000) / n)
    p = schedule.cosine_t_probs(table)
    assert p.dtype == torch.float64 and p.shape == (1000,) and bool((p > 0).all())
    assert float(p.sum()) == pytest.approx(1, abs=1e-12)

    def within(q):
        q = pick(q)
        return bool(((freq - q).abs() <= 5 * (q * (1 - q) / n).sqrt()).all())

    pad = lambda u: torch.diff(u, prepend=u.new_zeros(1), append=u.new_ones(1))  # noqa: E731
    u_all = 2 / math.pi * torch.atan(schedule.sigma_of(table))
    assert within(p)
    assert not within(pad(2 / math.pi * torch.atan(schedule.sigma_of(table[:-1]) ** 2)))
    assert not within(pad(u_all[1:]))
    # the numbers the docstring and notebook 06 §3 give for the linear table
    assert (round(float(p[:100].sum()), 3), round(float(p[800:].sum()), 3)) == (0.208, 0.025)
    assert [round(1000 * float(p[k]), 2) for k in (0, 1, 998, 999)] == [6.37, 3.07, 0.04, 4.09]


def test_round_47_a_schedule_too_long_for_the_memory_is_refused_in_one_line(monkeypatch):
    """make_alpha_bar("linear", 10**12) died in torch's allocator ("DefaultCPUAllocator: can't allocate memory: you tried
    to allocate 8000000000000 bytes"), and the cosine schedule would first have built a Python list of 10**12 floats.
    A T whose tables need more than half the memory is now a ValueError saying the largest T that fits
    (`checks.check_fits`); the largest fits, one more does not."""
    from ddimlab import checks

    for name in ("linear", "quadratic", "cosine"):
        with pytest.raises(ValueError, match=r"^a schedule of T = 1,000,000,000,000 steps: about [\d,]+ GiB, more than "
                                             r"half of .*; T must be an integer in 1\.\.\d+$"):
            make_alpha_bar(name, 10 ** 12)
    monkeypatch.setattr(checks, "memory_limit", lambda: 40 * 2 ** 16)
    assert make_alpha_bar("linear", 2 ** 16).shape == (2 ** 16,)
    with pytest.raises(ValueError, match=r"T must be an integer in 1\.\.65536$"):
        beta_schedule("linear", 2 ** 16 + 1)
