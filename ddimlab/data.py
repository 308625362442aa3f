"""Image data: CIFAR-10 from the official tarball, scikit-learn's digits offline, and the [−1, 1] scaling.

DDPM trains on x_0 scaled to [−1, 1] (notebook 06 §2): to_model_range maps uint8 k ↦ k/127.5 − 1 and
from_model_range inverts it. Datasets are held as uint8 N×C×H×W tensors (on the GPU when training there)
and converted one batch at a time (`batch_indices` picks a training step's images, `train.get_batch`
converts and flips them).

CIFAR-10 ships as `cifar-10-python.tar.gz`: `cifar-10-batches-py/data_batch_1..5` and `test_batch`,
each a pickled dict with b'data' (10000×3072 uint8, channel-major: 1024 red, 1024 green, 1024 blue,
each row-major 32×32) and b'labels' (10000 ints in 0..9). The pickles are read with a restricted
unpickler that only builds numpy arrays and plain containers, so a tampered file cannot run code.
"""
from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import http.client
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .checks import check_bool, check_int
from .files import atomic_write, error_words, md5sum, os_error, unresolved_link, why_not_made

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FILENAME = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


class DownloadError(RuntimeError):
    """A download failed (network error, HTTP error, truncated body or md5 mismatch)."""


# --------------------------------------------------------------------------------------------
# download and cache


def _cache_path() -> Path:
    """Where the cache is (`default_cache_dir` without making it, for messages)."""
    env = os.environ.get("DDIMLAB_CACHE")
    if env and not env.strip():     # unset or empty: the default, as for other variables
        raise ValueError(f"DDIMLAB_CACHE={env!r} is blank; point it at a folder, or unset it for ~/.cache/ddimlab")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddimlab"


def default_cache_dir() -> Path:
    """`$DDIMLAB_CACHE` if set, else `~/.cache/ddimlab`, made if absent. A ValueError if DDIMLAB_CACHE is blank
    (spaces: it would make a folder named so in the current one); an OSError naming the cache and DDIMLAB_CACHE if
    the folder cannot be made (it names a file, or a place where no folder can be made, such as /proc/x)."""
    path, env = _cache_path(), os.environ.get("DDIMLAB_CACHE")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"the cache {path}{' ($DDIMLAB_CACHE)' if env else ''} is a file, not a folder; "
                                 f"point DDIMLAB_CACHE at a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:            # else only "[Errno 2] No such file or directory: '/proc/x'", later
        raise os_error(type(e), e.errno, f"cannot make the cache folder {path}{' ($DDIMLAB_CACHE)' if env else ''}: "
                               f"{why_not_made(path, e)}; "
                               f"point DDIMLAB_CACHE at a folder you can write") from None
    return path


def cache_folder(folder, name: str = "cache_dir") -> Path:
    """`folder` with ~ expanded, or `default_cache_dir()` for None. A blank string is the current folder to pathlib, where
    a model or a download would land unseen (`--cache "$UNSET"`): a ValueError naming `name`."""
    if folder is None:
        return default_cache_dir()
    if isinstance(folder, str) and not folder.strip():
        raise ValueError(f"{name}={folder!r} is blank, which would be the current folder: pass a folder, or None for the "
                         f"cache ($DDIMLAB_CACHE, else ~/.cache/ddimlab)")
    return Path(folder).expanduser()


def download(url: str, dest, md5: str | None = None, *, progress: bool = True,
             timeout: float | None = 60.0, chunk_size: int = 1 << 16) -> Path:
    """Download `url` to `dest` atomically and return `dest`.

    If `dest` already exists with the right md5 (or md5 is None) nothing is fetched; if its md5
    is wrong it is downloaded again. The body goes to a temporary file in dest's folder, is
    checked (length against Content-Length, not an HTML page served as text/html, then md5) and only then renamed onto `dest` with
    os.replace; on any failure the temporary file is deleted and DownloadError is raised, so the
    cache never holds a partial or corrupt file. `timeout` (seconds) bounds each blocking network
    operation.
    """
    dest = Path(dest)
    if md5 is not None and (not isinstance(md5, str) or len(md5) != 32):
        raise ValueError(f"md5 must be a 32-character hex string or None, got {md5!r}")
    if dest.is_file() and (md5 is None or md5sum(dest) == md5.lower()):
        return dest  # with md5=None an existing file is trusted: it was written atomically
    h = hashlib.md5(usedforsecurity=False)

    def fetch_and_check(f):
        _fetch(url, f, h, progress=progress, timeout=timeout, chunk_size=chunk_size, dest=dest)
        if md5 is not None and h.hexdigest() != md5.lower():
            raise DownloadError(f"md5 mismatch for {url}: expected {md5.lower()}, got {h.hexdigest()}; "
                                f"the file was not saved to {dest}")

    atomic_write(dest, fetch_and_check)
    return dest


_download = download  # resolve_cifar10 and load_cifar10 have an argument named `download`


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)   # writing f, not reading the URL


def _fetch(url, f, h, *, progress, timeout, chunk_size, dest: Path) -> None:
    """Stream `url` into the open file `f` (a temporary file for `dest`) and the hash `h`; raise DownloadError on any
    failure or short body, and this disk's OSError (full, read-only) as an OSError naming `dest`."""
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length is not None and length.isdigit() else None
            content_type, received, head = response.headers.get_content_type(), 0, b""
            with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress, leave=False) as bar:
                while True:
                    block = response.read(chunk_size)
                    if not block:
                        break
                    head = head or block
                    f.write(block)
                    h.update(block)
                    received += len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400:    # urllib's reason is three lines ("...would lead to an infinite loop.\nThe last 30x...")
            raise DownloadError(f"download of {url} failed: HTTP {e.code}, redirects that never reach a file (a loop, "
                                f"or more than {urllib.request.HTTPRedirectHandler.max_redirections})") from e
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"download of {url} failed: {e.reason}") from e
    except http.client.IncompleteRead as e:
        raise DownloadError(f"download of {url} was truncated: got {len(e.partial)} more bytes "
                            f"before the connection closed, {e.expected} were still expected") from e
    except OSError as e:
        if e.errno in WRITE_ERRNOS:    # this machine's disk, not the download: the OS's words, with the file
            raise OSError(e.errno, f"{e.strerror} (writing the download of {url})", str(dest)) from e
        raise DownloadError(f"download of {url} failed: {error_words(e)}") from e    # timeouts, resets
    except http.client.HTTPException as e:   # a bad response; its class says more than its text ("RemoteDisconnected")
        raise DownloadError(f"download of {url} failed: {type(e).__name__}: {e}") from e
    if expected is not None and received != expected:
        raise DownloadError(f"download of {url} was truncated: received {received} of "
                            f"{expected} bytes (Content-Length)")
    if content_type == "text/html" and head.lstrip()[:1] == b"<":    # with md5=None it would be cached as the file
        raise DownloadError(f"download of {url} got a web page (text/html, {received} bytes), not the file: the server "
                            f"answered with an error or sign-in page; try again later, or fetch the file by hand")


# --------------------------------------------------------------------------------------------
# CIFAR-10


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10 batches: only numpy arrays, dtypes and builtin containers."""

    def find_class(self, module, name):
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _allowed_globals():
    import codecs

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    out = {("_codecs", "encode"): codecs.encode, ("numpy", "ndarray"): np.ndarray,
           ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = _reconstruct
        out[(mod, "scalar")] = scalar
    return out


def _parse_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one CIFAR-10 batch and return (data N×3072 uint8, labels N int64)."""
    try:
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # pickle raises many types on corrupt input
        raise ValueError(f"{where} is not a readable CIFAR-10 pickle: {type(e).__name__}: {e}") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{where} must be a dict with b'data' and b'labels', got {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where}: b'data' must be uint8 of shape (N, 3072), "
                         f"got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: b'labels' must be {data.shape[0]} integers, "
                         f"got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{where}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return data, labels.astype(np.int64)


def _read_tar_members(path: Path, names) -> dict[str, bytes]:
    """Read `cifar-10-batches-py/<name>` for each name, in one pass over the whole (gzip) archive."""
    wanted = {f"{CIFAR10_FOLDER}/{n}": n for n in names}
    found = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name in wanted and member.isfile():
                    found[wanted[name]] = tar.extractfile(member).read()
            # no early exit: reading to the end checks the gzip CRC, so truncation is caught
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ValueError(f"{path} is not a readable CIFAR-10 archive ({type(e).__name__}: {e}); "
                         f"delete it and download again") from e
    missing = [f"{CIFAR10_FOLDER}/{n}" for n in names if n not in found]
    if missing:
        raise ValueError(f"{path} is missing {', '.join(missing)}; expected the official "
                         f"{CIFAR10_FILENAME} layout")
    return found


def _read_folder(folder: Path, names) -> dict[str, bytes]:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{folder} is missing {', '.join(missing)}; expected the extracted "
                         f"{CIFAR10_FOLDER} folder with data_batch_1..5 and test_batch")
    return {n: (folder / n).read_bytes() for n in names}


def _is_cifar_folder(path: Path) -> bool:
    return (path / "test_batch").is_file() or (path / "data_batch_1").is_file()


def _check_md5(path: Path, md5: str | None) -> None:
    if md5 is not None:
        got = md5sum(path)
        if got != md5.lower():
            raise ValueError(f"{path} has md5 {got}, expected {md5.lower()}: the file is corrupt or "
                             f"not {CIFAR10_FILENAME}; download it again, or point data_root (reproduce --data-root, train --set "
                             f"data_root=…) at the right archive or its extracted folder (from Python, md5=None skips the "
                             f"check)")


def resolve_cifar10(root=None, download: bool = True, url: str = CIFAR10_URL,
                    md5: str | None = CIFAR10_MD5, *, progress: bool = True,
                    timeout: float | None = 60.0) -> Path:
    """Return the verified tarball or the extracted folder that `root` points at.

    `root` is a cache folder (default `default_cache_dir()`), the tarball itself, or the extracted
    `cifar-10-batches-py` folder (or a folder containing it). In a cache folder the tarball is
    `cifar-10-python.tar.gz`; it is downloaded if missing (or corrupt) and `download` is true. A `root`
    that does not exist is an error (a typo is never created and downloaded into).
    """
    explicit, download = root is not None, check_bool("download", download)
    root = cache_folder(root, "root")
    if root.is_file():
        _check_md5(root, md5)
        return root
    if root.is_dir():
        if _is_cifar_folder(root):
            return root
        if _is_cifar_folder(root / CIFAR10_FOLDER):
            return root / CIFAR10_FOLDER
    elif explicit:  # a mistyped path is not created and downloaded into
        raise ValueError(f"{root} does not exist; pass an existing {CIFAR10_FILENAME}, the extracted "
                         f"{CIFAR10_FOLDER} folder, or an existing folder to download into (create it first); "
                         f"without data_root CIFAR-10 is downloaded into the cache {_cache_path()}")
    tarball = root / CIFAR10_FILENAME
    if download:
        return _download(url, tarball, md5, progress=progress, timeout=timeout)
    if not tarball.is_file():
        raise ValueError(f"CIFAR-10 not found in {root} and download=False; pass download=True, "
                         f"the path of {CIFAR10_FILENAME}, or the extracted {CIFAR10_FOLDER} folder")
    _check_md5(tarball, md5)
    return tarball


def load_cifar10(root=None, train: bool = True, download: bool = True, url: str = CIFAR10_URL,
                 md5: str | None = CIFAR10_MD5, *, progress: bool = True,
                 timeout: float | None = 60.0) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 as (images uint8 N×3×32×32, labels int64 N): the 50,000 training or 10,000 test images.

    `root`: see `resolve_cifar10`. Tarballs are md5-checked before any pickle is read (pass
    md5=None to skip the check, e.g. for a test archive).
    """
    names = CIFAR10_TRAIN_BATCHES if check_bool("train", train) else CIFAR10_TEST_BATCHES
    source = resolve_cifar10(root, download, url, md5, progress=progress, timeout=timeout)
    if source.is_dir():
        raw = _read_folder(source, names)
        where = {n: str(source / n) for n in names}
    else:
        raw = _read_tar_members(source, names)
        where = {n: f"{source}:{CIFAR10_FOLDER}/{n}" for n in names}
    parts = [_parse_batch(raw[n], where[n]) for n in names]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # channel-major rows
    return images, torch.from_numpy(labels)


class FakeCifar(NamedTuple):
    path: Path
    md5: str
    train: tuple[torch.Tensor, torch.Tensor]  # images uint8 N×3×32×32, labels int64
    test: tuple[torch.Tensor, torch.Tensor]


def make_fake_cifar_tarball(path, n_per_batch: int = 8, seed: int = 0) -> FakeCifar:
    """Write a small archive in CIFAR-10's exact layout (random pixels) and return what it holds.

    Members: cifar-10-batches-py/data_batch_1..5, test_batch (dicts with b'batch_label',
    b'labels', b'data' (n×3072 uint8, channel-major), b'filenames') and batches.meta. For tests.
    """
    n_per_batch = check_int("n_per_batch", n_per_batch)
    path = Path(path)
    rng = np.random.default_rng(seed)
    members, images, labels = {}, {}, {}
    for i, name in enumerate(CIFAR10_TRAIN_BATCHES + CIFAR10_TEST_BATCHES):
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        label = f"training batch {i + 1} of 5" if name.startswith("data") else "testing batch 1 of 1"
        batch = {b"batch_label": label.encode(), b"labels": y, b"data": data,
                 b"filenames": [f"fake_{i}_{j}.png".encode() for j in range(n_per_batch)]}
        members[name] = pickle.dumps(batch, protocol=2)
        images[name], labels[name] = data, y
    meta = {b"num_cases_per_batch": n_per_batch, b"num_vis": 3072,
            b"label_names": [c.encode() for c in CIFAR10_CLASSES]}
    members["batches.meta"] = pickle.dumps(meta, protocol=2)

    def write_tar(f):  # gzip mtime 0 and fixed member metadata: the same seed gives the same bytes (and md5)
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, blob in members.items():
                info = tarfile.TarInfo(f"{CIFAR10_FOLDER}/{name}")
                info.size, info.mode, info.mtime = len(blob), 0o644, 0
                tar.addfile(info, io.BytesIO(blob))

    atomic_write(path, write_tar)

    def stack(names):
        x = np.concatenate([images[n] for n in names]).reshape(-1, 3, 32, 32)
        y = np.concatenate([labels[n] for n in names]).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)

    return FakeCifar(path, md5sum(path), stack(CIFAR10_TRAIN_BATCHES), stack(CIFAR10_TEST_BATCHES))


# --------------------------------------------------------------------------------------------
# offline digits


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Float images (N, C, H, W) resized to resolution×resolution, bilinear (antialiased when shrinking):
    how `load_digits` makes the 16×16 set from scikit-learn's 8×8 originals, and so how 8×8 samples are
    scored and shown at 16×16 (`demo.score`)."""
    resolution = check_int("resolution", resolution)
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"resize takes a float32 or float64 tensor (N, C, H, W), got "
                        f"{f'{x.dtype} of shape {tuple(x.shape)}' if isinstance(x, torch.Tensor) else type(x).__name__}; "
                        f"for uint8 images, to_model_range(x) first")
    if x.shape[-2:] == (resolution, resolution):
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


def load_digits(resolution: int = 16, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled handwritten digits as (uint8 1797×C×R×R, int64 labels 0..9) (notebook 06 §2).

    The 8×8 images hold values 0..16; they are scaled to 0..255 and resized to `resolution` with
    bilinear interpolation (antialiased when shrinking). channels=3 repeats the grey image as RGB: a
    stand-in for CIFAR-10 that ships with the package (e.g. 3×32×32 for the GPU check). Needs no download.
    """
    resolution = check_int("resolution", resolution, 2)
    if isinstance(channels, (bool, float)) or channels not in (1, 3):     # True == 1 and 1.0 == 1
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    images, labels = _sklearn_digits()
    x = resize(torch.from_numpy(images.astype(np.float32) * (255.0 / 16.0))[:, None], resolution)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, channels, -1, -1).contiguous()
    return x, torch.from_numpy(labels.astype(np.int64))


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as (images (N, 8, 8) in 0..16, labels), read from the file it ships
    (`sklearn/datasets/data/digits.csv.gz`: 64 pixels and the label per row) as its own `load_digits` reads it,
    without importing `sklearn.datasets`, which takes about a second in each process that trains or scores (a
    `train` command, each notebook); through `sklearn.datasets.load_digits` where that file is not found."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if path is not None and path.is_file():
        rows = np.loadtxt(path, delimiter=",")
        return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    return digits.images, digits.target


def read_images(paths, shape) -> torch.Tensor:
    """Images in [−1, 1] (N, C, H, W) for a model taking `shape` = (C, H, W), from one .npz (array `x0`,
    `samples` — both in [−1, 1] — or `images`, uint8 N×H×W×C) or from 8-bit PNG files. Grey images are
    repeated to RGB and RGB ones averaged to grey to match C; the spatial size must already match. Anything
    else (other dtypes or ranges, 16-bit PNGs, animations, transparent pixels, files that are not images) is a
    ValueError saying what was found."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

    if isinstance(shape, (int, str)) or len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"shape must be the model's (C, H, W) with C = 1 or 3, got {shape!r}")
    C, H, W = shape
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise ValueError("no files given: pass .npz or PNG files")
    require_files(paths, "pass .npz or PNG files (of a folder, its files)")
    if any(p.suffix.lower() == ".npz" for p in paths):
        if len(paths) > 1:
            raise ValueError("--input takes one .npz, or PNG files; got several files with an .npz among them")
        x = _npz_images(paths[0])
    else:
        imgs = []
        for p in paths:
            try:
                im = Image.open(p)                  # reads the header only
                if im.mode not in ("1", "L", "P", "RGB", "RGBA", "LA"):
                    raise ValueError(f"{p} has Pillow mode {im.mode}; convert it to 8-bit grey or RGB first")
                if im.size != (W, H):               # before decoding: a huge image would fill the memory
                    raise ValueError(f"{p} is {im.size[0]}×{im.size[1]} pixels; the model takes {W}×{H} images")
                if getattr(im, "n_frames", 1) > 1:
                    raise ValueError(f"{p} is an animation of {im.n_frames} frames; pass each image as its own file")
                if im.convert("RGBA").getextrema()[3][0] < 255:    # an alpha channel, or a tRNS colour in any mode
                    raise ValueError(f"{p} has transparent pixels, which the model has no meaning for; flatten it onto "
                                     f"a background first")
                grey = C == 1 and im.mode in ("1", "L", "LA")
                a = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.float32) / 127.5 - 1
            except Image.DecompressionBombError as e:
                raise ValueError(f"{p} is too large for Pillow to open ({e}); the model takes {W}×{H} images") from None
            except (UnidentifiedImageError, OSError) as e:
                if e.errno is not None:             # the OS's (Permission denied), not the file's contents
                    raise
                raise ValueError(f"{p} is not an image file Pillow can read (or it is truncated)") from None
            t = torch.as_tensor(a[..., None] if a.ndim == 2 else a).permute(2, 0, 1)
            imgs.append(t.mean(0, keepdim=True) if t.shape[0] != C else t)    # colour averaged, as for an .npz
        x = torch.stack(imgs)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    if x.shape[1] != C:
        x = x.mean(1, keepdim=True) if C == 1 else x.expand(-1, C, -1, -1) if x.shape[1] == 1 else x
    if tuple(x.shape[1:]) != (C, H, W):
        raise ValueError(f"the model takes images of shape {(C, H, W)}, got {tuple(x.shape[1:])}")
    return x


def require_files(paths, hint: str) -> None:
    """Every path names a regular file: a pipe, socket or device is a ValueError, a folder or a missing path a
    FileNotFoundError, each naming the paths and saying what to pass (`hint`)."""
    paths = [Path(p) for p in paths]
    if special := [str(p) for p in paths if p.exists() and not p.is_file() and not p.is_dir()]:
        raise ValueError(f"not a regular file (a pipe, socket or device): {', '.join(special)}; {hint}")
    if missing := [f"{p} is a folder" if p.is_dir() else unresolved_link(p) or f"{p} does not exist" for p in paths
                   if not p.is_file()]:
        raise FileNotFoundError(f"{'; '.join(missing)}; {hint}")


def npz_array(path, keys, hint: str):
    """(key, array) for the first of `keys` held by the .npz at `path`, read without pickles. A file that is not an
    .npz, is cut short or corrupted, or holds none of the keys is a ValueError naming it; `hint` says what to pass."""
    try:
        with np.load(path) as z:
            key, held = next((k for k in keys if k in z), None), list(z)
            array = None if key is None else z[key]
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path} is cut short or corrupted ({e}); {hint}") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise                                      # their own message names the file and what is wrong with it
    except (ValueError, OSError):                  # not an .npz; or an array of objects, which would need pickles
        raise ValueError(f"{path} is not an .npz of numeric arrays; {hint}") from None
    if key is None and any(name == "data.pkl" or name.endswith("/data.pkl") for name in held):
        raise ValueError(f"{path} is a torch checkpoint (torch.save's zip), not an .npz; {hint}")
    if key is None:
        names = ", ".join(held[:8]) + (f", … ({len(held)} in all)" if len(held) > 8 else "")
        raise ValueError(f"{path} has none of the arrays {', '.join(keys)} (it has {names or 'none'}); {hint}")
    return key, array


SAMPLES_BOUND = 50     # a poorly trained model's samples overshoot [-1, 1] (the tests' tiny one past 4); 0..255 do not pass


def _npz_images(path: Path) -> torch.Tensor:
    """x0 (float in [−1, 1]; |x| > 4, e.g. 0..255 data, is refused), samples (a sampler's float output, taken as it
    is unless |x| > SAMPLES_BOUND) or images (uint8, N×H×W×C) of an .npz, as float32."""
    key, a = npz_array(path, ("x0", "samples", "images"), "pass the .npz written by `sample` or `invert`, or your own "
                                                             "with one of those arrays")
    if a.dtype.kind not in "fiub" or a.size == 0:
        raise ValueError(f"{path}: {key} must be a non-empty numeric array, got {a.dtype} of shape {a.shape}")
    if key == "images":
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] not in (1, 3):
            raise ValueError(f"{path}: images must be uint8 (N, H, W, C) with C = 1 or 3, got {a.dtype} of shape {a.shape}; "
                             f"pass floats in [-1, 1] as x0 instead")
        return torch.as_tensor(a, dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"{path}: {key} must be images (N, C, H, W) with C = 1 or 3, got shape {a.shape}")
    if a.dtype.kind != "f" or a.dtype.itemsize > 8:
        raise ValueError(f"{path}: {key} must be float16, float32 or float64 in [-1, 1], got {a.dtype}; "
                         f"uint8 images go in an `images` array (N, H, W, C)")
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: {key} contains NaN or inf")
    if key == "x0" and np.abs(a).max() > 4:
        raise ValueError(f"{path}: {key} must be finite and in [-1, 1], got values in [{a.min():.3g}, {a.max():.3g}]; "
                         f"uint8 images go in an `images` array (N, H, W, C)")
    if key == "samples" and np.abs(a).max() > SAMPLES_BOUND:
        raise ValueError(f"{path}: samples reach {np.abs(a).max():.3g}, beyond ±{SAMPLES_BOUND}: 0..255 data (uint8 images "
                         f"go in an `images` array, N×H×W×C) or the samples of a model that has not learned its data, "
                         f"which inversion cannot use; invert images in about [-1, 1]")
    return torch.as_tensor(a, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# scaling, flips, batches


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 k ∈ {0..255} ↦ k/127.5 − 1 ∈ [−1, 1], float32 (DDPM's data scaling, notebook 06 §2)."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"to_model_range expects a uint8 tensor, got {got}")
    return x.to(torch.float32) / 127.5 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """Inverse of to_model_range: clamp to [−1, 1], map to 0..255, round, uint8. NaN or inf (on the CPU) is a
    ValueError: clamped, it would pass for a black or white pixel."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"from_model_range expects a floating-point tensor, got {got}")
    if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or inf")
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def check_nchw(x: torch.Tensor, what: str = "images") -> torch.Tensor:
    """x unless it is not N×C×H×W with C in (1, 3) (grey or RGB: the images the library reads and writes), else a
    ValueError naming `what`. Channels-last images (N×H×W×C, PIL's and numpy's layout) are named as such: read as
    N×C×H×W they are H channels of W×C images, which a feature network refuses only in its own words, and a distance
    between two sets blames their sizes."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{what} must have shape (N, C, H, W) with C in (1, 3) (grey or RGB), got {tuple(x.shape)}"
                         f"{channels_last_hint(x)}")
    return x


def channels_last_hint(x: torch.Tensor, channels=(1, 3)) -> str:
    """What to add to a wrong-shape message where x may be channels-last images (4-D, the last axis one of `channels`,
    those the caller takes): how to permute them to N×C×H×W; else ""."""
    return "; channels last (N, H, W, C)? pass x.permute(0, 3, 1, 2)" if x.ndim == 4 and x.shape[-1] in channels else ""


def looks_0_255(x: torch.Tensor) -> bool:
    """Float images whose values reach past 2 and lie above 0, or mostly so (their maximum more than 5 times their
    negative part): 0..255 images, even with a sampler's overshoot or added noise; [−1, 1] ones overshoot both ways.
    False for integer, single-value or non-finite input (each caller says what it does with those); x must be a tensor.
    """
    if not isinstance(x, torch.Tensor):               # else "'list' object has no attribute 'is_floating_point'"
        raise TypeError(f"x must be a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point() or x.numel() < 2 or not bool(torch.isfinite(x).all()):
        return False
    lo, top = float(x.min()), float(x.max())
    return top > 2 and (lo >= 0 or top > 5 * max(-lo, 1.0))


def check_model_range(x: torch.Tensor) -> torch.Tensor:
    """Float images a user passes in as [−1, 1] (to be scored): finite, and not 0..255 (a scaling mistake, which
    clamping would turn into white; `looks_0_255`), and nothing beyond ±SAMPLES_BOUND (centred 0..255 images, which
    clamping would binarise). Values in 0..1 only give a warning: images in [0, 1] would be scored
    as grey to white, but bright [−1, 1] images (a model that failed that way) can look the same. A sampler's overshoot
    past ±1 is fine. Returns x."""
    x = x.detach().cpu()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or inf")
    if looks_0_255(x):
        raise ValueError(f"float images must lie in [-1, 1], got values in {float(x.min()):.3g}..{float(x.max()):.3g}, "
                         f"which look like 0..255; pass uint8 images as uint8, or x / 127.5 - 1")
    if x.numel() and float(x.abs().max()) > SAMPLES_BOUND:      # e.g. x - 127.5 without the / 127.5
        raise ValueError(f"float images must lie in [-1, 1] (a sampler's overshoot up to ±{SAMPLES_BOUND} is allowed), got "
                         f"values in {float(x.min()):.3g}..{float(x.max()):.3g}: centred 0..255 images? pass x / 127.5")
    if x.numel() > 1 and float(x.min()) >= 0:
        warnings.warn(f"float images are scored as [-1, 1], and these have no value below 0 (0..{float(x.max()):.3g}): "
                      f"if they are images in [0, 1], pass x * 2 - 1", stacklevel=3)
    return x


def batch_indices(n: int, batch_size: int, step: int, seed: int = 0) -> torch.Tensor:
    """The data indices of training step `step` (notebook 06 §3; nanoGPT's get_batch, made resumable).

    Epoch e = step // (n // batch_size) visits a fresh permutation of 0..n−1 seeded by (seed, e), like
    torch's DistributedSampler, cut into n // batch_size full batches (the last n mod batch_size
    indices of each permutation are skipped). A function of (n, batch_size, step, seed) alone, so a
    resumed run draws exactly the batches the uninterrupted one would. torch's CPU generator keeps the low 32 bits of
    its seed, seed·1000003 + e here: distinct for every epoch below 1000003 while seed < 4294; beyond, two seeds can
    share an epoch's order (each at a different epoch).
    """
    n = check_int("n", n, 1, note=" (the data set's size)")
    batch_size = check_int("batch_size", batch_size, 1, n, " (the data set's size)")
    step, seed = check_int("step", step, 0), check_int("seed", seed, 0, 2 ** 32 - 1)
    epoch, i = divmod(step, n // batch_size)
    return _epoch_order(n, seed, epoch)[i * batch_size:(i + 1) * batch_size].clone()     # not a view of the cached order


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
