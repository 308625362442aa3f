"""One trained digits model shared by the demo, notebooks 06, 07 and 08 and the figures (notebook 06 §4):
the `digits` preset, 1200 steps on two threads.

`digits_model()` trains the `digits` preset of `train.py` (scikit-learn's digits, CPU) once and
caches the checkpoint under `<cache>/models/digits_<hash>/ckpt.pt`, where the hash covers every
config field that changes the weights (model shape, data, schedule, optimisation, seed) and none
that do not (output folder, logging, progress bar, sample grids). A second call with the same
arguments loads the file instead of training. Training is deterministic on the CPU for a given thread
count: the same seed gives bitwise the same weights (tests/test_pretrained.py). The thread count is
part of the key, because it changes the rounding inside the convolutions (1 and 2 threads differ by
~5e-6 after 30 steps, and the difference grows with training), and so are the CPU's kernels
(`devices.cpu_kernels`: AVX-512 kernels train another model than AVX2 ones).

The run is written to a temporary folder and moved into place with one `os.replace`, so a killed
run never leaves a half-written model behind, and a cached file that does not load is retrained.
Processes asking for the same model at once (the notebooks under `pytest -n 2`) take turns on a lock
file: the first trains, the others then load its result.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import devices, train
from .checks import check_int
from .files import BusyError, check_can_write, current_umask, error_words, locked, make_folder

# Fields that do not change the trained weights: left out of the cache key.
_NOT_IN_KEY = ("out", "progress", "log_every", "ckpt_every", "sample_every", "n_samples", "sample_steps",
               "data_root", "compile")
CACHE_VERSION = 3   # 2: the trainer computes L_simple through elbo.l_simple; 3: threads in the key
THREADS = 2         # faster than one on an idle 2-core machine (step times: train.PRESETS); part of the cache key


def config_key(config: train.TrainConfig) -> str:
    """12 hex digits of sha256 over the weight-determining fields of `config` (and the device type; on the CPU,
    its kernels)."""
    d = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IN_KEY}
    if d["init"] == "torch":      # the field's default, absent from the key before it existed: the same weights keep their cache
        del d["init"]
    d["device"] = "cuda" if str(d["device"]).startswith("cuda") else str(d["device"])
    if d["device"] == "cpu":
        d["cpu_kernels"] = devices.cpu_kernels()
    d["cache_version"] = CACHE_VERSION
    blob = json.dumps(d, sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


CACHE_HINT = "point DDIMLAB_CACHE at a folder you can write"


def models_dir(cache_dir=None) -> Path:
    """`<cache_dir>/models`, with cache_dir defaulting to `data.default_cache_dir()` ($DDIMLAB_CACHE)."""
    from .data import cache_folder

    return cache_folder(cache_dir) / "models"


def digits_config(steps: int | None = None, seed: int = 0, device: str = "cpu", overrides=None) -> train.TrainConfig:
    """The `digits` preset with `steps` (default: the preset's), `seed`, `device` and any other overrides."""
    if steps is not None:
        steps = check_int("steps", steps, note=" or None (the preset's)")
    seed = check_int("seed", seed, 0, 2 ** 32 - 1)
    values = train.override_dict(overrides)
    taken = sorted({"seed", "device", "n_samples", "threads"} & set(values))     # they would be replaced silently
    if taken:
        raise ValueError(f"overrides may not set {', '.join(taken)}: seed and device are arguments of their own (and of "
                         f"digits_model, threads), and the cached model samples nothing (n_samples = 0)")
    values.update(seed=seed, device=device, n_samples=0)
    if steps is not None:
        if "steps" in values:           # else the argument won without a word
            raise ValueError(f"steps is given twice, as steps={steps} and in overrides ({values['steps']!r}); give one")
        values["steps"] = steps
    return train.make_config("digits", values)


def digits_model(steps: int | None = None, seed: int = 0, cache_dir=None, progress: bool = False,
                 device: str = "cpu", overrides=None, threads: int = THREADS):
    """(model, config): the `digits` preset trained for `steps` steps, from the cache when present
    (notebook 06 §4, notebook 07 §0).

    The EMA weights in eval mode, on the CPU (`train.load_trained`). `overrides` changes other
    preset fields (as `train.make_config` takes them); they are part of the cache key. Training on the
    CPU uses `threads` threads (restored afterwards; part of the cache key, as the weights depend on
    it). In 150-step runs on a 2-core Xeon two took 0.14 s/step against one's 0.21; beside another busy
    process two took 0.47 and one was not slowed: `make test` trains the model before its two workers start
    (`python -m ddimlab.pretrained`).
    """
    config, folder = _config_and_folder(steps, seed, cache_dir, device, overrides, threads)
    devices.resolve(config.device)         # a device this machine lacks: said before the cache's lock file is made
    make_folder(folder.parent, hint=CACHE_HINT if cache_dir is None else "pass another cache_dir")   # else locked's "--out"
    lock = folder.parent / f".{folder.name}.lock"
    try:
        with locked(lock, busy="held"):
            return _cached_or_trained(folder, config, progress)
    except BusyError:                      # another process trains (or loads) it: say so, then wait for it
        print(f"waiting for another process that holds the cached digits model {folder}", file=sys.stderr, flush=True)
    with locked(lock):
        return _cached_or_trained(folder, config, progress)


def _config_and_folder(steps=None, seed=0, cache_dir=None, device="cpu", overrides=None, threads=THREADS):
    threads = check_int("threads", threads, 1, note=" (the CPU threads it trains on; part of the cache key)")
    config = dataclasses.replace(digits_config(steps, seed, device, overrides), threads=threads)
    return config, models_dir(cache_dir) / f"digits_{config_key(config)}"


def check_cache(steps: int | None = None, seed: int = 0) -> None:
    """Before a command that will call `digits_model(steps, seed)` after other work (the demo): the cache holds that
    model, or can take it, else an OSError naming DDIMLAB_CACHE now rather than after the other work."""
    _, folder = _config_and_folder(steps, seed)
    if not (folder / "ckpt.pt").exists():
        check_can_write(folder.parent, hint=CACHE_HINT)


def _cached_or_trained(folder: Path, config: train.TrainConfig, progress: bool):
    """The model in `folder`, trained there first if absent or unusable; the caller holds the folder's lock."""
    if (folder / "ckpt.pt").exists():
        try:
            return _load(folder)
        except Exception as e:  # truncated, foreign or changed (e.g. resumed by hand): train again and replace it
            print(f"the cached digits model in {folder} cannot be used ({e}): training it again", file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
    for stale in folder.parent.glob(f".{glob.escape(folder.name)}-*"):   # a killed run's (-9): only one trains, under the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        train.train(dataclasses.replace(config, out=str(tmp), progress=progress, ckpt_every=config.steps,
                                        log_every=min(config.log_every, config.steps)))
        os.chmod(tmp, 0o777 & ~current_umask())      # mkdtemp's 0700 would keep other users of a shared cache out
        os.replace(tmp, folder)
    except KeyboardInterrupt:          # train's own message names the temporary folder, removed below
        raise KeyboardInterrupt("stopped training the cached digits model; nothing was kept, and the next "
                                "run trains it from the start") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(folder)


def _load(folder: Path):
    """The cached model in `folder`, whose settings must give the key in its name: a run resumed or retrained there by
    hand is not the model the name promises."""
    model, config = train.load_trained(folder / "ckpt.pt")
    if f"digits_{config_key(config)}" != folder.name:
        raise ValueError(f"its settings (steps = {config.steps}, seed = {config.seed}, ...) do not give the key in its name")
    return model, dataclasses.replace(config, out=str(folder))


if __name__ == "__main__":     # `python -m ddimlab.pretrained`: train the shared model now (make test, before its workers)
    import time

    start = time.perf_counter()
    # The first step of `make test`: a bad DDIMLAB_CACHE (an OSError, a blank one a ValueError) and Ctrl-C or SIGTERM
    # while it trains in one line, not a traceback, as `cli.one_line_errors` says them (a library module imports no cli).
    try:
        check_cache()
        _, config = digits_model(progress=True)
    except KeyboardInterrupt as e:
        print(f"python -m ddimlab.pretrained: interrupted: {e}", file=sys.stderr)
        raise SystemExit(130) from None
    except (OSError, ValueError) as e:
        raise SystemExit(f"python -m ddimlab.pretrained: error: {error_words(e)}") from None
    print(f"the shared digits model ({config.steps} steps, {config.threads} threads, {devices.cpu_kernels()} kernels) "
          f"ready in {time.perf_counter() - start:.0f} s: {config.out}")
