"""Sample generation to PNG files for FID: resumable, split over processes, a function of (seed, index).

`generate_samples` writes `out_dir/000000.png, 000001.png, …` (what torch-fidelity reads). Image i is a
function of (seed, i) only: its x_T and every noise draw of the sampler come from its own CPU generator
(`samplers.sample_row` with a `noise_sampler`), so a run split over ranks (`torchrun`: rank r makes
i = r, r + world, …), resumed after a crash (existing files are skipped; files are written atomically)
or run with another batch size gives the same images — up to the float round-off of batched
convolutions, which moves a rare pixel by at most one grey level (notebook 07 §5; README
"Reproducing the DDIM paper").
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

with warnings.catch_warnings():     # in Jupyter without ipywidgets tqdm.auto warns "IProgress not found" (with this
    warnings.filterwarnings("ignore", message="IProgress not found")      # machine's paths) and uses the text bar
    from tqdm.auto import tqdm

from . import devices, diffusion, ode, schedule
from .checkpoint import eps_fn, image_shape, sha256_of, weights_sha256
from .checks import check_bool, check_distinct, check_fits, check_int
from .data import from_model_range
from .files import absent_folders, atomic_write, make_folder, os_error, remove_empty, remove_stale_temps
from .plotting import save_png
from .samplers import SIGMA_HAT, OutOfRangeWarning, check_first_step, sample_row


class SampleFileWarning(UserWarning):
    """`generate_samples` found sample files it did not write (made again), or a folder whose files it cannot check."""


SEAL = "ddimlab-sample"     # the PNG text chunk that holds a sample's seal (`_seal`)
PNG_MIN_BYTES = 158         # a 1×1 grey PNG with its seal: no sample file is smaller (most take a file system block)


def _seal(settings_key: str, index: int, pixels: np.ndarray) -> str:
    """A sample file's seal: sha256 of its cell's settings, its index and its pixels (H×W or H×W×3 uint8, as Pillow
    reads them back), so that another image, or this cell's image of another index or another cell's, does not pass."""
    head = f"{settings_key}\n{index}\n{tuple(pixels.shape)}\n".encode()
    return hashlib.sha256(head + np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def _sealed_ok(path: Path, settings_key: str, index: int) -> bool:
    """Whether the PNG at `path` holds the seal of image `index` of the cell (an unreadable file does not)."""
    from PIL import Image  # Pillow comes with matplotlib

    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.mode in ("L", "RGB") and \
                im.text.get(SEAL) == _seal(settings_key, index, np.asarray(im))
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _names(indices, most: int = 3) -> str:
    names = [f"{i:06d}.png" for i in indices[:most]]
    return ", ".join(names) + (f" and {len(indices) - most} more" if len(indices) > most else "")


def progress(total: int, desc: str, enabled: bool = True):
    """(tqdm bar, callback for the samplers and solvers that advances it by one step)."""
    bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
    return bar, (lambda info: bar.update(1))


def check_eta(eta):
    """A Table 1 row's η: a finite float ≥ 0 (`diffusion.check_eta`), or SIGMA_HAT (also accepted: "σ̂", "sigmahat",
    "ddpm-large", "large")."""
    if isinstance(eta, str):
        if eta.strip().lower().replace("-", "_") in (SIGMA_HAT, "sigmahat", "σ̂", "ddpm_large", "large"):
            return SIGMA_HAT
        try:
            eta = float(eta)
        except ValueError:
            raise ValueError(f"eta must be a number >= 0 or {SIGMA_HAT!r}, got {eta!r}") from None
    return diffusion.check_eta(eta)


MAX_RMS = 10.0


def check_data_range(x0: torch.Tensor, alpha_bar, seq, clip: str | None = "clip_x0=True") -> torch.Tensor:
    """Return x0; warn (`OutOfRangeWarning`) if a sample's RMS exceeds MAX_RMS = 10.

    Data scaled to [−1, 1] have RMS ≤ 1, so such a sample is ten times out of range. Either the model has
    not learned the data yet (an untrained UNet gives RMS ~30), which the samples rightly show, or the
    sampler diverged: a first network call at a ᾱ so small that x̂_0 = (x − √(1−ᾱ) ε̂)/√ᾱ multiplies the
    network's error by 1/√ᾱ. A cosine-schedule model (ᾱ_999 = 2.4e-9) on a grid that starts at t = 999
    ended at RMS 133 to 3·10⁴ (README, "The digits model"). The bound leaves room for poor but working
    settings: on the linear-schedule digits model (trained with uniform t) the largest of 1000 samples is 2.2
    for DPM-Solver++(3M) with 10 `linspace` steps, and 64 samples of each other solver and grid stay at 1.1 or
    less. It lets milder failures through (iPNDM on the cosine model's `karras` grid: 5.1). clip: how the caller
    clips x̂_0, which the warning advises (None where it cannot, e.g. an ODE solver).
    """
    warn_out_of_range(_rms(x0), alpha_bar, seq, clip)
    return x0


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Each sample's root mean square, on the CPU."""
    return x.detach().float().flatten(1).pow(2).mean(1).sqrt().cpu()


def warn_out_of_range(rms: torch.Tensor, alpha_bar, seq, clip: str | None = "clip_x0=True") -> None:
    """`check_data_range`'s warning from the samples' RMS values, a 1-D float tensor (so that a caller with many
    batches says it once)."""
    if not isinstance(rms, torch.Tensor) or rms.ndim != 1 or not rms.is_floating_point():
        raise TypeError(f"rms must be a 1-D float tensor of each sample's RMS, got "
                        f"{(rms.dtype, tuple(rms.shape)) if isinstance(rms, torch.Tensor) else type(rms).__name__}")
    bad = int((rms > MAX_RMS).sum())
    if bad:
        t, T = int(seq[0]), len(alpha_bar)
        a = float(schedule.alpha_bar_at(torch.as_tensor(alpha_bar, dtype=torch.float64), t))
        later = " (quad starts at t = 0.8 T)" if t > 0.8 * T else ""
        fewer = f" of fewer than all {T} steps" if len(seq) == T else ""      # the full chain has one grid
        why = (f"Its first step, at t = {t} where alpha_bar = {a:.2g}, multiplies the network's error by "
               f"1/sqrt(alpha_bar) = {a ** -0.5:.3g}; a grid{fewer} that starts later{later} avoids that"
               f"{f', and so does clipping x0 ({clip})' if clip else ''}" if a < 0.01 else
               f"Its first step, at t = {t} (alpha_bar = {a:.2g}), is not the cause: check the model")
        warnings.warn(
            f"{bad} of {len(rms)} samples have an RMS above {MAX_RMS:g} (largest {float(rms.max()):.3g}), where images in "
            f"[-1, 1] have at most 1: the model is untrained or the sampler diverged. {why}", OutOfRangeWarning,
            stacklevel=3)


def seed_for(seed: int, index: int) -> int:
    """The generator seed of image `index` under `seed` (numpy's SeedSequence mixes the pair, so neighbouring
    indices get unrelated streams)."""
    seed, index = check_int("seed", seed, 0), check_int("index", index, 0)     # int(0.9) would give seed 0's images
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


GENERATOR_BYTES = 3000    # a CPU torch.Generator (its Mersenne Twister state) and its index: 2.6 KB each, measured


def latents(seed: int, indices, shape, device=None) -> torch.Tensor:
    """x_T ~ N(0, I) for each index, drawn on the CPU from the index's own generator (`seed_for`), so a
    (seed, index) pair gives the same latent on every device, batch and process (notebook 07 §5). An index listed
    twice is a ValueError (it would be one latent twice), here and in `sample_indices`."""
    shape, indices = _shape_and_indices(shape, indices)
    device = None if device is None else devices.resolve(device)      # "cuda:0": torch's "not compiled with CUDA"
    return _draw(_generators(seed, indices), shape, device)


def _shape_and_indices(shape, indices) -> tuple[tuple, list]:
    """shape as a tuple of ints and indices as a non-empty list, their count checked against the memory first: an
    index takes a generator and its draw, twice (the draw and the stack)."""
    if isinstance(shape, (int, str)) or not hasattr(shape, "__iter__"):     # else torch's "not iterable"
        raise ValueError(f"latents need a shape such as (C, H, W), got {shape!r}")
    shape = tuple(check_int("an entry of shape", s) for s in shape)    # torch: "negative dimension -2"
    indices = _index_list(indices, GENERATOR_BYTES + 2 * torch.get_default_dtype().itemsize * math.prod(shape))
    if not indices:                                             # else torch's "stack expects a non-empty TensorList"
        raise ValueError("indices is empty: give the index of at least one image, e.g. range(n) for images 0..n-1")
    return shape, indices


def _index_list(indices, per: int) -> list:
    """`indices` as a list (a range, a list, a 1-D tensor or array); a number is a TypeError that says what is asked for
    (latents(seed, 3, shape) meant three images: "object of type 'int' has no len()"). per: the bytes each index will
    take, for `checks.check_fits` before the list is made (range(10**12) was a MemoryError after the list had filled
    the memory)."""
    if isinstance(indices, (str, bytes, dict)) or not hasattr(indices, "__iter__") or getattr(indices, "ndim", 1) != 1:
        raise TypeError(f"indices must be a list of image indices, e.g. range(n) for images 0..n-1; got "
                        f"{type(indices).__name__} {str(indices)[:40]}")
    if hasattr(indices, "__len__"):
        check_fits(len(indices) * per, f"{len(indices):,} latents of {per:,} bytes each (a draw and a generator)",
                   lambda limit: f"draw at most {int(limit // per):,} at a time")
    return list(indices)


def _generators(seed: int, indices) -> list[torch.Generator]:
    indices = [check_int("index", i, 0) for i in indices]
    check_distinct(indices, "index")          # [1, 1]: two copies of one image, where two images were asked for
    return [torch.Generator().manual_seed(seed_for(seed, i)) for i in indices]


def _draw(gens, shape, device) -> torch.Tensor:
    """One N(0, I) draw of `shape` from each generator, stacked (the CPU stream, then moved to `device`)."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]).to(device)


@torch.no_grad()
def _check_clip(clip_x0) -> bool | None:
    return None if clip_x0 is None else check_bool("clip_x0 (or None, the sampler's default)", clip_x0)


def sample_indices(model, indices, shape, alpha_bar, seq, eta=0.0, seed: int = 0, clip_x0: bool | None = None,
                   device=None, amp: bool = False, solver: str | None = None, solver_options: dict | None = None,
                   callback=None, check_range: bool = True) -> torch.Tensor:
    """Samples for the given indices, each a function of (seed, index) only; returns x_0 in [−1, 1] (unclamped).

    η = float: generalized DDIM (DDIM eq. 12); η = SIGMA_HAT: DDPM's large variance (the DDIM paper's σ̂);
    both through `samplers.sample_row`. Each index draws x_T (`latents`) and then every noise of the
    sampler from its own CPU generator (passed as `noise_sampler`), so an image is the same whatever
    batch, rank or resumed run makes it: this equals `samplers.sample_row(eps, x_T, …, generator=g)` for
    one image on the CPU. clip_x0 (default: only for σ̂, as the official `ddpm_steps`) clamps x̂_0 to
    [−1, 1]. solver: an `ode.SOLVERS` name to run instead (deterministic; η is not used), with the keywords
    `solver_options` (`ode.solve`).
    A sample with RMS above 10 (untrained, or diverged) gives an `OutOfRangeWarning` (`check_data_range`);
    check_range=False leaves that to a caller that samples many batches and warns once over all of them.
    """
    amp, check_range = check_bool("amp", amp), check_bool("check_range", check_range)
    eta = check_eta(eta)
    clip_x0 = _check_clip(clip_x0)
    if solver_options and solver is None:
        raise ValueError(f"solver_options {solver_options} apply to an ODE solver; none was given")
    if solver is not None and (eta != 0 or clip_x0):
        raise ValueError(f"eta and clip_x0 apply to DDIM and DDPM; the ODE solver {solver!r} is deterministic and does "
                         f"not clip (got eta={eta!r}, clip_x0={clip_x0!r})")
    shape, indices = _shape_and_indices(shape, indices)
    device = devices.resolve(device) if device is not None else devices.model_device(model)
    alpha_bar = schedule.validate_alpha_bar(alpha_bar).to(device)     # a float16 table: named, not read as rounded
    gens = _generators(seed, indices)

    first = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    widen = first is not None and first.dtype == torch.float64   # a float64 network: the float32 draws, widened

    def draw(*_):
        x = _draw(gens, shape, device)
        return x.double() if widen else x

    if solver is not None:
        x0 = ode.solve(solver, eps_fn(model, amp), draw(), alpha_bar, seq, callback=callback, **(solver_options or {}))
    else:
        clip = (eta == SIGMA_HAT) if clip_x0 is None else clip_x0
        x0 = sample_row(eps_fn(model, amp), draw(), alpha_bar, seq, eta, clip_x0=clip, noise_sampler=draw,
                        callback=callback)
    return check_data_range(x0, alpha_bar, seq, None if solver else "clip_x0=True") if check_range else x0


def generate_samples(model, out_dir, n: int, *, shape=None, S: int = 50, eta=0.0, spacing: str = "quad",
                     alpha_bar=None, batch_size: int = 250, seed: int = 0, clip_x0: bool | None = None,
                     rank: int | None = None, world_size: int | None = None, device=None, amp: bool = False,
                     progress: bool = False, model_id: str | None = None) -> list[int]:
    """Write samples 0..n−1 as `out_dir/{i:06d}.png`; returns the indices this call wrote.

    This rank makes indices rank, rank + world_size, …; an index whose file exists is skipped, so a
    crashed run resumes where it stopped and gives the images an uninterrupted run would have. Each PNG holds
    a seal (a text chunk: sha256 of the settings that settings.json records, its index and its pixels); a file without
    the right one (replaced by another image, or edited) is made again, with a `SampleFileWarning`. A folder of an
    earlier ddimlab, whose images hold no seal, is reused unverified, with a warning: making its images again would
    cost all their sampling.
    `out_dir/settings.json` records what the images are a function of (the model's weights and the ᾱ table by their
    sha256, seed, S, η, spacing, shape, clipping, amp); a folder made with other settings is a ValueError, never reused.
    `model` is a network `model(x, t)`, `checkpoint.eps_fn` of one, or any callable eps(x, t); a callable's weights
    cannot be hashed, so name them with `model_id` (a checkpoint path and step, say; recorded and compared like the
    hash) or get a warning that a resume with other weights would not be noticed. alpha_bar defaults to the table
    the model carries (`checkpoint.carry_schedule`: a network from `load_model`, `load_trained` or `train`, or eps_fn of
    one), else DDPM's linear schedule with T = 1000; η and the steps as in `sample_indices` and `sampling_steps`; shape
    (C, H, W) defaults to the network's own (`check_shape`).
    """
    amp, progress = check_bool("amp", amp), check_bool("progress", progress)
    n, batch_size, seed, eta = check_int("n", n, 1), check_int("batch_size", batch_size), check_int("seed", seed, 0), \
        check_eta(eta)                   # all before settings.json is written: a typo must not claim the folder
    clip_x0 = _check_clip(clip_x0)
    model_key = _model_key(model, model_id, out_dir)
    shape = check_shape(shape, model)
    rank, world_size = resolve_rank(rank, world_size)
    if alpha_bar is None:          # the table the network was trained on, where it carries one (checkpoint.carry_schedule)
        alpha_bar = getattr(model, "alpha_bar", None)
        alpha_bar = alpha_bar if isinstance(alpha_bar, torch.Tensor) else schedule.make_alpha_bar("linear", 1000)
    alpha_bar = schedule.validate_alpha_bar(alpha_bar)
    seq = sampling_steps(S, alpha_bar.shape[0], spacing)
    check_first_step(alpha_bar, seq)                     # S = 1 on `quad` is the step t = 0: the PNGs would be x_T
    out_dir = Path(out_dir)
    check_room([out_dir], n, f"{n:,} samples in {out_dir}", rank, world_size)
    created = absent_folders(out_dir)
    make_folder(out_dir)
    settings = dict(model=model_key, T=int(alpha_bar.shape[0]), seed=seed, S=int(S), eta=str(eta), spacing=spacing,
                    shape=list(shape), clip_x0=clip_x0, amp=bool(amp or getattr(model, "amp", False)),   # eps_fn(net, amp=True)
                    alpha_bar=sha256_of(alpha_bar.to(torch.float64).cpu()))
    key = json.dumps(settings, sort_keys=True)           # what each image's seal is a function of, with its index
    saved = _claim(out_dir, {**settings, "sealed": True})
    claimed = saved is None
    mine = range(rank, n, world_size)
    there = [i for i in mine if (out_dir / f"{i:06d}.png").exists()]
    if claimed or saved.get("sealed") is True:
        if replaced := [i for i in there if not _sealed_ok(out_dir / f"{i:06d}.png", key, i)]:
            warnings.warn(f"{out_dir}: {_names(replaced)} do{'es' if len(replaced) == 1 else ''} not hold the image this "
                          f"cell made there (replaced or edited since), so {'it is' if len(replaced) == 1 else 'they are'} "
                          f"made again", SampleFileWarning, stacklevel=2)
        there = sorted(set(there) - set(replaced))
    elif there:
        warnings.warn(f"{out_dir} was made by an earlier ddimlab, whose images hold no seal to check: its {len(there)} "
                      f"images are reused unverified (making them again would cost their sampling; delete the folder to "
                      f"do so)", SampleFileWarning, stacklevel=2)
    todo = sorted(set(mine) - set(there))
    batches = [todo[k:k + batch_size] for k in range(0, len(todo), batch_size)]
    rms = []
    try:
        with tqdm(total=len(todo), desc=f"{out_dir.name} (rank {rank})" if world_size > 1 else out_dir.name,
                  unit="img", disable=not progress) as bar:
            for idx in batches:
                x = sample_indices(model, idx, shape, alpha_bar, seq, eta, seed, clip_x0, device, amp, check_range=False)
                rms.append(_rms(x))
                for i, img in zip(idx, from_model_range(x)):
                    pixels = img.permute(1, 2, 0).numpy()
                    save_png(img, out_dir / f"{i:06d}.png",
                             {SEAL: _seal(key, i, pixels[..., 0] if pixels.shape[-1] == 1 else pixels)})
                bar.update(len(idx))
    except BaseException:            # nothing sampled yet (e.g. the network fails on this shape): the folder stays free
        if claimed and not any(out_dir.glob("*.png")):      # only the settings.json this call wrote
            (out_dir / "settings.json").unlink(missing_ok=True)
            remove_empty(created)
        raise
    if rms:
        warn_out_of_range(torch.cat(rms), alpha_bar, seq, "clip_x0=True in `generate_samples`")
    remove_stale_temps(out_dir, ".*.png.*.tmp")    # of images whose writer was killed (kill -9): not left forever
    return todo


def check_room(out_dirs, n: int, what: str, rank: int = 0, world_size: int = 1) -> None:
    """Refuse to start sample files that cannot fit: the files 0..n−1 of this rank missing in each of `out_dirs` (all on
    one disk), at PNG_MIN_BYTES each (a lower bound), against the free space on the disk (at the first folder's nearest
    existing one). `generate_samples(n=2**63 - 1)` counted the files already there one by one, and would have filled
    the disk after that."""
    n_files = 0
    for d in map(Path, out_dirs):                  # the PNGs there may be this rank's own: a lower bound again
        n_files += max(0, len(range(rank, n, world_size)) - (sum(1 for _ in d.glob("*.png")) if d.is_dir() else 0))
    first = Path(out_dirs[0]).absolute()
    folder = next(p for p in (first, *first.parents) if p.is_dir())
    need, free = n_files * PNG_MIN_BYTES, shutil.disk_usage(folder).free
    if need > free:
        raise os_error(OSError, errno.ENOSPC, f"{what} take at least {need / 2 ** 30:,.1f} GiB ({n_files:,} PNG files of "
                                    f"{PNG_MIN_BYTES} bytes or more), and the disk of {folder} has {free / 2 ** 30:,.1f} "
                                    f"GiB free: ask for fewer samples, or write them elsewhere")


def check_shape(shape, model) -> tuple[int, int, int]:
    """(C, H, W) of positive ints with C = 1 or 3 (PNG), and C the network's input channels where it records them
    (`checkpoint.image_shape`). shape=None is the network's recorded (C, H, W) (a ValueError for a model that records
    none); H × W other than the recorded size is a warning (the network runs, on images it was not trained on)."""
    recorded = image_shape(model)
    if shape is None:
        if None in recorded:
            raise ValueError("shape=None takes (C, H, W) from the network's config, but this model records none: pass "
                             "shape=(C, H, W)")
        shape = recorded
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 3:
        raise ValueError(f"shape must be (C, H, W) with C = 1 or 3 (PNG), got {shape!r}")
    shape = tuple(check_int(f"shape's {d}", v) for d, v in zip("CHW", shape))
    if shape[0] not in (1, 3):
        raise ValueError(f"shape must be (C, H, W) with C = 1 or 3 (PNG), got {shape}")
    if recorded[0] is not None and recorded[0] != shape[0]:
        raise ValueError(f"shape {shape} has {shape[0]} channels but the network takes {recorded[0]}")
    if None not in recorded[1:] and tuple(recorded[1:]) != shape[1:]:
        warnings.warn(f"shape {shape}: the network was trained on {recorded[1]}×{recorded[2]} images; at "
                      f"{shape[1]}×{shape[2]} it runs, but on images it never saw (shape=None takes its own)", stacklevel=3)
    return shape


def _model_key(model, model_id, out_dir) -> str | None:
    """What settings.json records of the weights: their sha256, or "id:<model_id>" for a plain callable (None, with a
    warning, when it has neither)."""
    key = weights_sha256(model)
    if model_id is None:
        if key is None:
            warnings.warn(f"{out_dir}: the weights of a plain eps callable cannot be recorded, so a resume with other "
                          "weights would not be noticed; pass model_id= to name them", stacklevel=3)
        return key
    if key is not None:
        raise ValueError("model_id names a plain callable's weights; a network's are recorded by their sha256")
    if not isinstance(model_id, str):
        raise TypeError(f"model_id must be a string naming the weights, got {type(model_id).__name__}")
    if not model_id.strip():
        raise ValueError("model_id is empty; name the weights, e.g. a checkpoint path and step")
    return f"id:{model_id}"


def recorded_settings(folder) -> dict | None:
    """What `folder/settings.json` records of how `generate_samples` made the images there; None where there is no such
    file or it is not ddimlab's (every version recorded seed and S)."""
    try:
        saved = json.loads((Path(folder) / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and {"seed", "S"} <= saved.keys() else None


def _claim(out_dir: Path, settings: dict) -> dict | None:
    """Record `settings` in out_dir/settings.json (None), or check that the images already there were made with them
    (the settings recorded there)."""
    path = out_dir / "settings.json"
    if path.exists():
        if (saved := recorded_settings(out_dir)) is None:
            raise ValueError(f"{path} is damaged or not ddimlab's (it records no seed and S); delete it, or choose "
                             f"another folder (images made with it could not be told apart from other runs')")
        def same(k):        # η as a number: older folders recorded str(0) for η = 0
            return str(check_eta(saved[k])) == settings[k] if k == "eta" else saved[k] == settings[k]
        if "model" in saved and saved["model"] is None and settings["model"] is not None:
            raise ValueError(f"{path} records no weights (made from a plain callable, or from checkpoint.eps_fn before "
                             "ddimlab recorded the network behind it), so these images cannot be told from another "
                             "model's; finish it with that same plain callable, or choose a new folder")
        diff = [("another model" if k == "model" else "another alpha_bar table" if k == "alpha_bar" else
                 f"{k} {saved.get(k)!r} there, {settings[k]!r} now")
                for k in settings if k in saved and not same(k)]     # older folders recorded fewer keys
        if diff:
            raise ValueError(f"{out_dir} holds images made with other settings ({'; '.join(diff)}); choose another "
                             f"--out or delete that folder")
    elif any(out_dir.glob("*.png")):
        raise ValueError(f"{out_dir} holds images but no settings.json saying how they were made; choose another "
                         f"--out or delete that folder")
    else:
        atomic_write(path, lambda f: f.write(json.dumps(settings, indent=1)), text=True)
        return None
    return saved


def sampling_steps(S: int, T: int = 1000, spacing: str = "quad") -> torch.Tensor:
    """τ for S steps: `schedule.timesteps(S, T, spacing)`, except that S = T is the full chain.

    The quadratic rule stops at 0.8 T (800 for S = 1000, with only 688 distinct steps), so for
    S = T every step T−1, …, 0 is used, as DDPM does — the paper's S = 1000 column (σ̂ = DDPM's 3.17).
    """
    seq = schedule.timesteps(S, T, spacing)         # checks S, T and the spacing (recorded in settings.json) first
    return torch.arange(T - 1, -1, -1) if S == T else seq


def resolve_rank(rank, world_size) -> tuple[int, int]:
    """(rank, world) from the arguments, else `devices.rank_world()`; checked."""
    r, w = devices.rank_world()
    rank = r if rank is None else rank
    world_size = w if world_size is None else world_size
    world_size = check_int("world_size", world_size)
    return check_int("rank", rank, 0, world_size - 1, f" (world_size is {world_size})"), world_size
