"""Train an ε-prediction UNet with L_simple: the DDPM recipe in one file (notebook 06 §3–§4).

    L_simple = E_{x_0, t ~ U{0..T−1}, ε ~ N(0, I)} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²   (DDPM eq. 14,
    `elbo.l_simple`, derived in notebook 02 §6; the `digits` preset draws t at the cosine schedule's noise
    levels instead, `schedule.cosine_t_probs`, notebook 06 §3)

`TrainConfig` holds every knob and `PRESETS` the DDPM CIFAR-10 recipe (`cifar10`) and a small CPU model
on scikit-learn's digits (`digits`). `train(config)` runs Adam with warm-up, grad-norm clipping and an EMA
of the weights; on CUDA with bf16 autocast, TF32, channels_last, fused Adam and (on request)
`torch.compile`; under `torchrun` as DistributedDataParallel, every rank drawing the same global batch and
keeping its slice. Its loop calls small named helpers: `get_batch`, `lr_at`, `ema_update`, `save_run`.

The out folder holds `ckpt.pt` (weights, EMA, optimizer, step, config, RNG states; written atomically),
`config.json` (rewritten only together with a checkpoint), `log.jsonl` and `samples/step_XXXXXXX.png`.
A folder that already holds a run is never replaced silently: pass `resume=True` to continue it (bitwise
on the CPU; `resumed_config` gives the run's own settings) or `overwrite=True` to start again (the old run's
files are set aside, deleted at the new run's first checkpoint and put back if it fails before). A non-finite loss,
or weights about to be saved whose loss is not finite, stops the run with `NonFiniteLossError` and leaves the last
good checkpoint alone; a run that fails before its first checkpoint leaves no log (nor the folders it made), and
puts back a run it set aside. A checkpoint or log line that cannot be written (a full disk) stops the run with the
step of the checkpoint kept, log.jsonl cut back to it. Ctrl-C saves a checkpoint at the current step and stops; under
`overwrite` before the new run's first checkpoint it keeps nothing of the new run and puts the previous one back.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import functools
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import data, devices, schedule, unet
from .checkpoint import (
    EARLY_EMA,
    CheckpointError,
    carry_schedule,
    eps_fn,
    load_checkpoint,
    run_alpha_bar,
    save_checkpoint,
    unet_from_run,
)
from .checks import as_real, check_bool, check_int
from .elbo import l_simple
from .files import (
    atomic_write,
    check_can_write,
    check_nothing_set_aside,
    check_out_folder,
    folder_removed_on_error,
    interrupts_deferred,
    locked,
    os_error,
    put_back,
    set_aside,
    stop_signals,
    unresolved_link,
)
from .generate import recorded_settings
from .plotting import save_image_grid
from .samplers import NOISE_ALPHA_BAR, sample

DATASETS = ("digits", "digits_rgb", "cifar10")
LR_DECAYS = ("cosine", "none")
T_SAMPLINGS = ("cosine", "uniform")
INITS = ("torch", "ddpm")


@dataclass
class TrainConfig:
    """Every knob of a training run; defaults are the `digits` preset."""

    # data
    dataset: str = "digits"              # "digits" (offline), "digits_rgb" (the same, 3 channels), "cifar10"
    data_root: str | None = None         # CIFAR-10 tarball / extracted folder / cache dir
    resolution: int = 8
    hflip: bool = False                  # random horizontal flip (CIFAR-10: yes; digits: no)
    # model: ddimlab.unet.UNet
    ch: int = 32
    ch_mult: tuple = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple = (4,)
    dropout: float = 0.0
    num_groups: int = 8                  # GroupNorm groups (DDPM: 32)
    init: str = "torch"                  # weights: "torch" (PyTorch's defaults, as the DDIM authors' port) or "ddpm"
                                         # (the official code's, unet.ddpm_init_: each residual branch starts off)
    # diffusion
    schedule: str = "linear"
    T: int = 1000
    t_sampling: str = "cosine"           # training steps' t: "cosine" (the cosine schedule's noise levels on this
                                         # table, schedule.cosine_t_probs) or "uniform" (DDPM)
    # optimisation
    steps: int = 1200
    batch_size: int = 128                # global batch, split across DDP ranks
    lr: float = 4e-3
    warmup: int = 100                    # linear learning-rate warm-up steps
    lr_decay: str = "cosine"             # after warm-up: "cosine" (to 0 at the last step) or "none" (constant, DDPM)
    grad_clip: float = 1.0               # max global grad norm; 0 disables
    ema_decay: float = 0.999
    ema_warmup: bool = True              # decay_k = min(ema_decay, (1 + k)/(10 + k))
    seed: int = 0
    # output
    out: str = "runs/digits"
    log_every: int = 50
    ckpt_every: int = 500
    sample_every: int = 0                # 0: only at the end
    n_samples: int = 64                  # 0: no sample grids
    sample_steps: int = 50
    progress: bool = True
    # hardware
    device: str = "auto"                 # "auto", "cpu", "cuda", "cuda:1", …
    bf16: bool = True                    # autocast on CUDA only
    compile: bool = False
    threads: int = 0                     # torch.set_num_threads on CPU; 0 leaves the default


PRESETS: dict[str, dict] = {
    # DDPM (Ho et al. 2020) CIFAR-10: 35.7M parameters, FID 3.17 after 800k steps.
    "cifar10": dict(
        dataset="cifar10", resolution=32, hflip=True,
        ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1, num_groups=32,
        init="ddpm", t_sampling="uniform", steps=800_000, batch_size=128, lr=2e-4, warmup=5000, lr_decay="none", grad_clip=1.0,
        ema_decay=0.9999, ema_warmup=False,
        out="runs/cifar10", log_every=100, ckpt_every=10_000, sample_every=10_000, n_samples=64,
    ),
    # The digits at their native 8×8 (scikit-learn's originals; the 16×16 set is a bilinear resize of them,
    # so nothing is lost), on a 2-core CPU: the TrainConfig defaults, a 0.7M-parameter UNet (ch 32, ch_mult
    # (1, 2), attention at 4×4), batch 128, Adam 4e-3 with cosine decay, training steps drawn at the cosine
    # schedule's noise levels on the linear table (t_sampling), 1200 steps (0.16–0.27 s/step here, 3 to 5.5 min, on
    # two threads; about 0.36 s on one). The step count is the demo's time budget; what it costs against 2000
    # steps, the other recipes tried and why the cosine noise schedule itself is not used: README, "The digits model".
    "digits": dict(),
}

MODEL_KEYS = unet.CONFIG_KEYS   # must match to resume a run
SHAPE_KEYS = ("dataset", "schedule", "T", "init")   # and so must these (init: how the saved weights began)


class RunExistsError(FileExistsError):
    """The output folder already holds a run and neither resume nor overwrite was asked for."""


class LossWarning(UserWarning):
    """A run ended with a loss worse than predicting ε = 0 (finite, so not a `NonFiniteLossError`)."""


class TornLogWarning(UserWarning):
    """A torn last line of log.jsonl (an interrupted write) was dropped."""


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


# --------------------------------------------------------------------------- configuration

def _parse_value(key: str, text: str, default):
    low = text.strip().lower()
    if isinstance(default, bool):                      # a flag is on or off, never None
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} must be a boolean (true/false), got {text!r}")
    if low in ("none", "null"):
        return None
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            items = text.strip().strip("()[]").split(",")
            if items[-1].strip() == "":                # "" is the empty tuple, "2," the tuple (2,)
                items.pop()
            return tuple(int(v) for v in items)        # an empty item within ("1,,2") is an error
    except ValueError:
        kind = "comma-separated integers" if isinstance(default, tuple) else type(default).__name__
        raise ValueError(f"{key} must be {kind}, got {text!r}") from None
    return text


def make_config(preset: str = "digits", overrides=None) -> TrainConfig:
    """A `TrainConfig` from a preset name plus overrides (notebook 06 §3).

    `overrides` is a dict {key: value} or a list of "key=value" strings (the CLI's `--set`); string
    values are parsed by the field's type ("1,2,2" for tuples, "true"/"false" for booleans).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return validate_config(TrainConfig(**_apply(dict(PRESETS[preset]), overrides)))


def override_dict(overrides) -> dict:
    """Overrides as a dict: a dict {key: value} as it is, a list of "key=value" strings as {key: "value"} (parsed by
    each field's type in `make_config`), None as {}; anything else a TypeError."""
    if overrides is not None and not isinstance(overrides, (list, tuple)) and not hasattr(overrides, "items"):
        raise TypeError(f"overrides must be a dict {{key: value}} or a list of 'key=value' strings, got "
                        f"{type(overrides).__name__} {overrides!r}" + (f" (as a list: [{overrides!r}])"
                                                                       if isinstance(overrides, str) else ""))
    if not isinstance(overrides, (list, tuple)):
        return dict(overrides or {})
    pairs = {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        pairs[k.strip()] = v
    return pairs


def _apply(values: dict, overrides) -> dict:
    """values updated with overrides (`override_dict`: string values parsed by each field's type)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for key, value in override_dict(overrides).items():
        if key not in defaults:
            raise ValueError(f"unknown config key {key!r}; allowed keys: {', '.join(defaults)}")
        base = values.get(key, defaults[key])
        if isinstance(value, str) and not isinstance(base, str):
            value = _parse_value(key, value, base if base is not None else "")
        values[key] = tuple(value) if isinstance(value, list) else value
    return values


MAX_GRID = 4096        # n_samples at most
RUN_FILES = ("ckpt.pt", "log.jsonl", "config.json")   # what makes a folder a run's (with its grids)
GRID_NAME = re.compile(r"step_\d{7}\.png")   # the sample grids a run writes in samples/ (--overwrite moves only these)
# Keys that say where and how a run executes, not what it trains: a resume may change them without a notice.
RUN_KEYS = ("out", "device", "bf16", "compile", "progress", "threads")


def resumed_config(out, overrides=None) -> tuple[TrainConfig, list[str]]:
    """The config of the run in `out` (from its checkpoint, which config.json only copies) with `overrides`
    applied, and one line per recipe key the overrides change: what `train --resume` runs, so that a resume
    never falls back to a preset's values silently. Changing a model-shape key is a ValueError."""
    _refuse_folders_in_place(Path(out))
    state = _run_state(Path(out) / "ckpt.pt", mmap=True)                 # `train` reads it again (`_resume`)
    _warn_if_edited(Path(out) / "config.json", state["config"])
    before = config_from_dict(state["config"], strict=True)
    after = TrainConfig(**_apply(dataclasses.asdict(before), overrides))
    _check_same_model(before, after, out)   # first: --set resolution=16 was told to fix attn_resolutions, which can't change
    after = validate_config(after)
    notes = [f"{k}: {getattr(before, k)!r} -> {getattr(after, k)!r}" for k in (f.name for f in dataclasses.fields(TrainConfig))
             if k not in RUN_KEYS and getattr(before, k) != getattr(after, k)]
    return after, notes


class EditedConfigWarning(UserWarning):
    """A run's config.json differs from its checkpoint's settings (edited by hand): a resume runs the checkpoint's."""


def _warn_if_edited(path: Path, saved: dict) -> None:
    """Warn when config.json, the checkpoint's settings as text, says otherwise: an edit there changes nothing."""
    try:
        text = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        text = None
    saved = json.loads(json.dumps(saved))                     # tuples as lists, as config.json holds them
    edited = ["all (it is not the JSON object it was)"] if not isinstance(text, dict) else \
        [f"{k} ({text.get(k, 'absent')!r} there, {saved.get(k, 'absent')!r} in ckpt.pt)"
         for k in sorted(set(text) | set(saved)) if text.get(k) != saved.get(k)]
    if edited and path.exists() and not _config_is_stale(path.parent, saved):       # not edited: the resume rewrites it
        warnings.warn(f"{path} differs from the checkpoint's settings in {'; '.join(edited)}: a resume runs the "
                      f"checkpoint's (config.json is its copy, rewritten with the next checkpoint); change a setting with "
                      f"--set key=value", EditedConfigWarning)


def _config_is_stale(out: Path, saved: dict) -> bool:
    """config.json differs from ckpt.pt's settings `saved` and is older than ckpt.pt, which `save_run` writes first: its
    rewrite after that checkpoint failed (a full disk, `ConfigNotWrittenError`), and it holds an earlier checkpoint's
    settings. A hand edit is newer than ckpt.pt."""
    try:
        older = (out / "config.json").stat().st_mtime_ns < (out / "ckpt.pt").stat().st_mtime_ns
        return older and json.loads((out / "config.json").read_text(encoding="utf-8")) != json.loads(json.dumps(saved))
    except (OSError, ValueError):
        return False


def _write_config(out: Path, config: dict) -> None:
    atomic_write(out / "config.json", lambda f: f.write(json.dumps(config, indent=1)), text=True)


def validate_config(c: TrainConfig) -> TrainConfig:
    """Check a config's values; raise ValueError naming the bad value and what is allowed."""
    if c.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {c.dataset!r}")
    # plain Python values, checked here: a Path, numpy scalar or "False" would fail only at the first checkpoint
    # (weights-only loading takes plain types), or be read as true
    paths = {k: getattr(c, k) for k in ("out", "data_root") if k == "out" or getattr(c, k) is not None}   # data_root=None: cache
    for k, v in paths.items():
        if not isinstance(v, (str, os.PathLike)):
            raise ValueError(f"{k} must be a folder's path (a str or pathlib.Path), got {v!r}")
    reals = {k: as_real(getattr(c, k)) for k in ("lr", "ema_decay", "grad_clip", "dropout")}
    for k, v in reals.items():
        if v is None:
            raise ValueError(f"{k} must be a finite number, got {getattr(c, k)!r}")
    shapes = {}
    for k in ("ch_mult", "attn_resolutions"):
        v = getattr(c, k)
        if not isinstance(v, (tuple, list)):
            raise ValueError(f"{k} must be a list of integers, e.g. {getattr(TrainConfig, k)}, got {v!r}")
        shapes[k] = tuple(check_int(f"an entry of {k}", r) for r in v)
    c = dataclasses.replace(c, **{k: os.fspath(v) for k, v in paths.items()}, **reals, **shapes,
                            **{k: check_bool(k, getattr(c, k)) for k in ("hflip", "ema_warmup", "progress", "bf16", "compile")})
    if not str(c.out).strip():
        raise ValueError("out (--out) is empty; give the run's folder, e.g. --out runs/digits")
    if str(c.out).strip() == "-":        # `--out -` is the CLI's to refuse; this is `--set out=-` and Python callers
        raise ValueError("out '-' names standard output to many tools; a run is a folder: give its name, e.g. --out runs/digits")
    lows = dict.fromkeys(("steps", "batch_size", "resolution", "T", "ch", "num_res_blocks", "num_groups", "log_every",
                          "ckpt_every", "sample_steps"), 1) | dict.fromkeys(("warmup", "sample_every", "n_samples", "threads"), 0)
    # Python ints (numpy's would not go into config.json, nor load from a checkpoint with weights_only)
    c = dataclasses.replace(c, **{name: check_int(name, getattr(c, name), low) for name, low in lows.items()},
                            seed=check_int("seed", c.seed, 0, 2 ** 32 - 1))
    unet.check_architecture(c.ch, c.ch_mult, c.attn_resolutions, c.dropout, c.resolution, c.num_groups)
    if c.n_samples > MAX_GRID:      # drawn while and after training: a size meant for `sample` would end the run there
        raise ValueError(f"n_samples is the size of the sample grids written while training: at most {MAX_GRID}, got "
                         f"{c.n_samples} (`ddimlab sample` draws more from the checkpoint)")
    if c.threads > (most := devices.most_threads()):
        raise ValueError(f"threads must be at most {most} (this machine has {os.cpu_count()} CPUs; 0: torch's default), "
                         f"got {c.threads}")
    # Adam moves a weight by about lr per step: below 1e-10, a fifth of float32's spacing at 0.01, weights of that size
    # round back to themselves (only those near 0 move); the weights are float32, at most 3.4e38, and Adam's first
    # step is up to 10·lr.
    if not 1e-10 <= c.lr <= 1e37:
        raise ValueError(f"lr must be in [1e-10, 1e37] (Adam moves each weight by about lr per step; typical: 1e-4 to "
                         f"1e-2), got {c.lr}")
    if not 0 <= c.ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {c.ema_decay}")
    if c.grad_clip < 0:
        raise ValueError(f"grad_clip must be >= 0 (0 disables clipping), got {c.grad_clip}")
    if not 0 <= c.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {c.dropout}")
    if c.lr_decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {c.lr_decay!r}")
    if c.t_sampling not in T_SAMPLINGS:
        raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {c.t_sampling!r}")
    if c.init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {c.init!r}")
    if c.schedule not in schedule.SCHEDULES:
        raise ValueError(f"schedule must be one of {schedule.SCHEDULES}, got {c.schedule!r}")
    try:
        a_end = float(schedule.validate_alpha_bar(schedule.make_alpha_bar(c.schedule, c.T))[-1])
    except ValueError as e:          # a linear table past T ≈ 73 000 underflows float64 before its end
        raise ValueError(f"schedule {c.schedule} with T = {c.T} does not fit float64: {e}") from None
    if a_end > NOISE_ALPHA_BAR:      # a linear schedule below T = 230, for one: a model no sampler could start
        raise ValueError(f"schedule {c.schedule} with T = {c.T} ends at alpha_bar = {a_end:.2g}, not at noise (at most "
                         f"{NOISE_ALPHA_BAR}): every sampler starts from N(0, I) at t = T - 1, which this model would not "
                         f"have learnt; use a larger T (DDPM's 1000) or schedule=cosine")
    if c.data_root is not None and c.dataset != "cifar10":
        raise ValueError(f"data_root applies to dataset cifar10 only; the {c.dataset} set ships with scikit-learn")
    if c.data_root is not None and not str(c.data_root).strip():        # Path("") is the current folder
        raise ValueError("data_root is blank; give the folder that holds (or will hold) CIFAR-10, or leave it out for "
                         "the cache")
    if not 2 <= c.sample_steps <= c.T:      # the grids' uniform steps: one is t = 0 alone, which returns x_T nearly as is
        raise ValueError(f"sample_steps (the DDIM steps of the grids drawn while training) must be in [2, T = {c.T}], "
                         f"got {c.sample_steps}")
    return c


def unknown_settings(d: dict) -> list[str]:
    """The keys of a saved config that TrainConfig does not have: written by another ddimlab version, or edited."""
    return sorted(set(d) - {f.name for f in dataclasses.fields(TrainConfig)})


class UnknownSettingsWarning(UserWarning):
    """A run's checkpoint holds settings this ddimlab does not know (`unknown_settings`)."""


def warn_unknown_settings(d: dict | None) -> None:
    """An `UnknownSettingsWarning` naming the keys of a run's saved settings this version ignores when it samples
    (`load_trained`, and the command line on `checkpoint.load_model`'s `net.run_config`)."""
    if d and (unknown := unknown_settings(d)):
        warnings.warn(f"the checkpoint's settings include {', '.join(unknown)}, which this ddimlab does not know (written by "
                      f"another version, or edited) and ignores: if one changes what the network predicts, the samples "
                      f"are wrong", UnknownSettingsWarning, stacklevel=3)


def config_from_dict(d: dict, strict: bool = False, validate: bool = True) -> TrainConfig:
    """Rebuild a TrainConfig saved with `dataclasses.asdict` (lists back to tuples; unknown keys dropped, or with
    `strict`, as a resume asks, a ValueError: the resumed run would save its config without them). A config saved before
    `lr_decay` (`t_sampling`) existed trained with a constant rate (uniform t), and one saved before `init` with
    PyTorch's initialisation (the field's default). Values are read as `make_config` reads overrides (a string by its
    field's type, "1000" for T) and checked by `validate_config`, unless validate=False (`load_trained`: a run saved
    before a rule existed is read with a warning, not refused)."""
    if not isinstance(d, Mapping):
        raise TypeError(f"d must be a dict of a run's settings (dataclasses.asdict of a TrainConfig, or its config.json "
                        f"read with json.load), got {type(d).__name__}")
    strict, validate = check_bool("strict", strict), check_bool("validate", validate)
    if strict and (unknown := unknown_settings(d)):
        raise ValueError(f"the checkpoint's settings include {', '.join(unknown)}, which this ddimlab does not know (written "
                         f"by another version, or edited); a resume would drop them: resume with the version that wrote it")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    c = TrainConfig(**_apply({}, {k: v for k, v in {"lr_decay": "none", "t_sampling": "uniform", **d}.items() if k in names}))
    return validate_config(c) if validate else c


# --------------------------------------------------------------------------- building blocks

def build_model(config: TrainConfig, in_ch: int) -> torch.nn.Module:
    """The DDPM UNet (`ddimlab.unet.UNet`) at the config's size, initialised as `config.init` says, carrying the
    config's ᾱ (`checkpoint.carry_schedule`)."""
    net = unet.UNet(in_ch=in_ch, **{k: getattr(config, k) for k in MODEL_KEYS})
    net = unet.ddpm_init_(net) if config.init == "ddpm" else net
    return carry_schedule(net, schedule.make_alpha_bar(config.schedule, config.T))


def load_dataset(config: TrainConfig) -> torch.Tensor:
    """Training images as uint8 (N, C, R, R)."""
    if config.dataset in ("digits", "digits_rgb"):
        return data.load_digits(config.resolution, channels=3 if config.dataset == "digits_rgb" else 1)[0]
    if config.resolution != 32:
        raise ValueError(f"cifar10 images are 32×32; set resolution=32, got {config.resolution}")
    return data.load_cifar10(root=config.data_root, train=True)[0]


def get_batch(images: torch.Tensor, step: int, config: TrainConfig, gen: torch.Generator, local=slice(None)):
    """This process's slice of training step `step`'s global batch: (x_0 in [−1, 1], t, ε) (notebook 06 §3).

    The images are `data.batch_indices` (a per-epoch permutation seeded by (seed, epoch), so the data
    order is a function of the step); t (uniform on {0..T−1}, or with `schedule.cosine_t_probs` as
    config.t_sampling says), ε ~ N(0, I) and the flips (when config.hflip) are drawn from `gen` for the
    whole global batch on every rank and then sliced, so N ranks compute the gradient of the batch one
    process would.
    """
    B, dev = config.batch_size, images.device
    x0 = data.to_model_range(images[data.batch_indices(images.shape[0], B, step, config.seed).to(dev)[local]])
    if config.t_sampling == "cosine":
        t = torch.multinomial(_cosine_t_probs(config.schedule, config.T, dev), B, replacement=True, generator=gen)
    else:
        t = torch.randint(0, config.T, (B,), generator=gen, device=dev)
    t = t[local]
    eps = torch.randn((B, *images.shape[1:]), generator=gen, device=dev)[local]
    if config.hflip:
        flip = (torch.rand(B, generator=gen, device=dev) < 0.5)[local]
        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
    return x0, t, eps


@functools.lru_cache(maxsize=4)
def _cosine_t_probs(schedule_name: str, T: int, device: torch.device) -> torch.Tensor:
    return schedule.cosine_t_probs(schedule.make_alpha_bar(schedule_name, T)).float().to(device)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ; buffers are copied (notebook 06 §3)."""
    if not 0 <= decay <= 1:                            # 1.5 moves away from the model; NaN fails this too
        raise ValueError(f"decay must be in [0, 1], got {decay!r}")
    e_params = list(ema.parameters())
    m_params = [p.detach() for p in model.parameters()]
    for what, e, m in (("parameters", e_params, m_params), ("buffers", list(ema.buffers()), list(model.buffers()))):
        if [x.shape for x in e] != [x.shape for x in m]:     # zip would drop the extra ones; lerp fails inside torch
            first = next((f"{tuple(x.shape)} and {tuple(y.shape)}" for x, y in zip(e, m) if x.shape != y.shape),
                         f"{len(e)} and {len(m)} tensors")
            raise ValueError(f"ema and model must be copies of one network (copy.deepcopy(model)); their {what} differ: "
                             f"{first}")
    torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


def ema_decay_at(config: TrainConfig, step: int) -> float:
    """EMA decay for the update after `step` completed steps (with optional warm-up of the decay; notebook 06 §3)."""
    step = check_int("step", step, 0)
    if config.ema_warmup:
        return min(config.ema_decay, (1 + step) / (10 + step))
    return config.ema_decay


def ema_initial_share(config: TrainConfig, steps: int) -> float:
    """The weight the EMA still gives the initial (random) weights after `steps` updates, ∏_{k<steps} decay_k
    (notebook 06 §6). With DDPM's decay 0.9999 and no warm-up (the `cifar10` preset) it is 0.9999²⁰⁰⁰ = 82% after 2000
    steps, so a short run's EMA samples look untrained; the warm-up makes it negligible within a few dozen steps."""
    if not config.ema_warmup:
        return config.ema_decay ** steps
    share = 1.0
    for k in range(steps):
        share *= ema_decay_at(config, k)
        if share < 1e-12:
            return 0.0
    return share


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate for optimizer step `step` + 1: linear warm-up to `lr`, then constant (DDPM) or
    `lr`·½(1 + cos πf), f = (step − warmup)/(steps − warmup) (Loshchilov & Hutter 2017; notebook 06 §3)."""
    step = check_int("step", step, 0)
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.lr_decay == "none":
        return config.lr
    f = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(f, 1.0)))


class GridStopped(Exception):
    """Ctrl-C or SIGTERM came while a sample grid was drawn: the grid is dropped, the run goes on to stop."""


@torch.no_grad()
def sample_grid(model, config: TrainConfig, in_ch: int, n: int, device, seed: int = 0, stop=()) -> torch.Tensor:
    """n DDIM samples (η = 0, `config.sample_steps` uniform steps) from `model`, in [−1, 1] (notebook 06 §4). `stop`:
    the training loop's signal flag, checked after each sampling step (a large grid takes seconds: GridStopped)."""
    def check_stop(_):
        if stop:
            raise GridStopped

    abar = schedule.make_alpha_bar(config.schedule, config.T).to(device)
    return sample(eps_fn(model), (n, in_ch, config.resolution, config.resolution), abar, S=config.sample_steps,
                  generator=torch.Generator(device=device).manual_seed(seed), device=device,      # eval mode: eps_fn
                  callback=check_stop)


def load_trained(path, device="cpu", use_ema: bool = True):
    """(model, config) from a ddimlab training checkpoint (a path, or the dict already loaded from one);
    the EMA weights by default, in eval mode (notebook 06 §4). `checkpoint.load_model` reads every kind."""
    state = path if isinstance(path, dict) else load_checkpoint(path, map_location="cpu", required=("model", "config"))
    alpha_bar = run_alpha_bar(state["config"], "the checkpoint" if isinstance(path, dict) else path)   # before a warning
    warn_unknown_settings(state["config"])                        # that says its settings are returned as saved
    try:
        config = config_from_dict(state["config"])
    except (TypeError, ValueError) as e:     # a rule newer than the run: its weights still sample
        warnings.warn(f"the checkpoint's settings fail a check of this ddimlab ({e}); they are returned as saved",
                      UnknownSettingsWarning, stacklevel=2)
        config = config_from_dict(state["config"], validate=False)
    net = carry_schedule(unet_from_run(state, use_ema), alpha_bar)
    return net.to(device), config


# --------------------------------------------------------------------------- the run folder

def _rng_state(gen: torch.Generator, device) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_run(out: Path, model, ema, opt, step, config, gen, device, in_ch, loss, log_window=(0.0, 0)) -> Path:
    """Write `ckpt.pt` atomically, then `config.json` for it: the pair always describes one run (notebook 06 §4).
    log_window: (sum, count) of the losses since the last log line, so that a resumed run logs what an
    uninterrupted one would."""
    state = {
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
        "step": step, "config": dataclasses.asdict(config), "rng": _rng_state(gen, device),
        "in_ch": in_ch, "loss": loss, "ema_initial_share": ema_initial_share(config, step),
        "log_window": [float(log_window[0]), int(log_window[1])],
    }
    path = save_checkpoint(out / "ckpt.pt", **state)
    try:
        _write_config(out, dataclasses.asdict(config))
    except OSError as e:
        raise os_error(ConfigNotWrittenError, e.errno,
                       f"{e.strerror or e}: {path} (step {step}) was saved, but not its copy of the settings, "
                       f"{out / 'config.json'} (written again with the next checkpoint); free some space, then continue "
                       f"with --resume") from e
    return path


class ConfigNotWrittenError(OSError):
    """`save_run` wrote ckpt.pt, then failed at config.json (its copy of the settings as text)."""


RESUME_KEYS = ("model", "ema", "optimizer", "step", "config", "rng")


def _run_state(path: Path, mmap: bool = False) -> dict:
    """The checkpoint a resume continues from; a damaged one is said with what to do."""
    try:
        return load_checkpoint(path, map_location="cpu", required=RESUME_KEYS, mmap=mmap)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; a resume cannot continue from it: put back an intact copy, or start again with "
                              f"--overwrite (overwrite=True)") from None


def _resume(path: Path, config: TrainConfig, model, ema, opt, gen, device, rank: int) -> tuple[int, list, dict]:
    """Load a run's state into model, EMA, optimizer and generators; returns the step it had reached, the
    (sum, count) of the losses since its last log line and the checkpoint's settings."""
    state = _run_state(path)
    _check_same_model(config_from_dict(state["config"], strict=True), config, path)
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    step = int(state["step"])
    gen.set_state(state["rng"]["generator"])
    if rank == 0:
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
    else:  # other ranks' dropout streams are not saved; re-seed them deterministically
        torch.manual_seed(config.seed + rank + 1_000_003 * step)
    return step, state.get("log_window", [0.0, 0]), state["config"]


def _check_same_model(saved: TrainConfig, config: TrainConfig, where) -> None:
    """A run resumes only with its own network and diffusion: MODEL_KEYS and SHAPE_KEYS must match."""
    for key in MODEL_KEYS + SHAPE_KEYS:
        if getattr(saved, key) != getattr(config, key):
            raise ValueError(f"cannot resume {where}: {key} is {getattr(config, key)!r} but the checkpoint has "
                             f"{getattr(saved, key)!r}; use the run's settings or a new --out")


def _refuse_folders_in_place(out: Path) -> None:
    """A folder where the run keeps ckpt.pt, log.jsonl or config.json would fail the first write after the work, and so
    would a symbolic link that goes round a loop; one to nothing would write its file elsewhere (log.jsonl)."""
    if why := next(filter(None, (unresolved_link(out / n) for n in RUN_FILES)), None):
        raise RunExistsError(f"the run keeps a file where {why}; remove the link (or point it at a file), then run again")
    if folders := [str(out / n) for n in RUN_FILES if (out / n).is_dir()]:
        raise RunExistsError(f"{' and '.join(folders)} {'is a folder' if len(folders) == 1 else 'are folders'} where the run "
                             f"keeps a file; move {'it' if len(folders) == 1 else 'them'} away, then run again")


def _check_out(out: Path, resume: bool, overwrite: bool, resumable: bool = True) -> None:
    """Refuse to train into a folder that holds a run unless resume or overwrite was asked for. resumable: whether the
    command offers --resume, which the refusal then names (benchmarks/gpu_check.py has none: there it said to "continue
    it with --resume", an option gpu_check refuses)."""
    check_nothing_set_aside(out, RunExistsError)        # `train --overwrite` killed (kill -9) before its first checkpoint
    _refuse_folders_in_place(out)
    held = [n for n in RUN_FILES if (out / n).exists()]
    if held == ["log.jsonl"] and not overwrite:        # killed (kill -9, power cut) before its first checkpoint
        if not _is_training_log(out / "log.jsonl"):
            raise RunExistsError(f"{out} holds a log.jsonl that is not a ddimlab training log; choose another --out "
                                 f"(--overwrite would delete it)")
        if devices.rank_world()[0] == 0:
            _remove_run(out, f"{out} held only log.jsonl, from a run that stopped before its first checkpoint")
        return
    held += ["samples/step_*.png"] if _grids(out) else []     # an earlier run's grids: the new run would write over them
    if not (resume and (out / "ckpt.pt").exists()):
        _refuse_reproduce_results(out, bool(held))
    if held and not (resume or overwrite):
        if not (out / "ckpt.pt").exists():
            raise RunExistsError(f"{out} holds {', '.join(held)} but no ckpt.pt; --overwrite deletes them and starts a "
                                 f"new run, or choose another --out")
        raise RunExistsError(f"{out} already holds a run ({', '.join(held)}); "
                             f"{'continue it with --resume, ' if resumable else ''}start again with --overwrite, or "
                             f"choose another --out")
    if resume and not (out / "ckpt.pt").exists() and held:
        raise RunExistsError(f"{out} has {', '.join(held)} but no ckpt.pt to resume from; use --overwrite "
                             f"to start again or another --out")


TABLE_FILES = ("table1.md", "table1.csv", "table2.md", "table2.csv")     # what `reproduce --out` writes, with its cells


def _refuse_reproduce_results(out: Path, run_there: bool) -> None:
    """A new run does not start in a folder that holds `reproduce` results (TABLE_FILES, and the sample cells of table1
    in samples/): they are another model's (the replaced run's), and would read as the new one's. Neither deleted nor
    set aside with the replaced run to be deleted at the first checkpoint: they can be hours of sampling."""
    cells = [p for p in sorted((out / "samples").glob("*")) if p.is_dir() and recorded_settings(p) is not None]
    found = [n for n in TABLE_FILES if (out / n).exists()] + [f"{p.relative_to(out)}/" for p in cells]
    if found:
        whose = "of the run in it" if run_there else "of another model"
        raise RunExistsError(f"{out} holds `reproduce` results {whose} ({', '.join(found[:6])}"
                             f"{f' and {len(found) - 6} more' if len(found) > 6 else ''}), which a new run there would "
                             f"seem to have made; move them out (or delete them), or choose another --out")


def refuse_sample_folder(folder) -> None:
    """A `reproduce table1` cell (a folder whose settings.json records how its samples were made) holds only the images
    of that cell: a file written there would be scored with them (a PNG), replaced by the cell's own image on the next
    run, or read as the cell's. Every command's --out folder is refused there: `train`'s, and those of `sample`,
    `invert`, `interpolate` (the folder of the PNG), `reproduce`, `lab` and `demo` (cli; `lab.main` too, for Python
    callers of lab and demo) and benchmarks/gpu_check.py."""
    if recorded_settings(folder) is not None:
        raise ValueError(f"--out {folder} is a folder of samples for FID (its settings.json says how `reproduce` made "
                         f"them), which holds only those; choose another --out")


def _is_training_log(path: Path) -> bool:
    """Whether every complete line of `path` is a record `train` writes (a dict with step and loss)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornLogWarning)
            records = read_log(path)
    except (OSError, ValueError):      # unreadable, not text, or a line that is not JSON
        return False
    return all(isinstance(r, dict) and {"step", "loss"} <= r.keys() for r in records)


def _grids(out: Path) -> list[Path]:
    """The sample grids a run wrote in <out>/samples (GRID_NAME; a user's other files there stay)."""
    return sorted(p for p in (out / "samples").glob("step_*.png") if GRID_NAME.fullmatch(p.name))


def _run_files(out: Path) -> list[Path]:
    """A run's checkpoint, config, log and sample grids."""
    return [out / n for n in RUN_FILES if (out / n).exists()] + _grids(out)


def _remove_run(out: Path, why: str) -> None:
    """A run killed before its first checkpoint left only its log: delete it before starting again."""
    old = _run_files(out)
    for p in old:
        p.unlink()
    if old:
        print(f"{why}: removed the previous run in {out} ({len(old)} files)")


def _set_aside(out: Path) -> Path | None:
    """--overwrite: the previous run's files into <out>/.previous-<pid> (`files.set_aside`: the folder never mixes two
    runs); deleted once the new run has its first checkpoint, put back if it fails or is stopped before that."""
    old = _run_files(out)
    aside = set_aside(out, old)
    if aside is not None:
        print(f"--overwrite: set the previous run aside in {aside} ({len(old)} files) until the new run's first checkpoint")
    return aside


def _append_log(path: Path, record: dict) -> None:
    """One JSON line, written with a single call so that a crash leaves at most one torn last line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_log(path, up_to_step: int | None = None) -> list[dict]:
    """The records of a run's `log.jsonl` (notebook 06 §4). A torn last line (the disk filled or the process
    died during an append) is dropped with a warning; a damaged earlier line, or one that is JSON but not a record
    (an object whose "step", if present, is an integer), is a ValueError naming it."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines() if Path(path).exists() else []
    except UnicodeDecodeError as e:
        line = Path(path).read_bytes()[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line} is not text (byte {e.object[e.start]:#x}); fix or delete that line") from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: dropped a torn last line (an interrupted write): {line[:60]!r}", TornLogWarning)
                continue
            raise ValueError(f"{path}, line {i + 1} is not JSON: {line[:60]!r}; fix or delete that line") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step", 0), int) or isinstance(rec.get("step"), bool):
            raise ValueError(f"{path}, line {i + 1} is not a record of the run (an object whose \"step\", if present, is "
                             f"an integer): {line[:60]!r}; fix or delete that line")
        if up_to_step is None or rec.get("step", 0) <= up_to_step:
            records.append(rec)
    return records


def _restart_log(path: Path, step: int) -> None:
    """Keep only the log lines up to `step` (a resumed run continues from there), rewritten atomically."""
    keep = read_log(path, step)
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in keep)), text=True)


# --------------------------------------------------------------------------- the loop

def train(config: TrainConfig, resume: bool = False, return_models: bool = False, overwrite: bool = False,
          on_start=None):
    """Train with `config` (notebook 06 §4); returns the out directory (or (out, model, ema) if `return_models`).

    resume=True continues from `<out>/ckpt.pt` (the model-shape fields must match the checkpoint's; the
    others, e.g. steps, logging, device, come from `config`); overwrite=True starts again in a folder that
    holds a run (its files set aside until the new run's first checkpoint, and put back if it fails before:
    `_set_aside`). Without either, such a folder is a `RunExistsError`. While it trains, the main process holds
    `<out>/.train.lock`: a second `train` on the same folder refuses at once (`files.BusyError`). `on_start(step)`, if
    given, is called on the main process with the step the run starts from, once the folder, data and device have passed
    their checks and just before the first step (the command line's notes: a note printed before an error would be about
    a run that never started); not when there is nothing to train.
    """
    if on_start is not None and not callable(on_start):
        raise TypeError(f"on_start must be a function of the starting step, or None, got {on_start!r}")
    config = validate_config(copy.deepcopy(config))
    resume, overwrite, return_models = (check_bool(k, v) for k, v in
                                        (("resume", resume), ("overwrite", overwrite), ("return_models", return_models)))
    out = Path(config.out)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run, or start it again")
    check_out_folder(out)
    refuse_sample_folder(out)
    if config.n_samples and (out / "samples").exists() and not (out / "samples").is_dir():   # found at the first grid
        raise FileExistsError(f"{out / 'samples'} is a file, and the run writes its sample grids into a folder of that "
                              f"name; move the file, or pass --set n_samples=0 (no grids)")
    if config.n_samples and (why := unresolved_link(out / "samples")):                 # else found at the first grid
        raise FileExistsError(f"{why}, and the run writes its sample grids into a folder there; remove the link, or pass "
                              f"--set n_samples=0 (no grids)")
    if config.n_samples and (out / "samples").is_dir() and not os.access(out / "samples", os.W_OK | os.X_OK):
        raise PermissionError(f"{out / 'samples'} is not writable, and the run writes its sample grids there; make it "
                              f"writable, or pass --set n_samples=0 (no grids)")
    if devices.rank_world()[0] != 0:
        _check_out(out, resume, overwrite)
        return _train(config, out, resume, return_models, overwrite, on_start)
    # The lock first: a folder that another train command is filling is "busy", not a half-written run.
    with folder_removed_on_error(out, out / ".train.lock"), \
            locked(out / ".train.lock", busy=f"{out} is in use by another train command; wait for it to finish "
                                             f"or choose another --out"):
        _check_out(out, resume, overwrite)
        return _train(config, out, resume, return_models, overwrite, on_start)


def _train(config: TrainConfig, out: Path, resume: bool, return_models: bool, overwrite: bool, on_start=None):
    from tqdm.auto import tqdm

    rank, world, device, init_here = devices.setup_distributed(config.device)
    is_main, cuda = rank == 0, device.type == "cuda"
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of processes {world}")
    images = load_dataset(config).to(device)          # the whole set, uint8, on the device
    in_ch, B = images.shape[1], config.batch_size
    if images.shape[0] < B:
        raise ValueError(f"batch_size {B} exceeds the data set size {images.shape[0]}")
    local = slice(rank * (B // world), (rank + 1) * (B // world))

    torch.manual_seed(config.seed)                     # the same initial weights on every rank
    model = build_model(config, in_ch).to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    torch.manual_seed(config.seed + 7919 * rank)       # dropout: a different stream per rank
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, **({"fused": True} if cuda else {}))
    gen = torch.Generator(device=device).manual_seed(config.seed + 12345)
    alpha_bar = schedule.make_alpha_bar(config.schedule, config.T).to(device, torch.float32)
    step, window, saved = 0, [0.0, 0], None
    if resume and (out / "ckpt.pt").exists():
        step, window, saved = _resume(out / "ckpt.pt", config, model, ema, opt, gen, device, rank)
        if step >= config.steps:                       # said, not silently skipped, and nothing rewritten
            if is_main:
                print(f"{out} is already at step {step} of steps = {config.steps}: nothing to train, nothing changed "
                      f"(a larger --set steps=N continues it)")
            if init_here:
                dist.destroy_process_group()
            return (out, model, ema) if return_models else out
    elif resume and is_main:
        print(f"{out} holds no run to resume: starting a new one")
    aside = None                                       # the previous run's files, under --overwrite
    made_samples = not (out / "samples").exists()      # a samples/ folder the user made stays, even empty
    last_good = step if step else None
    grids, new_log = [], False                         # the sample grids this run wrote; whether it started the log
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and config.bf16)
    check_every = config.log_every if cuda else 1      # .item() synchronises a GPU: check less often there
    loss_sum, loss_n = torch.tensor(float(window[0]), device=device), int(window[1])
    t_last, step_last = time.perf_counter(), step
    mean_loss = float("nan")
    model.train()
    threads = config.threads if config.threads and not cuda else torch.get_num_threads()
    bar = stop = None

    def save():                                        # the weights after `step`, once their loss is seen to be finite
        nonlocal last_good, aside
        _check_weights(model, ema, x0, eps, alpha_bar, autocast, step, out, last_good, config)
        unsaved_config = None
        try:
            with interrupts_deferred():    # a Ctrl-C that stops at once waits for the write: it says the step on disk
                try:
                    save_run(out, model, ema, opt, step, config, gen, device, in_ch, mean_loss, (loss_sum, loss_n))
                except ConfigNotWrittenError as e:     # ckpt.pt is written: the new run's checkpoint all the same
                    unsaved_config = e
                last_good = step
        except OSError as e:                           # a full disk at ckpt.pt: atomic_write kept the previous one
            raise _not_written(e, out / "ckpt.pt", last_good, aside is not None) from None
        if aside is not None:                          # the new run has a checkpoint: the previous one goes
            shutil.rmtree(aside, ignore_errors=True)
            aside = None
        if unsaved_config is not None:
            raise unsaved_config

    try:                                               # from the set-aside on, a failure puts the previous run back
        if is_main:
            if overwrite:
                aside = _set_aside(out)
            check_can_write(out, "make it writable, or copy the run to a folder that is and --resume there" if step
                            else "choose another --out")      # said, not the name of the log's temporary file
            _restart_log(out / "log.jsonl", step)      # a fresh run starts an empty log
            if saved is not None and _config_is_stale(out, saved):
                try:
                    _write_config(out, saved)          # ckpt.pt's copy, as save_run would have written it
                except OSError as e:
                    raise _not_written(e, out / "config.json", last_good, False) from None
                print(f"{out / 'config.json'} held an earlier checkpoint's settings (its rewrite after the checkpoint of "
                      f"step {step} failed): rewritten from ckpt.pt's")
            new_log = not step
            if on_start is not None:
                on_start(step)
        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None) if world > 1 else model
        net = torch.compile(net) if config.compile else net
        bar = tqdm(total=config.steps, initial=step, disable=not (config.progress and is_main), dynamic_ncols=True,
                   unit="step")
        stop = _stop_on_signal(world == 1)
        stop.kept = lambda: _kept_at_once(step, last_good, aside is not None, out)
        with devices.cpu_threads(threads):
            while step < config.steps:
                x0, t, eps = get_batch(images, step, config, gen, local)
                if cuda:
                    x0, eps = (v.contiguous(memory_format=torch.channels_last) for v in (x0, eps))
                for group in opt.param_groups:
                    group["lr"] = lr_at(config, step)
                with autocast:
                    loss = l_simple(net, x0, alpha_bar, t=t, noise=eps, validate=False)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                opt.step()
                ema_update(ema, model, ema_decay_at(config, step))
                step += 1
                loss_sum += loss.detach()
                loss_n += 1
                bar.update(1)

                log_now = step % config.log_every == 0 or step == config.steps
                ckpt_now = step % config.ckpt_every == 0 or step == config.steps
                if log_now or ckpt_now or step % check_every == 0:
                    mean_loss = float(_all_mean(loss_sum / loss_n, world))
                    if not math.isfinite(mean_loss):
                        raise _diverged(f"training loss became {mean_loss} by step {step}", out, last_good, config)
                if log_now:
                    now = time.perf_counter()
                    record = {"step": step, "loss": mean_loss, "lr": lr_at(config, step - 1),
                              "img_per_s": (step - step_last) * B / max(now - t_last, 1e-9)}
                    if is_main:
                        try:
                            _append_log(out / "log.jsonl", record)
                        except OSError as e:
                            raise _not_written(e, out / "log.jsonl", last_good, aside is not None) from None
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{record['img_per_s']:.0f}")
                    loss_sum.zero_()
                    loss_n, t_last, step_last = 0, now, step
                if ckpt_now and is_main:
                    save()
                if is_main and config.n_samples and (
                        (config.sample_every and step % config.sample_every == 0) or step == config.steps):
                    path = out / "samples" / f"step_{step:07d}.png"        # what GRID_NAME matches
                    if config.progress:
                        early = ema_initial_share(config, step)
                        bar.write(f"step {step}: {config.n_samples} DDIM-{config.sample_steps} samples from the EMA "
                                  f"weights -> {path}" + (f" (they still hold {early:.0%} of the initial random weights)"
                                                          if early > EARLY_EMA else ""))
                    try:
                        grids.append(save_image_grid(sample_grid(ema, config, in_ch, config.n_samples, device,
                                                                 seed=config.seed, stop=stop), path))
                    except GridStopped:
                        bar.write(f"stopped while drawing the grid of step {step}: no grid written")
                        if step == config.steps:      # the run itself is complete: say so, not just "interrupted"
                            raise KeyboardInterrupt(f"stopped; the run is complete (step {step}, saved in "
                                                    f"{out / 'ckpt.pt'}), without its last sample grid") from None
                if stop and step < config.steps and aside is not None:     # --overwrite stopped before a checkpoint
                    raise KeyboardInterrupt(f"stopped at step {step}, before the new run's first checkpoint: nothing of it "
                                            f"is kept, and the previous run goes back into {out}")
                if stop and step < config.steps:        # Ctrl-C or SIGTERM: keep the steps since the last checkpoint
                    if not ckpt_now:
                        mean_loss = float(loss_sum / loss_n) if loss_n else mean_loss
                        if not math.isfinite(mean_loss):
                            raise _diverged(f"interrupted at step {step} with a non-finite loss", out, last_good, config)
                        save()
                    raise KeyboardInterrupt(f"stopped at step {step} of {config.steps}; saved {out / 'ckpt.pt'}: "
                                            f"continue with --resume")
    except BaseException:
        if is_main and last_good is None:              # nothing saved: a retry must not find a log without a run
            for path in ([out / "log.jsonl"] if new_log else []) + grids:
                path.unlink(missing_ok=True)
            if made_samples:
                with contextlib.suppress(OSError):
                    (out / "samples").rmdir()
            if aside is not None:
                put_back(aside, out)
                print(f"--overwrite: put the previous run back in {out}")      # stdout, as the set-aside; the error follows
        raise
    finally:
        if stop is not None:
            stop.restore()
        if bar is not None:
            bar.close()
        if init_here:
            dist.destroy_process_group()
    if is_main and mean_loss > 1.5:      # ε ~ N(0, I): predicting ε = 0 scores 1 per pixel
        warnings.warn(f"the last training loss is {mean_loss:.3g}, far above the 1 of predicting eps = 0: the weights in "
                      f"{out / 'ckpt.pt'} are worse than no network and their samples will be noise or overflow; lower lr "
                      f"(now {config.lr}) and start again with --overwrite", LossWarning)
    return (out, model, ema) if return_models else out


def _not_written(e: OSError, path: Path, last_good, overwrite: bool) -> OSError:
    """The error of a run's file that could not be written (a full disk at ckpt.pt or at a log line), saying what was
    kept and how to go on. After a run's earlier checkpoint, log.jsonl is cut back to its step: the lines after it
    describe weights that are lost, and --resume writes them again."""
    out = path.parent
    fix = "free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
    what = f"{e.strerror}: {e.filename or path}" if e.strerror else str(e)   # os_error's: in words, with its path
    if last_good is None:
        back = f", and the previous run is back in {out}" if overwrite else ""
        return os_error(type(e), e.errno, f"{what}; this was before the run's first checkpoint: nothing of it was "
                                          f"kept{back}; {fix}, then run again")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TornLogWarning)
            _restart_log(out / "log.jsonl", last_good)
        log = ", log.jsonl cut back to it"
    except (OSError, ValueError):
        log = ", log.jsonl still lists later steps (--resume cuts them)"
    return os_error(type(e), e.errno, f"{what}; the last checkpoint (step {last_good}) was kept as it was{log}; "
                                      f"{fix}, then continue with --resume")


def _diverged(what: str, out: Path, last_good, config: TrainConfig) -> NonFiniteLossError:
    if last_good is None:
        return NonFiniteLossError(f"{what}; stopped, no checkpoint had been written yet (this run kept nothing). Lower lr "
                                  f"(now {config.lr}) or check the data.")
    return NonFiniteLossError(f"{what}; stopped without saving, the last good checkpoint {out / 'ckpt.pt'} (step {last_good}) "
                              f"was kept. Lower lr (now {config.lr}) or check the data; if --resume then fails the same way, "
                              f"that checkpoint is already damaged: start again with --overwrite.")


@torch.no_grad()
def _check_weights(model, ema, x0, eps, alpha_bar, autocast, step, out, last_good, config) -> None:
    """Before a checkpoint: the loss of the weights and of the EMA weights about to be saved, on the step's images and
    noise at steps spread evenly over 0..T-1 (not only the batch's own t), must be finite. The training loss is computed
    before each optimizer step, so it cannot see a last step that diverged (e.g. lr = 1e30 gives finite weights of 1e28
    whose output is NaN). Finite but useless weights (lr = 10: ε̂ of about 2500) pass; `LossWarning` names those. In
    eval mode and without random draws, so a run and its resumed copy stay bitwise the same."""
    t = torch.linspace(0, len(alpha_bar) - 1, len(x0), device=x0.device).round().long()
    model.eval()
    try:
        for name, net in (("weights", model), ("EMA weights", ema)):
            with autocast:
                loss = float(l_simple(net, x0, alpha_bar, t=t, noise=eps, validate=False))
            if not math.isfinite(loss):
                raise _diverged(f"the {name} after step {step} give a loss of {loss}", out, last_good, config)
    finally:
        model.train()


def _kept_at_once(step: int, last_good: int | None, overwrite: bool, out: Path) -> str:
    """What a second Ctrl-C (stop at once, no new checkpoint) leaves, and how to go on: the run's last checkpoint, or,
    before its first, nothing of it (and under --overwrite the previous run, put back)."""
    if last_good is None:
        return (f"stopped at once at step {step}, before the run's first checkpoint: nothing of it is kept, "
                + (f"and the previous run goes back into {out}" if overwrite else "run the command again to start over"))
    lost = "" if step == last_good else f"; step {step} is lost" if step == last_good + 1 else \
        f"; steps {last_good + 1} to {step} are lost"
    return (f"stopped at once at step {step}; the last checkpoint, {out / 'ckpt.pt'} of step {last_good}, is kept{lost}: "
            f"continue with --resume")


class _stop_on_signal(list):
    """A flag set by the first Ctrl-C (SIGINT), SIGTERM (what `kill`, `timeout`, `docker stop` and batch schedulers
    send) or SIGHUP (the terminal closed; not under `nohup`), which the training loop checks after each step: it then
    saves a checkpoint and stops. A second one interrupts at once, with `kept()` (set by the loop: `_kept_at_once`) as
    its message. Only in a single process on the main thread (under torchrun every rank would have to stop at the same
    step)."""

    def __init__(self, active: bool):
        super().__init__()
        self.previous, self.kept = {}, None
        if active and threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in stop_signals()}

    def _handle(self, signum, frame):
        if self:
            raise KeyboardInterrupt(self.kept() if self.kept else "")
        self.append(True)
        again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
        print(f"\nstopping after this step, with a checkpoint ({again} again to stop at once)", file=sys.stderr, flush=True)

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _all_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= world
    return x
