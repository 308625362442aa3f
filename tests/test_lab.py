"""The exact-score Table 1 (notebook 04 §6): the DDIM paper's claims, and an error bar that is honest."""
import math

import pytest
import torch

from ddimlab import lab, toy

K_SE = 3.0          # "beyond error bars": a difference larger than 3 combined standard errors


def _beyond(worse, better):
    """worse − better exceeds K_SE combined standard errors (cells treated as independent, which is
    conservative: they share x_T, noise and reference data, so their errors are positively correlated)."""
    return worse["mmd2"] - better["mmd2"] > K_SE * math.hypot(worse["se"], better["se"])


@pytest.fixture(scope="module")
def small_S():
    # S = 10 and 20 are where the samplers differ; n = 2000 makes the error bars ~1e-3 of MMD² ≈ 5–30e-3.
    return lab.table1(S_list=(10, 20), n=2000, n_ode=0, seed=0, repeats=2)


def test_eta0_beats_eta1_at_10_steps(small_S):
    """DDIM's headline: at S = 10 deterministic DDIM is better than DDPM-like η = 1, beyond error bars."""
    e0, e1 = lab.cell(small_S, "eta=0", 10), lab.cell(small_S, "eta=1", 10)
    assert _beyond(e1, e0), (e0, e1)
    assert not e0["within_floor"] and not e1["within_floor"]     # both measurably off at S = 10


def test_sigma_hat_bad_at_few_steps(small_S):
    """DDPM's large variance β (σ̂) is the worst sampler at S = 20, beyond error bars."""
    sh = lab.cell(small_S, "sigma_hat", 20)
    for eta in ("0", "0.2", "0.5", "1"):
        assert _beyond(sh, lab.cell(small_S, f"eta={eta}", 20)), eta


def test_sigma_hat_recovers_with_steps():
    """σ̂ is bad at few steps because of the noise it adds, not because it is wrong: with S = 100 it is
    far better than at S = 20, and on all T = 1000 steps it is DDPM's own sampler, within the floor."""
    rows = lab.table1(S_list=(20, 100), etas=(), n=1000, n_ode=0, seed=1, repeats=2)
    assert _beyond(lab.cell(rows, "sigma_hat", 20), lab.cell(rows, "sigma_hat", 100))


def test_eta0_error_shrinks_with_steps():
    """η = 0: the distribution error falls with S beyond error bars, and the deterministic error against
    scipy's ODE solution falls monotonically, roughly like 1/S (Euler is first order, notebook 05)."""
    rows = lab.table1(S_list=(10, 20, 100), etas=(0,), include_sigma_hat=False, n=2000, n_ode=16, seed=2, repeats=2)
    c10, c20, c100 = (lab.cell(rows, "eta=0", S) for S in (10, 20, 100))
    assert _beyond(c10, c20) and _beyond(c20, c100)
    e = [c["ode_err"] for c in (c10, c20, c100)]
    assert e[0] > e[1] > e[2] > 0
    assert e[2] < e[0] / 4                      # 10× the steps: at least 4× smaller


def test_noise_floor_is_measured_on_two_fresh_data_sets():
    """The floor is the spread of the statistic between two fresh data sets: an independent set of
    repeats agrees with it, exact data score within the floor, and a shifted distribution does not."""
    mix = toy.eight_gaussians()
    n, h = 200, lab.bandwidth(mix)
    g = torch.Generator().manual_seed(3)
    floor = lab.noise_floor(mix, n, g, repeats=48).floor
    null = torch.tensor([toy.mmd2_unbiased(mix.sample(n, g), mix.sample(n, g), h) for _ in range(48)])
    rms = float(null.pow(2).mean().sqrt())
    assert 0.6 < floor / rms < 1.6, (floor, rms)          # two RMS estimates from 48 draws each
    assert abs(float(null.mean())) < 4 * float(null.std()) / math.sqrt(48)   # unbiased: the null mean is 0
    rows = lab.table1(S_list=(10,), etas=(0,), include_sigma_hat=False, n=500, n_ode=0, seed=4)
    data = lab.cell(rows, lab.DATA)
    assert data["floor"] > 0 and data["within_floor"]
    shifted = mix.sample(n, g) + 0.1
    assert lab.mmd2_se(shifted, mix.sample(n, g), h)[0] > 10 * floor


def test_jackknife_se_matches_repeats():
    """The ± printed in every cell is the spread over independent repeats (x_T, noise and data redrawn)."""
    mix = toy.eight_gaussians()
    h = lab.bandwidth(mix)
    g = torch.Generator().manual_seed(5)
    # A distribution clearly off the data (as a few-step sampler is): every point pushed outwards 10 %.
    vals, ses = [], []
    for _ in range(40):
        v, se = lab.mmd2_se(1.1 * mix.sample(300, g), mix.sample(300, g), h)
        vals.append(v); ses.append(se)
    std, mean_se = float(torch.tensor(vals).std()), float(torch.tensor(ses).mean())
    assert 0.7 < mean_se / std < 1.4, (mean_se, std)       # std of 40 draws is known to ±11 %


def test_mmd2_se_value_is_toys_statistic():
    mix = toy.eight_gaussians()
    g = torch.Generator().manual_seed(6)
    x, y = mix.sample(100, g), mix.sample(100, g)
    assert lab.mmd2_se(x, y, 0.2)[0] == pytest.approx(toy.mmd2_unbiased(x, y, 0.2), rel=1e-12, abs=1e-15)


def test_format_and_figure(tmp_path):
    rows = lab.table1(S_list=(10, 20), etas=(0, 1), n=200, n_ode=4, seed=7)
    text = lab.format_table(rows)
    assert "S=10" in text and "σ̂" in text and "η=0 vs ODE" in text and "noise floor" in text
    r = lab.cell(rows, "eta=1", 10)
    assert lab.fmt_pm(r["mmd2"], r["se"]) in text
    path = lab.make_figure(rows, tmp_path / "sub" / "t1.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["t1.png"]        # no temporary file left


def test_fmt_pm_rounds_to_the_error_bar():
    assert lab.fmt_pm(0.0123456, 0.00034) == "12.3±0.3"
    assert lab.fmt_pm(0.0123456, 0.00014) == "12.35±0.14"
    assert lab.fmt_pm(0.0123456, 0.0034) == "12±3"


@pytest.mark.parametrize("kwargs, match", [
    (dict(spacing="cosine"), "spacing"),
    (dict(S_list=(0,)), "S_list"),
    (dict(S_list=(1001,)), "S_list"),
    (dict(etas=(-0.5,)), "etas"),
    (dict(n=3), "n must"),
    (dict(n=50, n_ode=60), "n_ode"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lab.table1(**kwargs)


def test_mmd2_se_rejects_mismatched_inputs():
    x = torch.zeros(10, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="same"):
        lab.mmd2_se(x, torch.zeros(9, 2, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        lab.mmd2_se(x, torch.full((10, 2), float("nan"), dtype=torch.float64), 0.1)


def test_main_prints_the_table_and_writes_files(tmp_path, capsys):
    """`lab.main` (called by `make demo`) with a small n: the table on stdout, the text and figure on disk."""
    assert lab.main(["--n", "40"], out=tmp_path) == 0
    printed = capsys.readouterr().out
    assert "S=1000" in printed and "σ̂" in printed and "noise floor" in printed
    assert (tmp_path / "table1.png").read_bytes()[:4] == b"\x89PNG"
    assert "S=1000" in (tmp_path / "table1.txt").read_text(encoding="utf-8")
