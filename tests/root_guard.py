"""A pytest plugin (its hooks imported by conftest.py): a run that leaves a new file or folder in the repository root
fails, naming them.

A test that writes to a relative path (an `out_dir="unused"`) writes into the folder pytest started in, and the next
`git status` shows it. Watched from the main process only (under pytest-xdist the workers share the root, and a
worker's own session would end while another still runs), before the first item and after the last, whatever the items
are (test functions, or nbval's notebook cells, whose kernels run in notebooks/)."""
from __future__ import annotations

import fnmatch
import os
import subprocess

import pytest

IGNORED = {".pytest_cache", "__pycache__"}    # pytest's own cache (unless -p no:cacheprovider); Python's bytecode
BUILT = {".git", ".venv", ".ruff_cache", "*.egg-info", ".ipynb_checkpoints", ".whl", ".gl", *IGNORED}   # by make install
_BEFORE, _MADE, _STALE = pytest.StashKey[set](), pytest.StashKey[list](), pytest.StashKey[list]()


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):          # an xdist worker has it
        root = session.config.rootpath
        session.config.stash[_BEFORE] = before = set(os.listdir(root))
        session.config.stash[_STALE] = _untracked(root, before)


def _untracked(root, entries) -> list[str]:
    """Entries of the root that git does not track and `make install` did not build: a test that writes one of them
    again is not seen (a stale, git-ignored .interpolation.pair.lock hid one from this guard here while CI caught it)."""
    r = subprocess.run(["git", "-C", str(root), "ls-files"], capture_output=True, text=True)
    if r.returncode != 0:                                   # not a git checkout: nothing to tell them apart by
        return []
    tracked = {line.split("/")[0] for line in r.stdout.splitlines()}
    return sorted(e for e in entries - tracked if not any(fnmatch.fnmatch(e, b) for b in BUILT))


def pytest_sessionfinish(session):
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    made = sorted(set(os.listdir(session.config.rootpath)) - before - IGNORED)
    if made:
        session.config.stash[_MADE] = made
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    if stale := config.stash.get(_STALE, None):
        terminalreporter.write_line(f"warning: the repository root {config.rootpath} held {', '.join(stale)} before the "
                                    f"run, which git does not track: a test that writes {'it' if len(stale) == 1 else 'them'}"
                                    f" again is not caught (delete {'it' if len(stale) == 1 else 'them'} to be sure)",
                                    yellow=True)
    if made := config.stash.get(_MADE, None):
        terminalreporter.write_line(f"FAILED: the run left {', '.join(made)} in the repository root {config.rootpath}; "
                                    f"a test writes into its tmp_path (delete {'it' if len(made) == 1 else 'them'})",
                                    red=True)
