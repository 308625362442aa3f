"""Argument checks that many modules share: one rule and one message each."""
from __future__ import annotations

import functools
import math
import numbers
import operator
import os
import re
from pathlib import Path

import numpy as np
import torch

SYMMETRY_TOL = math.sqrt(torch.finfo(torch.float32).eps)   # relative to max |Σ|: see check_symmetric


def int_range(low: int, high: int | None = None) -> str:
    """The allowed integers in words: 'a positive integer', 'an integer >= 8', 'an integer in 1..1000'."""
    if high is None:
        return {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
    k = (high + 1).bit_length() - 1
    return f"an integer in {low}..{f'2**{k} - 1' if k >= 16 and high == 2 ** k - 1 else high}"   # seeds: 2**32 - 1


def check_int(name: str, v, low: int = 1, high: int | None = None, note: str = "") -> int:
    """`v` as a Python int if it is an integer in low..high, else ValueError "{name} must be {allowed}{note}, got v".

    Integers are ints, numpy integer scalars and 0-d integer tensors; bools (Python's, numpy's, torch's), floats
    (int(0.9) is 0), strings and tensors of one or more dimensions are refused.
    """
    try:
        i = None if isinstance(v, bool) or (isinstance(v, torch.Tensor) and (v.ndim or v.dtype == torch.bool)) \
            else operator.index(v)
    except TypeError:
        i = None
    if i is None or i < low or (high is not None and i > high):
        raise ValueError(f"{name} must be {int_range(low, high)}{note}, got {v!r}")
    return i


SEED_NOTE = " (torch's CPU generator keeps a seed's low 32 bits: 2**32 + s would repeat the draws of s)"


def seeded(seed) -> torch.Generator:
    """A CPU torch.Generator seeded with `seed`, an integer in 0..2**32 − 1 (`check_int`: 1.5 and True are refused,
    where torch would say "manual_seed expected a long"; past 2**32 torch would silently repeat another seed's draws)."""
    return torch.Generator().manual_seed(check_int("seed", seed, 0, 2 ** 32 - 1, SEED_NOTE))


def check_generator(generator, device=None):
    """`generator` if it is a torch.Generator or None (torch's own message for a seed lists every overload of randn),
    and, given the `device` its draws are made on, a generator of that device type (a CPU generator for CUDA draws
    was torch's "Expected a 'cuda' device type for generator", after the first network call)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__} (for a seed: "
                        f"torch.Generator().manual_seed(seed))")
    if generator is not None and device is not None and generator.device.type != torch.device(device).type:
        raise ValueError(f"generator is on {generator.device.type} and draws on {torch.device(device)} need one of their "
                         f"own: torch.Generator(device={torch.device(device).type!r}).manual_seed(seed)")
    return generator


def memory_limit() -> float:
    """Half of the memory this process may use, in bytes: the machine's physical memory (`physical_memory`), or a
    container's smaller control-group limit (`cgroup_memory`); math.inf where neither can be read. The most that one
    call's tables may take (`check_fits`), leaving the rest to the system and the caller's own tensors."""
    return min(physical_memory(), cgroup_memory()) / 2


def physical_memory() -> float:
    """This machine's physical memory in bytes (sysconf), math.inf where it cannot be read (no sysconf on Windows; -1
    where a system does not know). In a container it is still the host's: `cgroup_memory` is the container's limit."""
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        pages = page = -1
    return pages * page if pages > 0 and page > 0 else math.inf


def device_memory_limit(device) -> float:
    """Half of the memory a CUDA `device` has free for this process, in bytes: the driver's free memory
    (torch.cuda.mem_get_info) plus what torch's caching allocator holds unused there (reserved, not allocated), which
    torch hands out again. `check_fits`' rule for tensors kept on a GPU, whose memory is not the machine's."""
    device = torch.device(device)
    free, _ = torch.cuda.mem_get_info(device)
    return (free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)) / 2


@functools.cache
def cgroup_memory(root=Path("/sys/fs/cgroup"), groups=Path("/proc/self/cgroup")) -> float:
    """The memory limit in bytes of this process's control group or of any group above it (v2 memory.max, v1
    memory.limit_in_bytes, as /proc/self/cgroup names them; math.inf where there is none, or "max"): a container's limit
    below the host's memory, past which the kernel kills the process, where sysconf still says the host's. Read once.
    root: where Linux mounts the groups; groups: the file naming this process's."""
    try:
        lines = groups.read_text().splitlines()
    except OSError:
        return math.inf
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", None, "")
        if controllers == "":
            where, name = root, "memory.max"                        # v2, unified
        elif "memory" in controllers.split(","):
            where, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = where / path.lstrip("/")
        for group in (folder, *folder.parents):         # in a container its own group is often mounted as the root
            if group == where.parent:
                break
            try:
                value = (group / name).read_text().strip()
            except OSError:
                continue
            if value.isdigit():
                limits.append(int(value))
    return float(min(limits, default=math.inf))


def check_fits(need: float, what: str, fix, device=None) -> None:
    """ValueError "{what}: about N GiB, more than half of {whose} M GiB; {fix(limit)}" if `need` bytes exceed
    `memory_limit()`: said before the work, where the allocation would fail deep inside torch, or succeed and fill the
    memory until the system kills the process. fix: a function of the limit in bytes, giving the largest size that fits
    ("give d at most 1,234,567"). whose: "this machine's", or "this container's memory limit of" where a control group's
    limit below the machine's memory sets it (`cgroup_memory`: sysconf's size is then not what the process may use).
    device: None for tensors in the machine's memory, or a CUDA device, for which the limit is half of its free memory
    (`device_memory_limit`) and whose is "cuda:0's free"."""
    device = None if device is None else torch.device(device)
    if device is not None and device.type == "cuda":
        limit = device_memory_limit(device)
        whose = f"{device}'s free"
    else:
        limit = memory_limit()
        boxed = (box := cgroup_memory()) == 2 * limit and box < physical_memory()     # not where a test sets the limit
        whose = "this container's memory limit of" if boxed else "this machine's"
    if need > limit:
        raise ValueError(f"{what}: about {_gib(need)} GiB, more than half of {whose} {_gib(2 * limit)} GiB; "
                         f"{fix(limit)}")


def out_of_memory(e: BaseException) -> str | None:
    """For a failed allocation (Python's, torch's CPU allocator, CUDA's, MPS's "out of memory", `samplers.call_eps`' line
    for one of them) " (it asked for N bytes)", or "" where the error does not say the size; None for any other error.
    What the commands and `samplers.call_eps` say in one line."""
    text = str(e)
    if not (isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "DefaultCPUAllocator" in text or
            (isinstance(e, RuntimeError) and "out of memory" in text)):
        return None
    size = re.search(r"(?:allocate|asked for) (\d+ bytes|[0-9.]+ [KMGT]iB)", text)
    return f" (it asked for {size.group(1)})" if size else ""


def _gib(size: float) -> str:
    """Bytes in GiB: whole ones with thousands separators from 10 GiB up, else two significant digits (0.066)."""
    return f"{size / 2 ** 30:,.0f}" if size >= 10 * 2 ** 30 else f"{size / 2 ** 30:.2g}"


def check_bool(name: str, v) -> bool:
    """`v` as a bool if it is True or False (numpy's too): `if` would read "False", "no" or 0.5 as true."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def check_numbers(name: str, v):
    """`v` unless it is a bool or booleans (True would be read as 1; Python's, numpy's, torch's) or a string (which
    torch would take apart, or fail on deep inside): a TypeError naming `name`."""
    if isinstance(v, (str, bytes)):
        raise TypeError(f"{name} must be a number or a tensor of numbers, got a string ({v!r})")
    if isinstance(v, (bool, np.bool_)) or getattr(v, "dtype", None) in (torch.bool, np.bool_):
        raise TypeError(f"{name} must be a number or a tensor of numbers, got a bool ({v!r}): True would be read as 1")
    return v


def is_complex(v) -> bool:
    """Whether `v` (a tensor, an array, a list or a number) holds complex numbers, whose imaginary part a cast to float
    would drop without a word (numpy and torch warn at most)."""
    return v.is_complex() if isinstance(v, torch.Tensor) else bool(np.iscomplexobj(v))


def real_array(name: str, v) -> np.ndarray:
    """`v` (a tensor, array, list or number) as a float64 array if it holds real numbers, else a TypeError naming it: the
    cast would drop an imaginary part, read True as 1 and parse the string "0.5". A float tensor of a type numpy lacks
    (bfloat16: a feature network under autocast) is widened to float64 first, which is exact."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        v = v.double() if v.is_floating_point() else v      # numpy: "Got unsupported ScalarType BFloat16"
    a = np.asarray(v)
    if a.dtype.kind not in "iuf":
        why = " (True would be read as 1)" if a.dtype == bool else ""
        raise TypeError(f"{name} must hold real numbers (int or float), got "
                        f"{v.dtype if isinstance(v, torch.Tensor) else a.dtype}{why}")
    return a.astype(np.float64)


def check_values(name: str, v, need: str) -> None:
    """ValueError "{name} is on the meta device, which holds shapes but no values: {need}" where `v` is a tensor on the
    meta device (built under torch.device("meta")): torch says "Cannot copy out of meta tensor; no data!" or
    "Tensor.item() cannot be called on meta tensors" from deep inside."""
    if isinstance(v, torch.Tensor) and v.is_meta:
        raise ValueError(f"{name} is on the meta device, which holds shapes but no values: {need}")


def check_untracked(name: str, v):
    """`v` unless it is a tensor that requires grad while autograd records: read as plain numbers, it would pass no
    gradient back, and its .grad would stay None without a word while the other inputs' gradients are computed."""
    if isinstance(v, torch.Tensor) and v.requires_grad and torch.is_grad_enabled():
        fix = f"{name}.item() (or {name}.detach())" if v.numel() == 1 else f"{name}.detach()"
        raise ValueError(f"{name} requires grad, but it is read as a plain number, so no gradient would reach it; pass "
                         f"{fix}")
    return v


def as_real(v, inf_ok: bool = False) -> float | None:
    """`v` as a float if it is a finite real number (int, float, numpy scalar, 0-d real tensor with a value, i.e. not on
    the meta device; not a bool), or ±inf if `inf_ok` (in any of those types), else None: the caller says what range it
    allows."""
    if isinstance(v, torch.Tensor) and v.ndim == 0 and not v.is_complex() and v.dtype != torch.bool and not v.is_meta:
        v = v.item()                  # a meta tensor holds no value: None, not "Tensor.item() cannot be called on meta"
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v) or not (inf_ok or math.isfinite(v)):
        return None
    return float(v)


def a_list(values, name: str, example: str, empty_ok: bool = False) -> list:
    """A grid's axis as a list: a list, tuple or other iterable of values, not a bare number or a string (which would fail
    as "not iterable", or be iterated character by character), and not empty unless `empty_ok` (an empty grid failed as
    "list index out of range")."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a list, e.g. {example}; got {values!r}")
    if not (values := list(values)) and not empty_ok:
        raise ValueError(f"{name} must list at least one value, e.g. {example}; got none")
    return values


def check_distinct(values, name: str) -> None:
    """A value listed twice (in a grid of η or S, or image indices) would be computed twice and fill two rows (or
    images) with one cell. Linear time for Python numbers and strings (50 000 indices), else pairwise (tensors)."""
    values = list(values)
    plain = all(isinstance(v, (int, float, str)) for v in values)     # hashed as they compare (a tensor is not)
    seen = set() if plain else []
    for v in values:
        if v in seen:
            shown = values if len(values) <= 20 else f"{len(values)} values"
            raise ValueError(f"{name} = {v} is listed twice (as {shown}); give each value once")
        (seen.add if plain else seen.append)(v)


def check_per_sample(what: str, *scores, paired: bool = True, squared: bool = False) -> tuple[torch.Tensor, ...]:
    """Per-sample scores for a mean and its standard error: 1-D real tensors (bool and integer scores, such as
    `confident >= 0.9`, are returned as float64), finite, at least two each, and of one length when paired (score i
    of each comes from the same x_T); `squared`: squared errors, so none negative. Broadcasting (n, 1) against (n,)
    would compare every pair."""
    out = []
    for s in scores:
        if not isinstance(s, torch.Tensor) or s.ndim != 1 or len(s) < 2 or s.is_complex():
            raise ValueError(f"{what} takes 1-D tensors of at least two real per-sample scores, got "
                             f"{(s.dtype, tuple(s.shape)) if isinstance(s, torch.Tensor) else type(s).__name__}")
        s = s if s.is_floating_point() else s.double()
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"{what}: the per-sample scores must be finite (they hold NaN or inf)")
        if squared and bool((s < 0).any()):
            raise ValueError(f"{what} takes each point's squared error, which is >= 0; got {float(s.min()):.3g} "
                             "(pass (x - ref).pow(2).mean(...), not the signed error)")
        out.append(s)
    if paired and len({len(s) for s in out}) > 1:
        raise ValueError(f"{what} pairs score i of each set (the same x_T): they need one length, got "
                         f"{[len(s) for s in out]}")
    return tuple(out)


def check_symmetric(cov, what: str) -> None:
    """ValueError naming `what` unless `cov` (..., n, n) is finite and symmetric: |Σ − Σᵀ| ≤ 3.5e-4 · max |Σ|.

    A Cholesky factor or an eigendecomposition reads one triangle only, so an asymmetric Σ would be used as another
    matrix. The bound is float32's √ε, whatever the dtype: a covariance computed in float32 and stored in float64 is
    symmetric only to float32's rounding (a sum of N terms: about log₂N · ε), and an asymmetry anyone means is far
    larger. Positivity is left to the caller's factorisation."""
    cov = torch.as_tensor(cov)
    if cov.is_complex():
        raise TypeError(f"{what} must be real, got {cov.dtype}")
    cov = cov if cov.is_floating_point() else cov.double()
    if not bool(torch.isfinite(cov).all()):
        raise ValueError(f"{what} must be finite (it has NaN or inf)")
    if cov.numel() and float((cov - cov.mT).abs().max()) > SYMMETRY_TOL * float(cov.abs().max()):   # n = 0: torch's max()
        raise ValueError(f"{what} must be symmetric")


def value_range(x: torch.Tensor) -> tuple[float, float]:
    """(smallest, largest) value of a real floating-point x, (0, 0) if it is empty: both are finite exactly when every
    value is (torch's aminmax propagates NaN). One pass over x, where bool(torch.isfinite(x).all()) makes temporaries of
    x's size: 1.8 ms against 0.12 ms on one thread at 500 × 1024 float64, the 1024-D lab's batch (notebook 09 §3),
    which the samplers check at every step (`all_finite`)."""
    if x.numel() == 0:
        return 0.0, 0.0
    lo, hi = torch.aminmax(x.detach())                 # a check, not part of any graph
    return float(lo), float(hi)


def all_finite(x: torch.Tensor) -> bool:
    """bool(torch.isfinite(x).all()), by `value_range` for a real floating-point x (integers and bools are finite)."""
    if x.is_complex():
        return bool(torch.isfinite(x).all())
    return not x.is_floating_point() or all(map(math.isfinite, value_range(x)))
