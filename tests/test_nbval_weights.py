"""notebooks/conftest.py: a notebook's cells from its weights line on are compared only where this machine's weights
are those of the committed outputs; they run, and their checks fail, either way."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddimlab import nb

ROOT = Path(__file__).resolve().parents[1]


def _notebook(cells):
    """A notebook of (source, committed stdout) code cells, executed in order."""
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "cells": [{"cell_type": "code", "id": f"c{k}", "metadata": {}, "execution_count": k + 1, "source": src,
                       "outputs": [{"output_type": "stream", "name": "stdout", "text": out}]}
                      for k, (src, out) in enumerate(cells)]}


def _run_nbval(tmp_path, notebooks):
    """{name: ({cell number: passed / failed}, output)} of one `pytest --nbval` over the notebooks {name: cells} with the
    project's notebooks/conftest.py (one process for all: each started its own pytest and a kernel, 4 s of the 6 s of
    each test). A notebook's output is its own lines (its failures, warnings and results) and the lines that name no
    notebook (the session's header and totals); its other-weights state is its own (conftest.py keeps it on the
    notebook), as in `make test`, which runs many notebooks in one process."""
    shutil.copy(ROOT / "notebooks" / "conftest.py", tmp_path / "conftest.py")
    for name, cells in notebooks.items():
        (tmp_path / f"{name}.ipynb").write_text(json.dumps(_notebook(cells)))
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval", *(f"{name}.ipynb" for name in notebooks),
                             "-p", "no:cacheprovider", "-rA", "-o", "addopts="], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    runs = {name: ({}, []) for name in notebooks}
    owner = None
    for line in result.stdout.splitlines():
        named = [name for name in notebooks if f"{name}.ipynb::" in line]
        if named:
            owner = named[0]
        elif line.startswith("="):                      # a section's header: its lines name their notebook again
            owner = None
        for name, (outcome, lines) in runs.items():
            if owner in (None, name):
                lines.append(line)
        for word in ("PASSED", "FAILED"):
            if named and line.startswith(word) and "::Cell " in line:
                runs[owner][0][int(line.split("::Cell ")[1].split()[0])] = word.lower()
    return {name: (outcome, "\n".join(lines)) for name, (outcome, lines) in runs.items()}


@pytest.fixture(scope="module")
def nbval_runs(tmp_path_factory):
    """The three notebooks of the tests below, run by one nbval; {name: (outcome, output, weights lines)}."""
    here = nb.weights_line(torch.nn.Linear(2, 2))
    other = nb.weights_line(torch.nn.Linear(3, 3))
    model = "weights' sha256 0123456789ab"
    here_c, other_c = f"{model}, classifiers' 0123456789ab", f"{model}, classifiers' ba9876543210"
    notebooks = {
        "foreign": [('print("before")', "BEFORE\n"),                        # before the line: compared, differs
                    (f'print("{here}")', other + "\n"),                      # this machine's weights are not the committed ones
                    ("print(2)", "3\n"),                                      # after it: not compared
                    ('raise AssertionError("check failed: x")', "check: x\n")],   # a failing check still fails
        "committed": [(f'print("{here}")', here + "\n"), ("print(2)", "3\n"), ("print(4)", "4\n")],
        "classifier": [(f'print("{here_c}")', other_c + "\n"), ("print(2)", "3\n")]}
    runs = _run_nbval(tmp_path_factory.mktemp("nbval"), notebooks)
    lines = {"foreign": (here, other), "committed": (here, here), "classifier": (here_c, other_c)}
    return {name: (*runs[name], lines[name]) for name in notebooks}


@pytest.mark.slow
def test_cells_after_a_foreign_weights_line_run_but_are_not_compared(nbval_runs):
    outcome, out, (here, other) = nbval_runs["foreign"]
    assert here != other and nb.WEIGHTS_LINE.fullmatch(here)
    assert outcome == {0: "failed", 1: "passed", 2: "passed", 3: "failed"}, out
    assert "other weights" in out and here.split()[-1] in out and other.split()[-1] in out


@pytest.mark.slow
def test_cells_after_the_committed_weights_line_are_compared(nbval_runs):
    outcome, out, _ = nbval_runs["committed"]
    assert outcome == {0: "passed", 1: "failed", 2: "passed"}, out
    assert "other weights" not in out


def test_the_weights_line_names_the_classifiers_that_score_the_samples(monkeypatch):
    """A CPU may train a digits classifier to weights of its own while the model's are the committed ones: the line
    then differs, so the cells after it, which print its scores, are not compared (the model's hash alone missed it).
    Both classifiers count: at the model's resolution (8 × 8) and at 16 × 16 (`demo.as_scored`)."""
    from ddimlab import quality, unet

    model = unet.UNet(in_ch=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), resolution=8, num_groups=4)
    fixed = {8: quality.DigitsClassifier(4, 8), 16: quality.DigitsClassifier(4, 8)}

    def line_with(resolution, classifier):
        table = {**fixed, resolution: classifier}
        monkeypatch.setattr(quality, "load_classifier", lambda r: (table[r], {}))
        return nb.weights_line(model)

    base = line_with(8, fixed[8])
    assert nb.WEIGHTS_LINE.fullmatch(base) and line_with(16, fixed[16]) == base
    for resolution in (8, 16):
        changed = line_with(resolution, quality.DigitsClassifier(5, 8))
        assert changed != base and changed.split(",")[0] == base.split(",")[0] and nb.WEIGHTS_LINE.fullmatch(changed)
    assert "classifier" not in nb.weights_line(torch.nn.Linear(2, 2))       # no digits model, no classifier


@pytest.mark.slow
def test_cells_after_a_line_with_another_classifier_are_not_compared(nbval_runs):
    outcome, out, (here, other) = nbval_runs["classifier"]
    assert nb.WEIGHTS_LINE.fullmatch(here) and nb.WEIGHTS_LINE.fullmatch(other)
    assert outcome == {0: "passed", 1: "passed"}, out
