"""ddimlab's DDPM UNet beside diffusers' UNet2DModel at the identical CIFAR-10 configuration.

Both networks get the same weights (converted with `checkpoint.to_diffusers`; the outputs are
checked to agree first), the same inputs and the same training step: ε-prediction MSE (L_simple),
backward, global grad-norm clip 1, Adam 2e-4. Timings alternate between the two models, round by
round, so that background load hits both alike; the median and the fastest run are reported, and the
speed-up as the geometric mean of the per-round ratios with its standard error over the rounds (paired:
a slow minute slows both runs of its round), read at 3 SE as ahead, behind or unresolved.

- CPU: float32, small batch, `--threads` threads (2 by default).
- CUDA: bf16 autocast, TF32, channels_last, fused Adam (`--compile` adds torch.compile), and
  images/s against the bound set by the GPU's bf16 peak: 6.2 GMACs = 12.4 GFLOP per forward pass,
  ≈ 3× that per training step (forward + backward).

    python benchmarks/bench_unet.py                   # CPU defaults: batch 8, 10 timed rounds
    python benchmarks/bench_unet.py --batch 128 --iters 20 [--compile]   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddimlab import checkpoint, devices, files, quality, unet
from ddimlab.cli import Formatter, file_name, int_in, names_a_folder, one_line_errors, refuse_dotdot_through_missing

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def build_pair(device, channels_last: bool, preset: str = "cifar10"):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    ours = unet.UNet(**unet.PRESETS[preset])
    theirs = UNet2DModel(**checkpoint.diffusers_config(ours.config))
    theirs.load_state_dict(checkpoint.to_diffusers(ours.state_dict()), strict=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return ours.to(device, memory_format=fmt), theirs.to(device, memory_format=fmt)


def as_eps(model, is_diffusers: bool):
    if is_diffusers:
        return lambda x, t: model(x, t, return_dict=False)[0]
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_steps(model, eps, device, batch, bf16, fused, compile_, shape=(3, 32, 32)):
    fn = torch.compile(eps) if compile_ else eps
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, fused=fused) if fused else \
        torch.optim.Adam(model.parameters(), lr=2e-4, foreach=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    g = torch.Generator(device="cpu").manual_seed(1)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.randn(batch, *shape, generator=g).to(device).contiguous(memory_format=fmt)
    noise = torch.randn(batch, *shape, generator=g).to(device).contiguous(memory_format=fmt)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)

    def forward():
        model.eval()
        with torch.inference_mode(), autocast:
            fn(x, t)

    def train_step():
        model.train()
        with autocast:
            loss = F.mse_loss(fn(x, t).float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"forward": forward, "train": train_step}


def time_interleaved(steps: dict, device, warmup: int, iters: int) -> dict:
    """steps: name -> callable. Returns name -> list of seconds, alternating the order each round."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    sync(device)
    out = {n: [] for n in names}
    for i in range(iters):
        for n in (names if i % 2 == 0 else names[::-1]):
            sync(device)
            t0 = time.perf_counter()
            steps[n]()
            sync(device)
            out[n].append(time.perf_counter() - t0)
    return out


def need_diffusers(prog: str) -> None:
    """Exit with one line where diffusers, which the benchmarks compare against, is not installed."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise SystemExit(f"{prog}: error: this benchmark compares with diffusers, which is not installed: "
                         f"pip install diffusers (or make bench)") from None


def _tflops(text: str) -> float:
    """An argparse type: a finite number > 0 (a peak of 0, negative or NaN gave bounds of that sign, or none at all)."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0 (TFLOP/s), got {text!r}")
    return v


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch", type=int_in(1), default=None, help="default: 8 on CPU, 128 on CUDA")
    p.add_argument("--iters", type=int_in(1), default=None, help="timed rounds, each model once per round (default 10 CPU, "
                                                                 "20 CUDA; at least 2 for a standard error)")
    p.add_argument("--warmup", type=int_in(0), default=None, help="untimed iterations (default 1 CPU, 5 CUDA)")
    p.add_argument("--threads", type=int_in(1, devices.most_threads()), default=2, help="CPU threads")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--peak-tflops", type=_tflops, default=None, help="bf16 dense peak (H100 SXM: 989)")
    p.add_argument("--json", type=file_name, default=None, help="also write the results to this JSON file (its folder "
                                                                 "is made if missing, as the commands' --out)")
    p.add_argument("--overwrite", action="store_true", help="replace the --json file of an earlier run")
    p.add_argument("--preset", default="cifar10", choices=sorted(unet.PRESETS), help="network size (tiny: a smoke test)")
    args = p.parse_args(argv)
    if args.json:                  # said now, not after the timings
        try:
            refuse_dotdot_through_missing(args.json, "--json")
        except ValueError as e:
            p.error(str(e))
        if names_a_folder(args.json):
            p.error(f"argument --json: {args.json} names a folder; give a file name")
        try:                       # an earlier run's results (a GPU's, perhaps), or a link to none yet
            files.refuse_existing(args.overwrite, args.json, option="--json")
        except FileExistsError as e:
            p.error(f"argument --json: {e}")
        try:
            files.check_can_write(Path(args.json).parent, hint="choose another --json")
        except OSError as e:
            p.error(f"argument --json: {e}")
    need_diffusers(p.prog)
    saved_threads = torch.get_num_threads()
    try:
        return run(args)
    except devices.DeviceError as e:       # raised before any work: no such device, or no GPU for cuda
        raise SystemExit(f"{p.prog}: error: {e}") from None
    finally:
        torch.set_num_threads(saved_threads)


def run(args):
    """The benchmark for parsed arguments; returns what --json writes: the timings under results["<model>/<kind>"],
    the speed-ups over diffusers under paired[kind] (`speedup`), macs and peak_tflops. `main` restores the caller's
    thread count afterwards."""
    device = devices.resolve(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (128 if cuda else 8)
    iters = args.iters or (20 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    bf16 = cuda and not args.fp32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(args.threads)

    ours, theirs = build_pair(device, channels_last=cuda, preset=args.preset)
    res, in_ch = ours.config["resolution"], ours.config["in_ch"]
    # Same function first: identical weights must give identical outputs (float32, eval mode).
    with torch.no_grad():
        xs, ts = torch.randn(2, in_ch, res, res, device=device), torch.tensor([10, 900], device=device)
        err = (ours.eval()(xs, ts) - theirs.eval()(xs, ts).sample).abs().max().item()
    assert err < 1e-3, f"ddimlab and diffusers disagree by {err}"

    macs = unet.count_macs(ours)
    flops = 2 * macs
    peak = peak_tflops(device, args.peak_tflops)
    models = {"ddimlab": (ours, False), "diffusers": (theirs, True)}
    steps = {name: make_steps(m, as_eps(m, d), device, batch, bf16, cuda, args.compile, (in_ch, res, res))
             for name, (m, d) in models.items()}

    results, paired = {}, {}
    for kind in ("forward", "train"):
        times = time_interleaved({n: s[kind] for n, s in steps.items()}, device, warmup, iters)
        paired[kind] = speedup(times["diffusers"], times["ddimlab"])
        for n, ts_ in times.items():
            med = statistics.median(ts_)
            results[(n, kind)] = dict(seconds=med, best=min(ts_), images_per_s=batch / med,
                                      runs=[round(v, 5) for v in ts_])

    where = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()}, " \
                                                              f"{torch.get_num_threads()} threads"
    print(f"DDPM UNet ({args.preset}): {unet.count_params(ours) / 1e6:.2f}M parameters, {macs / 1e9:.2f} GMACs "
          f"({flops / 1e9:.1f} GFLOP) per image forward")
    print(f"device: {where}; batch {batch}; {'bf16 autocast' if bf16 else 'float32'}"
          f"{', channels_last' if cuda else ''}{', torch.compile' if args.compile else ''}; "
          f"median of {iters} (after {warmup} warm-up); max |Δε̂| between the two = {err:.1e}")
    head = f"{'':<10}{'forward ms':>12}{'img/s':>10}{'train ms':>12}{'img/s':>10}"
    if peak:
        head += f"{'fwd %bound':>12}{'train %bound':>14}"
    print(head)
    bound_fwd = peak * 1e12 / flops if peak else None
    bound_train = peak * 1e12 / (3 * flops) if peak else None
    for n in models:
        f, tr = results[(n, "forward")], results[(n, "train")]
        line = f"{n:<10}{1e3 * f['seconds']:>12.1f}{f['images_per_s']:>10.1f}{1e3 * tr['seconds']:>12.1f}" \
               f"{tr['images_per_s']:>10.1f}"
        if peak:
            line += f"{100 * f['images_per_s'] / bound_fwd:>11.1f}%{100 * tr['images_per_s'] / bound_train:>13.1f}%"
        print(line)
    ratio_f = results[("diffusers", "forward")]["seconds"] / results[("ddimlab", "forward")]["seconds"]
    ratio_t = results[("diffusers", "train")]["seconds"] / results[("ddimlab", "train")]["seconds"]
    best_f = results[("diffusers", "forward")]["best"] / results[("ddimlab", "forward")]["best"]
    best_t = results[("diffusers", "train")]["best"] / results[("ddimlab", "train")]["best"]
    print(f"speed-up of ddimlab over diffusers: forward {ratio_f:.2f}×, training step {ratio_t:.2f}× "
          f"(medians; fastest runs: {best_f:.2f}×, {best_t:.2f}×)")
    for kind, p in paired.items():
        if p["se"] is None:
            print(f"  {kind}: {p['ratio']:.3f}× (one round: no standard error; use --iters 10 or more)")
        else:
            print(f"  {kind}: {p['ratio']:.3f}× ± {p['se']:.3f} (geometric mean of {iters} paired rounds ± SE): "
                  f"{p['reading']}")
    if peak:
        print(f"bound at {peak:.0f} TFLOP/s bf16: {bound_fwd:,.0f} img/s forward, {bound_train:,.0f} img/s training")

    out = dict(device=where, batch=batch, bf16=bf16, compile=args.compile, iters=iters, macs=macs,
               peak_tflops=peak, ratio_forward=ratio_f, ratio_train=ratio_t, ratio_forward_best=best_f,
               ratio_train_best=best_t, max_abs_diff=err, paired=paired,
               results={f"{n}/{k}": v for (n, k), v in results.items()})
    if args.json:
        files.atomic_write(args.json, lambda fh: fh.write(json.dumps(out, indent=2)), text=True)
    return out


def speedup(theirs: list, ours: list) -> dict:
    """diffusers' time over ddimlab's: exp of the mean per-round log ratio, its SE by the delta method (paired over
    the rounds, `quality.mean_difference`), and its reading at 3 SE (ahead of diffusers, behind, or unresolved)."""
    log_t, log_o = torch.tensor(np.log(theirs)), torch.tensor(np.log(ours))
    if len(ours) < 2:
        return dict(ratio=float(torch.exp(log_t - log_o).mean()), se=None, reading="unresolved")
    mean, se = quality.mean_difference(log_t, log_o, paired=True)
    ratio = float(np.exp(mean))
    se = ratio * se
    reading = "ahead" if ratio - 3 * se > 1 else "behind" if ratio + 3 * se < 1 else "unresolved"
    return dict(ratio=ratio, se=se, reading=reading)


def cli(argv=None):
    """`python benchmarks/bench_unet.py`: `main`, with Ctrl-C as one line (nothing is half-written: --json is written
    whole at the end). gpu_check calls `main` itself and cleans up on the KeyboardInterrupt."""
    with one_line_errors(Path(sys.argv[0]).name):
        return main(argv)


if __name__ == "__main__":
    cli()
