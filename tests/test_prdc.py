"""Precision/recall/density/coverage on constructed sets and against a brute-force reference."""

import numpy as np
import pytest

from xray_gen.evaluation import prdc as P


def _reference_prdc(real, fake, k):
    """clovaai/generative-evaluation-prdc, dense O(n^2) with explicit differences."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    r_real = np.sort(dist(real, real), axis=1)[:, k]  # (k+1)-th smallest including self
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    d = dist(real, fake)
    inside = d < r_real[:, None]
    return {
        "precision": inside.any(axis=0).mean(),
        "recall": (d < r_fake[None, :]).any(axis=1).mean(),
        "density": inside.sum(axis=0).mean() / k,
        "coverage": (d.min(axis=1) < r_real).mean(),
    }


def _modes(rng, n_modes, per_mode, dim=8, spread=1.0, sep=100.0):
    assert n_modes <= dim
    centres = sep * np.eye(n_modes, dim)  # n_modes <= dim, pairwise sep * sqrt(2) apart
    return np.concatenate([c + spread * rng.normal(size=(per_mode, dim)) for c in centres])


def test_identical_sets():
    x = np.random.default_rng(0).normal(size=(200, 8))
    out = P.prdc(x, x.copy(), k=5)
    assert list(out) == ["precision", "recall", "density", "coverage"]
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0
    assert out["density"] == pytest.approx(1.0, abs=0.02)


def test_disjoint_far_apart_sets():
    x = np.random.default_rng(1).normal(size=(100, 8))
    out = P.prdc(x, x + 1000.0, k=5)
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_generated_set_covering_half_the_modes():
    rng = np.random.default_rng(2)
    real = _modes(rng, n_modes=8, per_mode=25)
    # exact copies of the real samples in modes 0-3: precision 1, recall = coverage = 1/2
    out = P.prdc(real, real[: 4 * 25].copy(), k=5)
    assert out["precision"] == 1.0
    assert out["recall"] == 0.5 and out["coverage"] == 0.5
    assert out["density"] == pytest.approx(1.0, abs=0.03)
    # fresh samples of the same 4 modes: approximately the same
    fake = _modes(np.random.default_rng(3), 8, 25)[: 4 * 25]
    out = P.prdc(real, fake, k=5)
    assert out["precision"] >= 0.9
    assert out["recall"] == pytest.approx(0.5, abs=0.05)
    assert out["coverage"] == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_bruteforce_reference_random(k):
    rng = np.random.default_rng(10 + k)
    real = rng.normal(size=(150, 16))
    fake = 0.8 * rng.normal(size=(120, 16)) + 0.3
    want = _reference_prdc(real, fake, k)
    for chunk in (17, 1024):  # several chunks, one chunk
        got = P.prdc(real, fake, k=k, chunk_size=chunk)
        for m in P.METRICS:
            assert got[m] == pytest.approx(want[m], abs=1e-12), (m, chunk)


def test_ties_and_duplicates_match_reference():
    # integer grid features: many exactly tied distances and duplicated samples (zero radii)
    rng = np.random.default_rng(4)
    real = rng.integers(0, 4, size=(120, 3)).astype(np.float64)
    fake = rng.integers(0, 4, size=(90, 3)).astype(np.float64)
    want = _reference_prdc(real, fake, 5)
    got = P.prdc(real, fake, k=5, chunk_size=7)
    for m in P.METRICS:
        assert got[m] == pytest.approx(want[m], abs=1e-12), m
    d = np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(P.knn_radii(real, 5, chunk_size=13), np.sort(d, axis=1)[:, 5])


def test_self_is_excluded_from_real_radii():
    x = np.array([[0.0], [1.0], [3.0], [6.0]])
    np.testing.assert_allclose(P.knn_radii(x, k=1), [1.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(P.knn_radii(x, k=3), [6.0, 5.0, 3.0, 6.0])


def test_too_few_samples():
    x = np.random.default_rng(5).normal(size=(6, 4))
    P.prdc(x, x, k=5)  # exactly k + 1 is enough
    with pytest.raises(ValueError, match=r"5 real samples, need at least k \+ 1 = 6"):
        P.prdc(x[:5], x, k=5)
    with pytest.raises(ValueError, match=r"generated samples, need at least"):
        P.prdc(x, x[:3], k=5)
    with pytest.raises(ValueError, match="need at least"):
        P.knn_radii(x[:2], k=2)
    assert all(np.isnan(v) for v in P.prdc(x, x[:3], k=5, too_few="nan").values())
    with pytest.raises(ValueError, match="feature dims differ"):
        P.prdc(x, x[:, :2])


def test_per_class_equals_subset_prdc():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(80, 6))
    fake = rng.normal(size=(70, 6)) + 0.2
    real_m = np.stack([np.arange(80) % 2 == 0, np.arange(80) < 30], axis=1)
    fake_m = np.stack([np.arange(70) % 3 == 0, np.arange(70) >= 35], axis=1)
    names = ["Edema", "Cardiomegaly"]
    out = P.prdc_per_class(real, fake, real_m, fake_m, k=3, class_names=names)
    assert list(out) == names
    for c, name in enumerate(names):
        assert out[name] == P.prdc(real[real_m[:, c]], fake[fake_m[:, c]], k=3)
    as_dict = P.prdc_per_class(real, fake, dict(zip(names, real_m.T)), dict(zip(names, fake_m.T)),
                               k=3)
    assert as_dict == out
    tiny = {"Edema": real_m[:, 0], "Rare": np.arange(80) < 2}
    tiny_fake = {"Edema": fake_m[:, 0], "Rare": np.arange(70) < 10}
    with pytest.raises(ValueError, match="class 'Rare'.*2 real samples"):
        P.prdc_per_class(real, fake, tiny, tiny_fake, k=3)
    res = P.prdc_per_class(real, fake, tiny, tiny_fake, k=3, too_few="nan")
    assert np.isnan(res["Rare"]["precision"]) and res["Edema"] == out["Edema"]
    with pytest.raises(ValueError, match="boolean"):
        P.prdc_per_class(real, fake, real_m.astype(int), fake_m, k=3)


def test_bootstrap_interval():
    rng = np.random.default_rng(7)
    real = rng.normal(size=(120, 5))
    fake = rng.normal(size=(100, 5)) * 1.2
    point = P.prdc(real, fake, k=5)
    ci = P.prdc(real, fake, k=5, bootstrap=200, seed=1)
    assert list(ci) == list(P.METRICS)
    for m in P.METRICS:
        p, lo, hi = ci[m]
        assert p == pytest.approx(point[m]) and lo <= p <= hi and hi - lo > 0
    assert ci == P.prdc(real, fake, k=5, bootstrap=200, seed=1)
    per_class = P.prdc_per_class(real, fake, {"a": np.ones(120, bool)}, {"a": np.ones(100, bool)},
                                 k=5, bootstrap=200, seed=1)
    assert per_class["a"] == ci
