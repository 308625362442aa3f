"""benchmarks/ode_bits.py: its code lengths against scipy's bin probabilities, and the whole script with tiny sizes."""
import math

import numpy as np
import pytest
import torch
from cli_support import load_script
from scipy import stats

from ddimlab import elbo, ode, schedule, toy

S = 0.5                                             # data N(0, S² I)


@pytest.fixture(scope="module")
def bits():
    return load_script("benchmarks/ode_bits.py")


def _bin_bits(x: torch.Tensor, mean: float = 0.0, scale: float = S, half_width: float = 1 / 255) -> torch.Tensor:
    """−log2 P(bin)/d per image for data N(mean, scale² I): the 8-bit bin [x − 1/255, x + 1/255] of each pixel (in [−1, 1];
    half_width 1/510 in [0, 1]), by scipy."""
    hi, lo = (stats.norm.cdf(x.numpy() + sign * half_width, mean, scale) for sign in (1, -1))
    return torch.from_numpy(-np.log2(hi - lo).reshape(len(x), -1).mean(1))


def _gaussian_eps(ab, mean: float = 0.0, scale: float = S):
    """The exact ε* of data N(mean, scale² I), typed from q(x_t) = N(√ᾱ mean, ᾱ scale² + 1 − ᾱ)."""
    def eps(x, t):
        a = ode.alpha_bar_cont(ab, t).reshape(-1, *[1] * (x.ndim - 1))
        return (1 - a).sqrt() * (x - a.sqrt() * mean) / (a * scale ** 2 + 1 - a)
    return eps


def test_dequantized_bits_bound_the_bins_code_length(bits):
    """E_u log p(x + u) over u uniform on the bin, in closed form for N(0, S²): −(x² + Δ²/12)/(2S²) − log(√(2π) S). Its
    code length is above scipy's −log2 P(bin) by the Jensen gap only (< 1e-4 bits here); the bin width 2/256 in place
    of 2/255 would be off by log2(256/255) = 0.0056."""
    x = torch.arange(-6, 7, dtype=torch.float64).reshape(13, 1) * 20 / 127.5 + 1 / 255      # levels k/127.5 − 1
    delta = 2 / 255
    mean_log_p = (-(x ** 2 + delta ** 2 / 12) / (2 * S ** 2) - math.log(math.sqrt(2 * math.pi) * S)).sum(1)
    gap = bits.dequantized_bits(mean_log_p, 1) - _bin_bits(x)
    assert float(gap.min()) >= 0 and float(gap.max()) < 1e-4, gap
    wrong = -(mean_log_p + math.log(2 / 256)) / math.log(2) - _bin_bits(x)
    assert float(wrong.abs().min()) > 5e-3


def test_ode_bits_with_the_exact_eps_are_the_bins_code_length(bits):
    """The ODE of N(0, S² I)'s exact ε* (typed from q(x_t) = N(0, ᾱS² + 1 − ᾱ)) from dequantized pixels at the levels
    ±1/255: one u per image, whose effect on log p there is under 1e-4 nats, so each image's bits are scipy's −log2 P(bin)
    to 1e-3 (the N(0, I) prior is off q(x_T) by under 1e-4 nats). ε*'s Jacobian is diagonal, where Rademacher probes give
    zᵀJz = tr J exactly: Hutchinson's estimate is then the exact divergence's answer."""
    ab = schedule.make_alpha_bar("linear", 1000)
    eps = _gaussian_eps(ab)
    x = torch.tensor([[1.0, -1.0]] * 4, dtype=torch.float64) / 255
    got = bits.ode_bits(eps, x, ab, torch.Generator().manual_seed(0), hutchinson=0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(got, _bin_bits(x), rtol=0, atol=1e-3)
    hutch = bits.ode_bits(eps, x, ab, torch.Generator().manual_seed(0), hutchinson=2, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(hutch, got, rtol=0, atol=1e-6)


def test_the_bits_do_not_depend_on_the_datas_units():
    """Notebook 05 §9 (d): pixels k/255 of [0, 1] data N(1/2, (S/2)²), the [−1, 1] data of the tests above scaled, through
    the ODE of their own exact ε* (another flow: the data's scale sets the SNR) at the bins' centres, with that density's
    bin width 1/255: scipy's −log2 P(bin), to 1e-3 (the midpoint's error is under 1e-4 nats). With the [−1, 1] offset
    log2(127.5) in place of log2(255) (a density and an offset in different units) one bit short."""
    ab = schedule.make_alpha_bar("linear", 1000)
    y = torch.tensor([[51.0], [153.0], [255.0]], dtype=torch.float64) / 255
    a_T = float(ab[-1])
    q_T = stats.norm(math.sqrt(a_T) / 2, math.sqrt(a_T * S ** 2 / 4 + 1 - a_T))          # the exact prior q(x_T)
    prior = lambda z: torch.from_numpy(q_T.logpdf(z.numpy())).sum(1)                   # noqa: E731
    log_p = ode.log_likelihood(_gaussian_eps(ab, 0.5, S / 2), y, ab, prior=prior)
    exact = _bin_bits(y, 0.5, S / 2, 1 / 510)
    torch.testing.assert_close(-log_p / math.log(2) + math.log2(255), exact, rtol=0, atol=1e-3)
    torch.testing.assert_close(-log_p / math.log(2) + math.log2(127.5), exact - 1, rtol=0, atol=1e-3)


def _step0_bound(x: float, scale: float, log_q_step: int = 0, with_log_q: bool = True) -> float:
    """Bound (B0) in nats for one pixel x of data N(0, scale²) under its exact ε*, typed from DDPM (β linear 1e-4..0.02) and
    integrated over z = √ᾱ_0 x + √(1 − ᾱ_0) ε by Gauss–Hermite (40 nodes): E[−log q_0(z) − log P_dec(x | z) + log q(z | x)],
    q_0 = N(0, v), v = ᾱ_0 scale² + 1 − ᾱ_0, the exact density at step 0; the decoder's mean x̂_0 of the exact ε*, which is
    E[x | z] = √ᾱ_0 scale² z / v, its variance β̃ of ddimlab's step 1 (the official clipping) and its bin x ± 1/255 by scipy.
    The mistakes: log q at another step's ᾱ (`log_q_step`), or no log q."""
    beta = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - beta)
    a, v, sd = ab[0], ab[0] * scale ** 2 + 1 - ab[0], math.sqrt((1 - ab[0]) / (1 - ab[1]) * beta[1])
    eps, w = np.polynomial.hermite_e.hermegauss(40)
    z = math.sqrt(a) * x + math.sqrt(1 - a) * eps
    mean = math.sqrt(a) * scale ** 2 * z / v
    lo, hi = (x - 1 / 255 - mean) / sd, (x + 1 / 255 - mean) / sd
    p_bin = np.where(lo > 0, stats.norm.sf(lo) - stats.norm.sf(hi), stats.norm.cdf(hi) - stats.norm.cdf(lo))   # no 1 − 1
    a_q = ab[log_q_step]
    log_q = stats.norm.logpdf(z, math.sqrt(a_q) * x, math.sqrt(1 - a_q)) if with_log_q else 0
    return float(w @ (-stats.norm.logpdf(z, 0, math.sqrt(v)) - np.log(p_bin) + log_q) / w.sum())


def test_the_step_0_bound_is_brute_forces_and_bounds_the_bins_code_length(bits):
    """`decoder_bits` (--t-end 0) of narrow data N(0, 0.02² I), whose density at step 0 (noise 0.01) differs from step 1's,
    with its exact ε*, one z per image: (B0) by quadrature within 4 SE (0.007 nats per pixel) over 256 images of 4 pixels.
    The same quadrature with log q(z | x) at ᾱ_1 (DDPM's x_1 read as ddimlab's step 1; 0.18 bits per pixel lower, 18 SE) or
    with no log q (4.6 bits lower) is rejected; and neither the estimate nor the quadrature lies below the bins' own code
    length, scipy's −log2 P(bin) (here within 0.01 bits of it). Measured: the ODE stopped at step 1 instead of 0 reads 6.7
    SE high, and the decoder's ε called at step 1, 4.3 SE low."""
    scale = 0.02
    ab = schedule.make_alpha_bar("linear", 1000)
    levels = torch.tensor([125.0, 127.0, 128.0, 130.0], dtype=torch.float64) / 127.5 - 1
    x = levels.repeat(256, 1)
    got = bits.decoder_bits(_gaussian_eps(ab, 0.0, scale), x, ab, torch.Generator().manual_seed(0), hutchinson=0, rtol=1e-6,
                            atol=1e-6)
    bound = lambda **wrong: sum(_step0_bound(float(k), scale, **wrong) for k in levels) / (len(levels) * math.log(2))  # noqa: E731
    mean, se = float(got.mean()), float(got.std() / math.sqrt(len(got)))
    assert abs(mean - bound()) < 4 * se, (mean, bound(), se)
    for wrong in (dict(log_q_step=1), dict(with_log_q=False)):
        assert abs(mean - bound(**wrong)) > 8 * se, wrong
    code_length = float(_bin_bits(x[:1], 0.0, scale).mean())
    assert bound() >= code_length and mean > code_length - 4 * se


@pytest.mark.slow
def test_the_script_scores_a_tiny_model_both_ways_alone_and_paired(bits, tmp_path, capsys):
    """Each bound alone, then both in one run (--t-end split: --t-end both's two and step 0's density at x + u): the same
    draws, so the same numbers, and their difference paired over the same digits (before, the two were only ever printed
    by separate runs), with its two parts, the bins' code at step 0 and the stretch (−1, 0)."""
    tiny = ["--steps", "2", "--n", "2", "--rtol", "1e-2", "--atol", "1e-2", "--cache", str(tmp_path)]
    report = bits.main(tiny)
    out = capsys.readouterr().out
    assert report["elbo"].shape == report["ode_to_-1"].shape == (2,)
    assert torch.isfinite(report["elbo"]).all() and torch.isfinite(report["ode_to_-1"]).all()
    assert "ODE minus ELBO, paired:" in out and "bits per pixel on 2 digits" in out
    step0 = bits.main(tiny + ["--t-end", "0"])
    assert torch.isfinite(step0["ode_to_0"]).all() and "ODE to step 0" in capsys.readouterr().out
    torch.testing.assert_close(step0["elbo"], report["elbo"])          # the same digits, the same ELBO
    both = bits.main(tiny + ["--t-end", "split"])    # both, and step 0's density at the same x + u (--t-end both without it)
    out = capsys.readouterr().out
    for key, alone in (("elbo", report), ("ode_to_-1", report), ("ode_to_0", step0)):
        torch.testing.assert_close(both[key], alone[key], rtol=0, atol=0)
    for said, part in (("ODE to step 0 minus ODE to step -1", step0["ode_to_0"] - report["ode_to_-1"]),
                       ("DDPM's decoder minus a uniform u", both["ode_to_0"] - both["ode_to_0u"]),
                       ("step 0's density minus step -1's, both at x + u", both["ode_to_0u"] - both["ode_to_-1"])):
        assert f"{said}, paired: {float(part.mean()):+.3f} ± {float(part.std()) / 2 ** 0.5:.3f}" in out

def test_bad_sizes_are_refused_in_one_line(bits, capsys):
    with pytest.raises(SystemExit) as stop:
        bits.main(["--n", "1"])
    assert stop.value.code == 2 and "--n: must be" in capsys.readouterr().err
    for argv, said in ((["--rtol", "nan"], "--rtol must be a finite number > 0 (solve_ivp's tolerance), got nan"),
                       (["--device", "tpu"], "unknown device 'tpu'"),
                       (["--n", "5000", "--cache", "/nonexistent/never-made"], "--n 5000: there are 1797 digits")):
        with pytest.raises(SystemExit) as stop:
            bits.main(argv)
        assert said in str(stop.value.code) + capsys.readouterr().err


def test_round_28_a_tolerance_or_probe_count_past_its_use_is_refused_before_the_work(bits, tmp_path, capsys, monkeypatch):
    """Careless round 28: --rtol 1e-9, finer than the float32 network can give, was refused only after the model was
    trained and the negative ELBO computed; --hutchinson 100000000 asked for 100 GB of probes after them (a traceback),
    and any k ≥ d = 64 probes costs at least the exact divergence's 64 backward passes, with variance. Both are now said
    before anything is trained (no models folder in the cache). A blank --cache trained into ./models (round 28's
    test_round_28_a_blank_cache_folder_is_refused_not_read_as_the_current_one)."""
    monkeypatch.chdir(tmp_path)
    for argv, said in ((["--rtol", "1e-9"], "--rtol 1e-09 is finer than the network's float32 can give, and solve_ivp "
                                              "would take ever smaller steps: pass --rtol >= 6e-09"),
                       (["--hutchinson", "64"], "--hutchinson 64: as many probes as the d = 64 pixels cost as many backward"),
                       (["--cache", ""], "argument --cache: is blank (''), which would be the current folder")):
        with pytest.raises(SystemExit) as stop:
            bits.main(["--steps", "2", "--n", "2", "--cache", str(tmp_path), *argv])
        assert said in str(stop.value.code) + capsys.readouterr().err
    assert not (tmp_path / "models").exists()


def test_split_on_data_at_the_bins_centres_the_decoder_is_the_shorter_code_at_step_0(bits):
    """`--t-end split`'s known answer: pixels at three bin centres (8-bit 112, 128, 143, three of the digits' 17 levels,
    0.118 or more apart), each a point mass, with their exact ε*. At step 0 (σ = 0.01, more than the bin's half width
    1/255) the density is w_k N(x_k, 1 − ᾱ_0) near level k, so a uniform u in the bin codes it in −log2 w_k + 1.713 bits
    (scipy: the mass of that Gaussian in the bin is 0.305); DDPM's decoder, whose mean is then the level itself, in
    −log2 w_k + 1.305 (its β̃_1 has sd 0.94 levels: mass 0.405). Both within 4 SE, so the decoder is 0.41 bits per pixel
    shorter with no network at steps in (−1, 0)."""
    ab = schedule.make_alpha_bar("linear", 1000)
    levels, w = torch.tensor([112.0, 128.0, 143.0], dtype=torch.float64) / 127.5 - 1, torch.tensor([0.5, 0.3, 0.2])
    eps = toy.exact_eps(toy.GaussianMixture(w, levels[:, None], torch.full((3, 1, 1), 1e-12)), ab)
    x = levels.repeat(64)[:, None]                              # 192 one-pixel images, 64 at each level
    a_0, half = float(ab[0]), 1 / 255
    sd_dec = math.sqrt(float(elbo.model_variance(ab)[0]))
    u, wq = np.polynomial.legendre.leggauss(40)
    uniform_extra = float(wq / 2 @ -stats.norm.logpdf(u * half, 0, math.sqrt(1 - a_0))) / math.log(2) - math.log2(2 * half)
    decoder_extra = -math.log2(stats.norm.cdf(half / sd_dec) - stats.norm.cdf(-half / sd_dec))
    code = float(-torch.log2(w).mean())                         # −log2 P(bin) of the data: the weights'
    for got, extra in ((bits.ode_bits(eps, x, ab, torch.Generator().manual_seed(0), 0, 1e-4, 1e-4, t_end=0), uniform_extra),
                       (bits.decoder_bits(eps, x, ab, torch.Generator().manual_seed(0), 0, 1e-6, 1e-6), decoder_extra)):
        got = got.reshape(64, 3).mean(1)                         # in threes, one of each level
        mean, se = float(got.mean()), float(got.std()) / math.sqrt(len(got))
        assert abs(mean - (code + extra)) < 4 * se + 1e-3, (mean, code + extra, se)
    assert abs(uniform_extra - decoder_extra - 0.408) < 1e-3


def test_round_29_a_tolerance_too_loose_for_the_solver_is_refused_before_the_work(bits, tmp_path, capsys):
    """Round 28's leftover: --rtol 0.999 ran (any value in (0, 1) did); `ode.log_likelihood` now refuses rtol above
    ode.TOL_CEILING = 0.01, and the script says so before anything is trained (no models folder in the cache)."""
    for rtol in ("0.02", "0.999"):
        with pytest.raises(SystemExit) as stop:
            bits.main(["--steps", "2", "--n", "2", "--cache", str(tmp_path), "--rtol", rtol])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and f"--rtol {float(rtol):g} is coarser than 0.01, past which solve_ivp's error" \
                                        " control breaks down (its solution can be farther off than the data's own size):" \
                                        " pass --rtol <= 0.01" in err, err
    assert not (tmp_path / "models").exists()


def test_round_30_an_atol_past_the_solvers_range_is_refused_before_the_work(bits, tmp_path, capsys):
    """Round 29's leftover: --atol 1e-300 was taken, and solve_ivp (relative control alone) failed after the model was
    trained and the negative ELBO computed; --atol 0.5 ran. --atol now takes --rtol's range, said before anything is
    trained (no models folder in the cache)."""
    for atol, said in (("1e-300", "--atol 1e-300 is finer than the network's float32 can give, and solve_ivp would "
                                 "take ever smaller steps: pass --atol >= 6e-09"),
                       ("0.5", "--atol 0.5 is coarser than 0.01, past which solve_ivp's error control breaks down (its "
                               "solution can be farther off than the data's own size): pass --atol <= 0.01")):
        with pytest.raises(SystemExit) as stop:
            bits.main(["--steps", "2", "--n", "2", "--cache", str(tmp_path), "--t-end", "split", "--atol", atol])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and said in err, err
    assert not (tmp_path / "models").exists()


def test_a_cache_that_is_a_file_is_named_as_the_option(bits, tmp_path):
    """Round 29's leftover: `--cache FILE` said "pass another cache_dir" (pretrained's Python argument), now "--cache"."""
    (file := tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as stop:
        bits.main(["--cache", str(file)])
    said = str(stop.value.code)
    assert "choose another --cache" in said and "cache_dir" not in said and len(said.splitlines()) == 1, said


@pytest.mark.slow
def test_round_32_training_shows_a_progress_bar_unless_asked_not_to(bits, tmp_path, capsys, monkeypatch):
    """The digits model (minutes, once, where the cache lacks it) trained without its bar, after one line; it shows now,
    and --no-progress turns it off. Stopped once the model is there: the bounds are the other tests'."""
    real = bits.pretrained.digits_model

    def then_stop(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(bits.pretrained, "digits_model", then_stop)
    for flags, shown in (([], True), (["--no-progress"], False)):
        with pytest.raises(SystemExit):
            bits.main(["--steps", "3", "--n", "2", "--device", "cpu", "--cache", str(tmp_path / str(shown)), *flags])
        assert ("3/3" in capsys.readouterr().err) == shown
