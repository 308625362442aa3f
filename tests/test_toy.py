"""Exact-score lab: closed forms against autograd, scipy and Monte Carlo (notebook 04 §5)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import cdist
from scipy.stats import multivariate_normal

from ddimlab import checks, ode, samplers, schedule, toy
from ddimlab.diffusion import eps_from_v, posterior_mean, predict_x0, q_sample, x0_from_v

AB = schedule.make_alpha_bar("linear", 1000)


@pytest.fixture(scope="module")
def mix():
    return toy.random_mixture(d=3, K=4, seed=1)


def test_log_prob_matches_scipy(mix):
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = np.log(sum(float(w) * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
                     for w, m, c in zip(mix.weights, mix.means, mix.covs)))
    np.testing.assert_allclose(mix.log_prob(x).numpy(), ref, rtol=1e-10)


@pytest.mark.parametrize("a", [0.999, 0.5, 0.01])
def test_eps_is_autograd_score_of_marginal(mix, a):
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_()
    pt = mix.marginal(a)                       # a separate mixture object with the covariances aΣ+(1−a)I
    (grad,) = torch.autograd.grad(pt.log_prob(x).sum(), x)
    torch.testing.assert_close(mix.eps(x.detach(), a), -math.sqrt(1 - a) * grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mix.score(x.detach(), a), grad, rtol=1e-10, atol=1e-12)


def test_per_sample_alpha_bar_matches_scalar(mix):
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = torch.tensor([0.9, 0.5, 0.1, 0.99, 1.0], dtype=torch.float64)
    rows = torch.cat([mix.eps(x[i:i + 1], float(a[i])) for i in range(5)])
    torch.testing.assert_close(mix.eps(x, a), rows, rtol=1e-12, atol=1e-14)
    assert bool((mix.eps(x, 1.0) == 0).all())        # clean data: nothing to predict


@pytest.mark.parametrize("d", [1, 3])
def test_one_step_for_every_row_is_the_per_row_answer_bit_for_bit(d, monkeypatch):
    """The samplers and solvers pass one step B times (`samplers.call_eps`): exact_eps then looks ᾱ up once and hands the
    mixture one 0-d ᾱ (`ode._one_step`), which it checks and uses once (notebook 10 runs faster so). Each row must be the
    very number it is where the rows' steps differ (the per-row path), for integer and fractional steps and through
    `ode.thresholded_eps`; and where a graph is recorded (x requiring grad) the mixture computes out of place: the same
    numbers again (tests the in-place arithmetic of `GaussianMixture._components`)."""
    mix = toy.random_mixture(d=d, K=4, seed=3)
    eps = toy.exact_eps(mix, AB)
    thr = ode.thresholded_eps(eps, AB)
    x = 1.5 * torch.randn(300, d, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    given = []
    real_eps = mix.eps
    monkeypatch.setattr(mix, "eps", lambda x, a: given.append(a) or real_eps(x, a))
    for t in (0, 17, 500, 999, 0.5, 250.25, 998.7):
        one = torch.full((300,), t, dtype=torch.long if isinstance(t, int) else torch.float64)
        rows = one.clone()
        rows[-1] = 3                                   # one row at another step: the per-row path
        for f in (eps, thr):
            got = f(x, one)
            assert torch.equal(got[:-1], f(x, rows)[:-1]), (f, t)
        assert given[-4].ndim == 0 and given[-3].shape == (300,) and given[-2].ndim == 0 and given[-1].shape == (300,)
        graph = eps(x.clone().requires_grad_(), one)
        assert graph.requires_grad and torch.equal(graph.detach(), eps(x, one)), t


def test_the_1d_rotation_as_a_product_is_the_matrix_product_bit_for_bit(monkeypatch):
    """For d = 1 the mixture rotates by an elementwise product (`GaussianMixture._rotate`), not by a batched matrix
    product: the same numbers, on notebook 10's two-class mixture at every step kind."""
    mix = toy.GaussianMixture(torch.tensor([0.5, 0.25, 0.25]), torch.tensor([[-1.0], [0.5], [1.5]]),
                              torch.tensor([0.09, 0.04, 0.04])[:, None, None])
    x = 2 * torch.randn(500, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = {a: (mix.eps(x, a), mix.x0_mean(x, a), mix.log_prob(x, a)) for a in (0.0, 1e-4, 0.3, 0.99, 1.0)}
    monkeypatch.setattr(toy.GaussianMixture, "_rotate", lambda self, U, v: U @ v)
    for a, (e, m, lp) in got.items():
        assert torch.equal(e, mix.eps(x, a)) and torch.equal(m, mix.x0_mean(x, a)) and torch.equal(lp, mix.log_prob(x, a))


def _moments_close(x, mean, cov, n_se=5.0):
    n = x.shape[0]
    se_mean = (cov.diagonal() / n).sqrt()
    assert bool(((x.mean(0) - mean).abs() < n_se * se_mean).all()), (x.mean(0), mean)
    xc = x - mean
    emp = xc.T @ xc / n
    var_cov = ((xc[:, :, None] * xc[:, None, :] - cov) ** 2).mean(0) / n   # SE² of each covariance entry
    assert bool(((emp - cov).abs() < n_se * var_cov.sqrt()).all()), (emp, cov)


def _mixture_moments(m):
    mean = m.weights @ m.means
    second = (m.weights[:, None, None] * (m.covs + m.means[:, :, None] * m.means[:, None, :])).sum(0)
    return mean, second - torch.outer(mean, mean)


def test_sample_moments(mix):
    x = mix.sample(40000, torch.Generator().manual_seed(3))
    _moments_close(x, *_mixture_moments(mix))


@pytest.mark.parametrize("t", [50, 400, 900])
def test_marginal_matches_q_sample(mix, t):
    g = torch.Generator().manual_seed(4 + t)
    x0 = mix.sample(40000, g)
    a = float(AB[t])
    xt = q_sample(x0, a, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    _moments_close(xt, *_mixture_moments(mix.marginal(a)))


@pytest.mark.parametrize("t", [30, 300, 800])
def test_eps_is_conditional_mean_of_the_noise(mix, t):
    """ε*(x_t) = E[ε | x_t]: the residual ε − ε* is uncorrelated with every function of x_t, which is
    why denoising and explicit score matching differ by a constant (notebook 04 §5)."""
    g = torch.Generator().manual_seed(10 + t)
    n, a = 100_000, float(AB[t])
    eps = torch.randn(n, 3, generator=g, dtype=torch.float64)
    xt = q_sample(mix.sample(n, g), a, eps)
    e_star = mix.eps(xt, a)
    for h in (xt, e_star, torch.sin(3 * xt), torch.ones_like(xt)):
        d = ((eps - e_star) * h).sum(1)
        assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(n)
    # a wrong predictor fails the same test: the residual of 0.9 ε* correlates with ε*
    d = ((eps - 0.9 * e_star) * e_star).sum(1)
    assert abs(float(d.mean())) > 4 * float(d.std()) / math.sqrt(n)


def test_exact_eps_time_arguments(mix):
    eps = toy.exact_eps(mix, AB)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = mix.eps(x, float(AB[300]))
    for t in (300, torch.full((4,), 300), torch.full((4,), 300.0, dtype=torch.float64), 300.0):
        torch.testing.assert_close(eps(x, t), ref, rtol=0, atol=0)
    assert bool((eps(x, -1) == 0).all())
    # continuous t: log ᾱ linear between integer steps, so ᾱ(300.5) is the geometric mean
    a_mid = math.sqrt(float(AB[300]) * float(AB[301]))
    torch.testing.assert_close(eps(x, 300.5), mix.eps(x, a_mid), rtol=1e-12, atol=1e-14)
    assert eps(x.float(), 300).dtype == torch.float32


def test_named_mixtures():
    m2 = toy.eight_gaussians()
    assert (m2.K, m2.d) == (8, 2)
    x = m2.sample(2000, torch.Generator().manual_seed(6))
    assert float(x.abs().max()) < 1.5                       # roughly DDPM's [-1, 1] range
    # the ring's geometry, read back by eigh and atan2: means at radius 0.7, 45° apart, each component's long axis
    # (sd 0.15) along the ring (perpendicular to its mean) and its short one (sd 0.05) across it
    torch.testing.assert_close(m2.means.norm(dim=1), torch.full((8,), 0.7, dtype=torch.float64), rtol=1e-12, atol=0)
    angles = torch.atan2(m2.means[:, 1], m2.means[:, 0]).remainder(2 * math.pi).sort().values
    torch.testing.assert_close(angles, torch.arange(8, dtype=torch.float64) * math.pi / 4, rtol=0, atol=1e-12)
    var, axes = torch.linalg.eigh(m2.covs)                  # ascending: [:, 0] across the ring, [:, 1] along it
    torch.testing.assert_close(var.sqrt(), torch.tensor([0.05, 0.15], dtype=torch.float64).expand(8, 2), rtol=1e-12, atol=0)
    assert float((axes[:, :, 1] * m2.means).sum(1).abs().max()) < 1e-12
    torch.testing.assert_close(m2.weights, torch.full((8,), 1 / 8, dtype=torch.float64), rtol=1e-12, atol=0)
    md = toy.random_mixture(d=8, K=5, seed=3)
    assert (md.K, md.d) == (5, 8)
    torch.testing.assert_close(md.means, toy.random_mixture(d=8, K=5, seed=3).means)   # deterministic
    assert toy.default_mixture(2).K == 8 and toy.default_mixture(5).d == 5


def test_mmd_floor_and_resolution():
    m = toy.eight_gaussians()
    g = torch.Generator().manual_seed(7)
    exact = toy.mmd(m.sample(800, g), m, g)
    assert exact.floor > 0 and abs(exact.mmd2) < 4 * exact.floor and not exact.resolved(4)
    # a wrong distribution (components 73% wider) must stand far above the floor
    wide = toy.GaussianMixture(m.weights, m.means, 3.0 * m.covs)
    bad = toy.mmd(wide.sample(800, g), m, g)
    assert bad.resolved(5), bad


def test_default_bandwidth_by_hand():
    """bandwidth = Σ_k w_k √(mean eigenvalue of Σ_k): the ring's components have sds 0.05 and 0.15, so √0.0125; two
    components of weights 3 : 1 and variances (0.04, 0.16) and (1, 1) give ¾ √0.1 + ¼."""
    assert toy.bandwidth(toy.eight_gaussians()) == pytest.approx(math.sqrt((0.05 ** 2 + 0.15 ** 2) / 2), rel=1e-12)
    covs = torch.tensor([[[0.04, 0.0], [0.0, 0.16]], [[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    two = toy.GaussianMixture(torch.tensor([3.0, 1.0], dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64), covs)
    assert toy.bandwidth(two) == pytest.approx(0.75 * math.sqrt(0.1) + 0.25, rel=1e-12)


def test_mmd_floor_is_the_spread_of_the_statistic_over_fresh_exact_samples():
    """The floor, an RMS over 8 null repeats, against the truth from repeats: the SD of mmd2 over 30 calls, each with
    its own 200 exact samples. The ratio of the mean floor to that SD: 0.80 here, 0.80 to 1.24 over seeds 12..21 (the
    null statistic is skewed, so an SD from 30 draws varies more than a normal one's 13%); a floor that is the SE of
    the repeats' mean (1/√8 of it) or three times too large fails."""
    m, g = toy.eight_gaussians(), torch.Generator().manual_seed(12)
    runs = [toy.mmd(m.sample(200, g), m, g) for _ in range(30)]
    floor, spread = np.mean([r.floor for r in runs]), float(np.std([r.mmd2 for r in runs], ddof=1))
    assert 0.6 < floor / spread < 1.6, (floor, spread)


def test_noise_floor_is_the_rms_of_its_null_statistics_recomputed_with_scipy():
    """noise_floor (notebook 09 §1) is the RMS of `repeats` null statistics, each the energy distance between two fresh
    data sets: recomputed here from the same draws (the same generator, after the two sets it skips) with scipy's
    distances, to 1e-6 (measured 1.3e-8, the cancellation in 2E|X−Y| − E|X−X'| − E|Y−Y'|). The repeat tests above
    allow 0.6 to 1.6 of an RMS over 48 draws, which the SD of the repeats (what `null.std()` would give) also passes;
    at 2 and 3 repeats the SD is 1.41 and 1.19 times the RMS here, and fails."""
    mix, n = toy.eight_gaussians(), 30

    def energy(x, y):
        return 2 * cdist(x, y).mean() - cdist(x, x).sum() / (n * (n - 1)) - cdist(y, y).sum() / (n * (n - 1))

    for repeats in (2, 3):
        floor = toy.noise_floor(mix, n, torch.Generator().manual_seed(5), repeats=repeats, kernel=toy.ENERGY)
        g = torch.Generator().manual_seed(5)
        for _ in range(2):
            mix.sample(n, g)
        null = [energy(mix.sample(n, g).numpy(), mix.sample(n, g).numpy()) for _ in range(repeats)]
        assert floor == pytest.approx(math.sqrt(np.mean(np.square(null))), rel=1e-6), (repeats, floor, null)


@pytest.mark.parametrize("t", [30, 300, 800])
def test_x0_mean_is_conditional_mean_of_x0(mix, t):
    """E[x_0 | x_t] by Gaussian conditioning: the residual x_0 − E[x_0 | x_t] is uncorrelated with functions
    of x_t (Monte Carlo), and it equals Tweedie's x̂_0 from ε* (`predict_x0`), an independent formula."""
    g = torch.Generator().manual_seed(20 + t)
    n, a = 100_000, float(AB[t])
    x0 = mix.sample(n, g)
    xt = q_sample(x0, a, torch.randn(n, 3, generator=g, dtype=torch.float64))
    m = mix.x0_mean(xt, a)
    for h in (xt, m, torch.cos(2 * xt), torch.ones_like(xt)):
        d = ((x0 - m) * h).sum(1)
        assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(n)
    d = ((x0 - 0.95 * m) * m).sum(1)                       # a shrunk denoiser fails the same test
    assert abs(float(d.mean())) > 4 * float(d.std()) / math.sqrt(n)
    torch.testing.assert_close(predict_x0(xt[:50], mix.eps(xt[:50], a), a), m[:50], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("t,s", [(300, 150), (100, -1)])
def test_reverse_kernel_is_the_conditional_of_the_forward_pairs(mix, t, s):
    """q(x_s | x_t) (notebook 02 §10): (reverse_sample(x_t), x_t) has the joint moments of forward pairs (x_s, x_t)
    (Monte Carlo, 4 SE), and the kernel's mean is DDPM's posterior mean at the exact x̂_0; a kernel with the prior
    weights in place of r_k(x_t) fails the same moments."""
    g = torch.Generator().manual_seed(30 + t)
    n, a_t, a_s = 100_000, float(AB[t]), 1.0 if s < 0 else float(AB[s])
    x0 = mix.sample(n, g)
    xs = x0 if s < 0 else q_sample(x0, a_s, torch.randn(n, 3, generator=g, dtype=torch.float64))
    xt = q_sample(xs, a_t / a_s, torch.randn(n, 3, generator=g, dtype=torch.float64))     # q(x_t | x_s)
    xs2 = mix.reverse_sample(xt, a_t, a_s, generator=g)
    log_r, mean, v = mix.reverse_kernel(xt, a_t, a_s)
    k = torch.multinomial(mix.weights.expand(n, -1), 1, generator=g)[:, 0]                  # wrong: prior weights
    rows = torch.arange(n)
    xs_bad = mean[rows, k] + mix._from_eigen_k(v[k].sqrt() * torch.randn(n, 3, generator=g, dtype=torch.float64), k)

    def moments(a):
        return [a * xt, a ** 2, a ** 2 * xt.abs(), a ** 3]

    def agree(a):
        return all(bool(((f - h).mean(0).abs() < 4 * (f - h).std(0) / math.sqrt(n)).all())
                   for f, h in zip(moments(a), moments(xs)))
    assert agree(xs2) and not agree(xs_bad)
    torch.testing.assert_close((log_r.exp()[:, :, None] * mean).sum(1)[:50],
                               posterior_mean(mix.x0_mean(xt[:50], a_t), xt[:50], a_t, a_s), rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="s before t"):
        mix.reverse_kernel(xt[:2], 0.9, 0.5)                 # a_t > a_s: s after t


def test_zero_snr_limits(mix):
    """At ᾱ = 0 (SNR = 0): ε* is x_t itself, E[x_0 | x_t] and −v* are the data mean, and x_0 from v* is
    finite where x̂_0 from ε* is 0/0 (notebook 04 §4)."""
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    mean = mix.weights @ mix.means
    torch.testing.assert_close(mix.eps(x, 0.0), x, rtol=0, atol=1e-15)
    torch.testing.assert_close(mix.x0_mean(x, 0.0), mean.expand(6, 3), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x0_from_v(x, mix.v(x, 0.0), 0.0), mean.expand(6, 3), rtol=1e-12, atol=1e-14)
    for a in (1e-2, 1e-6):                                 # v* = √a ε* − √(1−a) E[x_0|x_t] by its definition
        v = math.sqrt(a) * mix.eps(x, a) - math.sqrt(1 - a) * mix.x0_mean(x, a)
        torch.testing.assert_close(mix.v(x, a), v, rtol=1e-12, atol=1e-14)


def test_a_v_network_read_as_eps(mix):
    """Notebook 04 §4: DDIM fed v* as if it were ε explodes, v* through `eps_from_v` samples what ε* samples,
    and at the noisiest step ε* has slope 1 on its input where v* has slope ≈ 0 and sits at minus the data mean."""
    ring = toy.eight_gaussians()
    v_net = lambda x, t: ring.v(x, float(AB[t[0]]))                           # noqa: E731
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    seq = schedule.timesteps(50, 1000, "uniform")
    right = samplers.ddim_sample(toy.exact_eps(ring, AB), x_T, AB, seq)
    converted = samplers.ddim_sample(lambda x, t: eps_from_v(x, v_net(x, t), float(AB[t[0]])), x_T, AB, seq)
    torch.testing.assert_close(converted, right, rtol=0, atol=1e-10)
    assert float(samplers.ddim_sample(v_net, x_T, AB, seq).norm(dim=1).mean()) > 10 * float(right.norm(dim=1).mean())
    x, a = torch.randn(4000, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64), float(AB[-1])
    slope = lambda out: float((out * x).sum() / x.pow(2).sum())                # noqa: E731
    assert abs(slope(mix.eps(x, a)) - 1) < 0.01 and abs(slope(mix.v(x, a))) < 0.02
    assert float((mix.v(x, a) + mix.weights @ mix.means).abs().max()) < 0.05


def _rotated_pair(d=5, K=3, seed=1):
    """The same mixture twice: a SharedBasisMixture with a random orthogonal basis, and a GaussianMixture."""
    base = toy.image_like_mixture(d, K=K, seed=seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    shared = toy.SharedBasisMixture(base.weights, base.means @ Q.T, base.eigvals, Q)
    return shared, toy.GaussianMixture(shared.weights, shared.means, shared.covs), base, Q


@pytest.mark.parametrize("a", [0.999, 0.5, 0.01, 0.0])
def test_shared_basis_mixture_equals_general(a):
    """SharedBasisMixture (O(B·K·d) per call) and GaussianMixture agree on one mixture, for one ᾱ and per sample
    (each row its own ᾱ, or a few values shared by rows out of order)."""
    shared, general, _, _ = _rotated_pair()
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for f in ("eps", "score", "log_prob", "x0_mean"):
        torch.testing.assert_close(getattr(shared, f)(x, a), getattr(general, f)(x, a), rtol=1e-10, atol=1e-12)
    per_sample = torch.linspace(max(a - 0.005, 0.0), a, 9, dtype=torch.float64)   # one value per row
    repeated = per_sample[torch.tensor([0, 8, 0, 4, 8, 4, 0, 8, 4])]                # three values, rows interleaved
    for f in ("eps", "score", "log_prob", "x0_mean"):
        for ab in (per_sample, repeated):
            torch.testing.assert_close(getattr(shared, f)(x, ab), getattr(general, f)(x, ab), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(shared.std(), general.std(), rtol=1e-12, atol=0)
    if a > 0:
        torch.testing.assert_close(shared.marginal(a).log_prob(x), general.marginal(a).log_prob(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("a", [0.9, 0.2, 0.003])
def test_shared_basis_eps_is_autograd_score(a):
    """ε* = −√(1−ᾱ) ∇ log p_t, with p_t the mixture's own `marginal` differentiated by autograd."""
    for m in (toy.image_like_mixture(12, K=4, seed=3), _rotated_pair()[0]):
        x = torch.randn(10, m.d, generator=torch.Generator().manual_seed(4), dtype=torch.float64).requires_grad_()
        (grad,) = torch.autograd.grad(m.marginal(a).log_prob(x).sum(), x)
        torch.testing.assert_close(m.eps(x.detach(), a), -math.sqrt(1 - a) * grad, rtol=1e-9, atol=1e-11)


def test_samplers_commute_with_the_basis():
    """Why the lab may work in the eigenbasis (basis=None): N(0, I) noise and every sampler commute with
    rotations, so DDIM from Qᵀx_T on the unrotated mixture is Qᵀ of DDIM from x_T on the rotated one."""
    shared, _, base, Q = _rotated_pair()
    x_T = torch.randn(64, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    seq = schedule.timesteps(10, 1000, "uniform")
    rotated = samplers.ddim_sample(toy.exact_eps(shared, AB), x_T, AB, seq)
    plain = samplers.ddim_sample(toy.exact_eps(base, AB), x_T @ Q, AB, seq)
    torch.testing.assert_close(rotated @ Q, plain, rtol=1e-9, atol=1e-11)


def test_image_like_mixture():
    m = toy.image_like_mixture(256, K=10, seed=0)
    x = m.sample(20000, torch.Generator().manual_seed(6))
    torch.testing.assert_close(x.std(0), m.std(), rtol=0.05, atol=0)          # 20000 draws: SE of a std ≈ 0.5 %
    assert 0.8 < float(m.std().pow(2).mean()) / 0.25 < 1.3                    # pixels of std ≈ 0.5
    spectrum = m.std().pow(2)                                                 # the coordinates are the eigenbasis
    j = torch.arange(1, 257, dtype=torch.float64)
    slope = float(torch.linalg.lstsq(torch.stack([torch.ones(256), -j.log()], 1).to(torch.float64),
                                     spectrum.log()[:, None]).solution[1])
    assert 0.85 < slope < 1.15, slope                                        # λ_j ∝ 1/j
    torch.testing.assert_close(m.means, toy.image_like_mixture(256, K=10, seed=0).means)   # deterministic
    with pytest.raises(ValueError, match="eigvals"):
        toy.SharedBasisMixture(torch.ones(2), torch.zeros(2, 3), -torch.ones(2, 3))
    with pytest.raises(ValueError, match="orthogonal"):
        toy.SharedBasisMixture(torch.ones(2), torch.zeros(2, 3), torch.ones(2, 3), 2 * torch.eye(3))


def test_image_like_mixture_draws_its_means_and_within_factors_as_documented():
    """image_like_mixture's parameters against its docstring, rebuilt by hand in numpy: λ_j = j^(−slope) scaled to a total
    of d·pixel_std², means μ_kj ~ N(0, between·λ_j) and within eigenvalues (1 − between)·λ_j·u_kj with u log-uniform in
    [0.5, 2]. The standardized means pass a KS test against N(0, 1) and log₂ u one against U(−1, 1) (p 0.41 and 0.78 at
    d = 512; 0.90 and 0.41 for the second setting). test_image_like_mixture's variance bounds (0.8 to 1.3 of 0.25) let
    u drawn in [1, 2] through (1.28 of 0.25, the library 1.10); these tests fail it, and means of sd between·λ_j,
    pixel_std unsquared or the (1 − between) factor dropped."""
    for d, K, slope, std, between, seed in ((512, 10, 1.0, 0.5, 0.5, 3), (300, 8, 1.5, 0.8, 0.2, 4)):
        m = toy.image_like_mixture(d, K=K, slope=slope, pixel_std=std, between=between, seed=seed)
        j = np.arange(1, d + 1, dtype=np.float64)
        lam = j ** -slope * (d * std ** 2 / np.sum(j ** -slope))
        z = m.means.numpy() / np.sqrt(between * lam)
        assert stats.kstest(z.ravel(), "norm").pvalue > 1e-3
        u = m.eigvals.numpy() / ((1 - between) * lam)
        assert stats.kstest(np.log2(u).ravel(), stats.uniform(-1, 2).cdf).pvalue > 1e-3


def test_kl_to_normal_matches_closed_form_and_grid():
    """The Monte Carlo KL(p_t ‖ N(0, I)) against the closed-form KL of one diagonal Gaussian (gaussian.kl_normal)
    and against a grid integral for the 2-D ring; a wrong density (the data's instead of p_t's) fails."""
    from ddimlab.gaussian import kl_normal
    one = toy.image_like_mixture(64, K=1, seed=2)
    g = torch.Generator().manual_seed(11)
    for a in (0.01, 0.2):
        mc, se = toy.kl_to_normal(one, a, 4000, g)
        exact = float(kl_normal(math.sqrt(a) * one.means[0], a * one.eigvals[0] + 1 - a, 0.0, 1.0).sum())
        assert abs(mc - exact) < 4 * se, (a, mc, se, exact)
    ring, a, h = toy.eight_gaussians(), 0.3, 0.02
    grid = torch.arange(-5, 5 + 1e-9, h, dtype=torch.float64)
    pts = torch.stack([c.ravel() for c in torch.meshgrid(grid, grid, indexing="xy")], 1)
    log_p = ring.log_prob(pts, a)
    ref = float((log_p.exp() * (log_p + 0.5 * pts.pow(2).sum(1) + math.log(2 * math.pi))).sum()) * h * h
    mc, se = toy.kl_to_normal(ring, a, 20000, g)
    assert abs(mc - ref) < 4 * se, (mc, se, ref)
    with pytest.raises(ValueError, match="alpha_bar"):
        toy.kl_to_normal(ring, 1.0)


def test_gaussian_kernel_matches_scipys_distances():
    """toy.gram's Gaussian kernel is exp(−|u−v|²/(2h²)) with scipy's squared distances, also where points coincide."""
    g = torch.Generator().manual_seed(8)
    x, y = 3 * torch.randn(60, 5, generator=g, dtype=torch.float64), torch.randn(70, 5, generator=g, dtype=torch.float64)
    y[:10] = x[:10]
    for h in (0.3, 2.0):
        ref = np.exp(-cdist(x.numpy(), y.numpy(), "sqeuclidean") / (2 * h * h))
        np.testing.assert_allclose(toy.gram(x, y, h).numpy(), ref, rtol=1e-12, atol=1e-14)
        assert float((toy.gram(x, x, h).diagonal() - 1).abs().max()) < 1e-12


def test_energy_kernel_is_the_energy_distance():
    """mmd2_unbiased with toy.ENERGY is 2·mean|x−y| − mean_{i≠j}|x−x'| − mean_{i≠j}|y−y'| (scipy's cdist)."""
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(40, 3, generator=g, dtype=torch.float64), 1.3 * torch.randn(50, 3, generator=g, dtype=torch.float64)
    dxy, dxx, dyy = cdist(x.numpy(), y.numpy()), cdist(x.numpy(), x.numpy()), cdist(y.numpy(), y.numpy())
    ref = 2 * dxy.mean() - dxx.sum() / (40 * 39) - dyy.sum() / (50 * 49)
    assert toy.mmd2_unbiased(x, y, toy.ENERGY) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="kernel"):
        toy.gram(x, y, -1.0)


def test_nan_or_inf_anywhere_is_refused_as_torch_isfinite_refuses_it():
    """ε*'s check of x (GaussianMixture._check_x) and the sample distances' (toy.points) read x's smallest and largest
    values in one pass (checks.value_range, notebook 09 §3) instead of torch.isfinite: NaN, inf or -inf at the first, a middle
    or the last entry, in a transposed (non-contiguous) batch and in float16, float32 and float64, is refused where
    torch.isfinite finds it; finite x passes, and one that requires grad gives no warning (notebook 09 §3 takes its
    gradient)."""
    import warnings
    ring, image = toy.eight_gaussians(), toy.image_like_mixture(64)
    g = torch.Generator().manual_seed(10)
    for m in (ring, image):
        for dtype in (torch.float64, torch.float32, torch.float16):
            for base in (torch.randn(33, m.d, generator=g, dtype=torch.float64),
                         torch.randn(m.d, 33, generator=g, dtype=torch.float64).T):      # a transposed view
                for pos in (0, base.numel() // 2, base.numel() - 1):
                    for bad in (math.nan, math.inf, -math.inf):
                        x = base.to(dtype).clone()                    # keeps the transposed strides
                        x[divmod(pos, m.d)] = bad
                        assert not bool(torch.isfinite(x).all()) and x.is_contiguous() == base.is_contiguous()
                        with pytest.raises(ValueError, match="x contains NaN or inf"):
                            m.eps(x, 0.5)
                        with pytest.raises(ValueError, match="x contain NaN or inf"):
                            toy.points(x, "x")
                x = base.to(dtype)
                assert checks.value_range(x) == (float(x.min()), float(x.max()))
                assert m.eps(x, 0.5).shape == x.shape and toy.points(x, "x").shape == x.shape
    assert checks.value_range(torch.zeros(0, 2)) == (0.0, 0.0)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (grad,) = torch.autograd.grad(ring.log_prob(x).sum(), x)
    assert bool(torch.isfinite(grad).all())


def test_all_finite_is_torch_isfinite_all():
    """checks.all_finite, the one finite check of the samplers' and solvers' every step (ε, x, the noise), is
    bool(torch.isfinite(x).all()) in one pass: NaN, inf or -inf at the first, a middle or the last entry of a contiguous
    or transposed tensor, in every floating dtype; complex (by torch.isfinite), integer and bool tensors (always finite),
    empty ones, and one that requires grad."""
    g = torch.Generator().manual_seed(11)
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex128):
        for base in (torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64).T):
            x = base.to(dtype)
            assert checks.all_finite(x)
            for pos in (0, 17, 34):
                for bad in (math.nan, math.inf, -math.inf, complex(0, math.inf)):
                    if isinstance(bad, complex) and not dtype.is_complex:
                        continue
                    y = x.clone()
                    y[np.unravel_index(pos, y.shape)] = bad
                    assert not bool(torch.isfinite(y).all()) and not checks.all_finite(y), (dtype, pos, bad)
    assert checks.all_finite(torch.tensor([True, False])) and checks.all_finite(torch.arange(3))
    assert checks.all_finite(torch.zeros(0, 3)) and checks.all_finite(torch.ones(2, requires_grad=True))
    assert checks.all_finite(torch.full((4,), 1e308, dtype=torch.float64))      # finite, though their sum overflows
    assert checks.all_finite(torch.full((4,), 65504.0, dtype=torch.float16))


def test_signed_gram_is_gram_and_mmd2_unbiased_sums_it_as_before():
    """toy.signed_gram's table times its sign is toy.gram's, bit for bit (the energy kernel's table is |u − v| with sign −1,
    the Gaussian one's sign is 1). mmd2_unbiased negates the energy table's sums instead of the table (notebook 09 §1):
    bit for bit the statistic written on gram's table, with n ≠ m and where points coincide."""
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(300, 2, generator=g, dtype=torch.float64), 1.3 * torch.randn(250, 2, generator=g, dtype=torch.float64)
    y[:20] = x[:20]
    for kernel, want in ((toy.ENERGY, -1.0), (0.4, 1.0)):
        table, sign = toy.signed_gram(x, y, kernel)
        assert sign == want and torch.equal(sign * table, toy.gram(x, y, kernel))
        kxx, kyy, kxy = toy.gram(x, x, kernel), toy.gram(y, y, kernel), toy.gram(x, y, kernel)
        n, m = len(x), len(y)
        on_gram = float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
                        + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1)) - 2 * kxy.mean())
        assert toy.mmd2_unbiased(x, y, kernel) == on_gram


def test_errors():
    with pytest.raises(ValueError, match="shape \\(K,\\)"):
        toy.GaussianMixture(torch.ones(3), torch.zeros(2, 2), torch.eye(2).repeat(2, 1, 1))
    with pytest.raises(ValueError, match="positive definite"):
        toy.GaussianMixture(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None])
    with pytest.raises(ValueError, match="positive"):
        toy.GaussianMixture(-torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    m = toy.eight_gaussians()
    with pytest.raises(ValueError, match="shape \\(B, d\\)"):
        m.log_prob(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="\\(0, 1\\]"):
        m.marginal(0.0)
    with pytest.raises(ValueError, match="-1..T-1"):
        toy.exact_eps(m, AB)(torch.zeros(2, 2, dtype=torch.float64), 1000)
    with pytest.raises(ValueError, match="samples must have shape"):
        toy.mmd(torch.zeros(10, 3), m)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        m.eps(torch.zeros(2, 2, dtype=torch.float64), 1.5)


def test_point_masses_stood_in_for_by_variance_1e_12_have_the_eps_of_bayes_rule():
    """Notebook 06 §4 takes the training digits as point masses, stood in for by SharedBasisMixture components of
    variance 1e-12 per pixel, for the loss floor C = E|ε − ε*|². Against Bayes' rule over the point masses, written
    here with scipy's logsumexp (w_i ∝ exp(−|x_t − √ᾱ x0_i|² / 2(1−ᾱ)), ε* = (x_t − √ᾱ Σ w_i x0_i)/√(1−ᾱ)): the
    stand-in agrees at every noise level; variance 1e-6, the stand-in the notebook's text rules out, is off by
    about 1% at t = 0 (its ε* is that of digits blurred by 1% of the noise variance 1 − ᾱ_0 = 1e-4)."""
    from scipy.special import logsumexp

    from ddimlab import data

    x0 = data.to_model_range(data.load_digits(8)[0][:300]).flatten(1).double().numpy()      # 8×8, as notebook 06
    ab = schedule.make_alpha_bar("linear", 1000)
    rng = np.random.default_rng(0)
    for t in (0, 3, 40, 300, 900):
        a = float(ab[t])
        x_t = np.sqrt(a) * x0[rng.integers(0, len(x0), 64)] + np.sqrt(1 - a) * rng.standard_normal((64, x0.shape[1]))
        logw = -((x_t[:, None, :] - np.sqrt(a) * x0[None]) ** 2).sum(-1) / (2 * (1 - a))
        x0_hat = np.exp(logw - logsumexp(logw, axis=1, keepdims=True)) @ x0
        bayes = (x_t - np.sqrt(a) * x0_hat) / np.sqrt(1 - a)
        eps = {v: toy.SharedBasisMixture(torch.ones(len(x0)), torch.from_numpy(x0), torch.full(x0.shape, v))
               .eps(torch.from_numpy(x_t), torch.full((64,), a, dtype=torch.float64)).numpy() for v in (1e-12, 1e-6)}
        scale = np.abs(bayes).max()
        assert np.abs(eps[1e-12] - bayes).max() < 1e-6 * scale, t
        if t == 0:
            assert np.abs(eps[1e-6] - bayes).max() > 5e-3 * scale


def test_sizes_past_half_the_memory_are_refused_before_any_allocation(monkeypatch):
    """toy.image_like_mixture(d=10**9) allocated until torch's allocator failed (or the system killed the process), and
    random_mixture(d=10**5) and sample(10**10) the same: each now says the size, the estimate and the largest size that
    fits (half of this machine's memory, `checks.memory_limit`) before allocating anything."""
    from ddimlab import checks

    ring, shared = toy.eight_gaussians(), toy.image_like_mixture(d=4, K=2)
    calls = {"image_like_mixture": lambda: toy.image_like_mixture(d=10 ** 12),
             "random_mixture": lambda: toy.random_mixture(d=10 ** 6),
             "default_mixture": lambda: toy.default_mixture(10 ** 6),
             "sample": lambda: ring.sample(10 ** 12),
             "sample, shared basis": lambda: shared.sample(10 ** 12),
             "kl_to_normal": lambda: toy.kl_to_normal(ring, 0.5, n=10 ** 12)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=r": about [0-9,]+ GiB, more than half of this machine's [0-9]+ GiB; "
                                             r"(give d|draw) at most [0-9,]+"):
            call()
    # the limit itself: with 64 MiB allowed (a 128 MiB machine), 10⁵ dimensions of 10 components (61 MiB) fit, 1.1 · 10⁵ not
    monkeypatch.setattr(checks, "memory_limit", lambda: 64 * 2 ** 20)
    with pytest.raises(ValueError, match=r"^toy\.image_like_mixture\(d=110000, K=10\): about 0\.066 GiB, more than half "
                                         r"of this machine's 0\.12 GiB; give d at most 104,857$"):
        toy.image_like_mixture(d=110_000)
    assert toy.image_like_mixture(d=100_000).d == 100_000


PEAK = """
import re, sys, torch
from ddimlab import toy
make, d, K, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
build = lambda: toy.image_like_mixture(d=d, K=K) if make == "image" else toy.random_mixture(d=d, K=K)
small = build() if n else None          # small: its d is a few hundred times less than the draws' n
toy.image_like_mixture(d=100, K=2).sample(10) if make == "image" else toy.random_mixture(d=8, K=2).sample(10)  # warm-up
status = lambda key: int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")      # VmHWM, the peak resident memory, starts again from VmRSS
small.sample(n) if n else build()
print(status("VmHWM") - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").access("/proc/self/clear_refs", __import__("os").W_OK),
                    reason="the peak memory is reset and read through Linux's /proc/self")
def test_the_memory_estimates_bound_the_measured_peak():
    """The estimates behind the refusals above (toy.IMAGE_LIKE_BYTES per K·d, RANDOM_MIXTURE_BYTES per K·d², each
    mixture's `_bytes_per_draw`) against the peak resident memory of a fresh process (VmHWM) for sizes of 100 to 200
    MB: an estimate below the real peak would let a size through that fills the memory. Allowed on top: 48 MiB that
    torch's first calls take whatever the size (82 bytes per K·d at d = 10⁵, 53 at 10⁶), after a small warm-up call
    of the same functions (without it one run measured 179 MB for the 128 MB estimated; with it three runs, 112 MB).
    A peak is the machine's and its load's as much as the code's, so the bound is 1.5 times the estimate: the refusals
    stop at half the memory, and an estimate low by 2 times or more still fails here."""
    import subprocess
    import sys

    cases = [("image", 5 * 10 ** 5, 4, 0, toy.IMAGE_LIKE_BYTES * 4 * 5 * 10 ** 5),
             ("random", 800, 4, 0, toy.RANDOM_MIXTURE_BYTES * 4 * 800 ** 2),
             ("random", 16, 4, 4 * 10 ** 5, 4 * 10 ** 5 * toy.random_mixture(d=16, K=4)._bytes_per_draw()),
             ("image", 1000, 4, 10 ** 5, 10 ** 5 * toy.image_like_mixture(d=1000, K=4)._bytes_per_draw())]
    for make, d, K, n, estimate in cases:
        out = subprocess.run([sys.executable, "-c", PEAK, make, str(d), str(K), str(n)], capture_output=True, text=True,
                             env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}, timeout=120)
        assert out.returncode == 0, out.stderr
        peak = int(out.stdout)
        assert 0.3 * estimate < peak <= 1.5 * estimate + 48 * 2 ** 20, (make, d, K, n, peak, estimate)


def test_kernel_tables_past_half_the_memory_are_refused_and_the_advice_names_a_size_that_can_shrink():
    """gram, mmd2_unbiased and lab.jackknife of 10⁶ points asked torch's allocator for 8 TB (a RuntimeError from
    alloc_cpu.cpp); image_like_mixture(d=10, K=10**9) advised "give d at most 0", which no d fits."""
    from ddimlab import lab

    big = torch.zeros(10 ** 6, 2)
    for call, name, tables in ((lambda: toy.gram(big, big, 1.0), "gram", "1 kernel table"),
                               (lambda: toy.mmd2_unbiased(big, big, toy.ENERGY), "mmd2_unbiased", "3 kernel tables"),
                               (lambda: lab.jackknife(big, big, toy.ENERGY), "jackknife", "3 kernel tables")):
        with pytest.raises(ValueError, match=rf"^{name}'s {tables} of up to 1,000,000 x 1,000,000 points: about [0-9,]+ "
                                             r"GiB, more than half of this machine's [0-9,.]+ GiB; give at most [0-9,]+ "
                                             r"points per set$"):
            call()
    for call in (lambda: toy.image_like_mixture(d=10, K=10 ** 9), lambda: toy.random_mixture(d=2, K=10 ** 9)):
        with pytest.raises(ValueError, match=r"; give K at most [1-9][0-9,]*$"):
            call()
