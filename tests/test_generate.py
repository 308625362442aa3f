"""Sample generation for FID: files, resumable, rank-split, one image per (seed, index), on a tiny UNet."""
import warnings

import numpy as np
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
    gives an OutOfRangeWarning with the first step's ᾱ and 1/√ᾱ (the CLI case is in test_cli). The bound is on each
    sample's root mean square: one pixel at 79 (RMS 79/8 = 9.9, max 79) passes, half the pixels at 14.2 (RMS 10.04,
    mean |x| 7.1) does not."""
    seq = schedule.timesteps(10, 1000, "linspace")
    extreme = torch.where(torch.rand(4, *SHAPE) < 0.5, -1.0, 1.0)
    spike = torch.zeros(1, *SHAPE)
    spike[0, 0, 3, 4] = 79.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert generate.check_data_range(extreme, ABAR, seq) is extreme
        generate.check_data_range(torch.cat([extreme, spike]), ABAR, seq)
    half = torch.zeros(1, *SHAPE)
    half[..., ::2] = 14.2
    diverged = torch.cat([extreme, spike, torch.full((1, *SHAPE), 10.01), half])
    with pytest.warns(generate.OutOfRangeWarning, match=r"2 of 7 samples .* t = 999 .* = 157"):
        assert generate.check_data_range(diverged, ABAR, seq) is diverged


def _cell(net, d, n, **kw):
    """A cell of n sealed samples; {name: bytes} of its PNGs."""
    assert _gen(net, d, n, **kw) == list(range(n))
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.png"))}


def _pixels(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im).copy()


def test_a_sample_file_is_reused_only_with_the_seal_of_its_own_cell_index_and_pixels(net, tmp_path):
    """Each file below keeps a seal that is valid somewhere (copied whole, text chunk and all), so that only the seal's
    parts (the cell's settings, the index, the pixels with their shape, the PNG's mode) tell it apart: each is made
    again, and the folder ends as an untouched run left it."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    cell, other = tmp_path / "cell", tmp_path / "other"
    made, elsewhere = _cell(net, cell, 4), _cell(net, other, 4, seed=1)

    def forge(name, image, seal_of):                       # `image` with the seal that file `seal_of` of this cell holds
        with Image.open(cell / seal_of) as im:
            info = PngInfo()
            info.add_text(generate.SEAL, im.text[generate.SEAL])
        image.save(cell / name, format="PNG", pnginfo=info)

    assert elsewhere["000000.png"] != made["000000.png"]
    (cell / "000000.png").write_bytes(elsewhere["000000.png"])       # another cell's image 0 (another seed)
    (cell / "000001.png").write_bytes(made["000002.png"])            # this cell's image 2
    p2 = _pixels(cell / "000002.png")
    forge("000002.png", Image.fromarray(p2.reshape(4, 16)), "000002.png")    # its pixels as a 4×16 image
    p3 = _pixels(cell / "000003.png")
    inverted = Image.fromarray(p3, mode="L").convert("P")                    # indices = the pixels, palette inverted
    inverted.putpalette([v for g in range(256) for v in (255 - g,) * 3])
    assert np.array_equal(np.asarray(inverted), p3)
    forge("000003.png", inverted, "000003.png")
    with pytest.warns(generate.SampleFileWarning, match=r"000000.png, 000001.png, 000002.png and 1 more do not hold"):
        assert _gen(net, cell, 4) == [0, 1, 2, 3]
    for name, png in made.items():
        assert (cell / name).read_bytes() == png, name


def test_a_sample_file_that_is_not_a_png_or_too_large_to_open_is_made_again(net, tmp_path, monkeypatch):
    """A BMP under a sample's name (Pillow reads it, with no PNG text chunks) and a file Pillow refuses to open as a
    decompression bomb are made again, with a warning, not a traceback."""
    from PIL import Image

    made = _cell(net, tmp_path, 2)
    for name in made:                                                    # both: the batch is made as before
        Image.fromarray(_pixels(tmp_path / name)).save(tmp_path / name, format="BMP")
    with pytest.warns(generate.SampleFileWarning, match=r"000000.png, 000001.png do not hold the image"):
        assert _gen(net, tmp_path, 2) == [0, 1]
    assert {p.name: p.read_bytes() for p in sorted(tmp_path.glob("*.png"))} == made
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8)                    # an 8×8 image is a bomb (above twice this)
    with pytest.warns(generate.SampleFileWarning, match=r"000000.png, 000001.png do not hold the image"):
        assert _gen(net, tmp_path, 2) == [0, 1]
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in sorted(tmp_path.glob("*.png"))} == made


@pytest.mark.parametrize("text", ['["seed", "S"]', '"seed S"', '{"seed": 0}', "{not json", ""])
def test_a_settings_json_that_is_not_a_cells_records_no_settings(net, tmp_path, text):
    """`recorded_settings` reads only a dict with seed and S (what every ddimlab wrote) as a cell's settings: a list or a
    string naming them is not one (it was `.keys()` of a list), and generate_samples refuses the folder."""
    (tmp_path / "settings.json").write_text(text)
    assert generate.recorded_settings(tmp_path) is None
    assert generate.recorded_settings(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="damaged or not ddimlab's"):
        _gen(net, tmp_path, 2)
    (tmp_path / "settings.json").write_text('{"seed": 0, "S": 5}')
    assert generate.recorded_settings(tmp_path) == {"seed": 0, "S": 5}


def test_latents_of_different_seeds_and_indices_are_independent_draws():
    """x_T for seeds 0..3 × indices 0..15: 64 draws of 256 numbers whose pairwise sample correlations are those of
    independent N(0, I) draws (sd 1/16; all 2016 within 5 sd), with mean 0 and variance 1 (5 SE): no two (seed, index)
    pairs share or shift one stream (as seed + index would for (0, 1) and (1, 0))."""
    x = torch.cat([generate.latents(s, range(16), (1, 16, 16)) for s in range(4)]).flatten(1).double()
    r = torch.corrcoef(x)
    assert float(r[~torch.eye(64, dtype=torch.bool)].abs().max()) < 5 / 16
    n = x.numel()
    assert abs(float(x.mean())) < 5 / n ** 0.5 and abs(float(x.var()) - 1) < 5 * (2 / n) ** 0.5


def test_samples_that_cannot_fit_on_the_disk_are_refused_before_any_work(net, tmp_path, monkeypatch):
    """generate_samples(n=2**63 - 1) counted the files already there one by one and never started (reproduce table1
    --n-samples too): what cannot fit on the disk, at PNG_MIN_BYTES a file, is now refused at once, leaving nothing.
    PNG_MIN_BYTES is a lower bound of the smallest sample file: a 1×1 black image with its seal, as Pillow encodes it."""
    import errno
    import shutil
    from collections import namedtuple

    from ddimlab.plotting import png_bytes

    smallest = png_bytes(np.zeros((1, 1, 1), np.uint8), {generate.SEAL: generate._seal("{}", 0, np.zeros((1, 1), np.uint8))})
    assert generate.PNG_MIN_BYTES <= len(smallest)
    with pytest.raises(OSError) as said:
        _gen(net, tmp_path / "d", 2 ** 63 - 1)
    assert said.value.errno == errno.ENOSPC and "ask for fewer samples" in str(said.value)
    assert list(tmp_path.iterdir()) == []
    # the files already there are not counted again: 3 of 5 there, room for 2 more but not 3
    _gen(net, tmp_path / "d", 3)
    usage = namedtuple("usage", "total used free")
    for free, ok in ((2 * generate.PNG_MIN_BYTES, True), (2 * generate.PNG_MIN_BYTES - 1, False)):
        monkeypatch.setattr(shutil, "disk_usage", lambda p, free=free: usage(10 ** 12, 0, free))
        if ok:
            generate.check_room([tmp_path / "d"], 5, "5 samples")
        else:
            with pytest.raises(OSError, match=r"5 samples take at least .* \(2 PNG files of 158 bytes or more\)"):
                generate.check_room([tmp_path / "d"], 5, "5 samples")
