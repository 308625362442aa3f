"""benchmarks/digits_recipes.py: its standard errors against Monte Carlo, and the pipeline with tiny sizes."""
import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "digits_recipes.py"


@pytest.fixture(scope="module")
def recipes():
    spec = importlib.util.spec_from_file_location("digits_recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_difference_standard_errors_match_the_spread_over_repeated_draws(recipes):
    """Over 4000 repeated draws of 0/1 scores, the spread of the difference of the two shares is what
    `difference` predicts: paired (200 pairs, one shared uniform per pair: correlated) and independent (200
    against 50 samples); the independent formula applied to paired samples would overstate it more than twofold."""
    g = torch.Generator().manual_seed(0)
    R, n = 4000, 200
    u = torch.rand(R, n, generator=g)
    shared = ((u < 0.80).double(), (u < 0.75).double())                     # the same x_T: correlated
    apart = ((u < 0.80).double(), (torch.rand(R, 50, generator=g) < 0.75).double())
    for (a, b), paired in ((shared, True), (apart, False)):
        spread = float((a.mean(1) - b.mean(1)).std())                       # the truth, from the repeats
        predicted = sum(recipes.difference(a[r], b[r], paired)[1] for r in range(R)) / R
        assert abs(predicted / spread - 1) < 0.06, (paired, predicted, spread)   # std of a std at R=4000: 1.1%
        d = recipes.difference(a[0], b[0], paired)[0]
        assert d == pytest.approx(float(a[0].mean() - b[0].mean()))         # a minus b, not b minus a
    wrong = sum(recipes.difference(shared[0][r], shared[1][r], False)[1] for r in range(R)) / R
    assert wrong > 2 * float((shared[0].mean(1) - shared[1].mean(1)).std())


@pytest.mark.slow
def test_recipes_are_trained_scored_and_compared_with_tiny_sizes(recipes, tmp_path, capsys):
    report = recipes.main(["--recipes", "preset", "uniform-t", "former-16x16", "--steps", "2", "--n", "8",
                           "--x-seeds", "1", "2", "--S", "3", "--threads", "1", "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert "uniform-t" in out and "(paired;" in out and "(independent;" in out
    assert set(report["differences"]) == {(r, 3, m) for r in ("uniform-t", "former-16x16") for m in ("confident", "FD")}
    conf, fds, drawn = report["results"]["former-16x16", 0, 3]
    assert conf.shape == (16,) and len(fds) == 2 and all(0 <= d <= 10 for d in drawn)
    assert len(list((tmp_path / "models").glob("digits_*"))) == 3          # one cached model per recipe
