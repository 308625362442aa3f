"""Where a command runs: one device and process-rank helper for training, sampling and the paper's tables.

- `resolve(name)`: "auto" is cuda:LOCAL_RANK when this torch build sees a GPU, else the CPU; asking for
  CUDA on a build or machine without it is a `DeviceError` that says which.
- `rank_world()`: (rank, world size) from torch.distributed when it is initialised, else torchrun's
  RANK / WORLD_SIZE environment variables (1 process when unset).
- `setup_distributed(name)`: both, plus TF32 on CUDA and the process group (nccl on CUDA, gloo on the
  CPU) when WORLD_SIZE > 1, as `torchrun` launches it (notebook 06 §6).
- `cpu_threads(n)`: torch's CPU thread count set to n inside a `with` block and restored after it; `most_threads()`
  the most a command takes.
- `cpu_kernels()`: which of torch's CPU kernels run here (AVX2, AVX512, ...); they round differently.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist


class DeviceError(RuntimeError):
    """The requested device does not exist in this torch build or on this machine."""


def resolve(name: str | torch.device = "auto") -> torch.device:
    """A torch.device for "auto", "cpu", "cuda", "cuda:1", "mps", …; a bare "cuda" gets LOCAL_RANK."""
    if not isinstance(name, (str, torch.device)):
        raise DeviceError(f"device must be a name (auto, cpu, cuda, cuda:N or mps) or a torch.device, got {name!r}")
    local = _env_int("LOCAL_RANK", 0)
    if str(name) == "auto":
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"unknown device {str(name)!r}: use auto, cpu, cuda, cuda:N or mps ({e})") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"--device {name}: ddimlab runs on auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cpu" and dev.index not in (None, 0):    # torch accepts cpu:1 and runs on the one CPU device
        raise DeviceError(f"--device {name}: there is one CPU device, cpu (its cores are threads, not devices)")
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise DeviceError(f"--device {name}: this torch build ({torch.__version__}) has no CUDA support; "
                              f"install a CUDA build (README, Install) or use --device cpu")
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: torch has CUDA {torch.version.cuda} but sees no GPU on this "
                              f"machine (driver missing, or CUDA_VISIBLE_DEVICES empty); use --device cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local}")
        if dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: MPS is not available in this torch build or on this machine")
    return dev


def _env_int(name: str, default: int) -> int:
    """An integer that torchrun sets in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    try:
        return int(os.environ.get(name, str(default)))
    except ValueError:
        raise DeviceError(f"{name}={os.environ.get(name)!r} must be an integer; torchrun sets it, so outside torchrun "
                          f"unset it") from None


def rank_world() -> tuple[int, int]:
    """(rank, world size): torch.distributed's when initialised, else torchrun's RANK / WORLD_SIZE."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if not 0 <= rank < world:
        raise DeviceError(f"RANK={rank} with WORLD_SIZE={world}: a stray environment variable? Unset RANK and "
                          f"WORLD_SIZE outside torchrun")
    return rank, world


def setup_distributed(name: str | torch.device = "auto"):
    """(rank, world, device, initialized_here) for a process that `torchrun` may have started.

    On CUDA the process's GPU is selected and TF32 matmuls are enabled. With WORLD_SIZE > 1 the process
    group is started unless it already is; `initialized_here` says whether the caller should destroy it.
    """
    device = resolve(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rank, world = rank_world()
    init_here = False
    if world > 1 and not dist.is_initialized():
        if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
            raise DeviceError(f"WORLD_SIZE={world} asks for {world} processes, but MASTER_ADDR and MASTER_PORT are not "
                              f"set: start the run with torchrun, or unset RANK and WORLD_SIZE (a stray variable?)")
        # torch waits for every process, up to its 30-minute timeout, without a word and deaf to Ctrl-C
        if "TORCHELASTIC_RUN_ID" not in os.environ:                       # torchrun sets it
            print(f"waiting for the {world} processes of WORLD_SIZE={world} at {os.environ['MASTER_ADDR']}:"
                  f"{os.environ['MASTER_PORT']} (not started by torchrun? stop with kill -9 and unset RANK and WORLD_SIZE)",
                  file=sys.stderr, flush=True)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        init_here = True
    return rank, world, device, init_here


def barrier() -> None:
    """dist.barrier() when a process group is up; nothing otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def model_device(model, default: str | torch.device = "cpu") -> torch.device:
    """The device of a network's first parameter (`default` for a parameterless callable)."""
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device
    return torch.device(default)


def most_threads() -> int:
    """The most CPU threads a command or script takes: 4 per CPU, at least 64. 100000 threads made OpenMP run out of
    memory in a traceback (train), or crash the process with a segmentation fault (bench_unet.py)."""
    return max(64, 4 * (os.cpu_count() or 1))


@contextmanager
def cpu_threads(n: int):
    """torch.set_num_threads(n) for the block, the caller's count restored after it (also on an exception). Results
    computed on the CPU can depend on n (the convolutions round differently), so cached ones pin it."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def cpu_kernels() -> str:
    """The instruction set of torch's CPU kernels in this process ("AVX2", "AVX512", "DEFAULT", ...): an AVX-512 CPU
    picks AVX-512 kernels unless ATEN_CPU_CAPABILITY caps it, and they round differently, so a model trained on one
    differs from one trained on the other (README, "Determinism"). Cached CPU results are keyed by it."""
    return torch.backends.cpu.get_cpu_capability()
