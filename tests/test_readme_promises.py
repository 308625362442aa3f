"""README "Using the library": the promises that no other test checked. Each test quotes the sentence it checks; the
other promises of that section are checked in test_cli.py, test_careless_api.py, test_train.py, test_files.py,
test_checkpoint.py, test_generate.py, test_samplers.py and test_ode.py."""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import warnings

import numpy as np
import pytest
import torch
from cli_support import TINY, GoneReader, _expect_one_line_error, _run, _sets

from ddimlab import checkpoint, cli, devices, generate, ode, samplers, schedule
from ddimlab import train as train_mod
from ddimlab.checkpoint import eps_fn

AB = schedule.make_alpha_bar("linear", 1000)


def _sample(trained, out, *extra):
    return cli.main(["sample", "--checkpoint", str(trained), "--no-progress", "--out", str(out), *extra])


def test_train_help_lists_every_set_field_with_each_presets_value():
    """"`train --help` also lists every `--set key=value` field with each preset's value.\""""
    parser = cli.build_parser("ddimlab")
    train_help = next(a for a in parser._subparsers._group_actions).choices["train"].format_help()
    rows = {line.split()[0]: line for line in train_help.split("--set keys")[1].splitlines()[1:] if line.strip()}
    for field in dataclasses.fields(train_mod.TrainConfig):
        assert field.name in rows, field.name
        for preset in train_mod.PRESETS:
            assert str(getattr(train_mod.make_config(preset), field.name)) in rows[field.name], (field.name, preset)


def test_no_ema_samples_the_raw_weights(trained, tmp_path):
    """"`--checkpoint` takes a ddimlab run folder or its `ckpt.pt` (EMA weights unless `--no-ema` ...)\""""
    for flag, use_ema in (([], True), (["--no-ema"], False)):
        out = tmp_path / f"ema{use_ema}"
        assert _sample(trained, out, "--steps", "3", "--n", "2", *flag) == 0
        z = np.load(out.with_suffix(".npz"))
        net, abar = checkpoint.load_model(trained, use_ema=use_ema)
        direct = samplers.ddim_sample(eps_fn(net), torch.as_tensor(z["x_T"]), abar, schedule.timesteps(3, 1000))
        np.testing.assert_allclose(z["samples"], direct.numpy(), atol=1e-5)
        assert bool(z["ema"]) == use_ema and str(z["weights_sha256"]) == checkpoint.weights_sha256(net)
    assert not np.allclose(np.load(tmp_path / "emaTrue.npz")["samples"], np.load(tmp_path / "emaFalse.npz")["samples"])


def test_the_early_ema_warning_is_above_10_percent_as_cifar10s_first_23k_steps(trained):
    """"a one-line warning when the EMA still holds over 10% of the initial random weights, as the `cifar10` preset's
    decay 0.9999 does for its first 23k steps\""""
    cifar = train_mod.make_config("cifar10")
    assert cifar.ema_decay == 0.9999 and not cifar.ema_warmup
    assert train_mod.ema_initial_share(cifar, 23_000) > checkpoint.EARLY_EMA == 0.1
    assert train_mod.ema_initial_share(cifar, 23_100) < 0.1
    state = checkpoint.load_checkpoint(trained / "ckpt.pt")
    for share, warns in ((0.11, True), (0.09, False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            checkpoint.unet_from_run({**state, "ema_initial_share": share})
        assert any(issubclass(w.category, checkpoint.EarlyEMAWarning) for w in caught) == warns, share


@pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
def test_a_scheduler_for_x0_or_v_prediction_is_refused(tmp_path, tiny_unet, prediction):
    """"a scheduler for v- or x_0-prediction, or with `rescale_betas_zero_snr`, is refused rather than sampled as ε\""""
    pipe = tmp_path / "pipe"
    checkpoint.save_diffusers_folder(tiny_unet, pipe / "unet", AB)
    (pipe / "unet" / "scheduler" / "scheduler_config.json").rename(pipe / "scheduler_config.json")
    (pipe / "unet" / "scheduler").rmdir()
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction}))
    with pytest.raises(checkpoint.CheckpointError, match=f"prediction_type '{prediction}' is not supported"):
        checkpoint.load_model(pipe)


def test_ddpm_runs_its_whole_chain_unless_steps(trained, tmp_path, monkeypatch):
    """"`--sampler` is ... `ddpm` (its whole chain unless `--steps` ...)\""""
    seen = []

    def record(model, indices, shape, alpha_bar, seq, **kw):
        seen.append(seq.tolist())
        return torch.zeros(len(indices), *shape)
    monkeypatch.setattr(cli, "sample_indices", record)
    assert _sample(trained, tmp_path / "full", "--sampler", "ddpm", "--n", "1") == 0
    assert seen[-1] == list(range(999, -1, -1)) and int(np.load(tmp_path / "full.npz")["steps"]) == 1000
    assert _sample(trained, tmp_path / "ten", "--sampler", "ddpm", "--steps", "10", "--n", "1") == 0
    assert seen[-1] == schedule.timesteps(10, 1000, "uniform").tolist()
    assert _sample(trained, tmp_path / "ddim", "--n", "1") == 0
    assert len(seen[-1]) == cli.DEFAULT_STEPS < 1000                   # DDIM's default is not the whole chain


def test_ddpm_variance_small_and_large_are_ddpms_two_variances(trained, tmp_path):
    """"`ddpm` (...; `--variance small|large`)": each image is `samplers.ddpm_sample` with that variance, from the
    seed's x_T and its own noise."""
    net, abar = checkpoint.load_model(trained)
    seq = schedule.timesteps(5, 1000, "uniform")
    got = {}
    for variance in ("small", "large"):
        out = tmp_path / variance
        assert _sample(trained, out, "--sampler", "ddpm", "--variance", variance, "--steps", "5", "--n", "1",
                       "--seed", "2") == 0
        got[variance] = np.load(out.with_suffix(".npz"))["samples"]
        g = torch.Generator().manual_seed(generate.seed_for(2, 0))
        x_T = torch.randn(1, 1, 8, 8, generator=g)
        with torch.no_grad():
            ref = samplers.ddpm_sample(eps_fn(net), x_T, abar, variance=variance, seq=seq, generator=g, clip_x0=False)
        np.testing.assert_allclose(got[variance], ref.numpy(), atol=1e-5)
    assert np.abs(got["small"] - got["large"]).max() > 1e-3


def test_default_step_rules_are_the_readmes():
    """"each on its own step rule unless `--spacing` says otherwise (`ode.DEFAULT_RULES`: logsnr for DPM-Solver++ and
    UniPC, power3 for iPNDM and tAB-DEIS, the DDIM code's uniform for DDIM, DDPM and the rest\""""
    assert set(ode.DEFAULT_RULES) == set(ode.SOLVERS)
    for name, rule in ode.DEFAULT_RULES.items():
        expected = ("logsnr" if name.startswith(("dpm_solver_pp", "unipc")) else "power3" if name.startswith(("ipndm", "deis"))
                    else "uniform")
        assert rule == expected, name


def test_ddpm_samples_on_the_uniform_rule_unless_asked(trained, tmp_path):
    """"the DDIM code's uniform for DDIM, DDPM and the rest\" (from the command line)"""
    for sampler in ("ddpm", "euler", "heun"):
        out = tmp_path / sampler
        assert _sample(trained, out, "--sampler", sampler, "--steps", "4", "--n", "1") == 0
        assert str(np.load(out.with_suffix(".npz"))["spacing"]) == "uniform", sampler


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_image_i_of_sample_seed_s_is_a_function_of_s_and_i_alone(trained, tmp_path, sampler):
    """"image i of `sample --seed s` is a function of (s, i) alone\": not of --n, --batch-size or the other images
    (with ddpm's fresh noise too)."""
    base = ["--sampler", sampler, "--steps", "4", "--seed", "7"]
    assert _sample(trained, tmp_path / "a", *base, "--n", "3") == 0
    assert _sample(trained, tmp_path / "b", *base, "--n", "5", "--batch-size", "2") == 0
    assert _sample(trained, tmp_path / "c", *base[:-1], "8", "--n", "3") == 0
    a, b, c = (np.load(tmp_path / f"{k}.npz")["samples"] for k in "abc")
    np.testing.assert_allclose(b[:3], a, atol=1e-4)
    assert np.abs(c - a).max() > 1e-2                                       # another seed: other images


def test_overwrite_leaves_no_grid_of_the_old_run(tmp_path, capsys):
    """"`--overwrite` (start again: the old run's checkpoint, config, log and grids are set aside ..., so the folder
    never mixes two runs, and deleted at the new run's first checkpoint\""""
    run = tmp_path / "run"
    tiny = ["train", "--out", str(run), "--no-progress", *_sets(TINY)]
    assert cli.main([*tiny, "--set", "steps=2", "--set", "log_every=1"]) == 0
    assert (run / "samples" / "step_0000002.png").exists()
    assert cli.main([*tiny, "--set", "steps=3", "--set", "log_every=3", "--overwrite"]) == 0
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000003.png"]
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [3]
    assert not list(run.glob(".previous-*")) and checkpoint.load_checkpoint(run / "ckpt.pt")["step"] == 3


@pytest.mark.parametrize("argv", [
    ["sample", "--checkpoint", "CKPT", "--out", ""],
    ["invert", "--checkpoint", "CKPT", "--input", "x.png", "--out", ""],
    ["interpolate", "--checkpoint", "CKPT", "--out", ""],
    ["demo", "--out", ""],
    ["invert", "--checkpoint", "CKPT", "--input", " ", "--out", "OUT"],
    ["invert", "--checkpoint", "CKPT", "--input", "x.png", "--input", "", "--out", "OUT"],
    ["interpolate", "--checkpoint", "CKPT", "--latents", "", "--out", "OUT"],
    ["reproduce", "table2", "--checkpoint", "CKPT", "--data-root", "", "--out", "OUT"],
    ["train", "--preset", "cifar10", "--set", "data_root=", "--out", "OUT"],
])
def test_a_blank_path_is_refused_by_every_command(trained, tmp_path, capsys, monkeypatch, argv):
    """"a blank `--out` (or `--input`, `--latents`, `--data-root`, `--set data_root=`, `--checkpoint`) is refused, by
    every command, rather than read as the current folder\""""
    monkeypatch.chdir(tmp_path)
    argv = [str(trained) if a == "CKPT" else str(tmp_path / "o") if a == "OUT" else a for a in argv]
    _expect_one_line_error(capsys, [*argv, "--no-progress"], "empty" if "data_root=" not in argv else "blank")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []


def test_a_file_named_samples_is_no_obstacle_with_n_samples_0(tmp_path):
    """"`train` refuses, before training, a run folder where a file named `samples` takes the place of the grids'
    folder, or that folder is not writable (unless `--set n_samples=0`)\""""
    out = tmp_path / "run"
    out.mkdir()
    (out / "samples").write_text("mine")
    assert cli.main(["train", "--out", str(out), "--no-progress", *_sets(TINY), "--set", "steps=2",
                     "--set", "n_samples=0"]) == 0
    assert (out / "ckpt.pt").exists() and (out / "samples").read_text() == "mine"


def test_a_second_ctrl_c_or_sigterm_stops_at_once():
    """"Ctrl-C, SIGTERM ... or SIGHUP (the terminal or ssh session closed; not under `nohup`, which keeps the run going)
    during `train` saves a checkpoint at the current step before stopping (a second one stops at once\""""
    hangup = [signal.SIGHUP] if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN else []     # this pytest under nohup
    for sig in (signal.SIGINT, signal.SIGTERM, *hangup):
        before = signal.getsignal(sig)
        flag = train_mod._stop_on_signal(True)
        try:
            signal.raise_signal(sig)
            assert flag == [True]                                  # the first: the loop stops after this step
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(sig)                           # the second: at once
        finally:
            flag.restore()
        assert signal.getsignal(sig) == before


@pytest.mark.parametrize("command", ["invert", "interpolate"])
def test_invert_and_interpolate_refuse_existing_outputs_unless_overwrite(trained, tmp_path, capsys, command):
    """"`sample`, `invert` and `interpolate` refuse existing output files unless `--overwrite`\""""
    assert _sample(trained, tmp_path / "s", "--steps", "2", "--n", "2") == 0
    args = {"invert": ["--input", str(tmp_path / "s.npz")], "interpolate": ["--n", "3"]}[command]
    argv = [command, "--checkpoint", str(trained), *args, "--steps", "2", "--no-progress", "--out", str(tmp_path / "o")]
    for name in ("o.png", "o.npz"):
        (tmp_path / name).write_bytes(b"mine")
    _expect_one_line_error(capsys, argv, "already exist", "--overwrite")
    assert (tmp_path / "o.png").read_bytes() == (tmp_path / "o.npz").read_bytes() == b"mine"
    assert cli.main([*argv, "--overwrite"]) == 0 and np.load(tmp_path / "o.npz")["x_T"].shape[1:] == (1, 8, 8)


def test_invert_interpolate_and_demo_that_fail_remove_the_folders_they_made(trained, tmp_path, capsys, monkeypatch):
    """"`sample`, `invert`, `interpolate`, `lab` and `demo` that fail remove the folders they made for `--out`\""""
    from ddimlab import demo, lab

    for argv in (["invert", "--checkpoint", str(trained), "--input", str(tmp_path / "missing.png")],
                 ["interpolate", "--checkpoint", str(trained), "--seeds", "3", "3"]):
        _expect_one_line_error(capsys, [*argv, "--steps", "2", "--no-progress", "--out", str(tmp_path / "new" / "x" / "o")])
        assert not (tmp_path / "new").exists(), argv
    monkeypatch.setattr(demo, "LAB", dict(n=8, image_d=0, image_n=8))
    monkeypatch.setattr(lab, "main", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    _expect_one_line_error(capsys, ["demo", "--skip-train", "--out", str(tmp_path / "new" / "demo"), "--no-progress"],
                           "No space left on device")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["lab", "demo"])
def test_lab_and_demo_that_fail_remove_the_files_they_wrote_into_an_existing_out(tmp_path, capsys, monkeypatch, command):
    """"`lab` and `demo` also remove the files they wrote into an existing `--out`\" (and leave the user's)."""
    from pathlib import Path

    from ddimlab import demo, lab

    def half_then_full_disk(out="outputs/lab", **kwargs):
        (Path(out) / "table1.txt").write_text("half a table")
        (Path(out) / "table1.png").write_bytes(b"half a figure")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(demo, "LAB", dict(n=8, image_d=0, image_n=8))
    monkeypatch.setattr(lab, "main", half_then_full_disk)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = {"lab": ["lab", "--n", "8", "--image-d", "0"], "demo": ["demo", "--skip-train"]}[command]
    _expect_one_line_error(capsys, [*argv, "--out", str(out), "--no-progress"], "No space left on device")
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == ["notes.txt"]


def test_reproduce_table2_replaces_its_table_and_csv_only_with_overwrite(trained, tmp_path, capsys):
    """"`reproduce` replaces a finished `table1.md`/`table2.md` (and its `.csv`) only with `--overwrite`\""""
    out = tmp_path / "t2"
    argv = ["reproduce", "table2", "--checkpoint", str(trained), "--n-images", "2", "--steps", "2", "--no-progress",
            "--out", str(out)]
    assert cli.main(argv) == 0
    for name in ("table2.md", "table2.csv"):
        (out / name).write_text("mine\n")
    _expect_one_line_error(capsys, argv, "table2.md and ", "table2.csv already exist", "--overwrite")
    assert (out / "table2.md").read_text() == (out / "table2.csv").read_text() == "mine\n"
    (out / "table2.md").unlink()                                            # the .csv alone is kept as well
    _expect_one_line_error(capsys, argv, "table2.csv", "--overwrite")
    assert cli.main([*argv, "--overwrite"]) == 0
    assert (out / "table2.md").read_text() != "mine\n" and (out / "table2.csv").read_text() != "mine\n"


def test_reproduce_refuses_a_cell_folder_made_with_another_spacing(trained, tmp_path, capsys):
    """"`reproduce table1` records in each cell's folder what its images are a function of (the weights' sha256, seed,
    S, η, spacing) and refuses a folder made with other settings instead of scoring its images\" (the spacing; the
    seed and the weights are in test_cli)"""
    base = ["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "2", "--steps",
            "3", "--etas", "0", "--batch-size", "2", "--no-progress", "--out", str(tmp_path / "t1"), "--overwrite"]
    assert cli.main([*base, "--spacing", "uniform"]) == 0
    capsys.readouterr()
    _expect_one_line_error(capsys, [*base, "--spacing", "linspace"], "holds images made with other settings",
                           "linspace")


def test_sample_and_interpolate_record_what_made_them(trained, tmp_path):
    """"the `.npz` records ... `sample`'s also the sampler's settings and `--clip`; those of `sample`, `invert` and
    `interpolate` the checkpoint (as an absolute path), EMA or raw weights and the weights' sha256, ...
    `interpolate`'s the seeds or the latents file and indices\""""
    net, _ = checkpoint.load_model(trained)
    sha = checkpoint.weights_sha256(net)
    assert _sample(trained, tmp_path / "s", "--steps", "3", "--n", "2", "--eta", "0.5", "--spacing", "quad") == 0
    with np.load(tmp_path / "s.npz") as z:
        assert (str(z["sampler"]), str(z["eta"]), int(z["steps"]), str(z["spacing"])) == ("ddim", "0.5", 3, "quad")
        assert not bool(z["clip"]) and str(z["checkpoint"]) == str(trained.resolve()) and str(z["weights_sha256"]) == sha
    assert cli.main(["interpolate", "--checkpoint", str(trained), "--seeds", "4", "9", "--n", "3", "--steps", "2",
                     "--no-progress", "--out", str(tmp_path / "i")]) == 0
    with np.load(tmp_path / "i.npz") as z:
        assert z["seeds"].tolist() == [4, 9] and "latents" not in z.files and bool(z["ema"])
        assert str(z["checkpoint"]) == str(trained.resolve()) and str(z["weights_sha256"]) == sha
    assert cli.main(["interpolate", "--checkpoint", str(trained), "--latents", str(tmp_path / "s.npz"), "--n", "3",
                     "--steps", "3", "--no-progress", "--out", str(tmp_path / "j")]) == 0
    with np.load(tmp_path / "j.npz") as z:
        assert str(z["latents"]) == str((tmp_path / "s.npz").resolve()) and z["index"].tolist() == [0, 1]
        assert "seeds" not in z.files


def test_eta_up_to_1_passes_the_sigma_check_on_every_grid():
    """"η must be finite (and small enough that σ² ≤ 1 − ᾱ_s on every step, which η ≤ 1 always is)\""""
    zero = lambda x, t: torch.zeros_like(x)                                     # noqa: E731
    x = torch.zeros(1, 2, dtype=torch.float64)
    for table in (AB, schedule.make_alpha_bar("cosine", 1000)):
        grids = [schedule.timesteps(S, 1000, sp) for sp in schedule.SPACINGS for S in (1, 2, 3, 10, 100, 999, 1000)]
        grids += [ode.rule_timesteps(rule, S, table) for rule in ode.STEP_RULES for S in (2, 10, 50)]
        grids += [torch.tensor([999, 998, 0]), torch.tensor([999, 0]), torch.tensor([1, 0]), torch.tensor([500])]
        for seq in grids:
            samplers.ddim_sample(zero, x, table, seq, eta=1.0, generator=torch.Generator())


def test_a_loss_far_above_1_is_a_loss_warning_in_python(tmp_path):
    """"A run that ends with a loss far above 1, what predicting ε = 0 scores, says so (`LossWarning`)\""""
    config = train_mod.make_config("digits", {**dict(kv.split("=", 1) for kv in TINY), "steps": "3", "warmup": "0",
                                              "lr": "10", "n_samples": "0", "out": str(tmp_path / "run"),
                                              "progress": "false"})
    with pytest.warns(train_mod.LossWarning, match="far above the 1 of predicting eps = 0"):
        train_mod.train(config)


def test_interpolate_says_when_its_first_step_is_not_pure_noise(trained, tmp_path):
    """"So is a run from x_T ~ N(0, I) whose first step has ᾱ > 0.1 ...: `sample`, `interpolate` and `samplers.sample`
    say so\" (interpolate; sample and samplers.sample are in test_cli and test_samplers)"""
    r = _run("interpolate", "--checkpoint", trained, "--steps", "1", "--n", "3", "--no-progress", "--out", tmp_path / "i")
    assert r.returncode == 0 and "warning: the only step is t = 0" in r.stderr, r.stderr


def test_ddimlab_debug_1_shows_the_traceback(tmp_path):
    """"`--debug` or `DDIMLAB_DEBUG=1` shows the traceback\""""
    r = _run("sample", "--checkpoint", tmp_path / "nope.pt", "--out", tmp_path / "s", env={"DDIMLAB_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "nope.pt" in r.stderr


def test_a_quoted_tilde_in_set_data_root_is_expanded(tmp_path, capsys, monkeypatch):
    """"A quoted `~/…` path is expanded, in `--set out=…` and `data_root=…` too.\""""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    _expect_one_line_error(capsys, ["train", "--preset", "cifar10", "--out", str(tmp_path / "r"), "--set",
                                    "data_root=~/cifra10", "--set", "device=cpu", "--no-progress"],
                           f"{tmp_path / 'home' / 'cifra10'} does not exist")
    assert not (tmp_path / "~").exists()


def test_interpolate_refuses_nan_latents(trained, tmp_path, capsys):
    """"`interpolate` latents that are not N(0, I) draws (NaN, 1e30)\" (NaN; 1e30 is in test_cli)"""
    x_T = np.zeros((2, 1, 8, 8), np.float32)
    x_T[1, 0, 3, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x_T=x_T)
    _expect_one_line_error(capsys, ["interpolate", "--checkpoint", str(trained), "--latents", str(tmp_path / "nan.npz"),
                                    "--steps", "2", "--no-progress", "--out", str(tmp_path / "i")],
                           "must be latents (about N(0, I))")
    assert not (tmp_path / "i.npz").exists()


def test_a_run_not_started_by_torchrun_says_that_it_waits(monkeypatch, capsys):
    """"`WORLD_SIZE` > 1 without `MASTER_ADDR` and `MASTER_PORT` (which torchrun sets); with them, a run not started by
    torchrun prints that it waits for the other processes\""""
    monkeypatch.setattr(devices.dist, "init_process_group", lambda *a, **k: None)
    monkeypatch.setattr(devices.dist, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert devices.setup_distributed("cpu")[:2] == (1, 2)
    assert "waiting for the 2 processes of WORLD_SIZE=2 at 127.0.0.1:29999" in capsys.readouterr().err
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")                       # torchrun's own run: no note
    devices.setup_distributed("cpu")
    assert capsys.readouterr().err == ""


def test_train_invert_interpolate_and_reproduce_show_a_progress_bar_unless_asked_not_to(trained, tmp_path, capsys):
    """"**Progress bars** on `train`, `sample`, `invert`, `interpolate`, `reproduce`, `lab` and `demo` (`--no-progress`
    to turn them off\" (sample's, lab's and demo's are in test_cli, the scripts' in their own tests)"""
    assert _sample(trained, tmp_path / "s", "--steps", "2", "--n", "2") == 0
    commands = {"train": (["train", "--out", str(tmp_path / "run"), *_sets(TINY), "--set", "steps=3", "--set",
                           "n_samples=0"], "3/3"),
                "invert": (["invert", "--checkpoint", str(trained), "--input", str(tmp_path / "s.npz"), "--steps", "3"],
                           "6/6"),
                "interpolate": (["interpolate", "--checkpoint", str(trained), "--n", "3", "--steps", "3"], "3/3"),
                "reproduce": (["reproduce", "table2", "--checkpoint", str(trained), "--n-images", "2", "--steps", "2,3"],
                              "10/10")}                     # 2 x (2 + 3) steps: both ways, one batch
    for name, (argv, done) in commands.items():
        capsys.readouterr()
        quiet = [*argv, "--no-progress"] + ([] if name == "train" else ["--out", str(tmp_path / f"{name}_q")])
        if name == "train":
            quiet[2] = str(tmp_path / "run_q")
        assert cli.main(quiet) == 0, name
        assert done not in capsys.readouterr().err, name
        assert cli.main(argv + ([] if name == "train" else ["--out", str(tmp_path / name)])) == 0, name
        assert done in capsys.readouterr().err, name


def test_sample_into_a_pipe_whose_reader_has_gone_keeps_its_files(trained, tmp_path, monkeypatch):
    """"Output into a pipe whose reader has gone (`| head`) or a closed descriptor (`2>&-`) never stops a command or
    loses its files.\" (sample, invert and interpolate; train and lab are in test_cli)"""
    monkeypatch.setattr(sys, "stdout", GoneReader())
    monkeypatch.setattr(sys, "stderr", None)
    assert cli.main(["sample", "--checkpoint", str(trained), "--steps", "2", "--n", "2", "--out", str(tmp_path / "s")]) == 0
    assert cli.main(["invert", "--checkpoint", str(trained), "--input", str(tmp_path / "s.npz"), "--steps", "2",
                     "--out", str(tmp_path / "v")]) == 0
    assert cli.main(["interpolate", "--checkpoint", str(trained), "--n", "3", "--steps", "2", "--out",
                     str(tmp_path / "i")]) == 0
    monkeypatch.undo()
    for stem in "svi":
        assert (tmp_path / f"{stem}.png").exists() and (tmp_path / f"{stem}.npz").exists(), stem


def test_every_sampler_and_solver_calls_back_with_copies_of_i_t_s_x_x0():
    """"every sampler and solver takes `callback=` (called after each step with `{"i", "t", "s", "x", "x0"}`, copies:
    editing them changes nothing)\""""
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(3, 2, generator=g, dtype=torch.float64)
    eps = lambda x, t: 0.3 * x                                              # noqa: E731
    seq = schedule.timesteps(4, 1000, "trailing")
    rng = lambda: torch.Generator().manual_seed(1)                          # noqa: E731
    runs = {"ddim_sample": lambda **kw: samplers.ddim_sample(eps, x_T, AB, seq, eta=0.5, generator=rng(), **kw),
            "ddpm_sample": lambda **kw: samplers.ddpm_sample(eps, x_T, AB, seq=seq, generator=rng(), **kw),
            "ddim_invert": lambda **kw: samplers.ddim_invert(eps, x_T, AB, seq, **kw),
            "heun_invert": lambda **kw: ode.heun_invert(eps, x_T, AB, seq, **kw)}
    runs.update({name: (lambda name: lambda **kw: ode.solve(name, eps, x_T, AB, seq, **kw))(name) for name in ode.SOLVERS})

    def vandal(info):
        seen.append(set(info))
        info["x"].fill_(float("nan")), info["x0"].fill_(float("nan"))

    for name, run in runs.items():
        seen = []
        assert torch.equal(run(callback=vandal), run()), name
        assert len(seen) == 4 and all(keys == {"i", "t", "s", "x", "x0"} for keys in seen), (name, seen)


def test_the_gaussian_densities_are_float32_or_wider_for_half_inputs():
    """"the Gaussian densities and the ELBO's terms are computed in float32 or wider (a variance of 1e-8 is 0 in
    float16)\" (bf16 here; float16 is in test_careless_api)"""
    from ddimlab import gaussian
    x = torch.zeros(2, dtype=torch.bfloat16)
    got = gaussian.log_normal(x, 0.0, 1e-8)
    assert got.dtype in (torch.float32, torch.float64) and torch.allclose(
        got.double(), torch.full((2,), -0.5 * math.log(2 * math.pi * 1e-8), dtype=torch.float64))


@pytest.mark.parametrize("command", ["lab", "demo"])
def test_lab_and_demo_stopped_by_sigterm_put_the_earlier_files_back(tmp_path, command):
    """"`lab` and `demo` replace an earlier run's tables and figures only with `--overwrite` (...; they are set aside
    first and put back if the new run fails or is interrupted: Ctrl-C, SIGTERM\" (SIGTERM; a failure and Ctrl-C are in
    test_cli)"""
    import subprocess

    out = tmp_path / "out"
    out.mkdir()
    (out / "table1.txt").write_text("the earlier table")
    (out / "table1.png").write_bytes(b"the earlier figure")
    code = ("import signal, sys\nfrom pathlib import Path\nfrom ddimlab import cli, demo, lab\n"
            "demo.LAB = dict(n=8, image_d=0, image_n=8)\n"
            "def stopped(out='outputs/lab', **kw):\n"
            "    (Path(out) / 'table1.txt').write_text('half a new table')\n"
            "    signal.raise_signal(signal.SIGTERM)\n"
            "lab.main = stopped\nsys.exit(cli.main(sys.argv[1:]))\n")
    argv = {"lab": ["lab", "--n", "8", "--image-d", "0"], "demo": ["demo", "--skip-train"]}[command]
    r = subprocess.run([sys.executable, "-c", code, *argv, "--out", str(out), "--overwrite", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 130 and "terminated (SIGTERM)" in r.stderr, (r.returncode, r.stderr)
    assert (out / "table1.txt").read_text() == "the earlier table" and (out / "table1.png").read_bytes() == b"the earlier figure"
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock")) == ["table1.png", "table1.txt"]


def test_demo_refuses_a_folder_holding_an_earlier_runs_set_aside_files(tmp_path, capsys):
    """"after kill -9 they are in `<out>/.previous-<pid>`, and the next `lab` or `demo` there refuses until they are
    moved back or deleted\" (demo; lab is in test_cli)"""
    aside = tmp_path / "out" / ".previous-1"
    aside.mkdir(parents=True)
    (aside / "table1.txt").write_text("the earlier table")
    _expect_one_line_error(capsys, ["demo", "--skip-train", "--out", str(tmp_path / "out"), "--no-progress"],
                           ".previous-1", "move them back")
    assert (aside / "table1.txt").read_text() == "the earlier table"


def test_before_a_checkpoint_the_ema_weights_to_be_saved_are_checked_too(tmp_path, tiny_unet):
    """"before each checkpoint the loss of the weights and of the EMA weights to be saved is checked on the step's
    images at steps spread over 0..T−1\": finite raw weights beside an EMA whose output is NaN are not saved."""
    import contextlib
    import copy

    net, ema = copy.deepcopy(tiny_unet), copy.deepcopy(tiny_unet)      # the session's network stays in eval mode
    with torch.no_grad():
        ema.conv_out.bias.fill_(float("nan"))
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    eps = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    config = train_mod.make_config("digits", {"lr": "1e-3"})
    check = lambda net, avg: train_mod._check_weights(net, avg, x0, eps, AB, contextlib.nullcontext(), 7,  # noqa: E731
                                                      tmp_path, 5, config)
    check(net, net)                                                    # finite both: passes
    with pytest.raises(train_mod.NonFiniteLossError, match=r"the EMA weights after step 7 give a loss of nan.*step 5"):
        check(net, ema)
