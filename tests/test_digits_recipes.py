"""benchmarks/digits_recipes.py with tiny sizes (its standard errors: `quality.mean_difference`, tests/test_quality.py)."""
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_support import _run_scripts, load_script

from ddimlab.samplers import NOT_ITS_X_T


@pytest.fixture(scope="module")
def recipes():
    return load_script("benchmarks/digits_recipes.py")


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


@pytest.mark.parametrize("argv,needle", [
    (["--seeds", "0", "0"], r"--seeds = 0 is listed twice"),          # pooled twice: its standard errors / √2, silently
    (["--x-seeds", "10", "10"], r"--x-seeds = 10 is listed twice"),   # the same x_T set counted twice, likewise
    (["--recipes", "preset", "preset"], r"--recipes = preset is listed twice"),
    (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),   # was the preset's steps, silently
    (["--n", "1"], "argument --n: must be an integer >= 2, got 1"),              # score_digits' error after training
    (["--S", "1001"], r"argument --S: must be an integer in 1..1000, got 1001"),  # schedule's error after training
    (["--threads", "0"], "argument --threads: must be an integer in 1..\\d+, got 0"),
    (["--recipes", "preset", "2000-steps", "--steps", "5"],       # printed "+0.00 ± 0.00 (paired; not told apart)"
     r"--steps 5 trains 2000-steps as preset \(it changes only the steps\): one cached model, compared with itself"),
    (["--x-seeds", "10"], r"give at least two --x-seeds \(or two --seeds\) to compare recipes"),   # after all training
    (["--cache", "{tmp}/f"], r"^digits_recipes.py: error: .*f is a file, not a folder\); choose another --cache$"),
    (["--cache", " "], r"argument --cache: is blank \(' '\), which would be the current folder; give a folder$"),
])
def test_bad_arguments_are_one_line_before_any_training(recipes, argv, needle, tmp_path, monkeypatch, capsys):
    """Careless round 27: each of these pooled values twice without a word, substituted a default, or was a traceback
    (the last three after the first model had trained, which takes half an hour). Round 32: --steps with a recipe that
    changes only the steps (2000-steps) trained it as the other, and compared one cached model with itself."""
    (tmp_path / "f").write_text("")
    monkeypatch.setattr(recipes.pretrained, "digits_model", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(sys, "argv", ["digits_recipes.py"])
    with pytest.raises(SystemExit) as stop:
        recipes.main([a.format(tmp=tmp_path) for a in argv])
    said = str(stop.value.code) if stop.value.code != 2 else capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(needle, said), said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_interrupted_is_one_line(recipes, tmp_path, monkeypatch, capsys):
    """Ctrl-C while a recipe trained was a traceback through train's loop; then (until careless round 28) one line that
    dropped what the interrupt said was kept, which the commands' "interrupted: ..." gives."""
    def ctrl_c(*a, **k):
        raise KeyboardInterrupt("stopped at step 3 of 10; the cached digits model was not finished, and nothing was kept")
    monkeypatch.setattr(recipes.pretrained, "digits_model", ctrl_c)
    monkeypatch.setattr(sys, "argv", ["digits_recipes.py"])
    with pytest.raises(SystemExit) as stop:
        recipes.main(["--cache", str(tmp_path)])
    assert stop.value.code == 130 and capsys.readouterr().err.strip() == ("digits_recipes.py: interrupted: stopped at step 3 "
                                                                         "of 10; the cached digits model was not finished, "
                                                                         "and nothing was kept")


@pytest.mark.slow
def test_round_32_training_shows_a_progress_bar_unless_asked_not_to(recipes, tmp_path, capsys):
    """Training a recipe (about 30 minutes for the default pair) printed one line, then nothing until it was done: the
    digits model trained without its bar. It shows now, on stderr, and --no-progress turns it off."""
    tiny = ["--recipes", "preset", "--n", "4", "--x-seeds", "1", "2", "--S", "2", "--threads", "1"]
    recipes.main([*tiny, "--steps", "3", "--cache", str(tmp_path / "a")])
    assert "3/3" in capsys.readouterr().err
    recipes.main([*tiny, "--steps", "3", "--cache", str(tmp_path / "b"), "--no-progress"])
    assert "3/3" not in capsys.readouterr().err


def test_round_44_one_uniform_step_is_warned_of_before_training():
    """`--S 1` scored DDIM-1 on the uniform grid, the step t = 0 alone, so its "samples" were x_T, without a word, where
    `sample`, `reproduce` and `lab` warn. The same warning (`samplers.check_first_step`) now comes in one line, as the
    commands print it, before any training; --S 2 (t = 500, 0) starts near noise and is not warned of. The script in a
    subprocess, its training stopped at once."""
    def run(*S):
        code = ("recipes = load_script('benchmarks/digits_recipes.py')\n"
                "def stop(*a, **k):\n    raise KeyboardInterrupt('stopped before training')\n"
                "recipes.pretrained.digits_model = stop\nsys.argv = ['digits_recipes.py']\n"
                f"recipes.main(['--S', *{list(map(str, S))!r}])")
        r = _run_scripts(code, timeout=120)
        assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr
        return r.stderr.splitlines()
    said = run(20, 1)
    assert said == [f"digits_recipes.py: warning: the only step is t = 0 (alpha_bar = 1), where {NOT_ITS_X_T}; give --S 2 "
                    "or more", "digits_recipes.py: interrupted: stopped before training"], said
    assert run(2, 10) == ["digits_recipes.py: interrupted: stopped before training"]


def test_round_45_the_one_step_warning_names_only_this_scripts_options():
    """Round 44's `--S 1` warning was `sample`'s: "use more steps or the trailing spacing (which starts at t = T - 1)",
    and this script has no --spacing (argparse refuses it). The warning (`samplers.check_first_step`, one text with the
    advice chosen by its caller) now gives this script's way out, --S 2 or more, and every option it names is one of the
    script's own (its --help lists them). The script in a subprocess, its training stopped at once."""
    code = ("recipes = load_script('benchmarks/digits_recipes.py')\n"
            "def stop(*a, **k):\n    raise KeyboardInterrupt('stopped before training')\n"
            "recipes.pretrained.digits_model = stop\nsys.argv = ['digits_recipes.py']\nrecipes.main(['--S', '1'])")
    r = _run_scripts(code, timeout=120)
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr
    warning = r.stderr.splitlines()[0]
    assert warning.startswith("digits_recipes.py: warning: the only step is t = 0") and "spacing" not in warning, warning
    root = Path(__file__).resolve().parents[1]
    usage = subprocess.run([sys.executable, "benchmarks/digits_recipes.py", "--help"], cwd=root, capture_output=True,
                           text=True, timeout=120).stdout
    named = re.findall(r"--[A-Za-z][A-Za-z-]*", warning)
    assert named == ["--S"] and all(re.search(rf"{option}\b", usage) for option in named), (named, usage)


@pytest.mark.slow
def test_round_44_one_recipe_prints_no_empty_comparison(tmp_path):
    """`--recipes preset` alone printed the heading "each recipe minus preset, ..." with nothing under it. With one recipe
    the section is left out; with two it is there, a line per step count and measure. The script in a subprocess, two
    tiny models (2 training steps) in a cache of its own."""
    root = Path(__file__).resolve().parents[1]
    tiny = ["--steps", "2", "--n", "4", "--x-seeds", "1", "2", "--S", "2", "--threads", "1", "--no-progress", "--cache",
            str(tmp_path)]

    def run(*recipes):
        r = subprocess.run([sys.executable, "benchmarks/digits_recipes.py", "--recipes", *recipes, *tiny], cwd=root,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        return r.stdout
    alone = run("preset")
    assert "each recipe minus" not in alone and alone.rstrip().splitlines()[-1].startswith("  DDIM-2: confident "), alone
    both = run("preset", "uniform-t").splitlines()
    heading = both.index("each recipe minus preset, training seeds [0] pooled: the confident share (over the samples) and "
                         "the mean FD (over the x_T sets)")
    assert [line.split(":")[0] for line in both[heading + 1:]] == ["  DDIM-2 confident", "  DDIM-2 FD"], both


def test_round_46_a_huge_n_is_refused_before_any_training_as_lab_refuses_one(tmp_path):
    """`--n 1000000000` trained (or loaded) the first model and then allocated for minutes before failing, where `lab
    --n` is refused at once when its tables cannot fit in half of the machine's memory (`checks.check_fits`). Now --n is
    bounded the same way (`check_n_fits`: evaluate's measured bytes per sample and pixel, the largest recipe's images),
    with the largest --n that fits; a small --n passes. The script in a subprocess, its training replaced by a stop."""
    code = (f"sys.argv = ['digits_recipes.py']\nrecipes = load_script('benchmarks/digits_recipes.py')\n"
            f"def stop(*a, **k):\n    raise SystemExit('training started')\n"
            f"recipes.pretrained.digits_model = stop\n"
            f"for n in ('1000000000', '8'):\n"
            f"    try:\n        recipes.main(['--recipes', 'preset', 'former-16x16', '--n', n, '--cache', {str(tmp_path)!r}])\n"
            f"    except SystemExit as e:\n        print(e.code)\n")
    r = _run_scripts(code)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"digits_recipes.py: error: --n 1,000,000,000 samples of 16 x 16 digits, sampled and scored at "
                        r"once: about [\d,]+ GiB, more than half of .* GiB; give --n at most [\d,]+", lines[0]), r.stdout
    assert lines[1:] == ["preset, seed 0: training or loading from the cache", "training started"], r.stdout
