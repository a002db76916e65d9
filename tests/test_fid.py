"""Fréchet distance, streaming statistics, KID and the reference-stats cache."""

import os
import warnings

import numpy as np
import pytest

from xray_gen.evaluation import fid


def _rand_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_frechet_distance_closed_form_commuting():
    # Covariances sharing eigenvectors commute: FD = |dmu|^2 + sum (sqrt(l1) - sqrt(l2))^2.
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    l1, l2 = rng.uniform(0.1, 2.0, size=d), rng.uniform(0.1, 2.0, size=d)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_identical_and_symmetric():
    rng = np.random.default_rng(2)
    d = 64
    mu, s = rng.normal(size=d), _rand_cov(rng, d)
    assert abs(fid.frechet_distance(mu, s, mu, s)) < 1e-6
    mu2, s2 = rng.normal(size=d), _rand_cov(rng, d)
    a = fid.frechet_distance(mu, s, mu2, s2)
    b = fid.frechet_distance(mu2, s2, mu, s)
    assert a > 0 and a == pytest.approx(b, rel=1e-8)
    # float32 inputs are promoted: same answer
    c = fid.frechet_distance(mu.astype(np.float32), s.astype(np.float32), mu2, s2)
    assert c == pytest.approx(a, rel=1e-5)


def test_frechet_distance_singular_uses_offset():
    # Rank-deficient covariances (fewer samples than dims) still give a finite value.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 20))
    y = rng.normal(size=(5, 20)) + 1.0
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = fid.frechet_distance(x.mean(0), sx, y.mean(0), sy)
    assert np.isfinite(v) and v > 0


def test_frechet_distance_shape_errors():
    with pytest.raises(ValueError):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_stats_match_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(loc=100.0, scale=2.0, size=(1003, 32)).astype(np.float32)
    acc = fid.FeatureStatsAccumulator()
    for i in range(0, len(x), 97):
        acc.update(x[i:i + 97])
    st = acc.finalize()
    x64 = x.astype(np.float64)
    assert st.count == 1003
    np.testing.assert_allclose(st.mean, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.cov, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-11)
    st2 = fid.FeatureStats.from_features(x)
    np.testing.assert_allclose(st2.cov, st.cov, rtol=1e-9, atol=1e-11)


def test_kid_same_vs_shifted():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(400, 16))
    b = rng.normal(size=(400, 16))
    c = rng.normal(size=(400, 16)) + 0.5
    same, _ = fid.kid(a, b, num_subsets=20, max_subset_size=200)
    shifted, _ = fid.kid(a, c, num_subsets=20, max_subset_size=200)
    assert abs(same) < 0.02
    assert shifted > 0.1 and shifted > 10 * abs(same)


def test_compute_fid_helper():
    rng = np.random.default_rng(6)
    ref_feats = rng.normal(size=(300, 8))
    ref = fid.FeatureStats.from_features(ref_feats)
    batches = [ref_feats[i:i + 50] for i in range(0, 300, 50)]
    value, gen = fid.compute_fid(lambda b: b, batches, ref, return_stats=True)
    assert gen.count == 300 and abs(value) < 1e-6


def test_cache_roundtrip_and_checksum(tmp_path):
    rng = np.random.default_rng(7)
    stats = fid.FeatureStats.from_features(rng.normal(size=(50, 6)))
    key = fid.StatsKey("phantom/test", "densenet_cxr", "ab" * 32, 50, 256)
    cache = fid.ReferenceStatsCache(str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return stats

    got = cache.get_or_compute(key, compute)
    assert len(calls) == 1 and os.path.exists(cache.path(key))
    got2 = cache.get_or_compute(key, compute)
    assert len(calls) == 1  # served from disk
    np.testing.assert_array_equal(got2.cov, got.cov)
    assert got2.count == 50

    # A different key (e.g. other weights) never reuses the file.
    key_other = fid.StatsKey("phantom/test", "densenet_cxr", "cd" * 32, 50, 256)
    assert cache.path(key_other) != cache.path(key)
    with pytest.raises(fid.StatsChecksumError):
        fid.load_stats(cache.path(key), expected_key=key_other)

    # Tamper with the stored mean: checksum fails, cache warns and recomputes.
    path = cache.path(key)
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data["mean"] = data["mean"] + 1.0
    np.savez(path, **data)
    with pytest.raises(fid.StatsChecksumError):
        fid.load_stats(path, expected_key=key)
    with pytest.warns(RuntimeWarning, match="checksum"):
        got3 = cache.get_or_compute(key, compute)
    assert len(calls) == 2
    np.testing.assert_array_equal(got3.mean, stats.mean)
    fid.load_stats(path, expected_key=key)  # rewritten file verifies again


# ---- feature extraction wrapper + protocol record (end-to-end on a toy extractor) ----------------


def _toy_apply(params, x):
    # mean colour and a linear projection: enough to see resize / channel / range handling
    import jax.numpy as jnp

    return jnp.concatenate([x.mean(axis=(1, 2)), x.reshape(x.shape[0], -1)[:, :4] @ params], 1)


def test_make_feature_fn_preprocessing():
    from xray_gen.evaluation import features

    params = np.eye(4, dtype=np.float32)
    seen = {}

    def apply_fn(p, x):
        seen["shape"] = x.shape
        return _toy_apply(p, x)

    fn = features.make_feature_fn(apply_fn, params, resize_to=8, grey_to_rgb=True, batch_size=3)
    u8 = np.full((5, 16, 16), 255, np.uint8)
    out = fn(u8)
    assert seen["shape"] == (3, 8, 8, 3)  # resized, grey -> RGB, padded to batch_size
    assert out.shape == (5, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :3], 1.0, atol=1e-6)  # uint8 255 -> +1
    fl = np.full((2, 16, 16, 1), -1.0, np.float32)
    np.testing.assert_allclose(fn(fl)[:, :3], -1.0, atol=1e-6)  # floats taken as [-1, 1]
    # bilinear without antialias equals torch's align_corners=False: 2x upsampling of [0, 1]
    x = np.array([[0.0, 1.0]], np.float32).reshape(1, 1, 2, 1)
    up = np.asarray(features.preprocess(x, (1, 4), grey_to_rgb=False))[0, 0, :, 0]
    np.testing.assert_allclose(up, [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    # 1-channel extractor: channels pass through
    fn1 = features.make_feature_fn(apply_fn, params, resize_to=None, grey_to_rgb=False)
    fn1(fl)
    assert seen["shape"] == (2, 16, 16, 1)


def test_offline_default_extractor_and_result_json(tmp_path):
    import json

    from xray_gen.evaluation import features, protocol

    params = np.eye(4, dtype=np.float32)
    clf = features.classifier_extractor(_toy_apply, params, "toy_cxr_classifier", resize_to=8)
    with pytest.raises(ValueError, match="Inception"):
        features.select_fid_extractor(None, None)
    ext = features.select_fid_extractor(None, clf)
    assert ext.name == "toy_cxr_classifier" and len(ext.weights_checksum) == 64
    assert features.params_checksum(params) != features.params_checksum(params + 1)

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(40, 16, 16), dtype=np.uint8)
    fake = rng.integers(0, 256, size=(40, 16, 16), dtype=np.uint8)
    ref = fid.FeatureStats.from_features(ext(real))
    value = fid.compute_fid(ext, [fake[:20], fake[20:]], ref)
    proto = protocol.Protocol.from_extractor(ext, image_count=40, seeds=[0], bootstrap_n=0,
                                             reference="toy/test", reference_count=ref.count)
    path = tmp_path / "res" / "fid.json"
    protocol.write_result_json(str(path), {"fid": np.float64(value), "auroc_x": float("nan"),
                                           "ci": (1.0, 0.5, 1.5)}, proto)
    rec = json.loads(path.read_text())
    assert rec["metrics"]["fid"] == pytest.approx(value) and rec["metrics"]["auroc_x"] is None
    assert rec["metrics"]["ci"] == [1.0, 0.5, 1.5]
    p = rec["protocol"]
    assert p["extractor"] == "toy_cxr_classifier" and p["weights_checksum"] == ext.weights_checksum
    assert p["image_count"] == 40 and p["resolution"] == [8, 8] and p["seeds"] == [0]
    assert "bilinear" in p["resize_policy"] and p["grey_to_rgb"]
    assert rec["versions"]["jax"] and rec["timestamp"]
    assert protocol.read_result_json(str(path))["protocol"] == p


def test_fid_bootstrap_interval_is_centred_on_the_point_and_shrinks_with_more_samples():
    from xray_gen.evaluation import fid

    rng = np.random.default_rng(0)
    reference = fid.FeatureStats.from_features(rng.normal(size=(4000, 8)))
    widths = []
    for size in (200, 2000):
        generated = rng.normal(loc=0.3, size=(size, 8))
        point, lo, hi = fid.fid_bootstrap_ci(generated, reference, n=100, seed=1)
        g = fid.FeatureStats.from_features(generated)
        assert point == fid.frechet_distance(g.mean, g.cov, reference.mean, reference.cov)
        assert lo < point < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(10) narrower with 10x the samples
    with pytest.raises(ValueError, match="resamples"):
        fid.fid_bootstrap_ci(generated[:1], reference)
