"""A sample-quality score that runs on a CPU: "are these good digits?" without Inception weights.

A small CNN is trained once on the real scikit-learn digits (`data.load_digits`) and cached. Two
numbers come from it (notebook 06 §5, notebook 07 §5):

- the Fréchet distance between its penultimate-layer features of the samples and of the real
  digits, FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}) — FID's formula with a digits network in
  place of Inception, so the numbers are comparable only with each other, never with FID;
- the share of samples it labels with confidence ≥ 0.9, and how many of the ten digits those cover.

The classifier is also trained to be *unsure* on non-digits (noise, blurred noise, pixel-shuffled
digits get a uniform target), so that the confident share means "looks like a real digit".
Like FID, the distance has a finite-sample floor: two disjoint sets of real digits are not at 0;
`real_fd_floor(n)` measures it for n samples.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .checkpoint import save_checkpoint
from .checks import as_real, check_bool, check_int, check_per_sample, check_symmetric, check_values, real_array, seeded
from .devices import cpu_kernels, cpu_threads

N_CLASSES = 10
CLASSIFIER_SETTINGS = dict(resolution=16, width=16, feature_dim=64, epochs=10, batch_size=64,
                           lr=4e-3, outlier_weight=0.5, holdout=0.2, seed=0,
                           version=2)     # 2: trained on one thread (before, on the thread count of the first caller)


# --------------------------------------------------------------------------- Fréchet distance

def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean μ and covariance Σ (unbiased, rows are samples) of an (N, D) real feature matrix, float64."""
    f = real_array("features", features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be an (N, D) array with N >= 2 samples, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrtm_psd(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix by its eigendecomposition."""
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (2-Wasserstein) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂).

    FD = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}   (Heusel et al. 2017, eq. 6).

    tr (Σ₁Σ₂)^{1/2} is computed as Σᵢ √λᵢ with λ the eigenvalues of the symmetric PSD matrix
    Σ₁^{1/2} Σ₂ Σ₁^{1/2}, which has the same spectrum as Σ₁Σ₂. Unlike `scipy.linalg.sqrtm(Σ₁ @ Σ₂)`
    (the reference FID code) this never leaves an imaginary part to drop and stays accurate when
    the covariances are singular (fewer samples than feature dimensions); round-off negatives in λ
    are clipped to 0.
    """
    mu1, mu2 = (np.atleast_1d(real_array(f"frechet_distance: {k}", v)) for k, v in (("mu1", mu1), ("mu2", mu2)))
    cov1, cov2 = (np.atleast_2d(real_array(f"frechet_distance: {k}", v)) for k, v in (("cov1", cov1), ("cov2", cov2)))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError("frechet_distance needs means of shape (D,) and covariances of shape (D, D) "
                         f"with one D; got {mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, cov1, cov2)):
        raise ValueError("frechet_distance got NaN or inf in a mean or covariance")
    scale = max(float(np.abs(np.concatenate([mu1, mu2])).max()), float(np.abs(np.stack([cov1, cov2])).max()) ** 0.5)
    if scale > 1e100:         # Σ₁^{1/2} Σ₂ Σ₁^{1/2} would overflow; FD(μ/s, Σ/s²) = FD(μ, Σ)/s²
        return scale ** 2 * frechet_distance(mu1 / scale, cov1 / scale ** 2, mu2 / scale, cov2 / scale ** 2)
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        check_symmetric(c, f"frechet_distance: {name}")
        if np.linalg.eigvalsh(c).min() < -1e-8 * float(np.abs(c).max()) * d:    # no eigenvalue below round-off
            raise ValueError(f"frechet_distance: {name} must be a covariance (positive semi-definite)")
    s1 = _sqrtm_psd(cov1)
    lam = np.linalg.eigvalsh(s1 @ cov2 @ s1)
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_covmean
    return float(max(fd, 0.0))  # round-off can give -1e-12 for identical inputs


# --------------------------------------------------------------------------- the classifier

class DigitsClassifier(nn.Module):
    """conv(1→w) → pool → conv(w→2w) → pool → conv(2w→2w) → pool to 4×4 → fc(feature_dim) → fc(10).

    `features(x)` is the penultimate layer (after ReLU): the feature space of the Fréchet distance.
    Inputs are images in [−1, 1] of shape (N, 1, R, R).
    """

    def __init__(self, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.fc = nn.Linear(2 * width * 16, feature_dim)
        self.head = nn.Linear(feature_dim, N_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cache_dir() -> Path:
    """$DDIMLAB_CACHE, or ~/.cache/ddimlab (`data.default_cache_dir`)."""
    return data.default_cache_dir()


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def split_digits(resolution: int = 16, holdout: float = 0.2, seed: int = 0):
    """The real digits in [−1, 1], split into (x_train, y_train, x_test, y_test) by a fixed permutation."""
    if isinstance(holdout, bool) or not (isinstance(holdout, (int, float)) and 0 <= holdout < 1):
        raise ValueError(f"holdout must be the share of the digits held out, 0 <= holdout < 1, got {holdout!r}")
    images, labels = data.load_digits(resolution)
    x = data.to_model_range(images).float()
    y = torch.as_tensor(labels).long()
    perm = torch.randperm(len(x), generator=seeded(seed))
    n_test = int(round(holdout * len(x)))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _outliers(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Non-digits the classifier must be unsure about: noise, blurred noise, pixel-shuffled digits."""
    n, _, r, _ = x.shape
    n = n // 2
    k = n // 3
    noise = torch.randn(k, 1, r, r, generator=g).clamp(-1, 1)
    blobs = F.interpolate(torch.randn(k, 1, r // 4, r // 4, generator=g), size=(r, r), mode="bilinear",
                          align_corners=False).clamp(-1, 1)
    flat = x[:n - 2 * k].flatten(1)
    shuffled = flat[:, torch.randperm(flat.shape[1], generator=g)].view(-1, 1, r, r)
    return torch.cat([noise, blobs, shuffled])


@torch.enable_grad()  # first use may come from inside a no_grad caller (classify)
def train_classifier(**overrides) -> tuple[DigitsClassifier, dict]:
    """Train the digits classifier from scratch (deterministic; a few seconds on one CPU thread).

    Cross-entropy on the real digits plus, on an equal number of non-digits (`_outliers`), the
    cross-entropy to the uniform distribution. Returns (model, info) with the held-out accuracy.
    """
    s = {**CLASSIFIER_SETTINGS, **overrides}
    x_tr, y_tr, x_te, y_te = split_digits(s["resolution"], s["holdout"], s["seed"])
    g = torch.Generator().manual_seed(s["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s["seed"])
        model = DigitsClassifier(s["width"], s["feature_dim"])
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    steps_per_epoch = (len(x_tr) + s["batch_size"] - 1) // s["batch_size"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, s["lr"], total_steps=s["epochs"] * steps_per_epoch)
    model.train()
    for _ in range(s["epochs"]):
        perm = torch.randperm(len(x_tr), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * s["batch_size"]:(i + 1) * s["batch_size"]]
            xb, yb = x_tr[idx], y_tr[idx]
            # random shifts of up to one pixel: samples are rarely centred as exactly as the data
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            out = model(torch.cat([xb, _outliers(xb, g)]))
            loss = F.cross_entropy(out[:len(xb)], yb) - s["outlier_weight"] * F.log_softmax(out[len(xb):], 1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x_te).argmax(1) == y_te).float().mean())
    return model, dict(settings=s, holdout_accuracy=acc)


_LOADED: dict[str, tuple[DigitsClassifier, dict]] = {}


def load_classifier(resolution: int = 16, retrain: bool = False,
                    directory: str | os.PathLike | None = None) -> tuple[DigitsClassifier, dict]:
    """The cached digits classifier for `resolution`, training and caching it on first use.

    The cache file `digits_classifier_<hash of settings and the CPU's kernels>.pt` (in `cache_dir()`) holds the weights,
    the held-out accuracy and the real digits' feature statistics; it is written atomically and read
    with `weights_only=True`. A file that does not load is replaced.
    """
    resolution, retrain = check_int("resolution", resolution, 8, note=", a multiple of 4"), check_bool("retrain", retrain)
    if resolution % 4:
        raise ValueError(f"resolution must be a multiple of 4, got {resolution}")
    settings = {**CLASSIFIER_SETTINGS, "resolution": resolution}
    key = _settings_key({**settings, "cpu_kernels": cpu_kernels()})   # they change the weights
    directory = data.cache_folder(directory, "directory")
    path = directory / f"digits_classifier_{key}.pt"
    memo = f"{path}"
    if not retrain and memo in _LOADED:
        return _own_copy(*_LOADED[memo])
    model = DigitsClassifier(settings["width"], settings["feature_dim"])
    info = None
    if path.exists() and not retrain:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
            info = dict(settings=settings, holdout_accuracy=float(blob["holdout_accuracy"]),
                        real_mu=blob["real_mu"].numpy(), real_cov=blob["real_cov"].numpy(), path=str(path))
        except Exception:  # a truncated or foreign file: retrain and overwrite it
            info = None
    if info is None:
        # one thread whatever the caller's: the cached file must be the same whichever process trains it first
        with cpu_threads(1):
            model, info = train_classifier(**settings)
            mu, cov = feature_stats(_features(model, _real_digits(resolution)))
        info.update(real_mu=mu, real_cov=cov, path=str(path))
        try:
            save_checkpoint(path, state_dict=model.state_dict(), holdout_accuracy=float(info["holdout_accuracy"]),
                            real_mu=torch.from_numpy(mu), real_cov=torch.from_numpy(cov))
        except OSError as e:
            raise OSError(f"could not cache the digits classifier in {directory} ({e.strerror or e}); point "
                          f"DDIMLAB_CACHE at a folder you can write") from e
    model.eval().requires_grad_(False)
    model.resolution = resolution          # a bare `model` passed to the scores is checked against the samples too
    _LOADED[memo] = (model, info)
    return _own_copy(model, info)


def _own_copy(model, info):
    """A copy of the cached classifier and of the real digits' statistics: an edit in place by one caller (its weights,
    its dtype, the statistics) must not change every later score."""
    return copy.deepcopy(model), {**info, "real_mu": info["real_mu"].copy(), "real_cov": info["real_cov"].copy()}


def _real_digits(resolution: int) -> torch.Tensor:
    return data.to_model_range(data.load_digits(resolution)[0]).float()


# --------------------------------------------------------------------------- scores

def _as_samples(samples, least: int = 1) -> torch.Tensor:
    """Check and convert digit samples: (N, 1, R, R) with N ≥ `least` (2 for a Fréchet distance: a mean and a
    covariance), float in [−1, 1] (clamped) or uint8 in 0..255."""
    check_values("samples", samples, "scoring them needs their pixel values")
    x = torch.as_tensor(samples.detach() if isinstance(samples, torch.Tensor) else np.asarray(samples))
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
        raise ValueError("digit samples must have shape (N, 1, R, R) (grey square images), "
                         f"got {tuple(x.shape)}{data.channels_last_hint(x, channels=(1,))}")
    if len(x) < least:          # else "features must be an (N, D) array", of features the caller never saw
        need = "the Fréchet distance needs 2 or more (a mean and a covariance)" if least > 1 else "give one or more"
        raise ValueError(f"got {len(x)} digit sample{'' if len(x) == 1 else 's'} of shape {tuple(x.shape)}; {need}")
    if x.dtype == torch.uint8:
        return x.float().cpu() / 127.5 - 1
    if not x.dtype.is_floating_point:
        raise TypeError(f"digit samples must be float in [-1, 1] or uint8, got {x.dtype}")
    return data.check_model_range(x.float()).clamp(-1, 1)  # samplers without x̂_0 clipping overshoot a little: clamped


@torch.no_grad()
def _features(model: DigitsClassifier, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    return torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _model_for(x: torch.Tensor, model):
    """`model` as (classifier, info or None), or the cached classifier of the samples' resolution. A `load_classifier`
    pair of another resolution is refused: its real digits' statistics are of that resolution (FD 784 for real ones)."""
    if model is None:
        return load_classifier(int(x.shape[-1]))
    net, info = model if isinstance(model, tuple) else (model, None)
    made_for = (info or {}).get("settings", {}).get("resolution", getattr(net, "resolution", None))
    if made_for is not None and made_for != x.shape[-1]:
        raise ValueError(f"the classifier was made for {made_for}x{made_for} digits and its real-digit statistics are of "
                         f"that size, but the samples are {x.shape[-1]}x{x.shape[-1]}; use load_classifier({x.shape[-1]}), "
                         f"or resize the samples (data.resize)")
    return net, info


def digits_features(samples, model=None) -> torch.Tensor:
    """Penultimate-layer features (N, feature_dim) of the digits classifier."""
    x = _as_samples(samples)
    return _features(_model_for(x, model)[0], x)


@torch.no_grad()
def classify(samples, model=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted digit, its softmax probability) for each sample (notebook 07 §1: consistency)."""
    x = _as_samples(samples)
    net = _model_for(x, model)[0]
    probs = torch.cat([net(x[i:i + 512]).softmax(1) for i in range(0, len(x), 512)])
    conf, pred = probs.max(1)
    return pred, conf


def confident_share(samples, threshold: float = 0.9, model=None) -> float:
    """Share of samples the classifier labels with probability ≥ threshold (notebook 06 §5)."""
    return float((classify(samples, model)[1] >= _check_threshold(threshold)).float().mean())


def _check_n_boot(n_boot) -> int:
    return check_int("n_boot", n_boot, 2, note=" (resamples for a standard deviation)")


def _check_threshold(threshold) -> float:
    if (p := as_real(threshold)) is None or not 0 < p < 1:
        raise ValueError(f"threshold must lie in (0, 1) (a probability: 0.9, not 90), got {threshold!r}")
    if p <= 1 / N_CLASSES:         # the largest of 10 probabilities is at least 1/10: a share of 1.0 whatever the samples
        raise ValueError(f"threshold = {p:g} counts every sample as confident (the top probability among {N_CLASSES} digits "
                         f"is at least {1 / N_CLASSES:g}): give one above that, the classifier's confidence (0.9, not 0.1 "
                         f"for 'within 10 %')")
    return p


def class_counts(samples, threshold: float = 0.9, model=None) -> np.ndarray:
    """How many samples are confidently labelled as each digit 0..9 (shape (10,))."""
    pred, conf = classify(samples, model)
    return np.bincount(pred[conf >= _check_threshold(threshold)].numpy(), minlength=N_CLASSES)


def _features_and_real_stats(samples, model=None):
    """(classifier features of `samples`, mean and covariance of all real digits' features) at the samples'
    resolution: the two sides of `digits_fd`."""
    x = _as_samples(samples, least=2)
    net, info = _model_for(x, model)           # the classifier, or `load_classifier`'s (model, info) as passed
    if info is None:
        mu_r, cov_r = feature_stats(_features(net, _real_digits(int(x.shape[-1]))))
    else:
        mu_r, cov_r = info["real_mu"], info["real_cov"]
    return _features(net, x), mu_r, cov_r


def digits_fd(samples, model=None) -> float:
    """Fréchet distance between the classifier features of `samples` and of all 1,797 real digits (notebook 06 §5)."""
    feats, mu_r, cov_r = _features_and_real_stats(samples, model)
    return frechet_distance(*feature_stats(feats), mu_r, cov_r)


def _bootstrap_fds(feature_sets, mu_r, cov_r, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, len(feature_sets)): the FD of each set of features to the real digits' statistics over resamples with
    replacement, every set taking the same indices in a resample, so sets whose rows belong together stay paired."""
    g = seeded(seed)
    n = len(feature_sets[0])
    rows = []
    for _ in range(n_boot):
        i = torch.randint(0, n, (n,), generator=g)
        rows.append([frechet_distance(*feature_stats(f[i]), mu_r, cov_r) for f in feature_sets])
    return np.array(rows)


def digits_fd_se(samples, n_boot: int = 50, seed: int = 0) -> float:
    """Bootstrap standard error of `digits_fd` (the SD of the FD over resamples, with replacement, of the
    samples): an error bar for how much the score would move with another draw of the same number of samples.
    On real digits drawn from the reference set it is about twice the FD's spread over fresh draws (duplicated
    samples inflate it; tests/test_quality.py); on generated samples it is not told apart from that spread (notebook 06
    §5 gives the measurements and `benchmarks/digits_recipes.py --fd-se`, which repeats them)."""
    n_boot = _check_n_boot(n_boot)
    feats, mu_r, cov_r = _features_and_real_stats(samples)
    return float(np.std(_bootstrap_fds([feats], mu_r, cov_r, n_boot, seed)[:, 0], ddof=1))


def mean_difference(a: torch.Tensor, b: torch.Tensor, paired: bool) -> tuple[float, float]:
    """(mean of a − mean of b, its standard error) of per-sample scores: from the per-sample differences when `paired`
    (a[i] and b[i] come from the same x_T), else the two means' independent errors combined."""
    paired = check_bool("paired", paired)
    a, b = check_per_sample("mean_difference", a, b, paired=paired)
    if paired:
        d = a - b
        return float(d.mean()), float(d.std() / len(d) ** 0.5)
    return float(a.mean() - b.mean()), float((a.var() / len(a) + b.var() / len(b)) ** 0.5)


def paired_difference(a, b, threshold: float = 0.9, n_boot: int = 50, seed: int = 0) -> dict:
    """The scores of `a` minus those of `b` when a[i] and b[i] belong together (two samplers run from the same x_T),
    with standard errors that use the pairing (notebook 07 §5-§6, the demo): fd: (FD(a) − FD(b), its SD over `n_boot`
    paired bootstrap resamples: about the spread over fresh draws for strongly paired sets in tests/test_quality.py; for weakly
    paired ones, such as DDPM's and DDIM's samples, not measured: `digits_fd_se` says how the unpaired one fares);
    confident: (confident share of a − of b, its paired `mean_difference`)."""
    threshold, n_boot = _check_threshold(threshold), _check_n_boot(n_boot)      # before the work
    xa, xb = _as_samples(a, least=2), _as_samples(b, least=2)
    if xa.shape != xb.shape:
        raise ValueError(f"paired sets need the same shape, got {tuple(xa.shape)} and {tuple(xb.shape)}")
    fa, mu_r, cov_r = _features_and_real_stats(xa)
    fb = _features_and_real_stats(xb)[0]
    fd = frechet_distance(*feature_stats(fa), mu_r, cov_r) - frechet_distance(*feature_stats(fb), mu_r, cov_r)
    boot = _bootstrap_fds([fa, fb], mu_r, cov_r, n_boot, seed)
    ca, cb = ((classify(x)[1] >= threshold).double() for x in (xa, xb))
    return dict(fd=(fd, float(np.std(boot[:, 0] - boot[:, 1], ddof=1))), confident=mean_difference(ca, cb, paired=True))


def real_fd_floor(n: int, resolution: int = 16, seed: int = 0) -> float:
    """`digits_fd` of n real digits drawn without replacement: the best a sampler can score with n samples
    (notebook 06 §5)."""
    real = _real_digits(resolution)
    n = check_int("n", n, 2, len(real))
    idx = torch.randperm(len(real), generator=seeded(seed))[:n]
    return digits_fd(real[idx])


def score_digits(samples, threshold: float = 0.9) -> dict:
    """All of the CPU quality score in one dict (notebook 06 §5).

    fd: `digits_fd`; confident: `confident_share`; classes_covered: digits with at least one
    confident sample; counts: confident samples per digit; n: number of samples.
    """
    x = _as_samples(samples, least=2)
    counts = class_counts(x, threshold)
    return dict(fd=digits_fd(x), confident=float(counts.sum() / len(x)),
                classes_covered=int((counts > 0).sum()), counts=counts.tolist(), n=len(x))
