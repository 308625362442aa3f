"""What the CLI tests share: a tiny model's `--set` values, `python -m ddimlab` in a subprocess, the one-line error
check, a stdout whose reader has gone (the `trained` fixture, a tiny run trained once per module, is in conftest.py)."""
from __future__ import annotations

import functools
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

from ddimlab import cli, lab

TINY = ["resolution=8", "ch=16", "ch_mult=1,2", "attn_resolutions=", "num_groups=8", "dropout=0",
        "batch_size=32", "steps=30", "lr=2e-3", "warmup=5", "log_every=10", "n_samples=4", "sample_steps=5",
        "device=cpu"]


def load_script(path: str):
    """A script outside the package (benchmarks/NAME.py, docs/NAME.py, from the repository's root) as a module, so that
    its tests call its functions and `main(argv)` in-process."""
    file = Path(__file__).resolve().parents[1] / path
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sets(items):
    return [a for kv in items for a in ("--set", kv)]


def _run(*args, env=None, timeout=300):
    """`python -m ddimlab ARGS` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "ddimlab", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "DDIMLAB_DEBUG": "", **(env or {})})


def _run_scripts(code: str, timeout=300):
    """Python `code` in a subprocess from the repository's root, with `load_script` imported: the benchmarks' scripts
    in a process of their own (signals, thread limits), as a user runs them."""
    prelude = "import sys\nsys.path.insert(0, 'tests')\nfrom cli_support import load_script\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[1])


def small_lab_tables(monkeypatch):
    """`lab` and `demo --skip-train` draw their tables on S = 10 and 20 only (the image-like one on S = 10), not on
    `lab.S_LIST`'s 10..1000 with its ODE reference per S: for the tests of files, locks and messages, which read no
    number of the tables (test_lab.py checks the full default tables, S = 1000 included). An `lab` at --n 8 took 3 to
    4 s, nearly all on S = 50, 100 and 1000."""
    monkeypatch.setattr(lab, "table1", functools.partial(lab.table1, S_list=(10, 20)))     # the image table's own
    monkeypatch.setattr(lab, "IMAGE_S_LIST", (10,))                                        # S_list= overrides it


def _expect_interrupted(capsys, argv):
    """cli.main(argv) stops with exit status 130 and says on stderr that it was interrupted."""
    code, err = cli.main(argv), capsys.readouterr().err
    assert code == 130 and "interrupted" in err, (argv, err)


def _expect_one_line_error(capsys, argv, *needles):
    """cli.main(argv) exits 1 with one or two lines on stderr, no traceback, and each needle in them."""
    assert cli.main(argv) == 1, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    for needle in needles:
        assert needle in err, (needle, err)


class GoneReader:
    """stdout of `... | head` once head has exited: every write and flush is a broken pipe, and it has no descriptor."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self):
        return False

    def fileno(self):
        raise OSError("no descriptor here")


def signal_at_call(monkeypatch, module, name, k, sig):
    """`module.name` raises the signal `sig` at its k-th call from now (k = 0: never) and then goes on as itself: an
    interrupt delivered from inside the work, at a known point. Calling it again re-arms the original function."""
    real, calls = getattr(getattr(module, name), "__wrapped__", getattr(module, name)), []

    def interrupting(*a, **kw):
        calls.append(1)
        if len(calls) == k:
            signal.raise_signal(sig)
        return real(*a, **kw)
    interrupting.__wrapped__ = real
    monkeypatch.setattr(module, name, interrupting)
