"""The exact-score Table 1 (notebook 09): a distance that does not saturate, error bars that are honest,
and what the tables show in 2-D and in image-like dimension."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from ddimlab import lab, schedule, toy


@pytest.fixture(scope="module")
def ring():
    # S = 10 and 20 are where the samplers differ; n = 2000 resolves η = 0 against η = 1 at S = 10.
    return lab.table1(S_list=(10, 20), etas=(0, 1), n=2000, n_ode=0, seed=0, repeats=2)


@pytest.fixture(scope="module")
def image():
    # 1024-D image-like data; n = 500 is enough: the S = 10 differences are ≥ 5 SE.
    return lab.table1(toy.image_like_mixture(1024), S_list=(10,), etas=(0, 1), n=500, n_ode=0, seed=0, repeats=2)


def test_ring_at_10_steps_sigma_hat_is_best(ring):
    """In 2-D at S = 10 the energy distance orders σ̂ < η = 0 < η = 1, each beyond 3 SE of the difference:
    η = 0 beats η = 1 as in the paper, but σ̂ is the best sampler, not the worst."""
    s, e0, e1 = (lab.cell(ring, name, 10) for name in ("sigma_hat", "eta=0", "eta=1"))
    assert lab.beyond(e0, s) and lab.beyond(e1, e0), lab.ranking(ring, 10)
    assert lab.ranking(ring, 10) == "σ̂ < η=0 < η=1"
    assert not any(c["within_floor"] for c in (s, e0, e1))           # all measurably off at S = 10


def test_image_like_at_10_steps_is_the_papers_order(image):
    """In 1024-D image-like data the same samplers rank as in the paper's Table 1: η = 0 < η = 1 < σ̂."""
    assert lab.ranking(image, 10) == "η=0 < η=1 < σ̂"
    s, e1 = lab.cell(image, "sigma_hat", 10), lab.cell(image, "eta=1", 10)
    assert s["mmd2"] > 2 * e1["mmd2"]                                 # and σ̂ by a wide margin


@pytest.mark.parametrize("cells,expected", [
    # a ≈ b and b ≈ c, but a and c are 3.5 SE apart: the neighbour chain alone would hide the resolved pair
    (((0.0, 1.0), (2.0, 1.0), (5.0, 1.0)), "η=0 ≈ η=0.5 ≈ η=1 (η=0 < η=1)"),
    # a beats b by 7 SE but not c (1.2 SE): 'a < b ≈ c' would claim a beats c
    (((0.0, 0.1), (1.0, 0.1), (1.2, 1.0)), "η=0 ≈ η=0.5 ≈ η=1 (η=0 < η=0.5)"),
    (((0.0, 0.1), (1.0, 0.1), (2.0, 0.1)), "η=0 < η=0.5 < η=1"),
    (((0.0, 1.0), (0.5, 1.0), (1.0, 1.0)), "η=0 ≈ η=0.5 ≈ η=1"),
    # b beats c, but a (an SE of 10) beats neither: a '<' between b and c would claim a beats c; a cut that checks only
    # the pairs of the sampler just before it says 'η=0 ≈ η=0.5 < η=1'
    (((0.0, 10.0), (0.5, 0.1), (2.0, 0.1)), "η=0 ≈ η=0.5 ≈ η=1 (η=0.5 < η=1)"),
])
def test_ranking_states_every_pair_and_claims_no_pair_it_did_not_resolve(cells, expected):
    """Cells from separate tables (differences with SE √(se_a² + se_b²)): each '<' separates only resolved pairs,
    and every resolved pair is either separated by a '<' or listed in brackets."""
    rows = [{"sampler": f"eta={e}", "S": 10, "mmd2": m, "se": se} for e, (m, se) in zip((0, 0.5, 1), cells)]
    assert lab.ranking(rows, 10) == expected


def test_ratio_standard_errors_match_the_spread_over_repeated_draws():
    """Per-point squared errors of two solvers from the same x_T share a log-normal factor (a hard trajectory is hard
    for both). Over 400 repeated sets of 512 points, the spread of the RMS ratio and of the median ratio is what
    `error_ratio`'s SEs predict from one set (mean over 16 sets, within 25%; 0.89 to 1.12 of it over four seeds).
    Resampling the two solvers' points independently, which ignores that they ran from the same x_T, overstates the
    RMS ratio's spread more than twofold."""
    g = torch.Generator().manual_seed(0)

    def draw(n=512):
        hard = torch.randn(n, generator=g, dtype=torch.float64).exp()
        return (4 * hard * torch.randn(n, generator=g, dtype=torch.float64).mul(0.3).exp(),
                hard * torch.randn(n, generator=g, dtype=torch.float64).mul(0.3).exp())

    sets = [draw() for _ in range(400)]
    rms = torch.tensor([float((a.mean() / b.mean()).sqrt()) for a, b in sets])
    med = torch.tensor([float(a.sqrt().median() / b.sqrt().median()) for a, b in sets])
    predicted = torch.tensor([[r[1] for r in lab.error_ratio(a, b, draws=1000).values()] for a, b in sets[:16]]).mean(0)
    for spread, se in ((float(rms.std()), float(predicted[0])), (float(med.std()), float(predicted[1]))):
        assert abs(se / spread - 1) < 0.25, (se, spread)
    a, b = sets[0]
    i, j = (torch.randint(512, (1000, 512), generator=g) for _ in range(2))
    unpaired = float((a[i].mean(1) / b[j].mean(1)).sqrt().std())
    assert unpaired > 2 * float(rms.std())


def test_summed_variance_se_matches_repeats_where_gaussian_theory_does_not():
    """On a bimodal column (±1 plus noise of sd 0.3: kurtosis 1.3) and a heavy-tailed one (Laplace: kurtosis 6), the
    SE of a sample variance is the spread over 400 repeats of n = 200 (within 15%; 0.94 to 1.10 of it over five
    seeds); Gaussian theory's Var·√(2/(n − 1)) is off by more than 30% on both (2.3 to 2.7 times it, and 0.62 to
    0.69). The SE of a sum over two perfectly correlated columns is twice one column's, not √2 times."""
    g = torch.Generator().manual_seed(0)
    n = 200
    draws = {"bimodal": lambda: (torch.randint(0, 2, (n, 1), generator=g) * 2 - 1) + 0.3 * torch.randn(n, 1, generator=g),
             "laplace": lambda: torch.distributions.Laplace(0.0, 1.0).sample((n, 1))}
    torch.manual_seed(0)
    for name, draw in draws.items():
        xs = [draw().double() for _ in range(400)]
        values = torch.tensor([lab.summed_variance(x)[0] for x in xs])
        se = sum(lab.summed_variance(x)[1] for x in xs) / len(xs)
        gaussian = sum(float(x.var() * math.sqrt(2 / (n - 1))) for x in xs) / len(xs)
        spread = float(values.std())
        assert abs(se / spread - 1) < 0.15, (name, se, spread)
        assert abs(gaussian / spread - 1) > 0.3, (name, gaussian, spread)
        assert values[0] == pytest.approx(float(xs[0].var()))
    x = draws["laplace"]().double()
    assert lab.summed_variance(torch.cat([x, x], 1))[1] == pytest.approx(2 * lab.summed_variance(x)[1])
    with pytest.raises(ValueError, match="n >= 3"):
        lab.summed_variance(torch.zeros(2, 4))


def test_cross_fitted_best_removes_the_bias_of_picking_the_best_on_the_same_points():
    """300 settings whose per-point errors share a hard-trajectory factor and have the same expected RMS: the lowest
    RMS among them on the same points is biased low (over 40 repeated sets, beyond 5 SE), the cross-fitted best is
    not (within 3 SE of the true RMS). A setting with a truly smaller error is picked on both halves."""
    g = torch.Generator().manual_seed(0)
    true_rms = math.exp((0.5 + 0.5 ** 2 / 2) / 2)          # E e2 = E hard · E u, hard = e^N(0,1), u = e^N(0, 0.5²)

    def settings(k=300, n=1024):
        hard = torch.randn(n, generator=g, dtype=torch.float64).exp()
        return {i: hard * torch.randn(n, generator=g, dtype=torch.float64).mul(0.5).exp() for i in range(k)}

    same, crossed = [], []
    for _ in range(40):
        e2 = settings()
        same.append(min(float(v.mean().sqrt()) for v in e2.values()) / true_rms)
        crossed.append(float(lab.cross_fitted_best(e2)[0].mean().sqrt()) / true_rms)
    same, crossed = torch.tensor(same), torch.tensor(crossed)
    se = lambda v: float(v.std() / len(v) ** 0.5)              # noqa: E731
    assert 1 - float(same.mean()) > 5 * se(same), (float(same.mean()), se(same))
    assert abs(float(crossed.mean()) - 1) < 3 * se(crossed), (float(crossed.mean()), se(crossed))
    e2 = settings()
    e2["better"] = 0.6 * e2[0]
    for statistic in ("rms", "median"):
        assert lab.cross_fitted_best(e2, statistic)[1] == ("better", "better")
    with pytest.raises(ValueError, match="statistic"):
        lab.cross_fitted_best(e2, "mean")


def test_pixel_space_distance_does_not_rank_sigma_hat_worst():
    """Without standardizing (every coordinate in data units) the 1024-D table is dominated by the few
    high-variance directions, and σ̂ is not the worst sampler at S = 10: the standardization is what
    makes its noise in the many low-variance directions count (notebook 09 §5)."""
    rows = lab.table1(toy.image_like_mixture(1024), S_list=(10,), etas=(1,), n=500, n_ode=0, seed=0,
                      repeats=2, standardize=False)
    assert lab.beyond(lab.cell(rows, "eta=1", 10), lab.cell(rows, "sigma_hat", 10))


def test_sigma_hat_recovers_with_steps():
    """σ̂ is bad at few steps because of the noise it adds, not because it is wrong: on all T = 1000 steps it
    is DDPM's own sampler, within the floor."""
    rows = lab.table1(S_list=(10, 1000), etas=(), n=1000, n_ode=0, seed=1, repeats=4)
    s10, s1000 = lab.cell(rows, "sigma_hat", 10), lab.cell(rows, "sigma_hat", 1000)
    assert lab.beyond(s10, s1000) and s1000["within_floor"] and not s10["within_floor"]


def test_eta0_error_shrinks_with_steps():
    """η = 0: the distribution error falls with S beyond error bars, and the deterministic error against
    scipy's ODE solution falls monotonically, roughly like 1/S (Euler is first order, notebook 05)."""
    rows = lab.table1(S_list=(10, 20, 100), etas=(0,), include_sigma_hat=False, n=2000, n_ode=16, seed=2, repeats=2)
    c10, c20, c100 = (lab.cell(rows, "eta=0", S) for S in (10, 20, 100))
    assert lab.beyond(c10, c20)
    e = [c["ode_err"] for c in (c10, c20, c100)]
    assert e[0] > e[1] > e[2] > 0
    assert e[2] < e[0] / 4                      # 10× the steps: at least 4× smaller


def test_table1_keeps_each_x_T_squared_ode_error():
    """The η = 0 rows carry each of the first n_ode samples' squared distance to the ODE solution (`ode_e2`), so that two
    rows can be compared paired over x_T (notebook 09 §2); each entry matches that x_T run alone, regenerated from the
    seed as `table1` draws it, and their mean is ode_err²."""
    mix = toy.eight_gaussians()
    rows = lab.table1(mix, S_list=(10,), etas=(0,), include_sigma_hat=False, n=8, n_ode=3, seed=4, repeats=2)
    e2 = lab.cell(rows, "eta=0", 10)["ode_e2"]
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    AB = schedule.make_alpha_bar("linear", 1000)
    alone = [lab.ode_error(toy.exact_eps(mix, AB), x_T[i:i + 1], AB, schedule.timesteps(10, 1000)) ** 2 for i in range(3)]
    assert e2.shape == (3,) and torch.allclose(e2, torch.tensor(alone, dtype=torch.float64), rtol=1e-4)
    assert lab.cell(rows, "eta=0", 10)["ode_err"] == pytest.approx(float(e2.mean().sqrt()))


def test_table1_solves_each_ode_reference_once(monkeypatch):
    """Quadratic steps start at t = 800 for every S, so the η = 0 rows of S = 10 and 20 share one ODE solution from
    x_T[:n_ode]: `table1` solves it once (it solved it once per S), and each row's squared errors are those of a table
    of that S alone."""
    mix, calls = toy.eight_gaussians(), []
    solve = lab.ode.reference_solution
    monkeypatch.setattr(lab.ode, "reference_solution", lambda *a, **k: calls.append(a[3]) or solve(*a, **k))
    kw = dict(etas=(0,), include_sigma_hat=False, spacing="quad", n=8, n_ode=3, seed=4, repeats=2)
    both = lab.table1(mix, S_list=(10, 20), **kw)
    assert calls == [800]
    for S in (10, 20):
        alone = lab.table1(mix, S_list=(S,), **kw)
        assert torch.equal(lab.cell(both, "eta=0", S)["ode_e2"], lab.cell(alone, "eta=0", S)["ode_e2"])
    assert calls == [800] * 3
    lab.table1(mix, S_list=(10, 20), **{**kw, "spacing": "uniform"})        # uniform steps start at 900 and 950
    assert calls[3:] == [900, 950]


def _paired(xs, y, kernel):
    """Cells of one table for samples xs (each paired index by index with y), as `table1` builds them."""
    table = object()
    rows = []
    for x in xs:
        v, loo = lab.jackknife(x, y, kernel)
        rows.append(dict(sampler="x", S=1, mmd2=v, se=lab.jackknife_se(loo), loo=loo, table=table))
    return rows


def test_energy_distance_does_not_saturate():
    """Issue #9: the standardized energy distance grows with added noise of std 0.1 … 2 and with shrinkage
    1.0 … 0.5, each step beyond 3 SE of the difference, where the Gaussian-kernel MMD² of one bandwidth
    flattens (its value at noise std 2 is within 1.6× its value at 0.5; the energy distance's is > 10×)."""
    mix = toy.eight_gaussians()
    g = torch.Generator().manual_seed(10)
    n, sd, h = 2000, mix.std(), toy.bandwidth(mix)
    x, y, z = mix.sample(n, g), mix.sample(n, g), torch.randn(n, 2, generator=g, dtype=torch.float64)
    noisy = [x + s * z for s in (0.1, 0.2, 0.5, 1.0, 2.0)]          # common random numbers: one z, scaled
    shrunk = [s * x for s in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)]
    for xs in (noisy, shrunk):
        cells = _paired([v / sd for v in xs], y / sd, toy.ENERGY)
        for a, b in zip(cells, cells[1:]):
            assert lab.beyond(b, a), (a["mmd2"], b["mmd2"])
    energy = [c["mmd2"] for c in _paired([v / sd for v in noisy], y / sd, toy.ENERGY)]
    gauss = [c["mmd2"] for c in _paired(noisy, y, h)]
    assert gauss[4] < 1.6 * gauss[2] and energy[4] > 10 * energy[2], (gauss, energy)


def test_noise_floor_is_measured_on_two_fresh_data_sets():
    """The floor is the spread of the statistic between two fresh data sets: an independent set of
    repeats agrees with it, exact data score within the floor, and a shifted distribution does not."""
    mix = toy.eight_gaussians()
    n, sd = 200, mix.std()
    g = torch.Generator().manual_seed(3)
    for kernel in (toy.ENERGY, toy.bandwidth(mix)):
        floor = toy.noise_floor(mix, n, g, repeats=48, kernel=kernel, scale=sd)
        null = torch.tensor([toy.mmd2_unbiased(mix.sample(n, g) / sd, mix.sample(n, g) / sd, kernel)
                             for _ in range(48)])
        rms = float(null.pow(2).mean().sqrt())
        assert 0.6 < floor / rms < 1.6, (kernel, floor, rms)          # two RMS estimates from 48 draws each
        assert abs(float(null.mean())) < 4 * float(null.std()) / math.sqrt(48)   # unbiased: the null mean is 0
        shifted = (mix.sample(n, g) + 0.3) / sd
        assert lab.mmd2_se(shifted, mix.sample(n, g) / sd, kernel)[0] > 10 * floor
    rows = lab.table1(S_list=(10,), etas=(0,), include_sigma_hat=False, n=500, n_ode=0, seed=4)
    data = lab.cell(rows, lab.DATA)
    assert data["floor"] > 0 and data["within_floor"]


def test_noise_floor_is_the_floor_alone_from_the_same_draws():
    """`noise_floor` returns the floor, a number (it returned toy.mmd's pair of a null value, used nowhere, and the
    floor), computed from the same draws as before, so that seeded tables keep their numbers: it is `toy.mmd`'s floor
    for n fresh samples, and leaves the generator where `toy.mmd` does."""
    mix, n = toy.eight_gaussians(), 50
    g, g_toy = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    floor = toy.noise_floor(mix, n, g, repeats=3, kernel=toy.ENERGY, scale=mix.std())
    assert type(floor) is float
    assert floor == toy.mmd(mix.sample(n, g_toy), mix, g_toy, repeats=3, kernel=toy.ENERGY, scale=mix.std()).floor
    assert torch.equal(g.get_state(), g_toy.get_state())


def test_jackknife_se_matches_repeats():
    """The ± of a cell, and the SE of a difference between two cells of one table, are the spreads over
    independent repeats (x_T, noise and data redrawn); √(SE_a² + SE_b²), which ignores the pairing, is larger
    (notebook 09 §2)."""
    vals, ses, diffs, dses, unpaired = [], [], [], [], []
    for seed in range(30):
        rows = lab.table1(S_list=(10,), etas=(0, 1), include_sigma_hat=False, n=300, n_ode=0, seed=seed, repeats=2)
        e0, e1 = lab.cell(rows, "eta=0", 10), lab.cell(rows, "eta=1", 10)
        vals.append(e1["mmd2"]); ses.append(e1["se"])
        d, se = lab.difference(e1, e0)
        diffs.append(d); dses.append(se); unpaired.append(math.hypot(e0["se"], e1["se"]))
    for v, s in ((vals, ses), (diffs, dses)):
        ratio = sum(s) / len(s) / float(torch.tensor(v).std())
        assert 0.7 < ratio < 1.45, ratio                   # the std of 30 draws is known to ±13 %
    assert sum(unpaired) > sum(dses)


def test_difference_of_cells_from_different_tables_is_unpaired(ring, image):
    a, b = lab.cell(ring, "eta=0", 10), lab.cell(image, "eta=0", 10)
    assert lab.difference(a, b)[1] == pytest.approx(math.hypot(a["se"], b["se"]))


def test_jackknife_delete_one_values_are_the_statistic_without_each_pair():
    """jackknife's U₋ᵢ (notebook 09 §1) is mmd2_unbiased recomputed with pair i left out of both sets, for the energy
    and the Gaussian kernel; and since it negates the energy table's sums instead of the table (toy.signed_gram), its
    value and U₋ᵢ are bit for bit the formulas written on toy.gram's tables, also where points coincide."""
    g = torch.Generator().manual_seed(12)
    x, y = torch.randn(40, 2, generator=g, dtype=torch.float64), 1.2 * torch.randn(40, 2, generator=g, dtype=torch.float64)
    x[:3] = y[:3]
    n = len(x)
    for kernel in (toy.ENERGY, 0.5):
        value, loo = lab.jackknife(x, y, kernel)
        keep = [torch.arange(n) != i for i in range(n)]
        brute = torch.tensor([toy.mmd2_unbiased(x[k], y[k], kernel) for k in keep], dtype=torch.float64)
        torch.testing.assert_close(loo, brute, rtol=1e-10, atol=1e-13)
        kxx, kyy, kxy = toy.gram(x, x, kernel), toy.gram(y, y, kernel), toy.gram(x, y, kernel)
        rx, ry = kxx.sum(1) - kxx.diagonal(), kyy.sum(1) - kyy.diagonal()
        sx, sy, sxy = rx.sum(), ry.sum(), kxy.sum()
        assert value == float((sx + sy) / (n * (n - 1)) - 2 * sxy / n ** 2)
        assert torch.equal(loo, (sx - 2 * rx + sy - 2 * ry) / ((n - 1) * (n - 2))
                           - 2 * (sxy - kxy.sum(1) - kxy.sum(0) + kxy.diagonal()) / (n - 1) ** 2)


def test_mmd2_se_value_is_toys_statistic():
    mix = toy.eight_gaussians()
    g = torch.Generator().manual_seed(6)
    x, y = mix.sample(100, g), mix.sample(100, g)
    for kernel in (0.2, toy.ENERGY):
        assert lab.mmd2_se(x, y, kernel)[0] == pytest.approx(toy.mmd2_unbiased(x, y, kernel), rel=1e-12, abs=1e-15)


def test_format_and_figure(tmp_path, ring):
    rows = lab.table1(S_list=(10, 20), etas=(0, 1), n=200, n_ode=4, seed=7)
    text = lab.format_table(rows)
    assert "S=10" in text and "σ̂" in text and "η=0 vs ODE" in text and "noise floor" in text
    assert "energy distance, standardized" in text and f"S=10: {lab.ranking(rows, 10)}" in text
    r = lab.cell(rows, "eta=1", 10)
    assert lab.fmt_pm(r["mmd2"], r["se"]) in text
    big = [dict(row, floor=0.36) for row in rows]     # n = 8 gave a floor of 0.36: '3.6e+02 ×10⁻³' beside '×10³'
    assert "fresh data sets) 360 ×10⁻³" in lab.format_table(big)
    path = lab.make_figure(rows, tmp_path / "sub" / "t1.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["t1.png"]        # no temporary file left


def test_fmt_pm_rounds_to_the_error_bar():
    assert lab.fmt_pm(0.0123456, 0.00034) == "12.3±0.3"
    assert lab.fmt_pm(0.0123456, 0.00014) == "12.35±0.14"
    assert lab.fmt_pm(0.0123456, 0.0034) == "12±3"
    assert lab.fmt_pm(-0.0002, 0.002) == "0±2" and lab.fmt_pm(-0.00002, 0.0002) == "0.0±0.2"   # no '-0'
    assert lab.fmt_pm(-0.0006, 0.002) == "-1±2"


@pytest.mark.parametrize("kwargs, match", [
    (dict(spacing="cosine"), "spacing"),
    (dict(S_list=(0,)), "S_list"),
    (dict(S_list=(1001,)), "S_list"),
    (dict(etas=(-0.5,)), "eta must be a finite number >= 0"),
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
    with pytest.raises(ValueError, match="kernel"):
        lab.mmd2_se(x, x, 0.0)


def test_main_prints_the_tables_and_writes_files(tmp_path, capsys):
    """`lab.main` (called by `make demo`) with a small n and a small image-like d: both tables on stdout,
    the text and both figures on disk."""
    written = lab.main(out=tmp_path, n=40, image_d=32, image_n=40)
    assert [p.name for p in written] == ["table1.png", "table1_d32.png", "table1.txt"]
    printed = capsys.readouterr().out
    assert "S=1000" in printed and "σ̂" in printed and "noise floor" in printed and "image_like_mixture(32)" in printed
    assert (tmp_path / "table1.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "table1_d32.png").read_bytes()[:4] == b"\x89PNG"
    assert "image_like_mixture(32)" in (tmp_path / "table1.txt").read_text(encoding="utf-8")


def test_noise_corrects_a_model_error_that_the_ode_carries():
    """Notebook 09 §6 with 200 steps instead of 1000: a network exact below t = 50 and wrong from there up (the exact ε
    of a ring of radius 0.4, not 0.7). DDIM with η = 0 carries the error to x_0 (the ODE keeps KL(q_t || p_t)); η = 1
    shrinks it (data processing), ending ahead beyond 3 SE of the paired difference. The same wrong ε at every t is a
    consistent model: no difference."""
    from ddimlab import samplers, schedule

    T = 1000
    alpha_bar = schedule.make_alpha_bar("linear", T)
    ring, small = toy.eight_gaussians(), toy.exact_eps(toy.eight_gaussians(radius=0.4), alpha_bar)
    exact, sd = toy.exact_eps(ring, alpha_bar), ring.std()

    def wrong_above(x, t):
        return small(x, t) if int(torch.as_tensor(t).reshape(-1)[0]) >= 50 else exact(x, t)

    g = torch.Generator().manual_seed(0)
    x_T, data = torch.randn(1000, 2, generator=g, dtype=torch.float64), ring.sample(1000, g)
    seq = schedule.timesteps(200, T, "uniform")
    for net, separated in ((wrong_above, True), (small, False)):
        x0, x1 = (samplers.sample_row(net, x_T, alpha_bar, seq, eta, generator=torch.Generator().manual_seed(1))
                  for eta in (0.0, 1.0))
        diff, se = lab.paired_difference(x0 / sd, x1 / sd, data / sd, toy.ENERGY)
        assert (diff > 3 * se) if separated else (abs(diff) < 3 * se), (diff, se)


def test_the_ode_step_keeps_kl_and_the_noisy_step_shrinks_it():
    """Notebook 09 §6's two KL statements on Gaussian data, where every law is Gaussian and KL is closed form: the
    wrong network delivers q_49 = the marginal of 0.4 times the data's covariance, and the exact ε* runs t = 49 … 0.
    Each run is x_0 = c x_49 + ξ (linear); the sampler on draws of q_49 lands on N(0, c² v_q + Var ξ) within 4 SE;
    η = 0 keeps KL(q‖p) to 1e-12, η = 1 shrinks it even with Var ξ 3 SE low; the energy distance is not kept by the
    η = 0 map (it scales by c per direction)."""
    from ddimlab import samplers
    from ddimlab.gaussian import kl_normal

    T = 1000
    alpha_bar = schedule.make_alpha_bar("linear", T)
    lam_p = torch.tensor([0.25, 0.01], dtype=torch.float64)
    eps_p = toy.exact_eps(toy.GaussianMixture(torch.ones(1), torch.zeros(1, 2, dtype=torch.float64),
                                              torch.diag(lam_p)[None]), alpha_bar)
    seq = schedule.timesteps(1000, T, "uniform")
    seq = seq[seq < 50]
    a = float(alpha_bar[49])
    v_p, v_q = a * lam_p + 1 - a, a * 0.4 * lam_p + 1 - a
    n = 20000

    def run(x, eta):
        return samplers.sample_row(eps_p, x, alpha_bar, seq, eta, generator=torch.Generator().manual_seed(2))

    def kl(u, v):
        return float(kl_normal(0.0, u, 0.0, v).sum())

    def ed(u, v):   # 1-D energy distance between N(0, u) and N(0, v), per direction
        return math.sqrt(2 / math.pi) * (2 * (u + v).sqrt() - (2 * u).sqrt() - (2 * v).sqrt())

    zero, one = torch.zeros(n, 2, dtype=torch.float64), torch.ones(n, 2, dtype=torch.float64)
    x_q = torch.randn(n, 2, generator=torch.Generator().manual_seed(61), dtype=torch.float64) * v_q.sqrt()
    kl_t, after = kl(v_q, v_p), {}
    for eta in (0.0, 1.0):
        xi = run(zero, eta)
        c, v_xi = (run(one, eta) - xi)[0], xi.var(0)
        q0 = c ** 2 * v_q + v_xi
        z = (run(x_q, eta).var(0) - q0) / (q0 * math.sqrt(2 / (n - 1)))
        assert float(z.abs().max()) < 4, (eta, z)
        low = v_xi * (1 - 3 * math.sqrt(2 / (n - 1)))
        after[eta] = kl(q0, c ** 2 * v_p + v_xi), kl(c ** 2 * v_q + low, c ** 2 * v_p + low), c
    assert abs(after[0.0][0] - kl_t) < 1e-12 * kl_t
    assert after[1.0][1] < kl_t
    c0 = after[0.0][2]
    assert float((ed(c0 ** 2 * v_q, c0 ** 2 * v_p) / ed(v_q, v_p) - 1).abs().min()) > 0.01


def test_one_bandwidth_mmd2_under_added_noise_rises_to_its_ceiling_and_no_further():
    """Notebook 09 §1: for X = Y + sZ, MMD² = ∫|φ_Y|²(1 − e^{−s²|ω|²/2})² κ̂ rises with s and stays under E k(Y, Y').
    E k for Gaussian mixtures in closed form (a Gaussian integral), itself checked against the unbiased estimator at
    s = 0.5 (within 3 SE, jackknife); shrinking by 0.5 is not added noise and exceeds the ceiling."""
    ring = toy.eight_gaussians()
    h, eye = toy.bandwidth(ring), torch.eye(2, dtype=torch.float64)

    def expected_kernel(p, q):
        total = 0.0
        for wa, ma, ca in zip(*p):
            for wb, mb, cb in zip(*q):
                m = ca + cb + h ** 2 * eye
                total += float(wa * wb * h ** 2 / torch.linalg.det(m).sqrt()
                               * torch.exp(-0.5 * (ma - mb) @ torch.linalg.solve(m, ma - mb)))
        return total

    parts = (ring.weights, ring.means, ring.covs)
    ceiling = expected_kernel(parts, parts)

    def mmd2(p):
        return expected_kernel(p, p) + ceiling - 2 * expected_kernel(p, parts)

    noisy = [mmd2((ring.weights, ring.means, ring.covs + s ** 2 * eye)) for s in (0.05, 0.2, 0.5, 2, 10, 100)]
    assert all(a < b for a, b in zip(noisy, noisy[1:])) and noisy[-1] < ceiling
    assert mmd2((ring.weights, 0.5 * ring.means, 0.25 * ring.covs)) > ceiling
    g = torch.Generator().manual_seed(0)
    x, y = ring.sample(1000, g), ring.sample(1000, g)
    x = x + 0.5 * torch.randn(1000, 2, generator=g, dtype=torch.float64)
    value, se = lab.mmd2_se(x, y, h)
    assert abs(value - noisy[2]) < 3 * se, (value, noisy[2], se)


@pytest.fixture(scope="module")
def sigma_hat_last_steps():
    """σ̂ at S = 10 on the 1024-D image-like data, 2000 runs: (x_100, x_out, each run's component at t = 100, and the
    log π_k p_k of x_0, its state at t = 0)."""
    from ddimlab import samplers

    T = 1000
    alpha_bar = schedule.make_alpha_bar("linear", T)
    img = toy.image_like_mixture(1024)
    seen, g = {}, torch.Generator().manual_seed(0)

    def keep(state):
        if int(state["s"]) in (100, 0):
            seen[int(state["s"])] = state["x"].clone()

    x_T = torch.randn(2000, 1024, generator=g, dtype=torch.float64)
    out = samplers.sample_row(toy.exact_eps(img, alpha_bar), x_T, alpha_bar, schedule.timesteps(10, T, "uniform"),
                              samplers.SIGMA_HAT, generator=g, callback=keep)

    def log_joint(x, a):
        # each component's log density at ᾱ = a retyped: N(√a μ_k, diag(a λ_k + 1 − a)), plus log π_k
        v = a * img.eigvals + 1 - a
        return img.weights.log() - 0.5 * v.log().sum(1) - 0.5 * ((x[:, None, :] - math.sqrt(a) * img.means) ** 2 / v).sum(2)

    at_100 = log_joint(seen[100], float(alpha_bar[100]))
    top2 = at_100.topk(2, dim=1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 10     # told apart (odds over e^10 to 1): the formula is exact
    return img, alpha_bar, seen[100], out, at_100.argmax(1), log_joint(seen[0], float(alpha_bar[0]))


def sigma_hat_miss(data, root=True, jump=None, final_step=True, true_u2=False):
    """Per band of directions (0-15, 16-63, 64-255, 256-1023): mean over the runs of (x_out − μ_k)² minus
    g_0² ((c_0 g + c_100)² u² + σ̂²), u = x_100 − √ᾱ_100 μ_k, in SE of that mean (notebook 09 §5, the exact form);
    the keywords make the wrong formulas the notebook shows failing."""
    img, alpha_bar, x_100, out, k, _ = data
    a, a0 = float(alpha_bar[100]), float(alpha_bar[0])
    lam, mu = img.eigvals[k], img.means[k]
    g = (math.sqrt(a) if root else 1.0) * lam / (a * lam + 1 - a)
    g0 = math.sqrt(a0) * lam / (a0 * lam + 1 - a0) if final_step else torch.ones_like(lam)
    c0 = math.sqrt(a0) * (1 - a / a0) / (1 - a)
    c100 = math.sqrt(a / a0) * (1 - a0) / (1 - a)
    u2 = a * lam + 1 - a if true_u2 else (x_100 - math.sqrt(a) * mu) ** 2
    d = (out - mu) ** 2 - g0 ** 2 * ((c0 * g + c100) ** 2 * u2 + (1 - a / a0 if jump is None else jump))
    return [float(d[:, s:e].mean(1).mean() / (d[:, s:e].mean(1).std() / math.sqrt(len(d))))
            for s, e in ((0, 16), (16, 64), (64, 256), (256, 1024))]


def test_sigma_hat_last_two_steps_are_the_derived_linear_map(sigma_hat_last_steps):
    """Notebook 09 §5: given its component, σ̂'s output is x_out − μ_k = g_0 ((c_0 g + c_100) u + σ̂ z), so
    (x_out − μ_k)² − g_0² ((c_0 g + c_100)² u² + σ̂²) has mean 0 over the runs, within 3 SE in every band; the slope
    g without √ᾱ_100, or x_100 taken at its true variance, misses beyond 3 SE in every band."""
    assert all(abs(z) < 3 for z in sigma_hat_miss(sigma_hat_last_steps))
    for wrong in (dict(root=False), dict(true_u2=True)):
        assert all(abs(z) > 3 for z in sigma_hat_miss(sigma_hat_last_steps, **wrong)), wrong


def test_sigma_hat_noise_floor_is_its_last_jump_in_every_band(sigma_hat_last_steps):
    """Notebook 09 §5's noise floor: σ̂'s last jump adds 1 − ᾱ_100/ᾱ_0 to every direction; DDPM's posterior variance β̃
    in its place misses beyond 3 SE in every band, and leaving out the final step's g_0 misses in the weak band."""
    _, alpha_bar, *_ = sigma_hat_last_steps
    a, a0 = float(alpha_bar[100]), float(alpha_bar[0])
    beta_tilde = (1 - a0) / (1 - a) * (1 - a / a0)
    assert all(z > 3 for z in sigma_hat_miss(sigma_hat_last_steps, jump=beta_tilde))
    assert abs(sigma_hat_miss(sigma_hat_last_steps, final_step=False)[3]) > 3


def test_sigma_hat_final_step_sees_the_component_of_t_100(sigma_hat_last_steps):
    """Notebook 09 §5, step 3 of the exact form: at t = 0 each run's most likely component is the one it had at t = 100,
    the next one under e^−10 times as likely, so the final step's slope g_0 is the same component's."""
    *_, k, at_0 = sigma_hat_last_steps
    top2 = at_0.topk(2, dim=1).values
    assert bool((at_0.argmax(1) == k).all()) and float((top2[:, 0] - top2[:, 1]).min()) > 10


def test_sigma_hat_jump_keeps_the_mean_on_the_schedule():
    """Notebook 09 §5: DDPM eq. 7's mean over a jump t → s, c_0 x̂_0 + c_t x_t with c_0 = √ᾱ_s (1 − ᾱ_t/ᾱ_s)/(1 − ᾱ_t) and
    c_t = √(ᾱ_t/ᾱ_s)(1 − ᾱ_s)/(1 − ᾱ_t), has c_0 + c_t √ᾱ_t = √ᾱ_s for every s < t (the means cancel); these c's are σ̂'s:
    one step of `samplers.sample_row` with σ̂ and zero noise is c_0 x̂_0 + c_t x_t. c_t with √ᾱ_t for √(ᾱ_t/ᾱ_s) fails."""
    from ddimlab import samplers

    ab = schedule.make_alpha_bar("linear", 1000)
    a_t, a_s = ab[:, None], ab[None, :]
    c0, ct = a_s.sqrt() * (1 - a_t / a_s) / (1 - a_t), (a_t / a_s).sqrt() * (1 - a_s) / (1 - a_t)
    below = torch.ones(1000, 1000, dtype=torch.bool).tril(-1)
    assert float((c0 + ct * a_t.sqrt() - a_s.sqrt())[below].abs().max()) < 1e-12
    slip = c0 + a_t.sqrt() * (1 - a_s) / (1 - a_t) * a_t.sqrt() - a_s.sqrt()
    assert float(slip[below].abs().max()) > 1e-2
    x0_hat, x_t = torch.tensor([[0.7, -1.3]], dtype=torch.float64), torch.tensor([[0.4, 2.0]], dtype=torch.float64)
    t, s = 100, 0
    a = float(ab[t])
    eps = lambda x, _: (x - math.sqrt(a) * x0_hat) / math.sqrt(1 - a)       # noqa: E731  so that x̂_0(x_t) = x0_hat
    seen = {}
    no_noise = lambda t_, s_: torch.zeros(1, 2, dtype=torch.float64)           # noqa: E731
    samplers.sample_row(eps, x_t, ab, torch.tensor([t, s]), samplers.SIGMA_HAT, noise_sampler=no_noise,
                        callback=lambda st: seen.__setitem__(int(st["s"]), st["x"]))
    torch.testing.assert_close(seen[s], float(c0[t, s]) * x0_hat + float(ct[t, s]) * x_t, rtol=1e-12, atol=1e-12)


def test_noise_floor_computes_only_its_repeats(monkeypatch):
    """`noise_floor` computes the `repeats` statistics of its floor and no other: it computed toy.mmd's one data set
    against fresh data too (three more n x n kernel tables per table1) and dropped it."""
    calls = []
    real = toy.mmd2_unbiased
    monkeypatch.setattr(toy, "mmd2_unbiased", lambda *args: calls.append(len(args[0])) or real(*args))
    toy.noise_floor(toy.eight_gaussians(), 30, torch.Generator().manual_seed(0), repeats=3, kernel=toy.ENERGY)
    assert calls == [30, 30, 30]


def test_jackknife_se_of_a_mean_is_the_textbook_standard_error():
    """jackknife_se (notebook 09 §1) on the delete-one means of n numbers is s/√n, the sample sd over √n: the
    jackknife's defining case (Efron & Stein 1981), and independent of its formula. At n = 5 its (n−1)/n is a factor 0.8
    on SE²: dropping it, or writing 1/n, fails here (at the lab's n = 2000 the first is 0.03 % and no repeat test sees it)."""
    g = torch.Generator().manual_seed(3)
    for n in (5, 12):
        x = torch.randn(n, generator=g, dtype=torch.float64)
        loo = (x.sum() - x) / (n - 1)
        assert lab.jackknife_se(loo) == pytest.approx(float(x.std()) / math.sqrt(n), rel=1e-12)


def test_beyond_is_one_sided():
    """beyond(worse, better) asks whether `worse` is worse by more than k SEs (notebook 09 §2), not whether the two
    differ: a cell 100 SE better than another is not beyond it. Every call in the tables passes the worse cell first,
    so `abs(diff) > k·se` passed every other test."""
    good, bad = {"mmd2": 0.0, "se": 0.01}, {"mmd2": 1.0, "se": 0.01}
    assert lab.beyond(bad, good) and not lab.beyond(good, bad)
    assert not lab.beyond(good, good, k=0.0)


def test_paired_difference_se_is_the_jackknife_of_the_difference_by_brute_force():
    """paired_difference (notebook 04 §4) against the jackknife written out with scipy's distances: the energy distance
    of each set to y recomputed with index i deleted from all three sets, and SE² = (n−1)/n Σᵢ (D₋ᵢ − D̄)² of the
    differences D₋ᵢ, to 1e-8. xb is xa plus small noise, so the paired SE (0.013 here) is far below
    √(SE_a² + SE_b²) (0.056), which the pairing must not fall back to."""
    g = torch.Generator().manual_seed(2)
    n = 12
    y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    xa = y + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    xb = xa + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)

    def energy(x, y):
        m = len(x)
        return 2 * cdist(x, y).mean() - cdist(x, x).sum() / (m * (m - 1)) - cdist(y, y).sum() / (m * (m - 1))

    A, B, Y = xa.numpy(), xb.numpy(), y.numpy()
    loo = np.array([energy(np.delete(A, i, 0), np.delete(Y, i, 0)) - energy(np.delete(B, i, 0), np.delete(Y, i, 0))
                    for i in range(n)])
    diff, se = lab.paired_difference(xa, xb, y, toy.ENERGY)
    assert diff == pytest.approx(energy(A, Y) - energy(B, Y), rel=1e-8)
    assert se == pytest.approx(math.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)), rel=1e-8)


def test_summed_variance_se_is_the_delete_one_jackknife_times_n_minus_2_over_n_minus_1():
    """summed_variance's SE against the delete-one jackknife done by brute force (torch.var of x without row i, summed
    over columns, n times; to 1e-6, measured 8e-8: the delete-one values are close). Deleting row i gives
    s²₋ᵢ = (n−1)/(n−2) s² − n q_i/((n−1)(n−2)), linear in q_i, so the jackknife SE is exactly √n·sd(q)/(n−2), and the
    documented √n·sd(q)/(n−1) is it times (n−2)/(n−1): 0.75 at n = 5, 0.857 at n = 8. sd(q)/√n, which drops the
    value's own factor n/(n−1), gives 0.6 and 0.75 and fails; at the repeat test's n = 200 the two differ by 0.5 % and
    that test cannot tell them apart."""
    g = torch.Generator().manual_seed(0)
    for n in (5, 8):
        x = torch.randn(n, 3, generator=g, dtype=torch.float64)
        loo = torch.tensor([float(torch.cat([x[:i], x[i + 1:]]).var(0).sum()) for i in range(n)])
        jackknife = math.sqrt((n - 1) / n * float((loo - loo.mean()).pow(2).sum()))
        assert lab.summed_variance(x)[1] == pytest.approx(jackknife * (n - 2) / (n - 1), rel=1e-6)
