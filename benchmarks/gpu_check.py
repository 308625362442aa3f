"""One command for a lent GPU (`make gpu-check`): on a CUDA machine with no internet, in about 5 minutes (283 s on
an H200),

1. the UNet benchmark (`bench_unet.py`) at batch 128 without and with torch.compile: images/s and % of the
   bf16 bound, ddimlab beside diffusers' UNet2DModel (skipped with a note where diffusers is missing);
2. the `cifar10` preset (DDPM's 35.7M-parameter UNet, bf16) trained for a few hundred steps on 32×32
   stand-in data that ships with the package (scikit-learn's digits in RGB, `dataset=digits_rgb`),
   stopped halfway and resumed from its checkpoint;
3. 1,000 images sampled with DDIM-50 (bf16 autocast) from the raw weights (after a few hundred steps the preset's EMA,
   decay 0.9999 without warm-up, is still mostly the initial weights);

then one summary table (also written as JSON to OUT/gpu_check.json). `--tiny` runs the same pipeline
with tiny sizes on any machine in seconds: the tests use it, so the script is known to work before a
GPU is lent.

    python benchmarks/gpu_check.py                 # on the GPU machine
    python benchmarks/gpu_check.py --tiny --device cpu
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from ddimlab import checkpoint, devices, generate, schedule
from ddimlab.cli import USER_ERRORS, folder, refuse_dotdot_through_missing, sigterm_as_interrupt
from ddimlab.files import atomic_write, check_out_folder, refuse_existing
from ddimlab.train import _check_out, make_config, read_log, refuse_sample_folder, train

sys.path.insert(0, str(Path(__file__).resolve().parent))   # bench_unet.py sits beside this script
import bench_unet  # noqa: E402

TINY_MODEL = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), num_groups=8, dropout=0.0)


def bench(args, device) -> list[dict]:
    """bench_unet.py without and with torch.compile; rows of (setting, model, forward/train img/s, % bound)."""
    try:
        import diffusers  # noqa: F401  (bench_unet compares against it)
    except ImportError:
        print("bench: diffusers is not installed (pip install -e '.[bench]'); UNet benchmark skipped")
        return []
    rows = []
    for compile_ in ([False] if args.tiny else [False, True]):
        argv = ["--device", str(device), "--batch", str(args.bench_batch), "--iters", str(args.iters),
                "--warmup", str(args.warmup), "--preset", "tiny" if args.tiny else "cifar10"] + (
                    ["--compile"] if compile_ else [])
        run = bench_unet.main(argv)
        peak, flops, paired = run["peak_tflops"], 2 * run["macs"], run["paired"]
        for name in ("ddimlab", "diffusers"):
            f, t = run["results"][f"{name}/forward"], run["results"][f"{name}/train"]
            rows.append(dict(setting="compile" if compile_ else "eager", model=name, batch=args.bench_batch,
                             forward_img_s=f["images_per_s"], train_img_s=t["images_per_s"],
                             forward_bound=100 * f["images_per_s"] * flops / (peak * 1e12) if peak else None,
                             train_bound=100 * t["images_per_s"] * 3 * flops / (peak * 1e12) if peak else None,
                             peak_tflops=peak, gflop=flops / 1e9,
                             **({} if name == "diffusers" else {"forward_vs_diffusers": paired["forward"],
                                                                 "train_vs_diffusers": paired["train"]})))
    return rows


def train_and_resume(args, device, out: Path) -> dict:
    """The cifar10 preset on the digits stand-in: half the steps, a checkpoint, then a resumed second half."""
    extra = TINY_MODEL if args.tiny else {}
    half = args.train_steps // 2
    config = make_config("cifar10", dict(dataset="digits_rgb", device=str(device), out=str(out), steps=half,
                                         batch_size=args.train_batch, log_every=max(1, half // 4), ckpt_every=half,
                                         sample_every=0, n_samples=0, progress=not args.no_progress, warmup=10,
                                         **extra))
    t0 = time.perf_counter()
    train(config, overwrite=args.overwrite)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    train(dataclasses.replace(config, steps=args.train_steps, ckpt_every=args.train_steps), resume=True)
    second = time.perf_counter() - t0
    log = read_log(out / "log.jsonl")
    steps = [r["step"] for r in log]
    state = checkpoint.load_checkpoint(out / "ckpt.pt", required=("step",))
    ok = state["step"] == args.train_steps and steps == sorted(set(steps)) and all(math.isfinite(r["loss"]) for r in log)
    return dict(steps=args.train_steps, batch=args.train_batch, precision=precision(device, config.bf16),
                first_half_s=first, resumed_half_s=second,
                img_s=max(r["img_per_s"] for r in log), first_loss=log[0]["loss"], last_loss=log[-1]["loss"],
                resume_ok=ok)


def sample(args, device, run: Path) -> dict:
    """DDIM-50 (η = 0) from the raw weights, bf16 autocast on CUDA, in batches; all outputs must be finite."""
    net, abar = checkpoint.load_model(run, device, use_ema=False)
    seq = schedule.timesteps(args.sample_steps, abar.shape[0], "uniform")
    shape = (net.config["in_ch"], net.config["resolution"], net.config["resolution"])
    bench_unet.sync(device)
    t0 = time.perf_counter()
    finite = True
    for i in range(0, args.n_samples, args.sample_batch):
        x = generate.sample_indices(net, range(i, min(i + args.sample_batch, args.n_samples)), shape, abar, seq,
                                    device=device, amp=device.type == "cuda")
        finite &= bool(torch.isfinite(x).all())
    bench_unet.sync(device)
    seconds = time.perf_counter() - t0
    return dict(n=args.n_samples, steps=len(seq), precision=precision(device, device.type == "cuda"), seconds=seconds,
                img_s=args.n_samples / seconds, finite=finite)


def precision(device, bf16: bool) -> str:
    """What ran: bf16 autocast on CUDA only (train and generate leave it off elsewhere), else float32; with the device."""
    return f"{'bf16 autocast' if bf16 and device.type == 'cuda' else 'float32'} on {device.type}"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cuda, cpu (default: auto)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes, any device, seconds (what the tests run)")
    p.add_argument("--out", type=folder, default=None,
                   help="folder for the run and gpu_check.json (default: a temporary folder, of which only gpu_check.json "
                        "is kept: the run is hundreds of MB)")
    p.add_argument("--overwrite", action="store_true",
                   help="start the run again where --out already holds one, and replace its gpu_check.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-bench", action="store_true", help="skip the UNet benchmark (stage 1): training and sampling only")
    args = p.parse_args(argv)
    terminate = sigterm_as_interrupt()
    try:
        return check(args)
    except KeyboardInterrupt as e:   # Ctrl-C or SIGTERM: one line, as the command line says it
        said = str(e) if args.out else ""          # train's "saved <run>" would name the throwaway run, removed
        print("gpu_check: interrupted" + (f": {said}" if said else ""), file=sys.stderr)
        raise SystemExit(130) from None
    except USER_ERRORS as e:         # one line, as the command line says them
        raise SystemExit(f"gpu_check: error: {e}") from None
    finally:
        terminate.restore()


def check(args) -> dict:
    sizes = dict(bench_batch=1, iters=1, warmup=0, train_steps=4, train_batch=8, n_samples=8, sample_batch=4,
                 sample_steps=3) if args.tiny else dict(bench_batch=128, iters=20, warmup=5, train_steps=400,
                                                        train_batch=128, n_samples=1000, sample_batch=500,
                                                        sample_steps=50)
    vars(args).update(sizes)
    device = devices.resolve(args.device)
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("gpu_check: no CUDA device here; pass --tiny to run the pipeline with tiny sizes")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.out:                           # nodir/../x: nodir would be made on the way and left behind
        refuse_dotdot_through_missing(args.out)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ddimlab_gpu_check_"))
    check_out_folder(out, "a folder for the check")
    refuse_sample_folder(out)              # a `reproduce` cell: gpu_check.json and run/ would lie among its samples
    _check_out(out / "run", resume=False, overwrite=args.overwrite, resumable=False)   # before the benchmark's minutes
    report_file = out / "gpu_check.json"   # an earlier check's report (a lent GPU's, perhaps), its run removed or not
    refuse_existing(args.overwrite, report_file, hint=" (an earlier check's report)")
    t0 = time.perf_counter()
    try:
        report = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
                      torch=torch.__version__, tiny=args.tiny, bench=[] if args.no_bench else bench(args, device))
        report["train"] = train_and_resume(args, device, out / "run")
        report["sample"] = sample(args, device, out / "run")
    except BaseException:            # an error or Ctrl-C: a throwaway run (hundreds of MB on a GPU) goes with it
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    report["seconds"] = time.perf_counter() - t0
    print_summary(report)
    if not args.out:
        shutil.rmtree(out / "run")
    atomic_write(report_file, lambda f: f.write(json.dumps(report, indent=1)), text=True)
    print(f"the report as JSON: {out / 'gpu_check.json'}" + ("" if args.out else " (the run itself, a throwaway, is "
                                                                                 "removed; --out DIR keeps it)"))
    if not (report["train"]["resume_ok"] and report["sample"]["finite"]):
        raise SystemExit("gpu_check: FAILED (see the table above)")
    return report


def print_summary(r: dict) -> None:
    pct = lambda v: "   n/a" if v is None else f"{v:5.1f}%"  # noqa: E731
    ratio = lambda p: f"{p['ratio']:.3f}x" + ("" if p["se"] is None else f" ± {p['se']:.3f} {p['reading']}")  # noqa: E731
    print(f"\n== ddimlab GPU check on {r['device']} (torch {r['torch']}){', tiny sizes' if r['tiny'] else ''}, "
          f"{r['seconds']:.0f} s in all ==")
    if r["bench"]:
        print(f"{'UNet, batch ' + str(r['bench'][0]['batch']):<22}{'forward img/s':>14}{'% bound':>9}"
              f"{'train img/s':>13}{'% bound':>9}   ddimlab over diffusers, forward; train (± SE, at 3 SE)")
        for b in r["bench"]:
            line = (f"{b['model'] + ', ' + b['setting']:<22}{b['forward_img_s']:>14.0f}{pct(b['forward_bound']):>9}"
                    f"{b['train_img_s']:>13.0f}{pct(b['train_bound']):>9}")
            if "forward_vs_diffusers" in b:
                line += "   " + "; ".join(ratio(b[k]) for k in ("forward_vs_diffusers", "train_vs_diffusers"))
            print(line)
        b = r["bench"][0]
        if b["peak_tflops"]:
            print(f"(% bound: of {b['peak_tflops']:.0f} TFLOP/s, the datasheet's dense bf16 peak, at {b['gflop']:.1f} "
                  f"GFLOP per image forward and 3x that per training step)")
    t, s = r["train"], r["sample"]
    print(f"training ({t['steps']} steps, batch {t['batch']}, {t['precision']}): {t['img_s']:.0f} img/s at best, "
          f"loss {t['first_loss']:.3f} -> {t['last_loss']:.3f}; stopped at {t['steps'] // 2} and resumed: "
          f"{'ok' if t['resume_ok'] else 'FAILED'}")
    print(f"sampling ({s['n']} images, DDIM-{s['steps']}, {s['precision']}): {s['seconds']:.1f} s = {s['img_s']:.0f} img/s; "
          f"outputs finite: {'yes' if s['finite'] else 'NO'}")


if __name__ == "__main__":
    main()
