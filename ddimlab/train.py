"""Train an ε-prediction UNet with L_simple: the DDPM recipe in one file (notebook 06).

    L_simple = E_{x_0, t ~ U{0..T−1}, ε ~ N(0, I)} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖²   (DDPM eq. 14,
    mean over pixels; derived in notebook 02 §6)

Everything is configured by one plain dataclass, `TrainConfig`; `PRESETS` holds the DDPM CIFAR-10
recipe (`cifar10`) and a tiny CPU model on scikit-learn's digits (`digits`). `train(config)` runs it:

- Adam with linear learning-rate warm-up, grad-norm clipping, an EMA copy of the weights;
- on CUDA: bf16 autocast, TF32, channels_last, fused Adam, `torch.compile` when `config.compile`,
  the whole data set as uint8 on the device;
- several processes when launched with `torchrun` (WORLD_SIZE set): DistributedDataParallel with nccl
  on CUDA, gloo on CPU. Every rank draws the same global batch (data order, t, ε, flips) and keeps its
  own slice, so N ranks with batch B/N each compute the gradient of the same global batch of B as one
  process would. Only rank 0 writes;
- checkpoints (model, EMA, optimizer, step, config, RNG states) written atomically; `resume=True`
  continues as if never stopped (bitwise on CPU, tested);
- a non-finite loss stops the run with `NonFiniteLossError` and leaves the last good checkpoint alone;
- a tqdm bar (loss, img/s, ETA), a JSON-lines log and DDIM-50 sample grids from the EMA weights.

Out directory: `ckpt.pt` (latest), `log.jsonl`, `config.json`, `samples/step_XXXXXXX.png`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import schedule
from .diffusion import q_sample
from .files import atomic_write

DATASETS = ("digits", "cifar10")


@dataclass
class TrainConfig:
    """Every knob of a training run; defaults are the `digits` preset."""

    # data
    dataset: str = "digits"              # "digits" (offline, scikit-learn) or "cifar10"
    data_root: str | None = None         # CIFAR-10 tarball / extracted folder / cache dir
    resolution: int = 16
    hflip: bool = False                  # random horizontal flip (CIFAR-10: yes; digits: no)
    # model: ddimlab.unet.UNet
    ch: int = 32
    ch_mult: tuple = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple = (8,)
    dropout: float = 0.0
    num_groups: int = 8                  # GroupNorm groups (DDPM: 32)
    # diffusion
    schedule: str = "linear"
    T: int = 1000
    # optimisation
    steps: int = 3000
    batch_size: int = 64                 # global batch, split across DDP ranks
    lr: float = 2e-3
    warmup: int = 100                    # linear learning-rate warm-up steps
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
        steps=800_000, batch_size=128, lr=2e-4, warmup=5000, grad_clip=1.0,
        ema_decay=0.9999, ema_warmup=False,
        out="runs/cifar10", log_every=100, ckpt_every=10_000, sample_every=10_000, n_samples=64,
    ),
    # 16×16 digits on a 2-core CPU: the TrainConfig defaults, a 1.1M-parameter UNet (ch 32, ch_mult
    # (1, 2, 2), attention at 8×8), batch 64, Adam 2e-3, ~5 steps/s. Measured (DDIM 50, 200 samples,
    # `quality.score_digits`): confident ≥ 0.9 for 70% after 1200 steps, 76% after 1800, 80% after 2400,
    # all ten digits; 3000 steps leave a margin (≈ 10 min; `--set steps=1000` for a 3-minute run).
    "digits": dict(),
}

MODEL_KEYS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "num_groups", "resolution")


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


# --------------------------------------------------------------------------- configuration

def _parse_value(key: str, text: str, default):
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if isinstance(default, bool):
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} must be a boolean (true/false), got {text!r}")
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            inner = text.strip().strip("()[]")
            return tuple(int(v) for v in inner.split(",") if v.strip())
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
    values = dict(PRESETS[preset])
    if isinstance(overrides, (list, tuple)):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like key=value")
            k, v = item.split("=", 1)
            pairs[k.strip()] = v
        overrides = pairs
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for key, value in (overrides or {}).items():
        if key not in defaults:
            raise ValueError(f"unknown config key {key!r}; allowed keys: {', '.join(defaults)}")
        base = values.get(key, defaults[key])
        if isinstance(value, str) and not isinstance(base, str):
            value = _parse_value(key, value, base if base is not None else "")
        values[key] = tuple(value) if isinstance(value, list) else value
    return validate_config(TrainConfig(**values))


def validate_config(c: TrainConfig) -> TrainConfig:
    """Check a config's values; raise ValueError naming the bad value and what is allowed."""
    if c.dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {c.dataset!r}")
    for name in ("steps", "batch_size", "resolution", "T", "ch", "num_res_blocks", "num_groups", "log_every",
                 "ckpt_every", "sample_steps"):
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    for name in ("warmup", "sample_every", "n_samples", "threads"):
        v = getattr(c, name)
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if not c.lr > 0:
        raise ValueError(f"lr must be > 0, got {c.lr}")
    if not 0 <= c.ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {c.ema_decay}")
    if c.grad_clip < 0:
        raise ValueError(f"grad_clip must be >= 0 (0 disables clipping), got {c.grad_clip}")
    if not 0 <= c.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {c.dropout}")
    if c.schedule not in schedule.SCHEDULES:
        raise ValueError(f"schedule must be one of {schedule.SCHEDULES}, got {c.schedule!r}")
    if c.sample_steps > c.T:
        raise ValueError(f"sample_steps must be <= T = {c.T}, got {c.sample_steps}")
    return c


def config_from_dict(d: dict) -> TrainConfig:
    """Rebuild a TrainConfig saved with `dataclasses.asdict` (lists back to tuples, unknown keys dropped)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


# --------------------------------------------------------------------------- building blocks

def build_model(config: TrainConfig, in_ch: int) -> torch.nn.Module:
    """The DDPM UNet (`ddimlab.unet.UNet`) at the config's size."""
    from .unet import UNet

    return UNet(in_ch=in_ch, ch=config.ch, ch_mult=tuple(config.ch_mult), num_res_blocks=config.num_res_blocks,
                attn_resolutions=tuple(config.attn_resolutions), dropout=config.dropout,
                resolution=config.resolution, num_groups=config.num_groups)


def load_dataset(config: TrainConfig) -> torch.Tensor:
    """Training images as uint8 (N, C, R, R)."""
    from . import data

    if config.dataset == "digits":
        x, _ = data.load_digits(resolution=config.resolution)
    else:
        if config.resolution != 32:
            raise ValueError(f"cifar10 images are 32×32; set resolution=32, got {config.resolution}")
        x, _ = data.load_cifar10(root=config.data_root, train=True)
    return x


def l_simple_loss(model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor):
    """L_simple = mean ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖² over batch and pixels (DDPM eq. 14; notebook 06 §3)."""
    x_t = q_sample(x0, alpha_bar[t], eps)
    return F.mse_loss(model(x_t, t).float(), eps.float())


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ; buffers are copied (notebook 06 §3)."""
    e_params = list(ema.parameters())
    m_params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


def ema_decay_at(config: TrainConfig, step: int) -> float:
    """EMA decay for the update after `step` completed steps (with optional warm-up of the decay; notebook 06 §3)."""
    if config.ema_warmup:
        return min(config.ema_decay, (1 + step) / (10 + step))
    return config.ema_decay


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate for optimizer step `step` + 1: linear warm-up to `lr`, then constant (DDPM; notebook 06 §3)."""
    if config.warmup > 0:
        return config.lr * min(1.0, (step + 1) / config.warmup)
    return config.lr


def eps_fn(model: torch.nn.Module):
    """Wrap a UNet as the `eps(x, t)` callable samplers take: no gradients, ε̂ in x's dtype; `t` may be
    an int, a 0-d or a (B,) tensor, which the UNet broadcasts (notebook 06 §5)."""
    def eps(x, t):
        with torch.no_grad():
            return model(x, t).to(x.dtype)
    return eps


def sample_grid(model, config: TrainConfig, in_ch: int, n: int, device, seed: int = 0) -> torch.Tensor:
    """n DDIM samples (η = 0, `config.sample_steps` uniform steps) from `model`, in [−1, 1]."""
    from .samplers import sample

    abar = schedule.make_alpha_bar(config.schedule, config.T).to(device)
    was_training = model.training
    model.eval()
    out = sample(eps_fn(model), (n, in_ch, config.resolution, config.resolution), abar, S=config.sample_steps,
                 generator=torch.Generator(device=device).manual_seed(seed), device=device)
    model.train(was_training)
    return out


def load_trained(path, device="cpu", use_ema: bool = True):
    """(model, config) from a ddimlab training checkpoint (a path, or the dict already loaded from one);
    the EMA weights by default, in eval mode."""
    from .checkpoint import load_checkpoint

    state = path if isinstance(path, dict) else load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"{path if not isinstance(path, dict) else 'this dict'} is not a ddimlab training "
                         f"checkpoint (needs 'model' and 'config' entries)")
    config = config_from_dict(state["config"])
    model = build_model(config, in_ch=int(state.get("in_ch", 3)))
    model.load_state_dict(state["ema" if use_ema and "ema" in state else "model"])
    return model.to(device).eval(), config


# --------------------------------------------------------------------------- distributed helpers

def setup_distributed(device: str = "auto"):
    """(rank, world, device, initialized_here) for a process that `torchrun` may have started.

    `device` "auto" is cuda:LOCAL_RANK when CUDA is present, else the CPU; a bare "cuda" also gets
    LOCAL_RANK. On CUDA, TF32 matmuls are enabled. With WORLD_SIZE > 1 the process group is started
    (nccl on CUDA, gloo on the CPU) unless it already is; `initialized_here` says whether to destroy it.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    init_here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        init_here = True
    return rank, world, dev, init_here


def _all_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        x /= world
    return x


# --------------------------------------------------------------------------- checkpoints

def _rng_state(gen: torch.Generator, device) -> dict:
    state = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _save(out: Path, model, ema, opt, step, config, gen, device, in_ch, loss) -> Path:
    from .checkpoint import save_checkpoint

    state = {
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
        "step": step, "config": dataclasses.asdict(config), "rng": _rng_state(gen, device),
        "in_ch": in_ch, "loss": loss,
    }
    return save_checkpoint(out / "ckpt.pt", **state)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after `step` by an interrupted run, so a resumed log reads straight."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write(path, lambda f: f.write("".join(ln + "\n" for ln in keep)), text=True)


# --------------------------------------------------------------------------- the loop

def train(config: TrainConfig, resume: bool = False, return_models: bool = False):
    """Train with `config` (notebook 06 §4); returns the out directory (or (out, model, ema) if `return_models`).

    `resume=True` continues from `<out>/ckpt.pt` when it exists: the model-shape fields must match
    the checkpoint's; others (steps, logging, device) come from `config`.
    """
    from tqdm.auto import tqdm

    config = validate_config(copy.deepcopy(config))
    rank, world, device, init_here = setup_distributed(config.device)
    is_main = rank == 0
    cuda = device.type == "cuda"
    if config.threads and not cuda:
        torch.set_num_threads(config.threads)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of processes {world}")
    out = Path(config.out)
    ckpt_path = out / "ckpt.pt"
    log_path = out / "log.jsonl"

    # data: the whole set on the device as uint8; batches are drawn from a per-epoch permutation
    # seeded by (seed, epoch), like DistributedSampler, so the data order is a function of the step.
    from .data import to_model_range

    images = load_dataset(config).to(device)
    n_data, in_ch = images.shape[0], images.shape[1]
    B = config.batch_size
    if n_data < B:
        raise ValueError(f"batch_size {B} exceeds the data set size {n_data}")
    batches_per_epoch = n_data // B
    local = slice(rank * (B // world), (rank + 1) * (B // world))

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = build_model(config, in_ch).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    torch.manual_seed(config.seed + 7919 * rank)  # dropout: a different stream per rank
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, **({"fused": True} if cuda else {}))
    gen = torch.Generator(device=device).manual_seed(config.seed + 12345)
    alpha_bar = schedule.make_alpha_bar(config.schedule, config.T).to(device, torch.float32)

    step = 0
    if resume and ckpt_path.exists():
        from .checkpoint import load_checkpoint

        state = load_checkpoint(ckpt_path, map_location="cpu")
        saved = config_from_dict(state["config"])
        for key in MODEL_KEYS + ("dataset", "schedule", "T"):
            if getattr(saved, key) != getattr(config, key):
                raise ValueError(f"cannot resume: {key} is {getattr(config, key)!r} but the checkpoint "
                                 f"has {getattr(saved, key)!r}")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        gen.set_state(state["rng"]["generator"])
        if is_main:
            torch.set_rng_state(state["rng"]["torch"])
            if cuda and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        else:  # other ranks' dropout streams are not saved; re-seed them deterministically
            torch.manual_seed(config.seed + rank + 1_000_003 * step)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.json", lambda f: f.write(json.dumps(dataclasses.asdict(config), indent=1)), text=True)
        if resume:
            _truncate_log(log_path, step)
        elif log_path.exists():
            log_path.unlink()

    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if cuda else None)
    if config.compile:
        net = torch.compile(net)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and config.bf16)
    check_every = 1 if not cuda else config.log_every  # .item() syncs the GPU: check less often there

    bar = tqdm(total=config.steps, initial=step, disable=not (config.progress and is_main),
               dynamic_ncols=True, unit="step")
    perm_epoch, perm = -1, None
    loss_sum, loss_n = torch.zeros((), device=device), 0
    t_last, step_last = time.perf_counter(), step
    last_good = step if ckpt_path.exists() and resume else None
    model.train()
    try:
        while step < config.steps:
            epoch, i = divmod(step, batches_per_epoch)
            if epoch != perm_epoch:
                g_perm = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(n_data, generator=g_perm).to(device), epoch
            idx = perm[i * B:(i + 1) * B][local]
            x0 = to_model_range(images[idx])
            # t, ε and flips for the whole global batch on every rank, then this rank's slice
            t = torch.randint(0, config.T, (B,), generator=gen, device=device)[local]
            eps = torch.randn((B, *images.shape[1:]), generator=gen, device=device)[local]
            if config.hflip:
                flip = (torch.rand(B, generator=gen, device=device) < 0.5)[local]
                x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
            if cuda:
                x0 = x0.contiguous(memory_format=torch.channels_last)
                eps = eps.contiguous(memory_format=torch.channels_last)

            for group in opt.param_groups:
                group["lr"] = lr_at(config, step)
            with autocast:
                loss = l_simple_loss(net, x0, t, eps, alpha_bar)
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
                    where = (f"the last good checkpoint {ckpt_path} (step {last_good}) was kept"
                             if last_good is not None else "no checkpoint had been written yet")
                    raise NonFiniteLossError(
                        f"training loss became {mean_loss} by step {step}; stopped without saving, "
                        f"{where}. Lower lr (now {config.lr}) or check the data.")
            if log_now:
                now = time.perf_counter()
                ips = (step - step_last) * B / max(now - t_last, 1e-9)
                record = {"step": step, "loss": mean_loss, "lr": lr_at(config, step - 1), "img_per_s": ips}
                if is_main:
                    _append_jsonl(log_path, record)
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.0f}")
                loss_sum.zero_()
                loss_n, t_last, step_last = 0, now, step
            if ckpt_now and is_main:
                _save(out, model, ema, opt, step, config, gen, device, in_ch, mean_loss)
                last_good = step
            if is_main and config.n_samples and (
                    (config.sample_every and step % config.sample_every == 0) or step == config.steps):
                x = sample_grid(ema, config, in_ch, config.n_samples, device, seed=config.seed)
                from .plotting import save_image_grid

                save_image_grid(x, out / "samples" / f"step_{step:07d}.png")
    finally:
        bar.close()
        if init_here:
            import torch.distributed as dist

            dist.destroy_process_group()
    if return_models:
        return out, model, ema
    return out
