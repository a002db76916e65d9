"""Image and classifier metrics: Inception Score, SSIM/PSNR (dm-pix), multi-label AUROC, Youden
thresholds and bootstrap confidence intervals.

Conventions:
- Images are in [-1, 1] (the pipeline's range) unless ``input_range`` says otherwise; SSIM and
  PSNR convert them to [0, 1] first, so PSNR uses a peak value of 1.
- Labels follow the CheXpert convention of the data schema: entries that are NaN (not mentioned)
  or masked out by ``mask`` are excluded class by class. Uncertain (-1) labels must be mapped or
  masked by the caller; values other than {0, 1} raise.
- A class whose (unmasked) labels contain only one value has no AUROC: it is reported as NaN and
  left out of the macro average.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "inception_score",
    "ssim",
    "psnr",
    "multilabel_auroc",
    "youden_thresholds",
    "bootstrap_ci",
]


# ------------------------------------------------------------------------------------------------
# Inception Score
# ------------------------------------------------------------------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(logits_or_probs, splits: int = 10,
                    from_logits: Optional[bool] = None) -> Tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))), mean and std over ``splits`` chunks.

    ``from_logits=None`` decides from the data: rows that are non-negative and sum to 1 are taken
    as probabilities, anything else as logits (softmax applied in float64). The samples are split
    in order (no shuffling), as in the original implementation.
    """
    x = np.asarray(logits_or_probs, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"inception_score: expected (n, classes), got {x.shape}")
    if from_logits is None:
        from_logits = not (np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-4))
    p = _softmax(x) if from_logits else x / x.sum(axis=1, keepdims=True)
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"inception_score: splits={splits} must be in [1, {n}]")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        # 0 * log 0 = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------------------------------
# SSIM / PSNR
# ------------------------------------------------------------------------------------------------


def _to_unit_nhwc(images, input_range: Tuple[float, float]):
    import jax.numpy as jnp

    x = jnp.asarray(images, dtype=jnp.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected (N, H, W) or (N, H, W, C) images, got {x.shape}")
    lo, hi = input_range
    return jnp.clip((x - lo) / (hi - lo), 0.0, 1.0)


def ssim(images_a, images_b, input_range: Tuple[float, float] = (-1.0, 1.0),
         **kwargs) -> np.ndarray:
    """Per-image SSIM (dm-pix, Gaussian window 11, sigma 1.5) on [0,1]-rescaled images -> (N,)."""
    import dm_pix

    a = _to_unit_nhwc(images_a, input_range)
    b = _to_unit_nhwc(images_b, input_range)
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {a.shape} vs {b.shape}")
    return np.asarray(dm_pix.ssim(a, b, max_val=1.0, **kwargs), dtype=np.float64)


def psnr(images_a, images_b, input_range: Tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Per-image PSNR in dB (dm-pix, peak 1 on [0,1]-rescaled images) -> (N,)."""
    import dm_pix

    a = _to_unit_nhwc(images_a, input_range)
    b = _to_unit_nhwc(images_b, input_range)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {a.shape} vs {b.shape}")
    return np.asarray(dm_pix.psnr(a, b), dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# Classifier metrics
# ------------------------------------------------------------------------------------------------


def _label_columns(y_true, y_score, mask):
    """Yields (class index, labels, scores) with NaN and masked entries removed."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim == 1:
        y_true, y_score = y_true[:, None], y_score[:, None]
        if mask is not None:
            mask = np.asarray(mask)[:, None]
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} differ")
    valid = ~np.isnan(y_true)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != y_true.shape:
            raise ValueError(f"mask {mask.shape} does not match labels {y_true.shape}")
        valid &= mask
    for c in range(y_true.shape[1]):
        t = y_true[valid[:, c], c]
        s = y_score[valid[:, c], c]
        bad = ~np.isin(t, (0.0, 1.0))
        if bad.any():
            raise ValueError(f"class {c}: labels must be 0/1 (or NaN/masked), found "
                             f"{np.unique(t[bad])[:5]}; map or mask uncertain labels first")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"class {c}: non-finite scores")
        yield c, t, s


def multilabel_auroc(y_true, y_score, mask=None,
                     class_names: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Per-class ROC AUC plus ``"macro"`` over the classes where it is defined.

    Keys are ``class_names`` (default "0", "1", ...). Classes with a single label value after
    masking get NaN and are excluded from the macro mean (NaN if no class is defined).
    """
    from sklearn.metrics import roc_auc_score

    out: Dict[str, float] = {}
    defined = []
    for c, t, s in _label_columns(y_true, y_score, mask):
        name = class_names[c] if class_names is not None else str(c)
        if np.unique(t).size < 2:
            out[name] = float("nan")
        else:
            out[name] = float(roc_auc_score(t, s))
            defined.append(out[name])
    out["macro"] = float(np.mean(defined)) if defined else float("nan")
    return out


def youden_thresholds(y_true, y_score, mask=None) -> np.ndarray:
    """Per-class threshold maximising Youden's J = sensitivity + specificity - 1 on the ROC.

    Predict positive when ``score >= threshold``. Ties in J go to the highest threshold (the
    first ROC point reaching the maximum). Classes without both label values get NaN.
    """
    from sklearn.metrics import roc_curve

    thresholds = []
    for _, t, s in _label_columns(y_true, y_score, mask):
        if np.unique(t).size < 2:
            thresholds.append(np.nan)
            continue
        fpr, tpr, thr = roc_curve(t, s, drop_intermediate=False)
        j = tpr - fpr
        best = int(np.argmax(j))
        value = thr[best]
        if not np.isfinite(value):  # first ROC point (nothing predicted positive)
            value = float(np.max(s)) + 1e-12
        thresholds.append(float(value))
    return np.asarray(thresholds, dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------------


def bootstrap_ci(metric_fn: Callable, *arrays, n: int = 1000, seed: int = 0,
                 alpha: float = 0.05):
    """Percentile bootstrap CI of ``metric_fn(*arrays)``, resampling rows of all arrays jointly.

    ``metric_fn`` returns a scalar or a dict of scalars. Returns ``(point, lower, upper)`` for a
    scalar, or ``{key: (point, lower, upper)}`` for a dict. Non-finite resample values (e.g. an
    AUROC undefined on a resample with one label value) are dropped; if all are, the bounds are NaN.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    arrays = tuple(np.asarray(a) for a in arrays)
    size = arrays[0].shape[0]
    if any(a.shape[0] != size for a in arrays):
        raise ValueError("bootstrap_ci: arrays must share their first dimension")
    point = metric_fn(*arrays)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        idx = rng.integers(0, size, size=size)
        samples.append(metric_fn(*(a[idx] for a in arrays)))
    q = (100 * alpha / 2, 100 * (1 - alpha / 2))

    def interval(values, p):
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return float(p), float("nan"), float("nan")
        lo, hi = np.percentile(v, q)
        return float(p), float(lo), float(hi)

    if isinstance(point, dict):
        return {k: interval([s[k] for s in samples], point[k]) for k in point}
    return interval(samples, point)
