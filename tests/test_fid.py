"""Fréchet distances: identical sets, noise, cached reference statistics, the missing-dependency message."""
import sys

import numpy as np
import pytest
import torch

from ddimlab import fid


def test_fid_identical_sets_zero_and_noise_far():
    g = torch.Generator().manual_seed(0)
    # smooth "images" vs white noise
    imgs = torch.nn.functional.interpolate(torch.rand(200, 3, 4, 4, generator=g), size=16, mode="bilinear")
    imgs = (imgs * 255).round().to(torch.uint8)
    noise = torch.randint(0, 256, (200, 3, 16, 16), generator=g, dtype=torch.uint8)
    f = fid.random_features(3, dim=16)
    assert fid.compute_fid(imgs, imgs, f) < 1e-8
    far = fid.compute_fid(imgs, noise, f)
    near = fid.compute_fid(imgs[:100], imgs[100:], f)
    assert near < 0.2 * far
    fa, fb = f(imgs), f(noise)
    assert fid.fid_from_features(fa, fb) == pytest.approx(far, rel=1e-9)
    # float [-1, 1] input is the same images
    assert fid.compute_fid(imgs.float() / 127.5 - 1, noise, f) == pytest.approx(far, rel=1e-9)


def test_reference_stats_are_cached(tmp_path):
    f = fid.random_features(1, dim=8)
    imgs = torch.randint(0, 256, (50, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    calls = []

    def images_fn():
        calls.append(1)
        return imgs
    s1 = fid.reference_stats("toy_random8", images_fn, f, directory=tmp_path)
    s2 = fid.reference_stats("toy_random8", images_fn, f, directory=tmp_path)
    assert len(calls) == 1 and np.array_equal(s1[0], s2[0]) and np.array_equal(s1[1], s2[1])
    npz = tmp_path / "toy_random8.npz"
    assert fid.compute_fid(imgs, str(npz), f) < 1e-8


def test_fid_inception_missing_dependency_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(ImportError, match=r"pip install ddimlab\[fid\]"):
        fid.fid_inception(tmp_path)


def test_bad_input_raises():
    with pytest.raises(TypeError, match="feature_fn"):
        fid.compute_fid(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, 1, 8, 8), None)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        fid.compute_fid(torch.zeros(8, 8), torch.zeros(2, 1, 8, 8), fid.random_features(1))


def test_image_stats_over_batches_are_numpys_mean_and_covariance_of_all_features():
    """23 images in batches of 5 (the last one short): μ and Σ are numpy's over the 23 rows of feature_fn's output."""
    f = fid.random_features(1, dim=6)
    imgs = torch.randint(0, 256, (23, 1, 8, 8), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    feats = f(imgs).double().numpy()
    mu, sigma = fid.image_stats(imgs, f, batch_size=5)
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-6, atol=1e-9)


def test_a_png_the_os_will_not_read_is_said_in_words(tmp_path, monkeypatch):
    """fid.load_images of a PNG the OS refuses (permission) said "(… [Errno 13] Permission denied: '…a.png'): a damaged
    sample? … delete it": the OS's error now comes through, not called a damaged sample, and the commands print it in
    its words (`files.error_words`), as data.read_images and the checkpoint loader do."""
    from PIL import Image

    from ddimlab.files import error_words

    (tmp_path / "a.png").write_bytes(b"not read")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(PermissionError) as info:
        fid.load_images(tmp_path)
    words = error_words(info.value)
    assert words.startswith("Permission denied: ") and "[Errno" not in words and "damaged" not in words
