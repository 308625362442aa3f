"""benchmarks/bench_samplers.py with tiny sizes: the report runs end to end, counts calls within each budget, and
prints every ratio twice, as picked on the same points and cross-fitted (its statistics: tests/test_lab.py)."""
import importlib.util
import math
from pathlib import Path

import pytest

from ddimlab import toy

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_samplers.py"


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("diffusers")
    spec = importlib.util.spec_from_file_location("bench_samplers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_runs_with_tiny_sizes(bench, monkeypatch, capsys):
    configs = [c for c in bench.diffusers_configs() if c[0] in bench.STRONG][:3]
    monkeypatch.setattr(bench, "diffusers_configs", lambda: configs)
    monkeypatch.setattr(bench, "ddimlab_sweep_settings", lambda: sorted({bench.FIXED, *bench.TUNED.values()}))
    *_, summary = bench.report("ring", toy.eight_gaussians(), 64, (5, 10))
    out = capsys.readouterr().out
    assert out.count("cross-fitted: best diffusers") == 2 and configs[0][0].split()[0] in out
    kinds = ("fixed", "tuned", "self-selected")
    assert set(summary) == {(b, k + c) for b in (5, 10) for k in kinds for c in ("", ", cross-fitted")}
    assert all(math.isfinite(v) and v >= 0 for row in summary.values() for v in row)


@pytest.mark.parametrize("ratio,se,expected", [(2.70, 0.07, "2x ahead"), (2.00, 0.11, "ahead, 2x unresolved"),
                                               (1.14, 0.04, "ahead, below 2x"), (1.44, 0.23, "unresolved"),
                                               (0.48, 0.02, "behind"), (0.95, 0.02, "unresolved")])
def test_verdict_reads_a_ratio_at_three_standard_errors(bench, ratio, se, expected):
    """The README's readings of the benchmark table, each from the ratio and its SE alone."""
    assert bench.verdict(ratio, se) == expected
