"""Memorisation report of generated images: nearest training image in pixel and feature space,
calibrated near-copy rates, closest pairs and, optionally, patient re-identification.

Only the assembly: it streams the training set once through the searches of
:mod:`xray_gen.evaluation.nearest_neighbours`, scores the distances with
:mod:`xray_gen.evaluation.near_copies` and the neighbours with
:mod:`xray_gen.evaluation.reidentification`, and returns a JSON-able dict with the closest
(generated, training) pairs (top-k) for side-by-side display.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np

from xray_gen.evaluation.near_copies import closest_pairs, near_copy_summary
from xray_gen.evaluation.nearest_neighbours import (feature_stream, gather_rows, images_to_float,
                                                    pixel_stream, training_chunks)
from xray_gen.evaluation.reidentification import reidentification_score

__all__ = ["image_privacy"]


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
    read once for both spaces. ``same_patient_fn`` adds
    :func:`~xray_gen.evaluation.reidentification.reidentification_score` against the nearest
    training image in ``reid_space`` ("pixel" or "feature"); it re-reads ``train_images``.

    Returns ``{"pixel": {...}, "feature": {...}?, "reidentification": {...}?, "n_train": ...}``; each
    space has its configuration, :func:`~xray_gen.evaluation.near_copies.near_copy_summary` and the
    ``top_k`` closest pairs.
    """
    n_gen = int(np.shape(generated_images)[0])
    queries = np.concatenate([images_to_float(generated_images), images_to_float(reference_images)])
    pix, pix_prep, npix = pixel_stream(queries, query_chunk, train_chunk, size, max_shift, blur_sigma,
                                       normalise, border)
    use_features = feature_fn is not None or (
        generated_features is not None and reference_features is not None and train_features is not None)
    feat = feat_prep = None
    if use_features:
        gf = generated_features if generated_features is not None else feature_fn(generated_images)
        rf = reference_features if reference_features is not None else feature_fn(reference_images)
        feat, feat_prep = feature_stream(np.concatenate([np.asarray(gf), np.asarray(rf)]), query_chunk,
                                         train_chunk, exact)
        if train_features is None and feature_fn is None:
            raise ValueError("image_privacy: training features need train_features or feature_fn")
    joint = use_features and train_features is None
    n_train = 0
    for t in training_chunks(train_images, key, train_chunk):
        pix.update(pix_prep(t))
        if joint:
            feat.update(feat_prep(np.asarray(feature_fn(t))))
        n_train += t.shape[0]
    if use_features and not joint:
        for t in training_chunks(train_features, feature_key, train_chunk):
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
