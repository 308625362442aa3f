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


def _run_nbval(tmp_path, cells):
    """{cell number: passed / failed} of `pytest --nbval` with the project's notebooks/conftest.py, and its output."""
    shutil.copy(ROOT / "notebooks" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "t.ipynb").write_text(json.dumps(_notebook(cells)))
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "t.ipynb", "-p", "no:cacheprovider", "-rA",
                             "-o", "addopts="], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    outcome = {}
    for line in result.stdout.splitlines():
        for word in ("PASSED", "FAILED"):
            if line.startswith(word) and "::Cell " in line:
                outcome[int(line.split("::Cell ")[1].split()[0])] = word.lower()
    return outcome, result.stdout


@pytest.mark.slow
def test_cells_after_a_foreign_weights_line_run_but_are_not_compared(tmp_path):
    here = nb.weights_line(torch.nn.Linear(2, 2))
    other = nb.weights_line(torch.nn.Linear(3, 3))
    assert here != other and nb.WEIGHTS_LINE.fullmatch(here)
    cells = [('print("before")', "BEFORE\n"),                        # before the line: compared, differs
             (f'print("{here}")', other + "\n"),                      # this machine's weights are not the committed ones
             ("print(2)", "3\n"),                                      # after it: not compared
             ('raise AssertionError("check failed: x")', "check: x\n")]   # a failing check still fails
    outcome, out = _run_nbval(tmp_path, cells)
    assert outcome == {0: "failed", 1: "passed", 2: "passed", 3: "failed"}, out
    assert "other weights" in out and here.split()[-1] in out and other.split()[-1] in out


@pytest.mark.slow
def test_cells_after_the_committed_weights_line_are_compared(tmp_path):
    here = nb.weights_line(torch.nn.Linear(2, 2))
    outcome, out = _run_nbval(tmp_path, [(f'print("{here}")', here + "\n"), ("print(2)", "3\n"), ("print(4)", "4\n")])
    assert outcome == {0: "passed", 1: "failed", 2: "passed"}, out
    assert "other weights" not in out
