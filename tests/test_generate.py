"""Sample generation for FID: files, resumable, rank-split, one image per (seed, index), on a tiny UNet."""
import warnings

import pytest
import torch

from ddimlab import data, fid, generate, samplers, schedule

SHAPE = (1, 8, 8)
ABAR = schedule.make_alpha_bar("linear", 1000)


@pytest.fixture
def net(tiny_unet):
    return tiny_unet


def _gen(net, d, n, **kw):
    kw = {"shape": SHAPE, "S": 5, "spacing": "uniform", **kw}
    return generate.generate_samples(net, d, n, **kw)


def test_files_written_and_loadable(net, tmp_path):
    wrote = _gen(net, tmp_path, 5, batch_size=2)
    assert wrote == list(range(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i:06d}.png" for i in range(5)] + ["settings.json"]
    imgs = fid.load_images(tmp_path)
    assert imgs.dtype == torch.uint8 and imgs.shape == (5, *SHAPE)
    # the PNGs hold exactly the sampler's output, quantised like the official code
    x = generate.sample_indices(net, range(5), SHAPE, ABAR, schedule.timesteps(5, 1000, "uniform"))
    assert torch.equal(imgs, data.from_model_range(x))


def test_batch_size_rank_split_and_resume_give_identical_images(net, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _gen(net, a, 7, eta=0.5, batch_size=3)
    parts = [_gen(net, b, 7, eta=0.5, batch_size=2, rank=r, world_size=3) for r in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(7))  # every index exactly once
    assert parts[1] == [1, 4]  # rank r does r::world
    ref = fid.load_images(a)
    # other batch compositions change convolution round-off only: at most one grey level, in rare pixels
    same = lambda u, v: (u.int() - v.int()).abs().max() <= 1 and (u != v).float().mean() < 0.01  # noqa: E731
    assert same(fid.load_images(b), ref)
    # a crashed run: two files missing; the rerun makes only those, and the same images
    for i in (2, 5):
        (b / f"{i:06d}.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in b.iterdir()}
    assert _gen(net, b, 7, eta=0.5, batch_size=4) == [2, 5]
    assert same(fid.load_images(b), ref)
    assert all(b.joinpath(k).stat().st_mtime_ns == v for k, v in before.items())
    assert _gen(net, b, 7, eta=0.5) == []
    assert not [p for p in b.iterdir() if not p.name.endswith(".png") and p.name != "settings.json"]  # no temp files
    # the same folder with other settings is refused, not mixed into the set
    with pytest.raises(ValueError, match=r"holds images made with other settings \(eta '0.5' there, '0.0' now\)"):
        _gen(net, b, 7, eta=0.0)


@pytest.mark.parametrize("eta", [0.0, 0.5, "sigma_hat"])
def test_per_index_sampling_equals_samplers_with_one_generator(net, eta):
    seq = generate.sampling_steps(10, 1000, "quad")
    seed, i = 3, 11
    got = generate.sample_indices(net, [i], SHAPE, ABAR, seq, eta=eta, seed=seed)
    g = torch.Generator().manual_seed(generate.seed_for(seed, i))
    x_T = torch.randn(1, *SHAPE, generator=g)
    eps = lambda x, t: net(x, t)  # noqa: E731
    with torch.no_grad():
        if eta == "sigma_hat":
            ref = samplers.ddpm_sample(eps, x_T, ABAR, variance="large", seq=seq, generator=g, clip_x0=True)
        else:
            ref = samplers.ddim_sample(eps, x_T, ABAR, seq, eta=eta, generator=g)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_sampling_steps_full_chain_at_T():
    assert torch.equal(generate.sampling_steps(1000, 1000, "quad"), torch.arange(999, -1, -1))
    assert torch.equal(generate.sampling_steps(50, 1000, "quad"), schedule.timesteps(50, 1000, "quad"))


def test_bad_input_raises(net, tmp_path):
    with pytest.raises(ValueError, match="eta"):
        _gen(net, tmp_path, 2, eta=-1)
    with pytest.raises(ValueError, match="eta"):
        _gen(net, tmp_path, 2, eta="large-ish")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        _gen(net, tmp_path, 2, shape=(8, 8))
    with pytest.raises(ValueError, match="rank"):
        _gen(net, tmp_path, 2, rank=2, world_size=2)


def test_samples_far_outside_the_data_range_are_flagged():
    """Any image in [−1, 1] passes silently (RMS ≤ 1, even all pixels at ±1); a sample with RMS above 10
    gives an OutOfRangeWarning with the first step's ᾱ and 1/√ᾱ (the CLI case is in test_cli)."""
    seq = schedule.timesteps(10, 1000, "linspace")
    extreme = torch.where(torch.rand(4, *SHAPE) < 0.5, -1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert generate.check_data_range(extreme, ABAR, seq) is extreme
    diverged = torch.cat([extreme, torch.full((1, *SHAPE), 10.01)])
    with pytest.warns(generate.OutOfRangeWarning, match=r"1 of 5 samples .* t = 999 .* = 157"):
        assert generate.check_data_range(diverged, ABAR, seq) is diverged
