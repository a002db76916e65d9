"""Multi-scale SSIM (Wang et al. 2003) and an MS-SSIM diversity score for generated images.

Conventions follow ``metrics.ssim``: images are ``(N, H, W)`` or ``(N, H, W, C)`` in [-1, 1]
unless ``input_range`` says otherwise, rescaled (and clipped) to [0, 1] with ``max_val = 1``;
Gaussian window 11, sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' filtering; results are per image
(mean over channels) as float64 numpy arrays.

MS-SSIM follows ``tf.image.ssim_multiscale``: at each scale the contrast-structure term ``cs`` is
averaged over the image; between scales the images are 2x2 average-pooled (an odd side is first
padded by repeating its last row/column, TF's 'SYMMETRIC' padding); the result is
``prod_{s < S-1} relu(cs_s) ** w_s * relu(ssim_{S-1}) ** w_{S-1}``.

Small images: each scale needs both sides >= ``filter_size``. With the standard 5 weights
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333) an image needs sides of at least 161 (halving with
rounding up: 161/81/41/21/11) for all 5 scales (192 gives 192/96/48/24/12). Smaller images
use the largest number of scales S the size allows (:func:`num_scales`, e.g. 3 scales for 64x64,
4 for 128x128) with the first S weights renormalised to sum to 1, so the score stays a weighted
geometric mean (identical images give 1). When all the weights fit they are used as given (like
TF, whose weights sum to 1.0001). Images smaller than the window raise.
"""

from __future__ import annotations

import functools
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from xray_gen.evaluation.metrics import _to_unit_nhwc

__all__ = ["MSSSIM_WEIGHTS", "num_scales", "ms_ssim", "ms_ssim_diversity"]

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def num_scales(height: int, width: int, filter_size: int = 11, max_scales: int = 5) -> int:
    """How many MS-SSIM scales (at most ``max_scales``) an image of this size supports."""
    s, h, w = 0, int(height), int(width)
    while s < max_scales and min(h, w) >= filter_size:
        s += 1
        h, w = (h + 1) // 2, (w + 1) // 2
    return s


def _scale_weights(height: int, width: int, filter_size: int,
                   power_factors: Sequence[float]) -> Tuple[float, ...]:
    s = num_scales(height, width, filter_size, len(power_factors))
    if s == 0:
        raise ValueError(f"ms_ssim: images {height}x{width} are smaller than the "
                         f"{filter_size}x{filter_size} window")
    w = tuple(float(p) for p in power_factors)
    if s < len(w):
        total = sum(w[:s])
        w = tuple(p / total for p in w[:s])
    return w


def _gauss_1d(size: int, sigma: float) -> np.ndarray:
    c = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(c ** 2) / (2.0 * sigma ** 2))
    return (g / g.sum()).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("weights", "filter_size", "filter_sigma", "k1", "k2"))
def _ms_ssim_unit(a, b, weights, filter_size, filter_sigma, k1, k2):
    """MS-SSIM of [0, 1] NHWC batches -> (N,) float32."""
    n, _, _, c = a.shape
    # channels into the batch: (N*C, H, W, 1)
    a = jnp.transpose(a, (0, 3, 1, 2)).reshape(n * c, a.shape[1], a.shape[2], 1)
    b = jnp.transpose(b, (0, 3, 1, 2)).reshape(n * c, b.shape[1], b.shape[2], 1)
    g = jnp.asarray(_gauss_1d(filter_size, filter_sigma))
    kh = jnp.tile(g.reshape(filter_size, 1, 1, 1), (1, 1, 1, 5))
    kw = jnp.tile(g.reshape(1, filter_size, 1, 1), (1, 1, 1, 5))
    dn = ("NHWC", "HWIO", "NHWC")
    c1, c2 = k1 ** 2, k2 ** 2  # max_val = 1

    def blur(x):  # separable Gaussian, 'valid', 5 stacked quantities as groups
        x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn,
                                         feature_group_count=5,
                                         precision=jax.lax.Precision.HIGHEST)
        return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn,
                                            feature_group_count=5,
                                            precision=jax.lax.Precision.HIGHEST)

    def down(x):
        h, w = x.shape[1], x.shape[2]
        if h % 2 or w % 2:
            x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="symmetric")
        m, h, w, ch = x.shape
        return x.reshape(m, h // 2, 2, w // 2, 2, ch).mean(axis=(2, 4))

    terms = []
    for s, _ in enumerate(weights):
        if s > 0:
            a, b = down(a), down(b)
        f = blur(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1))
        mu_a, mu_b, e_aa, e_bb, e_ab = (f[..., i] for i in range(5))
        num0 = 2.0 * mu_a * mu_b
        den0 = mu_a ** 2 + mu_b ** 2
        lum = (num0 + c1) / (den0 + c1)
        cs = (2.0 * e_ab - num0 + c2) / (e_aa + e_bb - den0 + c2)
        if s < len(weights) - 1:
            terms.append(jnp.mean(cs, axis=(1, 2)))
        else:
            terms.append(jnp.mean(lum * cs, axis=(1, 2)))
    stacked = jax.nn.relu(jnp.stack(terms, axis=-1))  # (N*C, S)
    per_channel = jnp.prod(stacked ** jnp.asarray(weights, dtype=stacked.dtype), axis=-1)
    return per_channel.reshape(n, c).mean(axis=-1)


def _kernel_kwargs(filter_size, filter_sigma, k1, k2):
    return dict(filter_size=int(filter_size), filter_sigma=float(filter_sigma), k1=float(k1),
                k2=float(k2))


def ms_ssim(images_a, images_b, input_range: Tuple[float, float] = (-1.0, 1.0), *,
            filter_size: int = 11, filter_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
            power_factors: Sequence[float] = MSSSIM_WEIGHTS,
            batch_size: Optional[int] = 64) -> np.ndarray:
    """Per-image MS-SSIM of two equally shaped image batches -> (N,) float64 in [0, 1].

    Uses as many of ``power_factors``' scales as the image size allows (module docstring).
    Jitted; evaluated in batches of ``batch_size`` images (None: all at once), the last batch
    padded so one program serves every batch.
    """
    a_np = np.asarray(images_a)
    b_np = np.asarray(images_b)
    if a_np.shape != b_np.shape:
        raise ValueError(f"ms_ssim: shapes differ {a_np.shape} vs {b_np.shape}")
    idx = np.arange(a_np.shape[0])
    return _ms_ssim_indexed(a_np, idx, b_np, idx, input_range, filter_size=filter_size,
                            filter_sigma=filter_sigma, k1=k1, k2=k2, power_factors=power_factors,
                            batch_size=batch_size)


def _ms_ssim_indexed(a_np: np.ndarray, idx_a: np.ndarray, b_np: np.ndarray, idx_b: np.ndarray,
                     input_range, *, filter_size, filter_sigma, k1, k2, power_factors,
                     batch_size) -> np.ndarray:
    """MS-SSIM of ``a_np[idx_a]`` vs ``b_np[idx_b]``, gathering one batch at a time."""
    if a_np.ndim not in (3, 4) or a_np.shape[1:] != b_np.shape[1:]:
        raise ValueError(f"ms_ssim: expected two (N, H, W) or (N, H, W, C) image sets of one "
                         f"image shape, got {a_np.shape} and {b_np.shape}")
    n = idx_a.shape[0]
    if n == 0:
        return np.zeros((0,), dtype=np.float64)
    weights = _scale_weights(a_np.shape[1], a_np.shape[2], filter_size, power_factors)
    kw = _kernel_kwargs(filter_size, filter_sigma, k1, k2)
    bs = n if not batch_size else min(int(batch_size), n)
    out = []
    for start in range(0, n, bs):
        pos = np.arange(start, start + bs)
        pos = np.where(pos < n, pos, start)  # pad the last batch with its first pair
        a = _to_unit_nhwc(a_np[idx_a[pos]], input_range)
        b = _to_unit_nhwc(b_np[idx_b[pos]], input_range)
        vals = np.asarray(_ms_ssim_unit(a, b, weights=weights, **kw), dtype=np.float64)
        out.append(vals[: min(bs, n - start)])
    return np.concatenate(out)


def _sample_pairs(n: int, num_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """``num_pairs`` distinct unordered pairs (i < j) of ``range(n)``, all pairs if fewer exist."""
    total = n * (n - 1) // 2
    if num_pairs >= total:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], axis=1)
    t = np.sort(rng.choice(total, size=num_pairs, replace=False)).astype(np.int64)

    def row_start(i):  # index of pair (i, i + 1) in the row-major upper triangle
        return i * (2 * n - i - 1) // 2

    i = np.floor(((2 * n - 1) - np.sqrt((2.0 * n - 1) ** 2 - 8.0 * t)) / 2.0).astype(np.int64)
    i = np.clip(i, 0, n - 2)
    for _ in range(2):  # fix float rounding
        i = np.where(row_start(i) > t, i - 1, i)
        i = np.where((i + 1 <= n - 2) & (row_start(i + 1) <= t), i + 1, i)
    j = t - row_start(i) + i + 1
    return np.stack([i, j], axis=1)


def _masks(class_masks, n: int, class_names) -> Dict[str, np.ndarray]:
    if isinstance(class_masks, Mapping):
        out = {str(k): np.asarray(v) for k, v in class_masks.items()}
    else:
        arr = np.asarray(class_masks)
        if arr.ndim == 1:
            arr = arr[:, None]
        names = (list(class_names) if class_names is not None
                 else [str(c) for c in range(arr.shape[1])])
        if arr.ndim != 2 or len(names) != arr.shape[1]:
            raise ValueError(f"ms_ssim_diversity: class masks of shape {arr.shape} do not match "
                             f"{len(names)} class names")
        out = {str(name): arr[:, c] for c, name in enumerate(names)}
    for name, m in out.items():
        if m.dtype != bool or m.shape != (n,):
            raise ValueError(f"ms_ssim_diversity: mask for class {name!r} must be boolean of "
                             f"shape ({n},), got {m.dtype} {m.shape}")
    return out


def ms_ssim_diversity(images, num_pairs: int = 1000, seed: int = 0, *, class_masks=None,
                      class_names: Optional[Sequence[str]] = None,
                      input_range: Tuple[float, float] = (-1.0, 1.0), batch_size: int = 64,
                      filter_size: int = 11, filter_sigma: float = 1.5, k1: float = 0.01,
                      k2: float = 0.03, power_factors: Sequence[float] = MSSSIM_WEIGHTS
                      ) -> Union[float, Dict[str, float]]:
    """Mean MS-SSIM over ``num_pairs`` random distinct pairs of images (lower = more diverse).

    Pairs are distinct unordered pairs ``i < j`` drawn without replacement (every pair when fewer
    than ``num_pairs`` exist). With ``class_masks`` (mapping name -> boolean (N,), or boolean
    (N, classes) with ``class_names``) the pairs are drawn within each class and a dict
    ``{class name: mean}`` is returned; a class with fewer than 2 images gets NaN. Each class
    draws from ``default_rng(seed)``, so a class's value does not depend on the other classes.
    The window/constant/weight arguments are those of :func:`ms_ssim`.
    """
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError(f"ms_ssim_diversity: expected (N, H, W) or (N, H, W, C) images, got "
                         f"{x.shape}")
    if int(num_pairs) < 1:
        raise ValueError(f"ms_ssim_diversity: num_pairs must be >= 1, got {num_pairs}")

    def score(index: np.ndarray) -> float:
        if index.size < 2:
            return float("nan")
        pairs = index[_sample_pairs(index.size, int(num_pairs), np.random.default_rng(seed))]
        vals = _ms_ssim_indexed(x, pairs[:, 0], x, pairs[:, 1], input_range,
                                filter_size=filter_size, filter_sigma=filter_sigma, k1=k1, k2=k2,
                                power_factors=power_factors, batch_size=batch_size)
        return float(np.mean(vals))

    if class_masks is None:
        if x.shape[0] < 2:
            raise ValueError(f"ms_ssim_diversity: need at least 2 images, got {x.shape[0]}")
        return score(np.arange(x.shape[0]))
    masks = _masks(class_masks, x.shape[0], class_names)
    return {name: score(np.flatnonzero(m)) for name, m in masks.items()}
