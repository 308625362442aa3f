"""The DDIM paper's experiments: sample generation for FID, Table 1 (η × S) and Table 2 (reconstruction).

Pipeline (notebook 07 §5; README "Reproducing the paper"):

1. `generate_samples` writes PNG files 000000.png, 000001.png, … (what torch-fidelity reads). Image i
   is a function of (seed, i) only: its x_T and every noise draw come from its own CPU generator,
   so a run split over ranks (`torchrun`: rank r makes i = r, r + world, …), resumed after a crash
   (existing files are skipped; files are written atomically) or run with another batch size gives
   the same images — up to the float round-off of batched convolutions, which moves a rare pixel
   by at most one grey level.
2. `compute_fid` turns two image sets into features with an injected `feature_fn` and returns the
   Fréchet distance; `fid_inception` does the real thing (Inception-v3, CIFAR-10 train statistics,
   cached) through torch-fidelity, an optional dependency (`pip install ddimlab[fid]`).
3. `reproduce_table1` / `reproduce_table2` run the paper's grids and write CSV and Markdown with the
   paper's values beside the measured ones.

FID needs Inception weights and torchvision; the tests run the same pipeline with a small injected
feature extractor (`random_features`, or `quality.digits_features` for digits). Such numbers are
not comparable to the paper's FID; only `fid_inception` on 50,000 samples is.
"""
from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from . import schedule
from .files import atomic_write
from .quality import cache_dir, feature_stats, frechet_distance
from .samplers import SIGMA_HAT

# DDIM paper Table 1, CIFAR-10 FID of 50k samples, quadratic steps: {η: {S: FID}}; σ̂ is DDPM's large variance.
PAPER_TABLE1 = {
    0.0: {10: 13.36, 20: 6.84, 50: 4.67, 100: 4.16, 1000: 4.04},
    0.2: {10: 14.04, 20: 7.11, 50: 4.77, 100: 4.25, 1000: 4.09},
    0.5: {10: 16.66, 20: 8.35, 50: 5.25, 100: 4.46, 1000: 4.29},
    1.0: {10: 41.07, 20: 18.36, 50: 8.01, 100: 5.78, 1000: 4.73},
    SIGMA_HAT: {10: 367.43, 20: 133.37, 50: 32.72, 100: 9.99, 1000: 3.17},
}
# DDIM paper Table 2: per-dimension MSE (images scaled to [0, 1]) of DDIM encode → decode with S steps
# each way on the CIFAR-10 test set, rounded to 1e-4.
PAPER_TABLE2 = {10: 0.014, 20: 0.0065, 50: 0.0023, 100: 0.0009, 200: 0.0004, 500: 0.0001, 1000: 0.0001}
FID_INSTALL_HINT = "pip install ddimlab[fid]"


# --------------------------------------------------------------------------- small helpers

def _eta_key(eta):
    """Normalise η: a float ≥ 0, or SIGMA_HAT (also accepted: "σ̂", "sigmahat", "ddpm-large")."""
    if isinstance(eta, str):
        if eta.strip().lower().replace("-", "_") in (SIGMA_HAT, "sigmahat", "σ̂", "ddpm_large", "large"):
            return SIGMA_HAT
        try:
            eta = float(eta)
        except ValueError:
            raise ValueError(f"eta must be a number >= 0 or {SIGMA_HAT!r}, got {eta!r}") from None
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0 or {SIGMA_HAT!r}, got {eta!r}")
    return float(eta)


def _eta_label(eta) -> str:
    return SIGMA_HAT if eta == SIGMA_HAT else f"{eta:g}"


def sampling_steps(S: int, T: int = 1000, spacing: str = "quad") -> torch.Tensor:
    """τ for S steps: `schedule.timesteps(S, T, spacing)`, except that S = T is the full chain.

    The quadratic rule stops at 0.8 T (800 for S = 1000, with only 688 distinct steps), so for
    S = T every step T−1, …, 0 is used, as DDPM does — the paper's S = 1000 column (σ̂ = DDPM's 3.17).
    """
    if S == T:
        return torch.arange(T - 1, -1, -1)
    return schedule.timesteps(S, T, spacing)


def _seed_for(seed: int, index: int) -> int:
    # SeedSequence mixes (seed, index) well: neighbouring indices get unrelated streams
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


def _dist_info(rank, world_size) -> tuple[int, int]:
    """(rank, world) from the arguments, else torch.distributed, else torchrun's RANK / WORLD_SIZE."""
    if rank is None or world_size is None:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            r, w = dist.get_rank(), dist.get_world_size()
        else:
            r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need integers 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    return rank, world_size


def _barrier():
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _as_eps(model, amp: bool = False):
    """eps(x, t) from a network (no grad, eval mode, optional bf16 autocast on CUDA) or a callable."""
    if isinstance(model, torch.nn.Module):
        model.eval()

    def eps(x, t):
        with torch.no_grad(), torch.autocast(x.device.type, torch.bfloat16, enabled=amp and x.is_cuda):
            return model(x, t).to(x.dtype)
    return eps


def _model_device(model, device):
    if device is not None:
        return torch.device(device)
    if isinstance(model, torch.nn.Module):
        p = next(model.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → 0..255 as the official DDIM code saves images: round(255 · (x + 1)/2), clamped."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_png(image: torch.Tensor, path) -> None:
    """Write one uint8 image (C×H×W, C = 1 or 3) as PNG, atomically (temp name + os.replace)."""
    from PIL import Image

    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"save_png needs a uint8 image C×H×W with C in (1, 3), got {image.dtype} {tuple(image.shape)}")
    arr = image.permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(np.ascontiguousarray(arr[..., 0] if arr.shape[-1] == 1 else arr))  # uint8: L or RGB
    atomic_write(path, lambda f: pil.save(f, format="PNG"))


def load_images(directory, n: int | None = None) -> torch.Tensor:
    """The PNG files of a sample directory, in file-name order, as uint8 N×C×H×W."""
    from PIL import Image

    files = sorted(Path(directory).glob("*.png"))
    if n is not None:
        files = files[:n]
    if not files:
        raise ValueError(f"no .png files in {directory}")
    arrs = [np.asarray(Image.open(f)) for f in files]
    x = torch.from_numpy(np.stack(arrs))
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- sampling

@torch.no_grad()
def sample_indices(model, indices, shape, alpha_bar, seq, eta=0.0, seed: int = 0, clip_x0: bool | None = None,
                   device=None, amp: bool = False) -> torch.Tensor:
    """Samples for the given indices, each a function of (seed, index) only; returns x_0 in [−1, 1] (unclamped).

    η = float: generalized DDIM (DDIM eq. 12); η = SIGMA_HAT: DDPM's large variance (the DDIM paper's σ̂);
    both through `samplers.sample_row`. Each index draws x_T and then every noise of the sampler from
    its own CPU generator (passed as `noise_sampler`), so an image is the same whatever batch, rank or
    resumed run makes it: this equals `samplers.sample_row(eps, x_T, …, generator=g)` for one image on
    the CPU. clip_x0 (default: only for σ̂, as the official `ddpm_steps`) clamps x̂_0 to [−1, 1].
    """
    from . import samplers

    eta = _eta_key(eta)
    device = _model_device(model, device)
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64).to(device)
    gens = [torch.Generator().manual_seed(_seed_for(seed, i)) for i in indices]

    def draw(*_):
        return torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]).to(device)

    clip = (eta == SIGMA_HAT) if clip_x0 is None else clip_x0
    return samplers.sample_row(_as_eps(model, amp), draw(), alpha_bar, seq, eta, clip_x0=clip, noise_sampler=draw)


def generate_samples(model, out_dir, n: int, *, shape=(3, 32, 32), S: int = 50, eta=0.0, spacing: str = "quad",
                     alpha_bar=None, batch_size: int = 250, seed: int = 0, clip_x0: bool | None = None,
                     rank: int | None = None, world_size: int | None = None, device=None, amp: bool = False,
                     progress: bool = False) -> list[int]:
    """Write samples 0..n−1 as `out_dir/{i:06d}.png`; returns the indices this call wrote.

    This rank makes indices rank, rank + world_size, …; an index whose file exists is skipped, so a
    crashed run resumes where it stopped and gives the images an uninterrupted run would have.
    `model` is a network `model(x, t)` or any callable eps(x, t); alpha_bar defaults to DDPM's linear
    schedule with T = 1000; η and the steps as in `sample_indices` and `sampling_steps`.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"shape must be (C, H, W) with C = 1 or 3 (PNG), got {shape}")
    rank, world_size = _dist_info(rank, world_size)
    alpha_bar = schedule.make_alpha_bar("linear", 1000) if alpha_bar is None else torch.as_tensor(alpha_bar)
    seq = sampling_steps(S, alpha_bar.shape[0], spacing)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(rank, n, world_size) if not (out_dir / f"{i:06d}.png").exists()]
    batches = [todo[k:k + batch_size] for k in range(0, len(todo), batch_size)]
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc=f"{out_dir.name} rank {rank}", unit="batch")
    for idx in batches:
        x = sample_indices(model, idx, shape, alpha_bar, seq, eta, seed, clip_x0, device, amp)
        for i, img in zip(idx, to_uint8(x)):
            save_png(img, out_dir / f"{i:06d}.png")
    return todo


def score_grid(model, score_fn, S_list=(10, 20, 50, 100), eta_list=(0.0, 0.5, 1.0, SIGMA_HAT), n: int = 200, *,
               shape=(1, 16, 16), spacing: str = "uniform", alpha_bar=None, seed: int = 0, batch_size: int = 500,
               device=None) -> list[dict]:
    """An in-memory η × S table (notebook 07 §5): n samples per cell, the same x_T in every cell.

    score_fn maps samples in [−1, 1] (N×C×H×W, on the CPU) to a dict of numbers, e.g.
    `quality.score_digits`; rows are dict(eta, S, seconds, **score_fn(x)).
    """
    alpha_bar = schedule.make_alpha_bar("linear", 1000) if alpha_bar is None else torch.as_tensor(alpha_bar)
    rows = []
    for eta in (_eta_key(e) for e in eta_list):
        for S in S_list:
            seq = sampling_steps(S, alpha_bar.shape[0], spacing)
            t0 = time.perf_counter()
            x = torch.cat([sample_indices(model, range(k, min(k + batch_size, n)), shape, alpha_bar, seq, eta, seed,
                                          device=device) for k in range(0, n, batch_size)]).cpu()
            seconds = time.perf_counter() - t0
            rows.append(dict(eta=_eta_label(eta), S=S, seconds=round(seconds, 3), **score_fn(x)))
    return rows


# --------------------------------------------------------------------------- FID

def fid_from_features(features1, features2) -> float:
    """Fréchet distance between two feature sets (N₁×D and N₂×D): `quality.frechet_distance` of their stats."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))


def _images_u8(x) -> torch.Tensor:
    if isinstance(x, (str, os.PathLike)):
        return load_images(x)
    x = torch.as_tensor(x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x))
    if x.ndim != 4:
        raise ValueError(f"images must be N×C×H×W, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if x.dtype.is_floating_point:
        return to_uint8(x)  # float images are taken to be in [−1, 1]
    raise TypeError(f"images must be uint8 or float in [-1, 1], got {x.dtype}")


def image_stats(images, feature_fn, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of feature_fn over images: a directory of PNGs, or uint8 / [−1, 1] float N×C×H×W.

    feature_fn takes uint8 N×C×H×W (as torch-fidelity's extractors do) and returns N×D features.
    """
    x = _images_u8(images)
    feats = []
    with torch.no_grad():
        for k in range(0, len(x), batch_size):
            f = feature_fn(x[k:k + batch_size])
            feats.append(torch.as_tensor(f).detach().double().cpu().reshape(len(x[k:k + batch_size]), -1))
    return feature_stats(torch.cat(feats))


def _stats_of(ref, feature_fn, batch_size):
    if isinstance(ref, tuple) and len(ref) == 2:
        return ref
    if isinstance(ref, (str, os.PathLike)) and str(ref).endswith(".npz"):
        with np.load(ref) as z:
            return z["mu"], z["sigma"]
    return image_stats(ref, feature_fn, batch_size)


def compute_fid(samples, reference, feature_fn, batch_size: int = 500) -> float:
    """FID-style distance between `samples` and `reference` in the feature space of `feature_fn`.

    samples: a directory of PNGs, or images (uint8, or float in [−1, 1]) N×C×H×W.
    reference: the same kinds, or precomputed (μ, Σ), or an .npz with arrays `mu` and `sigma`
    (`reference_stats` writes these).
    """
    if not callable(feature_fn):
        raise TypeError("feature_fn must be a callable uint8 N×C×H×W -> N×D features "
                        "(e.g. evaluate.random_features() or quality.digits_features)")
    return frechet_distance(*_stats_of(samples, feature_fn, batch_size), *_stats_of(reference, feature_fn, batch_size))


def reference_stats(name: str, images_fn, feature_fn, batch_size: int = 500, directory=None) -> tuple:
    """(μ, Σ) of a reference set, cached as `<cache>/fid_stats/<name>.npz` (atomic write).

    `name` must identify both the images and the feature extractor (e.g. "cifar10-train_random64");
    `images_fn()` is only called when the cache misses.
    """
    path = Path(directory or cache_dir() / "fid_stats") / f"{name}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return z["mu"], z["sigma"]
        except Exception:  # a damaged file is recomputed and replaced
            pass
    mu, sigma = image_stats(images_fn(), feature_fn, batch_size)
    atomic_write(path, lambda f: np.savez(f, mu=mu, sigma=sigma))
    return mu, sigma


def random_features(in_ch: int = 3, dim: int = 64, seed: int = 0):
    """A fixed, randomly initialised conv net as feature_fn — for smoke tests of the pipeline only.

    Random conv features do separate noise from images, but their distances mean nothing next to
    Inception FID. uint8 N×C×H×W in, N×dim out.
    """
    g = torch.Generator().manual_seed(seed)
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
    from . import quality
    return quality.digits_features(x_u8)


def fid_inception(sample_dir, reference: str = "cifar10-train", cuda: bool | None = None, cache_root=None,
                  batch_size: int = 64) -> float:
    """FID with Inception-v3 features through torch-fidelity (`pip install ddimlab[fid]`).

    reference: a torch-fidelity registered input ("cifar10-train", whose statistics torch-fidelity
    computes once and caches under cache_root, default `<ddimlab cache>/torch-fidelity`), or a
    directory of PNGs (cached under its folder name).
    """
    try:
        import torch_fidelity
    except ImportError as e:
        raise ImportError(f"FID with Inception features needs torch-fidelity (and a torchvision that matches your "
                          f"torch build): {FID_INSTALL_HINT}. Without it, pass a feature_fn (evaluate.compute_fid).") from e
    cache_root = Path(cache_root or cache_dir() / "torch-fidelity")
    kwargs = {}
    if Path(str(reference)).is_dir():
        kwargs["input2_cache_name"] = "ddimlab-" + Path(reference).resolve().name
    metrics = torch_fidelity.calculate_metrics(
        input1=str(sample_dir), input2=str(reference), fid=True, isc=False, kid=False, verbose=False,
        cuda=torch.cuda.is_available() if cuda is None else cuda, cache=True, cache_root=str(cache_root),
        batch_size=batch_size, **kwargs)
    return float(metrics["frechet_inception_distance"])


# --------------------------------------------------------------------------- the paper's tables

def _wait_for_files(directory: Path, n: int, timeout: float = 24 * 3600, poll: float = 10.0) -> None:
    # without a process group, rank 0 waits for the other ranks' files
    t0 = time.time()
    while sum(1 for _ in directory.glob("*.png")) < n:
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{directory} still has fewer than {n} images after {timeout:.0f} s")
        time.sleep(poll)


def _fid(sample_dir, n, feature_fn, reference, batch_size):
    if feature_fn is None:
        return fid_inception(sample_dir, reference or "cifar10-train")
    if reference is None:
        raise ValueError("with a feature_fn, pass reference= (images, a PNG directory, (mu, sigma) or an .npz)")
    return compute_fid(load_images(sample_dir, n), reference, feature_fn, batch_size)


def _markdown_grid(rows, col_key, cols, row_key, row_vals, cell) -> str:
    head = f"| {row_key} | " + " | ".join(f"{col_key} = {c}" for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for r in row_vals:
        cells = []
        for c in cols:
            match = [x for x in rows if x[row_key] == r and x[col_key] == c]
            cells.append(cell(match[0]) if match else "")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows, fields) -> None:
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue()), text=True)


def _fmt(v, digits=4):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def reproduce_table1(model, out_dir, *, S_list=(10, 20, 50, 100, 1000), eta_list=(0.0, 0.2, 0.5, 1.0, SIGMA_HAT),
                     n_samples: int = 50_000, spacing: str = "quad", shape=(3, 32, 32), alpha_bar=None,
                     feature_fn=None, reference=None, batch_size: int = 250, seed: int = 0, device=None,
                     amp: bool = False, rank: int | None = None, world_size: int | None = None,
                     progress: bool = False) -> list[dict]:
    """DDIM Table 1: FID for every (η, S), measured beside the paper's (PAPER_TABLE1).

    Samples go to `out_dir/samples/eta<η>_S<S>/` (resumable, split over ranks); rank 0 then scores
    each set — with Inception through torch-fidelity against CIFAR-10 train when feature_fn is None,
    else with feature_fn against `reference` — and writes `table1.csv` and `table1.md`. Returns the
    rows on rank 0 ([] elsewhere): dict(eta, S, steps, n, fid, paper_fid, seconds).
    The paper used 50,000 samples and quadratic steps; fewer samples bias FID upwards.
    """
    etas = [_eta_key(e) for e in eta_list]
    rank, world_size = _dist_info(rank, world_size)
    alpha_bar = schedule.make_alpha_bar("linear", 1000) if alpha_bar is None else torch.as_tensor(alpha_bar)
    T = alpha_bar.shape[0]
    out_dir = Path(out_dir)
    rows = []
    for eta in etas:
        for S in S_list:
            d = out_dir / "samples" / f"eta{'_sigma_hat' if eta == SIGMA_HAT else f'{eta:g}'}_S{S}"
            t0 = time.perf_counter()
            generate_samples(model, d, n_samples, shape=shape, S=S, eta=eta, spacing=spacing, alpha_bar=alpha_bar,
                             batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, device=device,
                             amp=amp, progress=progress)
            seconds = time.perf_counter() - t0
            _barrier()
            if rank != 0:
                continue
            if world_size > 1:
                _wait_for_files(d, n_samples)
            fid = _fid(d, n_samples, feature_fn, reference, batch_size)
            rows.append(dict(eta=_eta_label(eta), S=S, steps=len(sampling_steps(S, T, spacing)), n=n_samples,
                             fid=fid, paper_fid=PAPER_TABLE1.get(eta, {}).get(S), seconds=round(seconds, 2)))
    if rank != 0:
        return []
    _write_csv(out_dir / "table1.csv", rows, ["eta", "S", "steps", "n", "fid", "paper_fid", "seconds"])
    metric = "FID (Inception, CIFAR-10 train)" if feature_fn is None else "Fréchet distance (injected features)"
    md = (f"# DDIM Table 1: {metric}, measured (paper), {n_samples} samples, {spacing} steps\n\n"
          + _markdown_grid(rows, "S", list(S_list), "eta", [_eta_label(e) for e in etas],
                           lambda r: f"{_fmt(r['fid'])} ({_fmt(r['paper_fid'], 6)})").replace(f"| {SIGMA_HAT} |", "| σ̂ |"))
    atomic_write(out_dir / "table1.md", lambda f: f.write(md), text=True)
    return rows


@torch.no_grad()
def reconstruction_error(model, images: torch.Tensor, alpha_bar, seq, batch_size: int = 250, device=None,
                         amp: bool = False) -> tuple[float, int]:
    """Σ over images of the per-dimension squared error of `samplers.reconstruct` (x_0 → x_T → x_0, η = 0),
    with images and reconstructions (clamped to [−1, 1]) scaled to [0, 1] as in DDIM Table 2; returns (sum of
    per-image MSEs, number of images) (notebook 07 §3)."""
    from . import data, samplers

    device = _model_device(model, device)
    eps_fn = _as_eps(model, amp)
    alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64).to(device)
    total = 0.0
    for k in range(0, len(images), batch_size):
        x0 = data.to_model_range(images[k:k + batch_size]).to(device)
        rec = samplers.reconstruct(eps_fn, x0, alpha_bar, seq).clamp(-1, 1)
        total += float((((rec - x0) / 2) ** 2).flatten(1).mean(1).sum())
    return total, len(images)


def reproduce_table2(model, out_dir, *, images=None, n_images: int | None = None,
                     S_list=(10, 20, 50, 100, 200, 500, 1000), spacing: str = "uniform", alpha_bar=None,
                     batch_size: int = 250, device=None, amp: bool = False, rank: int | None = None,
                     world_size: int | None = None, progress: bool = False) -> list[dict]:
    """DDIM Table 2: reconstruction error of DDIM encode → decode with S steps each way.

    images: uint8 N×C×H×W (default: the CIFAR-10 test set, `data.load_cifar10(train=False)`); the
    first n_images are used, split over ranks (summed with all_reduce when torch.distributed is up).
    spacing "uniform" is the official code's default (S = 1000 is then every step). Writes
    `table2.csv` and `table2.md` on rank 0; returns rows dict(S, steps, n, mse, paper_mse, seconds).
    """
    from . import data

    if images is None:
        images, _ = data.load_cifar10(train=False)
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
    if n_images is not None:
        images = images[:n_images]
    rank, world_size = _dist_info(rank, world_size)
    alpha_bar = schedule.make_alpha_bar("linear", 1000) if alpha_bar is None else torch.as_tensor(alpha_bar)
    T = alpha_bar.shape[0]
    mine = images[rank::world_size]
    rows = []
    it = S_list
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(S_list, desc="table2")
    for S in it:
        seq = sampling_steps(S, T, spacing)
        t0 = time.perf_counter()
        total, count = reconstruction_error(model, mine, alpha_bar, seq, batch_size, device, amp)
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            buf = torch.tensor([total, count], dtype=torch.float64,
                               device="cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(buf)
            total, count = float(buf[0]), int(buf[1])
        rows.append(dict(S=S, steps=len(seq), n=count, mse=total / count, paper_mse=PAPER_TABLE2.get(S),
                         seconds=round(time.perf_counter() - t0, 2)))
    if rank != 0:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "table2.csv", rows, ["S", "steps", "n", "mse", "paper_mse", "seconds"])
    md = (f"# DDIM Table 2: reconstruction error (per-dimension MSE, [0, 1] scale), measured (paper), "
          f"{len(images)} images, {spacing} steps\n\n"
          + "| S | " + " | ".join(str(r["S"]) for r in rows) + " |\n|" + "---|" * (len(rows) + 1) + "\n"
          + "| error | " + " | ".join(f"{_fmt(r['mse'], 3)} ({_fmt(r['paper_mse'], 6)})" for r in rows) + " |\n")
    atomic_write(out_dir / "table2.md", lambda f: f.write(md), text=True)
    return rows


# --------------------------------------------------------------------------- command line

def _csv_list(text: str, kind):
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(f"expected a comma-separated list, got {text!r}: {e}") from None


def _reference_for(features: str, in_ch: int, resolution: int, data_root=None):
    """(feature_fn, reference) for `--features`: inception (torch-fidelity), digits or random."""
    from . import data

    if features == "inception":
        if in_ch != 3:
            raise ValueError("Inception FID needs RGB (CIFAR-10) models; for a digits model use --features digits")
        return None, None
    if features == "digits":
        if in_ch != 1:
            raise ValueError("--features digits scores one-channel digit models; for RGB use inception or random")
        return digits_feature_fn, data.load_digits(resolution)[0]
    if features == "random":
        f = random_features(in_ch)
        if in_ch == 1:
            return f, data.load_digits(resolution)[0]
        name = f"cifar10-train_random64-seed0_{in_ch}ch"
        return f, reference_stats(name, lambda: data.load_cifar10(data_root, train=True)[0], f)
    raise ValueError(f"unknown features {features!r}; choose inception, digits or random")


def cmd_reproduce(args) -> int:
    """`python -m ddimlab reproduce table1|table2 --checkpoint PATH ...` (see `add_reproduce_parser`)."""
    import torch.distributed as dist

    from .cli import load_model
    from .train import setup_distributed

    _, _, device, started = setup_distributed(args.device)
    try:
        net, abar = load_model(args.checkpoint, device, use_ema=not args.no_ema)
        cfg = getattr(net, "config", {})
        in_ch, res = int(cfg.get("in_ch", 3)), int(cfg.get("resolution", 32))
        out = Path(args.out)
        if args.table == "table1":
            feature_fn, reference = _reference_for(args.features, in_ch, res, args.data_root)
            steps = _csv_list(args.steps, int) if args.steps else [10, 20, 50, 100, 1000]
            etas = _csv_list(args.etas, str) if args.etas else [0.0, 0.2, 0.5, 1.0, SIGMA_HAT]
            rows = reproduce_table1(net, out, S_list=steps, eta_list=etas, n_samples=args.n_samples,
                                    spacing=args.spacing or "quad", shape=(in_ch, res, res), alpha_bar=abar,
                                    feature_fn=feature_fn, reference=reference, batch_size=args.batch_size,
                                    seed=args.seed, device=device, amp=args.amp, progress=args.progress)
            table = out / "table1.md"
        else:
            from . import data
            if in_ch == 3:
                images = data.load_cifar10(args.data_root, train=False)[0]
            else:
                images = data.load_digits(res)[0]
            steps = _csv_list(args.steps, int) if args.steps else [10, 20, 50, 100, 200, 500, 1000]
            rows = reproduce_table2(net, out, images=images, n_images=args.n_images, S_list=steps,
                                    spacing=args.spacing or "uniform", alpha_bar=abar, batch_size=args.batch_size,
                                    device=device, amp=args.amp, progress=args.progress)
            table = out / f"{args.table}.md"
        if rows:
            print(table.read_text(), end="")
            print(f"-> {table}, {table.with_suffix('.csv')}")
    finally:
        if started:
            dist.destroy_process_group()
    return 0


def add_reproduce_parser(subparsers) -> None:
    """Add `reproduce table1|table2` to an argparse subparsers object (cli.py calls this).

        python -m ddimlab reproduce table1 --checkpoint model-790000.ckpt            # the paper's grid, 50k samples
        python -m ddimlab reproduce table1 --checkpoint … --n-samples 1000 --steps 10,50 --etas 0,1
        torchrun --nproc_per_node 8 -m ddimlab reproduce table1 --checkpoint …      # split over 8 GPUs
        python -m ddimlab reproduce table2 --checkpoint … --n-images 1000
    """
    p = subparsers.add_parser("reproduce", help="DDIM paper Table 1 (FID over eta x S) or Table 2 (reconstruction)")
    p.add_argument("table", choices=("table1", "table2"))
    p.add_argument("--checkpoint", required=True,
                   help="ddimlab ckpt.pt, the official DDPM model-790000.ckpt (or `ddpm-cifar10` to download it "
                        "once), or a diffusers UNet2DModel folder")
    p.add_argument("--out", default=None, help="output folder (default runs/<table>)")
    p.add_argument("--steps", help="comma-separated S values (default: the paper's)")
    p.add_argument("--etas", help="table1: comma-separated eta values, 'sigma_hat' for DDPM's large variance")
    p.add_argument("--spacing", choices=schedule.SPACINGS, default=None,
                   help="timestep selection (default quad for table1 as the paper, uniform for table2)")
    p.add_argument("--n-samples", type=int, default=50_000, help="table1: samples per (eta, S) (paper: 50000)")
    p.add_argument("--n-images", type=int, default=None, help="table2: first N test images (default all)")
    p.add_argument("--features", choices=("inception", "digits", "random"), default="inception",
                   help="table1: inception = FID via torch-fidelity (pip install ddimlab[fid]); digits = the "
                        "digits classifier (1-channel models); random = a fixed random conv net (smoke test)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK under torchrun), cpu, cuda, …")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights of a ddimlab checkpoint")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--data-root", default=None, help="CIFAR-10 tarball or folder (default: download to the cache)")
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.set_defaults(func=_cmd_reproduce_with_defaults)


def _cmd_reproduce_with_defaults(args) -> int:
    if args.out is None:
        args.out = f"runs/{args.table}"
    return cmd_reproduce(args)
