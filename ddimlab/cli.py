"""The command line: `ddimlab` (or `python -m ddimlab`) train | sample | invert | interpolate | reproduce |
lab | demo. Every subcommand is an argparse parser built here over library functions; `--help`
on each lists its options with their defaults (README "Using the library").

Errors a user can act on (bad arguments, missing or damaged files, a run folder that already holds a
run, no CUDA, a failed download, NaN from the network) print one or two lines and exit with status 1;
`--debug` (or DDIMLAB_DEBUG=1) shows the traceback instead. Samples far outside [−1, 1] are written,
with a one-line warning (`generate.check_data_range`).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import os
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import __version__, checkpoint, data, demo, devices, fid, lab, ode, pretrained, schedule, tables
from .checks import check_distinct, int_range, out_of_memory
from .files import (
    atomic_write,
    check_can_write,
    check_nothing_set_aside,
    check_out_folder,
    error_words,
    file_on_the_way,
    folder_removed_on_error,
    held,
    interrupts_deferred,
    locked,
    refuse_existing,
    replaced_together,
    stop_signals,
    unresolved_link,
)
from .generate import (
    SampleFileWarning,
    check_data_range,
    check_eta,
    latents,
    progress,
    sample_indices,
    sampling_steps,
)
from .plotting import grid_png, grid_size
from .samplers import (
    FROM_NOISE,
    SIGMA_HAT,
    TO_NOISE,
    NonFiniteError,
    OutOfRangeWarning,
    check_first_step,
    ddim_invert,
    ddim_sample,
    slerp,
)
from .train import (
    PRESETS,
    EditedConfigWarning,
    LossWarning,
    NonFiniteLossError,
    TornLogWarning,
    TrainConfig,
    UnknownSettingsWarning,
    _parse_value,
    make_config,
    refuse_sample_folder,
    resumed_config,
    train,
    warn_unknown_settings,
)

FALSE_WORDS = ("", "0", "false", "no", "off")     # DDIMLAB_DEBUG values that leave tracebacks off

# What a user can act on, printed as one line unless --debug (any OSError: a missing, unreadable or unwritable file,
# a read-only folder, a full disk, a PNG that is not an image).
USER_ERRORS = (ValueError, OSError, ImportError,
               checkpoint.CheckpointError, data.DownloadError, devices.DeviceError, NonFiniteError,
               NonFiniteLossError)


@contextlib.contextmanager
def one_line_errors(prog: str):
    """For a script's `main` (benchmarks/): Ctrl-C, SIGTERM or SIGHUP (`sigterm_as_interrupt`) as "PROG: interrupted[: what
    was kept]" (exit 130) and a known error (USER_ERRORS) or a failed allocation as "PROG: error: …" (exit 1), without a
    traceback, as `main` below says them for the commands; ddimlab's own warnings (OWN_WARNINGS) as "PROG: warning: …"."""
    terminate = sigterm_as_interrupt()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(prog)
            yield
    except KeyboardInterrupt as e:      # its message says what was kept (pretrained's: "nothing was kept, ...")
        print(f"{prog}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        raise SystemExit(130) from None
    except USER_ERRORS as e:
        raise SystemExit(f"{prog}: error: {error_words(e)}") from None
    except Exception as e:
        if (size := out_of_memory(e)) is None:
            raise
        raise SystemExit(f"{prog}: error: {OUT_OF_MEMORY.format(size=size)}") from None
    finally:
        terminate.restore()


# --------------------------------------------------------------------------- helpers

class LatentsWarning(UserWarning):
    """`interpolate --latents` with a file that records another model's weights."""


class StepsWarning(UserWarning):
    """The spacing rule gives fewer distinct steps than --steps asked for."""


# ddimlab's own warnings, printed as one line like its errors (`_one_line_warnings`)
OWN_WARNINGS = (OutOfRangeWarning, StepsWarning, checkpoint.EarlyEMAWarning, TornLogWarning, LossWarning,
                EditedConfigWarning, UnknownSettingsWarning, LatentsWarning, SampleFileWarning)


def _one_line_warnings(prefix: str):
    """A `warnings.showwarning` that prints OWN_WARNINGS as "PREFIX: warning: …" on stderr, and any other warning as
    Python shows it: the commands' (`main`) and the scripts' (`one_line_errors`)."""
    shown = warnings.showwarning

    def show(message, category, *rest, **kw):
        if issubclass(category, OWN_WARNINGS):
            print(f"{prefix}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *rest, **kw)
    return show


DEFAULT_STEPS = 50   # --steps of sample (DDIM and the solvers), invert and interpolate

# invert --sampler: the encoder x_0 -> x_T, the decoder of the same order, and their names in ode.nfe (notebook 05 §8)
INVERT_SAMPLERS = {"ddim": (ddim_invert, ddim_sample, ("ddim_invert", "euler")),
                   "heun": (ode.heun_invert, ode.heun, ("heun_invert", "heun"))}
# The most steps on which a solver takes DDIM's steps exactly, though named otherwise: a multistep solver's first step
# (no history yet) and every solver's last (at clean data, t = -1) are first order, DDIM's (the λ multistep solvers'
# last returns x̂_0). sample, invert and interpolate refuse them there (tests/test_careless_api.py checks the counts);
# euler is DDIM at any S, and ipndm's one step calls no network (refused as such).
DDIM_UP_TO = {"heun": 1, "dpm_solver_2": 1, "deis_tab": 1, "dpm_solver_pp_2m": 2, "dpm_solver_pp_3m": 2, "unipc_2": 2,
              "unipc_3": 2}
# interpolate --sampler: the deterministic decoders (`invert --sampler heun`'s latents are decoded by heun)
INTERPOLATE_SAMPLERS = ("ddim",) + ode.SOLVERS


def _note_if_training(path, net) -> None:
    """A run that a `train` command is still training (it holds the run's .train.lock) is sampled from its last
    checkpoint, which the next one replaces: said, with that checkpoint's step."""
    if getattr(net, "run_step", None) is None:
        return                                  # not a ddimlab run's checkpoint
    run = Path(path) if Path(path).is_dir() else Path(path).parent
    if held(run / ".train.lock"):
        print(f"note: {run} is still being trained (a train command holds it): these are the weights of its last "
              f"checkpoint, step {net.run_step}; the next checkpoint replaces them")


def _model_for(args):
    """(net, alpha_bar, device, seq) for a subcommand's --checkpoint, --device, --no-ema, --steps, --spacing."""
    device = devices.resolve(args.device)
    _check_amp(args.amp, device)
    net, abar = checkpoint.load_model(args.checkpoint, device, use_ema=not args.no_ema)
    warn_unknown_settings(getattr(net, "run_config", None))
    _note_if_training(args.checkpoint, net)
    T = abar.shape[0]
    steps = args.steps if args.steps is not None else (T if getattr(args, "sampler", None) == "ddpm" else DEFAULT_STEPS)
    if steps > T:
        raise ValueError(f"--steps {steps}{'' if args.steps is not None else ' (the default)'} exceeds the model's "
                         f"T = {T}; pass --steps {T} or fewer")
    if getattr(args, "sampler", None) in ode.SOLVERS and ode.nfe(args.sampler, steps) < 1:    # iPNDM's AFS on one step
        raise ValueError(f"--sampler {args.sampler} needs --steps 2 or more: its first step takes eps(x_T) = x_T (AFS), so "
                         f"on --steps {steps} the network is never called; pass --steps 2 or more, or another --sampler")
    if args.spacing is None:       # recorded in the output and printed as the one used
        args.spacing = ode.DEFAULT_RULES.get(getattr(args, "sampler", None), "uniform")
    elif steps == T and args.spacing not in ode.STEP_RULES and args.spacing != "uniform":    # `sampling_steps`' full chain
        warnings.warn(f"--steps {T} = T runs the full chain T - 1, ..., 0 with any spacing: --spacing {args.spacing} "
                      f"changes nothing (recorded as uniform)", StepsWarning)
        args.spacing = "uniform"
    seq = ode.rule_timesteps(args.spacing, steps, abar) if args.spacing in ode.STEP_RULES else \
        sampling_steps(steps, T, args.spacing)
    if len(seq) <= DDIM_UP_TO.get(getattr(args, "sampler", None), 0):
        which = ("its one step, at clean data (t = -1), is" if len(seq) == 1 else
                 "its first step (no history yet) and its last (at clean data, t = -1) are")
        raise ValueError(f"--sampler {args.sampler} on {_count(len(seq), 'step')} takes DDIM's steps, though named "
                         f"{args.sampler}: {which} first order, DDIM's; pass --steps {DDIM_UP_TO[args.sampler] + 1} or "
                         f"more, or --sampler ddim")
    if len(seq) < steps:
        warnings.warn(f"--spacing {args.spacing} with --steps {steps} visits {len(seq)} distinct steps, so {len(seq)} network "
                      f"calls per image: the rule repeats small steps, which would change nothing (README, Timestep "
                      f"sub-sequences)", StepsWarning)
    check_first_step(abar, seq, TO_NOISE if args.command == "invert" else FROM_NOISE)
    return net, abar, device, seq


def _check_amp(amp: bool, device: torch.device) -> None:
    if amp and device.type != "cuda":
        raise ValueError(f"--amp (bf16 autocast) applies on CUDA only; this command runs on {device}: drop --amp")


def _image_shape(net):
    C, H, W = checkpoint.image_shape(net)
    return (C or 3, H or 32, W or 32)


def _check_name_length(stem: Path) -> None:
    """The longest name written beside --out, the .npz's temporary ".NAME.npz.XXXXXXXX.tmp" (`atomic_write`), must fit
    the file system's limit on one name (255 bytes on most): else the write fails after the work."""
    existing = next((p for p in (stem.parent, *stem.parent.parents) if p.is_dir()), Path("."))
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):         # no pathconf (Windows) or no answer
        limit = 255
    extra = len(".npz") + len(".." + "X" * 8 + ".tmp")
    size = len(os.fsencode(stem.name))                    # the bytes on disk, also for a name with undecodable bytes
    if size + extra > limit:
        raise ValueError(f"--out's file name is {size} bytes, and the files written beside it need "
                         f"{extra} more, over this file system's {limit}; give a name of at most {limit - extra} bytes")


def _writes_pair(cmd):
    """`sample`, `invert`, `interpolate`: cmd(args, png, npz) with the PNG and .npz that --out names, OUT.png and
    OUT.npz, or OUT itself with its .png/.npz suffix swapped (a name with other dots, e.g. eta0.5, keeps them).
    Existing files are an error unless --overwrite (no run is replaced silently), and a folder that cannot be written
    is said: both before the work (the command calls `files.refuse_existing` once its own arguments are checked, so that
    a wrong one is named first) and again under the lock when writing (`_save_pair`). If the command fails, the
    folders it made for --out are removed again."""
    @functools.wraps(cmd)
    def run(args) -> int:
        raw, out = str(args.out), Path(args.out)
        if names_a_folder(raw):
            raise ValueError(f"--out {raw!r} names a folder; give a file name, e.g. --out {out / 'samples'}")
        refuse_dotdot_through_missing(raw)
        if out.exists() and not out.is_file():      # not /dev/null.png beside a device (`--out -`: `_refuse_blank_paths`)
            raise ValueError(f"--out {raw!r} names a device or special file; this command writes a PNG and an .npz: give a "
                             f"file name, e.g. --out samples")
        if why := file_on_the_way(out.parent):                                            # else "[Errno 17] ..."
            raise ValueError(f"--out {raw!r} goes through a file: {why}; choose another --out")
        stem = out.with_suffix("") if out.suffix.lower() in (".png", ".npz") else out
        png, npz = stem.parent / (stem.name + ".png"), stem.parent / (stem.name + ".npz")
        _check_name_length(stem)
        _refuse_folders(png, npz)
        refuse_sample_folder(png.parent)
        _refuse_own_inputs(args, png, npz)
        _require_checkpoint(args.checkpoint)
        with folder_removed_on_error(png.parent, _lock_file(png)):
            with locked(_lock_file(png)):
                pass
            check_can_write(png.parent)
            return cmd(args, png, npz)
    return run


def names_a_folder(raw: str) -> bool:
    """Whether a path given for a file names a folder: one that is there, or one written as a folder ("x/", "x/.", "..";
    pathlib drops the trailing "/" and "/.", and bench_unet.py's --json x/ wrote a file named x)."""
    return Path(raw).is_dir() or raw.endswith(("/", "\\")) or os.path.basename(raw.rstrip("/\\")) in (".", "..")


def refuse_dotdot_through_missing(raw: str, option: str = "--out") -> None:
    """`--out new/../x` with no folder `new`: which file it names is known only once `new` is made, after the checks
    that refuse an --out naming this command's inputs or earlier outputs (it replaced `--input x.png` that way); and
    the folder `new`, made on the way, would be left behind empty (bench_unet.py's --json, `option`)."""
    prefix = Path()
    for part in Path(raw).parts:
        if part == ".." and not prefix.is_dir():
            raise ValueError(f"{option} {raw!r} goes up (..) out of {prefix}, which is no folder; write the path without "
                             f"it, e.g. {option} {os.path.normpath(raw)}")
        prefix = prefix / part


def _require_checkpoint(path) -> None:
    """A missing --checkpoint is said first (before "already exist", and before a folder is made for --out)."""
    if str(path).strip() and str(path) != checkpoint.OFFICIAL_NAME and not os.path.exists(path):   # "": load_model says
        raise FileNotFoundError(f"--checkpoint {unresolved_link(path) or f'{path} does not exist'}; pass {checkpoint.LOADABLE}")


def _refuse_own_inputs(args, *outputs: Path) -> None:
    """--overwrite replaces earlier outputs, never this command's own --input, --latents or --checkpoint."""
    run_ckpt = Path(args.checkpoint) / "ckpt.pt"         # what a run folder given as --checkpoint loads
    inputs = [*(getattr(args, "input", None) or []), getattr(args, "latents", None), args.checkpoint, run_ckpt]
    for p in map(Path, filter(None, inputs)):
        for out in outputs:
            if out.exists() and p.exists() and os.path.samefile(p, out):
                raise ValueError(f"--out {args.out} would write {out}, which is this command's input {p}; choose "
                                 f"another --out")


def _lock_file(png: Path) -> Path:
    # ".pair": `--out RUN/train` must not wait on train's own .train.lock (nor lab's .lab.lock, reproduce's .table1.lock)
    return png.parent / f".{png.stem}.pair.lock"


def _refuse_folders(png: Path, npz: Path) -> None:
    for p in (png, npz):
        if p.is_dir():
            raise IsADirectoryError(f"{p} is a folder, so --out cannot write it; choose another --out")


def _check_png_grid(n: int, shape, nrow, scale: int, fewer: str = "--n") -> None:
    """Before the work: the PNG grid of n images of `shape` at `scale` must be one that Pillow opens without a
    decompression-bomb warning (`Image.MAX_IMAGE_PIXELS`, 89 million pixels; `--input` reads PNGs with Pillow too).
    `fewer`: how the command is given fewer images."""
    from PIL import Image

    H, W, _ = grid_size(n, shape[-2], shape[-1], nrow)
    pixels = H * W * scale ** 2
    if pixels > Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"the PNG grid of {n} images at --scale {scale} would have {pixels:,} pixels, more than the "
                         f"{Image.MAX_IMAGE_PIXELS:,} that Pillow opens without a warning; lower --scale or {fewer}")


def _save_pair(png: Path, npz: Path, images: torch.Tensor, nrow, scale: int, overwrite: bool, **arrays) -> None:
    """Write the PNG grid and the .npz beside it as one pair: under a lock, so two commands writing the
    same --out take turns (the second refuses unless --overwrite), and with the PNG's sha256 recorded in the
    .npz (`png_sha256`). The PNG is encoded in memory first, and the two files are written as one (`replaced_together`):
    a full disk or an unwritable name at either leaves the earlier pair as it was; a Ctrl-C during the two writes waits
    until both are done."""
    with locked(_lock_file(png)):
        refuse_existing(overwrite, png, npz)
        _refuse_folders(png, npz)
        data = grid_png(images, nrow=nrow, scale=scale)
        with interrupts_deferred(), replaced_together(png.parent, [npz, png]):
            atomic_write(npz, lambda f: np.savez(f, **arrays, png_sha256=hashlib.sha256(data).hexdigest()))
            atomic_write(png, lambda f: f.write(data))


# --------------------------------------------------------------------------- subcommands

def cmd_train(args) -> int:
    sets = [_expand_path_setting(kv) for kv in args.set or []]
    last = {key.strip(): value.strip() for key, _, value in (kv.partition("=") for kv in sets)}    # the last one counts
    flags = {"out": args.out, "device": args.device, "bf16": args.bf16, "compile": args.compile,
             "progress": False if args.no_progress else None}
    for flag, value in flags.items():
        if value is None or flag not in last:
            continue
        boolean = isinstance(value, bool)
        if (_parse_value(flag, last[flag], value) != value if boolean else
                os.path.normpath(last[flag]) != os.path.normpath(value)):
            given = f"--{'' if value else 'no-'}{flag}" if boolean else f"--{flag} {value}"
            raise ValueError(f"{given} and --set {flag}={last[flag]} contradict each other; give one")
    if "progress" not in last:                         # a display setting of this command, not of the run: a resume
        flags["progress"] = not args.no_progress       # shows the bar unless told otherwise here
    overrides = sets + [f"{key}={value}" for key, value in flags.items() if value is not None]
    out = Path(args.out or last.get("out") or PRESETS[args.preset or "digits"].get("out", TrainConfig.out))
    if args.resume and args.overwrite:                 # before anything is said about the run's settings
        raise ValueError("--resume and --overwrite exclude each other: continue the run, or start it again")
    if args.resume and (out / "ckpt.pt").exists():     # the run's own settings, changed only where asked
        if args.preset is not None:
            raise ValueError("--preset does not apply to --resume: the run continues with its saved settings; "
                             "change single ones with --set")
        config, changed = resumed_config(out, overrides + [f"out={out}"])
        for line in changed:
            print(f"resume: {line} (--set)")
    else:
        config = make_config(args.preset or "digits", overrides)
    if "sample_every" in last and config.sample_every and not config.n_samples:   # (sample_steps: how grids would be drawn)
        raise ValueError(f"--set sample_every={config.sample_every} draws no grid with n_samples = 0: give n_samples > 0, "
                         f"or leave sample_every out")
    if args.bf16 and devices.resolve(config.device).type != "cuda":
        raise ValueError(f"--bf16 (autocast) applies on CUDA only; this run is on {devices.resolve(config.device)}: "
                         f"drop --bf16")
    out = train(config, resume=args.resume, overwrite=args.overwrite, on_start=lambda step: _warmup_note(config))
    if devices.rank_world()[0] == 0:
        print(f"done: {out / 'ckpt.pt'}")
    return 0


def _warmup_note(config: TrainConfig) -> None:
    """A warmup as long as the run never reaches its learning rate: said once the run starts (`train`'s on_start), not
    before an error about its folder."""
    if config.warmup >= config.steps and config.warmup:
        decays = "" if config.lr_decay == "none" else ", and never decays"
        print(f"note: warmup = {config.warmup} >= steps = {config.steps}: the learning rate rises for the whole run, to "
              f"{config.steps / config.warmup:.0%} of lr = {config.lr:g}{decays} (--set warmup=K to change)")


def _expand_path_setting(kv: str) -> str:
    """--set out=~/runs/x and data_root=~/data: the shell expands no ~ after an = sign."""
    key, eq, value = kv.partition("=")
    return f"{key}={os.path.expanduser(value.strip())}" if eq and key.strip() in ("out", "data_root") else kv


def _sampler_kwargs(args) -> dict:
    """`sample_indices` keywords for --sampler / --eta / --variance; a contradiction is an error."""
    if args.eta is not None and args.sampler != "ddim":
        raise ValueError(f"--eta applies to --sampler ddim only (got --sampler {args.sampler}); "
                         f"for DDPM's variances use --variance small|large")
    if args.variance is not None and args.sampler != "ddpm":
        raise ValueError(f"--variance applies to --sampler ddpm only (got --sampler {args.sampler})")
    if args.lower_order_final and args.sampler != "dpm_solver_pp_3m":
        raise ValueError(f"--lower-order-final applies to --sampler dpm_solver_pp_3m only (got --sampler {args.sampler})")
    if args.lower_order_final and args.steps is not None and args.steps <= 3:
        raise ValueError(f"--lower-order-final changes nothing below 4 steps (got --steps {args.steps}): the step before "
                         f"the last is already of order 2 or lower; drop it")
    if args.sampler == "ddim":
        return dict(eta=0.0 if args.eta is None else args.eta, clip_x0=args.clip)
    if args.sampler == "ddpm":   # DDPM's posterior is DDIM with η = 1; its large variance is the σ̂ row
        return dict(eta=SIGMA_HAT if args.variance == "large" else 1.0, clip_x0=args.clip)
    if args.clip:
        raise ValueError(f"--clip applies to ddim and ddpm, not to the ODE solver {args.sampler}")
    return dict(solver=args.sampler, solver_options={"lower_order_final": True} if args.lower_order_final else None)


def _model_record(args, net) -> dict:
    """What a result's .npz records of the model that made it: the checkpoint (a path made absolute), EMA or raw
    weights, and the weights' sha256 (`interpolate --latents` compares it)."""
    name = str(args.checkpoint)
    return dict(checkpoint=name if name == checkpoint.OFFICIAL_NAME else str(Path(name).resolve()), ema=not args.no_ema,
                weights_sha256=checkpoint.weights_sha256(net))


@_writes_pair
def cmd_sample(args, png: Path, npz: Path) -> int:
    net, abar, device, seq = _model_for(args)
    kwargs = _sampler_kwargs(args)
    shape, n, bs = _image_shape(net), args.n, args.batch_size
    _check_png_grid(n, shape, args.nrow, args.scale)
    refuse_existing(args.overwrite, png, npz)
    bar, callback = progress(len(seq) * -(-n // bs), f"sample ({args.sampler})", not args.no_progress)
    t0 = time.perf_counter()
    with bar:
        x0 = torch.cat([sample_indices(net, range(i, min(i + bs, n)), shape, abar, seq, seed=args.seed, device=device,
                                       amp=args.amp, callback=callback, check_range=False, **kwargs).float().cpu()
                        for i in range(0, n, bs)])
    check_data_range(x0, abar, seq, "--clip" if args.sampler in ("ddim", "ddpm") else None)   # once, over all batches
    seconds = time.perf_counter() - t0
    _save_pair(png, npz, x0, args.nrow, args.scale, args.overwrite, samples=x0.numpy(),
               x_T=latents(args.seed, range(n), shape).numpy(),
               seed=args.seed, steps=len(seq), spacing=args.spacing, sampler=args.sampler,
               eta=str(kwargs.get("eta", "")), lower_order_final=args.lower_order_final, clip=bool(args.clip),
               **_model_record(args, net))
    capped = f" (--nrow {args.nrow} is more than --n {n}: the grid is one row of {n})" if (args.nrow or 0) > n else ""
    print(f"{_count(n, 'sample')} ({args.sampler}, {_count(len(seq), 'step')}, {args.spacing}) in {seconds:.1f} s -> {png}, "
          f"{npz}{capped}")
    return 0


def _refuse_repeated_inputs(paths) -> None:
    """`invert --input a.png a.png` (or ./a.png, a link to it) inverted the one image twice, and its output held two rows
    that read as two inputs."""
    seen = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:                        # missing, a dangling link: `data.require_files` names it
            continue
        if (key := (st.st_dev, st.st_ino)) in seen:
            same = f"{p}" if str(p) == str(seen[key]) else f"{seen[key]} and {p}, one file,"
            raise ValueError(f"--input lists {same} twice; give each file once")
        seen[key] = p


@_writes_pair
def cmd_invert(args, png: Path, npz: Path) -> int:
    _refuse_repeated_inputs(args.input)
    net, abar, device, seq = _model_for(args)
    x0 = data.read_images(args.input, _image_shape(net)).to(device)
    _check_png_grid(2 * len(x0), x0.shape, len(x0), args.scale, fewer="pass fewer images")
    refuse_existing(args.overwrite, png, npz)
    encode, decode, names = INVERT_SAMPLERS[args.sampler]
    bar, callback = progress(2 * len(seq), "invert + decode", not args.no_progress)
    eps = checkpoint.eps_fn(net, args.amp)
    with bar:
        x_T = encode(eps, x0, abar, seq, callback=callback)
        recon = decode(eps, x_T, abar, seq, callback=callback)
    mse = ((recon - x0) ** 2).flatten(1).mean(1)
    _save_pair(png, npz, torch.cat([x0, recon]).cpu(), x0.shape[0], args.scale, args.overwrite, x_T=x_T.cpu().numpy(),
               x0=x0.cpu().numpy(), recon=recon.cpu().numpy(), mse=mse.cpu().numpy(), steps=len(seq),
               spacing=args.spacing, sampler=args.sampler, inputs=np.array([str(Path(p).resolve()) for p in args.input]),
               **_model_record(args, net))
    calls = sum(ode.nfe(name, len(seq)) for name in names)
    method = "DDIM" if args.sampler == "ddim" else "Heun"
    print(f"inverted {_count(x0.shape[0], 'image')} with {_count(len(seq), method + ' step')} ({_count(calls, 'network call')} "
          f"per image, there and back); reconstruction MSE {float(mse.mean()):.3g} (mean) -> {npz}, {png} "
          f"(top: input, bottom: reconstruction)")
    return 0


RECORD = ("steps", "spacing", "sampler", "eta", "clip", "lower_order_final", "weights_sha256")


def _record(npz_path) -> dict[str, str]:
    """The settings in RECORD that an .npz this command line wrote records, as text, read in one opening of the file.
    Arrays and object arrays (other tools: np.load refuses those without pickles) are not records and are left out."""
    record = {}
    with np.load(npz_path) as z:
        for key in set(RECORD) & set(z.files):
            try:
                value = z[key]
            except ValueError:             # "Object arrays cannot be loaded when allow_pickle=False", naming neither
                continue
            if value.ndim == 0:            # bytes as text, not "b'heun'"
                record[key] = value.item().decode("utf-8", "replace") if value.dtype.kind == "S" else str(value)
    return record


LATENT_BOUND = 20    # |x_T| for x_T ~ N(0, I) exceeds 9 with probability below 1e-18 per value


def _made_with_noise(record: dict) -> str | None:
    """"ddpm samples (eta 1.0)" where a latents file's record (`_record`) says its x_T began a sampler that drew new noise
    at every step (DDPM, DDIM with eta > 0), so that no DDIM decoding gives its samples back; else None (eta 0, the ODE
    solvers, `invert`)."""
    sampler, eta = record.get("sampler"), record.get("eta")
    if sampler == "ddpm" or (sampler == "ddim" and (eta or "0").strip("0.") != ""):     # "0.0" is eta 0
        return f"{sampler} samples (eta {eta})"
    return None


def _number_of_steps(recorded: str) -> int | None:
    """A recorded `steps` as a number of steps, or None where it is none: "3", and "3.0" as another tool may store it."""
    try:
        value = float(recorded)
    except ValueError:
        return None
    return int(value) if value.is_integer() and value >= 1 else None


def _settings_of_latents(args) -> dict:
    """`interpolate --latents`: latents decode to the images they came from only with the sampler and on the grid that
    made them (recorded by `invert` and `sample`). What is not given is taken from the file, and said; other settings
    are warned of. Returns the file's record ({} without a readable .npz: said later, with the file's other checks)."""
    if not args.latents or Path(args.latents).suffix.lower() != ".npz" or not Path(args.latents).is_file():
        return {}
    try:
        record = _record(args.latents)
    except Exception:                              # not an .npz, damaged: `data.npz_array` says what it is, below
        return {}
    if _made_with_noise(record):                   # no sampler or grid decodes those: warned of later
        return record
    steps, spacing, sampler = record.get("steps"), record.get("spacing"), record.get("sampler")
    taken, other = [], []
    if sampler is not None and sampler not in INTERPOLATE_SAMPLERS:   # another tool's name, "heun ": no decoder is the file's
        warnings.warn(f"{args.latents} records sampler {sampler!r}, not one that interpolate decodes with "
                      f"({', '.join(INTERPOLATE_SAMPLERS)}): decoded by {args.sampler or 'ddim'}, its latents may give other "
                      f"images than those it made" + ("" if args.sampler else "; pass --sampler to choose the decoder"),
                      LatentsWarning)
    elif sampler is not None:
        if args.sampler is None:
            args.sampler = sampler
            taken.append(f"--sampler {sampler}")
        elif args.sampler != sampler:
            other.append(f"--sampler {sampler}")
    S = None if steps is None else _number_of_steps(steps)      # int("3.5") was "invalid literal", naming no file
    if steps is not None and (S is None or spacing not in schedule.SPACINGS + ode.STEP_RULES):
        warnings.warn(f"{args.latents} records steps {steps!r} with spacing {spacing!r}, not a number of steps (1, 2, ...) "
                      f"with a --spacing choice: not used; pass --steps and --spacing as the latents were made",
                      LatentsWarning)
    elif steps is not None:
        if args.steps is None and args.spacing is None:
            args.steps, args.spacing = S, spacing
            taken.append(f"--steps {S} --spacing {spacing}")
        elif (args.steps or DEFAULT_STEPS, args.spacing or "uniform") != (S, spacing):
            other.append(f"--steps {S} --spacing {spacing}")
    if taken:
        print(f"{' '.join(taken)}: what made {args.latents}")
    if other:
        warnings.warn(f"{args.latents} was made with {' '.join(other)}: with other settings its latents decode to other "
                      f"images than those (leave the options out to use the file's)", LatentsWarning)
    return record


def _decoder_options(args, record: dict, S: int) -> dict:
    """The keywords that decode --latents as the file's sampler made them, where interpolate decodes with that sampler
    on S steps: dpm_solver_pp_3m's --lower-order-final (from S = 4 on, where it changes a step) and DDIM's --clip
    (recorded by `sample` as True or False; another value is warned of and not used); else none."""
    option = {"ddim": "clip", "dpm_solver_pp_3m": "lower_order_final"}.get(args.sampler)
    if option is None or record.get("sampler") != args.sampler or option not in record:
        return {}
    if record[option] not in ("True", "False"):
        warnings.warn(f"{args.latents} records {option} {record[option]!r}, not True or False: not used, decoded without "
                      f"--{option.replace('_', '-')}", LatentsWarning)
        return {}
    if record[option] == "False" or (option == "lower_order_final" and S <= 3):
        return {}
    return {"clip_x0" if option == "clip" else option: True}


@_writes_pair
def cmd_interpolate(args, png: Path, npz: Path) -> int:
    record = _settings_of_latents(args)
    args.sampler = args.sampler or "ddim"
    net, abar, device, seq = _model_for(args)
    if args.index is not None and not args.latents:
        raise ValueError("--index picks two latents of a --latents file; without --latents use --seeds A B")
    if args.latents and args.seeds is not None:
        raise ValueError("--latents and --seeds exclude each other: interpolate between two saved latents or between "
                         "the latents of two seeds")
    if args.latents:
        data.require_files([args.latents], "pass the .npz written by `invert` or `sample`")
        _, x_T = data.npz_array(args.latents, ("x_T",), "pass the .npz written by `invert` or `sample`")
        if x_T.dtype.kind != "f" or x_T.dtype.itemsize > 8:
            raise ValueError(f"{args.latents}: x_T must be float16, float32 or float64 latents, got {x_T.dtype}; "
                             f"pass the .npz written by `invert` or `sample`")
        lat = torch.as_tensor(x_T, dtype=torch.float32)
        if lat.ndim != 4 or tuple(lat.shape[1:]) != _image_shape(net):     # (64,) and a scalar read as latents of shape ()
            held = f"latents of shape {tuple(lat.shape[1:])}," if lat.ndim == 4 else \
                f"an x_T of shape {tuple(lat.shape)}, not a stack of latents (N, C, H, W),"
            raise ValueError(f"{args.latents} holds {held} but the model makes {_image_shape(net)} images; use latents "
                             f"from this model's `invert` or `sample`")
        made_by = record.get("weights_sha256")
        if made_by is not None and made_by != checkpoint.weights_sha256(net):
            warnings.warn(f"{args.latents} records latents of another model (weights sha256 {made_by[:12]}, this one "
                          f"{checkpoint.weights_sha256(net)[:12]}): they decode to other images here", LatentsWarning)
        if noisy := _made_with_noise(record):
            warnings.warn(f"{args.latents} holds the x_T of {noisy}, which drew new noise at every step: DDIM's "
                          f"eta = 0 decodes these latents to other images than those samples; interpolate the latents "
                          f"of `sample` with eta 0, an ODE solver, or `invert`", LatentsWarning)
        if len(lat) < 2 and args.index is None:
            raise ValueError(f"{args.latents} holds {_count(len(lat), 'latent')}; interpolation takes "
                             f"two: invert or sample two images or more")
        i, j = args.index or (0, 1)
        if not (0 <= i < len(lat) and 0 <= j < len(lat)):
            raise ValueError(f"--index must be two indices in 0..{len(lat) - 1}, got {i} {j}")
        if not bool(torch.isfinite(lat[[i, j]]).all()) or float(lat[[i, j]].abs().max()) > LATENT_BOUND:
            raise ValueError(f"{args.latents}: x_T[{i}] and x_T[{j}] must be latents (about N(0, I)), got values up to "
                             f"{float(lat[[i, j]].abs().max()):.3g}; pass the .npz written by `invert` or `sample`")
        z0, z1 = lat[i:i + 1].to(device), lat[j:j + 1].to(device)
    else:   # latent 0 of each seed: the first image of `sample --seed A` and of `sample --seed B`
        z0, z1 = (latents(s, [0], _image_shape(net), device) for s in (args.seeds or (0, 1)))
    if torch.equal(z0, z1):
        raise ValueError("the two latents are the same (" + (f"--index {i} {j}" if args.latents else
                         f"--seeds {args.seeds[0]} {args.seeds[1]}") + "): interpolation needs two different ones")
    _check_png_grid(args.n, z0.shape, args.n, args.scale)
    refuse_existing(args.overwrite, png, npz)
    lam = torch.linspace(0, 1, args.n)
    z = slerp(z0, z1, lam.to(device))
    options = _decoder_options(args, record, len(seq))
    decode = functools.partial(ddim_sample, **options) if args.sampler == "ddim" else \
        functools.partial(ode.solve, args.sampler, **options)
    bar, callback = progress(len(seq), "interpolate", not args.no_progress)
    with bar:
        x0 = check_data_range(decode(checkpoint.eps_fn(net, args.amp), z, abar, seq, callback=callback),
                              abar, seq, clip=None).float().cpu()
    source = (dict(latents=str(Path(args.latents).resolve()), index=np.array(args.index or (0, 1))) if args.latents else
              dict(seeds=np.array(args.seeds or (0, 1))))
    _save_pair(png, npz, x0, args.n, args.scale, args.overwrite, samples=x0.numpy(), x_T=z.cpu().numpy(), lam=lam.numpy(),
               steps=len(seq), spacing=args.spacing, sampler=args.sampler, clip=bool(options.get("clip_x0")),
               lower_order_final=bool(options.get("lower_order_final")), **source, **_model_record(args, net))
    how = {"clip_x0": " (clipping x0)", "lower_order_final": " (lower order final)"}
    print(f"{args.n} images along slerp(z0, z1, λ), decoded by {args.sampler}{''.join(how[k] for k in options)} -> {png}, {npz}")
    return 0


def _count(n: int, noun: str) -> str:
    """ "1 step", "2 steps" """
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _csv_list(text: str, kind, name: str):
    """`--steps 10,20,50` as [10, 20, 50] (kind int; a value that is not one is said), or `--etas` as its texts (str)."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of integers, e.g. 10,20,50; got {text!r}") from None
    if not values:
        raise ValueError(f"{name} must list at least one value, got {text!r}")
    return values


def cmd_reproduce(args) -> int:
    only = {"table1": {"--etas": args.etas, "--n-samples": args.n_samples, "--features": args.features, "--seed": args.seed},
            "table2": {"--n-images": args.n_images}}
    other = "table2" if args.table == "table1" else "table1"
    given = [flag for flag, value in only[other].items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to `reproduce {other}` only")
    grid = {}                                          # else the paper's, the library's defaults
    if args.steps is not None:
        grid["S_list"] = _csv_list(args.steps, int, "--steps")
    if args.etas is not None:                          # read before the folder: a bad η is named before "already exist"
        grid["eta_list"] = [check_eta(e) for e in _csv_list(args.etas, str, "--etas")]
    _require_checkpoint(args.checkpoint)
    out = Path(args.out or f"runs/{args.table}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose another --out")
    refuse_sample_folder(out)
    # A finished table is a result (table2's is all of its work); a rerun replaces it only when asked. Rank 0 checks
    # under a lock that the whole run holds, so a second command on the same --out refuses at once.
    tables_there = (out / f"{args.table}.md", out / f"{args.table}.csv")
    hint = " (table1's samples there are reused when their settings match)" if args.table == "table1" else ""
    if devices.rank_world()[0] != 0:
        refuse_existing(args.overwrite, *tables_there, hint=hint)
        return _reproduce(args, out, grid)
    lock_file = out / f".{args.table}.lock"
    check_out_folder(out, "the tables' folder")
    with folder_removed_on_error(out, lock_file):      # `locked` makes the folder (or says why it cannot)
        with locked(lock_file, busy=f"{out} is in use by another `reproduce {args.table}`; wait for it to finish or "
                                    f"choose another --out"):
            refuse_existing(args.overwrite, *tables_there, hint=hint)
            check_can_write(out)
            return _reproduce(args, out, grid)


def _reproduce(args, out: Path, grid: dict) -> int:
    rank, _, device, started = devices.setup_distributed(args.device)
    try:
        _check_amp(args.amp, device)
        net, abar = checkpoint.load_model(args.checkpoint, device, use_ema=not args.no_ema)
        if rank == 0:
            _note_if_training(args.checkpoint, net)
        in_ch, res = _image_shape(net)[:2]
        trained_on = getattr(net, "dataset", None)
        if in_ch == 3 and (res != 32 or trained_on not in (None, "cifar10")):
            raise ValueError(f"reproduce compares an RGB model with CIFAR-10 (32x32), and this one was trained on "
                             f"{trained_on or 'other data'} at {res}x{res}; use it with `sample`, or reproduce with a "
                             f"CIFAR-10 or a one-channel digits model")
        reads_cifar = in_ch == 3 and (args.table == "table2" or args.features == "random")
        if args.data_root is not None and not reads_cifar:
            raise ValueError("--data-root does nothing here: it is where CIFAR-10 is read, by table2 of an RGB model and by "
                             "table1 --features random of one (inception uses torch-fidelity's statistics); drop it")
        common = dict(alpha_bar=abar, batch_size=args.batch_size, device=device, amp=args.amp,
                      progress=not args.no_progress, **grid)
        if args.table == "table1":
            features = args.features or "inception"
            feature_fn, reference = fid.reference_for(features, in_ch, res, args.data_root)
            rows = tables.reproduce_table1(
                net, out, n_samples=args.n_samples or 50_000, spacing=args.spacing or "quad", shape=(in_ch, res, res),
                feature_fn=feature_fn, reference=reference, seed=args.seed or 0, features=fid.FEATURE_NAMES.get(features),
                **common)
        else:
            images = (data.load_cifar10(args.data_root, train=False)[0] if in_ch == 3 else data.load_digits(res)[0])
            rows = tables.reproduce_table2(net, out, images=images, n_images=args.n_images,
                                           spacing=args.spacing or "uniform", **common,
                                           source="CIFAR-10 test images" if in_ch == 3 else
                                           "digits, those the model trained on (no held-out set)")
        if rows and rank == 0:
            table = out / f"{args.table}.md"
            print(table.read_text(encoding="utf-8"), end="")
            print(f"-> {table}, {table.with_suffix('.csv')}")
    finally:
        if started:
            torch.distributed.destroy_process_group()
    return 0


def cmd_lab(args) -> int:
    if args.image_d == 0 and args.image_n is not None:
        raise ValueError("--image-n does nothing with --image-d 0, which skips the image-like table; drop one of them")
    given = {} if args.image_n is None else {"image_n": args.image_n}
    lab.check_sizes(args.n, args.image_d, lab.IMAGE_N if args.image_n is None else args.image_n, flags=True)
    return _tables_in(args, lambda: lab.main(out=args.out, n=args.n, image_d=args.image_d, spacing=args.spacing,
                                             seed=args.seed, progress=not args.no_progress, **given), lab.outputs_in)


def cmd_demo(args) -> int:
    if args.skip_train:
        given = [flag for flag, value in (("--train-steps", args.train_steps), ("--n", args.n)) if value is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} do{'es' if len(given) == 1 else ''} nothing with --skip-train, "
                             f"which runs only the exact-score lab")
    return _tables_in(args, lambda: demo.main(args), lab.outputs_in if args.skip_train else demo.outputs_in,
                      hint=" (the trained model is cached and reused)")


def _tables_in(args, run, outputs_in, hint: str = "") -> int:
    """`lab` and `demo`: refuse to replace an earlier run's files without --overwrite, under a lock that the whole
    run holds (a second command on the same --out refuses at once). With --overwrite the earlier run's files are set
    aside first (in .previous-<pid>), so that old and new never lie side by side (e.g. the old table1_d1024.png beside
    a new table1.png), and put back if the run fails: a run that fails (a size that does not fit in memory, Ctrl-C)
    removes what it wrote and leaves the folder as it found it. A folder that cannot be written is said before the
    work; one the command made is removed again if it fails."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder for table1.txt and the figures")
    refuse_sample_folder(out)
    lock_file = out / ".lab.lock"
    with folder_removed_on_error(out, lock_file), locked(lock_file, busy=f"{out} is in use by another `lab` or `demo`; "
                                                                         f"wait for it to finish or choose another --out"):
        check_nothing_set_aside(out)
        earlier = outputs_in(out)
        refuse_existing(args.overwrite, *earlier, hint=hint)
        with replaced_together(out, earlier, written=lambda: outputs_in(out)):
            run()
    return 0


# --------------------------------------------------------------------------- parser

class Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default after its help text (unless the text gives it); epilogs printed as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def int_in(low: int, high: int | None = None):
    """An argparse type: an integer in low..high, with a message that gives the range."""
    allowed = int_range(low, high)

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if v < low or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return v
    return parse


def _path_to_write(blank: str, give: str):
    """An argparse type for a path option of the scripts that refuses a blank value (`--cache "$UNSET"`), which `blank`
    says what it would be, and "-", standard output to many tools (as `main` refuses `--out -`): `give` says what to
    give instead."""
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"is blank ({text!r}), which {blank}; {give}")
        if text.strip() == "-":
            raise argparse.ArgumentTypeError(f"{text!r} names standard output, but this writes files there; {give}")
        return text
    return parse


# A blank folder is the current folder to pathlib; a blank file name (bench_unet.py --json) was read as not given, and
# the results written nowhere.
folder = _path_to_write("would be the current folder", "give a folder")
file_name = _path_to_write("would write no file", "give a file name")


class Distinct(argparse._StoreAction):
    """An argparse action for a list option (nargs="+"): a value given twice is an error (`checks.check_distinct`),
    said as argparse says a bad value. Given twice it would be computed twice: a row printed twice, or pooled twice
    with standard errors too small."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            check_distinct(values, option_string)
        except ValueError as e:
            raise argparse.ArgumentError(None, str(e)) from None
        super().__call__(parser, namespace, values, option_string)


_positive, _scale, _seed = int_in(1), int_in(1, 32), int_in(0, 2 ** 63 - 1)
_seed32 = int_in(0, 2 ** 32 - 1)     # seeds torch's CPU generator directly, which keeps 32 bits (TrainConfig.seed, lab)


def _eta(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}") from None
    if not (np.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0 = DDIM, 1 = DDPM's posterior), got {text}")
    return v


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _debug(p)


def _debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the Python traceback of an error (also DDIMLAB_DEBUG=1)")


def _model_args(p: argparse.ArgumentParser, out_default: str, sampler: bool = False) -> None:
    """The options of the commands that run a model; `sampler`: the command also has --sampler (`sample`)."""
    p.add_argument("--checkpoint", required=True,
                   help="a ddimlab ckpt.pt or run folder, the official DDPM model-790000.ckpt (or `ddpm-cifar10` to "
                        "download it once), or a diffusers UNet2DModel folder")
    p.add_argument("--steps", type=_positive, default=None,
                   help=f"number of sampling steps S (default: {DEFAULT_STEPS}"
                        + ("; for --sampler ddpm all T steps)" if sampler else ")"))
    p.add_argument("--spacing", choices=schedule.SPACINGS + ode.STEP_RULES, default=None,
                   help="timestep sub-sequence (README, Timestep sub-sequences; logsnr, karras, power2/3: notebook 08 §5; "
                        "default: uniform" + ("; for --sampler, the solver's own: logsnr for dpm_solver_pp_2m/3m and "
                                              "unipc_2/3, power3 for ipndm, ipndm_vs and deis_tab)" if sampler else ")"))
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, mps")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the network on CUDA")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights of a ddimlab checkpoint, not the EMA")
    p.add_argument("--scale", type=_scale, default=2, help="pixel enlargement of the PNG grid, 1..32")
    p.add_argument("--out", default=out_default, help="output path: OUT.png and OUT.npz are written")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _common(p)


def _train_epilog() -> str:
    """The --set keys with each preset's value (`train --help`)."""
    names = sorted(PRESETS)
    configs = [make_config(name) for name in names]
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    width = max(map(len, fields))
    lines = ["--set keys (TrainConfig fields) and their values in each preset:",
             f"  {'key':<{width}}  " + "".join(f"{name:<16}" for name in names)]
    lines += [f"  {key:<{width}}  " + "".join(f"{str(getattr(c, key)):<16}" for c in configs) for key in fields]
    return "\n".join(lines)


GIVEN, REPEATED = "_options_given", "_options_repeated"     # the namespace's record (`_Noted`), removed after parsing


def _note_repeated(action, namespace, value, option_string) -> None:
    """An option given a second time with another value (`--n 4 ... --n 64`, `--checkpoint A ... --checkpoint B`,
    `--bf16 ... --no-bf16`: a command line edited or built from a base one) ran with the last one without a word; the
    last still counts (as in most command lines, and for scripts that append their changes), and now `main` says so.
    The same value twice contradicts nothing."""
    given, now = namespace.__dict__.setdefault(GIVEN, {}), f"{option_string or ''} {_shown(value)}".strip()
    if action.dest in given and given[action.dest][0] != value:
        namespace.__dict__.setdefault(REPEATED, []).append(f"{given[action.dest][1]}, then {now}")
    given[action.dest] = (value, now)


def _shown(value) -> str:
    return "" if isinstance(value, bool) else " ".join(map(str, value)) if isinstance(value, list) else str(value)


class _Noted(argparse._StoreAction):
    """The store action, recording each value given (`_note_repeated`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        _note_repeated(self, namespace, values, option_string)
        super().__call__(parser, namespace, values, option_string)


class _NotedBoolean(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        _note_repeated(self, namespace, not option_string.startswith("--no-"), option_string)
        super().__call__(parser, namespace, values, option_string)


class _Parser(argparse.ArgumentParser):
    """Options with a value given twice are recorded (`_Noted`); an option of another subcommand is named as that one's;
    a usage error is two lines, not the whole usage first; no option is taken from a prefix of its name (argparse's
    abbreviations: `train --over` was `--overwrite`, and one letter more or less picked another option)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **{"allow_abbrev": False, **kw})
        self.register("action", None, _Noted)
        self.register("action", "store", _Noted)

    def error(self, message):
        """An unknown option, a missing value, a choice not offered: what was wrong, and where the options are listed
        (exit status 2, argparse's for a usage error)."""
        listed = "commands" if self._subparsers is not None else "options"
        self.exit(2, f"{self.prog}: error: {message}{self._dash_value_hint(message)}\n(`{self.prog} --help` lists the "
                     f"{listed})\n")

    def _dash_value_hint(self, message: str) -> str:
        """argparse reads a value that begins with '-' (`--out -dash.png`) as an option, and says only "expected one
        argument": the way to give it (not where what follows is one of the options: the value was left out)."""
        option = re.fullmatch(r"argument (\S+?)(?:/\S+)?: expected (one|at least one) argument", message)
        action = option and self._option_string_actions.get(option[1])
        argv = getattr(self, "_argv", [])
        given = next(((a, b) for a, b in zip(argv, argv[1:]) if action and a in action.option_strings and b.startswith("-")
                      and b.partition("=")[0] not in self._option_string_actions), None)
        if given is None:
            return ""
        return (" (a value that begins with '-' is read as an option: write " +      # nargs="+" takes no `=` value
                (f"{given[0]}={given[1]})" if option[2] == "one" else f"{given[0]} ./{given[1]} for a file of that name)"))

    def parse_known_args(self, args=None, namespace=None):
        self._argv = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        if self._subparsers is None or not extras:
            return namespace, extras
        commands = next(a for a in self._subparsers._group_actions if isinstance(a, argparse._SubParsersAction)).choices
        here = commands.get(getattr(namespace, "command", None), self)
        owners = {}
        for flag in (e.partition("=")[0] for e in extras if e.startswith("--")):
            owners[flag] = [name for name, p in commands.items() if p is not here and flag in p._option_string_actions]
        said = "; ".join(f"{flag} is an option of {', '.join(names[:-1]) + ' and ' if names[:-1] else ''}{names[-1]}"
                         for flag, names in owners.items() if names)
        here.error(f"unrecognized arguments: {' '.join(extras)}" + (f" ({said})" if said else ""))


def build_parser(prog: str = "ddimlab") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, formatter_class=Formatter,
                                     description="DDPM and DDIM: train, sample, invert, interpolate, reproduce the "
                                                 "DDIM paper's tables.")
    parser.add_argument("--version", action="version", version=f"ddimlab {__version__}")
    _debug(parser)                                  # before the subcommand, or after it (_common)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add(name, func, help_, **kw):
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=Formatter, **kw)
        p.set_defaults(func=func)
        return p

    p = add("train", cmd_train, "train a DDPM UNet with L_simple", epilog=_train_epilog())
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="starting configuration (default: digits; not with --resume, which uses the run's own)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a TrainConfig field (repeatable; a key set twice takes its last value, so a script can "
                        "append its changes to base settings), e.g. --set lr=5e-4 --set ch_mult=1,2,2; keys below")
    p.add_argument("--out", help="run folder (default: the preset's out)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its ckpt.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out that holds a run (the old one is set aside until the first checkpoint)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 (default: the preset's, auto)")
    p.add_argument("--bf16", action=_NotedBoolean, default=None,
                   help="bf16 autocast on CUDA (default: the preset's, on)")
    p.add_argument("--compile", action=_NotedBoolean, default=None,
                   help="torch.compile the network (default: the preset's, off)")
    _common(p)

    p = add("sample", cmd_sample, "draw samples with DDIM (any eta), DDPM, or an ODE solver")
    _model_args(p, "samples", sampler=True)
    p.add_argument("--sampler", "--solver", choices=("ddim", "ddpm") + ode.SOLVERS, default="ddim",
                   help="ddim (eq. 12 with --eta), ddpm (its whole chain unless --steps; --variance), or an ODE solver "
                        "(notebook 08: ipndm_vs is iPNDM with variable-step weights in sigma)")
    p.add_argument("--eta", type=_eta, default=None, help="ddim only: 0 deterministic, 1 DDPM's posterior variance "
                   "(default: 0)")
    p.add_argument("--variance", choices=("small", "large"), default=None,
                   help="ddpm only: posterior beta tilde (small) or beta (large: the DDIM paper's sigma hat, "
                        "whose table row, like `reproduce`, also clips x0: add --clip for that) (default: small)")
    p.add_argument("--clip", action="store_true", help="clip the predicted x0 to [-1, 1] (ddim, ddpm)")
    p.add_argument("--lower-order-final", action="store_true",
                   help="dpm_solver_pp_3m only: take the step before the last at second order, at --steps 4 or more "
                        "(diffusers does so by default below 15). Notebook 08 §7, exact scores: 1.8 to 2.3 times closer "
                        "to the ODE's solution at 5 steps; at 10 farther on one mixture, unresolved on the other")
    p.add_argument("--seed", type=_seed, default=0, help="image i's noise is a function of (seed, i)")
    p.add_argument("--n", type=_positive, default=64, help="number of samples")
    p.add_argument("--nrow", type=_positive, default=None, help="images per row of the grid (default: square)")
    p.add_argument("--batch-size", type=_positive, default=256, help="images per network call")

    p = add("invert", cmd_invert, "DDIM (or Heun) inversion x0 -> x_T of images (.npz or PNG files), and the round trip")
    _model_args(p, "latents")
    p.add_argument("--sampler", "--solver", choices=tuple(INVERT_SAMPLERS), default="ddim",
                   help="ddim: DDIM's step backwards, decoded by DDIM (S calls each way); heun: Heun's method both ways "
                        "(ode.heun_invert, decoded by ode.heun: 2S - 1 calls each way, second order; notebook 05 §8)")
    p.add_argument("--input", nargs="+", action="extend", required=True,    # given twice: all the files, not the last
                   help="an .npz with x0/samples (N,C,H,W in [-1,1]) or images (N,H,W,C uint8), or PNG files")

    p = add("interpolate", cmd_interpolate,
            "slerp between two latents and decode them with DDIM (eta = 0) or an ODE solver (default: what made --latents)")
    _model_args(p, "interpolation")
    p.add_argument("--sampler", "--solver", choices=INTERPOLATE_SAMPLERS, default=None,
                   help="the decoder: ddim (eta = 0) or an ODE solver, as for `sample` (default: the one that made --latents, "
                        "heun for `invert --sampler heun`; else ddim)")
    p.add_argument("--seeds", type=_seed, nargs=2, default=None, metavar=("A", "B"),
                   help="latent 0 of each seed (the first image of `sample --seed A` / `--seed B`; default: 0 1)")
    p.add_argument("--latents", help="an .npz from `invert` or `sample`: interpolate between its x_T[--index] "
                                     "(default: none, the latents of --seeds)")
    p.add_argument("--index", type=int, nargs=2, default=None, metavar=("I", "J"),
                   help="with --latents: which two of its latents (default: 0 1)")
    p.add_argument("--n", type=int_in(2), default=8, help="number of frames, the two ends included")

    p = add("reproduce", cmd_reproduce, "the DDIM paper's Table 1 (FID over eta x S) or Table 2 (reconstruction)")
    p.add_argument("table", choices=("table1", "table2"))
    p.add_argument("--checkpoint", required=True, help="as for `sample`")
    p.add_argument("--out", default=None, help="output folder (default: runs/TABLE)")
    p.add_argument("--overwrite", action="store_true", help="replace TABLE.md and TABLE.csv of an earlier run in --out")
    p.add_argument("--steps", help="comma-separated S values (default: the paper's)")
    p.add_argument("--etas", help="table1: comma-separated eta values; sigma_hat for DDPM's large variance (default: the "
                                  f"paper's, {','.join(map(str, tables.PAPER_ETAS))})")
    p.add_argument("--spacing", choices=schedule.SPACINGS, default=None,
                   help="timestep selection (default: quad for table1 as the paper, uniform for table2)")
    p.add_argument("--n-samples", type=int_in(2), default=None,
                   help="table1: samples per (eta, S), at least 2 for a Fréchet distance (default: 50000, the paper's)")
    p.add_argument("--n-images", type=_positive, default=None,
                   help="table2: the first N images (default: all): CIFAR-10's test images, or for a digits model the "
                        "digits it trained on (there is no held-out set)")
    p.add_argument("--features", choices=("inception", "digits", "random"), default=None,
                   help="table1: inception = FID via torch-fidelity (pip install ddimlab[fid]); digits = the digits classifier "
                        "(1-channel models); random = a fixed random conv net (smoke test) (default: inception)")
    p.add_argument("--batch-size", type=_positive, default=250, help="images per network call")
    p.add_argument("--seed", type=_seed, default=None, help="table1: image i of every cell is a function of (seed, i) "
                                                            "(default: 0)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK under torchrun), cpu, cuda")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights of a ddimlab checkpoint")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--data-root", default=None, help="CIFAR-10 tarball or folder (default: download into the cache)")
    _common(p)

    p = add("lab", cmd_lab, "the DDIM paper's Table 1 on exact scores, in 2-D and 1024-D (no model, no download)")
    p.add_argument("--out", default="outputs/lab", help="folder for table1.txt and the figures")
    p.add_argument("--n", type=int_in(8), default=2000, help="samples per cell of the 2-D table, at least 8 "
                   "(SEs shrink like 1/√n)")
    p.add_argument("--image-d", type=int_in(0), default=1024, help="dimension of the image-like table (0 skips it)")
    p.add_argument("--image-n", type=int_in(8), default=None,
                   help="samples per cell of the image-like table, at least 8 (default: 1000)")
    p.add_argument("--spacing", choices=("uniform", "quad"), default="uniform", help="timestep sub-sequence")
    p.add_argument("--seed", type=_seed32, default=0, help="seed of x_T, the noise and the data draws")
    p.add_argument("--overwrite", action="store_true", help="replace the tables and figures of an earlier run in --out")
    _common(p)

    p = add("demo", cmd_demo, "the main job: the exact-score Table 1, then DDPM 1000 vs DDIM 10/20/50 on digits")
    p.add_argument("--out", default="outputs/demo", help="output folder")
    p.add_argument("--skip-train", action="store_true", help="only the exact-score lab table and figure")
    p.add_argument("--train-steps", type=_positive, default=None,
                   help=f"override the digits preset's training steps (default: {pretrained.digits_config().steps})")
    p.add_argument("--n", type=int_in(2), default=None, help="samples per sampler for the quality score, 2 to the 1797 "
                   f"real digits (default: {demo.N_SAMPLES})")
    p.add_argument("--seed", type=_seed32, default=0, help="seed of the training run and of x_T")
    p.add_argument("--overwrite", action="store_true", help="replace the tables and figures of an earlier demo in --out")
    _common(p)
    return parser


PATH_OPTIONS = ("out", "checkpoint", "input", "latents", "data_root")
PAIR_COMMANDS = (cmd_sample, cmd_invert, cmd_interpolate)     # `_writes_pair`: --out names OUT.png and OUT.npz


def _refuse_blank_paths(args) -> None:
    """A blank path option is the current folder to pathlib (lab, demo and reproduce wrote there): an error instead.
    `--checkpoint` is `checkpoint.load_model`'s to refuse, for Python callers too. `--out -` is standard output to
    many tools; train, lab, demo and reproduce made a folder named "-" (which `rm -r -` does not remove)."""
    for name in PATH_OPTIONS[:1] + PATH_OPTIONS[2:]:
        value = getattr(args, name, None)
        if any(not str(v).strip() for v in (value if isinstance(value, list) else [value] if value is not None else [])):
            raise ValueError(f"--{name.replace('_', '-')} is empty; give a path")
    if str(getattr(args, "out", None)).strip() == "-":
        writes = ("a PNG and an .npz: give a file name, e.g. --out samples" if args.func in PAIR_COMMANDS else
                  "its files into a folder: give the folder's name")
        raise ValueError(f"--out {args.out!r} names standard output; this command writes {writes}")


def main(argv=None, prog: str | None = None) -> int:
    """Run the command line; returns the exit status (README "Using the library")."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    for stream in (sys.stdout, sys.stderr):     # a path with bytes that are not UTF-8 prints escaped, not as a codec error
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Unbreakable(sys.stdout), _Unbreakable(sys.stderr)
    try:
        return _main(argv, prog)
    finally:
        sys.stdout, sys.stderr = streams


class _Unbreakable:
    """stdout or stderr that a reader gone away (`| head`), a closed descriptor (`2>&-`) or a terminal that closed (EIO
    after a hang-up) cannot turn into an error that stops the work or loses its files: after the first failed write, or
    with no stream at all, output goes nowhere."""

    def __init__(self, stream):
        self._stream = stream

    def _gone(self):
        with contextlib.suppress(OSError, ValueError, AttributeError):      # Python's exit flush must not fail either
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        self._stream = None

    def write(self, text):
        try:
            return len(text) if self._stream is None else self._stream.write(text)
        except OSError:
            self._gone()
            return len(text)

    def flush(self):
        try:
            if self._stream is not None:
                self._stream.flush()
        except OSError:
            self._gone()

    def isatty(self):
        return self._stream is not None and self._stream.isatty()

    def __getattr__(self, name):                # fileno, encoding, ...: the stream's own
        return getattr(self._stream, name)


def _main(argv, prog):
    if prog is None:
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "ddimlab"
        prog = "python -m ddimlab" if prog in ("__main__.py", "-m", "-c", "") else prog
    args = build_parser(prog).parse_args(argv)
    args.__dict__.pop(GIVEN, None)
    for repeated in args.__dict__.pop(REPEATED, []):
        print(f"{prog} {args.command}: warning: an option given twice, {repeated}: the last counts", file=sys.stderr)
    for name in PATH_OPTIONS:                   # "~/runs" quoted, or written after an = sign, is not expanded by the shell
        value = getattr(args, name, None)
        if value is not None:
            setattr(args, name, [os.path.expanduser(v) for v in value] if isinstance(value, list) else os.path.expanduser(value))
    debug = getattr(args, "debug", False) or os.environ.get("DDIMLAB_DEBUG", "").strip().lower() not in FALSE_WORDS
    terminate = sigterm_as_interrupt()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(f"{prog} {args.command}")   # ddimlab's own as one line, like its errors
            _refuse_blank_paths(args)
            return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        print(f"{prog} {args.command}: interrupted" + (f": {e}" if str(e) else ""), file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"{prog} {args.command}: error: {error_words(e)}", file=sys.stderr)
        print("(run again with --debug for the traceback)", file=sys.stderr)
        return 1
    except Exception as e:
        if not debug and (size := out_of_memory(e)) is not None:
            smaller = ("a smaller --batch-size" if hasattr(args, "batch_size") else
                       "a smaller --set batch_size=N" if args.command == "train" else "fewer images per run")
            print(f"{prog} {args.command}: error: {OUT_OF_MEMORY.format(size=size)}, or {smaller}", file=sys.stderr)
            print("(run again with --debug for the traceback)", file=sys.stderr)
            return 1
        if debug or not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            raise
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        print(f"{prog} {args.command}: error: torch.compile failed ({first.strip()[:200]}); run without --compile "
              f"(it needs a working C++ compiler, and Triton on a GPU)", file=sys.stderr)
        print("(run again with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        terminate.restore()


OUT_OF_MEMORY = "out of memory{size}: the sizes asked for do not fit this machine; ask for fewer or smaller images"


class sigterm_as_interrupt:
    """SIGTERM (`kill`, `timeout`, `docker stop`) and SIGHUP (the terminal closed; `files.stop_signals`) raised as a
    KeyboardInterrupt during a command, so that it cleans up as after Ctrl-C (the folders and lock a failed `sample`
    made) instead of ending the process where it stands. `train` sets its own handler while it trains (a checkpoint,
    then stop). Only on the main thread."""

    def __init__(self):
        active = threading.current_thread() is threading.main_thread()
        self.previous = {s: signal.signal(s, self._raise) for s in stop_signals() if s != signal.SIGINT} if active else {}

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"terminated ({signal.Signals(signum).name})" if signum == signal.SIGTERM else
                                f"hung up ({signal.Signals(signum).name}: the terminal closed; `nohup` keeps a command going)")

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    raise SystemExit(main())
