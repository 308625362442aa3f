"""Shared test set-up: one torch thread, `randomize` for network weights, a loopback HTTP server
for the download tests (no network leaves the machine), and `root_guard`: a run that leaves files in the repository
root fails."""
import errno
import http.server
import os
import threading

import pytest
import torch
from cli_support import TINY, _sets
from root_guard import pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary  # noqa: F401 (hooks)

from ddimlab import cli

# The unit tests use small tensors: on a shared 2-core machine one thread runs them fastest and steadiest.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _threads_back_to_one(monkeypatch):
    """A test that changes the thread count (a benchmark, a trainer with `threads`) must not slow the rest. The
    processes a test starts (the CLI as a user runs it) get one thread too: with `make test`'s two (OMP_NUM_THREADS=2)
    beside the other busy worker, test_cli.py took 209 s of its worker's time in one run of the suite, 140 s on one."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits run (`cli_support.TINY`), trained through the CLI once per test module."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["train", "--preset", "digits", "--out", str(out), "--no-progress", *_sets(TINY)]) == 0
    return out


@pytest.fixture()
def rename_fails(monkeypatch):
    """`rename_fails(name, err=errno.ENOSPC)`: `atomic_write`'s rename of its temporary file onto a file called `name` fails
    with that OSError (ENOSPC a full disk, EACCES a PermissionError): root writes anywhere, so the failure is made here;
    `monkeypatch.undo()` ends it."""
    real_replace = os.replace

    def fail(name, err=errno.ENOSPC):
        def replace(src, dst, *a, **k):
            if os.path.basename(src).endswith(".tmp") and os.path.basename(dst) == name:
                raise OSError(err, os.strerror(err))           # OSError(EACCES, ...) is a PermissionError
            return real_replace(src, dst, *a, **k)
        monkeypatch.setattr(os, "replace", replace)
    return fail


@pytest.fixture()
def randomize():
    """`randomize(module, seed=0, scale=0.05)` sets every parameter at random (GroupNorm weights and biases
    too), so that a swapped or dropped tensor shows in the outputs."""
    def set_random(module, seed=0, scale=0.05):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        return module
    return set_random


class _Server:
    """Loopback HTTP server: routes[path] = (body, mode) with mode "ok", "truncate", "stall", "html" (body served as
    text/html) or "redirect" (to the path given as body)."""

    def __init__(self):
        self.routes, self.requests = {}, []
        self.release = threading.Event()  # "stall" routes wait on it
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path not in server.routes:
                    self.send_error(404, "Not Found")
                    return
                body, mode = server.routes[self.path]
                if mode == "stall":
                    server.release.wait(5)
                    return
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", body)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8" if mode == "html" else "application/gzip")
                if mode == "truncate":  # promise more than we send, then hang up
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_unet():
    """A 1-channel 8×8 UNet with fixed random weights, in eval mode: milliseconds per call."""
    from ddimlab.unet import UNet

    torch.manual_seed(0)
    return UNet(in_ch=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                resolution=8, num_groups=4).eval()
