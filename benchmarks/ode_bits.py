"""The probability-flow ODE's bits per pixel beside the negative ELBO's, on the same digits (notebook 05 §9,
notebook 06 §4).

Both bound the code length of 8-bit images, pixel values x = k/127.5 − 1, from the demo's digits model
(`pretrained.digits_model`, cached as the demo's). The ELBO is DDPM's, with its discretized decoder
(`elbo.elbo_terms`). The ODE gives a density p on ℝ^d (`ode.log_likelihood`), and a density is turned into a
code for the bins of width Δ = 2/255 around the values by uniform dequantization: with u uniform on the bin,

    log P(x) = log ∫_bin p(x + u) du ≥ E_u log p(x + u) + d log Δ     (Jensen),

so −(log p(x + u) + d log Δ)/(d log 2) for one u is an unbiased estimate of an upper bound on the ODE model's
bits per pixel. The two are paired over the digits (the same images): the difference's standard error is that
of the per-image differences. They bound different models (the ODE's push-forward of N(0, I) and DDPM's
Markov chain), both from the same ε network.

That ODE runs down to ᾱ = 1 (`t_end=-1`), and so calls ε at steps in (−1, 0), which the network never saw in
training (steps 0..T−1). `--t-end 0` stops it at step 0 (ᾱ_0 = 1 − β_0, σ = 0.01) and codes the bins as DDPM does,
through a latent z at step 0. For any density p(z) and any q(z | x), Jensen's inequality (as in DDPM eq. 3) gives

    −log P(x) = −log ∫ p(z) p_θ(x | z) dz ≤ E_q[−log p(z) − log p_θ(x | z) + log q(z | x)],          (B0)

here with q(z | x) = N(√ᾱ_0 x, (1 − ᾱ_0) I), the forward process to step 0; p_θ(x | z) DDPM's discretized decoder,
the one the ELBO's L_0 uses (`elbo.decoder_nll`: mean x̂_0 = (z − √(1 − ᾱ_0) ε_θ(z, 0))/√ᾱ_0, variance
`elbo.model_variance(...)[0]`), a probability over the bins that sums to 1; and p(z) the ODE's density at step 0
(`ode.log_likelihood(..., t_end=0)`), the push-forward of N(0, I). So (B0) bounds the code length of a proper model of
the 8-bit images, and one z per image, with log q(z | x) at that z, is an unbiased estimate of it. The indices agree:
DDPM's x_1 ~ N(√(1 − β_1) x_0, β_1 I) and its decoder p_θ(x_0 | x_1) are ddimlab's step 0 (β_0 = 1e-4 = DDPM's β_1,
ᾱ_0 = 1 − β_0) and `decoder_nll`, whose network call is at step 0; `log_likelihood`'s t_end = 0 is that same ᾱ_0.

DDPM's negative ELBO is (B0) with p(z) the Markov chain's marginal p_θ(z) = ∫ p(x_{T−1}) ∏_{t≥1} p_θ(x_{t−1} | x_t)
dx_{1..T−1} (x_t at step t, z = x_0 at step 0, x the data), which it cannot evaluate and bounds in turn: the forward
process is Markov, q(z, x_{1..T−1} | x) = q(z | x) q(x_{1..T−1} | z), so

    L_T + Σ_{t≥1} L_{t−1} + L_0 = E_q[−log p_θ(z) − log p_θ(x | z) + log q(z | x)]
                                  + E_q KL(q(x_{1..T−1} | z) ‖ p_θ(x_{1..T−1} | z)).

The two share the decoder term L_0 = E_q[−log p_θ(x | z)] (the same function, the same q(z | x)) and E_q log q(z | x) =
−(d/2)(1 + log 2π(1 − ᾱ_0)); they differ in −E_q log p(z): the ODE's, computed (to the solver's tolerance), against the
chain's, plus the chain's KL gap ≥ 0.

`--t-end split` parts the two ODE bounds' difference in two, with a third bound between them: the ODE's density p_0 at
step 0 read as a density of the pixels and dequantized as at σ = 0, −(log p_0(x + u) + d log Δ)/(d log 2), with the same
u and probes as the bound at σ = 0 (so paired with it twice over) and network calls at trained steps only. Its distance
to (B0) is how the bins are coded from one density (a uniform u against DDPM's decoder), and its distance to the bound at
σ = 0 is what the stretch (−1, 0) does to the uniformly dequantized code. On pixels at bin centres far apart against
σ_0 = 0.01 (the digits' 17 levels), with the exact ε*, the step-0 density near a level is w_k N(x_k, 1 − ᾱ_0): a uniform u
codes the bin in −log2 w_k + 1.713 bits (the Gaussian's mass in the bin is 0.305), DDPM's decoder, with sd √β̃_1 = 0.94
levels, in −log2 w_k + 1.305 (tests/test_ode_bits.py).

The ODE is integrated by scipy on the CPU between network calls, with `--hutchinson` Rademacher probes per
image for the divergence (0: the exact divergence, d backward passes per call); on 2 CPU cores beside other work 64 digits took
110 to 130 s at the default tolerances, and 111 s with `--t-end 0`; `--t-end split` on one thread, 4 minutes (README, Benchmarks).

    python benchmarks/ode_bits.py                       # 64 training digits, the demo's model
    python benchmarks/ode_bits.py --t-end 0           # stop at step 0, then DDPM's decoder (B0)
    python benchmarks/ode_bits.py --t-end both        # both ODE bounds on the same digits, paired
    python benchmarks/ode_bits.py --t-end split       # both, and their difference in two parts
    python benchmarks/ode_bits.py --n 512             # on a GPU (--device auto picks it)
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from pathlib import Path

import torch

from ddimlab import data, devices, diffusion, elbo, gaussian, ode, pretrained, schedule
from ddimlab.checkpoint import eps_fn
from ddimlab.cli import Formatter, folder, int_in, one_line_errors
from ddimlab.files import check_can_write

sys.path.insert(0, str(Path(__file__).resolve().parent))   # digits_recipes.py sits beside this script
from digits_recipes import verdict  # noqa: E402

BIN = 2 / 255                                  # the width of one 8-bit level in [−1, 1]
ENDS = {"-1": ("-1",), "0": ("0",), "both": ("-1", "0"), "split": ("-1", "0u", "0")}   # --t-end: the ODE bounds each run computes


def dequantized_bits(log_p: torch.Tensor, d: int) -> torch.Tensor:
    """Bits per pixel of the bins from log p(x + u) of one dequantized draw per image: −(log p + d log Δ)/(d log 2)."""
    return -(log_p + d * math.log(BIN)) / (d * math.log(2))


def ode_bits(eps, x0: torch.Tensor, alpha_bar, generator: torch.Generator, hutchinson: int, rtol: float,
             atol: float, t_end: int = -1) -> torch.Tensor:
    """Each image's ODE bits per pixel, one uniform u in its bin and `hutchinson` probes (0: exact divergence), both
    drawn from the CPU `generator`: the ODE's density at step `t_end` (−1: σ = 0; 0: the density of step 0, read as one
    of the pixels, which calls the network at trained steps only) at x + u."""
    u = ((torch.rand(x0.shape, generator=generator, dtype=torch.float64) - 0.5) * BIN).to(x0.device, x0.dtype)
    k = dict(hutchinson=hutchinson, generator=generator) if hutchinson else {}
    log_p = ode.log_likelihood(eps, x0 + u, alpha_bar, t_end=t_end, rtol=rtol, atol=atol, **k)
    return dequantized_bits(log_p, x0[0].numel())


def decoder_bits(eps, x0: torch.Tensor, alpha_bar, generator: torch.Generator, hutchinson: int, rtol: float,
                 atol: float) -> torch.Tensor:
    """Each image's bound (B0) in bits per pixel, −(log p_ODE(z) + log p_θ(x | z) − log q(z | x))/(d log 2), for one
    z = √ᾱ_0 x + √(1 − ᾱ_0) ε at step 0, ε and `hutchinson` probes (0: exact divergence) drawn from the CPU `generator`."""
    a_0 = float(alpha_bar[0])
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device, x0.dtype)
    z = diffusion.q_sample(x0, a_0, noise)
    k = dict(hutchinson=hutchinson, generator=generator) if hutchinson else {}
    log_p = ode.log_likelihood(eps, z, alpha_bar, t_end=0, rtol=rtol, atol=atol, **k)
    with torch.no_grad():
        decoder = elbo.decoder_nll(x0, z, eps(z, z.new_zeros(len(z))), alpha_bar).double()
    log_q = gaussian.log_normal(z.double(), math.sqrt(a_0) * x0.double(), 1 - a_0).reshape(len(z), -1).sum(1)
    return (-log_p.to(decoder.device) + decoder + log_q) / (x0[0].numel() * math.log(2))


# each bound's key in the report (ode_to_KEY), its label, and its function (`ode_bits`'s or `decoder_bits`' signature)
BOUNDS = {"-1": ("ODE to step -1", ode_bits), "0u": ("ODE to step 0, bins uniform", functools.partial(ode_bits, t_end=0)),
          "0": ("ODE to step 0", decoder_bits)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    p.add_argument("--n", type=int_in(2), default=64, help="training digits, drawn at random (at least 2, for a standard error)")
    p.add_argument("--seed", type=int_in(0, 2 ** 32 - 1), default=0, help="draws the digits, the dequantization and the probes")
    p.add_argument("--hutchinson", type=int_in(0), default=1,
                   help="Rademacher probes per image (fewer than its pixels); 0 for the exact divergence")
    p.add_argument("--t-end", choices=tuple(ENDS), default="-1",
                   help="where the ODE stops: -1 at the data (dequantized bins; calls the network at steps in (-1, 0)), 0 "
                        "at step 0, then DDPM's decoder (bound B0; only steps the network was trained on), both, paired, or "
                        "split: both, and step 0's density at x + u, which parts their difference into the bins' code and "
                        "the stretch (-1, 0)")
    tolerances = f"{ode.rtol_floor(torch.float32):.2g} to {ode.TOL_CEILING:g}"
    p.add_argument("--rtol", type=float, default=1e-3, help=f"the ODE solver's relative tolerance, {tolerances}")
    p.add_argument("--atol", type=float, default=1e-3, help=f"the ODE solver's absolute tolerance, {tolerances}")
    p.add_argument("--steps", type=int_in(1), default=None, help="the digits model's training steps (default: the preset's)")
    p.add_argument("--device", default="auto", help="where the network runs: auto (cuda if present), cpu, cuda, cuda:N, mps")
    p.add_argument("--cache", type=folder, default=None, help="model cache folder (default: $DDIMLAB_CACHE, as the demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while a model trains (minutes, once)")
    args = p.parse_args(argv)
    try:                                           # log_likelihood's rule, said before the work
        ode.check_tolerances(args.rtol, args.atol, "the network's float32 can give", torch.float32, as_option=True)
    except ValueError as e:
        p.error(str(e))
    with one_line_errors(p.prog):    # a device this machine lacks, a --cache that cannot be written, more digits than there are
        check_can_write(pretrained.models_dir(args.cache), hint="choose another --cache")   # named as the option, not cache_dir
        return measure(args, devices.resolve(args.device))


def measure(args, device: torch.device) -> dict:
    """The code lengths of `--n` digits, the ELBO's and the ODE's to each `--t-end`, printed with their paired
    differences (`main`'s arguments)."""
    digits, _ = data.load_digits(pretrained.digits_config(args.steps).resolution)
    if args.n > len(digits):                       # said before a model is trained
        raise ValueError(f"--n {args.n}: there are {len(digits)} digits")
    if args.hutchinson >= (d := digits[0].numel()):    # k probes are k backward passes per call, the exact divergence d
        raise ValueError(f"--hutchinson {args.hutchinson}: as many probes as the d = {d} pixels cost as many backward passes "
                         f"as the exact divergence, which has no variance: pass 0 for it, or fewer than {d} probes")
    print("the digits model: training or loading from the cache", flush=True)
    model, config = pretrained.digits_model(args.steps, cache_dir=args.cache, progress=not args.no_progress)
    model = model.to(device)
    alpha_bar = schedule.make_alpha_bar(config.schedule, config.T)
    g = torch.Generator().manual_seed(args.seed)
    x0 = data.to_model_range(digits[torch.randperm(len(digits), generator=g)[:args.n]]).to(device)

    start = time.perf_counter()
    with torch.no_grad():            # x_t's noise drawn where the network runs
        g_elbo = torch.Generator(device).manual_seed(args.seed)
        bpd_elbo = elbo.elbo_terms(eps_fn(model), x0, alpha_bar, generator=g_elbo)["bpd"].double().cpu()
    print(f"negative ELBO: {time.perf_counter() - start:.0f} s", flush=True)
    report = dict(elbo=bpd_elbo)
    for end in ENDS[args.t_end]:     # each from the generator's state after the digits, as a run of that bound alone
        start, g_end = time.perf_counter(), torch.Generator().set_state(g.get_state())
        label, bits = BOUNDS[end]
        report[f"ode_to_{end}"] = bits(lambda x, t: model(x, t), x0, alpha_bar, g_end, args.hutchinson, args.rtol,
                                       args.atol).cpu()
        print(f"{label}: {time.perf_counter() - start:.0f} s", flush=True)

    print(f"\nbits per pixel on {args.n} digits (± SE over them): negative ELBO {mean_se(bpd_elbo)}")
    for end in ENDS[args.t_end]:
        bpd = report[f"ode_to_{end}"]
        print(f"{BOUNDS[end][0]} {mean_se(bpd)}; ODE minus ELBO, paired: {paired(bpd, bpd_elbo)}")
    if args.t_end in ("both", "split"):
        print(f"ODE to step 0 minus ODE to step -1, paired: {paired(report['ode_to_0'], report['ode_to_-1'])}")
    if args.t_end == "split":        # the same u and probes in both uniform bounds: the stretch's share is paired twice over
        print(f"  of which the bins' code at step 0, DDPM's decoder minus a uniform u, paired: "
              f"{paired(report['ode_to_0'], report['ode_to_0u'])}\n"
              f"  and the stretch (-1, 0), step 0's density minus step -1's, both at x + u, paired: "
              f"{paired(report['ode_to_0u'], report['ode_to_-1'])}")
    return report


def mean_se(v: torch.Tensor) -> str:
    """The mean over the digits ± its standard error."""
    return f"{float(v.mean()):.3f} ± {float(v.std()) / math.sqrt(len(v)):.3f}"


def paired(a: torch.Tensor, b: torch.Tensor) -> str:
    """a − b over the same digits: its mean ± SE, and how that reads (beyond 3 SE, unresolved, not told apart)."""
    mean, se = float((a - b).mean()), float((a - b).std()) / math.sqrt(len(a))
    return f"{mean:+.3f} ± {se:.3f} ({verdict(mean, se)})"


if __name__ == "__main__":
    main()
