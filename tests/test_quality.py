"""The CPU quality score: Fréchet distance against independent computations, the digits classifier."""
import numpy as np
import pytest
import scipy.linalg
import torch

from ddimlab import data, quality


def _random_spd(d, rng, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


# --------------------------------------------------------------------------- Fréchet distance

def test_fd_diagonal_closed_form():
    # commuting (here diagonal) covariances: tr(Σ₁Σ₂)^{1/2} = Σ √(a_i b_i), so FD = |Δμ|² + Σ(√a − √b)²
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert quality.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_fd_diagonal_closed_form_beyond_float64_squares():
    """Means near 1e150 and variances near 1e300 (their products overflow float64, so frechet_distance rescales by s and
    multiplies back by s²): the diagonal closed form |Δμ|² + Σ(√a − √b)², computed here in units of 1e150. Multiplying
    back by s instead of s² is caught in test_careless_api only, and here."""
    rng = np.random.default_rng(5)
    mu1, mu2, a, b = rng.standard_normal(4), rng.standard_normal(4), rng.uniform(0.1, 3, 4), rng.uniform(0.1, 3, 4)
    unit = 1e150
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    fd = quality.frechet_distance(mu1 * unit, np.diag(a) * unit ** 2, mu2 * unit, np.diag(b) * unit ** 2)
    assert fd / unit ** 2 == pytest.approx(expected, rel=1e-12)


def test_fd_commuting_singular_closed_form():
    # same eigenvectors, some eigenvalues zero (the N < D case): closed form still Σ(√a − √b)²
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    a = np.r_[rng.uniform(0.5, 2, 5), 0, 0, 0]
    b = np.r_[0, rng.uniform(0.5, 2, 7)]
    fd = quality.frechet_distance(np.zeros(8), q @ np.diag(a) @ q.T, np.zeros(8), q @ np.diag(b) @ q.T)
    # √ of an eigenvalue that round-off leaves at ~1e-16 is ~1e-8: the accuracy a singular case allows
    assert fd == pytest.approx(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-6)


def test_fd_matches_scipy_sqrtm_of_product():
    rng = np.random.default_rng(2)
    for d in (1, 3, 16):
        c1, c2 = _random_spd(d, rng), _random_spd(d, rng)
        m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
        covmean = scipy.linalg.sqrtm(c1 @ c2).real
        expected = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * covmean)
        assert quality.frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-9, abs=1e-10)
        assert quality.frechet_distance(m1, c1, m2, c2) == pytest.approx(
            quality.frechet_distance(m2, c2, m1, c1), rel=1e-9)


def test_fd_of_identical_features_is_zero_and_stats_match_numpy():
    f = np.random.default_rng(3).standard_normal((50, 70))  # fewer samples than dimensions
    mu, cov = quality.feature_stats(f)
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(cov, np.cov(f.T))
    assert quality.frechet_distance(mu, cov, mu, cov) < 1e-9


def test_fd_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        quality.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        quality.feature_stats(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        quality.frechet_distance(np.zeros(2), np.eye(2) * np.nan, np.zeros(2), np.eye(2))


# --------------------------------------------------------------------------- the classifier

@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """Train once into a fresh cache directory (a few seconds), used by every test below."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DDIMLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        yield quality.load_classifier(16)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def real_split():
    return quality.split_digits(16)


def _noise(n, seed=0):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def test_classifier_held_out_accuracy(classifier, real_split):
    model, info = classifier
    _, _, x_te, y_te = real_split
    pred, _ = quality.classify(x_te, model)
    acc = float((pred == y_te).float().mean())
    assert acc >= 0.95 and info["holdout_accuracy"] == pytest.approx(acc)


def test_confident_share_real_high_noise_low(classifier, real_split):
    x_te = real_split[2]
    assert quality.confident_share(x_te) >= 0.85
    assert quality.confident_share(_noise(400)) <= 0.05
    smooth = torch.nn.functional.interpolate(torch.randn(400, 1, 4, 4), size=16, mode="bilinear")
    assert quality.confident_share(smooth.clamp(-1, 1)) <= 0.05


def test_fd_real_splits_small_noise_large(classifier, real_split):
    model, _ = classifier
    x_tr, _, x_te, _ = real_split
    feats = lambda x: quality.digits_features(x, model)  # noqa: E731
    fd_real = quality.frechet_distance(*quality.feature_stats(feats(x_te)), *quality.feature_stats(feats(x_tr)))
    fd_noise = quality.frechet_distance(*quality.feature_stats(feats(_noise(len(x_te)))),
                                        *quality.feature_stats(feats(x_tr)))
    assert fd_real < 0.05 * fd_noise
    # digits_fd compares with all real digits: n real digits sit at the finite-sample floor
    assert quality.digits_fd(x_te) < 0.05 * quality.digits_fd(_noise(len(x_te)))
    assert quality.real_fd_floor(len(x_te)) < 0.05 * quality.digits_fd(_noise(len(x_te)))


def test_score_digits(classifier, real_split):
    x_te, y_te = real_split[2], real_split[3]
    s = quality.score_digits(x_te)
    assert s["n"] == len(x_te) and s["classes_covered"] == 10 and s["confident"] >= 0.85
    # counts per digit against the true labels: |counts_k − n_k| ≤ (confident, labelled k, wrong) + (digit k, not
    # confidently right), so the total is at most twice the digits not confidently and correctly labelled
    pred, conf = quality.classify(x_te)
    right = int(((conf >= 0.9) & (pred == y_te)).sum())
    assert np.abs(np.array(s["counts"]) - np.bincount(y_te.numpy(), minlength=10)).sum() <= 2 * (len(x_te) - right)
    assert s["confident"] == pytest.approx(quality.confident_share(x_te))
    # uint8 input gives the same score as the same images in [-1, 1]
    u8 = ((x_te + 1) * 127.5).round().to(torch.uint8)
    assert quality.score_digits(u8)["confident"] == pytest.approx(s["confident"], abs=0.01)
    # one digit only covers one class
    ones = x_te[y_te == 1]
    assert quality.score_digits(ones)["classes_covered"] <= 2 and np.argmax(quality.score_digits(ones)["counts"]) == 1
    bad = quality.score_digits(_noise(200))
    assert bad["confident"] <= 0.05 and bad["fd"] > 20 * s["fd"]


def test_cache_is_reused(classifier):
    model, info = classifier
    quality._LOADED.clear()
    again, info2 = quality.load_classifier(16)
    assert again is not model and info2["path"] == info["path"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    np.testing.assert_array_equal(info2["real_mu"], info["real_mu"])
    assert not [p for p in __import__("pathlib").Path(info["path"]).parent.iterdir() if p.name.startswith(".tmp")]


def test_bad_samples_raise(classifier):
    with pytest.raises(ValueError, match=r"\(N, 1, R, R\)"):
        quality.score_digits(torch.zeros(4, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 1, R, R\)"):
        quality.score_digits(torch.zeros(16, 16))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        quality.score_digits(torch.full((4, 1, 16, 16), 255.0))
    # overshoot past ±1 (no x̂_0 clipping) is clamped, like saving a PNG
    over = _noise(8) * 3
    assert quality.confident_share(over) == quality.confident_share(over.clamp(-1, 1))
    with pytest.raises(TypeError, match="uint8"):
        quality.score_digits(torch.zeros(4, 1, 16, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="threshold"):
        quality.confident_share(_noise(4), threshold=1.5)
    with pytest.raises(ValueError, match="multiple of 4"):
        quality.load_classifier(10)


def test_channels_last_digit_samples_are_told_how_to_permute():
    """classify / confident_share / score_digits took an N×R×R×1 batch (PIL's and numpy's layout) for a wrong shape only,
    where compute_fid says how to permute; they now say it too, and the permutation they give restores the N×1×R×R
    batch it came from (checked before any classifier is loaded)."""
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    last = x.permute(0, 2, 3, 1)
    for score in (quality.classify, quality.confident_share, quality.score_digits):
        with pytest.raises(ValueError, match=r"got \(4, 16, 16, 1\); channels last \(N, H, W, C\)\? pass "
                                             r"x.permute\(0, 3, 1, 2\)"):
            score(last)
    assert torch.equal(quality._as_samples(last.permute(0, 3, 1, 2)), x)
    with pytest.raises(ValueError, match=r"got \(4, 16, 16, 3\)$"):          # RGB: a permute would be refused as not grey next
        quality.classify(torch.cat([last] * 3, dim=-1))
    with pytest.raises(ValueError, match=r"got \(4, 16, 16, 2\)$"):          # no hint where no channel axis is last
        quality.classify(torch.zeros(4, 16, 16, 2))

def test_damaged_cache_file_is_replaced(tmp_path, monkeypatch):
    calls = []

    def fake_train(**settings):  # stands in for the real training, which test_cache_is_reused covers
        calls.append(settings)
        return quality.DigitsClassifier(settings["width"], settings["feature_dim"]), dict(holdout_accuracy=0.5)
    monkeypatch.setattr(quality, "train_classifier", fake_train)
    _, info = quality.load_classifier(16, directory=tmp_path)
    path = __import__("pathlib").Path(info["path"])
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a crash without the atomic write
    quality._LOADED.clear()
    _, info2 = quality.load_classifier(16, directory=tmp_path)
    assert len(calls) == 2 and info2["holdout_accuracy"] == 0.5
    quality._LOADED.clear()
    quality.load_classifier(16, directory=tmp_path)  # the replaced file loads without retraining
    assert len(calls) == 2
    quality._LOADED.clear()


def test_a_classifier_cached_by_other_cpu_kernels_is_not_loaded(classifier, monkeypatch):
    """AVX-512 and AVX2 kernels train different classifiers: each finds only its own in the cache."""
    _, info = classifier
    quality._LOADED.clear()
    monkeypatch.setattr(quality, "cpu_kernels", lambda: "OTHER")
    monkeypatch.setattr(quality, "train_classifier", lambda **k: (_ for _ in ()).throw(KeyError("trains anew")))
    with pytest.raises(KeyError, match="trains anew"):
        quality.load_classifier(16)
    monkeypatch.undo()
    assert quality.load_classifier(16)[1]["path"] == info["path"]


@pytest.mark.slow
def test_cached_classifier_does_not_depend_on_the_callers_thread_count(tmp_path):
    """The first process to need the classifier trains and caches it; one on 2 threads and one on 1 thread must
    cache the same weights and real-digit statistics (on the caller's threads they differed: the file, and every
    score computed with it, depended on which process came first)."""
    saved = torch.get_num_threads()
    blobs = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            quality._LOADED.clear()
            _, info = quality.load_classifier(8, directory=tmp_path / str(threads))
            assert torch.get_num_threads() == threads             # the caller's setting is restored
            blobs.append(torch.load(info["path"], weights_only=True))
    finally:
        torch.set_num_threads(saved)
        quality._LOADED.clear()
    a, b = blobs
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert torch.equal(a["real_mu"], b["real_mu"]) and torch.equal(a["real_cov"], b["real_cov"])


def test_training_works_inside_no_grad():
    """First use often comes from a sampler's no_grad block: training must still learn (same weights)."""
    with torch.no_grad():
        inside, info_inside = quality.train_classifier(epochs=3, resolution=8)
    outside, info_outside = quality.train_classifier(epochs=3, resolution=8)
    assert info_inside["holdout_accuracy"] == info_outside["holdout_accuracy"] > 0.5
    for a, b in zip(inside.parameters(), outside.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bootstrap_se_of_the_fd_is_a_conservative_error_bar():
    """`digits_fd_se` of sets of 200 real digits against the SD of the FD over 12 fresh draws of 200 real
    digits (the independent answer): larger (resampling with replacement duplicates samples, which
    inflates the FD's spread), but by less than 3x. Measured: about 2x."""
    real = data.to_model_range(data.load_digits(16)[0]).float()
    sd = float(np.std([quality.real_fd_floor(200, 16, seed=s) for s in range(12)], ddof=1))
    se = np.mean([quality.digits_fd_se(real[torch.randperm(len(real), generator=torch.Generator().manual_seed(s))[:200]])
                  for s in (97, 98, 99)])
    assert 1 < se / sd < 3, (se, sd)


def test_bootstrap_se_of_two_digits_takes_only_the_values_enumeration_allows(classifier):
    """`digits_fd_se` with n = 2 samples a, b and n_boot = 2, by enumeration: a resample with replacement is {a, a},
    {b, b} (1/4 each) or {a, b} (1/2), with FD F_aa = |f_a - mu|^2 + tr S (covariance 0), F_bb likewise, and
    F_ab = |(f_a + f_b)/2 - mu|^2 + |d|^2/2 + tr S - 2 sqrt(d^T S d / 2), d = f_a - f_b (a rank-one covariance u u^T:
    tr (u u^T S)^{1/2} = sqrt(u^T S u)). The SD (ddof = 1) of two resamples' FDs squared is then 0 (probability 3/8)
    or (F_i - F_j)^2 / 2 for a pair of the three (1/8 for {aa, bb}, 1/4 for each other pair): over 100 seeds every value
    is one of these (relative 1e-4; measured 1.5e-6) and each count is within 5 binomial SE. The SD with ddof = 0 halves
    every nonzero value; resampling without replacement gives 0 every time."""
    model, info = classifier
    real, labels = data.load_digits(16)
    x = torch.stack([data.to_model_range(real[labels == k][0]).float() for k in (0, 7)])
    fa, fb = quality.digits_features(x, model).double().numpy()
    mu, cov = info["real_mu"], info["real_cov"]
    d = fa - fb
    F = [np.sum((f - mu) ** 2) + np.trace(cov) for f in (fa, fb)]
    F.append(np.sum(((fa + fb) / 2 - mu) ** 2) + d @ d / 2 + np.trace(cov) - 2 * np.sqrt(d @ cov @ d / 2))
    values = np.array([0.0, (F[0] - F[1]) ** 2 / 2, (F[0] - F[2]) ** 2 / 2, (F[1] - F[2]) ** 2 / 2])
    probs = np.array([3 / 8, 1 / 8, 1 / 4, 1 / 4])
    assert np.diff(np.sort(values)).min() > 0.01 * values.max()           # four values told apart
    se2 = np.array([quality.digits_fd_se(x, n_boot=2, seed=s) ** 2 for s in range(100)])
    which = np.abs(se2[:, None] - values[None]).argmin(1)
    assert np.allclose(se2, values[which], rtol=1e-4, atol=1e-6 * values.max()), (se2, values)
    counts = np.bincount(which, minlength=4)
    assert (np.abs(counts - 100 * probs) <= 5 * np.sqrt(100 * probs * (1 - probs))).all(), counts


def test_mean_difference_standard_errors_match_the_spread_over_repeated_draws():
    """Over 4000 repeated draws of 0/1 scores, the spread of the difference of the two shares is what
    `mean_difference` predicts: paired (200 pairs, one shared uniform per pair: correlated) and independent (200
    against 50 samples); the independent formula applied to paired samples would overstate it more than twofold."""
    g = torch.Generator().manual_seed(0)
    R, n = 4000, 200
    u = torch.rand(R, n, generator=g)
    shared = ((u < 0.80).double(), (u < 0.75).double())                     # the same x_T: correlated
    apart = ((u < 0.80).double(), (torch.rand(R, 50, generator=g) < 0.75).double())
    for (a, b), paired in ((shared, True), (apart, False)):
        spread = float((a.mean(1) - b.mean(1)).std())                       # the truth, from the repeats
        predicted = sum(quality.mean_difference(a[r], b[r], paired)[1] for r in range(R)) / R
        assert abs(predicted / spread - 1) < 0.06, (paired, predicted, spread)   # std of a std at R=4000: 1.1%
        d = quality.mean_difference(a[0], b[0], paired)[0]
        assert d == pytest.approx(float(a[0].mean() - b[0].mean()))         # a minus b, not b minus a
    wrong = sum(quality.mean_difference(shared[0][r], shared[1][r], False)[1] for r in range(R)) / R
    assert wrong > 2 * float((shared[0].mean(1) - shared[1].mean(1)).std())


def test_paired_difference_errors_use_the_pairing():
    """Real digits and the same digits with a little noise added, as two samplers run from the same x_T give: over 12
    fresh draws of 200 such pairs, the SD of FD(a) − FD(b) and of the confident-share difference are the truth.
    `paired_difference`'s SEs (mean over 2 draws) match them within a factor 0.7 to 2 (measured 1.0 and 1.1); the
    unpaired √(se_a² + se_b²) of two `digits_fd_se` overstates the FD's more than threefold (measured 7x). Its
    differences are a's scores minus b's: `digits_fd` and `confident_share` of each set, subtracted here."""
    real = data.to_model_range(data.load_digits(16)[0]).float()
    noisy = (real + 0.1 * torch.randn(real.shape, generator=torch.Generator().manual_seed(5))).clamp(-1, 1)
    fd, share, predicted, unpaired = [], [], [], []
    for s in range(12):
        idx = torch.randperm(len(real), generator=torch.Generator().manual_seed(s))[:200]
        a, b = real[idx], noisy[idx]
        fd.append(quality.digits_fd(a) - quality.digits_fd(b))
        share.append(quality.confident_share(a) - quality.confident_share(b))
        if s < 2:
            r = quality.paired_difference(a, b)
            assert r["fd"][0] == pytest.approx(fd[-1], rel=1e-9) and r["confident"][0] == pytest.approx(share[-1])
            predicted.append((r["fd"][1], r["confident"][1]))
            unpaired.append(np.hypot(quality.digits_fd_se(a), quality.digits_fd_se(b)))
    se_fd, se_share = np.mean(predicted, axis=0)
    assert 0.7 < se_fd / np.std(fd, ddof=1) < 2 and 0.7 < se_share / np.std(share, ddof=1) < 2, (se_fd, se_share)
    assert np.mean(unpaired) > 3 * se_fd


def test_a_top_probability_equal_to_the_threshold_counts_as_confident():
    """`confident_share` and `class_counts` count a probability >= threshold, as their docstrings say: a stand-in
    classifier whose two top logits tie (the others -inf) gives each sample probability exactly 1/2 for digit 3, which
    counts at threshold 0.5 and not at 0.51; a strict > would count none at 0.5."""
    class Tie(torch.nn.Module):
        resolution = 16

        def forward(self, x):
            logits = torch.full((len(x), 10), -float("inf"))
            logits[:, 3] = logits[:, 8] = 0.0
            return logits

    x = torch.full((4, 1, 16, 16), -1.0)                          # blank images
    assert quality.classify(x, Tie())[1].tolist() == [0.5] * 4
    assert quality.confident_share(x, 0.5, model=Tie()) == 1.0 and quality.confident_share(x, 0.51, model=Tie()) == 0.0
    assert quality.class_counts(x, 0.5, model=Tie()).tolist() == [0, 0, 0, 4, 0, 0, 0, 0, 0, 0]
    assert quality.class_counts(x, 0.51, model=Tie()).sum() == 0


def test_a_threshold_every_sample_meets_is_refused():
    """Careless round 27: threshold=0.05 (meant as "within 5 %"?) scored blank images as confident share 1.0 and
    covering digits, since the top of 10 class probabilities is never below 0.1; brute force over the classifier's
    probabilities shows that floor, and 0.11 still discriminates."""
    blank = torch.full((8, 1, 16, 16), -1.0)
    _, conf = quality.classify(blank)
    assert float(conf.min()) >= 0.1                          # the floor the check relies on
    for threshold in (0.05, 0.1):
        for call in (quality.confident_share, quality.class_counts, quality.score_digits):
            with pytest.raises(ValueError, match=rf"threshold = {threshold:g} counts every sample as confident"):
                call(blank, threshold)
    assert quality.confident_share(blank, 0.11) == float((conf >= 0.11).double().mean())
