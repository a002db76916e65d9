"""Fréchet distance, streaming feature statistics, KID and a checksummed cache of reference stats.

Everything here runs in float64 NumPy/SciPy on the host: features come out of a jitted extractor
(`xray_gen.evaluation.features`) as float32 and are accumulated here in float64, because the
Fréchet distance subtracts large traces and float32 loses several digits on 2048-d covariances.

Typical use::

        ref = cache.get_or_compute(key, lambda: FeatureStats.from_batches(map(feature_fn, real)))
        fid = compute_fid(feature_fn, generated_batches, ref)

Reference statistics live on disk as ``.npz`` files (``allow_pickle=False``), keyed by
:class:`StatsKey` (dataset/split, extractor, weights checksum, image count, resolution). Each file
stores a sha256 of its own contents and of its key; a file whose checksum or key does not match is
recomputed (with a warning), never silently trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from typing import Callable, Iterable, Optional, Tuple

import numpy as np

from xray_gen.files import atomic_open

__all__ = [
    "frechet_distance",
    "FeatureStats",
    "FeatureStatsAccumulator",
    "kid",
    "StatsKey",
    "StatsChecksumError",
    "save_stats",
    "load_stats",
    "ReferenceStatsCache",
    "compute_fid",
]


# ------------------------------------------------------------------------------------------------
# Fréchet distance
# ------------------------------------------------------------------------------------------------


def psd_sqrt(sigma) -> np.ndarray:
    """Symmetric square root of a covariance (float64; round-off negative eigenvalues clipped to 0)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    w, v = np.linalg.eigh(0.5 * (sigma + sigma.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2, sqrt_sigma2: Optional[np.ndarray] = None) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64.

    d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}). For covariances (symmetric
    PSD) the eigenvalues of sigma1 sigma2 are those of S sigma1 S with S = sigma2^{1/2}, so the trace
    of the root is sum(sqrt(eigvalsh(S sigma1 S))): two symmetric eigendecompositions instead of
    scipy's general matrix square root (several times faster at 2048-d, real by construction,
    and finite for rank-deficient covariances without an offset). `sqrt_sigma2` (`psd_sqrt(sigma2)`)
    may be passed when one reference is compared many times (bootstrap).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean shapes differ: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariance shapes {sigma1.shape}, {sigma2.shape} do not match mean "
                         f"shape {mu1.shape}")
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains non-finite values")

    root = psd_sqrt(sigma2) if sqrt_sigma2 is None else np.asarray(sqrt_sigma2, dtype=np.float64)
    product = root @ sigma1 @ root
    eigenvalues = np.linalg.eigvalsh(0.5 * (product + product.T))
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


# ------------------------------------------------------------------------------------------------
# Streaming statistics
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Mean (d,), unbiased covariance (d, d) (as ``np.cov(rowvar=False)``) and sample count."""

    mean: np.ndarray
    cov: np.ndarray
    count: int

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def from_features(cls, features) -> "FeatureStats":
        acc = FeatureStatsAccumulator()
        acc.update(features)
        return acc.finalize()

    @classmethod
    def from_batches(cls, batches: Iterable) -> "FeatureStats":
        acc = FeatureStatsAccumulator()
        for b in batches:
            acc.update(b)
        return acc.finalize()


def fid_bootstrap_ci(generated_features, reference: FeatureStats, n: int = 200, seed: int = 0,
                     alpha: float = 0.05):
    """FID of `generated_features` against fixed `reference` statistics with a bootstrap interval
    over the generated set: ``(point, lower, upper)``.

    Only the generated side is resampled (it is what is being evaluated; the reference is the
    fixed yardstick). Resamples repeat rows, which lowers the effective sample size and raises
    FID, so the raw percentile interval can miss the point value; the interval is therefore
    re-centred on it (the resamples' percentiles shifted by point - their median): it gives the
    spread due to sampling, not a correction of FID's small-sample bias. Each resample costs one
    covariance and two symmetric eigendecompositions of the feature dimension (the reference's root
    is computed once).
    """
    features = np.asarray(generated_features, np.float64)
    if n < 1 or features.shape[0] < 2:
        raise ValueError(f"fid_bootstrap_ci needs n >= 1 resamples and >= 2 features, got {n} and {features.shape[0]}")

    root = psd_sqrt(reference.cov)  # the fixed side: decomposed once for all resamples

    def fid_of(f):
        g = FeatureStats.from_features(f)
        return frechet_distance(g.mean, g.cov, reference.mean, reference.cov, sqrt_sigma2=root)

    point = fid_of(features)
    rng = np.random.default_rng(seed)
    values = np.array([fid_of(features[rng.integers(0, len(features), len(features))]) for _ in range(n)])
    values = values[np.isfinite(values)] - (np.median(values[np.isfinite(values)]) - point)
    lo, hi = np.percentile(values, (100 * alpha / 2, 100 * (1 - alpha / 2)))
    return float(point), float(lo), float(hi)


class FeatureStatsAccumulator:
    """Streaming mean/covariance in float64 (Chan et al.'s pairwise merge of co-moments).

    Numerically safer than accumulating sum(x x^T): each batch is centred on its own mean before the
    outer products, and batches are merged with the mean-difference correction.
    """

    def __init__(self):
        self.count = 0
        self._mean: Optional[np.ndarray] = None
        self._m2: Optional[np.ndarray] = None

    def update(self, features) -> "FeatureStatsAccumulator":
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            x = x.reshape(x.shape[0], -1)
        nb = x.shape[0]
        if nb == 0:
            return self
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain non-finite values")
        mean_b = x.mean(axis=0)
        xc = x - mean_b
        m2_b = xc.T @ xc
        if self._mean is None:
            self.count, self._mean, self._m2 = nb, mean_b, m2_b
            return self
        if mean_b.shape != self._mean.shape:
            raise ValueError(f"feature dim changed: {self._mean.shape[0]} -> {mean_b.shape[0]}")
        n = self.count
        total = n + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / total)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (n * nb / total)
        self.count = total
        return self

    def finalize(self) -> FeatureStats:
        if self.count < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {self.count}")
        cov = self._m2 / (self.count - 1)
        cov = 0.5 * (cov + cov.T)
        return FeatureStats(mean=self._mean.copy(), cov=cov, count=int(self.count))


# ------------------------------------------------------------------------------------------------
# KID
# ------------------------------------------------------------------------------------------------


def kid(features1, features2, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> Tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3.

    Averaged over ``num_subsets`` random subsets of size m = min(n1, n2, max_subset_size), drawn
    without replacement with a NumPy generator seeded by ``seed``. Returns (mean, std) over subsets.
    """
    x_all = np.asarray(features1, dtype=np.float64)
    y_all = np.asarray(features2, dtype=np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"kid: need (n, d) features of equal d, got {x_all.shape}, {y_all.shape}")
    d = x_all.shape[1]
    m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
    if m < 2:
        raise ValueError("kid: need at least 2 samples per set")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets, dtype=np.float64)
    for i in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        off_xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        off_yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = off_xx + off_yy - 2.0 * kxy.mean()
    return float(values.mean()), float(values.std())


# ------------------------------------------------------------------------------------------------
# Cache of reference statistics
# ------------------------------------------------------------------------------------------------


KID_SUBSETS = 100  # every evaluation's KID: 100 subsets ...
KID_MAX_SUBSET = 1000  # ... of min(1000, half the smaller set) images each


def fid_between(generated_features, reference_features) -> float:
    """FID of two feature sets (point value; tiny negatives from round-off become 0)."""
    g, r = FeatureStats.from_features(generated_features), FeatureStats.from_features(reference_features)
    return max(0.0, frechet_distance(g.mean, g.cov, r.mean, r.cov))


def distribution_distances(generated_features, reference_features, bootstrap: int = 0, seed: int = 0) -> dict:
    """The one FID/KID every evaluation reports (so numbers of different models compare):
    {"fid", "fid_ci" (with `bootstrap` resamples of the generated side), "kid": {"mean", "std",
    "subset_size", "num_subsets"}}, or {"skipped": why} with fewer than 2 images on a side."""
    g, r = np.asarray(generated_features), np.asarray(reference_features)
    if min(len(g), len(r)) < 2:
        return {"skipped": f"fewer than 2 images on a side ({len(g)} generated, {len(r)} reference)"}
    out = {"fid": fid_between(g, r)}
    if bootstrap:  # spread over the generated set, re-centred on the point value
        _, lo, hi = fid_bootstrap_ci(g, FeatureStats.from_features(r), n=bootstrap, seed=seed)
        out["fid_ci"] = [lo, hi]
    subset = min(KID_MAX_SUBSET, max(2, min(len(g), len(r)) // 2))
    mean, std = kid(g, r, num_subsets=KID_SUBSETS, max_subset_size=subset, seed=seed)
    out["kid"] = {"mean": mean, "std": std, "subset_size": subset, "num_subsets": KID_SUBSETS}
    return out


class StatsChecksumError(ValueError):
    """A statistics file is corrupt, was edited, or belongs to another key."""


@dataclasses.dataclass(frozen=True)
class StatsKey:
    """What a set of reference statistics depends on."""

    dataset: str          # e.g. "phantom/test" or "mimic_cxr/validate"
    extractor: str        # e.g. "inception_v3_fid" or "densenet121_cxr"
    weights_checksum: str  # sha256 of the extractor's weights
    image_count: int
    resolution: int       # resolution of the real images before the extractor's own resize

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def filename(self) -> str:
        digest = hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.dataset}_{self.extractor}").strip("-")
        return f"{slug}_n{self.image_count}_r{self.resolution}_{digest}.npz"


def _stats_checksum(mean: np.ndarray, cov: np.ndarray, count: int, key_json: str) -> str:
    h = hashlib.sha256()
    h.update(b"xray_gen.fid.stats.v1\0")
    h.update(key_json.encode())
    h.update(np.int64(count).tobytes())
    h.update(np.ascontiguousarray(mean, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(cov, dtype="<f8").tobytes())
    return h.hexdigest()


def save_stats(path: str, stats: FeatureStats, key: StatsKey) -> str:
    """Writes stats + key + checksum to ``path`` atomically; returns the checksum."""
    key_json = key.to_json()
    checksum = _stats_checksum(stats.mean, stats.cov, stats.count, key_json)
    with atomic_open(path, "wb", suffix=".npz.tmp") as f:
        np.savez(f, mean=np.asarray(stats.mean, np.float64),
                 cov=np.asarray(stats.cov, np.float64), count=np.int64(stats.count),
                 key=np.str_(key_json), checksum=np.str_(checksum))
    return checksum


def load_stats(path: str, expected_key: Optional[StatsKey] = None) -> FeatureStats:
    """Loads stats written by :func:`save_stats`; raises StatsChecksumError on any mismatch."""
    try:
        with np.load(path, allow_pickle=False) as z:
            mean = np.asarray(z["mean"], np.float64)
            cov = np.asarray(z["cov"], np.float64)
            count = int(z["count"])
            key_json = str(z["key"])
            checksum = str(z["checksum"])
    except (KeyError, ValueError, OSError) as e:
        raise StatsChecksumError(f"{path}: unreadable statistics file ({e})") from e
    if _stats_checksum(mean, cov, count, key_json) != checksum:
        raise StatsChecksumError(f"{path}: checksum mismatch (file corrupt or edited)")
    if expected_key is not None and key_json != expected_key.to_json():
        raise StatsChecksumError(
            f"{path}: stored key {key_json} != expected {expected_key.to_json()}")
    return FeatureStats(mean=mean, cov=cov, count=count)


class ReferenceStatsCache:
    """Directory of reference statistics, one checksummed ``.npz`` per :class:`StatsKey`."""

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, key: StatsKey) -> str:
        return os.path.join(self.directory, key.filename())

    def get_or_compute(self, key: StatsKey, compute_fn: Callable[[], FeatureStats]) -> FeatureStats:
        path = self.path(key)
        if os.path.exists(path):
            try:
                return load_stats(path, expected_key=key)
            except StatsChecksumError as e:
                warnings.warn(f"reference stats cache: {e}; recomputing", RuntimeWarning,
                              stacklevel=2)
        stats = compute_fn()
        if stats.count != key.image_count:
            warnings.warn(f"reference stats computed on {stats.count} images but the key says "
                          f"{key.image_count}", RuntimeWarning, stacklevel=2)
        save_stats(path, stats, key)
        return stats


# ------------------------------------------------------------------------------------------------
# FID helper
# ------------------------------------------------------------------------------------------------


def compute_fid(feature_fn: Callable, generated_batches: Iterable, reference_stats: FeatureStats,
                return_stats: bool = False):
    """FID of generated images against precomputed reference statistics.

    ``feature_fn`` maps an image batch to (n, d) features (see ``features.make_feature_fn``);
    ``generated_batches`` is any iterable of image batches. Returns the FID (float), or
    ``(fid, generated_stats)`` when ``return_stats``.
    """
    acc = FeatureStatsAccumulator()
    for batch in generated_batches:
        acc.update(np.asarray(feature_fn(batch)))
    gen = acc.finalize()
    value = frechet_distance(gen.mean, gen.cov, reference_stats.mean, reference_stats.cov)
    return (value, gen) if return_stats else value
