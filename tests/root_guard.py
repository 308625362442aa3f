"""A pytest plugin (its hooks imported by conftest.py): a run that leaves a new file or folder in the repository root
fails, naming them.

A test that writes to a relative path (an `out_dir="unused"`) writes into the folder pytest started in, and the next
`git status` shows it. Watched from the main process only (under pytest-xdist the workers share the root, and a
worker's own session would end while another still runs), before the first item and after the last, whatever the items
are (test functions, or nbval's notebook cells, whose kernels run in notebooks/)."""
from __future__ import annotations

import os

import pytest

IGNORED = {".pytest_cache", "__pycache__"}    # pytest's own cache (unless -p no:cacheprovider); Python's bytecode
_BEFORE, _MADE = pytest.StashKey[set](), pytest.StashKey[list]()


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):          # an xdist worker has it
        session.config.stash[_BEFORE] = set(os.listdir(session.config.rootpath))


def pytest_sessionfinish(session):
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    made = sorted(set(os.listdir(session.config.rootpath)) - before - IGNORED)
    if made:
        session.config.stash[_MADE] = made
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    if made := config.stash.get(_MADE, None):
        terminalreporter.write_line(f"FAILED: the run left {', '.join(made)} in the repository root {config.rootpath}; "
                                    f"a test writes into its tmp_path (delete {'it' if len(made) == 1 else 'them'})",
                                    red=True)
