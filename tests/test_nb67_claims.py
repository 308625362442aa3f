"""The claims of notebooks 06 and 07 checked again on other data, without the digits model, each with a mutation
that must fail where the claim is an identity: the MAC count by hand (06 §1), ω_0 of the step embedding (06 §1),
the split L_simple = E|ε_θ − ε*|² + C on an empirical mixture and its floor C (06 §4), clipped DDIM with η = 1
as clipped DDPM (07 §6), and E clip(z)² for a clipped latent (07 §6); and what DDIM Table 2's rounding lets 07 §3 read
from its slopes; the norms of linear and spherical mixes of latents (07 §2) and the weight of x̂_0 in a DDIM step (07 §6).
Where a check of notebook 06 is weaker than its prose, the stronger one is here: the skip paths DDPM's initialisation
leaves (06 §1), the split's Var[d | x_t] against a covariance-blind formula (06 §4), the EMA warm-up's weight on the
initial weights (06 §3-§4), the float32 error of e(t) (06 §1) and the digits FD's floor against n (06 §5)."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ddimlab import diffusion, quality, samplers, schedule, tables, toy, train, unet

AB = schedule.make_alpha_bar("linear", 1000)


def _macs_by_hand(net, resolution, in_ch):
    total = []

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            total.append(out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, torch.nn.Linear):
            total.append(out[0].numel() * m.in_features)
        else:
            c, hw = inp[0].shape[1], inp[0].shape[2] * inp[0].shape[3]
            total.append(4 * hw * c * c + 2 * hw * hw * c)
    hooks = [m.register_forward_hook(hook) for m in net.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, unet.AttnBlock))]
    with torch.no_grad():
        net(torch.zeros(1, in_ch, resolution, resolution), torch.zeros(1))
    for h in hooks:
        h.remove()
    return sum(total)


@pytest.mark.parametrize("overrides", [{}, dict(resolution=16, ch_mult=(1, 2, 2), attn_resolutions=(8,))])
def test_count_macs_equals_a_count_by_hand(overrides):
    config = train.make_config("digits", overrides)
    net = train.build_model(config, in_ch=1)
    assert unet.count_macs(net) == _macs_by_hand(net, config.resolution, 1)


def test_step_embedding_lowest_index_has_one_radian_per_step():
    t = torch.arange(200.0)
    emb = unet.timestep_embedding(t, 64)
    assert torch.allclose(emb[:, 0], torch.sin(t), atol=1e-4)            # period 2π steps, not 1
    assert not torch.allclose(emb[:, 0], torch.sin(2 * math.pi * t), atol=1e-2)


def _empirical(n=40, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(n, d, generator=g, dtype=torch.float64) * 2 - 1
    return points, toy.SharedBasisMixture(torch.ones(n), points, torch.full((n, d), 1e-6))


def _losses(t, n=20_000, seed=1):
    points, mix = _empirical()
    g = torch.Generator().manual_seed(seed)
    x0 = points[torch.randint(0, len(points), (n,), generator=g)]
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    a = float(AB[t])
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
    e_star = mix.eps(x_t, a)
    e_net = 0.7 * e_star + 0.05                                         # an imperfect "network"
    return noise, e_star, e_net


@pytest.mark.parametrize("t", [100, 400, 700])
def test_loss_splits_into_model_error_plus_floor(t):
    noise, e_star, e_net = _losses(t)
    split = (e_net - noise).pow(2).sum(1) - (e_star - noise).pow(2).sum(1) - (e_net - e_star).pow(2).sum(1)
    assert abs(float(split.mean())) < 4 * float(split.std()) / math.sqrt(len(split))
    wrong = (e_net - noise).pow(2).sum(1) - (0.9 * e_star - noise).pow(2).sum(1) - (e_net - e_star).pow(2).sum(1)
    if t >= 400:    # where eps* is far from 0 the mutation is resolved
        assert abs(float(wrong.mean())) > 4 * float(wrong.std()) / math.sqrt(len(wrong))


def test_floor_of_point_masses_vanishes_at_small_t_and_not_in_the_middle():
    small = _losses(5)
    middle = _losses(400)
    c_small = float((small[1] - small[0]).pow(2).mean())
    c_middle = float((middle[1] - middle[0]).pow(2).mean())
    assert c_small < 1e-3 and c_middle > 0.05


def _clip_setup():
    mix = toy.random_mixture(d=3, K=3, seed=2)
    exact = toy.exact_eps(mix, AB)
    eps = lambda x, t: 1.3 * exact(x, t)                                # overshoots: x̂_0 leaves [−1, 1]
    seq = schedule.timesteps(10, 1000, "uniform")
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(64, 3, generator=g, dtype=torch.float64)
    z = {int(t): torch.randn(x_T.shape, generator=g, dtype=torch.float64) for t in seq}
    return eps, seq, x_T, z


def _by_hand(eps, seq, x_T, z, recompute=True):
    """DDPM's posterior mean with the clipped x̂_0 (recompute=True) or the DDIM step with the clipped x̂_0 and the
    unclipped ε (recompute=False), written from the equations."""
    x, n_clipped = x_T, 0
    abar = lambda t: float(AB[t]) if t >= 0 else 1.0
    for t, s in zip(seq.tolist(), seq.tolist()[1:] + [-1]):
        a_t, a_s = abar(t), abar(s)
        var = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        e = eps(x, torch.full((len(x),), t))
        x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        n_clipped += int((x0.abs() > 1).sum())
        if recompute:
            x = (math.sqrt(a_s) * (1 - a_t / a_s) / (1 - a_t) * x0.clamp(-1, 1)
                 + math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t) * x + math.sqrt(var) * z[t])
        else:
            x = math.sqrt(a_s) * x0.clamp(-1, 1) + math.sqrt(max(1 - a_s - var, 0.0)) * e + math.sqrt(var) * z[t]
    return x, n_clipped


def test_clipped_ddim_eta1_is_clipped_ddpm():
    eps, seq, x_T, z = _clip_setup()
    noise_sampler = lambda t, s: z[int(t)]
    ddim = samplers.ddim_sample(eps, x_T, AB, seq, eta=1.0, clip_x0=True, noise_sampler=noise_sampler)
    ddpm = samplers.ddpm_sample(eps, x_T, AB, "small", seq=seq, clip_x0=True, noise_sampler=noise_sampler)
    hand, n_clipped = _by_hand(eps, seq, x_T, z)
    assert n_clipped > 50
    assert torch.allclose(ddim, hand, atol=1e-9) and torch.allclose(ddpm, hand, atol=1e-9)
    mixed, _ = _by_hand(eps, seq, x_T, z, recompute=False)             # mutation: ε not recomputed
    assert float((mixed - hand).abs().max()) > 1e-3


def test_clipped_standard_normal_second_moment():
    exact = 1 - 2 * stats.norm.pdf(1.0)
    by_quadrature = integrate.quad(lambda x: min(x * x, 1.0) * stats.norm.pdf(x), -12, 12, points=[-1, 1])[0]
    assert abs(by_quadrature - exact) < 1e-9
    assert abs(exact - 0.5161) < 1e-4
    inside_only = stats.norm.cdf(1.0) - stats.norm.cdf(-1.0) - 2 * stats.norm.pdf(1.0)    # mutation: the clipped 1s left out
    assert abs(by_quadrature - inside_only) > 0.1


def test_table2_rounding_settles_only_the_later_steepening():
    """Notebook 07 §3: DDIM Table 2 rounds its errors to 1e-4. The change of log-log slope between neighbouring pairs
    of S = 10, 20, 50, 100 is linear in the logs of the entries, so its range over the rounding (±0.00005 on each entry)
    is reached at the corners: from 20–50 to 50–100 it stays negative, from 10–20 to 20–50 it takes both signs."""
    S = np.array([10, 20, 50, 100])
    paper = np.array([tables.PAPER_TABLE2[s] for s in S])
    change = lambda v: np.diff(np.diff(np.log(v)) / np.diff(np.log(S)))
    corners = np.array([change(paper + 5e-5 * np.array(signs)) for signs in itertools.product((-1, 1), repeat=len(S))])
    assert corners[:, 1].max() < 0 < corners[:, 0].max() and corners[:, 0].min() < 0
    assert np.round(corners.min(0), 2).tolist() == [-0.08, -0.37] and np.round(corners.max(0), 2).tolist() == [0.02, -0.08]
    assert (change(paper) < 0).all()              # read without the rounding, both changes would look like steepening


def test_linear_mix_of_latents_is_short_and_slerp_is_not():
    """Notebook 07 §2: for independent z0, z1 ~ N(0, I_d), E‖(1−λ) z0 + λ z1‖²/d = (1−λ)² + λ² and E‖slerp(z0, z1; λ)‖²/d = 1,
    within 5 Monte Carlo standard errors at every λ; the norm written for the squared norm misses."""
    d, n = 64, 4000
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, n, d, generator=g, dtype=torch.float64)
    lam = torch.linspace(0, 1, 11, dtype=torch.float64)
    theory = (1 - lam) ** 2 + lam ** 2

    def misses(sq, expected):                 # |mean − expected| in standard errors, per λ
        return (sq.mean(1) - expected).abs() / (sq.std(1) / n ** 0.5)
    lin = ((1 - lam)[:, None, None] * z0 + lam[:, None, None] * z1).pow(2).sum(-1) / d
    sph = torch.stack([samplers.slerp(z0, z1, float(v)) for v in lam]).pow(2).sum(-1) / d
    assert float(misses(lin, theory).max()) < 5 and float(misses(sph, torch.ones(11, dtype=torch.float64)).max()) < 5
    assert float(misses(lin, theory.sqrt()).max()) > 20            # mutation: ‖·‖/√d's formula for ‖·‖²/d


def test_weight_of_x0_hat_in_a_deterministic_ddim_step():
    """Notebook 07 §6: with x_t fixed, an η = 0 step x_s = √ᾱ_s x̂_0 + √(1−ᾱ_s) ε, ε = (x_t − √ᾱ_t x̂_0)/√(1−ᾱ_t), moves with
    x̂_0 at the rate √ᾱ_s − √(1−ᾱ_s) √(ᾱ_t/(1−ᾱ_t)); measured from `diffusion.ddim_step` with two ε at the same x_t."""
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(4, 8, generator=g, dtype=torch.float64)
    e1, e2 = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    seq = schedule.timesteps(10, 1000, "uniform").tolist()
    for t, s in zip(seq, seq[1:] + [-1]):
        a_t, a_s = float(AB[t]), (float(AB[s]) if s >= 0 else 1.0)
        (xs1, x01), (xs2, x02) = (diffusion.ddim_step(x_t, e, a_t, a_s) for e in (e1, e2))
        rate = (xs1 - xs2) / (x01 - x02)
        weight = math.sqrt(a_s) - math.sqrt(1 - a_s) * math.sqrt(a_t / (1 - a_t))
        assert torch.allclose(rate, torch.full_like(rate, weight), atol=1e-9)
        if t >= 100:                                                 # mutation: √ᾱ_s alone, ε's share of x̂_0 left out
            assert abs(math.sqrt(a_s) - weight) > 1e-2


# ------------------------------------------------------------------------------------ notebook 06, stronger checks
def _cells06(kind):
    import json
    from pathlib import Path
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "06_training_an_image_model.ipynb"
    return [" ".join("".join(c["source"]).split()) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == kind]


def test_ddpm_init_leaves_each_block_its_skip_path_a_1x1_conv_in_13_of_22_residual_blocks():
    """06 §1: with `unet.ddpm_init_` every residual branch and attention output starts at ~0, so each block starts as its
    skip path alone: the identity, except where a residual block changes the channel count (the first block at 16×16 and
    the twelve up-path blocks, whose inputs are concatenations), where it is the 1×1 `nin_shortcut` with Glorot's
    variance, far from the identity. The prose once said every block starts as the identity."""
    torch.manual_seed(0)
    net = unet.ddpm_init_(unet.cifar10_unet())
    temb = torch.randn(2, net.temb.dense[1].out_features)
    resnets = [m for m in net.modules() if isinstance(m, unet.ResnetBlock)]
    shortcut = [m for m in resnets if hasattr(m, "nin_shortcut")]
    assert (len(shortcut), len(resnets)) == (13, 22)
    with torch.no_grad():
        for m in resnets:
            h = torch.randn(2, m.conv1.in_channels, 4, 4)
            skip = m.nin_shortcut(h) if m in shortcut else h
            torch.testing.assert_close(m(h, temb), skip, atol=1e-4, rtol=0)
            if m in shortcut:                                          # mutation: "every block is the identity"
                assert float((m(h, temb)[:, :4] - h[:, :4]).pow(2).mean().sqrt()) > 0.1
        for m in (m for m in net.modules() if isinstance(m, unet.AttnBlock)):
            h = torch.randn(2, m.proj_out.in_channels, 4, 4)
            torch.testing.assert_close(m(h), h, atol=1e-4, rtol=0)
    prose = next(c for c in _cells06("markdown") if c.startswith("## §1 The network"))
    assert "every block starts as the identity" not in prose and "13 of its 22 residual blocks" in prose


def _split_draws(t, n=20_000, seed=2):
    """06 §4's split on an empirical mixture (40 points in 16-D, a stand-in of variance 1e-12): per draw the difference
    d = 2 (ε − ε*)·(ε* − ε_θ)/D, and from Bayes' rule over the points written out here, E[d | x_t] = Σ_k r_k d_k and
    E[d² | x_t] = Σ_k r_k d_k² = (4/D²) u^T Cov(ε | x_t) u, u = ε* − ε_θ; and (4/D²)|u|², the same with Cov(ε | x_t) = I."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(40, 16, generator=g, dtype=torch.float64) * 2 - 1
    mix = toy.SharedBasisMixture(torch.ones(40), points, torch.full((40, 16), 1e-12))
    a = float(AB[t])
    x0 = points[torch.randint(0, 40, (n,), generator=g)]
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise
    e_star = mix.eps(x_t, a)
    u = e_star - (0.7 * e_star + 0.05)                                # an imperfect "network", as above
    D = x_t.shape[1]
    r = torch.softmax(-torch.cdist(x_t, math.sqrt(a) * points).pow(2) / (2 * (1 - a)), 1)
    eps_k = (x_t[:, None, :] - math.sqrt(a) * points[None]) / math.sqrt(1 - a)   # (n, K, D)
    d_k = 2 * ((eps_k - e_star[:, None, :]) * u[:, None, :]).sum(-1) / D
    d = 2 * ((noise - e_star) * u).sum(1) / D
    return d, (r * d_k).sum(1), (r * d_k ** 2).sum(1), 4 * u.pow(2).sum(1) / D ** 2


@pytest.mark.parametrize("t", [300, 600])
def test_split_variance_given_x_t_is_the_samples_and_the_covariance_blind_formula_is_not(t):
    """06 §4 checks E Var[d | x_t] against the sample's mean d² (within 3 SE from t = 500 on) but shows no wrong
    variance failing. Here, where d is not skewed: Σ_k r_k d_k = 0 (ε* = Σ_k r_k ε_k, toy's ε* against Bayes' rule written
    out), the mean of Σ_k r_k d_k² equals the mean d² within 3 paired SE, and (4/D²)|u|², which forgets that ε given x_t
    is far from N(0, I), misses it by more than 10 SE."""
    d, mean_given, var_given, var_blind = _split_draws(t)
    assert float(mean_given.abs().max()) < 1e-9
    d2 = d ** 2
    ratio = lambda v: (float(d2.mean() / v.mean()), float((d2 - v).std() / math.sqrt(len(d)) / v.mean()))   # noqa: E731
    right, blind = ratio(var_given), ratio(var_blind)
    assert abs(right[0] - 1) < 3 * right[1], right
    assert abs(blind[0] - 1) > 10 * blind[1], blind


def test_the_ema_warm_up_leaves_the_random_initial_weights_nothing_and_no_warm_up_leaves_them_30_percent():
    """06 §3: short runs ramp the EMA decay up as min(d, (1 + k)/(10 + k)), "or the average would still remember the
    random initialisation": for the digits preset (d = 0.999, 1200 steps) the initial weights keep < 1e-20 of the average
    with the ramp and 0.999^1200 = 0.30 without; `train.ema_update` on weights that are 1 at the start and 0 after
    agrees with `train.ema_initial_share` both ways (which reports a share below 1e-12 as 0)."""
    config = train.make_config("digits")
    for warm, want in ((True, None), (False, 0.999 ** 1200)):
        c = train.make_config("digits", dict(ema_warmup=warm))
        ema, model = (torch.nn.Linear(1, 1, bias=False, dtype=torch.float64) for _ in range(2))
        with torch.no_grad():
            ema.weight.fill_(1.0)
            model.weight.fill_(0.0)
            for k in range(c.steps):
                train.ema_update(ema, model, decay=train.ema_decay_at(c, k))
        share, library = float(ema.weight.detach()), train.ema_initial_share(c, c.steps)
        if want is None:                                   # the library rounds a share below 1e-12 to 0
            assert share < 1e-20 and library < 1e-12
        else:
            assert share == pytest.approx(want, rel=1e-9) == library and round(share, 2) == 0.30
    assert config.ema_warmup and config.steps == 1200 and config.ema_decay == 0.999
    prose = next(c for c in _cells06("markdown") if c.startswith("## §4 The shared digits model"))
    assert "0.999^{1200} = 0.30" in prose


def test_step_embedding_in_float32_is_off_by_less_than_a_few_1e_4():
    """06 §1 sets the embedding check's tolerance at 1e-3, "above float32's rounding": no entry of e(t), t < 1000, and
    no entry of its Gram matrix is off by more than a few 1e-4 from sin/cos(t ω_i) in float64. The same features in
    bfloat16 are not."""
    t = torch.arange(1000.0)
    h = 64
    omega = 10000.0 ** (-torch.arange(h, dtype=torch.float64) / (h - 1))
    exact = torch.cat([torch.sin(t.double()[:, None] * omega), torch.cos(t.double()[:, None] * omega)], 1)
    emb = unet.timestep_embedding(t, 2 * h).double()
    lag = (t[:, None] - t[None, :]).double()
    assert float((emb - exact).abs().max()) < 3e-4
    assert float((emb @ emb.T - torch.cos(lag[..., None] * omega).sum(-1)).abs().max()) < 5e-4
    assert float((unet.timestep_embedding(t, 2 * h, dtype=torch.bfloat16).double() - exact).abs().max()) > 1e-3


def test_the_digits_fd_floor_of_real_digits_rises_as_n_falls():
    """06 §5: "the floor rises as n falls": `quality.real_fd_floor` over 12 draws of n real digits each, at n = 200
    and n = 1000; the mean at 200 is above the mean at 1000 by more than 3 combined SE (each from the spread of its 12)."""
    floors = {n: np.array([quality.real_fd_floor(n, 16, seed=s) for s in range(12)]) for n in (200, 1000)}
    mean = {n: v.mean() for n, v in floors.items()}
    se = {n: v.std(ddof=1) / math.sqrt(len(v)) for n, v in floors.items()}
    assert mean[200] - mean[1000] > 3 * math.hypot(se[200], se[1000]), (mean, se)
