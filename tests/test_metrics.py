"""Inception Score, SSIM/PSNR, AUROC, Youden thresholds and bootstrap CIs on known values."""

import numpy as np
import pytest

from xray_gen.evaluation import metrics


def test_inception_score_uniform_is_one():
    probs = np.full((100, 10), 0.1)
    mean, std = metrics.inception_score(probs, splits=5)
    assert mean == pytest.approx(1.0, abs=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # uniform logits (all equal) too
    mean, _ = metrics.inception_score(np.zeros((40, 7)), splits=2, from_logits=True)
    assert mean == pytest.approx(1.0, abs=1e-9)


def test_inception_score_confident_distinct_classes():
    k = 8
    probs = np.tile(np.eye(k), (5, 1))  # every split has each class 5/splits times
    mean, _ = metrics.inception_score(probs, splits=5)
    assert mean == pytest.approx(k, rel=1e-9)
    logits = 50.0 * np.tile(np.eye(k), (5, 1))
    mean, _ = metrics.inception_score(logits, splits=5)
    assert mean == pytest.approx(k, rel=1e-6)


def test_ssim_identical_is_one_and_lower_for_noise():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=1e-5)
    y = np.clip(x + rng.normal(scale=0.5, size=x.shape), -1, 1).astype(np.float32)
    assert np.all(metrics.ssim(x, y) < 0.9)


def test_psnr_known_value():
    # [-1,1] images differing by 0.2 -> 0.1 in [0,1] -> MSE 0.01 -> PSNR 20 dB.
    x = np.zeros((3, 16, 16, 1), np.float32)
    y = x + 0.2
    np.testing.assert_allclose(metrics.psnr(x, y), 20.0, rtol=1e-5)
    # uint8-style range works through input_range
    a = np.full((1, 8, 8), 100.0)
    b = np.full((1, 8, 8), 100.0 + 25.5)
    np.testing.assert_allclose(metrics.psnr(a, b, input_range=(0, 255)), 20.0, rtol=1e-5)


def test_multilabel_auroc_perfect_reversed_and_undefined():
    y = np.array([[0, 1, 1], [0, 1, 1], [1, 0, 1], [1, 0, 1]], dtype=float)
    s = np.array([[0.1, 0.1, 0.3], [0.2, 0.2, 0.4], [0.8, 0.7, 0.5], [0.9, 0.6, 0.6]])
    out = metrics.multilabel_auroc(y, s, class_names=["a", "b", "c"])
    assert out["a"] == 1.0 and out["b"] == 0.0
    assert np.isnan(out["c"])  # one class present
    assert out["macro"] == pytest.approx(0.5)  # NaN class excluded


def test_multilabel_auroc_mask_and_nan_labels():
    y = np.array([[0.0], [1.0], [np.nan], [1.0]])
    s = np.array([[0.1], [0.9], [0.99], [0.05]])
    mask = np.array([[True], [True], [True], [False]])
    out = metrics.multilabel_auroc(y, s, mask=mask)
    assert out["0"] == 1.0 and out["macro"] == 1.0
    with pytest.raises(ValueError, match="0/1"):
        metrics.multilabel_auroc(np.array([[-1.0], [1.0], [0.0]]), np.zeros((3, 1)))


def test_youden_hand_made():
    # Scores 0.1..0.8; positives at 0.4, 0.6, 0.7, 0.8; negatives at 0.1, 0.2, 0.3, 0.5.
    # threshold 0.6 -> sens 3/4, spec 1 -> J 0.75; threshold 0.4 -> sens 1, spec 3/4 -> J 0.75;
    # threshold 0.7 -> J 0.5. The highest threshold reaching max J is 0.6.
    t = np.array([0, 0, 0, 1, 0, 1, 1, 1], dtype=float)
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    thr = metrics.youden_thresholds(t[:, None], s[:, None])
    assert thr.shape == (1,) and thr[0] == pytest.approx(0.6)
    # Perfect separation: threshold at the lowest positive score.
    t2 = np.array([0, 0, 1, 1], dtype=float)
    s2 = np.array([0.1, 0.2, 0.7, 0.9])
    thr2 = metrics.youden_thresholds(np.stack([t2, np.ones(4)], 1), np.stack([s2, s2], 1))
    assert thr2[0] == pytest.approx(0.7) and np.isnan(thr2[1])


def test_bootstrap_ci_contains_point():
    rng = np.random.default_rng(1)
    x = rng.normal(loc=3.0, size=200)
    point, lo, hi = metrics.bootstrap_ci(np.mean, x, n=300, seed=0)
    assert lo < point < hi and point == pytest.approx(x.mean())
    assert hi - lo < 0.5
    # dict-valued metric over two arrays (AUROC)
    y = (rng.uniform(size=(150, 2)) < 0.5).astype(float)
    s = y + rng.normal(scale=0.8, size=y.shape)
    res = metrics.bootstrap_ci(lambda a, b: metrics.multilabel_auroc(a, b), y, s, n=100, seed=0)
    p, lo, hi = res["macro"]
    assert lo <= p <= hi
    # deterministic under the seed
    assert metrics.bootstrap_ci(np.mean, x, n=50, seed=3) == metrics.bootstrap_ci(
        np.mean, x, n=50, seed=3)
