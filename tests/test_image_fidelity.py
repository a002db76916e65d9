"""The FID/KID/Inception numbers the evaluator writes (evaluation/image_fidelity.py, fid.py)."""

import numpy as np
import pytest

from xray_gen.evaluation import fid, image_fidelity
from xray_gen.evaluation.metrics import inception_score


def test_distribution_distances_is_the_one_protocol():
    rng = np.random.default_rng(0)
    g, r = rng.normal(size=(40, 6)), rng.normal(0.5, 1.0, size=(30, 6))
    out = fid.distribution_distances(g, r, bootstrap=20, seed=3)
    assert out["fid"] == pytest.approx(fid.fid_between(g, r)) and out["fid"] > 0.1
    assert out["fid_ci"][0] <= out["fid"] <= out["fid_ci"][1]
    assert out["kid"] == dict(zip(("mean", "std"), fid.kid(g, r, num_subsets=100, max_subset_size=15, seed=3)),
                              subset_size=15, num_subsets=100)  # half the smaller set
    same = fid.distribution_distances(g, g)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6) and "fid_ci" not in same
    assert "skipped" in fid.distribution_distances(g[:1], r)


def test_inception_numbers_split_pool_and_logits():
    """One extractor pass per image: the first 2048 columns feed FID, the remaining 1008 the IS."""
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(16, 2048 + 1008))

    class Extractor:
        def __call__(self, images):
            return np.asarray(images).reshape(len(images), -1)[:, :16] @ proj

    gen, real = rng.uniform(-1, 1, size=(12, 4, 4, 1)), rng.uniform(-1, 1, size=(12, 4, 4, 1))
    f, r = Extractor()(gen), Extractor()(real)
    out = image_fidelity.inception_numbers(f, r)
    assert out["inception_fid"] == pytest.approx(fid.fid_between(f[:, :2048], r[:, :2048]))
    assert out["inception_score"]["generated"] == list(inception_score(f[:, 2048:], splits=10, from_logits=True))
    assert out["inception_score"]["generated"] != out["inception_score"]["reference"]
