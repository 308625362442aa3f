"""Trainer: config parsing, warm-up and EMA, loss going down, checkpoints, exact resume, NaN stop, DDP."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import warnings

import pytest
import torch

from ddimlab import checkpoint
from ddimlab import train as tr
from ddimlab.checkpoint import EarlyEMAWarning, load_checkpoint


def tiny(tmp_path, name="run", **kw) -> tr.TrainConfig:
    """8×8 digits (their native size), a ~40k-parameter UNet: milliseconds per step."""
    base = dict(resolution=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_groups=8,
                dropout=0.0, batch_size=16, lr=1e-3, warmup=5, steps=6, log_every=1, ckpt_every=1000,
                n_samples=0, progress=False, out=str(tmp_path / name), device="cpu")
    base.update(kw)
    return tr.make_config("digits", base)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- configuration

def test_make_config_parses_cli_strings():
    c = tr.make_config("digits", ["lr=5e-4", "ch_mult=1,2", "attn_resolutions=", "hflip=true", "steps=7",
                                  "data_root=none"])
    assert (c.lr, c.ch_mult, c.attn_resolutions, c.hflip, c.steps, c.data_root) == (5e-4, (1, 2), (), True, 7, None)
    cifar = tr.make_config("cifar10")
    assert (cifar.ch, cifar.ch_mult, cifar.num_res_blocks, cifar.attn_resolutions, cifar.dropout) == \
        (128, (1, 2, 2, 2), 2, (16,), 0.1)
    assert (cifar.lr, cifar.warmup, cifar.batch_size, cifar.grad_clip, cifar.ema_decay, cifar.steps, cifar.hflip) == \
        (2e-4, 5000, 128, 1.0, 0.9999, 800_000, True)


@pytest.mark.parametrize("overrides, match", [
    (["nope=1"], "unknown config key 'nope'"),
    (["steps=abc"], "steps must be int"),
    (["steps=0"], "steps must be a positive integer"),
    (["hflip=maybe"], "hflip must be a boolean"),
    (["ema_decay=1.0"], "ema_decay must be in"),
    (["dataset=mnist"], "dataset must be one of"),
    (["t_sampling=lognormal"], "t_sampling must be one of"),
    (["lr"], "key=value"),
])
def test_make_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        tr.make_config("digits", overrides)
    with pytest.raises(ValueError, match="unknown preset"):
        tr.make_config("imagenet")


def test_warmup_and_ema_formulas():
    c = tr.TrainConfig(lr=2e-4, warmup=5000, lr_decay="none", ema_decay=0.9999, ema_warmup=False)  # DDPM
    assert tr.lr_at(c, 0) == pytest.approx(2e-4 / 5000) and tr.lr_at(c, 2499) == pytest.approx(1e-4)
    assert tr.lr_at(c, 4999) == 2e-4 and tr.lr_at(c, 10**6) == 2e-4
    assert tr.ema_decay_at(c, 0) == 0.9999
    c.ema_warmup = True
    assert tr.ema_decay_at(c, 0) == pytest.approx(0.1) and tr.ema_decay_at(c, 10**7) == 0.9999
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [0.9 * pa.detach() + 0.1 * pb.detach() for pa, pb in zip(a.parameters(), b.parameters())]
    tr.ema_update(a, b, 0.9)
    for pa, e in zip(a.parameters(), expected):
        torch.testing.assert_close(pa.detach(), e)


def test_ema_update_refuses_networks_whose_buffers_differ_and_leaves_the_ema_alone():
    """Buffers are copied from the model, after the parameters' lerp: an extra buffer was dropped by zip and one of
    another shape failed inside torch's copy_, after the parameters had moved. Equal parameters do not make two
    networks copies of one."""
    def net(*sizes):
        torch.manual_seed(0)
        m = torch.nn.Linear(3, 2)
        for i, n in enumerate(sizes):
            m.register_buffer(f"stat{i}", torch.full((n,), float(n)))
        return m

    for ema, model in ((net(3), net(4)), (net(3), net(3, 5)), (net(3, 5), net(3))):
        before = params(ema)
        with pytest.raises(ValueError, match=r"ema and model must be copies of one network .*; their buffers differ"):
            tr.ema_update(ema, model, 0.9)
        assert all(torch.equal(v, params(ema)[k]) for k, v in before.items())
    ema, model = net(3), net(3)
    model.stat0.fill_(7.0)
    tr.ema_update(ema, model, 0.9)
    assert torch.equal(ema.stat0, torch.full((3,), 7.0))


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_initial_share_is_what_the_ema_keeps_of_its_start(warmup):
    """The share, against an EMA run for real: start at 1, average in 0 for n steps, and 1·share is what is left."""
    c = tr.TrainConfig(ema_decay=0.99, ema_warmup=warmup)
    ema, zero = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(ema.weight), torch.nn.init.zeros_(zero.weight)
    for k in range(50):
        tr.ema_update(ema, zero, tr.ema_decay_at(c, k))
    assert tr.ema_initial_share(c, 50) == pytest.approx(ema.weight.item(), rel=1e-5, abs=1e-12)
    ddpm = tr.TrainConfig(ema_decay=0.9999, ema_warmup=False)
    assert tr.ema_initial_share(ddpm, 2000) == pytest.approx(0.8187, abs=1e-4)     # the notebook 06 §6 figure


def test_an_early_ema_is_called_out_when_loaded_and_the_raw_weights_are_not(tmp_path):
    """A short run with DDPM's undamped EMA samples mostly its random start: loading its EMA says so, once."""
    early = tr.train(tiny(tmp_path, "early", steps=3, ema_decay=0.999, ema_warmup=False))
    assert load_checkpoint(early / "ckpt.pt")["ema_initial_share"] == pytest.approx(0.999 ** 3)
    with pytest.warns(EarlyEMAWarning, match="--no-ema"):
        checkpoint.load_model(early)
    warmed = tr.train(tiny(tmp_path, "warmed", steps=3))               # the decay warm-up: nothing of the start left
    with warnings.catch_warnings():
        warnings.simplefilter("error", EarlyEMAWarning)
        checkpoint.load_model(early, use_ema=False)
        checkpoint.load_model(warmed)


def test_cosine_decay_after_warm_up():
    """The digits preset: warm-up, then ½(1 + cos πf) of the rate (half at mid-way, ~0 at the last step);
    `lr_decay="none"` keeps it constant, and a config saved before the field existed trained with a constant rate."""
    c = tr.make_config("digits", {"steps": 1100, "warmup": 100, "lr": 1e-3})
    assert c.lr_decay == "cosine" and tr.lr_at(c, 49) == pytest.approx(5e-4)
    lrs = [tr.lr_at(c, s) for s in range(100, 1100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[500] == pytest.approx(5e-4) and lrs[-1] < 1e-8
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert tr.lr_at(dataclasses.replace(c, lr_decay="none"), 1099) == 1e-3
    saved = {k: v for k, v in dataclasses.asdict(c).items() if k != "lr_decay"}
    assert tr.config_from_dict(saved).lr_decay == "none"
    with pytest.raises(ValueError, match="lr_decay must be one of"):
        tr.make_config("digits", {"lr_decay": "step"})


def test_training_steps_are_drawn_as_t_sampling_says(tmp_path):
    """The digits preset draws t with the cosine schedule's noise levels, the cifar10 preset (DDPM) uniformly:
    frequencies of 400 batches of 128 in 10 blocks of 100 steps, each within 5 binomial standard errors of
    `schedule.cosine_t_probs` (tested against Monte Carlo in test_schedule) or of 1/10, and so are the frequencies of
    t = 0, 1, 998 and 999 themselves, where a t drawn one step off (clamped to 0..T-1) shows: the blocks do not see it
    (uniform: t = 0 never drawn, or twice as often). A config saved before the field existed drew t uniformly."""
    from ddimlab import schedule
    images = torch.zeros(128, 1, 8, 8, dtype=torch.uint8)
    cosine = tr.make_config("digits")
    uniform = dataclasses.replace(cosine, t_sampling="uniform")
    assert (cosine.t_sampling, tr.make_config("cifar10").t_sampling) == ("cosine", "uniform")
    for c, p in ((cosine, schedule.cosine_t_probs(schedule.make_alpha_bar("linear", 1000))),
                 (uniform, torch.full((1000,), 1e-3, dtype=torch.float64))):
        gen = torch.Generator().manual_seed(0)
        t = torch.cat([tr.get_batch(images, step, c, gen)[1] for step in range(400)])
        freq = t.bincount(minlength=1000).reshape(10, 100).sum(1) / t.numel()
        q = p.reshape(10, 100).sum(1)
        assert ((freq - q).abs() <= 5 * (q * (1 - q) / t.numel()).sqrt()).all(), (c.t_sampling, freq, q)
        ends = [0, 1, 998, 999]
        freq, q = t.bincount(minlength=1000)[ends] / t.numel(), p[ends]
        assert ((freq - q).abs() <= 5 * (q * (1 - q) / t.numel()).sqrt()).all(), (c.t_sampling, freq, q)
    saved = {k: v for k, v in dataclasses.asdict(cosine).items() if k != "t_sampling"}
    assert tr.config_from_dict(saved).t_sampling == "uniform"


def test_hflip_mirrors_about_half_of_the_images_left_to_right():
    """With hflip each x_0 of a batch is a training image or its left-right mirror, found by brute force among all the
    images (not through `data.batch_indices`), and over 20 batches of 128 the mirrored share is within 5 binomial
    standard errors of 1/2. Flipping top to bottom, or every image, fails."""
    from ddimlab import data
    images = torch.randint(0, 256, (256, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    real = data.to_model_range(images)
    c = tr.make_config("digits", dict(hflip=True))
    gen = torch.Generator().manual_seed(1)
    mirrored = n = 0
    for step in range(20):
        x0 = tr.get_batch(images, step, c, gen)[0]
        same, mirror = ((x0[:, None] == r[None]).flatten(2).all(-1).any(1) for r in (real, real.flip(3)))
        assert bool((same ^ mirror).all())             # random images: no image is its own mirror
        mirrored, n = mirrored + int(mirror.sum()), n + len(x0)
    assert abs(mirrored / n - 0.5) <= 5 * (0.25 / n) ** 0.5, mirrored / n


# --------------------------------------------------------------------------- training

def test_loss_decreases_on_digits(tmp_path):
    c = tiny(tmp_path, steps=80, batch_size=32, warmup=10, lr=2e-3, log_every=10)
    tr.train(c)
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "log.jsonl")]
    assert len(losses) == 8
    # An untrained ε-net scores ≈ 1 (the variance of ε); 80 steps already cut that by more than half.
    assert losses[0] > 0.5 and losses[-1] < 0.4 * losses[0], losses
    assert losses[-1] < min(losses[:3]), losses


def test_one_step_matches_hand_computed_update(tmp_path):
    """Step 1 = Adam's first step of size lr·warm-up on every weight with a gradient; EMA = d·θ_0 + (1−d)·θ_1."""
    c = tiny(tmp_path, steps=1, ema_warmup=False, ema_decay=0.5, warmup=4, lr=1e-3, grad_clip=0.0)
    torch.manual_seed(c.seed)
    theta0 = params(tr.build_model(c, in_ch=1))
    _, model, ema = tr.train(c, return_models=True)
    theta1 = params(model)
    lr1 = 1e-3 / 4
    step = torch.cat([(theta1[k] - theta0[k]).abs().flatten() for k in theta0])
    # Adam's first update is lr·g/(|g| + 1e-8): ≤ lr_1 always, = lr_1 unless |g| is tiny
    # (e.g. attention's key bias, whose true gradient is zero)
    assert float(step.max()) <= lr1 * (1 + 1e-4)
    assert float(((step - lr1).abs() < 1e-3 * lr1).float().mean()) > 0.95
    for k in theta0:
        torch.testing.assert_close(ema.state_dict()[k], 0.5 * theta0[k] + 0.5 * theta1[k])


def test_grad_clip_scales_the_whole_gradient_to_norm_grad_clip_before_adams_step(tmp_path):
    """Adam's first step (Kingma & Ba 2015, Algorithm 1: m_1/(1 - b1) = g, v_1/(1 - b2) = g^2) moves weight i by
    lr g_i/(|g_i| + eps), eps = 1e-8 (torch's default). With the global gradient norm clipped to c = 1e-10 every
    |g_i| <= c << eps, so the step's norm is lr c/eps within a factor eps/(c + eps) = 0.99: 0.01 at lr = 1. Measured:
    0.9997 of it. No clipping is about 4e4 times that, clipping each entry to c (clip_grad_value_) 400 times, a max
    norm of 10 c ten times."""
    c = tiny(tmp_path, steps=1, lr=1.0, warmup=0, lr_decay="none", grad_clip=1e-10)
    torch.manual_seed(c.seed)
    theta0 = params(tr.build_model(c, in_ch=1))
    _, model, _ = tr.train(c, return_models=True)
    step = torch.cat([(params(model)[k] - theta0[k]).double().flatten() for k in theta0])
    ratio = float(step.norm()) / (1.0 * 1e-10 / 1e-8)
    assert 0.98 < ratio <= 1.001, ratio


def test_checkpoint_contents(tmp_path):
    c = tiny(tmp_path, steps=4, ckpt_every=2, dropout=0.1)
    out, model, ema = tr.train(c, return_models=True)
    state = load_checkpoint(out / "ckpt.pt", required=("model", "ema", "optimizer", "step", "config", "rng"))
    assert state["step"] == 4
    assert tr.config_from_dict(state["config"]) == c
    assert set(state["rng"]) >= {"torch", "generator"}
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v)
        assert torch.equal(state["ema"][k], ema.state_dict()[k])
    assert any(not torch.equal(state["model"][k], state["ema"][k]) for k in state["model"])
    assert len(state["optimizer"]["state"]) == len(list(model.parameters()))
    assert not list(out.glob(".*tmp*")), "temporary files left behind"
    loaded, cfg = tr.load_trained(out / "ckpt.pt")
    assert cfg == c and not loaded.training
    # the EMA weights unless the raw ones are asked for, through both loaders (the checkpoint's tensors: ema != model)
    for use_ema, key in ((True, "ema"), (False, "model")):
        for net in (tr.load_trained(out / "ckpt.pt", use_ema=use_ema)[0], checkpoint.load_model(out, use_ema=use_ema)[0]):
            assert all(torch.equal(v, state[key][k]) for k, v in net.state_dict().items()), key


def test_resume_is_bitwise_identical(tmp_path):
    """Train 6 steps straight vs. 3 steps, stop, resume to 6: same weights, EMA and Adam state, bit for bit.

    Dropout and flips are on, so the global RNG and the data generator must both be restored.
    """
    kw = dict(dropout=0.2, hflip=True, ckpt_every=3)
    _, m_full, e_full = tr.train(tiny(tmp_path, "full", steps=6, **kw), return_models=True)
    tr.train(tiny(tmp_path, "split", steps=3, **kw))
    torch.manual_seed(1234)  # disturb the global RNG between the runs: resume must restore it
    torch.rand(10)
    _, m_res, e_res = tr.train(tiny(tmp_path, "split", steps=6, **kw), resume=True, return_models=True)
    for k, v in m_full.state_dict().items():
        assert torch.equal(v, m_res.state_dict()[k]), k
        assert torch.equal(e_full.state_dict()[k], e_res.state_dict()[k]), k
    a = load_checkpoint(tmp_path / "full" / "ckpt.pt")["optimizer"]["state"]
    b = load_checkpoint(tmp_path / "split" / "ckpt.pt")["optimizer"]["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "split" / "log.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]
    # resuming into a different network is refused
    with pytest.raises(ValueError, match="cannot resume .*: ch is 8 but the checkpoint has 16"):
        tr.train(tiny(tmp_path, "split", steps=7, ch=8, **kw), resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = tr.l_simple
    calls = {"n": 0}

    def poisoned(*args, **kwargs):            # the training steps' losses (not the check before each checkpoint)
        calls["n"] += torch.is_grad_enabled()
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 and torch.is_grad_enabled() else loss

    monkeypatch.setattr(tr, "l_simple", poisoned)
    c = tiny(tmp_path, steps=8, ckpt_every=2)
    with pytest.raises(tr.NonFiniteLossError, match=r"nan by step 5.*ckpt\.pt \(step 4\) was kept"):
        tr.train(c)
    state = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(torch.tensor(json.loads(line)["loss"]))
               for line in open(tmp_path / "run" / "log.jsonl"))


def test_train_rejects_bad_setups(tmp_path):
    with pytest.raises(ValueError, match="exceeds the data set size"):
        tr.train(tiny(tmp_path, batch_size=4096))
    with pytest.raises(ValueError, match="cifar10 images are 32"):
        tr.train(tiny(tmp_path, dataset="cifar10", resolution=16))


# --------------------------------------------------------------------------- DDP on CPU (gloo)

def _ddp_worker(rank, world, port, config_dict, out_dir):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    config = tr.TrainConfig(**config_dict)
    _, model, ema = tr.train(config, return_models=True)
    torch.save({"model": model.state_dict(), "ema": ema.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    """2 gloo ranks with 8 images each = 1 process with the global batch of 16 (up to float rounding)."""
    import torch.multiprocessing as mp

    c = tiny(tmp_path, "ddp", steps=4, batch_size=16, grad_clip=1.0)
    # spawn, not fork: forking a process whose OpenMP pool is running can deadlock the child
    mp.spawn(_ddp_worker, args=(2, _free_port(), dataclasses.asdict(c), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), f"ranks disagree on {k}"
        assert torch.equal(r0["ema"][k], r1["ema"][k]), f"ranks disagree on EMA {k}"
    assert (tmp_path / "ddp" / "ckpt.pt").exists() and not (tmp_path / "rank1").exists()
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "ddp" / "log.jsonl")]
    assert len(losses) == 4 and all(map(lambda v: v == v and abs(v) < 10, losses))

    _, single, single_ema = tr.train(tiny(tmp_path, "single", steps=4, batch_size=16, grad_clip=1.0),
                                     return_models=True)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(r0["model"][k], v, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(r0["ema"][k], single_ema.state_dict()[k], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the run folder (issue #12 cases 1-4)

def test_a_run_folder_is_never_replaced_silently(tmp_path):
    c = tiny(tmp_path, steps=2, ckpt_every=2)
    tr.train(c)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.raises(tr.RunExistsError, match="already holds a run"):
        tr.train(dataclasses.replace(c, ch=24))
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
    tr.train(dataclasses.replace(c, ch=24), overwrite=True)        # asked for: a fresh run
    assert load_checkpoint(tmp_path / "run" / "ckpt.pt")["config"]["ch"] == 24
    with pytest.raises(ValueError, match="exclude each other"):
        tr.train(c, resume=True, overwrite=True)


def test_resume_drops_a_torn_last_log_line_with_a_warning(tmp_path):
    c = tiny(tmp_path, steps=4, ckpt_every=2)
    tr.train(c)
    log = tmp_path / "run" / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 5, "lo')              # the disk filled during an append
    with pytest.warns(tr.TornLogWarning, match="torn last line"):       # the CLI prints it as one line
        tr.train(dataclasses.replace(c, steps=6), resume=True)
    assert [r["step"] for r in tr.read_log(log)] == [1, 2, 3, 4, 5, 6]
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        tr.read_log(log)


def test_a_failed_resume_leaves_config_json_alone(tmp_path):
    c = tiny(tmp_path, steps=4, ckpt_every=2)
    tr.train(c)
    config_json = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(tr.NonFiniteLossError):
        tr.train(dataclasses.replace(c, steps=8, lr=1e6, warmup=0, grad_clip=0.0), resume=True)
    assert (tmp_path / "run" / "config.json").read_text() == config_json
    assert load_checkpoint(tmp_path / "run" / "ckpt.pt")["config"]["lr"] == c.lr


def test_cifar10_preset_uses_the_official_initialisation_and_old_configs_read_as_torch():
    assert tr.make_config("cifar10").init == "ddpm" and tr.make_config("digits").init == "torch"
    with pytest.raises(ValueError, match="init must be one of"):
        tr.make_config("digits", {"init": "xavier"})
    old = dataclasses.asdict(tr.make_config("digits"))
    del old["init"]                                          # a checkpoint saved before the field existed
    assert tr.config_from_dict(old).init == "torch"
    small = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4)
    net = tr.build_model(tr.make_config("digits", {"init": "ddpm", **small}), in_ch=1)
    with torch.no_grad():
        assert net(torch.randn(2, 1, 8, 8), torch.tensor([5, 900])).abs().max() < 1e-3


def test_init_cannot_change_on_resume(tmp_path):
    """init says how the saved weights began: changing it on resume (or by --set) relabelled torch-initialised weights
    as DDPM's in the checkpoint and config."""
    c = tiny(tmp_path, "init", steps=2)
    tr.train(c)
    with pytest.raises(ValueError, match="init is 'ddpm' but the checkpoint has 'torch'"):
        tr.train(dataclasses.replace(c, steps=3, init="ddpm"), resume=True)
    with pytest.raises(ValueError, match="init"):
        tr.resumed_config(c.out, ["init=ddpm"])


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_first_checkpoint_saved_without_its_config_json_is_kept_with_its_log(tmp_path, monkeypatch, rename_fails, overwrite):
    """A full disk at config.json after the new run's first ckpt.pt: that checkpoint is the run's now, so its log.jsonl
    stays (it was deleted, as for a run that saved nothing) and, under overwrite, the previous run set aside is deleted
    (it was left in .previous-*, which refuses every later run in the folder). --resume then goes on."""
    c = tiny(tmp_path, steps=4, ckpt_every=4)
    run = tmp_path / "run"
    if overwrite:
        tr.train(dataclasses.replace(c, steps=2, ckpt_every=2))
    rename_fails("config.json")
    with pytest.raises(tr.ConfigNotWrittenError, match=r"No space left on device: .*ckpt.pt \(step 4\) was saved"):
        tr.train(c, overwrite=overwrite)
    monkeypatch.undo()
    assert load_checkpoint(run / "ckpt.pt")["step"] == 4
    assert [r["step"] for r in tr.read_log(run / "log.jsonl")] == [1, 2, 3, 4]
    assert not list(run.glob(".previous-*"))
    tr.train(dataclasses.replace(c, steps=5), resume=True)
    assert [r["step"] for r in tr.read_log(run / "log.jsonl")] == [1, 2, 3, 4, 5]
    assert json.loads((run / "config.json").read_text())["steps"] == 5


def test_a_checkpoint_that_cannot_be_written_says_what_was_kept_and_what_to_fix(tmp_path, monkeypatch, rename_fails):
    """A checkpoint write that fails keeps the previous ckpt.pt, cuts log.jsonl back to its step and says so; "free some
    space" only where the disk is full (ENOSPC), else "fix that" (here permission denied); where the log cannot be cut
    back either, the message says that it still lists later steps."""
    import errno

    c = tiny(tmp_path, steps=2, ckpt_every=2)
    run = tmp_path / "run"
    tr.train(c)
    ckpt = (run / "ckpt.pt").read_bytes()
    rename_fails("ckpt.pt", errno.EACCES)
    with pytest.raises(PermissionError) as e:
        tr.train(dataclasses.replace(c, steps=4), resume=True)
    assert "the last checkpoint (step 2) was kept as it was, log.jsonl cut back to it; fix that, then continue" in str(e.value)
    assert "free some space" not in str(e.value)
    assert (run / "ckpt.pt").read_bytes() == ckpt and [r["step"] for r in tr.read_log(run / "log.jsonl")] == [1, 2]
    rename_fails("ckpt.pt")
    calls, restart_log = [], tr._restart_log

    def fails_after_the_resume(*a):                            # the resume's own cut goes through, the one after not
        calls.append(a)
        if len(calls) > 1:
            raise OSError(errno.EIO, "Input/output error")
        return restart_log(*a)
    monkeypatch.setattr(tr, "_restart_log", fails_after_the_resume)
    with pytest.raises(OSError, match=r"No space left on device.*log.jsonl still lists later steps \(--resume cuts them\); "
                                      r"free some space, then continue with --resume"):
        tr.train(dataclasses.replace(c, steps=4), resume=True)
    monkeypatch.undo()
    assert (run / "ckpt.pt").read_bytes() == ckpt


def test_a_new_run_refuses_a_folder_holding_reproduce_results_and_only_those(tmp_path):
    """`reproduce` results (table files, sample cells whose settings.json records seed and S) in --out refuse a new run,
    a fresh one or a resume that finds no checkpoint, naming them (six, then how many more); other folders in samples/
    do not; a resumed run is the model they were made with, and goes on."""
    c = tiny(tmp_path, steps=2, ckpt_every=2)
    run = tmp_path / "run"
    (run / "samples" / "mine").mkdir(parents=True)                        # not cells: no settings.json, or not a cell's
    (run / "samples" / "other").mkdir()
    (run / "samples" / "other" / "settings.json").write_text('{"seed": 0}')
    (run / "table1.csv").write_text("eta,S\n")
    for resume in (False, True):
        with pytest.raises(tr.RunExistsError, match=r"holds `reproduce` results of another model \(table1.csv\), which"):
            tr.train(c, resume=resume)
    (run / "table1.csv").unlink()
    for i in range(8):
        (run / "samples" / f"eta0_S{i}").mkdir()
        (run / "samples" / f"eta0_S{i}" / "settings.json").write_text('{"seed": 0, "S": 2}')
    with pytest.raises(tr.RunExistsError, match=r"\(samples/eta0_S0/, .*, samples/eta0_S5/ and 2 more\)"):
        tr.train(c)
    for i in range(8):
        shutil.rmtree(run / "samples" / f"eta0_S{i}")
    tr.train(c)                                                           # the two other folders are no obstacle
    (run / "table2.md").write_text("# DDIM Table 2")
    tr.train(dataclasses.replace(c, steps=3), resume=True)
    assert load_checkpoint(run / "ckpt.pt")["step"] == 3
    with pytest.raises(tr.RunExistsError, match=r"`reproduce` results of the run in it \(table2.md\)"):
        tr.train(c, overwrite=True)
