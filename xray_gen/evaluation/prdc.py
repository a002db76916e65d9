"""Precision, recall, density and coverage of a generated feature set (Naeem et al. 2020).

Definitions follow the reference implementation (clovaai/generative-evaluation-prdc), with
Euclidean distances between feature vectors and ``k`` nearest neighbours (default 5):

- ``r_real[i]``: distance from real sample i to its k-th nearest *other* real sample (the
  reference takes the (k+1)-th smallest distance including the zero self-distance; here the self
  entry is excluded explicitly, which gives the same value and stays exact when the computed self
  distance is not exactly 0 or when there are duplicate samples). ``r_fake`` likewise.
- precision = fraction of generated samples inside at least one real ball
  ``d(real_i, g) < r_real[i]``
- recall    = fraction of real samples inside at least one generated ball
  ``d(r, fake_j) < r_fake[j]``
- density   = (1/k) * mean over generated samples of the number of real balls containing them
- coverage  = fraction of real samples whose nearest generated sample is inside their own ball

Comparisons are strict (``<``) as in the reference, so ties on a ball boundary are outside; with
duplicate samples a radius may be 0 and its ball is then empty. Ties among neighbour distances
do not matter: the k-th smallest value is the same whichever tied sample is counted.

Distances are computed in float64 numpy, in row chunks of ``chunk_size`` (memory about
``chunk_size * max(n_real, n_fake) * 8`` bytes per temporary), so 10k x 10k sets need no dense
matrix. Everything is compared as squared distances (monotone, so identical results).

Confidence intervals (``bootstrap > 0``) use ``metrics.bootstrap_ci`` on the per-sample terms with
the radii held fixed at their full-set values: precision and density resample generated samples,
recall and coverage resample real samples. Resampling the feature sets themselves would create
duplicate points whose zero distances shrink the k-NN radii and bias every metric, so the interval
covers the sampling of the evaluated points, not the estimation of the radii.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from xray_gen.evaluation.metrics import bootstrap_ci

__all__ = ["knn_radii", "prdc", "prdc_per_class", "METRICS"]

METRICS = ("precision", "recall", "density", "coverage")

_DEFAULT_CHUNK = 1024


def _features(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"prdc: {name} features must be (n, dim), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"prdc: {name} features contain non-finite values")
    return x


def _check_k(k: int) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"prdc: k must be a positive integer, got {k}")
    return int(k)


def _check_count(n: int, k: int, name: str) -> None:
    if n < k + 1:
        raise ValueError(f"prdc: {n} {name} samples, need at least k + 1 = {k + 1} (k={k}) to "
                         f"define k-nearest-neighbour radii")


def _sq_dists(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    d = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    np.maximum(d, 0.0, out=d)
    return d


def _knn_sq_radii(x: np.ndarray, k: int, chunk_size: int) -> np.ndarray:
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        d = _sq_dists(x[start:stop], sq[start:stop], x, sq)
        rows = np.arange(stop - start)
        d[rows, rows + start] = np.inf  # exclude self
        out[start:stop] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def knn_radii(features, k: int = 5, chunk_size: int = _DEFAULT_CHUNK) -> np.ndarray:
    """Distance from each sample to its k-th nearest other sample (self excluded), (n,) float64."""
    k = _check_k(k)
    x = _features(features, "input")
    _check_count(x.shape[0], k, "input")
    return np.sqrt(_knn_sq_radii(x, k, int(chunk_size)))


def _per_sample_terms(real: np.ndarray, fake: np.ndarray, k: int, chunk_size: int):
    """Per-sample indicator/count arrays from which the four metrics are means."""
    r_real = _knn_sq_radii(real, k, chunk_size)
    r_fake = _knn_sq_radii(fake, k, chunk_size)
    real_sq = np.einsum("ij,ij->i", real, real)
    fake_sq = np.einsum("ij,ij->i", fake, fake)
    n_real, n_fake = real.shape[0], fake.shape[0]
    balls_containing_fake = np.zeros(n_fake, dtype=np.int64)
    real_in_fake_ball = np.zeros(n_real, dtype=bool)
    real_covered = np.zeros(n_real, dtype=bool)
    for start in range(0, n_real, chunk_size):
        stop = min(start + chunk_size, n_real)
        d = _sq_dists(real[start:stop], real_sq[start:stop], fake, fake_sq)  # (c, n_fake)
        balls_containing_fake += (d < r_real[start:stop, None]).sum(axis=0)
        real_in_fake_ball[start:stop] = (d < r_fake[None, :]).any(axis=1)
        real_covered[start:stop] = d.min(axis=1) < r_real[start:stop]
    fake_terms = {
        "precision": (balls_containing_fake > 0).astype(np.float64),
        "density": balls_containing_fake.astype(np.float64) / k,
    }
    real_terms = {
        "recall": real_in_fake_ball.astype(np.float64),
        "coverage": real_covered.astype(np.float64),
    }
    return fake_terms, real_terms


def _nan_result(bootstrap: int):
    nan = float("nan")
    return {m: ((nan, nan, nan) if bootstrap else nan) for m in METRICS}


def prdc(real_features, fake_features, k: int = 5, *, bootstrap: int = 0, seed: int = 0,
         alpha: float = 0.05, chunk_size: int = _DEFAULT_CHUNK,
         too_few: str = "raise") -> Dict[str, Union[float, Tuple[float, float, float]]]:
    """Precision, recall, density and coverage of ``fake_features`` against ``real_features``.

    Both are ``(n, dim)`` feature arrays (e.g. Inception pool features); ``n`` may differ between
    them but each needs at least ``k + 1`` rows (``too_few="raise"``, the default, raises a
    ValueError; ``too_few="nan"`` returns NaN for every metric instead).

    Returns ``{"precision", "recall", "density", "coverage"}`` as floats, or, with
    ``bootstrap=n > 0``, as ``(point, lower, upper)`` percentile intervals at level ``1 - alpha``
    from ``n`` resamples (see the module docstring for what is resampled).
    """
    k = _check_k(k)
    if too_few not in ("raise", "nan"):
        raise ValueError(f"prdc: too_few must be 'raise' or 'nan', got {too_few!r}")
    real = _features(real_features, "real")
    fake = _features(fake_features, "generated")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"prdc: feature dims differ: real {real.shape[1]}, generated "
                         f"{fake.shape[1]}")
    if min(real.shape[0], fake.shape[0]) < k + 1 and too_few == "nan":
        return _nan_result(bootstrap)
    _check_count(real.shape[0], k, "real")
    _check_count(fake.shape[0], k, "generated")
    if int(chunk_size) < 1:
        raise ValueError(f"prdc: chunk_size must be >= 1, got {chunk_size}")
    fake_terms, real_terms = _per_sample_terms(real, fake, k, int(chunk_size))
    if not bootstrap:
        out = {m: float(np.mean(t)) for m, t in {**fake_terms, **real_terms}.items()}
        return {m: out[m] for m in METRICS}

    def means(names):
        return lambda *arrays: {name: float(np.mean(a)) for name, a in zip(names, arrays)}

    fake_ci = bootstrap_ci(means(list(fake_terms)), *fake_terms.values(), n=int(bootstrap),
                           seed=seed, alpha=alpha)
    real_ci = bootstrap_ci(means(list(real_terms)), *real_terms.values(), n=int(bootstrap),
                           seed=seed + 1, alpha=alpha)
    out = {**fake_ci, **real_ci}
    return {m: out[m] for m in METRICS}


def _class_masks(masks, n: int, class_names: Optional[Sequence[str]], which: str
                 ) -> Dict[str, np.ndarray]:
    if isinstance(masks, Mapping):
        out = {str(name): np.asarray(m) for name, m in masks.items()}
    else:
        arr = np.asarray(masks)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"prdc_per_class: {which} masks must be (n,) / (n, classes) or a "
                             f"mapping name -> (n,), got shape {arr.shape}")
        names = (list(class_names) if class_names is not None
                 else [str(c) for c in range(arr.shape[1])])
        if len(names) != arr.shape[1]:
            raise ValueError(f"prdc_per_class: {len(names)} class names for {arr.shape[1]} "
                             f"{which} mask columns")
        out = {str(name): arr[:, c] for c, name in enumerate(names)}
    for name, m in out.items():
        if m.dtype != bool:
            raise ValueError(f"prdc_per_class: {which} mask for class {name!r} must be boolean, "
                             f"got {m.dtype}")
        if m.shape != (n,):
            raise ValueError(f"prdc_per_class: {which} mask for class {name!r} has shape "
                             f"{m.shape}, expected ({n},)")
    return out


def prdc_per_class(real_features, fake_features, real_masks, fake_masks, k: int = 5, *,
                   class_names: Optional[Sequence[str]] = None, too_few: str = "raise",
                   **kwargs) -> Dict[str, Dict]:
    """PRDC within each class: ``{class name: prdc(real[real_mask], fake[fake_mask])}``.

    Masks are boolean, either mappings ``name -> (n,)`` or arrays ``(n, classes)`` (multi-label:
    a sample may belong to several classes), named by ``class_names`` (default "0", "1", ...).
    Both sides must name the same classes. Radii are computed within each class subset. A class
    with fewer than ``k + 1`` samples on either side raises, or with ``too_few="nan"`` gets NaN
    metrics. Extra keyword arguments (``bootstrap``, ``seed``, ``alpha``, ``chunk_size``) go to
    :func:`prdc`.
    """
    real = _features(real_features, "real")
    fake = _features(fake_features, "generated")
    rm = _class_masks(real_masks, real.shape[0], class_names, "real")
    fm = _class_masks(fake_masks, fake.shape[0], class_names, "generated")
    if list(rm) != list(fm):
        raise ValueError(f"prdc_per_class: real classes {list(rm)} differ from generated "
                         f"classes {list(fm)}")
    out = {}
    for name in rm:
        try:
            out[name] = prdc(real[rm[name]], fake[fm[name]], k, too_few=too_few, **kwargs)
        except ValueError as e:
            raise ValueError(f"class {name!r}: {e}") from None
    return out
