"""benchmarks/bench_samplers.py: the bootstrap standard errors of its error ratios against repeated draws."""
import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_samplers.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_samplers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratio_standard_errors_match_the_spread_over_repeated_draws():
    """Per-point squared errors of two solvers from the same x_T share a log-normal factor (a hard trajectory is hard
    for both). Over 400 repeated sets of 512 points, the spread of the RMS ratio and of the median ratio is what
    `ratio_ses` predicts from one set (mean over 16 sets, within 25%; 0.89 to 1.12 of it over four seeds).
    Resampling the two solvers' points independently, which ignores that they ran from the same x_T, overstates the
    RMS ratio's spread more than twofold."""
    bench = _bench()
    g = torch.Generator().manual_seed(0)

    def draw(n=512):
        hard = torch.randn(n, generator=g, dtype=torch.float64).exp()
        return (4 * hard * torch.randn(n, generator=g, dtype=torch.float64).mul(0.3).exp(),
                hard * torch.randn(n, generator=g, dtype=torch.float64).mul(0.3).exp())

    sets = [draw() for _ in range(400)]
    rms = torch.tensor([float((a.mean() / b.mean()).sqrt()) for a, b in sets])
    med = torch.tensor([float(a.sqrt().median() / b.sqrt().median()) for a, b in sets])
    predicted = torch.tensor([bench.ratio_ses(a, b, draws=1000) for a, b in sets[:16]]).mean(0)
    for spread, se in ((float(rms.std()), float(predicted[0])), (float(med.std()), float(predicted[1]))):
        assert abs(se / spread - 1) < 0.25, (se, spread)
    a, b = sets[0]
    i, j = (torch.randint(512, (1000, 512), generator=g) for _ in range(2))
    unpaired = float((a[i].mean(1) / b[j].mean(1)).sqrt().std())
    assert unpaired > 2 * float(rms.std())
