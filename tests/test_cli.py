"""CLI end to end on a tiny model (train → sample → invert → interpolate), checkpoint kinds, image grids."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from cli_support import (
    TINY,
    GoneReader,
    _expect_interrupted,
    _expect_one_line_error,
    _run,
    _run_scripts,
    _sets,
    load_script,
    signal_at_call,
    small_lab_tables,
)

from ddimlab import checkpoint, cli, devices, ode, plotting, quality, schedule
from ddimlab.checkpoint import eps_fn
from ddimlab.samplers import ddim_sample
from ddimlab.unet import UNet


def test_train_writes_checkpoint_log_and_grid(trained):
    assert (trained / "ckpt.pt").is_file() and (trained / "config.json").is_file()
    assert len((trained / "log.jsonl").read_text().splitlines()) == 3
    grid = mpimg.imread(trained / "samples" / "step_0000030.png")
    assert grid.shape[:2] == (2 * 9 + 1, 2 * 9 + 1)  # 4 images of 8×8 in 2 rows, 1-pixel padding


def test_sample_invert_interpolate(trained, tmp_path):
    ckpt = str(trained / "ckpt.pt")
    assert cli.main(["sample", "--checkpoint", ckpt, "--steps", "5", "--n", "6", "--seed", "3",
                     "--scale", "1", "--out", str(tmp_path / "s")]) == 0
    z = np.load(tmp_path / "s.npz")
    assert z["samples"].shape == (6, 1, 8, 8) and np.isfinite(z["samples"]).all()
    assert z["x_T"].shape == (6, 1, 8, 8)
    assert mpimg.imread(tmp_path / "s.png").shape[:2] == (2 * 9 + 1, 3 * 9 + 1)

    # the CLI's samples are ddim_sample on the model's EMA weights from the seed's x_T
    net, abar = checkpoint.load_model(ckpt)
    direct = ddim_sample(eps_fn(net), torch.as_tensor(z["x_T"]), abar, schedule.timesteps(5, 1000, "uniform"))
    torch.testing.assert_close(torch.as_tensor(z["samples"]), direct, rtol=1e-5, atol=1e-5)

    assert cli.main(["sample", "--checkpoint", ckpt, "--sampler", "ddpm", "--steps", "10", "--n", "2",
                     "--out", str(tmp_path / "d.png")]) == 0
    assert np.load(tmp_path / "d.npz")["samples"].shape == (2, 1, 8, 8)

    assert cli.main(["invert", "--checkpoint", ckpt, "--input", str(tmp_path / "s.npz"), "--steps", "5",
                     "--out", str(tmp_path / "lat")]) == 0
    lat = np.load(tmp_path / "lat.npz")
    assert lat["x_T"].shape == lat["recon"].shape == (6, 1, 8, 8) and lat["mse"].shape == (6,)
    np.testing.assert_array_equal(lat["x0"], z["samples"])

    assert cli.main(["interpolate", "--checkpoint", ckpt, "--seeds", "3", "9", "--n", "5", "--steps", "5",
                     "--out", str(tmp_path / "i")]) == 0
    path = np.load(tmp_path / "i.npz")
    assert path["samples"].shape == (5, 1, 8, 8) and path["lam"].tolist() == [0, 0.25, 0.5, 0.75, 1]
    # λ = 0 is seed 3's latent exactly, so the strip starts with `sample --seed 3`'s first image
    np.testing.assert_array_equal(path["x_T"][0], z["x_T"][0])
    np.testing.assert_allclose(path["samples"][0], z["samples"][0], atol=1e-5)

    assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / "lat.npz"),
                     "--index", "0", "2", "--n", "3", "--steps", "5", "--out", str(tmp_path / "j")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "j.npz")["x_T"][[0, 2]], lat["x_T"][[0, 2]])


def test_invert_reads_png_files(trained, tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    img[2:6, 3:5] = 255
    mpimg.imsave(tmp_path / "a.png", img)
    assert cli.main(["invert", "--checkpoint", str(trained / "ckpt.pt"), "--input", str(tmp_path / "a.png"),
                     "--steps", "4", "--out", str(tmp_path / "a_lat")]) == 0
    x0 = np.load(tmp_path / "a_lat.npz")["x0"]
    assert x0.shape == (1, 1, 8, 8) and x0.max() == 1 and x0.min() == -1
    mpimg.imsave(tmp_path / "big.png", np.zeros((16, 16, 3), np.uint8))
    assert cli.main(["invert", "--checkpoint", str(trained / "ckpt.pt"), "--input", str(tmp_path / "big.png"),
                     "--out", str(tmp_path / "b")]) == 1


def test_invert_with_heun_lands_nearer_the_odes_latent_than_ddim(trained, tmp_path, capsys):
    """`python -m ddimlab invert --sampler heun` (notebook 05 §8): ode.heun_invert there and ode.heun back, 2S − 1 calls each
    way (said, as DDIM's 2S); its latents lie nearer than DDIM's to the ODE's exact x_T from the same images (scipy's
    `reference_solution`; RK23 at 1e-3 is within 3e-4 of DOP853 at 1e-6 here, against a gap of 0.08), its reconstruction is
    what `ode.heun` decodes from them, and the .npz records the sampler. On one step, where Heun's inversion is DDIM's,
    --sampler heun is refused."""
    ckpt, images = trained / "ckpt.pt", tmp_path / "in.npz"
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    np.savez(images, x0=x0.numpy())
    r = _run("invert", "--checkpoint", ckpt, "--input", images, "--steps", 20, "--sampler", "heun", "--no-progress",
             "--out", tmp_path / "heun")
    assert r.returncode == 0 and "20 Heun steps (78 network calls per image, there and back)" in r.stdout, r
    assert cli.main(["invert", "--checkpoint", str(ckpt), "--input", str(images), "--steps", "20", "--no-progress",
                     "--out", str(tmp_path / "ddim")]) == 0
    assert "20 DDIM steps (40 network calls per image" in capsys.readouterr().out
    out = {k: dict(np.load(tmp_path / f"{k}.npz")) for k in ("ddim", "heun")}
    assert [str(out[k]["sampler"]) for k in out] == ["ddim", "heun"]
    net, abar = checkpoint.load_model(ckpt)
    seq = schedule.timesteps(20, 1000, "uniform")
    exact = ode.reference_solution(eps_fn(net), x0, abar, -1, int(seq[0]), rtol=1e-3, atol=1e-3, method="RK23")
    miss = {k: float((torch.as_tensor(z["x_T"]) - exact).pow(2).mean().sqrt()) for k, z in out.items()}
    assert miss["heun"] < miss["ddim"] / 3, miss                                       # 0.020 and 0.098
    torch.testing.assert_close(torch.as_tensor(out["heun"]["recon"]),
                               ode.heun(eps_fn(net), torch.as_tensor(out["heun"]["x_T"]), abar, seq), rtol=1e-5, atol=1e-5)
    _expect_one_line_error(capsys, ["invert", "--checkpoint", str(ckpt), "--input", str(images), "--steps", "1",
                                    "--sampler", "heun", "--out", str(tmp_path / "one")],
                           "--sampler heun on 1 step takes DDIM's steps", "pass --steps 2 or more")


def test_interpolate_decodes_latents_with_the_sampler_that_made_them(trained, tmp_path, capsys):
    """`interpolate --latents` decoded every file's latents with DDIM, so the latents of `invert --sampler heun` and of
    `sample --sampler ipndm` came back at λ = 0 and 1 as other images than the file's. It now takes the file's sampler as
    it takes its grid (and says so), with `--lower-order-final` as `sample` ran it, records it, and warns when another
    sampler is asked for (`--clip` and other files: test_round_30_interpolate_decodes_latents_with_the_solver_that_made_them)."""
    ckpt, images = str(trained / "ckpt.pt"), tmp_path / "in.npz"
    np.savez(images, x0=(torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1).numpy())
    assert cli.main(["invert", "--checkpoint", ckpt, "--input", str(images), "--steps", "6", "--sampler", "heun",
                     "--no-progress", "--out", str(tmp_path / "inv")]) == 0
    assert cli.main(["sample", "--checkpoint", ckpt, "--n", "2", "--steps", "6", "--sampler", "ipndm", "--no-progress",
                     "--out", str(tmp_path / "smp")]) == 0
    capsys.readouterr()
    for made, images_key, said in (("inv", "recon", "--sampler heun --steps 6 --spacing uniform"),
                                   ("smp", "samples", "--sampler ipndm --steps 6 --spacing power3")):
        assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / f"{made}.npz"), "--n", "3",
                         "--no-progress", "--out", str(tmp_path / f"path_{made}")]) == 0
        assert f"{said}: what made" in capsys.readouterr().out
        with np.load(tmp_path / f"path_{made}.npz") as z, np.load(tmp_path / f"{made}.npz") as made_by:
            assert str(z["sampler"]) == said.split()[1]
            np.testing.assert_allclose(z["samples"][[0, -1]], made_by[images_key][[0, 1]], atol=1e-5)
    assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / "inv.npz"), "--n", "3",
                     "--sampler", "ddim", "--no-progress", "--out", str(tmp_path / "ddim")]) == 0
    assert "inv.npz was made with --sampler heun: with other settings its latents decode" in capsys.readouterr().err
    with np.load(tmp_path / "ddim.npz") as z, np.load(tmp_path / "inv.npz") as made_by:
        assert np.abs(z["samples"][0] - made_by["recon"][0]).max() > 1e-3      # DDIM's images of Heun's latents differ
    assert cli.main(["sample", "--checkpoint", ckpt, "--n", "2", "--steps", "4", "--sampler", "dpm_solver_pp_3m",
                     "--lower-order-final", "--no-progress", "--out", str(tmp_path / "lof")]) == 0
    assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / "lof.npz"), "--n", "3",
                     "--no-progress", "--out", str(tmp_path / "from_lof")]) == 0
    assert "decoded by dpm_solver_pp_3m (lower order final) ->" in capsys.readouterr().out
    with np.load(tmp_path / "from_lof.npz") as z, np.load(tmp_path / "lof.npz") as made_by:
        np.testing.assert_allclose(z["samples"][[0, -1]], made_by["samples"], rtol=1e-4, atol=1e-4)   # values up to 244


def test_sample_from_diffusers_folder(tmp_path):
    torch.manual_seed(0)
    net = UNet(in_ch=3, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
               resolution=8, num_groups=8).eval()
    checkpoint.save_diffusers_folder(net, tmp_path / "unet", schedule.make_alpha_bar())
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "unet"), "--steps", "3", "--n", "2",
                     "--out", str(tmp_path / "f")]) == 0
    z = np.load(tmp_path / "f.npz")
    abar = schedule.make_alpha_bar("linear", 1000)
    direct = ddim_sample(eps_fn(net), torch.as_tensor(z["x_T"]), abar, schedule.timesteps(3, 1000))
    torch.testing.assert_close(torch.as_tensor(z["samples"]), direct, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sample_from_official_ddpm_file(tmp_path, monkeypatch):
    """A bare state_dict in the official layout (what model-790000.ckpt is) goes through load_official_ddpm."""
    from ddimlab.unet import cifar10_unet

    torch.save(cifar10_unet().state_dict(), tmp_path / "model.ckpt")
    net, abar = checkpoint.load_model(tmp_path / "model.ckpt")
    assert sum(p.numel() for p in net.parameters()) == 35_746_307 and abar.shape == (1000,)
    monkeypatch.setattr(checkpoint, "official_ddpm_file", lambda: tmp_path / "model.ckpt")  # what a download gives
    by_name, _ = checkpoint.load_model("ddpm-cifar10")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(by_name(x, torch.tensor([500])), net(x, torch.tensor([500])), rtol=0, atol=0)
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "model.ckpt"), "--steps", "1", "--n", "1",
                     "--out", str(tmp_path / "o")]) == 0
    assert np.load(tmp_path / "o.npz")["samples"].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="an official-layout file .* offers no raw weights"):   # --no-ema: no effect
        checkpoint.load_model(tmp_path / "model.ckpt", use_ema=False)


def test_cli_errors(tmp_path, trained, capsys):
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert "missing.pt does not exist" in capsys.readouterr().err
    assert cli.main(["train", "--set", "learning_rate=1"]) == 1
    assert "unknown config key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["sample", "--checkpoint", str(trained / "ckpt.pt"), "--steps", "0"])
    with pytest.raises(SystemExit):
        cli.main(["sample", "--checkpoint", str(trained / "ckpt.pt"), "--spacing", "leading"])


def test_demo_end_to_end_on_a_tiny_model(trained, tmp_path, monkeypatch, capsys):
    """`demo`: the lab table, then DDPM 1000 (with a progress bar) vs DDIM 10/20/50 from one x_T (seed 0), scored at
    16×16 and drawn in one grid; its DDIM-10 FD equals that of DDIM-10 run here from the same x_T, and each DDIM's
    paired line gives its FD minus DDPM's."""
    from ddimlab import lab, pretrained, train

    model, config = train.load_trained(trained / "ckpt.pt")
    seen = {}
    monkeypatch.setattr(lab, "main", lambda out, **kw: seen.update(lab_out=out, **kw) or [])
    monkeypatch.setattr(pretrained, "digits_model", lambda steps, seed, progress: (model, config))
    assert cli.main(["demo", "--out", str(tmp_path), "--n", "8"]) == 0
    assert seen["lab_out"] == tmp_path and seen["image_d"] > 0
    out, err = capsys.readouterr()
    assert "DDPM, 1000 steps" in err and "1000/1000" in err
    assert f"CPU, {torch.backends.cpu.get_cpu_capability()} kernels ==" in out  # they change the scores' last digits
    rows = [line.split() for line in out.splitlines() if line.startswith(("DDPM", "DDIM"))]
    assert [r[3] for r in rows] == ["1000", "10", "20", "50"]
    x_T = torch.randn(8, 1, config.resolution, config.resolution, generator=torch.Generator().manual_seed(0))
    ddim10 = ddim_sample(eps_fn(model), x_T, schedule.make_alpha_bar(config.schedule, config.T),
                         schedule.timesteps(10, config.T, "uniform"))
    up = torch.nn.functional.interpolate(ddim10.clamp(-1, 1), size=(16, 16), mode="bilinear", antialias=True)
    assert float(rows[1][5]) == pytest.approx(quality.score_digits(up)["fd"], abs=0.006)  # scored at 16×16
    assert float(rows[1][6]) > 0  # its bootstrap SE
    paired = [line.split() for line in out.splitlines() if line.startswith("  DDIM")]    # each DDIM minus DDPM
    assert [p[1] for p in paired] == ["10", "20", "50"]
    assert [float(p[4]) for p in paired] == pytest.approx([float(r[5]) - float(rows[0][5]) for r in rows[1:]], abs=0.011)
    assert mpimg.imread(tmp_path / "digits_samplers.png").shape[:2] == (3 * (4 * 17 + 1), 3 * (8 * 17 + 1))  # at 16×16


def test_demo_score_of_real_8x8_digits_equals_the_16x16_digits():
    """`demo.score` resizes 8×8 samples to 16×16: real 8×8 digits must score as the 16×16 set does
    (`data.load_digits(16)` is the same resize, rounded to uint8), not as the 8×8 classifier sees them."""
    from ddimlab import data, demo

    idx = torch.randperm(1797, generator=torch.Generator().manual_seed(0))[:200]
    x8, x16 = (data.to_model_range(data.load_digits(r)[0][idx]).float() for r in (8, 16))
    s8, s16 = demo.score(x8), quality.score_digits(x16)
    assert s8["fd"] == pytest.approx(s16["fd"], abs=0.1) and s8["confident"] == pytest.approx(s16["confident"], abs=0.02)
    assert abs(quality.digits_fd(x8) - s16["fd"]) > 1  # the 8×8 classifier's scale is another one


def test_python_dash_m_lists_subcommands():
    r = subprocess.run([sys.executable, "-m", "ddimlab", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for cmd in ("train", "sample", "invert", "interpolate", "reproduce", "demo"):
        assert cmd in r.stdout


# --------------------------------------------------------------------------- plotting

def test_image_grid_layout_and_values(tmp_path):
    x = torch.stack([-torch.ones(1, 4, 4), torch.ones(1, 4, 4), torch.zeros(1, 4, 4)])
    g = plotting.image_grid(x, nrow=2, padding=1)
    assert g.shape == (2 * 5 + 1, 2 * 5 + 1, 3) and g.dtype == np.uint8
    assert (g[1:5, 1:5] == 0).all() and (g[1:5, 6:10] == 255).all() and (g[6:10, 1:5] == 128).all()
    assert (g[0] == 255).all() and (g[:, 5] == 255).all() and (g[6:10, 6:10] == 255).all()  # padding, empty cell
    rgb = torch.zeros(2, 3, 4, 4)
    rgb[0, 0] = 1  # red
    assert plotting.image_grid(rgb)[1, 1].tolist() == [255, 128, 128]
    path = plotting.save_image_grid(x, tmp_path / "sub" / "g.png", nrow=2, scale=3)
    back = mpimg.imread(path)
    assert back.shape[:2] == (33, 33)
    np.testing.assert_array_equal((back[..., :3] * 255).round().astype(np.uint8), g.repeat(3, 0).repeat(3, 1))
    assert sorted(p.name for p in path.parent.iterdir()) == ["g.png"]
    with pytest.raises(ValueError, match="C in"):
        plotting.image_grid(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        plotting.image_grid(torch.zeros(4, 4))


# --------------------------------------------------------------------------- issue #12: commands a user can trust

def _short_error(r, *needles):
    """Exit status 1, no traceback, at most two lines on stderr, each needle in them."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(lines) <= 2, r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


def test_training_into_a_run_folder_is_refused_and_changes_nothing(trained, tmp_path):
    """Case 1: `train` into a folder holding a run used to replace ckpt.pt, delete log.jsonl and exit 0."""
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    r = _run("train", "--out", trained, "--no-progress", *_sets(TINY), "--set", "ch=24")
    _short_error(r, "already holds a run", "--resume", "--overwrite")
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before


def test_errors_are_one_or_two_lines_and_debug_shows_the_traceback(tmp_path, trained):
    """Case 10: known errors used to print a 24-line traceback."""
    _short_error(_run("sample", "--checkpoint", tmp_path / "nope.pt"), "nope.pt does not exist")
    r = _run("sample", "--checkpoint", tmp_path / "nope.pt", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr
    if not torch.cuda.is_available():
        _short_error(_run("sample", "--checkpoint", trained, "--device", "cuda", "--out", tmp_path / "c"), "cuda")
    _short_error(_run("sample", "--checkpoint", trained, "--sampler", "ddpm", "--eta", "0.7", "--out", tmp_path / "e"),
                 "--eta applies to --sampler ddim only")


def test_malicious_pickle_is_refused_as_code_not_as_corruption(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    r = _run("sample", "--checkpoint", tmp_path / "evil.pt", "--out", tmp_path / "s")
    _short_error(r, "refused", "asks to run code")
    assert "weights_only" not in r.stderr and "corrupt" not in r.stderr and "pwned" not in r.stdout


def test_a_run_folder_is_a_checkpoint(trained, tmp_path):
    assert cli.main(["sample", "--checkpoint", str(trained), "--steps", "3", "--n", "2", "--no-progress",
                     "--out", str(tmp_path / "f")]) == 0


def test_resume_over_a_foreign_file_names_what_is_missing(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"model": {}, "step": 3}, out / "ckpt.pt")
    assert cli.main(["train", "--out", str(out), "--resume", "--no-progress", *_sets(TINY)]) == 1
    err = capsys.readouterr().err
    assert "lacks the key(s)" in err and "'ema'" in err and "'config'" in err


def test_a_mistyped_data_root_is_not_created(tmp_path, capsys):
    typo = tmp_path / "cifra10"
    assert cli.main(["train", "--preset", "cifar10", "--out", str(tmp_path / "r"), "--no-progress",
                     "--set", f"data_root={typo}", "--set", "device=cpu"]) == 1
    assert "does not exist" in capsys.readouterr().err and not typo.exists()


def test_version_help_defaults_and_program_name():
    """Case 11: --version; every option has help text and shows its default (one form); train --help lists the --set keys."""
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.startswith("ddimlab ")
    parser = cli.build_parser("ddimlab")
    subparsers = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        for action in sub._actions:
            if action.option_strings and action.dest not in ("help", "debug"):
                assert action.help, f"{name} {action.option_strings} has no help text"
                if action.default is not None and action.default is not False:
                    assert "default" in sub._get_formatter()._get_help_string(action), (name, action.dest)
                # one form for a default, argparse's or written by hand: "(default: 50)", never "(default 50)";
                # an option whose default is None (not given) says in words what not giving it does
                assert "(default " not in action.help and "; default " not in action.help, (name, action.help)
                if action.default is None and not action.required and action.nargs != 0 and action.dest != "set":
                    assert "default: " in action.help, (name, action.dest)
        if name == "train":
            assert "--set keys" in text and "ema_decay" in text and "0.9999" in text and "--device" in text
            assert "--bf16" in text and "--compile" in text
    r = _run("sample", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m ddimlab sample")


def test_two_samplers_writing_one_output_leave_a_matching_pair(trained, tmp_path):
    """Case 5: two `sample` commands to one --out could leave a PNG and an NPZ from different seeds."""
    import hashlib

    out = tmp_path / "same"
    for _ in range(2):
        procs = [subprocess.Popen([sys.executable, "-m", "ddimlab", "sample", "--checkpoint", str(trained),
                                   "--steps", "2", "--n", "3", "--seed", str(seed), "--no-progress", "--overwrite",
                                   "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for seed in (1, 2)]
        assert all(p.wait(timeout=300) == 0 for p in procs)
        z = np.load(out.with_suffix(".npz"))
        assert str(z["png_sha256"]) == hashlib.sha256(out.with_suffix(".png").read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["same.npz", "same.png"]


def test_existing_outputs_are_not_replaced_without_overwrite(trained, tmp_path, capsys):
    args = ["sample", "--checkpoint", str(trained), "--steps", "2", "--n", "2", "--no-progress",
            "--out", str(tmp_path / "s")]
    assert cli.main(args) == 0
    before = (tmp_path / "s.png").read_bytes()
    assert cli.main(args + ["--seed", "5"]) == 1 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "s.png").read_bytes() == before
    assert cli.main(args + ["--seed", "5", "--overwrite"]) == 0


def test_sample_shows_a_progress_bar_unless_asked_not_to(trained, tmp_path):
    """Case 12: sample, invert, interpolate show a tqdm bar; --no-progress turns it off."""
    r = _run("sample", "--checkpoint", trained, "--steps", "3", "--n", "2", "--out", tmp_path / "p")
    assert r.returncode == 0 and "3/3" in r.stderr
    r = _run("sample", "--checkpoint", trained, "--steps", "3", "--n", "2", "--out", tmp_path / "q", "--no-progress")
    assert r.returncode == 0 and "3/3" not in r.stderr


@pytest.mark.parametrize("sampler,spacing", [("ipndm", "power3"), ("unipc_3", "logsnr"), ("dpm_solver_pp_3m", "karras")])
def test_sample_with_the_fast_solvers(trained, tmp_path, sampler, spacing):
    """Issue #10: every new solver and step rule runs on the image model from the command line."""
    assert cli.main(["sample", "--checkpoint", str(trained), "--sampler", sampler, "--spacing", spacing,
                     "--steps", "6", "--n", "2", "--no-progress", "--out", str(tmp_path / sampler)]) == 0
    z = np.load(tmp_path / f"{sampler}.npz")
    assert z["samples"].shape == (2, 1, 8, 8) and np.isfinite(z["samples"]).all()


def test_sample_lowers_3ms_order_before_the_last_step_when_asked(trained, tmp_path, capsys):
    """DPM-Solver++(3M) with `lower_order_final` (notebook 08 §7: closer to the ODE's solution at 5 steps) was a library
    option only. `sample --lower-order-final` runs it: the same images as the solver called by hand on the same x_T
    and steps, not those of plain 3M; for another sampler the flag is an error."""
    from ddimlab import generate

    base = ["sample", "--checkpoint", str(trained), "--sampler", "dpm_solver_pp_3m", "--steps", "5", "--n", "3",
            "--seed", "4", "--no-progress"]
    assert cli.main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert cli.main([*base, "--lower-order-final", "--out", str(tmp_path / "lowered")]) == 0
    net, abar = checkpoint.load_model(trained, "cpu")
    seq = ode.rule_timesteps("logsnr", 5, abar)
    x_T = generate.latents(4, range(3), (1, 8, 8))
    with torch.no_grad():
        by_hand = {lof: ode.dpm_solver_pp_3m(eps_fn(net), x_T, abar, seq, lower_order_final=lof).float().numpy()
                   for lof in (False, True)}
    got = {lof: np.load(tmp_path / f"{name}.npz")["samples"] for lof, name in ((False, "plain"), (True, "lowered"))}
    for lof, name in ((False, "plain"), (True, "lowered")):
        np.testing.assert_allclose(got[lof], by_hand[lof], atol=1e-5)
        assert bool(np.load(tmp_path / f"{name}.npz")["lower_order_final"]) == lof       # recorded with the samples
    assert np.abs(by_hand[True] - by_hand[False]).max() > 1e-3
    _expect_one_line_error(capsys, [*base[:4], "unipc_3", *base[5:], "--lower-order-final", "--out",
                                    str(tmp_path / "u")], "--lower-order-final applies to --sampler dpm_solver_pp_3m only")


def test_each_solver_runs_on_its_own_steps_unless_asked(trained, tmp_path, capsys):
    """`sample --sampler ipndm` ran on the DDIM code's uniform grid (for S = 6: t = 830 … 0), not on the power3 grid
    ((t+1)^{1/3}-uniform) it is benchmarked on; the λ-solvers likewise. Without --spacing each solver takes
    ode.DEFAULT_RULES, recorded in the NPZ; DDIM keeps `uniform`, and an explicit --spacing wins."""
    for sampler, spacing, expected in (("ipndm", None, "power3"), ("unipc_3", None, "logsnr"), ("ddim", None, "uniform"),
                                       ("ipndm", "uniform", "uniform")):
        out = tmp_path / f"{sampler}_{spacing}"
        args = ["sample", "--checkpoint", str(trained), "--sampler", sampler, "--steps", "6", "--n", "2", "--no-progress",
                "--out", str(out)] + (["--spacing", spacing] if spacing else [])
        assert cli.main(args) == 0
        assert str(np.load(out.with_suffix(".npz"))["spacing"]) == expected
        assert f"6 steps, {expected})" in capsys.readouterr().out
    seq = ode.rule_timesteps("power3", 6, schedule.make_alpha_bar("linear", 1000))
    assert int(seq[0]) == 999 and seq.tolist() != schedule.timesteps(6, 1000, "uniform").tolist()


def test_sampling_an_early_ema_says_so_in_one_line(trained, tmp_path):
    """The `cifar10` preset's EMA (0.9999, no warm-up) is 82% random weights after 2000 steps: `sample` says so and
    names --no-ema, which samples the raw weights without the note."""
    state = checkpoint.load_checkpoint(trained / "ckpt.pt")
    state["ema_initial_share"], state["step"] = 0.8187, 2000
    torch.save(state, tmp_path / "early.pt")
    args = ["sample", "--checkpoint", tmp_path / "early.pt", "--steps", "3", "--n", "2", "--no-progress"]
    ema, raw = _run(*args, "--out", tmp_path / "ema"), _run(*args, "--no-ema", "--out", tmp_path / "raw")
    warned = [ln for ln in ema.stderr.splitlines() if "warning" in ln]
    assert ema.returncode == 0 and len(warned) == 1 and "Traceback" not in ema.stderr, ema.stderr
    assert "82%" in warned[0] and "step 2000" in warned[0] and "--no-ema" in warned[0]
    assert raw.returncode == 0 and "warning" not in raw.stderr, raw.stderr


def test_samples_that_diverged_are_written_with_a_warning(trained, tmp_path, capsys):
    """A cosine-schedule model (ᾱ_999 = 2.4e-9) sampled on a grid that starts at t = 999 wrote finite noise
    of RMS ~10³ and said nothing: x̂_0 divides the network's error at t = 999 by √ᾱ_999. The samples are
    what was asked for, so they are written, with one line saying they are not images and why."""
    state = checkpoint.load_checkpoint(trained / "ckpt.pt")
    state["config"]["schedule"] = "cosine"
    torch.save(state, tmp_path / "cosine.pt")
    args = ["sample", "--checkpoint", tmp_path / "cosine.pt", "--steps", "10", "--n", "4", "--no-progress"]
    r = _run(*args, "--spacing", "linspace", "--out", tmp_path / "bad")
    warned = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert r.returncode == 0 and len(warned) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "RMS above 10" in warned[0] and "t = 999" in warned[0] and "--clip" in warned[0]
    assert np.sqrt((np.load(tmp_path / "bad.npz")["samples"] ** 2).reshape(4, -1).mean(1)).min() > 10
    r = _run(*args, "--spacing", "linspace", "--batch-size", "1", "--out", tmp_path / "bad1")   # once, not per batch
    assert [ln for ln in r.stderr.splitlines() if "warning" in ln] == [warned[0].replace("bad", "bad1")], r.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("default")     # pyproject ignores it for the suite's untrained models
        assert cli.main(["interpolate", *args[1:5], "--spacing", "linspace", "--n", "3", "--no-progress",
                         "--out", tmp_path / "path"]) == 0
    assert "interpolate: warning: 3 of 3 samples" in capsys.readouterr().err
    for extra in (["--spacing", "linspace", "--clip"], ["--spacing", "quad"]):   # the two ways out it names
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert cli.main(args + extra + ["--out", tmp_path / "ok", "--overwrite"]) == 0
        z = np.load(tmp_path / "ok.npz")
        assert np.sqrt((z["samples"] ** 2).reshape(4, -1).mean(1)).max() < 2      # far below the bound of 10


# --------------------------------------------------------------------------- a careless user, second pass

def test_resume_continues_with_the_runs_own_settings(tmp_path, capsys):
    """`train --resume` used to rebuild the config from the preset: lr, batch size and t_sampling of the run were
    silently replaced by the preset's, and config.json rewritten with them."""
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), "--no-progress", *_sets(TINY), "--set", "steps=10",
                     "--set", "t_sampling=uniform", "--set", "lr=1e-3"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--out", str(out), "--resume", "--no-progress", "--set", "steps=20"]) == 0
    assert "resume: steps: 10 -> 20 (--set)" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert (saved["lr"], saved["t_sampling"], saved["batch_size"], saved["ch"], saved["steps"]) == (1e-3, "uniform", 32, 16, 20)
    assert cli.main(["train", "--out", str(out), "--resume", "--preset", "digits", "--no-progress"]) == 1
    assert "--preset does not apply to --resume" in capsys.readouterr().err


def test_a_failed_overwrite_puts_the_old_run_back_whole(trained, tmp_path, capsys):
    """A failed --overwrite used to empty log.jsonl but keep the old ckpt.pt, so a later --resume continued the old
    run without its history; old sample grids stayed beside the new run's. Then it deleted the old run first, and a
    failure lost it. Now the old run is set aside and comes back whole: checkpoint, config, log and grids."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    files = lambda: {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".lock"}  # noqa: E731
    before = files()
    assert cli.main(["train", "--out", str(out), "--overwrite", "--no-progress", *_sets(TINY), "--set", "lr=1e30",
                     "--set", "warmup=0", "--set", "grad_clip=0"]) == 1
    captured = capsys.readouterr()
    assert "no checkpoint had been written yet" in captured.err and "put the previous run back" in captured.out
    assert files() == before and not list(out.glob(".previous-*"))


def test_resume_without_a_run_says_it_starts_a_new_one(tmp_path, capsys):
    out = tmp_path / "typo"
    assert cli.main(["train", "--out", str(out), "--resume", "--no-progress", *_sets(TINY), "--set", "steps=2"]) == 0
    assert "holds no run to resume: starting a new one" in capsys.readouterr().out


def test_ctrl_c_during_the_import_is_one_line():
    """Importing the command line (torch) takes seconds; a Ctrl-C then used to print a traceback."""
    code = ("import sys\n"
            "class Interrupt:\n"     # stands in for a SIGINT while ddimlab.cli is being imported
            "    def find_spec(self, name, *a):\n"
            "        if name == 'ddimlab.cli': raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "from ddimlab.__main__ import run\n"
            "sys.exit(run())\n")
    p = subprocess.run([sys.executable, "-c", code, "sample"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 130 and p.stderr == "ddimlab: interrupted\n", p.stderr


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_the_steps_since_the_last_checkpoint(tmp_path, signame):
    """Ctrl-C used to lose every step since the last checkpoint (hours with the cifar10 preset's 10,000), and SIGTERM
    (`kill`, `timeout`, `docker stop`, a batch scheduler's time limit) still did."""
    import os
    import signal
    import time

    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "ddimlab", "train", "--out", str(out), "--no-progress", *_sets(TINY),
                          "--set", "steps=100000", "--set", "ckpt_every=100000", "--set", "log_every=2",
                          "--set", "lr_decay=none"],        # a constant rate, so that a shorter run below can match it
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "DDIMLAB_DEBUG": ""})
    t0 = time.time()
    while not ((out / "log.jsonl").exists() and len((out / "log.jsonl").read_text().splitlines()) >= 2):
        assert p.poll() is None and time.time() - t0 < 240, p.stderr.read() if p.poll() is not None else "timeout"
        time.sleep(0.1)
    p.send_signal(getattr(signal, signame))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "stopped at step" in err and "continue with --resume" in err, err
    step = int(err.split("stopped at step ")[1].split()[0])
    assert step >= 4 and checkpoint.load_checkpoint(out / "ckpt.pt")["step"] == step
    assert json.loads((out / "config.json").read_text())["steps"] == 100000
    if signame == "SIGTERM":
        return
    # resumed, it logs what an uninterrupted run logs: the losses since the last log line were saved too
    end = step + 3
    # (in subprocesses like the first run: the same thread count, hence the same float rounding)
    assert _run("train", "--out", out, "--resume", "--no-progress", "--set", f"steps={end}").returncode == 0
    assert _run("train", "--out", tmp_path / "straight", "--no-progress", *_sets(TINY), "--set", f"steps={end}",
                "--set", "ckpt_every=100000", "--set", "log_every=2", "--set", "lr_decay=none").returncode == 0
    logs = [{r["step"]: r["loss"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines())}
            for d in (out, tmp_path / "straight")]
    assert logs[0] == logs[1]


def test_output_names_keep_their_dots_and_a_folder_is_refused(trained, tmp_path, capsys):
    """`--out eta0.5` used to become eta0.png (the name cut at its dot), so eta0.0 and eta0.5 overwrote each other."""
    base = ["sample", "--checkpoint", str(trained), "--steps", "2", "--n", "2", "--no-progress"]
    for eta in ("0.0", "0.5"):
        assert cli.main(base + ["--eta", eta, "--out", str(tmp_path / f"eta{eta}")]) == 0
    assert sorted(p.name for p in tmp_path.glob("eta*")) == ["eta0.0.npz", "eta0.0.png", "eta0.5.npz", "eta0.5.png"]
    assert cli.main(base + ["--out", str(tmp_path / "x.png")]) == 0 and (tmp_path / "x.npz").exists()
    (tmp_path / "folder").mkdir()
    for out in (str(tmp_path / "folder"), str(tmp_path / "new") + "/"):
        assert cli.main(base + ["--out", out]) == 1 and "names a folder" in capsys.readouterr().err


def test_of_two_commands_racing_to_one_output_only_one_writes_it(trained, tmp_path):
    """Without --overwrite, two `sample` commands to one --out both used to exit 0, the second replacing the first:
    the existence check ran before sampling, outside the lock."""
    procs = [subprocess.Popen([sys.executable, "-m", "ddimlab", "sample", "--checkpoint", str(trained), "--steps", "2",
                               "--n", "3", "--seed", str(seed), "--no-progress", "--out", str(tmp_path / "race")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    codes = sorted(p.wait(timeout=300) for p in procs)
    assert codes == [0, 1] and any("already exist" in p.stderr.read() for p in procs)


def test_bad_scale_seed_and_latents_are_refused_before_the_work(trained, tmp_path, capsys):
    base = ["sample", "--checkpoint", str(trained), "--steps", "2", "--n", "2", "--no-progress", "--out", str(tmp_path / "s")]
    for flag, value, needle in (("--scale", "20000", "integer in 1..32"), ("--seed", "-1", "0..2**63 - 1")):
        with pytest.raises(SystemExit):
            cli.main(base + [flag, value])
        assert needle in capsys.readouterr().err
    np.savez(tmp_path / "lat.npz", x_T=np.zeros((2, 1, 16, 16), np.float32))      # a 16×16 model's latents
    assert cli.main(["interpolate", "--checkpoint", str(trained), "--latents", str(tmp_path / "lat.npz"), "--steps", "2",
                     "--n", "3", "--no-progress", "--out", str(tmp_path / "i")]) == 1
    assert "holds latents of shape (1, 16, 16)" in capsys.readouterr().err and not (tmp_path / "i.npz").exists()


def test_reproduce_never_reuses_images_made_with_other_settings(trained, tmp_path, capsys):
    """`reproduce table1` used to score the images a run with another seed, spacing or model had left in --out."""
    base = ["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "4",
            "--steps", "2", "--etas", "0", "--no-progress", "--out", str(tmp_path / "t1"), "--batch-size", "4"]
    assert cli.main(base) == 0
    first = capsys.readouterr().out
    assert cli.main(base) == 1                                              # a finished table is replaced only when asked
    assert "table1.md and " in capsys.readouterr().err and (tmp_path / "t1" / "table1.md").exists()
    base.append("--overwrite")
    assert cli.main(base) == 0 and capsys.readouterr().out == first          # the same settings: reused, same table
    assert cli.main(base + ["--seed", "7"]) == 1
    assert "holds images made with other settings (seed 0 there, 7 now)" in capsys.readouterr().err
    assert cli.main(base + ["--no-ema"]) == 1 and "another model" in capsys.readouterr().err


def test_invert_refuses_inputs_it_would_misread(trained, tmp_path, capsys):
    """0..255 data as x0, float `images`, 16-bit PNGs, non-images and mixed sizes used to be read wrongly (exit 0) or
    end in a traceback."""
    from PIL import Image

    bad = {"x0_255.npz": lambda p: np.savez(p, x0=np.full((2, 1, 8, 8), 200.0, np.float32)),
           "float_images.npz": lambda p: np.savez(p, images=np.full((2, 8, 8, 1), 0.5, np.float32)),
           "three_d.npz": lambda p: np.savez(p, images=np.zeros((2, 8, 8), np.uint8)),
           "strings.npz": lambda p: np.savez(p, x0=np.array(["a", "b"])),
           "deep.png": lambda p: Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(p),
           "junk.png": lambda p: p.write_bytes(b"not a png")}
    needles = {"x0_255.npz": "in [-1, 1]", "float_images.npz": "uint8", "three_d.npz": "uint8 (N, H, W, C)",
               "strings.npz": "numeric", "deep.png": "has Pillow mode I;16; convert it to 8-bit", "junk.png": "not an image file"}
    for name, make in bad.items():
        make(tmp_path / name)
        assert cli.main(["invert", "--checkpoint", str(trained), "--input", str(tmp_path / name), "--steps", "2",
                         "--no-progress", "--out", str(tmp_path / "o")]) == 1, name
        assert needles[name] in capsys.readouterr().err, name
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "b.png")
    assert cli.main(["invert", "--checkpoint", str(trained), "--input", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                     "--steps", "2", "--no-progress", "--out", str(tmp_path / "o")]) == 1
    assert "b.png is 9×9 pixels; the model takes 8×8" in capsys.readouterr().err and not (tmp_path / "o.npz").exists()


def test_a_grid_that_starts_near_the_data_says_so(trained, tmp_path):
    """`sample --steps 1` on the uniform grid starts at t = 0 and used to return x_T with exit 0 and no word."""
    r = _run("sample", "--checkpoint", trained, "--steps", "1", "--n", "2", "--no-progress", "--out", tmp_path / "one")
    assert r.returncode == 0 and "warning: the only step is t = 0" in r.stderr, r.stderr
    r = _run("sample", "--checkpoint", trained, "--steps", "1", "--spacing", "trailing", "--n", "2", "--no-progress",
             "--out", tmp_path / "two")
    assert r.returncode == 0 and "the noisiest of the" not in r.stderr, r.stderr


def test_small_things_a_careless_user_hits(trained, tmp_path, capsys):
    """Each used to exit 0 having done nothing or the wrong thing, or to print a misleading message."""
    base = ["--steps", "2", "--no-progress"]
    np.savez(tmp_path / "lat.npz", x_T=np.zeros((2, 1, 8, 8), np.float32))
    assert cli.main(["interpolate", "--checkpoint", str(trained), "--latents", str(tmp_path / "lat.npz"), "--seeds", "3",
                     "4", *base, "--out", str(tmp_path / "i")]) == 1
    assert "exclude each other" in capsys.readouterr().err
    (tmp_path / "text.npz").write_text("not an npz")
    assert cli.main(["interpolate", "--checkpoint", str(trained), "--latents", str(tmp_path / "text.npz"), *base,
                     "--out", str(tmp_path / "i")]) == 1
    err = capsys.readouterr().err
    assert "is not an .npz of numeric arrays" in err and "allow_pickle" not in err
    assert cli.main(["reproduce", "table1", "--checkpoint", str(trained), "--etas", ",", "--features", "random",
                     "--out", str(tmp_path / "t")]) == 1
    assert "at least one value" in capsys.readouterr().err
    for args, needle in ((["lab", "--image-d", "-5"], "non-negative integer"), (["lab", "--n", "3"], "integer >= 8")):
        with pytest.raises(SystemExit):
            cli.main(args)
        assert needle in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path / "g"), "--no-progress", *_sets(TINY), "--set", "grad_clip=nan"]) == 1
    assert "grad_clip must be a finite number" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert cli.main(["train", "--out", str(tmp_path / "afile"), "--no-progress", *_sets(TINY)]) == 1
    assert "is a file, not a run folder" in capsys.readouterr().err
    before = [(trained / f).read_bytes() for f in ("ckpt.pt", "config.json")]
    assert cli.main(["train", "--out", str(trained), "--resume", "--no-progress", "--set", "lr=1e-3"]) == 0
    assert "already at step 30 of steps = 30: nothing to train, nothing changed" in capsys.readouterr().out
    assert [(trained / f).read_bytes() for f in ("ckpt.pt", "config.json")] == before


def test_a_checkpoint_of_the_wrong_kind_is_named_for_what_it_is(trained, tmp_path, capsys):
    np.savez(tmp_path / "s.npz", x=np.zeros(2))
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("")
    for path, needle in ((tmp_path / "s.npz", "is a .npz file, not a checkpoint"),
                         (run, "run folder without ckpt.pt")):
        assert cli.main(["sample", "--checkpoint", str(path), "--steps", "2", "--no-progress",
                         "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert needle in err and "truncated" not in err and "expected a diffusers" not in err, err


def test_the_verification_pass_of_the_fixes_above(trained, tmp_path, capsys):
    """What a second adversarial read found in the first round of fixes."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "config.json").write_text('{"ch": 16}')          # a config.json that disagrees with ckpt.pt: not trusted
    assert cli.main(["train", "--resume", "--set", f"out={run}", "--set", "steps=32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resume: steps: 30 -> 32 (--set)" in out and json.loads((run / "config.json").read_text())["batch_size"] == 32
    assert cli.main(["train", "--resume", "--out", str(run), "--set", "ch=8", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "cannot resume" in captured.err and "ch is 8 but the checkpoint has 16" in captured.err
    assert "resume: ch" not in captured.out
    assert cli.main(["train", "--overwrite", "--out", str(run), "--no-progress", *_sets(TINY),
                     "--set", "seed=4611686018427387904"]) == 1     # refused before the old run is removed
    assert "seed must be an integer in 0..2**32 - 1" in capsys.readouterr().err and (run / "ckpt.pt").exists()
    (tmp_path / "hi.pt").write_text("hi")
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)                   # a PNG cut short
    for cmd, needle in ((["sample", "--checkpoint", str(tmp_path / "hi.pt")], "not a torch checkpoint but text"),
                        (["invert", "--checkpoint", str(trained), "--input", str(tmp_path / "cut.png")], "not an image file")):
        assert cli.main([*cmd, "--steps", "2", "--no-progress", "--out", str(tmp_path / "o")]) == 1
        assert needle in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert cli.main(["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "6",
                         "--steps", "5", "--etas", "0", "--batch-size", "2", "--spacing", "linspace", "--no-progress",
                         "--out", str(tmp_path / "t")]) == 0
    assert capsys.readouterr().err.count("warning: 6 of 6 samples have an RMS above 10") == 1   # once, not per batch


def test_third_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """A third hostile round: each case exited 0 with a wrong result, lost work, or printed a traceback."""
    from ddimlab.files import locked

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, argv, *needles)

    # two `train` commands on one folder both exited 0 and mixed their logs, checkpoints and grids
    run = tmp_path / "busy"
    with locked(run / ".train.lock"):                   # as a first `train` holds it while it trains
        one_line_error(["train", "--out", str(run), "--no-progress", *_sets(TINY)], "in use by another train command")
    assert not (run / "ckpt.pt").exists()
    # `--out ""` trained into the current folder, and with --resume replaced the run's settings with the preset's
    for extra in ([], ["--resume"]):
        one_line_error(["train", "--out", "", "--no-progress", *extra, *_sets(TINY)], "--out is empty")
    # a folder holding only a config.json was called a run, with advice (--resume) that then failed
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "config.json").write_text("{}")
    one_line_error(["train", "--out", str(stray), "--no-progress", *_sets(TINY)], "no ckpt.pt", "--overwrite deletes")
    # a pair that cannot be written completely replaces neither file: here the .npz name is a folder …
    out = tmp_path / "pp"
    assert cli.main(["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2", "--out", str(out),
                     "--no-progress"]) == 0
    capsys.readouterr()
    png = out.with_suffix(".png").read_bytes()
    out.with_suffix(".npz").unlink()
    out.with_suffix(".npz").mkdir()
    one_line_error(["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2", "--seed", "1", "--out", str(out),
                    "--overwrite", "--no-progress"], "is a folder")
    assert out.with_suffix(".png").read_bytes() == png
    # … and here the disk fills while the .npz is written (the PNG used to be replaced already)
    out.with_suffix(".npz").rmdir()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", full_disk)
    one_line_error(["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2", "--seed", "1", "--out", str(out),
                    "--overwrite", "--no-progress"], "No space left on device")
    monkeypatch.undo()
    assert out.with_suffix(".png").read_bytes() == png and not out.with_suffix(".npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".pp")) == [".pp.pair.lock"]
    # any OSError is one line: an --out below a file
    (tmp_path / "afile").write_text("x")
    one_line_error(["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2",
                    "--out", str(tmp_path / "afile" / "x"), "--no-progress"], "afile")
    # a huge η overflowed in the σ check with a traceback
    one_line_error(["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "5", "--eta", "1e200",
                    "--out", str(tmp_path / "big"), "--no-progress"], "eta <=")
    # reproduce checked --etas and --steps cell by cell, after sampling the cells before a bad one
    for flag, values, needle in (("--etas", "0,foo", "got 'foo'"), ("--steps", "2,5000", "got 5000"),
                                 ("--etas", "0,1e200", "eta <=")):
        one_line_error(["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "4",
                        flag, values, "--out", str(tmp_path / "t1"), "--no-progress"], needle)
    assert not (tmp_path / "t1" / "samples").exists()


def test_third_round_options_and_messages(trained, tmp_path, capsys, monkeypatch):
    """Options that were accepted and silently ignored, inputs checked only after minutes of work, and
    messages whose advice did not apply."""
    for argv, needle in ((["reproduce", "table2", "--checkpoint", str(trained), "--etas", "0,1"], "--etas applies to"),
                         (["reproduce", "table2", "--checkpoint", str(trained), "--seed", "5", "--features", "random"],
                          "--features, --seed apply to"),
                         (["reproduce", "table1", "--checkpoint", str(trained), "--n-images", "3"], "--n-images applies"),
                         (["interpolate", "--checkpoint", str(trained), "--index", "2", "3", "--out", str(tmp_path / "i")],
                          "--index picks"),
                         (["lab", "--out", str(trained / "config.json")], "is a file")):
        assert cli.main([*argv, "--no-progress"]) == 1, argv
        assert needle in capsys.readouterr().err
    for argv in (["lab", "--image-n", "7"], ["reproduce", "table1", "--checkpoint", "x", "--n-samples", "1"],
                 ["demo", "--n", "1"]):
        with pytest.raises(SystemExit):              # refused by argparse, before any work
            cli.main(argv)
        assert "integer >= " in capsys.readouterr().err
    monkeypatch.setenv("DDIMLAB_CACHE", str(trained / "config.json"))
    assert cli.main(["sample", "--checkpoint", "ddpm-cifar10", "--out", str(tmp_path / "s"), "--no-progress"]) == 1
    assert "is a file, not a folder; point DDIMLAB_CACHE at a folder" in capsys.readouterr().err


def test_fourth_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """A fourth hostile round, on the fixes of the third: each case lost work, ran the wrong thing, or
    gave a message that pointed the wrong way."""
    import hashlib
    import signal

    from ddimlab import __main__, files
    from ddimlab.files import locked

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    sample = ["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2"]
    # a Ctrl-C between the .npz and the PNG left the new .npz beside the old PNG; now it waits for both
    out = tmp_path / "pair"
    assert cli.main([*sample, "--out", str(out), "--no-progress"]) == 0
    write = files.atomic_write

    def interrupted_after(path, *a, **k):
        done = write(path, *a, **k)
        if path.suffix == ".npz":
            signal.raise_signal(signal.SIGINT)
        return done
    monkeypatch.setattr(cli, "atomic_write", interrupted_after)
    terminal = signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal; a process started in
    try:                                                                   # the background ignores SIGINT
        assert cli.main([*sample, "--seed", "3", "--out", str(out), "--overwrite", "--no-progress"]) == 130
    finally:
        signal.signal(signal.SIGINT, terminal)
    monkeypatch.undo()
    assert "interrupted" in capsys.readouterr().err
    z = np.load(out.with_suffix(".npz"))
    assert int(z["seed"]) == 3
    assert str(z["png_sha256"]) == hashlib.sha256(out.with_suffix(".png").read_bytes()).hexdigest()
    # a full disk's message named no file
    monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    one_line_error([*sample, "--seed", "4", "--out", str(out), "--overwrite"], "No space left on device", "pair.npz")
    monkeypatch.undo()
    # an output name that is a folder was found only after the sampling
    (tmp_path / "dir.png").mkdir()
    monkeypatch.setattr(cli, "sample_indices", lambda *a, **k: pytest.fail("sampled before refusing"))
    one_line_error([*sample, "--out", str(tmp_path / "dir"), "--overwrite"], "dir.png is a folder")
    monkeypatch.undo()
    # `--etas ""` / `--steps ""` ran the paper's whole grid; a value given twice was run twice
    table1 = ["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "4",
              "--out", str(tmp_path / "t1")]
    for flag, values, needle in (("--etas", "", "at least one value"), ("--steps", " ", "at least one value"),
                                 ("--etas", "0,-0", "listed twice"), ("--steps", "3,3", "listed twice")):
        one_line_error([*table1, flag, values], needle)
    one_line_error(["reproduce", "table2", "--checkpoint", str(trained), "--n-images", "2", "--steps", "2,2",
                    "--out", str(tmp_path / "t2")], "listed twice")
    one_line_error(["reproduce", "table2", "--checkpoint", str(trained), "--n-images", "2", "--steps", "2,5000",
                    "--out", str(tmp_path / "t2" / "deeper")], "got 5000")          # checked before S = 2 is run
    assert not (tmp_path / "t1" / "samples").exists() and not (tmp_path / "t2").exists()
    # a second `train` on a folder the first is filling got "holds config.json but no ckpt.pt", not "busy"
    run = tmp_path / "busy"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with locked(run / ".train.lock"):
        one_line_error(["train", "--out", str(run), *_sets(TINY)], "in use by another train command")
    # a lock file owned by another user (shared folder) stopped the command; a folder in its place gave Errno 21
    opened = open

    def foreign(path, mode="r", *a, **k):
        if mode != "r":
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path, mode, *a, **k)
    monkeypatch.setattr(files, "open", foreign, raising=False)
    with locked(run / ".train.lock"):                  # a read handle takes the lock as well
        with pytest.raises(files.BusyError):
            with locked(run / ".train.lock", busy="busy"):
                pass
    monkeypatch.undo()
    (tmp_path / ".lk.pair.lock").mkdir()
    one_line_error([*sample, "--out", str(tmp_path / "lk")], ".lk.pair.lock is a folder where ddimlab keeps a lock file")
    # a Ctrl-C while the interpreter shut down printed a traceback from torch's exit handlers
    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(cli, "main", lambda: 0)
    try:
        assert __main__.run() == 0 and signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before)


def test_fifth_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """A fifth hostile round: each case threw work away, replaced a result silently, or printed a traceback."""
    from ddimlab import tables
    from ddimlab.files import locked

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    # `reproduce --out FILE` reconstructed every image, then failed on the folder and kept nothing
    (tmp_path / "notes").write_text("mine")
    table2 = ["reproduce", "table2", "--checkpoint", str(trained), "--n-images", "2", "--steps", "2"]
    monkeypatch.setattr(tables, "reproduce_table2", lambda *a, **k: pytest.fail("worked before refusing"))
    one_line_error([*table2, "--out", str(tmp_path / "notes")], "is a file, not a folder")
    # a second reproduce on the same --out replaced the first one's table as soon as both finished
    with locked(tmp_path / "t2" / ".table2.lock"):
        one_line_error([*table2, "--out", str(tmp_path / "t2")], "in use by another `reproduce table2`")
    monkeypatch.undo()
    # `lab` replaced an earlier run's table and left its 1024-D figure beside a table without it
    small_lab_tables(monkeypatch)
    lab_run = ["lab", "--n", "8", "--out", str(tmp_path / "lab"), "--no-progress"]
    assert cli.main([*lab_run, "--image-d", "4", "--image-n", "8"]) == 0 and (tmp_path / "lab" / "table1_d4.png").exists()
    capsys.readouterr()
    one_line_error([*lab_run[:-1], "--image-d", "0"], "table1.txt", "pass --overwrite")
    assert cli.main([*lab_run, "--image-d", "0", "--overwrite"]) == 0
    assert not (tmp_path / "lab" / "table1_d4.png").exists() and "image_like" not in (tmp_path / "lab" / "table1.txt").read_text()
    # a .npz cut short (a full disk, an interrupted copy) gave a 35-line traceback
    assert cli.main(["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s"),
                     "--no-progress"]) == 0
    (tmp_path / "cut.npz").write_bytes((tmp_path / "s.npz").read_bytes()[:500])
    for cmd in (["invert", "--input"], ["interpolate", "--latents"]):
        one_line_error([cmd[0], "--checkpoint", str(trained), cmd[1], str(tmp_path / "cut.npz"), "--steps", "2",
                        "--out", str(tmp_path / "o")], "cut.npz is cut short or corrupted")
    # --compile without a C++ compiler ended in a 103-line traceback from torch's compiler
    class InvalidCxxCompiler(RuntimeError):
        pass
    InvalidCxxCompiler.__module__ = "torch._inductor.exc"

    def no_compiler(*a, **k):
        raise InvalidCxxCompiler("No working C++ compiler found in torch._inductor.config.cpp.cxx: (None, 'g++')")
    monkeypatch.setattr(cli, "train", no_compiler)
    one_line_error(["train", "--out", str(tmp_path / "c"), *_sets(TINY), "--compile"], "torch.compile failed",
                   "No working C++ compiler", "run without --compile")
    monkeypatch.undo()
    # --features digits with DDIMLAB_CACHE naming a file sampled the first cell before saying so
    monkeypatch.setenv("DDIMLAB_CACHE", str(tmp_path / "notes"))
    monkeypatch.setattr(tables, "reproduce_table1", lambda *a, **k: pytest.fail("sampled before refusing"))
    one_line_error(["reproduce", "table1", "--checkpoint", str(trained), "--features", "digits", "--n-samples", "4",
                    "--out", str(tmp_path / "t1")], "point DDIMLAB_CACHE at a folder")
    monkeypatch.undo()
    # `--device meta` and a stray RANK without WORLD_SIZE ended in tracebacks
    one_line_error(["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2", "--device", "meta",
                    "--out", str(tmp_path / "m")], "runs on auto, cpu, cuda")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    one_line_error(["train", "--out", str(tmp_path / "r"), *_sets(TINY)], "RANK=1 with WORLD_SIZE=1", "Unset RANK")
    monkeypatch.undo()
    # a folder holding only a config.json of its own was read as diffusers settings it did not support
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text('{"a": 1}')
    one_line_error(["sample", "--checkpoint", str(tmp_path / "cfg"), "--n", "2", "--steps", "2", "--out", str(tmp_path / "q")],
                   "holds config.json but no ckpt.pt")


def test_sixth_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """A sixth hostile round: each case replaced or deleted a user's files, exited 0 with a model that gives NaN,
    left a folder that blocked the retry, ignored an option, or printed a message that pointed the wrong way."""
    import os

    from ddimlab import demo

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    # `demo` replaced an earlier demo's tables and figures without asking; --skip-train ignored --n and --train-steps
    monkeypatch.setattr(demo, "LAB", dict(n=8, image_d=4, image_n=8))
    small_lab_tables(monkeypatch)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--skip-train", "--out", str(out), "--no-progress"]) == 0
    table = (out / "table1.txt").read_bytes()
    for name in ("table1_draft.png", "table1_d64_compare.png"):      # the user's, not the lab's
        (out / name).write_text("mine")
    one_line_error(["demo", "--skip-train", "--out", str(out)], "table1.txt", "pass --overwrite")
    assert (out / "table1.txt").read_bytes() == table
    one_line_error(["demo", "--skip-train", "--n", "5", "--out", str(tmp_path / "d2")], "--n does nothing with --skip-train")
    one_line_error(["demo", "--skip-train", "--train-steps", "5", "--n", "5", "--out", str(tmp_path / "d2")],
                   "--train-steps and --n do nothing")
    # `lab --overwrite` (and the demo's) deleted every table1_d*.png, the user's drafts too
    monkeypatch.setattr(demo, "LAB", dict(n=8, image_d=0, image_n=8))
    assert cli.main(["demo", "--skip-train", "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert not (out / "table1_d4.png").exists()                        # the earlier run's, removed with it
    assert (out / "table1_draft.png").read_text() == (out / "table1_d64_compare.png").read_text() == "mine"
    assert cli.main(["lab", "--n", "8", "--image-d", "0", "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert (out / "table1_draft.png").exists() and (out / "table1_d64_compare.png").exists()
    monkeypatch.undo()
    capsys.readouterr()
    # `--amp` on the CPU was ignored; --spacing quad ran fewer steps than --steps without a word
    sample = ["sample", "--checkpoint", str(trained), "--n", "2"]
    one_line_error([*sample, "--steps", "2", "--device", "cpu", "--amp", "--out", str(tmp_path / "a")],
                   "--amp (bf16 autocast) applies on CUDA only")
    assert cli.main([*sample, "--steps", "100", "--spacing", "quad", "--out", str(tmp_path / "q"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--steps 100 visits 96 distinct steps" in err and int(np.load(tmp_path / "q.npz")["steps"]) == 96
    assert cli.main(["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "2",
                     "--steps", "100,10", "--etas", "0", "--out", str(tmp_path / "t1"), "--no-progress"]) == 0
    assert "network calls per image are S = 100: 96." in (tmp_path / "t1" / "table1.md").read_text()
    # a checkpoint without EMA weights was sampled with its raw weights without a word
    state = torch.load(trained / "ckpt.pt", weights_only=True)
    del state["ema"]
    torch.save(state, tmp_path / "no_ema.pt")
    one_line_error(["sample", "--checkpoint", str(tmp_path / "no_ema.pt"), "--n", "2", "--steps", "2", "--out",
                    str(tmp_path / "e")], "holds no EMA weights", "--no-ema")
    # `interpolate --latents ckpt.pt` listed some 20 KB of the zip's member names
    one_line_error(["interpolate", "--checkpoint", str(trained), "--latents", str(trained / "ckpt.pt"), "--steps", "2",
                    "--out", str(tmp_path / "i")], "is a torch checkpoint")
    # `invert` of samples at 1e30 blamed the network for the NaN that followed; samples in 0..255 (uint8, bool or
    # float) were inverted with exit 0
    for name, array in (("far", np.full((1, 1, 8, 8), 1e30, np.float32)), ("bytes", np.full((1, 1, 8, 8), 200, np.uint8)),
                        ("bool", np.ones((1, 1, 8, 8), bool)), ("percent", np.full((1, 1, 8, 8), 100.0, np.float32))):
        np.savez(tmp_path / f"{name}.npz", samples=array)
        one_line_error(["invert", "--checkpoint", str(trained), "--input", str(tmp_path / f"{name}.npz"), "--steps", "2",
                        "--out", str(tmp_path / "v")], "uint8 images go in an `images` array")
    # an --out in a folder that cannot be written named the lock file, after the sampling
    if os.path.isdir("/proc"):
        monkeypatch.setattr(cli, "sample_indices", lambda *a, **k: pytest.fail("sampled before refusing"))
        one_line_error([*sample, "--steps", "2", "--out", "/proc/ddimlab_samples"], "cannot create files in /proc")
        monkeypatch.undo()
    # a quoted "~/..." made a folder named ~ in the current one
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.main([*sample, "--steps", "2", "--out", "~/s", "--no-progress"]) == 0
    assert (tmp_path / "home" / "s.png").exists()
    monkeypatch.undo()
    # train: data_root with the digits did nothing
    one_line_error(["train", "--out", str(tmp_path / "t"), *_sets(TINY), "--set", f"data_root={tmp_path}"],
                   "data_root applies to dataset cifar10 only")


def test_a_run_whose_weights_diverged_is_not_saved_and_can_be_retried(tmp_path, capsys):
    """The loss is checked before each optimizer step, so `train` exited 0 with weights whose output is NaN (lr 1e30,
    one step); a first run that failed left log.jsonl behind, and the retry was refused for it; lr = 1e308 overflowed
    float32 in a traceback. The first failure and the retry run as a user runs them; the failure beside a file of the user's
    and the refused lr run in-process (a train process starts in 4 s of CPU, half of it importing torch)."""
    out = tmp_path / "runs" / "r"
    tiny = [*_sets(TINY), "--set", "steps=1", "--set", "n_samples=0", "--no-progress"]
    _short_error(_run("train", "--out", out, *tiny, "--set", "lr=1e30"), "the weights after step 1 give a loss of nan",
                 "this run kept nothing")
    assert not (tmp_path / "runs").exists()               # nothing left: not the folders, the log or the lock
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mine.txt").write_text("mine")
    _expect_one_line_error(capsys, ["train", "--out", str(out), *tiny, "--set", "lr=1e30"], "loss of nan")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["mine.txt"]
    _expect_one_line_error(capsys, ["train", "--out", str(out), *tiny, "--set", "lr=1e308"], "lr must be in [1e-10, 1e37]")
    r = _run("train", "--out", out, *tiny)
    assert r.returncode == 0, r.stderr
    assert (out / "ckpt.pt").exists() and len((out / "log.jsonl").read_text().splitlines()) == 1


def test_seventh_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """A seventh hostile round: each case deleted a user's file, let two commands write one folder, exited 0 with a
    result that could not be right, left folders behind, ignored an option or ended in a traceback."""
    import os

    from ddimlab import demo, generate, lab, tables
    from ddimlab.files import locked

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    # `demo --overwrite` deleted table1_d0004.png and table1_d٤.png (any digits matched), which the lab never writes,
    # and with --skip-train the digits_samplers.png it does not write either
    monkeypatch.setattr(demo, "LAB", dict(n=8, image_d=0, image_n=8))
    small_lab_tables(monkeypatch)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--skip-train", "--out", str(out), "--no-progress"]) == 0
    mine = ("table1_d0004.png", "table1_d\u0664.png", "digits_samplers.png")
    for name in mine:
        (out / name).write_text("mine")
    assert cli.main(["demo", "--skip-train", "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert all((out / name).read_text() == "mine" for name in mine)
    # two `lab` or `demo` commands on one --out both ran and both exited 0
    with locked(out / ".lab.lock"):
        one_line_error(["lab", "--n", "8", "--image-d", "0", "--out", str(out), "--overwrite"],
                       "in use by another `lab` or `demo`")
    # a folder that cannot hold the tables was found after them; a failed run left the folders it made
    monkeypatch.setattr(lab, "table1", lambda *a, **k: pytest.fail("ran the tables before refusing"))
    if os.path.isdir("/proc"):
        one_line_error(["lab", "--out", "/proc/ddimlab_lab"], "cannot create the folder /proc/ddimlab_lab")
    monkeypatch.setattr(lab, "table1", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["lab", "--out", str(tmp_path / "new" / "lab"), "--no-progress"])
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    capsys.readouterr()
    # sample, invert and interpolate made --out's folders (and a lock file) before a failure, and left them
    one_line_error(["sample", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "new" / "s")], "nope.pt")
    assert not (tmp_path / "new").exists()
    # ... and in a folder that existed, the lock file (CI found `.interpolation.pair.lock` in the repository root)
    (tmp_path / "old").mkdir()
    one_line_error(["interpolate", "--checkpoint", str(trained), "--index", "2", "3", "--out", str(tmp_path / "old" / "i")],
                   "--index picks")
    assert not list((tmp_path / "old").iterdir())
    # a checkpoint with `ema` or `model` set to None ended in a TypeError traceback
    state = torch.load(trained / "ckpt.pt", weights_only=True)
    sample = ["sample", "--n", "2", "--steps", "2", "--out", str(tmp_path / "s")]
    for key, needle in (("ema", "holds no EMA weights"), ("model", "not a ddimlab training checkpoint")):
        torch.save({**state, key: None}, tmp_path / f"{key}_none.pt")
        one_line_error([*sample, "--checkpoint", str(tmp_path / f"{key}_none.pt"), *(["--no-ema"] * (key == "model"))],
                       needle)
    # `--checkpoint ""` was read as the current folder; a dangling link as OUT.png was replaced without --overwrite;
    # `reproduce --etas -0` named a row "-0", and a Table 1 η of inf passed `generate.check_eta`
    one_line_error([*sample, "--checkpoint", ""], "the checkpoint path is empty")
    (tmp_path / "link.png").symlink_to(tmp_path / "nowhere.png")
    one_line_error(["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2", "--out", str(tmp_path / "link")],
                   "link.png already exists")
    assert tables.eta_label(generate.check_eta("-0")) == "0"
    with pytest.raises(ValueError, match="finite"):
        generate.check_eta("inf")
    # interpolate: latents of 1e30 blamed the model; one latent mentioned an --index not given; a folder was "no such
    # file"; the same latent twice (or one frame) exited 0 with nothing interpolated
    interp = ["interpolate", "--checkpoint", str(trained), "--steps", "2", "--out", str(tmp_path / "i")]
    np.savez(tmp_path / "far.npz", x_T=np.full((2, 1, 8, 8), 1e30, np.float32))
    np.savez(tmp_path / "one.npz", x_T=np.zeros((1, 1, 8, 8), np.float32))
    one_line_error([*interp, "--latents", str(tmp_path / "far.npz")], "must be latents (about N(0, I))")
    one_line_error([*interp, "--latents", str(tmp_path / "one.npz")], "holds 1 latent;")
    one_line_error([*interp, "--latents", str(tmp_path)], "is a folder")
    one_line_error([*interp, "--seeds", "3", "3"], "the two latents are the same (--seeds 3 3)")
    with pytest.raises(SystemExit):
        cli.main([*interp, "--n", "1"])
    assert "--n" in capsys.readouterr().err
    # reproduce --data-root did nothing for a digits model
    one_line_error(["reproduce", "table2", "--checkpoint", str(trained), "--data-root", str(tmp_path),
                    "--out", str(tmp_path / "t2")], "--data-root does nothing here")
    # train: 100000 threads ended in an OpenMP out-of-memory traceback; lr = 5e-324 is 0 in float32; --bf16 on the
    # CPU was ignored
    tiny = ["train", *_sets(TINY), "--set", "steps=1", "--set", "n_samples=0"]
    one_line_error([*tiny, "--out", str(tmp_path / "r"), "--set", "threads=100000"], "threads must be at most")
    one_line_error([*tiny, "--out", str(tmp_path / "r"), "--set", "lr=5e-324"], "lr must be in [1e-10, 1e37]")
    one_line_error([*tiny, "--out", str(tmp_path / "r"), "--bf16"], "--bf16 (autocast) applies on CUDA only")
    assert not (tmp_path / "r").exists()
    # --set out=~/x made a folder named ~ in the current one
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.main([*tiny, "--set", "out=~/r", "--no-progress"]) == 0
    assert (tmp_path / "home" / "r" / "ckpt.pt").exists()
    monkeypatch.undo()
    # a run killed (kill -9) before its first checkpoint left log.jsonl, and the retry was refused for it
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "log.jsonl").write_text('{"step": 10, "loss": 0.5}\n')
    (killed / "samples").mkdir()
    (killed / "samples" / "step_0000010.png").write_text("the killed run's grid")
    assert cli.main([*tiny, "--out", str(killed), "--no-progress"]) == 0
    assert "held only log.jsonl, from a run that stopped before its first checkpoint: removed" in capsys.readouterr().out
    assert not (killed / "samples" / "step_0000010.png").exists()      # the eighth round: the killed run's grids stayed
    assert [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()] == [1]
    # lr = 10 gave finite weights whose samples overflow, with exit 0 and no word
    assert cli.main([*tiny, "--out", str(tmp_path / "lr10"), "--set", "lr=10", "--set", "warmup=0", "--set", "steps=3",
                     "--no-progress"]) == 0
    assert "far above the 1 of predicting eps = 0" in capsys.readouterr().err


def test_eighth_round_of_careless_use(trained, tmp_path, capsys):
    """An eighth hostile round: a command that lost the race for a new --out deleted the winner's lock (and a third
    command then ran beside the first); float128 arrays and integer latents were read; a blank --out wrote into the
    current folder; contradictory train options were resolved silently; a dangling link at table1.png was replaced."""
    from ddimlab.files import BusyError, folder_removed_on_error, locked

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    new = tmp_path / "race" / "out"
    lock = new / ".lab.lock"
    with pytest.raises(BusyError):
        with folder_removed_on_error(new, lock):          # the loser looked before the winner made the folder
            with locked(lock):                              # the winner
                with locked(lock, busy="busy"):             # the loser's own attempt
                    pass
    assert lock.exists()                                    # the winner's lock, which a third command would miss
    with locked(lock):                                      # a winner still running when the loser fails otherwise
        with pytest.raises(ValueError):
            with folder_removed_on_error(tmp_path / "race2", lock):
                raise ValueError("the loser failed after the lock was released")
        assert lock.exists()
    np.savez(tmp_path / "f128.npz", x0=np.zeros((1, 1, 8, 8), np.longdouble))
    one_line_error(["invert", "--checkpoint", str(trained), "--input", str(tmp_path / "f128.npz"), "--steps", "2",
                    "--out", str(tmp_path / "v")], "float16, float32 or float64")
    np.savez(tmp_path / "int.npz", x_T=np.arange(128).reshape(2, 1, 8, 8) % 7 - 3)
    one_line_error(["interpolate", "--checkpoint", str(trained), "--latents", str(tmp_path / "int.npz"), "--steps", "2",
                    "--out", str(tmp_path / "i")], "x_T must be float16, float32 or float64 latents")
    one_line_error(["lab", "--out", " ", "--n", "8", "--image-d", "0"], "--out is empty")
    one_line_error(["reproduce", "table2", "--checkpoint", str(trained), "--out", ""], "--out is empty")
    tiny = ["train", *_sets(TINY), "--set", "steps=1", "--set", "n_samples=0"]
    one_line_error([*tiny, "--out", str(tmp_path / "a"), "--set", f"out={tmp_path / 'b'}"], "contradict each other")
    one_line_error([*tiny, "--out", str(tmp_path / "a"), "--device", "cpu", "--set", "device=cuda"], "contradict each other")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "table1.png").symlink_to(tmp_path / "elsewhere.png")
    one_line_error(["lab", "--out", str(tmp_path / "lab"), "--n", "8", "--image-d", "0"], "table1.png already exists")


@pytest.mark.parametrize("command, signame", [("sample", "SIGTERM"), ("interpolate", "SIGTERM"), ("sample", "SIGHUP")])
def test_sigterm_cleans_up_as_ctrl_c_does(trained, tmp_path, command, signame):
    """SIGTERM (`kill`, `timeout`) ended `sample`, `invert` and `interpolate` where they stood, leaving the folders and
    the lock they had made; Ctrl-C removed them. Now both do (the signal arrives after the first sampling step). So
    does SIGHUP (the terminal closed), which still ended the command where it stood in round 24."""
    code = ("import signal, sys\nfrom ddimlab import cli\nreal = cli.progress\n"
            "def progress(*a, **k):\n    bar, step = real(*a, **k)\n"
            f"    return bar, lambda info: signal.raise_signal(signal.{signame}) or step(info)\n"
            "cli.progress = progress\nsys.exit(cli.main(sys.argv[1:]))\n")
    out = tmp_path / "new" / "deeper" / "x"
    args = {"sample": ["--n", "2", "--steps", "2"], "interpolate": ["--seeds", "0", "1", "--n", "3", "--steps", "2"]}
    r = subprocess.run([sys.executable, "-c", code, command, "--checkpoint", str(trained), *args[command], "--out",
                        str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    said = {"SIGTERM": "terminated (SIGTERM)", "SIGHUP": "hung up (SIGHUP: the terminal closed"}[signame]
    assert r.returncode == 130 and f"interrupted: {said}" in r.stderr, (r.returncode, r.stderr)
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))


def test_ninth_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """Leftovers of the eighth round. Three messages gave the wrong reason: a FIFO as --input or --latents was "no such
    file", a folder named ckpt.pt (or x.pt) was taken for a diffusers folder without config.json, and a pickled list of
    numbers was "checkpoint list holds no state_dict". A log.jsonl of the user's own, alone in --out, was deleted as
    the log of a run killed before its first checkpoint. `lab --overwrite` stopped midway left new and old files side
    by side."""
    import os

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    one_line_error(["invert", "--checkpoint", str(trained), "--input", str(fifo), "--out", str(tmp_path / "i")],
                   "pipe.npz", "not a regular file")
    one_line_error(["interpolate", "--checkpoint", str(trained), "--latents", str(fifo), "--out", str(tmp_path / "j")],
                   "pipe.npz", "not a regular file")
    run = tmp_path / "run"
    (run / "ckpt.pt").mkdir(parents=True)
    (tmp_path / "weights.pt").mkdir()
    for where in (run, run / "ckpt.pt", tmp_path / "weights.pt"):
        one_line_error(["sample", "--checkpoint", str(where), "--out", str(tmp_path / "s")], "is not a file but a folder")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    one_line_error(["sample", "--checkpoint", str(tmp_path / "list.pt"), "--out", str(tmp_path / "s")],
                   "holds a list without a state_dict")
    made = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))   # locks stay (files.locked)
    assert made == ["list.pt", "pipe.npz", "run", "weights.pt"], made
    # a log.jsonl of the user's own, alone in --out, was deleted as a killed run's
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "log.jsonl").write_text('{"event": "my own notes"}\n')
    one_line_error(["train", "--preset", "digits", "--out", str(mine), *_sets(TINY)], "not a ddimlab training log")
    assert (mine / "log.jsonl").read_text() == '{"event": "my own notes"}\n'
    assert cli.main(["train", "--preset", "digits", "--out", str(mine), "--overwrite", "--no-progress", *_sets(TINY)]) == 0
    # `lab --overwrite` stopped midway left the new table1.png beside the old table1_d4.png and table1.txt; since the
    # twelfth round the earlier run's files are put back as they were
    from ddimlab import lab
    small_lab_tables(monkeypatch)
    lab_run = ["lab", "--n", "8", "--image-n", "8", "--image-d", "4", "--out", str(tmp_path / "lab"), "--no-progress"]
    assert cli.main(lab_run) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "lab").iterdir() if not p.name.startswith(".")}
    real_table1 = lab.table1

    def stopped_at_the_image_table(*a, **k):
        if "S_list" in k:           # the second table, on image-like data: the ring's is computed by then
            raise KeyboardInterrupt
        return real_table1(*a, **k)
    monkeypatch.setattr(lab, "table1", stopped_at_the_image_table)
    assert cli.main([*lab_run, "--overwrite"]) == 130
    after = {p.name: p.read_bytes() for p in (tmp_path / "lab").iterdir() if p.name != ".lab.lock"}
    assert sorted(before) == ["table1.png", "table1.txt", "table1_d4.png"] and after == before


def test_tenth_round_of_careless_use(tmp_path, capsys, monkeypatch):
    """Leftovers of the ninth round: lr = 1e-45 (a float32 denormal: the network stays as initialised) trained and
    exited 0; `--device cpu:1` was taken for the CPU; `train --resume` read the whole checkpoint twice (once for its
    settings, once for its tensors), hundreds of MB each time for the CIFAR-10 model."""
    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    out = tmp_path / "run"
    tiny = ["train", "--preset", "digits", *_sets(TINY), "--set", "steps=2", "--set", "n_samples=0"]
    one_line_error([*tiny, "--out", str(out), "--set", "lr=1e-45"], "lr must be in [1e-10, 1e37]", "1e-45")
    one_line_error([*tiny, "--out", str(out), "--set", "device=cpu:1"], "one CPU device")
    assert not out.exists()
    assert cli.main([*tiny, "--out", str(out), "--no-progress"]) == 0
    reads, real_load = [], torch.load

    def counted(path, *a, **k):
        reads.append((str(path).rsplit("/", 1)[-1], bool(k.get("mmap"))))
        return real_load(path, *a, **k)
    monkeypatch.setattr(checkpoint.torch, "load", counted)
    assert cli.main(["train", "--resume", "--out", str(out), "--set", "steps=3", "--no-progress"]) == 0
    assert reads.count(("ckpt.pt", False)) == 1, reads
    monkeypatch.undo()
    (out / "ckpt.pt").write_bytes(bytes(range(256)) * 12)    # not torch's zip format, which mmap needs: torch's advice
    assert cli.main(["train", "--resume", "--out", str(out), "--set", "steps=4", "--no-progress"]) == 1
    err = capsys.readouterr().err                           # to re-save it "with this option" is not repeated
    assert "not a torch checkpoint (it begins b'\\x00\\x01" in err and "mmap" not in err, err


def test_eleventh_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """A careless round (helper 61): sizes that do not fit the memory ended in an allocator's traceback, some only after
    all the work (`train --set n_samples=1000000000` after training, `sample --n 60000 --scale 32` killed while drawing
    its grid); a 20000×20000 PNG as --input was Pillow's traceback; `reproduce --features digits` with a read-only
    cache sampled its cells first; DDIMLAB_CACHE=" " made a folder named " "; `lab --image-n` with --image-d 0 and
    `reproduce table2 --n-images` above the data set's size did nothing without a word; a damaged PNG in a cell
    folder was "all input arrays must have the same shape"."""
    from PIL import Image

    from ddimlab import fid, quality, tables

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    def allocator_fails(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 25600000000 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(cli, "slerp", allocator_fails)
    one_line_error(["interpolate", "--checkpoint", str(trained), "--n", "5", "--steps", "2", "--out", str(tmp_path / "i")],
                   "out of memory (it asked for 25600000000 bytes)", "ask for fewer or smaller images")
    monkeypatch.setattr(cli, "slerp", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
    one_line_error(["interpolate", "--checkpoint", str(trained), "--n", "5", "--steps", "2", "--out", str(tmp_path / "i")],
                   "out of memory:")
    monkeypatch.undo()
    one_line_error(["train", "--out", str(tmp_path / "r"), *_sets(TINY), "--set", "n_samples=1000000000"],
                   "n_samples is the size of the sample grids", "at most 4096")
    # PNG sizes: checked from the header, before decoding; the grid's before sampling (Pillow's limit made small here)
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    one_line_error(["invert", "--checkpoint", str(trained), "--input", str(tmp_path / "big.png"), "--steps", "2",
                    "--out", str(tmp_path / "v")], "big.png is 100×100 pixels; the model takes 8×8 images")
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])       # an APNG: frame 0 was read
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "clear.png")          # alpha 0: dropped silently
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "trns.png", transparency=0)   # grey, black transparent
    for name, needle in (("anim.png", "an animation of 2 frames"), ("clear.png", "has transparent pixels"),
                         ("trns.png", "has transparent pixels")):
        one_line_error(["invert", "--checkpoint", str(trained), "--input", str(tmp_path / name), "--steps", "2",
                        "--out", str(tmp_path / "v")], needle)
    rgba = np.random.default_rng(0).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "opaque.png")                                  # opaque RGBA reads as before
    assert cli.main(["invert", "--checkpoint", str(trained), "--input", str(tmp_path / "opaque.png"), "--steps", "2",
                     "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "ok.npz")["x0"][0, 0], rgba[..., :3].mean(-1) / 127.5 - 1, atol=0.01)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    one_line_error(["invert", "--checkpoint", str(trained), "--input", str(tmp_path / "big.png"), "--steps", "2",
                    "--out", str(tmp_path / "v")], "too large for Pillow to open")
    monkeypatch.setattr(cli, "sample_indices", lambda *a, **k: pytest.fail("sampled before refusing"))
    one_line_error(["sample", "--checkpoint", str(trained), "--n", "16", "--scale", "4", "--steps", "2",
                    "--out", str(tmp_path / "g" / "x")], "would have 21,904 pixels, more than the 2,000", "--scale")
    monkeypatch.undo()
    made = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))   # locks stay
    assert made == ["anim.png", "big.png", "clear.png", "ok.npz", "ok.png", "opaque.png", "trns.png"], made
    # the digits classifier is trained and cached before any cell is sampled
    monkeypatch.setenv("DDIMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(quality, "save_checkpoint", lambda path, *a, **k: (_ for _ in ()).throw(
        OSError(30, "Read-only file system")))
    monkeypatch.setattr(tables, "reproduce_table1", lambda *a, **k: pytest.fail("sampled before refusing"))
    one_line_error(["reproduce", "table1", "--checkpoint", str(trained), "--features", "digits", "--n-samples", "4",
                    "--out", str(tmp_path / "t1")], "could not cache the digits classifier", "Read-only file system",
                   "point DDIMLAB_CACHE at a folder you can write")
    monkeypatch.undo()
    monkeypatch.setenv("DDIMLAB_CACHE", " ")
    monkeypatch.chdir(tmp_path)
    one_line_error(["reproduce", "table1", "--checkpoint", str(trained), "--features", "digits", "--n-samples", "4",
                    "--out", str(tmp_path / "t1")], "DDIMLAB_CACHE=' ' is blank")
    assert not (tmp_path / " ").exists()
    monkeypatch.undo()
    # options that changed nothing
    one_line_error(["lab", "--n", "8", "--image-d", "0", "--image-n", "99", "--out", str(tmp_path / "lab")],
                   "--image-n does nothing with --image-d 0")
    one_line_error(["reproduce", "table2", "--checkpoint", str(trained), "--n-images", "100000000", "--steps", "2",
                    "--out", str(tmp_path / "t2")], "n_images 100000000 (--n-images) exceeds the 1797 images")
    assert not (tmp_path / "t2").exists() and not (tmp_path / "lab").exists()
    # a damaged sample in a reproduce cell is made again, said in one line (round 20: each sample holds a seal; before,
    # the damaged file was named at the scoring, with "delete it"; `fid.load_images` still says so for other folders)
    t1 = ["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "4", "--steps", "2",
          "--etas", "0", "--batch-size", "4", "--out", str(tmp_path / "t1"), "--no-progress"]
    assert cli.main(t1) == 0
    capsys.readouterr()
    cell = next((tmp_path / "t1" / "samples").iterdir())
    Image.fromarray(np.zeros((17, 17), np.uint8)).save(cell / "000000.png")     # the first file: the others are fine
    (cell / "000001.png").write_bytes(b"not a png")
    assert cli.main([*t1, "--overwrite"]) == 0
    assert "000000.png, 000001.png do not hold the image this cell made there" in capsys.readouterr().err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="a.png is not a readable PNG"):
        fid.load_images(junk)
    assert cli.main([*t1, "--overwrite"]) == 0 and fid.load_images(cell).shape == (4, 1, 8, 8)


def test_a_cache_that_cannot_be_made_is_said_first_and_a_failed_download_leaves_no_folder(tmp_path, capsys,
                                                                                          monkeypatch):
    """DDIMLAB_CACHE naming a place where no folder can be made (/proc/x; here a path under a file) was "[Errno 2] No
    such file or directory: '/proc/x'", and `demo` said so only after part 1, with "choose another --out"; a failed
    download of the official checkpoint left the empty folders it had made in the cache."""
    from ddimlab import lab

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("DDIMLAB_CACHE", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(lab, "main", lambda *a, **k: pytest.fail("ran part 1 before refusing"))
    for argv in (["demo", "--out", str(tmp_path / "d")],
                 ["sample", "--checkpoint", "ddpm-cifar10", "--n", "1", "--out", str(tmp_path / "s")]):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], f"cannot make the cache folder {tmp_path}",
                               "($DDIMLAB_CACHE)", "point DDIMLAB_CACHE at a folder you can write")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["file"]   # locks stay
    cache = tmp_path / "cache"
    monkeypatch.setenv("DDIMLAB_CACHE", str(cache))
    defaults = checkpoint.official_ddpm_file.__defaults__        # (cache_dir, url, md5, progress): nothing listens on 9
    monkeypatch.setattr(checkpoint.official_ddpm_file, "__defaults__", (None, "http://127.0.0.1:9/unreachable",
                                                                        *defaults[2:]))
    _expect_one_line_error(capsys, ["sample", "--checkpoint", "ddpm-cifar10", "--n", "1", "--out", str(tmp_path / "s"),
                                    "--no-progress"], "download of http://127.0.0.1:9/unreachable failed")
    assert list(cache.iterdir()) == []


def test_twelfth_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """A careless round (helper 84): `lab --overwrite` deleted the earlier tables, then ran out of memory; `demo --seed
    4294967296` was refused by training after the lab had written its tables, which then blocked the retry; `train
    --overwrite` deleted the user's own samples/step_final.png; `reproduce --steps 1` scored a table that never left
    t = 0; --no-ema on a diffusers folder and --lower-order-final at 3 steps did nothing; a log line that was JSON but
    not a record, or not text, was a traceback; `reproduce table1` without torch-fidelity sampled a cell first."""
    import re
    import shutil
    from pathlib import Path

    from ddimlab import fid, lab, tables, train

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    def fails_midway(out="outputs/lab", **kwargs):
        (Path(out) / "table1.txt").write_text("half of a new table")
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 16000000000000 bytes. Error code 12 (Cannot allocate memory)")

    out = tmp_path / "lab"
    out.mkdir()
    (out / "table1.txt").write_text("the earlier table")
    (out / "table1.png").write_bytes(b"the earlier figure")
    monkeypatch.setattr(lab, "main", fails_midway)
    one_line_error(["lab", "--n", "8", "--image-d", "0", "--out", str(out), "--overwrite"], "out of memory")
    assert (out / "table1.txt").read_text() == "the earlier table" and (out / "table1.png").read_bytes() == b"the earlier figure"
    assert sorted(p.name for p in out.iterdir()) == ["table1.png", "table1.txt"]     # no .previous-*, nor its new lock
    one_line_error(["lab", "--n", "8", "--image-d", "0", "--out", str(tmp_path / "new")], "out of memory")
    assert not (tmp_path / "new").exists()                                          # a fresh folder goes again
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        cli.main(["demo", "--seed", str(2 ** 32), "--out", str(tmp_path / "d")])
    assert "must be an integer in 0..2**32 - 1" in capsys.readouterr().err and not (tmp_path / "d").exists()
    # train --overwrite removes the grids it wrote, not a user's file beside them
    run = tmp_path / "run"
    assert cli.main(["train", "--out", str(run), "--no-progress", *_sets(TINY), "--set", "steps=2"]) == 0
    grids = sorted((run / "samples").glob("step_*.png"))
    assert grids and all(train.GRID_NAME.fullmatch(p.name) for p in grids)
    (run / "samples" / "step_final.png").write_bytes(b"mine")
    assert cli.main(["train", "--out", str(run), "--no-progress", *_sets(TINY), "--set", "steps=2", "--overwrite"]) == 0
    assert (run / "samples" / "step_final.png").read_bytes() == b"mine"
    # reproduce with one step says it never left the data; so does invert, in an inversion's words
    with warnings.catch_warnings():
        warnings.simplefilter("always", cli.OutOfRangeWarning)           # pyproject.toml ignores it in the tests
        assert cli.main(["reproduce", "table2", "--checkpoint", str(trained), "--n-images", "2", "--steps", "1", "--out",
                         str(tmp_path / "t2"), "--no-progress"]) == 0
        assert re.search("the only step is t = 0 .* the inversion ends, not at noise", capsys.readouterr().err)
        assert cli.main(["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "2",
                         "--steps", "1", "--etas", "0", "--out", str(tmp_path / "t1"), "--no-progress"]) == 0
        assert re.search(r"the only step is t = 0 .* x_T ~ N\(0, I\)", capsys.readouterr().err)
    # options that would change nothing
    net, _ = checkpoint.load_model(trained)
    checkpoint.save_diffusers_folder(net, tmp_path / "dfolder", schedule.make_alpha_bar())
    one_line_error(["sample", "--checkpoint", str(tmp_path / "dfolder"), "--no-ema", "--n", "2", "--steps", "2",
                    "--out", str(tmp_path / "s")], "offers no raw weights to choose")
    one_line_error(["sample", "--checkpoint", str(trained), "--sampler", "dpm_solver_pp_3m", "--lower-order-final",
                    "--steps", "3", "--n", "2", "--out", str(tmp_path / "s")], "changes nothing below 4 steps (got --steps 3)")
    # log lines that are JSON but not records, or not text, are named with their line
    for line, needle in ((b"5\n", "line 1 is not a record"), (b'{"step": "x", "loss": 1}\n', "line 1 is not a record"),
                         (b'{"step": 9, "loss": \xff}\n', "line 1 is not text")):
        damaged = tmp_path / "damaged"
        shutil.rmtree(damaged, ignore_errors=True)
        shutil.copytree(run, damaged)
        (damaged / "log.jsonl").write_bytes(line + (run / "log.jsonl").read_bytes())
        one_line_error(["train", "--resume", "--out", str(damaged), "--set", "steps=3"], needle, "fix or delete that line")
    # Inception FID without torch-fidelity: refused before any sampling, with the command line's alternative
    monkeypatch.setattr(fid, "_torch_fidelity", lambda instead: (_ for _ in ()).throw(ImportError(f"needs it; {instead}")))
    monkeypatch.setattr(tables, "sample_indices", lambda *a, **k: pytest.fail("sampled before refusing"))
    rgb = checkpoint.save_diffusers_folder(UNet(in_ch=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                                                resolution=32, num_groups=4), tmp_path / "rgb",
                                          schedule.make_alpha_bar())     # a CIFAR-sized model
    one_line_error(["reproduce", "table1", "--checkpoint", str(rgb), "--n-samples", "2", "--steps", "2", "--etas", "0",
                    "--out", str(tmp_path / "t3")], "--features random")
    monkeypatch.undo()
    # a hand edit to config.json changed nothing on --resume, without a word
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "steps": 9}))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert "config.json differs from the checkpoint's settings in steps (9 there, 2 in ckpt.pt)" in capsys.readouterr().err
    # an empty file's message ended in ": "; --debug before the subcommand was refused; DDIMLAB_DEBUG=false meant on
    (tmp_path / "empty.pt").write_bytes(b"")
    sample = ["sample", "--checkpoint", str(tmp_path / "empty.pt"), "--n", "2", "--out", str(tmp_path / "e")]
    monkeypatch.setenv("DDIMLAB_DEBUG", "false")
    assert cli.main(sample) == 1
    assert capsys.readouterr().err.splitlines()[0].endswith("(an interrupted download or copy?)")
    with pytest.raises(checkpoint.CheckpointError):
        cli.main(["--debug", *sample])
    one_line_error(["sample", "--checkpoint", str(trained), "--sampler", "ipndm", "--steps", "1", "--n", "2",
                    "--out", str(tmp_path / "i")], "--sampler ipndm needs --steps 2 or more")
    # --out w/. wrote ./w.png (pathlib drops the "/.")
    one_line_error(["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2", "--out", f"{tmp_path / 'w'}/."],
                   "names a folder")
    assert not (tmp_path / "w.png").exists()
    # a linear schedule with T = 100 ends at alpha_bar = 0.36: it trained, and no sampler could start from noise there
    one_line_error(["train", "--out", str(tmp_path / "t100"), *_sets(TINY), "--set", "T=100"],
                   "schedule linear with T = 100 ends at alpha_bar = 0.36, not at noise", "schedule=cosine")
    assert cli.main(["train", "--out", str(tmp_path / "c100"), "--no-progress", *_sets(TINY), "--set", "T=100", "--set",
                     "schedule=cosine", "--set", "steps=1", "--set", "n_samples=0"]) == 0


def test_thirteenth_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """A careless round (helper 87): a `lab --overwrite` killed with -9 left the earlier tables in .previous-<pid>, and
    the next run with that pid (PID 1 in a container) deleted them; a diffusers pipeline whose scheduler predicts v, or
    lists its own betas, sampled as ε on linear betas; `reproduce` scored a digits_rgb model against CIFAR-10; a file
    named `samples` in --out stopped training at its first grid; `sample --out RUN/train` waited on train's lock; damaged
    diffusers JSON, LOCAL_RANK=abc and WORLD_SIZE without torchrun were tracebacks, unnamed files or a silent wait;
    `train --set data_root=` downloaded into the current folder; two --etas agreeing to 6 digits shared a cell folder
    found only after the first cell; the out-of-range advice named --clip for solvers that have none; `sample`'s .npz
    did not record --clip or the weights; table2 did not note that quad visits fewer steps."""
    import json
    import os
    import re

    from ddimlab import generate
    from ddimlab.files import locked

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    # a stranded .previous-<pid> is named, never deleted or hidden by the next run
    out = tmp_path / "lab"
    (out / f".previous-{os.getpid()}").mkdir(parents=True)
    (out / f".previous-{os.getpid()}" / "table1.txt").write_text("the earlier table")
    one_line_error(["lab", "--n", "8", "--image-d", "0", "--out", str(out)], ".previous-", "move them back")
    assert (out / f".previous-{os.getpid()}" / "table1.txt").read_text() == "the earlier table"
    # a diffusers pipeline folder: v-prediction and zero-SNR refused, trained_betas used
    net, abar = checkpoint.load_model(trained)
    pipe = tmp_path / "pipe"
    checkpoint.save_diffusers_folder(net, pipe / "unet", abar)
    shutil.rmtree(pipe / "unet" / "scheduler")                 # the pipeline's own scheduler folder, read next
    (pipe / "scheduler").mkdir()
    sched = pipe / "scheduler" / "scheduler_config.json"
    sample = ["sample", "--checkpoint", str(pipe), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s")]
    for cfg, needle in (({"prediction_type": "v_prediction"}, "prediction_type 'v_prediction' is not supported"),
                        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr is not supported"),
                        ([1, 2], "must hold a JSON object"), ({"beta_start": "0.0001"}, "beta_start and beta_end must be"),
                        ('{"beta_schedule": "linear",', "is not readable JSON")):
        sched.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
        one_line_error(sample, needle, "scheduler_config.json")
    betas = torch.linspace(1e-4, 0.05, 1000, dtype=torch.float64)
    sched.write_text(json.dumps({"trained_betas": betas.tolist()}))
    assert torch.allclose(checkpoint.load_model(pipe)[1], torch.cumprod(1 - betas, 0), rtol=1e-12, atol=0)
    sched.unlink()
    (pipe / "unet" / "config.json").write_text("[1]")
    one_line_error(sample, "config.json must hold a JSON object")
    # reproduce on an RGB model of the digits
    rgb = tmp_path / "rgb"
    assert cli.main(["train", "--out", str(rgb), "--no-progress", *_sets(TINY), "--set", "steps=2", "--set",
                     "dataset=digits_rgb", "--set", "n_samples=0"]) == 0
    one_line_error(["reproduce", "table2", "--checkpoint", str(rgb), "--n-images", "2", "--steps", "2", "--out",
                    str(tmp_path / "t2rgb")], "trained on digits_rgb at 8x8")
    # a file named samples, found before training
    sf = tmp_path / "sf"
    sf.mkdir()
    (sf / "samples").write_text("mine")
    one_line_error(["train", "--out", str(sf), *_sets(TINY)], "samples is a file", "n_samples=0")
    assert sorted(p.name for p in sf.iterdir()) == ["samples"]                # checked before the lock
    # train --overwrite sets the previous run aside until the new one's first checkpoint, and puts it back on failure
    ow = tmp_path / "ow"
    assert cli.main(["train", "--out", str(ow), "--no-progress", *_sets(TINY), "--set", "steps=2"]) == 0
    before = {p.relative_to(ow): p.read_bytes() for p in ow.rglob("*") if p.is_file() and p.name != ".train.lock"}
    one_line_error(["train", "--out", str(ow), "--overwrite", *_sets(TINY), "--set", "steps=2", "--set", "lr=1e30"],
                   "this run kept nothing")
    after = {p.relative_to(ow): p.read_bytes() for p in ow.rglob("*") if p.is_file() and p.name != ".train.lock"}
    assert after == before and not list(ow.glob(".previous-*"))
    assert cli.main(["train", "--out", str(ow), "--overwrite", "--no-progress", *_sets(TINY), "--set", "steps=3"]) == 0
    assert checkpoint.load_checkpoint(ow / "ckpt.pt")["step"] == 3 and not list(ow.glob(".previous-*"))
    (ow / ".previous-1").mkdir()                       # as a kill -9 before the first checkpoint leaves it
    one_line_error(["train", "--out", str(ow), "--resume", *_sets(TINY)], ".previous-1 holds the files of an earlier run")
    # Ctrl-C while the last grid is drawn: the grid stops at the next step, and the message says the run is complete
    from ddimlab import train as train_mod

    class Flag(list):
        def __init__(self, active):
            super().__init__()

        def restore(self):
            pass

    flags, draw = [], train_mod.sample
    monkeypatch.setattr(train_mod, "_stop_on_signal", lambda active: flags.append(Flag(active)) or flags[-1])
    monkeypatch.setattr(train_mod, "sample", lambda *a, **k: flags[-1].append(True) or draw(*a, **k))
    assert cli.main(["train", "--out", str(tmp_path / "cg"), "--no-progress", *_sets(TINY), "--set", "steps=2"]) == 130
    assert "the run is complete (step 2" in capsys.readouterr().err
    assert checkpoint.load_checkpoint(tmp_path / "cg" / "ckpt.pt")["step"] == 2 and not (tmp_path / "cg" / "samples").exists()
    monkeypatch.undo()
    # an --out name too long for the temporary file beside it: said before sampling, nothing left behind
    longest = os.pathconf(tmp_path, "PC_NAME_MAX") - 18
    one_line_error(["sample", "--checkpoint", str(trained), "--n", "1", "--steps", "2", "--out",
                    str(tmp_path / ("a" * (longest + 1)))], f"at most {longest} bytes")
    assert not list(tmp_path.glob("*aaaa*"))
    assert cli.main(["sample", "--checkpoint", str(trained), "--n", "1", "--steps", "2", "--out",
                     str(tmp_path / ("b" * longest)), "--no-progress"]) == 0
    # `sample --out RUN/train` while train holds its lock: runs, and names its own lock apart
    with locked(trained / ".train.lock"):
        assert cli.main(["sample", "--checkpoint", str(trained), "--n", "1", "--steps", "2", "--out",
                         str(tmp_path / "train"), "--no-progress"]) == 0
    # a blank data_root; --etas that share a folder; LOCAL_RANK and WORLD_SIZE from the environment
    one_line_error(["train", "--preset", "cifar10", "--out", str(tmp_path / "c"), "--set", "data_root= "], "data_root is blank")
    one_line_error(["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "2",
                    "--steps", "2", "--etas", "0.5,0.5000001", "--out", str(tmp_path / "t1")], "would share the cell folder")
    assert not (tmp_path / "t1").exists()
    monkeypatch.setenv("LOCAL_RANK", "abc")
    one_line_error(sample, "LOCAL_RANK='abc' must be an integer")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    one_line_error(["train", "--out", str(tmp_path / "ws"), *_sets(TINY)], "MASTER_ADDR and MASTER_PORT are not set")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    # the out-of-range advice, the .npz's record, table2's note on quad
    x = torch.full((2, 1, 8, 8), 50.0)
    with pytest.warns(cli.OutOfRangeWarning, match=r"a grid that starts later .* and so does clipping x0 \(clip_x0=True\)"):
        generate.check_data_range(x, abar, torch.tensor([999, 0]))
    s = tmp_path / "clip"
    assert cli.main(["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2", "--clip", "--out", str(s),
                     "--no-progress"]) == 0
    with np.load(s.with_suffix(".npz")) as z:
        assert bool(z["clip"]) and bool(z["ema"]) and str(z["weights_sha256"]) == checkpoint.weights_sha256(net)
    assert cli.main(["reproduce", "table2", "--checkpoint", str(trained), "--n-images", "2", "--steps", "100", "--spacing",
                     "quad", "--out", str(tmp_path / "t2q"), "--no-progress"]) == 0
    assert re.search(r"S = 100: 9\d", (tmp_path / "t2q" / "table2.md").read_text())


def test_fourteenth_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """A careless round (helper 91): Ctrl-C during `train --overwrite` before its first checkpoint saved the new run and
    deleted the old one; a set-aside that failed halfway left the run hidden in .previous-<pid>; `reproduce table1`'s
    Inception FID scored every PNG of a cell, not --n-samples; a local folder named ddpm-cifar10 was passed over for the
    download; a cached digits model resumed by hand was served as the model its name promises; `lab --seed` 2**32 + s
    repeated seed s; an unwritable samples/ was found after training, and a user's empty samples/ was deleted on failure;
    the out-of-memory advice named a batch option invert and interpolate lack; the cache's folders were 0700; a wait for
    the cache's lock was silent; a non-UTF-8 --out was a codec error; `--resume --overwrite` announced changed settings
    before refusing; a dangling symlink as --out was "File exists"."""
    import dataclasses
    import os
    import threading
    import types
    from pathlib import Path

    from ddimlab import fid, files, lab, pretrained, tables
    from ddimlab import train as train_mod

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    def run_files(folder):
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".train.lock"}

    ow = tmp_path / "ow"
    assert cli.main(["train", "--out", str(ow), "--no-progress", *_sets(TINY), "--set", "steps=2"]) == 0
    before = run_files(ow)
    capsys.readouterr()
    # Ctrl-C (the stop flag) after the first step of `--overwrite`: nothing of the new run kept, the old one put back
    class Stopped(list):
        def __init__(self, active):
            super().__init__([True])

        def restore(self):
            pass

    monkeypatch.setattr(train_mod, "_stop_on_signal", Stopped)
    assert cli.main(["train", "--out", str(ow), "--overwrite", "--no-progress", *_sets(TINY), "--set", "steps=5"]) == 130
    assert "before the new run's first checkpoint" in capsys.readouterr().err
    assert run_files(ow) == before and not list(ow.glob(".previous-*"))
    monkeypatch.undo()
    # a set-aside whose second move fails (another device, a read-only folder): all or nothing
    moves, replace = [], os.replace

    def second_move_fails(src, dst):
        if ".previous-" in str(dst):
            moves.append(dst)
            if len(moves) == 2:
                raise OSError(18, "Invalid cross-device link")
        return replace(src, dst)

    monkeypatch.setattr(files.os, "replace", second_move_fails)
    one_line_error(["train", "--out", str(ow), "--overwrite", *_sets(TINY), "--set", "steps=5"], "nothing was moved")
    monkeypatch.undo()
    assert run_files(ow) == before and not list(ow.glob(".previous-*"))
    # --resume --overwrite: refused before any "resume: ..." line
    one_line_error(["train", "--out", str(ow), "--resume", "--overwrite", *_sets(TINY), "--set", "steps=9"], "exclude each other")
    # an unwritable samples/ is said before training; a user's own empty samples/ survives a failed run
    (tmp_path / "ro" / "samples").mkdir(parents=True)
    monkeypatch.setattr(train_mod.os, "access", lambda p, mode: not str(p).endswith("samples"))
    one_line_error(["train", "--out", str(tmp_path / "ro"), *_sets(TINY)], "samples is not writable", "n_samples=0")
    monkeypatch.undo()
    (tmp_path / "mine" / "samples").mkdir(parents=True)
    one_line_error(["train", "--out", str(tmp_path / "mine"), *_sets(TINY), "--set", "lr=1e30"], "this run kept nothing")
    assert (tmp_path / "mine" / "samples").is_dir()
    # a dangling symbolic link as --out
    (tmp_path / "dang").symlink_to(tmp_path / "nowhere" / "x")
    one_line_error(["train", "--out", str(tmp_path / "dang"), *_sets(TINY)], "symbolic link", "does not exist")
    one_line_error(["sample", "--checkpoint", str(trained), "--n", "1", "--steps", "2", "--out", str(tmp_path / "dang" / "s")],
                   "symbolic link", "does not exist")
    # a local ddpm-cifar10 is ambiguous with the official model's name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ddpm-cifar10").mkdir()
    one_line_error(["sample", "--checkpoint", "ddpm-cifar10", "--n", "1", "--steps", "2", "--out", "s"], "./ddpm-cifar10")
    monkeypatch.undo()
    # lab's seeds past 32 bits repeated another seed's draws
    with pytest.raises(SystemExit):
        cli.main(["lab", "--n", "8", "--image-d", "0", "--seed", str(2 ** 32 + 5), "--out", str(tmp_path / "lab")])
    assert "must be an integer in 0..2**32 - 1" in capsys.readouterr().err and not (tmp_path / "lab").exists()
    with pytest.raises(ValueError, match="low 32 bits"):
        lab.table1(S_list=(2,), n=8, n_ode=0, seed=2 ** 32 + 5)
    # a non-UTF-8 --out, as a file system may hold it
    odd = tmp_path / os.fsdecode(b"bad\xffname")
    assert cli.main(["sample", "--checkpoint", str(trained), "--n", "1", "--steps", "2", "--out", str(odd), "--no-progress"]) == 0
    assert odd.with_suffix(".png").exists() and odd.with_suffix(".npz").exists()
    # the out-of-memory advice names only options the command has
    monkeypatch.setattr(cli, "slerp", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
    one_line_error(["interpolate", "--checkpoint", str(trained), "--n", "5", "--steps", "2", "--out", str(tmp_path / "i")],
                   "fewer images per run")
    monkeypatch.undo()
    # Inception FID of a reproduce cell scores exactly its first n PNGs (torch-fidelity stood in by a file counter)
    cell = tmp_path / "cell"
    cell.mkdir()
    for i in range(5):
        plotting.save_png(np.zeros((4, 4, 3), np.uint8), cell / f"{i:06d}.png")
    counted = lambda **kw: {"frechet_inception_distance": float(len(list(Path(kw["input1"]).glob("*.png"))))}  # noqa: E731
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.SimpleNamespace(calculate_metrics=counted))
    assert tables._fid(cell, 3, None, None, 64) == 3.0 and tables._fid(cell, 5, None, None, 64) == 5.0
    with pytest.raises(ValueError, match="fewer than the n = 6"):
        fid.fid_inception(cell, n=6)
    monkeypatch.undo()
    # the digits cache: a model changed by hand is not served; its folder is readable by others; a wait is said
    cache = tmp_path / "cache" / "models"
    wrong = cache / "digits_000000000000"
    wrong.mkdir(parents=True)
    (wrong / "ckpt.pt").write_bytes((trained / "ckpt.pt").read_bytes())
    with pytest.raises(ValueError, match="do not give the key in its name"):
        pretrained._load(wrong)
    monkeypatch.setattr(pretrained.train, "train", lambda config: None)
    monkeypatch.setattr(pretrained, "_load", lambda folder: folder)
    folder = pretrained._cached_or_trained(cache / "digits_fresh", pretrained.digits_config(), False)
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    monkeypatch.setattr(pretrained, "_cached_or_trained", lambda folder, config, progress: "model")
    key = pretrained.config_key(dataclasses.replace(pretrained.digits_config(), threads=pretrained.THREADS))
    held = files.locked(cache / f".digits_{key}.lock")
    held.__enter__()
    threading.Timer(0.3, held.__exit__, (None, None, None)).start()
    capsys.readouterr()
    assert pretrained.digits_model(cache_dir=tmp_path / "cache") == "model"
    assert "waiting for another process" in capsys.readouterr().err


def test_fourteenth_round_records_and_unknown_settings(trained, tmp_path, capsys):
    """Helper 91, the rest: a checkpoint's settings this version does not know (a newer version's prediction_type) were
    dropped without a word when sampling, and dropped from the saved config by a resume; invert's and interpolate's
    .npz recorded no checkpoint, weights or (interpolate) seeds, steps and spacing; sample recorded the checkpoint as
    typed (relative), so latents from another model passed to interpolate were decoded without a word."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns(".train.lock"))
    state = checkpoint.load_checkpoint(run / "ckpt.pt")
    state["config"]["prediction_type"] = "v"
    checkpoint.save_checkpoint(run / "ckpt.pt", **state)
    (run / "config.json").write_text(json.dumps({**json.loads((run / "config.json").read_text()), "prediction_type": "v"}))
    before = (run / "ckpt.pt").read_bytes()
    assert cli.main(["sample", "--checkpoint", str(run), "--n", "1", "--steps", "2", "--out", str(tmp_path / "s"),
                     "--no-progress"]) == 0
    assert "warning: the checkpoint's settings include prediction_type" in capsys.readouterr().err
    _expect_one_line_error(capsys, ["train", "--out", str(run), "--resume", "--no-progress", *_sets(TINY), "--set",
                                    "steps=9"], "prediction_type", "a resume would drop them")
    assert (run / "ckpt.pt").read_bytes() == before
    # what the .npz files record
    net, _ = checkpoint.load_model(trained)
    sha = checkpoint.weights_sha256(net)
    assert cli.main(["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2", "--out", str(tmp_path / "a"),
                     "--no-progress"]) == 0
    assert cli.main(["invert", "--checkpoint", str(trained), "--input", str(tmp_path / "a.npz"), "--steps", "2", "--out",
                     str(tmp_path / "lat"), "--no-progress"]) == 0
    with np.load(tmp_path / "lat.npz") as z:
        assert str(z["weights_sha256"]) == sha and bool(z["ema"]) and str(z["checkpoint"]) == str(trained.resolve())
        assert z["inputs"].tolist() == [str((tmp_path / "a.npz").resolve())]
    assert cli.main(["interpolate", "--checkpoint", str(trained), "--latents", str(tmp_path / "lat.npz"), "--n", "3",
                     "--steps", "2", "--out", str(tmp_path / "i"), "--no-progress"]) == 0
    with np.load(tmp_path / "i.npz") as z:
        assert z["index"].tolist() == [0, 1] and int(z["steps"]) == 2 and str(z["weights_sha256"]) == sha
    # latents recorded as another model's: said
    with np.load(tmp_path / "lat.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "other.npz", **{**arrays, "weights_sha256": "0" * 64})
    capsys.readouterr()
    assert cli.main(["interpolate", "--checkpoint", str(trained), "--latents", str(tmp_path / "other.npz"), "--n", "3",
                     "--steps", "2", "--out", str(tmp_path / "j"), "--no-progress"]) == 0
    assert "warning: " in (err := capsys.readouterr().err) and "latents of another model" in err


def test_fifteenth_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """A careless round (helper 96): `train --overwrite` piped into a reader that had gone (or with stderr closed)
    failed at its first line of output and left the previous run hidden in .previous-<pid>; `lab | head` threw the
    finished tables away; an unwritable folder holding an earlier lock file was found only after all the sampling;
    `demo` with a cache it could not write said so after part 1 (and deleted part 1's tables); `reproduce --out` a
    dangling symbolic link said "File exists"; --no-bf16 or --no-progress beside a contradicting --set was settled
    silently, and a run's --no-progress stuck to every later resume."""

    from ddimlab import demo, files

    def one_line_error(argv, *needles):
        _expect_one_line_error(capsys, [*argv, "--no-progress"], *needles)

    tiny = [*_sets(TINY), "--set", "steps=2", "--set", "n_samples=0"]
    ow = tmp_path / "ow"
    assert cli.main(["train", "--out", str(ow), "--no-progress", *tiny]) == 0
    monkeypatch.setattr(sys, "stdout", GoneReader())
    assert cli.main(["train", "--out", str(ow), "--overwrite", "--no-progress", *tiny, "--set", "seed=3"]) == 0
    monkeypatch.setattr(sys, "stderr", None)           # 2>&-
    assert cli.main(["train", "--out", str(ow), "--overwrite", *tiny, "--set", "seed=4"]) == 0
    small_lab_tables(monkeypatch)
    assert cli.main(["lab", "--n", "8", "--image-d", "0", "--out", str(tmp_path / "lab"), "--no-progress"]) == 0
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(ow / "ckpt.pt")["config"]["seed"] == 4
    assert not list(ow.glob(".previous-*")) and (tmp_path / "lab" / "table1.txt").exists()
    capsys.readouterr()

    # folders made read-only (as root can only pretend here: no file can be created in them)
    real_mkstemp = files.tempfile.mkstemp
    read_only = {str(tmp_path / "ro"), str(tmp_path / "cache" / "models")}

    def mkstemp(*a, **k):
        if str(k.get("dir", "")) in read_only:
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*a, **k)
    # one that an earlier sample left its lock file in: refused before the work
    sample = ["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2"]
    assert cli.main([*sample, "--out", str(tmp_path / "ro" / "a"), "--no-progress"]) == 0
    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(cli, "sample_indices", lambda *a, **k: pytest.fail("sampled before refusing"))
    one_line_error([*sample, "--out", str(tmp_path / "ro" / "a"), "--overwrite"], "cannot create files in", "choose another")
    # demo with a cache it cannot write: said before part 1, which is not written
    (tmp_path / "cache" / "models").mkdir(parents=True)
    monkeypatch.setenv("DDIMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "LAB", dict(n=8, image_d=0, image_n=8))
    one_line_error(["demo", "--out", str(tmp_path / "d"), "--train-steps", "3"], "cannot create files in",
                   "point DDIMLAB_CACHE at a folder you can write")
    assert not (tmp_path / "d").exists()
    monkeypatch.undo()

    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nothere" / "t1")
    one_line_error(["reproduce", "table2", "--checkpoint", str(trained), "--n-images", "2", "--steps", "2", "--out",
                    str(dangling)], "is a symbolic link to", "which does not exist")
    for argv, needle in ((["--no-bf16", "--set", "bf16=true"], "--no-bf16 and --set bf16=true contradict"),
                         (["--compile", "--set", "compile=false"], "--compile and --set compile=false contradict"),
                         (["--set", "progress=true"], "--no-progress and --set progress=true contradict")):
        one_line_error(["train", "--out", str(tmp_path / "c"), *tiny, *argv], needle)
    # --no-progress is this command's display, not the run's: a later resume shows its bar unless told otherwise
    assert cli.main(["train", "--out", str(ow), "--resume", *tiny, "--set", "steps=3"]) == 0
    assert checkpoint.load_checkpoint(ow / "ckpt.pt")["config"]["progress"] is True


def test_settings_that_would_do_nothing_are_refused_or_noted(tmp_path, capsys):
    """`--set sample_every=100` beside n_samples = 0 drew no grid and said nothing: asked for in one command, they
    contradict each other, refused before any training. A warmup as long as the run never reached its learning rate,
    and said nothing: noted on stdout, with the share of lr the run reaches (not refused: a short `--set steps=2`
    beside a script's usual settings is a quick run's usual case)."""
    base = ["train", "--no-progress", *_sets(kv for kv in TINY if not kv.startswith("warmup="))]
    for sets in (["n_samples=0", "sample_every=5"], ["sample_every=2", "n_samples=0", "sample_steps=3"]):
        out = tmp_path / "_".join(sets).replace("=", "")
        every = next(kv for kv in sets if kv.startswith("sample_every"))
        _expect_one_line_error(capsys, [*base, "--out", str(out), *_sets(sets)],
                               f"--set {every} draws no grid with n_samples = 0")
        assert not out.exists()
    assert cli.main([*base, "--out", str(tmp_path / "quiet"), *_sets(["n_samples=0", "sample_every=0", "steps=2",
                                                                     "warmup=1"])]) == 0
    assert not (tmp_path / "quiet" / "samples").exists() and "note:" not in capsys.readouterr().out
    for sets, share in ((["steps=2"], "2% of lr = 0.002, and never decays"), (["steps=3", "warmup=4", "lr_decay=none"],
                                                                               "75% of lr = 0.002 (")):
        assert cli.main([*base, "--out", str(tmp_path / sets[-1]), *_sets(["n_samples=0", *sets])]) == 0
        out = capsys.readouterr().out          # the digits preset's warmup = 100, or this command's
        warmup = sets[1][7:] if len(sets) > 1 else "100"
        assert f"note: warmup = {warmup} >= steps = {sets[0][6:]}: the learning rate rises for the whole run, to {share}" in out


def test_sixteenth_round_of_careless_use(trained, tmp_path, capsys):
    """A careless round (helper 99): `invert --out` named like its --input PNG refused and advised --overwrite, which
    then replaced the user's image with the grid (`interpolate` did the same to its --latents file); `demo --n 17` drew
    the samplers' grid in rows of 8, so one sampler's images ran into the next's row under a message saying "top to
    bottom"; `lab --n 1000000000` sampled until the system killed it; `--set T=10000000` was an error about
    alpha_bar[812571] naming no setting; `--set sample_steps=1` drew grids of x_T nearly as it was and warned only after
    training, naming a "trailing spacing" train does not have."""
    from ddimlab import demo

    ckpt = str(trained / "ckpt.pt")
    digit = tmp_path / "mine.png"
    plotting.save_image_grid(torch.zeros(1, 1, 8, 8), digit, nrow=1)
    before = digit.read_bytes()
    invert = ["invert", "--checkpoint", ckpt, "--input", str(digit), "--steps", "2", "--no-progress", "--out"]
    for out in (tmp_path / "mine", digit):
        for more in ([], ["--overwrite"]):
            _expect_one_line_error(capsys, [*invert, str(out), *more], f"which is this command's input {digit}")
    assert digit.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine.png"]
    assert cli.main(["sample", "--checkpoint", ckpt, "--steps", "2", "--n", "3", "--out", str(tmp_path / "lat"),
                     "--no-progress"]) == 0
    latents = (tmp_path / "lat.npz").read_bytes()
    _expect_one_line_error(capsys, ["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / "lat.npz"), "--index",
                                    "0", "1", "--steps", "2", "--out", str(tmp_path / "lat"), "--overwrite", "--no-progress"],
                           "is this command's input")
    assert (tmp_path / "lat.npz").read_bytes() == latents

    for n in range(1, 41):                     # each sampler's images start a row of their own
        k, nrow = demo.shown(n)
        assert k % nrow == 0 and min(n, 32) - 1 <= k <= min(n, 32), (n, k, nrow)
    assert demo.shown(17) == (16, 8) and demo.shown(8) == (8, 8)

    base = ["train", "--no-progress", *_sets(TINY)]
    _expect_one_line_error(capsys, [*base, "--out", str(tmp_path / "t"), "--set", "T=10000000"],
                           "schedule linear with T = 10000000 does not fit float64", "use a smaller T")
    _expect_one_line_error(capsys, [*base, "--out", str(tmp_path / "s1"), "--set", "sample_steps=1"],
                           "sample_steps (the DDIM steps of the grids drawn while training) must be in [2, T = 1000], got 1")
    assert not (tmp_path / "t").exists() and not (tmp_path / "s1").exists()
    # `lab --n 1000000000` sampled until the system killed it: its distance tables are n x n
    for sizes in (["--n", "1000000000"], ["--image-n", "1000000000"]):
        _expect_one_line_error(capsys, ["lab", "--out", str(tmp_path / "lab"), *sizes],
                               "1,000,000,000 samples per cell (three n x n distance tables): about 22,351,741,791 GiB",
                               "give --n and --image-n at most")
    assert not (tmp_path / "lab").exists()


def test_seventeenth_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """A careless round (helper 102): `invert --out new/../mine --overwrite` (no folder `new`) replaced the user's
    --input mine.png, and `interpolate` its --latents, as the checks ran before `new` existed; `--set compile=none` was a
    30-line traceback; `lab --image-d 100000000` ran the 2-D table and then was killed; a failed command with --out
    `nn/../x` left `nn/` behind; `train --resume` in a folder it cannot write named the log's temporary file; `sample
    --steps 1000 --spacing quad` ran the full chain and recorded quad."""
    import tempfile
    from pathlib import Path

    from ddimlab import files

    ckpt = str(trained / "ckpt.pt")
    monkeypatch.chdir(tmp_path)
    plotting.save_png(np.full((8, 8, 1), 200, np.uint8), tmp_path / "mine.png")        # an image the model takes
    before = (tmp_path / "mine.png").read_bytes()
    _expect_one_line_error(capsys, ["invert", "--checkpoint", ckpt, "--input", "mine.png", "--steps", "2", "--no-progress",
                                    "--out", "new/../mine", "--overwrite"], "goes up (..) out of new, which is no folder",
                           "--out mine")
    _expect_one_line_error(capsys, ["sample", "--checkpoint", ckpt, "--steps", "2", "--n", "2", "--no-progress",
                                    "--out", "y/../z/../mine"], "out of y")
    assert (tmp_path / "mine.png").read_bytes() == before and not (tmp_path / "new").exists() and not (tmp_path / "y").exists()
    (tmp_path / "sub").mkdir()                                    # through a folder that exists: the path is plain
    assert cli.main(["sample", "--checkpoint", ckpt, "--steps", "2", "--n", "2", "--no-progress", "--out", "sub/../s"]) == 0
    assert (tmp_path / "s.npz").exists()

    base = ["train", "--no-progress", *_sets(TINY)]
    for kv in ("compile=none", "bf16=null", "hflip=None", "ema_warmup=none"):
        _expect_one_line_error(capsys, [*base, "--out", "t", "--set", kv], "must be a boolean (true/false)")
    _expect_one_line_error(capsys, ["lab", "--out", "lab", "--n", "8", "--image-n", "8", "--image-d", "100000000000"],
                           "--image-d 100000000000 with --image-n 8: about", "give --image-d at most")
    assert not (tmp_path / "lab").exists()

    run = tmp_path / "frozen"
    assert cli.main([*base, "--out", str(run), "--set", "steps=2", "--set", "n_samples=0"]) == 0
    log = (run / "log.jsonl").read_bytes()
    _expect_one_line_error(capsys, [*base, "--out", "nn/../frozen"], "already holds a run")
    assert not (tmp_path / "nn").exists()
    real = tempfile.mkstemp

    def refused(*a, dir=None, **k):                       # as a folder made read-only (chattr +i) after the run
        if dir is not None and Path(dir) == run:
            raise PermissionError(1, "Operation not permitted")
        return real(*a, dir=dir, **k)
    monkeypatch.setattr(files.tempfile, "mkstemp", refused)
    _expect_one_line_error(capsys, [*base, "--out", str(run), "--resume", "--set", "steps=4", "--set", "n_samples=0"],
                           f"cannot create files in {run}", "make it writable")
    monkeypatch.undo()
    assert (run / "log.jsonl").read_bytes() == log

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["sample", "--checkpoint", ckpt, "--steps", "1000", "--spacing", "quad", "--n", "1", "--no-progress",
                     "--out", "full"]) == 0
    assert "--steps 1000 = T runs the full chain T - 1, ..., 0 with any spacing: --spacing quad changes nothing" in \
        capsys.readouterr().err
    assert str(np.load(tmp_path / "full.npz")["spacing"]) == "uniform"


def test_eighteenth_round_of_careless_use(trained, tmp_path, capsys, monkeypatch):
    """`reproduce --etas -1` over a finished table said "already exist" (pass --overwrite) before "bad eta": the grid's
    values are read before the folder."""
    out = tmp_path / "t1"
    out.mkdir()
    (out / "table1.md").write_text("mine\n")
    for etas, needle in (("-1", "eta must be a finite number >= 0"), ("0,x", "eta must be a number >= 0 or 'sigma_hat'")):
        _expect_one_line_error(capsys, ["reproduce", "table1", "--checkpoint", str(trained / "ckpt.pt"), "--out", str(out),
                                        "--etas", etas], needle)
    assert (out / "table1.md").read_text() == "mine\n"


def test_nineteenth_round_of_careless_use(trained, tmp_path, capsys):
    """Helper 106's CLI round: a resume wrote through a ckpt.pt linked into another run; `train` wrote over the grids
    of a folder holding only samples/step_*.png; `sample --out` a link to the run folder's ckpt.pt was not refused;
    "already exist" was said before a missing checkpoint, a wrong option or a missing --input; a file where a table
    cell's folder goes failed after the first cell; DDPM latents were interpolated without a word."""
    import shutil

    other, mine = tmp_path / "other", tmp_path / "mine"
    shutil.copytree(trained, other)
    shutil.copytree(trained, mine)
    (mine / "ckpt.pt").unlink()
    (mine / "ckpt.pt").symlink_to(other / "ckpt.pt")
    before = (other / "ckpt.pt").read_bytes()
    assert cli.main(["train", "--resume", "--out", str(mine), "--no-progress", "--set", "steps=32"]) == 0
    assert (other / "ckpt.pt").read_bytes() == before and not (mine / "ckpt.pt").is_symlink()

    grids = tmp_path / "grids"
    (grids / "samples").mkdir(parents=True)
    (grids / "samples" / "step_0000030.png").write_bytes(b"my grid")
    _expect_one_line_error(capsys, ["train", "--out", str(grids), "--no-progress", *_sets(TINY)],
                           "samples/step_*.png", "--overwrite")
    assert (grids / "samples" / "step_0000030.png").read_bytes() == b"my grid"

    link = tmp_path / "link.png"
    link.symlink_to(other / "ckpt.pt")
    _expect_one_line_error(capsys, ["sample", "--checkpoint", str(other), "--out", str(link), "--overwrite", "--n", "1",
                                    "--steps", "2", "--no-progress"], "this command's input")
    assert (other / "ckpt.pt").read_bytes() == before and link.is_symlink()

    held = tmp_path / "held"
    for suffix in (".png", ".npz"):
        held.with_suffix(suffix).write_bytes(b"mine")
    base = ["--out", str(held), "--steps", "2", "--no-progress"]
    for argv, needle in ((["sample", "--checkpoint", str(tmp_path / "nothing.pt"), *base], "does not exist"),
                         (["sample", "--checkpoint", str(other), "--sampler", "ddpm", "--eta", "0.5", *base], "--eta applies"),
                         (["invert", "--checkpoint", str(other), "--input", str(tmp_path / "no.png"), *base], "no.png"),
                         (["reproduce", "table1", "--checkpoint", str(tmp_path / "nothing.pt"), "--out", str(tmp_path)],
                          "does not exist")):
        (tmp_path / "table1.md").write_text("mine\n")
        _expect_one_line_error(capsys, argv, needle)
    assert held.with_suffix(".png").read_bytes() == b"mine" and (tmp_path / "table1.md").read_text() == "mine\n"

    table = tmp_path / "t1"
    (table / "samples").mkdir(parents=True)
    (table / "samples" / "eta0_S3").write_text("in the way")
    _expect_one_line_error(capsys, ["reproduce", "table1", "--checkpoint", str(other), "--out", str(table), "--steps",
                                    "2,3", "--etas", "0", "--n-samples", "2", "--features", "random", "--no-progress"],
                           "eta0_S3 is a file")
    assert sorted(p.name for p in (table / "samples").iterdir()) == ["eta0_S3"]

    ddpm = tmp_path / "ddpm"
    assert cli.main(["sample", "--checkpoint", str(other), "--sampler", "ddpm", "--steps", "2", "--n", "2", "--out",
                     str(ddpm), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["interpolate", "--checkpoint", str(other), "--latents", str(ddpm.with_suffix(".npz")), "--n", "3",
                     "--steps", "2", "--out", str(tmp_path / "path"), "--no-progress"]) == 0
    said = capsys.readouterr()            # and its 2 steps are not taken as the grid: DDIM cannot decode it anyway
    assert "drew new noise at every step" in said.err and "the grid that made" not in said.out
    np.savez(tmp_path / "rgb.npz", x_T=np.zeros((2, 3, 8, 8), np.float32), weights_sha256="0" * 64)
    assert cli.main(["interpolate", "--checkpoint", str(other), "--latents", str(tmp_path / "rgb.npz"), "--out",
                     str(tmp_path / "rgb_path"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "holds latents of shape (3, 8, 8)" in err and "another model" not in err, err


def test_twentieth_round_of_careless_use(trained, tmp_path, capsys):
    """Helper 108's CLI round: `interpolate --latents` of an inversion decoded on another grid without a word; a second
    --input dropped the first; a folder at log.jsonl or config.json failed after the training; a truncated ckpt.pt
    gave torch's paragraph; `--out /dev/null` and `--out -` were file stems; a run whose checkpoint a stopped
    `train --overwrite` had set aside was said to have none; table2 called the digits it trained on test images."""
    from pathlib import Path

    from PIL import Image

    from ddimlab import files

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    pngs = [str(tmp_path / f"{k}.png") for k in "abc"]
    for k, p in enumerate(pngs):
        Image.fromarray(np.full((8, 8), 60 * k, np.uint8)).save(p)
    inv = tmp_path / "inv"
    assert cli.main(["invert", "--checkpoint", str(run), "--steps", "5", "--input", *pngs[:2], "--input", pngs[2],
                     "--out", str(inv), "--no-progress"]) == 0
    with np.load(inv.with_suffix(".npz")) as z:
        assert len(z["inputs"]) == 3 and z["x0"].shape[0] == 3              # every --input, not the last one's files
    capsys.readouterr()
    assert cli.main(["interpolate", "--checkpoint", str(run), "--latents", str(inv.with_suffix(".npz")), "--n", "3",
                     "--out", str(tmp_path / "path"), "--no-progress"]) == 0
    assert "--sampler ddim --steps 5 --spacing uniform: what made" in capsys.readouterr().out
    with np.load(tmp_path / "path.npz") as z, np.load(inv.with_suffix(".npz")) as zi:
        assert int(z["steps"]) == 5 and np.allclose(z["samples"][0], zi["recon"][0], atol=1e-5)
    assert cli.main(["interpolate", "--checkpoint", str(run), "--latents", str(inv.with_suffix(".npz")), "--n", "3",
                     "--steps", "8", "--out", str(tmp_path / "path8"), "--no-progress"]) == 0
    said = capsys.readouterr().err
    assert "was made with --steps 5 --spacing uniform: with other settings its latents decode to other images" in said

    for name in ("log.jsonl", "config.json"):
        other = tmp_path / f"with_{name}"
        shutil.copytree(trained, other)
        (other / name).unlink()
        (other / name).mkdir()
        before = (other / "ckpt.pt").read_bytes()
        _expect_one_line_error(capsys, ["train", "--resume", "--out", str(other), "--no-progress", "--set", "steps=40"],
                               f"{name} is a folder where the run keeps a file")
        assert (other / "ckpt.pt").read_bytes() == before

    cut = tmp_path / "cut"
    shutil.copytree(trained, cut)
    (cut / "ckpt.pt").write_bytes((trained / "ckpt.pt").read_bytes()[:100_000])
    assert cli.main(["train", "--resume", "--out", str(cut), "--no-progress", "--set", "steps=40"]) == 1
    err = capsys.readouterr().err
    assert "put back an intact copy, or start again with --overwrite" in err and "high likelihood" not in err, err

    (tmp_path / "afile").write_text("")
    for out, needle in (("/dev/null", "a device or special file"), ("-", "standard output"),
                        (str(tmp_path / "afile" / "x"), f"goes through a file: {tmp_path / 'afile'} is a file, not a folder")):
        _expect_one_line_error(capsys, ["sample", "--checkpoint", str(run), "--out", out, "--n", "1", "--steps", "2"], needle)
    assert not Path("/dev/null.png").exists() and not Path("-.png").exists()

    stopped = tmp_path / "stopped"
    shutil.copytree(trained, stopped)
    aside = files.set_aside(stopped, [stopped / "ckpt.pt", stopped / "config.json", stopped / "log.jsonl"])
    _expect_one_line_error(capsys, ["sample", "--checkpoint", str(stopped), "--out", str(tmp_path / "s"), "--steps", "2"],
                           f"the previous run's checkpoint is in {aside / 'ckpt.pt'}")

    assert cli.main(["reproduce", "table2", "--checkpoint", str(run), "--out", str(tmp_path / "t2"), "--steps", "2",
                     "--n-images", "4", "--no-progress"]) == 0
    assert "4 digits, those the model trained on (no held-out set)" in (tmp_path / "t2" / "table2.md").read_text()


def test_twentieth_round_a_replaced_sample_is_made_again(trained, tmp_path, capsys):
    """`reproduce table1` reused a cell's PNG that had been replaced by another valid image of the same size (it looked
    only at whether the file was there): each sample now holds a seal (sha256 of the cell's settings, its index and its
    pixels) that a rerun checks, and an image without a valid one is made again, said in one line. A folder of an
    earlier ddimlab, whose images hold no seal, is reused as before with a one-line note."""
    from PIL import Image

    out = tmp_path / "t1"
    argv = ["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "4", "--steps", "2",
            "--etas", "0", "--batch-size", "4", "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    cell = out / "samples" / "eta0_S2"
    made = {p.name: np.asarray(Image.open(p)) for p in sorted(cell.glob("*.png"))}
    Image.fromarray(made["000002.png"]).save(cell / "000001.png")              # another valid 8x8 image of the cell
    Image.fromarray(255 - made["000003.png"]).save(cell / "000003.png")        # an edited one
    assert cli.main(argv + ["--overwrite"]) == 0
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if "000001.png" in line]
    assert len(err) == 1 and "000003.png" in err[0] and "made again" in err[0], captured.err
    assert captured.out == first                                               # the same table as before the edits
    for name, pixels in made.items():
        assert np.array_equal(np.asarray(Image.open(cell / name)), pixels), name

    settings = json.loads((cell / "settings.json").read_text())                # as an earlier ddimlab wrote it
    del settings["sealed"]
    (cell / "settings.json").write_text(json.dumps(settings))
    for p in cell.glob("*.png"):
        Image.fromarray(np.asarray(Image.open(p))).save(p)                     # images with no seal
    assert cli.main(argv + ["--overwrite"]) == 0
    captured = capsys.readouterr()
    assert captured.out == first and "reused unverified" in captured.err, captured.err
    assert len([line for line in captured.err.splitlines() if "unverified" in line]) == 1


def test_twentieth_round_a_full_disk_or_a_read_only_folder_keeps_earlier_outputs(trained, tmp_path, capsys, monkeypatch,
                                                                               rename_fails):
    """A full disk (ENOSPC at a file's rename) and a read-only folder (EACCES at its temporary file), made in-process
    since root writes anywhere: `sample`, `train`'s checkpoint and `reproduce table1` each exit 1 with one line naming
    the path and the reason, and leave neither a temporary file nor a changed earlier output. Before, a full disk at
    `sample`'s PNG left the new .npz beside the old PNG, and at table1.md the new table1.csv beside the old table1.md."""
    import errno
    import os
    import tempfile

    real_mkstemp = tempfile.mkstemp

    def read_only(folder):
        def mkstemp(*a, dir=None, **k):
            if dir is not None and os.path.samefile(dir, folder):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real_mkstemp(*a, dir=dir, **k)
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

    def files_of(folder):
        return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock")}

    def fails_keeping(folder, argv, *needles):
        before = files_of(folder)
        _expect_one_line_error(capsys, argv, *needles)
        monkeypatch.undo()
        after = files_of(folder)
        assert {p: after.get(p) for p in before} == before, argv     # earlier outputs as they were
        added = [p for p in after if p not in before and not (p.parent.parent.name == "samples" and p.suffix == ".png")]
        assert not added and not list(folder.rglob(".previous-*")), (argv, added)   # no temporary or half file (a
        #                                                                             reproduce sample made is kept work)

    out = tmp_path / "s"
    sample = ["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2", "--no-progress", "--out", str(out / "x")]
    assert cli.main(sample) == 0
    for name in ("x.npz", "x.png"):
        rename_fails(name)
        fails_keeping(out, sample + ["--seed", "3", "--overwrite"], str(out / name), "No space left on device")
    read_only(out)
    fails_keeping(out, sample + ["--seed", "3", "--overwrite"], str(out), "Permission denied")

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    resume = ["train", "--resume", "--out", str(run), "--no-progress", "--set", "steps=40"]
    rename_fails("ckpt.pt")
    before = files_of(run)
    _expect_one_line_error(capsys, resume, str(run / "ckpt.pt"), "No space left on device")
    monkeypatch.undo()
    after = files_of(run)
    assert after == before          # no temporary file; the log cut back to the kept checkpoint (twenty-first round)
    read_only(run)
    fails_keeping(run, resume, str(run), "Permission denied")

    t1 = tmp_path / "t1"
    table1 = ["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "2", "--steps", "2",
              "--etas", "0", "--batch-size", "2", "--no-progress", "--out", str(t1)]
    assert cli.main(table1) == 0
    (t1 / "samples" / "eta0_S2" / "000001.png").unlink()             # a sample to make again
    for name in ("000001.png", "table1.md", "table1.csv"):
        rename_fails(name)
        fails_keeping(t1, table1 + ["--overwrite"], name, "No space left on device")
    read_only(t1)
    fails_keeping(t1, table1 + ["--overwrite"], str(t1), "Permission denied")


def test_twentieth_round_no_output_into_a_reproduce_cell(trained, tmp_path, capsys):
    """`sample --out T1/samples/eta0_S2/000007` wrote its PNG among a `reproduce table1` cell's samples (exit 0): a later
    table with more samples replaced it by the cell's own image (the user's PNG lost, its .npz left describing another
    file), and any tool reading the folder whole scored it. A folder whose settings.json is a cell's is refused."""
    t1 = tmp_path / "t1"
    assert cli.main(["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "2",
                     "--steps", "2", "--etas", "0", "--batch-size", "2", "--no-progress", "--out", str(t1)]) == 0
    cell = t1 / "samples" / "eta0_S2"
    before = sorted(p.name for p in cell.iterdir())
    for command in (["sample", "--n", "1"], ["interpolate", "--n", "2"]):
        _expect_one_line_error(capsys, [*command, "--checkpoint", str(trained), "--steps", "2", "--no-progress", "--out",
                                        str(cell / "000007")], f"--out {cell} is a folder of samples for FID")
    assert sorted(p.name for p in cell.iterdir()) == before


def test_twentyfirst_round_a_full_disk_at_the_checkpoint_says_what_was_kept(trained, tmp_path, capsys, monkeypatch, rename_fails):
    """A full disk at ckpt.pt said only "[Errno 28] No space left on device: '.../ckpt.pt'": not that the last checkpoint
    was kept, nor how to go on; and log.jsonl kept the lines of the steps after it, whose weights were lost. Now the line
    says which step was kept and to free space and --resume, and the log is cut back to that checkpoint. A new run's
    first checkpoint says that nothing was kept (under --overwrite, that the previous run is back)."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.endswith(".lock")}
    rename_fails("ckpt.pt")
    _expect_one_line_error(capsys, ["train", "--resume", "--out", str(run), "--no-progress", "--set", "steps=60"],
                           str(run / "ckpt.pt"), "No space left on device", "the last checkpoint (step 30) was kept",
                           "free some space", "--resume")
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and not p.name.endswith(".lock")}
    assert after == before                                     # log.jsonl too: no lines of steps 40 to 60
    assert cli.main(["train", "--resume", "--out", str(run), "--no-progress", "--set", "steps=60"]) == 0

    new = tmp_path / "new"
    rename_fails("ckpt.pt")
    _expect_one_line_error(capsys, ["train", "--preset", "digits", "--out", str(new), "--no-progress", *_sets(TINY)],
                           "No space left on device", "before the run's first checkpoint: nothing of it was kept")
    assert not new.exists()
    _expect_one_line_error(capsys, ["train", "--overwrite", "--out", str(run), "--no-progress", *_sets(TINY)],
                           "nothing of it was kept", f"the previous run is back in {run}")
    monkeypatch.undo()
    assert (run / "ckpt.pt").read_bytes() != before["ckpt.pt"] and not list(run.glob(".previous-*"))
    assert checkpoint.load_checkpoint(run / "ckpt.pt")["step"] == 60

    from ddimlab import train as train_module

    def torn_line(path, record):                              # the disk fills within a log line
        with open(path, "a") as f:
            f.write(json.dumps(record)[:10])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(train_module, "_append_log", torn_line)
    log = (run / "log.jsonl").read_text()
    _expect_one_line_error(capsys, ["train", "--resume", "--out", str(run), "--no-progress", "--set", "steps=70"],
                           f"No space left on device: {run / 'log.jsonl'}", "the last checkpoint (step 60) was kept")
    assert (run / "log.jsonl").read_text() == log              # the torn line dropped
    monkeypatch.undo()

    rename_fails("config.json")                 # the checkpoint was written, its copy of the settings not
    _expect_one_line_error(capsys, ["train", "--resume", "--out", str(run), "--no-progress", "--set", "steps=70"],
                           "No space left on device", "ckpt.pt (step 70) was saved", "config.json")
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(run / "ckpt.pt")["step"] == 70
    assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()][-1] == 70


def test_twentyfirst_round_train_overwrite_refuses_a_folder_with_reproduce_results(trained, tmp_path, capsys):
    """`train --overwrite` on a run folder that also held `reproduce` outputs of the old model (table1.md/.csv, its sample
    cells with settings.json, table2.md/.csv) left them beside the new run: a table that reads as the new model's, and
    cells a later reproduce refuses (made with other weights). Those outputs can be hours of sampling, so they are
    neither deleted nor set aside to be deleted: train refuses, naming them, until they are moved out."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert cli.main(["reproduce", "table1", "--checkpoint", str(run), "--features", "random", "--n-samples", "2",
                     "--steps", "2", "--etas", "0", "--batch-size", "2", "--no-progress", "--out", str(run)]) == 0
    assert cli.main(["reproduce", "table2", "--checkpoint", str(run), "--out", str(run), "--steps", "2", "--n-images", "2",
                     "--no-progress"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    overwrite = ["train", "--overwrite", "--out", str(run), "--no-progress", *_sets(TINY)]
    _expect_one_line_error(capsys, overwrite, "table1.md", "table2.md", "samples/eta0_S2/",
                           "`reproduce` results of the run in it", "move them out")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.name.endswith(".lock")} == before
    for name in ("table1.md", "table1.csv", "table2.md", "table2.csv"):
        (run / name).unlink()
    _expect_one_line_error(capsys, overwrite, "samples/eta0_S2/")         # the cells alone
    shutil.move(run / "samples" / "eta0_S2", tmp_path / "eta0_S2")
    assert cli.main(overwrite) == 0
    assert (tmp_path / "eta0_S2" / "settings.json").exists()


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_twentyfirst_round_interrupted_commands_leave_no_half_outputs(trained, tmp_path, capsys, monkeypatch, signame):
    """Ctrl-C (SIGINT) and SIGTERM, raised from inside the work, during `sample`, `invert`, `interpolate` and `reproduce
    table1`: each exits 130 saying "interrupted", leaves no temporary file, no new PNG beside an old .npz (nor a new table1.csv
    beside an old table1.md), and no folder it made for --out; `reproduce` keeps the samples it finished (a rerun reuses
    them, giving the uninterrupted table)."""
    import hashlib
    import signal
    from pathlib import Path

    from PIL import Image

    from ddimlab import files, generate, tables

    sig = getattr(signal, signame)
    terminal = signal.signal(signal.SIGINT, signal.default_int_handler)       # as in a terminal

    def leftovers(folder):
        return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".previous-")]

    def pair_of(stem):
        png, npz = stem.with_suffix(".png").read_bytes(), stem.with_suffix(".npz")
        with np.load(npz) as z:
            assert str(z["png_sha256"]) == hashlib.sha256(png).hexdigest()      # the .npz records this PNG
            return png, npz.read_bytes()

    try:
        Image.fromarray(np.full((8, 8), 90, np.uint8)).save(tmp_path / "in.png")
        commands = {"sample": ["--n", "2", "--steps", "2"], "invert": ["--input", str(tmp_path / "in.png"), "--steps", "2"],
                    "interpolate": ["--seeds", "0", "1", "--n", "3", "--steps", "2"]}
        real_progress, real_write = cli.progress, files.atomic_write
        for command, args in commands.items():
            argv = [command, "--checkpoint", str(trained), *args, "--no-progress", "--out"]
            monkeypatch.setattr(cli, "progress", lambda *a, **k: (real_progress(*a, **k)[0],
                                                                   lambda info: signal.raise_signal(sig)))
            _expect_interrupted(capsys, [*argv, str(tmp_path / "new" / "deeper" / "x")])        # at the first sampling step
            assert not (tmp_path / "new").exists()
            monkeypatch.setattr(cli, "progress", real_progress)
            out = tmp_path / command
            assert cli.main([*argv, str(out / "x")]) == 0
            earlier = pair_of(out / "x")
            monkeypatch.setattr(cli, "progress", lambda *a, **k: (real_progress(*a, **k)[0],
                                                                   lambda info: signal.raise_signal(sig)))
            _expect_interrupted(capsys, [*argv, str(out / "x"), "--overwrite", "--scale", "3"])
            assert pair_of(out / "x") == earlier and not leftovers(out)
            monkeypatch.setattr(cli, "progress", real_progress)

            def between_the_two(path, *a, **k):                  # the signal comes after the .npz, before the PNG
                done = real_write(path, *a, **k)
                if path.suffix == ".npz":
                    signal.raise_signal(sig)
                return done
            monkeypatch.setattr(cli, "atomic_write", between_the_two)
            _expect_interrupted(capsys, [*argv, str(out / "x"), "--overwrite", "--scale", "3"])
            monkeypatch.setattr(cli, "atomic_write", real_write)
            assert pair_of(out / "x") != earlier and not leftovers(out)        # both new (the signal waited for them)
            capsys.readouterr()

        table1 = ["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "4",
                  "--steps", "2", "--etas", "0", "--batch-size", "2", "--no-progress", "--out"]
        real_sample = generate.sample_indices

        def interrupted_at_batch(k):
            signal_at_call(monkeypatch, generate, "sample_indices", k, sig)

        interrupted_at_batch(1)                                  # before any sample: nothing is left
        _expect_interrupted(capsys, [*table1, str(tmp_path / "t1new" / "deeper")])
        assert not (tmp_path / "t1new").exists()
        t1 = tmp_path / "t1"
        interrupted_at_batch(2)                                  # after the first batch: its two samples are kept
        _expect_interrupted(capsys, [*table1, str(t1)])
        cell = t1 / "samples" / "eta0_S2"
        assert sorted(p.name for p in cell.iterdir()) == ["000000.png", "000001.png", "settings.json"]
        assert not leftovers(t1) and not (t1 / "table1.md").exists() and not (t1 / "table1.csv").exists()
        monkeypatch.setattr(generate, "sample_indices", real_sample)
        assert cli.main([*table1, str(t1)]) == 0
        resumed = capsys.readouterr().out
        assert cli.main([*table1, str(tmp_path / "t1whole")]) == 0
        assert capsys.readouterr().out.replace("t1whole", "t1") == resumed        # the table an uninterrupted run gives
        earlier = {n: (t1 / n).read_bytes() for n in ("table1.md", "table1.csv")}

        def between_the_tables(path, *a, **k):
            done = real_write(path, *a, **k)
            if Path(path).name == "table1.csv":
                signal.raise_signal(sig)
            return done
        monkeypatch.setattr(tables, "atomic_write", between_the_tables)
        _expect_interrupted(capsys, [*table1, str(t1), "--overwrite", "--n-samples", "2"])   # another table
        assert {n: (t1 / n).read_bytes() for n in earlier} == earlier and not leftovers(t1)
    finally:
        signal.signal(signal.SIGINT, terminal)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_twentysecond_round_interrupted_reproduce_table2_leaves_no_half_outputs(trained, tmp_path, capsys, monkeypatch,
                                                                                 signame):
    """Ctrl-C (SIGINT) and SIGTERM, raised from inside the work, during `reproduce table2` on the digits: it exits 130
    saying "interrupted", leaves no temporary file, no new table2.csv beside an old table2.md (at the reconstruction,
    between the two tables, inside the writing of either), and no folder it made for --out."""
    import signal
    from pathlib import Path

    from ddimlab import tables

    sig = getattr(signal, signame)
    terminal = signal.signal(signal.SIGINT, signal.default_int_handler)       # as in a terminal

    def files_in(folder):
        return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()
                and not p.name.endswith(".lock")}

    table2 = ["reproduce", "table2", "--checkpoint", str(trained), "--n-images", "4", "--steps", "2,3", "--batch-size", "2",
              "--no-progress", "--out"]
    real_errors, real_write = tables.reconstruction_errors, tables.atomic_write
    try:
        def errors_interrupted_at(k):
            signal_at_call(monkeypatch, tables, "reconstruction_errors", k, sig)

        for k in (1, 2):                                         # at the first S, at the second
            errors_interrupted_at(k)
            _expect_interrupted(capsys, [*table2, str(tmp_path / "new" / "deeper")])
            assert not (tmp_path / "new").exists()
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep")
        errors_interrupted_at(2)
        _expect_interrupted(capsys, [*table2, str(tmp_path / "mine")])          # a folder of the user's: kept as it was
        assert files_in(tmp_path / "mine") == {Path("notes.txt"): b"keep"}
        monkeypatch.setattr(tables, "reconstruction_errors", real_errors)

        out = tmp_path / "t2"
        assert cli.main([*table2, str(out)]) == 0
        capsys.readouterr()
        earlier = files_in(out)
        assert set(earlier) == {Path("table2.md"), Path("table2.csv")}

        def signal_after(name, inside=False):
            def atomic_write(path, write, *a, **k):
                if inside and Path(path).name == name:           # half-way through writing the file itself
                    def half(f):
                        f.write("S,steps")
                        signal.raise_signal(sig)
                        write(f)
                    return real_write(path, half, *a, **k)
                done = real_write(path, write, *a, **k)
                if Path(path).name == name:
                    signal.raise_signal(sig)
                return done
            monkeypatch.setattr(tables, "atomic_write", atomic_write)

        for name, inside in (("table2.csv", False), ("table2.csv", True), ("table2.md", True), ("table2.md", False)):
            errors_interrupted_at(0)
            signal_after(name, inside)
            _expect_interrupted(capsys, [*table2, str(out), "--overwrite", "--n-images", "2"])     # another table
            assert files_in(out) == earlier, (name, inside)
        (out / "table2.csv").unlink()                            # an old .md alone: no new .csv beside it
        earlier = files_in(out)
        signal_after("table2.csv")
        _expect_interrupted(capsys, [*table2, str(out), "--overwrite", "--n-images", "2"])
        assert files_in(out) == earlier
        monkeypatch.setattr(tables, "atomic_write", real_write)
        monkeypatch.setattr(tables, "reconstruction_errors", real_errors)
        assert cli.main([*table2, str(out), "--overwrite", "--n-images", "2"]) == 0
        assert set(files_in(out)) == {Path("table2.md"), Path("table2.csv")} and files_in(out) != earlier
    finally:
        signal.signal(signal.SIGINT, terminal)


def test_twentysecond_round_an_option_given_twice_or_to_another_command(trained, tmp_path, capsys):
    """An option given twice with two values (`--n 4 ... --n 64`, `--checkpoint A ... --checkpoint B`, `--bf16 ...
    --no-bf16`: an edited command line that kept the old value) ran with the last one without a word; the last still
    counts (scripts append their changes to a base command line), and now a warning names both. The same value twice
    says nothing. An option of another subcommand (`sample --input`, `lab --checkpoint`) is said to be that one's."""
    def noted(argv, *needles):
        code, err = cli.main(argv), capsys.readouterr().err
        for needle in needles:
            assert f"warning: an option given twice, {needle}: the last counts" in err, (needle, err)
        return code

    out = ["--out", str(tmp_path / "x")]
    model = ["--checkpoint", str(trained)]
    sample = ["sample", *model, "--steps", "2", "--no-progress", *out]
    assert noted([*sample, "--n", "2", "--n", "3"], "--n 2, then --n 3") == 0
    with np.load(tmp_path / "x.npz") as z:
        assert len(z["samples"]) == 3
    assert noted([*sample, "--n", "2", "--steps", "3", "--overwrite"], "--steps 2, then --steps 3") == 0
    assert noted(["sample", "--checkpoint", str(tmp_path / "gone"), *sample[1:], "--n", "2", "--overwrite"],
                 f"--checkpoint {tmp_path / 'gone'}, then --checkpoint {trained}") == 0
    assert noted(["interpolate", *model, "--seeds", "0", "1", "--seeds", "0", "2", "--n", "2", "--steps", "2",
                  "--no-progress", "--out", str(tmp_path / "i")], "--seeds 0 1, then --seeds 0 2") == 0
    assert noted(["reproduce", "table2", *model, "--steps", "2", "--steps", "3", "--n-images", "2", "--n-images", "3",
                  "--no-progress", "--out", str(tmp_path / "t2")], "--steps 2, then --steps 3",
                 "--n-images 2, then --n-images 3") == 0
    assert "| S | 3 |" in (tmp_path / "t2" / "table2.md").read_text()
    assert noted(["train", "--bf16", "--no-bf16", "--out", str(tmp_path / "r"), "--set", "steps=0"],   # refused after
                 "--bf16, then --no-bf16") == 1
    assert cli.main([*sample, "--n", "2", "--n", "2", "--no-progress", "--overwrite"]) == 0
    assert "given twice" not in capsys.readouterr().err

    # an option of another subcommand
    def refused(argv, *needles):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err and err.strip().splitlines()[0].count(": error: ") == 1, err
        for needle in needles:
            assert needle in err, (needle, err)

    refused(["sample", *model, "--input", "a.png", "--seeds", "0", "1", "--out", str(tmp_path / "y")],
            "sample: error: unrecognized arguments: --input a.png --seeds 0 1", "--input is an option of invert;",
            "--seeds is an option of interpolate)", "sample --help` lists the options")
    refused(["lab", "--checkpoint", str(trained), "--out", str(tmp_path / "y")],
            "--checkpoint is an option of sample, invert, interpolate and reproduce")
    refused(["sample", *model, "--sed", "3", "--out", str(tmp_path / "y")], "unrecognized arguments: --sed 3")
    assert not list(tmp_path.glob("y*"))


def test_twentysecond_round_reproduce_says_a_folder_it_cannot_make(trained, tmp_path, capsys, monkeypatch):
    """`reproduce` into a new --out on a read-only disk (or under a read-only current folder, its default runs/TABLE)
    said only "[Errno 30] Read-only file system: 'runs'"; now it says the folder cannot be made and to choose another
    --out, as the other commands do."""
    import errno
    import pathlib

    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *a, **k):
        if ro in (self.absolute(), *self.absolute().parents) and self.absolute() != ro:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.chdir(ro)
    for table in (["table2", "--n-images", "2"], ["table1", "--features", "random", "--n-samples", "2", "--etas", "0"]):
        for out in ([], ["--out", "new/deeper"]):
            _expect_one_line_error(capsys, ["reproduce", *table, "--checkpoint", str(trained), "--steps", "2",
                                            "--no-progress", *out], "cannot create the folder", "Read-only file system",
                                   "choose another --out")
            assert not list(ro.iterdir())

def test_twentysecond_round_a_pipeline_folder_without_its_unet(trained, tmp_path, capsys):
    """A diffusers pipeline folder (model_index.json) missing its unet/ (an unfinished download) was called a folder with
    "neither ckpt.pt nor config.json"; now the missing UNet is named."""
    from ddimlab import checkpoint, schedule

    net, _ = checkpoint.load_model(trained)
    unet = checkpoint.save_diffusers_folder(net, tmp_path / "pipe" / "unet", schedule.make_alpha_bar())
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "DDPMPipeline", "unet": ["diffusers", '
                                                        '"UNet2DModel"]}')
    sample = ["sample", "--checkpoint", str(tmp_path / "pipe"), "--n", "2", "--steps", "2", "--no-progress", "--out"]
    assert cli.main([*sample, str(tmp_path / "whole")]) == 0
    (unet / "config.json").unlink()
    _expect_one_line_error(capsys, [*sample, str(tmp_path / "a")], "pipe is a diffusers pipeline folder (model_index.json) "
                           "without its UNet: unet/config.json is missing")
    shutil.rmtree(unet)
    _expect_one_line_error(capsys, [*sample, str(tmp_path / "a")], "without its UNet: the folder unet/ is missing")
    assert not list(tmp_path.glob("a*"))


def test_twentythird_round_a_usage_error_is_two_lines_and_no_option_is_a_prefix(trained, tmp_path, capsys):
    """An unknown option, a missing value or a choice not offered printed the subcommand's whole usage (4 to 20 lines)
    before the error; now it is the error and where the options are listed, exit status 2 as argparse's. And argparse
    took a prefix of an option for the option: `train --over` was `--overwrite`, which replaces a run."""
    for argv, needle in ((["sample", "--steps"], "argument --steps: expected one argument"),
                         (["sample", "--sampler", "foo"], "argument --sampler/--solver: invalid choice: 'foo'"),
                         (["train", "--bogus"], "unrecognized arguments: --bogus"),
                         (["train", "--res", "--out", str(trained)], "unrecognized arguments: --res"),
                         (["smaple"], "argument COMMAND: invalid choice: 'smaple'")):
        r = _run(*argv)
        lines = r.stderr.strip().splitlines()
        command = f"python -m ddimlab{' ' + argv[0] if argv[0] != 'smaple' else ''}"
        assert r.returncode == 2 and len(lines) == 2 and "usage:" not in r.stderr and not r.stdout, (argv, r.stderr, r.stdout)
        assert lines[0] == f"{command}: error: {lines[0].partition(': error: ')[2]}" and needle in lines[0], (argv, r.stderr)
        assert lines[1] == f"(`{command} --help` lists the {'commands' if argv[0] == 'smaple' else 'options'})", lines
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    for prefix in ("--over", "--overwr", "--resum", "--no-prog"):
        with pytest.raises(SystemExit) as e:
            cli.main(["train", "--out", str(trained), prefix, *_sets(["steps=31"])])
        assert e.value.code == 2 and f"unrecognized arguments: {prefix}" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before


def test_twentythird_round_a_config_json_left_stale_by_a_full_disk_is_not_called_edited(trained, tmp_path, capsys,
                                                                                        monkeypatch, rename_fails):
    """After a full disk at config.json, after a good checkpoint, the next `train --resume` warned that config.json had
    been edited by hand (it held the earlier checkpoint's settings), and it stayed so until the next checkpoint. Now the
    resume rewrites it from ckpt.pt's settings at its start and says so; with the disk still full it stops there."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    resume = ["train", "--resume", "--out", str(run), "--no-progress", "--set"]
    rename_fails("config.json")
    _expect_one_line_error(capsys, [*resume, "steps=40"], "ckpt.pt (step 40) was saved", "config.json")
    _expect_one_line_error(capsys, [*resume, "steps=50"], f"No space left on device: {run / 'config.json'}",
                           "the last checkpoint (step 40) was kept", "free some space")
    assert checkpoint.load_checkpoint(run / "ckpt.pt")["step"] == 40
    assert json.loads((run / "config.json").read_text())["steps"] == 30
    capsys.readouterr()
    monkeypatch.undo()                          # the disk has room again
    from ddimlab import train as train_module
    real_batch, seen = train_module.get_batch, []

    def config_at_start(*a, **k):               # what config.json holds when the training starts
        seen.append(json.loads((run / "config.json").read_text())["steps"])
        return real_batch(*a, **k)
    monkeypatch.setattr(train_module, "get_batch", config_at_start)
    assert cli.main([*resume, "steps=50"]) == 0
    out, err = capsys.readouterr()
    assert "differs from the checkpoint's settings" not in err and "warning" not in err, err
    assert f"{run / 'config.json'} held an earlier checkpoint's settings (its rewrite after the checkpoint of step 40 " \
           "failed): rewritten from ckpt.pt's" in out, out
    assert seen[0] == 40 and json.loads((run / "config.json").read_text())["steps"] == 50


def test_twentythird_round_sampling_a_run_still_in_training_says_which_checkpoint(trained, tmp_path, capsys):
    """`sample --checkpoint RUN` while a `train` command trained RUN gave no word that the weights were those of its last
    checkpoint, which the next one replaces; now a note says so, with the step (the .npz records the weights' sha256)."""
    from ddimlab import files

    sample = ["sample", "--checkpoint", str(trained), "--n", "2", "--steps", "2", "--no-progress", "--out"]
    note = f"note: {trained} is still being trained (a train command holds it): these are the weights of its last " \
           f"checkpoint, step 30; the next checkpoint replaces them"
    with files.locked(trained / ".train.lock", busy="held"):       # as `train` holds it while it trains
        assert cli.main([*sample, str(tmp_path / "a")]) == 0
        assert note in capsys.readouterr().out
        assert cli.main(["interpolate", "--checkpoint", str(trained / "ckpt.pt"), "--n", "2", "--steps", "2",
                         "--no-progress", "--out", str(tmp_path / "i")]) == 0
        assert note in capsys.readouterr().out
    assert cli.main([*sample, str(tmp_path / "b")]) == 0             # the train command has finished
    assert "still being trained" not in capsys.readouterr().out


def test_twentythird_round_audit_the_training_note_in_reproduce_and_only_for_runs(trained, tmp_path, capsys):
    """Mutation audit: `reproduce` says the note too (its own call), and a checkpoint that is not a ddimlab run (a
    diffusers folder, no step) gets none even where a held .train.lock lies beside it."""
    from ddimlab import files

    net, _ = checkpoint.load_model(trained)
    pipe = checkpoint.save_diffusers_folder(net, tmp_path / "d", schedule.make_alpha_bar())
    with files.locked(trained / ".train.lock", busy="held"), files.locked(pipe / ".train.lock", busy="held"):
        assert cli.main(["reproduce", "table2", "--checkpoint", str(trained), "--n-images", "2", "--steps", "2",
                         "--no-progress", "--out", str(tmp_path / "t2")]) == 0
        assert f"note: {trained} is still being trained" in capsys.readouterr().out
        assert cli.main(["sample", "--checkpoint", str(pipe), "--n", "2", "--steps", "2", "--no-progress",
                         "--out", str(tmp_path / "s")]) == 0
        assert "still being trained" not in capsys.readouterr().out


def test_twentythird_round_audit_an_older_but_equal_config_json_is_not_rewritten(trained, tmp_path, capsys):
    """Mutation audit: config.json older than ckpt.pt (a `cp -r` without -p can copy it first) but with ckpt.pt's
    settings is not stale: the resume says nothing of an earlier checkpoint's settings and does not rewrite it."""
    import os

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    t = (run / "ckpt.pt").stat().st_mtime_ns
    os.utime(run / "config.json", ns=(t - 10 ** 9, t - 10 ** 9))
    assert cli.main(["train", "--resume", "--out", str(run), "--no-progress", "--set", "steps=31"]) == 0
    assert "held an earlier checkpoint's settings" not in capsys.readouterr().out


def test_twentythird_round_audit_a_broken_config_json_is_called_edited_not_stale(trained, tmp_path, capsys):
    """Mutation audit: a config.json that is no longer JSON (a hand edit gone wrong, newer than ckpt.pt) is warned about
    as edited, not taken for a stale copy and rewritten; one that is absent is neither (the next checkpoint writes it)."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "config.json").write_text('{"steps": 40,')
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["train", "--resume", "--out", str(run), "--no-progress", "--set", "steps=31"]) == 0
    out, err = capsys.readouterr()
    assert "config.json differs from the checkpoint's settings in all (it is not the JSON object it was)" in err, err
    assert "held an earlier checkpoint's settings" not in out, out
    (run / "config.json").unlink()
    assert cli.main(["train", "--resume", "--out", str(run), "--no-progress", "--set", "steps=32"]) == 0
    assert "held an earlier checkpoint's settings" not in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["steps"] == 32


def test_twentyfourth_round_a_locale_without_utf8_writes_the_tables_as_utf8(trained, tmp_path):
    """Under a C locale without UTF-8 mode (LC_ALL=C, PYTHONUTF8=0: an old server, a cron job, a minimal container)
    text files were written in ASCII: `reproduce table2` sampled, then failed at table2.md's '–' ("'ascii' codec can't
    encode character"), writing neither table; `lab` printed its whole table, then failed on '×' and wrote nothing.
    The tables are UTF-8 whatever the locale; the terminal gets them with the non-ASCII characters escaped."""
    args = ["reproduce", "table2", "--checkpoint", trained, "--n-images", "2", "--steps", "2", "--no-progress", "--out"]
    ascii_locale = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}  # "": unset
    r = _run(*args, tmp_path / "c", env=ascii_locale)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "3\\xd732\\xd732" in r.stdout, r.stdout                 # the note's '×' (3×32×32), escaped on an ASCII terminal
    assert cli.main([*args[:-1], "--out", str(tmp_path / "utf8")]) == 0     # here, in this process: the same table
    assert (tmp_path / "c" / "table2.md").read_bytes() == (tmp_path / "utf8" / "table2.md").read_bytes()
    assert "3×32×32" in (tmp_path / "c" / "table2.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("terminal", ["closed", "closed under nohup"])
def test_twentyfourth_round_a_closed_terminal_keeps_the_training(tmp_path, terminal):
    """An ssh session that dropped (or a closed terminal window) sent `train` SIGHUP, which ended it where it stood: every
    step since the last checkpoint lost, .train.lock and an empty log.jsonl left. Under `nohup` (SIGHUP ignored) the
    first line printed to the gone terminal was an OSError (EIO) that stopped the run and deleted its folder. Now a
    hang-up is a stop with a checkpoint, as SIGTERM is; under nohup it is still ignored and output goes nowhere. The
    terminal is a real pseudo-terminal, `train`'s controlling one, whose closing the kernel turns into the SIGHUP."""
    import fcntl
    import os
    import pty
    import signal
    import termios
    import time

    out, log = tmp_path / "run", tmp_path / "run" / "log.jsonl"
    nohup = terminal.endswith("nohup")

    def controlled():                           # in the child, after setsid: the pty is its terminal (as a login's)
        if nohup:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def logged():
        return len(log.read_text().splitlines()) if log.exists() else 0

    def wait_for(lines):
        t0 = time.time()
        while logged() < lines:
            assert p.poll() is None and time.time() - t0 < 240, p.returncode
            time.sleep(0.05)

    master, tty = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "ddimlab", "train", "--out", str(out), "--no-progress", *_sets(TINY),
                          "--set", "steps=100000", "--set", "ckpt_every=100000", "--set", "log_every=2"],
                         stdin=tty, stdout=tty, stderr=tty, start_new_session=True, preexec_fn=controlled,
                         env={**os.environ, "DDIMLAB_DEBUG": ""})
    os.close(tty)
    wait_for(2)
    os.close(master)                            # the terminal goes: SIGHUP, and EIO for every later write
    if nohup:
        wait_for(logged() + 2)                  # still training, printing its loss lines to no one
        p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 130
    state = checkpoint.load_checkpoint(out / "ckpt.pt")
    assert state["step"] >= 4 and state["config"]["steps"] == 100000, state["step"]
    assert not (out / ".train.lock").exists()


def test_twentyfourth_round_a_run_whose_name_is_not_utf8_resumes(trained, tmp_path):
    """A run folder whose name holds bytes that are not UTF-8 (a Latin-1 name on a UTF-8 system; any non-ASCII name
    under a C locale) trained and sampled, but `train --resume` called its intact ckpt.pt "truncated or corrupted (an
    interrupted download or copy?)" and advised starting again with --overwrite: torch cannot memory-map a file whose
    name is not UTF-8. Such a checkpoint is read whole instead."""
    import os

    run = tmp_path / os.fsdecode(b"r\xe9sum\xe9")
    shutil.copytree(trained, run)
    r = _run("train", "--resume", "--out", run, "--no-progress", "--set", "steps=31")
    assert r.returncode == 0 and "corrupted" not in r.stderr, r.stderr
    assert checkpoint.load_checkpoint(run / "ckpt.pt")["step"] == 31


def test_twentyfourth_round_a_device_as_checkpoint_is_not_called_missing(tmp_path):
    """`--checkpoint /dev/null` (or a named pipe) said "no checkpoint file at /dev/null", which is there; now it says
    what it is and what to pass, as --input and --latents do (round 9)."""
    r = _run("sample", "--checkpoint", "/dev/null", "--n", "1", "--out", tmp_path / "x")
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 2, r.stderr
    assert "not a regular file (a pipe, socket or device): /dev/null; pass a ckpt.pt or run folder" in r.stderr, r.stderr


def test_twentyfifth_round_a_loop_of_symbolic_links_is_named_for_what_it_is(trained, tmp_path, capsys, monkeypatch):
    """A symbolic link that goes round a loop (a -> b -> a, or ckpt.pt -> ckpt.pt), given as --checkpoint, --input,
    --latents or --out, was said to be missing: "--checkpoint a does not exist", "a is a folder with neither ckpt.pt
    nor config.json" (it has a ckpt.pt, the loop), "--out a is a symbolic link to b, which does not exist" (b is
    there, a link); DDIMLAB_CACHE as such a link: "cannot make the cache folder a: File exists". `train` into a folder
    whose ckpt.pt or config.json was such a link trained every step and then failed at the save ("[Errno 40] Too many
    levels of symbolic links", "... free some space"), and one whose samples/ was such a link failed at the first grid
    after saving ckpt.pt; `reproduce table1` said "[Errno 40] Too many levels of symbolic links: OUT/samples/eta0_S2".
    log.jsonl as a link to nothing wrote the run's log at the link's target, outside the run folder. Each is now one
    line naming the loop (or the link to nothing), before any work; the run folder keeps only its links."""
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    a, loop = str(tmp_path / "a"), "goes round a loop of symbolic links"
    run = ["--steps", "2", "--no-progress"]
    _expect_one_line_error(capsys, ["sample", "--checkpoint", a, *run, "--out", str(tmp_path / "s")], f"--checkpoint {a}", loop)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "ckpt.pt").symlink_to("ckpt.pt")
    _expect_one_line_error(capsys, ["sample", "--checkpoint", str(linked), *run, "--out", str(tmp_path / "s")],
                           str(linked / "ckpt.pt"), loop)
    _expect_one_line_error(capsys, ["invert", "--checkpoint", str(trained), "--input", a, *run, "--out", str(tmp_path / "s")],
                           loop)
    _expect_one_line_error(capsys, ["interpolate", "--checkpoint", str(trained), "--latents", a, *run, "--out",
                                    str(tmp_path / "s")], loop)
    _expect_one_line_error(capsys, ["reproduce", "table2", "--checkpoint", str(trained), *run, "--out", a], f"--out {a}", loop)
    _expect_one_line_error(capsys, ["lab", "--no-progress", "--out", a], loop)
    monkeypatch.setenv("DDIMLAB_CACHE", a)
    _expect_one_line_error(capsys, ["demo", "--no-progress", "--out", str(tmp_path / "d")], "cache folder", loop)
    monkeypatch.undo()
    _expect_one_line_error(capsys, ["sample", "--checkpoint", str(trained), *run, "--out", str(tmp_path / "a" / "x")], loop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "linked"]
    for name in ("ckpt.pt", "config.json", "samples"):
        out = tmp_path / f"run_{name}"
        out.mkdir()
        (out / name).symlink_to(name)
        _expect_one_line_error(capsys, ["train", "--preset", "digits", "--out", str(out), "--no-progress", *_sets(TINY)],
                               str(out / name), loop)
        assert [p.name for p in out.iterdir()] == [name]            # no log.jsonl: not one step was trained
    out = tmp_path / "run_samples"                                  # a table1 cell goes into samples/
    _expect_one_line_error(capsys, ["reproduce", "table1", "--checkpoint", str(trained), "--features", "random",
                                    "--n-samples", "2", "--etas", "0", *run, "--out", str(out)], str(out / "samples"), loop)
    assert [p.name for p in out.iterdir()] == ["samples"]
    out, elsewhere = tmp_path / "run_log", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "log.jsonl").symlink_to(elsewhere / "log.jsonl")
    _expect_one_line_error(capsys, ["train", "--preset", "digits", "--out", str(out), "--no-progress", *_sets(TINY)],
                           str(out / "log.jsonl"), "which does not exist")
    assert [p.name for p in out.iterdir()] == ["log.jsonl"] and not any(elsewhere.iterdir())


def test_twentyfifth_round_a_loop_at_samples_does_not_stop_a_run_without_grids(tmp_path, capsys):
    """train refuses a samples/ that goes round a loop of symbolic links and says to pass n_samples=0 (no grids): a run
    that does so trains, and leaves the link as it was."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "samples").symlink_to("samples")
    assert cli.main(["train", "--preset", "digits", "--out", str(out), "--no-progress", *_sets(TINY), "--set", "steps=1",
                     "--set", "n_samples=0"]) == 0, capsys.readouterr().err
    assert (out / "ckpt.pt").is_file() and (out / "samples").is_symlink()


def test_twentysixth_round_reproduce_refuses_samples_that_cannot_fit_on_the_disk(trained, tmp_path, capsys):
    """`reproduce table1 --n-samples 9223372036854775807` counted the sample files already there one by one, without a
    word, until stopped: it now says at once that the samples cannot fit on the disk, and leaves nothing behind."""
    out = tmp_path / "t1"
    _expect_one_line_error(capsys, ["reproduce", "table1", "--checkpoint", str(trained), "--features", "random",
                                    "--n-samples", str(2 ** 63 - 1), "--etas", "0", "--steps", "5", "--out", str(out),
                                    "--no-progress"],
                           "1 cell of 9,223,372,036,854,775,807 samples take at least", "ask for fewer samples")
    assert not out.exists()


def test_twentysixth_round_a_file_on_the_way_of_out_is_named(trained, tmp_path, capsys, monkeypatch):
    """`train --out F/run` and `reproduce table1 --out F/t1`, F a file, said "cannot create the folder F/run (Not a
    directory)", naming neither F nor what is wrong with it (sample and invert named it already), and DDIMLAB_CACHE=F/c
    "cannot make the cache folder F/c ($DDIMLAB_CACHE): Not a directory": now F is named as a file, and nothing is
    written."""
    (tmp_path / "f").write_text("mine")
    _expect_one_line_error(capsys, ["train", "--out", str(tmp_path / "f" / "run"), "--no-progress", *_sets(TINY)],
                           f"cannot create the folder {tmp_path / 'f' / 'run'} ({tmp_path / 'f'} is a file, not a folder); "
                           "choose another --out")
    _expect_one_line_error(capsys, ["reproduce", "table1", "--checkpoint", str(trained), "--features", "random",
                                    "--n-samples", "2", "--etas", "0", "--steps", "2", "--out", str(tmp_path / "f" / "t1"),
                                    "--no-progress"], f"({tmp_path / 'f'} is a file, not a folder)")
    monkeypatch.setenv("DDIMLAB_CACHE", str(tmp_path / "f" / "c"))
    _expect_one_line_error(capsys, ["sample", "--checkpoint", "ddpm-cifar10", "--n", "1", "--out", str(tmp_path / "s"),
                                    "--no-progress"],
                           f"cannot make the cache folder {tmp_path / 'f' / 'c'} ($DDIMLAB_CACHE): {tmp_path / 'f'} is a file, "
                           "not a folder; point DDIMLAB_CACHE at a folder you can write")
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_text() == "mine"


def test_round_29_the_benchmark_scripts_say_sigterm_as_the_commands_do(tmp_path):
    """Round 28's leftover: SIGTERM (`kill`, `timeout`) ended a benchmarks/ script where it stood (exit -15, no word),
    while the commands say "interrupted: terminated (SIGTERM)" and exit 130. `cli.one_line_errors`, which every script's
    entry runs its work in, now turns it into the interrupt (here it arrives in the work, after the arguments are read)."""
    scripts = {"ode_bits.py": ("main", "measure", ["--cache", str(tmp_path)]),
               "digits_recipes.py": ("main", "compare", ["--cache", str(tmp_path)]),
               "bench_samplers.py": ("main", "run", []), "bench_unet.py": ("cli", "run", ["--preset", "tiny"])}
    code = ("import signal\n"
            "def stop(*a, **k):\n    signal.raise_signal(signal.SIGTERM)\n"
            f"for name, (entry, work, argv) in {scripts!r}.items():\n"
            "    script = load_script('benchmarks/' + name)\n    setattr(script, work, stop)\n"
            "    script.need_diffusers = lambda prog: None\n    sys.argv = [name]\n"
            "    try:\n        getattr(script, entry)(argv)\n"
            "    except SystemExit as e:\n        print(e.code, file=sys.stderr)\n")
    r = _run_scripts(code)
    assert r.returncode == 0 and r.stderr.splitlines() == [line for name in scripts for line in
                                                           (f"{name}: interrupted: terminated (SIGTERM)", "130")], r.stderr


def test_round_29_a_value_that_begins_with_a_dash_is_said_how_to_give(capsys):
    """Round 28's leftover: `--out -dash.png` got argparse's "argument --out: expected one argument", which reads as if no
    value had been given. Now the line says how to give it (`--out=-dash.png`; `--input ./-a.png`, as --input takes
    several); a value really left out (the next word an option) is said as before."""
    for argv, said in ((["sample", "--checkpoint", "x", "--out", "-dash.png"],
                        "argument --out: expected one argument (a value that begins with '-' is read as an option: write "
                        "--out=-dash.png)"),
                       (["sample", "--checkpoint", "x", "--solver", "-e"], "write --solver=-e)"),
                       (["invert", "--checkpoint", "x", "--input", "-a.png"], "write --input ./-a.png for a file of that name)"),
                       (["sample", "--checkpoint", "x", "--sampler", "--out", "x"],
                        "--sampler/--solver: expected one argument\n")):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and said in err and len(err.splitlines()) == 2, err


def test_round_29_a_deleted_current_folder_is_said_in_one_line(tmp_path):
    """Round 28's leftover: in a current folder that had been deleted every command stopped with "Intel oneMKL FATAL
    ERROR: Cannot load .../libtorch_cpu.so" (torch's import; exit 2), which names neither the cause nor the fix. Now one
    line says it, before torch is imported."""
    gone = tmp_path / "gone"
    gone.mkdir()
    code = f"import os, runpy, sys\nos.chdir({str(gone)!r})\nos.rmdir({str(gone)!r})\nsys.argv = ['ddimlab', 'lab']\n" \
           "runpy.run_module('ddimlab', run_name='__main__')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr == ("ddimlab: error: the current folder no longer exists (it was deleted or "
                                              "moved): cd to a folder that exists and run again\n"), (r.returncode, r.stderr)


def test_round_29_the_scripts_refuse_more_threads_than_train_takes():
    """`bench_unet.py --threads 100000` crashed the process (a segmentation fault, exit -11, with diffusers' import
    failing to map its libraries), and digits_recipes.py took it until training refused it, after the argument check.
    Both now take train's rule (`devices.most_threads()`: 4 per CPU, at least 64) as an argparse range."""
    most = devices.most_threads()
    code = ("for name in ('bench_unet', 'digits_recipes'):\n"
            "    sys.argv = [name + '.py']\n"
            "    try:\n        load_script(f'benchmarks/{name}.py').main(['--threads', '100000'])\n"
            "    except SystemExit as e:\n        print(e.code)\n")
    r = _run_scripts(code)
    assert r.returncode == 0 and r.stdout.split() == ["2", "2"], (r.returncode, r.stdout, r.stderr)
    said = [line for line in r.stderr.splitlines() if "error" in line]
    assert said == [f"{name}.py: error: argument --threads: must be an integer in 1..{most}, got 100000"
                    for name in ("bench_unet", "digits_recipes")], r.stderr


def test_round_29_a_blank_file_or_folder_of_a_script_is_refused(capsys, monkeypatch):
    """`bench_unet.py --json "$UNSET"` ran the whole benchmark and wrote its results nowhere (a blank --json was read as
    not given), and `gpu_check.py --out ""` put the run in a throwaway folder; `cli.folder` refused a blank --cache of the
    other scripts already. `gpu_check.py --out -` made a folder named "-", and `--json -` a file, where the commands
    refuse `--out -`. Now each is said, before any work, as argparse says a bad value."""
    for script, argv, said in (("bench_unet", ["--json", " "], "argument --json: is blank (' '), which would write no file; "
                                                               "give a file name"),
                               ("gpu_check", ["--out", ""], "argument --out: is blank (''), which would be the current folder; "
                                                           "give a folder"),
                               ("gpu_check", ["--out", "-"], "argument --out: '-' names standard output, but this writes files "
                                                            "there; give a folder"),
                               ("bench_unet", ["--json", "-"], "argument --json: '-' names standard output, but this writes "
                                                               "files there; give a file name")):
        module = load_script(f"benchmarks/{script}.py")
        monkeypatch.setattr(sys, "argv", [f"{script}.py"])
        for work in ("run", "check"):
            monkeypatch.setattr(module, work, lambda *a, **k: pytest.fail("the work started"), raising=False)
        with pytest.raises(SystemExit) as stop:
            module.main(argv)
        assert stop.value.code == 2 and said in capsys.readouterr().err


def test_round_29_out_dash_is_refused_by_every_command(tmp_path, capsys, monkeypatch):
    """`--out -` (standard output to many tools) was refused by sample, invert and interpolate, but train, lab, demo and
    reproduce made a folder named "-" and wrote into it (`rm -r -` does not remove it). Now each says it, making nothing."""
    monkeypatch.chdir(tmp_path)
    for argv in (["lab", "--n", "8", "--image-d", "0"], ["demo", "--skip-train"], ["train", "--set", "steps=1"],
                 ["reproduce", "table2", "--checkpoint", "x"]):
        _expect_one_line_error(capsys, [*argv, "--out", "-", "--no-progress"],
                               "--out '-' names standard output; this command writes its files into a folder")
    _expect_one_line_error(capsys, ["sample", "--checkpoint", "x", "--out", " - "],
                           "--out ' - ' names standard output; this command writes a PNG and an .npz")
    _expect_one_line_error(capsys, ["train", "--set", "out=-", "--set", "steps=1", "--no-progress"],   # round 29's leftover
                           "out '-' names standard output to many tools; a run is a folder")
    assert list(tmp_path.iterdir()) == []


def test_round_30_interpolate_decodes_latents_with_the_solver_that_made_them(trained, tmp_path, capsys):
    """`interpolate --latents` of `invert --sampler heun` decoded with DDIM, so its two ends were not the images inverted
    (on toy.default_mixture's exact scores DDIM missed them by 7 times Heun's RMS at 20 steps, 13 times at 50). It now
    decodes with the ODE solver the file records and says so: its ends are invert's reconstructions (ode.heun's decode,
    recorded by `invert`); DDIM's decode of the same latents is not. A file without an ODE solver is decoded by DDIM, with
    x̂_0 clipped where `sample --clip` made it (without, the ends of a clipped sample's path were not its images)."""
    ckpt, images = str(trained / "ckpt.pt"), tmp_path / "in.npz"
    np.savez(images, x0=(torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1).numpy())
    assert cli.main(["invert", "--checkpoint", ckpt, "--input", str(images), "--steps", "3", "--sampler", "heun",
                     "--no-progress", "--out", str(tmp_path / "inv")]) == 0
    assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / "inv.npz"), "--n", "3",
                     "--no-progress", "--out", str(tmp_path / "path")]) == 0
    assert "3 images along slerp(z0, z1, λ), decoded by heun ->" in capsys.readouterr().out
    inv, path = np.load(tmp_path / "inv.npz"), np.load(tmp_path / "path.npz")
    ends = torch.as_tensor(path["samples"][[0, -1]])
    torch.testing.assert_close(ends, torch.as_tensor(inv["recon"]), rtol=0, atol=1e-4)
    net, abar = checkpoint.load_model(ckpt)
    by_ddim = ddim_sample(eps_fn(net), torch.as_tensor(inv["x_T"]), abar, schedule.timesteps(3, 1000))
    assert float((by_ddim - ends).abs().max()) > 1e-2 and str(path["sampler"]) == "heun"
    np.savez(tmp_path / "bare.npz", x_T=inv["x_T"])
    assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / "bare.npz"), "--n", "3", "--steps", "3",
                     "--no-progress", "--out", str(tmp_path / "plain")]) == 0
    torch.testing.assert_close(torch.as_tensor(np.load(tmp_path / "plain.npz")["samples"][[0, -1]]), by_ddim, rtol=0, atol=1e-4)
    for clip, said in (([], "decoded by ddim ->"), (["--clip"], "decoded by ddim (clipping x0) ->")):   # as `sample` made them
        assert cli.main(["sample", "--checkpoint", ckpt, "--steps", "3", "--n", "2", *clip, "--no-progress", "--out",
                         str(tmp_path / f"s{len(clip)}")]) == 0
        assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / f"s{len(clip)}.npz"), "--n", "3",
                         "--no-progress", "--out", str(tmp_path / f"p{len(clip)}")]) == 0
        assert said in capsys.readouterr().out
        made, path = np.load(tmp_path / f"s{len(clip)}.npz"), np.load(tmp_path / f"p{len(clip)}.npz")
        np.testing.assert_allclose(path["samples"][[0, -1]], made["samples"], rtol=0, atol=1e-4)
    # files of other tools: a sampler as an object array ("Object arrays cannot be loaded", naming neither) is not
    # ours, and --lower-order-final beside a solver that lacks it (heun: "takes no option", a traceback) is not used
    for x_T, shown in ((np.zeros(64, np.float32), "(64,)"), (np.float32(0.5), "()")):    # were "latents of shape ()"
        np.savez(tmp_path / "flat.npz", x_T=x_T)
        _expect_one_line_error(capsys, ["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / "flat.npz"),
                                        "--out", str(tmp_path / "f")],
                               f"flat.npz holds an x_T of shape {shown}, not a stack of latents (N, C, H, W), but the model "
                               f"makes (1, 8, 8) images")
    for name, extra, said in (("objs", dict(sampler=np.array([None], dtype=object)), "decoded by ddim ->"),
                              ("lof", dict(sampler=np.array("heun"), lower_order_final=np.array(True)), "decoded by heun ->")):
        np.savez(tmp_path / f"{name}.npz", x_T=inv["x_T"], **extra)
        assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / f"{name}.npz"), "--n", "3",
                         "--steps", "3", "--no-progress", "--out", str(tmp_path / f"o{name}")]) == 0
        assert said in capsys.readouterr().out


def test_round_31_interpolate_says_when_the_file_records_a_sampler_it_does_not_decode_with(trained, tmp_path, capsys):
    """A --latents file whose recorded sampler is none of interpolate's ("heun_invert", "heun " with a trailing space,
    another tool's name) was decoded by DDIM without a word, its ends other images than the file's samples; it is now
    warned of, naming the recorded sampler and the decoder used. A sampler recorded as bytes (b"heun", which read as
    "b'heun'") is read as its text, and decodes with heun as a str would."""
    ckpt = str(trained / "ckpt.pt")
    assert cli.main(["sample", "--checkpoint", ckpt, "--steps", "3", "--n", "2", "--no-progress", "--out",
                     str(tmp_path / "s")]) == 0
    made = dict(np.load(tmp_path / "s.npz"))
    capsys.readouterr()
    for i, (recorded, said) in enumerate((("heun_invert", "decoded by ddim ->"), ("heun  ", "decoded by ddim ->"),
                                          (np.bytes_(b"heun"), "decoded by heun ->"))):
        np.savez(tmp_path / f"f{i}.npz", **{**made, "sampler": np.array(recorded)})
        argv = ["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / f"f{i}.npz"), "--n", "3", "--no-progress",
                "--out", str(tmp_path / f"o{i}")]
        assert cli.main(argv) == 0
        out, err = capsys.readouterr()
        assert said in out, out
        if isinstance(recorded, str):
            assert f"f{i}.npz records sampler {recorded!r}, not one that interpolate decodes with (ddim, euler, heun" in err, err
            assert "decoded by ddim, its latents may give other images than those it made; pass --sampler" in err, err
        else:
            assert "records sampler" not in err, err
    assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / "f0.npz"), "--n", "3", "--sampler",
                     "euler", "--no-progress", "--overwrite", "--out", str(tmp_path / "o0")]) == 0
    assert "decoded by euler, its latents may give other images than those it made\n" in capsys.readouterr().err


def test_round_31_afs_samplers_on_one_step_and_lower_order_final_below_4_steps_are_said_as_options(trained, tmp_path, capsys):
    """`--sampler ipndm` or `ipndm_vs` with --steps 1 stopped with the library's "ipndm with afs=True needs 2 steps or
    more ... pass afs=False" (ipndm_vs called ipndm, and afs no option of the command line); it names --sampler and
    --steps now. `interpolate --latents` of `sample --lower-order-final` at --steps 3 printed and recorded "(lower order
    final)", which below 4 steps changes no step (`sample` refuses it there); it is dropped there, kept from 4 on."""
    ckpt = str(trained / "ckpt.pt")
    for command, sampler in (("sample", "ipndm_vs"), ("interpolate", "ipndm")):
        _expect_one_line_error(capsys, [command, "--checkpoint", ckpt, "--sampler", sampler, "--steps", "1", "--no-progress",
                                        "--out", str(tmp_path / "x")],
                               f"--sampler {sampler} needs --steps 2 or more", "pass --steps 2 or more, or another --sampler")
    assert not list(tmp_path.iterdir())
    assert cli.main(["sample", "--checkpoint", ckpt, "--sampler", "dpm_solver_pp_3m", "--lower-order-final", "--steps", "5",
                     "--n", "2", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    for steps, said in (("3", "decoded by dpm_solver_pp_3m ->"), ("4", "decoded by dpm_solver_pp_3m (lower order final) ->")):
        assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / "s.npz"), "--steps", steps, "--n",
                         "3", "--no-progress", "--out", str(tmp_path / f"i{steps}")]) == 0
        assert said in capsys.readouterr().out
        assert bool(np.load(tmp_path / f"i{steps}.npz")["lower_order_final"]) == (steps == "4")


def test_round_31_interpolate_warns_of_recorded_steps_it_cannot_use(trained, tmp_path, capsys):
    """A --latents file recording steps that are no number of steps ("3.5", True, 0) stopped with Python's
    "invalid literal for int() with base 10: '3.5'" (naming neither file nor key) or the library's "number of steps S
    must be ... got 0" for a --steps never given; a spacing none of --spacing's choices was dropped without a word. Each
    is now a warning that the file's grid is not used, and the decode runs on the defaults. steps = 3.0 (a float, as
    another tool may store it) is 3 steps: the path's ends are the file's samples."""
    ckpt = str(trained / "ckpt.pt")
    assert cli.main(["sample", "--checkpoint", ckpt, "--steps", "3", "--n", "2", "--no-progress", "--out",
                     str(tmp_path / "s")]) == 0
    made = dict(np.load(tmp_path / "s.npz"))
    for i, (steps, spacing) in enumerate((("3.5", "uniform"), (True, "uniform"), (0, "uniform"),
                                          (3, "zigzag"), (3.0, "uniform"))):
        np.savez(tmp_path / f"f{i}.npz", **{**made, "steps": np.array(steps), "spacing": np.array(spacing)})
        capsys.readouterr()
        assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / f"f{i}.npz"), "--n", "3",
                         "--no-progress", "--out", str(tmp_path / f"o{i}")]) == 0
        err, path = capsys.readouterr().err, np.load(tmp_path / f"o{i}.npz")
        if steps == 3.0 and spacing == "uniform":
            assert "records steps" not in err and int(path["steps"]) == 3, err
            np.testing.assert_allclose(path["samples"][[0, -1]], made["samples"], rtol=0, atol=1e-4)
        else:
            assert (f"f{i}.npz records steps {str(np.array(steps))!r} with spacing {spacing!r}, not a number of steps "
                    f"(1, 2, ...) with a --spacing choice: not used") in err, err
            assert int(path["steps"]) == cli.DEFAULT_STEPS


def test_interpolate_warns_of_a_recorded_flag_that_is_not_true_or_false(trained, tmp_path, capsys):
    """A --latents file recording clip (or lower_order_final) as anything but True or False ("yes", 1, as another tool
    may store it) was decoded without the flag and without a word; it is now warned of, naming the file, the key and
    the value. True and False, as `sample` records them, decode as before. And one step or one image reads "1 step",
    "1 sample", not "1 steps"."""
    ckpt = str(trained / "ckpt.pt")
    assert cli.main(["sample", "--checkpoint", ckpt, "--steps", "1", "--n", "1", "--no-progress", "--out",
                     str(tmp_path / "one")]) == 0
    assert "1 sample (ddim, 1 step, uniform) in " in capsys.readouterr().out
    assert cli.main(["sample", "--checkpoint", ckpt, "--steps", "3", "--n", "2", "--clip", "--no-progress", "--out",
                     str(tmp_path / "s")]) == 0
    made = dict(np.load(tmp_path / "s.npz"))
    for i, (clip, said) in enumerate(((np.array("yes"), "decoded by ddim ->"), (np.array(1), "decoded by ddim ->"),
                                      (np.array(True), "decoded by ddim (clipping x0) ->"),
                                      (np.array(False), "decoded by ddim ->"))):
        np.savez(tmp_path / f"f{i}.npz", **{**made, "clip": clip})
        capsys.readouterr()
        assert cli.main(["interpolate", "--checkpoint", ckpt, "--latents", str(tmp_path / f"f{i}.npz"), "--n", "3",
                         "--no-progress", "--out", str(tmp_path / f"o{i}")]) == 0
        out, err = capsys.readouterr()
        assert said in out, out
        warned = f"f{i}.npz records clip {str(clip)!r}, not True or False: not used, decoded without --clip"
        assert (warned in err) == (clip.dtype.kind != "b"), err


def test_round_32_lab_and_demo_show_a_progress_bar_unless_asked_not_to(tmp_path, capsys, monkeypatch):
    """`lab` (1.5 to 3.5 minutes at its defaults) and the demo's first part printed nothing until a whole table was done,
    and their --no-progress, "no progress bar", did nothing: there was no bar. Each table now has one, over its sampler
    steps, that --no-progress turns off."""
    from ddimlab import demo

    monkeypatch.setattr(demo, "LAB", dict(n=8, image_d=4, image_n=8))
    small_lab_tables(monkeypatch)
    lab_args = ["lab", "--n", "8", "--image-d", "4", "--image-n", "8"]
    for argv in (lab_args, ["demo", "--skip-train"]):
        assert cli.main([*argv, "--out", str(tmp_path / f"{argv[0]}_bar")]) == 0
        err = capsys.readouterr().err
        assert "table 1, d = 2: 100%" in err and "table 1, d = 4: 100%" in err, err
        assert cli.main([*argv, "--out", str(tmp_path / f"{argv[0]}_quiet"), "--no-progress"]) == 0
        assert "table 1" not in capsys.readouterr().err


def test_round_32_reproduce_table1_names_its_features(trained, tmp_path, capsys):
    """`reproduce table1 --features digits` and `--features random` headed both tables "Fréchet distance (injected
    features)": two tables of distances on other scales (the untrained tiny model scored about 370 with the one and 1.2
    with the other), which the files did not tell apart. The heading now names the features; a name without a
    feature_fn, whose table is Inception's, is refused."""
    from ddimlab import tables

    for features, name in (("digits", "digits-classifier features"), ("random", "random conv-net features, a smoke test")):
        assert cli.main(["reproduce", "table1", "--checkpoint", str(trained), "--features", features, "--n-samples", "2",
                         "--steps", "2", "--etas", "0", "--no-progress", "--out", str(tmp_path / features)]) == 0
        heading = (tmp_path / features / "table1.md").read_text(encoding="utf-8").splitlines()[0]
        assert heading.startswith(f"# DDIM Table 1: Fréchet distance ({name}), measured, 2 samples"), heading
    capsys.readouterr()
    with pytest.raises(ValueError, match="features names a feature_fn .* without one"):
        tables.reproduce_table1(lambda x, t: x, tmp_path / "lib", features="my features", shape=(1, 8, 8))
    assert not (tmp_path / "lib").exists()


def test_round_32_reproduce_table2_counts_its_network_calls(trained, tmp_path):
    """`reproduce table2`'s bar moved once per S: at the paper's S list, S = 1000 (over half of the run: an hour of
    CIFAR-10 on a GPU) went without a tick. It counts the steps of each batch now, both ways."""
    r = _run("reproduce", "table2", "--checkpoint", trained, "--n-images", "3", "--steps", "2,3", "--batch-size", "2",
             "--device", "cpu", "--out", tmp_path / "t2")
    assert r.returncode == 0 and "20/20" in r.stderr, r.stderr      # 2 batches x 2 ways x (2 + 3) steps


def test_round_33_a_solver_on_its_ddim_steps_is_refused_by_sample_invert_and_interpolate(trained, tmp_path):
    """`sample --sampler heun --steps 1` (and deis_tab; the λ multistep solvers on 2 steps too) ran DDIM's steps while
    its output line and .npz named the solver; `invert` refused heun there and `sample` did not. All three commands now
    refuse a solver on as few steps as make it DDIM (cli.DDIM_UP_TO, checked on exact scores in
    test_round_33_the_solvers_take_ddims_steps_on_the_fewest_steps), saying what to pass; euler, DDIM at any number of
    steps, and ddim still run, and so does a solver on one step more."""
    ckpt, images = trained / "ckpt.pt", tmp_path / "in.npz"
    np.savez(images, x0=(torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1).numpy())
    for command, sampler, steps, extra in (("sample", "heun", 1, []), ("sample", "deis_tab", 1, []),
                                           ("sample", "dpm_solver_pp_2m", 2, []), ("invert", "heun", 1, ["--input", images]),
                                           ("interpolate", "unipc_3", 2, [])):
        r = _run(command, "--checkpoint", ckpt, "--sampler", sampler, "--steps", steps, *extra, "--out", tmp_path / "x")
        assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr
        which = ("one step, at clean data (t = -1), is" if steps == 1 else     # heun's first step is not DDIM's
                 "first step (no history yet) and its last (at clean data, t = -1) are")
        assert (f"--sampler {sampler} on {steps} step{'s' * (steps > 1)} takes DDIM's steps, though named {sampler}: its "
                f"{which} first order, DDIM's; pass --steps {steps + 1} or more, or --sampler ddim") in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]
    for sampler, steps in (("euler", 1), ("ddim", 1), ("dpm_solver_pp_2m", 3)):
        r = _run("sample", "--checkpoint", ckpt, "--sampler", sampler, "--steps", steps, "--n", "2", "--no-progress",
                 "--out", tmp_path / sampler)
        assert r.returncode == 0 and f"2 samples ({sampler}, {steps} step" in r.stdout, r.stderr


def test_round_33_train_says_an_error_before_its_warmup_note(tmp_path):
    """`train --set ch_mult=` (and --bf16 on the CPU) with warmup >= steps printed "note: warmup = 100 >= steps = 5 ..."
    and then stopped on the error: the architecture is now checked with the other settings (`train.validate_config`,
    through `unet.check_architecture`), before the note; a run that goes ahead still gets the note."""
    base = ["train", "--preset", "digits", "--no-progress", "--out", tmp_path / "run", *_sets(TINY)]
    for extra, said in ((["--set", "ch_mult="], "ch_mult must be a non-empty sequence of positive ints, got ()"),
                        (["--set", "attn_resolutions=5"], "attn_resolutions [5] are not feature-map sizes"),
                        (["--bf16"], "--bf16 (autocast) applies on CUDA only")):
        r = _run(*base, "--set", "steps=3", *extra)
        assert r.returncode == 1 and said in r.stderr and "warmup" not in r.stdout, (r.stdout, r.stderr)
    assert not (tmp_path / "run").exists()
    r = _run(*base, "--set", "steps=3", "--set", "n_samples=0")
    assert r.returncode == 0 and "note: warmup = 5 >= steps = 3" in r.stdout, r.stderr


def test_round_33_an_nrow_above_n_is_said_in_the_output_line(trained, tmp_path):
    """`sample --n 3 --nrow 10` drew one row of 3 and said nothing of the 10 it was asked for; the output line says it.
    The PNG is one row of 3 (width 3·(8 + 1) + 1 = 28 pixels at --scale 1), and --nrow up to --n says nothing more."""
    for nrow, said in (("10", " (--nrow 10 is more than --n 3: the grid is one row of 3)\n"), ("3", "s3.npz\n")):
        r = _run("sample", "--checkpoint", trained, "--steps", "2", "--n", "3", "--nrow", nrow, "--scale", "1",
                 "--no-progress", "--out", tmp_path / f"s{nrow}")
        assert r.returncode == 0 and r.stdout.endswith(said), r.stdout
        assert mpimg.imread(tmp_path / f"s{nrow}.png").shape[:2] == (10, 28)


def test_round_33_demo_gives_no_verdict_from_too_few_samples(trained, tmp_path, monkeypatch, capsys):
    """`demo --n 2` printed "resolved" and "not resolved" from standard errors over 2 samples (on two disjoint sets of
    2 real digits, no true difference, the FD's 3-SE verdict said resolved in 27 of 100; demo.MIN_VERDICT_N gives the
    measurements). Below demo.MIN_VERDICT_N = 15 the differences are printed with "too few samples to tell" and the
    heading says why; from 15 on the verdicts are as before."""
    from ddimlab import lab, pretrained, train

    model, config = train.load_trained(trained / "ckpt.pt")
    monkeypatch.setattr(lab, "main", lambda out, **kw: [])
    monkeypatch.setattr(pretrained, "digits_model", lambda steps, seed, progress: (model, config))
    for n in (2, 15):
        assert cli.main(["demo", "--out", str(tmp_path / str(n)), "--n", str(n), "--no-progress"]) == 0
        out = capsys.readouterr().out
        paired = [line for line in out.splitlines() if line.startswith("  DDIM")]
        assert len(paired) == 3 and ("below --n 15 the SEs are too rough to tell: no verdict" in out) == (n < 15), out
        for line in paired:
            if n < 15:
                assert line.count("(too few samples to tell)") == 2 and "resolved" not in line, line
            else:
                assert line.count("resolved)") == 2 and "too few" not in line, line


def test_round_34_train_says_a_folder_error_without_its_warmup_note(trained, tmp_path):
    """`train` with warmup >= steps printed "note: warmup = 100 >= steps = 3 ..." and then stopped on an error about its
    folder (one that holds a run, without --resume; a file), or printed it for a resumed run with nothing left to train.
    The note is now said once the run goes ahead (`train.train`'s on_start), and only then."""
    base = ["train", "--no-progress", *_sets(TINY), "--set", "steps=3", "--set", "n_samples=0"]
    (tmp_path / "a_file").write_text("mine")
    for out, said in ((trained, "already holds a run"), (tmp_path / "a_file", "is a file, not a run folder")):
        r = _run(*base, "--out", out)
        assert r.returncode == 1 and said in r.stderr and r.stdout == "", (r.stdout, r.stderr)
    r = _run("train", "--no-progress", "--resume", "--out", trained, "--set", "steps=3", "--set", "warmup=5")
    assert r.returncode == 0 and "nothing to train" in r.stdout and "note:" not in r.stdout, (r.stdout, r.stderr)
    r = _run(*base, "--out", tmp_path / "run")
    assert r.returncode == 0 and r.stdout.startswith("note: warmup = 5 >= steps = 3"), (r.stdout, r.stderr)


def test_round_34_invert_refuses_one_file_given_twice(trained, tmp_path):
    """`invert --input a.png a.png` (and ./a.png, a symbolic or hard link to it) inverted the one image twice: the output
    held two rows and an `inputs` record that read as two images. Refused now in one line before the work, naming the
    file; two files still invert as two images."""
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for path, value in ((a, 0), (b, 255)):
        mpimg.imsave(path, np.full((8, 8, 3), value, np.uint8))
    (tmp_path / "link.png").symlink_to(a)
    os.link(a, tmp_path / "hard.png")
    for second, said in ((a, f"--input lists {a} twice"), (f"{tmp_path}/./a.png", f"--input lists {a} and "),
                         (tmp_path / "link.png", "link.png, one file, twice"), (tmp_path / "hard.png", "hard.png, one file")):
        r = _run("invert", "--checkpoint", trained, "--steps", "2", "--input", a, second, "--out", tmp_path / "x")
        assert r.returncode == 1 and said in r.stderr and "give each file once" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr
    assert not list(tmp_path.glob("x*"))
    r = _run("invert", "--checkpoint", trained, "--steps", "2", "--no-progress", "--input", a, b, "--out", tmp_path / "x")
    assert r.returncode == 0 and "inverted 2 images" in r.stdout, r.stderr
    assert [Path(p).name for p in np.load(tmp_path / "x.npz")["inputs"]] == ["a.png", "b.png"]


def test_round_34_a_scheduler_config_with_its_betas_swapped_is_one_line_naming_the_file(trained, tmp_path):
    """A diffusers scheduler_config.json with beta_start > beta_end is refused (round 33), and `sample --checkpoint
    FOLDER` said so in one line naming the file, but advised "(a falling beta, as a table, goes to schedule.alpha_bar)",
    a Python function no config file can call. It now says to swap them or list the falling schedule as trained_betas,
    and a falling schedule given that way loads."""
    net, abar = checkpoint.load_model(trained)
    folder = tmp_path / "unet"
    checkpoint.save_diffusers_folder(net, folder, abar)
    sched = folder / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps({"beta_schedule": "linear", "beta_start": 0.02, "beta_end": 1e-4}))
    r = _run("sample", "--checkpoint", folder, "--n", "2", "--steps", "2", "--out", tmp_path / "s")
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr
    assert (f"error: {sched}: beta_start = 0.02 exceeds beta_end = 0.0001: beta rises with t, from beta_start at t = 0 "
            f"to beta_end at t = T - 1 (DDPM §4: 1e-4 to 0.02); swap them, or list a falling schedule as "
            f"trained_betas\n") in r.stderr, r.stderr
    assert not list(tmp_path.glob("s.*"))
    falling = torch.linspace(0.02, 1e-4, 1000, dtype=torch.float64)
    sched.write_text(json.dumps({"trained_betas": falling.tolist()}))
    torch.testing.assert_close(checkpoint.load_model(folder)[1], torch.cumprod(1 - falling, 0), rtol=1e-12, atol=0)


def test_round_34_reproduce_steps_that_are_not_integers_say_so(trained, tmp_path):
    """`reproduce --steps 2.5` (or 1e2, 10;20) said "--steps must be a comma-separated list, got '2.5'", which it is: what
    was wrong is that the values are not integers. Said now, with an example."""
    for steps in ("2.5", "1e2", "10;20"):
        r = _run("reproduce", "table2", "--checkpoint", trained, "--steps", steps, "--out", tmp_path / "t")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"error: --steps must be a comma-separated list of integers, e.g. 10,20,50; got {steps!r}\n" in r.stderr
    assert not (tmp_path / "t").exists()



def test_round_34_demo_refuses_more_samples_than_real_digits_before_its_first_part(tmp_path, monkeypatch, capsys):
    """`demo --n 2000` ran part 1 (the lab tables, minutes at the demo's sizes), trained or loaded the model and drew
    2000 samples with each sampler (DDPM's 1000 steps included), and only then stopped on "n must be an integer in
    2..1797, got 2000": the FD floor draws --n of the 1797 real digits without replacement. Said now before any work
    (`demo.check_n`); --n 1797 passes that check. (`demo --n 1000000000` went the same way, or was killed by the system
    when the network was called on all of them at once.)"""
    from ddimlab import demo, lab, pretrained

    started = []
    monkeypatch.setattr(lab, "main", lambda *a, **kw: started.append("lab") or [])
    monkeypatch.setattr(pretrained, "digits_model", lambda *a, **kw: started.append("model") or (None, None))
    monkeypatch.setattr(demo, "compare_samplers", lambda *a, **kw: started.append("samplers") or [])
    for n in ("1798", "1000000000"):
        _expect_one_line_error(capsys, ["demo", "--n", n, "--out", str(tmp_path / "d")],
                               f"--n must be an integer in 2..1797 (the FD of --n real digits, drawn from scikit-learn's "
                               f"1797, is the floor the samplers are scored against), got {n}")
        assert started == [] and not (tmp_path / "d").exists()
    assert demo.check_n(1797) == 1797


SECOND_CTRL_C = """
import runpy, signal, sys
from ddimlab import train

def ctrl_c_at_call(name, k):                  # as cli_support.signal_at_call, but keeping _check_weights' no_grad
    real, calls = getattr(train, name), []
    def interrupting(*a, **kw):
        calls.append(1)
        if len(calls) == k:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **kw)
    setattr(train, name, interrupting)

first, name, second, *argv = sys.argv[1:]
ctrl_c_at_call("get_batch", int(first))       # Ctrl-C: stop after this step, with a checkpoint
ctrl_c_at_call(name, int(second))             # again, while that checkpoint is made
sys.argv = ["ddimlab", *argv]
runpy.run_module("ddimlab", run_name="__main__")
"""


def test_round_37_a_second_ctrl_c_says_what_the_run_kept_and_how_to_go_on(tmp_path):
    """`train`: Ctrl-C asks for a checkpoint and a stop; a second Ctrl-C while that checkpoint is made (it stops at once)
    said only "train: interrupted", not whether anything was kept. It now names the step it stopped at and the last
    checkpoint kept (continue with --resume), or, before the first one, that nothing of the run was kept (and under
    --overwrite that the previous run is back). `python -m ddimlab train`, the two Ctrl-C raised from inside the work."""
    def train(first, second, out, *more, name="_check_weights"):
        argv = [str(first), name, str(second), "train", "--out", str(out), "--no-progress",
                *_sets(kv for kv in TINY if not kv.startswith("steps=")), "--set", "steps=100", *more]
        return _run_scripts(f"import sys\nsys.argv[1:] = {argv!r}\n{SECOND_CTRL_C}")

    run = tmp_path / "run"       # a checkpoint at step 2 (call 1 of _check_weights); Ctrl-C in step 3, again in its save
    p = train(3, 2, run, "--set", "ckpt_every=2")
    assert p.returncode == 130 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().endswith(f"train: interrupted: stopped at once at step 3; the last checkpoint, {run / 'ckpt.pt'} "
                                     f"of step 2, is kept; step 3 is lost: continue with --resume"), p.stderr
    assert checkpoint.load_checkpoint(run / "ckpt.pt")["step"] == 2
    # a second Ctrl-C while ckpt.pt is written waits for the write, which is then kept
    p = train(1, 1, run, "--set", "ckpt_every=2", "--resume", name="save_run")     # resumed at step 2: step 3 is its first
    assert p.returncode == 130 and p.stderr.strip().endswith(
        f"stopped at once at step 3; the last checkpoint, {run / 'ckpt.pt'} of step 3, is kept: continue with --resume")
    assert checkpoint.load_checkpoint(run / "ckpt.pt")["step"] == 3
    assert _run("train", "--out", run, "--resume", "--no-progress", "--set", "steps=4").returncode == 0
    assert checkpoint.load_checkpoint(run / "ckpt.pt")["step"] == 4
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    # before the first checkpoint: nothing kept; a new folder is removed again, --overwrite puts the previous run back
    p = train(2, 1, tmp_path / "new", "--set", "ckpt_every=50")
    assert p.returncode == 130 and p.stderr.strip().endswith(
        "stopped at once at step 2, before the run's first checkpoint: nothing of it is kept, run the command again to "
        "start over"), p.stderr
    assert not (tmp_path / "new").exists()
    p = train(2, 1, run, "--set", "ckpt_every=50", "--overwrite")
    assert p.returncode == 130 and f"nothing of it is kept, and the previous run goes back into {run}" in p.stderr, p.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_round_40_sample_on_a_run_with_a_schedule_this_ddimlab_does_not_know(trained, tmp_path, capsys):
    """`sample` on a run saved with a schedule name this ddimlab lacks said beta_schedule's "unknown schedule 'sigmoid';
    choose one of ...", as if the user had chosen it; it now names the file, the schedule and the known ones, in one line,
    and writes nothing."""
    state = torch.load(trained / "ckpt.pt", map_location="cpu", weights_only=True)
    path = checkpoint.save_checkpoint(tmp_path / "newer.pt", **{**state, "config": {**state["config"], "schedule": "sigmoid"}})
    _expect_one_line_error(capsys, ["sample", "--checkpoint", str(path), "--steps", "2", "--n", "2", "--out",
                                    str(tmp_path / "s"), "--no-progress"],
                           f"{path} was trained on the noise schedule 'sigmoid', which this ddimlab does not know (it knows "
                           "linear, cosine, quadratic)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newer.pt"]


def test_round_43_a_resume_that_changes_the_network_is_told_so_not_sent_to_another_setting(trained):
    """`train --resume --set ch=12` said "num_groups=8 must divide every width [12, 24] (ch * ch_mult)", and `--set
    resolution=7` that it "must be divisible by 2^(len(ch_mult)-1)": the new value was checked against the run's other
    shape settings before the resume's own rule, so a user who followed it and changed num_groups (or ch_mult) was then
    told that a resume keeps the network (the checkpoint's weights have its shape). The resume's rule now comes first;
    nothing in the run changes."""
    before = {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()}
    for key, value, saved in (("ch", 12, 16), ("resolution", 7, 8), ("num_groups", 3, 8)):
        r = _run("train", "--resume", "--out", trained, "--set", f"{key}={value}", "--no-progress")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.splitlines()[0] == (f"python -m ddimlab train: error: cannot resume {trained}: {key} is {value} but "
                                            f"the checkpoint has {saved}; use the run's settings or a new --out"), r.stderr
    assert {p.name: p.read_bytes() for p in trained.iterdir() if p.is_file()} == before


def test_round_44_no_command_writes_into_a_reproduce_cell(trained, tmp_path):
    """`sample`, `invert` and `interpolate` refused an --out inside a `reproduce table1` cell (round 20), but `lab`,
    `demo`, `train` and `reproduce` wrote there (exit 0): `lab`'s table1.png lay among the cell's 000000.png, which a
    later table or any tool reading the folder whole scores with them, and train's ckpt.pt or reproduce's table1.md read
    as the cell's. All seven now give the same one line (`train.refuse_sample_folder`), and the cell is left as it was.
    `python -m ddimlab` in a subprocess."""
    t1 = tmp_path / "t1"
    assert cli.main(["reproduce", "table1", "--checkpoint", str(trained), "--features", "random", "--n-samples", "2",
                     "--steps", "2", "--etas", "0", "--batch-size", "2", "--no-progress", "--out", str(t1)]) == 0
    cell = t1 / "samples" / "eta0_S2"
    before = {p.name: p.read_bytes() for p in cell.iterdir()}
    for command in (["lab", "--n", "8", "--image-d", "0"], ["demo", "--skip-train"],
                    ["train", *_sets(TINY)],
                    ["reproduce", "table1", "--checkpoint", trained, "--features", "random", "--n-samples", "2",
                     "--steps", "2", "--etas", "0", "--batch-size", "2"]):
        r = _run(*command, "--no-progress", "--out", cell)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (command, r.stderr)
        assert r.stderr.splitlines()[0] == (f"python -m ddimlab {command[0]}: error: --out {cell} is a folder of samples for FID "
                                    "(its settings.json says how `reproduce` made them), which holds only those; choose "
                                    "another --out"), (command, r.stderr)
    assert {p.name: p.read_bytes() for p in cell.iterdir()} == before


def test_round_45_a_pickle_as_checkpoint_is_said_to_be_one(trained, tmp_path):
    """`sample --checkpoint state.pkl`, a dict written with pickle.dump (Python's default protocol), printed torch's
    two-line warning "Detected pickle protocol 4 in the checkpoint ..." and then "is not a readable torch checkpoint
    (truncated, corrupted, or not a torch file)"; at protocol 2, "probably truncated or corrupted (an interrupted
    download or copy?)". It is now one line saying it is a pickle and how to save the weights; a ckpt.pt cut short is
    still told it is truncated. `python -m ddimlab` in a subprocess; nothing is written."""
    import pickle

    for protocol in (2, pickle.DEFAULT_PROTOCOL):
        with open(tmp_path / "state.pkl", "wb") as f:
            pickle.dump({"model": {"w": [0.5, 1.5]}, "step": 3}, f, protocol=protocol)
        r = _run("sample", "--checkpoint", tmp_path / "state.pkl", "--n", "1", "--steps", "2", "--out", tmp_path / "s")
        assert r.returncode == 1 and r.stderr.splitlines() == [
            f"python -m ddimlab sample: error: {tmp_path / 'state.pkl'} is a Python pickle (pickle.dump), not a torch "
            f"checkpoint (torch.save writes a zip archive; before PyTorch 1.6, a pickle that begins with torch's magic "
            f"number): save the weights with torch.save, or pass {checkpoint.LOADABLE}",
            "(run again with --debug for the traceback)"], (protocol, r.stderr)
    data = (trained / "ckpt.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    r = _run("sample", "--checkpoint", tmp_path / "cut.pt", "--n", "1", "--steps", "2", "--out", tmp_path / "s")
    assert r.returncode == 1 and r.stderr.splitlines()[0] == (
        f"python -m ddimlab sample: error: {tmp_path / 'cut.pt'} ({len(data) // 3} bytes) is not a readable torch "
        "checkpoint; it is probably truncated or corrupted (an interrupted download or copy?): PytorchStreamReader failed "
        "reading zip archive: failed finding central directory"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.pt", "state.pkl"]


def test_round_45_a_torchscript_file_as_checkpoint_is_one_line_without_torchs_warning(tmp_path):
    """`sample --checkpoint scripted.pt`, a TorchScript archive (torch.jit.save), printed torch's two-line warning that
    torch.load dispatches such files to torch.jit.load, then "probably truncated or corrupted (an interrupted download or
    copy?): Cannot use ``weights_only=True`` with TorchScript archives". Now one line saying what the file is. `python -m
    ddimlab` in a subprocess."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)        # torch 2.10+: TorchScript is deprecated
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    r = _run("sample", "--checkpoint", tmp_path / "scripted.pt", "--n", "1", "--steps", "2", "--out", tmp_path / "s")
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f"python -m ddimlab sample: error: {tmp_path / 'scripted.pt'} is a TorchScript archive (torch.jit.save), not a "
        f"checkpoint of weights: save the network's state_dict with torch.save, or pass {checkpoint.LOADABLE}",
        "(run again with --debug for the traceback)"], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scripted.pt"]


def test_round_44_a_text_file_as_checkpoint_is_not_called_an_interrupted_download(trained, tmp_path):
    """`sample --checkpoint hi.pt`, a text file, said "hi.pt (3 bytes) is not a readable torch checkpoint; it is probably
    truncated or corrupted (an interrupted download or copy?): 105", torch's unpickler reading "hi" as opcodes. It now
    says the file is text, what it begins with, and what --checkpoint takes; a ckpt.pt cut short is still told it is
    truncated. `python -m ddimlab` in a subprocess; nothing is written."""
    (tmp_path / "hi.pt").write_text("hi\n")
    data = (trained / "ckpt.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    for name, said in (("hi.pt", "is not a torch checkpoint but text (beginning 'hi'): torch.save writes a zip archive "
                                 f"(before PyTorch 1.6, a pickle); pass {checkpoint.LOADABLE}"),
                       ("cut.pt", f"({len(data) // 2} bytes) is not a readable torch checkpoint; it is probably truncated "
                                  "or corrupted (an interrupted download or copy?): PytorchStreamReader failed reading zip "
                                  "archive: failed finding central directory")):
        r = _run("sample", "--checkpoint", tmp_path / name, "--n", "1", "--steps", "2", "--out", tmp_path / "s")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.splitlines()[0] == f"python -m ddimlab sample: error: {tmp_path / name} {said}", r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.pt", "hi.pt"]


def test_round_46_a_folder_that_cannot_be_made_is_said_in_words_not_as_an_errno(tmp_path):
    """`lab --out f/x` with f a file said "[Errno 20] cannot create the folder f/x (f is a file, not a folder); choose
    another --out": an OSError built as OSError(errno, message) prints the number first. Now the words alone
    (`files.os_error`; the errno is kept on the exception). `python -m ddimlab` in a subprocess; nothing is written."""
    (tmp_path / "f").write_text("")
    r = subprocess.run([sys.executable, "-m", "ddimlab", "lab", "--out", "f/x", "--n", "8"], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path, env={**os.environ, "DDIMLAB_DEBUG": ""})
    assert r.returncode == 1 and r.stderr.splitlines() == [
        "python -m ddimlab lab: error: cannot create the folder f/x (f is a file, not a folder); choose another --out",
        "(run again with --debug for the traceback)"], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_round_46_an_old_format_checkpoint_of_pickle_protocol_4_is_named_for_what_it_is(tmp_path):
    """`sample --checkpoint old4.pt`, saved by torch.save(..., _use_new_zipfile_serialization=False, pickle_protocol=4),
    said "is not a readable torch checkpoint (truncated, corrupted, or not a torch file)" of a whole file; now what it
    is and how to convert it. `python -m ddimlab` in a subprocess; nothing is written."""
    torch.save({"w": torch.zeros(2)}, tmp_path / "old4.pt", _use_new_zipfile_serialization=False, pickle_protocol=4)
    r = _run("sample", "--checkpoint", tmp_path / "old4.pt", "--n", "1", "--steps", "2", "--out", tmp_path / "s")
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f"python -m ddimlab sample: error: {tmp_path / 'old4.pt'} is a torch checkpoint in the format before PyTorch 1.6 "
        f"pickled with protocol 4, which torch's weights-only loader cannot read (it reads 2 and 3), and ddimlab loads no "
        f"file by running its code: save the weights again where they were made, with torch.save's default format; or "
        f"pass {checkpoint.LOADABLE}", "(run again with --debug for the traceback)"], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old4.pt"]


def test_round_46_an_out_that_is_a_dangling_link_says_what_to_do_as_lab_does(tmp_path):
    """`train --out dl`, dl a symbolic link to nothing, said only "--out dl is a symbolic link to nowhere, which does not
    exist" (so did reproduce, gpu_check.py and make_figures.py: `files.check_out_folder`), where `lab --out dl` adds
    "choose another --out". Now each says what to do. `python -m ddimlab` in a subprocess; the link is left as it was."""
    (tmp_path / "dl").symlink_to("nowhere")
    r = subprocess.run([sys.executable, "-m", "ddimlab", "train", "--out", "dl", "--preset", "digits", "--set", "steps=1"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "DDIMLAB_DEBUG": ""})
    assert r.returncode == 1 and r.stderr.splitlines() == [
        "python -m ddimlab train: error: --out dl is a symbolic link to nowhere, which does not exist; choose another --out "
        "(or make the link's target first)", "(run again with --debug for the traceback)"], r.stderr
    assert os.listdir(tmp_path) == ["dl"] and os.readlink(tmp_path / "dl") == "nowhere"


def test_round_47_a_file_the_os_will_not_read_is_said_in_its_words_not_as_an_errno(trained, tmp_path, capsys,
                                                                                    monkeypatch):
    """A checkpoint its user may not read was "... (N bytes) is not a readable torch checkpoint; it is probably
    truncated or corrupted (an interrupted download or copy?): [Errno 13] Permission denied: '.../ckpt.pt'", and
    `invert --input` or `interpolate --latents` of such an .npz "[Errno 13] Permission denied: '....npz'": what the OS
    raised reached the user as Python prints it. Each is now "Permission denied: PATH" (`files.error_words`). Made
    unreadable by chmod, or, for root, who reads anything, by an open() that refuses the paths as the OS would."""
    import builtins
    import errno

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert cli.main(["sample", "--checkpoint", str(run), "--n", "2", "--steps", "2", "--no-progress",
                     "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    shutil.copy(run / "ckpt.pt", tmp_path / "alone.pt")
    refused = [run / "ckpt.pt", tmp_path / "alone.pt", tmp_path / "s.npz"]
    if getattr(os, "geteuid", lambda: 1)() != 0:
        for p in refused:
            p.chmod(0)
    else:
        real_open, names = builtins.open, {os.path.realpath(p) for p in refused}

        def refusing_open(file, *a, **k):
            if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) in names:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), file)
            return real_open(file, *a, **k)
        monkeypatch.setattr(builtins, "open", refusing_open)
    try:
        for argv, path in ((["sample", "--checkpoint", str(run), "--n", "2", "--steps", "2", "--out", str(tmp_path / "a")],
                            run / "ckpt.pt"),
                           (["sample", "--checkpoint", str(tmp_path / "alone.pt"), "--n", "2", "--steps", "2", "--out",
                             str(tmp_path / "b")], tmp_path / "alone.pt"),
                           (["invert", "--checkpoint", str(trained), "--input", str(tmp_path / "s.npz"), "--steps", "2",
                             "--out", str(tmp_path / "c")], tmp_path / "s.npz"),
                           (["interpolate", "--checkpoint", str(trained), "--latents", str(tmp_path / "s.npz"), "--steps",
                             "2", "--out", str(tmp_path / "d")], tmp_path / "s.npz")):
            assert cli.main([*argv, "--no-progress"]) == 1, argv
            err = capsys.readouterr().err
            assert err.splitlines()[0].endswith(f": error: Permission denied: {path}"), err
            assert "Errno" not in err and "truncated" not in err and len(err.splitlines()) == 2, err
    finally:
        for p in refused:
            p.chmod(0o644)
    assert not any((tmp_path / name).exists() for name in ("a.png", "b.png", "c.npz", "d.npz"))
