"""Pipeline: model inputs from phantom studies, report tokens, the run's tokenizer, batching."""

import numpy as np
import pytest

from xray_gen.configs.default import get_default
from xray_gen.data import pipeline
from xray_gen.data.tokenizer import ReportTokenizer


def _data_config(resolution=32):
    c = get_default().data
    c.resolution = resolution
    c.phantom.train_size, c.phantom.validation_size, c.phantom.test_size = 40, 8, 8
    return c


def test_open_split_rejects_unknown_names_and_real_sources_without_manual_dir():
    c = _data_config()
    with pytest.raises(ValueError, match="valid: train, validation, test"):
        pipeline.open_split(c, "dev")
    c.source = "openi"
    with pytest.raises(ValueError, match="manual_dir"):
        pipeline.open_split(c, "train")
    c.source = "imagenet"
    with pytest.raises(ValueError, match="valid: phantom, openi"):
        pipeline.open_split(c, "train")


def test_model_inputs_resize_and_label_targets():
    source = pipeline.open_split(_data_config(resolution=48), "train")
    ex = source[0]
    out = pipeline.ToModelInputs(views=("frontal", "lateral"), resolution=32).map(ex)
    assert out["frontal"].shape == (32, 32, 1) and out["frontal"].dtype == np.uint8
    assert out["lateral"].shape == (32, 32, 1)
    labels = np.asarray(ex["labels"])
    np.testing.assert_array_equal(out["targets"][labels == 1], 1.0)
    np.testing.assert_array_equal(out["targets"][np.isnan(labels)], 0.0)
    assert "findings" not in out  # strings never reach the batch


def test_missing_view_is_a_clear_error():
    ex = pipeline.open_split(_data_config(), "train")[0]
    ex["has_lateral"] = False
    with pytest.raises(ValueError, match="has no lateral image"):
        pipeline.ToModelInputs(views=("lateral",), resolution=32).map(ex)


def test_workdir_tokenizer_trains_on_train_split_only_and_is_reused(tmp_path, monkeypatch):
    requested = []
    original = pipeline.open_split
    monkeypatch.setattr(pipeline, "open_split", lambda c, split: requested.append(split) or original(c, split))
    tok = pipeline.workdir_tokenizer(str(tmp_path), _data_config(), vocab_size=200, max_studies=40)
    assert requested == ["train"]
    assert (tmp_path / pipeline.TOKENIZER_FILE).exists()
    again = pipeline.workdir_tokenizer(str(tmp_path), _data_config(), vocab_size=999)
    assert requested == ["train"]  # loaded, not retrained
    assert again.model_proto == tok.model_proto


def test_report_inputs_batch_through_grain(tmp_path):
    data = _data_config()
    tok = pipeline.workdir_tokenizer(str(tmp_path), data, vocab_size=200, max_studies=40)
    transforms = [pipeline.ReportInputs(tok, max_sentences=6, max_words=20), pipeline.ToModelInputs(resolution=32)]
    loader = pipeline.make_loader(pipeline.open_split(data, "train"), transforms, 4, seed=0)
    batch = next(iter(loader))
    assert batch["findings_ids"].shape == (4, 6, 20) and batch["findings_ids"].dtype == np.int32
    assert batch["impression_mask"].shape == (4, 6, 20)
    first = pipeline.open_split(data, "train")
    decoded = tok.decode_hierarchical(batch["impression_ids"][0], batch["impression_mask"][0])
    assert decoded and all(isinstance(s, str) and s for s in decoded)
    assert isinstance(tok, ReportTokenizer) and len(first) == 40


def test_pad_batch_repeats_last_row():
    batch = {"x": np.arange(3)}
    padded, n = pipeline.pad_batch(batch, 5)
    assert n == 3 and padded["x"].tolist() == [0, 1, 2, 2, 2]


def test_models_train_and_evaluate_on_a_real_dataset_layout(tmp_path):
    """The classifier and the VCN run end to end on an Open-i tree (the fixture reproduces its format)."""
    import json

    import fixtures_real  # tests/ is on sys.path (pytest rootdir-relative imports)
    from xray_gen import main
    from xray_gen.configs import classifier as classifier_config
    from xray_gen.configs import vcn as vcn_config

    info = fixtures_real.write_openi(tmp_path / "openi")
    for module, name in ((classifier_config, "classifier"), (vcn_config, "vcn")):
        config = module.get_config("smoke")
        config.data.source = "openi"
        config.data.manual_dir = str(tmp_path / "openi")
        config.data.data_dir = str(tmp_path / "prepared")
        config.data.options = json.dumps({"split_file": str(info["split_file"])})
        config.train.num_steps = 3
        state = main.run(config, str(tmp_path / name), "train")
        assert int(state.step) == 3
        assert main.run(config, str(tmp_path / name), "evaluate")["split"] == "validation"


def test_builder_options_are_json_and_lateral_models_require_laterals():
    c = _data_config()
    c.source, c.options = "mimic_cxr", '{"subsets": ["p10"]}'
    assert pipeline.builder_options(c, ("frontal", "lateral")) == {"subsets": ["p10"], "require_lateral": True}
    assert pipeline.builder_options(c, ("frontal",)) == {"subsets": ["p10"]}
    c.options = "subsets=p10"
    with pytest.raises(ValueError, match="JSON object"):
        pipeline.builder_options(c, ("frontal",))
    c.source, c.options = "chestxray14", ""
    with pytest.raises(ValueError, match="frontal images only"):
        pipeline.builder_options(c, ("frontal", "lateral"))


# ---- histogram equalisation (data.equalize) --------------------------------------------------


def _reference_equalize(image):
    """The documented formula, pixel by pixel with exact fractions: round((cdf - cdf_min) / (N - cdf_min) * 255)."""
    from fractions import Fraction

    flat = [int(v) for v in np.asarray(image).ravel()]
    n, lowest = len(flat), min(flat)
    cdf_min = flat.count(lowest)
    if n == cdf_min:
        return np.asarray(image).copy()
    out = []
    for v in flat:
        x = Fraction(sum(1 for u in flat if u <= v) - cdf_min, n - cdf_min) * 255
        out.append(int(x + Fraction(1, 2)) if x >= 0 else 0)  # halves up
    return np.asarray(out, np.uint8).reshape(np.shape(image))


def test_equalize_histogram_hand_checked():
    eq = pipeline.equalize_histogram
    # h = {10: 1, 20: 2, 30: 1, 40: 1}, N = 5, cdf_min = 1: 20 -> 2/4*255 = 127.5 -> 128, 30 -> 191.25 -> 191
    np.testing.assert_array_equal(eq(np.array([[10, 20, 20, 30, 40]], np.uint8)), [[0, 128, 128, 191, 255]])
    # two levels go to the extremes whatever their counts
    np.testing.assert_array_equal(eq(np.array([[50, 50], [50, 200]], np.uint8)), [[0, 0], [0, 255]])
    # cdf = 2, 3, 4 at 0, 128, 255 (cdf_min = 2): 128 -> 1/2*255 = 127.5 -> 128 (half up)
    np.testing.assert_array_equal(eq(np.array([[0, 0], [128, 255]], np.uint8)), [[0, 0], [128, 255]])
    # already uniform over all 256 levels: identity
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(eq(ramp), ramp)


def test_equalize_histogram_matches_documented_formula_on_random_images():
    rng = np.random.default_rng(0)
    for image in (
        rng.integers(0, 256, (17, 23)).astype(np.uint8),
        (rng.beta(2, 6, (31, 29)) * 255).astype(np.uint8),  # skewed, with empty bins
        rng.integers(100, 104, (9, 9)).astype(np.uint8),  # few levels
    ):
        np.testing.assert_array_equal(pipeline.equalize_histogram(image), _reference_equalize(image))


def test_equalize_histogram_agrees_with_pil_where_definitions_coincide():
    """PIL.ImageOps.equalize uses the CDF strictly below a level and normalises by N minus the
    brightest level's count, so it is this mapping mirrored; with N - cdf_min an odd multiple of
    255 (its integer step is then exact and has no .5 ties) ours(x) == 255 - PIL(255 - x) exactly."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(1)
    step, zeros = 15, 271  # N - cdf_min = 255 * 15
    for values in (rng.integers(1, 256, 255 * step), np.clip(rng.beta(2, 5, 255 * step) * 255, 1, 255)):
        flat = np.concatenate([values.astype(np.uint8), np.zeros(zeros, np.uint8)])
        image = rng.permutation(flat).reshape(64, 64)
        pil = np.asarray(ImageOps.equalize(Image.fromarray(255 - image)))
        np.testing.assert_array_equal(pipeline.equalize_histogram(image), 255 - pil)


def test_equalize_histogram_constant_monotone_uint8():
    eq = pipeline.equalize_histogram
    for level in (0, 77, 255):
        constant = np.full((8, 8), level, np.uint8)
        out = eq(constant)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, constant)
    rng = np.random.default_rng(2)
    image = (rng.beta(5, 2, (40, 40)) * 255).astype(np.uint8)
    out = eq(image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    order = np.argsort(image.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)  # order preserving
    assert out.min() == 0 and out.max() == 255
    with pytest.raises(TypeError, match="uint8"):
        eq(image.astype(np.float32))


def test_model_inputs_equalize_option():
    ex = pipeline.open_split(_data_config(resolution=48), "train")[0]
    views = ("frontal", "lateral")
    default = pipeline.ToModelInputs(views=views, resolution=32).map(ex)
    off = pipeline.ToModelInputs(views=views, resolution=32, equalize=False).map(ex)
    on = pipeline.ToModelInputs(views=views, resolution=32, equalize=True).map(ex)
    for view in views:  # off: exactly the pre-existing path (resize only)
        before = pipeline._resize(np.asarray(ex[view], np.uint8), 32)[..., None]
        np.testing.assert_array_equal(default[view], before)
        np.testing.assert_array_equal(off[view], before)
        assert on[view].dtype == np.uint8 and on[view].shape == (32, 32, 1)
        assert not np.array_equal(on[view], before)
        np.testing.assert_array_equal(on[view][..., 0], pipeline.equalize_histogram(before[..., 0]))
    assert set(on) == set(off)
    for key in off.keys() - set(views):
        np.testing.assert_array_equal(on[key], off[key])


def test_model_inputs_from_data_config_reads_data_options():
    c = _data_config(resolution=48)
    assert c.equalize is False
    t = pipeline.ToModelInputs.from_data_config(c, views=("frontal", "lateral"))
    assert t == pipeline.ToModelInputs(views=("frontal", "lateral"), resolution=48, uncertain_as=1.0, equalize=False)
    c.equalize, c.uncertain_as = True, 0.0
    t = pipeline.ToModelInputs.from_data_config(c, resolution=32)
    assert (t.views, t.resolution, t.uncertain_as, t.equalize) == (("frontal",), 32, 0.0, True)
    import ml_collections  # a hand-built data config without the new field keeps the old behaviour

    bare = ml_collections.ConfigDict({"resolution": 16})
    assert pipeline.ToModelInputs.from_data_config(bare).equalize is False


def test_memoized_phantom_source_matches_rendering_and_shares_entries():
    from xray_gen.data import pipeline

    pipeline._PHANTOM_MEMO.clear()
    plain = pipeline.PhantomSource("train", 4, 32, seed=5)
    memo = pipeline.PhantomSource("train", 4, 32, seed=5, memoize=True)
    frontal_only = pipeline.PhantomSource("train", 4, 32, seed=5, lateral=False, memoize=True)
    frontal_only_plain = pipeline.PhantomSource("train", 4, 32, seed=5, lateral=False)

    def same(a, b):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)

    for i in range(4):
        same(memo[i], plain[i])
    assert len(pipeline._PHANTOM_MEMO) == 4
    first = memo[1]
    first["frontal"] = None  # callers may rebind keys of what they get: the memo is unaffected
    same(memo[1], plain[1])
    for i in range(4):  # served from the frontal+lateral entries, shaped like a frontal-only render
        same(frontal_only[i], frontal_only_plain[i])
    assert len(pipeline._PHANTOM_MEMO) == 4
    pipeline._PHANTOM_MEMO.clear()
