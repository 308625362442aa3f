"""Fréchet distances between image sets: FID through Inception (torch-fidelity) and the same formula with
features any feature_fn gives (notebook 07 §5; README "Reproducing the DDIM paper").

    FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2})    (`quality.frechet_distance`)

`compute_fid(samples, reference, feature_fn)` takes image sets as PNG folders, uint8 or [−1, 1] tensors,
(μ, Σ) pairs or cached .npz statistics (`reference_stats`). `fid_inception` is the real FID (Inception-v3,
CIFAR-10 train statistics; `pip install ddimlab[fid]`); without Inception weights the same pipeline runs
with `random_features` (a smoke test only) or `digits_feature_fn` (the digits classifier). Such numbers
are not comparable with the paper's FID; only `fid_inception` on 50,000 samples is.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import data, devices, quality
from .checks import check_bool, check_int, real_array, seeded
from .files import atomic_write
from .quality import feature_stats, frechet_distance

FID_INSTALL_HINT = "pip install ddimlab[fid]"


def _first_pngs(directory, n: int | None) -> list[Path]:
    """The first n PNG files of `directory` in file-name order (all for n=None): what `load_images` reads and
    `fid_inception(n=)` scores."""
    n = None if n is None else check_int("n", n, note=" (the number of images) or None for all")
    if not Path(directory).is_dir():          # else "no .png files in" a folder that is not there, or a file
        raise (NotADirectoryError if Path(directory).exists() else FileNotFoundError)(
            f"{directory} is {'a file' if Path(directory).exists() else 'not there'}: give the folder of the .png images")
    files = sorted(Path(directory).glob("*.png"))
    if not files:
        raise ValueError(f"no .png files in {directory}")
    if n is not None and n > len(files):
        raise ValueError(f"{directory} holds {len(files)} .png files, fewer than the n = {n} asked for")
    return files[:n]


def load_images(directory, n: int | None = None) -> torch.Tensor:
    """The PNG files of a sample directory (the first n in file-name order; all for n=None) as uint8 N×C×H×W. A file
    that does not read, or whose array shape differs from most files', is a ValueError naming it (a damaged sample: in
    a `reproduce` cell, delete it and the next run samples it again)."""
    from PIL import Image  # Pillow comes with matplotlib

    files = _first_pngs(directory, n)
    damaged = "a damaged sample? In a `reproduce` cell, delete it and the next run samples it again"
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode not in ("L", "RGB", "1", "P"):        # 16-bit, float, with alpha: as 8 bits they would lie
                    raise ValueError(f"{f} is a {im.mode} image; FID reads 8-bit grey or RGB PNGs (as the samples "
                                     f"are written): convert it first")
                arrays.append(np.asarray(im.convert({"1": "L", "P": "RGB"}.get(im.mode, im.mode))))  # not palette indices
        except (OSError, Image.DecompressionBombError) as e:
            if isinstance(e, OSError) and e.errno is not None:   # the OS's (Permission denied), not a damaged sample
                raise
            raise ValueError(f"{f} is not a readable PNG ({e}): {damaged}") from None
    shapes = [a.shape for a in arrays]
    usual = max(set(shapes), key=shapes.count)
    odd = next((f for f, s in zip(files, shapes) if s != usual), None)
    if odd is not None:
        raise ValueError(f"{odd} holds an array of shape {shapes[files.index(odd)]}, most files one of {usual}: {damaged}")
    x = torch.from_numpy(np.stack(arrays))
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def fid_from_features(features1, features2) -> float:
    """Fréchet distance between two feature sets (N₁×D and N₂×D): `quality.frechet_distance` of their stats."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))


def _images_u8(x) -> torch.Tensor:
    if isinstance(x, (str, os.PathLike)):
        return load_images(x)
    x = torch.as_tensor(x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x))
    data.check_nchw(x)
    if x.dtype == torch.uint8:
        return x
    if x.dtype.is_floating_point:
        return data.from_model_range(data.check_model_range(x))  # float images are taken to be in [−1, 1]
    raise TypeError(f"images must be uint8 or float in [-1, 1], got {x.dtype}")


def _check_feature_fn(feature_fn) -> None:
    if not callable(feature_fn):
        raise TypeError(f"feature_fn must be a callable uint8 N×C×H×W -> N×D features (e.g. fid.random_features() or "
                        f"fid.digits_feature_fn; Inception FID is fid.fid_inception), got {type(feature_fn).__name__}")


def image_stats(images, feature_fn, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of feature_fn over images: a directory of PNGs, or uint8 / [−1, 1] float N×C×H×W.

    feature_fn takes uint8 N×C×H×W (as torch-fidelity's extractors do) and returns N×D features.
    """
    batch_size = check_int("batch_size", batch_size)
    _check_feature_fn(feature_fn)             # else Python's "'str' object is not callable" at the first batch
    x = _images_u8(images)
    if len(x) == 0:
        raise ValueError("no images to score: image_stats needs N >= 2 images (N x C x H x W)")
    feats = []
    with torch.no_grad():
        for k in range(0, len(x), batch_size):
            n = len(x[k:k + batch_size])
            try:
                f = torch.as_tensor(feature_fn(x[k:k + batch_size])).detach()
            except RuntimeError as e:                    # torch's "expected input[…] to have 3 channels", and the like
                raise ValueError(f"feature_fn fails on images of shape {tuple(x.shape[1:])} (C, H, W): "
                                 f"{str(e).splitlines()[0]}; score images with the channels it takes (for one-channel "
                                 f"images, e.g. fid.random_features(in_ch=1))") from None
            if f.ndim < 2 or f.shape[0] != n:            # a (D, N) answer would be reshaped into scrambled rows
                raise ValueError(f"feature_fn must return one row of features per image, N x D (N x D x 1 x 1 allowed), "
                                 f"got shape {tuple(f.shape)} for {n} images")
            feats.append(real_array("feature_fn's features", f).reshape(n, -1))     # not .double(): it reads True as 1 and
    return feature_stats(np.concatenate(feats))                                  # drops an imaginary part


def stats_of(ref, feature_fn, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of what `compute_fid` compares: a (μ, Σ) pair as it is, an .npz of `mu` and `sigma`, or images (a PNG
    folder, uint8 or [−1, 1] float N×C×H×W) through `image_stats`."""
    if _is_stats(ref) and not isinstance(ref, (str, os.PathLike)):
        mu, sigma = (np.asarray(v) for v in ref)
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):      # (images, labels), as data.load_* return
            raise ValueError(f"a pair is taken as precomputed (mu, sigma) of shapes (D,) and (D, D), got "
                             f"{mu.shape} and {sigma.shape}; for (images, labels) pass the images alone")
        return mu, sigma
    if _is_stats(ref):
        with np.load(ref) as z:
            if not {"mu", "sigma"} <= set(z.files):
                raise ValueError(f"{ref} holds {', '.join(z.files) or 'no arrays'}: an .npz here must hold feature "
                                 f"statistics `mu` and `sigma` (fid.reference_stats writes them); pass images as a "
                                 f"tensor (data.npz_array reads a sample file's) or a folder of PNGs")
            return z["mu"], z["sigma"]
    return image_stats(ref, feature_fn, batch_size)


def compute_fid(samples, reference, feature_fn, batch_size: int = 500) -> float:
    """FID-style distance between `samples` and `reference` in the feature space of `feature_fn`.

    samples: a directory of PNGs, or images (uint8, or float in [−1, 1]) N×C×H×W.
    reference: the same kinds, or precomputed (μ, Σ), or an .npz with arrays `mu` and `sigma`
    (`reference_stats` writes these).
    """
    _check_feature_fn(feature_fn)
    samples, reference = (v if _is_stats(v) else _images_u8(v) for v in (samples, reference))
    if isinstance(samples, torch.Tensor) and isinstance(reference, torch.Tensor) and samples.shape[1:] != reference.shape[1:]:
        kind, fix = (("sizes", "the size; score images of one size (data.resize)") if samples.shape[1] == reference.shape[1]
                     else ("channel counts", "the colour; score grey as RGB by x.expand(-1, 3, -1, -1)"))
        raise ValueError(f"samples are images of shape {tuple(samples.shape[1:])} (C, H, W) but reference images "
                         f"{tuple(reference.shape[1:])}: a distance between images of two {kind} measures "
                         f"{fix}")    # random features pool any size: FD 0.68
    return frechet_distance(*stats_of(samples, feature_fn, batch_size), *stats_of(reference, feature_fn, batch_size))


def _is_stats(ref) -> bool:
    """Whether `stats_of` takes `ref` as statistics (a (μ, Σ) pair, an .npz of them) rather than images."""
    return isinstance(ref, (tuple, list)) and len(ref) == 2 or isinstance(ref, (str, os.PathLike)) and str(ref).endswith(".npz")


def reference_stats(name: str, images_fn, feature_fn, batch_size: int = 500, directory=None) -> tuple:
    """(μ, Σ) of a reference set, cached as `<cache>/fid_stats/<name>.npz` (atomic write).

    `name` must identify both the images and the feature extractor (e.g. "cifar10-train_random64");
    `images_fn()` is only called when the cache misses. A damaged cache file (a zip that does not read) is recomputed
    and replaced; a file of that name that is not statistics (another npz, or not a zip at all) is the user's, and a
    FileExistsError.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"name must be a plain file name (no folders: the file goes into `directory`), got {name!r}")
    path = Path(directory or data.default_cache_dir() / "fid_stats") / f"{name}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                if {"mu", "sigma"} <= set(z.files):
                    return z["mu"], z["sigma"]
            torn = False
        except Exception:  # a zip that does not read was a torn copy: recomputed and replaced
            with path.open("rb") as f:
                torn = f.read(4) == b"PK\x03\x04"
        if not torn:
            raise FileExistsError(f"{path} is not reference statistics (no mu and sigma in it); move it away or pass "
                                  f"another name or directory")
    mu, sigma = image_stats(images_fn(), feature_fn, batch_size)
    atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma))
    return mu, sigma


def random_features(in_ch: int = 3, dim: int = 64, seed: int = 0):
    """A fixed, randomly initialised conv net as feature_fn — for smoke tests of the pipeline only.

    Random conv features do separate noise from images, but their distances mean nothing next to
    Inception FID. uint8 N×C×H×W in, N×dim out; in_ch is the images' C, 1 or 3 (as every image the library
    reads or writes), and dim a positive integer (dim = 0 failed in torch at the first batch).
    """
    if isinstance(in_ch, (bool, float)) or in_ch not in (1, 3):     # True == 1 and 1.0 == 1
        raise ValueError(f"in_ch must be 1 or 3 (the images' channels), got {in_ch!r}")
    dim = check_int("dim", dim, 1, note=" (the number of features)")
    g = seeded(seed)
    w1 = torch.randn(32, in_ch, 3, 3, generator=g) / math.sqrt(9 * in_ch)
    w2 = torch.randn(dim, 32, 3, 3, generator=g) / math.sqrt(9 * 32)

    def feature_fn(x_u8: torch.Tensor) -> torch.Tensor:
        x = x_u8.float() / 127.5 - 1
        h = torch.relu(torch.nn.functional.conv2d(x, w1, stride=2, padding=1))
        h = torch.relu(torch.nn.functional.conv2d(h, w2, stride=2, padding=1))
        return h.mean((2, 3))
    return feature_fn


def digits_feature_fn(x_u8: torch.Tensor) -> torch.Tensor:
    """The digits classifier's features (`quality.digits_features`) as a feature_fn for 1-channel images."""
    return quality.digits_features(x_u8)


def _torch_fidelity(instead: str = "pass a feature_fn (fid.compute_fid)"):
    try:
        import torch_fidelity  # optional: the [fid] extra
    except ImportError as e:
        raise ImportError(f"FID with Inception features needs torch-fidelity (and a torchvision that matches your "
                          f"torch build): {FID_INSTALL_HINT}. Without it, {instead}.") from e
    return torch_fidelity


def fid_inception(sample_dir, reference: str = "cifar10-train", cuda: bool | None = None, cache_root=None,
                  batch_size: int = 64, n: int | None = None) -> float:
    """FID with Inception-v3 features through torch-fidelity (`pip install ddimlab[fid]`).

    reference: a torch-fidelity registered input ("cifar10-train", whose statistics torch-fidelity
    computes once and caches under cache_root, default `<ddimlab cache>/torch-fidelity`), or a
    directory of PNGs (cached under its folder name). n: score the first n PNGs of sample_dir in file-name order,
    as `load_images` reads them (None: every file torch-fidelity finds there).
    """
    cuda = None if cuda is None else check_bool("cuda (or None: when available)", cuda)
    torch_fidelity = _torch_fidelity()
    cache_root = Path(cache_root or data.default_cache_dir() / "torch-fidelity")
    kwargs = {}
    if Path(str(reference)).is_dir():      # its statistics cached under its path and contents, not its name alone
        ref = Path(reference).resolve()
        listing = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in ref.iterdir() if p.is_file())
        tag = hashlib.sha256(json.dumps([str(ref), listing]).encode()).hexdigest()[:12]
        kwargs["input2_cache_name"] = f"ddimlab-{ref.name}-{tag}"
    with _first_png_files(sample_dir, n) as input1:
        metrics = torch_fidelity.calculate_metrics(
            input1=str(input1), input2=str(reference), fid=True, isc=False, kid=False, verbose=False,
            cuda=torch.cuda.is_available() if cuda is None else cuda, cache=True, cache_root=str(cache_root),
            batch_size=batch_size, **kwargs)
    return float(metrics["frechet_inception_distance"])


@contextlib.contextmanager
def _first_png_files(directory, n):
    """`directory` itself if n is None; else a temporary folder of links to its first n PNGs (a `reproduce` cell holding
    more samples from an earlier, larger run must not be scored as n, nor one a concurrent writer is adding to)."""
    if n is None:
        yield directory
        return
    files = _first_pngs(directory, n)
    with tempfile.TemporaryDirectory(prefix=".fid-first-n-") as tmp:
        for f in files:
            os.symlink(f.resolve(), Path(tmp) / f.name)
        yield tmp


FEATURE_NAMES = {"digits": "digits-classifier features", "random": "random conv-net features, a smoke test"}   # headings


def reference_for(features: str, in_ch: int, resolution: int, data_root=None):
    """(feature_fn, reference) for `reproduce table1 --features`: inception (feature_fn None: torch-fidelity
    against CIFAR-10 train), digits (the digits classifier against the real digits) or random (a smoke test)."""
    if features == "inception":
        if in_ch != 3:
            raise ValueError("Inception FID needs RGB (CIFAR-10) models; for a digits model use --features digits")
        if devices.rank_world()[0] == 0:        # before any sampling, not after the first cell's
            _torch_fidelity("`--features random` runs the same table with random features (a smoke test)")
        return None, None
    if features == "digits":
        if in_ch != 1:
            raise ValueError("--features digits scores one-channel digit models; for RGB use inception or random")
        if devices.rank_world()[0] == 0:        # the scoring rank: trained and cached now, so that a bad DDIMLAB_CACHE
            quality.load_classifier(resolution)  # stops the run before it samples
        return digits_feature_fn, data.load_digits(resolution)[0]
    if features == "random":
        f = random_features(in_ch)
        if in_ch == 1:
            return f, data.load_digits(resolution)[0]
        name = f"cifar10-train_random64-seed0_{in_ch}ch"
        return f, reference_stats(name, lambda: data.load_cifar10(data_root, train=True)[0], f)
    raise ValueError(f"unknown features {features!r}; choose inception, digits or random")
