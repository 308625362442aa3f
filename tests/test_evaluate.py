"""The evaluation pipeline end to end on CPU: tiny UNet, small injected feature extractor, small n."""
import csv
import sys

import numpy as np
import pytest
import torch

from ddimlab import evaluate, samplers, schedule
from ddimlab.unet import UNet

SHAPE = (1, 8, 8)
ABAR = schedule.make_alpha_bar("linear", 1000)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(in_ch=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                resolution=8, num_groups=4).eval()


def _gen(net, d, n, **kw):
    kw = {"shape": SHAPE, "S": 5, "spacing": "uniform", **kw}
    return evaluate.generate_samples(net, d, n, **kw)


def test_files_written_and_loadable(net, tmp_path):
    wrote = _gen(net, tmp_path, 5, batch_size=2)
    assert wrote == list(range(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i:06d}.png" for i in range(5)]
    imgs = evaluate.load_images(tmp_path)
    assert imgs.dtype == torch.uint8 and imgs.shape == (5, *SHAPE)
    # the PNGs hold exactly the sampler's output, quantised like the official code
    x = evaluate.sample_indices(net, range(5), SHAPE, ABAR, schedule.timesteps(5, 1000, "uniform"))
    assert torch.equal(imgs, evaluate.to_uint8(x))


def test_batch_size_rank_split_and_resume_give_identical_images(net, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _gen(net, a, 7, eta=0.5, batch_size=3)
    parts = [_gen(net, b, 7, eta=0.5, batch_size=2, rank=r, world_size=3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(7))  # every index exactly once
    assert parts[1] == [1, 4]  # rank r does r::world
    ref = evaluate.load_images(a)
    # other batch compositions change convolution round-off only: at most one grey level, in rare pixels
    same = lambda u, v: (u.int() - v.int()).abs().max() <= 1 and (u != v).float().mean() < 0.01  # noqa: E731
    assert same(evaluate.load_images(b), ref)
    # a crashed run: two files missing; the rerun makes only those, and the same images
    for i in (2, 5):
        (b / f"{i:06d}.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in b.iterdir()}
    assert _gen(net, b, 7, eta=0.5, batch_size=4) == [2, 5]
    assert same(evaluate.load_images(b), ref)
    assert all(b.joinpath(k).stat().st_mtime_ns == v for k, v in before.items())
    assert _gen(net, b, 7, eta=0.5) == []
    assert not [p for p in b.iterdir() if not p.name.endswith(".png")]  # no temp files left


@pytest.mark.parametrize("eta", [0.0, 0.5, "sigma_hat"])
def test_per_index_sampling_equals_samplers_with_one_generator(net, eta):
    seq = evaluate.sampling_steps(10, 1000, "quad")
    seed, i = 3, 11
    got = evaluate.sample_indices(net, [i], SHAPE, ABAR, seq, eta=eta, seed=seed)
    g = torch.Generator().manual_seed(evaluate._seed_for(seed, i))
    x_T = torch.randn(1, *SHAPE, generator=g)
    eps = lambda x, t: net(x, t)  # noqa: E731
    with torch.no_grad():
        if eta == "sigma_hat":
            ref = samplers.ddpm_sample(eps, x_T, ABAR, variance="large", seq=seq, generator=g, clip_x0=True)
        else:
            ref = samplers.ddim_sample(eps, x_T, ABAR, seq, eta=eta, generator=g)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_sampling_steps_full_chain_at_T():
    assert torch.equal(evaluate.sampling_steps(1000, 1000, "quad"), torch.arange(999, -1, -1))
    assert torch.equal(evaluate.sampling_steps(50, 1000, "quad"), schedule.timesteps(50, 1000, "quad"))


def test_fid_identical_sets_zero_and_noise_far():
    g = torch.Generator().manual_seed(0)
    # smooth "images" vs white noise
    imgs = torch.nn.functional.interpolate(torch.rand(200, 3, 4, 4, generator=g), size=16, mode="bilinear")
    imgs = (imgs * 255).round().to(torch.uint8)
    noise = torch.randint(0, 256, (200, 3, 16, 16), generator=g, dtype=torch.uint8)
    f = evaluate.random_features(3, dim=16)
    assert evaluate.compute_fid(imgs, imgs, f) < 1e-8
    far = evaluate.compute_fid(imgs, noise, f)
    near = evaluate.compute_fid(imgs[:100], imgs[100:], f)
    assert near < 0.2 * far
    fa, fb = f(imgs), f(noise)
    assert evaluate.fid_from_features(fa, fb) == pytest.approx(far, rel=1e-9)
    # float [-1, 1] input is the same images
    assert evaluate.compute_fid(imgs.float() / 127.5 - 1, noise, f) == pytest.approx(far, rel=1e-9)


def test_reference_stats_are_cached(tmp_path):
    f = evaluate.random_features(1, dim=8)
    imgs = torch.randint(0, 256, (50, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    calls = []

    def images_fn():
        calls.append(1)
        return imgs
    s1 = evaluate.reference_stats("toy_random8", images_fn, f, directory=tmp_path)
    s2 = evaluate.reference_stats("toy_random8", images_fn, f, directory=tmp_path)
    assert len(calls) == 1 and np.array_equal(s1[0], s2[0]) and np.array_equal(s1[1], s2[1])
    npz = tmp_path / "toy_random8.npz"
    assert evaluate.compute_fid(imgs, str(npz), f) < 1e-8


def test_reproduce_table1_end_to_end(net, tmp_path):
    f = evaluate.random_features(1, dim=8)
    ref = torch.randint(0, 256, (40, *SHAPE), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    kw = dict(S_list=(10, 20), eta_list=(0.0, "sigma_hat"), n_samples=6, shape=SHAPE, feature_fn=f,
              reference=ref, batch_size=4)
    rows = evaluate.reproduce_table1(net, tmp_path, **kw)
    assert [(r["eta"], r["S"]) for r in rows] == [("0", 10), ("0", 20), ("sigma_hat", 10), ("sigma_hat", 20)]
    assert [r["paper_fid"] for r in rows] == [13.36, 6.84, 367.43, 133.37]
    assert all(np.isfinite(r["fid"]) and r["fid"] > 0 for r in rows)
    for r in rows:  # the reported distance is the one of the images on disk
        d = tmp_path / "samples" / f"eta{'_sigma_hat' if r['eta'] == 'sigma_hat' else r['eta']}_S{r['S']}"
        assert len(list(d.glob("*.png"))) == 6
        assert r["fid"] == pytest.approx(evaluate.compute_fid(d, ref, f), rel=1e-9)
    with open(tmp_path / "table1.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4 and float(table[0]["paper_fid"]) == 13.36 and float(table[0]["fid"]) == pytest.approx(rows[0]["fid"])
    md = (tmp_path / "table1.md").read_text()
    assert "13.36" in md and "| σ̂ | " in md and "(367.43)" in md and "S = 20" in md
    # rerun: nothing is resampled, same numbers
    again = evaluate.reproduce_table1(net, tmp_path, **kw)
    assert [r["fid"] for r in again] == [r["fid"] for r in rows]


def test_reproduce_table2_end_to_end(net, tmp_path):
    imgs = torch.randint(0, 256, (5, *SHAPE), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    rows = evaluate.reproduce_table2(net, tmp_path, images=imgs, S_list=(10, 20), batch_size=3)
    assert [r["S"] for r in rows] == [10, 20] and [r["paper_mse"] for r in rows] == [0.014, 0.0065]
    assert all(r["n"] == 5 and 0 <= r["mse"] <= 1 for r in rows)
    assert "0.014" in (tmp_path / "table2.md").read_text()
    with open(tmp_path / "table2.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    # independent check of the number: reconstruct directly, scale to [0, 1]
    x0 = imgs.float() / 127.5 - 1
    with torch.no_grad():
        rec = samplers.reconstruct(lambda x, t: net(x, t), x0, ABAR, schedule.timesteps(10, 1000, "uniform"))
    assert rows[0]["mse"] == pytest.approx(float((((rec.clamp(-1, 1) - x0) / 2) ** 2).mean()), rel=1e-5)
    # ε ≡ 0 makes DDIM x_s = √(ᾱ_s/ᾱ_t) x_t, which inversion undoes exactly: error 0 up to round-off
    zero = evaluate.reproduce_table2(lambda x, t: torch.zeros_like(x), tmp_path, images=imgs, S_list=(10,))
    assert zero[0]["mse"] < 1e-10
    # rank split: the per-rank sums add up to the whole
    parts = [evaluate.reconstruction_error(net, imgs[r::2], ABAR, schedule.timesteps(10, 1000, "uniform"))
             for r in range(2)]
    assert sum(p[0] for p in parts) / 5 == pytest.approx(rows[0]["mse"], rel=1e-5)


def test_fid_inception_missing_dependency_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(ImportError, match=r"pip install ddimlab\[fid\]"):
        evaluate.fid_inception(tmp_path)


def test_bad_input_raises(net, tmp_path):
    with pytest.raises(ValueError, match="eta"):
        _gen(net, tmp_path, 2, eta=-1)
    with pytest.raises(ValueError, match="eta"):
        _gen(net, tmp_path, 2, eta="large-ish")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        _gen(net, tmp_path, 2, shape=(8, 8))
    with pytest.raises(ValueError, match="rank"):
        _gen(net, tmp_path, 2, rank=2, world_size=2)
    with pytest.raises(TypeError, match="feature_fn"):
        evaluate.compute_fid(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, 1, 8, 8), None)
    with pytest.raises(ValueError, match=r"N×C×H×W"):
        evaluate.compute_fid(torch.zeros(8, 8), torch.zeros(2, 1, 8, 8), evaluate.random_features(1))
    with pytest.raises(ValueError, match="uint8"):
        evaluate.reproduce_table2(net, tmp_path, images=torch.zeros(2, 1, 8, 8), S_list=(10,))


def test_reproduce_command_line(net, tmp_path, capsys):
    import argparse
    import dataclasses

    from ddimlab import checkpoint, train

    config = dataclasses.replace(train.TrainConfig(), ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                                 num_groups=4, resolution=8)
    ck = checkpoint.save_checkpoint(tmp_path / "ckpt.pt", model=net.state_dict(), ema=net.state_dict(),
                                    config=dataclasses.asdict(config), in_ch=1)
    parser = argparse.ArgumentParser()
    evaluate.add_reproduce_parser(parser.add_subparsers(dest="command"))
    common = ["--checkpoint", str(ck), "--device", "cpu", "--batch-size", "4", "--steps", "10"]
    args = parser.parse_args(["reproduce", "table1", *common, "--out", str(tmp_path / "t1"), "--etas", "0,sigma_hat",
                              "--n-samples", "4", "--features", "random"])
    assert args.func(args) == 0
    assert "13.36" in capsys.readouterr().out and (tmp_path / "t1" / "table1.csv").exists()
    assert len(list((tmp_path / "t1" / "samples" / "eta_sigma_hat_S10").glob("*.png"))) == 4
    args = parser.parse_args(["reproduce", "table2", *common, "--out", str(tmp_path / "t2"), "--n-images", "3"])
    assert args.func(args) == 0
    assert "0.014" in capsys.readouterr().out and (tmp_path / "t2" / "table2.csv").exists()


def test_score_grid_same_x_T_in_every_cell(net):
    seen = {}

    def score_fn(x):
        seen[len(seen)] = x
        return {"mean": float(x.mean())}
    rows = evaluate.score_grid(net, score_fn, S_list=(5, 10), eta_list=(0.0, "sigma_hat"), n=5, shape=SHAPE,
                               batch_size=2)
    assert [(r["eta"], r["S"]) for r in rows] == [("0", 5), ("0", 10), ("sigma_hat", 5), ("sigma_hat", 10)]
    expected = evaluate.sample_indices(net, range(5), SHAPE, ABAR, schedule.timesteps(10, 1000, "uniform"))
    torch.testing.assert_close(seen[1], expected, rtol=1e-4, atol=1e-4)  # batch 2 vs 5: conv round-off
    assert rows[1]["mean"] == pytest.approx(float(expected.mean()), abs=1e-4)
