"""Nearest training image of every query image, streamed once over the whole training set.

The compute kernel of the image privacy checks, kept apart from the scores built on its distances
(:mod:`xray_gen.evaluation.near_copies`, :mod:`xray_gen.evaluation.reidentification`) and from the
report that assembles them (:mod:`xray_gen.evaluation.image_privacy`): jitted searches in two
spaces, the batching that streams the training set, and :func:`gather_rows` to fetch the
neighbours found.

Every generated image (and every reference image, to calibrate) gets its nearest training image in two spaces:

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
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "feature_nearest_neighbours",
    "pixel_nearest_neighbours",
    "preprocess_pixels",
    "images_to_float",
    "feature_stream",
    "pixel_stream",
    "training_chunks",
    "gather_rows",
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



def training_chunks(data, key: Optional[str], chunk: int) -> Iterator[np.ndarray]:
    """The training data (array or iterable of batches / dicts: ``key``) in arrays of ``chunk`` rows."""
    return _rechunk(_iter_arrays(data, key, chunk), chunk)


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


def feature_stream(queries, query_chunk, train_chunk, exact):
    """(stream, prep): a running nearest-neighbour search of the (N, D) ``queries`` (centred on
    their mean) and the function that maps a training chunk into the same space."""
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
    stream, prep = feature_stream(queries, query_chunk, train_chunk, exact)
    for t in training_chunks(train, key, train_chunk):
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


def images_to_float(images) -> np.ndarray:
    """uint8 images -> float32 in [-1, 1]; float images are taken to be in [-1, 1] already."""
    x = np.asarray(images)
    return x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float32)


def preprocess_pixels(images, *, size: Optional[int] = 64, blur_sigma: float = 1.0) -> np.ndarray:
    """Images (uint8 or float in [-1, 1], (N, H, W[, C])) -> grey, resized, blurred float32 (N, h, w)
    (the normalisation happens per compared crop/window)."""
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected (N, H, W) or (N, H, W, C) images, got {x.shape}")
    return np.asarray(_prep_pixels(jnp.asarray(images_to_float(x)), size, float(blur_sigma)))


def pixel_stream(queries, query_chunk, train_chunk, size, max_shift, blur_sigma, normalise, border):
    """(stream, prep, npix): a running shift-tolerant search of the query images' normalised centre
    crops, the function that preprocesses a training chunk, and the pixels per crop (squared
    distance / npix = squared RMS)."""
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
    stream, prep, npix = pixel_stream(queries, query_chunk, train_chunk, size, max_shift, blur_sigma,
                                      normalise, border)
    for t in training_chunks(train, key, train_chunk):
        stream.update(prep(t))
    d2, idx = stream.result()
    return np.sqrt(d2 / npix), idx


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
