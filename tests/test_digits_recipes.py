"""benchmarks/digits_recipes.py with tiny sizes (its standard errors: `quality.mean_difference`, tests/test_quality.py)."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "digits_recipes.py"


@pytest.fixture(scope="module")
def recipes():
    spec = importlib.util.spec_from_file_location("digits_recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_recipes_are_trained_scored_and_compared_with_tiny_sizes(recipes, tmp_path, capsys):
    report = recipes.main(["--recipes", "preset", "uniform-t", "former-16x16", "--steps", "2", "--n", "8",
                           "--x-seeds", "1", "2", "--S", "3", "--threads", "1", "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert "uniform-t" in out and "(paired;" in out and "(independent;" in out
    assert set(report["differences"]) == {(r, 3, m) for r in ("uniform-t", "former-16x16") for m in ("confident", "FD")}
    conf, fds, drawn, ses = report["results"]["former-16x16", 0, 3]
    assert conf.shape == (16,) and len(fds) == 2 and all(0 <= d <= 10 for d in drawn) and ses == []
    assert len(list((tmp_path / "models").glob("digits_*"))) == 3          # one cached model per recipe
    report = recipes.main(["--recipes", "preset", "--steps", "2", "--n", "8", "--x-seeds", "1", "2", "--S", "3",
                           "--threads", "1", "--cache", str(tmp_path), "--fd-se"])
    out, (_, fds, _, ses) = capsys.readouterr().out, report["results"]["preset", 0, 3]
    sd = float(np.std(fds, ddof=1))
    assert len(ses) == 2 and f"SD {sd:.2f} ± {sd / math.sqrt(2):.2f}; mean bootstrap SE {np.mean(ses):.2f}" in out, out
