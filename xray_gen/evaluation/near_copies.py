"""Calibrated near-copy rate of nearest-training distances, and the closest pairs to show.

Pure statistics on distances that :mod:`xray_gen.evaluation.nearest_neighbours` (images) or
:mod:`xray_gen.evaluation.report_privacy` (Jaccard of reports) computed; kept apart so both use
one definition of the threshold, the summaries and the closest pairs, with no search code in it.

Calibrated near-copy rate. The nearest-train distances of real held-out images (the reference set,
e.g. the test split) give the distances of a *non-copied* image from the same distribution; the
threshold is their ``percentile``-th percentile (default 1st) and the near-copy rate is the fraction
of generated images strictly below it (expected ~percentile/100 without memorisation, more with it).
Its bootstrap interval (:func:`xray_gen.evaluation.metrics.bootstrap_ci`) resamples generated
images with the threshold fixed, so the threshold's own sampling error is not in it.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from xray_gen.evaluation.metrics import bootstrap_ci

__all__ = ["calibrate_threshold", "near_copy_rate", "near_copy_summary", "quantile_summary", "closest_pairs"]


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


def quantile_summary(d) -> Dict[str, float]:
    """Min, 1st and 5th percentile, median and mean of ``d`` (NaN when empty)."""
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
        "generated": quantile_summary(g),
        "reference": quantile_summary(r),
        "n_generated": int(g.size),
        "n_reference": int(r.size),
    }


def closest_pairs(distances, indices, k: int = 16, *, largest: bool = False,
                  name: str = "distance") -> List[Dict[str, Any]]:
    """The ``k`` (generated, training) pairs with the smallest (``largest``: biggest) score, in order."""
    d = np.asarray(distances, np.float64).reshape(-1)
    order = np.argsort(-d if largest else d, kind="stable")[:k]
    return [{"generated": int(i), "train": int(indices[i]), name: float(d[i])} for i in order]
