"""docs/make_figures.py as a user runs it: bad arguments and an unusable --out are one line before the digits model is
trained (the figures themselves: the README's, made by hand and reviewed)."""
import sys

import pytest
import torch
from cli_support import load_script


@pytest.fixture(scope="module")
def figures():
    return load_script("docs/make_figures.py")


@pytest.mark.parametrize("argv,said", [
    (["--threads", "0"], "argument --threads: must be a positive integer, got 0"),    # torch's RuntimeError
    (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    (["--only"], "argument --only: expected at least one argument"),                   # made nothing, then "done in 0 s"
    (["--only", "lab", "lab"], "--only = lab is listed twice (as ['lab', 'lab']); give each value once"),
    (["--out", "{tmp}/f"], "--out {tmp}/f is a file, not a folder for the figures; choose another --out"),
    (["--out", "{tmp}/f/figs"], "cannot create files in {tmp}/f/figs ({tmp}/f is a file, not a folder); "
                                "choose another --out"),
])
def test_bad_arguments_are_one_line_before_any_figure(figures, argv, said, tmp_path, monkeypatch, capsys):
    """Careless round 27: the last two were tracebacks from the first savefig, after the digits model had trained."""
    (tmp_path / "f").write_text("")
    monkeypatch.setattr(figures.pretrained, "digits_model", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(figures, "fig_lab", lambda out: pytest.fail("a figure was made"))
    monkeypatch.setattr(sys, "argv", ["make_figures.py"])
    try:
        code = figures.main([a.format(tmp=tmp_path) for a in argv])
    except SystemExit as stop:
        code = stop.code
    assert code in (1, 2) and capsys.readouterr().err.strip().splitlines()[-1] == "make_figures.py: error: " + \
        said.format(tmp=tmp_path)


def test_interrupted_is_one_line_and_leaves_grad_and_threads_as_they_were(figures, tmp_path, monkeypatch, capsys):
    """Ctrl-C was a traceback; and main switched autograd off for the rest of the process (torch.set_grad_enabled)."""
    def ctrl_c(out):
        raise KeyboardInterrupt
    monkeypatch.setattr(figures, "fig_lab", ctrl_c)
    monkeypatch.setattr(sys, "argv", ["make_figures.py"])
    threads = torch.get_num_threads()
    assert figures.main(["--only", "lab", "--out", str(tmp_path), "--threads", str(threads + 1)]) == 130
    assert capsys.readouterr().err.strip() == "make_figures.py: interrupted"
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads
