"""The library used as a careless user would (helper 63): each call below returned a silently wrong answer (finite but
wrong, or NaN) or failed deep inside torch or numpy without naming the argument. Each must now be a ValueError or
TypeError that says what was wrong."""
import copy
import dataclasses
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ddimlab import checkpoint, data, diffusion, elbo, fid, gaussian, generate, ode, plotting, quality, samplers, schedule, toy

AB = schedule.make_alpha_bar("linear", 1000)


@pytest.fixture(scope="module")
def toy_setup():
    mix = toy.random_mixture(d=2, K=3, seed=0)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return mix, toy.exact_eps(mix, AB), x_T, schedule.timesteps(10, 1000, "uniform")


def test_images_scaled_0_to_255_or_nan_are_refused_not_clamped():
    """Float images in 0..255 clamped to white gave FID 0.004 for two different sets; NaN images a finite FID (2.83),
    drawn black in grids."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(40, 3, 8, 8, generator=g) * 255, torch.rand(40, 3, 8, 8, generator=g) * 255
    fn = fid.random_features()
    assert fid.compute_fid(a / 127.5 - 1, b / 127.5 - 1, fn) > 0.1              # the same images, scaled right
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\], got values in [-0-9.e]+\.\.25"):
        fid.compute_fid(a, b, fn)
    with pytest.raises(ValueError, match="NaN or inf"):
        fid.compute_fid(torch.full((40, 3, 8, 8), float("nan")), b / 127.5 - 1, fn)
    with pytest.raises(ValueError, match="NaN or inf"):
        plotting.image_grid(torch.full((2, 1, 4, 4), float("nan")))
    assert data.from_model_range(torch.tensor([-1.2, 0.0, 1.3])).tolist() == [0, 128, 255]   # overshoot: clamped
    bright = torch.full((1, 1, 2, 2), 0.5)
    bright[0, 0, 0, 0] = 2.5                           # a sampler's sample, overshooting: saved, not refused
    assert plotting.image_grid(bright).max() == 255


def test_l_simple_refuses_a_prediction_of_another_shape_and_integer_data():
    x0 = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for wrong in (lambda x, t: torch.zeros_like(x[:, :1]), lambda x, t: torch.tensor(0.0)):   # broadcast: 0.99, 0.92
        with pytest.raises(ValueError, match="must return a tensor of x's shape"):
            elbo.l_simple(wrong, x0, AB)
    with pytest.raises(TypeError, match="x0 must be floating point"):
        elbo.l_simple(lambda x, t: x, torch.ones(4, 3, dtype=torch.long), AB)
    with pytest.raises(ValueError, match="B >= 1"):
        elbo.l_simple(lambda x, t: x, x0[:0], AB)


def test_noise_is_checked_and_the_generator_is_one(toy_setup):
    """NaN noise on the last step (σ = 0, but 0·NaN = NaN) returned all-NaN samples; on an earlier step it was blamed
    on the model. An int as the generator was torch's argument dump."""
    _, eps, x_T, seq = toy_setup

    def nan_last(t, s):
        return torch.full(x_T.shape, float("nan"), dtype=torch.float64) if s == -1 else torch.randn(x_T.shape,
                                                                                                    dtype=torch.float64)
    with pytest.raises(ValueError, match=r"noise_sampler\(t, s\) returned NaN or inf at step 0 -> -1"):
        samplers.ddim_sample(eps, x_T, AB, seq, eta=1.0, noise_sampler=nan_last)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        samplers.ddim_sample(eps, x_T, AB, seq, eta=1.0, generator=0)


def test_integer_tensors_are_refused_by_the_forward_process_and_the_mixtures(toy_setup):
    """√0.5 cast to uint8 is 0: q_sample, posterior_mean and v_from returned zeros; a mixture's ε* was truncated."""
    mix = toy_setup[0]
    u8 = torch.full((1, 3), 200, dtype=torch.uint8)
    for call in (lambda: diffusion.q_sample(u8, 0.5, torch.ones(1, 3, dtype=torch.uint8)),
                 lambda: diffusion.posterior_mean(torch.full((2, 3), 3), torch.full((2, 3), 3), 0.5, 0.9),
                 lambda: diffusion.v_from(torch.full((2, 3), 3), torch.full((2, 3), 1), 0.5)):
        with pytest.raises(TypeError, match="must be floating point"):
            call()
    with pytest.raises(TypeError, match="x must be floating point"):
        mix.eps(torch.ones(2, 2, dtype=torch.long), 0.5)


def test_out_of_range_sigma_and_alpha_bar_are_refused():
    z = torch.zeros(2, 2)
    for call, match in ((lambda: ode.t_of_sigma(AB, -1.0), "sigma must lie in"),            # was t(1.0) = 258
                        (lambda: ode.t_of_sigma(AB, float("nan")), "sigma must lie in"),
                        (lambda: diffusion.q_sigma_mean(z, z + 1, 0.5, 0.9, float("nan")), "sigma must be a number"),
                        (lambda: diffusion.q_sigma_forward(z, z + 1, 0.9, 0.5, 0.1), "a_s must be >= a_t"),
                        (lambda: diffusion.score_from_eps(torch.ones(2), -1.0), "a_t must lie in"),
                        (lambda: diffusion.eps_from_score(torch.ones(2), 2.0), "a_t must lie in"),
                        (lambda: schedule.alpha_bar(torch.tensor([0.5, 1.5, 0.5])), r"every beta must lie in \(0, 1\)"),
                        (lambda: schedule.alpha_bar(schedule.beta_schedule("linear", 10, 1e-4, 1.5)), "beta_end"),
                        (lambda: toy.random_mixture(d=2, K=3, seed=0).eps(torch.zeros(2, 2), float("nan")),
                         r"alpha_bar must lie in \[0, 1\], got nan")):
        with pytest.raises(ValueError, match=match):
            call()


def test_step_rules_check_the_table_and_their_exponent():
    """A NaN or zero-terminal ᾱ gave steps [4, 3, 2, 1, 0]; rho = inf gave [262, ..., 258], not the λ-uniform steps."""
    zero_end = torch.cat([AB[:-1], torch.zeros(1, dtype=torch.float64)])
    nan_start = torch.cat([torch.tensor([float("nan")], dtype=torch.float64), AB[1:]])
    for table in (zero_end, nan_start, AB.flip(0)):
        with pytest.raises(ValueError, match="alpha_bar"):
            ode.rule_timesteps("logsnr", 5, table)
    for call in (lambda: ode.karras_timesteps(5, AB, rho=float("inf")),
                 lambda: ode.power_timesteps(5, 1000, kappa=float("inf"))):
        with pytest.raises(ValueError, match="finite number >= 1"):
            call()
    for S in (0, -5, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            ode.nfe("heun", S)                                                 # was -1, -11, 4.0
    assert ode.nfe("heun", np.int64(3)) == 5


def test_degenerate_mixtures_and_covariances_are_refused():
    """A mixture of K = 0 components (ε* ≡ 0) sampled without a word; a NaN mean was accepted; a non-symmetric or
    negative-definite covariance gave KL 0 and Fréchet distance 0, "identical distributions"."""
    with pytest.raises(ValueError, match="K, d >= 1"):
        toy.GaussianMixture(torch.zeros(0), torch.zeros(0, 2), torch.zeros(0, 2, 2))
    with pytest.raises(ValueError, match="means must be finite"):
        toy.GaussianMixture([1.0], [[float("nan"), 0.0]], torch.eye(2, dtype=torch.float64)[None])
    skew = torch.tensor([[1.0, 5.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        gaussian.kl_mvn(torch.zeros(2), skew, torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="positive definite"):
        gaussian.kl_mvn(torch.zeros(2), torch.eye(2), torch.zeros(2), -torch.eye(2))
    with pytest.raises(ValueError, match="cov must be finite"):
        gaussian.log_mvn(torch.zeros(2), torch.zeros(2), torch.full((2, 2), float("nan")))
    # float32 A Λ Aᵀ is symmetric only to its rounding: still a covariance
    A = torch.randn(6, 6, generator=torch.Generator().manual_seed(2))
    cov32 = A @ torch.diag(torch.rand(6, generator=torch.Generator().manual_seed(3)) + 0.5) @ A.T + torch.eye(6)
    assert torch.isfinite(gaussian.log_mvn(torch.zeros(6), torch.zeros(6), cov32))
    for bad in (-np.eye(2), skew.numpy().astype(np.float64)):
        with pytest.raises(ValueError, match="must be (symmetric|a covariance)"):
            quality.frechet_distance(np.zeros(2), bad, np.zeros(2), np.eye(2))
    # what a covariance of fewer samples than dimensions is (singular, round-off negatives) still scores
    x = np.random.default_rng(0).standard_normal((5, 20))
    cov = np.cov(x, rowvar=False)
    assert quality.frechet_distance(x.mean(0), cov, x.mean(0), cov) < 1e-8


def test_seeds_grids_and_interpolation_weights_are_checked():
    """seed = 0.9 gave seed 0's images; nrow = 0 and scale = 0 or -3 were taken as the defaults; a NaN λ gave NaN."""
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        generate.latents(0.9, [0], (1, 2, 2))
    with pytest.raises(ValueError, match="index must be a non-negative integer"):
        generate.latents(0, [1.7], (1, 2, 2))
    assert torch.equal(generate.latents(np.int64(3), torch.arange(2), (1, 2, 2)), generate.latents(3, [0, 1], (1, 2, 2)))
    x = torch.zeros(4, 1, 2, 2)
    with pytest.raises(ValueError, match="nrow must be a positive integer"):
        plotting.image_grid(x, nrow=0)
    for scale in (0, -3):
        with pytest.raises(ValueError, match="scale must be a positive integer"):
            plotting.grid_png(x, scale=scale)
    assert plotting.grid_png(x, nrow=np.int64(2), scale=np.int64(2)) == plotting.grid_png(x, nrow=2, scale=2)
    z0, z1 = torch.randn(2, 1, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="lam must be finite"):
        samplers.slerp(z0, z1, float("nan"))


def test_complex_numbers_are_refused_where_a_cast_would_drop_their_imaginary_part():
    """frechet_distance of a complex mean gave 0.0 with numpy's ComplexWarning; log_normal of complex x returned a
    complex "log density"; kl_mvn of a complex covariance was a dtype clash inside torch.linalg."""
    with pytest.raises(TypeError, match="frechet_distance: mu1 must hold real numbers .*complex128"):
        quality.frechet_distance(np.zeros(2) + 1j, np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(TypeError, match="real numbers, got torch.complex64"):
        gaussian.log_normal(torch.zeros(3, dtype=torch.complex64), 0.0, 1.0)
    with pytest.raises(TypeError, match="real numbers, got torch.complex128"):
        gaussian.kl_mvn(torch.zeros(2), np.eye(2) + 0j, torch.zeros(2), torch.eye(2))
    assert float(gaussian.log_normal(torch.zeros(1), [0.0], [1.0])) == pytest.approx(-0.5 * math.log(2 * math.pi))


# ---------------------------------------------------------------------------------- a second round (helper 66)

def test_a_network_left_in_train_mode_samples_without_dropout_and_keeps_its_mode(tmp_path):
    """sample_indices (and score_grid, reconstruction_errors) ran a model in train mode with dropout on: two identical
    calls differed, breaking "each image is a function of (seed, index)"; generate_samples set the caller's model
    to eval mode and left it there."""
    from ddimlab import unet
    torch.manual_seed(0)
    net = unet.UNet(in_ch=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=8, num_groups=4,
                    dropout=0.5)                   # conftest's tiny_unet has no dropout, and is shared
    seq = schedule.timesteps(5, 1000, "trailing")
    net.train()
    a, b = (generate.sample_indices(net, [0, 1], (1, 8, 8), AB, seq, check_range=False) for _ in range(2))
    assert torch.equal(a, b) and net.training
    net.eval()
    assert torch.equal(a, generate.sample_indices(net, [0, 1], (1, 8, 8), AB, seq, check_range=False))
    net.train()
    net.conv_in.eval()                                          # a submodule frozen on purpose stays so
    generate.generate_samples(net, tmp_path / "s", 2, shape=(1, 8, 8), S=3)
    assert net.training and not net.conv_in.training
    with pytest.raises(TypeError, match="x is torch.float64 but the network's weights are torch.float32"):
        checkpoint.eps_fn(net)(torch.zeros(2, 1, 8, 8, dtype=torch.float64), 5)        # was torch's "bias type"


def test_generate_samples_checks_everything_before_it_claims_a_folder_and_records_the_schedule(tmp_path, tiny_unet):
    """A negative seed was refused only after settings.json was written, so the folder was then "made with other
    settings"; images of another ᾱ table with the same T were added to the folder without a word."""
    net, out = tiny_unet, tmp_path / "s"
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        generate.generate_samples(net, out, 2, shape=(1, 8, 8), S=3, seed=-1)
    assert not (out / "settings.json").exists()
    generate.generate_samples(net, out, 2, shape=(1, 8, 8), S=3)
    with pytest.raises(ValueError, match="another alpha_bar table"):
        generate.generate_samples(net, out, 4, shape=(1, 8, 8), S=3, alpha_bar=schedule.make_alpha_bar("cosine", 1000))
    assert generate.generate_samples(net, out, 3, shape=(1, 8, 8), S=3, eta=0) == [2]     # 0 is 0.0
    settings = json.loads((out / "settings.json").read_text())
    (out / "settings.json").write_text(json.dumps({**settings, "eta": "0"}))                # as older folders say η = 0
    assert generate.generate_samples(net, out, 4, shape=(1, 8, 8), S=3) == [3]


def test_options_that_would_be_ignored_and_lists_that_repeat_are_refused(tiny_unet, tmp_path):
    """sample_indices with an ODE solver dropped eta and clip_x0; lab.table1 and tables.score_grid ran a repeated S
    or η twice (and took True or "0.5" as η), score_grid with n = 0 failed in torch.cat; reproduce_table2 with
    n_images = -1 dropped the last image."""
    from ddimlab import lab, tables
    net, seq = tiny_unet, schedule.timesteps(5, 1000)
    with pytest.raises(ValueError, match="eta and clip_x0 apply to DDIM and DDPM"):
        generate.sample_indices(net, [0], (1, 8, 8), AB, seq, eta=1.0, solver="euler")
    with pytest.raises(ValueError, match="indices is empty"):
        generate.sample_indices(net, [], (1, 8, 8), AB, seq)
    assert lab._check_args((10,), torch.linspace(0, 1, 3), "uniform", 8, 0, 1000)[1] == (0.0, 0.5, 1.0)   # 0-d tensors
    for kw, match in ((dict(S_list=(10, 10)), "S = 10 is listed twice"), (dict(etas=(0.0, -0.0)), "eta = 0.0 is listed"),
                      (dict(etas=(True,)), "eta must be a finite number"), (dict(etas=("0.5",)), "eta must be")):
        with pytest.raises(ValueError, match=match):
            lab.table1(**kw, n=8)
    never = lambda x: pytest.fail("sampled before refusing")     # noqa: E731
    for kw, match in ((dict(n=0), "n must be a positive integer"), (dict(S_list=(5, 5)), "listed twice"),
                      (dict(eta_list=(0.0, 0)), "listed twice")):
        with pytest.raises(ValueError, match=match):
            tables.score_grid(net, never, **{"S_list": (5,), "eta_list": (0.0,), **kw})
    with pytest.raises(ValueError, match="n_images must be a positive integer"):
        tables.reproduce_table2(net, tmp_path / "t2", images=torch.zeros(3, 1, 8, 8, dtype=torch.uint8), n_images=-1)
    assert list(tmp_path.iterdir()) == []


def test_a_beta_table_for_alpha_bar_and_a_wrong_shaped_guided_eps_are_refused(toy_setup):
    """A β table (increasing) passed as ᾱ gave t_of_sigma(β, 1) = −0.92 and a finite, wrong exact ε*; guided_eps with
    a conditional ε of one row broadcast it over the batch (|x| reached 78347)."""
    mix, eps, x_T, seq = toy_setup
    betas = schedule.beta_schedule()
    for call in (lambda: ode.t_of_sigma(betas, 1.0), lambda: ode.alpha_bar_cont(betas, 5.5),
                 lambda: toy.exact_eps(mix, betas)):
        with pytest.raises(ValueError, match="strictly decreasing"):
            call()
    guided = samplers.guided_eps(eps, lambda x, t: eps(x, t)[:1], 2.0)
    with pytest.raises(ValueError, match="eps_cond must return a tensor of x's shape"):
        samplers.ddim_sample(guided, x_T, AB, seq)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        samplers.sdedit(eps, x_T, AB, seq, generator=0)


def test_scores_refuse_a_percentage_threshold_unpaired_shapes_and_images_in_0_to_1():
    """threshold=90 scored real digits as confident share 0 and 0 classes; mean_difference of (n, 1) and (n,)
    broadcast to an (n, n) difference; error_ratio of unequal lengths was an IndexError; n_boot = 1 gave a NaN
    standard error; float images in [0, 1] were scored as if in [−1, 1] (confident share 0)."""
    from ddimlab import lab
    real = data.to_model_range(data.load_digits()[0][:50])
    for call in (lambda: quality.score_digits(real, threshold=90), lambda: quality.class_counts(real, float("nan"))):
        with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\)"):
            call()
    a = torch.arange(6.0)
    with pytest.raises(ValueError, match="1-D tensors"):
        quality.mean_difference(a[:, None], a, paired=False)
    with pytest.raises(ValueError, match="one length"):
        lab.error_ratio(a, a[:5])
    with pytest.raises(ValueError, match="n_boot must be an integer >= 2"):
        quality.digits_fd_se(real, n_boot=1)
    with pytest.warns(UserWarning, match=r"if they are images in \[0, 1\], pass x \* 2 - 1"):
        quality.score_digits((real + 1) / 2)


def test_a_check_cannot_pass_vacuously():
    """nb.check([False]) and nb.check("False") printed "check: …" (a non-empty list or string is true), and so did a
    check of an empty tensor; check_close of an empty tensor passed."""
    from ddimlab import nb
    for ok in ([False], "False", None):
        with pytest.raises(TypeError, match="check takes a bool"):
            nb.check(ok, "x")
    for ok in (torch.tensor([]) > 0, np.array([], bool)):
        with pytest.raises(ValueError, match="empty"):
            nb.check(ok, "x")
    with pytest.raises(ValueError, match="non-empty"):
        nb.check_close(torch.tensor([]), 1.0, "x")
    with pytest.raises(ValueError, match="broadcastable"):
        nb.check_close(torch.zeros(3, 1), torch.zeros(3), "x")
    nb.check(np.array([True, True]), "x")
    nb.check(np.float64(1.0) > 0, "x")
    nb.check_close(torch.zeros(3), 0.0, "x")


def test_half_precision_solvers_keep_fractional_steps_and_name_an_overflow():
    """In bfloat16 the fractional step DPM-Solver-2 passes to ε was rounded (944.19 to 944); in float16 on the cosine
    schedule x_T/√ᾱ_999 (about 2e4 x_T) overflowed and the NaN was blamed on the model."""
    seen = []
    samplers.call_eps(lambda x, t: seen.append(t) or torch.zeros_like(x), torch.zeros(2, 3, dtype=torch.bfloat16), 944.19)
    assert seen[0].dtype == torch.float32 and float(seen[0][0]) == pytest.approx(944.19, abs=1e-4)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)).half()
    with pytest.raises(ValueError, match="overflows float16 at t = 999"):
        ode.solve("dpm_solver_pp_2m", lambda x, t: torch.zeros_like(x), x, schedule.make_alpha_bar("cosine", 1000),
                  schedule.timesteps(10, 1000, "trailing"))


def test_step_rules_name_a_fractional_endpoint_or_length():
    """lambda_timesteps(t_max=500.7) and power_timesteps(5, 1000.0) said only "timesteps must be integers"; karras with
    ρ as a tensor gave a bogus "sigma must lie in …" (a 0-d tensor is now taken as the number it holds)."""
    for call, match in ((lambda: ode.lambda_timesteps(5, AB, t_max=500.7), "t_max must be an integer in 0..999"),
                        (lambda: ode.karras_timesteps(5, AB, t_min=0.5), "t_min must be an integer in 0..999"),
                        (lambda: ode.power_timesteps(5, 1000.0), "T must be a positive integer"),
                        (lambda: ode.karras_timesteps(5, AB, rho="7"), "rho must be a finite number")):
        with pytest.raises(ValueError, match=match):
            call()
    assert ode.lambda_timesteps(5, AB, t_max=np.int64(500))[0] == 500
    assert torch.equal(ode.karras_timesteps(5, AB, rho=torch.tensor(7.0)), ode.karras_timesteps(5, AB, rho=7))


def test_ipndm_says_when_its_analytical_first_step_does_not_hold(toy_setup):
    """With afs (ε(x_T) ≈ x_T, exact for pure noise only) a grid starting at t = 300 was about 14 times less accurate
    than without, silently; on one step the network was never called, so the output did not depend on it."""
    mix, eps, x_T, _ = toy_setup
    ref = ode.reference_solution(eps, x_T, AB, 300)
    grid = torch.tensor([300, 200, 100, 30, 0])
    with pytest.warns(samplers.OutOfRangeWarning, match=r"t = 300 \(alpha_bar = 0.39\), where ipndm's analytical"):
        with_afs = ode.ipndm(eps, x_T, AB, grid)
    assert float((with_afs - ref).norm()) > 3 * float((ode.ipndm(eps, x_T, AB, grid, afs=False) - ref).norm())
    with pytest.raises(ValueError, match="needs 2 steps or more"):
        ode.ipndm(eps, x_T, AB, torch.tensor([999]))


def test_generate_samples_records_the_weights_behind_eps_fn_and_a_named_callable(tmp_path, tiny_unet):
    """A folder made with checkpoint.eps_fn(net), or any callable, recorded no weights: resumed with another network's
    eps it mixed two models' images without a word. eps_fn's network is now hashed, and model_id names the rest."""
    other = copy.deepcopy(tiny_unet)
    with torch.no_grad():
        other.conv_in.weight.add_(0.1)
    out, kw = tmp_path / "s", dict(shape=(1, 8, 8), S=3)
    generate.generate_samples(checkpoint.eps_fn(tiny_unet), out, 2, **kw)
    assert generate.generate_samples(tiny_unet, out, 3, **kw) == [2]          # the same weights, adapted or not
    with pytest.raises(ValueError, match="other settings|model"):
        generate.generate_samples(checkpoint.eps_fn(other), out, 4, **kw)
    eps = checkpoint.eps_fn(tiny_unet)
    plain = lambda x, t: eps(x, t)  # noqa: E731
    with pytest.warns(UserWarning, match="pass model_id= to name them"):
        generate.generate_samples(plain, tmp_path / "p", 1, **kw)
    generate.generate_samples(plain, tmp_path / "q", 1, model_id="run-a step 1000", **kw)
    with pytest.raises(ValueError, match="other settings|model"):
        generate.generate_samples(plain, tmp_path / "q", 2, model_id="run-b step 1000", **kw)
    for bad, net in (("", plain), (7, plain), ("a", tiny_unet)):
        with pytest.raises((ValueError, TypeError), match="model_id"):
            generate.generate_samples(net, tmp_path / "r", 1, model_id=bad, **kw)
    assert not (tmp_path / "r").exists()
    # eps_fn's amp is recorded as amp (a folder of bf16 images is not continued in float32), and a Module that merely has
    # a `.network` attribute is hashed whole
    settings = lambda d: json.loads((d / "settings.json").read_text())  # noqa: E731
    generate.generate_samples(checkpoint.eps_fn(tiny_unet, amp=True), tmp_path / "amp", 1, **kw)
    assert settings(tmp_path / "amp")["amp"] is True

    class Wrapper(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.network, self.scale = tiny_unet, torch.nn.Parameter(torch.tensor(scale))

        def forward(self, x, t):
            return self.scale * self.network(x, t)

    assert generate.weights_sha256(Wrapper(1.0)) != generate.weights_sha256(Wrapper(2.0))
    # a folder that recorded no weights (a plain callable) is not continued by a network, and says why
    with pytest.raises(ValueError, match="records no weights"):
        generate.generate_samples(tiny_unet, tmp_path / "p", 2, **kw)


def test_twelfth_round_half_precision_and_extreme_values():
    """Helper 85's round: bfloat16 training inputs trained on noise-free x_t at small t (ᾱ_0 = 0.9999 rounded to 1);
    slerp in float16 missed opposite latents and bent near-opposite ones (π rounded), and gave NaN for latents near 1e200;
    float16 DDIM and DDPM on the cosine schedule returned inf without a word; toy mixtures read lists as float32."""
    x0 = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise, seen = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)), {}
    elbo.l_simple(lambda x, t: seen.setdefault("x", x) * 0, x0.bfloat16(), AB, t=torch.tensor([0, 1, 10]),
                  noise=noise.bfloat16())
    added = (seen["x"].float() - x0.bfloat16().float() * AB[[0, 1, 10]].sqrt().view(3, 1, 1, 1).float())
    expected = noise * (1 - AB[[0, 1, 10]]).sqrt().view(3, 1, 1, 1).float()
    cos = torch.nn.functional.cosine_similarity(added.flatten(1), expected.flatten(1))   # bf16 rounds x_t by up to 0.004
    assert bool((cos > 0.9).all()), cos
    z = torch.randn(1, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(ValueError, match="opposite directions"):
            samplers.slerp(z.to(dtype), -z.to(dtype), 0.25)
    w = -z + 1e-2 * torch.randn(1, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = samplers.slerp(z.half().double(), w.half().double(), 0.5)       # the same (rounded) latents, in float64
    assert (samplers.slerp(z.half(), w.half(), 0.5).double() - exact).abs().max() < 0.01 * exact.abs().max()
    for big in (1e200, 1e-200):
        assert torch.allclose(samplers.slerp(big * z, big * w, 0.3) / big, samplers.slerp(z, w, 0.3), rtol=1e-12)
    with pytest.raises(ValueError, match="lam must be a number"):
        samplers.slerp(z, w, "0.5")
    cos = schedule.make_alpha_bar("cosine", 1000)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)).half()
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    for run in (lambda: samplers.ddim_sample(zero, x, cos, schedule.timesteps(10, 1000, "trailing")),
                lambda: samplers.ddpm_sample(zero, x, cos, seq=schedule.timesteps(10, 1000, "trailing"))):
        with pytest.raises(samplers.NonFiniteError, match=r"step 999 -> .* in torch.float16 from a finite eps; run in float32"):
            run()
    with pytest.raises(ValueError, match=r"overflows float16") as e:
        ode.euler(zero, x, cos, schedule.timesteps(10, 1000, "trailing"))
    assert "ddim_sample" not in str(e.value)                  # it pointed at a sampler that overflows as well
    m = toy.GaussianMixture([1.0], [[0.1]], [[[0.01]]])
    assert m.means.item() == 0.1 and m.covs.item() == 0.01
    assert toy.GaussianMixture([1e300, 1e300], [[0.0], [1.0]], [[[1.0]], [[1.0]]]).weights.tolist() == [0.5, 0.5]


def test_twelfth_round_arguments_named_and_one_rule_for_callbacks(toy_setup):
    """Helper 85's round: uint8 steps were refused with "must lie in -1..999, got [5]"; a reversed numpy grid, eps of
    the wrong shape in reference_solution, generator=0 in sample and batch_size=0 failed deep in numpy or torch; mmd gave
    0 or NaN for an infinite bandwidth, a zero scale or one point; a one-step table was told "t_max in 1..0"; and a
    callback that edited info["x"] changed DDIM and DDPM but not the ODE solvers."""
    mix, eps, x_T, seq = toy_setup
    for dtype in (torch.uint8, torch.int8, torch.int16):
        assert schedule.alpha_bar_at(AB, torch.tensor([5], dtype=dtype)).item() == AB[5].item()
        assert torch.equal(eps(x_T, torch.full((16,), 5, dtype=dtype)), eps(x_T, 5))
    assert schedule.alpha_bar_at(AB, torch.tensor(-1, dtype=torch.int8)).item() == 1.0
    grid = np.arange(0, 1000, 100)[::-1]                                # negative strides
    assert torch.equal(samplers.ddim_sample(eps, x_T, AB, grid), samplers.ddim_sample(eps, x_T, AB, grid.copy()))
    with pytest.raises(ValueError, match=r"eps\(x, t\) must return a tensor of x's shape"):
        ode.reference_solution(lambda x, t: eps(x, t)[:, :1], x_T, AB, 999)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        samplers.sample(eps, (3, 2), AB, S=2, generator=0)
    imgs = torch.rand(8, 3, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match="batch_size must be"):
        fid.compute_fid(imgs, imgs, fid.random_features(), batch_size=0)
    s = mix.sample(50, torch.Generator().manual_seed(0))
    for kw, match in ((dict(kernel=float("inf")), "finite bandwidth"), (dict(scale=torch.zeros(2)), "scale must be"),
                      (dict(scale=torch.ones(5)), "scale must be")):
        with pytest.raises(ValueError, match=match):
            toy.mmd(s, mix, torch.Generator().manual_seed(1), **kw)
    assert math.isfinite(toy.mmd(s + 5, mix, torch.Generator().manual_seed(1), kernel=1e300).mmd2)
    with pytest.raises(ValueError, match="at least 2 points"):
        toy.mmd2_unbiased(s[:1], s, 1.0)
    with pytest.raises(ValueError, match="n must be"):
        toy.kl_to_normal(mix, 0.5, n=1)
    one = torch.tensor([0.5], dtype=torch.float64)
    assert ode.lambda_timesteps(1, one).tolist() == [0]
    with pytest.raises(ValueError, match=r"S must be an integer in 1\.\.1 \(the distinct steps from t_max = 0 to t_min = 0\)"):
        ode.rule_timesteps("logsnr", 2, one)
    with pytest.raises(ValueError, match="n must be"):
        data.batch_indices(0, 2, 0)
    for bad in (True, 1.0, 2):
        with pytest.raises(ValueError, match="channels must be"):
            data.load_digits(8, channels=bad)
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        checkpoint.load_model(123)

    def vandal(info):
        info["x"].zero_(), info["x0"].fill_(float("nan"))

    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    for run in (lambda **kw: samplers.ddim_sample(eps, x_T, AB, seq, eta=0.5, generator=g(), **kw),
                lambda **kw: samplers.ddpm_sample(eps, x_T, AB, seq=seq, generator=g(), **kw),
                lambda **kw: samplers.ddim_invert(eps, x_T, AB, seq, **kw),
                lambda **kw: ode.euler(eps, x_T, AB, seq, **kw),
                lambda **kw: ode.dpm_solver_pp_2m(eps, x_T, AB, seq, **kw)):
        assert torch.equal(run(callback=vandal), run())


def _tiny_net(in_ch=1):
    from ddimlab import unet
    torch.manual_seed(0)
    return unet.UNet(in_ch=in_ch, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=8, num_groups=4)


def test_thirteenth_round_images_checks_and_claimed_folders(tmp_path):
    """Helper 88: 0..255 images with a sampler's overshoot (min below 0) passed the range guard and were scored as
    white; nb.check passed a float array of errors; generate_samples claimed its folder before checking ᾱ, the channels
    or clip_x0, so the corrected retry was refused; fid.load_images took n = -1, True or 2.5; UNet truncated
    ch_mult 1.5 to 1 and built ch = 3, which failed at its first call."""
    from ddimlab import nb, unet
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(40, 3, 8, 8, generator=g) * 2.1 - 1.05) * 127.5 + 127.5         # -6..261
    b = (torch.rand(40, 3, 8, 8, generator=g) * 0.5 - 1.05) * 127.5 + 127.5
    fn = fid.random_features()
    assert fid.compute_fid(a / 127.5 - 1, b / 127.5 - 1, fn) > 1               # scaled right: the sets differ
    with pytest.raises(ValueError, match="look like 0..255"):
        fid.compute_fid(a, b, fn)
    digits = data.load_digits(16)[0][:60].float()
    with pytest.raises(ValueError, match="look like 0..255"):
        quality.score_digits(digits + torch.randn(digits.shape, generator=g))
    with pytest.warns(UserWarning, match="look like 0..255"):
        plotting.image_grid(torch.rand(4, 1, 4, 4, generator=g) * 255)
    overshoot = torch.rand(4, 1, 4, 4, generator=g) * 2.8 - 1.4                 # [-1, 1] overshooting both ways
    data.check_model_range(overshoot)
    with pytest.raises(TypeError, match="boolean"):
        nb.check((torch.tensor([1.0, 2.0]) - torch.tensor([1.3, 2.5])).abs(), "x equals y")
    with pytest.raises(TypeError, match="boolean"):
        nb.check(np.array([0.1, 3.0]), "x")

    net = _tiny_net()
    out = tmp_path / "samples"
    for bad, match in ((dict(alpha_bar=schedule.beta_schedule()), "strictly decreasing"),
                       (dict(shape=(3, 8, 8)), "network takes 1"), (dict(shape=(1, 8.5, 8)), "shape's H"),
                       (dict(clip_x0="yes"), "clip_x0")):
        with pytest.raises((ValueError, TypeError), match=match):
            generate.generate_samples(net, out, 1, **{"shape": (1, 8, 8), "S": 2, **bad})
        assert not (out / "settings.json").exists()
    assert generate.generate_samples(net, out, 1, shape=(1, 8, 8), S=2) == [0]      # the retry is not refused
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", samplers.OutOfRangeWarning)
        generate.generate_samples(net, tmp_path / "one_step", 1, shape=(1, 8, 8), S=1)
    assert any("the only step is t = 0" in str(w.message) for w in caught)   # the PNG is x_T itself
    for n in (-1, True, 0, 2.5):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            fid.load_images(out, n)
    with pytest.raises(ValueError, match="fewer than the n = 5"):
        fid.load_images(out, 5)

    kw = dict(in_ch=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=8, num_groups=4)
    for bad, match in ((dict(ch_mult=(1, 1.5)), "ch_mult"), (dict(attn_resolutions=(8.9,)), "attn_resolutions"),
                       (dict(ch=3, num_groups=1), "ch must be an integer >= 4")):
        with pytest.raises(ValueError, match=match):
            unet.UNet(**{**kw, **bad})


def test_thirteenth_round_densities_bounds_and_statistics():
    """Helper 88: the linear-Gaussian identities took a negative, asymmetric or NaN covariance and returned a
    'covariance'; float16 densities rounded a variance of 1e-8 to 0 and the ELBO had no float16 log_ndtr; the ELBO of a
    NaN network was NaN without a word; numpy variances, bool scores, one bootstrap draw and signed errors failed deep in
    numpy or torch or returned NaN."""
    I2 = torch.eye(2, dtype=torch.float64)
    z2 = torch.zeros(2, dtype=torch.float64)
    for cov, match in ((-I2, "positive semi-definite"), (torch.tensor([[1.0, 5.0], [0.0, 1.0]]), "symmetric"),
                       (I2 * float("nan"), "finite")):
        with pytest.raises(ValueError, match=match):
            gaussian.linear_gaussian_marginal(z2, cov, I2, z2, I2)
    mean, cov = gaussian.linear_gaussian_marginal(torch.tensor([1, 2]), I2, I2, z2, I2)     # an integer mu
    assert torch.equal(mean, torch.tensor([1.0, 2.0], dtype=torch.float64)) and torch.equal(cov, 2 * I2)
    with pytest.raises(ValueError, match="singular"):
        gaussian.linear_gaussian_posterior(z2, 0 * I2, I2, z2, 0 * I2, z2)
    x16 = torch.zeros(2, dtype=torch.float16)
    assert torch.allclose(gaussian.log_normal(x16, 0.0, 1e-8), torch.full((2,), -0.5 * (math.log(2 * math.pi * 1e-8))))
    assert float(gaussian.log_mvn(z2, z2, torch.tensor([[2, 1], [1, 2]]))) == pytest.approx(
        -math.log(2 * math.pi) - 0.5 * math.log(3), rel=1e-14)                           # an integer covariance
    with pytest.raises(ValueError, match="x must have shape"):
        gaussian.log_mvn(torch.zeros(3), torch.zeros(2), torch.eye(2))

    ab = schedule.make_alpha_bar("linear", 20)
    x0 = data.to_model_range(torch.randint(0, 256, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8))
    zero = lambda x, t: torch.zeros_like(x)        # noqa: E731
    with pytest.raises(samplers.NonFiniteError, match="step t = 0"):
        elbo.bits_per_dim(lambda x, t: x * float("nan"), x0, ab)
    assert bool(torch.isfinite(elbo.bits_per_dim(zero, x0.half(), ab)).all())
    by = {kind: elbo.bits_per_dim(zero, x0, ab, variance=v, generator=torch.Generator().manual_seed(1))
          for kind, v in (("tensor", torch.full((20,), 0.1)), ("numpy", np.full(20, 0.1)))}
    assert torch.equal(by["tensor"], by["numpy"])
    with pytest.raises(ValueError, match="finite positive"):
        elbo.bits_per_dim(zero, x0, ab, variance=torch.full((20,), float("inf")))

    conf_a, conf_b = torch.tensor([True, False, True, True]), torch.tensor([False, False, True, False])
    assert quality.mean_difference(conf_a, conf_b, paired=True) == quality.mean_difference(
        conf_a.double(), conf_b.double(), paired=True)
    from ddimlab import lab
    with pytest.raises(ValueError, match="draws must be an integer >= 2"):
        lab.error_ratio(torch.rand(5), torch.rand(5), draws=1)
    with pytest.raises(ValueError, match="squared error"):
        lab.error_ratio(torch.tensor([-1.0, 2.0, 3.0]), torch.ones(3))
    assert lab.error_ratio(torch.tensor([1, 4, 9]), torch.ones(3, dtype=torch.long))["rms"][0] == pytest.approx(
        math.sqrt(14 / 3))
    big = np.diag([1e300, 2e300])                     # features near float64's range: NaN, with overflow warnings
    assert quality.frechet_distance(np.zeros(2), big, np.zeros(2), big[::-1, ::-1]) == pytest.approx(
        2 * (math.sqrt(1e300) - math.sqrt(2e300)) ** 2, rel=1e-12)
    x32 = torch.randn(30, 2, generator=torch.Generator().manual_seed(2))
    y64 = x32.double() + 0.1
    assert toy.mmd2_unbiased(x32, y64, 1.0) == toy.mmd2_unbiased(x32.double(), y64, 1.0)
    assert toy.points([[0.1, 0.2], [0.3, 0.4]], "x")[0, 0].item() == 0.1              # a list read as float64
    for bad, match in ((x32 * float("nan"), "NaN"), (torch.randn(30, 3), "one dimension")):
        with pytest.raises(ValueError, match=match):
            toy.mmd2_unbiased(bad, y64, 1.0)


def test_thirteenth_round_arguments_named():
    """Helper 88: each call failed deep in torch, numpy or Python, or broadcast one noise over a batch, or took a
    β table, a float T or a negative standard deviation without a word."""
    import random

    from ddimlab import devices, nb, tables
    state = random.getstate()
    for seed in (-1, 2 ** 33, 1.5):
        with pytest.raises(ValueError, match="seed must be an integer in 0..2\\*\\*32 - 1"):
            nb.seed_everything(seed)
    assert random.getstate() == state                       # nothing was reseeded before the refusal
    net = _tiny_net()
    with pytest.raises(TypeError, match="torch.from_numpy"):
        checkpoint.eps_fn(net)(np.zeros((1, 1, 8, 8), np.float32), 5)
    x = torch.zeros(4, 3)
    for call in (lambda: diffusion.q_step(x, 0.1, torch.zeros(3)), lambda: diffusion.predict_x0(x, torch.zeros(1, 3), 0.5),
                 lambda: diffusion.eps_from_v(x, torch.zeros(3), 0.5)):
        with pytest.raises(ValueError, match="differs from"):
            call()
    with pytest.raises(TypeError, match="torch tensors"):
        diffusion.q_sample(np.ones((2, 3)), 0.5, np.ones((2, 3)))
    with pytest.raises(ValueError, match="strictly decreasing"):
        tables.score_grid(net, lambda x: {}, S_list=(2,), eta_list=(0.0,), n=2, shape=(1, 8, 8),
                          alpha_bar=schedule.beta_schedule())
    with pytest.raises(ValueError, match="each rank needs at least one"):
        tables.reproduce_table2(net, None, images=torch.zeros(1, 1, 8, 8, dtype=torch.uint8), rank=1, world_size=2)
    with pytest.raises(ValueError, match="precomputed"):
        fid.compute_fid(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), data.load_digits(8), fid.random_features(in_ch=1))
    mix = toy.random_mixture(d=2, K=2)
    with pytest.raises(ValueError, match="rtol"):
        ode.reference_solution(toy.exact_eps(mix, AB), torch.zeros(2, 2), AB, 999, rtol=float("nan"))
    with pytest.raises(ValueError, match="T must be a positive integer"):
        schedule.timesteps(5, 1000.5)
    assert float(schedule.alpha_bar_at(AB.tolist(), 3)) == float(AB[3])
    with pytest.raises(ValueError, match="alpha_bar"):
        ode.rule_timesteps("power3", 10, torch.full((1000,), float("nan")))
    with pytest.raises(ValueError, match="must lie in"):
        mix.v(torch.zeros(2, 2, dtype=torch.float64), -0.5)
    with pytest.raises(ValueError, match="pixel_std"):
        toy.image_like_mixture(d=4, K=2, pixel_std=-0.5)
    with pytest.raises(ValueError, match="seed must be"):
        toy.random_mixture(seed=1.5)
    with pytest.raises(devices.DeviceError, match="unknown device 'gpu'"):
        checkpoint.load_model("missing.pt", device="gpu")


def test_fourteenth_round_far_points_of_a_mixture_are_named_not_nan():
    """Past |x| ≈ 1e154 the squares overflow and every component's density underflows to 0: ε*, E[x_0 | x_t] and the
    reverse kernel were NaN (softmax of all −inf), in both mixture classes. log p = −inf there is right, and stays."""
    for mix in (toy.eight_gaussians(), toy.image_like_mixture(d=16, K=3)):
        x = torch.zeros(2, mix.d, dtype=torch.float64)
        x[1, 0] = 1e160
        for call in (lambda: mix.eps(x, 0.5), lambda: mix.x0_mean(x, 0.5), lambda: mix.reverse_kernel(x, 0.5, 0.7)):
            with pytest.raises(ValueError, match="row 1 has density 0 under every component"):
                call()
        assert mix.log_prob(x, 0.5)[1] == -math.inf
        x[1, 0] = 1e150                                   # still finite: the nearest component takes it
        assert bool(mix.eps(x, 0.5).isfinite().all())


def test_fourteenth_round_files_and_folders(tmp_path, monkeypatch):
    """Helper 90: a numpy scalar in save_checkpoint's state (or a UNet's numpy dropout in its config) replaced a good
    checkpoint with one load_checkpoint refuses as asking to run code; generate_samples kept a folder claimed after its
    first batch failed, refusing the corrected retry; save_diffusers_folder replaced a training run's config.json; two
    reference folders named alike shared one cached FID statistic."""
    import sys
    import types

    from ddimlab import unet

    p = tmp_path / "ckpt.pt"
    checkpoint.save_checkpoint(p, model={"w": torch.ones(3)}, step=4)
    with pytest.raises(TypeError, match=r"state\['step'\] is a numpy.int64"):
        checkpoint.save_checkpoint(p, model={"w": torch.ones(3)}, step=np.int64(5))
    assert checkpoint.load_checkpoint(p)["step"] == 4                          # the good file is still there
    net = unet.UNet(in_ch=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=8, num_groups=4,
                    dropout=np.float64(0.1))
    checkpoint.save_checkpoint(p, config=net.config)
    assert type(checkpoint.load_checkpoint(p)["config"]["dropout"]) is float
    # a failed first batch leaves the folder unclaimed
    d = tmp_path / "samples"
    with pytest.raises(Exception, match="divisible"):
        generate.generate_samples(_tiny_net(), d, 2, shape=(1, 7, 7), S=2)
    assert not d.exists()
    assert generate.generate_samples(_tiny_net(), d, 2, shape=(1, 8, 8), S=2) == [0, 1]
    # a run folder is not a diffusers folder to write into
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").write_bytes(p.read_bytes())
    (run / "config.json").write_text('{"dataset": "digits"}')
    with pytest.raises(FileExistsError, match="holds a ddimlab training run"):
        checkpoint.save_diffusers_folder(_tiny_net(), run, AB)
    assert json.loads((run / "config.json").read_text()) == {"dataset": "digits"}
    # torch-fidelity's cache of a reference folder is keyed by its path and contents, not its name alone
    names = []
    fake = types.SimpleNamespace(calculate_metrics=lambda **kw: names.append(kw["input2_cache_name"]) or
                                 {"frechet_inception_distance": 0.0})
    monkeypatch.setitem(sys.modules, "torch_fidelity", fake)
    for where in ("a", "b"):
        (tmp_path / where / "train").mkdir(parents=True)
        plotting.save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / where / "train" / "0.png")
        fid.fid_inception(d, tmp_path / where / "train")
    assert names[0] != names[1] and all(n.startswith("ddimlab-train-") for n in names)


def test_fourteenth_round_shared_state_flags_and_arguments(toy_setup):
    """Helper 90: a mixture kept the caller's means (edited later: sample used the new ones, eps the old); a 16x16
    classifier's real-digit statistics scored 8x8 samples (real digits FD 784); the cached classifier statistics and
    epoch order were handed out by reference; "False", "no" or 0.5 turned sampler flags on; 0..255 images were encoded and
    edited silently; error_ratio against zero errors, a complex check_close, an infinite tolerance and the cosine
    schedule's ignored beta ends passed; lab.table1 found a bad eta only after every earlier cell; five arguments
    failed deep in numpy or torch."""
    from ddimlab import lab, nb

    mix, eps, x_T, seq = toy_setup
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    m = toy.GaussianMixture(torch.ones(2), means, 0.01 * torch.eye(2, dtype=torch.float64).repeat(2, 1, 1))
    means += 5.0
    assert float(m.sample(2000, torch.Generator().manual_seed(0)).mean(0).abs().max()) < 0.1
    x8 = data.to_model_range(data.load_digits(8)[0][:50])
    with pytest.raises(ValueError, match="made for 16x16 digits"):
        quality.digits_fd(x8, model=quality.load_classifier(16))
    _, info = quality.load_classifier(16)
    info["real_mu"] -= 1.0
    assert not np.array_equal(info["real_mu"], quality.load_classifier(16)[1]["real_mu"])
    idx = data.batch_indices(100, 10, 0)
    idx += 1
    assert torch.equal(data.batch_indices(100, 10, 0) + 1, idx)
    for flag in ("False", "no", 0.5, 1):
        with pytest.raises(TypeError, match="clip_x0 must be True or False"):
            samplers.ddim_sample(eps, x_T, AB, seq, clip_x0=flag)
    with pytest.raises(TypeError, match="clip_x0 must be True or False"):
        samplers.ddpm_sample(eps, x_T, AB, seq=seq, clip_x0="no")
    with pytest.raises(TypeError, match="clip_x0 must be True or False"):
        diffusion.ddim_step(x_T, x_T, 0.5, 0.9, clip_x0="False")
    with pytest.raises(TypeError, match="return_trajectory must be True or False"):
        ode.euler(eps, x_T, AB, seq, return_trajectory="False")
    with pytest.raises(TypeError, match="afs must be True or False"):
        ode.ipndm(eps, x_T, AB, seq, afs="no")
    assert torch.equal(samplers.ddim_sample(eps, x_T, AB, seq, clip_x0=np.bool_(False)), samplers.ddim_sample(eps, x_T, AB, seq))
    imgs = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 255
    img_eps = lambda x, t: torch.zeros_like(x)      # noqa: E731
    for call in (lambda: samplers.ddim_invert(img_eps, imgs, AB, seq), lambda: samplers.sdedit(img_eps, imgs, AB, seq),
                 lambda: ode.heun_invert(img_eps, imgs, AB, seq)):
        with pytest.warns(UserWarning, match="x0 looks like images in 0..255|x_in looks like") as seen:
            call()
        assert seen[0].filename == __file__          # stacklevel: the caller's line, not the library's
    with pytest.raises(ValueError, match="denominator, is 0"):
        lab.error_ratio(torch.tensor([0.1, 0.2, 0.3]), torch.zeros(3))
    with pytest.raises(TypeError, match="complex"):
        nb.check_close(torch.tensor([1 + 5j]), 1.0, "complex")
    with pytest.raises(ValueError, match="atol must be a finite number"):
        nb.check_close(torch.tensor([5.0]), 1.0, "anything", atol=math.inf)
    with pytest.raises(ValueError, match="cosine schedule has no beta_start"):
        schedule.beta_schedule("cosine", 100, 1e-4, 0.5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(samplers, "sample_row", lambda *a, **k: pytest.fail("a cell was sampled before eta was checked"))
        with pytest.raises(ValueError, match="exceeds"):
            lab.table1(S_list=(10, 1000), etas=(0.0, 1.5), n=8, n_ode=0)
    x = torch.zeros(2, 1, 4, 4)
    for call, needle in ((lambda: plotting.image_grid(x, padding=-1), "padding"),
                         (lambda: plotting.image_grid(x, pad_value=300), "pad_value"),
                         (lambda: data.resize(x, 12.5), "resolution"),
                         (lambda: toy.mmd(mix.sample(8), mix, repeats=2.5), "repeats"),
                         (lambda: quality.real_fd_floor(2.5), "n must be")):
        with pytest.raises(ValueError, match=needle):
            call()


def test_fifteenth_round_items_left_at_the_last_stop(toy_setup):
    """Left as low value at the last stop, now named: a bool ᾱ read as 1 (q_sample returned x_0 itself), a bool t
    in l_simple read as steps 1 and 0, ode.nfe("ipndm") that ignored afs=False (S − 1 calls counted, S made) and took
    options no solver has, reference_solution that parsed a string step, and an eps that edits its input in place
    changed the caller's x_T (the first step's input is the caller's tensor)."""
    x = torch.ones(2, 1)
    for bad in (True, np.bool_(False), torch.tensor(True)):
        with pytest.raises(TypeError, match="a_t must be a number or a tensor of numbers, got a bool"):
            diffusion.q_sample(x, bad, x)
    with pytest.raises(ValueError, match=r"t must be a \(2,\) integer tensor, got \(2,\) torch.bool"):
        elbo.l_simple(lambda x_, t: x_, torch.zeros(2, 1, 4, 4), AB, t=torch.tensor([True, False]))
    _, eps, x_T, seq = toy_setup
    for name in ("ipndm", "ipndm_vs"):
        f = ode.counted(eps)
        ode.solve(name, f, x_T, AB, seq, afs=False)
        assert f.calls == ode.nfe(name, len(seq), afs=False) == len(seq) and ode.nfe(name, len(seq)) == len(seq) - 1
    with pytest.raises(TypeError, match="euler takes no option afs"):
        ode.nfe("euler", 5, afs=False)
    # solve passed a mistyped option on as Python's "unexpected keyword argument 'lower_order_fnal'" (round 25)
    with pytest.raises(TypeError, match=r"dpm_solver_pp_3m takes no option lower_order_fnal; its options: published, "
                                        r"lower_order_final$"):
        ode.solve("dpm_solver_pp_3m", eps, x_T, AB, seq, lower_order_fnal=True)
    with pytest.raises(TypeError, match=r"^euler takes no option order \(it has none\)$"):
        ode.solve("euler", eps, x_T, AB, seq, order=3)
    with pytest.raises(TypeError, match="afs must be True or False"):
        ode.nfe("ipndm", 5, afs="no")
    with pytest.raises(ValueError, match="t_start and t_end must be finite numbers"):
        ode.reference_solution(eps, x_T, AB, "999")
    def editing(x_, t):                                 # an eps that clamps its input in place
        return x_.clamp_(-0.5, 0.5) * 0 + 0.1
    x_img = torch.linspace(-2, 2, 16, dtype=torch.float64).reshape(8, 2)
    kept = x_img.clone()
    samplers.ddim_sample(editing, x_img, AB, seq)
    samplers.ddpm_sample(editing, x_img, AB, seq=seq, generator=torch.Generator().manual_seed(0))
    samplers.ddim_invert(editing, x_img, AB, seq)
    samplers.langevin(editing, x_img, AB, 0, 1e-3, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_img, kept)


def test_fifteenth_round_training_runs_and_files(tmp_path, monkeypatch):
    """Helper 95: train(overwrite="no") deleted the previous run (a truthy string); a pathlib.Path as out, or a numpy
    float32 ema_decay, trained every step and then lost the run at its first checkpoint (weights-only saving refused
    them); attn_resolutions=4 failed inside the UNet; every atomic write replaced a read-only file and reset its mode to
    0644."""
    import os
    import stat

    from ddimlab import files, train

    tiny = {"steps": 2, "ch": 8, "ch_mult": (1,), "attn_resolutions": (), "num_groups": 4, "batch_size": 16,
            "n_samples": 0, "progress": False, "warmup": 1}
    run = tmp_path / "run"
    train.train(train.make_config("digits", {**tiny, "out": run}))                # a Path, as Python users pass it
    assert checkpoint.load_checkpoint(run / "ckpt.pt")["config"]["out"] == str(run)
    for flag in ("resume", "overwrite"):
        with pytest.raises(TypeError, match=f"{flag} must be True or False, got 'no'"):
            train.train(train.make_config("digits", {**tiny, "out": str(run), "seed": 7}), **{flag: "no"})
    assert checkpoint.load_checkpoint(run / "ckpt.pt")["config"]["seed"] == 0  # the run is kept
    cfg = train.validate_config(train.TrainConfig(**{**tiny, "out": str(tmp_path / "r2"), "ema_decay": np.float32(0.99),
                                                      "hflip": np.bool_(False)}))
    assert type(cfg.ema_decay) is float and type(cfg.hflip) is bool
    for bad, needle in (({"attn_resolutions": 4}, "attn_resolutions must be a list of integers"),
                        ({"ch_mult": 2}, "ch_mult must be a list of integers"), ({"hflip": "false"}, "hflip must be True"),
                        ({"lr": "1e-3"}, "lr must be a finite number"), ({"out": 5}, "out must be a folder's path")):
        with pytest.raises((ValueError, TypeError), match=needle):
            train.validate_config(train.TrainConfig(**{**tiny, "out": str(tmp_path / "r3"), **bad}))

    p = tmp_path / "best.pt"
    checkpoint.save_checkpoint(p, model={"w": torch.ones(3)}, step=1000)
    os.chmod(p, 0o600)
    checkpoint.save_checkpoint(p, model={"w": torch.ones(3)}, step=1001)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600                           # a private file stays private
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda q, m: False if str(q) == str(p) else real_access(q, m))   # root writes all
    with pytest.raises(PermissionError, match="read-only, so it was not replaced"):
        checkpoint.save_checkpoint(p, model={"w": torch.zeros(3)}, step=1)
    assert checkpoint.load_checkpoint(p)["step"] == 1001
    new = files.atomic_write(tmp_path / "new.txt", lambda f: f.write(b"x"))
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o666 & ~files.current_umask()


def test_fifteenth_round_scores_and_flags(tmp_path):
    """Helper 95: centred but unscaled images (x - 127.5) were clamped to near-binary images and scored; one caller's
    edit of load_classifier's network changed every later score; string flags chose the training split, the paired
    standard error and the approximate likelihood; a (D, N) feature matrix was reshaped into scrambled rows; an .npz of
    samples failed with numpy's KeyError 'mu'."""
    from ddimlab import lab

    u8 = data.load_digits(16)[0][:60]
    with pytest.raises(ValueError, match="centred 0..255 images"):
        quality.score_digits(u8.float() - 127.5)
    fn = fid.random_features(in_ch=1)
    with pytest.raises(ValueError, match="centred 0..255 images"):
        fid.compute_fid(u8.float() - 127.5, data.to_model_range(u8), fn)
    real = data.to_model_range(u8)
    before = quality.confident_share(real)
    net, _ = quality.load_classifier(16)
    with torch.no_grad():
        net.head.weight /= 3
    assert quality.confident_share(real) == before and quality.load_classifier(16)[0] is not net
    fake = data.make_fake_cifar_tarball(tmp_path / "c.tar.gz", n_per_batch=2)
    a = torch.arange(1.0, 7.0)
    for call in (lambda: data.load_cifar10(fake.path, train="False", md5=None, progress=False),
                 lambda: quality.mean_difference(a, a + 0.1, paired="False"),
                 lambda: gaussian.discretized_gaussian_log_likelihood(torch.zeros(1), torch.zeros(1), -3.0, approx="False"),
                 lambda: checkpoint.load_model(tmp_path / "none", use_ema="no"),
                 lambda: lab.table1(S_list=(2,), etas=(0.0,), n=8, n_ode=0, standardize="no"),
                 lambda: quality.load_classifier(16, retrain="no")):
        with pytest.raises(TypeError, match="must be True or False"):
            call()
    with pytest.raises(ValueError, match=r"one row of features per image, N x D .*got shape \(64, 60\)"):
        fid.compute_fid(real, real, lambda x: fn(x).T)
    np.savez(tmp_path / "samples.npz", samples=real.numpy())
    with pytest.raises(ValueError, match="must hold feature statistics `mu` and `sigma`"):
        fid.compute_fid(str(tmp_path / "samples.npz"), real, fn)


def test_fifteenth_round_tables_shapes_and_generators(toy_setup):
    """Helper 95: exact_eps kept the caller's ᾱ table (editing it changed ε*); posterior_mean, q_sigma_mean and
    q_sigma_forward broadcast a 1-channel x0 over 3 channels; reference_solution called a float32 network in float64
    and blamed the user's x; torch's messages for a negative or string beta_start and for a seed as generator."""
    ab = schedule.make_alpha_bar()
    eps = toy.exact_eps(toy.eight_gaussians(), ab)
    x = torch.full((1, 2), 0.3, dtype=torch.float64)
    before = eps(x, 500)
    ab[500] = 0.9
    assert torch.equal(eps(x, 500), before)
    g = torch.Generator().manual_seed(0)
    x_t, grey = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    for call in (lambda: diffusion.posterior_mean(grey, x_t, 0.5, 0.9), lambda: diffusion.q_sigma_mean(grey, x_t, 0.5, 0.9, 0.1),
                 lambda: diffusion.q_sigma_forward(x_t, grey, 0.5, 0.9, 0.1)):
        with pytest.raises(ValueError, match="differs from"):
            call()
    net = _tiny_net().eval()
    x_T = torch.randn(2, 1, 8, 8, generator=g)
    out = ode.reference_solution(checkpoint.eps_fn(net), x_T, AB, 999, t_end=900, rtol=1e-3, atol=1e-3)
    assert out.dtype == torch.float64 and bool(torch.isfinite(out).all())
    for args in (("quadratic", 10, -1e-4, 0.02), ("linear", 10, "1e-4", 0.02), ("linear", 10, 1e-4, 1.5)):
        with pytest.raises(ValueError, match="beta_start and beta_end must be numbers in"):
            schedule.beta_schedule(*args)
    mix, *_ = toy_setup
    for call in (lambda: elbo.bits_per_dim(lambda x_, t: torch.zeros_like(x_), torch.zeros(2, 1, 2, 2),
                                           schedule.make_alpha_bar("linear", 20), generator=0),
                 lambda: elbo.l_simple(lambda x_, t: x_, torch.zeros(2, 1, 4, 4), AB, generator=0),
                 lambda: mix.sample(4, generator=0), lambda: toy.kl_to_normal(mix, 0.5, generator=0),
                 lambda: mix.reverse_sample(torch.zeros(3, 2, dtype=torch.float64), 0.5, 0.9, generator=0)):
        with pytest.raises(TypeError, match="generator must be a torch.Generator or None"):
            call()


def test_sixteenth_round_settings_json_is_kept_and_foreign_ones_refused(tmp_path):
    """Helper 98: a first batch that failed (or Ctrl-C) deleted any settings.json of a folder without PNGs, the user's
    own file or an earlier claim alike; a settings.json without ddimlab's keys ("{}", an editor's) matched every call,
    so two models' images mixed in one folder."""
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731

    def broken(x, t):
        raise RuntimeError("the network failed")

    mine = tmp_path / "mine"
    mine.mkdir()
    for text in ('{"editor.fontSize": 14}', "{}"):
        (mine / "settings.json").write_text(text)
        with pytest.raises(ValueError, match="is damaged or not ddimlab's"):
            generate.generate_samples(zero, mine, 2, shape=(1, 8, 8), S=2, model_id="m")
        assert (mine / "settings.json").read_text() == text and not list(mine.glob("*.png"))
    claimed = tmp_path / "claimed"
    generate.generate_samples(zero, claimed, 1, shape=(1, 8, 8), S=2, model_id="m")      # claims the folder, one image
    before = (claimed / "settings.json").read_text()
    with pytest.raises(RuntimeError, match="the network failed"):
        generate.generate_samples(broken, claimed, 2, shape=(1, 8, 8), S=2, model_id="m")
    assert (claimed / "settings.json").read_text() == before
    fresh = tmp_path / "fresh"                      # this call's own claim still goes with its failure
    with pytest.raises(RuntimeError, match="the network failed"):
        generate.generate_samples(broken, fresh, 2, shape=(1, 8, 8), S=2, model_id="m")
    assert not fresh.exists()
    with pytest.raises(ValueError, match="unknown spacing 'bogus'"):       # S = T skipped the spacing's check
        generate.generate_samples(zero, fresh, 2, shape=(1, 8, 8), S=1000, spacing="bogus", model_id="m")


def test_sixteenth_round_flags_numbers_and_dtypes(tmp_path, toy_setup):
    """Helper 98: truthy strings still switched amp, progress, implicit Adams weights, mmap, strict and validation on;
    the exact mixtures read ᾱ = True as 1 (ε* = 0) and took "0.5"; a bandwidth of True was 1; slerp's λ = True gave z1;
    NaN means gave NaN densities; noise_sampler's booleans, integers or complex numbers were cast to noise; an integer
    x_T was rounded at every call of reference_solution; the step rules built 10⁹ floats before saying S > T."""
    from ddimlab import tables, train

    mix, eps, x_T, seq = toy_setup
    ident = lambda x, t: x  # noqa: E731
    ckpt = checkpoint.save_checkpoint(tmp_path / "c.pt", step=1)
    for call, flag in ((lambda: generate.generate_samples(ident, tmp_path / "g", 1, amp="no", model_id="m"), "amp"),
                       (lambda: generate.generate_samples(ident, tmp_path / "g", 1, progress="False", model_id="m"),
                        "progress"),
                       (lambda: checkpoint.eps_fn(ident, amp="no"), "amp"),
                       (lambda: ode.adams_coefficients(2, implicit="no"), "implicit"),
                       (lambda: checkpoint.load_checkpoint(ckpt, mmap="no"), "mmap"),
                       (lambda: train.config_from_dict({}, strict="no"), "strict"),
                       (lambda: elbo.l_simple(ident, torch.zeros(2, 2), AB, validate="no"), "validate"),
                       (lambda: tables.reproduce_table1(ident, tmp_path / "t", amp="no"), "amp"),
                       (lambda: tables.reproduce_table2(ident, tmp_path / "t", progress="no"), "progress")):
        with pytest.raises(TypeError, match=f"{flag} must be True or False"):
            call()
    assert not (tmp_path / "g").exists() and not (tmp_path / "t").exists()
    assert ode.adams_coefficients(2, implicit=False) == pytest.approx([1.5, -0.5])

    for call in (lambda: mix.eps(x_T, True), lambda: mix.log_prob(x_T, torch.tensor(True)), lambda: mix.marginal("0.5"),
                 lambda: mix.marginal(True), lambda: toy.kl_to_normal(mix, "0.5"), lambda: mix.reverse_kernel(x_T, "0.5", 0.9),
                 lambda: samplers.slerp(x_T[:1], x_T[1:2], True)):
        with pytest.raises(TypeError, match="alpha_bar|a_t|lam"):
            call()
    for call, needle in ((lambda: toy.gram(x_T, x_T, True), "kernel must be a finite bandwidth"),
                         (lambda: toy.gram(x_T, x_T, np.array([1.0, 2.0])), "kernel must be a finite bandwidth"),
                         (lambda: samplers.slerp(x_T[:1], x_T[1:2], []), "non-empty"),
                         (lambda: samplers.slerp(x_T[:1], x_T[1:2].long(), 0.5), "floating-point"),
                         (lambda: gaussian.log_mvn(torch.zeros(2), [math.nan, 0.0], torch.eye(2)), "mean must be finite"),
                         (lambda: gaussian.kl_mvn([math.nan, 0], torch.eye(2), torch.zeros(2), torch.eye(2)), "mean1 must"),
                         (lambda: gaussian.kl_mvn(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3)), "one dimension"),
                         (lambda: gaussian.log_normal(0.0, math.nan, 1.0), "mean must be finite"),
                         (lambda: gaussian.kl_normal(0.0, 1.0, math.inf, 1.0), "mean2 must be finite"),
                         (lambda: gaussian.discretized_gaussian_log_likelihood(torch.zeros(2), torch.zeros(2),
                                                                               torch.tensor([math.nan, 0.0])), "log_scale"),
                         (lambda: ode.karras_timesteps(10 ** 9, AB), r"S must be an integer in 1\.\.1000"),
                         (lambda: ode.lambda_timesteps(10 ** 9, AB), r"S must be an integer in 1\.\.1000"),
                         (lambda: schedule.validate_alpha_bar(schedule.make_alpha_bar("linear", 10 ** 6)), "underflows")):
        with pytest.raises(ValueError, match=needle):
            call()
    for noise in (torch.ones_like(x_T, dtype=torch.bool), torch.full_like(x_T, 3, dtype=torch.long), x_T.to(torch.complex128)):
        with pytest.raises(ValueError, match="floating-point noise"):
            samplers.ddim_sample(eps, x_T, AB, seq, eta=1.0, noise_sampler=lambda t, s, z=noise: z)
    for call, needle in ((lambda: ode.reference_solution(eps, x_T.long(), AB, 999), "x_T must be floating point"),
                         (lambda: samplers.sample(eps, (2, 2), AB, S=2, dtype=torch.long), "dtype must be a floating"),
                         (lambda: samplers.sample(eps, (2, 2), AB, S=2, dtype="float64"), "dtype must be a floating"),
                         (lambda: samplers.sample(eps, 3, AB, S=2), "shape must be a sequence")):
        with pytest.raises(TypeError, match=needle):
            call()


def test_sixteenth_round_solvers_say_float32_overflow_and_bad_callbacks_first():
    """Helper 98: x_T/√ᾱ past float32's 3e38 (a linear T = 20000 table ends at ᾱ = 1e-88) was caught in float16 only:
    an eps finite on any input made every solver return NaN; `callback=5` failed only after the first network call."""
    long_table = schedule.make_alpha_bar("linear", 20000)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    calm = lambda x, t: torch.nan_to_num(x) * 0  # noqa: E731
    for name in ode.SOLVERS:
        with pytest.raises(ValueError, match=r"overflows float32 at t = 19999; run the solver in float64"):
            ode.solve(name, calm, x, long_table, schedule.timesteps(5, 20000, "trailing"))
    assert bool(ode.euler(calm, x.double(), long_table, schedule.timesteps(5, 20000, "trailing")).isfinite().all())

    def never(x, t):
        pytest.fail("the network was called before the callback was checked")

    seq = schedule.timesteps(5, 1000, "uniform")
    for run in (lambda cb: samplers.ddim_sample(never, x, AB, seq, callback=cb),
                lambda cb: samplers.ddpm_sample(never, x, AB, callback=cb),
                lambda cb: samplers.ddim_invert(never, x, AB, seq, callback=cb),
                lambda cb: ode.heun_invert(never, x, AB, seq, callback=cb),
                lambda cb: samplers.langevin(never, x, AB, 10, 0.01, 2, callback=cb),
                *[lambda cb, n=n: ode.solve(n, never, x, AB, seq, callback=cb) for n in ode.SOLVERS]):
        with pytest.raises(TypeError, match="callback must be a function of the step's info dict, or None; got int"):
            run(5)


def test_sixteenth_round_errors_that_name_the_argument():
    """Helper 98: each was an error from deep inside torch or numpy (a conv's channel count, torch.cat of an empty list,
    a LinAlgError, "unhashable type: 'list'", "new(): invalid data type 'str'")."""
    net = _tiny_net()
    for call, error, needle in (
            (lambda: checkpoint.eps_fn(net)(torch.zeros(2, 3, 8, 8), 5), ValueError, "x has 3 channels but the network takes 1"),
            (lambda: fid.compute_fid(torch.zeros(0, 1, 8, 8), torch.zeros(4, 1, 8, 8), fid.random_features()), ValueError,
             "no images to score"),
            (lambda: ode.unipc_coefficients([], 0.5), ValueError, "at least one node"),
            (lambda: ode.solve(["heun"], None, None, AB, None), ValueError, r"unknown ODE solver \['heun'\]"),
            (lambda: ode.t_of_sigma(AB, "1.0"), TypeError, "sigma must be a number"),
            (lambda: ode.alpha_bar_cont(AB, "5"), TypeError, "steps t must be a number or a tensor of numbers, got a string")):
        with pytest.raises(error, match=needle):
            call()
    assert checkpoint.eps_fn(net)(torch.zeros(2, 1, 8, 8), 5).shape == (2, 1, 8, 8)
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert samplers.slerp(z[:1].float(), z[1:], 0.5).dtype == torch.float64       # was float32: z1's digits dropped
    from ddimlab import lab

    mix = toy.default_mixture()             # a list as alpha_bar, as every sampler takes it: was an AttributeError
    seq = schedule.timesteps(5, 1000, "uniform")
    assert lab.ode_error(toy.exact_eps(mix, AB), z[:, :2], AB.tolist(), seq) == lab.ode_error(toy.exact_eps(mix, AB), z[:, :2],
                                                                                               AB, seq)


def test_seventeenth_round_solvers_name_the_step_that_overflowed():
    """Left at the last stop: the solvers checked x̄ for overflow at the start only, so an eps finite on any input (here
    a constant 60000, within float16's 65504) carried an inf x̄ to the end and every solver returned inf or NaN."""
    loud = lambda x, t: torch.full_like(x, 60000.0)  # noqa: E731
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float16)
    seq = schedule.timesteps(10, 1000, "uniform")
    for name in ode.SOLVERS:
        with pytest.raises(samplers.NonFiniteError, match=r"step [98]00 -> [87]00 gave NaN or inf in torch.float16 from "
                                                          r"a finite eps; run in float32"):
            ode.solve(name, loud, x, AB, seq)
        assert bool(ode.solve(name, loud, x.float(), AB, seq).isfinite().all())


def test_seventeenth_round_meta_tensors_are_named():
    """Left at the last stop: a latent or table on the meta device (shapes only, as in a tracing tool) failed with torch's
    "Tensor.item() cannot be called on meta tensors"."""
    seq = schedule.timesteps(5, 1000, "uniform")
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    meta = torch.zeros(2, 3, device="meta")
    for run in (lambda: samplers.ddim_sample(zero, meta, AB, seq), lambda: samplers.ddpm_sample(zero, meta, AB),
                lambda: ode.solve("heun", zero, meta, AB, seq)):
        with pytest.raises(ValueError, match="x_T is on the meta device, which holds shapes but no values"):
            run()
    with pytest.raises(ValueError, match="alpha_bar is on the meta device"):
        samplers.ddim_sample(zero, torch.zeros(2, 3), AB.to("meta"), seq)


def test_seventeenth_round_cache_and_export_files_of_the_user_are_kept(tmp_path):
    """Helper 101: `fid.reference_stats` replaced any <name>.npz it could not read as statistics (the user's samples, a
    text file) and wrote outside `directory` for name="../x"; `save_diffusers_folder` into a diffusers pipeline folder
    replaced its scheduler, and `load_model` then paired the pipeline's own UNet with the new schedule."""
    imgs = torch.rand(20, 3, 8, 8) * 2 - 1
    f = fid.random_features()
    np.savez(tmp_path / "samples.npz", samples=imgs.numpy())
    (tmp_path / "notes.npz").write_text("my notes")
    for name in ("samples", "notes"):
        before = (tmp_path / f"{name}.npz").read_bytes()
        with pytest.raises(FileExistsError, match="is not reference statistics"):
            fid.reference_stats(name, lambda: imgs, f, directory=tmp_path)
        assert (tmp_path / f"{name}.npz").read_bytes() == before
    for name in ("../escaped", "", "a/b", ".."):
        with pytest.raises(ValueError, match="name must be a plain file name"):
            fid.reference_stats(name, lambda: imgs, f, directory=tmp_path / "stats")
    assert not (tmp_path / "escaped.npz").exists()
    (tmp_path / "torn.npz").write_bytes(b"PK\x03\x04 torn")            # a damaged cache file is still recomputed
    mu, sigma = fid.reference_stats("torn", lambda: imgs, f, directory=tmp_path)
    assert np.array_equal(np.load(tmp_path / "torn.npz")["mu"], mu)
    assert fid.compute_fid(imgs, [mu, sigma], f) == pytest.approx(fid.compute_fid(imgs, (mu, sigma), f))   # a list too

    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "scheduler").mkdir()
    (pipe / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    (pipe / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "DDIMScheduler"}')
    with pytest.raises(FileExistsError, match="holds a diffusers pipeline"):
        checkpoint.save_diffusers_folder(_tiny_net(), pipe, AB)
    assert (pipe / "scheduler" / "scheduler_config.json").read_text() == '{"_class_name": "DDIMScheduler"}'
    assert not (pipe / "config.json").exists()


def test_seventeenth_round_image_size_and_noise_start_are_the_models(tmp_path):
    """Helper 101: `generate_samples` defaulted to 3×32×32 and `tables.score_grid` to 1×16×16 whatever the network was
    trained on (an 8×8 digits model sampled and was scored at 16×16, silently); `lab.table1` on a schedule that does not
    reach noise (T = 100: the first of 10 steps has ᾱ = 0.43) started from N(0, I) without the samplers' warning."""
    from PIL import Image

    from ddimlab import lab, tables

    net = _tiny_net(3)
    generate.generate_samples(net, tmp_path / "g", 1, S=2)
    assert Image.open(tmp_path / "g" / "000000.png").size == (8, 8)
    seen = []
    tables.score_grid(_tiny_net(), lambda x: seen.append(tuple(x.shape)) or {}, S_list=(2,), eta_list=(0.0,), n=2)
    assert seen == [(2, 1, 8, 8)]
    with pytest.warns(UserWarning, match=r"trained on 8×8 images; at 16×16 it runs"):
        generate.generate_samples(net, tmp_path / "big", 1, S=2, shape=(3, 16, 16))
    with pytest.raises(ValueError, match=r"shape=None takes \(C, H, W\) from the network's config, but this model records"):
        generate.generate_samples(lambda x, t: x * 0, tmp_path / "plain", 1, S=2, model_id="m")
    with pytest.warns(samplers.OutOfRangeWarning, match="the noisiest of the 10 steps is t = 90"):
        lab.table1(S_list=(10,), etas=(0.0,), include_sigma_hat=False, n=16, n_ode=0, T=100, repeats=2)


def test_seventeenth_round_small_helpers_say_what_was_wrong():
    """Helper 101: each was an error from inside torch, numpy or math, or a silent NaN / truncation."""
    from ddimlab import devices

    net, x = _tiny_net(), torch.randn(2, 1, 8, 8)
    seq = schedule.timesteps(2, 1000, "trailing")
    for call, error, needle in (
            (lambda: checkpoint.eps_fn(net)(x, "5"), TypeError, "steps t must be a number"),
            (lambda: checkpoint.eps_fn(net)(x, float("nan")), ValueError, "steps t must be finite"),
            (lambda: generate.sample_indices(net, [0], (1, 8, 8), AB, seq, device="gpu"), devices.DeviceError,
             "unknown device 'gpu'"),
            (lambda: ode.unipc_coefficients([-1.0, 1.0], 0.0), ValueError, "h must be a finite number > 0"),
            (lambda: ode.unipc_coefficients([-1.0, 1.0], float("nan")), ValueError, "h must be a finite number > 0"),
            (lambda: ode.unipc_coefficients([0.5, 0.5], 1.0), ValueError, "the nodes r must be finite and distinct"),
            (lambda: ode.phi(2, 1e6), ValueError, "h must be a finite number <= 709"),
            (lambda: schedule.step_pairs(torch.tensor([999.7, 5.0, 500.2])), ValueError, "strictly decreasing integer"),
            (lambda: schedule.step_pairs([5, 10]), ValueError, "strictly decreasing integer")):
        with pytest.raises(error, match=needle):
            call()
    assert schedule.step_pairs([10, 5]) == [(10, 5), (5, -1)]
    mix = toy.default_mixture()
    eps = toy.exact_eps(mix, AB)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seq = schedule.timesteps(20, 1000, "uniform")
    assert torch.equal(ode.ipndm(eps, z, AB, seq, rho=torch.tensor(2.0)), ode.ipndm(eps, z, AB, seq, rho=2.0))  # was float32


def test_eighteenth_round_advice_fits_the_grid():
    """At the schedule's last step more steps or another spacing cannot start nearer noise (the advice was "use more
    steps or the trailing spacing"), and for the full chain "a grid that starts later" is one of fewer steps."""
    short = schedule.make_alpha_bar("linear", 100)                                   # ends at alpha_bar = 0.36
    with pytest.warns(samplers.OutOfRangeWarning, match="t = 99 .*where the schedule ends: it does not reach noise"):
        samplers.check_first_step(short, schedule.timesteps(100, 100, "uniform"))
    with pytest.warns(samplers.OutOfRangeWarning, match="t = 90 .*use more steps or the trailing spacing"):
        samplers.check_first_step(short, schedule.timesteps(10, 100, "uniform"))
    with pytest.warns(samplers.OutOfRangeWarning, match="a grid of fewer than all 1000 steps that starts later"):
        generate.warn_out_of_range(torch.tensor([20.0]), AB, schedule.timesteps(1000, 1000, "uniform"))
    with pytest.warns(samplers.OutOfRangeWarning, match=r"; a grid that starts later \(quad"):
        generate.warn_out_of_range(torch.tensor([20.0]), AB, schedule.timesteps(10, 1000, "trailing"))


def test_nineteenth_round_the_range_warning_advises_only_the_clipping_there_is():
    """Helper 106: `interpolate` and the ODE solvers, which cannot clip x0, were told to clip (`sample --clip`)."""
    seq = schedule.timesteps(10, 1000, "trailing")
    for clip, says in (("--clip", "clipping x0 (--clip)"), (None, None)):
        with pytest.warns(samplers.OutOfRangeWarning) as got:
            generate.warn_out_of_range(torch.tensor([20.0]), AB, seq, clip)
        message = str(got[0].message)
        assert (says in message) if says else ("clip" not in message), message
    with pytest.warns(samplers.OutOfRangeWarning) as got:
        generate.sample_indices(lambda x, t: 30 * x, [0], (1, 4, 4), AB, seq, solver="euler")
    assert "clip" not in str(got[-1].message)


def test_eighteenth_round_files_of_the_user_are_kept(tmp_path):
    """Helper 105: a PNG written to a symbolic link replaced the link (its target kept the old bytes); a diffusers export
    replaced a scheduler_config.json it had not written; `reproduce_table2` into a file failed after every
    reconstruction; a .jpg name got PNG bytes; a write onto a folder named the temporary file."""
    from ddimlab import tables

    (tmp_path / "target.png").write_bytes(b"old")
    (tmp_path / "link.png").symlink_to(tmp_path / "target.png")
    plotting.save_image_grid(torch.zeros(1, 1, 4, 4), tmp_path / "link.png")
    assert (tmp_path / "link.png").is_symlink() and (tmp_path / "target.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="does not end in .png"):
        plotting.save_image_grid(torch.zeros(1, 1, 4, 4), tmp_path / "out.jpg")
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match=f"^{tmp_path / 'd'} is a folder, so no file can be written in its place; "
                                                 f"give a file name$"):
        checkpoint.save_checkpoint(tmp_path / "d", step=1)

    sched = tmp_path / "u" / "scheduler" / "scheduler_config.json"
    sched.parent.mkdir(parents=True)
    sched.write_text('{"_class_name": "EulerDiscreteScheduler"}')
    with pytest.raises(FileExistsError, match="not one this writes"):
        checkpoint.save_diffusers_folder(_tiny_net(), tmp_path / "u", AB)
    assert "Euler" in sched.read_text() and not (tmp_path / "u" / "config.json").exists()

    (tmp_path / "afile").write_text("mine")
    net = _tiny_net().eval()
    for out, batch, error, needle in (("afile", 250, ValueError, "out_dir must be a folder"),
                                      ("t2", -1, ValueError, "batch_size must be")):
        with pytest.raises(error, match=needle):
            tables.reproduce_table2(net, tmp_path / out, images=data.load_digits(8)[0][:4], S_list=(2,), batch_size=batch)
    assert (tmp_path / "afile").read_text() == "mine"
    with pytest.raises(ValueError, match="batch_size must be"):
        tables.reconstruction_errors(net, data.load_digits(8)[0][:2], AB, schedule.timesteps(2, 1000), batch_size=-1)


def test_eighteenth_round_bad_arguments_are_said_before_the_work(tmp_path):
    """Helper 105: a feature_fn without reference, or one that does not take the model's images, was found after the
    first cell's samples; `lab.main(image_n=3)` after the 2-D table (naming n); `compare_samplers(n=1)` after all four
    samplers; a bare number as S_list was "not iterable"; a score_fn returning a float was "argument after **"."""
    from ddimlab import demo, lab, tables

    net, out = _tiny_net().eval(), tmp_path / "t1"
    digits = data.load_digits(8)[0][:8]
    for kw, needle in ((dict(feature_fn=fid.random_features(in_ch=1)), "pass reference="),
                       (dict(feature_fn=fid.random_features(in_ch=3), reference=digits), "feature_fn fails on images of shape"),
                       (dict(feature_fn=fid.random_features(in_ch=1), reference=(np.zeros(3), np.eye(3))),
                        "gives 64 features .* the reference's statistics have 3")):
        with pytest.raises(ValueError, match=needle):
            tables.reproduce_table1(net, out, S_list=(2,), eta_list=(0.0,), n_samples=2, **kw)
    assert not (out / "samples").exists()
    with pytest.raises(ValueError, match="image_n must be an integer >= 8"):
        lab.main(out=tmp_path / "lab", n=8, image_n=3)
    with pytest.raises(ValueError, match="image_d must be a non-negative integer"):
        lab.main(out=tmp_path / "lab", n=8, image_d=2.5)
    assert not (tmp_path / "lab").exists()
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        demo.compare_samplers(net, None, n=1)
    with pytest.raises(TypeError, match=r"S_list must be a list, e.g. \(10, 20\); got 10"):
        tables.score_grid(net, quality.score_digits, S_list=10)
    with pytest.raises(TypeError, match="eta_list must be a list"):
        tables.score_grid(net, quality.score_digits, eta_list=0.0)
    with pytest.raises(TypeError, match="score_fn must return a dict"):
        tables.score_grid(net, lambda x: 1.0, S_list=(2,), eta_list=(0.0,), n=2)


def test_eighteenth_round_silently_wrong_answers():
    """Helper 105: 16-bit PNGs were scored as 8-bit and palette PNGs as their indices; `demo.score` clamped uint8 digits
    to black; `lab.ode_error` summed image-shaped errors over one axis; a bare 16×16 classifier scored 8×8 digits;
    `digits_config` dropped overrides of seed, device, n_samples and threads; NaN noise passed `l_simple`'s checks;
    `bits_per_dim` scored data off the 8-bit grid; `split_digits(holdout=1.5)` returned no training set; a
    `trained_betas` of another length than num_train_timesteps was taken without a word."""
    import tempfile
    from pathlib import Path

    from PIL import Image

    from ddimlab import demo, lab, pretrained

    with tempfile.TemporaryDirectory() as d:
        Image.fromarray(np.full((8, 8), 60000, np.uint16)).save(Path(d) / "000000.png")
        with pytest.raises(ValueError, match="FID reads 8-bit grey or RGB"):
            fid.load_images(d)
    with tempfile.TemporaryDirectory() as d:
        palette = Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
        palette.save(Path(d) / "000000.png")
        assert int(fid.load_images(d).float().mean()) == 200                   # the colour, not palette index 0
    u8 = data.load_digits(8)[0][:60]
    assert demo.score(u8)["confident"] == demo.score(data.to_model_range(u8))["confident"] > 0.5

    eps = toy.exact_eps(toy.image_like_mixture(d=4, K=2), AB)
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    seq = schedule.timesteps(5, 1000)
    as_images = lambda z, t: eps(z.reshape(8, -1), t).reshape(z.shape)      # noqa: E731
    assert lab.ode_error(as_images, x.reshape(8, 1, 2, 2), AB, seq) == pytest.approx(lab.ode_error(eps, x, AB, seq), rel=1e-6)

    with pytest.raises(ValueError, match="made for 16x16 digits"):
        quality.classify(data.to_model_range(u8[:4]), model=quality.load_classifier(16)[0])
    with pytest.raises(ValueError, match="overrides may not set seed"):
        pretrained.digits_config(overrides={"seed": 5})
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        pretrained.digits_model(threads=0)

    x0 = data.to_model_range(u8[:2])
    with pytest.raises(ValueError, match="noise contains NaN or inf"):
        elbo.l_simple(lambda z, t: z, x0, AB, noise=torch.full_like(x0, float("nan")))
    with pytest.raises(ValueError, match="not on that grid"):
        elbo.bits_per_dim(lambda z, t: torch.zeros_like(z), (x0 + 1) / 2, schedule.make_alpha_bar("linear", 20))
    with pytest.raises(ValueError, match="0 <= holdout < 1"):
        quality.split_digits(8, holdout=1.5)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "scheduler").mkdir()
        (Path(d) / "scheduler" / "scheduler_config.json").write_text(
            json.dumps({"trained_betas": [1e-4] * 10, "num_train_timesteps": 1000}))
        with pytest.raises(checkpoint.CheckpointError, match="lists 10 betas and num_train_timesteps says 1000"):
            checkpoint.diffusers_alpha_bar(d)


def test_eighteenth_round_errors_that_say_what_was_wrong(tmp_path):
    """Helper 105: each was an error from inside torch or Python, or a nonsense answer."""
    from ddimlab import devices, lab, nb

    checkpoint.save_checkpoint(tmp_path / "c.pt", step=1)
    x = torch.zeros(1, 1, 4, 4)
    for call, error, needle in (
            (lambda: plotting.save_image_grid(tmp_path / "out.png", x), TypeError, "the images come first"),
            (lambda: plotting.image_grid(torch.zeros(1, 1, 4, 4, dtype=torch.uint8)), TypeError, "to_model_range"),
            (lambda: data.resize(x.half(), 8), TypeError, "float32 or float64 tensor"),
            (lambda: data.resize(np.zeros((1, 1, 4, 4)), 8), TypeError, "got ndarray"),
            (lambda: data.read_images([], (1, 8, 8)), ValueError, "no files given"),
            (lambda: data.read_images([tmp_path / "c.pt"], (8, 8)), ValueError, r"shape must be the model's \(C, H, W\)"),
            (lambda: generate.latents(0, [], (1, 8, 8)), ValueError, "at least one"),
            (lambda: generate.latents(0, [0], 8), ValueError, "shape such as"),
            (lambda: lab.cross_fitted_best({}), ValueError, "at least one setting"),
            (lambda: lab.label("ddpm"), ValueError, "named 'eta=<value>'"),
            (lambda: lab.beyond({}, {}, k=-5), ValueError, "k must be a number of standard errors >= 0"),
            (lambda: lab.summed_variance(torch.full((4, 2), float("nan"))), ValueError, "NaN or inf"),
            (lambda: nb.weights_line(lambda x, t: x), TypeError, "torch.nn.Module"),
            (lambda: devices.resolve(None), devices.DeviceError, "got None"),
            (lambda: checkpoint.load_checkpoint(tmp_path / "c.pt", required="model"), checkpoint.CheckpointError,
             r"lacks the key\(s\) \['model'\]")):
        with pytest.raises(error, match=needle):
            call()
    with pytest.raises(ValueError, match="feature_fn fails on images of shape"):
        fid.compute_fid(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8), fid.random_features(in_ch=3))


def test_nineteenth_round_wrong_kinds_of_checkpoint_say_what_they_are(tmp_path):
    """Helper 106: a digits classifier's file was "328 missing keys", a folder of samples or tables "no config.json;
    expected a diffusers folder", and `ch_mult=1,,2` was read as (1, 2)."""
    from ddimlab import train

    torch.save({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, tmp_path / "classifier.pt")
    with pytest.raises(checkpoint.CheckpointError, match=r"holds no diffusion model .*none of its 2 keys"):
        checkpoint.load_model(tmp_path / "classifier.pt")
    (tmp_path / "tables").mkdir()
    with pytest.raises(FileNotFoundError, match="neither ckpt.pt .* nor config.json"):
        checkpoint.load_model(tmp_path / "tables")
    with pytest.raises(ValueError, match="ch_mult must be comma-separated integers, got '1,,2'"):
        train.make_config("digits", ["ch_mult=1,,2"])
    assert train.make_config("digits", ["ch_mult=2,", "attn_resolutions=8"]).ch_mult == (2,)    # (4 is no size of a 1-level net)
    np.savez(tmp_path / "scalar.npz", x0=np.float32(0.5))              # was "images must be (N, C, H, W)", no file named
    with pytest.raises(ValueError, match=r"scalar.npz: x0 must be images \(N, C, H, W\) .* got shape \(\)"):
        data.read_images(tmp_path / "scalar.npz", (1, 8, 8))


def test_nineteenth_round_a_grid_near_the_data_is_said_once(tmp_path):
    """Helper 108: `reproduce table1 --steps 1` said "the noisiest of the 1 steps is t = 0" (now "the only step is
    t = 0") once up front and again in every cell."""
    from ddimlab import tables

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        tables.reproduce_table1(_tiny_net().eval(), tmp_path / "t1", S_list=(1,), eta_list=(0.0, 1.0), n_samples=2,
                                spacing="uniform", feature_fn=fid.random_features(in_ch=1),
                                reference=data.load_digits(8)[0][:16])
    assert sum("the only step is t = 0" in str(w.message) for w in got) == 1, [str(w.message) for w in got]


def test_nineteenth_round_a_killed_writers_temporary_images_are_removed(tmp_path):
    """Helper 106: `kill -9` during a table cell left `.000001.png.XXXX.tmp` in the cell's folder forever (the rerun
    wrote that image again, within the minute that protects a write in progress, and never came back to it)."""
    import os
    import time

    d = tmp_path / "cell"
    generate.generate_samples(_tiny_net().eval(), d, 2, S=2)
    old, young = d / ".000001.png.abcd1234.tmp", d / ".000000.png.efgh5678.tmp"
    for p in (old, young):
        p.write_bytes(b"half a png")
    os.utime(old, (time.time() - 3600,) * 2)
    generate.generate_samples(_tiny_net().eval(), d, 3, S=2)          # the next call on the folder
    assert not old.exists() and young.exists()                         # a write in progress is never touched


def test_nineteenth_round_api_cases_that_were_silent_or_half_done(tmp_path):
    """Helper 110: set_aside moved one file and then failed on a path outside `out`, leaving it moved; make_figure wrote
    PNG bytes under fig.pdf; md5sum(chunk_size=0) gave the md5 of b""; generate_samples(n=0) claimed a folder with no
    image; a bfloat16 alpha_bar removed the noise at small t; demo.score read float 0..255 images as all white;
    lab.table1 merged etas equal to 6 digits; ema_update(decay=1.5) and lr_at(step=-50) answered; diffusers_config
    dropped a key it did not know (in_channels) and kept the CIFAR-10 value."""
    from ddimlab import demo, files, lab, train

    out, elsewhere = tmp_path / "out", tmp_path / "else"
    out.mkdir(), elsewhere.mkdir()
    (out / "a.txt").write_text("a"), (elsewhere / "b.txt").write_text("b")
    with pytest.raises(ValueError, match="nothing was moved"):
        files.set_aside(out, [out / "a.txt", elsewhere / "b.txt"])
    assert (out / "a.txt").read_text() == "a" and not list(out.glob(".previous-*"))
    with pytest.raises(ValueError, match="does not end in .png"):
        lab.make_figure([], tmp_path / "fig.pdf")
    assert not (tmp_path / "fig.pdf").exists()
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        files.md5sum(out / "a.txt", chunk_size=0)
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        generate.generate_samples(_tiny_net().eval(), tmp_path / "gen", 0, S=2)
    assert not (tmp_path / "gen").exists()
    t = torch.tensor([0, 1, 5, 100])
    with pytest.raises(TypeError, match="bfloat16 round the steps near t = 0 to 1"):
        diffusion.q_sample(torch.zeros(4, 3), AB.bfloat16()[t], torch.ones(4, 3))
    with pytest.raises(ValueError, match="whole numbers from 0 to 255"):
        demo.score(data.load_digits(8)[0][:64].float())
    with pytest.raises(ValueError, match="two share a name at 6 significant digits"):
        lab.table1(n=16, S_list=(10,), etas=(0.1, 0.1000001), include_sigma_hat=False, n_ode=0)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        net = _tiny_net()
        train.ema_update(copy.deepcopy(net), net, 1.5)
    with pytest.raises(ValueError, match="step must be a non-negative integer, got -50"):
        train.lr_at(train.make_config("digits"), -50)
    with pytest.raises(ValueError, match=r"\['in_channels'\] are not ddimlab UNet settings"):
        checkpoint.diffusers_config({"in_channels": 1, "resolution": 8})


def test_nineteenth_round_small_silent_answers(tmp_path):
    """Helper 110's smaller cases: jackknife_se of one value was 0; a negative std made the positive one's mixture;
    nfe(published="yes") counted; grid_size and demo.shown took negative sizes; integer noise trained on in l_simple and
    float64 noise failed naming x."""
    from ddimlab import demo, lab

    with pytest.raises(ValueError, match="at least 2 delete-one values"):
        lab.jackknife_se(torch.tensor([5.0]))
    with pytest.raises(ValueError, match="std_tangent must be a finite number > 0"):
        toy.eight_gaussians(std_tangent=-0.15)
    with pytest.raises(ValueError, match="std_range must be"):
        toy.random_mixture(std_range=(-0.3, -0.1))
    with pytest.raises(TypeError, match="published must be True or False"):
        ode.nfe("dpm_solver_pp_3m", 10, published="yes")
    with pytest.raises(ValueError, match="w must be a positive integer"):
        plotting.grid_size(3, 2, -5)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        demo.shown(-5)
    x0 = torch.zeros(2, 1, 8, 8)
    for noise in (torch.ones(2, 1, 8, 8, dtype=torch.long), torch.ones(2, 1, 8, 8, dtype=torch.float64)):
        with pytest.raises(TypeError, match=f"noise is {noise.dtype} but x0 is torch.float32"):
            elbo.l_simple(_tiny_net(), x0, AB.float(), noise=noise)


def test_nineteenth_round_a_float64_network_samples():
    """Helper 110: generate_samples and sample_indices with a float64 network failed ("x is torch.float32 ... pass
    x.to(...)"), though the latents are drawn inside: they are now widened, so the images are the float32 run's."""
    net, seq = _tiny_net().eval(), schedule.timesteps(3, 1000, "uniform")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", samplers.OutOfRangeWarning)       # an untrained net
        x32 = generate.sample_indices(net, [0, 1], (1, 8, 8), AB, seq)
        x64 = generate.sample_indices(copy.deepcopy(net).double(), [0, 1], (1, 8, 8), AB, seq)
    assert x64.dtype == torch.float64 and torch.allclose(x64.float(), x32, atol=1e-4)


def test_nineteenth_round_messages_name_the_argument():
    """Helper 110: a uint64 step of 2**64 - 1 was read as -1 (alpha_bar 1.0), step_pairs took a negative step, a node
    r = 0 was solved for, and seven calls failed inside torch or Python without naming what was wrong."""
    import numpy as np

    from ddimlab import nb, unet

    with pytest.raises(ValueError, match="fit in int64"):
        schedule.alpha_bar_at(AB, np.uint64(2**64 - 1))
    with pytest.raises(ValueError, match="steps must be >= 0"):
        schedule.step_pairs([5, -3])
    with pytest.raises(ValueError, match="nodes r must be nonzero"):
        ode.unipc_coefficients([0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="alpha_bar must be a 1-D table of numbers"):
        schedule.validate_alpha_bar(["0.5"])
    with pytest.raises(TypeError, match="sigma must be a number"):
        diffusion.q_sigma_mean(torch.zeros(2), torch.zeros(2), 0.5, 0.9, "0.1")
    with pytest.raises(ValueError, match="dropout must be a number in"):
        unet.UNet(in_ch=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), resolution=8, num_groups=4,
                  dropout="0.1")
    with pytest.raises(ValueError, match="dim must be an integer >= 4"):
        unet.timestep_embedding(torch.tensor([1, 2]), 2)
    with pytest.raises(ValueError, match="check_close needs a non-empty"):
        nb.check_close(torch.ones(3), torch.ones(2), "m")
    with pytest.raises(ValueError, match="digits must be a positive integer"):
        nb.fmt(1.5, -1)


def test_twentieth_round_an_eps_that_edits_its_input_changes_nothing(toy_setup):
    """Helper 111: an eps that clamps its input in place gave ddim_sample a result 36 away from ode.euler's (the sampler
    reused the edited x; the solver's input was a temporary), ipndm(afs=False) clamped the caller's x_T, a guided
    eps_null edited eps_cond's input and elbo_terms' bound used the edited x_t. call_eps now hands eps a copy."""
    from ddimlab import elbo

    mix, exact, x_T, seq = toy_setup

    def editing(x_, t):
        return exact(x_.clone(), t) + 0 * x_.clamp_(-0.5, 0.5)

    x = torch.linspace(-2, 2, 16, dtype=torch.float64).reshape(8, 2)
    kept = x.clone()
    assert torch.allclose(samplers.ddim_sample(editing, x, AB, seq), ode.euler(editing, x, AB, seq), atol=1e-12)
    assert torch.allclose(samplers.ddim_sample(editing, x, AB, seq), samplers.ddim_sample(exact, x, AB, seq))
    ode.solve("ipndm", editing, x, AB, seq, afs=False)
    assert torch.equal(x, kept)
    assert torch.equal(samplers.guided_eps(editing, exact, 2.0)(x, torch.full((8,), 500)),
                       samplers.guided_eps(exact, exact, 2.0)(x, torch.full((8,), 500)))
    ab = schedule.make_alpha_bar("linear", 20).double()
    x0 = torch.tensor([0, 51, 128, 255, 7, 90, 200, 3], dtype=torch.float64).reshape(2, 1, 2, 2) / 127.5 - 1
    zero = elbo.elbo_terms(lambda x_, t: torch.zeros_like(x_), x0, ab, generator=torch.Generator().manual_seed(0))
    edit = elbo.elbo_terms(lambda x_, t: torch.zeros_like(x_) + 0 * x_.zero_(), x0, ab,
                           generator=torch.Generator().manual_seed(0))
    assert torch.equal(zero["total"], edit["total"])


def test_twentieth_round_config_from_dict_checks_what_it_reads():
    """Helper 111: config_from_dict kept T = "1000" and hflip = "false" as strings (true in an `if`), lr = -1, steps
    = 1.5 and ch_mult = [1, "a"] as given, and a path or a TrainConfig failed with "'str' object is not a mapping". It
    now reads values as make_config's overrides (`--set`) and checks them with validate_config; load_trained still
    reads a run saved before a rule existed, with a warning."""
    from ddimlab import train

    small = dict(ch=8, ch_mult=(1,), attn_resolutions=(), num_groups=4)
    saved = dataclasses.asdict(train.make_config("digits", small))
    c = train.config_from_dict({**saved, "T": "1000", "hflip": "false", "ch_mult": [1]})
    assert (c.T, c.hflip, c.ch_mult) == (1000, False, (1,))
    for bad, name in (({"lr": -1.0}, "lr must be in"), ({"steps": 1.5}, "steps must be a positive integer"),
                      ({"ch_mult": [1, "a"]}, "an entry of ch_mult"), ({"hflip": "maybe"}, "hflip must be a boolean")):
        with pytest.raises(ValueError, match=name):
            train.config_from_dict({**saved, **bad})
    for bad in ("runs/digits/config.json", train.make_config("digits")):
        with pytest.raises(TypeError, match="d must be a dict of a run's settings"):
            train.config_from_dict(bad)
    old = {**saved, "sample_steps": 1}                  # a run saved before sample_steps had to be >= 2
    net = train.build_model(train.config_from_dict(saved), in_ch=1)
    state = {"model": net.state_dict(), "ema": net.state_dict(), "config": old, "in_ch": 1}
    with pytest.warns(UserWarning, match="sample_steps .* returned as saved"):
        _, got = train.load_trained(state)
    assert got.sample_steps == 1


def test_twentieth_round_silently_wrong_tables_and_features():
    """Helper 111: feature_stats dropped the imaginary parts of complex features (with a ComplexWarning) and read bools
    as 1; frechet_distance('0.5', ...) parsed the string (0.25) and took True as 1 (FD 1.0); schedule.alpha_bar of a
    (2, T) betas table multiplied down its columns (a (2, T) "table"); GaussianMixture.v with a (B,) alpha_bar failed
    in float() ("only one element tensors"), where eps and x0_mean take it."""
    f = torch.tensor([[1 + 5j, 2], [3, 4j], [0, 1]])
    for bad, kind in ((f, "complex"), (f.numpy(), "complex"), (torch.tensor([[True], [False]]), "bool"),
                      ([["1", "2"], ["3", "4"]], "<U1")):
        with pytest.raises(TypeError, match=f"features must hold real numbers .*{kind}"):
            quality.feature_stats(bad)
    for args, name in ((("0.5", [[1.0]], [0.0], [[1.0]]), "mu1"), (([1.0], [[1.0]], False, [[1.0]]), "mu2"),
                       (([0.0], [[True]], [0.0], [[1.0]]), "cov1"), (([0.0], [[1.0]], [0.0], torch.eye(1) + 0j), "cov2")):
        with pytest.raises(TypeError, match=f"frechet_distance: {name} must hold real numbers"):
            quality.frechet_distance(*args)
    assert quality.frechet_distance([1], [[1]], np.array([0.0]), torch.eye(1)) == pytest.approx(1.0)   # ints are numbers
    betas = schedule.beta_schedule("linear", 10)
    for bad in (torch.stack([betas, betas]), betas[:, None], betas[:0]):
        with pytest.raises(ValueError, match="betas must be a non-empty 1-D table"):
            schedule.alpha_bar(bad)
    with pytest.raises(ValueError, match=r"alpha_bar must be a 1-D table .* got shape \(2, 1000\)"):
        schedule.alpha_bar_at(torch.stack([AB, AB]), 5)             # was torch's "same number of dimensions"
    mix = toy.random_mixture(d=2, K=3, seed=0)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = torch.tensor([0.0, 0.1, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(mix.v(x, a), torch.cat([mix.v(x[i:i + 1], float(a[i])) for i in range(4)]))


def test_twentieth_round_messages_name_the_argument():
    """Helper 111: seven calls failed inside torch without naming what was wrong: gram of float32 against float64
    points ("self and mat2 must have the same dtype"), of points of two dimensions or 1-D ones; reference_solution of
    a requires_grad x_T, or of a network's ε outside no_grad ("Can't call numpy() on Tensor that requires grad");
    latents of a negative size; elbo_terms of an eps_model returning a list ("'list' object has no attribute 'shape'");
    ema_update of two different networks ("The size of tensor a (8) must match")."""
    from ddimlab import train

    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(toy.gram(x, x.float(), 1.0), toy.gram(x, x, 1.0), atol=1e-6)   # met in float64
    with pytest.raises(ValueError, match=r"u and v must be points of one dimension d, got shapes \(4, 2\) and \(3, 3\)"):
        toy.gram(x, torch.zeros(3, 3), "energy")
    with pytest.raises(ValueError, match=r"u must be points of shape \(n, d\)"):
        toy.gram(x[0], x[0], 1.0)
    mix = toy.random_mixture(d=2, K=3, seed=0)
    with pytest.raises(ValueError, match="x_T requires grad, .* pass x_T.detach()"):
        ode.reference_solution(toy.exact_eps(mix, AB), x.clone().requires_grad_(), AB, 500)
    lin = torch.nn.Linear(2, 2).double()                     # a network's output requires grad
    assert ode.reference_solution(lambda x_, t: lin(x_), x, AB, 20, rtol=1e-4, atol=1e-4).shape == (4, 2)
    with pytest.raises(ValueError, match="an entry of shape must be a positive integer, got -2"):
        generate.latents(0, [0, 1], (1, -2, 2))
    x0 = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"eps_model\(x_t, t\) must return a tensor of x's shape .* got list"):
        elbo.elbo_terms(lambda x_, t: x_.tolist(), x0, schedule.make_alpha_bar("linear", 20), decoder="gaussian")
    net = _tiny_net()
    for other in (torch.nn.Linear(2, 2), torch.nn.Sequential()):
        with pytest.raises(ValueError, match="ema and model must be copies of one network"):
            train.ema_update(net, other, 0.9)


def test_twentieth_round_fmt_pm_refuses_what_it_dropped():
    """Helper 111: lab.fmt_pm(1.0, -0.1) printed '1e+03' (the negative SE dropped silently) and fmt_pm(nan, 0.1)
    'nan±100'; an SE of 0 or NaN (none) still prints the value alone."""
    from ddimlab import lab

    for args, name in (((1.0, -0.1), "se must be >= 0"), ((float("nan"), 0.1), "value must be a finite number"),
                       ((1.0, "0.1"), "se must be a finite number"), ((1.0, 0.1, 0), "scale > 0")):
        with pytest.raises(ValueError, match=name):
            lab.fmt_pm(*args)
    assert lab.fmt_pm(0.0123456, 0.0) == lab.fmt_pm(0.0123456, float("nan")) == "12.3"
    assert lab.fmt_pm(0.0123456, 0.0034) == "12±3"


def test_twentyfirst_round_ratios_take_lists_and_refuse_values_outside_0_1():
    """Helper 116: schedule.snr([0.5]) and sigma_of([0.5]) failed with Python's "unsupported operand type(s) for -: 'int'
    and 'list'" (alpha_bar_at takes a list); snr(1.5) was -3.0 and sigma_of(1.5) NaN; a complex ᾱ failed inside torch
    ("lt_cpu not implemented for 'ComplexFloat'")."""
    assert schedule.snr([0.5]).tolist() == schedule.snr(np.array([0.5])).tolist() == [1.0]
    assert schedule.sigma_of([0.2]).tolist() == [2.0] and float(schedule.sigma_of(1.0)) == 0.0
    assert torch.equal(schedule.snr(AB), AB / (1 - AB))
    for bad in (1.5, torch.tensor([0.5, 1.5]), [0.0], float("nan")):
        for f in (schedule.snr, schedule.sigma_of):
            with pytest.raises(ValueError, match=r"alpha_bar must lie in \(0, 1\]"):
                f(bad)
    with pytest.raises(TypeError, match="alpha_bar must be real, got torch.complex64"):
        schedule.snr(torch.tensor([0.5 + 0j]))
    with pytest.raises(TypeError, match="a_t must be real"):
        diffusion.q_sample(torch.zeros(2), torch.tensor(0.5 + 0j), torch.zeros(2))


def test_twentyfirst_round_slerp_refuses_weights_outside_0_1():
    """Helper 116: slerp(z0, z1, 2.0) returned a latent on the far side of z1 (extrapolated along the circle) and lam = 50
    (a percentage) wrapped round it; λ outside [0, 1] is now a ValueError. An empty batch stays empty (decided, as every
    sampler does)."""
    z0, z1 = torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(0))
    for lam in (2.0, -0.1, 50, torch.linspace(0, 10, 11)):
        with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
            samplers.slerp(z0, z1, lam)
    assert samplers.slerp(z0, z1, torch.linspace(0, 1, 3)).shape == (3, 16)
    assert samplers.slerp(z0[:0], z1[:0], 0.5).shape == (0, 16)


def test_twentyfirst_round_silent_nan_and_wrong_answers():
    """Helper 116: ddim_step with NaN noise returned all-NaN x_s; UNet(x, t) with a NaN step an all-NaN ε; a mixture's
    log_prob, score and eps of a NaN point NaN; kl_normal with an infinite variance NaN (log_normal -inf) and True as a
    variance of 1 (KL 0.0); t_of_sigma(1 + 5j) dropped the imaginary part (t = 258.09); nb.check_close(True, 1.0) passed;
    compute_fid of 8×8 samples against 16×16 references gave a finite 0.68."""
    from ddimlab import gaussian, nb, unet

    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="noise contains NaN or inf"):
        diffusion.ddim_step(x, x, 0.5, 0.7, eta=0.5, noise=torch.full((2, 3), float("nan")))
    with pytest.raises(TypeError, match="noise must be floating point"):
        diffusion.ddim_step(x, x, 0.5, 0.7, eta=0.5, noise=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="x_t and eps must be torch tensors"):
        diffusion.ddim_step(x, x.tolist(), 0.5, 0.7)                   # was "'list' object has no attribute 'shape'"
    net = unet.UNet(in_ch=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), resolution=8, num_groups=4)
    with pytest.raises(ValueError, match="t must be finite steps"):
        net(torch.zeros(2, 1, 8, 8), torch.tensor([float("nan"), 1.0]))
    with pytest.raises(ValueError, match="x has 3 channels but this network takes 1"):
        net(torch.zeros(2, 3, 8, 8), 5)                                 # was torch's "weight of size [8, 1, 3, 3]"
    mix = toy.random_mixture(d=2, K=3, seed=0)
    bad = torch.tensor([[0.0, float("nan")]], dtype=torch.float64)
    for call in (lambda: mix.log_prob(bad), lambda: mix.score(bad, 0.5), lambda: mix.eps(bad, 0.5)):
        with pytest.raises(ValueError, match="x contains NaN or inf"):
            call()
    with pytest.raises(ValueError, match="var1 must be > 0 and finite"):
        gaussian.kl_normal(0.0, float("inf"), 0.0, 1.0)
    with pytest.raises(ValueError, match="var must be > 0 and finite"):
        gaussian.log_normal(torch.zeros(2), 0.0, torch.tensor([1.0, float("inf")]))
    for call, name in ((lambda: gaussian.kl_normal(0.0, True, 0.0, 1.0), "var1"),
                       (lambda: gaussian.log_normal(torch.tensor([True]), 0.0, 1.0), "x"),
                       (lambda: gaussian.log_mvn(torch.zeros(2), torch.zeros(2), torch.eye(2).bool()), "cov")):
        with pytest.raises(TypeError, match=f"{name} must be a number .* got a bool"):
            call()
    with pytest.raises(TypeError, match="sigma must be real"):
        ode.t_of_sigma(AB, torch.tensor(1 + 5j))
    with pytest.raises(TypeError, match="actual must be a number .* got a bool"):
        nb.check_close(True, 1.0, "m")
    g = torch.Generator().manual_seed(0)
    small, big = torch.rand(8, 3, 8, 8, generator=g) * 2 - 1, torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    with pytest.raises(ValueError, match=r"samples are images of shape \(3, 8, 8\) .* reference images \(3, 16, 16\)"):
        fid.compute_fid(small, big, fid.random_features())
    assert fid.compute_fid(small, fid.image_stats(big, fid.random_features()), fid.random_features()) > 0   # stats: as before


def test_twentyfirst_round_messages_name_the_argument():
    """Helper 116: alpha_bar_cont(table, True) (and exact_eps with a bool t) said "step t must be an integer (use
    ode.alpha_bar_cont for fractional steps)" inside alpha_bar_cont; log_mvn of a 0-dimensional Gaussian failed in
    torch's max(); png_bytes of an H×W tensor in torch's permute, and a number in `text` with "'int' object has no
    attribute 'encode'"; show_images(scale=0) drew at a fixed size; gaussian.log_normal("1", …) and nb.fmt(True)
    (printed "1") read what is no number."""
    from ddimlab import gaussian, nb

    for t in (True, torch.tensor(5.5 + 0j)):
        with pytest.raises(TypeError, match="continuous step t must be a real number"):
            ode.alpha_bar_cont(AB, t)
    with pytest.raises(TypeError, match="continuous step t must be a real number"):
        toy.exact_eps(toy.random_mixture(d=2, K=3, seed=0), AB)(torch.zeros(2, 2, dtype=torch.float64),
                                                                torch.tensor([True, True]))
    assert float(gaussian.log_mvn(torch.zeros(0), torch.zeros(0), torch.zeros(0, 0))) == 0.0
    with pytest.raises(ValueError, match=r"uint8 C×H×W tensor .* got shape \(4, 4\)"):
        plotting.png_bytes(torch.zeros(4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="text must be a dict of strings"):
        plotting.png_bytes(np.zeros((4, 4, 1), np.uint8), text={"seed": 1})
    for scale in (0, -1.0, "2"):
        with pytest.raises(ValueError, match="scale must be a finite number > 0"):
            plotting.show_images(torch.zeros(2, 1, 4, 4), scale=scale)
    with pytest.raises(TypeError, match="x must be a number .* got a string"):
        gaussian.log_normal("1", 0.0, 1.0)
    for x in (True, "0.5"):
        with pytest.raises(TypeError, match="x must be a number"):
            nb.fmt(x)


def test_twentyfirst_round_callables_shapes_and_devices_are_named(toy_setup):
    """Helper 116: an eps or a noise_sampler that is no function failed with Python's "'int' object is not callable"
    (the noise_sampler after the first network call), guided_eps(5, eps) only at the first step; samplers.sample of a
    shape (2, -2) or (2.0, 2) failed in torch ("negative dimension", randn's argument dump), and on "cuda:0" without
    CUDA with torch's "Torch not compiled with CUDA enabled", as did generate.latents; lab.jackknife_se of NaN values
    returned nan and of a list failed in .shape."""
    from ddimlab import devices, lab

    _, eps, x_T, seq = toy_setup
    with pytest.raises(TypeError, match="eps must be a function eps"):
        samplers.ddim_sample(5, x_T, AB, seq)
    with pytest.raises(TypeError, match="noise_sampler must be a function"):
        samplers.ddim_sample(lambda x, t: pytest.fail("eps called first"), x_T, AB, seq, eta=1.0, noise_sampler=5)
    with pytest.raises(TypeError, match="guided_eps: eps_null must be a function"):
        samplers.guided_eps(5, eps, 1.0)
    for shape in ((2, -2), (2.0, 2)):
        with pytest.raises(ValueError, match="an entry of shape must be a non-negative integer"):
            samplers.sample(eps, shape, AB, 5)
    if not torch.cuda.is_available():
        with pytest.raises(devices.DeviceError, match="cuda:0"):
            samplers.sample(eps, (2, 2), AB, 5, device="cuda:0")
        with pytest.raises(devices.DeviceError, match="cuda:0"):
            generate.latents(0, [0], (1, 2, 2), device="cuda:0")
    assert samplers.sample(eps, (0, 2), AB, 5, dtype=torch.float64).shape == (0, 2)       # empty in, empty out
    with pytest.raises(ValueError, match="jackknife_se: the per-sample scores must be finite"):
        lab.jackknife_se(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="jackknife_se takes 1-D tensors"):
        lab.jackknife_se([1.0, 2.0])
    assert lab.jackknife_se(torch.tensor([1, 3])) == 1.0                  # integer values: as floats


def test_api_round_22_a_generator_beside_a_noise_sampler_is_refused(toy_setup):
    """Round 22, item 1: given both, every sampler used the noise_sampler and ignored the generator (a seeded
    generator changed nothing), without a word. Refused before the first network call."""
    _, eps, x_T, seq = toy_setup
    never = lambda x, t: pytest.fail("eps called first")      # noqa: E731
    z = lambda t, s: torch.zeros_like(x_T)                     # noqa: E731
    for run in (lambda g: samplers.ddim_sample(never, x_T, AB, seq, eta=1.0, generator=g, noise_sampler=z),
                lambda g: samplers.ddpm_sample(never, x_T, AB, seq=seq, generator=g, noise_sampler=z),
                lambda g: samplers.sample_row(never, x_T, AB, seq, samplers.SIGMA_HAT, generator=g, noise_sampler=z),
                lambda g: samplers.langevin(never, x_T, AB, 500, 0.01, 2, generator=g, noise_sampler=z)):
        with pytest.raises(ValueError, match="generator or noise_sampler, not both"):
            run(torch.Generator().manual_seed(0))
    samplers.ddim_sample(eps, x_T, AB, seq, eta=1.0, noise_sampler=z)                          # either alone runs
    samplers.ddim_sample(eps, x_T, AB, seq, eta=1.0, generator=torch.Generator().manual_seed(0))


def test_api_round_22_prior_kl_of_0_255_images_warns():
    """Round 22, item 2: elbo.prior_kl (and elbo_terms with decoder="gaussian") of 0..255 images gave a KL about
    127.5² times that of the same images in [-1, 1] (finite, plausible) without a word. They warn as
    samplers.ddim_invert does (a warning: other data may have any scale), once per call; [-1, 1] images and toy
    points at any scale do not."""
    x255 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 255
    ab = schedule.make_alpha_bar("linear", 10)
    with pytest.warns(UserWarning, match="x0 looks like images in 0..255"):
        big = elbo.prior_kl(x255, AB)
    assert bool((big > 1e4 * elbo.prior_kl(x255 / 127.5 - 1, AB)).all())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        elbo.elbo_terms(lambda x, t: torch.zeros_like(x), x255, ab, decoder="gaussian")
    assert [str(w.message)[:30] for w in seen] == ["x0 looks like images in 0..255"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        elbo.prior_kl(x255 / 127.5 - 1, AB)
        elbo.prior_kl(x255.flatten(1), AB)                   # points, not images


def test_api_round_22_an_index_listed_twice_is_refused():
    """Round 22, item 3: generate.latents(0, [1, 1], …) and sample_indices(…, [0, 0], …) gave one image twice where
    two were asked for. A 50 000-index list is checked in linear time and named by its length."""
    from ddimlab.checks import check_distinct

    with pytest.raises(ValueError, match=r"index = 1 is listed twice \(as \[1, 1\]\)"):
        generate.latents(0, [1, 1], (1, 2, 2))
    with pytest.raises(ValueError, match="index = 0 is listed twice"):
        generate.latents(0, torch.tensor([0, 0]), (1, 2, 2))
    with pytest.raises(ValueError, match="index = 0 is listed twice"):
        generate.sample_indices(lambda x, t: pytest.fail("sampled"), [0, 0], (1, 8, 8), AB, schedule.timesteps(5, 1000))
    with pytest.raises(ValueError, match=r"index = 7 is listed twice \(as 50001 values\)"):
        check_distinct(list(range(50_000)) + [7], "index")
    assert generate.latents(0, [1, 0], (1, 2, 2)).shape == (2, 1, 2, 2)


def test_api_round_22_ddim_step_keeps_x_dtype_with_float64_noise():
    """Round 22, item 4: float32 x_t with float64 noise returned a float64 x_s; the noise is cast to x_t's dtype, as
    ddim_sample casts its noise_sampler's draws."""
    g = torch.Generator().manual_seed(0)
    x, e, z = (torch.randn(2, 3, generator=g) for _ in range(3))
    x_s, _ = diffusion.ddim_step(x, e, 0.5, 0.7, eta=0.5, noise=z.double())
    assert x_s.dtype == torch.float32
    assert torch.equal(x_s, diffusion.ddim_step(x, e, 0.5, 0.7, eta=0.5, noise=z)[0])


def test_api_round_22_random_features_refuses_channels_and_dims_that_cannot_work():
    """Round 22, item 5: fid.random_features(in_ch=2) was accepted (no image the library reads or writes has 2
    channels), and dim=0 failed in torch's conv2d at the first batch."""
    for in_ch in (0, 2, 4, True, 3.0):
        with pytest.raises(ValueError, match="in_ch must be 1 or 3"):
            fid.random_features(in_ch=in_ch)
    for dim in (0, -1, 2.0):
        with pytest.raises(ValueError, match="dim must be a positive integer"):
            fid.random_features(dim=dim)
    assert fid.random_features(1, dim=1)(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape == (2, 1)


def test_api_round_22_errors_name_the_argument():
    """Round 22, item 6: each failed with a raw Python or torch error deep inside, or (karras_timesteps' rho = 1e6)
    one naming another value ("sigma must lie in ..."); lab.ranking(rows, S=True) ranked the rows at S = 1."""
    from ddimlab import lab, unet

    rows = [{"sampler": f"eta={e}", "S": 1, "mmd2": m, "se": 0.1} for e, m in ((0, 0.0), (1, 1.0))]
    for call, err, needle in (
            (lambda: ode.karras_timesteps(5, AB, rho=1e6), ValueError, "rho must be a finite number >= 1 and <= 10000"),
            (lambda: toy.bandwidth("x"), TypeError, "mixture must be a toy.GaussianMixture, got str"),
            (lambda: unet.count_params("x"), TypeError, "model must be a torch.nn.Module, got str"),
            (lambda: checkpoint.sha256_of("a", object()), TypeError, "sha256_of hashes strings and torch tensors"),
            (lambda: data.looks_0_255([0.0, 255.0]), TypeError, "x must be a torch.Tensor"),
            (lambda: generate.warn_out_of_range([1.0, 30.0], AB, [999]), TypeError, "rms must be a 1-D float tensor"),
            (lambda: fid.image_stats(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), feature_fn="inception"), TypeError,
             "feature_fn must be a callable .* fid.fid_inception"),
            (lambda: lab.ranking(rows, S=True), ValueError, "S must be a positive integer"),
            (lambda: generate.sample_indices("net", [0], (1, 8, 8), AB, schedule.timesteps(5, 1000)), TypeError,
             "model must be a network .* got str"),
            (lambda: checkpoint.eps_fn(5), TypeError, "model must be a network")):
        with pytest.raises(err, match=needle):
            call()
    assert lab.ranking(rows, 1) == "η=0 < η=1"
    ode.karras_timesteps(5, AB, rho=1e4)                      # the largest rho allowed runs


def test_api_round_22_complex_betas_are_refused():
    """Round 22, item 7: schedule.alpha_bar dropped the imaginary part of complex betas with only torch's warning."""
    for betas in (torch.tensor([0.1, 0.2], dtype=torch.complex64), np.array([0.1 + 0.01j, 0.2]), [0.1 + 0j]):
        with pytest.raises(TypeError, match="betas must be real numbers"):
            schedule.alpha_bar(betas)
    assert schedule.alpha_bar([0.1, 0.2]).tolist() == pytest.approx([0.9, 0.72], rel=1e-15)


def test_api_round_22_audit_index_and_distinct_checks():
    """Mutation audit of round 22's checks: check_distinct pairs tensors (a set would hash them by identity and miss
    a repeat), shows a list of up to 20 values and the count beyond; _generators makes each index a Python int before
    the repeat check (a tensor of indices is named as numbers, and hashed: linear time), and a bool is not an index."""
    from ddimlab.checks import check_distinct

    with pytest.raises(ValueError, match="eta = 0.5 is listed twice"):
        check_distinct([torch.tensor(0.5), torch.tensor(0.25), torch.tensor(0.5)], "eta")
    check_distinct([torch.tensor(0.5), torch.tensor(0.25)], "eta")
    with pytest.raises(ValueError, match=r"S = 1 is listed twice \(as \[1, 2, 1\]\)"):
        check_distinct(iter([1, 2, 1]), "S")                              # an iterator is read once
    with pytest.raises(ValueError, match=r"x = 0 is listed twice \(as \[0, 1, .*, 18, 0\]\)"):
        check_distinct(list(range(19)) + [0], "x")                        # 20 values: listed
    with pytest.raises(ValueError, match=r"x = 0 is listed twice \(as 21 values\)"):
        check_distinct(list(range(20)) + [0], "x")
    with pytest.raises(ValueError, match=r"index = 5 is listed twice \(as \[5, 5\]\)"):
        generate.latents(0, torch.tensor([5, 5]), (1, 2, 2))
    with pytest.raises(ValueError, match="index must be a non-negative integer, got True"):
        generate.latents(0, [1, True], (1, 2, 2))


def test_api_round_22_audit_warn_out_of_range_wants_a_1d_float_tensor():
    """Mutation audit: warn_out_of_range's check refuses a 2-D or an integer tensor, not only a list."""
    for rms, shown in ((torch.tensor([[1.0, 30.0]]), r"\(torch.float32, \(1, 2\)\)"),
                       (torch.tensor([1, 30]), r"\(torch.int64, \(2,\)\)")):
        with pytest.raises(TypeError, match="rms must be a 1-D float tensor of each sample's RMS, got " + shown):
            generate.warn_out_of_range(rms, AB, [999])


def test_api_round_22_audit_karras_rho_limit_is_1e4():
    """Mutation audit: rho just above MAX_RHO = 1e4 is refused (rho = 1e6 alone did not pin the limit)."""
    assert ode.MAX_RHO == 1e4
    with pytest.raises(ValueError, match=r"rho must be a finite number >= 1 and <= 10000 \("):
        ode.karras_timesteps(5, AB, rho=1.0001e4)


def test_api_round_24_bad_arguments_leave_nothing_on_disk(tmp_path, tiny_unet):
    """Round 24, item 1: reproduce_table2 made out_dir (files.check_can_write) before it checked n_images, images,
    S_list, spacing, alpha_bar, the model and the device, and a model failing at its first call left the folder too;
    digits_model on a device the machine lacks left a lock file in the cache. A bad argument leaves nothing now."""
    from ddimlab import pretrained, tables
    from ddimlab.devices import DeviceError
    from ddimlab.files import check_can_write

    u8 = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    out = tmp_path / "new" / "t2"

    def fail(x, t):
        raise ZeroDivisionError("the model fails")
    for kw, err, match in ((dict(n_images=-1), ValueError, "n_images must be a positive integer"),
                           (dict(images=u8.float()), ValueError, "images must be uint8"),
                           (dict(S_list=(0,)), ValueError, "number of steps S must be"),
                           (dict(S_list=(5, 5)), ValueError, "S = 5 is listed twice"),
                           (dict(spacing="bogus"), ValueError, "unknown spacing"),
                           (dict(alpha_bar=AB.flip(0)), ValueError, "alpha_bar must be strictly decreasing"),
                           (dict(device="cuda:99"), DeviceError, "cuda:99"),
                           (dict(model="net"), TypeError, "model must be a network"),
                           (dict(model=fail), ZeroDivisionError, "the model fails")):
        kw = {"model": tiny_unet, "images": u8, "S_list": (2,), **kw}
        with pytest.raises(err, match=match):
            tables.reproduce_table2(kw.pop("model"), out, **kw)
        assert list(tmp_path.iterdir()) == [], kw
    check_can_write(out)                                  # the probe's folders go with the probe
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DeviceError, match="cuda:99"):
        pretrained.digits_model(steps=2, cache_dir=tmp_path / "cache", device="cuda:99")
    assert list(tmp_path.iterdir()) == []
    rows = tables.reproduce_table2(tiny_unet, out, images=u8, S_list=(2,))             # and the good call writes
    assert rows[0]["n"] == 3 and sorted(p.name for p in out.iterdir()) == ["table2.csv", "table2.md"]


def test_api_round_24_ddim_step_follows_x_t_dtype_with_a_float64_eps():
    """Round 24, item 2: a float32 x_t with a float64 ε returned float64 x_s and x̂_0 (round 22 cast only the noise);
    the samplers never pass such an ε (they refuse it), so ddim_step's answer now follows x_t as theirs do. The value is
    DDIM eq. 12 written out in float64, to float32's precision; an integer ε is refused."""
    g = torch.Generator().manual_seed(0)
    x, e, z = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    a_t, a_s, eta = 0.5, 0.7, 0.5
    sigma = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
    x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
    want = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s - sigma ** 2) * e + sigma * z
    x_s, x0_hat = diffusion.ddim_step(x.float(), e, a_t, a_s, eta=eta, noise=z)
    assert x_s.dtype == x0_hat.dtype == torch.float32
    torch.testing.assert_close(x_s, want.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x0_hat, x0.float(), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="eps must be floating point"):
        diffusion.ddim_step(x.float(), torch.ones(4, 3, dtype=torch.long), a_t, a_s)


def test_api_round_24_every_elbo_function_of_x0_warns_on_0_255_images():
    """Round 24, item 3: elbo.l_simple (and posterior_kl, decoder_nll) of 0..255 images said nothing where prior_kl and
    elbo_terms warned: one rule now, in the x0 check they share, said once per call and at the caller's line."""
    x255 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 255
    zero = torch.zeros_like(x255)
    calls = (lambda x: elbo.l_simple(lambda x_t, t: torch.zeros_like(x_t), x, AB),
             lambda x: elbo.posterior_kl(x, zero, zero, AB, 5),
             lambda x: elbo.decoder_nll(x, zero, zero, AB, decoder="gaussian"),
             lambda x: elbo.prior_kl(x, AB))
    for call in calls:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            call(x255)
        assert [(str(w.message)[:30], w.filename) for w in seen] == [("x0 looks like images in 0..255", __file__)]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            call(x255 / 127.5 - 1)


def test_api_round_24_a_half_precision_alpha_bar_table_is_named_as_such(toy_setup):
    """A float16 or bfloat16 ᾱ table (cast with a half-precision network) rounds ᾱ_0 = 0.9999 to 1.0; every sampler,
    solver and bound said "alpha_bar values must lie in (0, 1) ..., got 1.0", blaming a value the caller never wrote.
    Now the one precision rule of `diffusion.wide` (q_sample's): the dtype is named, and what to pass instead."""
    mix, eps, x_T, seq = toy_setup
    assert AB.half()[0].item() == AB.bfloat16()[0].item() == 1.0 and AB[0].item() < 1
    x0 = torch.zeros(2, 1, 4, 4)
    for table in (AB.half(), AB.bfloat16(), AB.numpy().astype(np.float16)):
        for call in (lambda: samplers.ddim_sample(eps, x_T, table, seq), lambda: samplers.ddpm_sample(eps, x_T, table),
                     lambda: ode.euler(eps, x_T, table, seq), lambda: elbo.l_simple(lambda x, t: x, x0, table),
                     lambda: toy.exact_eps(mix, table), lambda: schedule.validate_alpha_bar(table)):
            with pytest.raises(TypeError, match=r"alpha_bar values in (torch\.)?(b?float16) round the steps near t = 0 to 1"):
                call()
    assert schedule.validate_alpha_bar(AB.float()).dtype == torch.float64          # float32 is kept as a table


def test_api_round_24_lab_formatters_name_rows_of_another_table(tmp_path):
    """lab.format_table, plot_table, make_figure and ranking of tables.score_grid's rows (keyed by η, the other "Table
    1" of the library) failed with KeyError: 'sampler'; rows whose cells lack their statistics, with KeyError: 'mmd2'.
    Each now says whose rows they take; make_figure writes nothing."""
    from ddimlab import lab

    grid_rows = [{"eta": "0", "S": 10, "seconds": 0.1, "fd": 3.0}]
    bare = [{"sampler": "eta=0", "S": 10}]
    for rows, lacks in ((grid_rows, "sampler"), (bare, "mmd2, se")):
        for call in (lambda: lab.format_table(rows), lambda: lab.plot_table(rows), lambda: lab.ranking(rows, 10),
                     lambda: lab.make_figure(rows, tmp_path / "fig.png")):
            with pytest.raises(ValueError, match=f"rows must be lab.table1's, and a row lacks {lacks}"):
                call()
    with pytest.raises(TypeError, match="rows must be a list of lab.table1's rows"):
        lab.format_table({"sampler": "eta=0"})
    assert list(tmp_path.iterdir()) == []
    assert lab.ranking([{"sampler": "eta=0", "S": 1, "mmd2": 0.0, "se": 0.1}], 1) == "η=0"


def test_api_round_24_save_diffusers_folder_names_a_net_that_is_not_a_unet(tmp_path, tiny_unet):
    """save_diffusers_folder(load_model(path), out, alpha_bar) (the (net, alpha_bar) pair as the net) failed with
    AttributeError: 'tuple' object has no attribute 'config'; a string, with 'str' object has no ... ."""
    for net, match in (((tiny_unet, AB), r"net must be a ddimlab unet.UNet, got tuple \(load_model returns"),
                       ("runs/x", "net must be a ddimlab unet.UNet, got str$"),
                       (torch.nn.Linear(2, 2), "got Linear")):
        with pytest.raises(TypeError, match=match):
            checkpoint.save_diffusers_folder(net, tmp_path / "export", AB)
    assert list(tmp_path.iterdir()) == []


def test_api_round_24_random_mixture_names_its_sizes():
    """toy.random_mixture(d=2.0) failed with torch's "rand() received an invalid combination of arguments", d=-1 with
    "Trying to create tensor with negative dimension", K=0 naming `means`: its sizes are checked as image_like_mixture's."""
    for kw, match in ((dict(d=2.0), "d must be a positive integer, got 2.0"), (dict(d=-1), "d must be a positive integer"),
                      (dict(K=0), "K must be a positive integer, got 0"), (dict(K=2.5), "K must be a positive integer")):
        with pytest.raises(ValueError, match=match):
            toy.random_mixture(**kw)
    assert toy.random_mixture(d=np.int64(3), K=2).means.shape == (2, 3)


def test_api_round_24_a_generator_of_another_device_is_named_before_the_first_step():
    """A CPU generator for CUDA draws (x_T.cuda() with torch.Generator()) was torch's "Expected a 'cuda' device type for
    generator but found 'cpu'" at the first noise draw, after the first network call. The draws' device is checked
    where the generator is taken (here on the meta device, which torch draws on without a word, and a CUDA name)."""
    from ddimlab.checks import check_generator

    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"generator is on cpu and draws on meta need one of their own: "
                                         r"torch.Generator\(device='meta'\)"):
        samplers.noise_from(gen, torch.empty(2, 3, device="meta"))
    with pytest.raises(ValueError, match="generator is on cpu and draws on cuda:1 need one of their own"):
        check_generator(gen, "cuda:1")
    assert check_generator(gen, "cpu") is gen and check_generator(None, "cuda") is None
    assert samplers.noise_from(gen, torch.zeros(2, 3))(None, None).shape == (2, 3)


def test_api_round_24_latents_name_a_count_given_as_indices(tiny_unet):
    """generate.latents(seed, 3, shape), meaning three images, failed with "object of type 'int' has no len()", and an
    iterator of indices with "'list_iterator' has no len()"; sample_indices likewise. A count is named as such; an
    iterator gives the latents of its indices."""
    seq = schedule.timesteps(3, 1000)
    for indices in (3, np.int64(3), torch.tensor(3), "012", torch.tensor([[0, 1]])):
        with pytest.raises(TypeError, match=r"indices must be a list of image indices, e.g. range\(n\)"):
            generate.latents(0, indices, (1, 2, 2))
        with pytest.raises(TypeError, match="indices must be a list of image indices"):
            generate.sample_indices(tiny_unet, indices, (1, 8, 8), AB, seq)
    assert torch.equal(generate.latents(0, iter([2, 0]), (1, 2, 2)), generate.latents(0, [2, 0], (1, 2, 2)))
    assert torch.equal(generate.sample_indices(tiny_unet, iter([1]), (1, 8, 8), AB, seq, check_range=False),
                       generate.sample_indices(tiny_unet, [1], (1, 8, 8), AB, seq, check_range=False))


def test_api_round_24_eps_fn_refuses_integer_x_without_advising_an_integer_network(tiny_unet):
    """eps_fn(net)(x.long(), t) said "pass x.to(torch.float32) or convert the network with .to(torch.int64)", and for
    uint8 images ".to(torch.uint8)": no network can be converted so. Integer x is named as such, uint8 with the
    conversion of images to the model's range; a plain callable's too."""
    x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    for model in (tiny_unet, lambda x_, t: x_):
        e = checkpoint.eps_fn(model)
        with pytest.raises(TypeError, match=r"x must be floating point .*got torch.uint8; for 0..255 images: "
                                            r"data.to_model_range\(x\)"):
            e(x, 5)
        with pytest.raises(TypeError, match="x must be floating point .*got torch.int64$"):
            e(x.long(), 5)
    assert checkpoint.eps_fn(tiny_unet)(data.to_model_range(x), 5).shape == x.shape


def test_api_round_24_make_config_names_overrides_of_another_kind():
    """train.make_config("digits", "steps=5") failed with AttributeError: 'str' object has no attribute 'items', and a
    list holding a number with "argument of type 'int' is not iterable"; pretrained.digits_config (digits_model's) took
    only a dict, and a list failed with "dictionary update sequence element #0 has length 7; 2 is required"."""
    from ddimlab import train

    with pytest.raises(TypeError, match=r"overrides must be a dict \{key: value\} or a list of 'key=value' strings, got "
                                        r"str 'steps=5' \(as a list: \['steps=5'\]\)"):
        train.make_config("digits", "steps=5")
    with pytest.raises(TypeError, match="overrides must be a dict .* got int 5$"):
        train.make_config("digits", 5)
    with pytest.raises(ValueError, match="override 5 must look like key=value"):
        train.make_config("digits", [5])
    assert train.make_config("digits", ["steps=5"]).steps == train.make_config("digits", {"steps": 5}).steps == 5
    from ddimlab import pretrained
    for overrides in ("steps=5", 5):
        with pytest.raises(TypeError, match="overrides must be a dict {key: value} or a list of 'key=value' strings"):
            pretrained.digits_config(overrides=overrides)
    # a list, as make_config takes it ("dictionary update sequence element #0 has length 7"; then refused)
    assert pretrained.digits_config(overrides=["lr=0.001"]) == pretrained.digits_config(overrides={"lr": 1e-3})
    with pytest.raises(ValueError, match="overrides may not set seed"):
        pretrained.digits_config(overrides=["seed=3"])


def test_api_round_24_load_images_says_a_folder_is_missing_or_a_file(tmp_path):
    """fid.load_images (and compute_fid of a folder) said "no .png files in runs/samlpes" of a folder that is not
    there (a typo), and of a file; it names which."""
    plotting.save_png(torch.zeros(1, 4, 4, dtype=torch.uint8), tmp_path / "000000.png")
    with pytest.raises(FileNotFoundError, match="samlpes is not there: give the folder of the .png images"):
        fid.load_images(tmp_path / "samlpes")
    with pytest.raises(NotADirectoryError, match="000000.png is a file: give the folder"):
        fid.load_images(tmp_path / "000000.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png files in"):
        fid.load_images(tmp_path / "empty")
    assert fid.load_images(tmp_path).shape == (1, 1, 4, 4)


def test_api_round_24_audit_checks_the_first_tests_left_unpinned(tmp_path, tiny_unet, monkeypatch):
    """Mutation audit of round 24: decoder_nll's own decoder check, check_can_write's clean-up when the probe fails,
    lab rows without S or with no sampler rows, the 0..255 warning of sdedit at the caller's line, and
    reconstruction_errors naming a device the machine lacks. Each assertion failed with one of those checks removed."""
    from ddimlab import files, lab, tables
    from ddimlab.devices import DeviceError

    x0, zero = torch.full((1, 1, 2, 2), 2.5 / 127.5 - 1), torch.zeros(1, 1, 2, 2)      # k = 2.5: off the grid
    with pytest.raises(ValueError, match="unknown decoder 'bogus'"):          # was the Gaussian decoder, silently
        elbo.decoder_nll(x0, zero, zero, AB, decoder="bogus")
    with pytest.raises(ValueError, match="8-bit data scaled to"):
        elbo.decoder_nll(x0, zero, zero, AB, decoder="discretized")

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(OSError):
        files.check_can_write(tmp_path / "new" / "out")
    assert list(tmp_path.iterdir()) == []                 # the folders made for the probe go with it
    monkeypatch.undo()

    with pytest.raises(ValueError, match="a row lacks S"):
        lab.format_table([{"sampler": "eta=0", "mmd2": 0.0, "se": 0.1, "floor": 0.0, "within_floor": False, "ode_err": None}])
    with pytest.raises(ValueError, match="rows hold no sampler rows"):
        lab.format_table([{"sampler": lab.DATA, "S": 1, "mmd2": 0.0, "se": 0.1, "floor": 0.0, "within_floor": False,
                           "ode_err": None}])

    x255 = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 255
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        samplers.sdedit(lambda x, t: torch.zeros_like(x), x255, AB, schedule.timesteps(2, AB.numel())[:1],
                        generator=torch.Generator().manual_seed(0))
    assert [w.filename for w in seen if "0..255" in str(w.message)] == [__file__]

    with pytest.raises(DeviceError, match="cuda:99"):
        tables.reconstruction_errors(tiny_unet, torch.zeros(1, 1, 8, 8, dtype=torch.uint8), AB, [0, 1], device="cuda:99")


def test_twentyfifth_round_a_bare_network_as_eps_is_refused(toy_setup):
    """Round 25: a network passed to a sampler or solver as it is (ddim_sample(net, ...), not checkpoint.eps_fn(net))
    ran in its own mode, dropout on in train mode (two η = 0 runs from one x_T differed), and recorded an autograd graph
    through every step (x_0.requires_grad, memory growing with S); reference_solution fed scipy a random ODE and
    guided_eps took a network likewise. Each now names eps_fn, the one adapter, before any network call."""
    from ddimlab import unet

    torch.manual_seed(0)
    net = unet.UNet(in_ch=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=8, num_groups=4,
                    dropout=0.5).train()
    x_T, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((2,), 500)
    assert not torch.equal(net(x_T, t), net(x_T, t)) and net(x_T, t).requires_grad      # the hazard, in torch's terms
    seq, eps = schedule.timesteps(3, 1000, "trailing"), toy_setup[1]

    class Exact(torch.nn.Module):
        def forward(self, x, t):
            return eps(x, t)

    # reference_solution with a smooth ε, so that one which stopped refusing returns at once (DID NOT RAISE): with this
    # UNet it would integrate for minutes, its rtol 1e-10 far below dropout's noise and float32's rounding alike
    with pytest.raises(TypeError, match=r"eps is a network \(Exact\): pass checkpoint.eps_fn\(net\)"):
        ode.reference_solution(Exact(), toy_setup[2], AB, 999, 998)
    match = r"eps is a network \(UNet\): pass checkpoint.eps_fn\(net\), which calls it without gradients"
    for run in (lambda: samplers.ddim_sample(net, x_T, AB, seq), lambda: samplers.ddpm_sample(net, x_T, AB, seq=seq),
                lambda: samplers.ddim_invert(net, x_T, AB, seq), lambda: ode.euler(net, x_T, AB, seq),
                lambda: ode.heun(net, x_T, AB, seq), lambda: ode.heun_invert(net, x_T, AB, seq)):
        with pytest.raises(TypeError, match=match):
            run()
    with pytest.raises(TypeError, match=r"guided_eps: eps_cond is a network \(UNet\)"):
        samplers.guided_eps(eps, net, 2.0)
    runs = [samplers.ddim_sample(checkpoint.eps_fn(net), x_T, AB, seq) for _ in range(2)]
    assert torch.equal(*runs) and not runs[0].requires_grad and net.training          # through eps_fn: as documented


def test_twentyfifth_round_fid_reads_features_as_numbers_and_names_channels_last_images():
    """Round 25: compute_fid cast a feature_fn's answer with .double(), so complex features lost their imaginary part
    (FD 2173.9, torch's warning only) and bool ones were read as 1 (FD 0.105), where fid_from_features refuses both.
    Channels-last images (N×H×W×C) against N×C×H×W ones were "images of two sizes ... (data.resize)" and alone a conv
    error of 8 channels; grey against RGB was told to resize. The features' FD still equals scipy's sqrtm formula."""
    import scipy.linalg

    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=g) for _ in range(2))
    feats = lambda x: x.flatten(1)[:, :4].double()              # noqa: E731
    for wrong, kind in ((lambda x: feats(x).to(torch.complex64), "complex64"), (lambda x: feats(x) > 128, "bool")):
        with pytest.raises(TypeError, match=f"feature_fn's features must hold real numbers .*got torch.{kind}"):
            fid.compute_fid(a, b, wrong)
    f1, f2 = feats(a).numpy(), feats(b).numpy()
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    ref = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(c1 + c2) - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    assert fid.compute_fid(a, b, lambda x: feats(x).half()) == pytest.approx(ref, rel=1e-9)   # 0..255 ints: exact in fp16
    fn = fid.random_features()
    for samples in (a.permute(0, 2, 3, 1), a.permute(0, 2, 3, 1).numpy()):
        with pytest.raises(ValueError, match=r"got \(20, 8, 8, 3\); channels last \(N, H, W, C\)\? pass "
                                             r"x.permute\(0, 3, 1, 2\)"):
            fid.compute_fid(samples, b, fn)
    with pytest.raises(ValueError, match="channels last"):
        plotting.image_grid(torch.zeros(2, 4, 4, 3))
    with pytest.raises(ValueError, match=r"with C in \(1, 3\) \(grey or RGB\), got \(2, 2, 4, 4\)$"):
        plotting.image_grid(torch.zeros(2, 2, 4, 4))                    # no hint where the last size is no C either
    with pytest.raises(ValueError, match=r"two channel counts .* grey as RGB by x.expand\(-1, 3, -1, -1\)"):
        fid.compute_fid(a[:, :1], b, fn)


def test_twentyfifth_round_eps_fn_names_a_model_that_returns_no_tensor():
    """Round 25: checkpoint.eps_fn of a model returning a tuple (a diffusers UNet2DModel called with return_dict=False),
    a plain dict, a list or a numpy array failed with AttributeError: "'tuple' object has no attribute 'to'" (in a
    sampler, at its first step). An output with .sample (diffusers' default) is still read."""
    import types

    x, t = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.full((2,), 5)
    for out, kind in (((x,), r"tuple \(a diffusers model gives one with return_dict=False"), ({"sample": x}, "dict"),
                      ([x], "list"), (x.numpy(), "ndarray")):
        with pytest.raises(TypeError, match=r"model\(x, t\) must return a tensor \(or an output with .sample, as "
                                            r"diffusers' UNet2DModel\), got " + kind):
            samplers.ddim_sample(checkpoint.eps_fn(lambda x_, t_, out=out: out), x, AB, [5, 0])
    assert torch.equal(checkpoint.eps_fn(lambda x_, t_: types.SimpleNamespace(sample=-x_))(x, t), -x)


def test_eps_fn_refuses_an_x_that_requires_grad_rather_than_drop_the_networks_gradient(tiny_unet):
    """eps_fn calls the network under no_grad, so ddim_sample(eps_fn(net), x_T.requires_grad_()) gave x_0 a gradient
    through x_T's own term only, ∂ε/∂x missing: silently wrong. It is now a ValueError naming eps_fn; the way its message
    gives, the network as a plain function, has the gradient that central differences of the sampler have."""
    net = copy.deepcopy(tiny_unet).double()
    g = torch.Generator().manual_seed(0)
    x_T, v = (torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    seq = schedule.timesteps(2, 1000, "trailing")
    with pytest.raises(ValueError, match=r"x requires grad, but checkpoint.eps_fn computes no gradients .* "
                                         r"lambda x, t: net\(x, t\), with net.eval\(\)"):
        samplers.ddim_sample(checkpoint.eps_fn(net), x_T.clone().requires_grad_(), AB, seq)
    with torch.no_grad():                           # no gradient asked for: a leaf that requires grad is any x
        assert checkpoint.eps_fn(net)(x_T.clone().requires_grad_(), 500).shape == x_T.shape
    x = x_T.clone().requires_grad_()
    (grad,) = torch.autograd.grad(samplers.ddim_sample(lambda x_, t_: net(x_, t_), x, AB, seq).mul(v).sum(), x)
    h, f = 1e-5, lambda x_: float(samplers.ddim_sample(checkpoint.eps_fn(net), x_, AB, seq).mul(v).sum())  # noqa: E731
    assert float(grad.mul(v).sum()) == pytest.approx((f(x_T + h * v) - f(x_T - h * v)) / (2 * h), rel=1e-6)


def test_round_26_an_eta_or_w_that_requires_grad_is_refused_not_read_as_a_number(toy_setup):
    """ddim_sample(eps, x_T.requires_grad_(), ab, seq, eta=torch.tensor(0.5, requires_grad=True)) read η as a float: x_T
    got its gradient and η's .grad stayed None without a word, though the output does depend on η (central differences
    below); guided_eps's w the same. Both are now a ValueError naming the argument; without autograd (no_grad) the
    tensor is taken as its value."""
    _, eps, x_T, seq = toy_setup
    x = x_T[:2]

    def out(eta):
        return samplers.ddim_sample(eps, x, AB, seq, eta=eta, generator=torch.Generator().manual_seed(0))

    h = 1e-4
    assert float((out(0.5 + h) - out(0.5 - h)).abs().max()) / (2 * h) > 0.01       # a gradient there was to miss
    eta = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    for call in (lambda: out(eta), lambda: diffusion.ddim_sigma(AB[500], AB[400], eta),
                 lambda: samplers.sdedit(eps, x, AB, seq[3:], eta=eta, generator=torch.Generator().manual_seed(0))):
        with pytest.raises(ValueError, match=r"^eta requires grad, but it is read as a plain number, so no gradient would "
                                             r"reach it; pass eta.item\(\) \(or eta.detach\(\)\)$"):
            call()
    with pytest.raises(ValueError, match=r"^w requires grad, .* pass w.item\(\)"):
        samplers.guided_eps(eps, eps, torch.tensor(2.0, requires_grad=True))
    with torch.no_grad():
        assert torch.equal(out(eta), out(0.5))
    assert torch.equal(out(eta.detach()), out(0.5))


def test_round_26_bfloat16_features_and_moments_are_read_as_their_values():
    """A feature network under bf16 autocast returns bfloat16 features, which compute_fid and feature_stats stopped on
    with numpy's "Got unsupported ScalarType BFloat16" (frechet_distance too, for a bfloat16 mean): they are now widened
    to float64, exactly. FD(N(μ, I), N(0, I)) = |μ|² (6.25 for μ = (1.5, -2), both exact in bfloat16); the FID of bf16
    features is the FID of the same values in float64."""
    mu = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    assert quality.frechet_distance(mu, torch.eye(2).bfloat16(), torch.zeros(2), torch.eye(2)) == pytest.approx(6.25,
                                                                                                                 abs=1e-12)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=g) for _ in range(2))
    features = fid.random_features(in_ch=1, dim=4)
    half = fid.compute_fid(a, b, lambda x: features(x).bfloat16())
    assert half == fid.compute_fid(a, b, lambda x: features(x).bfloat16().double()) > 0


def test_round_26_too_few_digit_samples_are_said_as_such():
    """score_digits of one sample said "features must be an (N, D) array with N >= 2 samples, got shape (1, 64)", of
    features the caller never passed; classify of none "must have shape (N, 1, R, R) ..., got (0, 1, 16, 16)", the form
    it has. Both now say how many samples came and how many are needed."""
    x = data.to_model_range(data.load_digits(16)[0][:2]).float()
    for f in (quality.score_digits, quality.digits_fd, quality.digits_fd_se, lambda s: quality.paired_difference(s, s)):
        with pytest.raises(ValueError, match=r"^got 1 digit sample of shape \(1, 1, 16, 16\); the Fréchet distance needs 2 "
                                             r"or more \(a mean and a covariance\)$"):
            f(x[:1])
    with pytest.raises(ValueError, match=r"^got 0 digit samples of shape \(0, 1, 16, 16\); give one or more$"):
        quality.classify(x[:0])
    assert quality.classify(x[:1])[0].shape == (1,)


def test_round_26_a_seq_out_of_order_or_with_repeats_is_shown(toy_setup):
    """Every sampler and solver said only "timesteps must be strictly decreasing (sample from noise to data)" for a seq
    in increasing order (data to noise, as some code writes it) or with a step listed twice (the official quad grid's
    repeats): now the steps and what is wrong with them are named, and an increasing seq is told to be reversed."""
    _, eps, x_T, _ = toy_setup
    cases = {(0, 500, 999): r"got \[0, 500, 999\]: it increases throughout: pass it reversed \(seq.flip\(0\) for a tensor\)$",
             (999, 500, 500, 0): r"got \[999, 500, 500, 0\]: t = 500 is listed twice; give each step once$",
             (999, 200, 600, 0): r"got \[999, 200, 600, 0\]: t = 600 comes after t = 200$"}
    inverting = r"as the samplers take them: an inversion visits them in reverse, from data to noise"    # since round 30
    for seq, why in cases.items():
        for run, order in ((lambda: samplers.ddim_sample(eps, x_T, AB, list(seq)), "sample from noise to data"),
                           (lambda: ode.solve("heun", eps, x_T, AB, seq), "sample from noise to data"),
                           (lambda: samplers.ddim_invert(eps, x_T, AB, torch.tensor(seq)), inverting),
                           (lambda: ode.heun_invert(eps, x_T, AB, seq), inverting)):
            with pytest.raises(ValueError, match=rf"^timesteps must be strictly decreasing \({order}\), " + why):
                run()
    assert torch.equal(samplers.ddim_sample(eps, x_T, AB, torch.tensor([0, 500, 999]).flip(0)),
                       samplers.ddim_sample(eps, x_T, AB, [999, 500, 0]))


def test_round_26_a_compiled_or_data_parallel_network_resumes_its_samples(tmp_path, tiny_unet):
    """generate_samples resumed with torch.compile(net) (or nn.DataParallel(net)), the same weights under '_orig_mod.'
    ('module.') names, hashed them as another model: "holds images made with other settings (another model); ... delete
    that folder", hours of samples to throw away. The wrappers are now looked through (checkpoint.unwrapped); the resumed
    folder holds the images an uninterrupted run with the plain network writes, and the recorded shape is read too."""
    wrapped = [torch.compile(tiny_unet, backend="eager"), torch.nn.DataParallel(tiny_unet)]
    for net in wrapped:
        assert checkpoint.weights_sha256(net) == checkpoint.weights_sha256(checkpoint.eps_fn(net)) == \
            checkpoint.weights_sha256(tiny_unet)
        assert checkpoint.image_shape(net) == (1, 8, 8)
    kw = dict(S=2, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", samplers.OutOfRangeWarning)        # untrained weights
        generate.generate_samples(tiny_unet, tmp_path / "straight", 3, **kw)
        generate.generate_samples(tiny_unet, tmp_path / "resumed", 2, **kw)
        assert generate.generate_samples(wrapped[0], tmp_path / "resumed", 2, **kw) == []     # (compiling takes seconds)
        assert generate.generate_samples(checkpoint.eps_fn(wrapped[1]), tmp_path / "resumed", 3, **kw) == [2]
    assert torch.equal(fid.load_images(tmp_path / "resumed"), fid.load_images(tmp_path / "straight"))


def test_round_26_digits_config_refuses_steps_given_twice():
    """digits_config(steps=200, overrides={"steps": 100}) trained 200 steps without a word (the argument won); it is now
    a ValueError naming both, and either one alone counts."""
    from ddimlab import pretrained

    for overrides in ({"steps": 100}, ["steps=100"]):
        with pytest.raises(ValueError, match=r"^steps is given twice, as steps=200 and in overrides \('?100'?\); give one$"):
            pretrained.digits_config(steps=200, overrides=overrides)
        assert pretrained.digits_config(overrides=overrides).steps == 100
    assert pretrained.digits_config(steps=200).steps == 200


def test_round_26_a_half_precision_table_is_named_by_the_sampling_and_table_functions(tiny_unet, tmp_path):
    """samplers name a float16 ᾱ table (round 24), but generate.sample_indices, tables.score_grid, reproduce_table1 and
    _table2 and reconstruction_errors cast it to float64 unchecked: the linear schedule's ᾱ_0 = 0.9999, rounded to 1,
    was refused as "alpha_bar values must lie in (0, 1) ..., got 1.0", a value the caller never wrote, and a table that
    rounds to no 1 was used as rounded (ᾱ off by up to 2.4e-4, float16's half step at 0.5) without a word. Each now
    says the dtype (schedule.validate_alpha_bar)."""
    from ddimlab import tables

    half = r"alpha_bar values in torch.float16 round the steps near t = 0 to 1"
    coarse = torch.linspace(0.9, 0.01, 10, dtype=torch.float64)
    assert float((coarse.half().double() - coarse).abs().max()) > 1e-4                # what would be used instead
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    for table in (AB.half(), coarse.half()):
        for call in (lambda: generate.sample_indices(tiny_unet, [0], (1, 8, 8), table, [9, 4]),
                     lambda: tables.reconstruction_errors(tiny_unet, images, table, [9, 4]),
                     lambda: tables.score_grid(tiny_unet, lambda x: {}, S_list=(2,), eta_list=(0.0,), n=2, alpha_bar=table),
                     lambda: tables.reproduce_table2(tiny_unet, tmp_path / "t2", images=images, S_list=(2,),
                                                     alpha_bar=table),
                     lambda: tables.reproduce_table1(tiny_unet, tmp_path / "t1", S_list=(2,), eta_list=(0.0,), n_samples=2,
                                                     alpha_bar=table)):
            with pytest.raises(TypeError, match=half):
                call()
    assert not any(tmp_path.iterdir())


def test_round_26_make_config_refuses_out_none():
    """make_config("digits", {"out": None}) was accepted (its check skipped None paths, as data_root=None is the cache), and
    train then stopped with "expected str, bytes or os.PathLike object, not NoneType"; it is now refused at once, naming
    out, while data_root=None still means the cache."""
    from ddimlab import train

    with pytest.raises(ValueError, match=r"^out must be a folder's path \(a str or pathlib.Path\), got None$"):
        train.make_config("digits", {"out": None})
    assert train.make_config("digits", {"data_root": None}).data_root is None


def test_round_28_ode_tolerances_as_tensors_and_a_failed_solve_are_said():
    """Tolerances given as a 0-d tensor or a numpy scalar passed the checks, then failed inside scipy with "any() received
    an invalid combination of arguments"; a solve that could not meet its tolerances (atol = 1e-300: "Required step size
    is less than spacing between numbers") was a RuntimeError that named neither, and a traceback in the scripts. Data
    N(0, S² I), S = 1/2, with its exact ε* (one component of toy's mixtures): the ODE maps x_T to x_T S/√(ᾱ_T S² + 1 − ᾱ_T),
    and log p is scipy's, to 1e-4 nats (the N(0, I) prior is off q(x_T) by less)."""
    from scipy import stats

    S, x = 0.5, torch.tensor([[0.1, -0.2], [0.3, 0.0]], dtype=torch.float64)
    eps = toy.exact_eps(toy.GaussianMixture([1.0], torch.zeros(1, 2), S ** 2 * torch.eye(2)[None]), AB)
    got = ode.log_likelihood(eps, x, AB, rtol=torch.tensor(1e-5), atol=np.float64(1e-5))
    torch.testing.assert_close(got, torch.from_numpy(stats.norm.logpdf(x.numpy(), 0, S).sum(1)), rtol=0, atol=1e-4)
    x_0 = ode.reference_solution(eps, x, AB, 999, rtol=torch.tensor(1e-8), atol=np.float32(1e-8))
    torch.testing.assert_close(x_0, x * S / math.sqrt(float(AB[-1]) * S ** 2 + 1 - float(AB[-1])), rtol=1e-6, atol=0)
    explodes = lambda x, t: 1e200 * x     # noqa: E731  x̄ overflows in the first steps (atol = 1e-300 is refused since round 30)
    with pytest.raises(ValueError, match=r"solve_ivp could not meet rtol = 0.001 and atol = 0.001 \(Required step size"), \
            np.errstate(all="ignore"):
        ode.log_likelihood(explodes, x, AB, rtol=1e-3, atol=1e-3)


def test_round_28_a_blank_cache_folder_is_refused_not_read_as_the_current_one(tmp_path, monkeypatch):
    """cache_dir="" (or `--cache "$UNSET"` in benchmarks/) was the current folder to pathlib: digits_model trained its model
    into ./models there, beside the cache's copy, official_ddpm_file would download 143 MB into ./checkpoints, and
    load_classifier and load_cifar10 wrote and read there; DDIMLAB_CACHE=' ' was refused already. Now a ValueError naming
    the argument, before anything is made."""
    from ddimlab import pretrained

    monkeypatch.chdir(tmp_path)
    calls = {"cache_dir": (lambda: pretrained.models_dir(""), lambda: pretrained.digits_model(1, cache_dir=" "),
                           lambda: checkpoint.official_ddpm_file("")),
             "directory": (lambda: quality.load_classifier(directory=""),), "root": (lambda: data.load_cifar10(root="\t"),)}
    for name, of_name in calls.items():
        for call in of_name:
            with pytest.raises(ValueError, match=rf"^{name}='[^']*' is blank, which would be the current folder: pass a folder"):
                call()
    assert list(tmp_path.iterdir()) == []


def test_round_29_an_ode_tolerance_past_where_the_step_control_holds_is_refused():
    """reference_solution and log_likelihood took any rtol > 0: at 3e-2 the 'reference' x_0 of this mixture was off by an
    RMS of 3.6 (its data's is 0.5), and `ode_bits.py --rtol 0.999` ran. Now rtol above ode.TOL_CEILING = 0.01 is refused,
    naming it; at the ceiling itself x_0 is still within 0.05 RMS of a tight solve (measured 8.5e-3)."""
    mix = toy.default_mixture(2)
    eps, x_T = toy.exact_eps(mix, AB), torch.randn(32, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for call in (lambda rtol: ode.reference_solution(eps, x_T, AB, 999, rtol=rtol, atol=1e-3),
                 lambda rtol: ode.log_likelihood(eps, x_T, AB, rtol=rtol, atol=1e-3)):
        for rtol in (0.03, 0.999, 5.0):
            with pytest.raises(ValueError, match=rf"^rtol = {rtol:g} is coarser than 0.01, past which solve_ivp's error "
                                                 r"control breaks down .*: pass rtol <= 0.01$"):
                call(rtol)
    tight = ode.reference_solution(eps, x_T, AB, 999, rtol=1e-9, atol=1e-9)
    at_ceiling = ode.reference_solution(eps, x_T, AB, 999, rtol=ode.TOL_CEILING, atol=ode.TOL_CEILING)
    assert float((at_ceiling - tight).pow(2).mean().sqrt()) < 0.05


def test_round_30_an_atol_the_dtype_cannot_resolve_or_past_the_ceiling_is_refused():
    """Round 29's leftover: atol had no rule but > 0. atol = 1e-300 leaves solve_ivp relative control alone, which failed
    on a 16-D mixture's log_likelihood ("Required step size is less than spacing") after all its work; atol = 0.5 gave
    a 'reference' x_0 off by an RMS of 0.83 (data 0.3). atol now takes rtol's range, rtol_floor(dtype) to TOL_CEILING,
    named as atol, in x's dtype and in the dtype eps returns; at the floor and at the ceiling it is taken. For float64 the
    floor of both is solve_ivp's own, 100 eps = 2.2e-14: rtol 1e-15 was taken, and scipy warned and used 2.2e-14."""
    mix = toy.default_mixture(2)
    eps, x_T = toy.exact_eps(mix, AB), torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for call in (lambda **tol: ode.reference_solution(eps, x_T, AB, 999, **tol),
                 lambda **tol: ode.log_likelihood(eps, x_T, AB, **tol)):
        for atol in (0.5, 0.0101):
            with pytest.raises(ValueError, match=rf"^atol = {atol:g} is coarser than 0.01, .*: pass atol <= 0.01$"):
                call(rtol=1e-3, atol=atol)
        for atol, dtype, floor in ((1e-300, torch.float64, "2.2e-14$"), (1e-10, torch.float32, "6e-09, or x_T in float64$")):
            with pytest.raises(ValueError, match=rf"^atol = {atol:g} is finer than x_T's {str(dtype)[6:]} can give .*: "
                                                 rf"pass atol >= {floor}"):
                (lambda **tol: ode.reference_solution(eps, x_T.to(dtype), AB, 999, **tol))(rtol=1e-3, atol=atol)
    as_float32 = lambda x, t: eps(x, t).float()     # noqa: E731  a float32 network behind a lambda, x in float64
    with pytest.raises(ValueError, match=r"^atol = 1e-10 is finer than the float32 that eps\(x, t\) returns can give"):
        ode.reference_solution(as_float32, x_T, AB, 999, rtol=1e-6, atol=1e-10)
    ode.reference_solution(eps, x_T.float(), AB, 999, rtol=1e-6, atol=ode.rtol_floor(torch.float32))
    with warnings.catch_warnings():      # below 100 eps scipy warned ("rtol is too small") and ran at 2.2e-14 instead
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"^rtol = 1e-15 is finer than x_T's float64 can give .*: pass rtol >= 2.2e-14$"):
            ode.reference_solution(eps, x_T, AB, 999, rtol=1e-15, atol=1e-10)
        ode.reference_solution(eps, x_T, AB, 999, rtol=ode.rtol_floor(torch.float64), atol=1e-10)
    ode.reference_solution(eps, x_T, AB, 999, rtol=1e-3, atol=ode.TOL_CEILING)


def test_round_30_unipc_B_refuses_a_step_that_is_not_a_positive_number():
    """ode.unipc_B took any h: h <= 0 gave B(h) <= 0 (h = -1: -1.72 for bh2), NaN gave NaN, True was read as 1 by bh2 and
    returned as True by bh1, a 0-d tensor came back a tensor from bh1, and "0.5" was a TypeError from '-' (bh2) or came
    back a string (bh1). unipc_coefficients' rule, one line naming h; a 0-d tensor is read as its value."""
    for variant in ode.UNIPC_VARIANTS:
        for h in (0, -1.0, float("nan"), math.inf, True, "0.5", None):
            with pytest.raises(ValueError, match=r"^h must be a finite number > 0 \(the step in lambda"):
                ode.unipc_B(h, variant)
    assert ode.unipc_B(torch.tensor(0.5), "bh1") == 0.5 and type(ode.unipc_B(torch.tensor(0.5), "bh1")) is float
    assert math.isclose(ode.unipc_B(np.float32(0.5), "bh2"), 1 - math.exp(-0.5), rel_tol=1e-15)


def test_round_30_an_inversion_given_its_steps_increasing_is_told_they_go_as_the_samplers_take_them():
    """ddim_invert and heun_invert, which run from data to noise, were told of an increasing seq (their natural order)
    "timesteps must be strictly decreasing (sample from noise to data)": they take seq as the samplers do and visit it
    in reverse, which they now say; the samplers' message is unchanged. Given reversed, the seq inverts, and `heun`
    on it decodes back to x0 (exact scores, 20 steps: within 0.05 RMS of data with RMS 0.5)."""
    mix = toy.default_mixture(2)
    eps, x0 = toy.exact_eps(mix, AB), mix.sample(8, torch.Generator().manual_seed(0)).double()
    up = list(range(0, 1000, 50))
    for invert in (samplers.ddim_invert, ode.heun_invert):
        with pytest.raises(ValueError, match=r"^timesteps must be strictly decreasing \(as the samplers take them: an "
                                             r"inversion visits them in reverse, from data to noise\), got 20 steps: it "
                                             r"increases throughout: pass it reversed"):
            invert(eps, x0, AB, up)
    with pytest.raises(ValueError, match=r"^timesteps must be strictly decreasing \(sample from noise to data\)"):
        ode.heun(eps, x0, AB, up)
    back = ode.heun(eps, ode.heun_invert(eps, x0, AB, up[::-1]), AB, up[::-1])
    assert float((back - x0).pow(2).mean().sqrt()) < 0.05


def test_round_30_step_rules_with_t_min_above_t_max_name_them():
    """lambda_timesteps(5, AB, t_max=10, t_min=20) said "number of steps S must be an integer in 1..1", blaming S for
    the span; now t_min and t_max are named. A span of one step still takes S = 1 only, and the grid runs t_max..t_min."""
    for rule in (ode.lambda_timesteps, ode.karras_timesteps):
        for S in (1, 5):
            with pytest.raises(ValueError, match=r"^t_min must not exceed t_max \(the steps run from t_max down to t_min\), "
                                                 r"got t_min=20, t_max=10$"):
                rule(S, AB, t_max=10, t_min=20)
        assert rule(1, AB, t_max=7, t_min=7).tolist() == [7]
        with pytest.raises(ValueError, match=r"^number of steps S must be an integer in 1\.\.1 \(the distinct steps"):
            rule(2, AB, t_max=7, t_min=7)
        assert rule(4, AB, t_max=13, t_min=10).tolist() == [13, 12, 11, 10]


def test_round_29_a_step_sequence_that_is_none_or_not_numbers_is_named():
    """seq=None reached heun_invert and ddim_invert as None ("'NoneType' object has no attribute 'tolist'") and every
    other sampler and solver as torch's "can't convert np.ndarray of type numpy.object_"; so did a set or a dict of steps
    (`check_args` passed None on, for the functions that take no seq: they now call `check_x`)."""
    mix = toy.default_mixture(2)
    eps, x = toy.exact_eps(mix, AB), mix.sample(4, torch.Generator().manual_seed(0))
    for sampler in (ode.heun_invert, samplers.ddim_invert, samplers.ddim_sample, ode.heun, ode.unipc_2):
        with pytest.raises(TypeError, match=r"^timesteps \(seq\) must be a 1-D sequence of integer steps, e\.g\. "
                                            r"schedule\.timesteps\(S, T\), got None$"):
            sampler(eps, x, AB, None)
        for seq, shown in (({999, 0}, r"set \(\{0, 999\}\)"), ([2 ** 70, 0], r"list \(\[1180591620717411303424, 0\]\)")):
            with pytest.raises(TypeError, match=r"^steps t must be a number or a sequence of numbers \(integers within "
                                                rf"int64\), got {shown}$"):
                sampler(eps, x, AB, seq)


@pytest.mark.parametrize("failing", ["diffusion_pytorch_model.safetensors", "scheduler_config.json"])
def test_round_32_a_diffusers_export_that_fails_halfway_leaves_the_earlier_one_whole(tmp_path, monkeypatch, failing):
    """`save_diffusers_folder` wrote config.json, the weights and the scheduler one by one: a full disk at the scheduler
    left the new weights with the earlier export's schedule (loaded without a word), and in a new folder a config.json
    (and weights) that no loader could use. They are one set now: the earlier export stays byte for byte, a new folder
    goes again."""
    import errno

    from ddimlab import files

    first, second = _tiny_net(), _tiny_net()
    with torch.no_grad():
        next(second.parameters()).add_(1.0)
    export = checkpoint.save_diffusers_folder(first, tmp_path / "export", AB)
    before = {p.relative_to(export): p.read_bytes() for p in export.rglob("*") if p.is_file()}
    real = files.atomic_write

    def full_disk(path, write, **kw):
        if Path(path).name == failing:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write, **kw)
    monkeypatch.setattr(checkpoint, "atomic_write", full_disk)
    for folder, made in ((export, before), (tmp_path / "new", None)):
        with pytest.raises(OSError, match="No space left"):
            checkpoint.save_diffusers_folder(second, folder, schedule.make_alpha_bar("cosine", 1000))
        if made is None:
            assert not folder.exists()
        else:
            assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == made
    net, abar = checkpoint.load_model(export)
    torch.testing.assert_close(abar.double(), AB.double(), rtol=1e-6, atol=0)     # the linear schedule, not the cosine
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), first.state_dict().values()))


def test_round_33_remove_stale_temps_deletes_only_atomic_writes_temporary_files(tmp_path):
    """`files.remove_stale_temps(folder, "*")` deleted every file older than a minute in the folder, then stopped with
    IsADirectoryError at the first sub-folder. It takes only patterns of atomic_write's temporary names now
    (".NAME.*.tmp"), deletes only plain files named as mkstemp names them, and never a folder or a link."""
    import os
    import time

    from ddimlab import files

    temp = tmp_path / ".000001.png.abcd_123.tmp"                   # what atomic_write leaves when killed
    kept = [tmp_path / "notes.txt", tmp_path / ".notes.tmp", tmp_path / ".a.png.short.tmp", tmp_path / "sub",
            tmp_path / ".b.png.abcdefgh.tmp", tmp_path / ".c.png.abcdefgh.tmp"]
    for p in [temp, *kept[:3]]:
        p.write_text("mine")
    kept[3].mkdir()
    kept[4].mkdir()                                                 # a folder with a temporary file's name
    kept[5].symlink_to(kept[0])
    for p in [temp, *kept]:
        os.utime(p, (time.time() - 3600,) * 2, follow_symlinks=False)
    for pattern in ("*", ".*.tmp", "*.tmp", ".*", "", ".png.tmp"):
        with pytest.raises(ValueError, match=r"^remove_stale_temps deletes only the temporary files atomic_write leaves "
                                             r"\(\.NAME\.XXXXXXXX\.tmp\): pattern must be '\.' \+ a glob of the target's "
                                             rf"name \+ '\.\*\.tmp', e\.g\. '\.\*\.png\.\*\.tmp', got '{re.escape(pattern)}'$"):
            files.remove_stale_temps(tmp_path, pattern)
    assert all(os.path.lexists(p) for p in [temp, *kept])
    files.remove_stale_temps(tmp_path, ".*.png.*.tmp")
    assert not temp.exists() and all(os.path.lexists(p) for p in kept) and kept[0].read_text() == "mine"


def test_round_33_the_solvers_take_ddims_steps_on_the_fewest_steps():
    """What `cli.DDIM_UP_TO` (refused there by sample, invert, interpolate) rests on, on a mixture's exact scores: on up
    to DDIM_UP_TO[name] steps each solver returns DDIM's (η = 0) x_0 to 1e-12 (heun, dpm_solver_2, deis_tab on 1 step;
    the λ multistep solvers on 2 as well, their last step returning x̂_0), and on one step more it is another method
    (over 1e-5 from DDIM's); euler is DDIM at every S; ipndm's one step makes no network call (refused apart)."""
    from ddimlab import cli

    mix = toy.default_mixture(2)
    eps, x_T = toy.exact_eps(mix, AB), torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for spacing in ("trailing", "uniform"):
        for S in (1, 2, 3):
            seq = schedule.timesteps(S, 1000, spacing)
            ddim = samplers.ddim_sample(eps, x_T, AB, seq)
            for name in ode.SOLVERS:
                if name in ("ipndm", "ipndm_vs") and S == 1:
                    assert ode.nfe(name, 1) == 0
                    continue
                gap = float((ode.solve(name, eps, x_T, AB, seq) - ddim).abs().max())
                is_ddim = name == "euler" or S <= cli.DDIM_UP_TO.get(name, 0)
                assert (gap < 1e-12 if is_ddim else gap > 1e-5), (name, spacing, S, gap)
    assert set(cli.DDIM_UP_TO) == set(ode.SOLVERS) - {"euler", "ipndm", "ipndm_vs"}


def test_round_33_a_beta_schedule_given_its_ends_swapped_is_refused():
    """beta_schedule('linear', beta_start=0.02, beta_end=1e-4) gave a falling β that validate_alpha_bar accepts: ᾱ
    still decreases, and ends where DDPM's does (Σβ is the same: ᾱ_{T−1} = 4.04e-5 both ways), so no later check
    could say it. The docstring (and DDPM §4) has β rise from beta_start to beta_end: swapped ends are refused in one
    line, for linear and quadratic; equal ends (a constant β) are still taken, and a falling β as a table of betas."""
    swapped = schedule.alpha_bar(torch.linspace(0.02, 1e-4, 1000, dtype=torch.float64))
    torch.testing.assert_close(schedule.validate_alpha_bar(swapped)[-1], AB[-1], rtol=1e-9, atol=0)    # what hid it
    for name in ("linear", "quadratic"):
        with pytest.raises(ValueError, match=r"^beta_start must not exceed beta_end: beta rises with t, .*got 0\.02 and "
                                             r"0\.0001; swap them"):
            schedule.beta_schedule(name, 1000, 0.02, 1e-4)
        torch.testing.assert_close(schedule.beta_schedule(name, 10, 0.01, 0.01), torch.full((10,), 0.01, dtype=torch.float64))
    assert float(schedule.snr(1.0)) == math.inf        # ᾱ_{-1} = 1, clean data: inf as documented, kept (λ = ∞ there)


def test_round_34_train_calls_on_start_once_the_run_goes_ahead(tmp_path):
    """`train(on_start=...)` (the command line's warmup note, said only once a run goes ahead): called on the main
    process with the starting step, after the folder's checks (not for a folder that holds a run without resume, nor
    for a resume with nothing left to train); a value that is not a function is a TypeError before anything is made."""
    from ddimlab import train

    tiny = {"steps": 2, "ch": 8, "ch_mult": (1,), "attn_resolutions": (), "num_groups": 4, "batch_size": 16,
            "n_samples": 0, "progress": False, "warmup": 1, "out": str(tmp_path / "run")}
    with pytest.raises(TypeError, match="on_start must be a function of the starting step, or None, got 'note'"):
        train.train(train.make_config("digits", tiny), on_start="note")
    assert not (tmp_path / "run").exists()
    started = []
    train.train(train.make_config("digits", tiny), on_start=started.append)
    with pytest.raises(train.RunExistsError):
        train.train(train.make_config("digits", tiny), on_start=started.append)
    train.train(train.make_config("digits", tiny), resume=True, on_start=started.append)          # at step 2 of 2
    train.train(train.make_config("digits", {**tiny, "steps": 3}), resume=True, on_start=started.append)
    assert started == [0, 2]


def test_round_34_an_empty_grid_or_too_few_samples_for_a_table_are_refused_first(tmp_path):
    """tables.reproduce_table1(S_list=[]) and eta_list=[] (and reproduce_table2's S_list=[]) failed with IndexError
    "list index out of range"; n_samples=1 sampled its cell and then failed in the Fréchet distance ("features must be an
    (N, D) array with N >= 2"), n_samples=2.5 was "'float' object cannot be interpreted as an integer" and 0 named "n".
    Each is now a ValueError naming the argument, before any sample or folder is made."""
    from ddimlab import tables

    zero = lambda x, t: torch.zeros_like(x)                                            # noqa: E731
    common = dict(shape=(3, 8, 8), feature_fn=fid.random_features(), reference=torch.rand(8, 3, 8, 8) * 2 - 1)
    for kw, needle in ((dict(S_list=[]), r"S_list must list at least one value, e.g. \(10, 20\); got none"),
                       (dict(eta_list=[]), r"eta_list must list at least one value, e.g. \(0.0, 1.0\); got none"),
                       (dict(n_samples=1), r"n_samples must be an integer >= 2 \(a Fréchet distance needs a mean and a "
                                           r"covariance\), got 1"),
                       (dict(n_samples=2.5), "n_samples must be an integer >= 2 .*got 2.5"),
                       (dict(n_samples=0), "n_samples must be .*got 0")):
        with pytest.raises(ValueError, match=needle):
            tables.reproduce_table1(zero, tmp_path / "t1", **{"n_samples": 2, "S_list": [2], "eta_list": [0.0], **common,
                                                              **kw})
        assert not (tmp_path / "t1").exists()
    with pytest.raises(ValueError, match="S_list must list at least one value"):
        tables.reproduce_table2(zero, tmp_path / "t2", images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8), S_list=())
    assert not (tmp_path / "t2").exists()


def test_round_35_far_points_are_refused_not_scored_nan():
    """Points past ±√(max/(4d)) (samples of a diverged sampler, 1e160 here) made every kernel distance overflow: toy.mmd2_unbiased
    returned NaN, toy.mmd an MMDResult(nan, floor) whose resolved() said False (as if the samples were the data's), and
    lab.summed_variance (inf, nan); points of no coordinates (d = 0) scored an MMD² of 0. Each is now a ValueError naming
    the set."""
    from ddimlab import lab
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 2, generator=g, dtype=torch.float64), torch.randn(10, 2, generator=g, dtype=torch.float64)
    for kernel in (toy.ENERGY, 1.0):
        with pytest.raises(ValueError, match="x hold values up to .*e\\+160, beyond 4.74e\\+153.*overflow float64"):
            toy.mmd2_unbiased(x * 1e160, y, kernel)
    with pytest.raises(ValueError, match="samples hold values up to"):
        toy.mmd(x * 1e160, toy.default_mixture())
    with pytest.raises(ValueError, match="y hold values up to"):
        lab.mmd2_se(x, y * 1e160, toy.ENERGY)
    with pytest.raises(ValueError, match="x holds values up to .*overflows float64"):
        lab.summed_variance(x * 1e160)
    with pytest.raises(ValueError, match="with d >= 1, got shape \\(5, 0\\)"):
        toy.mmd2_unbiased(torch.zeros(5, 0), torch.zeros(5, 0), toy.ENERGY)
    # the bound is where the distances still fit: 1e150 (d = 2) is scored, finite, as it was
    assert math.isfinite(toy.mmd2_unbiased(x * 1e150, y * 1e150, toy.ENERGY))
    assert all(math.isfinite(v) for v in lab.summed_variance(x * 1e70))


def test_round_35_the_bound_and_the_loss_refuse_an_eps_that_is_no_float_or_overflows():
    """elbo.bits_per_dim (elbo_terms) and elbo.l_simple read an eps_model that returned bools as 0/1, integers as they
    were and complex numbers without their imaginary part (l_simple returned a complex loss), in silence; a finite but
    huge ε (1e30) gave a float32 bound of NaN. Each is now an error naming eps_model or the step."""
    ab = schedule.make_alpha_bar("linear", 10)
    x0 = torch.arange(8.0).reshape(2, 1, 2, 2) / 127.5 - 1
    for dtype in (torch.bool, torch.int64, torch.complex64):
        def eps_model(x, t):
            return torch.zeros_like(x, dtype=dtype)
        for f in (elbo.bits_per_dim, elbo.l_simple):
            with pytest.raises(ValueError, match=f"eps_model\\(x_t, t\\) must return floating-point .*{dtype}"):
                f(eps_model, x0, ab)
    with pytest.raises(samplers.NonFiniteError, match="step t = 0 overflowed torch.float32 .* 1e\\+30.*x0.double"):
        elbo.bits_per_dim(lambda x, t: torch.full_like(x, 1e30), x0, ab)
    huge = elbo.bits_per_dim(lambda x, t: torch.full_like(x, 1e30), x0.double(), ab, decoder="gaussian")
    assert bool(torch.isfinite(huge).all())      # float64 holds its squares


def test_round_35_log_likelihood_reads_its_prior_as_real_log_densities():
    """ode.log_likelihood read a prior that returned bools as 0/1 and complex numbers without their imaginary part, and
    x_0 with no coordinates failed with "'int' object has no attribute 'detach'"; ode.standard_normal_logpdf, its
    default prior, returned NaN for NaN, read bools and complex numbers, and failed inside torch on a 0-d x, a list and
    an empty batch."""
    mix = toy.default_mixture()
    eps, x = toy.exact_eps(mix, AB), mix.sample(1, torch.Generator().manual_seed(0))
    for dtype in (torch.bool, torch.complex64):
        with pytest.raises(TypeError, match=f"prior\\(x_T\\) must hold real numbers .*{dtype}"):
            ode.log_likelihood(eps, x, AB, t_start=5, rtol=1e-3, atol=1e-3,
                               prior=lambda z, dtype=dtype: torch.zeros(len(z), dtype=dtype))
    with pytest.raises(ValueError, match="x_0 of shape \\(3, 0\\) has no coordinates"):
        ode.log_likelihood(lambda x, t: x * 0, torch.zeros(3, 0, dtype=torch.float64), AB, rtol=1e-4, atol=1e-4)
    for bad in (torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.complex64), torch.tensor(1.0),
                [[1.0, 2.0]]):
        with pytest.raises(TypeError, match="x must be a floating-point tensor with a batch dimension"):
            ode.standard_normal_logpdf(bad)
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        ode.standard_normal_logpdf(torch.tensor([[0.0, float("nan")]]))
    assert ode.standard_normal_logpdf(torch.zeros(0, 3)).shape == (0,)
    x = torch.tensor([[0.3, -1.2]])
    assert float(ode.standard_normal_logpdf(x)) == pytest.approx(float(torch.distributions.Normal(0.0, 1.0).log_prob(x).sum()))


def test_round_35_a_noise_sampler_on_another_device_is_named(toy_setup):
    """A noise_sampler returning noise on another device than x (a CPU draw for CUDA samples; meta here) stopped every
    stochastic sampler with torch's "Tensor on device meta is not on the expected device cpu!"."""
    _, eps, x_T, seq = toy_setup

    def elsewhere(t, s):
        return torch.zeros(x_T.shape, dtype=x_T.dtype, device="meta")
    for run in (lambda: samplers.ddim_sample(eps, x_T, AB, seq, eta=1.0, noise_sampler=elsewhere),
                lambda: samplers.sample_row(eps, x_T, AB, seq, samplers.SIGMA_HAT, noise_sampler=elsewhere),
                lambda: samplers.langevin(eps, x_T, AB, 10, 1e-3, 2, noise_sampler=elsewhere)):
        with pytest.raises(ValueError, match="noise_sampler\\(t, s\\) must return noise on x's device, cpu, got it on meta"):
            run()


def test_round_35_a_variance_table_that_requires_grad_is_refused_where_it_is_read_as_numbers():
    """A learned variance table (T,) with requires_grad, passed to elbo.bits_per_dim, posterior_kl or decoder_nll, was read
    with float(var[t]): the bound came back and, with a network's parameters in the graph, backward() ran while the
    table's .grad stayed None. gamma_t, which keeps the table in the graph, still takes it."""
    ab = schedule.make_alpha_bar("linear", 10)
    x0 = torch.arange(8.0).reshape(2, 4) / 127.5 - 1
    w = torch.zeros((), requires_grad=True)               # a network's parameter: the bound has a graph to run back

    def eps_model(x, t):
        return x * w
    learned = torch.full((10,), 0.01, requires_grad=True)
    x_t = diffusion.q_sample(x0, float(ab[3]), torch.zeros_like(x0))
    for run in (lambda: elbo.bits_per_dim(eps_model, x0, ab, variance=learned),
                lambda: elbo.posterior_kl(x0, x_t, x_t * 0, ab, 3, variance=learned),
                lambda: elbo.decoder_nll(x0, x_t, x_t * 0, ab, variance=learned)):
        with pytest.raises(ValueError, match="variance requires grad, .* gradient would reach it; pass variance.detach\\(\\)$"):
            run()
    assert float(elbo.bits_per_dim(eps_model, x0, ab, variance=learned.detach()).detach().mean()) > 0
    elbo.gamma_t(ab, learned).sum().backward()
    assert learned.grad is not None and bool(torch.isfinite(learned.grad).all())


def test_round_35_image_like_mixture_names_each_of_its_numbers():
    """toy.image_like_mixture read slope "1" and True as 1 without a word, named `means` for slope NaN and `eigvals` for
    slope inf or 1000; between "0.5", [0.5] and 0.5+0j were Python's "'<=' not supported between instances of 'int' and
    'str'"; pixel_std 1e200 was Python's OverflowError "(34, 'Numerical result out of range')" and 1e-200 named
    `eigvals`. Each now names its argument."""
    for kw, match in ((dict(slope="1"), "slope must be a finite number .* got '1'"),
                      (dict(slope=True), "slope must be a finite number .* got True"),
                      (dict(slope=float("nan")), "slope must be a finite number"),
                      (dict(slope=1000), "slope = 1000 and pixel_std = 0.5 put the spectrum's eigenvalues .* outside"),
                      (dict(between="0.5"), "between must be a number in \\[0, 1\\) .* got '0.5'"),
                      (dict(between=[0.5]), "between must be a number in \\[0, 1\\)"),
                      (dict(between=0.5 + 0j), "between must be a number in \\[0, 1\\)"),
                      (dict(pixel_std=1e200), "pixel_std = 1e\\+200 put the spectrum's eigenvalues"),
                      (dict(pixel_std=1e-200), "pixel_std = 1e-200 put the spectrum's eigenvalues")):
        with pytest.raises(ValueError, match=match):
            toy.image_like_mixture(d=4, K=2, **kw)
    m = toy.image_like_mixture(d=4, K=2, slope=np.float64(2.0), between=torch.tensor(0.25), pixel_std=2)
    lam = m.eigvals.mean(0)                               # the factors u_kj in [0.5, 2] around λ_j ∝ j^-2
    assert bool((lam[:-1] > lam[1:]).all()) and m.means.shape == (2, 4)


def test_round_35_table1_names_a_grid_that_is_no_list_a_table_with_no_sampler_and_a_mixture_of_another_kind():
    """lab.table1(S_list=10) and etas=0.5 failed as "'int' object is not iterable" (S_list="10" as S = '1'); etas=[] with
    include_sigma_hat=False computed the noise floor of a table with no sampler row (which format_table then refused);
    mixture="ring" or an eps function was "'str' object has no attribute 'd'"; T=0 said S "must be an integer in 1..0".
    All are said before any sampling (checks.a_list, the one rule tables.reproduce_table1's grid uses too)."""
    from ddimlab import lab
    for kw, err, match in ((dict(S_list=10), TypeError, "S_list must be a list, e.g. \\(10, 20\\); got 10"),
                           (dict(S_list="10"), TypeError, "S_list must be a list"),
                           (dict(etas=0.5), TypeError, "etas must be a list, e.g. \\(0.0, 1.0\\); got 0.5"),
                           (dict(etas=[], include_sigma_hat=False), ValueError, "etas is empty and include_sigma_hat is "
                                                                                "False: the table would have no sampler"),
                           (dict(mixture="ring"), TypeError, "mixture must be a toy.GaussianMixture, got str"),
                           (dict(mixture=toy.exact_eps(toy.default_mixture(), AB)), TypeError, "got function"),
                           (dict(T=0, S_list=[1]), ValueError, "T must be a positive integer, got 0")):
        with pytest.raises(err, match=match):
            lab.table1(**{"S_list": [2], "n": 8, "n_ode": 0, **kw})
    rows = lab.table1(S_list=[2], etas=[], n=8, n_ode=0, repeats=2)      # σ̂ alone is a table
    assert [r["sampler"] for r in rows] == ["data", samplers.SIGMA_HAT]


def test_round_35_ipndm_refuses_a_rho_whose_weights_lose_their_digits(toy_setup):
    """ode.ipndm(rho=1e8) returned x_0 0.4 away from rho = 100's on 6 steps (1.5e7 on 20), finite and in silence, and rho=1e20
    failed as the mixture's "x contains NaN or inf"; rho is now bounded by MAX_RHO = 1e4, as karras_timesteps' is.
    solve("ipndm_vs", rho=None) ran plain iPNDM (the same x_0 bit for bit) under ipndm_vs's name."""
    _, eps, x_T, _ = toy_setup
    seq = ode.rule_timesteps("power3", 6, AB)
    for rho in (1e8, 1e20, ode.MAX_RHO * 1.01):
        with pytest.raises(ValueError, match="rho must be None .* <= 10000 .* lose their digits"):
            ode.ipndm(eps, x_T, AB, seq, rho=rho)
    near = [ode.ipndm(eps, x_T, AB, seq, rho=r) for r in (100.0, ode.MAX_RHO)]   # the bound itself is still accurate
    assert float((near[0] - near[1]).abs().max()) < 1e-2
    for run in (lambda: ode.solve("ipndm_vs", eps, x_T, AB, seq, rho=None), lambda: ode.nfe("ipndm_vs", 6, rho=None)):
        with pytest.raises(ValueError, match="rho=None, equal-step weights, is solve\\('ipndm', ...\\)"):
            run()


def test_round_35_a_gaussian_bandwidth_whose_inverse_square_overflows_is_refused():
    """toy.gram (mmd2_unbiased, lab.mmd2_se) with the Gaussian bandwidth 1e-300 failed with Python's "float division by
    zero" (h² underflowed to 0), and 1e-160 (h² subnormal) gave NaN kernels on the diagonal, -inf · 0: mmd2_unbiased
    returned NaN."""
    from ddimlab import lab
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for h in (1e-300, 1e-160):
        for f in (lab.mmd2_se, toy.mmd2_unbiased):
            with pytest.raises(ValueError, match="kernel must be a finite bandwidth >= 1.5e-154 .* got 1e-"):
                f(x, x + 1, h)
    k = toy.gram(x, x, 1.5e-154)                              # the smallest that fits: the identity kernel
    assert torch.equal(k, torch.eye(6, dtype=torch.float64))


def test_round_35_a_mixture_refuses_a_complex_alpha_bar_rather_than_drop_its_imaginary_part():
    """GaussianMixture's and SharedBasisMixture's eps, score, log_prob, x0_mean and v read a complex ᾱ tensor (0.5 + 0j, or
    0.5 + 0.3j) as its real part without a word; a Python complex failed as torch's "must be real number, not complex"."""
    x = torch.zeros(2, 4, dtype=torch.float64)
    for mix in (toy.random_mixture(d=4, K=2), toy.image_like_mixture(d=4, K=2)):
        for a in (torch.tensor(0.5 + 0.3j), torch.tensor([0.5 + 0j, 0.2]), 0.5 + 0j):
            for f in (mix.eps, mix.score, mix.log_prob, mix.x0_mean, mix.v):
                with pytest.raises(TypeError, match="alpha_bar must be real, got (torch.complex|complex)"):
                    f(x, a)
        per_row = torch.stack([mix.eps(x[:1], 0.5)[0], mix.eps(x[:1], 0.2)[0]])          # a real (B,) ᾱ still works
        torch.testing.assert_close(mix.eps(x, torch.tensor([0.5, 0.2], dtype=torch.float64)), per_row, rtol=1e-12, atol=1e-14)


def test_round_35_thresholded_eps_refuses_a_schedule_other_than_its_eps(toy_setup):
    """ode.thresholded_eps(toy.exact_eps(mix, linear), cosine) formed x̂_0 with the cosine ᾱ from an ε made for the linear
    one and sampled without a word (a T = 100 table failed only at the first step, as alpha_bar_at's "step t must lie in
    -1..99"). The ε's own schedule (eps.alpha_bar) is now compared where thresholded_eps takes its alpha_bar, and the
    thresholded ε carries its own, so wrapping it again is checked too."""
    mix, eps, x_T, seq = toy_setup
    for other in (schedule.make_alpha_bar("cosine", 1000), schedule.make_alpha_bar("linear", 100)):
        with pytest.raises(ValueError, match="thresholded_eps: alpha_bar \\(T = 1.*is not the schedule eps was made for"):
            ode.thresholded_eps(eps, other)
    thr = ode.thresholded_eps(eps, AB.float())                # the same table in float32 is the same schedule
    with pytest.raises(ValueError, match="not the schedule eps was made for"):
        ode.thresholded_eps(thr, schedule.make_alpha_bar("cosine", 1000))
    assert bool(torch.isfinite(samplers.ddim_sample(thr, x_T, AB, seq)).all())


def test_round_35_the_lab_names_a_mixture_of_another_kind_and_an_rms_of_no_samples(toy_setup):
    """toy.noise_floor("ring", n) failed as "'str' object has no attribute 'sample'" and toy.mmd(x, "ring") as "... no
    attribute 'd'" (toy.check_mixture, bandwidth's check, now serves all three and table1); lab.ode_error of an empty
    batch returned NaN, the mean of no squared errors (ode_sq_errors still maps it to no errors)."""
    from ddimlab import lab
    mix, eps, x_T, seq = toy_setup
    for run in (lambda: toy.noise_floor("ring", 8), lambda: toy.mmd(x_T, "ring"), lambda: toy.bandwidth(eps)):
        with pytest.raises(TypeError, match="mixture must be a toy.GaussianMixture, got (str|function)"):
            run()
    with pytest.raises(ValueError, match="x_T is an empty batch \\(0, 2\\): an RMS over its samples needs at least one"):
        lab.ode_error(eps, x_T[:0], AB, seq)
    assert lab.ode_sq_errors(eps, x_T[:0], AB, seq).shape == (0,)


def test_round_35_shared_basis_eigenvalues_whose_inverse_overflows_are_refused():
    """toy.SharedBasisMixture took subnormal eigenvalues (1e-309, 1e-320): its log_prob, score and x0_mean, which divide
    by aλ + 1 − a, returned NaN at the mean (0 · inf), where GaussianMixture's give finite numbers. A basis orthogonal only
    to float32's rounding is told so, not only that it is not orthogonal."""
    for lam in (1e-309, 1e-320):
        with pytest.raises(ValueError, match="eigvals must be .* at least 2.2e-308"):
            toy.SharedBasisMixture(torch.ones(2), torch.zeros(2, 3), torch.full((2, 3), lam, dtype=torch.float64))
    tiny = toy.SharedBasisMixture(torch.ones(2), torch.zeros(2, 3), torch.full((2, 3), 1e-300, dtype=torch.float64))
    assert bool(torch.isfinite(tiny.score(torch.zeros(1, 3, dtype=torch.float64))).all())
    q = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))[0]
    with pytest.raises(ValueError, match="computed in float32 is orthogonal to 1e-7 only"):
        toy.SharedBasisMixture(torch.ones(2), torch.zeros(2, 8), torch.ones(2, 8), q)


def test_round_35_validate_timesteps_checks_its_T_and_inverting():
    """schedule.validate_timesteps([0], T=1.5) passed (step 0 lies in 0..0.5) and T=True likewise; T="1000" and None failed
    in Python ("unsupported operand type(s) for -"), T=0 said "0..-1"; inverting=1 was read as True."""
    for T in (1.5, True, "1000", None, 0):
        with pytest.raises(ValueError, match="T must be a positive integer, got"):
            schedule.validate_timesteps([0], T)
    with pytest.raises(TypeError, match="inverting must be True or False, got 1"):
        schedule.validate_timesteps([5, 0], inverting=1)
    assert schedule.validate_timesteps(range(5, -1, -1), np.int64(6)).tolist() == [5, 4, 3, 2, 1, 0]


def test_round_35_a_callback_that_returns_the_next_x_is_told_it_is_not_used(toy_setup):
    """A callback returning x (or diffusers' dict of latents, as callback_on_step_end does) expected the run to go on from
    it; every sampler and solver ignored it without a word. Now a TypeError at the first step; other values (a progress
    bar's update() returns True or None) are still ignored."""
    _, eps, x_T, seq = toy_setup
    for cb in (lambda info: info["x"].clamp(-1, 1), lambda info: {"latents": info["x"] * 0}):
        for run in (lambda: samplers.ddim_sample(eps, x_T, AB, seq, callback=cb),
                    lambda: samplers.ddpm_sample(eps, x_T, AB, seq=seq, callback=cb, generator=torch.Generator()),
                    lambda: ode.solve("unipc_3", eps, x_T, AB, seq, callback=cb)):
            with pytest.raises(TypeError, match="callback returned a (Tensor|dict), but a callback only watches the run"):
                run()
    steps = []
    out = samplers.ddim_sample(eps, x_T, AB, seq, callback=lambda info: steps.append(info["i"]) or True)
    assert steps == list(range(len(seq))) and torch.equal(out, samplers.ddim_sample(eps, x_T, AB, seq))


def test_round_35_log_likelihood_refuses_more_probes_than_coordinates():
    """ode.log_likelihood(hutchinson=10**9) on 2-D points asked torch for 48 GB of probes (RuntimeError "DefaultCPUAllocator:
    can't allocate memory"); any k > d probes cost more backward passes than the exact divergence's d, with variance
    (benchmarks/ode_bits.py's --hutchinson refuses k >= d, round 28). k = d, which tests/test_ode_bits.py uses, is taken."""
    mix = toy.default_mixture()
    eps, x = toy.exact_eps(mix, AB), mix.sample(1, torch.Generator().manual_seed(0))
    for k in (3, 10 ** 9):
        with pytest.raises(ValueError, match=f"hutchinson = {k} probes .* exact divergence's d = 2.*hutchinson <= 2"):
            ode.log_likelihood(eps, x, AB, t_start=5, rtol=1e-3, atol=1e-3, hutchinson=k)
    assert ode.log_likelihood(eps, x, AB, t_start=5, rtol=1e-3, atol=1e-3, hutchinson=2).shape == (1,)


def test_round_36_dynamic_threshold_takes_inf_as_no_bound_in_any_real_type():
    """dynamic_threshold's s_max = inf is Imagen's rule (no upper bound on s); it took math.inf (a Python float) but refused
    torch.tensor(inf) and np.float32(inf) as "s_max must be a number >= 1". One rule now, checks.as_real(inf_ok=True):
    each is numpy's s = max(quantile(|x|, p), 1), unbounded; -inf and NaN are still refused."""
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    s = np.maximum(np.quantile(x.abs().numpy(), 0.9, axis=1), 1.0)[:, None]
    want = torch.from_numpy(np.clip(x.numpy(), -s, s) / s)
    assert float(s.max()) > 4                      # far past a bound: s_max = 1 or 2 would not pass
    for s_max in (math.inf, np.float32("inf"), torch.tensor(float("inf")), torch.tensor(float("inf"), dtype=torch.float64)):
        torch.testing.assert_close(diffusion.dynamic_threshold(x, 0.9, s_max), want, rtol=1e-12, atol=1e-12)
    for bad in (-math.inf, torch.tensor(-float("inf")), float("nan"), torch.tensor(0.5)):
        with pytest.raises(ValueError, match="s_max must be a number >= 1 \\(or inf: Imagen's rule"):
            diffusion.dynamic_threshold(x, 0.9, bad)


def test_round_36_sample_row_takes_one_rule_for_seq_and_names_itself_for_bad_keywords(toy_setup):
    """samplers.sample_row(..., seq=None, SIGMA_HAT) ran all T steps while every η row refused seq=None; now each row
    refuses it, naming schedule.timesteps(T, T), which runs the σ̂ row as ddpm_sample(seq=None) does, bit for bit. A bad
    keyword (foo=1, variance="small") was "ddim_sample() got an unexpected keyword argument" (or ddpm_sample's "multiple
    values"), naming a function the user did not call; it is now sample_row's, listing what it takes."""
    mix, eps, x_T, seq = toy_setup
    ab = schedule.make_alpha_bar("linear", 20)
    eps20 = toy.exact_eps(mix, ab)
    for eta in (0.0, 1.0, samplers.SIGMA_HAT):
        with pytest.raises(TypeError, match="sample_row: seq must be .* schedule.timesteps\\(T, T\\)\\), got None"):
            samplers.sample_row(eps20, x_T, ab, None, eta)
        for kw in (dict(foo=1), dict(variance="small")):
            with pytest.raises(TypeError, match=f"^sample_row\\(\\) got an unexpected keyword argument '{next(iter(kw))}'; "
                                                "it takes clip_x0, generator, noise_sampler, callback, return_trajectory$"):
                samplers.sample_row(eps, x_T, AB, seq, eta, **kw)
    every = samplers.sample_row(eps20, x_T, ab, schedule.timesteps(20, 20), samplers.SIGMA_HAT,
                                generator=torch.Generator().manual_seed(3))
    assert torch.equal(every, samplers.ddpm_sample(eps20, x_T, ab, "large", generator=torch.Generator().manual_seed(3)))


def test_round_36_ode_bits_says_the_librarys_tolerance_rule_in_its_own_words(tmp_path, capsys):
    """benchmarks/ode_bits.py checked --rtol/--atol against ode.rtol_floor and ode.TOL_CEILING with its own loop and wording
    (the floor's "solve_ivp would take ever smaller steps" and the ceiling's "its solution can be farther off" left out).
    ode.check_tolerances is now the one rule: for each bad value the script prints what log_likelihood raises, the names
    alone written as the options ("--rtol 0.02", not "rtol = 0.02"), before anything is trained."""
    from cli_support import load_script
    bits = load_script("benchmarks/ode_bits.py")
    for option, value in (("rtol", 1e-9), ("rtol", 0.02), ("atol", 1e-300), ("atol", 0.5), ("rtol", float("nan"))):
        tols = {"rtol": 1e-3, "atol": 1e-3, option: value}
        with pytest.raises(ValueError) as lib:
            ode.check_tolerances(tols["rtol"], tols["atol"], "the network's float32 can give", torch.float32)
        with pytest.raises(SystemExit) as stop:
            bits.main(["--steps", "2", "--n", "2", "--cache", str(tmp_path), f"--{option}", repr(value)])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        cli = str(lib.value).replace(f"{option} = ", f"--{option} ").replace(f"pass {option} ", f"pass --{option} ")
        cli = cli.replace(f"{option} must", f"--{option} must")
        assert stop.value.code == 2 and err.endswith(f": error: {cli}"), (err, cli)
    assert not (tmp_path / "models").exists()
    with pytest.raises(ValueError, match="^rtol = 1e-09 is finer than x's float32 can give, .* >= 6e-09, or x in float64$"):
        ode.check_tolerances(1e-9, 1e-3, "x's float32 can give", torch.float32, "x in float64")


def test_round_37_samplers_refuse_a_schedule_other_than_the_one_eps_was_made_for(toy_setup):
    """toy.exact_eps(mix, linear) sampled on the cosine table (or on a T = 500 one) ran to finite, wrong samples: ε* is
    the noise at the linear ᾱ_t, read by the sampler as the noise at the cosine ᾱ_t. Every sampler and solver (and the
    ELBO, L_simple, guided_eps) now compares the ε's own table (eps.alpha_bar) with the one it is given, before the first
    call; the same table in float32 and an ε without a table (a network, a lambda) pass as before."""
    mix, eps, x_T, seq = toy_setup
    cosine, short = schedule.make_alpha_bar("cosine", 1000), schedule.make_alpha_bar("linear", 500)
    calls = ode.counted(eps)                  # counted keeps eps's table, so a refusal is seen before any call
    x0 = 0.1 * x_T[:2]
    runs = {"ddim_sample": lambda ab: samplers.ddim_sample(calls, x_T, ab, seq),
            "ddpm_sample": lambda ab: samplers.ddpm_sample(calls, x_T, ab, "large", seq=seq),
            "sample": lambda ab: samplers.sample(calls, (4, 2), ab, S=10, dtype=torch.float64),
            "ddim_invert": lambda ab: samplers.ddim_invert(calls, x0, ab, seq),
            "sdedit": lambda ab: samplers.sdedit(calls, x0, ab, seq[5:]),
            "langevin": lambda ab: samplers.langevin(calls, x_T, ab, 10, 1e-3, 2),
            "heun_invert": lambda ab: ode.heun_invert(calls, x0, ab, seq),
            "reference_solution": lambda ab: ode.reference_solution(calls, x_T, ab, 400),
            "log_likelihood": lambda ab: ode.log_likelihood(calls, x0, ab, 10),
            "elbo_terms": lambda ab: elbo.elbo_terms(calls, x0, ab, decoder="gaussian"),
            "l_simple": lambda ab: elbo.l_simple(calls, x0, ab)}
    runs.update({name: (lambda ab, name=name: ode.solve(name, calls, x_T, ab, seq)) for name in ode.SOLVERS})
    for name, run in runs.items():
        for other in (cosine, short):
            with pytest.raises(ValueError, match=r"^(elbo_terms: |l_simple: )?alpha_bar \(T = (1000|500)\) is not the "
                                                 r"schedule eps was made for \(eps\.alpha_bar, T = 1000.*pass eps\.alpha_bar"):
                run(other)
        assert calls.calls == 0, name
    with pytest.raises(ValueError, match=r"first at t = 1: 0\.999913 against eps's 0\.99978\)"):
        samplers.ddim_sample(eps, x_T, cosine, seq)
    # what the refusal prevents: the same ε on the cosine table lands far from where it lands on its own
    plain = lambda x, t: eps(x, t)                                  # noqa: E731 (no table: not checked, as a network)
    wrong, right = samplers.ddim_sample(plain, x_T, cosine, seq), samplers.ddim_sample(eps, x_T, AB, seq)
    assert float((wrong - right).pow(2).mean().sqrt()) > 0.1
    torch.testing.assert_close(samplers.ddim_sample(eps, x_T, AB.float(), seq), right, rtol=0, atol=1e-4)   # float32
    torch.testing.assert_close(ode.heun(eps, x_T, AB.float(), seq), ode.heun(plain, x_T, AB, seq), rtol=0, atol=1e-4)
    # guided_eps: two ε's of different tables are refused, one table is carried on to the samplers
    with pytest.raises(ValueError, match="^guided_eps: eps_null and eps_cond were made for different schedules"):
        samplers.guided_eps(eps, toy.exact_eps(mix, cosine), 2.0)
    for guided in (samplers.guided_eps(eps, eps, 2.0), samplers.guided_eps(plain, eps, 2.0)):
        with pytest.raises(ValueError, match="is not the schedule eps was made for"):
            samplers.ddim_sample(guided, x_T, cosine, seq)
    assert not hasattr(samplers.guided_eps(plain, plain, 2.0), "alpha_bar")


def test_round_37_the_lab_refuses_tables_past_half_the_memory_before_sampling(tmp_path):
    """lab.main(image_d=10**11) ran the 2-D table and then failed in torch's allocator building the image-like mixture
    (`ddimlab lab` had its own check, which the library lacked), and lab.table1(n=10**12) allocated its x_T: both now say
    the size, the estimate and the largest size that fits before any sampling (the CLI's check is this one, with its
    option names)."""
    from ddimlab import lab

    with pytest.raises(ValueError, match=r"^table1 with n = 1,000,000,000,000 samples per cell in d = 2: about [0-9,]+ GiB"
                                         r", more than half of this machine's [0-9,.]+ GiB; give n at most [0-9,]+$"):
        lab.table1(n=10 ** 12)
    with pytest.raises(ValueError, match=r"^the image-like table, image_d 100000000000 with image_n 8: about [0-9,]+ GiB.*"
                                         r"give image_d at most [0-9,]+$"):
        lab.main(out=tmp_path / "lab", n=8, image_d=10 ** 11, image_n=8)
    with pytest.raises(ValueError, match=r"^1,000,000,000 samples per cell \(three n x n distance tables\).*give n at most"):
        lab.main(out=tmp_path / "lab", n=10 ** 9, image_d=0)
    assert not (tmp_path / "lab").exists()


def test_round_37_log_likelihood_refuses_an_eps_that_mixes_the_samples(toy_setup, monkeypatch):
    """ode.log_likelihood reads each sample's divergence from the batch's one graph, so an ε that mixes the samples (batch
    statistics, as a batch norm in train mode) gave finite, wrong densities without a word. The answer computed one
    sample at a time is the independent reference: it differs from the batched one, which is now refused; an ε that
    keeps the samples apart passes and agrees with it."""
    mix, eps, x_T, _ = toy_setup
    x0 = mix.sample(3, torch.Generator().manual_seed(1))
    mixing = lambda x, t: eps(x, t) + 0.3 * (x - x.mean(0))              # noqa: E731 (a batch statistic)
    apart = lambda x, t: eps(x, t) + 0.3 * (x - x.mean(1, keepdim=True))   # noqa: E731 (its own row only)
    kw = dict(alpha_bar=AB, t_start=500, rtol=1e-6, atol=1e-6)
    one_by_one = torch.cat([ode.log_likelihood(mixing, x0[i:i + 1], **kw) for i in range(3)])
    with pytest.raises(ValueError, match="^eps mixes the samples of a batch.*one sample at a time$"):
        ode.log_likelihood(mixing, x0, **kw)
    torch.testing.assert_close(ode.log_likelihood(apart, x0, **kw),
                               torch.cat([ode.log_likelihood(apart, x0[i:i + 1], **kw) for i in range(3)]), rtol=0, atol=1e-4)
    # what the refusal prevents: the batch's one graph, with the check bypassed, is far from the one-by-one answer
    monkeypatch.setattr(ode, "_check_apart", lambda e, xbar: None)
    batched = ode.log_likelihood(mixing, x0, **kw)
    assert float((batched - one_by_one).abs().max()) > 0.1, (batched, one_by_one)


def test_round_37_a_loaded_network_carries_its_schedule_to_the_samplers(tmp_path):
    """checkpoint.load_model returns the network with the ᾱ it was trained on, but a caller who sampled it on another
    table (generate_samples' default linear one, for a model of the cosine schedule with T = 400) got finite, wrong
    images. eps_fn of a loaded network now carries its table, which the samplers compare (`check_schedule`); a network
    made in the session carries none and is not checked."""
    cosine = schedule.make_alpha_bar("cosine", 400)
    folder = checkpoint.save_diffusers_folder(_tiny_net().eval(), tmp_path / "export", cosine)
    net, abar = checkpoint.load_model(folder)
    x_T, seq = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), schedule.timesteps(2, 400)
    with pytest.raises(ValueError, match=r"^alpha_bar \(T = 400\) is not the schedule eps was made for .*first at t = 4: .*"
                                         r"pass the table the network was trained on \(eps\.alpha_bar; checkpoint\.load_model "
                                         r"returns it beside the network\)$"):
        samplers.ddim_sample(checkpoint.eps_fn(net), x_T, schedule.make_alpha_bar("linear", 400), seq)
    with pytest.raises(ValueError, match=r"^alpha_bar \(T = 1000\) is not the schedule eps was made for"):
        generate.generate_samples(net, tmp_path / "samples", 2, shape=(1, 8, 8), S=2,
                                  alpha_bar=schedule.make_alpha_bar("linear", 1000))
    assert not (tmp_path / "samples").exists()
    assert bool(torch.isfinite(samplers.ddim_sample(checkpoint.eps_fn(net), x_T, abar, seq)).all())
    assert generate.generate_samples(net, tmp_path / "samples", 2, shape=(1, 8, 8), S=2, alpha_bar=abar) == [0, 1]


def test_round_39_generate_samples_defaults_to_the_table_the_network_carries(tmp_path):
    """generate_samples' ᾱ defaulted to the linear T = 1000 table whatever the network: a cosine T = 400 model from
    load_model was refused by the samplers' schedule check (and before round 37 sampled wrongly) unless its table was
    passed. It now takes the table the network (or eps_fn of it) carries; its settings.json records that table, so the
    folder is the one an explicit alpha_bar=abar makes. A network that carries none still gets the linear one."""
    cosine = schedule.make_alpha_bar("cosine", 400)
    net, abar = checkpoint.load_model(checkpoint.save_diffusers_folder(_tiny_net().eval(), tmp_path / "export", cosine))
    for model, name in ((net, "net"), (checkpoint.eps_fn(net), "eps")):
        assert generate.generate_samples(model, tmp_path / name, 2, shape=(1, 8, 8), S=2) == [0, 1]
        assert generate.generate_samples(model, tmp_path / name, 3, shape=(1, 8, 8), S=2,
                                         alpha_bar=abar) == [2]          # the same settings: the folder is reused
    settings = json.loads((tmp_path / "net" / "settings.json").read_text())
    assert settings["T"] == 400
    plain = _tiny_net().eval()
    generate.generate_samples(plain, tmp_path / "plain", 1, shape=(1, 8, 8), S=2)
    assert json.loads((tmp_path / "plain" / "settings.json").read_text())["T"] == 1000
    assert not hasattr(checkpoint.eps_fn(_tiny_net()), "alpha_bar")


def test_round_38_the_same_schedule_computed_in_float32_is_not_refused(toy_setup):
    """samplers.check_schedule compared tables to rtol 1e-6, but the cosine schedule as diffusers computes it (betas and
    their cumulative product in float32: `scheduler.alphas_cumprod`) is 1.3e-5 off ddimlab's float64 table, so an ε
    made on one and sampled on the other, the same schedule, was refused. Built here from the cosine formula (Nichol &
    Dhariwal 2021, eq. 17) in float32, independently of ddimlab; it passes and samples as the float64 table does, while
    another table (a step later, or the linear one) is still refused."""
    mix, _, x_T, seq = toy_setup
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2        # noqa: E731
    betas = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(1000)], dtype=torch.float32)
    diffusers_table = torch.cumprod(1 - betas, 0)
    cosine = schedule.make_alpha_bar("cosine", 1000)
    assert float(((diffusers_table.double() - cosine) / cosine).abs().max()) > 1e-5       # what the old check refused
    eps = toy.exact_eps(mix, cosine)
    torch.testing.assert_close(samplers.ddim_sample(eps, x_T, diffusers_table, seq),
                               samplers.ddim_sample(eps, x_T, cosine, seq), rtol=0, atol=1e-3)
    samplers.guided_eps(eps, toy.exact_eps(mix, diffusers_table.double()), 2.0)
    later = torch.cat([cosine[1:], cosine[-1:] * 0.5])
    for other in (later, schedule.make_alpha_bar("linear", 1000)):
        with pytest.raises(ValueError, match=r"^alpha_bar \(T = 1000\) is not the schedule eps was made for"):
            samplers.ddim_sample(eps, x_T, other, seq)


def test_round_38_the_memory_limit_is_a_containers_and_unknown_sizes_refuse_nothing(tmp_path, monkeypatch):
    """checks.memory_limit read only sysconf, which in a container says the host's memory: under a control-group limit
    below it a size check passed and the kernel killed the process. Where sysconf says -1 (a size it does not know) the
    limit was 0.5 bytes or negative, and every check refused everything. The limit is now the smaller of the two, and an
    unknown size is no limit."""
    from ddimlab import checks

    monkeypatch.setattr(checks, "cgroup_memory", lambda: 2 ** 30, raising=False)
    assert checks.memory_limit() == 2 ** 29
    with pytest.raises(ValueError, match=r"more than half of this container's memory limit of 1 GiB"):
        toy.random_mixture(d=2000, K=4)
    monkeypatch.setattr(checks, "cgroup_memory", lambda: math.inf, raising=False)
    monkeypatch.setattr(checks.os, "sysconf", lambda name: -1)
    assert checks.memory_limit() == math.inf
    checks.check_fits(2 ** 20, "one MiB", lambda limit: "")
    monkeypatch.undo()                                    # the files a control group's limit is read from
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    (v1 / "memory" / "box" / "job").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")        # v1's "no limit"
    (v1 / "memory" / "box" / "memory.limit_in_bytes").write_text(f"{3 * 2 ** 30}\n")
    (v1 / "memory" / "box" / "job" / "memory.limit_in_bytes").write_text(f"{4 * 2 ** 30}\n")
    (v1 / "groups").write_text("9:pids:/\n4:memory:/box/job\n0::/\n")
    assert checks.cgroup_memory(v1, v1 / "groups") == 3 * 2 ** 30            # the smallest of the group and those above
    (v2 / "c").mkdir(parents=True)
    (v2 / "c" / "memory.max").write_text("max\n")
    (v2 / "memory.max").write_text(f"{2 ** 30}\n")
    (v2 / "groups").write_text("0::/c\n")
    assert checks.cgroup_memory(v2, v2 / "groups") == 2 ** 30
    assert checks.cgroup_memory(v2, tmp_path / "none") == math.inf


def test_round_38_an_empty_batch_with_its_trajectory_samples_as_before():
    """The trajectory's memory estimate read x[0], an IndexError for an empty batch, which the samplers map to an empty
    answer (as before round 37)."""
    eps = toy.exact_eps(toy.random_mixture(d=2, K=3, seed=0), AB)
    x, traj = samplers.ddim_sample(eps, torch.zeros(0, 2, dtype=torch.float64), AB, [999, 500], return_trajectory=True)
    assert x.shape == (0, 2) and len(traj["x"]) == 3


def test_round_38_networks_trained_or_loaded_by_train_carry_their_schedule(tmp_path):
    """A network from train.train (return_models), train.load_trained (and so pretrained.digits_model) carried no
    schedule, so sampling it on another table than its training one went through to finite, wrong images; it now carries
    its config's table as load_model's network does (`checkpoint.carry_schedule`), and its own table passes."""
    from ddimlab import train

    tiny = {"steps": 1, "ch": 8, "ch_mult": (1,), "attn_resolutions": (), "num_groups": 4, "batch_size": 16,
            "n_samples": 0, "progress": False, "warmup": 1, "schedule": "cosine", "out": str(tmp_path / "run")}
    out, model, ema = train.train(train.make_config("digits", tiny), return_models=True)
    loaded, config = train.load_trained(out / "ckpt.pt")
    own, linear = schedule.make_alpha_bar("cosine", 1000), schedule.make_alpha_bar("linear", 1000)
    x_T, seq = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), schedule.timesteps(2, 1000)
    for net in (model.eval(), ema, loaded):
        with pytest.raises(ValueError, match=r"^alpha_bar \(T = 1000\) is not the schedule eps was made for .*pass the "
                                             r"table the network was trained on \(eps\.alpha_bar"):
            samplers.ddim_sample(checkpoint.eps_fn(net), x_T, linear, seq)
        assert bool(torch.isfinite(samplers.ddim_sample(checkpoint.eps_fn(net), x_T, own, seq)).all())


def test_round_38_log_likelihood_refuses_samples_that_mix_without_sample_0(toy_setup):
    """The batch-mixing probe looked only at the gradient of the other samples' ε with respect to sample 0, so an ε in
    which samples 1 and 2 mix (and sample 0 does not) gave finite, wrong densities: the one-sample-at-a-time answer is
    the reference it missed. Every ordered pair is now looked at; each sample on its own still passes."""
    mix, eps, _, _ = toy_setup
    x0 = mix.sample(5, torch.Generator().manual_seed(1))
    swap = [0, 2, 1, 3, 4]

    def mixing(x, t):                                  # samples 1 and 2 see each other; 0, 3 and 4 only themselves
        return eps(x, t) + 0.3 * x[swap]

    kw = dict(alpha_bar=AB, t_start=500, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="^eps mixes the samples of a batch"):
        ode.log_likelihood(mixing, x0, **kw)
    for rows in ([0, 1, 2, 3, 3], [0, 1, 2, 4, 4]):     # one way only: sample 4 sees sample 3, or 3 sees 4
        one_way = lambda x, t, rows=rows: eps(x, t) + 0.3 * x[rows]                         # noqa: E731
        with pytest.raises(ValueError, match="^eps mixes the samples of a batch"):
            ode.log_likelihood(one_way, x0, **kw)
    apart = lambda x, t: eps(x, t) + 0.3 * x                                             # noqa: E731
    torch.testing.assert_close(ode.log_likelihood(apart, x0, **kw),
                               torch.cat([ode.log_likelihood(apart, x0[i:i + 1], **kw) for i in range(5)]), rtol=0, atol=1e-4)


def test_round_40_the_exact_divergence_of_an_image_sized_sample_is_refused_naming_hutchinson():
    """ode.log_likelihood with hutchinson=None at d = 3072 (a CIFAR image) took 3072 backward passes per ε call, about a
    thousand calls per solve: on one CPU thread, with the tests' 8-channel UNet, about 53 s per call, most of a day per
    batch, with no word. Above EXACT_DIVERGENCE_MAX coordinates it is now refused before the first ε call, naming
    hutchinson=k; at the limit, and with hutchinson=1 above it, log_likelihood goes on to call ε."""
    class Called(Exception):
        pass

    calls = []

    def eps(x, t):                                     # reached only past the argument checks
        calls.append(1)
        raise Called

    most = ode.EXACT_DIVERGENCE_MAX
    for shape, d in (((2, 3, 32, 32), "3,072"), ((1, most + 1), f"{most + 1:,}")):
        with pytest.raises(ValueError, match=rf"^the exact divergence \(hutchinson=None\) takes d = {d} backward passes .* "
                                             r"pass hutchinson=k \(k probes per sample"):
            ode.log_likelihood(eps, torch.zeros(shape, dtype=torch.float64), AB, rtol=1e-3, atol=1e-3)
    assert not calls
    for x, k in ((torch.zeros(1, most, dtype=torch.float64), None), (torch.zeros(1, 3, 32, 32, dtype=torch.float64), 1)):
        with pytest.raises(Called):
            ode.log_likelihood(eps, x, AB, rtol=1e-3, atol=1e-3, hutchinson=k)
    assert len(calls) == 2


def test_round_40_the_memory_check_says_whether_a_containers_limit_or_the_machine_set_it(monkeypatch):
    """checks.check_fits said "this machine's N GiB" where N was a control group's limit (a container's, below the
    machine's memory): a user then looked for memory the machine has. It now names the container's limit where that sets
    the size, and the machine's where sysconf does (or where both are one size)."""
    from ddimlab import checks

    gib = 2 ** 30
    for box, machine, said in ((gib, 64 * gib, "this container's memory limit of 1 GiB"),
                               (math.inf, gib, "this machine's 1 GiB"), (64 * gib, gib, "this machine's 1 GiB"),
                               (gib, gib, "this machine's 1 GiB")):
        monkeypatch.setattr(checks, "cgroup_memory", lambda box=box: box)
        monkeypatch.setattr(checks, "physical_memory", lambda machine=machine: machine)
        with pytest.raises(ValueError, match=rf"^toy\.random_mixture\(d=2000, K=4\) .*: about 1\.4 GiB, more than half of "
                                             rf"{re.escape(said)}; "):
            toy.random_mixture(d=2000, K=4)
    monkeypatch.setattr(checks, "memory_limit", lambda: 64 * 2 ** 20)      # a test's limit is not the container's
    monkeypatch.setattr(checks, "cgroup_memory", lambda: gib)
    with pytest.raises(ValueError, match=r"more than half of this machine's 0\.12 GiB"):
        checks.check_fits(gib, "one GiB", lambda limit: "")


def test_round_40_tensors_kept_on_a_gpu_are_checked_against_its_free_memory(monkeypatch):
    """The trajectory's memory check (samplers.check_args, `return_trajectory=True`) was skipped for CUDA tensors, so a
    GPU run that outgrew the card failed at its end in torch's allocator. checks.check_fits(device=cuda) now compares
    with half of the card's free memory (the driver's free memory plus what torch's cache holds unused), named as the
    card's; faked here with torch.cuda's functions (no GPU on the test machine)."""
    from ddimlab import checks

    gib = 2 ** 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: gib)    # 1 GiB cached, free to torch
    assert checks.device_memory_limit("cuda:0") == 2 * gib
    checks.check_fits(2 * gib, "two GiB", lambda limit: "", device="cuda:0")
    with pytest.raises(ValueError, match=r"^a trajectory: about 2\.5 GiB, more than half of cuda:1's free 4 GiB; keep at "
                                         r"most 2,147,483,648 bytes$"):
        checks.check_fits(2.5 * gib, "a trajectory", lambda limit: f"keep at most {int(limit):,} bytes",
                          device=torch.device("cuda", 1))
    monkeypatch.setattr(checks, "memory_limit", lambda: 64 * 2 ** 20)             # the CPU's own limit is the machine's
    checks.check_fits(gib, "one GiB", lambda limit: "", device="cuda:0")
    with pytest.raises(ValueError, match="this machine's 0.12 GiB"):
        checks.check_fits(gib, "one GiB", lambda limit: "", device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_round_40_a_trajectory_on_a_gpu_past_its_free_memory_is_refused_before_the_first_step(monkeypatch):
    """On a GPU: return_trajectory=True on a CUDA x_T is checked against the card's free memory (set small here)."""
    from ddimlab import checks

    monkeypatch.setattr(checks, "device_memory_limit", lambda device: 2 ** 20)
    x_T, calls = torch.randn(4096, 2, device="cuda"), ode.counted(lambda x, t: torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"^return_trajectory=True keeps 2001 tensors .* more than half of cuda:0's free"):
        samplers.ddim_sample(calls, x_T, AB, schedule.timesteps(1000, 1000), return_trajectory=True)
    assert calls.calls == 0


def _huge(x, t):
    """A real failed allocation: 2**62 bytes on the CPU."""
    torch.empty(2 ** 62, dtype=torch.uint8)


SPLIT_SAMPLES = r"generate\.generate_samples splits a run into batch_size ones"
SPLIT_ODE = r"each sample's ODE is its own: call it on parts of the batch, x\.split\(k\)"
OOM_RUNS = {"ddim_sample": (lambda e, x_T, seq: samplers.ddim_sample(e, x_T, AB, seq), SPLIT_SAMPLES),
            "heun": (lambda e, x_T, seq: ode.heun(e, x_T, AB, seq), SPLIT_SAMPLES),
            "reference_solution": (lambda e, x_T, seq: ode.reference_solution(e, x_T, AB, 999, rtol=1e-6, atol=1e-6), SPLIT_ODE),
            "log_likelihood": (lambda e, x_T, seq: ode.log_likelihood(e, x_T, AB, rtol=1e-6, atol=1e-6), SPLIT_ODE)}


@pytest.mark.parametrize("name", OOM_RUNS)
def test_rounds_40_41_a_batch_too_large_for_the_network_is_said_in_one_line_of_its_own_type(toy_setup, name):
    """A batch too large for the network failed inside torch's allocator, with its own page ("[enforce fail at
    alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: ...", or CUDA's paragraph on reserved memory and
    PYTORCH_CUDA_ALLOC_CONF): in the samplers and solvers (round 40), and in the scipy paths, which call ε through their
    own right-hand side (round 41). All now call it through `samplers.eval_eps`, which says the batch, the device and how
    to split it, as the same type of error (torch's chained as its cause). The allocation is real (2**62 bytes on the
    CPU), and CUDA's is its error as torch raises it; any other error passes unchanged. The commands still read the line
    as an allocation's failure (`checks.out_of_memory`), with its size."""
    from ddimlab.checks import out_of_memory

    _, eps, x_T, seq = toy_setup
    run, split = OOM_RUNS[name]

    def cuda_full(x, t):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 "
                                     "GiB of which 1.02 GiB is free. Including non-PyTorch memory, this process has ...")

    def other(x, t):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (16x2 and 3x4)")

    for e, kind, size in ((_huge, RuntimeError, f"{2 ** 62} bytes"), (cuda_full, torch.OutOfMemoryError, "2.00 GiB")):
        with pytest.raises(kind, match=rf"^eps\(x, t\) ran out of memory \(it asked for {size}\) on a batch of 16 samples "
                                       rf"of shape \(2,\) on cpu: pass fewer samples per call \({split}\)$") as caught:
            run(e, x_T, seq)
        assert type(caught.value.__cause__) is kind and out_of_memory(caught.value) == f" (it asked for {size})"
    with pytest.raises(RuntimeError, match=r"^mat1 and mat2 shapes cannot be multiplied"):
        run(other, x_T, seq)


def test_round_41_an_eps_of_bool_integer_or_complex_values_is_refused_in_the_scipy_paths_and_thresholded_eps(toy_setup):
    """The samplers refuse an ε of another dtype than x's, but the ODE's scipy paths, which take a coarser float (a float32
    network for float64 x), took any dtype: a complex ε lost its imaginary part in reference_solution without a word, a
    bool ε (True read as 1) stalled solve_ivp on its jumps, and log_likelihood said to pass a differentiable network;
    thresholded_eps formed x0 from a bool ε and returned finite, wrong samples. Now each says what eps returned."""
    _, eps, x_T, seq = toy_setup
    x = x_T[:4]
    kinds = {torch.bool: lambda x, t: eps(x, t) > 0, torch.int64: lambda x, t: eps(x, t).long(),
             torch.complex128: lambda x, t: eps(x, t).to(torch.complex128)}
    for dtype, bad in kinds.items():
        said = rf"must return floating-point eps \(any floating dtype\), got {dtype}$"
        with pytest.raises(ValueError, match=rf"^eps\(x, t\) {said}"):
            ode.reference_solution(bad, x, AB, 999, rtol=1e-3, atol=1e-3)
        with pytest.raises(ValueError, match=rf"^eps\(x, t\) {said}"):
            ode.log_likelihood(bad, x, AB, rtol=1e-3, atol=1e-3)
        with pytest.raises(ValueError, match=rf"^thresholded_eps: eps {said}"):
            ode.euler(ode.thresholded_eps(bad, AB, 0.9, 1.0), x, AB, seq)
    float32 = ode.reference_solution(lambda x, t: eps(x, t).float(), x, AB, 999, rtol=1e-4, atol=1e-4)    # still taken
    assert float((float32 - ode.reference_solution(eps, x, AB, 999, rtol=1e-4, atol=1e-4)).abs().max()) < 1e-3


def test_round_41_an_eps_on_another_device_than_x_is_named(toy_setup):
    """An ε returned on another device than x (a CPU network's ε for CUDA samples; meta here, which holds no values)
    stopped every sampler, solver and the scipy paths inside torch ("Tensor.item() cannot be called on meta tensors"),
    as a noise_sampler on another device did before round 35."""
    _, eps, x_T, seq = toy_setup
    x = x_T[:4]

    def elsewhere(x, t):
        return eps(x, t).to("meta")
    for run, who in ((lambda: samplers.ddim_sample(elsewhere, x, AB, seq), "eps\\(x, t\\)"),
                     (lambda: ode.heun(elsewhere, x, AB, seq), "eps\\(x, t\\)"),
                     (lambda: ode.reference_solution(elsewhere, x, AB, 999, rtol=1e-3, atol=1e-3), "eps\\(x, t\\)"),
                     (lambda: ode.log_likelihood(elsewhere, x, AB, rtol=1e-3, atol=1e-3), "eps\\(x, t\\)"),
                     (lambda: ode.euler(ode.thresholded_eps(elsewhere, AB), x, AB, seq), "thresholded_eps: eps")):
        with pytest.raises(ValueError, match=rf"^{who} must return eps on x's device, cpu, got it on meta$"):
            run()


def test_round_41_heun_invert_in_float16_says_where_it_overflows_not_blaming_eps():
    """heun_invert integrates x̄ = x/√ᾱ, which towards noise grows as σ (20 291 at the cosine schedule's t = 999): in
    float16 its predictor passed 65 504 and ε was called on inf, which toy.exact_eps refused as its own input ("x contains
    NaN or inf") and a network's NaN was blamed on the model. Now the step and the fix are said; ddim_invert, which works
    in x, still runs in float16."""
    cos = schedule.make_alpha_bar("cosine", 1000)
    eps = toy.exact_eps(toy.random_mixture(d=2, K=3, seed=0), cos)
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)).half()
    seq = schedule.timesteps(10, 1000, "trailing")
    with pytest.raises(samplers.NonFiniteError, match=r"^step 899 -> 999 gave NaN or inf in torch\.float16 from a finite "
                                                      r"eps; run in float32 \(x_T\.float\(\), or x0\.float\(\) for an "
                                                      r"inversion\)$"):
        ode.heun_invert(eps, x0, cos, seq)
    assert bool(torch.isfinite(ode.heun_invert(eps, x0.float(), cos, seq)).all())
    assert bool(torch.isfinite(samplers.ddim_invert(eps, x0, cos, seq)).all())


def test_round_42_guided_eps_checks_each_inner_eps_as_every_eps_is_checked(toy_setup):
    """guided_eps checked only the shape of what eps_null and eps_cond returned: a bool ε failed inside torch ("Subtraction,
    the `-` operator, with a bool tensor is not supported"), an integer one was read as numbers and sampled to finite,
    wrong x_0, one on another device stopped deep in torch ("Tensor on device meta is not on the expected device cpu!").
    Each inner ε is now checked as every ε is (`samplers.of_eps_kind`), naming which."""
    _, eps, x_T, seq = toy_setup
    x = x_T[:4]
    floating = r"floating-point eps \(any floating dtype\), got torch\."
    bad = (("eps_cond", lambda x, t: eps(x, t) > 0, floating + "bool"),
           ("eps_null", lambda x, t: eps(x, t).long(), floating + "int64"),
           ("eps_null", lambda x, t: eps(x, t).to("meta"), r"eps on x's device, cpu, got it on meta"))
    for which, f, said in bad:
        guided = samplers.guided_eps(f, eps, 2.0) if which == "eps_null" else samplers.guided_eps(eps, f, 2.0)
        with pytest.raises(ValueError, match=rf"^guided_eps: {which} must return {said}$"):
            samplers.ddim_sample(guided, x, AB, seq)


def test_round_42_eps_wrappers_hand_their_inner_eps_dtype_on(toy_setup):
    """The samplers refuse an ε of another dtype than x's, and the scipy paths take a coarser one but hold their
    tolerances to its rounding (`samplers.of_eps_kind`). Wrapped, a float32 ε for float64 x came back as float64:
    thresholded_eps (and guided_eps with one float32 ε) sampled without a word, and reference_solution took rtol = 1e-10
    of float32 values (over a minute of ever smaller steps, where the bare ε is refused at once). A wrapper now returns its
    inner ε's dtype (the coarser of guided_eps's two), so the caller's rule meets the inner ε; in one dtype nothing changes."""
    _, eps, x_T, seq = toy_setup
    x = x_T[:4]
    f32 = lambda x, t: eps(x, t).float()      # noqa: E731  a float32 network behind a lambda
    dtype = r"^eps\(x, t\) returned dtype torch\.float32 but x is torch\.float64; cast one of them$"
    for wrapped in (f32, ode.thresholded_eps(f32, AB), samplers.guided_eps(f32, eps, 2.0), samplers.guided_eps(eps, f32, 2.0)):
        with pytest.raises(ValueError, match=dtype):
            samplers.ddim_sample(wrapped, x, AB, seq)
        with pytest.raises(ValueError, match=r"^rtol = 1e-10 is finer than the float32 that eps\(x, t\) returns can give"):
            ode.reference_solution(wrapped, x, AB, 999, 0, rtol=1e-10, atol=1e-10)
    thr = ode.thresholded_eps(eps, AB, 0.9, 1.0)
    t = torch.full((4,), 500)
    assert thr(x, t).dtype == torch.float64 and ode.thresholded_eps(f32, AB, 0.9, 1.0)(x, t).dtype == torch.float32
    # float32 x throughout: as before (the thresholding of a float32 ε, computed in float32)
    assert ode.thresholded_eps(f32, AB, 0.9, 1.0)(x.float(), t).dtype == torch.float32
    assert samplers.guided_eps(eps, eps, 2.0)(x, t).dtype == torch.float64


@pytest.mark.parametrize("fail_at", [1, 5])
def test_round_42_an_allocation_failing_in_log_likelihoods_backward_passes_is_said_in_one_line(toy_setup, fail_at):
    """log_likelihood's divergence is d backward passes through ε per call (or one per Hutchinson probe), and `_check_apart`
    k more at the start: an allocation that failed in them (the vector-Jacobian products, not ε's forward call, which
    `samplers.eval_eps` says) still showed torch's page. It is now the same one line (`samplers.memory_said`). The
    allocation is real: 2**62 bytes in ε's backward, from its first pass (the divergence at the first point) or its fifth
    (after the two divergences of `_check_deterministic`, d = 2: in `_check_apart`)."""
    from ddimlab.checks import out_of_memory

    _, eps, x_T, _ = toy_setup
    passes = []

    class HugeBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            passes.append(1)
            if len(passes) >= fail_at:
                _huge(None, None)
            return g

    x = x_T[:4]
    with pytest.raises(RuntimeError, match=r"^log_likelihood's backward passes through eps \(the divergence's vector-Jacobian "
                                           rf"products\) ran out of memory \(it asked for {2 ** 62} bytes\) on a batch of 4 "
                                           rf"samples of shape \(2,\) on cpu: pass fewer samples per call \({SPLIT_ODE}\)$") \
            as caught:
        ode.log_likelihood(lambda x, t: eps(HugeBackward.apply(x), t), x, AB, rtol=1e-6, atol=1e-6)
    assert type(caught.value.__cause__) is RuntimeError and out_of_memory(caught.value) == f" (it asked for {2 ** 62} bytes)"
    assert len(passes) == fail_at


def test_round_43_the_bound_calls_and_checks_eps_as_the_samplers_do():
    """elbo.elbo_terms called eps_model itself and checked its answer its own way: an ε on another device (meta here; a
    CPU network for CUDA data) failed inside torch ("cannot be called on meta tensors"), a bool one was a TypeError where
    the samplers say ValueError, and an allocation that failed in the network was torch's page. It now calls ε through
    `samplers.eval_eps` (one line, with how to split the batch: x0 repeated n_mc times) and checks it with
    `samplers.of_eps_kind`, as l_simple does; an ε of another floating dtype than x0's is still taken (the terms are
    computed in float32 or wider)."""
    ab = schedule.make_alpha_bar("linear", 10)
    x0 = torch.arange(8.0).reshape(2, 1, 2, 2) / 127.5 - 1
    for f in (elbo.bits_per_dim, elbo.l_simple):
        with pytest.raises(ValueError, match=r"^eps_model\(x_t, t\) must return eps on x's device, cpu, got it on meta$"):
            f(lambda x, t: torch.zeros_like(x, device="meta"), x0, ab)
    split = re.escape(elbo.SPLIT_BOUND)
    with pytest.raises(RuntimeError, match=rf"^eps\(x, t\) ran out of memory \(it asked for {2 ** 62} bytes\) on a batch of 6 "
                                           rf"samples of shape \(1, 2, 2\) on cpu: pass fewer samples per call \({split}\)$") \
            as caught:
        elbo.bits_per_dim(_huge, x0, ab, n_mc=3)
    assert type(caught.value.__cause__) is RuntimeError
    wide, own = (elbo.bits_per_dim(lambda x, t, d=d: torch.zeros_like(x, dtype=d), x0, ab,
                                   generator=torch.Generator().manual_seed(0)) for d in (torch.float64, torch.float32))
    assert torch.equal(wide, own)


def _reproduce_cell(folder: Path) -> dict:
    """A `reproduce table1` cell as `generate_samples` leaves it: settings.json recording seed and S, and its PNGs."""
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps({"seed": 0, "S": 2, "eta": "0"}))
    (folder / "000000.png").write_bytes(b"a sample")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_round_45_lab_and_demo_called_from_python_refuse_a_reproduce_cell(tmp_path, monkeypatch):
    """Round 44 made `lab` and `demo` refuse an --out that is a `reproduce table1` cell, in the command line only:
    `lab.main(out=cell)` and `demo.main(args)` (what the commands call) ran the tables and wrote table1.txt and
    table1.png among the cell's images. The refusal is now in `lab.main`, which both reach, before any table."""
    import argparse

    from cli_support import small_lab_tables

    from ddimlab import demo, lab
    small_lab_tables(monkeypatch)
    cell = tmp_path / "samples" / "eta0_S2"
    before = _reproduce_cell(cell)
    said = (rf"^--out {re.escape(str(cell))} is a folder of samples for FID \(its settings.json says how `reproduce` made "
            r"them\), which holds only those; choose another --out$")
    with pytest.raises(ValueError, match=said):
        lab.main(out=cell, n=8, image_d=0)
    with pytest.raises(ValueError, match=said):
        demo.main(argparse.Namespace(out=str(cell), skip_train=True, train_steps=None, n=None, seed=0, no_progress=True))
    assert {p.name: p.read_bytes() for p in cell.iterdir()} == before


def test_round_45_lab_main_names_an_out_that_is_no_path_or_blank(tmp_path, monkeypatch):
    """`lab.main(out=None)` (or a number) failed in pathlib ("expected str, bytes or os.PathLike object, not NoneType"),
    naming no argument, and `lab.main(out="")`, which the command line refuses as blank, wrote table1.txt and the
    figures into the current folder (pathlib reads "" as "."). Both are refused before any table, as `lab --out ""` is;
    `demo.main` reaches the same check."""
    from cli_support import small_lab_tables

    from ddimlab import lab
    small_lab_tables(monkeypatch)
    monkeypatch.chdir(tmp_path)
    for out in (None, 5):
        said = rf"^out must be a folder's path \(a str or pathlib.Path\), got {type(out).__name__}$"
        with pytest.raises(TypeError, match=said):
            lab.main(out=out, n=8, image_d=0)
    for out in ("", "  "):
        with pytest.raises(ValueError, match=r"^out is empty; give a folder for table1.txt and the figures$"):
            lab.main(out=out, n=8, image_d=0)
    assert list(tmp_path.iterdir()) == []


def test_sdedit_law_names_an_x_in_that_is_not_one_number():
    """`samplers.sdedit_law` follows one 1-D point: a batch of them was told "must be a finite number" with the whole
    tensor printed (a thousand numbers for a thousand points); now its shape is named."""
    ab = schedule.make_alpha_bar("linear", 50)
    with pytest.raises(ValueError, match=r"^x_in must be one finite number .* got x_in = shape \(1000, 1\), span = 6.0$"):
        samplers.sdedit_law(lambda x, t: x, torch.zeros(1000, 1), ab, torch.arange(10, -1, -1))


def test_round_46_a_network_or_input_on_the_meta_device_is_one_valueerror_at_the_entry():
    """A network built under torch.device("meta") and never given weights, through checkpoint.eps_fn, ran into the
    samplers and the ODE solvers and failed inside the network at the first step with torch's "Tensor on device meta is
    not on the expected device cpu!"; slerp and sdedit_law of a meta tensor said "Tensor.item() cannot be called on meta
    tensors". Each is now a ValueError before any step (`samplers.check_weights`, `checks.as_real`)."""
    from ddimlab import unet
    from ddimlab.checks import as_real

    ab = schedule.make_alpha_bar("linear", 50)
    seq = torch.arange(49, -1, -10)
    with torch.device("meta"):
        net = unet.UNet(**unet.PRESETS["tiny"])
    eps = checkpoint.eps_fn(net)
    x = torch.zeros(1, unet.PRESETS["tiny"]["in_ch"], 8, 8)
    meta = "network \\(UNet\\) has weights on the meta device, which hold shapes but no values: load its weights"
    for run in (lambda: samplers.ddim_sample(eps, x, ab, seq), lambda: samplers.ddpm_sample(eps, x, ab),
                lambda: ode.heun(eps, x, ab, seq), lambda: samplers.sample(eps, tuple(x.shape), ab, S=3)):
        with pytest.raises(ValueError, match=f"^eps's {meta}"):
            run()
    with pytest.raises(ValueError, match=f"^guided_eps: eps_null's {meta}"):
        samplers.guided_eps(eps, lambda x, t: x, 2.0)
    z = torch.zeros(2, 3, device="meta")
    with pytest.raises(ValueError, match="^z0 is on the meta device, which holds shapes but no values: slerp"):
        samplers.slerp(z, z, 0.5)
    with pytest.raises(ValueError, match=r"^x_in must be one finite number .* got x_in = tensor\(\.\.\., device='meta'"):
        samplers.sdedit_law(lambda x, t: x, torch.tensor(0.5, device="meta"), ab, seq)
    assert as_real(torch.tensor(0.5, device="meta")) is None and as_real(torch.tensor(0.5)) == 0.5


def test_round_47_tensors_on_two_devices_or_without_values_are_named(tmp_path):
    """q_sample(x0 on meta, a_t, eps on cpu) (and the other way round) said torch's "Tensor on device cpu is not on the
    expected device meta!"; save_image_grid and score_digits of meta images "Cannot copy out of meta tensor; no data!";
    kl_normal and kl_mvn of a meta mean "Tensor.item() cannot be called on meta tensors". Each is a ValueError naming the
    argument now (`diffusion._same_shape`, `checks.check_values`); meta in, meta out still works for q_sample."""
    x, meta = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4, device="meta")
    for x0, eps, said in ((meta, x, "x0 is on meta and eps on cpu"), (x, meta, "x0 is on cpu and eps on meta")):
        with pytest.raises(ValueError, match=rf"^{said}: put both on one device, e\.g\. eps\.to\(x0\.device\) \(a meta "
                                             rf"tensor holds shapes but no values\)$"):
            diffusion.q_sample(x0, 0.5, eps)
    with pytest.raises(ValueError, match=r"^x_t is on cpu and eps on meta: put both on one device"):
        diffusion.predict_x0(x, meta, 0.5)
    assert diffusion.q_sample(meta, 0.5, meta).is_meta
    with pytest.raises(ValueError, match=r"^x is on the meta device, which holds shapes but no values: drawing"):
        plotting.save_image_grid(meta, tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()
    with pytest.raises(ValueError, match=r"^samples is on the meta device, which holds shapes but no values: scoring"):
        quality.score_digits(torch.zeros(4, 1, 8, 8, device="meta"))
    m, c = torch.zeros(3, device="meta"), torch.zeros(3)
    for run, name in ((lambda: gaussian.kl_normal(m, 1.0, c, 1.0), "mean1"),
                      (lambda: gaussian.kl_normal(c, 1.0, m, 1.0), "mean2"),
                      (lambda: gaussian.kl_mvn(c, torch.eye(3), c, torch.eye(3, device="meta")), "cov2"),
                      (lambda: gaussian.log_normal(c, m, 1.0), "mean")):
        with pytest.raises(ValueError, match=rf"^{name} is on the meta device, which holds shapes but no values"):
            run()
    assert float(gaussian.kl_normal(c, 1.0, c + 1, 1.0).sum()) == 1.5        # ½(μ₁ − μ₂)² per element, three of them


def test_round_47_latents_for_more_indices_than_fit_are_refused_before_the_list(monkeypatch):
    """generate.latents(0, range(10**12), shape) built the list of indices until a MemoryError (at once here; on a
    machine that overcommits memory, after a long time). The count is now checked against half the memory before any
    list or draw (`checks.check_fits`), with the most that fit; that many are drawn, one more is refused, and an
    iterator, whose length is not known, is drawn as before."""
    from ddimlab import checks

    with pytest.raises(ValueError, match=r"^1,000,000,000,000 latents of [\d,]+ bytes each \(a draw and a generator\): "
                                         r"about [\d,]+ GiB, more than half of .*; draw at most [\d,]+ at a time$"):
        generate.latents(0, range(10 ** 12), (1, 8, 8))
    per = generate.GENERATOR_BYTES + 2 * 4 * 64
    monkeypatch.setattr(checks, "memory_limit", lambda: 100 * per)
    assert generate.latents(0, range(100), (1, 8, 8)).shape == (100, 1, 8, 8)
    with pytest.raises(ValueError, match=r"draw at most 100 at a time$"):
        generate.latents(0, range(101), (1, 8, 8))
    assert generate.latents(0, iter([3, 1]), (1, 8, 8)).shape == (2, 1, 8, 8)


def test_round_47_an_image_the_os_will_not_read_is_not_called_a_damaged_image(tmp_path, monkeypatch):
    """data.read_images (`invert --input`) of a PNG the OS refuses said "is not an image file Pillow can read (or it is
    truncated)": the OS's error now comes through, which the commands print in its words (`files.error_words`)."""
    from PIL import Image

    from ddimlab.files import error_words

    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(PermissionError) as info:
        data.read_images([png], (1, 8, 8))
    assert error_words(info.value) == f"Permission denied: {png}"


def test_round_48_sample_indices_for_more_images_than_fit_is_refused_before_the_list(tiny_unet):
    """generate.sample_indices(net, range(10**12), ...) built the list of indices until a MemoryError (`latents` was
    checked in round 47, the sampler that draws the same latents was not): both now check the count first, with one
    message, and an empty list says the same in both."""
    seq = schedule.timesteps(5, 1000)
    for call in (lambda ix: generate.sample_indices(tiny_unet, ix, (1, 8, 8), AB, seq),
                 lambda ix: generate.latents(0, ix, (1, 8, 8))):
        with pytest.raises(ValueError, match=r"^1,000,000,000,000 latents of [\d,]+ bytes each .*draw at most [\d,]+ "
                                             r"at a time$"):
            call(range(10 ** 12))
        with pytest.raises(ValueError, match=r"^indices is empty: give the index of at least one image"):
            call([])


def test_round_48_an_alpha_bar_without_values_for_data_with_values_is_named():
    """q_sample, predict_x0, posterior_mean and q_sigma_mean of CPU data with a_t on the meta device said torch's
    "Cannot copy out of meta tensor; no data!", ddim_step "Tensor.item() cannot be called on meta tensors". A ValueError
    names it now (`diffusion.bcast`); meta data with meta ᾱ, shapes only, still runs (ddim_step, with and without noise)."""
    a, b = torch.tensor(0.5, device="meta"), torch.tensor(0.6, device="meta")
    x, m = torch.zeros(2, 3), torch.zeros(2, 3, device="meta")
    for run in (lambda: diffusion.q_sample(x, a, x), lambda: diffusion.predict_x0(x, x, a),
                lambda: diffusion.ddim_step(x, x, a, b), lambda: diffusion.posterior_mean(x, x, a, b),
                lambda: diffusion.q_sigma_mean(x, x, a, b, 0.1), lambda: diffusion.score_from_eps(x, a)):
        with pytest.raises(ValueError, match=r"^an alpha_bar value is on the meta device, which holds shapes but no "
                                             r"values: x is on cpu; pass ᾱ as numbers or a tensor there$"):
            run()
    assert diffusion.ddim_step(m, m, a, b)[0].is_meta and diffusion.ddim_step(m, m, a, b, 1.0, noise=m)[0].is_meta


def test_round_48_lagrange_integrals_refuses_nodes_it_cannot_interpolate():
    """ode.lagrange_integrals([0, 0], 0, 1) returned [nan, nan] with numpy's "divide by zero" warnings, a NaN node NaN
    weights, a negative σ with ρ = 3 NaN (a complex root), and ρ = 0.5 weights of no interpolant. Each is a ValueError."""
    for args, said in ((([0.0, 0.0], 0.0, 1.0), r"^a node = 0\.0 is listed twice"),
                       (([1.0, float("nan")], 0.0, 1.0), r"^nodes, a and b must be finite numbers, got nodes \[1\.0, nan\]"),
                       (([1.0, 0.5], 1.0, float("inf")), r"^nodes, a and b must be finite numbers, got .* b = inf$"),
                       (([1.0, -0.5], 1.0, 0.0, 3.0), r"^nodes, a and b must be finite numbers >= 0 \(sigmas, with rho"),
                       (([1.0, 0.5], 1.0, 0.0, 0.5), r"^rho must be a finite number >= 1, got 0\.5$")):
        with pytest.raises(ValueError, match=said):
            ode.lagrange_integrals(*args)
    # ρ = 1: any distinct nodes (Adams' are u ≤ 0); ℓ = (u + 1)/2, (1 − u)/2 integrated from 1 down to 0 by hand
    assert ode.lagrange_integrals([1.0, -1.0], 1.0, 0.0) == [-0.75, -0.25]


def test_round_48_lab_difference_of_a_cell_of_another_table_is_named():
    """lab.difference (and lab.beyond) of a dict without mmd2, a tables.score_grid row say, was a bare KeyError 'mmd2'."""
    from ddimlab import lab
    good = {"mmd2": 0.5, "se": 0.1}
    for a, b, said in (({"fd": 1.0}, good, r"^a must be a row of lab\.table1 \(a dict with mmd2 and se\), got one without "
                                           r"mmd2, se$"),
                       (good, [0.5, 0.1], r"^b must be a row of lab\.table1 .*got list$")):
        with pytest.raises(ValueError, match=said):
            lab.difference(a, b)
    assert lab.difference(good, {"mmd2": 0.2, "se": 0.3}) == pytest.approx((0.3, math.hypot(0.1, 0.3)))
