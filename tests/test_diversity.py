"""MS-SSIM (against tf.image.ssim_multiscale where installed) and the MS-SSIM diversity score."""

import numpy as np
import pytest

from xray_gen.evaluation import diversity as D


def _smooth_images(rng, n, size):
    """Images in [-1, 1] with structure at several scales (noise blurred by a box cascade)."""
    x = rng.uniform(-1, 1, size=(n, size, size))
    out = np.zeros_like(x)
    for w in (1, 4, 16):
        k = np.ones(w) / w
        b = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, x)
        b = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 2, b)
        out += b / (np.abs(b).max() + 1e-9)
    return (out / np.abs(out).max()).astype(np.float32)


def test_num_scales():
    assert D.num_scales(192, 192) == 5
    assert D.num_scales(161, 300) == 5 and D.num_scales(160, 300) == 4
    assert D.num_scales(64, 64) == 3 and D.num_scales(32, 32) == 2 and D.num_scales(11, 11) == 1
    assert D.num_scales(10, 64) == 0
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        D.ms_ssim(np.zeros((1, 10, 10)), np.zeros((1, 10, 10)))


def test_self_is_one_decreasing_with_noise_and_symmetric():
    rng = np.random.default_rng(0)
    x = _smooth_images(rng, 3, 64)
    np.testing.assert_allclose(D.ms_ssim(x, x), 1.0, atol=1e-5)
    scores = []
    for sigma in (0.05, 0.2, 0.5):
        y = np.clip(x + sigma * rng.normal(size=x.shape), -1, 1).astype(np.float32)
        s = D.ms_ssim(x, y)
        np.testing.assert_allclose(D.ms_ssim(y, x), s, atol=1e-6)
        assert s.shape == (3,) and s.dtype == np.float64
        scores.append(s)
    assert np.all(scores[0] > scores[1]) and np.all(scores[1] > scores[2])
    assert np.all(scores[0] < 1.0) and np.all(scores[2] >= 0.0)


def test_batching_and_channels():
    rng = np.random.default_rng(1)
    x = _smooth_images(rng, 5, 32)
    y = np.clip(x + 0.3 * rng.normal(size=x.shape), -1, 1).astype(np.float32)
    full = D.ms_ssim(x, y, batch_size=None)
    np.testing.assert_allclose(D.ms_ssim(x, y, batch_size=2), full, atol=1e-6)
    # (N, H, W, C): mean over channels of the per-channel values
    xc = np.stack([x, y, x], axis=-1)
    yc = np.stack([y, y, -x], axis=-1)
    per = [D.ms_ssim(xc[..., c], yc[..., c], batch_size=None) for c in range(3)]
    np.testing.assert_allclose(D.ms_ssim(xc, yc, batch_size=None), np.mean(per, axis=0),
                               atol=1e-6)
    # input_range: [0, 1] images give the same as their [-1, 1] versions
    np.testing.assert_allclose(D.ms_ssim((x + 1) / 2, (y + 1) / 2, (0.0, 1.0), batch_size=None),
                               full, atol=1e-6)


def test_matches_tensorflow_ssim_multiscale():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(2, 192, 192, 1)).astype(np.float32)
    y = np.clip(x + 0.2 * rng.normal(size=x.shape), -1, 1).astype(np.float32)
    z = rng.uniform(-1, 1, size=x.shape).astype(np.float32)
    a = np.concatenate([x, x])
    b = np.concatenate([y, z])
    got = D.ms_ssim(a, b)
    want = tf.image.ssim_multiscale(tf.constant((a + 1) / 2), tf.constant((b + 1) / 2),
                                    max_val=1.0).numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)
    # small images: 3 scales with the first 3 weights renormalised
    xs = _smooth_images(rng, 2, 64)[..., None]
    ys = np.clip(xs + 0.2 * rng.normal(size=xs.shape), -1, 1).astype(np.float32)
    w = np.asarray(D.MSSSIM_WEIGHTS[:3]) / np.sum(D.MSSSIM_WEIGHTS[:3])
    want = tf.image.ssim_multiscale(tf.constant((xs + 1) / 2), tf.constant((ys + 1) / 2),
                                    max_val=1.0, power_factors=tuple(w)).numpy()
    np.testing.assert_allclose(D.ms_ssim(xs, ys), want, atol=1e-3)


def test_diversity_identical_one_and_noise_low():
    rng = np.random.default_rng(3)
    same = np.repeat(_smooth_images(rng, 1, 32), 6, axis=0)
    assert D.ms_ssim_diversity(same, num_pairs=10, seed=0) == pytest.approx(1.0, abs=1e-5)
    noise = rng.uniform(-1, 1, size=(8, 32, 32)).astype(np.float32)
    div = D.ms_ssim_diversity(noise, num_pairs=20, seed=0)
    assert 0.0 <= div < 0.1
    assert div == D.ms_ssim_diversity(noise, num_pairs=20, seed=0)
    # all 28 pairs when more are asked for: the mean over every distinct pair
    i, j = np.triu_indices(8, k=1)
    want = D.ms_ssim(noise[i], noise[j]).mean()
    assert D.ms_ssim_diversity(noise, num_pairs=1000) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 images"):
        D.ms_ssim_diversity(noise[:1])


def test_diversity_per_class():
    rng = np.random.default_rng(4)
    same = np.repeat(_smooth_images(rng, 1, 32), 4, axis=0)
    noise = rng.uniform(-1, 1, size=(4, 32, 32)).astype(np.float32)
    images = np.concatenate([same, noise])
    masks = np.zeros((8, 3), bool)
    masks[:4, 0] = True
    masks[4:, 1] = True
    masks[0, 2] = True  # a single image: undefined
    out = D.ms_ssim_diversity(images, num_pairs=6, seed=1, class_masks=masks,
                              class_names=["No Finding", "Edema", "Rare"])
    assert list(out) == ["No Finding", "Edema", "Rare"]
    assert out["No Finding"] == pytest.approx(1.0, abs=1e-5)
    assert out["Edema"] == pytest.approx(D.ms_ssim_diversity(noise, num_pairs=6, seed=1), abs=1e-9)
    assert np.isnan(out["Rare"])
    as_dict = D.ms_ssim_diversity(images, num_pairs=6, seed=1,
                                  class_masks={"Edema": masks[:, 1]})
    assert as_dict == {"Edema": out["Edema"]}


def test_sample_pairs_distinct():
    for n, k in [(2, 5), (10, 45), (10, 44), (300, 1000), (20000, 500)]:
        p = D._sample_pairs(n, k, np.random.default_rng(0))
        assert len(p) == min(k, n * (n - 1) // 2)
        assert np.all(p[:, 0] < p[:, 1]) and p.min() >= 0 and p.max() < n
        assert len({tuple(r) for r in p}) == len(p)
