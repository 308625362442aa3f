"""benchmarks/bench_samplers.py with tiny sizes: the report runs end to end, counts calls within each budget, and
prints every ratio twice, as picked on the same points and cross-fitted (its statistics: tests/test_lab.py)."""
import math
import re
import sys

import pytest
import torch
from cli_support import load_script

from ddimlab import toy


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("diffusers")
    return load_script("benchmarks/bench_samplers.py")


def test_report_runs_with_tiny_sizes(bench, monkeypatch, capsys):
    configs = [c for c in bench.diffusers_configs() if c[0] in bench.STRONG][:3]
    monkeypatch.setattr(bench, "diffusers_configs", lambda: configs)
    monkeypatch.setattr(bench, "ddimlab_sweep_settings", lambda: sorted({bench.FIXED, *bench.TUNED.values()}))
    *_, summary = bench.report("ring", toy.eight_gaussians(), 64, (5, 10))
    out = capsys.readouterr().out
    assert out.count("cross-fitted: best diffusers") == 2 and configs[0][0].split()[0] in out
    assert re.search(r"\n  exponential +\d\.\d\de-\d\d / \d\.\d\de-\d\d \(×\d+\.\d\)", out) and "\n  beta " in out
    assert "(×1.0)" in out                   # each budget's best step rule, next to the others' ratio to it
    assert re.search(r"\nddimlab UniPC-3 bh1, logSNR steps +\d\.\d\de-\d\d / ", out)     # the variant is reachable
    kinds = ("fixed", "tuned", "self-selected")
    assert set(summary) == {(b, k + c) for b in (5, 10) for k in kinds for c in ("", ", cross-fitted")}
    assert all(math.isfinite(v) and v >= 0 for row in summary.values() for v in row)


@pytest.mark.parametrize("ratio,se,expected", [(2.70, 0.07, "2x ahead"), (2.00, 0.11, "ahead, 2x unresolved"),
                                               (1.14, 0.04, "ahead, below 2x"), (1.44, 0.23, "unresolved"),
                                               (0.48, 0.02, "behind"), (0.95, 0.02, "unresolved")])
def test_verdict_reads_a_ratio_at_three_standard_errors(bench, ratio, se, expected):
    """The README's readings of the benchmark table, each from the ratio and its SE alone."""
    assert bench.verdict(ratio, se) == expected


@pytest.mark.parametrize("argv,needle", [
    (["--n", "1"], "argument --n: must be an integer >= 2, got 1"),             # error_ratio's ValueError after minutes
    (["--budgets", "0"], r"argument --budgets: must be an integer in 2..500, got 0"),
    (["--budgets", "5", "15"], r"no tuned setting for NFE 15; the report's budgets are among 5, 10, 20"),   # KeyError: 15
    (["--budgets", "5", "5"], r"--budgets = 5 is listed twice"),                 # every row printed twice
    (["--tune", "--budgets", "600"], r"argument --budgets: must be an integer in 2..500, got 600"),
])
def test_bad_arguments_are_one_line_before_the_sweep(bench, argv, needle, monkeypatch, capsys):
    """Careless round 27: each of these failed (or doubled the table) only after the reference and the diffusers sweep."""
    monkeypatch.setattr(bench, "report", lambda *a, **k: pytest.fail("the report started"))
    monkeypatch.setattr(bench, "tune", lambda *a, **k: pytest.fail("the tuning started"))
    monkeypatch.setattr(sys, "argv", ["bench_samplers.py"])
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and err.startswith("bench_samplers.py: error: ") and re.search(needle, err), err


def test_tune_takes_n_and_ctrl_c_and_a_missing_diffusers_are_one_line(bench, monkeypatch, capsys):
    """--tune ran 1024 points whatever --n said; Ctrl-C was a traceback through the sweep; without diffusers the report
    computed the reference first and then stopped with `ModuleNotFoundError: No module named 'diffusers'`."""
    asked = {}
    monkeypatch.setattr(bench, "tune", lambda n, budgets: asked.update(n=n, budgets=budgets))
    monkeypatch.setattr(sys, "argv", ["bench_samplers.py"])
    bench.main(["--tune", "--n", "256", "--budgets", "3", "40"])
    assert asked == {"n": 256, "budgets": [3, 40]}

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(bench, "tune", ctrl_c)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--tune"])
    assert stop.value.code == 130 and capsys.readouterr().err.strip() == "bench_samplers.py: interrupted"
    monkeypatch.setitem(sys.modules, "diffusers", None)          # import diffusers raises ImportError
    monkeypatch.setattr(bench, "report", lambda *a, **k: pytest.fail("the report started"))
    with pytest.raises(SystemExit, match=r"^bench_samplers.py: error: .*not installed: pip install diffusers \(or make "
                                         r"bench\)$"):
        bench.main([])


def test_sweep_has_beta_sigmas_wherever_diffusers_offers_them_and_no_leading_spacing(bench):
    """use_beta_sigmas was left out of the sweep (the standard: the peer's strongest settings, measured in the report);
    'leading' stays out because it does not start at the benchmark's x_T at t = 999 (module docstring)."""
    import inspect

    made = [(label, make()) for label, make in bench.diffusers_configs()]
    classes = {type(s) for _, s in made}
    offers = {c for c in classes if "use_beta_sigmas" in inspect.signature(c.__init__).parameters}
    beta = {label: type(s) for label, s in made if s.config.get("use_beta_sigmas")}
    assert len(offers) == 6 and set(beta.values()) == offers, sorted(c.__name__ for c in offers - set(beta.values()))
    assert not [label for label, s in made if s.config.get("timestep_spacing") == "leading"]
    for c in classes:
        if "timestep_spacing" in inspect.signature(c.__init__).parameters:
            s = c(num_train_timesteps=bench.T, timestep_spacing="leading")
            for S in bench.BUDGETS:
                s.set_timesteps(S)
                assert s.timesteps[0] < bench.T - 1, (c.__name__, S)
    eps = toy.exact_eps(toy.eight_gaussians(), bench.schedule.make_alpha_bar("linear", bench.T))
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ran = bench.sweep_diffusers(eps, x_T, torch.zeros_like(x_T), (5,), [c for c in bench.diffusers_configs() if c[0] in beta])
    assert {beta[label] for label, r in ran.items() if 5 in r} == offers       # each scheduler runs them (scipy's beta)


def test_tune_picks_by_its_own_error_whatever_the_peers(bench, monkeypatch, capsys):
    """The tuning search with tiny sizes: it picks the setting of least geometric-mean error on the tuning mixtures,
    the same picks whichever diffusers settings it is compared with, and prints each ratio as the peers' best error over
    the setting's (computed here from the errors themselves)."""
    mixtures = dict(list(bench.tuning_mixtures().items())[:2])
    monkeypatch.setattr(bench, "tuning_mixtures", lambda: mixtures)
    settings = sorted({bench.FIXED, *bench.TUNED.values(), "ipndm order=4 rho=3 | noafs | power 3.0"})
    monkeypatch.setattr(bench, "ddimlab_sweep_settings", lambda: settings)
    ab, labs = bench.schedule.make_alpha_bar("linear", bench.T), {m: bench.lab(mix, 8) for m, mix in mixtures.items()}
    own = {(m, s, b): bench.run_ddimlab(s, *labs[m], b, ab)[1] for m in mixtures for s in settings for b in (5, 10)}
    picks = {}
    for peer_error in (1.0, 0.01):        # the best diffusers error on every mixture and budget
        monkeypatch.setattr(bench, "sweep_diffusers", lambda eps, x_T, ref, budgets, configs, e=peer_error:
                            {"peer": {b: (b, e) for b in budgets}})
        bench.tune(8, (5, 10))
        out = capsys.readouterr().out
        picks[peer_error] = re.findall(r"(?:tuned for NFE \d+|fixed): '([^']+)'", out)
        for b in (5, 10):
            best = min(settings, key=lambda s: sum(math.log(own[(m, s, b)]) for m in mixtures))
            assert picks[peer_error][(5, 10).index(b)] == best
            gm = math.exp(sum(math.log(peer_error / own[(m, best, b)]) for m in mixtures) / len(mixtures))
            assert f"tuned for NFE {b}: {best!r} (geometric-mean ratio {gm:.2f})" in out
    assert picks[1.0] == picks[0.01] and len(picks[1.0]) == 3


def test_round_29_tune_at_a_budget_without_a_committed_setting_finishes(bench, monkeypatch, capsys):
    """`--tune --budgets 3` (the help: "--tune takes any in 2..500") ran the whole search, minutes at the defaults, then
    stopped with KeyError: 3 in the table of the committed settings, which has no TUNED row at NFE 3. Now that row is
    left out; the FIXED one and the search's picks are printed (two mixtures and two settings here, for time)."""
    two = dict(list(bench.tuning_mixtures().items())[:2])
    monkeypatch.setattr(bench, "tuning_mixtures", lambda: two)
    monkeypatch.setattr(bench, "ddimlab_sweep_settings", lambda: [bench.FIXED, bench.TUNED[10]])
    monkeypatch.setattr(bench, "STRONG", {next(iter(sorted(bench.STRONG)))})
    monkeypatch.setattr(sys, "argv", ["bench_samplers.py"])
    bench.main(["--tune", "--n", "16", "--budgets", "3", "10"])
    out = capsys.readouterr().out
    assert "tuned for NFE 3: " in out and re.search(r"NFE  3 FIXED: \S+ \S+  \(geometric mean", out), out
    assert "NFE  3 TUNED" not in out and "NFE 10 TUNED" in out, out
