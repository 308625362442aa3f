"""The DDIM paper's tables on a real model: Table 1 (FID over η × S) and Table 2 (reconstruction error).

`reproduce_table1` generates the samples of every cell (`generate.generate_samples`: resumable, split
over ranks) and scores them (`fid`); `reproduce_table2` encodes and decodes test images
(`samplers.reconstruct`). Both write CSV and Markdown, with the paper's values beside the measured ones where they are the same
measure.
`score_grid` is an in-memory η × S table for small models (e.g. the digits model, scored by
`demo.score`). All three run their cells through `grid`. README "Reproducing the DDIM paper" gives the commands.
"""
from __future__ import annotations

import csv
import io
import math
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from . import data, devices, schedule
from .checkpoint import eps_fn
from .checks import a_list, check_bool, check_distinct, check_int
from .fid import compute_fid, fid_inception, image_stats, load_images, stats_of
from .files import atomic_write, check_can_write, replaced_together
from .generate import check_eta, check_room, check_shape, generate_samples, resolve_rank, sample_indices, sampling_steps
from .generate import progress as show_progress
from .samplers import FROM_NOISE, SIGMA_HAT, TO_NOISE, OutOfRangeWarning, check_eta_steps, check_first_step, reconstruct

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


def eta_label(eta) -> str:
    """A Table 1 row's name: "sigma_hat" or η formatted with %g."""
    return SIGMA_HAT if eta == SIGMA_HAT else f"{eta:g}"


def grid(cell, eta_list, S_list) -> list[dict]:
    """Run `cell(eta, S) -> dict` for every η (rows) and S (columns), timing each: the one loop behind
    every η × S table; rows are dict(eta=label, S=S, seconds=…, **cell(eta, S))."""
    rows = []
    for eta in (check_eta(e) for e in eta_list):
        for S in S_list:
            t0 = time.perf_counter()
            result = cell(eta, S)
            rows.append(dict(eta=eta_label(eta), S=S, seconds=round(time.perf_counter() - t0, 3), **result))
    return rows


def score_grid(model, score_fn, S_list=(10, 20, 50, 100), eta_list=(0.0, 0.5, 1.0, SIGMA_HAT), n: int = 200, *,
               shape=None, spacing: str = "uniform", alpha_bar=None, seed: int = 0, batch_size: int = 500,
               device=None) -> list[dict]:
    """An in-memory η × S table: n samples per cell, the same x_T in every cell.

    score_fn maps samples in [−1, 1] (N×C×H×W, on the CPU) to a dict of numbers, e.g.
    `quality.score_digits`; rows are dict(eta, S, seconds, **score_fn(x)). shape: (C, H, W), by default the
    network's own (`generate.check_shape`).
    """
    alpha_bar = schedule.make_alpha_bar("linear", 1000) if alpha_bar is None else schedule.validate_alpha_bar(alpha_bar)
    n, batch_size = check_int("n", n), check_int("batch_size", batch_size)
    shape = check_shape(shape, model)
    _check_grid(eta_list, S_list, alpha_bar, spacing)

    def cell(eta, S):
        seq = sampling_steps(S, alpha_bar.shape[0], spacing)
        x = torch.cat([sample_indices(model, range(k, min(k + batch_size, n)), shape, alpha_bar, seq, eta, seed,
                                      device=device) for k in range(0, n, batch_size)]).cpu()
        scores = score_fn(x)
        if not isinstance(scores, dict):             # else "argument after ** must be a mapping", in `grid`
            raise TypeError(f"score_fn must return a dict of numbers (a row's columns), got {type(scores).__name__}")
        return scores
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a function of the samples, e.g. quality.score_digits; got {score_fn!r}")
    return grid(cell, eta_list, S_list)


def _wait_for_files(directory: Path, n: int, timeout: float = 24 * 3600, poll: float = 10.0) -> None:
    # without a process group, rank 0 waits for the other ranks' files
    t0 = time.time()
    while sum(1 for _ in directory.glob("*.png")) < n:
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{directory} still has fewer than {n} images after {timeout:.0f} s")
        time.sleep(poll)


def _fid(sample_dir, n, feature_fn, reference, batch_size):
    if feature_fn is None:
        return fid_inception(sample_dir, reference or "cifar10-train", n=n)
    return compute_fid(load_images(sample_dir, n), reference, feature_fn, batch_size)


def _reference_stats(feature_fn, reference, shape, batch_size):
    """Before the first sample: the reference's (μ, Σ) in feature_fn's space (once, not once per cell), and feature_fn
    tried on two blank images of the samples' shape, so that a missing reference, a feature_fn that does not take the
    model's images, or features of another length than the reference's are said before hours of sampling."""
    if reference is None:
        raise ValueError("with a feature_fn, pass reference= (images, a PNG directory, (mu, sigma) or an .npz)")
    mu, sigma = stats_of(reference, feature_fn, batch_size)
    d = len(image_stats(torch.zeros((2, *shape), dtype=torch.uint8), feature_fn)[0])
    if d != len(mu):
        raise ValueError(f"feature_fn gives {d} features for the model's {tuple(shape)} images, and the reference's "
                         f"statistics have {len(mu)}: compute them with the same feature_fn")
    return mu, sigma


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
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue()), text=True)


def _fmt(v, digits=4):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def _paper_cell(paper: dict, value) -> str:
    """A cell's " (paper's value)", or "" where the table is not the paper's measure."""
    return f" ({_fmt(value, 6)})" if paper else ""


def _paper_note(paper: dict, setting: str) -> str:
    """The tables' note where the paper's values are left out: beside another measure they would read as a comparison."""
    return "" if paper else (f"\nThe paper's values are not shown: they are for {setting}, and these settings measure "
                             f"something else.\n")


def _eta_name(eta) -> str:
    return "_sigma_hat" if eta == SIGMA_HAT else f"{eta:g}"


def _check_grid(eta_list, S_list, alpha_bar, spacing: str) -> None:
    """Every (η, S) of the grid is valid, checked before the first cell is sampled (a bad value found later
    would cost every cell before it): η by `check_eta`, S by `sampling_steps`, σ(η)² ≤ 1 − ᾱ_s on each step."""
    etas = [check_eta(e) for e in a_list(eta_list, "eta_list", "(0.0, 1.0)")]
    check_distinct(etas, "eta")  # after check_eta: 0 and -0 are one η
    names = {}
    for eta in etas:             # the cell folders name η with 6 significant digits
        if (other := names.setdefault(_eta_name(eta), eta)) != eta:
            raise ValueError(f"eta = {other} and eta = {eta} would share the cell folder eta{_eta_name(eta)}_S…, whose "
                             f"name keeps 6 significant digits; give etas that differ within those")
    for seq in _check_steps(S_list, alpha_bar, spacing):
        for eta in etas:
            if eta != SIGMA_HAT:
                check_eta_steps(alpha_bar, seq, eta)


def _check_steps(S_list, alpha_bar, spacing: str, why: str = FROM_NOISE) -> list[torch.Tensor]:
    """Each S's timesteps (`sampling_steps`), every S checked and none listed twice before the first is run; a warning
    for each that starts near the data (`check_first_step`: S = 1 on a uniform grid is t = 0)."""
    schedule.validate_alpha_bar(alpha_bar)           # a β table would fail later as "a_s must be >= a_t"
    check_distinct(a_list(S_list, "S_list", "(10, 20)"), "S")
    seqs = [sampling_steps(S, alpha_bar.shape[0], spacing) for S in S_list]
    for seq in seqs:
        check_first_step(alpha_bar, seq, why)
    return seqs


PAPER_ETAS = (0.0, 0.2, 0.5, 1.0, SIGMA_HAT)     # DDIM Table 1's rows


def reproduce_table1(model, out_dir, *, S_list=(10, 20, 50, 100, 1000), eta_list=PAPER_ETAS,
                     n_samples: int = 50_000, spacing: str = "quad", shape=None, alpha_bar=None,
                     feature_fn=None, reference=None, batch_size: int = 250, seed: int = 0, device=None,
                     amp: bool = False, rank: int | None = None, world_size: int | None = None,
                     progress: bool = False, model_id: str | None = None, features: str | None = None) -> list[dict]:
    """DDIM Table 1: FID for every (η, S), measured beside the paper's (PAPER_TABLE1) where it is the same measure.

    Samples go to `out_dir/samples/eta<η>_S<S>/` (resumable, split over ranks); rank 0 then scores
    each set — with Inception through torch-fidelity against CIFAR-10 train when feature_fn is None,
    else with feature_fn against `reference` — and writes `table1.csv` and `table1.md`. Returns the
    rows on rank 0 ([] elsewhere): dict(eta, S, seconds, steps, n, fid, paper_fid).
    The paper used 50,000 samples and quadratic steps; fewer samples bias FID upwards. model_id: names a plain
    callable's weights, and shape (default: the network's own), as in `generate_samples`. features: what feature_fn
    is, named in the table's heading (default "injected features"; `reproduce --features` names its choice).
    """
    amp, progress = check_bool("amp", amp), check_bool("progress", progress)
    n_samples = check_int("n_samples", n_samples, 2, note=" (a Fréchet distance needs a mean and a covariance)")
    shape = check_shape(shape, model)
    rank, world_size = resolve_rank(rank, world_size)
    alpha_bar = schedule.make_alpha_bar("linear", 1000) if alpha_bar is None else schedule.validate_alpha_bar(alpha_bar)
    T, out_dir = alpha_bar.shape[0], Path(out_dir)
    _check_grid(eta_list, S_list, alpha_bar, spacing)
    if features is not None and (feature_fn is None or not isinstance(features, str) or not features.strip()):
        raise ValueError(f"features names a feature_fn in the table's heading: a non-blank string with feature_fn, got "
                         f"{features!r}" + (" without one (Inception is the default's own name)" if feature_fn is None else ""))
    cells = {(eta, S): out_dir / "samples" / f"eta{_eta_name(eta)}_S{S}" for eta in map(check_eta, eta_list)
             for S in S_list}
    for p in (out_dir / "samples", *cells.values()):     # a file in the way is said before the first cell, not after it
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"{p} is a file where reproduce keeps samples; move it or choose another out_dir")
    check_room(list(cells.values()), n_samples, f"{len(cells)} cell{'s' if len(cells) > 1 else ''} of {n_samples:,} samples",
               rank, world_size)
    if feature_fn is not None and rank == 0:
        reference = _reference_stats(feature_fn, reference, shape, batch_size)

    def cell(eta, S):
        d = cells[eta, S]
        with warnings.catch_warnings():          # a grid that starts near the data was said once, by _check_steps
            warnings.filterwarnings("ignore", "the (noisiest of the|only step)", OutOfRangeWarning)
            generate_samples(model, d, n_samples, shape=shape, S=S, eta=eta, spacing=spacing, alpha_bar=alpha_bar,
                             batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, device=device,
                             amp=amp, progress=progress, model_id=model_id)
        devices.barrier()
        if rank != 0:
            return {}
        if world_size > 1:
            _wait_for_files(d, n_samples)
        return dict(steps=len(sampling_steps(S, T, spacing)), n=n_samples, fid=_fid(d, n_samples, feature_fn,
                    reference, batch_size), paper_fid=paper.get(eta, {}).get(S))

    # the paper's values only beside the same measure: Inception FID (against CIFAR-10 train) on quadratic steps
    paper = PAPER_TABLE1 if feature_fn is None and spacing == "quad" else {}
    rows = grid(cell, eta_list, S_list)
    if rank != 0:
        return []
    metric = "FID (Inception, CIFAR-10 train)" if feature_fn is None else f"Fréchet distance ({features or 'injected features'})"
    md = (f"# DDIM Table 1: {metric}, measured{' (paper)' if paper else ''}, {n_samples} samples, {spacing} steps\n\n"
          + _markdown_grid(rows, "S", list(S_list), "eta", [eta_label(check_eta(e)) for e in eta_list],
                           lambda r: _fmt(r["fid"]) + _paper_cell(paper, r["paper_fid"])).replace(f"| {SIGMA_HAT} |", "| σ̂ |"))
    md += _fewer_steps_note(S_list, T, spacing) + _paper_note(paper, "Inception FID of CIFAR-10 samples on quadratic steps")
    with replaced_together(out_dir, [out_dir / "table1.csv", out_dir / "table1.md"]):     # never a new .csv beside an old .md
        _write_csv(out_dir / "table1.csv", rows, ["eta", "S", "steps", "n", "fid", "paper_fid", "seconds"])
        atomic_write(out_dir / "table1.md", lambda f: f.write(md), text=True)
    return rows


def _fewer_steps_note(S_list, T: int, spacing: str) -> str:
    """The tables' note where a spacing rule visits fewer distinct steps than S (quad repeats small steps)."""
    fewer = [f"S = {S}: {n}" for S in S_list if (n := len(sampling_steps(S, T, spacing))) < S]
    return (f"\nS is the paper's count; {spacing} spacing repeats small steps, run once each, so the network calls per "
            f"image are {', '.join(fewer)}.\n") if fewer else ""


@torch.no_grad()
def reconstruction_errors(model, images: torch.Tensor, alpha_bar, seq, batch_size: int = 250, device=None,
                          amp: bool = False, callback=None) -> torch.Tensor:
    """Each image's per-dimension squared error after `samplers.reconstruct` (x_0 → x_T → x_0, η = 0), with the
    image and its reconstruction (clamped to [−1, 1]) scaled to [0, 1] as in DDIM Table 2: a float64 tensor (N,) on
    the CPU, whose mean is the table's number (notebook 07 §3). callback: `reconstruct`'s, after each step of each
    batch, both ways."""
    amp, batch_size = check_bool("amp", amp), check_int("batch_size", batch_size)
    device = devices.resolve(device) if device is not None else devices.model_device(model)
    eps = eps_fn(model, amp)
    alpha_bar = schedule.validate_alpha_bar(alpha_bar).to(device)
    errs = []
    for k in range(0, len(images), batch_size):
        x0 = data.to_model_range(images[k:k + batch_size]).to(device)
        rec = reconstruct(eps, x0, alpha_bar, seq, callback).clamp(-1, 1)
        errs.append((((rec - x0) / 2) ** 2).flatten(1).double().mean(1).cpu())
    return torch.cat(errs) if errs else torch.zeros(0, dtype=torch.float64)


def reproduce_table2(model, out_dir, *, images=None, n_images: int | None = None,
                     S_list=(10, 20, 50, 100, 200, 500, 1000), spacing: str = "uniform", alpha_bar=None,
                     batch_size: int = 250, device=None, amp: bool = False, rank: int | None = None,
                     world_size: int | None = None, progress: bool = False, source: str | None = None) -> list[dict]:
    """DDIM Table 2: reconstruction error of DDIM encode → decode with S steps each way.

    images: uint8 N×C×H×W (default: the CIFAR-10 test set, `data.load_cifar10(train=False)`); the
    first n_images are used, split over ranks (summed with all_reduce when torch.distributed is up).
    spacing "uniform" is the official code's default (S = 1000 is then every step). Writes
    `table2.csv` and `table2.md` on rank 0; returns rows dict(S, steps, n, mse, paper_mse, seconds). source: what
    the images are, for the table's heading (default: "CIFAR-10 test images" when images is None, else "images").
    """
    amp, progress = check_bool("amp", amp), check_bool("progress", progress)
    batch_size = check_int("batch_size", batch_size)
    rank, world_size = resolve_rank(rank, world_size)
    if rank == 0 and (out_dir is None or Path(out_dir).is_file()):
        raise ValueError(f"out_dir must be a folder for table2.csv and table2.md, got {out_dir!r}")
    if images is None:
        images, _ = data.load_cifar10(train=False)
        source = source or "CIFAR-10 test images"
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
    if n_images is not None:
        if check_int("n_images", n_images) > len(images):
            raise ValueError(f"n_images {n_images} (--n-images) exceeds the {len(images)} images given; give at most "
                             f"{len(images)}")
        images = images[:n_images]
    if len(images) < world_size:
        raise ValueError(f"{len(images)} images for {world_size} ranks: each rank needs at least one; give at least "
                         f"{world_size} images")
    alpha_bar = schedule.make_alpha_bar("linear", 1000) if alpha_bar is None else schedule.validate_alpha_bar(alpha_bar)
    seqs = _check_steps(S_list, alpha_bar, spacing, TO_NOISE)
    if rank == 0:                   # the tables are written after every reconstruction; the probe leaves nothing behind
        check_can_write(out_dir, "choose another out_dir")
    mine = images[rank::world_size]
    # the paper's values only beside the same measure: CIFAR-10's 3×32×32 test images on uniform steps
    paper = PAPER_TABLE2 if spacing == "uniform" and tuple(images.shape[1:]) == (3, 32, 32) else {}
    rows = []
    batches = -(-len(mine) // batch_size)        # a bar over the network calls: S = 1000 is over half of the default table's
    bar, callback = show_progress(batches * sum(2 * len(seq) for seq in seqs), "table2", progress)
    with bar:
        for S, seq in zip(S_list, seqs):
            t0 = time.perf_counter()
            errs = reconstruction_errors(model, mine, alpha_bar, seq, batch_size, device, amp, callback)
            total, count = float(errs.sum()), len(errs)
            if dist.is_available() and dist.is_initialized():
                buf = torch.tensor([total, count], dtype=torch.float64,
                                   device="cuda" if dist.get_backend() == "nccl" else "cpu")
                dist.all_reduce(buf)
                total, count = float(buf[0]), int(buf[1])
            rows.append(dict(S=S, steps=len(seq), n=count, mse=total / count, paper_mse=paper.get(S),
                             seconds=round(time.perf_counter() - t0, 2)))
    if rank != 0:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = (f"# DDIM Table 2: reconstruction error (per-dimension MSE, [0, 1] scale), measured{' (paper)' if paper else ''}, "
          f"{len(images)} {source or 'images'}, {spacing} steps\n\n"
          + "| S | " + " | ".join(str(r["S"]) for r in rows) + " |\n|" + "---|" * (len(rows) + 1) + "\n"
          + "| error | " + " | ".join(_fmt(r["mse"], 3) + _paper_cell(paper, r["paper_mse"]) for r in rows) + " |\n"
          + _fewer_steps_note(S_list, alpha_bar.shape[0], spacing)
          + _paper_note(paper, "CIFAR-10 test images (3×32×32) on uniform steps"))
    with replaced_together(out_dir, [out_dir / "table2.csv", out_dir / "table2.md"]):
        _write_csv(out_dir / "table2.csv", rows, ["S", "steps", "n", "mse", "paper_mse", "seconds"])
        atomic_write(out_dir / "table2.md", lambda f: f.write(md), text=True)
    return rows


