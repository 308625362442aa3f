"""ddimlab's samplers beside diffusers' schedulers on the same exact ε* and the same timesteps.

Every deterministic sampler starts from the same x_T at t = 999 and is compared with the
probability-flow ODE solved by scipy at tight tolerance (`ode.reference_solution`): the error is
the RMS distance of x_0 to that reference, so it measures the solver and nothing else (the score is
exact). Stochastic samplers (DDPM) are scored with the exact-lab distribution metric instead.

    python benchmarks/bench_samplers.py            # needs `pip install diffusers`
"""
from __future__ import annotations

import argparse

import torch

from ddimlab import ode, samplers, schedule, toy


def counting(eps):
    """Wrap eps so that calls (NFE) are counted."""
    def f(x, t):
        f.nfe += 1
        return eps(x, t)
    f.nfe = 0
    return f


def run_diffusers(scheduler, eps, x_T, S, generator=None):
    """The standard diffusers loop: set_timesteps, scale_model_input, step."""
    scheduler.set_timesteps(S)
    x = x_T * scheduler.init_noise_sigma
    traj = [x]
    for t in scheduler.timesteps:
        e = eps(scheduler.scale_model_input(x, t), t)
        kw = {"generator": generator} if generator is not None else {}
        x = scheduler.step(e, t, x, **kw).prev_sample
        traj.append(x)
    return x, traj


def diffusers_schedulers():
    import diffusers
    common = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    return {
        "DDIMScheduler": lambda: diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True,
                                                         timestep_spacing="trailing"),
        "EulerDiscreteScheduler": lambda: diffusers.EulerDiscreteScheduler(**common, timestep_spacing="trailing"),
        "DPMSolverMultistepScheduler": lambda: diffusers.DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
            final_sigmas_type="zero"),
    }


def ddimlab_solvers():
    """name -> (solver, steps(S, alpha_bar)); the diffusers rows use the same 'trailing' steps."""
    trailing = lambda S, ab: schedule.timesteps(S, 1000, "trailing")  # noqa: E731
    return {
        "ddimlab DDIM (eta=0)": (lambda e, x, ab, seq: samplers.ddim_sample(e, x, ab, seq), trailing),
        "ddimlab Heun": (ode.heun, trailing),
        "ddimlab DPM-Solver-2": (ode.dpm_solver_2, trailing),
        "ddimlab DPM-Solver++(2M)": (ode.dpm_solver_pp_2m, trailing),
        # not the same steps: DPM-Solver's recommended log-SNR spacing (ode.lambda_timesteps)
        "ddimlab DPM-Solver++(2M) logSNR": (ode.dpm_solver_pp_2m, lambda S, ab: ode.lambda_timesteps(S, ab)),
    }


def rms(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def deterministic_table(eps, x_T, ab, budgets):
    """Error against the ODE reference at (at most) each NFE budget, for every solver."""
    ref = ode.reference_solution(eps, x_T, ab, t_start=999)
    results = {}
    for name, (solver, steps) in ddimlab_solvers().items():
        results[name] = {}
        for S in range(2, 201):
            f = counting(eps)
            x0 = solver(f, x_T, ab, steps(S, ab))
            for nfe in budgets:
                if f.nfe <= nfe:
                    results[name][nfe] = (f.nfe, rms(x0, ref))
            if f.nfe >= max(budgets):
                break
    try:
        makers = diffusers_schedulers()
    except ImportError:
        print("diffusers is not installed: `pip install diffusers` to compare with it")
        makers = {}
    for name, make in makers.items():
        results[name] = {}
        for S in range(1, 201):
            f = counting(lambda x, t: eps(x, float(t)))
            x0, _ = run_diffusers(make(), f, x_T, S)
            for nfe in budgets:
                if f.nfe <= nfe:
                    results[name][nfe] = (f.nfe, rms(x0.double(), ref))
            if f.nfe >= max(budgets):
                break
    return results


def stochastic_table(mixture, eps, x_T, ab, steps=(10, 50, 1000)):
    """DDPM ancestral (small variance) in ddimlab and diffusers' DDPMScheduler, scored by exact-lab MMD."""
    import diffusers
    lines = []
    for S in steps:
        seq = schedule.timesteps(S, 1000, "trailing")
        ours = samplers.ddim_sample(eps, x_T, ab, seq, eta=1.0, generator=torch.Generator().manual_seed(1))
        sch = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                      beta_end=0.02, clip_sample=False, variance_type="fixed_small",
                                      timestep_spacing="trailing")
        theirs, _ = run_diffusers(sch, lambda x, t: eps(x, int(t)), x_T, S, generator=torch.Generator().manual_seed(1))
        for name, x in (("ddimlab DDIM(eta=1)", ours), ("DDPMScheduler", theirs.double())):
            r = toy.mmd(x, mixture, generator=torch.Generator().manual_seed(2))
            lines.append(f"  S={S:4d} {name:22s} MMD^2 {r.mmd2:9.2e}  (noise floor {r.floor:.1e})")
    return lines


def step_for_step(eps, x_T, ab):
    """Max |ddimlab DDIM − DDIMScheduler| over every intermediate x, per spacing."""
    import diffusers
    lines = []
    for ours, theirs in (("uniform", "leading"), ("trailing", "trailing")):
        for S in (10, 50):
            sch = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                          beta_end=0.02, clip_sample=False, set_alpha_to_one=True,
                                          timestep_spacing=theirs)
            _, traj_d = run_diffusers(sch, lambda x, t: eps(x, int(t)), x_T, S)
            seq = schedule.timesteps(S, 1000, ours)
            same_steps = seq.tolist() == sch.timesteps.tolist()
            _, tr = samplers.ddim_sample(eps, x_T, ab, seq, return_trajectory=True)
            diff = max(float((a - b.double()).abs().max()) for a, b in zip(tr["x"], traj_d))
            lines.append(f"  spacing {ours:8s} = diffusers {theirs:8s} S={S:3d}: same timesteps {same_steps}, "
                         f"max |x difference| over all {len(traj_d)} states {diff:.1e}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 50])
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    ab = schedule.make_alpha_bar("linear", 1000)
    mixture = toy.default_mixture(args.dim)
    eps = toy.exact_eps(mixture, ab)
    x_T = torch.randn(args.n, args.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    results = deterministic_table(eps, x_T, ab, args.budgets)
    print(f"RMS error of x_0 against the scipy ODE reference (exact ε*, {args.dim}-D mixture, n={args.n}, "
          f"x_T at t=999, 'trailing' steps); cell = error (NFE used)")
    header = f"{'sampler':34s}" + "".join(f"{'NFE<=' + str(b):>18s}" for b in args.budgets)
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        cells = "".join(f"{row[b][1]:>11.2e} ({row[b][0]:3d})" if b in row else f"{'-':>18s}" for b in args.budgets)
        print(f"{name:34s}{cells}")
    for b in args.budgets:
        ours = min((row[b][1], n) for n, row in results.items()
                   if n.startswith("ddimlab") and "logSNR" not in n and b in row)
        theirs = [(row[b][1], n) for n, row in results.items() if not n.startswith("ddimlab") and b in row]
        if theirs:
            best = min(theirs)
            verdict = "<=" if ours[0] <= best[0] else ">"
            print(f"NFE<={b}: best ddimlab {ours[1]} {ours[0]:.2e} {verdict} best diffusers {best[1]} "
                  f"{best[0]:.2e} (ratio {best[0] / ours[0]:.1f}x)")
    try:
        print("ddimlab DDIM vs diffusers DDIMScheduler, step for step:")
        print("\n".join(step_for_step(eps, x_T, ab)))
        print("stochastic samplers (DDPM posterior variance, same steps), exact-lab MMD^2 to the data:")
        print("\n".join(stochastic_table(mixture, eps, x_T, ab)))
    except ImportError:
        pass


if __name__ == "__main__":
    main()
