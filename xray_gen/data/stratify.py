"""Patient-level iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011), as the PGGAN paper
splits both the real dataset and its synthetic archives.

Multi-label data cannot be stratified class by class: a random patient split leaves rare classes
badly unbalanced. Iterative stratification hands out the rarest label first, sending each patient
that carries it to the fold that still wants that label most, so rare labels are spread before
the common ones fill the folds. Here the unit is the *patient* (no patient straddles folds) and a
patient's label is its average label vector over its images (the paper's "average set of
conditions per patient"), weighted by its image count so fractions and label proportions hold
over images, which is what the folds are used as.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _positive_mass(labels: np.ndarray) -> np.ndarray:
    """Per-image positive weight: 1 positive, 0 negative / uncertain (-1) / unknown (NaN);
    soft labels in [0, 1] count fractionally."""
    return np.clip(np.nan_to_num(labels.astype(np.float64), nan=0.0), 0.0, 1.0)


def stratified_patient_split(patient_ids, labels, fractions: Sequence[float] = (0.5, 0.5), seed: int = 0) -> np.ndarray:
    """Fold index (int64, per image) from iterative stratification of patients.

    `patient_ids` (N,) any hashable ids per image; `labels` (N, C) with NaN for unknown;
    `fractions` the folds' shares of the images (positive, summing to 1). Deterministic in `seed`.
    """
    patient_ids = np.asarray(patient_ids)
    labels = np.asarray(labels, dtype=np.float64)
    fractions = np.asarray(fractions, dtype=np.float64)
    if labels.ndim != 2 or patient_ids.shape != (labels.shape[0],):
        raise ValueError(f"need patient_ids (N,) and labels (N, C); got {patient_ids.shape} and {labels.shape}")
    if fractions.ndim != 1 or len(fractions) < 1 or np.any(fractions <= 0) or abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be positive and sum to 1, got {fractions.tolist()}")
    if len(patient_ids) == 0:
        return np.zeros(0, np.int64)

    patients, inverse = np.unique(patient_ids, return_inverse=True)
    n_patients, n_folds = len(patients), len(fractions)
    sizes = np.bincount(inverse, minlength=n_patients).astype(np.float64)
    mass = np.zeros((n_patients, labels.shape[1]))
    np.add.at(mass, inverse, _positive_mass(labels))  # = image count x average label vector

    want_total = fractions * sizes.sum()
    want_label = fractions[:, None] * mass.sum(0)[None, :]  # (folds, C)
    fold_of = np.full(n_patients, -1, np.int64)
    rng = np.random.default_rng(seed)
    # Visiting order within a label: largest patients first (they are the hardest to place
    # without overshooting a fold), ties in a seeded random order.
    shuffled = rng.permutation(n_patients)
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    remaining = np.ones(n_patients, bool)

    def best_fold(candidates_score: np.ndarray) -> int:
        """Folds maximising the score, ties by the larger overall demand, then at random."""
        top = np.flatnonzero(np.isclose(candidates_score, candidates_score.max(), rtol=0, atol=1e-9))
        if len(top) > 1:
            demand = want_total[top]
            top = top[np.isclose(demand, demand.max(), rtol=0, atol=1e-9)]
        return int(top[0] if len(top) == 1 else rng.choice(top))

    def assign(p: int, fold: int) -> None:
        fold_of[p] = fold
        remaining[p] = False
        want_label[fold] -= mass[p]
        want_total[fold] -= sizes[p]

    has_label = mass > 0
    while True:
        counts = (has_label & remaining[:, None]).sum(0)
        if not counts.any():
            break
        label = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))  # rarest label left
        for p in order[has_label[order, label] & remaining[order]]:
            assign(int(p), best_fold(want_label[:, label]))
    for p in order[remaining[order]]:  # patients with no positive label: fill the folds by size
        assign(int(p), best_fold(want_total))
    return fold_of[inverse]


def split_summary(fold_index: np.ndarray, patient_ids, labels) -> list[dict]:
    """Per fold: images, patients and positive fraction per class (for logs and tests)."""
    fold_index, patient_ids = np.asarray(fold_index), np.asarray(patient_ids)
    mass = _positive_mass(np.asarray(labels))
    out = []
    for f in range(int(fold_index.max()) + 1 if len(fold_index) else 0):
        sel = fold_index == f
        out.append({"images": int(sel.sum()), "patients": int(len(np.unique(patient_ids[sel]))),
                    "positive_fraction": (mass[sel].mean(0) if sel.any() else np.zeros(mass.shape[1])).tolist()})
    return out
