"""Memorisation/privacy checks: near-duplicates, planted copies, chunked NN, calibration, reports."""

import json

import numpy as np
import pytest

from xray_gen.data.phantom import Phantom
from xray_gen.evaluation import privacy


def _shift(img, dy, dx, border=3):
    """Translate a uint8 image by (dy, dx) pixels, edges replicated."""
    p = np.pad(img, border, mode="edge")
    h, w = img.shape
    return p[border - dy:border - dy + h, border - dx:border - dx + w]


def _perturb(img, dy, dx, offset, rng):
    """Same image, +-10 grey levels (global offset plus uniform noise), shifted by (dy, dx)."""
    x = _shift(img, dy, dx).astype(np.float64) + offset + rng.uniform(-10, 10, img.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def phantom_images():
    ph = Phantom(resolution=32, lateral=False)
    train = np.stack([ph.study(i, "train").frontal for i in range(40)])
    test = np.stack([ph.study(i, "test").frontal for i in range(60)])
    return train, test


def test_near_duplicate_caught_unrelated_not(phantom_images):
    train, test = phantom_images
    rng = np.random.default_rng(0)
    shifts = [(2, -1, 10), (-1, 2, -10), (1, 1, 10), (0, -2, -10), (-2, 0, 10), (2, 2, -10)]
    src = [3, 7, 11, 19, 23, 31]
    dups = np.stack([_perturb(train[i], dy, dx, off, rng) for i, (dy, dx, off) in zip(src, shifts)])
    unrelated = test[:30]
    cfg = dict(query_chunk=16, train_chunk=16)
    d_dup, i_dup = privacy.pixel_nearest_neighbours(dups, train, **cfg)
    d_unr, _ = privacy.pixel_nearest_neighbours(unrelated, train, **cfg)
    np.testing.assert_array_equal(i_dup, src)
    # Calibrated on unrelated real images (1st percentile), the duplicates fall below, clearly.
    thr = privacy.calibrate_threshold(d_unr, 1.0)
    assert d_dup.max() < 0.75 * d_unr.min() <= thr
    # Without the shift tolerance a 2 px shift is not recognised as well (the point of max_shift).
    d0, _ = privacy.pixel_nearest_neighbours(dups, train, max_shift=0, **cfg)
    assert np.median(d0) > 2 * np.median(d_dup)
    # Float [-1, 1] input and a dict-batched training stream give the same answer as uint8 arrays.
    batches = [{"frontal": train[i:i + 7].astype(np.float32) / 127.5 - 1} for i in range(0, 40, 7)]
    d_f, i_f = privacy.pixel_nearest_neighbours(dups.astype(np.float32) / 127.5 - 1, iter(batches), **cfg)
    np.testing.assert_array_equal(i_f, src)
    np.testing.assert_allclose(d_f, d_dup, rtol=1e-4, atol=1e-5)


def test_planted_copies_raise_near_copy_rate(phantom_images):
    train, test = phantom_images
    rng = np.random.default_rng(1)
    reference, generated = test[:30], test[30:60].copy()
    n, k = generated.shape[0], 6
    slots = np.array([2, 5, 11, 17, 23, 29])
    src = np.array([0, 9, 14, 22, 30, 39])
    for s, i in zip(slots, src):
        generated[s] = _perturb(train[i], 1, -1, 10, rng)
    # Synthetic features: copies sit next to their source's feature vector.
    f_train = rng.normal(size=(40, 32)).astype(np.float32)
    f_ref = rng.normal(size=(30, 32)).astype(np.float32)
    f_gen = rng.normal(size=(30, 32)).astype(np.float32)
    f_gen[slots] = f_train[src] + 0.01 * rng.normal(size=(k, 32))
    same_patient = lambda g, t: (np.abs(g.astype(float) - t.astype(float)).mean(axis=(1, 2)) < 1e9) * 0.5
    out = privacy.image_privacy(
        generated, reference, [train[:13], train[13:27], train[27:]],
        generated_features=f_gen, reference_features=f_ref, train_features=[f_train[:25], f_train[25:]],
        same_patient_fn=same_patient, top_k=k, query_chunk=16, train_chunk=16, n_boot=200)
    json.dumps(out)
    for space in ("pixel", "feature"):
        nc = out[space]["near_copy"]
        # the planted copies, plus at most a few natural draws below the 1st percentile of 30 refs
        assert k / n <= nc["rate"] <= (k + 3) / n, (space, nc)
        lo, hi = nc["rate_ci"]
        assert lo <= nc["rate"] <= hi and hi - lo > 0
        pairs = out[space]["closest_pairs"]
        assert sorted(p["generated"] for p in pairs) == sorted(slots.tolist())
        assert all(p["train"] == src[list(slots).index(p["generated"])] for p in pairs)
        assert nc["reference_rate"] <= 0.05 and np.isfinite(nc["median_ratio"])
        ref_d = np.asarray(out[space]["reference_distances"])  # one per reference image, for the histogram
        assert ref_d.shape == (out["n_reference"],) and np.all(ref_d >= 0)
        assert np.median(ref_d) == pytest.approx(nc["reference"]["median"], rel=1e-5)
    # Without planted copies the rate is ~ the percentile.
    base = privacy.image_privacy(test[30:60], reference, train, top_k=3, query_chunk=16, train_chunk=16,
                                 n_boot=50)
    assert base["pixel"]["near_copy"]["rate"] <= 3 / n
    assert out["n_train"] == 40 and out["reidentification"]["mean"] == pytest.approx(0.5)


def test_chunked_nearest_neighbours_equal_brute_force():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(37, 24)).astype(np.float32) + 3.0
    t = rng.normal(size=(203, 24)).astype(np.float32) + 3.0
    d_ref = np.sqrt(((q[:, None].astype(np.float64) - t[None]) ** 2).sum(-1))
    batches = [t[:50], t[50:53], t[53:153], t[153:]]
    for exact in (False, True):
        d, i = privacy.feature_nearest_neighbours(q, iter(batches), query_chunk=16, train_chunk=64, exact=exact)
        np.testing.assert_array_equal(i, d_ref.argmin(1))
        np.testing.assert_allclose(d, d_ref.min(1), rtol=1e-4)
    d, i = privacy.feature_nearest_neighbours(q, t, query_chunk=10, train_chunk=47)
    np.testing.assert_array_equal(i, d_ref.argmin(1))

    # Pixel space: the definition (min over shifts of the RMS on the centre crop), brute force.
    qi = rng.uniform(-1, 1, size=(9, 12, 12)).astype(np.float32)
    ti = rng.uniform(-1, 1, size=(29, 12, 12)).astype(np.float32)
    s = 1
    best = np.full((9, 29), np.inf)
    for dy in range(2 * s + 1):
        for dx in range(2 * s + 1):
            diff = qi[:, None, s:12 - s, s:12 - s] - ti[None, :, dy:dy + 12 - 2 * s, dx:dx + 12 - 2 * s]
            best = np.minimum(best, np.sqrt((diff.astype(np.float64) ** 2).mean((2, 3))))
    d, i = privacy.pixel_nearest_neighbours(qi, [ti[:10], ti[10:11], ti[11:]], size=None, max_shift=s, border=0,
                                            blur_sigma=0.0, normalise="none", query_chunk=4, train_chunk=8)
    np.testing.assert_array_equal(i, best.argmin(1))
    np.testing.assert_allclose(d, best.min(1), rtol=1e-4)


def test_threshold_calibration_on_constructed_distributions():
    ref = np.arange(1, 101, dtype=np.float64)
    assert privacy.calibrate_threshold(ref) == pytest.approx(1.99)
    assert privacy.calibrate_threshold(ref, 10) == pytest.approx(10.9)
    gen = np.concatenate([np.full(5, 0.5), np.full(95, 50.0)])
    s = privacy.near_copy_summary(gen, ref, n_boot=300)
    assert s["threshold"] == pytest.approx(1.99) and s["rate"] == pytest.approx(0.05)
    assert s["reference_rate"] == pytest.approx(0.01) and s["n_copies"] == 5
    lo, hi = s["rate_ci"]
    assert 0.0 < lo <= 0.05 <= hi < 0.12
    s10 = privacy.near_copy_summary(gen, ref, percentile=10, n_boot=50)
    assert s10["rate"] == pytest.approx(0.05) and s10["expected_rate"] == pytest.approx(0.1)
    # Generated distances drawn like the reference: rate ~ the percentile.
    rng = np.random.default_rng(3)
    s = privacy.near_copy_summary(rng.gamma(5, size=4000), rng.gamma(5, size=4000), percentile=5, n_boot=50)
    assert abs(s["rate"] - 0.05) < 0.015 and abs(s["median_ratio"] - 1) < 0.05


def test_reidentification_score_and_gather_rows():
    rng = np.random.default_rng(4)
    train = rng.uniform(-1, 1, size=(23, 8, 8)).astype(np.float32)
    idx = np.array([4, 22, 0, 4])
    nb = privacy.gather_rows([train[:10], train[10:]], idx, key=None)
    np.testing.assert_array_equal(nb, train[idx])
    gen = nb + np.array([0.0, 0.0, 1.0, 1.0], np.float32)[:, None, None]
    fn = lambda g, t: np.exp(-np.abs(g - t).mean(axis=(1, 2)))
    r = privacy.reidentification_score(fn, gen, nb, batch_size=3, top_k=2)
    assert r["max"] == pytest.approx(1.0) and r["mean"] == pytest.approx((2 + 2 * np.exp(-1)) / 4)
    assert r["rate_above_threshold"] == 0.5 and [p["generated"] for p in r["top"]] == [0, 1]
    with pytest.raises(ValueError, match="probabilities"):
        privacy.reidentification_score(lambda g, t: np.full(len(g), 3.0), gen, nb)
    with pytest.raises(ValueError, match="re-iterable"):
        privacy.gather_rows(iter([]), idx, key=None)


def test_report_verbatim_copies_and_placeholder_leaks():
    train = [
        "Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
        "Mild cardiomegaly. Small left pleural effusion. Dr. XXXX was notified by ___ at 10am.",
        "Stable appearance of the chest compared to [**2150-1-1**]. No acute cardiopulmonary process.",
        "There is a right lower lobe consolidation concerning for pneumonia.",
    ]
    generated = [
        "  heart size is NORMAL.   The lungs are clear.\nNo pleural effusion or pneumothorax. ",  # verbatim
        "Mild cardiomegaly. Small left pleural effusion. Bilateral hilar fullness is new.",  # 2 of 3 copied
        "Findings discussed with XXXX and xxxx on ___. See [**Hospital 1**] record.",       # 4 leaks
        "Completely novel wording about osseous structures without overlap.",
    ]
    reference = ["The lungs are clear. Osseous structures are intact.", "Right lower lobe opacity."]
    batches = ({"report": train[i:i + 3]} for i in range(0, 4, 3))  # generator of dict batches
    out = privacy.report_privacy(generated, batches, reference, train_chunk=3, n_boot=100, top_k=3)
    json.dumps(out)
    g = out["generated"]
    assert g["verbatim_count"] == 1 and g["verbatim_rate"] == pytest.approx(0.25)
    assert g["verbatim_pairs"] == [{"generated": 0, "train": 0}]
    # sentences: 3 (all copied) + 3 (2 copied) + 2 (0) + 1 (0) = 9, 5 copied
    assert g["sentences"] == 9 and g["copied_sentences"] == 5
    assert g["copied_sentence_rate"] == pytest.approx(5 / 9)
    leaks = g["placeholder_leaks"]
    assert leaks["per_report"] == [0, 0, 4, 0]
    assert leaks["total"] == {"xxxx": 2, "underscores": 1, "mimic_brackets": 1}
    assert leaks["rate_reports_with_leak"] == pytest.approx(0.25)
    assert out["train_leaks"]["total"] == {"xxxx": 1, "underscores": 1, "mimic_brackets": 1}
    pairs = out["closest_pairs"]
    assert pairs[0] == {"generated": 0, "train": 0, "jaccard": 1.0}
    assert pairs[1]["generated"] == 1 and pairs[1]["train"] == 1 and 0 < pairs[1]["jaccard"] < 1
    assert out["reference"]["copied_sentences"] == 1 and out["reference"]["verbatim_count"] == 0
    assert privacy.word_ngrams("a b", 4) == frozenset([("a", "b")]) and not privacy.word_ngrams("...", 4)
    assert privacy.normalised_sentences("No effusion.  Heart normal!\nOK") == ["no effusion", "heart normal", "ok"]
    # the shared splitter: abbreviations and list numbers are not sentences of their own
    assert privacy.normalised_sentences("1. Seen by Dr. XXXX.\n2. NO  change") == ["seen by dr. xxxx", "no change"]
    assert privacy.normalise_sentence("  No   Effusion?! ") == "no effusion" and privacy.normalised_sentences(" . ") == []
