"""Command line: `python -m ddimlab train|sample|invert|interpolate|reproduce|demo ...` (README "Using it").

    python -m ddimlab train --preset digits --out runs/digits [--set lr=5e-4 --set steps=2000] [--resume]
    python -m ddimlab sample --checkpoint runs/digits/ckpt.pt --steps 50 --eta 0 --n 64 --out samples.png
    python -m ddimlab invert --checkpoint runs/digits/ckpt.pt --input samples.npz --out latents.npz
    python -m ddimlab interpolate --checkpoint runs/digits/ckpt.pt --seeds 0 1 --n 8 --out strip.png

`--checkpoint` takes a ddimlab training checkpoint (EMA weights unless --no-ema), the official DDPM
CIFAR-10 file (`model-790000.ckpt`, via `checkpoint.load_official_ddpm`; the name `ddpm-cifar10`
downloads it once into the cache) or a diffusers
UNet2DModel folder (e.g. a local copy of google/ddpm-cifar10-32). Images are written as PNG grids
next to an `.npz` holding the float samples in [−1, 1].
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, schedule
from .files import atomic_write
from .plotting import save_image_grid
from .samplers import ddim_invert, ddim_sample, ddpm_sample, slerp
from .train import PRESETS, eps_fn, load_trained, make_config, train
from .unet import cifar10_unet


# --------------------------------------------------------------------------- helpers

def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _diffusers_alpha_bar(folder: Path) -> torch.Tensor:
    """ᾱ from a diffusers pipeline's scheduler_config.json next to the UNet, else DDPM's linear schedule."""
    for cfg in (folder / "scheduler" / "scheduler_config.json", folder.parent / "scheduler" / "scheduler_config.json"):
        if cfg.is_file():
            c = json.loads(cfg.read_text())
            T = int(c.get("num_train_timesteps", 1000))
            name = {"linear": "linear", "squaredcos_cap_v2": "cosine", "scaled_linear": "quadratic"}.get(
                c.get("beta_schedule", "linear"))
            if name is None:
                raise ValueError(f"{cfg}: beta_schedule {c.get('beta_schedule')!r} is not supported; "
                                 f"supported: linear, scaled_linear, squaredcos_cap_v2")
            if name == "cosine":
                return schedule.make_alpha_bar("cosine", T)
            betas = schedule.beta_schedule(name, T, c.get("beta_start", 1e-4), c.get("beta_end", 0.02))
            return schedule.alpha_bar(betas)
    return schedule.make_alpha_bar("linear", 1000)


def load_model(path, device="cpu", use_ema: bool = True):
    """(net, alpha_bar float64) from a ddimlab checkpoint, the official DDPM file or a diffusers folder."""
    path = checkpoint.official_ddpm_file() if str(path) == checkpoint.OFFICIAL_NAME else Path(path)
    if path.is_dir():
        net = checkpoint.load_diffusers_folder(path)
        abar = _diffusers_alpha_bar(path)
    else:
        state = checkpoint.load_checkpoint(path)
        if isinstance(state, dict) and "config" in state and "model" in state:
            net, config = load_trained(state, use_ema=use_ema)
            abar = schedule.make_alpha_bar(config.schedule, config.T)
        else:  # the official layout, already read: no second pass over the 143 MB file
            net = checkpoint.load_state_strict(cifar10_unet(), checkpoint.official_state_dict(state), source=str(path))
            abar = schedule.make_alpha_bar("linear", 1000)
    return net.to(device).eval(), abar.to(device)


def _model_for(args):
    """(net, alpha_bar, device, seq) for a subcommand's --checkpoint, --device, --no-ema, --steps, --spacing."""
    device = _device(args.device)
    net, abar = load_model(args.checkpoint, device, use_ema=not args.no_ema)
    return net, abar, device, schedule.timesteps(args.steps, abar.shape[0], args.spacing)


def _save_npz(path: Path, **arrays) -> Path:
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def _latents(seed: int, n: int, shape, device) -> torch.Tensor:
    """x_T ~ N(0, I) drawn on the CPU from `seed`, so a seed gives the same noise on every device."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g).to(device)


def _run_sampler(net, abar, seq, x_T, args, generator):
    if args.sampler == "ddpm":  # all T steps: DDPM's own chain
        return ddpm_sample(eps_fn(net), x_T, abar, variance=args.variance,
                           seq=None if args.steps >= abar.shape[0] else seq, generator=generator, clip_x0=args.clip)
    return ddim_sample(eps_fn(net), x_T, abar, seq, eta=args.eta, generator=generator, clip_x0=args.clip)


def _image_shape(net):
    cfg = getattr(net, "config", {})
    return (cfg.get("in_ch", 3), cfg.get("resolution", 32), cfg.get("resolution", 32))


def _read_images(paths, shape) -> torch.Tensor:
    """Images in [−1, 1] (N, C, H, W) from an .npz (x0 / samples / images) or PNG files."""
    C, H, W = shape
    if len(paths) == 1 and str(paths[0]).endswith(".npz"):
        with np.load(paths[0]) as z:
            for key in ("x0", "samples"):
                if key in z:
                    x = torch.as_tensor(z[key], dtype=torch.float32)
                    break
            else:
                if "images" not in z:
                    raise ValueError(f"{paths[0]} has none of the arrays x0, samples, images; it has {list(z)}")
                x = torch.as_tensor(z["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    else:
        import matplotlib.image as mpimg

        imgs = []
        for p in paths:
            a = np.asarray(mpimg.imread(p), dtype=np.float32)
            if a.max() > 1.0:
                a = a / 255.0
            a = a[..., None] if a.ndim == 2 else a[..., :3]
            imgs.append(torch.as_tensor(a).permute(2, 0, 1) * 2 - 1)
        x = torch.stack(imgs)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != C:
        x = x.mean(1, keepdim=True) if C == 1 else x.expand(-1, C, -1, -1) if x.shape[1] == 1 else x
    if tuple(x.shape[1:]) != (C, H, W):
        raise ValueError(f"the model takes images of shape {(C, H, W)}, got {tuple(x.shape[1:])}")
    return x


# --------------------------------------------------------------------------- subcommands

def cmd_train(args) -> int:
    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out={args.out}")
    if args.no_progress:
        overrides.append("progress=false")
    config = make_config(args.preset, overrides)
    out = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {out / 'ckpt.pt'}")
    return 0


def cmd_sample(args) -> int:
    net, abar, device, seq = _model_for(args)
    x_T = _latents(args.seed, args.n, _image_shape(net), device)
    g = torch.Generator(device=device).manual_seed(args.seed + 1)
    t0 = time.perf_counter()
    chunks = [_run_sampler(net, abar, seq, x_T[i:i + args.batch_size], args, g)
              for i in range(0, args.n, args.batch_size)]
    x0 = torch.cat(chunks).float().cpu()
    seconds = time.perf_counter() - t0
    out = Path(args.out)
    png, npz = out.with_suffix(".png"), out.with_suffix(".npz")
    save_image_grid(x0, png, nrow=args.nrow, scale=args.scale)
    _save_npz(npz, samples=x0.numpy(), x_T=x_T.cpu().numpy(), seed=args.seed, steps=args.steps, eta=args.eta,
              spacing=args.spacing, sampler=args.sampler)
    what = f"eta={args.eta}" if args.sampler == "ddim" else f"variance={args.variance}"
    print(f"{args.n} samples ({args.sampler}, {args.steps} steps, {what}, {args.spacing}) "
          f"in {seconds:.1f} s -> {png}, {npz}")
    return 0


def cmd_invert(args) -> int:
    net, abar, device, seq = _model_for(args)
    x0 = _read_images(args.input, _image_shape(net)).to(device)
    x_T = ddim_invert(eps_fn(net), x0, abar, seq)
    recon = ddim_sample(eps_fn(net), x_T, abar, seq)
    mse = ((recon - x0) ** 2).flatten(1).mean(1)
    out = Path(args.out)
    npz = _save_npz(out.with_suffix(".npz"), x_T=x_T.cpu().numpy(), x0=x0.cpu().numpy(),
                    recon=recon.cpu().numpy(), mse=mse.cpu().numpy(), steps=args.steps, spacing=args.spacing)
    png = save_image_grid(torch.cat([x0, recon]).cpu(), out.with_suffix(".png"), nrow=x0.shape[0], scale=args.scale)
    print(f"inverted {x0.shape[0]} image(s) with {len(seq)} DDIM steps; reconstruction MSE "
          f"{float(mse.mean()):.3g} (mean) -> {npz}, {png} (top: input, bottom: reconstruction)")
    return 0


def cmd_interpolate(args) -> int:
    net, abar, device, seq = _model_for(args)
    if args.latents:
        with np.load(args.latents) as z:
            lat = torch.as_tensor(z["x_T"], dtype=torch.float32)
        i, j = args.index
        if not (0 <= i < len(lat) and 0 <= j < len(lat)):
            raise ValueError(f"--index must be two indices in 0..{len(lat) - 1}, got {i} {j}")
        z0, z1 = lat[i:i + 1].to(device), lat[j:j + 1].to(device)
    else:
        z0, z1 = (_latents(s, 1, _image_shape(net), device) for s in args.seeds)
    lam = torch.linspace(0, 1, args.n)
    z = slerp(z0, z1, lam.to(device))
    x0 = ddim_sample(eps_fn(net), z, abar, seq).float().cpu()
    out = Path(args.out)
    png = save_image_grid(x0, out.with_suffix(".png"), nrow=args.n, scale=args.scale)
    npz = _save_npz(out.with_suffix(".npz"), samples=x0.numpy(), x_T=z.cpu().numpy(), lam=lam.numpy())
    print(f"{args.n} images along slerp(z0, z1, λ) -> {png}, {npz}")
    return 0


def cmd_demo(argv: list[str]) -> int:
    """`python -m ddimlab demo ...`: options declared by `demo.add_arguments`, run by `demo.main`."""
    from . import demo

    parser = argparse.ArgumentParser(prog="python -m ddimlab demo", description=demo.__doc__.split("\n")[0])
    demo.add_arguments(parser)
    return int(demo.main(parser.parse_args(argv)) or 0)


# --------------------------------------------------------------------------- parser

def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def _model_args(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="ddimlab ckpt.pt, the official DDPM model-790000.ckpt (or `ddpm-cifar10` to download it once), "
                        "or a diffusers UNet2DModel folder")
    p.add_argument("--steps", type=_positive, default=50, help="number of sampling steps S (default 50)")
    p.add_argument("--spacing", choices=schedule.SPACINGS, default="uniform", help="timestep sub-sequence")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights of a ddimlab checkpoint")
    p.add_argument("--scale", type=_positive, default=2, help="pixel enlargement of the PNG (default 2)")
    p.add_argument("--out", default=out_default, help=f"output path; .png and .npz are written (default {out_default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddimlab", description="DDPM / DDIM: train, sample, invert.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a UNet with L_simple (presets: " + ", ".join(PRESETS) + ")")
    p.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a TrainConfig field, e.g. --set lr=5e-4 --set ch_mult=1,2,2 (repeatable)")
    p.add_argument("--out", help="output directory (default: the preset's)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples with DDIM (any eta) or DDPM ancestral sampling")
    _model_args(p, "samples.png")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM posterior variance")
    p.add_argument("--variance", choices=("small", "large"), default="small",
                   help="ddpm sampler: posterior beta tilde (small) or beta (large, the DDIM paper's sigma hat)")
    p.add_argument("--clip", action="store_true", help="clip the predicted x0 to [-1, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=_positive, default=64, help="number of samples")
    p.add_argument("--nrow", type=_positive, default=None, help="images per row of the grid")
    p.add_argument("--batch-size", type=_positive, default=256)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("invert", help="DDIM inversion x0 -> x_T of images (.npz or PNG files)")
    _model_args(p, "latents.npz")
    p.add_argument("--input", nargs="+", required=True,
                   help="an .npz with x0/samples (N,C,H,W in [-1,1]) or images (N,H,W,C uint8), or PNG files")
    p.set_defaults(func=cmd_invert)

    p = sub.add_parser("interpolate", help="slerp between two latents and decode with DDIM (eta = 0)")
    _model_args(p, "interpolation.png")
    p.add_argument("--seeds", type=int, nargs=2, default=(0, 1), metavar=("A", "B"))
    p.add_argument("--latents", help="an .npz from `invert`; interpolate between its x_T[--index]")
    p.add_argument("--index", type=int, nargs=2, default=(0, 1), metavar=("I", "J"))
    p.add_argument("--n", type=_positive, default=8, help="number of frames")
    p.set_defaults(func=cmd_interpolate)

    from .evaluate import add_reproduce_parser

    add_reproduce_parser(sub)

    # `demo` is dispatched in main() before this parser runs; listed here for --help
    sub.add_parser("demo", help="the README's main job (ddimlab.demo); `demo --help` lists its options")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:1] == ["demo"]:  # demo's options live in ddimlab.demo, imported only when asked for
        return cmd_demo(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
