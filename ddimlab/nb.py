"""Notebook helpers: one seeding entry point, checks that print one stable line, and the line that names a trained
model's weights."""
from __future__ import annotations

import hashlib
import os
import random
import re
import sys

import numpy as np
import torch

from . import devices, quality
from .checkpoint import weights_sha256
from .checks import as_real, check_int, check_numbers, is_complex

# What `weights_line` prints; notebooks/conftest.py reads it back from a cell's outputs.
WEIGHTS_LINE = re.compile(r"weights' sha256 [0-9a-f]{12}(, classifiers' [0-9a-f]{12})?")


def seed_everything(seed: int = 0, threads: int = 2) -> torch.Generator:
    """Seed Python, NumPy and torch, fix the thread count, turn on torch's deterministic algorithms (with warn_only:
    for the whole process, as a notebook wants), and return a torch.Generator. `seed` in 0..2**32 − 1 (NumPy's range),
    checked before anything is seeded.

    Every notebook calls this once at the top so that nbval sees the same numbers on every run. Where torch runs other
    kernels than the AVX2 ones that computed the committed outputs (AVX-512 outside `make jupyter`, ARM, pre-AVX2), it
    says so on stderr, which nbval does not compare: the last printed digits may differ there, the checks must not.
    """
    seed, threads = check_int("seed", seed, 0, 2 ** 32 - 1), check_int("threads", threads)
    kernels = devices.cpu_kernels()
    if kernels != "AVX2":
        print(f"note: torch runs its {kernels} CPU kernels here; the committed outputs were computed on AVX2 ones, so "
              "printed numbers may differ in their last digits (`make jupyter` caps AVX-512 at AVX2)", file=sys.stderr)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def check(ok, message: str) -> None:
    """Assert `ok` (a bool, or a non-empty boolean tensor or array: all of it) and print `check: message`; the message
    must not contain run-dependent numbers. A list, a string or an empty array would pass whatever it held: refused."""
    if isinstance(ok, (torch.Tensor, np.ndarray)):
        if (ok.numel() if isinstance(ok, torch.Tensor) else ok.size) == 0:
            raise ValueError(f"check of an empty array would pass whatever was checked: {message}")
        if ok.dtype not in (torch.bool, np.bool_):       # a float array of errors is "true" wherever it is not 0
            raise TypeError(f"check takes a boolean tensor/array, got dtype {ok.dtype} (compare it: err < tol): {message}")
        ok = bool(ok.all())
    elif not isinstance(ok, (bool, np.bool_)):
        raise TypeError(f"check takes a bool or a boolean tensor/array, got {type(ok).__name__} (a list or a string is "
                        f"true whatever it holds; use all(...)): {message}")
    if not ok:
        raise AssertionError(f"check failed: {message}")
    print(f"check: {message}")


def check_close(actual, expected, message: str, rtol: float = 0.0, atol: float = 0.0) -> None:
    """`check` that |actual − expected| ≤ atol + rtol·|expected| elementwise; real values, finite tolerances ≥ 0."""
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if (v := as_real(tol)) is None or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0 (an infinite one passes anything), got {tol!r}: {message}")
    for name, v in (("actual", actual), ("expected", expected)):   # True passed as 1; "1" failed in torch's new()
        check_numbers(name, v)
    if is_complex(actual) or is_complex(expected):
        raise TypeError(f"check_close compares real values, got a complex one: {message}")   # float64 drops the imaginary
    a = torch.as_tensor(actual, dtype=torch.float64)
    e = torch.as_tensor(expected, dtype=torch.float64)
    try:
        shape = torch.broadcast_shapes(a.shape, e.shape)
    except RuntimeError:                     # torch's own "shape mismatch", not the message below
        shape = None
    if a.numel() == 0 or shape != a.shape:   # else it passes vacuously, or compares
        raise ValueError(f"check_close needs a non-empty `actual` of which `expected` has the shape or a broadcastable "
                         f"one, got {tuple(a.shape)} and {tuple(e.shape)}: {message}")        # every pair of a (n,1)×(n,)
    err = (a - e).abs()
    ok = bool((err <= atol + rtol * e.abs()).all())
    if not ok:
        raise AssertionError(f"check failed: {message} (max abs err {float(err.max()):.3g})")
    print(f"check: {message}")


def weights_line(model) -> str:
    """"weights' sha256 <12 hex digits>, classifiers' <12 hex digits>": `checkpoint.weights_sha256` of `model` and, for a
    model of grey images (a `config` with in_ch = 1), one sha256 over those of the digits classifiers that score its
    samples (`quality.load_classifier` at the model's resolution, and at 16 × 16, where `demo.as_scored` scores).

    Notebooks 06-08 print it where they load the demo's model. A CPU may train that model and the classifiers to weights
    of its own (README, "The notebooks"), and then prints its own numbers after it: where the line differs from the
    committed one, `make test` runs the cells from there on, and their checks, without comparing what they print
    (notebooks/conftest.py).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"weights_line hashes a network's weights (a torch.nn.Module), got {type(model).__name__}")
    line = f"weights' sha256 {weights_sha256(model)[:12]}"
    config = getattr(model, "config", None) or {}
    if config.get("in_ch") == 1:
        resolutions = sorted({config["resolution"], quality.CLASSIFIER_SETTINGS["resolution"]})
        hashes = " ".join(weights_sha256(quality.load_classifier(r)[0]) for r in resolutions)
        line += f", classifiers' {hashlib.sha256(hashes.encode()).hexdigest()[:12]}"
    return line


def fmt(x, digits: int = 3, below: float | None = None) -> str:
    """Round a float (or each entry of a sequence) for stable printing. below: print a value smaller than it in size as
    "below {below}", for a miss at rounding level (1e-15 here, 4e-15 on a run whose sums were ordered otherwise)."""
    digits = check_int("digits", digits)                 # -1: "Format specifier missing precision"
    check_numbers("x", x)                                # True printed as 1, "0.5" as 0.5
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray) and x.ndim == 0:
        x = float(x)
    if isinstance(x, (list, tuple, np.ndarray)):
        return "[" + ", ".join(fmt(float(v), digits, below) for v in np.asarray(x).ravel()) + "]"
    if below is not None and abs(float(x)) < below:
        return "below " + f"{below:g}".replace("e-0", "e-")              # "below 1e-5", not "1e-05"
    return f"{float(x):.{digits}g}"
