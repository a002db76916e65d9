"""Memorisation / privacy checks of generated images and reports against the whole training set.

Images (:func:`image_privacy`)
------------------------------
Every generated image gets its nearest training image in two spaces:

- **feature space** (:func:`feature_nearest_neighbours`): Euclidean distance between feature
  vectors (e.g. the in-domain classifier's penultimate features from
  :mod:`xray_gen.evaluation.features`);
- **pixel space** (:func:`pixel_nearest_neighbours`): a shift-tolerant RMS distance, below.

Both are computed in float32 (matmuls at ``Precision.HIGHEST``, so no TF32/bf16 passes on GPU/TPU)
by jitted kernels over *chunks* of the queries and of the training set: the training data is read
once, as an iterable of batches (a NumPy array is split into chunks; a list of arrays, a generator
or a grain loader yielding arrays or dicts (``key`` picks the array) all work), re-chunked to a
fixed ``train_chunk`` rows (the last one padded and masked, so one compile), and a running top-1
minimum is kept per query. 100k training images therefore never need to be in memory at once;
the (preprocessed) queries do.

Distances use the expansion ``||a||^2 + ||b||^2 - 2 a.b`` clamped at 0 (one matmul per chunk).
To limit cancellation, feature vectors are first centred on the queries' mean (distances are
translation invariant) and compared pixel regions are standardised (mean 0, RMS 1), so the squared
norms are of the order of the distances. Feature sets with at most ``16`` dimensions (``exact=None``)
use exact differences instead. Absolute float32 error of a squared distance is ~1e-6 of the squared
norms, far below the near-copy scale.

Pixel distance. Images (uint8 or float in [-1, 1], (N, H, W) or (N, H, W, C); channels are averaged
to grey) are (1) resized to ``size`` x ``size`` (default 64, bilinear with antialiasing) when larger,
which bounds memory and compute, (2) blurred with a Gaussian of ``blur_sigma`` pixels (default 1, at
the resized resolution). Then compared regions are normalised on their own: the generated image's
centre crop and every shifted training window are standardised (``normalise="standardise"``, mean 0
and RMS 1; ``"mean"`` subtracts the mean only, ``"none"`` keeps values). The distance of a
generated image ``g`` to a training image ``t`` is

    d(g, t) = min over |dy|, |dx| <= max_shift of  RMS( g[centre] - t[centre shifted by (dy, dx)] )

where ``centre`` is ``g`` without a ``max_shift + border`` frame (so every shifted window lies inside
``t``; the extra ``border``, default 2, drops the rim where the blur's edge padding differs between
a shifted copy and its source); shifts are in resized pixels (``max_shift=2`` at 64 px is 8 px at
256 px). Why this form: the min over translations catches copies shifted by a few pixels (a plain
RMS does not); the standardisation makes it invariant to brightness offsets and contrast changes
(for standardised regions the RMS is exactly ``sqrt(2 (1 - r))``, ``r`` their normalised
cross-correlation, so this *is* the max-over-shifts NCC in distance form, in [0, 2], and it keeps
the matmul expansion); the blur removes pixel-level noise, which otherwise dominates the distance
between the (smooth, structurally similar) chest radiographs of different patients: on the 32 px
phantom, copies with +-10 grey-level noise, a +-10 offset and 1-2 px shifts are >= 1.7x closer to
their source than any unrelated image is to its nearest training image. The RMS (not the mean
absolute difference) because the matmul expansion gives it.

Calibrated near-copy rate. The nearest-train distances of real held-out images (the reference set,
e.g. the test split) give the distances of a *non-copied* image from the same distribution; the
threshold is their ``percentile``-th percentile (default 1st) and the near-copy rate is the fraction
of generated images strictly below it (expected ~percentile/100 without memorisation, more with it).
Its bootstrap interval (:func:`xray_gen.evaluation.metrics.bootstrap_ci`) resamples generated
images with the threshold fixed, so the threshold's own sampling error is not in it.

Patient re-identification (:func:`reidentification_score`): the mean / max probability, from a
same-patient scoring callable (e.g. a VCN-style siamese net), that a generated image shows the
patient of its nearest training image.

Reports (:func:`report_privacy`)
--------------------------------
- nearest training report by the Jaccard index of the sets of word 4-grams (``n``; words are
  lower-cased ``[a-z0-9]`` runs, punctuation dropped; a report shorter than ``n`` words is one
  gram), computed with sparse matrix products over chunks of the streamed training reports;
- verbatim-copy rate: the generated report equals a training report after lower-casing and
  collapsing whitespace;
- copied-sentence rate: sentences (:func:`xray_gen.data.reports.split_sentences`, then
  :func:`normalise_sentence`: lower-cased, whitespace collapsed, final ``.!?`` dropped) of
  generated reports that occur verbatim in a training report. Radiology boilerplate ("no
  pneumothorax.") is copied by any model, so the same rates for real held-out reports are
  reported as the baseline;
- de-identification placeholder leaks per report (:data:`PLACEHOLDER_PATTERNS`: Open-i ``XXXX``,
  MIMIC-CXR ``___``, MIMIC-III ``[**...**]``), also counted in the training and reference reports.

Every entry point returns a JSON-able dict, with the closest (generated, training) pairs (top-k)
for side-by-side display.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from xray_gen.data import reports
from xray_gen.evaluation.metrics import bootstrap_ci

__all__ = [
    "feature_nearest_neighbours",
    "pixel_nearest_neighbours",
    "preprocess_pixels",
    "calibrate_threshold",
    "near_copy_rate",
    "near_copy_summary",
    "closest_pairs",
    "gather_rows",
    "reidentification_score",
    "image_privacy",
    "normalise_report",
    "normalise_sentence",
    "normalised_sentences",
    "word_ngrams",
    "placeholder_counts",
    "PLACEHOLDER_PATTERNS",
    "report_privacy",
]

_HI = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------------------------------------------
# Batches
# ------------------------------------------------------------------------------------------------


def _iter_arrays(data, key: Optional[str], chunk: int) -> Iterator[np.ndarray]:
    """Arrays from an array (split in ``chunk`` rows) or an iterable of arrays / dicts of arrays."""
    if isinstance(data, (np.ndarray, jax.Array)):
        for i in range(0, data.shape[0], chunk):
            yield np.asarray(data[i:i + chunk])
        return
    for batch in data:
        if isinstance(batch, Mapping):
            if key is None or key not in batch:
                raise KeyError(f"privacy: batch is a dict with keys {sorted(batch)}; pass key=")
            batch = batch[key]
        batch = np.asarray(batch)
        if batch.ndim == 0:
            raise ValueError("privacy: training batches must be arrays with a leading batch axis")
        yield batch


def _rechunk(arrays: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of arrays into arrays of exactly ``size`` rows (the last may be shorter)."""
    buf: List[np.ndarray] = []
    n = 0
    for a in arrays:
        while a.shape[0]:
            take = min(size - n, a.shape[0])
            buf.append(a[:take])
            n += take
            a = a[take:]
            if n == size:
                yield buf[0] if len(buf) == 1 else np.concatenate(buf)
                buf, n = [], 0
    if n:
        yield buf[0] if len(buf) == 1 else np.concatenate(buf)


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] == rows:
        return a
    return np.concatenate([a, np.zeros((rows - a.shape[0],) + a.shape[1:], a.dtype)])


# ------------------------------------------------------------------------------------------------
# Streaming nearest neighbours
# ------------------------------------------------------------------------------------------------


def _update(best, idx, d2, offset):
    d, j = d2.min(axis=-1), d2.argmin(axis=-1)
    d, j = d.reshape(-1), j.reshape(-1)
    better = d < best  # strict: the earliest training row wins ties
    return jnp.where(better, d, best), jnp.where(better, j.astype(jnp.int32) + offset, idx)


@functools.partial(jax.jit, static_argnames=("exact",))
def _feature_step(best, idx, q, t, valid, offset, exact: bool):
    """q: (n_chunks, bq, D); t: (bt, D); valid: (bt,). Running top-1 of squared distances."""
    t_sq = jnp.sum(t * t, axis=-1)

    def one(qc):
        if exact:
            d2 = jnp.sum(jnp.square(qc[:, None, :] - t[None, :, :]), axis=-1)
        else:
            g = jnp.dot(qc, t.T, precision=_HI)
            d2 = jnp.maximum(jnp.sum(qc * qc, axis=-1)[:, None] + t_sq[None, :] - 2.0 * g, 0.0)
        return jnp.where(valid[None, :], d2, jnp.inf)

    return _update(best, idx, jax.lax.map(one, q), offset)


def _normalise_rows(x, normalise: str):
    """Per row (one image or window, flattened): 'standardise' (mean 0, RMS 1), 'mean', or 'none'."""
    if normalise in ("standardise", "mean"):
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    if normalise == "standardise":
        x = x / (jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True)) + 1e-6)
    return x


@functools.partial(jax.jit, static_argnames=("max_shift", "normalise"))
def _pixel_step(best, idx, q, t, valid, offset, max_shift: int, normalise: str):
    """q: (n_chunks, bq, h*w) normalised centre crops; t: (bt, H, W) images. Each shifted window of
    t is normalised on its own (windowed NCC); min over shifts, then running top-1."""
    s = max_shift
    bt, H, W = t.shape
    h, w = H - 2 * s, W - 2 * s
    offsets = jnp.array([(dy, dx) for dy in range(2 * s + 1) for dx in range(2 * s + 1)], jnp.int32)

    def one(qc):
        q_sq = jnp.sum(qc * qc, axis=-1)

        def body(carry, off):
            tw = jax.lax.dynamic_slice(t, (0, off[0], off[1]), (bt, h, w)).reshape(bt, h * w)
            tw = _normalise_rows(tw, normalise)
            g = jnp.dot(qc, tw.T, precision=_HI)
            d2 = q_sq[:, None] + jnp.sum(tw * tw, axis=-1)[None, :] - 2.0 * g
            return jnp.minimum(carry, d2), None

        d2, _ = jax.lax.scan(body, jnp.full((qc.shape[0], bt), jnp.inf, jnp.float32), offsets)
        return jnp.where(valid[None, :], jnp.maximum(d2, 0.0), jnp.inf)

    return _update(best, idx, jax.lax.map(one, q), offset)


class _Stream:
    """Running nearest training row of a fixed set of (preprocessed) queries."""

    def __init__(self, queries: np.ndarray, step: Callable, query_chunk: int, train_chunk: int):
        self.n = queries.shape[0]
        if self.n == 0:
            raise ValueError("privacy: no query images/features")
        nc = -(-self.n // query_chunk)
        q = _pad_rows(queries.astype(np.float32), nc * query_chunk)
        self.q = jnp.asarray(q.reshape((nc, query_chunk) + q.shape[1:]))
        self.step, self.train_chunk = step, train_chunk
        self.best = jnp.full((nc * query_chunk,), jnp.inf, jnp.float32)
        self.idx = jnp.full((nc * query_chunk,), -1, jnp.int32)
        self.seen = 0

    def update(self, t: np.ndarray):
        n = t.shape[0]
        valid = np.arange(self.train_chunk) < n
        t = jnp.asarray(_pad_rows(t.astype(np.float32), self.train_chunk))
        self.best, self.idx = self.step(self.best, self.idx, self.q, t, jnp.asarray(valid),
                                        jnp.int32(self.seen))
        self.seen += n

    def result(self) -> Tuple[np.ndarray, np.ndarray]:
        if self.seen == 0:
            raise ValueError("privacy: the training data was empty (an exhausted iterator?)")
        return np.asarray(self.best)[:self.n], np.asarray(self.idx)[:self.n]


def _feature_stream(queries, query_chunk, train_chunk, exact):
    q = np.asarray(queries, np.float64)
    if q.ndim != 2:
        raise ValueError(f"features must be (N, D), got {q.shape}")
    centre = q.mean(axis=0)
    exact = q.shape[1] <= 16 if exact is None else bool(exact)
    stream = _Stream((q - centre).astype(np.float32),
                     functools.partial(_feature_step, exact=exact), query_chunk, train_chunk)
    prep = lambda t: (np.asarray(t, np.float64).reshape(t.shape[0], -1) - centre).astype(np.float32)
    return stream, prep


def feature_nearest_neighbours(queries, train, *, key: Optional[str] = None,
                               query_chunk: int = 256, train_chunk: int = 1024,
                               exact: Optional[bool] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Euclidean distance and index of the nearest training feature vector of every query.

    ``queries``: (N, D). ``train``: an (M, D) array or an iterable of (m, D) batches (or dicts,
    ``key`` picking the array); read once. Indices count training rows in iteration order.
    ``exact``: exact differences instead of the clamped expansion (default: when D <= 16).
    Returns float32 (N,) distances and int32 (N,) indices.
    """
    stream, prep = _feature_stream(queries, query_chunk, train_chunk, exact)
    for t in _rechunk(_iter_arrays(train, key, train_chunk), train_chunk):
        stream.update(prep(t))
    d2, idx = stream.result()
    return np.sqrt(d2), idx


@functools.partial(jax.jit, static_argnames=("size", "blur_sigma"))
def _prep_pixels(x, size, blur_sigma):
    if x.ndim == 4:
        x = x.mean(axis=-1)
    n, H, W = x.shape
    if size is not None and (H > size or W > size):
        x = jax.image.resize(x, (n, size, size), "linear", antialias=True)
    if blur_sigma and blur_sigma > 0:
        r = int(math.ceil(3 * blur_sigma))
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / blur_sigma) ** 2)
        k = (k / k.sum()).astype(np.float32)
        for axis in (1, 2):
            pad = [(0, 0)] * 3
            pad[axis] = (r, r)
            xp = jnp.pad(x, pad, mode="edge")
            L = x.shape[axis]
            x = sum(float(k[i]) * jax.lax.slice_in_dim(xp, i, i + L, axis=axis) for i in range(2 * r + 1))
    return x


def preprocess_pixels(images, *, size: Optional[int] = 64, blur_sigma: float = 1.0) -> np.ndarray:
    """Images (uint8 or float in [-1, 1], (N, H, W[, C])) -> grey, resized, blurred float32 (N, h, w)
    (the normalisation happens per compared crop/window)."""
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected (N, H, W) or (N, H, W, C) images, got {x.shape}")
    x = x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return np.asarray(_prep_pixels(jnp.asarray(x), size, float(blur_sigma)))


def _pixel_stream(queries, query_chunk, train_chunk, size, max_shift, blur_sigma, normalise, border):
    if normalise not in ("standardise", "mean", "none"):
        raise ValueError(f"normalise must be 'standardise', 'mean' or 'none', got {normalise!r}")
    cfg = dict(size=size, blur_sigma=blur_sigma)
    q = preprocess_pixels(queries, **cfg)
    s, b = int(max_shift), int(border)
    H, W = q.shape[1:]
    if s < 0 or b < 0 or 2 * (s + b) >= min(H, W):
        raise ValueError(f"max_shift={max_shift} + border={border} too large for {H}x{W} images")
    crops = q[:, s + b:H - s - b, s + b:W - s - b].reshape(q.shape[0], -1)
    crops = np.asarray(_normalise_rows(jnp.asarray(crops), normalise))
    npix = crops.shape[1]
    step = functools.partial(_pixel_step, max_shift=s, normalise=normalise)
    stream = _Stream(crops, step, query_chunk, train_chunk)

    def prep(t):
        t = preprocess_pixels(t, **cfg)
        if t.shape[1:] != (H, W):
            raise ValueError(f"training images preprocess to {t.shape[1:]}, queries to {(H, W)}")
        return t[:, b:H - b, b:W - b]

    return stream, prep, npix


def pixel_nearest_neighbours(queries, train, *, key: Optional[str] = "frontal", size: Optional[int] = 64,
                             max_shift: int = 2, blur_sigma: float = 1.0, normalise: str = "standardise",
                             border: int = 2, query_chunk: int = 128,
                             train_chunk: int = 512) -> Tuple[np.ndarray, np.ndarray]:
    """Shift-tolerant pixel distance (module docstring) and index of the nearest training image.

    ``queries``: (N, H, W[, C]) uint8 or float in [-1, 1]; ``train``: array or iterable of batches
    (dicts: ``key``), read once. Returns float32 (N,) RMS distances (in standardised units for
    ``normalise="standardise"``) and int32 (N,) indices.
    """
    stream, prep, npix = _pixel_stream(queries, query_chunk, train_chunk, size, max_shift, blur_sigma,
                                       normalise, border)
    for t in _rechunk(_iter_arrays(train, key, train_chunk), train_chunk):
        stream.update(prep(t))
    d2, idx = stream.result()
    return np.sqrt(d2 / npix), idx


# ------------------------------------------------------------------------------------------------
# Calibration, pairs, re-identification
# ------------------------------------------------------------------------------------------------


def calibrate_threshold(reference_distances, percentile: float = 1.0) -> float:
    """The ``percentile``-th percentile (linear interpolation) of real held-out nearest-train distances."""
    d = np.asarray(reference_distances, np.float64).reshape(-1)
    d = d[np.isfinite(d)]
    if d.size == 0:
        raise ValueError("calibrate_threshold: no finite reference distances")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return float(np.percentile(d, percentile))


def near_copy_rate(distances, threshold: float) -> float:
    """Fraction of distances strictly below ``threshold``."""
    d = np.asarray(distances, np.float64).reshape(-1)
    return float(np.mean(d < threshold)) if d.size else float("nan")


def _quantiles(d) -> Dict[str, float]:
    d = np.asarray(d, np.float64)
    qs = np.percentile(d, [0, 1, 5, 50]) if d.size else [float("nan")] * 4
    return {"min": float(qs[0]), "p1": float(qs[1]), "p5": float(qs[2]), "median": float(qs[3]),
            "mean": float(d.mean()) if d.size else float("nan")}


def near_copy_summary(generated_distances, reference_distances, *, percentile: float = 1.0,
                      n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> Dict[str, Any]:
    """Calibrated threshold, near-copy rate of the generated images with a bootstrap CI, and baselines.

    ``reference_rate`` is the reference set's own rate (~percentile/100 by construction);
    ``median_ratio`` = median generated / median reference nearest-train distance (< 1: generated
    images sit closer to the training set than real unseen images do).
    """
    g = np.asarray(generated_distances, np.float64).reshape(-1)
    r = np.asarray(reference_distances, np.float64).reshape(-1)
    thr = calibrate_threshold(r, percentile)
    point, lo, hi = bootstrap_ci(lambda d: float(np.mean(d < thr)), g, n=n_boot, seed=seed, alpha=alpha)
    med_r = float(np.median(r))
    return {
        "percentile": float(percentile),
        "threshold": thr,
        "rate": point,
        "rate_ci": [lo, hi],
        "ci_level": 1.0 - alpha,
        "n_copies": int(np.sum(g < thr)),
        "expected_rate": float(percentile) / 100.0,
        "reference_rate": near_copy_rate(r, thr),
        "median_ratio": float(np.median(g)) / med_r if med_r > 0 else float("nan"),
        "generated": _quantiles(g),
        "reference": _quantiles(r),
        "n_generated": int(g.size),
        "n_reference": int(r.size),
    }


def closest_pairs(distances, indices, k: int = 16, *, largest: bool = False,
                  name: str = "distance") -> List[Dict[str, Any]]:
    """The ``k`` (generated, training) pairs with the smallest (``largest``: biggest) score, in order."""
    d = np.asarray(distances, np.float64).reshape(-1)
    order = np.argsort(-d if largest else d, kind="stable")[:k]
    return [{"generated": int(i), "train": int(indices[i]), name: float(d[i])} for i in order]


def gather_rows(train, indices, *, key: Optional[str] = "frontal", chunk: int = 1024) -> np.ndarray:
    """Training rows at ``indices`` (iteration order, as returned by the neighbour functions), in the
    order of ``indices``, with one more pass over ``train`` (which must be re-iterable)."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    wanted: Dict[int, List[int]] = {}
    for pos, i in enumerate(indices):
        wanted.setdefault(int(i), []).append(pos)
    out: Optional[np.ndarray] = None
    found, seen = 0, 0
    for batch in _iter_arrays(train, key, chunk):
        for j in range(batch.shape[0]):
            for pos in wanted.get(seen + j, ()):
                if out is None:
                    out = np.empty((indices.size,) + batch.shape[1:], batch.dtype)
                out[pos] = batch[j]
                found += 1
        seen += batch.shape[0]
    if found != indices.size:
        raise ValueError(f"gather_rows: found {found} of {indices.size} rows in {seen} training rows "
                         "(pass a re-iterable training set: an array, a list, a re-iterable loader)")
    return out


def reidentification_score(same_patient_fn: Callable, generated, neighbours, *, batch_size: int = 64,
                           threshold: float = 0.5, top_k: int = 16) -> Dict[str, Any]:
    """How likely a generated image shows the patient of its nearest training image.

    ``same_patient_fn(generated_batch, neighbour_batch) -> probabilities`` (in [0, 1], one per
    pair; apply the sigmoid to a siamese net's logits first); ``neighbours[i]`` is the training
    neighbour of ``generated[i]`` (see :func:`gather_rows`). Returns mean/median/max probability,
    the fraction above ``threshold`` and the ``top_k`` most likely pairs (by generated index).
    """
    generated, neighbours = np.asarray(generated), np.asarray(neighbours)
    if generated.shape[0] != neighbours.shape[0]:
        raise ValueError("reidentification_score: generated and neighbours differ in length")
    probs = []
    for i in range(0, generated.shape[0], batch_size):
        p = np.asarray(same_patient_fn(generated[i:i + batch_size], neighbours[i:i + batch_size]),
                       np.float64).reshape(-1)
        probs.append(p)
    p = np.concatenate(probs) if probs else np.zeros(0)
    if p.size != generated.shape[0]:
        raise ValueError(f"same_patient_fn returned {p.size} values for {generated.shape[0]} pairs")
    if p.size and (np.nanmin(p) < 0 or np.nanmax(p) > 1):
        raise ValueError("same_patient_fn must return probabilities in [0, 1] (apply a sigmoid to logits)")
    order = np.argsort(-p, kind="stable")[:top_k]
    return {
        "mean": float(p.mean()) if p.size else float("nan"),
        "median": float(np.median(p)) if p.size else float("nan"),
        "max": float(p.max()) if p.size else float("nan"),
        "threshold": float(threshold),
        "rate_above_threshold": float(np.mean(p > threshold)) if p.size else float("nan"),
        "n": int(p.size),
        "top": [{"generated": int(i), "probability": float(p[i])} for i in order],
    }


def image_privacy(generated_images, reference_images, train_images, *,
                  generated_features=None, reference_features=None, train_features=None,
                  feature_fn: Optional[Callable] = None, same_patient_fn: Optional[Callable] = None,
                  reid_space: str = "pixel", key: Optional[str] = "frontal",
                  feature_key: Optional[str] = None,
                  size: Optional[int] = 64, max_shift: int = 2, blur_sigma: float = 1.0,
                  normalise: str = "standardise", border: int = 2, percentile: float = 1.0, top_k: int = 16,
                  query_chunk: int = 128, train_chunk: int = 512, exact: Optional[bool] = None,
                  n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> Dict[str, Any]:
    """Memorisation report for generated images; JSON-able.

    ``generated_images`` / ``reference_images`` (real held-out, e.g. test): arrays (N, H, W[, C]),
    uint8 or float in [-1, 1]. ``train_images``: array or iterable of batches (dicts: ``key``).
    Feature space is added when features are available: ``*_features`` arrays / an iterable of
    training feature batches (``feature_key`` for dicts), or ``feature_fn(images) -> (n, D)`` which
    computes whatever is missing; with ``feature_fn`` and no ``train_features`` the training set is
    read once for both spaces. ``same_patient_fn`` adds :func:`reidentification_score` against the
    nearest training image in ``reid_space`` ("pixel" or "feature"); it re-reads ``train_images``.

    Returns ``{"pixel": {...}, "feature": {...}?, "reidentification": {...}?, "n_train": ...}``; each
    space has its configuration, :func:`near_copy_summary` and the ``top_k`` closest pairs.
    """
    n_gen = int(np.shape(generated_images)[0])
    queries = np.concatenate([_to_float(generated_images), _to_float(reference_images)])
    pix, pix_prep, npix = _pixel_stream(queries, query_chunk, train_chunk, size, max_shift, blur_sigma,
                                        normalise, border)
    use_features = feature_fn is not None or (
        generated_features is not None and reference_features is not None and train_features is not None)
    feat = feat_prep = None
    if use_features:
        gf = generated_features if generated_features is not None else feature_fn(generated_images)
        rf = reference_features if reference_features is not None else feature_fn(reference_images)
        feat, feat_prep = _feature_stream(np.concatenate([np.asarray(gf), np.asarray(rf)]), query_chunk,
                                          train_chunk, exact)
        if train_features is None and feature_fn is None:
            raise ValueError("image_privacy: training features need train_features or feature_fn")
    joint = use_features and train_features is None
    n_train = 0
    for t in _rechunk(_iter_arrays(train_images, key, train_chunk), train_chunk):
        pix.update(pix_prep(t))
        if joint:
            feat.update(feat_prep(np.asarray(feature_fn(t))))
        n_train += t.shape[0]
    if use_features and not joint:
        for t in _rechunk(_iter_arrays(train_features, feature_key, train_chunk), train_chunk):
            feat.update(feat_prep(t))

    out: Dict[str, Any] = {"n_generated": n_gen, "n_reference": int(queries.shape[0] - n_gen),
                           "n_train": n_train}
    neighbours = {}
    d2, idx = pix.result()
    d = np.sqrt(d2 / npix)
    neighbours["pixel"] = idx[:n_gen]
    out["pixel"] = {
        "distance": "min over shifts of RMS difference of blurred, normalised images",
        "config": {"size": size, "max_shift": int(max_shift), "blur_sigma": float(blur_sigma),
                   "normalise": normalise, "border": int(border)},
        "near_copy": near_copy_summary(d[:n_gen], d[n_gen:], percentile=percentile, n_boot=n_boot,
                                       seed=seed, alpha=alpha),
        "closest_pairs": closest_pairs(d[:n_gen], idx[:n_gen], top_k),
        "reference_distances": d[n_gen:].tolist(),  # real held-out -> train: the histogram's yardstick
    }
    if use_features:
        d2, idx = feat.result()
        d = np.sqrt(d2)
        neighbours["feature"] = idx[:n_gen]
        out["feature"] = {
            "distance": "euclidean",
            "near_copy": near_copy_summary(d[:n_gen], d[n_gen:], percentile=percentile, n_boot=n_boot,
                                           seed=seed, alpha=alpha),
            "closest_pairs": closest_pairs(d[:n_gen], idx[:n_gen], top_k),
            "reference_distances": d[n_gen:].tolist(),
        }
        if feat.seen != n_train and joint:
            raise AssertionError("feature and pixel passes saw different training sets")
    if same_patient_fn is not None:
        if reid_space not in neighbours:
            raise ValueError(f"reid_space={reid_space!r} not computed (have {sorted(neighbours)})")
        nb = gather_rows(train_images, neighbours[reid_space], key=key, chunk=train_chunk)
        out["reidentification"] = dict(
            reidentification_score(same_patient_fn, np.asarray(generated_images), nb, top_k=top_k),
            space=reid_space)
    return out


def _to_float(images) -> np.ndarray:
    x = np.asarray(images)
    return x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------

#: De-identification placeholders: Open-i "XXXX", MIMIC-CXR "___", MIMIC-III "[**Name**]".
PLACEHOLDER_PATTERNS: Dict[str, str] = {
    "xxxx": r"(?<![A-Za-z])[Xx]{3,}(?![A-Za-z])",
    "underscores": r"_{2,}",
    "mimic_brackets": r"\[\*\*.*?\*\*\]",
}

_WS = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+")


def normalise_report(text: str) -> str:
    """Lower-case, whitespace runs collapsed to one space, stripped."""
    return _WS.sub(" ", str(text)).strip().lower()


def normalise_sentence(sentence: str) -> str:
    """`normalise_report` with the final .!? dropped, so "No effusion." and "no  effusion" match."""
    return normalise_report(sentence).rstrip(".!? ").strip()


def normalised_sentences(text: str) -> List[str]:
    """The shared splitter's sentences of ``text``, normalised for verbatim comparison."""
    return [n for n in (normalise_sentence(s) for s in reports.split_sentences(str(text))) if n]


def word_ngrams(text: str, n: int = 4) -> frozenset:
    """Set of word n-grams (lower-cased [a-z0-9] runs); a shorter non-empty text is one gram."""
    words = _WORD.findall(str(text).lower())
    if not words:
        return frozenset()
    if len(words) < n:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def placeholder_counts(text: str, patterns: Optional[Mapping[str, str]] = None) -> Dict[str, int]:
    """Occurrences of each de-identification placeholder pattern in ``text``."""
    patterns = PLACEHOLDER_PATTERNS if patterns is None else patterns
    return {name: len(re.findall(p, str(text))) for name, p in patterns.items()}


def _iter_texts(data, key: Optional[str]) -> Iterator[str]:
    for item in data:
        if isinstance(item, Mapping):
            item = item[key]
        if isinstance(item, (str, bytes)):
            item = [item]
        for t in np.asarray(item, dtype=object).reshape(-1):
            yield t.decode() if isinstance(t, bytes) else str(t)


def _leak_summary(texts: Sequence[str], patterns) -> Dict[str, Any]:
    counts = [placeholder_counts(t, patterns) for t in texts]
    per_report = np.array([sum(c.values()) for c in counts], np.float64)
    return {
        "mean_per_report": float(per_report.mean()) if len(texts) else float("nan"),
        "rate_reports_with_leak": float(np.mean(per_report > 0)) if len(texts) else float("nan"),
        "total": {k: int(sum(c[k] for c in counts)) for k in patterns},
        "per_report": [int(x) for x in per_report],
    }


def report_privacy(generated_reports: Sequence[str], train_reports,
                   reference_reports: Optional[Sequence[str]] = None,
                   *, key: Optional[str] = "report", n: int = 4, top_k: int = 16, train_chunk: int = 2048,
                   patterns: Optional[Mapping[str, str]] = None, n_boot: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> Dict[str, Any]:
    """Memorisation report for generated reports; JSON-able (module docstring for the definitions).

    ``train_reports``: an iterable of strings, of lists/arrays of strings, or of dicts (``key``),
    read once. ``reference_reports`` (real held-out reports) get the same statistics as a baseline.
    Returns ``{"generated": {...}, "reference": {...}?, "train_leaks": {...}, "closest_pairs": [...]}``.
    """
    import scipy.sparse as sp

    patterns = PLACEHOLDER_PATTERNS if patterns is None else dict(patterns)
    gen = [str(t) for t in generated_reports]
    ref = [str(t) for t in reference_reports] if reference_reports is not None else []
    queries = gen + ref
    nq = len(queries)
    if not gen:
        raise ValueError("report_privacy: no generated reports")

    # Query-side indices: normalised text -> queries, sentence -> (query, slot), n-gram vocabulary.
    text_to_q: Dict[str, List[int]] = {}
    for i, t in enumerate(queries):
        text_to_q.setdefault(normalise_report(t), []).append(i)
    sents = [normalised_sentences(t) for t in queries]
    sent_to_slots: Dict[str, List[Tuple[int, int]]] = {}
    for i, ss in enumerate(sents):
        for j, s in enumerate(ss):
            sent_to_slots.setdefault(s, []).append((i, j))
    copied_sent = [np.zeros(len(ss), bool) for ss in sents]
    verbatim = np.zeros(nq, bool)
    verbatim_idx = np.full(nq, -1, np.int64)

    vocab: Dict[tuple, int] = {}
    rows, cols = [], []
    q_len = np.zeros(nq, np.float64)
    for i, t in enumerate(queries):
        grams = word_ngrams(t, n)
        q_len[i] = len(grams)
        for g in grams:
            rows.append(i)
            cols.append(vocab.setdefault(g, len(vocab)))
    V = max(len(vocab), 1)
    Q = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(nq, V))
    best = np.zeros(nq, np.float64)
    best_idx = np.full(nq, -1, np.int64)

    train_counts = {k: 0 for k in patterns}
    train_leaky = 0
    seen = 0

    def flush(chunk: List[str], start: int):
        t_rows, t_cols, t_len = [], [], np.zeros(len(chunk), np.float64)
        for r, t in enumerate(chunk):
            grams = word_ngrams(t, n)
            t_len[r] = len(grams)
            for g in grams:
                c = vocab.get(g)
                if c is not None:
                    t_rows.append(r)
                    t_cols.append(c)
        T = sp.csr_matrix((np.ones(len(t_rows), np.float32), (t_rows, t_cols)), shape=(len(chunk), V))
        inter = (Q @ T.T).tocoo()
        if inter.nnz == 0:
            return
        qi, tj, c = inter.row, inter.col, inter.data.astype(np.float64)
        jac = c / (q_len[qi] + t_len[tj] - c)
        order = np.lexsort((tj, -jac, qi))  # per query: highest Jaccard, then earliest training row
        qi, tj, jac = qi[order], tj[order], jac[order]
        first = np.ones(qi.size, bool)
        first[1:] = qi[1:] != qi[:-1]
        qi, tj, jac = qi[first], tj[first], jac[first]
        better = jac > best[qi]
        best[qi[better]] = jac[better]
        best_idx[qi[better]] = tj[better] + start

    chunk: List[str] = []
    for t in _iter_texts(train_reports, key):
        for i in text_to_q.get(normalise_report(t), ()):
            if not verbatim[i]:
                verbatim[i], verbatim_idx[i] = True, seen
        for s in set(normalised_sentences(t)):
            for i, j in sent_to_slots.get(s, ()):
                copied_sent[i][j] = True
        c = placeholder_counts(t, patterns)
        for k in c:
            train_counts[k] += c[k]
        train_leaky += any(c.values())
        chunk.append(t)
        seen += 1
        if len(chunk) == train_chunk:
            flush(chunk, seen - len(chunk))
            chunk = []
    if chunk:
        flush(chunk, seen - len(chunk))
    if seen == 0:
        raise ValueError("report_privacy: the training reports were empty (an exhausted iterator?)")

    def summary(lo: int, hi: int, texts: Sequence[str]) -> Dict[str, Any]:
        v = verbatim[lo:hi].astype(np.float64)
        n_copied = np.array([copied_sent[i].sum() for i in range(lo, hi)], np.float64)
        n_sent = np.array([copied_sent[i].size for i in range(lo, hi)], np.float64)
        vr = bootstrap_ci(lambda x: float(np.mean(x)), v, n=n_boot, seed=seed, alpha=alpha)
        sr = bootstrap_ci(lambda a, b: float(a.sum() / b.sum()) if b.sum() else float("nan"),
                          n_copied, n_sent, n=n_boot, seed=seed, alpha=alpha)
        jac = best[lo:hi]
        return {
            "n": hi - lo,
            "verbatim_rate": vr[0], "verbatim_rate_ci": [vr[1], vr[2]],
            "verbatim_count": int(v.sum()),
            "copied_sentence_rate": sr[0], "copied_sentence_rate_ci": [sr[1], sr[2]],
            "copied_sentences": int(n_copied.sum()), "sentences": int(n_sent.sum()),
            "nearest_jaccard": _quantiles(jac),
            "placeholder_leaks": _leak_summary(texts, patterns),
        }

    out: Dict[str, Any] = {
        "ngram": n,
        "n_train": seen,
        "generated": summary(0, len(gen), gen),
        "train_leaks": {"total": train_counts,
                        "rate_reports_with_leak": train_leaky / seen},
    }
    out["generated"]["verbatim_pairs"] = [{"generated": int(i), "train": int(verbatim_idx[i])}
                                          for i in np.flatnonzero(verbatim[:len(gen)])[:top_k]]
    if ref:
        out["reference"] = summary(len(gen), nq, ref)
    out["closest_pairs"] = closest_pairs(best[:len(gen)], best_idx[:len(gen)], top_k, largest=True,
                                         name="jaccard")
    return out
