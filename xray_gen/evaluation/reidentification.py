"""Patient re-identification: could a generated image identify the patient of its nearest training image?

Separate from the distance-based checks because it scores pairs with a learned same-patient model
(passed in as a callable, so this layer never imports :mod:`xray_gen.models`) rather than a
distance: the mean / max probability, from a same-patient scoring callable (e.g. a VCN-style
siamese net), that a generated image shows the patient of its nearest training image (fetched with
:func:`xray_gen.evaluation.nearest_neighbours.gather_rows`).
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import numpy as np

__all__ = ["reidentification_score"]


def reidentification_score(same_patient_fn: Callable, generated, neighbours, *, batch_size: int = 64,
                           threshold: float = 0.5, top_k: int = 16) -> Dict[str, Any]:
    """How likely a generated image shows the patient of its nearest training image.

    ``same_patient_fn(generated_batch, neighbour_batch) -> probabilities`` (in [0, 1], one per
    pair; apply the sigmoid to a siamese net's logits first); ``neighbours[i]`` is the training
    neighbour of ``generated[i]`` (see :func:`~xray_gen.evaluation.nearest_neighbours.gather_rows`).
    Returns mean/median/max probability, the fraction above ``threshold`` and the ``top_k`` most
    likely pairs (by generated index).
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
