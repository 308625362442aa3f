"""benchmarks/bench_unet.py's speed-up: the geometric mean of per-round time ratios and its standard error, checked
against repeats of a simulated benchmark (the end-to-end run on the CPU: tests/test_gpu_check.py)."""
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ddimlab import quality

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_unet.py"
spec = importlib.util.spec_from_file_location("bench_unet", SCRIPT)
bench_unet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_unet)


def simulated_rounds(rng, ratio, rounds, load_sd=0.5, noise_sd=0.05):
    """Per-round times of (diffusers, ddimlab): a load shared by both runs of a round (what pairing removes) times
    each run's own noise."""
    load = np.exp(rng.normal(0, load_sd, rounds))
    ours = load * np.exp(rng.normal(0, noise_sd, rounds))
    return ratio * load * np.exp(rng.normal(0, noise_sd, rounds)), ours


def test_speedup_se_matches_the_spread_of_repeats():
    rng = np.random.default_rng(0)
    runs = [bench_unet.speedup(*simulated_rounds(rng, 1.1, 10)) for _ in range(2000)]
    ratios, ses = np.array([r["ratio"] for r in runs]), np.array([r["se"] for r in runs])
    assert abs(np.median(ratios) / 1.1 - 1) < 0.01
    assert abs(np.sqrt(np.mean(ses ** 2)) / ratios.std() - 1) < 0.1      # the paired SE, not the load's spread
    # the same mean with the two sets' errors taken as independent: the shared load would swamp the SE
    unpaired_se = [1.1 * quality.mean_difference(torch.tensor(np.log(t)), torch.tensor(np.log(o)), paired=False)[1]
                   for t, o in (simulated_rounds(rng, 1.1, 10) for _ in range(200))]
    assert np.median(unpaired_se) > 5 * ratios.std()


def test_speedup_readings():
    rng = np.random.default_rng(1)
    assert bench_unet.speedup(*simulated_rounds(rng, 1.3, 20))["reading"] == "ahead"
    assert bench_unet.speedup(*simulated_rounds(rng, 0.7, 20))["reading"] == "behind"
    assert bench_unet.speedup(*simulated_rounds(rng, 1.0, 20, noise_sd=0.3))["reading"] == "unresolved"
    one = bench_unet.speedup([2.0], [1.0])
    assert one["ratio"] == 2.0 and one["se"] is None and one["reading"] == "unresolved"
