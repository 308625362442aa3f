"""ddimlab.data: CIFAR-10 download/cache/load against a loopback server, digits, scaling, batches."""
import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ddimlab import data as D

# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return D.make_fake_cifar_tarball(tmp_path_factory.mktemp("fake") / "cifar-10-python.tar.gz",
                                     n_per_batch=6, seed=1)


def _cache_listing(cache: Path):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# ---------------------------------------------------------------------------------- download


def test_fake_archive_has_cifar_layout(fake, tmp_path):
    again = D.make_fake_cifar_tarball(tmp_path / "again.tar.gz", n_per_batch=6, seed=1)
    assert again.md5 == fake.md5  # reproducible bytes
    with tarfile.open(fake.path, "r:gz") as tar:
        names = sorted(tar.getnames())
    assert names == sorted(f"cifar-10-batches-py/{n}" for n in
                           ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                            "data_batch_5", "test_batch", "batches.meta"])
    with tarfile.open(fake.path, "r:gz") as tar:
        batch = pickle.load(tar.extractfile("cifar-10-batches-py/data_batch_2"), encoding="bytes")
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (6, 3072)
    assert isinstance(batch[b"labels"], list) and len(batch[b"labels"]) == 6


def test_download_cache_and_load(fake, server, tmp_path):
    server.routes["/c.tgz"] = (fake.path.read_bytes(), "ok")
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)   # an explicit data_root must exist: a typo is never created and downloaded into
    x, y = D.load_cifar10(cache, train=True, url=server.url("/c.tgz"), md5=fake.md5, progress=False)
    assert x.dtype == torch.uint8 and x.shape == (30, 3, 32, 32)
    assert y.dtype == torch.int64 and y.shape == (30,)
    assert torch.equal(x, fake.train[0]) and torch.equal(y, fake.train[1])
    assert _cache_listing(cache) == ["cifar-10-python.tar.gz"]
    assert len(server.requests) == 1

    # channel-major: row k of b'data' is 1024 red, 1024 green, 1024 blue, each row-major 32×32
    with tarfile.open(fake.path, "r:gz") as tar:
        raw = pickle.load(tar.extractfile("cifar-10-batches-py/data_batch_1"), encoding="bytes")[b"data"]
    c, i, j = 2, 5, 17
    assert x[3, c, i, j] == raw[3, c * 1024 + i * 32 + j]
    assert x[3, 0, 0, 1] == raw[3, 1] and x[3, 1, 0, 0] == raw[3, 1024]

    # second call (test split) uses the cache: no new request
    xt, yt = D.load_cifar10(cache, train=False, url=server.url("/c.tgz"), md5=fake.md5, progress=False)
    assert torch.equal(xt, fake.test[0]) and torch.equal(yt, fake.test[1])
    assert len(server.requests) == 1


def test_env_var_sets_default_cache(fake, server, tmp_path, monkeypatch):
    server.routes["/c.tgz"] = (fake.path.read_bytes(), "ok")
    monkeypatch.setenv("DDIMLAB_CACHE", str(tmp_path / "envcache"))
    assert D.default_cache_dir() == tmp_path / "envcache"
    x, _ = D.load_cifar10(train=False, url=server.url("/c.tgz"), md5=fake.md5, progress=False)
    assert torch.equal(x, fake.test[0])
    assert (tmp_path / "envcache" / "cifar-10-python.tar.gz").is_file()


def test_md5_mismatch_leaves_cache_clean(fake, server, tmp_path):
    server.routes["/c.tgz"] = (fake.path.read_bytes(), "ok")
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)   # an explicit data_root must exist: a typo is never created and downloaded into
    with pytest.raises(D.DownloadError, match="md5 mismatch"):
        D.load_cifar10(cache, url=server.url("/c.tgz"), md5="0" * 32, progress=False)
    assert _cache_listing(cache) == []


def test_truncated_download_leaves_cache_clean(fake, server, tmp_path):
    server.routes["/c.tgz"] = (fake.path.read_bytes(), "truncate")
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)   # an explicit data_root must exist: a typo is never created and downloaded into
    for md5 in (None, fake.md5):  # the length check alone catches it, md5 or not
        with pytest.raises(D.DownloadError, match="truncated"):
            D.download(server.url("/c.tgz"), cache / "f.tgz", md5, progress=False, timeout=5)
        assert _cache_listing(cache) == []


def test_an_error_page_or_a_redirect_loop_is_one_line_and_leaves_the_cache_clean(fake, server, tmp_path):
    """Careless round 27: an HTML page served with status 200 (a quota or sign-in page) was cached as the file where
    md5=None, and with the md5 said only "md5 mismatch"; a redirect loop was urllib's three-line reason."""
    page = b"<!DOCTYPE html>\n<html><body>Too many downloads, try again later</body></html>"
    server.routes["/page.tgz"] = (page, "html")
    server.routes["/a.tgz"], server.routes["/b.tgz"] = ("/b.tgz", "redirect"), ("/a.tgz", "redirect")
    server.routes["/hop.tgz"], server.routes["/c.tgz"] = ("/c.tgz", "redirect"), (fake.path.read_bytes(), "ok")
    cache = tmp_path / "cache"
    cache.mkdir()
    for md5 in (None, fake.md5):
        with pytest.raises(D.DownloadError, match=rf"got a web page \(text/html, {len(page)} bytes\), not the file") as e:
            D.download(server.url("/page.tgz"), cache / "f.tgz", md5, progress=False, timeout=5)
        assert "\n" not in str(e.value) and _cache_listing(cache) == []
    with pytest.raises(D.DownloadError, match=r"/a.tgz failed: HTTP 302, redirects that never reach a file \(a loop, or "
                                              r"more than 10\)$"):
        D.download(server.url("/a.tgz"), cache / "f.tgz", None, progress=False, timeout=5)
    assert _cache_listing(cache) == []
    assert D.download(server.url("/hop.tgz"), cache / "f.tgz", fake.md5, progress=False).read_bytes() == \
        fake.path.read_bytes()                     # a redirect that reaches the file is followed, as before


def test_timeout_leaves_cache_clean(server, tmp_path):
    server.routes["/slow.tgz"] = (b"", "stall")
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)   # an explicit data_root must exist: a typo is never created and downloaded into
    with pytest.raises(D.DownloadError, match="timed out"):
        D.download(server.url("/slow.tgz"), cache / "f.tgz", None, progress=False, timeout=0.2)
    assert _cache_listing(cache) == []


def test_missing_file_404(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)   # an explicit data_root must exist: a typo is never created and downloaded into
    with pytest.raises(D.DownloadError, match="HTTP 404"):
        D.load_cifar10(cache, url=server.url("/nope.tgz"), progress=False)
    assert _cache_listing(cache) == []
    with pytest.raises(D.DownloadError, match="HTTP 404"):         # the folders made for it went with it
        D.download(server.url("/nope.tgz"), cache / "checkpoints" / "x.ckpt", None, progress=False)
    assert list(cache.iterdir()) == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="download=False"):
        D.load_cifar10(tmp_path / "empty", download=False)
    with pytest.raises(ValueError, match="does not exist"):      # a typo is not created
        D.load_cifar10(tmp_path / "typo", download=True)
    assert not (tmp_path / "typo").exists()


def test_corrupt_cached_file_is_redownloaded_or_reported(fake, server, tmp_path):
    server.routes["/c.tgz"] = (fake.path.read_bytes(), "ok")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cifar-10-python.tar.gz").write_bytes(b"half a file")
    with pytest.raises(ValueError, match="md5"):
        D.load_cifar10(cache, download=False, md5=fake.md5)
    assert len(server.requests) == 0
    x, _ = D.load_cifar10(cache, train=False, url=server.url("/c.tgz"), md5=fake.md5, progress=False)
    assert torch.equal(x, fake.test[0]) and len(server.requests) == 1
    assert D.md5sum(cache / "cifar-10-python.tar.gz") == fake.md5
    assert _cache_listing(cache) == ["cifar-10-python.tar.gz"]


# ---------------------------------------------------------------------------------- local paths


def test_load_from_tarball_path_and_extracted_folder(fake, tmp_path):
    x, y = D.load_cifar10(fake.path, train=True, download=False, md5=fake.md5)
    assert torch.equal(x, fake.train[0]) and torch.equal(y, fake.train[1])
    with pytest.raises(ValueError, match="md5"):
        D.load_cifar10(fake.path, download=False)  # the official md5 does not match a fake
    with tarfile.open(fake.path, "r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    for root in (tmp_path / "cifar-10-batches-py", tmp_path):
        x, y = D.load_cifar10(root, train=False, download=False)
        assert torch.equal(x, fake.test[0]) and torch.equal(y, fake.test[1])
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ValueError, match="data_batch_3"):
        D.load_cifar10(tmp_path / "cifar-10-batches-py", train=True, download=False)


def _tar_with(members, path):
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_corrupted_archives_give_clear_errors(fake, tmp_path):
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(2000))
    with pytest.raises(ValueError, match="not a readable CIFAR-10 archive") as e:
        D.load_cifar10(garbage, download=False, md5=None)
    assert "garbage.tar.gz" in str(e.value)

    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(fake.path.read_bytes()[:-200])
    with pytest.raises(ValueError, match="cut.tar.gz"):
        D.load_cifar10(cut, train=False, download=False, md5=None)

    bad_pickle = _tar_with({"test_batch": b"\x80\x02}q\x00(garbage"}, tmp_path / "bp.tar.gz")
    with pytest.raises(ValueError, match="test_batch.*not a readable CIFAR-10 pickle"):
        D.load_cifar10(bad_pickle, train=False, download=False, md5=None)

    missing = _tar_with({"test_batch": b""}, tmp_path / "missing.tar.gz")
    with pytest.raises(ValueError, match="missing cifar-10-batches-py/data_batch_1"):
        D.load_cifar10(missing, train=True, download=False, md5=None)

    wrong_shape = pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    ws = _tar_with({"test_batch": wrong_shape}, tmp_path / "ws.tar.gz")
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        D.load_cifar10(ws, train=False, download=False, md5=None)


def test_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = _tar_with({"test_batch": pickle.dumps({b"data": Evil(), b"labels": []})}, tmp_path / "e.tgz")
    with pytest.raises(ValueError, match="not allowed"):
        D.load_cifar10(evil, train=False, download=False, md5=None)


# ---------------------------------------------------------------------------------- digits


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_digits_shapes_range_labels(resolution):
    x, y = D.load_digits(resolution)
    assert x.dtype == torch.uint8 and x.shape == (1797, 1, resolution, resolution)
    assert y.dtype == torch.int64 and y.shape == (1797,)
    assert set(y.tolist()) == set(range(10)) and y.bincount().min() >= 170
    assert int(x.min()) == 0 and int(x.max()) >= 250  # the 0..16 range was stretched to 0..255
    # resizing keeps the picture: mean brightness agrees with the 8×8 original
    x8, _ = D.load_digits(8)
    assert (x.float().mean((1, 2, 3)) - x8.float().mean((1, 2, 3))).abs().max() < 8


def test_digits_are_scikit_learns_without_importing_it(monkeypatch):
    """The digits are read from the file scikit-learn ships (importing sklearn.datasets took a second per process),
    and equal its load_digits exactly; where the file is missing, load_digits is used."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    sk = load_digits()
    for where in ("file", "sklearn"):
        D._sklearn_digits.cache_clear()
        if where == "sklearn":
            monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
        images, labels = D._sklearn_digits()
        assert np.array_equal(images, sk.images) and np.array_equal(labels, sk.target)
    D._sklearn_digits.cache_clear()
    code = "import sys; from ddimlab import data; data.load_digits(8); print(sorted(m for m in sys.modules if 'sklearn' in m))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-500:]


def test_digits_bad_resolution():
    with pytest.raises(ValueError, match="resolution"):
        D.load_digits(0)


# ---------------------------------------------------------------------------------- scaling, flip, batches


def test_model_range_bounds_and_round_trip():
    k = torch.arange(256, dtype=torch.uint8)
    x = D.to_model_range(k)
    assert x.dtype == torch.float32
    assert x[0] == -1 and x[255] == 1 and bool((x.diff() > 0).all())
    assert torch.equal(D.from_model_range(x), k)
    assert torch.equal(D.from_model_range(torch.tensor([-3.0, 5.0])), torch.tensor([0, 255], dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        D.to_model_range(x)


def test_batch_indices_cover_every_example_once_per_epoch_and_depend_on_the_step_only():
    n, bs = 23, 5
    per_epoch = n // bs                                   # 4 full batches; 3 indices skipped per epoch
    epochs = [torch.cat([D.batch_indices(n, bs, e * per_epoch + i, seed=7) for i in range(per_epoch)])
              for e in range(3)]
    for idx in epochs:
        assert idx.shape == (bs * per_epoch,) and len(set(idx.tolist())) == bs * per_epoch
        assert set(idx.tolist()) <= set(range(n))
    assert not torch.equal(epochs[0], epochs[1])          # reshuffled per epoch
    D._epoch_order.cache_clear()                          # a "resumed" process: same step, same batch
    assert torch.equal(D.batch_indices(n, bs, per_epoch + 2, seed=7), epochs[1][2 * bs:3 * bs])
    assert not torch.equal(D.batch_indices(n, bs, 0, seed=8), epochs[0][:bs])
    with pytest.raises(ValueError, match="batch_size"):
        D.batch_indices(n, 0, 0)
    with pytest.raises(ValueError, match="step"):
        D.batch_indices(n, bs, -1)


def test_digits_in_rgb_are_the_grey_digits_repeated():
    grey, y = D.load_digits(32)
    rgb, y3 = D.load_digits(32, channels=3)
    assert rgb.shape == (1797, 3, 32, 32) and torch.equal(y, y3)
    assert all(torch.equal(rgb[:, c], grey[:, 0]) for c in range(3))
    with pytest.raises(ValueError, match="channels"):
        D.load_digits(8, channels=2)


def test_a_full_disk_during_a_download_is_the_disk_and_a_reset_is_in_words(fake, server, tmp_path, monkeypatch):
    """Careless round 48: a full disk while the body was written said "download of URL failed: OSError: [Errno 28] No
    space left on device", blaming the network; it is now the OS's error, on the file, and the cache stays clean. A
    connection reset said "ConnectionResetError: [Errno 104] ..."; now in the OS's words."""
    from ddimlab.files import atomic_write, error_words

    server.routes["/c.tgz"] = (fake.path.read_bytes(), "ok")
    cache = tmp_path / "cache"
    cache.mkdir()

    class Full:
        def __init__(self, f):
            self.f, self.name = f, f.name

        def write(self, block):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(D, "atomic_write", lambda dest, write: atomic_write(dest, lambda f: write(Full(f))))
    with pytest.raises(OSError) as info:
        D.download(server.url("/c.tgz"), cache / "f.tgz", fake.md5, progress=False, timeout=5)
    assert not isinstance(info.value, D.DownloadError) and info.value.errno == 28
    assert re.fullmatch(r"No space left on device \(writing the download of http://\S+/c\.tgz\): \S+/f\.tgz",
                        error_words(info.value)), error_words(info.value)
    assert _cache_listing(cache) == []
    monkeypatch.undo()

    def reset(*args, **kwargs):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(D.urllib.request, "urlopen", reset)
    with pytest.raises(D.DownloadError, match=r"^download of \S+ failed: Connection reset by peer$"):
        D.download(server.url("/c.tgz"), cache / "f.tgz", fake.md5, progress=False, timeout=5)
    assert _cache_listing(cache) == []
