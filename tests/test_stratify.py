"""Iterative stratification of patients: disjoint, sized, balanced (vs random), deterministic."""

import numpy as np
import pytest

from xray_gen.data.stratify import split_summary, stratified_patient_split


def skewed_set(seed=0, n_patients=600):
    """Patients with 1-5 images each; rare classes carried by few patients; some NaN labels."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, n_patients)
    patients = np.repeat(np.array([f"p{i}" for i in range(n_patients)]), sizes)
    prevalence = np.array([0.4, 0.02, 0.03, 0.05, 0.01, 0.1, 0.2, 0.015, 0.04, 0.02, 0.08, 0.01, 0.03, 0.5])
    per_patient = (rng.random((n_patients, 14)) < prevalence).astype(np.float32)
    labels = per_patient[np.repeat(np.arange(n_patients), sizes)]
    labels[rng.random(labels.shape) < 0.1] = np.nan
    return patients, labels


def positive_shares(fold, labels, n_folds):
    pos = np.nan_to_num(labels) > 0
    return np.stack([pos[fold == f].sum(0) for f in range(n_folds)]) / np.maximum(pos.sum(0), 1)


def test_patients_never_straddle_folds_and_fractions_hold():
    patients, labels = skewed_set()
    fold = stratified_patient_split(patients, labels, (0.7, 0.2, 0.1), seed=3)
    assert fold.shape == (len(patients),) and set(np.unique(fold)) == {0, 1, 2}
    for p in np.unique(patients):
        assert len(np.unique(fold[patients == p])) == 1, p
    shares = np.bincount(fold, minlength=3) / len(fold)
    np.testing.assert_allclose(shares, [0.7, 0.2, 0.1], atol=0.02)
    summary = split_summary(fold, patients, labels)
    assert sum(s["images"] for s in summary) == len(fold)


def test_rare_labels_are_balanced_much_better_than_a_random_patient_split():
    patients, labels = skewed_set(seed=1)
    fold = stratified_patient_split(patients, labels, (0.5, 0.5), seed=0)
    strat_err = np.abs(positive_shares(fold, labels, 2)[0] - 0.5).mean()
    rng = np.random.default_rng(0)
    unique = np.unique(patients)
    random_errs = []
    for _ in range(20):
        random_patient_fold = dict(zip(unique, rng.integers(0, 2, len(unique))))
        rand_fold = np.array([random_patient_fold[p] for p in patients])
        random_errs.append(np.abs(positive_shares(rand_fold, labels, 2)[0] - 0.5).mean())
    assert strat_err < 0.02
    assert strat_err < 0.3 * np.mean(random_errs), (strat_err, np.mean(random_errs))


def test_deterministic_by_seed_and_seed_matters():
    patients, labels = skewed_set(seed=2, n_patients=200)
    a = stratified_patient_split(patients, labels, (0.5, 0.5), seed=7)
    b = stratified_patient_split(patients, labels, (0.5, 0.5), seed=7)
    c = stratified_patient_split(patients, labels, (0.5, 0.5), seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_patients_without_positives_fill_folds_and_bad_fractions_fail():
    patients = np.repeat(np.arange(10), 2)
    labels = np.zeros((20, 3))
    fold = stratified_patient_split(patients, labels, (0.5, 0.5))
    assert np.bincount(fold).tolist() == [10, 10]
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_patient_split(patients, labels, (0.5, 0.6))
    with pytest.raises(ValueError, match="patient_ids"):
        stratified_patient_split(patients[:5], labels)
